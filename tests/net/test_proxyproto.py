"""PROXY protocol v1/v2: every header whole, a byte at a time, with trailing bytes."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.errors import ProtocolError
from gatekeeper.net.proxyproto import (
    MAX_HEADER,
    NEED_DATA,
    V1_MAX_LINE,
    V1_PREFIX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyParser,
    encode_v1,
    encode_v2,
    looks_like_proxy,
)

SIG = V2_SIGNATURE
FULL6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
LOCAL1 = ProxyHeader(version=1, local=True, source=None, destination=None)
LOCAL2 = ProxyHeader(version=2, local=True, source=None, destination=None)


def v1(src: tuple[str, int], dst: tuple[str, int]) -> ProxyHeader:
    return ProxyHeader(version=1, local=False, source=src, destination=dst)


def v2(src: tuple[str, int], dst: tuple[str, int]) -> ProxyHeader:
    return ProxyHeader(version=2, local=False, source=src, destination=dst)


# Written out by hand (not with encode_*), so parser and encoders are checked independently.
VALID = [
    pytest.param(
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        v1(("192.168.0.1", 56324), ("192.168.0.11", 443)),
        id="v1-tcp4-spec",
    ),
    pytest.param(
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        v1(("255.255.255.255", 65535), ("255.255.255.255", 65535)),
        id="v1-tcp4-longest",
    ),
    pytest.param(
        b"PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n",
        v1(("0.0.0.0", 0), ("10.0.0.1", 0)),
        id="v1-tcp4-zeros",
    ),
    pytest.param(
        f"PROXY TCP6 {FULL6} {FULL6} 65535 65535\r\n".encode(),
        v1((FULL6, 65535), (FULL6, 65535)),
        id="v1-tcp6-longest",
    ),
    pytest.param(
        b"PROXY TCP6 2001:DB8:0:0::1 ::ffff:192.0.2.7 1024 21\r\n",
        v1(("2001:db8::1", 1024), ("::ffff:192.0.2.7", 21)),
        id="v1-tcp6-canonical",
    ),
    pytest.param(
        b"PROXY TCP6 ::FFFF:C000:0207 2001:db8::2 40000 23\r\n",
        v1(("::ffff:192.0.2.7", 40000), ("2001:db8::2", 23)),
        id="v1-tcp6-mapped-kept",
    ),
    pytest.param(b"PROXY UNKNOWN\r\n", LOCAL1, id="v1-unknown"),
    pytest.param(
        f"PROXY UNKNOWN {FULL6} {FULL6} 65535 65535\r\n".encode(),  # exactly 107 bytes
        LOCAL1,
        id="v1-unknown-longest",
    ),
    pytest.param(b"PROXY UNKNOWN \xff garbage \x00\r\n", LOCAL1, id="v1-unknown-anything"),
    pytest.param(
        # As sent by HAProxy (send-proxy-v2) for 172.19.0.1:42578 -> 172.19.0.3:80.
        SIG + bytes.fromhex("2111000c ac130001 ac130003 a652 0050"),
        v2(("172.19.0.1", 42578), ("172.19.0.3", 80)),
        id="v2-ipv4",
    ),
    pytest.param(
        SIG
        + bytes.fromhex("21210024")
        + ipaddress.IPv6Address("2001:db8::7").packed
        + ipaddress.IPv6Address("::ffff:198.51.100.1").packed
        + bytes.fromhex("c350 0015"),
        v2(("2001:db8::7", 50000), ("::ffff:198.51.100.1", 21)),
        id="v2-ipv6",
    ),
    pytest.param(SIG + bytes.fromhex("20000000"), LOCAL2, id="v2-local"),
    pytest.param(
        SIG + bytes.fromhex("2011000c 7f000001 7f000001 1f90 0015"),
        LOCAL2,
        id="v2-local-with-tcp4-block",
    ),
    pytest.param(SIG + bytes.fromhex("20310000"), LOCAL2, id="v2-local-unix-no-block"),
    pytest.param(SIG + bytes.fromhex("20120003 aabbcc"), LOCAL2, id="v2-local-udp-junk"),
    pytest.param(SIG + bytes.fromhex("21000000"), LOCAL2, id="v2-proxy-unspec"),
    pytest.param(
        SIG
        + bytes.fromhex("2111002c c0000207 c6336401 d431 0015")
        + bytes.fromhex("01 0002")
        + b"h2"  # ALPN
        + bytes.fromhex("02 000b")
        + b"example.com"  # authority
        + bytes.fromhex("04 0003 000000")  # NOOP padding
        + bytes.fromhex("ea 0004 01616263"),  # AWS VPC endpoint id
        v2(("192.0.2.7", 54321), ("198.51.100.1", 21)),
        id="v2-ipv4-tlvs",
    ),
    pytest.param(
        SIG + bytes.fromhex("2111000f c0000207 c6336401 d431 0015 05 0000"),
        v2(("192.0.2.7", 54321), ("198.51.100.1", 21)),
        id="v2-ipv4-empty-tlv",
    ),
]

TRAILING = b"USER QSECOFR\r\n\r\n\x00PROXY "  # looks like more headers; must be left alone


def feed(*chunks: bytes, max_size: int = MAX_HEADER) -> tuple[object, ProxyParser]:
    parser = ProxyParser(max_size)
    event: object = NEED_DATA
    for chunk in chunks:
        parser.receive_data(chunk)
        event = parser.next_event()
    return event, parser


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_whole(data: bytes, expected: ProxyHeader) -> None:
    event, parser = feed(data)
    assert event == expected
    assert parser.trailing == b""


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_one_byte_at_a_time(data: bytes, expected: ProxyHeader) -> None:
    parser = ProxyParser()
    for i in range(len(data) - 1):
        parser.receive_data(data[i : i + 1])
        assert parser.next_event() is NEED_DATA
        assert parser.trailing == b""
    parser.receive_data(data[-1:])
    assert parser.next_event() == expected
    assert parser.trailing == b""


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_trailing_in_same_chunk(data: bytes, expected: ProxyHeader) -> None:
    event, parser = feed(data + TRAILING)
    assert event == expected
    assert parser.trailing == TRAILING
    # The end of the header and the first trailing bytes arrive together.
    event, parser = feed(data[:-1], data[-1:] + TRAILING[:5], TRAILING[5:])
    assert event == expected
    assert parser.trailing == TRAILING


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_trailing_after_header(data: bytes, expected: ProxyHeader) -> None:
    parser = ProxyParser()
    parser.receive_data(data)
    assert parser.next_event() == expected
    parser.receive_data(TRAILING[:3])
    parser.receive_data(TRAILING[3:])
    assert parser.next_event() == expected  # the header again; trailing bytes are not parsed
    assert parser.trailing == TRAILING


def test_nothing_yet() -> None:
    parser = ProxyParser()
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"")
    assert parser.next_event() is NEED_DATA
    assert parser.trailing == b""


def test_truncated_headers_wait() -> None:
    for data in (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", SIG + bytes.fromhex("2111000c c0000207")):
        event, parser = feed(data)
        assert event is NEED_DATA
        assert parser.trailing == b""


def line(text: str) -> bytes:
    return text.encode() + b"\r\n"


def v2_header(ver_cmd: int, family: int, block: bytes, length: int | None = None) -> bytes:
    size = len(block) if length is None else length
    return SIG + bytes([ver_cmd, family]) + size.to_bytes(2, "big") + block


INET_BLOCK = bytes.fromhex("c0000207 c6336401 d431 0015")

MALFORMED = [
    # Neither signature.
    pytest.param(b"USER QSECOFR\r\n", "no PROXY header", id="not-proxy"),
    pytest.param(b"\x16\x03\x01\x02\x00", "no PROXY header", id="tls-hello"),
    pytest.param(b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY header", id="v1-lowercase"),
    pytest.param(b"PROXYTCP4 1.2.3.4", "bad PROXY v1 signature", id="v1-no-space"),
    pytest.param(b"PROX\r\n", "bad PROXY v1 signature", id="v1-short"),
    pytest.param(b"\r\n\r\n\x00\r\nQUIX\n!\x11\x00\x00", "bad PROXY v2 signature", id="v2-sig"),
    pytest.param(b"\r\nGET", "bad PROXY v2 signature", id="v2-sig-early"),
    # v1 protocol and framing.
    pytest.param(line("PROXY TCP5 1.2.3.4 5.6.7.8 1 2"), "bad PROXY v1 protocol", id="v1-tcp5"),
    pytest.param(line("PROXY UDP4 1.2.3.4 5.6.7.8 1 2"), "bad PROXY v1 protocol", id="v1-udp"),
    pytest.param(line("PROXY UNKNOWNX"), "bad PROXY v1 protocol", id="v1-unknownx"),
    pytest.param(line("PROXY "), "bad PROXY v1 protocol", id="v1-empty"),
    pytest.param(line("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2"), "bad PROXY v1 protocol", id="v1-2sp"),
    pytest.param(line("PROXY TCP4 1.2.3.4  5.6.7.8 1 2"), "6 fields", id="v1-double-space"),
    pytest.param(line("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 "), "6 fields", id="v1-trailing-space"),
    pytest.param(line("PROXY TCP4 1.2.3.4 5.6.7.8 1"), "6 fields", id="v1-missing-port"),
    pytest.param(line("PROXY TCP4 1.2.3.4\t5.6.7.8 1 2"), "6 fields", id="v1-tab"),
    pytest.param(b"PROXY UNKNOWN " + b"x" * 200, "longer than 107 bytes", id="v1-too-long"),
    pytest.param(
        b"PROXY UNKNOWN " + b"x" * (V1_MAX_LINE - 15) + b"\r\n",  # 108 bytes with CRLF
        "longer than 107 bytes",
        id="v1-108-bytes",
    ),
    pytest.param(
        b"PROXY UNKNOWN " + b"x" * (V1_MAX_LINE - 15) + b"\r",  # the CR is byte 107
        "longer than 107 bytes",
        id="v1-cr-at-107",
    ),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF", id="v1-lf-only"),
    pytest.param(b"PROXY UNKNOWN\n\r\n", "bare LF", id="v1-unknown-lf"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n", "bare CR", id="v1-bare-cr"),
    pytest.param(b"PROXY UNKNOWN\r\r\n", "bare CR", id="v1-cr-cr-lf"),
    # v1 addresses: must parse as the stated family, canonical digits only.
    pytest.param(line("PROXY TCP4 1.2.3 5.6.7.8 1 2"), "TCP4 source address", id="v4-short"),
    pytest.param(line("PROXY TCP4 256.0.0.1 5.6.7.8 1 2"), "source address", id="v4-256"),
    pytest.param(line("PROXY TCP4 01.2.3.4 5.6.7.8 1 2"), "source address", id="v4-zero"),
    pytest.param(line("PROXY TCP4 1.2.3.4 5.6.7.8x 1 2"), "destination address", id="v4-junk"),
    pytest.param(line("PROXY TCP4 ::1 ::2 1 2"), "TCP4 source address", id="v4-given-v6"),
    pytest.param(line("PROXY TCP6 1.2.3.4 ::2 1 2"), "TCP6 source address", id="v6-given-v4"),
    pytest.param(line("PROXY TCP6 ::1 2001:db8::g 1 2"), "destination address", id="v6-bad"),
    pytest.param(line("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::2 1 2"), "source address", id="v6-long"),
    pytest.param(line("PROXY TCP6 fe80::1%eth0 ::2 1 2"), "source address", id="v6-zone"),
    pytest.param(line("PROXY TCP6 ::ffff:01.2.3.4 ::2 1 2"), "source address", id="v6-v4-zero"),
    pytest.param(
        "PROXY TCP4 \uff11.2.3.4 5.6.7.8 1 2\r\n".encode(), "source address", id="v4-fullwidth"
    ),
    # v1 ports: decimal 0-65535, no sign, no heading zero.
    pytest.param(line("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2"), "source port", id="port-65536"),
    pytest.param(line("PROXY TCP4 1.2.3.4 5.6.7.8 1 99999"), "destination port", id="port-big"),
    pytest.param(line("PROXY TCP4 1.2.3.4 5.6.7.8 +80 2"), "source port", id="port-plus"),
    pytest.param(line("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2"), "source port", id="port-minus"),
    pytest.param(line("PROXY TCP4 1.2.3.4 5.6.7.8 080 2"), "source port", id="port-zero"),
    pytest.param(line("PROXY TCP4 1.2.3.4 5.6.7.8 1 0x15"), "destination port", id="port-hex"),
    pytest.param(line("PROXY TCP4 1.2.3.4 5.6.7.8 1 1_000"), "destination port", id="port-_"),
    pytest.param(line("PROXY TCP4 1.2.3.4 5.6.7.8 1 123456"), "destination port", id="port-6"),
    pytest.param("PROXY TCP4 1.2.3.4 5.6.7.8 \uff12 2\r\n".encode(), "source port", id="port-wide"),
    # v2 fixed header.
    pytest.param(v2_header(0x11, 0x11, INET_BLOCK), "version 1", id="v2-version-1"),
    pytest.param(v2_header(0x31, 0x11, INET_BLOCK), "version 3", id="v2-version-3"),
    pytest.param(v2_header(0x22, 0x11, INET_BLOCK), "command 2", id="v2-command-2"),
    pytest.param(v2_header(0x2F, 0x11, INET_BLOCK), "command 15", id="v2-command-15"),
    pytest.param(v2_header(0x21, 0x41, INET_BLOCK), "family/transport 0x41", id="v2-fam-4"),
    pytest.param(v2_header(0x21, 0x13, INET_BLOCK), "family/transport 0x13", id="v2-proto-3"),
    pytest.param(v2_header(0x21, 0x01, b""), "family/transport 0x01", id="v2-unspec-stream"),
    pytest.param(v2_header(0x20, 0x41, b""), "family/transport 0x41", id="v2-local-bad-fam"),
    pytest.param(v2_header(0x21, 0x12, INET_BLOCK), "UDP", id="v2-udp4"),
    pytest.param(v2_header(0x21, 0x22, bytes(36)), "UDP", id="v2-udp6"),
    pytest.param(v2_header(0x21, 0x32, bytes(216)), "UDP", id="v2-unix-dgram"),
    pytest.param(v2_header(0x21, 0x31, bytes(216)), "AF_UNIX", id="v2-unix-stream"),
    # v2 lengths.
    pytest.param(v2_header(0x21, 0x11, INET_BLOCK[:8]), "too short (needs 12)", id="v2-short4"),
    pytest.param(v2_header(0x21, 0x21, INET_BLOCK), "too short (needs 36)", id="v2-short6"),
    pytest.param(v2_header(0x21, 0x11, b"", 0xFFFF), "65551 bytes is larger", id="v2-65535"),
    pytest.param(
        v2_header(0x21, 0x11, b"", MAX_HEADER - 15), "larger than 4096", id="v2-just-too-big"
    ),
    pytest.param(v2_header(0x21, 0x11, INET_BLOCK + b"\x01\x00"), "stray", id="v2-tlv-stray"),
    pytest.param(
        v2_header(0x21, 0x11, INET_BLOCK + bytes.fromhex("02 0010 6162")),
        "TLV 0x02 of 16 bytes overruns",
        id="v2-tlv-overrun",
    ),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED)
def test_malformed_whole(data: bytes, message: str) -> None:
    parser = ProxyParser()
    parser.receive_data(data)
    with pytest.raises(ProtocolError, match=re.escape(message)):
        parser.next_event()


@pytest.mark.parametrize(("data", "message"), MALFORMED)
def test_malformed_byte_at_a_time(data: bytes, message: str) -> None:
    parser = ProxyParser()
    with pytest.raises(ProtocolError, match=re.escape(message)):
        for i in range(len(data)):
            parser.receive_data(data[i : i + 1])
            assert parser.next_event() is NEED_DATA
    # The error sticks: later bytes are dropped and every call raises it again.
    parser.receive_data(b"PROXY UNKNOWN\r\n")
    with pytest.raises(ProtocolError, match=re.escape(message)):
        parser.next_event()
    assert parser.trailing == b""


def test_errors_come_early() -> None:
    """Garbage is refused as soon as it cannot be a header, without waiting for more."""
    for data in (
        b"G",
        b"PROXX",
        b"\r\n\r\n\x01",
        SIG + b"\x10",
        SIG + b"\x21\x12",
        SIG + b"\x21\x11\xff\xff",  # the length alone is too big
        SIG + b"\x21\x11\x00\x04",  # the length alone is too short for the family
        b"PROXY TCP4 1.2.3.4\n",
        b"PROXY " + b"1" * (V1_MAX_LINE - 6),
    ):
        parser = ProxyParser()
        parser.receive_data(data)
        with pytest.raises(ProtocolError):
            parser.next_event()


def test_max_size() -> None:
    big = v2_header(0x21, 0x11, INET_BLOCK + bytes.fromhex("04 01f4") + bytes(500))
    assert len(big) == 531
    with pytest.raises(ProtocolError, match="531 bytes is larger than 512 allowed"):
        feed(big, max_size=512)
    event, _ = feed(big, max_size=531)
    assert event == v2(("192.0.2.7", 54321), ("198.51.100.1", 21))
    with pytest.raises(ValueError, match="at least 232"):
        ProxyParser(100)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", True),
        (b"P", True),
        (b"PRO", True),
        (b"PROXY", True),
        (b"PROXY ", True),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", True),
        (b"PROXY garbage", True),
        (b"\r", True),
        (SIG[:5], True),
        (SIG, True),
        (SIG + b"\x21\x11\x00\x0c", True),
        (b"USER x", False),
        (b"USER x\r\n", False),
        (b"PROXX", False),
        (b"PROXYTCP4", False),
        (b"proxy ", False),
        (b" PROXY ", False),
        (b"\r\n", True),
        (b"\r\n\r\n\x01", False),
        (b"\r\nQUIT\n", False),
        (b"\x16\x03\x01", False),
    ],
)
def test_looks_like_proxy(data: bytes, expected: bool) -> None:
    assert looks_like_proxy(data) is expected


def test_encode_v1() -> None:
    assert encode_v1(None, None) == b"PROXY UNKNOWN\r\n"
    assert (
        encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
        == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )
    assert (
        encode_v1(("2001:DB8:0::1", 0), ("::ffff:192.0.2.7", 65535))
        == b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.7 0 65535\r\n"
    )


def test_encode_v2() -> None:
    assert encode_v2(None, None) == SIG + bytes.fromhex("20000000")
    assert encode_v2(None, None, b"\x04\x00\x01\x00") == SIG + bytes.fromhex("20000004 04000100")
    assert encode_v2(("172.19.0.1", 42578), ("172.19.0.3", 80)) == SIG + bytes.fromhex(
        "2111000c ac130001 ac130003 a652 0050"
    )
    ipv6 = encode_v2(("2001:db8::7", 50000), ("::1", 21), b"\x01\x00\x02h2")
    assert ipv6[12:16] == bytes.fromhex("21210029")
    assert ipv6[-5:] == b"\x01\x00\x02h2"


@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
@pytest.mark.parametrize(
    ("source", "destination", "message"),
    [
        (("1.2.3.4", 1), None, "both"),
        (None, ("1.2.3.4", 1), "both"),
        (("1.2.3.4", 1), ("::1", 2), "differ in family"),
        (("1.2.3.4", 65536), ("5.6.7.8", 2), "bad port"),
        (("1.2.3.4", -1), ("5.6.7.8", 2), "bad port"),
        (("1.2.3.4", True), ("5.6.7.8", 2), "bad port"),
        (("fe80::1%eth0", 1), ("fe80::2", 2), "zone id"),
        (("example.com", 1), ("5.6.7.8", 2), "does not appear to be"),
    ],
)
def test_encode_refuses(
    encode: Callable[..., bytes], source: object, destination: object, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        encode(source, destination)


def test_encode_v2_refuses_bad_tlvs() -> None:
    with pytest.raises(ValueError, match="overruns"):
        encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), b"\x01\x00\x05ab")
    with pytest.raises(ValueError, match="exceeds 65535"):
        encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), b"\x04\xff\xf8" + bytes(0xFFF8))


# --- properties --------------------------------------------------------------------------


def canonical(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The text the parser returns: IPv4-mapped IPv6 dotted (as the kernel prints it)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return "::ffff:" + str(address.ipv4_mapped)
    return str(address)


ports = st.integers(min_value=0, max_value=0xFFFF)
endpoints4 = st.tuples(st.ip_addresses(v=4).map(canonical), ports)
# Mapped addresses are rare among random ones: add them on purpose.
addresses6 = st.one_of(
    st.ip_addresses(v=6),
    st.ip_addresses(v=4).map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}")),
)
endpoints6 = st.tuples(addresses6.map(canonical), ports)
pairs = st.one_of(st.tuples(endpoints4, endpoints4), st.tuples(endpoints6, endpoints6))
tlv_lists = st.lists(
    st.tuples(st.integers(0, 255), st.binary(max_size=40)).map(
        lambda t: bytes([t[0]]) + len(t[1]).to_bytes(2, "big") + t[1]
    ),
    max_size=6,
).map(b"".join)


def outcome(chunks: list[bytes]) -> tuple[object, bytes]:
    """What a parser makes of ``chunks``: the event (or "error") and the trailing bytes."""
    parser = ProxyParser()
    event: object = NEED_DATA
    try:
        for chunk in chunks:
            parser.receive_data(chunk)
            event = parser.next_event()
    except ProtocolError:
        return "error", b""
    return event, parser.trailing


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(pairs, st.binary(max_size=20))
def test_round_trip_v1(pair: tuple[tuple[str, int], tuple[str, int]], rest: bytes) -> None:
    source, destination = pair
    assert outcome([encode_v1(source, destination) + rest]) == (
        v1(source, destination),
        rest,
    )


@given(pairs, tlv_lists, st.binary(max_size=20))
def test_round_trip_v2(
    pair: tuple[tuple[str, int], tuple[str, int]], tlvs: bytes, rest: bytes
) -> None:
    source, destination = pair
    assert outcome([encode_v2(source, destination, tlvs) + rest]) == (
        v2(source, destination),
        rest,
    )


@given(tlv_lists, st.binary(max_size=20))
def test_round_trip_local(tlvs: bytes, rest: bytes) -> None:
    assert outcome([encode_v1(None, None) + rest]) == (LOCAL1, rest)
    assert outcome([encode_v2(None, None, tlvs) + rest]) == (LOCAL2, rest)


# Random bytes, and random bytes behind each signature so the fuzzing reaches the fields.
fuzz = st.one_of(
    st.binary(max_size=300),
    st.tuples(
        st.sampled_from(
            [
                V1_PREFIX,
                b"PROXY TCP4 ",
                b"PROXY TCP6 ",
                b"PROXY UNKNOWN",
                SIG,
                SIG + b"\x21",
                SIG + b"\x21\x11",
                SIG + b"\x21\x21",
                SIG + b"\x20\x00",
            ]
        ),
        st.one_of(
            st.binary(max_size=300),
            st.text(alphabet="0123456789abcdefABCDEF.: %+-\r\n", max_size=110).map(str.encode),
        ),
    ).map(b"".join),
)


@given(fuzz, st.lists(st.integers(min_value=0), max_size=10))
def test_fuzz(data: bytes, cuts: list[int]) -> None:
    whole = outcome([data])  # only ProtocolError may escape the parser: outcome catches just that
    assert outcome(split(data, cuts)) == whole  # how the bytes are split changes nothing
    assert outcome([data[i : i + 1] for i in range(len(data))]) == whole
    if not (data.startswith(V1_PREFIX) or data.startswith(SIG)):
        assert not isinstance(whole[0], ProxyHeader)
    if isinstance(whole[0], ProxyHeader):
        assert data.endswith(whole[1])

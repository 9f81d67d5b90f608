"""Fuzzing the PROXY v1/v2 parser with mutated headers.

Contract: ``next_event`` gives a ``ProxyHeader`` or ``NEED_DATA`` or raises
``ProtocolError`` (then on every call), nothing else; it never buffers more than its
``max_size`` before the header is known, however big a chunk arrives; a header is
complete exactly at its last byte, is never longer than ``max_size``, and everything after
it is ``trailing``, byte for byte; ``NEED_DATA`` only for a prefix of what could still be a
header. How the bytes arrive never changes the outcome.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.errors import ProtocolError
from gatekeeper.net.proxyproto import (
    MAX_HEADER,
    NEED_DATA,
    V1_MAX_LINE,
    ProxyHeader,
    ProxyParser,
    encode_v1,
    encode_v2,
    looks_like_proxy,
)
from tests.fuzz import fuzz_settings
from tests.fuzz.mutate import Edit, apply, arrivals, edits, pieces

ports = st.integers(0, 0xFFFF)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.one_of(
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.sampled_from(["::", "::1", "fe80::1", "2001:db8::8:800:200c:417a"]),
)
pairs = st.one_of(
    st.tuples(st.tuples(v4, ports), st.tuples(v4, ports)),
    st.tuples(st.tuples(v6, ports), st.tuples(v6, ports)),
)
tlvs = st.lists(
    st.tuples(st.integers(0, 255), st.binary(max_size=300)).map(
        lambda t: bytes([t[0]]) + len(t[1]).to_bytes(2, "big") + t[1]
    ),
    max_size=20,
).map(b"".join)
# Valid headers: v1 (TCP4, TCP6, UNKNOWN), v2 PROXY with TLVs (some past MAX_HEADER),
# v2 LOCAL; then what the client sends after it.
# The longest v1 line the spec allows: UNKNOWN with two full IPv6 addresses (107 bytes).
FULL = ":".join(["ffff"] * 8)
LONGEST_V1 = f"PROXY UNKNOWN {FULL} {FULL} 65535 65535\r\n".encode()


def set_length(data: bytes, length: int | None) -> bytes:
    if length is None or len(data) < 16 or not data.startswith(b"\r\n\r\n"):
        return data
    return data[:14] + length.to_bytes(2, "big") + data[16:]


_V2 = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2))


def _v2_plus(extra: bytes) -> bytes:
    """The v2 header above with ``extra`` bytes in its TLV area (length field to match)."""
    return set_length(_V2 + extra, len(_V2) - 16 + len(extra))


def _v2_padded(size: int) -> bytes:
    """The v2 header above grown to ``size`` bytes by one TLV."""
    pad = size - len(_V2) - 3
    return _v2_plus(b"\x04" + pad.to_bytes(2, "big") + b"\0" * pad)


# Hostile headers right at the limits: one byte too long, TLVs that overrun or leave bytes
# (all malformed); and the valid ones beside them.
EDGES = [
    LONGEST_V1[:-2] + b"5\r\n", LONGEST_V1.replace(b"UNKNOWN", b"TCP6\t\t\t"),
    _v2_plus(b"\x01"), _v2_plus(b"\x01\x00"), _v2_plus(b"\x01\x00\x01"),
    _v2_plus(b"\x04\x00\x02ab\x05"), _v2_plus(b"\x04\x00\x03ab"), _v2_padded(MAX_HEADER + 1),
]  # fmt: skip
VALID_EDGES = [
    LONGEST_V1, _v2_plus(b"\x01\x00\x00"), _v2_plus(b"\x04\x00\x02ab"), _v2_padded(MAX_HEADER),
]  # fmt: skip
headers = st.one_of(
    pairs.map(lambda p: encode_v1(*p)),
    st.just(encode_v1(None, None)),
    st.sampled_from([*VALID_EDGES, *EDGES]),
    st.builds(lambda p, t: encode_v2(*p, t), pairs, tlvs),
    tlvs.map(lambda t: encode_v2(None, None, t)),
)
# (bytes, times): a megabyte is built in the test, not drawn (its repr would be huge).
after = st.sampled_from([(b"", 0), (b"220 hello\r\n", 1), (b"USER x\r\n", 1), (b"\0", 70_000)])
# Header-aware edits: the v2 length field (bytes 14-15) set to a chosen value.
lengths = st.sampled_from(
    [0, 1, 11, 12, 35, 36, 215, 216, MAX_HEADER - 16, MAX_HEADER - 15, 0xFFFF]
)


def outcome(data: bytes, how: tuple[str, tuple[int, ...]], max_size: int) -> tuple[object, bytes]:
    """The parser's event (or "error") and trailing bytes, checking its bounds on the way."""
    parser = ProxyParser(max_size)
    event: object = NEED_DATA
    for piece in pieces(data, how):
        parser.receive_data(piece)
        assert len(parser._buffer) <= max_size  # never reads past its limit
        try:
            event = parser.next_event()
        except ProtocolError:
            event = "error"
            for _ in range(2):  # an error stays an error, whatever comes next
                parser.receive_data(b"PROXY UNKNOWN\r\n")
                try:
                    parser.next_event()
                except ProtocolError:
                    continue
                raise AssertionError("a parser that erred gave an event") from None
            return event, b""
        assert isinstance(event, ProxyHeader) or event is NEED_DATA
    return event, parser.trailing if isinstance(event, ProxyHeader) else b""


def check_header(header: ProxyHeader, data: bytes, trailing: bytes, max_size: int) -> None:
    size = len(data) - len(trailing)
    assert data[size:] == trailing and 0 < size <= max_size
    # Complete exactly at its last byte: one byte less is not yet a header.
    assert outcome(data[: size - 1], ("whole", ()), max_size)[0] is NEED_DATA
    assert outcome(data[:size], ("whole", ()), max_size) == (header, b"")
    if header.version == 1:
        assert size <= V1_MAX_LINE and data[:size].endswith(b"\r\n")
    else:
        assert int.from_bytes(data[14:16], "big") == size - 16
        if not header.local:  # the address block, then well-formed TLVs to the last byte
            offset = 16 + (12 if data[13] >> 4 == 1 else 36)
            while offset < size:
                offset += 3 + int.from_bytes(data[offset + 1 : offset + 3], "big")
            assert offset == size
    if header.local:
        assert header.source is None and header.destination is None
        return
    assert header.source is not None and header.destination is not None
    for host, port in (header.source, header.destination):
        assert 0 <= port <= 0xFFFF
        address = ipaddress.ip_address(host)
        assert address.version == ipaddress.ip_address(header.source[0]).version
        mapped = isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped
        assert host == (f"::ffff:{mapped}" if mapped else str(address))  # canonical text


@fuzz_settings()
@given(
    headers, after, edits(max_size=3), st.none() | lengths, st.sampled_from([232, 512, MAX_HEADER]),
    arrivals,
)  # fmt: skip
def test_proxy_parser(
    header: bytes,
    rest_times: tuple[bytes, int],
    changes: list[Edit],
    length: int | None,
    max_size: int,
    how: tuple[str, tuple[int, ...]],
) -> None:
    check(apply(set_length(header, length) + rest_times[0] * rest_times[1], changes), header,
          length is None, max_size, how)  # fmt: skip


@pytest.mark.parametrize("header", [*VALID_EDGES, *EDGES])
@pytest.mark.parametrize("how", [("whole", ()), ("bytewise", ())], ids=["whole", "bytewise"])
def test_edges(header: bytes, how: tuple[str, tuple[int, ...]]) -> None:
    """The seeds at the limits, every time (random draws reach them only now and then)."""
    assert len(LONGEST_V1) == V1_MAX_LINE
    check(header + b"USER x\r\n", header, True, MAX_HEADER, how)
    event, trailing = outcome(header + b"USER x\r\n", how, MAX_HEADER)
    if header in VALID_EDGES:
        assert isinstance(event, ProxyHeader) and trailing == b"USER x\r\n"
    else:
        assert event == "error"


def check(
    data: bytes, header: bytes, intact: bool, max_size: int, how: tuple[str, tuple[int, ...]]
) -> None:
    """The contract for ``data``, made from ``header`` (``intact``: its length field kept)."""
    event, trailing = outcome(data, how, max_size)
    assert (event, trailing) == outcome(data, ("whole", ()), max_size)
    if isinstance(event, ProxyHeader):
        check_header(event, data, trailing, max_size)
    elif event is NEED_DATA:
        assert looks_like_proxy(data)
        assert len(data) < max_size
    if data.startswith(header) and intact and len(header) <= max_size:
        # Untouched: the header the sender meant and the client's bytes after it, or the
        # same error as for the header alone.
        alone, _ = outcome(header, ("whole", ()), max_size)
        rest = data[len(header) :] if isinstance(alone, ProxyHeader) else b""
        assert (event, trailing) == (alone, rest)

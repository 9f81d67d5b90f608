"""PROXY protocol v1 (text) and v2 (binary) headers, sans-IO.

Grammar from HAProxy's ``doc/proxy-protocol.txt`` ("the spec" below). A trusted sender
(HAProxy, a load balancer) puts one header in front of the client's bytes. ``ProxyParser``
is fed bytes and returns the header once complete, keeping what followed in ``trailing``;
``encode_v1``/``encode_v2`` write headers. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Final

from gatekeeper.errors import ProtocolError

__all__ = [
    "MAX_HEADER",
    "NEED_DATA",
    "V1_MAX_LINE",
    "V1_PREFIX",
    "V2_SIGNATURE",
    "NeedData",
    "ProxyHeader",
    "ProxyParser",
    "encode_v1",
    "encode_v2",
    "looks_like_proxy",
]

V1_PREFIX: Final = b"PROXY "
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"

# Spec 2.1: the longest v1 line, CRLF included, is 107 bytes
# ("PROXY UNKNOWN" with two full IPv6 addresses and two 5-digit ports).
V1_MAX_LINE: Final = 107

# Spec 2.2: 12-byte signature, version/command byte, family/transport byte, 2-byte length.
_V2_FIXED: Final = 16
# Spec 2.2: address block sizes for AF_INET, AF_INET6 and AF_UNIX.
_V2_INET_BLOCK: Final = 12
_V2_INET6_BLOCK: Final = 36
_V2_UNIX_BLOCK: Final = 216
# Spec 2.2: a TLV is a type byte and a 2-byte big-endian length, then the value.
_TLV_HEAD: Final = 3

# v2's length field allows a header of 16 + 65535 bytes. The largest address block the spec
# defines is 216 bytes (AF_UNIX); the rest is TLVs (ALPN, authority, TLS details, cloud
# endpoint ids), which real senders keep to a few hundred bytes. We refuse anything larger
# than 4096 rather than buffer 64 KiB for every connection a trusted sender opens.
MAX_HEADER: Final = 4096
# The smallest max_size that still admits every address block the spec defines.
_MIN_MAX_SIZE: Final = _V2_FIXED + _V2_UNIX_BLOCK

_V2_VERSION: Final = 0x2
_CMD_LOCAL: Final = 0x0
_CMD_PROXY: Final = 0x1
# Spec 2.2: the only family/transport bytes a receiver may accept; others must be rejected.
_FAM_UNSPEC: Final = 0x00
_FAM_TCP4: Final = 0x11
_FAM_UDP4: Final = 0x12
_FAM_TCP6: Final = 0x21
_FAM_UDP6: Final = 0x22
_FAM_UNIX_STREAM: Final = 0x31
_FAM_UNIX_DGRAM: Final = 0x32
_VALID_FAMILIES: Final = frozenset(
    {_FAM_UNSPEC, _FAM_TCP4, _FAM_UDP4, _FAM_TCP6, _FAM_UDP6, _FAM_UNIX_STREAM, _FAM_UNIX_DGRAM}
)

_LINE_BREAK = re.compile(rb"[\r\n]")
# Spec 2.1: decimal, 0..65535, no heading zeroes (and so no sign).
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
# Characters of a dotted-quad or hex-and-colons address; keeps out zone ids ("%eth0").
_ADDRESS_CHARS = re.compile(rb"[0-9A-Fa-f:.]+")


class NeedData(Enum):
    """Type of the ``NEED_DATA`` sentinel."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA
"""Returned by ``ProxyParser.next_event`` until a whole header has been received."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY header; addresses are canonical text (see ``_address_text``)."""

    version: int  # 1 or 2
    local: bool  # v2 LOCAL, v2 AF_UNSPEC or v1 UNKNOWN: use the sender's own address
    source: tuple[str, int] | None  # claimed client (address, port); None when local
    destination: tuple[str, int] | None  # address the client connected to; None when local


_LOCAL_V1: Final = ProxyHeader(version=1, local=True, source=None, destination=None)
_LOCAL_V2: Final = ProxyHeader(version=2, local=True, source=None, destination=None)


def _address_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Canonical text; IPv4-mapped IPv6 as ``::ffff:a.b.c.d``, whatever the Python version.

    That is how the kernel (``getpeername``) and Python 3.13+ print them, and what the
    listener's normalisation to IPv4 expects; Python 3.11 would print ``::ffff:c000:207``.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def looks_like_proxy(data: bytes) -> bool:
    """True if ``data`` starts with a PROXY v1 or v2 signature, or is a prefix of one."""
    return _could_be(data, V1_PREFIX) or _could_be(data, V2_SIGNATURE)


def _could_be(data: bytes, signature: bytes) -> bool:
    return signature.startswith(data[: len(signature)])


class ProxyParser:
    """Reads one PROXY v1 or v2 header from a stream, h11-style.

    Feed bytes with ``receive_data``; ``next_event`` returns ``NEED_DATA`` until the header
    is complete, then the ``ProxyHeader`` (again on every later call). Bytes after the
    header, including any received later, are in ``trailing``. A malformed or oversized
    header raises ``ProtocolError``, and so does every later call.
    """

    def __init__(self, max_size: int = MAX_HEADER) -> None:
        if max_size < _MIN_MAX_SIZE:
            raise ValueError(f"max_size must be at least {_MIN_MAX_SIZE}, not {max_size}")
        self._max_size = max_size
        self._buffer = bytearray()
        self._header: ProxyHeader | None = None
        self._error: str | None = None
        self._trailing = bytearray()

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the sender.

        At most ``max_size`` bytes are ever buffered before the header is known: a header
        is never longer, so a full buffer always settles it (a header, or an error that
        ``next_event`` raises), and what came after a header goes to ``trailing``.
        """
        if self._header is not None:
            self._trailing += data
            return
        if self._error is not None:
            return
        room = self._max_size - len(self._buffer)
        if len(data) <= room:
            self._buffer += data
            return
        self._buffer += data[:room]
        self._settle()
        if self._header is not None:
            self._trailing += data[room:]

    def _settle(self) -> None:
        """Parse the full buffer now; keep the header or the error for ``next_event``."""
        try:
            event = self.next_event()
        except ProtocolError:
            return
        if event is NEED_DATA:  # cannot happen (see receive_data); never buffer more
            self._error = f"PROXY header longer than {self._max_size} bytes"
            self._buffer.clear()

    def next_event(self) -> ProxyHeader | NeedData:
        """The header once complete, else ``NEED_DATA``; ``ProtocolError`` if malformed."""
        if self._error is not None:
            raise ProtocolError(self._error)
        if self._header is not None:
            return self._header
        try:
            result = self._parse(bytes(self._buffer))
        except ProtocolError as exc:
            self._error = str(exc)
            self._buffer.clear()
            raise
        if result is NEED_DATA:
            return NEED_DATA
        header, size = result
        self._header = header
        self._trailing += self._buffer[size:]
        self._buffer.clear()
        return header

    @property
    def trailing(self) -> bytes:
        """Bytes received after the header (to relay onward); empty until it is complete."""
        return bytes(self._trailing)

    def _parse(self, data: bytes) -> tuple[ProxyHeader, int] | NeedData:
        if data[:1] == V1_PREFIX[:1]:
            if not _could_be(data, V1_PREFIX):
                raise ProtocolError(f"bad PROXY v1 signature: {data[: len(V1_PREFIX)]!r}")
            return _parse_v1(data) if len(data) > len(V1_PREFIX) else NEED_DATA
        if data[:1] == V2_SIGNATURE[:1]:
            if not _could_be(data, V2_SIGNATURE):
                raise ProtocolError("bad PROXY v2 signature")
            return _parse_v2(data, self._max_size)
        if not data:
            return NEED_DATA
        raise ProtocolError(f"no PROXY header: data starts with {data[:8]!r}")


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | NeedData:
    """Parse a v1 line from ``data``, which starts with ``V1_PREFIX``."""
    brk = _LINE_BREAK.search(data, 0, V1_MAX_LINE)
    if brk is None:
        if len(data) >= V1_MAX_LINE:
            raise ProtocolError(f"PROXY v1 line longer than {V1_MAX_LINE} bytes")
        return NEED_DATA
    end = brk.start()
    if data[end : end + 1] == b"\n":
        raise ProtocolError("PROXY v1 line has a bare LF (must end with CRLF)")
    if end + 2 > V1_MAX_LINE:
        raise ProtocolError(f"PROXY v1 line longer than {V1_MAX_LINE} bytes")
    if len(data) == end + 1:
        return NEED_DATA
    if data[end + 1 : end + 2] != b"\n":
        raise ProtocolError("PROXY v1 line has a bare CR (must end with CRLF)")
    return _parse_v1_line(data[:end]), end + 2


def _parse_v1_line(line: bytes) -> ProxyHeader:
    """Parse a v1 line without its CRLF."""
    fields = line.split(b" ")
    protocol = fields[1]
    if protocol == b"UNKNOWN":
        return _LOCAL_V1  # spec 2.1: the receiver must ignore anything up to the CRLF
    if protocol == b"TCP4":
        family: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = ipaddress.IPv4Address
    elif protocol == b"TCP6":
        family = ipaddress.IPv6Address
    else:
        raise ProtocolError(f"bad PROXY v1 protocol {protocol[:16]!r} (TCP4, TCP6 or UNKNOWN)")
    if len(fields) != 6:
        raise ProtocolError(
            f"PROXY v1 {protocol.decode()} line must have 6 fields separated by single spaces"
        )
    kind = protocol.decode()
    src = _v1_address(fields[2], family, f"{kind} source")
    dst = _v1_address(fields[3], family, f"{kind} destination")
    sport = _v1_port(fields[4], "source")
    dport = _v1_port(fields[5], "destination")
    return ProxyHeader(version=1, local=False, source=(src, sport), destination=(dst, dport))


def _v1_address(
    text: bytes, family: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address], what: str
) -> str:
    if _ADDRESS_CHARS.fullmatch(text):
        try:
            return _address_text(family(text.decode("ascii")))
        except ValueError:
            pass
    raise ProtocolError(f"bad PROXY v1 {what} address {text[:48]!r}")


def _v1_port(text: bytes, what: str) -> int:
    if _PORT.fullmatch(text) and int(text) <= 0xFFFF:
        return int(text)
    raise ProtocolError(f"bad PROXY v1 {what} port {text[:16]!r} (0-65535, no leading zero)")


def _parse_v2(data: bytes, max_size: int) -> tuple[ProxyHeader, int] | NeedData:
    """Parse a v2 header from ``data``, which is a prefix of or starts with the signature."""
    # Each fixed field is checked as soon as it arrives, so garbage is refused early.
    sig = len(V2_SIGNATURE)
    if len(data) <= sig:
        return NEED_DATA
    version, command = data[sig] >> 4, data[sig] & 0x0F
    if version != _V2_VERSION:
        raise ProtocolError(f"bad PROXY v2 version {version} (must be 2)")
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProtocolError(f"bad PROXY v2 command {command} (LOCAL 0 or PROXY 1)")
    if len(data) <= sig + 1:
        return NEED_DATA
    family = data[sig + 1]
    if family not in _VALID_FAMILIES:
        raise ProtocolError(f"bad PROXY v2 address family/transport 0x{family:02x}")
    if command == _CMD_PROXY and family in (_FAM_UDP4, _FAM_UDP6, _FAM_UNIX_DGRAM):
        raise ProtocolError("PROXY v2 over UDP (DGRAM) is not supported")
    if command == _CMD_PROXY and family == _FAM_UNIX_STREAM:
        raise ProtocolError("PROXY v2 with AF_UNIX addresses is not supported")
    if len(data) < _V2_FIXED:
        return NEED_DATA
    length = int.from_bytes(data[sig + 2 : _V2_FIXED], "big")
    size = _V2_FIXED + length
    if size > max_size:
        raise ProtocolError(f"PROXY v2 header of {size} bytes is larger than {max_size} allowed")
    # Spec 2.2: LOCAL discards the address block whatever the family; AF_UNSPEC carries
    # no address. Either way the sender's own address is used.
    local = command == _CMD_LOCAL or family == _FAM_UNSPEC
    if family == _FAM_TCP4:
        need, ip_size = _V2_INET_BLOCK, 4
        make: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = ipaddress.IPv4Address
    else:
        need, ip_size = _V2_INET6_BLOCK, 16
        make = ipaddress.IPv6Address
    if not local and length < need:
        raise ProtocolError(f"PROXY v2 address block of {length} bytes is too short (needs {need})")
    if len(data) < size:
        return NEED_DATA
    if local:
        return _LOCAL_V2, size
    block = data[_V2_FIXED:size]
    problem = _check_tlvs(block[need:])
    if problem:
        raise ProtocolError(f"bad PROXY v2 TLV: {problem}")
    src = _address_text(make(block[:ip_size]))
    dst = _address_text(make(block[ip_size : 2 * ip_size]))
    sport, dport = struct.unpack_from("!HH", block, 2 * ip_size)
    header = ProxyHeader(version=2, local=False, source=(src, sport), destination=(dst, dport))
    return header, size


def _check_tlvs(tlvs: bytes) -> str | None:
    """What is wrong with the TLV area's framing, or None; values are not looked at."""
    offset = 0
    while offset < len(tlvs):
        if offset + _TLV_HEAD > len(tlvs):
            return f"{len(tlvs) - offset} stray bytes after the last TLV"
        length = int.from_bytes(tlvs[offset + 1 : offset + _TLV_HEAD], "big")
        end = offset + _TLV_HEAD + length
        if end > len(tlvs):
            return f"TLV 0x{tlvs[offset]:02x} of {length} bytes overruns the header"
        offset = end
    return None


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v1 line for a TCP connection; both None gives ``PROXY UNKNOWN``."""
    pair = _address_pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    (src, sport), (dst, dport) = pair
    protocol = "TCP4" if src.version == 4 else "TCP6"
    src_text, dst_text = _address_text(src), _address_text(dst)
    return f"PROXY {protocol} {src_text} {dst_text} {sport} {dport}\r\n".encode("ascii")


def encode_v2(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, tlvs: bytes = b""
) -> bytes:
    """A v2 header: PROXY over TCP, or LOCAL when both are None; ``tlvs`` is appended raw."""
    problem = _check_tlvs(tlvs)
    if problem:
        raise ValueError(f"bad TLVs: {problem}")
    pair = _address_pair(source, destination)
    if pair is None:
        command, family, block = _CMD_LOCAL, _FAM_UNSPEC, b""
    else:
        (src, sport), (dst, dport) = pair
        command = _CMD_PROXY
        family = _FAM_TCP4 if src.version == 4 else _FAM_TCP6
        block = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    payload = block + tlvs
    if len(payload) > 0xFFFF:
        raise ValueError(f"PROXY v2 payload of {len(payload)} bytes exceeds 65535")
    fixed = struct.pack("!BBH", _V2_VERSION << 4 | command, family, len(payload))
    return V2_SIGNATURE + fixed + payload


_Endpoint = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


def _address_pair(
    source: tuple[str, int] | None, destination: tuple[str, int] | None
) -> tuple[_Endpoint, _Endpoint] | None:
    """Validated endpoints of one family, or None for a local header."""
    if source is None and destination is None:
        return None
    if source is None or destination is None:
        raise ValueError("give both source and destination, or neither")
    src, dst = _endpoint(source), _endpoint(destination)
    if src[0].version != dst[0].version:
        raise ValueError(f"source {src[0]} and destination {dst[0]} differ in family")
    return src, dst


def _endpoint(endpoint: tuple[str, int]) -> _Endpoint:
    host, port = endpoint
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise ValueError(f"PROXY headers cannot carry a zone id: {host}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port {port!r} (0-65535)")
    return address, port

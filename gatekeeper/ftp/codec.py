"""FTP control-channel grammar, sans-IO: commands, replies, PORT/EPRT/PASV/EPSV addresses.

``CommandReader`` (client to server) and ``ReplyReader`` (server to client) are fed bytes
with ``receive_data`` and give events from ``next_event``, h11-style, or ``NEED_DATA``. Every
event keeps its bytes exactly as received in ``raw``, so an allowed line goes on unchanged.
The ``parse_*``/``format_*`` functions read and write the data-connection addresses of
PORT, EPRT and the 227/229 replies, and whole replies and commands. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections import deque
from dataclasses import dataclass
from typing import Final

from gatekeeper.errors import ProtocolError
from gatekeeper.net.proxyproto import NEED_DATA, NeedData

__all__ = [
    "MAX_LINE",
    "MAX_REPLY_LINES",
    "NEED_DATA",
    "Command",
    "CommandReader",
    "LineTooLong",
    "NeedData",
    "Reply",
    "ReplyReader",
    "UnknownFamily",
    "format_227",
    "format_229",
    "format_command",
    "format_eprt",
    "format_port",
    "format_reply",
    "parse_227",
    "parse_229",
    "parse_eprt",
    "parse_port",
]

# Data-connection addresses on the control channel (numbers are decimal ASCII):
#
#   PORT h1,h2,h3,h4,p1,p2         RFC 959 4.1.2: "connect to me at h1.h2.h3.h4, port
#                                  p1*256+p2"; six numbers 0..255. IPv4 only.
#   EPRT |1|132.235.1.2|6275|      RFC 2428 2: <d><af><d><address><d><port><d>; af 1 is an
#   EPRT |2|1080::8:800:200C:417A|5282|  IPv4 dotted quad, af 2 IPv6 text. <d> is any ASCII
#                                  33..126 ("|" recommended), the same all four times.
#   227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)   RFC 959 4.2, the reply to PASV: "I
#                                  listen there". The wording is not fixed (parentheses or
#                                  not, "=h1,...", trailing "."), so RFC 1123 4.1.2.6 tells
#                                  clients to scan the text for the numbers; parse_227 does.
#   229 Entering Extended Passive Mode (|||6446|)   RFC 2428 3, the reply to EPSV: only the
#                                  port; the address is the control connection's. Same <d>.
#
# FTP bounce (RFC 2577 3, CERT CA-1997-27): PORT/EPRT make the server connect to whatever
# address and port the client names, so a client could use the server to reach a third
# party's services (or the server's own neighbours) from the server's address. Like
# pyftpdlib, the inspector (session.py) answers 504 to a PORT/EPRT whose address is not the
# client's own or whose port is below 1024 (RFC 2577 suggests refusing ports below 1024 with
# 504 and checking the address). The parsers here check syntax only: any address, port
# 0..65535.

# RFC 959 sets no bound on a control line. The longest legitimate lines are commands that
# carry a path (CWD, RETR, STOR, ...); 4096 bytes, CRLF included, is Linux's PATH_MAX and
# vsftpd's VSFTP_MAX_COMMAND_LINE, far above what real clients send (IBM i library paths
# such as /QSYS.LIB/LIB.LIB/FILE.FILE/MBR.MBR stay under 100 bytes). Longer is abuse.
MAX_LINE: Final = 4096
# RFC 959 4.2 sets no bound on the lines of a multi-line reply. FEAT and HELP replies have a
# few dozen and banners fewer; 1000 bounds what one reply can buffer (1000 * MAX_LINE = 4 MiB).
# Caveat: "STAT <directory>" lists the directory over the control channel as one reply, so a
# listing of more than about 1000 entries that way exceeds it.
MAX_REPLY_LINES: Final = 1000

# Telnet (RFC 854) inside the FTP control channel (RFC 959 4.1.3).
_IAC: Final = 0xFF  # "interpret as command"; IAC IAC is a literal 0xFF byte
_WILL: Final = 251  # WILL, WONT, DO, DONT (251..254) take one option byte after them
_DONT: Final = 254

_LF: Final = b"\n"
_CRLF: Final = b"\r\n"

# A reply line: three digits (first 1..5, so 100..599), then "-" (multi-line), " " or nothing.
_REPLY_LINE = re.compile(rb"([1-5][0-9][0-9])(?:([ -])(.*))?", re.DOTALL)
# What a first reply line may start with while incomplete: refuses garbage early.
_REPLY_START = re.compile(rb"(?:[1-5](?:[0-9](?:[0-9][- \r]?)?)?)?")
_PORT_ARGUMENT = re.compile(r"[ \t]*([0-9]+)" + r"[ \t]*,[ \t]*([0-9]+)" * 5 + r"[ \t]*")
# A maximal run of comma-separated numbers, for scanning 227 texts.
_NUMBER_RUN = re.compile(r"(?<![0-9])[0-9]+(?:[ \t]*,[ \t]*[0-9]+)+(?![0-9])")
# RFC 2428 3: (<d><d><d><port><d>), <d> in 33..126 (digits excluded: they would be ambiguous).
_EPSV_PARENS = re.compile(r"\(([!-/:-~])\1\1([0-9]+)\1\)")
_EPSV_BARE = re.compile(r"([!-/:-~])\1\1([0-9]+)\1")
_IPV4_TEXT = re.compile(r"[0-9.]+")
_IPV6_TEXT = re.compile(r"[0-9A-Fa-f:.]+")
_DECIMAL = re.compile(r"[0-9]{1,5}")
_VERB = re.compile(r"[A-Za-z]{1,8}")


@dataclass(frozen=True, slots=True)
class Command:
    """One line from the client."""

    verb: str  # upper-case ASCII verb ("USER", "EPSV"); "" for an empty line
    argument: str  # text after the first space (UTF-8, surrogateescape), without CRLF; may be ""
    raw: bytes  # the line exactly as received, line ending included

    @property
    def hides_line_end(self) -> bool:
        """True if a Telnet-aware server would take this line's LF into an IAC sequence.

        Such a line ends in ``IAC LF`` or ``IAC WILL/WONT/DO/DONT LF``: that server would join
        the next line to this one, so this reader and the server would see different
        commands. Refuse such a line rather than forward it.
        """
        return self.raw.endswith(_LF) and _strip_telnet(self.raw[:-1])[1]


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A command line passed ``max_line``; the reader drops it up to the next LF, then goes on."""

    # Bytes of the line counted before giving up: always max_line + 1, whatever its full
    # length, so the event does not depend on how the bytes arrived (the rest is not kept).
    size: int


@dataclass(frozen=True, slots=True)
class Reply:
    """One whole reply from the server, single- or multi-line."""

    code: int  # 100..599
    lines: tuple[str, ...]  # each line's text without CRLF; first without "NNN-"/"NNN ", last
    # without "NNN "; continuation lines as they are (UTF-8, surrogateescape)
    raw: bytes  # the reply exactly as received, all lines

    @property
    def text(self) -> str:
        """The lines joined with ``"\\n"``."""
        return "\n".join(self.lines)

    @property
    def preliminary(self) -> bool:
        """True for a 1xx reply: another reply to the same command follows."""
        return self.code < 200


def _strip_telnet(line: bytes) -> tuple[bytes, bool]:
    """``line`` without Telnet IAC sequences, and whether it ends inside one.

    IAC IAC is a literal 0xFF; IAC WILL/WONT/DO/DONT take an option byte; IAC and any other
    byte (the commands 240..250: IP, DM, NOP, ...) are two bytes. Like BSD ftpd's getline,
    IAC followed by a byte that is no Telnet command is dropped with it.
    """
    if _IAC not in line:
        return line, False
    out = bytearray()
    start, end = 0, len(line)
    while start < end:
        iac = line.find(_IAC, start)
        if iac < 0:
            out += line[start:]
            break
        out += line[start:iac]
        if iac + 1 == end:
            return bytes(out), True
        after = line[iac + 1]
        if after == _IAC:
            out.append(_IAC)
            start = iac + 2
        elif _WILL <= after <= _DONT:
            if iac + 2 == end:
                return bytes(out), True
            start = iac + 3
        else:
            start = iac + 2
    return bytes(out), False


def _parse_command(raw: bytes) -> Command:
    """The command in ``raw``, one line ending in LF; never raises."""
    text = _strip_telnet(raw[:-1])[0]
    if raw.endswith(_CRLF) and text.endswith(b"\r"):
        text = text[:-1]
    verb, _, argument = text.partition(b" ")
    return Command(
        verb=verb.upper().decode("utf-8", "surrogateescape"),  # bytes.upper(): ASCII only
        argument=argument.decode("utf-8", "surrogateescape"),
        raw=raw,
    )


class CommandReader:
    """Splits the client's bytes into ``Command`` events, h11-style; never raises.

    Lines end in LF, with or without CR before it. A line longer than ``max_line`` (line
    ending included) gives one ``LineTooLong`` as soon as that is known; its bytes are
    dropped up to and including the next LF, then reading goes on. Lines are split at every
    LF, Telnet sequences or not, so that no LF can hide a command from the inspector.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError(f"max_line must be at least 1, not {max_line}")
        self._max_line = max_line
        self._partial = bytearray()  # start of the next line, at most max_line bytes
        self._dropping = False  # inside a line that was too long, until its LF
        self._events: deque[Command | LineTooLong] = deque()

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the client."""
        start, end = 0, len(data)
        while start < end:
            lf = data.find(_LF, start)
            if self._dropping:
                if lf < 0:
                    return
                self._dropping = False
            elif lf < 0:
                if end - start > self._max_line - len(self._partial):
                    self._events.append(LineTooLong(self._max_line + 1))
                    self._partial.clear()
                    self._dropping = True
                else:
                    self._partial += data[start:]
                return
            elif len(self._partial) + lf + 1 - start > self._max_line:
                self._events.append(LineTooLong(self._max_line + 1))
                self._partial.clear()
            elif self._partial:
                self._partial += data[start : lf + 1]
                self._events.append(_parse_command(bytes(self._partial)))
                self._partial.clear()
            else:
                self._events.append(_parse_command(bytes(data[start : lf + 1])))
            start = lf + 1

    def next_event(self) -> Command | LineTooLong | NeedData:
        """The next command or ``LineTooLong``, else ``NEED_DATA``."""
        return self._events.popleft() if self._events else NEED_DATA

    def pending(self) -> int:
        """Bytes buffered without a complete line (at most ``max_line``)."""
        return len(self._partial)


class ReplyReader:
    """Splits the server's bytes into ``Reply`` events, h11-style.

    Lines end in LF, with or without CR before it. A reply is one line ``NNN text`` (or
    ``NNN``), or a first line ``NNN-text``, continuation lines of any content, and a last line
    ``NNN text`` (or ``NNN``) with the same code (RFC 959 4.2). ``next_event`` raises
    ``ProtocolError`` at the first reply that is not FTP, at a line longer than ``max_line``
    and at a multi-line reply of more than ``max_lines`` lines; then on every later call.
    """

    def __init__(self, max_line: int = MAX_LINE, max_lines: int = MAX_REPLY_LINES) -> None:
        if max_line < 1 or max_lines < 1:
            raise ValueError(f"max_line and max_lines must be at least 1: {max_line}, {max_lines}")
        self._max_line = max_line
        self._max_lines = max_lines
        self._partial = bytearray()  # start of the next line, at most max_line bytes
        self._code: bytes | None = None  # the code while inside a multi-line reply
        self._raw: list[bytes] = []  # lines of the multi-line reply so far
        self._texts: list[str] = []
        self._events: deque[Reply] = deque()
        self._error: str | None = None

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the server (ignored after an error)."""
        start, end = 0, len(data)
        while start < end and self._error is None:
            lf = data.find(_LF, start)
            if lf < 0:
                if end - start > self._max_line - len(self._partial):
                    self._error = f"reply line longer than {self._max_line} bytes"
                    return
                self._partial += data[start:]
                if self._code is None and not _REPLY_START.fullmatch(self._partial[:4]):
                    self._error = f"not an FTP reply: {bytes(self._partial[:16])!r}"
                return
            if len(self._partial) + lf + 1 - start > self._max_line:
                self._error = f"reply line longer than {self._max_line} bytes"
                return
            self._partial += data[start : lf + 1]
            line = bytes(self._partial)
            self._partial.clear()
            start = lf + 1
            self._line(line)

    def next_event(self) -> Reply | NeedData:
        """The next whole reply, else ``NEED_DATA``; ``ProtocolError`` once the server erred."""
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise ProtocolError(self._error)
        return NEED_DATA

    def _line(self, raw: bytes) -> None:
        content = raw[:-2] if raw.endswith(_CRLF) else raw[:-1]
        if self._code is None:
            self._first_line(raw, content)
        elif content[:3] == self._code and content[3:4] in (b"", b" "):
            self._raw.append(raw)
            self._texts.append(_decode(content[4:]))
            self._events.append(Reply(int(self._code), tuple(self._texts), b"".join(self._raw)))
            self._code = None
            self._raw, self._texts = [], []
        elif len(self._raw) >= self._max_lines - 1:
            self._error = f"multi-line reply longer than {self._max_lines} lines"
        else:
            self._raw.append(raw)
            self._texts.append(_decode(content))

    def _first_line(self, raw: bytes, content: bytes) -> None:
        match = _REPLY_LINE.fullmatch(content)
        if match is None:
            self._error = f"not an FTP reply: {content[:16]!r}"
            return
        code, mark, text = match.groups()
        if mark == b"-":
            if self._max_lines < 2:
                self._error = f"multi-line reply longer than {self._max_lines} lines"
                return
            self._code = code
            self._raw, self._texts = [raw], [_decode(text)]
        else:
            self._events.append(Reply(int(code), (_decode(text or b""),), raw))


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _address_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Canonical text, IPv4-mapped IPv6 as ``::ffff:a.b.c.d`` (as in net/proxyproto.py)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _ipv4(host: str) -> ipaddress.IPv4Address:
    """``host`` as an IPv4 address; an IPv4-mapped IPv6 address gives its IPv4 address."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None or address.scope_id is not None:
            raise ValueError(f"not an IPv4 address: {host}")
        return address.ipv4_mapped
    return address


def _check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port {port!r} (0-65535)")


def _six_numbers(numbers: list[str], what: str) -> tuple[str, int]:
    """``h1..h4,p1,p2`` (decimal text, each 0..255) as an address and port."""
    values = []
    for number in numbers:
        number = number.strip(" \t")
        if len(number) > 3 or int(number) > 255:
            raise ValueError(f"bad {what}: {number!r} is not 0..255")
        values.append(int(number))
    host = ".".join(str(value) for value in values[:4])
    return host, values[4] * 256 + values[5]


def parse_port(argument: str) -> tuple[str, int]:
    """A PORT argument ``h1,h2,h3,h4,p1,p2`` as ``("h1.h2.h3.h4", p1*256+p2)``; ValueError."""
    match = _PORT_ARGUMENT.fullmatch(argument)
    if match is None:
        raise ValueError(f"bad PORT argument {argument[:64]!r} (six numbers 0..255)")
    return _six_numbers(list(match.groups()), "PORT argument")


def format_port(host: str, port: int) -> str:
    """A PORT argument ``h1,h2,h3,h4,p1,p2`` for an IPv4 address (or IPv4-mapped IPv6)."""
    _check_port(port)
    numbers = [*_ipv4(host).packed, port >> 8, port & 0xFF]
    return ",".join(str(number) for number in numbers)


class UnknownFamily(ValueError):
    """EPRT names a network protocol other than 1 (IPv4) and 2 (IPv6): RFC 2428 answers
    ``522 Network protocol not supported, use (1,2)``, not a syntax error."""


def parse_eprt(argument: str) -> tuple[str, int]:
    """An EPRT argument ``<d>af<d>address<d>port<d>`` as ``(address, port)``; ValueError,
    ``UnknownFamily`` for a well-formed family number other than 1 and 2.

    Spaces around the argument are tolerated. The address comes back canonical.
    """
    text = argument.strip(" ")
    if not text or not 33 <= ord(text[0]) <= 126:
        raise ValueError(f"bad EPRT argument {argument[:64]!r} (delimiter must be ASCII 33..126)")
    fields = text.split(text[0])
    if len(fields) != 5 or fields[0] or fields[4]:
        raise ValueError(f"bad EPRT argument {argument[:64]!r} (<d>af<d>address<d>port<d>)")
    family, host, port = fields[1:4]
    if family not in ("1", "2") and _DECIMAL.fullmatch(family):
        raise UnknownFamily(f"EPRT network protocol {family[:8]!r} is not supported (1, 2)")
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        if family == "1" and _IPV4_TEXT.fullmatch(host):
            address = ipaddress.IPv4Address(host)
        elif family == "2" and _IPV6_TEXT.fullmatch(host):
            address = ipaddress.IPv6Address(host)
        else:
            raise ValueError("address does not match the family (1 = IPv4, 2 = IPv6)")
    except ValueError as exc:
        raise ValueError(
            f"bad EPRT address {host[:64]!r} for family {family[:8]!r}: {exc}"
        ) from None
    if not _DECIMAL.fullmatch(port) or int(port) > 0xFFFF:
        raise ValueError(f"bad EPRT port {port[:16]!r} (0-65535)")
    return _address_text(address), int(port)


def format_eprt(host: str, port: int) -> str:
    """An EPRT argument: ``|1|a.b.c.d|port|`` or ``|2|ipv6|port|``."""
    _check_port(port)
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            raise ValueError(f"EPRT cannot carry a zone id: {host}")
        return f"|2|{_address_text(address)}|{port}|"
    return f"|1|{address}|{port}|"


def parse_227(text: str) -> tuple[str, int]:
    """The address and port in a 227 reply's text: the first run of six numbers; ValueError."""
    for match in _NUMBER_RUN.finditer(text):
        numbers = match.group().split(",")
        if len(numbers) == 6:
            return _six_numbers(numbers, "227 reply")
    raise ValueError(f"no h1,h2,h3,h4,p1,p2 in 227 reply {text[:80]!r}")


def format_227(host: str, port: int) -> bytes:
    """The reply to PASV announcing an IPv4 address (or IPv4-mapped IPv6) and port."""
    return f"227 Entering Passive Mode ({format_port(host, port)}).\r\n".encode("ascii")


def parse_229(text: str) -> int:
    """The port in a 229 reply's text ``(|||port|)``, parentheses optional; ValueError."""
    match = _EPSV_PARENS.search(text) or _EPSV_BARE.search(text)
    if match is None:
        raise ValueError(f"no (<d><d><d>port<d>) in 229 reply {text[:80]!r}")
    port = match.group(2)
    if len(port) > 5 or int(port) > 0xFFFF:
        raise ValueError(f"bad port {port[:16]!r} in 229 reply (0-65535)")
    return int(port)


def format_229(port: int) -> bytes:
    """The reply to EPSV announcing ``port``."""
    _check_port(port)
    return f"229 Entering Extended Passive Mode (|||{port}|).\r\n".encode("ascii")


def format_reply(code: int, text: str) -> bytes:
    """A reply: one line ``NNN text``, or multi-line when ``text`` has line breaks.

    CR, LF and CRLF in ``text`` all break lines; a continuation line that would read as the
    last line (starts with ``NNN `` or is ``NNN``) gets a leading space (RFC 959 4.2).
    ValueError for a code outside 100..599.
    """
    if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
        raise ValueError(f"bad reply code {code!r} (100-599)")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if len(lines) == 1:
        return _encode(f"{code} {text}\r\n")
    first, *middle, last = lines
    out = [f"{code}-{first}"]
    for line in middle:
        ends_reply = line.startswith(str(code)) and line[3:4] in ("", " ")
        out.append(f" {line}" if ends_reply else line)
    out.append(f"{code} {last}")
    return _encode("\r\n".join(out) + "\r\n")


def format_command(verb: str, argument: str = "") -> bytes:
    """A command line ``VERB argument\\r\\n``; 0xFF bytes are doubled (Telnet IAC IAC).

    ValueError for a verb that is not 1..8 ASCII letters or an argument with CR or LF.
    """
    if not _VERB.fullmatch(verb):
        raise ValueError(f"bad FTP verb {verb[:16]!r} (1 to 8 ASCII letters)")
    if "\r" in argument or "\n" in argument:
        raise ValueError("an FTP command argument cannot contain CR or LF")
    line = f"{verb.upper()} {argument}" if argument else verb.upper()
    return _encode(line).replace(b"\xff", b"\xff\xff") + _CRLF

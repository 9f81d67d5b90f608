"""Fuzzing the FTP codec with mutated control-channel traffic.

Contract: ``CommandReader`` never raises, splits exactly at every LF, reports a line past
``max_line`` as one ``LineTooLong`` and never buffers more than ``max_line`` bytes; each
``Command`` keeps its bytes exactly and its verb and argument are the line without Telnet
sequences. ``ReplyReader`` raises nothing but ``ProtocolError`` (then on every call), and
buffers at most ``max_line`` bytes and ``max_lines`` lines. The PORT/EPRT/227/229 parsers
return a valid address and port exactly when the text follows the grammar, else ValueError.
How the bytes arrive never changes a result.
"""

from __future__ import annotations

import ipaddress
import re

from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.errors import ProtocolError
from gatekeeper.ftp.codec import (
    MAX_LINE,
    NEED_DATA,
    Command,
    CommandReader,
    LineTooLong,
    Reply,
    ReplyReader,
    parse_227,
    parse_229,
    parse_eprt,
    parse_port,
)
from tests.fuzz import fuzz_settings
from tests.fuzz.mutate import Edit, apply, arrivals, edits, pieces

COMMANDS = [
    b"USER alice", b"USER QSECOFR", b"PASS s3cret", b"ACCT x", b"SYST", b"FEAT", b"NOOP",
    b"TYPE I", b"PASV", b"EPSV", b"EPSV ALL", b"PORT 127,0,0,1,200,10", b"EPRT |1|127.0.0.1|5282|",
    b"EPRT |2|::1|5282|", b"RETR /QSYS.LIB/LIB.LIB/FILE.FILE/MBR.MBR", b"STOR up.bin", b"LIST",
    b"CWD /home/alice", b"SITE NAMEFMT 1", b"RCMD DLTLIB QGPL", b"\xff\xf4\xff\xf2ABOR",
    b"AUTH TLS", b"OPTS UTF8 ON", b"REST 100", b"QUIT", b"", b"user lower", b"X" * 200,
]  # fmt: skip
ENDINGS = [b"\r\n", b"\r\n", b"\n", b"\r", b""]
REPLIES = [
    b"220 upstream FTP ready\r\n", b"220-IBM i FTP\r\n  banner line\r\n220 ready\r\n",
    b"331 Username ok, send password.\r\n", b"230 Login successful.\r\n", b"530 Not logged in.\r\n",
    b"227 Entering Passive Mode (127,0,0,1,200,10).\r\n", b"200 PORT command successful.\r\n",
    b"229 Entering Extended Passive Mode (|||6446|)\r\n", b"150 Opening data connection.\r\n",
    b"226 Transfer complete.\r\n", b"211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n211 End\r\n",
    b"250 OK\n", b"421 Bye\r\n", b"500\r\n",
]  # fmt: skip

commands = st.lists(st.tuples(st.sampled_from(COMMANDS), st.sampled_from(ENDINGS)), max_size=8)
limits = st.sampled_from([8, 24, 64, MAX_LINE])


# -- a reference for command lines ----------------------------------------------------------


def strip_telnet(data: bytes) -> tuple[bytes, bool]:
    """RFC 854 inside FTP (RFC 959 4.1.3), written plainly: the bytes without IAC
    sequences, and whether ``data`` ends inside one. IAC IAC is 0xFF; IAC WILL/WONT/DO/DONT
    take one option byte; IAC and any other byte are two bytes."""
    out, i = bytearray(), 0
    while i < len(data):
        if data[i] != 0xFF:
            out.append(data[i])
            i += 1
        elif i + 1 == len(data):
            return bytes(out), True
        elif data[i + 1] == 0xFF:
            out.append(0xFF)
            i += 2
        elif 251 <= data[i + 1] <= 254:
            if i + 2 == len(data):
                return bytes(out), True
            i += 3
        else:
            i += 2
    return bytes(out), False


def expected_lines(data: bytes, max_line: int) -> tuple[list[bytes | None], int]:
    """Complete lines (None for one past ``max_line``) and the bytes left pending."""
    lines: list[bytes | None] = []
    start = 0
    while (lf := data.find(b"\n", start)) >= 0:
        line = data[start : lf + 1]
        lines.append(line if len(line) <= max_line else None)
        start = lf + 1
    rest = len(data) - start
    if rest > max_line:
        lines.append(None)
        rest = 0
    return lines, rest


def check_command(event: Command, line: bytes) -> None:
    assert event.raw == line
    text, _ = strip_telnet(line[:-1])
    if line.endswith(b"\r\n") and text.endswith(b"\r"):
        text = text[:-1]
    verb, _, argument = text.partition(b" ")
    assert event.verb.encode("utf-8", "surrogateescape") == verb.upper()
    assert event.argument.encode("utf-8", "surrogateescape") == argument
    assert not re.search(r"[a-z\n]", event.verb) and "\n" not in event.argument
    assert event.hides_line_end == strip_telnet(line[:-1])[1]


def read_commands(data: bytes, how: tuple[str, tuple[int, ...]], max_line: int) -> list[object]:
    reader = CommandReader(max_line)
    events: list[object] = []
    for piece in pieces(data, how):
        reader.receive_data(piece)
        assert reader.pending() <= max_line and len(reader._partial) <= max_line
        while (event := reader.next_event()) is not NEED_DATA:
            events.append(event)
    return events


@fuzz_settings()
@given(commands, edits(), limits, arrivals)
def test_command_reader(
    lines: list[tuple[bytes, bytes]],
    changes: list[Edit],
    max_line: int,
    how: tuple[str, tuple[int, ...]],
) -> None:
    data = apply(b"".join(c + e for c, e in lines), changes)
    events = read_commands(data, how, max_line)
    expected, pending = expected_lines(data, max_line)
    assert len(events) == len(expected)
    for event, line in zip(events, expected, strict=True):
        if line is None:
            assert event == LineTooLong(max_line + 1)
        else:
            assert isinstance(event, Command)
            check_command(event, line)
    reader = CommandReader(max_line)
    reader.receive_data(data)
    assert reader.pending() == pending


# -- replies -----------------------------------------------------------------------------

replies = st.lists(st.sampled_from(REPLIES), min_size=1, max_size=6).map(b"".join)
ERROR = "error"


def read_replies(
    data: bytes, how: tuple[str, tuple[int, ...]], max_line: int, max_lines: int
) -> list[object]:
    reader = ReplyReader(max_line, max_lines)
    events: list[object] = []
    for piece in pieces(data, how):
        reader.receive_data(piece)
        assert len(reader._partial) <= max_line and len(reader._raw) < max_lines
        assert len(reader._texts) == len(reader._raw)
        try:
            while (event := reader.next_event()) is not NEED_DATA:
                events.append(event)
        except ProtocolError:
            events.append(ERROR)
            for _ in range(2):  # and on every later call, whatever arrives
                reader.receive_data(b"220 ok\r\n")
                try:
                    reader.next_event()
                except ProtocolError:
                    continue
                raise AssertionError("a reader that erred gave an event") from None
            break
    return events


def check_reply(reply: Reply, raw: bytes, max_line: int, max_lines: int) -> None:
    assert reply.raw == raw and 100 <= reply.code <= 599
    assert raw.endswith(b"\n")
    lines = [line + b"\n" for line in raw.split(b"\n")[:-1]]  # LF ends a line, not CR
    assert all(len(line) <= max_line for line in lines)
    assert len(lines) == len(reply.lines) <= max_lines
    code = str(reply.code).encode()
    assert lines[0].startswith(code) and lines[-1].startswith(code)
    assert lines[-1].rstrip(b"\r\n")[3:4] in (b"", b" ")
    assert reply.preliminary == (reply.code < 200)


@fuzz_settings()
@given(replies, edits(), limits, st.sampled_from([1, 2, 4, 1000]), arrivals)
def test_reply_reader(
    data: bytes, changes: list[Edit], max_line: int, max_lines: int, how: tuple[str, tuple[int]]
) -> None:
    data = apply(data, changes)
    events = read_replies(data, how, max_line, max_lines)
    assert events == read_replies(data, ("whole", ()), max_line, max_lines)
    assert ERROR not in events[:-1]
    consumed = 0
    for event in events:
        if event == ERROR:
            continue
        assert isinstance(event, Reply)
        check_reply(event, data[consumed : consumed + len(event.raw)], max_line, max_lines)
        consumed += len(event.raw)


# -- data-connection addresses ---------------------------------------------------------------

PORT_ARGS = ["127,0,0,1,200,10", " 10, 0, 0, 1, 4, 1 ", "0,0,0,0,0,0", "255,255,255,255,255,255"]
EPRT_ARGS = ["|1|127.0.0.1|5282|", "|2|::1|5282|", "|2|::ffff:127.0.0.1|1025|", "!1!10.0.0.1!0!",
             " |2|2001:db8::8:800:200c:417a|65535| "]  # fmt: skip
TEXT_EDITS = [
    "-", "+", ",", "|", "!", ":", ".", " ", "\t", "\0", "\r", "9" * 30, "256", "-1", "65536",
    "\u0663", "\uff11", "\u00b2", "\udcff", "%eth0", "::", "1", "0", "x",
]  # fmt: skip


def text_edits() -> st.SearchStrategy[list[Edit]]:
    return edits([t.encode("utf-8", "surrogatepass") for t in TEXT_EDITS], [2, 5, 3000])


def _decoded(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass") if _utf8(data) else data.decode("latin-1")


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


def number(text: str, most: int, digits: int) -> int | None:
    """An ASCII decimal of at most ``digits`` digits and value ``most``, else None."""
    if not re.fullmatch(rf"[0-9]{{1,{digits}}}", text) or int(text) > most:
        return None
    return int(text)


def expected_port(argument: str) -> tuple[str, int] | None:
    fields = [f.strip(" \t") for f in argument.split(",")]
    values = [number(f, 255, 3) for f in fields]
    if len(values) != 6 or None in values or re.search(r"[^0-9, \t]", argument):
        return None
    h1, h2, h3, h4, p1, p2 = (v for v in values if v is not None)
    return f"{h1}.{h2}.{h3}.{h4}", p1 * 256 + p2


def expected_eprt(argument: str) -> tuple[str, int] | None:
    text = argument.strip(" ")
    if not text or not 33 <= ord(text[0]) <= 126:
        return None
    fields = text.split(text[0])
    if len(fields) != 5 or fields[0] or fields[4]:
        return None
    family, host, port_text = fields[1:4]
    port = number(port_text, 65535, 5)
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        if family == "1" and re.fullmatch(r"[0-9.]+", host):
            address = ipaddress.IPv4Address(host)
        elif family == "2" and re.fullmatch(r"[0-9A-Fa-f:.]+", host):
            address = ipaddress.IPv6Address(host)
        else:
            return None
    except ValueError:
        return None
    if port is None:
        return None
    mapped = isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped
    return (f"::ffff:{mapped}" if mapped else str(address)), port


def outcome(parse: object, text: str) -> tuple[str, int] | None:
    try:
        result = parse(text)  # type: ignore[operator]
    except ValueError:
        return None  # the only error allowed
    return result  # type: ignore[no-any-return]


@fuzz_settings()
@given(st.sampled_from(PORT_ARGS), st.sampled_from(EPRT_ARGS), text_edits(), text_edits())
def test_port_and_eprt_arguments(
    port_arg: str, eprt_arg: str, port_changes: list[Edit], eprt_changes: list[Edit]
) -> None:
    port_text = _decoded(apply(port_arg.encode(), port_changes))
    eprt_text = _decoded(apply(eprt_arg.encode(), eprt_changes))
    assert outcome(parse_port, port_text) == expected_port(port_text)
    assert outcome(parse_eprt, eprt_text) == expected_eprt(eprt_text)


PASSIVE = [
    "Entering Passive Mode (127,0,0,1,200,10).", "Entering Passive Mode 10,1,2,3,4,5",
    "=192,168,1,1,19,137", "Entering Extended Passive Mode (|||6446|)", "(!!!0!)", "|||65535|",
]  # fmt: skip
DIGITS = "0123456789"


def expected_227(text: str) -> tuple[str, int] | None:
    """RFC 1123 4.1.2.6: scan for the first maximal run of comma-separated numbers that has
    six of them (spaces and tabs allowed around the commas); each must be 0..255."""
    i = 0
    while i < len(text):
        if text[i] not in DIGITS or (i and text[i - 1] in DIGITS):
            i += 1
            continue
        run, j = [], i
        while True:
            k = j
            while k < len(text) and text[k] in DIGITS:
                k += 1
            run.append(text[j:k])
            m = k
            while m < len(text) and text[m] in " \t":
                m += 1
            if m < len(text) and text[m] == ",":
                m += 1
                while m < len(text) and text[m] in " \t":
                    m += 1
                if m < len(text) and text[m] in DIGITS:
                    j = m
                    continue
            break
        if len(run) == 6:
            values = [number(r, 255, 3) for r in run]
            if None in values:
                return None
            h1, h2, h3, h4, p1, p2 = (v for v in values if v is not None)
            return f"{h1}.{h2}.{h3}.{h4}", p1 * 256 + p2
        i = k
    return None


def expected_229(text: str) -> int | None:
    """RFC 2428 3: the first ``(<d><d><d>port<d>)``, else the first bare ``<d><d><d>port<d>``;
    <d> is ASCII 33..126 but not a digit; the port 0..65535."""

    def find(parens: bool) -> str | None:
        lead = 1 if parens else 0
        for i in range(len(text)):
            if parens and text[i] != "(":
                continue
            d = text[i + lead : i + lead + 1]
            if not d or not 33 <= ord(d) <= 126 or d in DIGITS:
                continue
            if text[i + lead : i + lead + 3] != d * 3:
                continue
            k = start = i + lead + 3
            while k < len(text) and text[k] in DIGITS:
                k += 1
            if k > start and text[k : k + 1] == d and (not parens or text[k + 1 : k + 2] == ")"):
                return text[start:k]
        return None

    found = find(True) or find(False)
    return None if found is None else number(found, 65535, 5)


@fuzz_settings()
@given(st.sampled_from(PASSIVE), text_edits())
def test_227_and_229_texts(text: str, changes: list[Edit]) -> None:
    mutated = _decoded(apply(text.encode(), changes))
    assert outcome(parse_227, mutated) == expected_227(mutated)
    try:
        port: int | None = parse_229(mutated)
    except ValueError:
        port = None
    assert port == expected_229(mutated)

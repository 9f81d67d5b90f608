"""FTP codec: readers fed whole, a byte at a time and with trailing bytes; formats; hypothesis."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.errors import ProtocolError
from gatekeeper.ftp.codec import (
    MAX_LINE,
    MAX_REPLY_LINES,
    NEED_DATA,
    Command,
    CommandReader,
    LineTooLong,
    Reply,
    ReplyReader,
    UnknownFamily,
    format_227,
    format_229,
    format_command,
    format_eprt,
    format_port,
    format_reply,
    parse_227,
    parse_229,
    parse_eprt,
    parse_port,
)
from gatekeeper.net import proxyproto

ERROR = "ProtocolError"  # stands in the event list for a ProtocolError from next_event

# How bytes arrive: all at once, one at a time, or either with the next line partly received.
MODES = ["whole", "bytewise", "trailing", "trailing-bytewise"]


def _chunks(data: bytes, mode: str, trailing: bytes) -> list[bytes]:
    if mode.startswith("trailing"):
        data += trailing
    if mode.endswith("bytewise"):
        return [data[i : i + 1] for i in range(len(data))]
    return [data]


def _drain_commands(reader: CommandReader) -> list[Command | LineTooLong]:
    events: list[Command | LineTooLong] = []
    while (event := reader.next_event()) is not NEED_DATA:
        assert isinstance(event, Command | LineTooLong)
        events.append(event)
    return events


def _drain_replies(reader: ReplyReader) -> list[Reply | str]:
    events: list[Reply | str] = []
    while True:
        try:
            event = reader.next_event()
        except ProtocolError:
            events.append(ERROR)
            return events
        if event is NEED_DATA:
            return events
        assert isinstance(event, Reply)
        events.append(event)


def read_commands(
    data: bytes, mode: str = "whole", max_line: int = MAX_LINE
) -> tuple[list[Command | LineTooLong], CommandReader]:
    reader = CommandReader(max_line)
    events: list[Command | LineTooLong] = []
    for chunk in _chunks(data, mode, b"NOO"):
        reader.receive_data(chunk)
        events += _drain_commands(reader)
    expected_pending = 3 if mode.startswith("trailing") and data.endswith(b"\n") else None
    if expected_pending is not None:
        assert reader.pending() == expected_pending
    return events, reader


def read_replies(
    data: bytes, mode: str = "whole", max_line: int = MAX_LINE, max_lines: int = MAX_REPLY_LINES
) -> list[Reply | str]:
    reader = ReplyReader(max_line, max_lines)
    events: list[Reply | str] = []
    for chunk in _chunks(data, mode, b"22"):
        reader.receive_data(chunk)
        events += _drain_replies(reader)
        if events and events[-1] == ERROR:
            with pytest.raises(ProtocolError):  # and on every later call
                reader.next_event()
            reader.receive_data(b"220 ok\r\n")  # ignored after an error
            with pytest.raises(ProtocolError):
                reader.next_event()
            break
    return events


def test_need_data_is_the_project_sentinel() -> None:
    assert NEED_DATA is proxyproto.NEED_DATA
    assert CommandReader().next_event() is NEED_DATA
    assert ReplyReader().next_event() is NEED_DATA


# --- commands ------------------------------------------------------------------------------

COMMANDS = [
    pytest.param(b"USER anonymous\r\n", "USER", "anonymous", id="crlf"),
    pytest.param(b"user bob\n", "USER", "bob", id="bare-lf-lower-case"),
    pytest.param(b"NOOP\r\n", "NOOP", "", id="no-argument"),
    pytest.param(b"NOOP \r\n", "NOOP", "", id="empty-argument"),
    pytest.param(b"\r\n", "", "", id="empty-line"),
    pytest.param(b"\n", "", "", id="empty-line-bare-lf"),
    pytest.param(b"CWD /QSYS.LIB/MYLIB.LIB\r\n", "CWD", "/QSYS.LIB/MYLIB.LIB", id="ibm-i-path"),
    pytest.param(b"STOR  two spaces \r\n", "STOR", " two spaces ", id="argument-kept-as-is"),
    pytest.param(b"EPRT |1|132.235.1.2|6275|\r\n", "EPRT", "|1|132.235.1.2|6275|", id="eprt"),
    pytest.param(b"SIZE caf\xc3\xa9.txt\r\n", "SIZE", "café.txt", id="utf-8-rfc2640"),
    pytest.param(b"RETR \xe9t\xe9\r\n", "RETR", "\udce9t\udce9", id="invalid-utf-8"),
    pytest.param(b"US\x00ER x\x00y\r\n", "US\x00ER", "x\x00y", id="nul-bytes"),
    pytest.param(b"\xe9xe\r\n", "\udce9XE", "", id="invalid-utf-8-verb"),
    pytest.param(b"\xc4\xb1ist x\r\n", "\u0131IST", "x", id="non-ascii-not-upper-cased"),
    pytest.param(b"RCMD\tDLTLIB X\r\n", "RCMD\tDLTLIB", "X", id="tab-is-not-a-separator"),
    pytest.param(b" USER x\r\n", "", "USER x", id="leading-space"),
    pytest.param(b"NOOP\r\r\n", "NOOP\r", "", id="one-cr-removed"),
    pytest.param(b"NO\rOP x\n", "NO\rOP", "x", id="bare-cr-inside"),
    pytest.param(b"\xff\xf4\xff\xf2ABOR\r\n", "ABOR", "", id="telnet-ip-dm-abor"),
    pytest.param(b"\xff\xf4\xff\xf2STAT\r\n", "STAT", "", id="telnet-ip-dm-stat"),
    pytest.param(b"\xff\xfb\x18USER x\r\n", "USER", "x", id="telnet-will"),
    pytest.param(b"\xff\xfd\x01\xff\xfc\x03\xff\xfe\x22NOOP\r\n", "NOOP", "", id="telnet-do-wont"),
    pytest.param(b"NO\xff\xf1OP\r\n", "NOOP", "", id="telnet-nop-inside-verb"),
    pytest.param(b"RETR a\xff\xffb\r\n", "RETR", "a\udcffb", id="telnet-iac-iac-literal"),
    pytest.param(b"US\xff\x41ER x\r\n", "USER", "x", id="iac-unknown-byte-dropped"),
    pytest.param(b"USER x\xff\r\n", "USER", "x", id="iac-before-crlf"),
    pytest.param(b"USER x\xff\xfb\r\n", "USER", "x", id="iac-will-before-crlf"),
    pytest.param(b"USER x\xff\xfb\n", "USER", "x", id="iac-will-eats-lf"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("raw", "verb", "argument"), COMMANDS)
def test_command(raw: bytes, verb: str, argument: str, mode: str) -> None:
    events, _ = read_commands(raw, mode)
    assert events == [Command(verb, argument, raw)]


@pytest.mark.parametrize("mode", MODES)
def test_pipelined_commands(mode: str) -> None:
    data = b"USER bob\r\nPASS secret\nTYPE I\r\n\r\nPASV\r\n"
    events, _ = read_commands(data, mode)
    assert [(e.verb, e.argument) for e in events if isinstance(e, Command)] == [
        ("USER", "bob"),
        ("PASS", "secret"),
        ("TYPE", "I"),
        ("", ""),
        ("PASV", ""),
    ]
    assert b"".join(e.raw for e in events if isinstance(e, Command)) == data


@pytest.mark.parametrize(
    ("raw", "hides"),
    [
        (b"USER ok\r\n", False),
        (b"USER ok\xff\n", True),  # IAC LF: a Telnet-aware server reads on past the LF
        (b"USER ok\xff\xfb\n", True),  # IAC WILL LF: the LF is the option byte
        (b"USER ok\xff\xff\n", False),  # IAC IAC is a literal 0xFF; the LF ends the line
        (b"USER ok\xff\r\n", False),  # IAC CR: the CR is taken, the LF still ends the line
        (b"USER ok\xff\xfb\r\n", False),
        (b"USER ok\xff\xff\xff\n", True),
    ],
)
def test_hides_line_end(raw: bytes, hides: bool) -> None:
    (event,), _ = read_commands(raw)
    assert isinstance(event, Command)
    assert event.hides_line_end is hides


# --- over-long command lines ---------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1 << 20, 65536, 4096, 1000])
def test_megabyte_line_gives_one_line_too_long(chunk: int) -> None:
    reader = CommandReader()
    junk = b"A" * (1 << 20)
    events: list[Command | LineTooLong] = []
    for start in range(0, len(junk), chunk):
        reader.receive_data(junk[start : start + chunk])
        events += _drain_commands(reader)
        assert reader.pending() <= MAX_LINE
    assert events == [LineTooLong(MAX_LINE + 1)]
    assert reader.pending() == 0  # the rest of the line is dropped, not kept
    reader.receive_data(b"more junk\r\nNOOP\r\nUSE")
    assert _drain_commands(reader) == [Command("NOOP", "", b"NOOP\r\n")]
    assert reader.pending() == 3


@pytest.mark.parametrize("mode", MODES)
def test_line_too_long_then_next_line(mode: str) -> None:
    data = b"RETR " + b"x" * 100 + b"\r\nNOOP\r\n"
    events, _ = read_commands(data, mode, max_line=32)
    assert events == [LineTooLong(33), Command("NOOP", "", b"NOOP\r\n")]


@pytest.mark.parametrize("mode", MODES)
def test_line_length_limit_counts_line_ending(mode: str) -> None:
    fits = b"A" * 14 + b"\r\n"  # 16 bytes: exactly max_line
    too_long = b"A" * 15 + b"\r\n"  # 17 bytes
    bare_lf = b"A" * 15 + b"\n"  # 16 bytes
    events, _ = read_commands(fits + too_long + bare_lf, mode, max_line=16)
    assert events == [Command("A" * 14, "", fits), LineTooLong(17), Command("A" * 15, "", bare_lf)]


def test_line_too_long_across_many_calls_is_reported_once() -> None:
    reader = CommandReader(max_line=16)
    events: list[Command | LineTooLong] = []
    for _ in range(1000):
        reader.receive_data(b"0123456789")
        events += _drain_commands(reader)
        assert reader.pending() <= 16
    reader.receive_data(b"\nQUIT\r\n")
    events += _drain_commands(reader)
    assert events == [LineTooLong(17), Command("QUIT", "", b"QUIT\r\n")]


def test_max_line_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_line"):
        CommandReader(0)
    with pytest.raises(ValueError, match="max_line"):
        ReplyReader(0)
    with pytest.raises(ValueError, match="max_lines"):
        ReplyReader(max_lines=0)


# --- replies -------------------------------------------------------------------------------

REPLIES = [
    # RFC 959 4.2, the example of a multi-line reply.
    pytest.param(
        b"123-First line\r\nSecond line\r\n  234 A line beginning with numbers\r\n"
        b"123 The last line\r\n",
        123,
        ("First line", "Second line", "  234 A line beginning with numbers", "The last line"),
        id="rfc959-multi-line",
    ),
    pytest.param(b"220 Service ready for new user.\r\n", 220, ("Service ready for new user.",)),
    pytest.param(b"200\r\n", 200, ("",), id="code-alone"),
    pytest.param(b"200 \r\n", 200, ("",), id="code-space"),
    pytest.param(b"331 Password required\n", 331, ("Password required",), id="bare-lf"),
    pytest.param(
        b"220-QTCP at AS400.EXAMPLE.COM.\r\n"
        b"220 Connection will close if idle more than 5 minutes.\r\n",
        220,
        ("QTCP at AS400.EXAMPLE.COM.", "Connection will close if idle more than 5 minutes."),
        id="ibm-i-banner",
    ),
    pytest.param(
        b"211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n UTF8\r\n211 End\r\n",
        211,
        ("Features:", " EPRT", " EPSV", " MDTM", " UTF8", "End"),
        id="vsftpd-feat",
    ),
    pytest.param(
        b"230-Welcome\r\n230-Second line\r\n230 User logged in.\r\n",
        230,
        ("Welcome", "230-Second line", "User logged in."),
        id="code-dash-on-every-line",
    ),
    pytest.param(
        b"211-Status\r\n212 other code\r\n211-\r\n\r\n211x\r\n211\r\n",
        211,
        ("Status", "212 other code", "211-", "", "211x", ""),
        id="continuations-that-do-not-end-it",
    ),
    pytest.param(b"150-a\n150 b\n", 150, ("a", "b"), id="multi-bare-lf"),
    pytest.param(b"250 caf\xc3\xa9 \xff\r\n", 250, ("café \udcff",), id="utf-8-and-invalid"),
    pytest.param(b"200 a\rb\r\n", 200, ("a\rb",), id="bare-cr-is-text"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("raw", "code", "lines"), REPLIES)
def test_reply(raw: bytes, code: int, lines: tuple[str, ...], mode: str) -> None:
    assert read_replies(raw, mode) == [Reply(code, lines, raw)]


@pytest.mark.parametrize("mode", MODES)
def test_pipelined_replies(mode: str) -> None:
    data = b"150 Opening data connection.\r\n226-Transfer complete.\r\n226 Bye\r\n221 Goodbye.\n"
    events = read_replies(data, mode)
    assert [(e.code, e.text, e.preliminary) for e in events if isinstance(e, Reply)] == [
        (150, "Opening data connection.", True),
        (226, "Transfer complete.\nBye", False),
        (221, "Goodbye.", False),
    ]
    assert b"".join(e.raw for e in events if isinstance(e, Reply)) == data


BAD_REPLIES = [
    pytest.param(b"hello\r\n", id="text"),
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="ssh-banner"),
    pytest.param(b"HTTP/1.1 400 Bad Request\r\n", id="http"),
    pytest.param(b"22\r\n", id="two-digits"),
    pytest.param(b"2200 x\r\n", id="four-digits"),
    pytest.param(b"220x\r\n", id="no-separator"),
    pytest.param(b"220\tx\r\n", id="tab-separator"),
    pytest.param(b"600 x\r\n", id="code-600"),
    pytest.param(b"099 x\r\n", id="code-099"),
    pytest.param(b"\r\n", id="empty-line"),
    pytest.param(b" 220 x\r\n", id="leading-space"),
    pytest.param(b"\xd9\xa2\xd9\xa2\xd9\xa0 x\r\n", id="arabic-digits"),
    pytest.param(b"220\rx\r\n", id="cr-after-code"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("data", BAD_REPLIES)
def test_not_ftp(data: bytes, mode: str) -> None:
    assert read_replies(data, mode) == [ERROR]


@pytest.mark.parametrize("mode", MODES)
def test_garbage_is_refused_before_its_line_ends(mode: str) -> None:
    assert read_replies(b"SSH-2.0-OpenSSH_9.6", mode) == [ERROR]
    assert read_replies(b"220-", mode.replace("trailing", "whole")) == []  # could go on


@pytest.mark.parametrize("mode", MODES)
def test_replies_before_an_error_are_delivered(mode: str) -> None:
    events = read_replies(b"220 ok\r\nnonsense\r\n", mode)
    assert events == [Reply(220, ("ok",), b"220 ok\r\n"), ERROR]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"220 " + b"x" * 13 + b"\r\n", id="complete"),  # 19 bytes > 18
        pytest.param(b"220 " + b"x" * 100, id="unterminated"),
        pytest.param(b"220-ok\r\n" + b"x" * 18 + b"\n", id="continuation"),
    ],
)
def test_reply_line_too_long(data: bytes, mode: str) -> None:
    assert read_replies(data, mode, max_line=18) == [ERROR]


@pytest.mark.parametrize("mode", MODES)
def test_reply_line_length_limit_counts_line_ending(mode: str) -> None:
    fits = b"220 " + b"x" * 12 + b"\r\n"  # 18 bytes: exactly max_line
    assert read_replies(fits, mode, max_line=18) == [Reply(220, ("x" * 12,), fits)]
    multi = b"220-" + b"x" * 13 + b"\n" + b"y" * 17 + b"\n220 " + b"z" * 13 + b"\n"
    assert read_replies(multi, mode, max_line=18) == [
        Reply(220, ("x" * 13, "y" * 17, "z" * 13), multi)
    ]


@pytest.mark.parametrize("mode", MODES)
def test_reply_max_lines(mode: str) -> None:
    three = b"211-a\r\nb\r\n211 c\r\n"
    assert read_replies(three, mode, max_lines=3) == [Reply(211, ("a", "b", "c"), three)]
    # The fourth line is not the last one: the reply cannot fit, known before it ends.
    assert read_replies(b"211-a\r\nb\r\nc\r\n", mode, max_lines=3) == [ERROR]
    assert read_replies(b"211-a\r\n", mode, max_lines=1) == [ERROR]
    assert read_replies(b"211 a\r\n", mode, max_lines=1) == [Reply(211, ("a",), b"211 a\r\n")]


def test_endless_multi_line_reply_is_bounded() -> None:
    reader = ReplyReader()
    reader.receive_data(b"211-start\r\n" + b"line\r\n" * (2 * MAX_REPLY_LINES))
    with pytest.raises(ProtocolError, match="longer than 1000 lines"):
        reader.next_event()


# --- PORT and EPRT -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("127,0,0,1,4,1", ("127.0.0.1", 1025)),
        ("192,168,1,2,19,137", ("192.168.1.2", 5001)),
        ("10,1,1,1,195,80", ("10.1.1.1", 50000)),
        ("0,0,0,0,0,0", ("0.0.0.0", 0)),
        ("255,255,255,255,255,255", ("255.255.255.255", 65535)),
        ("10 , 1,1 ,1, 195 ,80", ("10.1.1.1", 50000)),
        (" 10,1,1,1,195,80 ", ("10.1.1.1", 50000)),
        ("010,001,1,1,000,80", ("10.1.1.1", 80)),
    ],
)
def test_parse_port(argument: str, expected: tuple[str, int]) -> None:
    assert parse_port(argument) == expected


@pytest.mark.parametrize(
    "argument",
    [
        "",
        "1,2,3,4,5",
        "1,2,3,4,5,6,7",
        "1,2,3,4,5,6,",
        ",1,2,3,4,5,6",
        "1,,2,3,4,5",
        "256,1,1,1,1,1",
        "1,2,3,4,5,256",
        "1,2,3,4,5,0256",
        "1.2.3.4.5.6",
        "1,2,3,4,5,-6",
        "1,2,3,4,5,+6",
        "1,2,3,4,5,1_0",
        "1,2,3,4,5,\u0666",  # ARABIC-INDIC DIGIT SIX: int() would take it
        "a,b,c,d,e,f",
        "(1,2,3,4,5,6)",
        "1,2,3,4,5,6\x00",
    ],
)
def test_parse_port_refuses(argument: str) -> None:
    with pytest.raises(ValueError, match="PORT"):
        parse_port(argument)


def test_format_port() -> None:
    assert format_port("127.0.0.1", 1025) == "127,0,0,1,4,1"
    assert format_port("10.1.1.1", 50000) == "10,1,1,1,195,80"
    assert format_port("::ffff:10.1.1.1", 21) == "10,1,1,1,0,21"


@pytest.mark.parametrize(
    ("host", "port"),
    [("::1", 21), ("fe80::1%eth0", 21), ("ftp.example.com", 21), ("10.1.1.1", -1),
     ("10.1.1.1", 65536), ("10.1.1.1", True)],
)  # fmt: skip
def test_format_port_refuses(host: str, port: int) -> None:
    with pytest.raises(ValueError):
        format_port(host, port)
    with pytest.raises(ValueError):
        format_227(host, port)


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        # RFC 2428 2, the examples.
        ("|1|132.235.1.2|6275|", ("132.235.1.2", 6275)),
        ("|2|1080::8:800:200C:417A|5282|", ("1080::8:800:200c:417a", 5282)),
        ("!1!132.235.1.2!6275!", ("132.235.1.2", 6275)),
        ("~2~::1~65535~", ("::1", 65535)),
        (".2.::1.21.", ("::1", 21)),
        ("|2|::ffff:10.1.1.1|1025|", ("::ffff:10.1.1.1", 1025)),
        ("|2|::FFFF:0A01:0101|1025|", ("::ffff:10.1.1.1", 1025)),
        (" |1|10.1.1.1|0| ", ("10.1.1.1", 0)),
    ],
)
def test_parse_eprt(argument: str, expected: tuple[str, int]) -> None:
    assert parse_eprt(argument) == expected


@pytest.mark.parametrize(
    "argument",
    [
        "",
        "|1|132.235.1.2|6275",
        "1|132.235.1.2|6275|",
        "|1|132.235.1.2|6275||",
        "|1!132.235.1.2|6275|",
        "|1|::1|6275|",  # family and address disagree
        "|2|132.235.1.2|6275|",
        "|3|132.235.1.2|6275|",
        "||132.235.1.2|6275|",
        "|1|132.235.1.256|6275|",
        "|1|010.1.1.1|6275|",  # leading zeros: octal to inet_aton, so refused
        "|1| 10.1.1.1|6275|",
        "|2|fe80::1%eth0|6275|",
        "|2|1080::8:800:200C:417A:1:2:3:4|5282|",
        "|1|10.1.1.1|65536|",
        "|1|10.1.1.1||",
        "|1|10.1.1.1|-1|",
        "|1|10.1.1.1|0x50|",
        "|1|10.1.1.1|\u0665|",
        "\x7f1\x7f10.1.1.1\x7f21\x7f",  # DEL is not in 33..126
        "\u00a61\u00a610.1.1.1\u00a621\u00a6",
        ":2:::1:21:",  # the delimiter is part of the address
    ],
)
def test_parse_eprt_refuses(argument: str) -> None:
    with pytest.raises(ValueError, match="EPRT"):
        parse_eprt(argument)


def test_format_eprt() -> None:
    assert format_eprt("132.235.1.2", 6275) == "|1|132.235.1.2|6275|"
    assert format_eprt("1080::8:800:200C:417A", 5282) == "|2|1080::8:800:200c:417a|5282|"
    assert format_eprt("::ffff:10.1.1.1", 21) == "|2|::ffff:10.1.1.1|21|"


@pytest.mark.parametrize(
    ("host", "port"), [("fe80::1%eth0", 21), ("host", 21), ("::1", 65536), ("::1", -1)]
)
def test_format_eprt_refuses(host: str, port: int) -> None:
    with pytest.raises(ValueError):
        format_eprt(host, port)


# --- 227 and 229 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # vsftpd, ProFTPD, Pure-FTPd
        (b"227 Entering Passive Mode (192,168,1,2,19,137).\r\n", ("192.168.1.2", 5001)),
        # IIS
        (b"227 Entering Passive Mode (192,168,1,2,19,137)\r\n", ("192.168.1.2", 5001)),
        # IBM i
        (b"227 Entering Passive Mode (10,1,1,1,195,80)\r\n", ("10.1.1.1", 50000)),
        # no parentheses (RFC 959 figure 3), "=" (some embedded servers), spaces after commas
        (b"227 Entering Passive Mode 10,1,1,1,195,80\r\n", ("10.1.1.1", 50000)),
        (b"227 Entering Passive Mode. 10,1,1,1,195,80\r\n", ("10.1.1.1", 50000)),
        (b"227 Entering passive mode =10,1,1,1,195,80\r\n", ("10.1.1.1", 50000)),
        (b"227 =10,1,1,1,195,80\r\n", ("10.1.1.1", 50000)),
        (b"227 10,1,1,1,195,80\r\n", ("10.1.1.1", 50000)),
        (b"227 Entering Passive Mode (10, 1, 1, 1, 195, 80)\r\n", ("10.1.1.1", 50000)),
        # other numbers before the address
        (b"227 Passive 2 (v1,5) ok (10,1,1,1,195,80)\r\n", ("10.1.1.1", 50000)),
        (b"227-Entering Passive Mode\r\n 10,1,1,1,195,80\r\n227 ok\r\n", ("10.1.1.1", 50000)),
    ],
)
def test_parse_227(raw: bytes, expected: tuple[str, int]) -> None:
    (reply,) = read_replies(raw)
    assert isinstance(reply, Reply)
    assert reply.code == 227
    assert parse_227(reply.text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Entering Passive Mode",
        "Entering Passive Mode (10,1,1,1,195)",
        "Entering Passive Mode (10,1,1,1,195,80,1)",
        "Entering Passive Mode (256,1,1,1,195,80)",
        "Entering Passive Mode (10,1,1,1,195,1000)",
        "Entering Passive Mode (10.1.1.1:50000)",
        "",
    ],
)
def test_parse_227_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="227"):
        parse_227(text)


def test_format_227() -> None:
    assert format_227("10.1.1.1", 50000) == b"227 Entering Passive Mode (10,1,1,1,195,80).\r\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Entering Extended Passive Mode (|||6446|)", 6446),  # RFC 2428 3
        ("Entering Extended Passive Mode (|||6446|).", 6446),  # vsftpd
        ("Extended Passive Mode Entered (|||6446|)", 6446),
        ("Entering Extended Passive Mode (!!!6446!)", 6446),
        ("Entering Extended Passive Mode (~~~65535~)", 65535),
        ("Entering Extended Passive Mode |||6446|", 6446),
        ("Wait... (|||6446|)", 6446),  # "..." before is no delimiter run with a port
        ("EPSV ok (|||06446|)", 6446),
    ],
)
def test_parse_229(text: str, expected: int) -> None:
    assert parse_229(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Entering Extended Passive Mode",
        "Entering Extended Passive Mode (||6446|)",
        "Entering Extended Passive Mode (|!|6446|)",
        "Entering Extended Passive Mode (|||6446!)",
        "Entering Extended Passive Mode (|||65536|)",
        "Entering Extended Passive Mode (|||123456|)",
        "Entering Extended Passive Mode (||||)",
        "Entering Extended Passive Mode (|||abc|)",
        "Entering Extended Passive Mode (|1|10.1.1.1|6446|)",
        "Entering Extended Passive Mode (   6446 )",
        "Entering Extended Passive Mode (1116441)",
    ],
)
def test_parse_229_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="229"):
        parse_229(text)


def test_format_229() -> None:
    assert format_229(6446) == b"229 Entering Extended Passive Mode (|||6446|).\r\n"
    with pytest.raises(ValueError):
        format_229(65536)


# --- format_reply and format_command -------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "raw"),
    [
        (421, "Service not available.", b"421 Service not available.\r\n"),
        (200, "", b"200 \r\n"),
        (211, "Features:\n EPRT\nEnd", b"211-Features:\r\n EPRT\r\n211 End\r\n"),
        (211, "a\r\nb\rc\nd", b"211-a\r\nb\r\nc\r\n211 d\r\n"),
        (211, "a\n", b"211-a\r\n211 \r\n"),
        (211, "a\n211 b\n211\n2110\n211-c\n212 d\nend", b"211-a\r\n 211 b\r\n 211\r\n"
         b"2110\r\n211-c\r\n212 d\r\n211 end\r\n"),
        (550, "caf\u00e9 \udcff", b"550 caf\xc3\xa9 \xff\r\n"),
    ],
)  # fmt: skip
def test_format_reply(code: int, text: str, raw: bytes) -> None:
    assert format_reply(code, text) == raw
    (reply,) = read_replies(raw)
    assert isinstance(reply, Reply)
    assert reply.code == code


@pytest.mark.parametrize("code", [99, 600, 0, -200, True])
def test_format_reply_refuses_bad_codes(code: int) -> None:
    with pytest.raises(ValueError, match="code"):
        format_reply(code, "x")


def test_format_command() -> None:
    assert format_command("PORT", "127,0,0,1,4,1") == b"PORT 127,0,0,1,4,1\r\n"
    assert format_command("pasv") == b"PASV\r\n"
    assert format_command("STOR", " a") == b"STOR  a\r\n"
    assert format_command("RETR", "caf\u00e9\udcff") == b"RETR caf\xc3\xa9\xff\xff\r\n"


@pytest.mark.parametrize(
    ("verb", "argument"),
    [("", ""), ("NO OP", ""), ("NOOP\r", ""), ("ABCDEFGHI", ""), ("X1", ""),
     ("USER", "a\r\nRCMD x"), ("USER", "a\nb"), ("USER", "a\rb")],
)  # fmt: skip
def test_format_command_refuses(verb: str, argument: str) -> None:
    with pytest.raises(ValueError):
        format_command(verb, argument)


# --- properties ----------------------------------------------------------------------------

ports = st.integers(0, 65535)
codes = st.integers(100, 599)
# Reply and argument text: anything but line breaks. Surrogate escapes only for 0xFE/0xFF,
# which are never part of UTF-8 (others could pair up into a real character when encoded).
line_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\r\n")
    | st.sampled_from(["\udcfe", "\udcff"]),
    max_size=40,
)


@given(st.ip_addresses(v=4), ports)
def test_port_round_trip(host: ipaddress.IPv4Address, port: int) -> None:
    assert parse_port(format_port(str(host), port)) == (str(host), port)


@given(st.ip_addresses(), ports)
def test_eprt_round_trip(host: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
    parsed_host, parsed_port = parse_eprt(format_eprt(str(host), port))
    assert ipaddress.ip_address(parsed_host) == host
    assert parsed_port == port


@given(st.ip_addresses(v=4), ports)
def test_227_round_trip(host: ipaddress.IPv4Address, port: int) -> None:
    (reply,) = read_replies(format_227(str(host), port))
    assert isinstance(reply, Reply)
    assert (reply.code, parse_227(reply.text)) == (227, (str(host), port))


@given(ports)
def test_229_round_trip(port: int) -> None:
    (reply,) = read_replies(format_229(port))
    assert isinstance(reply, Reply)
    assert (reply.code, parse_229(reply.text)) == (229, port)


@given(codes, st.lists(line_text, min_size=1, max_size=6), st.sampled_from(MODES))
def test_reply_round_trip(code: int, lines: list[str], mode: str) -> None:
    raw = format_reply(code, "\n".join(lines))
    expected = list(lines)
    for i in range(1, len(lines) - 1):  # RFC 959 padding of lines that look like the last
        if lines[i].startswith(str(code)) and lines[i][3:4] in ("", " "):
            expected[i] = " " + lines[i]
    assert read_replies(raw, mode) == [Reply(code, tuple(expected), raw)]


@given(st.from_regex(r"[A-Za-z]{1,8}", fullmatch=True), line_text, st.sampled_from(MODES))
def test_command_round_trip(verb: str, argument: str, mode: str) -> None:
    raw = format_command(verb, argument)
    events, _ = read_commands(raw, mode)
    assert events == [Command(verb.upper(), argument, raw)]


# Random bytes, weighted toward the tokens that matter to the readers.
TOKENS = [b"\r", b"\n", b"\r\n", b"\xff", b"\xf4", b"\xfb", b" ", b"-", b"\x00", b"\xc3",
          b"220", b"220-", b"220 ", b"123", b"USER x", b"A" * 20]  # fmt: skip
streams = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=12), max_size=40).map(b"".join)
# Mostly well-formed reply lines, so that the reply reader gets past the first line.
reply_lines = st.lists(
    st.tuples(
        st.sampled_from([b"220", b"220", b"220", b"221", b"150", b"22", b"x"]),
        st.sampled_from([b" ", b" ", b"-", b"-", b""]),
        st.sampled_from([b"", b"ok", b"220 ", b"220-", b"\xff\x00", b"A" * 20]),
        st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\n", b"\r", b""]),
    ).map(b"".join),
    max_size=12,
).map(b"".join)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _commands_in(chunks: list[bytes]) -> list[Command | LineTooLong]:
    reader = CommandReader(max_line=24)
    events: list[Command | LineTooLong] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        events += _drain_commands(reader)
        assert reader.pending() <= 24
    return events


def _replies_in(chunks: list[bytes]) -> list[Reply | str]:
    reader = ReplyReader(max_line=24, max_lines=4)
    events: list[Reply | str] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        events += _drain_replies(reader)
        if ERROR in events:
            break
    return events


@settings(max_examples=300)
@given(streams, st.lists(st.integers(0, 600), max_size=12))
def test_command_reader_never_raises_and_ignores_splitting(data: bytes, cuts: list[int]) -> None:
    whole = _commands_in([data])
    assert _commands_in(_split(data, cuts)) == whole
    assert _commands_in([data[i : i + 1] for i in range(len(data))]) == whole
    assert all(len(e.raw) <= 24 for e in whole if isinstance(e, Command))


@settings(max_examples=300)
@given(streams | reply_lines, st.lists(st.integers(0, 600), max_size=12))
def test_reply_reader_raises_only_protocol_error_and_ignores_splitting(
    data: bytes, cuts: list[int]
) -> None:
    whole = _replies_in([data])  # any other exception fails the test
    assert _replies_in(_split(data, cuts)) == whole
    assert _replies_in([data[i : i + 1] for i in range(len(data))]) == whole
    assert ERROR not in whole[:-1]


@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=8))
def test_uniform_random_bytes(data: bytes, cuts: list[int]) -> None:
    assert _commands_in(_split(data, cuts)) == _commands_in([data])
    assert _replies_in(_split(data, cuts)) == _replies_in([data])


def test_eprt_unknown_family_is_its_own_error() -> None:
    """RFC 2428: a family number we do not speak is 522, not a syntax error (501)."""
    with pytest.raises(UnknownFamily):
        parse_eprt("|3|132.235.1.2|6275|")
    with pytest.raises(ValueError) as caught:
        parse_eprt("|x|132.235.1.2|6275|")
    assert not isinstance(caught.value, UnknownFamily)

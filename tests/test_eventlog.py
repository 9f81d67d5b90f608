"""Journal summaries, first-rejection budget and RFC 5424 messages, without sockets or sleeps."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from pathlib import Path

import pytest

from gatekeeper import config
from gatekeeper.errors import ConfigError
from gatekeeper.eventlog import (
    FIRST_REJECTION_LINES,
    MAX_MESSAGE,
    PARAM_BYTES,
    EventLog,
    MessageMaker,
    Summary,
    SyslogForwarder,
    escape_param,
    first_rejection_line,
    format_rfc5424,
    octet_counted,
)
from gatekeeper.events import Ban, Rejection
from gatekeeper.settings import SyslogSettings
from gatekeeper.store.recorder import Flushed, Recorder, RejectionCount

# RFC 5424 section 6 ABNF, for one SD-ELEMENT and an optional MSG.
_PRINTUS = r"[\x21-\x7e]"
_SD_NAME = r"[!#-<>-\\^-~]"  # PRINTUSASCII except '=', SP, ']', '"'
_PARAM_VALUE = r'(?:[^"\\\]]|\\["\\\]])*'
RFC5424 = re.compile(
    rf"<(?P<pri>\d{{1,3}})>1 "
    rf"(?P<ts>\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{{1,6}})?Z) "
    rf"(?P<host>{_PRINTUS}{{1,255}}|-) (?P<app>{_PRINTUS}{{1,48}}|-) "
    rf"(?P<procid>{_PRINTUS}{{1,128}}|-) (?P<msgid>{_PRINTUS}{{1,32}}|-) "
    rf'(?P<sd>\[(?P<sdid>{_SD_NAME}{{1,32}})(?: {_SD_NAME}{{1,32}}="{_PARAM_VALUE}")*\])'
    rf"(?: (?P<msg>.*))?",
    re.DOTALL,
)
PARAM = re.compile(rf'({_SD_NAME}{{1,32}})="({_PARAM_VALUE})"')

SYSLOG = SyslogSettings("udp", "127.0.0.1", 514, hostname="gk.example")


def params(message: bytes) -> dict[str, str]:
    m = RFC5424.fullmatch(message.decode())
    assert m, message
    return {k: re.sub(r"\\(.)", r"\1", v) for k, v in PARAM.findall(m["sd"])}


def item(address: str = "192.0.2.7", count: int = 1, **kw: object) -> RejectionCount:
    fields: dict[str, object] = {
        "listener": "ftp", "address": address, "count": count, "first": 1.0e9, "last": 1.0e9 + 1,
        "reason": "default", "rule": "rules.d/10.yaml:3", "user": None, "monitor": False,
    }  # fmt: skip
    fields.update(kw)
    return RejectionCount(**fields)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- summary and first-rejection budget -----------------------------------------------------


def test_summary_line_once_per_interval_and_quiet_minutes_print_nothing() -> None:
    clock = Clock()
    s = Summary(60.0, clock=clock)
    assert s.take() is None  # nothing due, nothing rejected
    for i, n in enumerate([5, 1, 9, 3]):
        s.add(f"192.0.2.{i}", n)
    s.add("192.0.2.1", 1)
    clock.now += 59.9
    assert s.take() is None  # not yet
    clock.now += 0.1
    assert s.take() == (
        "rejections in the last minute: 19 from 4 addresses; "
        "top: 192.0.2.2 (9), 192.0.2.0 (5), 192.0.2.3 (3)"
    )
    clock.now += 60
    assert s.take() is None  # a quiet minute
    s.add("192.0.2.9", 1)
    clock.now += 60
    assert s.take() == "rejections in the last minute: 1 from 1 address; top: 192.0.2.9 (1)"


def test_first_rejection_budget_per_window_and_unlisted_in_summary() -> None:
    clock = Clock()
    s = Summary(60.0, clock=clock)
    allowed = sum(s.allow_first() for _ in range(FIRST_REJECTION_LINES + 15))
    assert allowed == FIRST_REJECTION_LINES
    s.add("192.0.2.1", 35)
    clock.now += 60
    line = s.take()
    assert line is not None
    assert line.endswith("first rejections of 15 more new addresses not listed")
    assert s.allow_first()  # a new window, a new budget


def test_short_interval_and_forced_summary_label() -> None:
    clock = Clock()
    s = Summary(2.0, clock=clock)
    s.add("192.0.2.1", 2)
    clock.now += 2
    assert (s.take() or "").startswith("rejections in the last 2s: 2 from 1 address")
    s.add("192.0.2.1", 1)
    clock.now += 0.5
    assert (s.take(force=True) or "").startswith("rejections in the last 0s: 1 from")


def test_first_rejection_line() -> None:
    assert first_rejection_line(item()) == (
        "192.0.2.7: first rejection on ftp (reason default, rules.d/10.yaml:3)"
    )
    line = first_rejection_line(item(reason="user", rule=None, user="EVIL\r\nUSER", monitor=True))
    assert line == (
        "192.0.2.7: first would-be rejection (monitor mode) on ftp (reason user, user 'EVIL??USER')"
    )


def test_eventlog_logs_new_addresses_within_budget(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    ev = EventLog(None, interval=60.0, clock=clock)
    caplog.set_level(logging.INFO, logger="gatekeeper.eventlog")
    items = tuple(item(f"198.51.100.{i}", count=5) for i in range(60))
    new = frozenset(f"198.51.100.{i}" for i in range(1, 60))  # .0 was seen before
    ev.flushed(Flushed(items, new))
    firsts = [r.message for r in caplog.records if "first rejection" in r.message]
    assert len(firsts) == FIRST_REJECTION_LINES
    assert all(not m.startswith("198.51.100.0:") for m in firsts)
    clock.now += 60
    assert (ev.summary.take() or "").startswith("rejections in the last minute: 300 from 60 ")


def test_eventlog_close_prints_the_last_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gatekeeper.eventlog")

    async def run() -> None:
        ev = EventLog(None, interval=3600.0)
        ev.start()
        ev.flushed(Flushed((item(count=4),), frozenset()))
        await ev.close()

    asyncio.run(run())
    assert any("rejections in the last 0s: 4 from 1 address" in r.message for r in caplog.records)


# -- RFC 5424 --------------------------------------------------------------------------------


def test_reject_message_structure() -> None:
    msg = MessageMaker(SYSLOG).reject(item(count=7))
    m = RFC5424.fullmatch(msg.decode())
    assert m is not None
    assert m["pri"] == str(10 * 8 + 5)  # authpriv.notice
    assert m["ts"] == "2001-09-09T01:46:41.000000Z"
    assert (m["host"], m["app"], m["msgid"], m["sdid"]) == (
        "gk.example", "gatekeeper", "REJECT", "gatekeeper@32473"
    )  # fmt: skip
    assert m["procid"].isdigit()
    assert params(msg) == {
        "listener": "ftp", "address": "192.0.2.7", "reason": "default",
        "rule": "rules.d/10.yaml:3", "attempts": "7", "user": "",
    }  # fmt: skip
    assert m["msg"] == "192.0.2.7: 7 rejections on ftp (reason default)"


def test_ban_message() -> None:
    ban = Ban("2001:db8::/64", "2001:db8::5", "ftp", since=1.0e9, until=1.0e9 + 600, failures=5)
    msg = MessageMaker(SyslogSettings("tcp", "h", 1, facility=4)).ban(ban)
    m = RFC5424.fullmatch(msg.decode())
    assert m is not None and m["pri"] == str(4 * 8 + 4) and m["msgid"] == "BAN"
    p = params(msg)
    assert (p["key"], p["address"], p["attempts"]) == ("2001:db8::/64", "2001:db8::5", "5")
    assert p["until"] == "2001-09-09T01:56:40.000000Z"


def test_escaping_and_attacker_strings_never_break_framing() -> None:
    assert escape_param('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    evil = 'X"] [evil@1 a="b"]\n<13>1 fake\\' * 50 + "\x00\u2028é"
    msg = MessageMaker(SYSLOG).reject(item(reason="user", user=evil))
    assert b"\n" not in msg and b"\r" not in msg and b"\x00" not in msg
    assert len(msg) <= MAX_MESSAGE
    m = RFC5424.fullmatch(msg.decode())
    assert m is not None
    user = params(msg)["user"]
    assert evil.startswith(user.replace("?", "\n")) or user.startswith('X"] [evil@1')
    assert len(escape_param(evil).encode()) <= PARAM_BYTES
    # an escape sequence is never cut in half
    cut = escape_param("a" * (PARAM_BYTES - 1) + '"')
    assert cut == "a" * (PARAM_BYTES - 1)


def test_length_is_bounded_with_long_fields() -> None:
    long = "r" * 5000
    msg = format_rfc5424(facility=23, severity=7, when=0.0, hostname="h" * 300, app_name="a" * 99,
                         procid="1", msgid="M" * 40, params=[(f"p{i}", long) for i in range(9)],
                         msg="m" * 5000)  # fmt: skip
    assert len(msg) <= MAX_MESSAGE
    m = RFC5424.fullmatch(msg.decode())
    assert m is not None and len(m["host"]) == 255 and len(m["app"]) == 48
    assert len(m["msgid"]) == 32 and m["pri"] == "191"


def test_octet_counting() -> None:
    msg = MessageMaker(SYSLOG).reject(item(user="É"))
    framed = octet_counted(msg)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest) == len(msg) and rest == msg  # octets, not characters


# -- forwarding and the recorder -------------------------------------------------------------


def test_forwarder_to_a_dead_target_counts_drops_and_never_raises() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens once closed
    f = SyslogForwarder(SyslogSettings("tcp", "127.0.0.1", port), queue_size=2)
    for _ in range(50):
        f.submit(b"x")  # before the thread runs: 2 queued, 48 dropped at once
    f.start()
    f.close()
    assert f.sent == 0 and f.dropped == 50


def test_forwarder_udp_sends() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        f = SyslogForwarder(SyslogSettings("udp", "127.0.0.1", rx.getsockname()[1]))
        f.start()
        f.submit(b"<85>1 - - - - - -")
        assert rx.recv(100) == b"<85>1 - - - - - -"
        f.close()
        assert f.sent == 1 and f.dropped == 0


def test_recorder_tells_new_addresses_once(tmp_path: Path) -> None:
    told: list[Flushed] = []

    class Observer:
        def flushed(self, written: Flushed) -> None:
            told.append(written)

    async def run() -> None:
        now = time.time()  # recent: the purge at start keeps the rows
        rec = Recorder(tmp_path / "gk.db", flush_interval=3600)
        rec.observer = Observer()
        await rec.start()
        for listener in ("ftp", "tel"):
            rec.rejected(Rejection(listener, "192.0.2.1", "default", "r.yaml:1", now))
        rec.rejected(Rejection("ftp", "192.0.2.1", "default", "r.yaml:1", now + 1))
        await rec.flush()
        rec.rejected(Rejection("ftp", "192.0.2.1", "default", None, now + 2))
        rec.rejected(Rejection("ftp", "192.0.2.2", "network", None, now + 2))
        await rec.flush()
        await rec.close()

    asyncio.run(run())
    assert len(told) == 2
    assert told[0].new_addresses == {"192.0.2.1"}
    counts = {(x.listener, x.address): x.count for x in told[0].rejections}
    assert counts == {("ftp", "192.0.2.1"): 2, ("tel", "192.0.2.1"): 1}
    assert told[1].new_addresses == {"192.0.2.2"}


# -- config ----------------------------------------------------------------------------------


def _config(tmp_path: Path, syslog: str) -> Path:
    (tmp_path / "rules.yaml").write_text("default: deny\n")
    path = tmp_path / "gatekeeper.yaml"
    path.write_text(
        "database: gk.db\nrules: rules.yaml\n"
        "listeners:\n  - {name: ftp, protocol: ftp, listen: '127.0.0.1:0', upstream: 'h:21'}\n"
        f"syslog: {syslog}\n"
    )
    return path


def test_syslog_config(tmp_path: Path) -> None:
    settings, _ = config.load(_config(tmp_path, "{target: 'tcp://[2001:db8::5]:601'}"))
    assert settings.syslog == SyslogSettings("tcp", "2001:db8::5", 601, facility=10)
    assert settings.syslog.target == "tcp://[2001:db8::5]:601"
    settings, _ = config.load(
        _config(tmp_path, "{target: 'udp://10.0.0.5:514', facility: LOCAL3, app_name: gk-ftp}")
    )
    assert settings.syslog == SyslogSettings("udp", "10.0.0.5", 514, 19, "gk-ftp")


@pytest.mark.parametrize(
    ("syslog", "words"),
    [
        ("{target: 'http://x:1'}", "syslog target"),
        ("{target: 'udp://x'}", "port"),
        ("{target: 'udp://x:1', facility: kern}", "facility"),
        ("{target: 'udp://x:1', app_name: 'a b'}", "printable"),
        ("{target: 'udp://x:1', extra: 1}", "extra"),
    ],
)
def test_syslog_config_problems_have_file_and_line(tmp_path: Path, syslog: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(_config(tmp_path, syslog))
    text = str(info.value)
    assert "gatekeeper.yaml:5" in text and words in text, text

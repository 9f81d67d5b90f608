"""The trend report (``gatekeeper stats``): a database filled by the Recorder over several
days and listeners, every key and number checked, in JSON, text and through the CLI."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from gatekeeper import cli
from gatekeeper.events import Login, Outcome, Rejection, SessionRecord
from gatekeeper.report.query import rejection_report
from gatekeeper.report.render import render_stats_json, render_stats_text
from gatekeeper.report.stats import day_ranges, trend_stats
from gatekeeper.rules.model import Reason
from gatekeeper.store.recorder import Recorder

TZ = "EST5EDT,M3.2.0,M11.1.0"  # POSIX-style: needs no tz database; UTC-5 in November
D1, D2, D3, D4, D5 = (date(2026, 11, d) for d in (16, 17, 18, 19, 20))
TODAY = date(2026, 11, 21)
KEYS = {"days", "quiet_days", "totals", "top_addresses", "top_users"}
DAY_KEYS = {"date", "listener", "accepted", "rejected", "files_sent", "files_received"}


@pytest.fixture(autouse=True)
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", TZ)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def at(day: date, hour: int, minute: int = 0) -> float:
    """Local wall-clock time on ``day`` as ``time.time()``."""
    return datetime(day.year, day.month, day.day, hour, minute).timestamp()


def rej(address: str, when: float, listener: str = "ftp", **kw: Any) -> Rejection:
    kw.setdefault("reason", Reason.DEFAULT.value)
    kw.setdefault("rule", None)
    return Rejection(listener, address, when=when, **kw)


def session(
    when: float, listener: str = "ftp", address: str = "10.1.1.1", **kw: Any
) -> SessionRecord:
    kw.setdefault("outcome", Outcome.CLOSED)
    return SessionRecord(listener, address, 40000, when, when + 60, upstream="ibmi:21",
                         local="127.0.0.1:50000", **kw)  # fmt: skip


def fill(db: Path, events: list[Any]) -> None:
    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        for e in events:
            if isinstance(e, Rejection):
                rec.rejected(e)
            elif isinstance(e, SessionRecord):
                rec.session(e)
            else:
                rec.login(e)
        await rec.close()

    asyncio.run(main())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Five days, ftp and telnet. D2 and D4 have no rejection (D2 has sessions)."""
    path = tmp_path / "var" / "gk.db"
    fill(
        path,
        [
            # D1: 192.0.2.7 ftp x2, 203.0.113.5 telnet x1; 2 ftp sessions, 1 telnet session
            rej("192.0.2.7", at(D1, 8)),
            rej("192.0.2.7", at(D1, 9)),
            rej("203.0.113.5", at(D1, 10), "telnet"),
            session(at(D1, 8), files_sent=3, files_received=0, user="ALICE"),
            session(at(D1, 14), files_sent=1, files_received=2, user="ALICE"),
            session(at(D1, 15), "telnet"),
            # D2: one ftp session, nothing rejected
            session(at(D2, 11), files_sent=1),
            # D3: refused user names from 198.51.100.1 (a session each, as the daemon
            # records them), 192.0.2.7 ftp x3 and telnet x1, failed sign-ons
            *[
                rej("198.51.100.1", at(D3, 12, i), reason=Reason.USER.value, user=u)
                for i, u in enumerate(["ADMIN", "ADMIN", "QSECOFR", "TEST"])
            ],
            *[
                session(at(D3, 12, i), address="198.51.100.1", user=u, outcome=Outcome.DENIED_USER)
                for i, u in enumerate(["ADMIN", "ADMIN", "QSECOFR", "TEST"])
            ],
            rej("192.0.2.7", at(D3, 9)),
            rej("192.0.2.7", at(D3, 10)),
            rej("192.0.2.7", at(D3, 11)),
            rej("192.0.2.7", at(D3, 13), "telnet"),
            Login("ftp", "198.51.100.9", "ADMIN", False, at(D3, 16)),
            Login("ftp", "198.51.100.9", "ADMIN", False, at(D3, 16, 1)),
            Login("ftp", "198.51.100.9", "QSECOFR", False, at(D3, 16, 2)),
            Login("ftp", "10.1.1.1", "ALICE", True, at(D3, 17)),  # a success: not counted
            # D5: one telnet rejection (monitor mode: "would reject" counts too)
            rej("203.0.113.5", at(D5, 6), "telnet", monitor=True),
        ],
    )
    return path


def days(stats: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["date"], d["listener"]): d for d in stats["days"]}


def test_every_key_and_number(db: Path) -> None:
    data = json.loads(render_stats_json(trend_stats(db, today=TODAY)))
    assert set(data) == KEYS
    assert all(set(d) == DAY_KEYS for d in data["days"])
    assert [(d["date"], d["listener"]) for d in data["days"]] == [
        ("2026-11-16", "ftp"),
        ("2026-11-16", "telnet"),
        ("2026-11-17", "ftp"),
        ("2026-11-18", "ftp"),
        ("2026-11-18", "telnet"),
        ("2026-11-20", "telnet"),
    ]
    got = days(data)
    assert got[("2026-11-16", "ftp")] == {
        "date": "2026-11-16", "listener": "ftp", "accepted": 2, "rejected": 2,
        "files_sent": 4, "files_received": 2,
    }  # fmt: skip
    assert got[("2026-11-16", "telnet")]["accepted"] == 1
    assert got[("2026-11-16", "telnet")]["rejected"] == 1
    assert got[("2026-11-17", "ftp")] == {
        "date": "2026-11-17", "listener": "ftp", "accepted": 1, "rejected": 0,
        "files_sent": 1, "files_received": 0,
    }  # fmt: skip
    assert (got[("2026-11-18", "ftp")]["accepted"], got[("2026-11-18", "ftp")]["rejected"]) == (
        4,
        7,
    )
    assert got[("2026-11-18", "telnet")]["rejected"] == 1
    assert got[("2026-11-20", "telnet")] == {
        "date": "2026-11-20", "listener": "telnet", "accepted": 0, "rejected": 1,
        "files_sent": 0, "files_received": 0,
    }  # fmt: skip
    # From the first record to today: D2, D4 and today had no rejection.
    assert data["quiet_days"] == ["2026-11-17", "2026-11-19", "2026-11-21"]
    assert data["totals"] == {"accepted": 8, "rejected": 12}
    assert data["top_addresses"] == [
        {"address": "192.0.2.7", "attempts": 6},
        {"address": "198.51.100.1", "attempts": 4},
        {"address": "203.0.113.5", "attempts": 2},
    ]
    # ADMIN: 2 refused + 2 failed sign-ons; QSECOFR 1 + 1; TEST 1. ALICE signed on: absent.
    assert data["top_users"] == [
        {"user": "ADMIN", "attempts": 4},
        {"user": "QSECOFR", "attempts": 2},
        {"user": "TEST", "attempts": 1},
    ]


def test_rejected_total_is_the_rejection_reports_attempts(db: Path) -> None:
    for since, until in ((None, None), ("2026-11-18", None), ("2026-11-16", "2026-11-18")):
        stats = trend_stats(db, since=since, until=until, today=TODAY)
        assert stats.rejected == rejection_report(db, since=since, until=until).attempts


def test_date_ranges(db: Path) -> None:
    data = trend_stats(db, since="2026-11-17", until="2026-11-18", today=TODAY).to_dict()
    assert [(d["date"], d["listener"]) for d in data["days"]] == [
        ("2026-11-17", "ftp"),
        ("2026-11-18", "ftp"),
        ("2026-11-18", "telnet"),
    ]
    assert data["quiet_days"] == ["2026-11-17"]
    assert data["totals"] == {"accepted": 5, "rejected": 8}
    assert data["top_addresses"][0] == {"address": "192.0.2.7", "attempts": 4}

    # Only since: to today. Only until: from the first record.
    since = trend_stats(db, since="2026-11-19", today=TODAY).to_dict()
    assert since["quiet_days"] == ["2026-11-19", "2026-11-21"]
    assert since["totals"] == {"accepted": 0, "rejected": 1}
    until = trend_stats(db, until="2026-11-17", today=TODAY).to_dict()
    assert until["quiet_days"] == ["2026-11-17"]
    assert until["totals"] == {"accepted": 4, "rejected": 3}
    assert until["top_users"] == []

    # A range with no record at all: every day is quiet, nothing counted.
    empty = trend_stats(db, since="2026-10-01", until="2026-10-03", today=TODAY).to_dict()
    assert empty["quiet_days"] == ["2026-10-01", "2026-10-02", "2026-10-03"]
    assert empty["days"] == [] and empty["totals"] == {"accepted": 0, "rejected": 0}

    # ISO timestamps: rows whose times overlap the range (D3 from 10:30 local on: the
    # 09:00-11:00 row of 192.0.2.7 overlaps it, the sessions started from 12:00 on).
    part = trend_stats(db, since="2026-11-18T15:30:00Z", until="2026-11-18", today=TODAY)
    assert part.to_dict()["totals"] == {"accepted": 4, "rejected": 8}
    late = trend_stats(db, since="2026-11-18T22:00:00Z", until="2026-11-18", today=TODAY)
    assert late.to_dict()["totals"] == {"accepted": 0, "rejected": 0}
    assert late.quiet_days == ["2026-11-18"]


def test_top_lists_are_limited_and_ordered(db: Path) -> None:
    data = trend_stats(db, today=TODAY, top=2).to_dict()
    assert [a["address"] for a in data["top_addresses"]] == ["192.0.2.7", "198.51.100.1"]
    assert [u["user"] for u in data["top_users"]] == ["ADMIN", "QSECOFR"]
    assert trend_stats(db, today=TODAY, top=0).to_dict()["top_users"] == []


def test_refused_names_without_sessions_count_under_the_rows_name(tmp_path: Path) -> None:
    """A rejections row keeps its latest user name; sessions tell the names apart."""
    path = tmp_path / "gk.db"
    names = ["ROOT", "ADMINISTRATOR", "ADMINISTRATOR"]
    fill(path, [rej("192.0.2.1", at(D3, 9, i), reason="user", user=u) for i, u in enumerate(names)])
    assert trend_stats(path, today=TODAY).to_dict()["top_users"] == [
        {"user": "ADMINISTRATOR", "attempts": 3}
    ]
    fill(path, [session(at(D3, 9), address="192.0.2.1", user="ROOT",
                        outcome=Outcome.DENIED_USER)])  # fmt: skip
    assert trend_stats(path, today=TODAY).to_dict()["top_users"] == [
        {"user": "ADMINISTRATOR", "attempts": 2},
        {"user": "ROOT", "attempts": 1},
    ]


def test_missing_database(tmp_path: Path) -> None:
    path = tmp_path / "nothing" / "gk.db"
    data = trend_stats(path, today=TODAY).to_dict()
    assert data == {"days": [], "quiet_days": [], "totals": {"accepted": 0, "rejected": 0},
                    "top_addresses": [], "top_users": []}  # fmt: skip
    ranged = trend_stats(path, since="2026-11-19", until="2026-11-20", today=TODAY)
    assert ranged.quiet_days == ["2026-11-19", "2026-11-20"]
    assert "No connection in this range" in render_stats_text(ranged)
    assert not (tmp_path / "nothing").exists()  # a report never creates anything


def test_bad_arguments(db: Path) -> None:
    with pytest.raises(ValueError, match="after"):
        trend_stats(db, since="2026-11-20", until="2026-11-19")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        trend_stats(db, since="last week")


def test_day_ranges() -> None:
    assert day_ranges([]) == []
    assert day_ranges(["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-05", "2026-12-01"]) == [
        ("2026-11-01", "2026-11-03"),
        ("2026-11-05", "2026-11-05"),
        ("2026-12-01", "2026-12-01"),
    ]


def test_text_rendering(db: Path) -> None:
    text = render_stats_text(trend_stats(db, today=TODAY))
    lines = text.splitlines()
    assert "Accepted: 8    Rejected: 12 (60.0% rejected)" in lines
    assert "QUIET DAYS (no rejection): 3" in lines
    assert "2026-11-17, 2026-11-19, 2026-11-21" in lines
    row = next(x for x in lines if x.startswith("2026-11-16") and "ftp" in x)
    assert row.split() == ["2026-11-16", "ftp", "2", "2", "4", "2"]
    assert any(x.split() == ["1", "ADMIN", "4"] for x in lines)
    assert any(x.split() == ["1", "192.0.2.7", "6"] for x in lines)


def test_text_has_no_terminal_escapes(tmp_path: Path) -> None:
    path = tmp_path / "gk.db"
    fill(path, [rej("192.0.2.1", at(D3, 9), reason="user", user="\x1b[31mRED")])
    text = render_stats_text(trend_stats(path, today=TODAY))
    assert "\x1b" not in text and "\\x1b[31mRED" in text  # visible, never sent to the terminal


def test_user_names_that_are_not_utf8_are_recorded_and_reported(tmp_path: Path) -> None:
    """The FTP codec keeps bytes that are not UTF-8 as lone surrogates: such a name once
    failed the whole batch it was in (nothing of that second was recorded). Now it is
    stored as a visible \\xNN, and every other record of the batch with it."""
    path = tmp_path / "gk.db"
    name = b"CAF\xe9".decode("utf-8", "surrogateescape")  # as the codec gives it
    fill(path, [
        rej("192.0.2.1", at(D3, 9), reason="user", user=name),
        session(at(D3, 9), address="192.0.2.1", user=name, outcome=Outcome.DENIED_USER),
        Login("ftp", "192.0.2.2", name, False, at(D3, 9)),
        rej("192.0.2.3", at(D3, 9)),  # in the same batch
        session(at(D3, 9), address="192.0.2.4", user="ALICE"),
    ])  # fmt: skip
    stats = trend_stats(path, today=TODAY)
    assert stats.rejected == 2 and stats.accepted == 2
    assert [(u.user, u.attempts) for u in stats.top_users] == [("CAF\\xe9", 2)]
    report = rejection_report(path, level="detail", today=TODAY)
    users = {e.address: e.user for loc in report.locations for e in loc.entries or ()}
    assert users == {"192.0.2.1": "CAF\\xe9", "192.0.2.3": None}


def write_config(tmp_path: Path, db: Path) -> Path:
    cfg = tmp_path / "gatekeeper.yaml"
    cfg.write_text(
        f"database: {db}\n"
        "listeners:\n"
        "  - {name: ftp, protocol: ftp, listen: '127.0.0.1:2121', upstream: 'ibmi:21'}\n"
        "  - {name: telnet, protocol: telnet, listen: '127.0.0.1:2323', upstream: 'ibmi:23'}\n"
    )
    return cfg


def test_cli(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, db)
    args = ["stats", "-c", str(cfg), "--since", "2026-11-16", "--until", "2026-11-20"]
    assert cli.main([*args, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = trend_stats(db, since="2026-11-16", until="2026-11-20").to_dict()
    assert data == expected and data["totals"] == {"accepted": 8, "rejected": 12}
    assert cli.main(args) == 0
    assert "QUIET DAYS (no rejection): 2" in capsys.readouterr().out
    assert cli.main([*args[:3], "--since", "2026-11-20", "--until", "2026-11-01"]) == 1
    assert "after" in capsys.readouterr().err


def test_cli_works_without_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, tmp_path / "var" / "none.db")
    assert cli.main(["stats", "-c", str(cfg), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"] == {"accepted": 0, "rejected": 0}
    assert not (tmp_path / "var").exists()

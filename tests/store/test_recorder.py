"""The write-behind recorder: exact counts, buckets, failure handling, retention."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.bans import covering_keys
from gatekeeper.errors import GatekeeperError
from gatekeeper.events import Ban, Login, Outcome, RefusedRequest, Rejection, SessionRecord
from gatekeeper.rules.model import Reason
from gatekeeper.store import schema
from gatekeeper.store.recorder import (
    FLUSH_INTERVAL_ENV,
    MAX_PENDING_ENV,
    Recorder,
    active_bans,
    lift_bans,
    tuning_from_env,
)

# A time zone west of UTC with DST, written POSIX-style so no tz database is needed: local
# dates and UTC times differ in the evening, which is what these tests are about.
TZ = "EST5EDT,M3.2.0,M11.1.0"


@pytest.fixture(autouse=True)
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", TZ)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def local(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> float:
    """A local wall-clock time as ``time.time()``."""
    return datetime(year, month, day, hour, minute, second).timestamp()


def utc(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def reject(
    address: str = "192.0.2.1",
    when: float = 0.0,
    *,
    listener: str = "ftp",
    reason: str = Reason.DEFAULT,
    rule: str | None = "rules.yaml:1",
    monitor: bool = False,
    user: str | None = None,
) -> Rejection:
    return Rejection(
        listener, address, reason, rule, when or local(2026, 11, 20, 12), monitor, user
    )


def rows(
    db: Path, sql: str = "SELECT * FROM rejections ORDER BY day, listener, address"
) -> list[Any]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


async def settle(rec: Recorder) -> None:
    """Let the writer's purge at start finish (the lock queues us behind it)."""
    await rec.purge()
    await rec.purge()


def test_rejected_and_session_are_plain_functions() -> None:
    assert not inspect.iscoroutinefunction(Recorder.rejected)
    assert not inspect.iscoroutinefunction(Recorder.session)


def test_exact_counts_many_addresses_two_listeners(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    base = local(2026, 11, 20, 10)
    events = [
        reject(f"198.51.100.{i % 20}", base + i, listener="ftp" if i % 3 else "telnet")
        for i in range(2000)
    ]
    expected = Counter((e.listener, e.address) for e in events)

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        for e in events[:700]:
            rec.rejected(e)
        await rec.flush()
        for e in events[700:]:
            rec.rejected(e)
        await rec.flush()
        await rec.close()
        assert rec.dropped == 0

    run(main())
    got = {(r["listener"], r["address"]): r["attempts"] for r in rows(db)}
    assert got == dict(expected)
    assert sum(got.values()) == 2000
    assert len(got) == 40


def test_flush_on_close_and_flushes_are_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        for _ in range(5):
            rec.rejected(reject())
        await rec.flush()
        await rec.flush()  # nothing pending: changes nothing
        rec.rejected(reject())
        await rec.close()  # writes the sixth
        await rec.close()  # a second close is harmless

    run(main())
    (row,) = rows(db)
    assert row["attempts"] == 6


def test_record_before_start_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    rec = Recorder(db)
    rec.rejected(reject())  # no event loop running: a plain call

    async def main() -> None:
        await rec.start()
        await rec.close()

    run(main())
    assert rows(db)[0]["attempts"] == 1


def test_first_last_and_latest_reason(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    t = local(2026, 11, 20, 9, 0, 0)

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        rec.rejected(reject(when=t + 10, reason=Reason.NETWORK, rule="a.yaml:1"))
        rec.rejected(reject(when=t + 5, reason=Reason.BAN, rule=None))
        rec.rejected(reject(when=t + 20, reason=Reason.USER, rule="a.yaml:9", user="ADMIN"))
        rec.rejected(reject(when=t + 1.5, reason=Reason.DEFAULT, rule="a.yaml:2"))
        await rec.flush()
        # Against the stored row: an older attempt moves first, not the reason...
        rec.rejected(reject(when=t, reason=Reason.LIMIT))
        await rec.flush()
        # ...a newer one moves last and the reason.
        rec.rejected(reject(when=t + 30.25, reason=Reason.SCHEDULE, rule="b.yaml:4"))
        await rec.close()

    run(main())
    (row,) = rows(db)
    assert row["attempts"] == 6
    assert row["first"] == utc(t)
    assert row["last"] == utc(t + 30.25)
    assert row["last"].endswith(".250Z")
    assert (row["reason"], row["rule"], row["user"]) == ("schedule", "b.yaml:4", None)


def test_latest_user_kept_when_an_older_attempt_arrives(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    t = local(2026, 11, 20, 9)

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        rec.rejected(reject(when=t + 20, reason=Reason.USER, user="QSECOFR"))
        await rec.flush()
        rec.rejected(reject(when=t + 10, reason=Reason.USER, user="ADMIN"))
        await rec.close()

    run(main())
    (row,) = rows(db)
    assert (row["attempts"], row["user"], row["first"]) == (2, "QSECOFR", utc(t + 10))


def test_day_buckets_are_local_dates_times_are_utc(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    late = local(2026, 11, 20, 23, 59, 59)  # 2026-11-21T04:59:59Z
    early = local(2026, 11, 21, 0, 0, 1)

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        rec.rejected(reject(when=late))
        rec.rejected(reject(when=early))
        rec.rejected(reject(when=early + 1, monitor=True))
        await rec.close()

    run(main())
    got = [(r["day"], r["monitor"], r["first"], r["attempts"]) for r in rows(db)]
    assert got == [
        ("2026-11-20", 0, "2026-11-21T04:59:59.000Z", 1),
        ("2026-11-21", 0, "2026-11-21T05:00:01.000Z", 1),
        ("2026-11-21", 1, "2026-11-21T05:00:02.000Z", 1),
    ]
    pattern = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
    assert all(pattern.fullmatch(r["last"]) for r in rows(db))


def test_sessions_stored(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    start = local(2026, 11, 20, 22, 30)
    record = SessionRecord(
        listener="ftp",
        address="203.0.113.9",
        port=50123,
        start=start,
        end=start + 95.5,
        outcome=Outcome.CLOSED,
        upstream="ibmi.example.com:21",
        local="10.0.0.2:40001",
        bytes_up=10,
        bytes_down=2000,
        user="PARTNER1",
        files_sent=2,
        files_received=1,
    )

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        rec.session(record)
        rec.session(
            SessionRecord(
                "telnet", "::1", 1, start, start, Outcome.IDLE, "h:23", None, would_reject="ban"
            )
        )
        await rec.close()

    run(main())
    got = rows(db, "SELECT * FROM sessions ORDER BY id")
    assert len(got) == 2
    first = got[0]
    del first["id"]
    assert first == {
        "day": "2026-11-20",
        "listener": "ftp",
        "address": "203.0.113.9",
        "port": 50123,
        "start": "2026-11-21T03:30:00.000Z",
        "end": "2026-11-21T03:31:35.500Z",
        "outcome": "closed",
        "upstream": "ibmi.example.com:21",
        "local": "10.0.0.2:40001",
        "bytes_up": 10,
        "bytes_down": 2000,
        "user": "PARTNER1",
        "files_sent": 2,
        "files_received": 1,
        "would_reject": None,
    }
    assert (got[1]["outcome"], got[1]["local"], got[1]["would_reject"]) == (
        "idle-timeout",
        None,
        "ban",
    )


def test_creates_folder_wal_and_incremental_vacuum(tmp_path: Path) -> None:
    db = tmp_path / "var" / "lib" / "gk.db"

    async def main() -> None:
        rec = Recorder(db)
        await rec.start()
        await rec.close()

    run(main())
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"rejections", "sessions", "locations", "meta"} <= tables
    finally:
        conn.close()


def test_reopening_keeps_data_and_schema(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"

    async def once() -> None:
        rec = Recorder(db)
        await rec.start()
        rec.rejected(reject())
        await rec.close()

    run(once())
    run(once())
    assert rows(db)[0]["attempts"] == 2


def test_unopenable_database_is_a_gatekeeper_error(tmp_path: Path) -> None:
    async def main() -> None:
        rec = Recorder(tmp_path)  # a folder, not a file
        await rec.start()

    with pytest.raises(GatekeeperError, match="cannot open the database"):
        run(main())


def test_writer_flushes_on_its_own(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"

    async def main() -> None:
        rec = Recorder(db, flush_interval=0.02)
        await rec.start()
        rec.rejected(reject())
        rec.session(SessionRecord("ftp", "192.0.2.1", 1, 1e9, 1e9, Outcome.CLOSED, "h:21", None))
        # Nothing to await but the clock: poll, bounded.
        for _ in range(500):
            if not rec.pending:
                break
            await asyncio.sleep(0.01)
        assert rec.pending == 0
        assert rows(db)[0]["attempts"] == 1  # written before close
        await rec.close()

    run(main())


def test_locked_database_keeps_pending_and_drops_only_overflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "gk.db"
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 20)
    caplog.set_level(logging.WARNING, logger="gatekeeper.store.recorder")

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600, max_pending=5)
        await rec.start()
        await settle(rec)
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            for i in range(30):
                rec.rejected(reject(f"192.0.2.{i % 3}"))  # 3 rows
            await rec.flush()  # fails: locked
            await rec.flush()  # fails again, logged once
            assert rec.pending == 3
            assert rec.dropped == 0
            for i in range(4):
                rec.rejected(reject(f"198.51.100.{i}"))  # 2 fit, 2 do not
            rec.rejected(reject("192.0.2.0"))  # an existing row always fits
            await rec.flush()
            assert (rec.pending, rec.dropped) == (5, 2)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await rec.flush()
        assert rec.pending == 0
        await rec.close()
        assert rec.dropped == 2

    run(main())
    got = {r["address"]: r["attempts"] for r in rows(db)}
    assert got == {
        "192.0.2.0": 11,
        "192.0.2.1": 10,
        "192.0.2.2": 10,
        "198.51.100.0": 1,
        "198.51.100.1": 1,
    }
    assert rows(db, "SELECT value FROM meta WHERE key = 'dropped'") == [{"value": 2}]
    failures = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(failures) == 1
    assert any("writing to" in r.getMessage() and "again" in r.getMessage() for r in caplog.records)


def test_failed_flush_merges_what_arrived_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "gk.db"
    t = local(2026, 11, 20, 9)

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        await settle(rec)
        rec.rejected(reject(when=t + 10, reason=Reason.NETWORK))
        rec.rejected(reject("192.0.2.50", when=t))
        rec.max_pending = 10  # room again: what arrives during the failing write fits
        real = rec._db.executemany

        async def disk_full(sql: str, params: Any) -> Any:
            # While the write is under way the network side keeps recording.
            rec.rejected(reject(when=t + 20, reason=Reason.BAN))
            rec.rejected(reject(when=t + 1, reason=Reason.LIMIT))
            rec.rejected(reject("192.0.2.99", when=t + 5))
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(rec._db, "executemany", disk_full)
        await rec.flush()
        assert rec.pending == 3 and rec.dropped == 0
        monkeypatch.setattr(rec._db, "executemany", real)
        await rec.close()
        assert rec.dropped == 0

    run(main())
    got = {r["address"]: (r["attempts"], r["reason"], r["first"], r["last"]) for r in rows(db)}
    assert got == {
        "192.0.2.1": (3, "ban", utc(t + 1), utc(t + 20)),
        "192.0.2.50": (1, "default", utc(t), utc(t)),
        "192.0.2.99": (1, "default", utc(t + 5), utc(t + 5)),
    }


def test_overflow_without_failure_is_counted(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600, max_pending=2)
        await rec.start()
        rec.rejected(reject("192.0.2.1"))
        rec.session(SessionRecord("ftp", "192.0.2.1", 1, 1e9, 1e9, Outcome.CLOSED, "h:21", None))
        rec.rejected(reject("192.0.2.2"))  # full
        rec.session(SessionRecord("ftp", "192.0.2.1", 1, 1e9, 1e9, Outcome.CLOSED, "h:21", None))
        rec.rejected(reject("192.0.2.1"))  # existing row: fine
        assert rec.dropped == 2
        await rec.flush()
        rec.rejected(reject("192.0.2.2"))  # room again
        await rec.close()
        assert rec.dropped == 2

    run(main())
    assert {r["address"]: r["attempts"] for r in rows(db)} == {"192.0.2.1": 2, "192.0.2.2": 1}
    assert rows(db, "SELECT value FROM meta WHERE key = 'dropped'") == [{"value": 2}]


def test_records_after_close_are_dropped(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"

    async def main() -> Recorder:
        rec = Recorder(db)
        await rec.start()
        await rec.close()
        return rec

    rec = run(main())
    rec.rejected(reject())
    rec.session(SessionRecord("ftp", "192.0.2.1", 1, 1e9, 1e9, Outcome.CLOSED, "h:21", None))
    assert rec.dropped == 2
    assert rows(db) == []


def test_retention_purge_deletes_old_rows_only(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    now = local(2026, 11, 20, 12)
    day = 86400.0
    old, recent = now - 401 * day, now - 399 * day

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)  # retention: 400 days
        await rec.start()
        await settle(rec)
        for i in range(3000):  # enough pages to give back
            rec.rejected(reject(f"10.{i // 250}.{i % 250}.1", old, rule="x" * 100))
        rec.rejected(reject("192.0.2.1", recent))
        rec.rejected(reject("192.0.2.2", now))
        for when in (old, recent):
            rec.session(
                SessionRecord("ftp", "192.0.2.1", 1, when - 60, when, Outcome.CLOSED, "h:21", None)
            )
        await rec.flush()
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO locations (address, country) VALUES ('10.0.0.1', 'CN')")
        conn.execute("INSERT INTO locations (address, country) VALUES ('192.0.2.1', 'GB')")
        conn.commit()
        pages_before = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.close()

        assert await rec.purge(now) == 3001
        assert await rec.purge(now) == 0
        await rec.close()

        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
            assert conn.execute("PRAGMA page_count").fetchone()[0] < pages_before
        finally:
            conn.close()

    run(main())
    assert [r["address"] for r in rows(db)] == ["192.0.2.1", "192.0.2.2"]
    assert len(rows(db, "SELECT * FROM sessions")) == 1
    assert rows(db, "SELECT address FROM locations") == [{"address": "192.0.2.1"}]


def test_dropped_accumulates_in_meta_across_runs(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"

    async def once() -> None:
        rec = Recorder(db, max_pending=1)
        await rec.start()
        rec.rejected(reject("192.0.2.1"))
        rec.rejected(reject("192.0.2.2"))  # dropped
        await rec.close()

    run(once())
    run(once())
    assert rows(db, "SELECT value FROM meta WHERE key = 'dropped'") == [{"value": 2}]


class _Unreadable:
    """A connection whose first read fails as when the WAL index cannot be created."""

    def execute(self, sql: str) -> Any:
        raise sqlite3.OperationalError("unable to open database file")

    def close(self) -> None:
        pass


def test_readonly_falls_back_to_immutable_only_with_an_empty_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "gk.db"
    schema.prepare(db)  # closed again: the WAL is checkpointed and gone
    real = sqlite3.connect
    opened: list[str] = []

    def connect(database: str, **kwargs: Any) -> Any:
        opened.append(database)
        return real(database, **kwargs) if "immutable=1" in database else _Unreadable()

    monkeypatch.setattr(schema.sqlite3, "connect", connect)
    conn = schema.connect_readonly(db)
    try:
        assert schema.schema_version(conn) == schema.SCHEMA_VERSION
    finally:
        conn.close()
    assert opened[-1].endswith("?mode=ro&immutable=1")

    writer = real(db, isolation_level=None)  # the daemon, with rows only in the WAL
    try:
        writer.execute("INSERT INTO meta VALUES ('x', 1)")
        with pytest.raises(sqlite3.OperationalError):
            schema.connect_readonly(db)
    finally:
        writer.close()
    with pytest.raises(sqlite3.OperationalError):
        schema.connect_readonly(tmp_path / "missing.db")


# -- FTP logins, refused requests, bans --------------------------------------------------------


def login(
    address: str = "192.0.2.1",
    user: str = "ADMIN",
    ok: bool = False,
    when: float = 0.0,
    listener: str = "ftp",
) -> Login:
    return Login(listener, address, user, ok, when or local(2026, 11, 20, 12))


def refused(
    command: str = "RCMD",
    argument: str = "DLTLIB QGPL",
    user: str | None = "PARTNER1",
    when: float = 0.0,
    address: str = "192.0.2.1",
) -> RefusedRequest:
    return RefusedRequest("ftp", address, user, command, argument, when or local(2026, 11, 20, 12))


def ban(key: str = "192.0.2.1", since: float = 0.0, duration: float = 3600.0) -> Ban:
    since = since or local(2026, 11, 20, 12)
    return Ban(key, key.split("/")[0], "ftp", since, since + duration, 3)


def test_new_sink_calls_are_plain_functions() -> None:
    for name in ("login", "refused_request", "banned"):
        assert not inspect.iscoroutinefunction(getattr(Recorder, name))


def test_logins_aggregated_exactly(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    t = local(2026, 11, 20, 23, 59)  # the day changes during the run
    hostile = "ADMIN'); DROP TABLE logins; --\x00\u202e"
    events = [
        login(f"198.51.100.{i % 7}", ("ADMIN", "QSECOFR", hostile)[i % 3], i % 11 == 0, t + i)
        for i in range(1000)
    ]
    expected = Counter((schema.local_day(e.when), e.address, e.user, int(e.ok)) for e in events)

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        for e in events[:400]:
            rec.login(e)
        await rec.flush()
        for e in events[400:]:
            rec.login(e)
        await rec.close()
        assert rec.dropped == 0

    run(main())
    got = rows(db, "SELECT * FROM logins")
    assert {(r["day"], r["address"], r["user"], r["ok"]): r["attempts"] for r in got} == expected
    assert sum(r["attempts"] for r in got) == 1000
    assert {r["day"] for r in got} == {"2026-11-20", "2026-11-21"}
    spans: dict[tuple[str, str, str, int], tuple[float, float]] = {}
    for e in events:
        key = (schema.local_day(e.when), e.address, e.user, int(e.ok))
        low, high = spans.get(key, (e.when, e.when))
        spans[key] = (min(low, e.when), max(high, e.when))
    assert {(r["day"], r["address"], r["user"], r["ok"]): (r["first"], r["last"]) for r in got} == {
        key: (utc(low), utc(high)) for key, (low, high) in spans.items()
    }


def test_refused_requests_aggregated_and_argument_bounded(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    t = local(2026, 11, 20, 9)
    long = "CALL PGM(" + "X" * 10_000 + ")"

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        for i in range(500):  # an attacker spamming RCMD: one row
            rec.refused_request(refused(when=t + i))
        rec.refused_request(refused("SITE", "NAMEFMT 1", user=None, when=t))
        rec.refused_request(refused(argument=long, when=t))
        await rec.flush()
        rec.refused_request(refused(argument=long + "more", when=t - 5))  # the same cut text
        await rec.close()

    run(main())
    got = rows(db, "SELECT * FROM requests ORDER BY attempts DESC, command")
    assert [(r["user"], r["command"], r["attempts"]) for r in got] == [
        ("PARTNER1", "RCMD", 500),
        ("PARTNER1", "RCMD", 2),
        ("", "SITE", 1),
    ]
    assert (got[0]["first"], got[0]["last"]) == (utc(t), utc(t + 499))
    cut = got[1]["argument"]
    assert len(cut) == schema.MAX_ARGUMENT and cut.endswith("…") and cut.startswith("CALL PGM(X")
    assert (got[1]["first"], got[1]["last"]) == (utc(t - 5), utc(t))


def test_bans_round_trip_through_load_bans(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    now = local(2026, 11, 20, 12)
    v4 = Ban("192.0.2.1", "192.0.2.1", "ftp", now - 60.5, now + 3540.25, 3)
    v6 = Ban("2001:db8:1:2::/64", "2001:db8:1:2::9", "ftp", now - 30, now + 30, 5)
    expired = Ban("192.0.2.2", "192.0.2.2", "telnet", now - 7200, now - 3600, 3)

    async def first_run() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        for b in (v4, v6, expired):
            rec.banned(b)
        await rec.close()

    async def second_run() -> list[Ban]:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        try:
            return await rec.load_bans(now)
        finally:
            await rec.close()

    run(first_run())
    assert run(second_run()) == [v4, v6]  # oldest first; times to the millisecond
    assert len(rows(db, "SELECT * FROM bans")) == 3
    assert active_bans(db, now) == [v4, v6]  # the command line's read-only view agrees
    assert active_bans(db, now + 31) == [v4]


def test_a_new_ban_replaces_the_row_and_clears_an_older_lift(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    now = local(2026, 11, 20, 12)

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        rec.banned(ban("192.0.2.1", now - 100))
        await rec.flush()
        assert [b.key for b in lift_bans(db, ["192.0.2.1"], now - 50)] == ["192.0.2.1"]
        assert await rec.load_bans(now) == []
        rec.banned(ban("192.0.2.1", now - 10))  # banned again after the lift
        await rec.flush()
        assert [b.since for b in await rec.load_bans(now)] == [now - 10]
        # A lift made while a newer ban waited to be written stays (the daemon applies it).
        rec.banned(ban("192.0.2.1", now - 2))
        assert [b.key for b in lift_bans(db, ["192.0.2.1"], now - 1)] == ["192.0.2.1"]
        await rec.flush()
        assert await rec.load_bans(now) == []
        await rec.close()

    run(main())
    (row,) = rows(db, "SELECT * FROM bans")
    assert (row["since"], row["lifted"], row["lift_seq"]) == (utc(now - 2), utc(now - 1), 2)


def test_lifted_since_sees_a_lift_made_by_another_connection(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    now = time.time()

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        await settle(rec)
        assert await rec.lifted_since(None) == ([], 0)
        rec.banned(ban("192.0.2.1", now))
        rec.banned(ban("2001:db8:1:2::/64", now))
        rec.banned(ban("198.51.100.1", now))
        await rec.flush()
        _, marker = await rec.lifted_since(None)
        assert await rec.lifted_since(marker) == ([], marker)

        # The command line, from its own connection: an address inside the /64.
        lifted = lift_bans(db, covering_keys("2001:db8:1:2::abcd"))
        assert [b.key for b in lifted] == ["2001:db8:1:2::/64"]
        assert lift_bans(db, covering_keys("2001:db8:1:2::abcd")) == []  # already lifted
        assert lift_bans(db, ["203.0.113.1"]) == []  # nothing to lift: nothing counted
        keys, marker = await rec.lifted_since(marker)
        assert keys == ["2001:db8:1:2::/64"]
        assert await rec.lifted_since(marker) == ([], marker)

        lift_bans(db, ["192.0.2.1"])
        lift_bans(db, ["198.51.100.1"])
        keys, marker = await rec.lifted_since(marker)
        assert keys == ["192.0.2.1", "198.51.100.1"]
        assert marker == 3
        assert [b.key for b in await rec.load_bans(now)] == []
        await rec.close()

    run(main())
    conn = sqlite3.connect(db)
    try:
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT key, lift_seq FROM bans WHERE lift_seq > ? "
                "ORDER BY lift_seq",
                (0,),
            )
        )
    finally:
        conn.close()
    assert plan.startswith("SEARCH") and "bans_lifts" in plan  # one seek, not a scan


def test_lift_helpers_without_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "none" / "gk.db"
    assert active_bans(missing) == []
    with pytest.raises(GatekeeperError, match="no such database"):
        lift_bans(missing, ["192.0.2.1"])
    assert not missing.parent.exists()  # neither created the folder nor the file


def test_new_events_overflow_and_failures_are_counted_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "gk.db"
    t = local(2026, 11, 20, 9)

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600, max_pending=3)
        await rec.start()
        await settle(rec)
        rec.login(login(when=t))
        rec.refused_request(refused(when=t))
        rec.banned(ban("192.0.2.1", t))
        rec.login(login(when=t + 1))  # an existing row: fits
        rec.banned(ban("192.0.2.1", t + 5))  # the same key: replaces, fits
        rec.login(login(user="OTHER", when=t))  # full
        rec.refused_request(refused("SITE", when=t))  # full
        rec.banned(ban("192.0.2.2", t))  # full
        assert (rec.pending, rec.dropped) == (3, 3)

        rec.max_pending = 10  # room again: what arrives during the failing write fits
        real = rec._db.executemany

        async def disk_full(sql: str, params: Any) -> Any:
            rec.login(login(when=t + 2))  # arrives during the failing write
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(rec._db, "executemany", disk_full)
        await rec.flush()
        assert (rec.pending, rec.dropped) == (3, 3)
        monkeypatch.setattr(rec._db, "executemany", real)
        await rec.close()
        assert rec.dropped == 3

    run(main())
    assert [r["attempts"] for r in rows(db, "SELECT * FROM logins")] == [3]
    assert [r["attempts"] for r in rows(db, "SELECT * FROM requests")] == [1]
    assert [(r["key"], r["since"]) for r in rows(db, "SELECT * FROM bans")] == [
        ("192.0.2.1", utc(t + 5))
    ]
    assert rows(db, "SELECT value FROM meta WHERE key = 'dropped'") == [{"value": 3}]


def test_new_events_after_close_are_dropped(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"

    async def main() -> Recorder:
        rec = Recorder(db)
        await rec.start()
        await rec.close()
        return rec

    rec = run(main())
    rec.login(login())
    rec.refused_request(refused())
    rec.banned(ban())
    assert rec.dropped == 3


def test_retention_purges_logins_requests_and_old_bans(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    now = local(2026, 11, 20, 12)
    old = now - 401 * 86400.0

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        await settle(rec)
        for when in (old, now):
            rec.login(login(when=when))
            rec.refused_request(refused(when=when))
        rec.banned(ban("192.0.2.1", old))
        rec.banned(ban("192.0.2.2", now))
        await rec.flush()
        assert await rec.purge(now) == 3
        await rec.close()

    run(main())
    assert len(rows(db, "SELECT * FROM logins")) == 1
    assert len(rows(db, "SELECT * FROM requests")) == 1
    assert [r["key"] for r in rows(db, "SELECT * FROM bans")] == ["192.0.2.2"]


def test_migration_from_version_1_keeps_the_data(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for statement in schema.MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO rejections VALUES ('2026-11-20', 'ftp', '192.0.2.1', 0, "
            "'2026-11-20T08:00:00.000Z', '2026-11-20T08:00:00.000Z', 4, 'default', NULL, NULL)"
        )
        assert active_bans(db) == []  # an older database: no bans, no error
        assert lift_bans(db, ["192.0.2.1"]) == []
        assert schema.apply_schema(conn) == 1
        assert schema.schema_version(conn) == schema.SCHEMA_VERSION == 3
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"bans", "logins", "requests"} <= tables
    finally:
        conn.close()
    assert rows(db)[0]["attempts"] == 4


# -- the file fails under the open connection --------------------------------------------------


def _held(db: Path) -> list[str]:
    """The database's files this process has open or mapped (the WAL index is mapped)."""
    names = {str(db), f"{db}-wal", f"{db}-shm"}
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if (target := os.readlink(f"/proc/self/fd/{fd}")) in names:
                held.append(target)
    maps = Path("/proc/self/maps").read_text().splitlines()
    return held + [line.split()[-1] for line in maps if line.split()[-1] in names]


def _move(source: Path, target: Path) -> None:
    for path in source.glob("gk.db*"):
        path.rename(target / path.name)


def _fail_next_write(rec: Recorder, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """The next transaction of ``rec``'s connection fails as SQLite would with ``code``."""
    db = rec._db
    real = db.execute

    async def execute(sql: str, *args: Any) -> Any:
        if sql == "BEGIN IMMEDIATE":
            exc = sqlite3.OperationalError("disk I/O error")
            exc.sqlite_errorcode = code  # as SQLite sets it: the extended code
            raise exc
        return await real(sql, *args)

    monkeypatch.setattr(db, "execute", execute)


SQLITE_IOERR_WRITE = 778  # SQLITE_IOERR | (3 << 8): what a read-only or failing disk gives
SQLITE_FULL = 13


def test_a_failed_file_is_let_go_and_opened_again_never_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After an I/O error the recorder closes the database (so an administrator can unmount
    and repair its file system), keeps the records, opens the file again at the next flush
    — but never creates a new one where it went missing (an unmounted mount point)."""
    db = tmp_path / "gk.db"
    away = tmp_path / "repair"
    away.mkdir()
    caplog.set_level(logging.WARNING, logger="gatekeeper.store.recorder")

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        await settle(rec)
        rec.rejected(reject("192.0.2.1"))
        await rec.flush()
        assert _held(db)
        _fail_next_write(rec, monkeypatch, SQLITE_IOERR_WRITE)
        rec.rejected(reject("192.0.2.1"))
        rec.rejected(reject("192.0.2.2"))
        await rec.flush()
        assert rec.pending == 2
        assert _held(db) == []  # nothing open, nothing mapped: it could be unmounted
        _move(tmp_path, away)  # the file system goes away for repair
        rec.rejected(reject("192.0.2.3"))
        await rec.flush()
        await rec.flush()
        assert rec.pending == 3
        assert not db.exists()  # no new, empty database in its place
        assert _held(db) == []
        _move(away, tmp_path)  # repaired and back
        await rec.flush()
        assert rec.pending == 0
        await rec.close()
        assert rec.dropped == 0

    run(main())
    assert {r["address"]: r["attempts"] for r in rows(db)} == {
        "192.0.2.1": 2,
        "192.0.2.2": 1,
        "192.0.2.3": 1,
    }
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot write" in m for m in messages) == 1  # the failures: one line
    assert sum("again" in m for m in messages) == 1


def test_a_full_disk_keeps_the_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLITE_FULL (or a lock held elsewhere) is not a broken file: the connection stays."""
    db = tmp_path / "gk.db"

    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        await settle(rec)
        connection = rec._db
        _fail_next_write(rec, monkeypatch, SQLITE_FULL)
        rec.rejected(reject())
        await rec.flush()
        assert rec.pending == 1
        assert rec._db is connection
        monkeypatch.undo()
        await rec.close()

    run(main())
    assert [r["attempts"] for r in rows(db)] == [1]


def test_close_opens_a_let_go_file_to_write_what_is_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "gk.db"

    async def main() -> Recorder:
        rec = Recorder(db, flush_interval=3600, max_pending=1)
        await rec.start()
        await settle(rec)
        _fail_next_write(rec, monkeypatch, SQLITE_IOERR_WRITE)
        rec.rejected(reject("192.0.2.1"))
        rec.rejected(reject("192.0.2.2"))  # does not fit: dropped
        await rec.flush()
        assert _held(db) == []
        await rec.close()  # the file works again: pending rows and the dropped count written
        return rec

    rec = run(main())
    assert rec.dropped == 1
    assert [r["address"] for r in rows(db)] == ["192.0.2.1"]
    assert rows(db, "SELECT value FROM meta WHERE key = 'dropped'") == [{"value": 1}]
    assert _held(db) == []


def test_tuning_from_the_environment(caplog: pytest.LogCaptureFixture) -> None:
    env = {FLUSH_INTERVAL_ENV: "0.25", MAX_PENDING_ENV: "500"}
    assert tuning_from_env(env) == {"flush_interval": 0.25, "max_pending": 500}
    assert tuning_from_env({}) == {}
    with caplog.at_level(logging.WARNING, logger="gatekeeper.store.recorder"):
        assert tuning_from_env({FLUSH_INTERVAL_ENV: "soon", MAX_PENDING_ENV: "-1"}) == {}
    assert len(caplog.records) == 2
    assert FLUSH_INTERVAL_ENV in caplog.records[0].getMessage()

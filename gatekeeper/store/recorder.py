"""Write-behind recorder: the network side's ``Sink``, aggregating in memory, writing batches.

``rejected()`` and ``session()`` are plain functions doing a dict update or a list append:
nothing on the accept path touches the database. A writer task flushes what is pending
every ``flush_interval`` seconds in one transaction (``INSERT … ON CONFLICT DO UPDATE``),
so N rejections give attempts summing to N once flushed. A flush that fails keeps
everything pending and is retried on the next tick; only what does not fit in
``max_pending`` is given up, and counted in ``dropped`` (also kept in ``meta``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite

from gatekeeper.errors import GatekeeperError
from gatekeeper.events import Rejection, SessionRecord
from gatekeeper.store import schema

log = logging.getLogger(__name__)

PURGE_INTERVAL = 3600.0  # seconds between two retention purges (and one at start)
# How many days the local date of a row may differ from the UTC date of its times when
# the daemon's time zone changed between runs (UTC-12 .. UTC+14 spans 26 hours).
_DAY_SLACK = 2 * 86400.0

_Key = tuple[str, str, str, int]  # (local day, listener, address, monitor)

_UPSERT_REJECTION = """
INSERT INTO rejections (day, listener, address, monitor, first, last, attempts, reason, rule, user)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (day, listener, address, monitor) DO UPDATE SET
    attempts = attempts + excluded.attempts,
    first = min(first, excluded.first),
    last = max(last, excluded.last),
    reason = CASE WHEN excluded.last >= last THEN excluded.reason ELSE reason END,
    rule = CASE WHEN excluded.last >= last THEN excluded.rule ELSE rule END,
    user = CASE WHEN excluded.last >= last THEN excluded.user ELSE user END
"""

_INSERT_SESSION = """
INSERT INTO sessions (day, listener, address, port, start, end, outcome, upstream, local,
                      bytes_up, bytes_down, user, files_sent, files_received, would_reject)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_PURGES = (
    "DELETE FROM rejections WHERE day <= ? AND last < ? RETURNING address",
    "DELETE FROM sessions WHERE day <= ? AND end < ? RETURNING address",
)

_PURGE_LOCATION = """
DELETE FROM locations WHERE address = ?1
    AND NOT EXISTS (SELECT 1 FROM rejections WHERE address = ?1)
    AND NOT EXISTS (SELECT 1 FROM sessions WHERE address = ?1)
"""

_ADD_DROPPED = """
INSERT INTO meta (key, value) VALUES ('dropped', ?)
ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value
"""


async def _rollback(db: Any) -> None:
    """Roll back if a transaction is open; a failure here changes nothing for the caller."""
    with contextlib.suppress(sqlite3.Error, ValueError):
        if db.in_transaction:
            await db.rollback()


class _Pending:
    """Attempts of one (day, listener, address, monitor) not yet written."""

    __slots__ = ("count", "first", "last", "reason", "rule", "user")

    def __init__(self, event: Rejection) -> None:
        self.first = event.when
        self.last = event.when
        self.count = 1
        self.reason = event.reason
        self.rule = event.rule
        self.user = event.user

    def add(self, event: Rejection) -> None:
        self.count += 1
        if event.when < self.first:
            self.first = event.when
        if event.when >= self.last:
            self.last = event.when
            self.reason = event.reason
            self.rule = event.rule
            self.user = event.user

    def merge(self, newer: _Pending) -> None:
        """Fold ``newer`` (arrived while this one was being written) into this one."""
        self.count += newer.count
        self.first = min(self.first, newer.first)
        if newer.last >= self.last:
            self.last = newer.last
            self.reason = newer.reason
            self.rule = newer.rule
            self.user = newer.user


def _rejection_rows(pending: dict[_Key, _Pending]) -> Iterator[tuple[Any, ...]]:
    for (day, listener, address, monitor), p in pending.items():
        yield (
            day,
            listener,
            address,
            monitor,
            schema.utc_text(p.first),
            schema.utc_text(p.last),
            p.count,
            str(p.reason),
            p.rule,
            p.user,
        )


def _session_rows(records: Iterable[SessionRecord]) -> Iterator[tuple[Any, ...]]:
    for r in records:
        yield (
            schema.local_day(r.start),
            r.listener,
            r.address,
            r.port,
            schema.utc_text(r.start),
            schema.utc_text(r.end),
            str(r.outcome),
            r.upstream,
            r.local,
            r.bytes_up,
            r.bytes_down,
            r.user,
            r.files_sent,
            r.files_received,
            r.would_reject,
        )


class Recorder:
    """Implements ``events.Sink``. ``start()`` it inside the event loop, ``close()`` at stop."""

    def __init__(
        self,
        database: Path,
        *,
        flush_interval: float = 1.0,
        retention: float = 400 * 86400,
        max_pending: int = 200_000,
    ) -> None:
        self.database = Path(database)
        self.flush_interval = flush_interval
        self.retention = retention
        self.max_pending = max_pending
        # Records given up since start (pending full, unwritable at close, after close): one
        # per rejected() or session() call that will never reach the database.
        self.dropped = 0
        self._dropped_saved = 0  # how much of ``dropped`` is already added to meta
        self._rejections: dict[_Key, _Pending] = {}
        self._sessions: list[SessionRecord] = []
        self._inflight = 0  # records being written by a flush right now
        self._db: Any = None  # aiosqlite.Connection
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False
        self._failing = False  # the last flush failed (its error was logged once)
        self._overflowing = False  # records are being dropped (logged once)
        self._commit_sent = False  # the running flush has sent its COMMIT

    # -- the Sink: synchronous, O(1), never raise ------------------------------------------

    def rejected(self, event: Rejection) -> None:
        if self._closed:
            self._drop(1)
            return
        try:
            key = (schema.local_day(event.when), event.listener, event.address, int(event.monitor))
        except (ValueError, OverflowError, OSError):  # a nonsensical timestamp
            self._drop(1)
            return
        pending = self._rejections.get(key)
        if pending is not None:
            pending.add(event)
        elif self._full():
            self._drop(1)
        else:
            self._rejections[key] = _Pending(event)

    def session(self, record: SessionRecord) -> None:
        if self._closed or self._full():
            self._drop(1)
            return
        self._sessions.append(record)

    @property
    def pending(self) -> int:
        """Records (rejection rows and sessions) waiting to be written."""
        return len(self._rejections) + len(self._sessions) + self._inflight

    def _full(self) -> bool:
        return self.pending >= self.max_pending

    def _drop(self, count: int) -> None:
        self.dropped += count
        if not self._overflowing:
            self._overflowing = True
            why = "recorder closed" if self._closed else f"{self.max_pending} records pending"
            log.error("recorder: dropping records (%s); see 'dropped' in the database", why)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the folder and database if missing, apply the schema, start the writer."""
        if self._db is not None or self._closed:
            raise RuntimeError("recorder already started or closed")
        try:
            await asyncio.to_thread(schema.prepare, self.database)
            db = await aiosqlite.connect(self.database, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise GatekeeperError(f"{self.database}: cannot open the database: {exc}") from exc
        try:
            await db.execute(f"PRAGMA busy_timeout = {schema.BUSY_TIMEOUT_MS}")
            for pragma in schema.CONNECTION_PRAGMAS:
                await db.execute(pragma)
        except sqlite3.Error as exc:
            await db.close()
            raise GatekeeperError(f"{self.database}: cannot open the database: {exc}") from exc
        self._db = db
        self._task = asyncio.create_task(self._run(), name="gatekeeper-recorder")

    async def close(self) -> None:
        """Stop the writer, write everything pending, close the database (no purge)."""
        if self._closed:
            return
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        async with self._lock:
            self._closed = True  # from here on, records are counted as dropped
            try:
                if self._db is not None:
                    await self._flush_locked()
            finally:
                lost = sum(p.count for p in self._rejections.values()) + len(self._sessions)
                if lost:
                    self._rejections.clear()
                    self._sessions.clear()
                    self.dropped += lost
                    log.error("recorder: %d records could not be written at close", lost)
                if self._db is not None:
                    db, self._db = self._db, None
                    try:
                        await db.close()
                    except sqlite3.Error as exc:
                        log.error("recorder: closing %s: %s", self.database, exc)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_purge = loop.time()
        while True:
            if loop.time() >= next_purge:
                next_purge = loop.time() + PURGE_INTERVAL
                try:
                    deleted = await self.purge()
                except (sqlite3.Error, ValueError) as exc:
                    log.error("recorder: purge of %s failed: %s", self.database, exc)
                else:
                    if deleted:
                        log.info("recorder: purged %d rows older than retention", deleted)
            try:
                async with asyncio.timeout(self.flush_interval):
                    await self._stop.wait()
                return
            except TimeoutError:
                pass
            if self._rejections or self._sessions or self.dropped != self._dropped_saved:
                try:
                    await self.flush()
                except Exception:  # a bug, not the database: keep the writer alive
                    log.exception("recorder: flush failed")

    # -- writing ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write everything pending now, in one transaction. Never raises for DB errors:
        what could not be written stays pending for the next flush."""
        async with self._lock:
            await self._flush_locked()

    async def _flush_locked(self) -> bool:
        if self._db is None:
            return False
        if not (self._rejections or self._sessions or self.dropped != self._dropped_saved):
            return True
        rejections, self._rejections = self._rejections, {}
        sessions, self._sessions = self._sessions, []
        self._inflight = len(rejections) + len(sessions)
        dropped = self.dropped
        self._commit_sent = False
        try:
            await self._write(rejections, sessions, dropped - self._dropped_saved)
        except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite connection gone
            if not self._failing:
                self._failing = True
                log.error(
                    "recorder: cannot write to %s (%s); keeping %d records pending, retrying",
                    self.database,
                    exc,
                    len(rejections) + len(sessions),
                )
            else:
                log.debug("recorder: write still failing: %s", exc)
            return False
        finally:
            self._inflight = 0
            if self._commit_sent:
                self._dropped_saved = dropped
            else:
                self._restore(rejections, sessions)
        if self._failing:
            self._failing = False
            log.warning("recorder: writing to %s again", self.database)
        if self.pending < self.max_pending:
            self._overflowing = False
        return True

    def _restore(self, rejections: dict[_Key, _Pending], sessions: list[SessionRecord]) -> None:
        """Put back what a failed flush took, merging what arrived in the meantime."""
        for key, newer in self._rejections.items():
            older = rejections.get(key)
            if older is None:
                rejections[key] = newer
            else:
                older.merge(newer)
        self._rejections = rejections
        sessions.extend(self._sessions)
        self._sessions = sessions

    async def _write(
        self, rejections: dict[_Key, _Pending], sessions: list[SessionRecord], dropped: int
    ) -> None:
        """One transaction. Sets ``_commit_sent`` once COMMIT is on its way: if the wait for
        it is cancelled, the worker thread still runs it, so the batch counts as written."""
        db = self._db
        if db.in_transaction:  # left open by a write that was cancelled midway
            await db.rollback()
        await db.execute("BEGIN IMMEDIATE")
        try:
            if rejections:
                await db.executemany(_UPSERT_REJECTION, _rejection_rows(rejections))
            if sessions:
                await db.executemany(_INSERT_SESSION, _session_rows(sessions))
            if dropped > 0:
                await db.execute(_ADD_DROPPED, (dropped,))
            self._commit_sent = True
            await db.execute("COMMIT")
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._commit_sent = False
            await _rollback(db)
            raise

    async def purge(self, now: float | None = None) -> int:
        """Delete rows older than ``retention`` (rejections by last attempt, sessions by
        end), then give the free pages back to the file system. Returns rows deleted."""
        if self._db is None:
            return 0
        now = time.time() if now is None else now
        cutoff = now - self.retention
        text = schema.utc_text(cutoff)
        # Rows ending before the cutoff started on or before its local date: the ``day``
        # bound lets SQLite seek on the primary key / day index instead of scanning.
        day = schema.local_day(cutoff + _DAY_SLACK)
        async with self._lock:
            db = self._db
            if db is None:
                return 0
            if db.in_transaction:
                await db.rollback()
            await db.execute("BEGIN IMMEDIATE")
            try:
                deleted = 0
                addresses: set[str] = set()
                for sql in _PURGES:
                    async with db.execute(sql, (day, text)) as cur:
                        gone = await cur.fetchall()
                    deleted += len(gone)
                    addresses.update(row[0] for row in gone)
                if addresses:
                    # Their locations, unless still referred to (GeoIP looks them up again).
                    await db.executemany(_PURGE_LOCATION, ((a,) for a in addresses))
                await db.execute("COMMIT")
            except BaseException:
                await _rollback(db)
                raise
            # incremental_vacuum frees one page per step of its statement, and
            # Cursor.execute() steps once: executescript() runs it to the end.
            await db.executescript("PRAGMA incremental_vacuum")
            with contextlib.suppress(sqlite3.Error):
                await db.execute("PRAGMA optimize")  # refresh the planner's statistics
        return deleted

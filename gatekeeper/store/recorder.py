"""Write-behind recorder: the network side's ``Sink``, aggregating in memory, writing batches.

``rejected()``, ``session()``, ``login()``, ``refused_request()`` and ``banned()`` are plain
functions doing a dict update or a list append: nothing on the accept path touches the
database. A writer task flushes what is pending every ``flush_interval`` seconds in one
transaction (``INSERT … ON CONFLICT DO UPDATE``), so N rejections (or logins, or refused
requests) give attempts summing to N once flushed. A flush that fails keeps
everything pending and is retried on the next tick; only what does not fit in
``max_pending`` is given up, and counted in ``dropped`` (also kept in ``meta``).

Bans go both ways: the daemon reads the active ones back at start (``load_bans``) and
learns once a second which ones an administrator lifted (``lifted_since``).

Locations: with a GeoIP locator, each flush looks up the rejected addresses it has not
located yet (in a worker thread, never on the accept path) and writes their
``locations`` row in the same transaction: NULL fields when the database does not know
the address, so it is not looked up again. ``meta`` 'geoip_epoch' names the database the
rows come from; when another database is opened (a reload after an update), every
address is located again, a chunk per flush, and rows not yet redone keep the old answer
meanwhile. Addresses rejected while no database could be read get their rows later.

An ``observer`` (the daemon's ``eventlog.EventLog``) is told after each committed flush
what it wrote (``Flushed``): the rejections per (listener, address), which of their
addresses had no row in ``rejections`` before (one indexed query per batch, in the
write transaction), and the bans. That is where the journal's first-rejection lines,
its per-minute summaries and syslog forwarding come from, not the accept path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiosqlite

from gatekeeper.errors import GatekeeperError
from gatekeeper.events import Ban, Login, RefusedRequest, Rejection, SessionRecord
from gatekeeper.store import schema

if TYPE_CHECKING:
    from gatekeeper.geo import GeoLocator

log = logging.getLogger(__name__)

PURGE_INTERVAL = 3600.0  # seconds between two retention purges (and one at start)
FLUSH_INTERVAL = 1.0  # PRODUCT.md: counts are in the database "at most about a second later"
# Rows (of every table) held in memory while the database cannot be written: a rejection
# row with its address costs ~250 bytes, so about 50 MB at most (measured with tracemalloc);
# past it new rows are given up and counted in ``dropped``.
MAX_PENDING = 200_000
# Tests shorten the flush interval and the pending bound with these (seconds, rows).
FLUSH_INTERVAL_ENV = "GATEKEEPER_FLUSH_INTERVAL"
MAX_PENDING_ENV = "GATEKEEPER_MAX_PENDING"
# Addresses of earlier rejections located per flush (after a GeoIP database update, or
# when it could not be read before): a lookup costs ~20 us, so a chunk is ~0.1 s of a
# worker thread each second, and 100,000 addresses are done in 20 flushes.
LOCATE_CHUNK = 5000
# Located addresses remembered so that a flood's addresses are looked up once; past this
# the memory is cleared (an address looked up again only writes the same row again).
LOCATED_MEMORY = 200_000
# How many days the local date of a row may differ from the UTC date of its times when
# the daemon's time zone changed between runs (UTC-12 .. UTC+14 spans 26 hours).
_DAY_SLACK = 2 * 86400.0

_Key = tuple[str, str, str, int]  # (local day, listener, address, monitor)
_T = TypeVar("_T")
_LoginKey = tuple[str, str, str, str, int]  # (local day, listener, address, user, ok)
# (local day, listener, address, user or "", command, argument cut to MAX_ARGUMENT)
_RequestKey = tuple[str, str, str, str, str, str]

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

_UPSERT_LOGIN = """
INSERT INTO logins (day, listener, address, user, ok, first, last, attempts)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (day, listener, address, user, ok) DO UPDATE SET
    attempts = attempts + excluded.attempts,
    first = min(first, excluded.first),
    last = max(last, excluded.last)
"""

_UPSERT_REQUEST = """
INSERT INTO requests (day, listener, address, user, command, argument, first, last, attempts)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (day, listener, address, user, command, argument) DO UPDATE SET
    attempts = attempts + excluded.attempts,
    first = min(first, excluded.first),
    last = max(last, excluded.last)
"""

# A new ban of a key replaces its previous row. A lift recorded after the new ban was made
# (the administrator acted while it was waiting to be written) stays: the daemon applies it.
_UPSERT_BAN = """
INSERT INTO bans (key, address, listener, since, until, failures) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    address = excluded.address,
    listener = excluded.listener,
    since = excluded.since,
    until = excluded.until,
    failures = excluded.failures,
    lifted = CASE WHEN lifted > excluded.since THEN lifted END,
    lift_seq = CASE WHEN lifted > excluded.since THEN lift_seq END
"""

_BANS_VERSION = 2  # the schema version that added the bans table

_ACTIVE_BANS = """
SELECT key, address, listener, since, until, failures FROM bans
WHERE lifted IS NULL AND until > ? ORDER BY since, key
"""

# meta 'ban_lifts' counts lifts; ``bans lift`` stores the new count in each row it lifts.
_LIFT_COUNT = "SELECT value FROM meta WHERE key = 'ban_lifts'"
_LIFTED_SINCE = "SELECT key, lift_seq FROM bans WHERE lift_seq > ? ORDER BY lift_seq"

# {keys}: one "?" per key (a bound parameter each; the keys themselves are never SQL text)
_LIFT = """
UPDATE bans SET lifted = ?, lift_seq = ?
WHERE key IN ({keys}) AND lifted IS NULL AND until > ?
RETURNING key, address, listener, since, until, failures
"""
_COUNT_LIFT = """
INSERT INTO meta (key, value) VALUES ('ban_lifts', 1)
ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1
RETURNING value
"""

_PURGES = (
    "DELETE FROM rejections WHERE day <= ? AND last < ? RETURNING address",
    "DELETE FROM sessions WHERE day <= ? AND end < ? RETURNING address",
)
# Rows that locations do not depend on (their addresses have rejections or sessions).
_PURGES_QUIET = (
    "DELETE FROM logins WHERE day <= ? AND last < ?",
    "DELETE FROM requests WHERE day <= ? AND last < ?",
    "DELETE FROM bans WHERE ?1 = ?1 AND until < ?2",  # (day unused: bans have none)
)

_PURGE_LOCATION = """
DELETE FROM locations WHERE address = ?1
    AND NOT EXISTS (SELECT 1 FROM rejections WHERE address = ?1)
    AND NOT EXISTS (SELECT 1 FROM sessions WHERE address = ?1)
"""

_UPSERT_LOCATION = """
INSERT INTO locations (address, country, country_name, region, city, latitude, longitude,
                       asn, organisation)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (address) DO UPDATE SET
    country = excluded.country,
    country_name = excluded.country_name,
    region = excluded.region,
    city = excluded.city,
    latitude = excluded.latitude,
    longitude = excluded.longitude,
    asn = excluded.asn,
    organisation = excluded.organisation
"""

_GEOIP_EPOCH = "SELECT value FROM meta WHERE key = 'geoip_epoch'"
_SET_GEOIP_EPOCH = """
INSERT INTO meta (key, value) VALUES ('geoip_epoch', ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""

# Earlier rejected addresses after ``?1``, in order (the rejections_address index), all of
# them (the database changed) or those without a location row.
_ADDRESSES_AFTER = """
SELECT DISTINCT address FROM rejections WHERE address > ?1 ORDER BY address LIMIT ?2
"""
_UNLOCATED_AFTER = """
SELECT DISTINCT address FROM rejections AS r
WHERE address > ?1 AND NOT EXISTS (SELECT 1 FROM locations AS l WHERE l.address = r.address)
ORDER BY address LIMIT ?2
"""

# Which of the batch's addresses (a JSON array: one parameter however many) have no row in
# rejections yet: the rejections_address index answers each with one seek.
_NEW_ADDRESSES = """
SELECT j.value FROM json_each(?) AS j
WHERE NOT EXISTS (SELECT 1 FROM rejections AS r WHERE r.address = j.value)
"""

# Errors after which the connection is closed and the file opened again at the next flush
# (``Recorder._let_go``): the file or its file system failed, not the transaction. A full
# disk or a lock held by another process (SQLITE_FULL, SQLITE_BUSY) keeps the connection.
_FILE_FAILED = frozenset({sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN})


def _file_failed(exc: Exception) -> bool:
    if isinstance(exc, ValueError):  # aiosqlite: the connection is gone
        return True
    code = getattr(exc, "sqlite_errorcode", None)  # extended code; the low byte is the primary
    return isinstance(code, int) and code & 0xFF in _FILE_FAILED


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


@dataclass(frozen=True, slots=True)
class RejectionCount:
    """The rejections of one (listener, address, monitor) written by one flush."""

    listener: str
    address: str
    count: int
    first: float
    last: float
    reason: str  # of the latest attempt, like ``rule`` and ``user``
    rule: str | None
    user: str | None
    monitor: bool


@dataclass(frozen=True, slots=True)
class Flushed:
    """What one committed flush wrote, for ``FlushObserver``."""

    rejections: tuple[RejectionCount, ...] = ()
    new_addresses: frozenset[str] = frozenset()  # no rejections row before this flush
    bans: tuple[Ban, ...] = ()


class FlushObserver(Protocol):
    def flushed(self, written: Flushed) -> None:
        """Called in the writer task after each commit: must be quick and never block."""


def _counts(pending: dict[_Key, _Pending]) -> tuple[RejectionCount, ...]:
    """One entry per (listener, address, monitor): rows of several days are added up."""
    merged: dict[tuple[str, str, int], _Pending] = {}
    for (_, listener, address, monitor), p in pending.items():
        held = merged.get((listener, address, monitor))
        if held is None:
            copy = _Pending.__new__(_Pending)
            copy.count, copy.first, copy.last = p.count, p.first, p.last
            copy.reason, copy.rule, copy.user = p.reason, p.rule, p.user
            merged[(listener, address, monitor)] = copy
        else:
            held.merge(p)
    return tuple(
        RejectionCount(listener, address, p.count, p.first, p.last, str(p.reason), p.rule,
                       p.user, bool(monitor))
        for (listener, address, monitor), p in merged.items()
    )  # fmt: skip


class _Tally:
    """Attempts of one login or refused-request row not yet written."""

    __slots__ = ("count", "first", "last")

    def __init__(self, when: float) -> None:
        self.first = when
        self.last = when
        self.count = 1

    def add(self, when: float) -> None:
        self.count += 1
        if when < self.first:
            self.first = when
        if when > self.last:
            self.last = when

    def merge(self, newer: _Tally) -> None:
        self.count += newer.count
        self.first = min(self.first, newer.first)
        self.last = max(self.last, newer.last)


@dataclass(slots=True)
class _Batch:
    """Everything not yet written. ``len()``: rows (what ``max_pending`` bounds)."""

    rejections: dict[_Key, _Pending] = field(default_factory=dict)
    sessions: list[SessionRecord] = field(default_factory=list)
    logins: dict[_LoginKey, _Tally] = field(default_factory=dict)
    requests: dict[_RequestKey, _Tally] = field(default_factory=dict)
    bans: dict[str, Ban] = field(default_factory=dict)  # by key: the latest ban of each

    def __len__(self) -> int:
        return (
            len(self.rejections)
            + len(self.sessions)
            + len(self.logins)
            + len(self.requests)
            + len(self.bans)
        )

    def records(self) -> int:
        """Calls of the Sink this batch holds (what is lost if it is never written)."""
        return (
            sum(p.count for p in self.rejections.values())
            + len(self.sessions)
            + sum(t.count for t in self.logins.values())
            + sum(t.count for t in self.requests.values())
            + len(self.bans)
        )

    def merge(self, newer: _Batch) -> None:
        """Fold ``newer`` (recorded while this one was being written) into this one."""
        for key, pending in newer.rejections.items():
            older = self.rejections.get(key)
            if older is None:
                self.rejections[key] = pending
            else:
                older.merge(pending)
        self.sessions.extend(newer.sessions)
        _merge_tallies(self.logins, newer.logins)
        _merge_tallies(self.requests, newer.requests)
        for ban in newer.bans.values():
            _keep_latest(self.bans, ban)


def _merge_tallies(into: dict[_T, _Tally], newer: dict[_T, _Tally]) -> None:
    for key, tally in newer.items():
        older = into.get(key)
        if older is None:
            into[key] = tally
        else:
            older.merge(tally)


def _keep_latest(bans: dict[str, Ban], ban: Ban) -> None:
    held = bans.get(ban.key)
    if held is None or ban.since >= held.since:
        bans[ban.key] = ban


def _argument(text: str) -> str:
    if len(text) <= schema.MAX_ARGUMENT:
        return text
    return text[: schema.MAX_ARGUMENT - 1] + "…"


def _text(value: str | None) -> str | None:
    """Client text as SQLite takes it. The FTP codec keeps bytes that are not UTF-8 as lone
    surrogates (``surrogateescape``), which SQLite refuses, failing the whole batch with
    them: they are stored as a visible ``\\xNN`` instead."""
    if value is None or value.isascii():
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte became
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


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
            _text(p.user),
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
            _text(r.user),
            r.files_sent,
            r.files_received,
            r.would_reject,
        )


def _tally_rows(pending: dict[Any, _Tally]) -> Iterator[tuple[Any, ...]]:
    for key, t in pending.items():
        texts = (_text(k) if isinstance(k, str) else k for k in key)  # user, argument
        yield (*texts, schema.utc_text(t.first), schema.utc_text(t.last), t.count)


def _ban_rows(bans: Iterable[Ban]) -> Iterator[tuple[Any, ...]]:
    for b in bans:
        yield (
            b.key,
            b.address,
            b.listener,
            schema.utc_text(b.since),
            schema.utc_text(b.until),
            b.failures,
        )


@dataclass(slots=True)
class _Walk:
    """Earlier rejected addresses being located, a chunk per flush, in address order."""

    every: bool  # all of them (another database), or only those without a location row
    after: str = ""  # the addresses up to this one are done


@dataclass(frozen=True, slots=True)
class _Places:
    """Location rows to write with a batch, and what writing them completes."""

    epoch: str  # of the locator that made the rows
    rows: list[tuple[Any, ...]]
    addresses: list[str]  # the addresses of ``rows``
    stored: str  # 'geoip_epoch' to keep in meta: "" while some rows are of another database
    walking: bool  # the rows include a chunk of the walk
    walked: str | None  # the chunk's last address; None: the walk is done


def _location_rows(locator: GeoLocator, addresses: Iterable[str]) -> list[tuple[Any, ...]]:
    """Look the addresses up (a worker thread runs this): a row each, NULL for unknown."""
    rows: list[tuple[Any, ...]] = []
    for address in addresses:
        found = locator.locate(address)
        if found is None:
            rows.append((address, None, None, None, None, None, None, None, None))
        else:
            rows.append((
                address,
                found.country,
                found.country_name if found.country is not None else None,
                found.region or None,
                found.city or None,
                found.latitude,
                found.longitude,
                found.asn,
                found.organisation or None,
            ))  # fmt: skip
    return rows


def tuning_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``flush_interval`` and ``max_pending`` from ``GATEKEEPER_FLUSH_INTERVAL`` and
    ``GATEKEEPER_MAX_PENDING`` when set (meant for tests): keyword arguments of ``Recorder``.
    A value that is not a positive number is a warning, and the default stays."""
    env = os.environ if environ is None else environ
    tuning: dict[str, Any] = {}
    for name, key, kind in (
        (FLUSH_INTERVAL_ENV, "flush_interval", float),
        (MAX_PENDING_ENV, "max_pending", int),
    ):
        text = env.get(name)
        if not text:
            continue
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value > 0:
            tuning[key] = value
        else:
            log.warning("%s=%r is not a positive number; using the default", name, text)
    return tuning


class Recorder:
    """Implements ``events.Sink``. ``start()`` it inside the event loop, ``close()`` at stop."""

    def __init__(
        self,
        database: Path,
        *,
        flush_interval: float = FLUSH_INTERVAL,
        retention: float = 400 * 86400,
        max_pending: int = MAX_PENDING,
        locator: GeoLocator | None = None,
    ) -> None:
        self.database = Path(database)
        # Locates rejected addresses when it has a database open; the daemon replaces it at
        # reload. None: the locations table is left alone.
        self.locator = locator
        self._geo_epoch: str | None = None  # meta 'geoip_epoch'; None: not read yet
        self._located: set[str] = set()  # addresses whose row is of ``_located_epoch``
        self._located_epoch: str | None = None
        self._walk: _Walk | None = None
        self.flush_interval = flush_interval
        self.retention = retention
        self.max_pending = max_pending
        # Records given up since start (pending full, unwritable at close, after close): one
        # per call of the Sink that will never reach the database.
        self.dropped = 0
        self._dropped_saved = 0  # how much of ``dropped`` is already added to meta
        self._batch = _Batch()
        self._inflight = 0  # records being written by a flush right now
        self._db: Any = None  # aiosqlite.Connection
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False
        # The local day of the last event's whole second: a flood's events share it.
        self._day_second = -1
        self._day_text = ""
        self._failing = False  # the last flush failed (its error was logged once)
        self._failed_at = 0.0  # when the first of the failing flushes failed
        # The connection was closed after the file failed (``_let_go``): the next flush
        # opens the file again.
        self._reopen = False
        self._overflowing = False  # records are being dropped (logged once)
        self._commit_sent = False  # the running flush has sent its COMMIT
        # Told what each flush wrote (see ``Flushed``); None: nobody asks, no extra query.
        self.observer: FlushObserver | None = None

    # -- the Sink: synchronous, O(1), never raise ------------------------------------------

    def _day(self, when: float) -> str | None:
        """The local day an event belongs to; None (and counted dropped) if it cannot be
        recorded: the recorder is closed, or the timestamp is nonsensical."""
        if self._closed:
            self._drop(1)
            return None
        try:
            second = int(when)
            if second != self._day_second:
                self._day_text = schema.local_day(when)
                self._day_second = second
        except (ValueError, OverflowError, OSError):
            self._drop(1)
            return None
        return self._day_text

    def rejected(self, event: Rejection) -> None:
        if (day := self._day(event.when)) is None:
            return
        key = (day, event.listener, event.address, int(event.monitor))
        rejections = self._batch.rejections
        pending = rejections.get(key)
        if pending is not None:
            pending.add(event)
        elif self._full():
            self._drop(1)
        else:
            rejections[key] = _Pending(event)

    def session(self, record: SessionRecord) -> None:
        if self._closed or self._full():
            self._drop(1)
            return
        self._batch.sessions.append(record)

    def login(self, event: Login) -> None:
        if (day := self._day(event.when)) is None:
            return
        self._tally(
            self._batch.logins,
            (day, event.listener, event.address, event.user, int(event.ok)),
            event.when,
        )

    def refused_request(self, event: RefusedRequest) -> None:
        if (day := self._day(event.when)) is None:
            return
        key = (
            day,
            event.listener,
            event.address,
            event.user or "",
            event.command,
            _argument(event.argument),
        )
        self._tally(self._batch.requests, key, event.when)

    def banned(self, ban: Ban) -> None:
        if self._closed:
            self._drop(1)
            return
        bans = self._batch.bans
        if ban.key not in bans and self._full():
            self._drop(1)
            return
        _keep_latest(bans, ban)

    def _tally(self, pending: dict[_T, _Tally], key: _T, when: float) -> None:
        tally = pending.get(key)
        if tally is not None:
            tally.add(when)
        elif self._full():
            self._drop(1)
        else:
            pending[key] = _Tally(when)

    @property
    def pending(self) -> int:
        """Records (rows of each table) waiting to be written."""
        return len(self._batch) + self._inflight

    def _full(self) -> bool:
        return self.pending >= self.max_pending

    def _drop(self, count: int) -> None:
        self.dropped += count
        if not self._overflowing:
            self._overflowing = True
            if self._closed:
                why = "the recorder is closed"
            else:
                why = f"{self.max_pending} rows are waiting for the database (max_pending)"
            log.error(
                "recorder: dropping records: %s; they are counted as 'dropped' "
                "(gatekeeper status, /metrics, and the database's meta table)",
                why,
            )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the folder and database if missing, apply the schema, start the writer."""
        if self._db is not None or self._closed:
            raise RuntimeError("recorder already started or closed")
        try:
            self._db = await self._connect(create=True)
        except (sqlite3.Error, OSError) as exc:
            raise GatekeeperError(f"{self.database}: cannot open the database: {exc}") from exc
        self._task = asyncio.create_task(self._run(), name="gatekeeper-recorder")

    async def _connect(self, *, create: bool) -> Any:
        """A connection to the database with the schema applied. ``create``: make the folder
        and the file if missing (at start). Otherwise (opening again after the file failed)
        a missing file is an error: a file system being repaired is unmounted, and its
        mount point must not get a new, empty database."""
        await asyncio.to_thread(schema.prepare, self.database, create=create)
        db = await aiosqlite.connect(
            schema.writable_uri(self.database), uri=True, isolation_level=None
        )
        try:
            await db.execute(f"PRAGMA busy_timeout = {schema.BUSY_TIMEOUT_MS}")
            for pragma in schema.CONNECTION_PRAGMAS:
                await db.execute(pragma)
        except BaseException:
            await db.close()
            raise
        return db

    async def _let_go(self) -> None:
        """Close the connection after the file or its file system failed under it (an I/O
        error, read-only, moved or deleted). Holding it would keep an administrator from
        unmounting the file system to repair it (``umount``: busy) and would keep writing
        to a file that may no longer be the database. The next flush opens it again."""
        db, self._db = self._db, None
        self._reopen = True
        if db is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await db.close()

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
                if self._db is not None or self._reopen:
                    await self._flush_locked()
            finally:
                lost = self._batch.records()
                if lost:
                    self._batch = _Batch()
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
            if self._batch or self.dropped != self._dropped_saved or self._geo_due():
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
        if self._db is None and not self._reopen:
            return False  # not started, or closed
        if not (self._batch or self.dropped != self._dropped_saved or self._geo_due()):
            return True
        batch, self._batch = self._batch, _Batch()
        self._inflight = len(batch)
        dropped = self.dropped
        self._commit_sent = False
        places = None
        new: frozenset[str] = frozenset()
        try:
            if self._db is None:
                self._db = await self._connect(create=False)
                self._reopen = False
            places = await self._places(batch)
            new = await self._write(batch, dropped - self._dropped_saved, places)
        except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite connection gone
            if not self._failing:
                self._failing = True
                self._failed_at = time.time()
                log.error(
                    "recorder: cannot write to %s (%s); keeping up to %d rows in memory and "
                    "retrying every %gs, counting what does not fit as dropped",
                    self.database,
                    exc,
                    self.max_pending,
                    self.flush_interval,
                )
            else:
                log.debug("recorder: write still failing: %s", exc)
            if _file_failed(exc):
                await self._let_go()
            return False
        finally:
            self._inflight = 0
            if self._commit_sent:
                self._dropped_saved = dropped
            else:
                # Put back what the failed flush took, merging what arrived meanwhile.
                batch.merge(self._batch)
                self._batch = batch
        if places is not None:
            self._placed(places)
        self._tell(batch, new)
        if self._failing:
            self._failing = False
            log.warning(
                "recorder: writing to %s again after %.0fs; %d records dropped since start",
                self.database,
                time.time() - self._failed_at,
                self.dropped,
            )
        if self.pending < self.max_pending:
            self._overflowing = False
        return True

    def _tell(self, batch: _Batch, new: frozenset[str]) -> None:
        observer = self.observer
        if observer is None or not (batch.rejections or batch.bans):
            return
        try:
            observer.flushed(Flushed(_counts(batch.rejections), new, tuple(batch.bans.values())))
        except Exception:  # a bug in the observer must not stop the writer
            log.exception("recorder: flush observer failed")

    async def _write(
        self, batch: _Batch, dropped: int, places: _Places | None = None
    ) -> frozenset[str]:
        """One transaction. Sets ``_commit_sent`` once COMMIT is on its way: if the wait for
        it is cancelled, the worker thread still runs it, so the batch counts as written.
        Returns the batch's addresses that had no rejections row before (only asked with
        an observer)."""
        db = self._db
        if db.in_transaction:  # left open by a write that was cancelled midway
            await db.rollback()
        new: frozenset[str] = frozenset()
        await db.execute("BEGIN IMMEDIATE")
        try:
            if batch.rejections and self.observer is not None:
                addresses = sorted({key[2] for key in batch.rejections})
                async with db.execute(_NEW_ADDRESSES, (json.dumps(addresses),)) as cur:
                    new = frozenset(str(row[0]) for row in await cur.fetchall())
            if batch.rejections:
                await db.executemany(_UPSERT_REJECTION, _rejection_rows(batch.rejections))
            if batch.sessions:
                await db.executemany(_INSERT_SESSION, _session_rows(batch.sessions))
            if batch.logins:
                await db.executemany(_UPSERT_LOGIN, _tally_rows(batch.logins))
            if batch.requests:
                await db.executemany(_UPSERT_REQUEST, _tally_rows(batch.requests))
            if batch.bans:
                await db.executemany(_UPSERT_BAN, _ban_rows(batch.bans.values()))
            if places is not None:
                if places.rows:
                    await db.executemany(_UPSERT_LOCATION, places.rows)
                if places.stored != self._geo_epoch:
                    await db.execute(_SET_GEOIP_EPOCH, (places.stored,))
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
        return new

    # -- locations -------------------------------------------------------------------------

    def _geo_due(self) -> bool:
        """Is there locating to do without a new rejection (a walk, another database)?"""
        locator = self.locator
        if locator is None or not locator.available:
            return False
        return self._walk is not None or self._located_epoch != locator.epoch

    async def _places(self, batch: _Batch) -> _Places | None:
        """Look up the batch's addresses not located yet, and the walk's next chunk, in a
        worker thread. None: nothing to write. Raises ``sqlite3.Error`` if the database
        cannot be read (the flush fails and is retried)."""
        locator = self.locator
        if locator is None or not locator.available:
            return None
        epoch = locator.epoch
        db = self._db
        if self._geo_epoch is None:
            async with db.execute(_GEOIP_EPOCH) as cur:
                row = await cur.fetchone()
            self._geo_epoch = str(row[0]) if row is not None and row[0] is not None else ""
        if self._located_epoch != epoch:
            # Another database (or the first): rows of an older one are redone, and
            # addresses rejected while none could be read get theirs.
            if self._located_epoch is not None or self._geo_epoch != epoch:
                log.info("recorder: locating rejected addresses with %s", locator.describe())
            self._located_epoch = epoch
            self._located = set()
            self._walk = _Walk(every=self._geo_epoch != epoch)
        located = self._located
        wanted = {key[2] for key in batch.rejections if key[2] not in located}
        walk = self._walk
        walked: str | None = None
        if walk is not None:
            sql = _ADDRESSES_AFTER if walk.every else _UNLOCATED_AFTER
            async with db.execute(sql, (walk.after, LOCATE_CHUNK)) as cur:
                chunk = [str(row[0]) for row in await cur.fetchall()]
            wanted.update(chunk)
            walked = chunk[-1] if len(chunk) == LOCATE_CHUNK else None
        if not wanted and walk is None:
            return None
        addresses = sorted(wanted)
        try:
            rows = await asyncio.to_thread(_location_rows, locator, addresses)
        except Exception:  # a bug, not the database: write the rejections anyway
            log.exception("recorder: locating %d addresses failed", len(addresses))
            return None
        partial = walk is not None and walk.every and walked is not None
        return _Places(epoch, rows, addresses, "" if partial else epoch, walk is not None, walked)

    def _placed(self, places: _Places) -> None:
        """``places`` is written: remember its addresses, move the walk on."""
        self._geo_epoch = places.stored
        if places.epoch != self._located_epoch:
            return  # the locator changed meanwhile: its walk starts over anyway
        if len(self._located) + len(places.addresses) > LOCATED_MEMORY:
            self._located = set()
        self._located.update(places.addresses)
        walk = self._walk
        if places.walking and walk is not None:
            if places.walked is None:
                self._walk = None
            else:
                walk.after = places.walked

    # -- bans: read back -------------------------------------------------------------------

    async def load_bans(self, now: float | None = None) -> list[Ban]:
        """The bans in force at ``now`` (not lifted, ``until`` later), oldest first: what the
        daemon restores at start. Raises ``sqlite3.Error`` when the database cannot be read;
        a row whose times cannot be read is skipped with a warning."""
        now = time.time() if now is None else now
        async with self._lock:
            db = self._db
            if db is None:
                return []
            if db.in_transaction:
                await db.rollback()
            async with db.execute(_ACTIVE_BANS, (schema.utc_text(now),)) as cur:
                rows = await cur.fetchall()
        bans = []
        for key, address, listener, since, until, failures in rows:
            try:
                bans.append(
                    Ban(
                        key=key,
                        address=address,
                        listener=listener,
                        since=schema.parse_utc(since),
                        until=schema.parse_utc(until),
                        failures=int(failures),
                    )
                )
            except (TypeError, ValueError) as exc:
                log.warning("%s: ban on %s: unreadable row skipped (%s)", self.database, key, exc)
        return bans

    async def lifted_since(self, marker: int | None) -> tuple[list[str], int]:
        """Keys of the bans lifted by an administrator after ``marker``, and the marker to
        pass next time. ``None`` (at start) gives no key and the current marker: lifts made
        before it are already in what ``load_bans`` reads. One indexed query, usually
        returning nothing. Raises ``sqlite3.Error`` when the database cannot be read."""
        async with self._lock:
            db = self._db
            if db is None:
                return [], marker or 0
            if db.in_transaction:
                await db.rollback()
            if marker is None:
                async with db.execute(_LIFT_COUNT) as cur:
                    row = await cur.fetchone()
                return [], int(row[0]) if row is not None else 0
            async with db.execute(_LIFTED_SINCE, (marker,)) as cur:
                rows = await cur.fetchall()
        keys = [key for key, _ in rows]
        if rows:
            marker = max(marker, int(rows[-1][1]))
        return keys, marker

    async def purge(self, now: float | None = None) -> int:
        """Delete rows older than ``retention`` (rejections, logins and refused requests by
        last attempt, sessions by end, bans by end), then give the free pages back to the
        file system. Returns rows deleted."""
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
                for sql in _PURGES_QUIET:
                    async with db.execute(sql, (day, text)) as cur:
                        deleted += max(cur.rowcount, 0)
                if addresses:
                    # Their locations, unless still referred to (GeoIP looks them up again).
                    await db.executemany(_PURGE_LOCATION, ((a,) for a in addresses))
                await db.execute("COMMIT")
                self._located.difference_update(addresses)
            except BaseException:
                await _rollback(db)
                raise
            # incremental_vacuum frees one page per step of its statement, and
            # Cursor.execute() steps once: executescript() runs it to the end.
            await db.executescript("PRAGMA incremental_vacuum")
            with contextlib.suppress(sqlite3.Error):
                await db.execute("PRAGMA optimize")  # refresh the planner's statistics
        return deleted


# -- bans, for the command line (synchronous, short-lived connections) ---------------------


def _ban(row: Iterable[Any]) -> Ban:
    key, address, listener, since, until, failures = row
    return Ban(
        key=key,
        address=address,
        listener=listener,
        since=schema.parse_utc(since),
        until=schema.parse_utc(until),
        failures=int(failures),
    )


def active_bans(database: Path, now: float | None = None) -> list[Ban]:
    """The bans in force at ``now``, oldest first, read-only (works with the daemon
    stopped). A database that does not exist yet has none. Raises GatekeeperError when
    the database cannot be read."""
    now = time.time() if now is None else now
    if not Path(database).exists():
        return []
    try:
        conn = schema.connect_readonly(Path(database))
        try:
            if schema.schema_version(conn) < _BANS_VERSION:
                return []  # written by a gatekeeper that did not ban yet
            rows = conn.execute(_ACTIVE_BANS, (schema.utc_text(now),)).fetchall()
        finally:
            conn.close()
        return [_ban(row) for row in rows]
    except (sqlite3.Error, ValueError) as exc:
        raise GatekeeperError(f"{database}: cannot read the database: {exc}") from exc


def lift_bans(database: Path, keys: Iterable[str], now: float | None = None) -> list[Ban]:
    """Mark the active bans with any of ``keys`` lifted (one short write transaction);
    returns those lifted (none: no active ban had such a key). The running daemon sees
    the lift at its next poll (``Recorder.lifted_since``). Raises GatekeeperError when
    the database does not exist or cannot be written."""
    now = time.time() if now is None else now
    path = Path(database)
    if not path.exists():
        raise GatekeeperError(f"{path}: no such database (has the daemon ever run?)")
    wanted = sorted(set(keys))
    if not wanted:
        return []
    sql = _LIFT.format(keys=", ".join("?" * len(wanted)))
    try:
        conn = sqlite3.connect(schema.writable_uri(path), uri=True, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {schema.BUSY_TIMEOUT_MS}")
            if schema.schema_version(conn) < _BANS_VERSION:
                return []
            conn.execute("BEGIN IMMEDIATE")
            try:
                (seq,) = conn.execute(_COUNT_LIFT).fetchone()
                stamp = schema.utc_text(now)
                rows = conn.execute(sql, (stamp, int(seq), *wanted, stamp)).fetchall()
                conn.execute("COMMIT" if rows else "ROLLBACK")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()
        return [_ban(row) for row in rows]
    except (sqlite3.Error, ValueError) as exc:
        raise GatekeeperError(f"{path}: cannot lift the ban: {exc}") from exc

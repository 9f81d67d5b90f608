"""The SQLite database: tables, migrations, connection settings, time text.

Every table of gatekeeper is created here; the recorder writes them, reports only read.

Times are stored as UTC text, ISO 8601 with milliseconds and ``Z``
(``2026-11-20T08:01:02.123Z``): fixed width, so text order is time order and ``min()``,
``max()`` and range comparisons work on the text. ``day`` columns hold the LOCAL date
(``YYYY-MM-DD``) of the event, so a report over local dates selects whole rows.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from gatekeeper.errors import GatekeeperError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000  # a writer waits this long for a lock before the flush is retried
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # truncate the WAL file to this after a checkpoint

# Set on every connection (they do not persist in the file).
CONNECTION_PRAGMAS: tuple[str, ...] = (
    "PRAGMA synchronous = NORMAL",  # safe in WAL mode: a crash loses at most the last commits
    "PRAGMA foreign_keys = ON",
    f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}",
)

# MIGRATIONS[i] brings the database from user_version i to i + 1, in one transaction.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # One row per (local day, listener, client address, monitor flag): the recorder
        # aggregates attempts in memory and upserts them. Reason, rule and user are those
        # of the most recent attempt in the row.
        """
        CREATE TABLE rejections (
            day      TEXT    NOT NULL,              -- local date of the attempts, YYYY-MM-DD
            listener TEXT    NOT NULL,
            address  TEXT    NOT NULL,
            monitor  INTEGER NOT NULL DEFAULT 0,    -- 1: "would reject" (monitor mode)
            first    TEXT    NOT NULL,              -- UTC, 2026-11-20T08:01:02.123Z
            last     TEXT    NOT NULL,
            attempts INTEGER NOT NULL,
            reason   TEXT    NOT NULL,              -- rules.model.Reason value
            rule     TEXT,                          -- "file:line" of the deciding rule
            user     TEXT,                          -- FTP user name (reason "user")
            PRIMARY KEY (day, listener, address, monitor)
        ) WITHOUT ROWID
        """,
        # Reports group by address and by (listener, address): this index covers those
        # queries, read in order with no sort and no lookup into the table (the primary
        # key columns, day and monitor, are part of every index of a WITHOUT ROWID
        # table). It also makes the NEW flag's "first day ever of (listener, address)"
        # one seek. Date ranges and purges use the primary key (day first).
        """
        CREATE INDEX rejections_address
            ON rejections (address, listener, first, last, attempts)
        """,
        # One row per accepted session.
        """
        CREATE TABLE sessions (
            id             INTEGER PRIMARY KEY,
            day            TEXT    NOT NULL,        -- local date of start, YYYY-MM-DD
            listener       TEXT    NOT NULL,
            address        TEXT    NOT NULL,        -- client (PROXY-claimed when trusted)
            port           INTEGER NOT NULL,
            start          TEXT    NOT NULL,        -- UTC, like rejections.first
            end            TEXT    NOT NULL,
            outcome        TEXT    NOT NULL,        -- events.Outcome value
            upstream       TEXT    NOT NULL,        -- "host:port"
            local          TEXT,                    -- gatekeeper's "address:port" upstream
            bytes_up       INTEGER NOT NULL DEFAULT 0,
            bytes_down     INTEGER NOT NULL DEFAULT 0,
            user           TEXT,
            files_sent     INTEGER NOT NULL DEFAULT 0,
            files_received INTEGER NOT NULL DEFAULT 0,
            would_reject   TEXT                     -- monitor mode: the reason
        )
        """,
        "CREATE INDEX sessions_day ON sessions (day, listener)",
        "CREATE INDEX sessions_address ON sessions (address)",
        "CREATE INDEX sessions_local ON sessions (local)",
        # Where an address is. Empty until GeoIP fills it; no row = unknown location.
        """
        CREATE TABLE locations (
            address      TEXT PRIMARY KEY,
            country      TEXT,                      -- ISO 3166 code, NULL = unknown
            country_name TEXT,
            region       TEXT,                      -- first subdivision
            city         TEXT,
            latitude     REAL,
            longitude    REAL
        ) WITHOUT ROWID
        """,
        # Bookkeeping, e.g. "dropped": records the recorder could not write.
        """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value                                   -- no type: numbers stay numbers
        ) WITHOUT ROWID
        """,
    ),
    (
        # Automatic bans (gatekeeper.bans): one row per key, the latest ban of that key. The
        # daemon upserts a row when it bans and reads the active ones back at start; the
        # ``bans lift`` command sets ``lifted`` and ``lift_seq``, which the daemon polls.
        """
        CREATE TABLE bans (
            key      TEXT PRIMARY KEY,              -- the address, or the IPv6 prefix
            address  TEXT    NOT NULL,              -- whose failed logins caused it
            listener TEXT    NOT NULL,
            since    TEXT    NOT NULL,              -- UTC, like rejections.first
            until    TEXT    NOT NULL,
            failures INTEGER NOT NULL,
            lifted   TEXT,                          -- UTC when an administrator lifted it
            lift_seq INTEGER                        -- meta 'ban_lifts' at that lift
        ) WITHOUT ROWID
        """,
        # The daemon's once-a-second "lifted since my last look": one seek, usually to
        # nothing (a lifted ban that is banned again has both columns back to NULL).
        "CREATE INDEX bans_lifts ON bans (lift_seq) WHERE lift_seq IS NOT NULL",
        # Active bans (start, ``bans list``): those not lifted, by end time.
        "CREATE INDEX bans_active ON bans (until) WHERE lifted IS NULL",
        # FTP sign-on attempts, aggregated like rejections: one row per (local day,
        # listener, address, user, ok). ``user`` is the name as sent, upper-cased.
        """
        CREATE TABLE logins (
            day      TEXT    NOT NULL,              -- local date, YYYY-MM-DD
            listener TEXT    NOT NULL,
            address  TEXT    NOT NULL,
            user     TEXT    NOT NULL,
            ok       INTEGER NOT NULL,              -- 1: 230, 0: 530
            first    TEXT    NOT NULL,              -- UTC
            last     TEXT    NOT NULL,
            attempts INTEGER NOT NULL,
            PRIMARY KEY (day, listener, address, user, ok)
        ) WITHOUT ROWID
        """,
        # FTP commands refused by the command rules (550), aggregated the same way per
        # (local day, listener, address, user, command, argument). ``user`` is '' when
        # none was sent; ``argument`` is cut to MAX_ARGUMENT characters.
        """
        CREATE TABLE requests (
            day      TEXT    NOT NULL,
            listener TEXT    NOT NULL,
            address  TEXT    NOT NULL,
            user     TEXT    NOT NULL,
            command  TEXT    NOT NULL,
            argument TEXT    NOT NULL,
            first    TEXT    NOT NULL,
            last     TEXT    NOT NULL,
            attempts INTEGER NOT NULL,
            PRIMARY KEY (day, listener, address, user, command, argument)
        ) WITHOUT ROWID
        """,
    ),
    (
        # The network an address belongs to, from the ASN database (geoip.asn): shown per
        # address at the detail level. NULL when no ASN database is configured or it has
        # no entry.
        "ALTER TABLE locations ADD COLUMN asn INTEGER",
        "ALTER TABLE locations ADD COLUMN organisation TEXT",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

# The longest refused-request argument stored, in characters (a longer one is cut, ending
# in "…"): enough for any CL command an administrator wants to read, and an attacker
# sending kilobytes per RCMD cannot make the database grow by kilobytes per attempt.
MAX_ARGUMENT = 512


def utc_text(when: float) -> str:
    """``time.time()`` → ``2026-11-20T08:01:02.123Z`` (UTC, milliseconds, fixed width)."""
    millis = math.floor(when * 1000)
    seconds, millis = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def parse_utc(text: str) -> float:
    """``2026-11-20T08:01:02.123Z`` (as written by ``utc_text``) → ``time.time()``."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def local_day(when: float) -> str:
    """``time.time()`` → its local date ``YYYY-MM-DD``."""
    return time.strftime("%Y-%m-%d", time.localtime(when))


def _user_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def apply_schema(conn: sqlite3.Connection) -> int:
    """Bring an open read-write connection to ``SCHEMA_VERSION``; returns the version found.

    A new database gets ``auto_vacuum = INCREMENTAL`` (before its first table) and WAL
    mode. The connection must be in autocommit mode (``isolation_level=None``).
    """
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    found = _user_version(conn)
    if found > SCHEMA_VERSION:
        raise GatekeeperError(
            f"database schema version {found} is newer than this gatekeeper's "
            f"({SCHEMA_VERSION}): upgrade gatekeeper"
        )
    if found == 0:
        # Only takes effect while the file has no table yet; see the VACUUM below otherwise.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        log.warning("database: journal_mode is %s, not WAL", mode)
    for version in range(found, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _user_version(conn) != version:  # another process migrated meanwhile
                conn.execute("ROLLBACK")
                continue
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        # The file had tables before we could set it: a one-time VACUUM applies it.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
    return found


def writable_uri(path: Path) -> str:
    """The URI that opens an existing database read-write and never creates one."""
    return f"{path.resolve().as_uri()}?mode=rw"


def connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """Open read-write, schema applied; ``create``: the file and its folder if missing
    (otherwise a missing file raises ``sqlite3.OperationalError``).

    Autocommit mode: callers write ``BEGIN``/``COMMIT`` themselves.
    """
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None)
    else:
        conn = sqlite3.connect(writable_uri(path), uri=True, isolation_level=None)
    try:
        apply_schema(conn)
        for pragma in CONNECTION_PRAGMAS:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


def prepare(path: Path, *, create: bool = True) -> None:
    """Apply the schema (then close); ``create``: the folder and the file if missing."""
    connect(path, create=create).close()


def connect_readonly(path: Path) -> sqlite3.Connection:
    """Open an existing database read-only (URI ``mode=ro``), for reports.

    Raises ``sqlite3.OperationalError`` when the file does not exist or cannot be read.
    A reader that may not create the WAL index next to a database whose WAL is empty
    (the daemon is stopped and the folder is not writable for this user) falls back to
    ``immutable=1``, which is exact then: every committed row is in the main file.
    """
    uri = path.resolve().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA user_version").fetchone()  # open the file now
    except sqlite3.OperationalError:
        conn.close()
        wal = path.with_name(path.name + "-wal")
        if not path.exists() or (wal.exists() and wal.stat().st_size > 0):
            raise
        conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)
        try:
            conn.execute("PRAGMA user_version").fetchone()
        except BaseException:
            conn.close()
            raise
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The ``user_version`` of an open database (0: no gatekeeper table yet)."""
    return _user_version(conn)

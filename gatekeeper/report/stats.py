"""The trend report (``gatekeeper stats``): database → plain data. Read-only, synchronous.

Per local day and listener: accepted connections (sessions), rejected connections (the sum
of rejection attempts, "would reject" ones of monitor mode included, so the total equals
the rejection report's ``attempts`` over the same range), files sent and received; the days
of the range without any rejection; the most persistent addresses; the user names
attackers tried most (failed FTP sign-ons and ``deny_users`` rejections).

Ranges work like the rejection report's (:func:`gatekeeper.report.query.parse_bound`):
local dates select whole day rows, ISO timestamps select the rows whose times overlap. A
missing database gives empty statistics; nothing is ever created or written.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from gatekeeper.errors import GatekeeperError
from gatekeeper.report.query import Bound, parse_range
from gatekeeper.store import schema

TOP = 10  # rows of the top lists: what fits a "hacking report" slide
# Rows are pre-selected by their local day when a bound is an instant, with this margin
# (time zones span UTC-12 .. UTC+14), then by their times; as in the rejection report.
_DAY_SLACK = 2 * 86400.0


@dataclass(frozen=True, slots=True)
class Day:
    """One local day of one listener (only pairs with something to count)."""

    date: str  # YYYY-MM-DD, local
    listener: str
    accepted: int  # sessions started that day
    rejected: int  # rejected connection attempts
    files_sent: int  # files the clients downloaded
    files_received: int  # files the clients uploaded

    def to_dict(self) -> dict[str, Any]:
        return {
            "date": self.date,
            "listener": self.listener,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "files_sent": self.files_sent,
            "files_received": self.files_received,
        }


@dataclass(frozen=True, slots=True)
class AddressCount:
    address: str
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "attempts": self.attempts}


@dataclass(frozen=True, slots=True)
class UserCount:
    user: str  # upper-cased, as recorded; attacker-controlled text
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "attempts": self.attempts}


@dataclass(slots=True)
class Stats:
    since: str | None  # Bound.text, as asked
    until: str | None
    first_day: str | None  # the range's first local date (the first record's, without since)
    last_day: str | None  # its last (today or the last record's, without until)
    days: list[Day] = field(default_factory=list)
    quiet_days: list[str] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0
    top_addresses: list[AddressCount] = field(default_factory=list)
    top_users: list[UserCount] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """PRODUCT.md's keys for ``stats --format json``, exactly."""
        return {
            "days": [d.to_dict() for d in self.days],
            "quiet_days": list(self.quiet_days),
            "totals": {"accepted": self.accepted, "rejected": self.rejected},
            "top_addresses": [a.to_dict() for a in self.top_addresses],
            "top_users": [u.to_dict() for u in self.top_users],
        }

    def daily_totals(self) -> list[tuple[str, int, int]]:
        """``(date, accepted, rejected)`` for every date of the range (listeners added up)."""
        if self.first_day is None or self.last_day is None:
            return []
        sums: dict[str, list[int]] = {}
        for d in self.days:
            pair = sums.setdefault(d.date, [0, 0])
            pair[0] += d.accepted
            pair[1] += d.rejected
        out: list[tuple[str, int, int]] = []
        for day in dates(self.first_day, self.last_day):
            accepted, rejected = sums.get(day, (0, 0))
            out.append((day, accepted, rejected))
        return out


def dates(first: str, last: str) -> list[str]:
    """Every local date from ``first`` to ``last``, both included."""
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def day_ranges(days: list[str]) -> list[tuple[str, str]]:
    """Sorted dates folded into runs of consecutive days: ``[(first, last), …]``."""
    runs: list[tuple[str, str]] = []
    previous: date | None = None
    for text in days:
        day = date.fromisoformat(text)
        if previous is not None and day - previous == timedelta(days=1):
            runs[-1] = (runs[-1][0], text)
        else:
            runs.append((text, text))
        previous = day
    return runs


def _where(
    alias: str, low: str, high: str, since: Bound | None, until: Bound | None
) -> tuple[str, dict[str, Any]]:
    """Range conditions on ``alias`` (with ``day``): the row's ``low`` time column must not
    end before ``since``, its ``high`` column not start after ``until``."""
    terms: list[str] = []
    params: dict[str, Any] = {}
    if since is not None:
        if since.is_date:
            terms.append(f"{alias}.day >= :since_day")
            params["since_day"] = since.day
        else:
            terms.append(f"{alias}.day >= :since_day AND {alias}.{low} >= :since")
            params["since_day"] = schema.local_day(since.when - _DAY_SLACK)
            params["since"] = since.instant
    if until is not None:
        if until.is_date:
            terms.append(f"{alias}.day <= :until_day")
            params["until_day"] = until.day
        else:
            terms.append(f"{alias}.day <= :until_day AND {alias}.{high} <= :until")
            params["until_day"] = schema.local_day(until.when + _DAY_SLACK)
            params["until"] = until.instant
    return (" AND ".join(terms) or "1"), params


_REJECTED = """
SELECT r.day, r.listener, SUM(r.attempts) FROM rejections AS r WHERE {where}
GROUP BY r.day, r.listener
"""
_ACCEPTED = """
SELECT s.day, s.listener, COUNT(*), SUM(s.files_sent), SUM(s.files_received)
FROM sessions AS s WHERE {where}
GROUP BY s.day, s.listener
"""
_TOP_ADDRESSES = """
SELECT r.address, SUM(r.attempts) AS n FROM rejections AS r WHERE {where}
GROUP BY r.address ORDER BY n DESC, r.address LIMIT :top
"""
# The user names tried: failed sign-ons (530 after PASS, ``logins``) and names refused by
# deny_users (reason ``user``). One attempt never lands in both: a refused USER is never
# forwarded, so it has no PASS. A rejections row aggregates a day of one address and keeps
# the user name of its latest attempt only, so refused names are counted from the
# sessions they ended (outcome ``denied-user``, one row per attempt, the name as sent) and
# only what those do not cover is counted under the row's name.
_TOP_USERS = """
WITH denied AS (
    SELECT s.day, s.listener, s.address, s.user, COUNT(*) AS n FROM sessions AS s
    WHERE s.outcome = 'denied-user' AND s.user IS NOT NULL AND {sessions}
    GROUP BY s.day, s.listener, s.address, s.user
),
covered AS (
    SELECT day, listener, address, SUM(n) AS n FROM denied GROUP BY day, listener, address
),
rest AS (
    SELECT r.user, r.attempts - ifnull(c.n, 0) AS n
    FROM rejections AS r LEFT JOIN covered AS c
        ON c.day = r.day AND c.listener = r.listener AND c.address = r.address
    WHERE r.reason = 'user' AND r.user IS NOT NULL AND {rejections}
)
SELECT user, SUM(n) AS n FROM (
    SELECT user, n FROM denied
    UNION ALL SELECT user, n FROM rest WHERE n > 0
    {logins}
)
GROUP BY user ORDER BY n DESC, user LIMIT :top
"""
_FAILED_LOGINS = "UNION ALL SELECT r.user, r.attempts FROM logins AS r WHERE r.ok = 0 AND {where}"
# The first and last recorded days (each an index seek: day leads both indexes).
_EXTENT = """
SELECT MIN(day), MAX(day) FROM (
    SELECT MIN(day) AS day FROM rejections UNION ALL SELECT MAX(day) FROM rejections
    UNION ALL SELECT MIN(day) FROM sessions UNION ALL SELECT MAX(day) FROM sessions
)
"""


def trend_stats(
    db: Path,
    *,
    since: str | None = None,
    until: str | None = None,
    today: date | None = None,
    top: int = TOP,
) -> Stats:
    """The trend report over ``[since, until]`` (local dates or ISO timestamps).

    Without ``since`` the range starts at the first recorded day; without ``until`` it ends
    today (or at the last recorded day, if later). Raises ValueError for bad arguments,
    GatekeeperError when the database cannot be read.
    """
    if top < 0:
        raise ValueError(f"bad top {top}: expected 0 or more")
    low, high = parse_range(since, until)
    today = today or date.today()
    stats = Stats(
        since=low.text if low else None,
        until=high.text if high else None,
        first_day=low.day if low else None,
        last_day=high.day if high else None,
    )
    extent: tuple[str | None, str | None] = (None, None)
    if Path(db).exists():
        try:
            conn = schema.connect_readonly(Path(db))
            try:
                conn.execute("BEGIN")  # one snapshot for every query
                if schema.schema_version(conn) > 0:
                    extent = _fill(conn, stats, low, high, top)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise GatekeeperError(f"{db}: cannot read the database: {exc}") from exc
    if stats.first_day is None:
        stats.first_day = extent[0]
    if stats.last_day is None and stats.first_day is not None:
        stats.last_day = max(today.isoformat(), extent[1] or "")
    if stats.first_day is not None and stats.last_day is not None:
        if stats.first_day > stats.last_day:  # e.g. since in the future: an empty range
            stats.first_day = stats.last_day = None
        else:
            busy = {d.date for d in stats.days if d.rejected}
            stats.quiet_days = [d for d in dates(stats.first_day, stats.last_day) if d not in busy]
    return stats


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def _fill(
    conn: sqlite3.Connection, stats: Stats, low: Bound | None, high: Bound | None, top: int
) -> tuple[str | None, str | None]:
    """Fill ``stats``; return the first and last recorded days (whatever the range)."""
    rejections, r_params = _where("r", "last", "first", low, high)
    sessions, s_params = _where("s", "start", "start", low, high)

    counts: dict[tuple[str, str], list[int]] = {}
    for day, listener, n in conn.execute(_REJECTED.format(where=rejections), r_params):
        counts.setdefault((day, listener), [0, 0, 0, 0])[1] = n
    for day, listener, n, sent, received in conn.execute(
        _ACCEPTED.format(where=sessions), s_params
    ):
        row = counts.setdefault((day, listener), [0, 0, 0, 0])
        row[0], row[2], row[3] = n, sent or 0, received or 0
    stats.days = [
        Day(day, listener, accepted, rejected, sent, received)
        for (day, listener), (accepted, rejected, sent, received) in sorted(counts.items())
    ]
    stats.accepted = sum(d.accepted for d in stats.days)
    stats.rejected = sum(d.rejected for d in stats.days)

    top_params = {**r_params, **s_params, "top": top}  # the same names have the same values
    stats.top_addresses = [
        AddressCount(address, n)
        for address, n in conn.execute(_TOP_ADDRESSES.format(where=rejections), top_params)
    ]
    logins = _FAILED_LOGINS.format(where=rejections) if _has_table(conn, "logins") else ""
    stats.top_users = [
        UserCount(user, n)
        for user, n in conn.execute(
            _TOP_USERS.format(sessions=sessions, rejections=rejections, logins=logins),
            top_params,
        )
    ]

    first, last = conn.execute(_EXTENT).fetchone()
    return first, last

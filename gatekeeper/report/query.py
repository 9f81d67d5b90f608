"""The rejection report: database → plain data. Read-only, synchronous ``sqlite3``.

Everything heavy is aggregated by SQLite: the summary is one grouped query whatever the
number of addresses; the detail level reads one page of entries (``limit``/``offset``)
without building the others. Counting (PRODUCT.md): an address counts once per location
and once in the totals whatever its listeners; entries are one per (listener, address).
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from gatekeeper.errors import GatekeeperError
from gatekeeper.store import schema

LEVELS = ("summary", "detail")
BOTH = "both"
UNKNOWN = "unknown"  # country_name of addresses without a known location
_MAP = "https://www.openstreetmap.org/?mlat={lat}&mlon={lon}"
# A row's ``day`` is a local date in the daemon's time zone; when a bound is an instant,
# rows are pre-selected by day with this margin (UTC-12 .. UTC+14), then by their times.
_DAY_SLACK = timedelta(days=2)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


# -- bounds ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of a report's range, from ``--since``/``--until``."""

    text: str  # as shown: "2026-11-20" or UTC "2026-11-20T08:00:00Z"
    is_date: bool  # a local date (selects whole day rows) rather than an instant
    day: str  # the local date YYYY-MM-DD (of the instant, for an instant)
    instant: str  # UTC text with milliseconds: the first (since) or last (until) moment
    when: float  # the same instant, seconds since the epoch


def parse_range(since: str | None, until: str | None) -> tuple[Bound | None, Bound | None]:
    """``--since``/``--until`` as bounds (either may be absent); ValueError if reversed."""
    low = parse_bound(since, end=False) if since is not None else None
    high = parse_bound(until, end=True) if until is not None else None
    if low is not None and high is not None and low.when > high.when:
        raise ValueError(f"since {since!r} is after until {until!r}")
    return low, high


def parse_bound(text: str, *, end: bool) -> Bound:
    """``YYYY-MM-DD`` (a local date; as ``end``, the whole day is included) or an ISO 8601
    timestamp (with ``Z`` or an offset; without one it is local time)."""
    raw = text.strip()
    if _DATE.fullmatch(raw):
        try:
            day = date.fromisoformat(raw)
        except ValueError as exc:
            raise ValueError(f"bad date {text!r}: {exc}") from None
        # Local midnight (naive datetimes are local time); for ``end``, the last millisecond.
        start = datetime.combine(day + timedelta(days=1) if end else day, datetime.min.time())
        when = start.timestamp() - (0.001 if end else 0.0)
        return Bound(raw, True, raw, schema.utc_text(when), when)
    if _TIMESTAMP.match(raw):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise ValueError(f"bad timestamp {text!r}: {exc}") from None
        when = moment.timestamp()  # naive: local time
        utc = datetime.fromtimestamp(when, UTC)
        shown = utc.strftime("%Y-%m-%dT%H:%M:%S")
        if utc.microsecond:
            shown += f".{utc.microsecond // 1000:03d}"
        return Bound(shown + "Z", False, schema.local_day(when), schema.utc_text(when), when)
    raise ValueError(
        f"bad date or time {text!r}: expected YYYY-MM-DD (a local date) or an ISO 8601 "
        "timestamp such as 2026-11-20T08:00:00Z, 2026-11-20T09:00:00+01:00 or "
        "2026-11-20T09:00 (local time)"
    )


# -- the report as data ---------------------------------------------------------------------


def _coordinate(value: float) -> str:
    text = repr(float(value))  # the shortest exact form: 45.5, -73.6, 125.3228
    return f"{value:.6f}".rstrip("0").rstrip(".") if "e" in text else text


def map_link(latitude: float | None, longitude: float | None) -> str | None:
    """OpenStreetMap at these coordinates, or None without them."""
    if latitude is None or longitude is None:
        return None
    return _MAP.format(lat=_coordinate(latitude), lon=_coordinate(longitude))


def _utc_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Entry:
    """One (listener, address) at level detail."""

    listener: str
    address: str
    first: datetime  # aware, UTC
    last: datetime
    attempts: int
    new: bool  # its first attempt ever fell on the report's ``today``
    reason: str  # of the most recent rejection in the range
    rule: str | None
    user: str | None
    monitor: bool  # every attempt in the range was "would reject" (monitor mode)
    monitor_attempts: int
    latitude: float | None = None
    longitude: float | None = None
    asn: int | None = None  # autonomous system (geoip.asn), e.g. 4134
    organisation: str | None = None  # its owner, e.g. "CHINANET-BACKBONE"

    @property
    def map(self) -> str | None:
        return map_link(self.latitude, self.longitude)

    def to_dict(self) -> dict[str, Any]:
        return {
            "listener": self.listener,
            "address": self.address,
            "first": _utc_z(self.first),
            "last": _utc_z(self.last),
            "attempts": self.attempts,
            "new": self.new,
            "reason": self.reason,
            "rule": self.rule,
            "user": self.user,
            "monitor": self.monitor,
            "monitor_attempts": self.monitor_attempts,
            "asn": self.asn,
            "organisation": self.organisation,
            "map": self.map,
        }


@dataclass(slots=True)
class Location:
    country: str | None  # ISO code; None: unknown
    country_name: str  # "unknown" when country is None
    region: str | None
    city: str | None
    latitude: float | None
    longitude: float | None
    addresses: int
    attempts: int
    entries: list[Entry] | None = None  # level detail: this page's entries of this location

    @property
    def map(self) -> str | None:
        return map_link(self.latitude, self.longitude)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "country": self.country,
            "country_name": self.country_name,
            "region": self.region,
            "city": self.city,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "addresses": self.addresses,
            "attempts": self.attempts,
            "map": self.map,
        }
        if self.entries is not None:
            out["entries"] = [e.to_dict() for e in self.entries]
        return out


@dataclass(frozen=True, slots=True)
class Country:
    country: str | None
    country_name: str
    addresses: int
    percent: float  # of all rejected addresses, one decimal

    def to_dict(self) -> dict[str, Any]:
        return {
            "country": self.country,
            "country_name": self.country_name,
            "addresses": self.addresses,
            "percent": self.percent,
        }


@dataclass(slots=True)
class Report:
    level: str
    service: str  # a listener name or "both"
    since: str | None  # Bound.text
    until: str | None
    addresses: int  # distinct client addresses
    attempts: int
    locations: list[Location]
    countries: list[Country]
    today: date
    entries_total: int | None = None  # level detail: entries over all pages
    limit: int | None = None
    offset: int = 0
    dropped: int = 0  # records the recorder could not write, over the database's life

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "level": self.level,
            "service": self.service,
            "since": self.since,
            "until": self.until,
            "addresses": self.addresses,
            "attempts": self.attempts,
            "locations": [loc.to_dict() for loc in self.locations],
            "countries": [c.to_dict() for c in self.countries],
            "today": self.today.isoformat(),
            "dropped": self.dropped,
        }
        if self.level == "detail":
            out["entries_total"] = self.entries_total
            out["limit"] = self.limit
            out["offset"] = self.offset
        return out


# -- queries ------------------------------------------------------------------------------

# A location is (country, region, city), NULL written as '' so that it can be compared
# with ``=`` (an automatic index serves the join that ranks entries by location).
_LOCATION = ("ifnull(l.country, '')", "ifnull(l.region, '')", "ifnull(l.city, '')")

# Per address, then per location. Coordinates and the country's name are those of the
# location's address with the most attempts (SQLite takes bare columns from the MAX row).
_SUMMARY = f"""
WITH a AS (
    SELECT address, SUM(attempts) AS attempts
    FROM rejections AS r WHERE {{where}}
    GROUP BY address
)
SELECT l.country, l.country_name, l.region, l.city, l.latitude, l.longitude,
       COUNT(*) AS addresses, SUM(a.attempts) AS attempts, MAX(a.attempts) AS top
FROM a LEFT JOIN locations AS l ON l.address = a.address
GROUP BY {", ".join(_LOCATION)}
"""

_ENTRIES_TOTAL = """
SELECT COUNT(*) FROM (SELECT 1 FROM rejections AS r WHERE {where} GROUP BY listener, address)
"""

# One page of entries in report order: location rank (given as a JSON list of
# [country, region, city] in report order), then attempts. Reason, rule and user of the
# latest row, and the first day ever (NEW), are looked up for the page's rows only.
_ENTRIES = f"""
WITH e AS (
    SELECT listener, address, MIN(first) AS first, MAX(last) AS last,
           SUM(attempts) AS attempts, MIN(monitor) AS monitor,
           SUM(monitor * attempts) AS monitor_attempts
    FROM rejections AS r WHERE {{where}}
    GROUP BY listener, address
),
ranks AS MATERIALIZED (
    SELECT CAST(key AS INTEGER) AS rank,
           value ->> 0 AS country, value ->> 1 AS region, value ->> 2 AS city
    FROM json_each(:ranks)
),
page AS (
    SELECT e.*, ranks.rank, l.latitude, l.longitude, l.asn, l.organisation
    FROM e LEFT JOIN locations AS l ON l.address = e.address
    JOIN ranks ON ranks.country = {_LOCATION[0]} AND ranks.region = {_LOCATION[1]}
              AND ranks.city = {_LOCATION[2]}
    ORDER BY ranks.rank, e.attempts DESC, e.address, e.listener
    LIMIT :limit OFFSET :offset
)
SELECT page.listener, page.address, page.first, page.last, page.attempts, page.monitor,
       page.monitor_attempts, page.latitude, page.longitude, page.asn, page.organisation,
       page.rank,
       (SELECT json_array(r.reason, r.rule, r.user) FROM rejections AS r
        WHERE r.address = page.address AND r.listener = page.listener AND {{where}}
        ORDER BY r.last DESC LIMIT 1) AS latest,
       (SELECT MIN(x.day) FROM rejections AS x
        WHERE x.address = page.address AND x.listener = page.listener) AS first_day
FROM page
ORDER BY page.rank, page.attempts DESC, page.address, page.listener
"""


def _where(service: str, since: Bound | None, until: Bound | None) -> tuple[str, dict[str, Any]]:
    """Conditions on ``rejections AS r`` and their named parameters."""
    terms: list[str] = []
    params: dict[str, Any] = {}
    if service != BOTH:
        terms.append("r.listener = :service")
        params["service"] = service
    if since is not None:
        if since.is_date:
            terms.append("r.day >= :since_day")
            params["since_day"] = since.day
        else:
            terms.append("r.day >= :since_day AND r.last >= :since")
            params["since_day"] = schema.local_day(since.when - _DAY_SLACK.total_seconds())
            params["since"] = since.instant
    if until is not None:
        if until.is_date:
            terms.append("r.day <= :until_day")
            params["until_day"] = until.day
        else:
            terms.append("r.day <= :until_day AND r.first <= :until")
            params["until_day"] = schema.local_day(until.when + _DAY_SLACK.total_seconds())
            params["until"] = until.instant
    return (" AND ".join(terms) or "1"), params


def _country_name(country: str | None, name: str | None) -> str:
    if country is None:
        return UNKNOWN
    return name or country


def _location_order(loc: Location) -> tuple[Any, ...]:
    return (
        -loc.addresses,
        -loc.attempts,
        loc.country is None,
        loc.country or "",
        loc.region or "",
        loc.city or "",
    )


def _countries(locations: list[Location], total: int) -> list[Country]:
    counts: dict[str | None, int] = {}
    names: dict[str | None, str] = {}
    for loc in locations:
        counts[loc.country] = counts.get(loc.country, 0) + loc.addresses
        if loc.country not in names or names[loc.country] == loc.country:
            names[loc.country] = loc.country_name
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] is None, kv[0] or ""))
    return [
        Country(code, names[code], n, round(100.0 * n / total, 1) if total else 0.0)
        for code, n in ranked
    ]


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text)  # "…Z" is UTC


def rejection_report(
    db: Path,
    *,
    level: str = "summary",
    service: str = BOTH,
    since: str | None = None,
    until: str | None = None,
    today: date | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> Report:
    """The rejection report over ``[since, until]`` for one listener or ``both``.

    At level detail, ``limit``/``offset`` select a page of entries (all of them when
    ``limit`` is None); locations, countries and totals are always complete. A database
    that does not exist yet gives an empty report. Raises ValueError for bad arguments,
    GatekeeperError when the database cannot be read.
    """
    if level not in LEVELS:
        raise ValueError(f"bad level {level!r}: expected one of {', '.join(LEVELS)}")
    if not service:
        raise ValueError("service: expected a listener name or 'both'")
    if limit is not None and limit < 0:
        raise ValueError(f"bad limit {limit}: expected 0 or more")
    if offset < 0:
        raise ValueError(f"bad offset {offset}: expected 0 or more")
    low, high = parse_range(since, until)
    today = today or date.today()
    report = Report(
        level=level,
        service=service,
        since=low.text if low else None,
        until=high.text if high else None,
        addresses=0,
        attempts=0,
        locations=[],
        countries=[],
        today=today,
        entries_total=0 if level == "detail" else None,
        limit=limit,
        offset=offset,
    )
    if not Path(db).exists():
        return report
    try:
        conn = schema.connect_readonly(Path(db))
        try:
            conn.execute("BEGIN")  # one snapshot for every query of the report
            if schema.schema_version(conn) == 0:  # created, but the daemon never got to it
                return report
            _fill(conn, report, low, high)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise GatekeeperError(f"{db}: cannot read the database: {exc}") from exc
    return report


def _fill(conn: sqlite3.Connection, report: Report, low: Bound | None, high: Bound | None) -> None:
    where, params = _where(report.service, low, high)
    row = conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
    report.dropped = int(row[0]) if row else 0

    locations = [
        Location(
            country=country or None,
            country_name=_country_name(country or None, name),
            region=region or None,
            city=city or None,
            latitude=lat,
            longitude=lon,
            addresses=addresses,
            attempts=attempts,
        )
        for country, name, region, city, lat, lon, addresses, attempts, _top in conn.execute(
            _SUMMARY.format(where=where), params
        )
    ]
    locations.sort(key=_location_order)
    report.locations = locations
    report.addresses = sum(loc.addresses for loc in locations)
    report.attempts = sum(loc.attempts for loc in locations)
    report.countries = _countries(locations, report.addresses)
    if report.level != "detail":
        return

    for loc in locations:
        loc.entries = []
    (report.entries_total,) = conn.execute(_ENTRIES_TOTAL.format(where=where), params).fetchone()
    if not locations or report.limit == 0:
        return
    page_params = dict(params)
    page_params["ranks"] = json.dumps(
        [[loc.country or "", loc.region or "", loc.city or ""] for loc in locations]
    )
    page_params["limit"] = -1 if report.limit is None else report.limit
    page_params["offset"] = report.offset
    today = report.today.isoformat()
    for (
        listener,
        address,
        first,
        last,
        attempts,
        monitor,
        monitor_attempts,
        lat,
        lon,
        asn,
        organisation,
        rank,
        latest,
        first_day,
    ) in conn.execute(_ENTRIES.format(where=where), page_params):
        reason, rule, user = json.loads(latest)
        entries = locations[rank].entries
        assert entries is not None
        entries.append(
            Entry(
                listener=listener,
                address=address,
                first=_utc(first),
                last=_utc(last),
                attempts=attempts,
                new=first_day == today,
                reason=reason,
                rule=rule,
                user=user,
                monitor=bool(monitor),
                monitor_attempts=monitor_attempts,
                latitude=lat,
                longitude=lon,
                asn=asn,
                organisation=organisation,
            )
        )

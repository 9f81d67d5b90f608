"""The rejection report as JSON, CSV and plain text; the trend report as JSON and text.

JSON shows times in UTC with ``Z``; text and CSV in local time. Strings an attacker
controls (user names) are made harmless, each format its own way:

- JSON has them exact (``json`` escapes control characters as ``\\u001b``);
- CSV has them exact too, except that a cell starting with a character a spreadsheet
  takes for a formula gets a leading apostrophe (``'=CMD|...``), the common defence
  (OWASP "CSV injection", ASVS 1.2.10); strip it to get the value back;
- text shows every control or format character as a visible escape (``\\x1b``,
  ``\\u202e``), so no terminal escape sequence or bidi override reaches the terminal, and
  cuts a user name at ``TEXT_USER_CHARS`` characters with ``…`` so that one attacker
  cannot stretch every line of a table; JSON and CSV have the name whole.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from datetime import datetime

from gatekeeper.report.query import Entry, Location, Report
from gatekeeper.report.stats import Stats, day_ranges

DEFAULT_LETTERS = {"ftp": "F", "telnet": "T"}
_BAR_WIDTH = 25  # characters of a 100 % bar in the countries table
# What a spreadsheet may take for a formula: OWASP's "CSV injection" list and ASVS 1.2.10's NUL.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\0")
TEXT_USER_CHARS = 64  # of a user name in a text table (IBM i profile names have at most 10)


def render_json(report: Report) -> str:
    """One JSON object (PRODUCT.md's keys, and a few more), newline-terminated."""
    return json.dumps(report.to_dict(), indent=2) + "\n"


# -- CSV ----------------------------------------------------------------------------------


def _local(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: object) -> object:
    """A CSV cell: strings that a spreadsheet would run as a formula get a leading quote."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


_LOCATION_COLUMNS = ("country", "country_name", "region", "city")
_SUMMARY_COLUMNS = (
    *_LOCATION_COLUMNS,
    "addresses",
    "attempts",
    "latitude",
    "longitude",
    "map",
)
_DETAIL_COLUMNS = (
    *_LOCATION_COLUMNS,
    "listener",
    "address",
    "first",
    "last",
    "attempts",
    "new",
    "reason",
    "rule",
    "user",
    "monitor",
    "asn",
    "organisation",
    "latitude",
    "longitude",
    "map",
)


def _location_cells(loc: Location) -> tuple[str | None, str, str | None, str | None]:
    """The location columns every CSV row starts with."""
    return loc.country, loc.country_name, loc.region, loc.city


def render_csv(report: Report) -> str:
    """Summary: one row per location. Detail: one row per entry, with its location.

    A header row first; times in local time (``YYYY-MM-DD HH:MM:SS``)."""
    out = io.StringIO()
    writer = csv.writer(out)
    if report.level != "detail":
        writer.writerow(_SUMMARY_COLUMNS)
        for loc in report.locations:
            writer.writerow(
                _cell(v)
                for v in (
                    *_location_cells(loc),
                    loc.addresses,
                    loc.attempts,
                    loc.latitude,
                    loc.longitude,
                    loc.map,
                )
            )
        return out.getvalue()
    writer.writerow(_DETAIL_COLUMNS)
    for loc in report.locations:
        for e in loc.entries or ():
            writer.writerow(
                _cell(v)
                for v in (
                    *_location_cells(loc),
                    e.listener,
                    e.address,
                    _local(e.first),
                    _local(e.last),
                    e.attempts,
                    e.new,
                    e.reason,
                    e.rule,
                    e.user,
                    e.monitor,
                    e.asn,
                    e.organisation,
                    e.latitude,
                    e.longitude,
                    e.map,
                )
            )
    return out.getvalue()


# -- text ---------------------------------------------------------------------------------


def _escape(char: str) -> str:
    """A character a terminal must not see, as a visible escape: ``\\x1b``, ``\\u202e``."""
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _printable(text: str) -> str:
    """No control or format character (terminal escapes, bidi overrides) from
    attacker-controlled strings: each shows as its escape instead."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _shown(text: str, limit: int = TEXT_USER_CHARS) -> str:
    """A user name for a text table: escaped, at most ``limit`` characters (cut with …)."""
    shown = _printable(text)
    if len(shown) <= limit:
        return shown
    out: list[str] = []
    size = 0
    for c in text:  # cut between characters, never inside an escape
        piece = _printable(c)
        if size + len(piece) > limit - 1:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out) + "…"


def _table(
    header: Sequence[str], rows: Iterable[Sequence[object]], right: set[int], indent: str = ""
) -> list[str]:
    """Columns as wide as their widest cell; columns in ``right`` aligned right."""
    cells = [[_printable("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in header]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))

    def line(row: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(row)
        ]
        return (indent + "  ".join(parts)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in cells)]


def _range(report: Report) -> str:
    since = report.since or "the first record"
    until = report.until or "now"
    return f"{since} to {until}"


def _place(loc: Location) -> tuple[str, str, str]:
    country = f"{loc.country} {loc.country_name}" if loc.country else loc.country_name
    return country, loc.region or "", loc.city or ""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"


def _letter(listener: str, letters: dict[str, str]) -> str:
    return letters.get(listener, listener)


def _entry_row(e: Entry, letters: dict[str, str]) -> list[object]:
    reason = f"{e.reason} (would reject)" if e.monitor else e.reason
    return [
        _letter(e.listener, letters),
        e.address,
        _local(e.first),
        _local(e.last),
        e.attempts,
        "NEW" if e.new else "",
        reason,
        e.rule or "",
        _shown(e.user or ""),
    ]


_ENTRY_HEADER = ("L", "Address", "First", "Last", "Attempts", "New", "Reason", "Rule", "User")


def render_text(report: Report, letters: dict[str, str] | None = None) -> str:
    """An ESECTCP-like plain-text report, local times.

    ``letters`` maps listener names to the letter shown for them at level detail (the
    config knows protocols: F for FTP, T for Telnet); by default, names ``ftp`` and
    ``telnet`` give F and T, any other listener shows its name."""
    letters = DEFAULT_LETTERS if letters is None else letters
    out: list[str] = [
        f"Rejected connections - {report.level}",
        f"Service: {_printable(report.service)}    Range: {_range(report)}",
        f"Rejected addresses: {report.addresses}    Attempts: {report.attempts}",
    ]
    if report.dropped:
        out.append(f"Records the recorder could not write: {report.dropped}")
    if report.level == "detail" and report.entries_total is not None:
        shown = sum(len(loc.entries or ()) for loc in report.locations)
        if shown < report.entries_total:
            first = report.offset + 1 if shown else report.offset
            out.append(
                f"Addresses shown: {first}-{report.offset + shown} of {report.entries_total}"
            )
    out.append("")

    out.append("LOCATIONS")
    if not report.locations:
        out.append("No rejected connection in this range.")
    header = ("Country", "Region", "City", "Addresses", "Attempts", "Map")
    right = {3, 4}
    if report.level != "detail":
        if report.locations:
            rows = [
                [*_place(loc), loc.addresses, loc.attempts, loc.map or ""]
                for loc in report.locations
            ]
            out.extend(_table(header, rows, right))
    else:
        paged = any(loc.entries for loc in report.locations)
        for loc in report.locations:
            if paged and not loc.entries:
                continue  # a page of a long report: only the locations of its addresses
            place = " / ".join(p for p in _place(loc) if p)
            line = f"{place}: {_count(loc.addresses, 'address')}, {_count(loc.attempts, 'attempt')}"
            out.append(_printable(f"{line}  {loc.map}" if loc.map else line))
            if loc.entries:
                entry_rows = [_entry_row(e, letters) for e in loc.entries]
                out.extend(_table(_ENTRY_HEADER, entry_rows, {4}, indent="    "))
            out.append("")
    out.append("")

    out.append("COUNTRIES")
    if report.countries:
        rows = [
            [
                rank,
                f"{c.country} {c.country_name}" if c.country else c.country_name,
                c.addresses,
                f"{c.percent:.1f}%",
                "#" * round(c.percent * _BAR_WIDTH / 100),
            ]
            for rank, c in enumerate(report.countries, 1)
        ]
        out.extend(_table(("Rank", "Country", "Addresses", "Percent", ""), rows, {0, 2, 3}))
    else:
        out.append("None.")
    return "\n".join(out).rstrip("\n") + "\n"


# -- the trend report (stats) -------------------------------------------------------------


def render_stats_json(stats: Stats) -> str:
    """One JSON object with exactly PRODUCT.md's ``stats`` keys, newline-terminated."""
    return json.dumps(stats.to_dict(), indent=2) + "\n"


def _stats_range(stats: Stats) -> str:
    if stats.first_day is None:
        return "no record yet"
    since = stats.since or stats.first_day
    until = stats.until or f"{stats.last_day} (today)"
    return f"{since} to {until}"


def quiet_text(stats: Stats) -> str:
    """Quiet days as runs: ``2026-11-19, 2026-11-21 to 2026-11-23``."""
    return ", ".join(a if a == b else f"{a} to {b}" for a, b in day_ranges(stats.quiet_days))


def render_stats_text(stats: Stats) -> str:
    """The trend report as plain text: per day and listener, quiet days, top lists."""
    total = stats.accepted + stats.rejected
    share = f" ({100.0 * stats.rejected / total:.1f}% rejected)" if total else ""
    out: list[str] = [
        "Connections per day - trend",
        f"Range: {_stats_range(stats)}",
        f"Accepted: {stats.accepted}    Rejected: {stats.rejected}{share}",
        "",
        "DAYS",
    ]
    if stats.days:
        header = ("Date", "Listener", "Accepted", "Rejected", "Files sent", "Files received")
        rows = [
            [d.date, d.listener, d.accepted, d.rejected, d.files_sent, d.files_received]
            for d in stats.days
        ]
        out.extend(_table(header, rows, {2, 3, 4, 5}))
    else:
        out.append("No connection in this range.")
    out.append("")
    out.append(f"QUIET DAYS (no rejection): {len(stats.quiet_days)}")
    if stats.quiet_days:
        out.append(quiet_text(stats))
    out.append("")
    out.append("MOST PERSISTENT ADDRESSES")
    if stats.top_addresses:
        rows = [[i, a.address, a.attempts] for i, a in enumerate(stats.top_addresses, 1)]
        out.extend(_table(("Rank", "Address", "Attempts"), rows, {0, 2}))
    else:
        out.append("None.")
    out.append("")
    out.append("USER NAMES TRIED MOST")
    if stats.top_users:
        rows = [[i, _shown(u.user), u.attempts] for i, u in enumerate(stats.top_users, 1)]
        out.extend(_table(("Rank", "User", "Attempts"), rows, {0, 2}))
    else:
        out.append("None.")
    return "\n".join(out).rstrip("\n") + "\n"

"""The rejection report: queries over a database filled by the Recorder, and renderings."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import time
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.errors import GatekeeperError
from gatekeeper.events import Rejection
from gatekeeper.report.query import Report, map_link, parse_bound, rejection_report
from gatekeeper.report.render import TEXT_USER_CHARS, render_csv, render_json, render_text
from gatekeeper.rules.model import Reason
from gatekeeper.store.recorder import Recorder

TZ = "EST5EDT,M3.2.0,M11.1.0"  # POSIX-style: needs no tz database; UTC-5 in November

DAY1, DAY2, DAY3 = date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)

REPORT_KEYS = {
    "level",
    "service",
    "since",
    "until",
    "addresses",
    "attempts",
    "locations",
    "countries",
}
LOCATION_KEYS = {
    "country",
    "country_name",
    "region",
    "city",
    "latitude",
    "longitude",
    "addresses",
    "attempts",
    "map",
}
ENTRY_KEYS = {
    "listener",
    "address",
    "first",
    "last",
    "attempts",
    "new",
    "reason",
    "rule",
    "monitor",
    "map",
}
COUNTRY_KEYS = {"country", "country_name", "addresses", "percent"}


@pytest.fixture(autouse=True)
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", TZ)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def at(day: date, hour: int, minute: int = 0, second: int = 0) -> float:
    """Local wall-clock time on ``day`` as ``time.time()``."""
    return datetime(day.year, day.month, day.day, hour, minute, second).timestamp()


def rej(
    address: str,
    when: float,
    listener: str = "ftp",
    reason: str = Reason.DEFAULT,
    *,
    rule: str | None = "rules.yaml:1",
    user: str | None = None,
    monitor: bool = False,
) -> Rejection:
    return Rejection(listener, address, reason, rule, when, monitor, user)


def fill(db: Path, events: Iterable[Rejection]) -> None:
    async def main() -> None:
        rec = Recorder(db, flush_interval=3600)
        await rec.start()
        for e in events:
            rec.rejected(e)
        await rec.close()

    asyncio.run(main())


def locate(db: Path, *rows: tuple[Any, ...]) -> None:
    """(address, country, country_name, region, city, latitude, longitude)"""
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO locations"
            " (address, country, country_name, region, city, latitude, longitude)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Three days; ftp and telnet; 192.0.2.7 on both listeners."""
    path = tmp_path / "var" / "gk.db"
    fill(
        path,
        [
            # 192.0.2.7: ftp on day 1 (2) and day 3 (3); telnet on day 2 (1)
            rej("192.0.2.7", at(DAY1, 8, 1, 2)),
            rej("192.0.2.7", at(DAY1, 9)),
            rej("192.0.2.7", at(DAY3, 10), reason=Reason.NETWORK, rule="rules.yaml:7"),
            rej("192.0.2.7", at(DAY3, 11), reason=Reason.BAN, rule=None),
            rej("192.0.2.7", at(DAY3, 9)),
            rej("192.0.2.7", at(DAY2, 23, 30), "telnet"),
            # 198.51.100.1: ftp on day 3 only, 4 attempts, user names
            *[
                rej("198.51.100.1", at(DAY3, 12, i), reason=Reason.USER, user=u)
                for i, u in enumerate(["ADMIN", "TEST", "QSECOFR", "ROOT"])
            ],
            # 203.0.113.5: telnet day 2, monitor mode ("would reject")
            rej("203.0.113.5", at(DAY2, 6), "telnet", monitor=True),
            rej("203.0.113.5", at(DAY2, 7), "telnet", monitor=True),
        ],
    )
    return path


def entries(report: Report) -> list[dict[str, Any]]:
    return [e for loc in report.to_dict()["locations"] for e in loc.get("entries", [])]


# -- bounds ---------------------------------------------------------------------------------


def test_parse_bound_dates_and_timestamps() -> None:
    since = parse_bound("2026-11-20", end=False)
    until = parse_bound("2026-11-20", end=True)
    assert since.is_date and since.day == "2026-11-20"
    assert since.instant == "2026-11-20T05:00:00.000Z"  # local midnight, UTC-5
    assert until.instant == "2026-11-21T04:59:59.999Z"  # the whole local day
    z = parse_bound("2026-11-20T08:00:00Z", end=False)
    assert (z.is_date, z.instant, z.text, z.day) == (
        False,
        "2026-11-20T08:00:00.000Z",
        "2026-11-20T08:00:00Z",
        "2026-11-20",
    )
    assert parse_bound("2026-11-20T09:00:00+01:00", end=False).instant == z.instant
    assert parse_bound("2026-11-20T03:00", end=True).instant == z.instant  # naive: local
    assert parse_bound("2026-11-20 03:00:00", end=True).instant == z.instant


@pytest.mark.parametrize(
    "text", ["yesterday", "2026/11/20", "2026-13-01", "20261120", "2026-11-20T25:00", ""]
)
def test_parse_bound_rejects_with_a_helpful_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"YYYY-MM-DD|bad (date|timestamp)"):
        parse_bound(text, end=False)


def test_bad_arguments(db: Path) -> None:
    with pytest.raises(ValueError, match="level"):
        rejection_report(db, level="full")
    with pytest.raises(ValueError, match="after"):
        rejection_report(db, since="2026-11-20", until="2026-11-19")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        rejection_report(db, since="last week")


# -- content ------------------------------------------------------------------------------


def test_missing_database_is_an_empty_report(tmp_path: Path) -> None:
    report = rejection_report(tmp_path / "nothing" / "gk.db", level="detail")
    data = json.loads(render_json(report))
    assert data.keys() >= REPORT_KEYS
    assert (data["addresses"], data["attempts"], data["locations"], data["countries"]) == (
        0,
        0,
        [],
        [],
    )
    assert "No rejected connection" in render_text(report)
    assert render_csv(report).splitlines()[0].startswith("country,country_name")
    assert not (tmp_path / "nothing").exists()  # a report never creates anything


def test_database_without_schema_is_an_empty_report(tmp_path: Path) -> None:
    path = tmp_path / "gk.db"
    sqlite3.connect(path).close()
    assert rejection_report(path).addresses == 0


def test_unreadable_database_is_a_gatekeeper_error(tmp_path: Path) -> None:
    path = tmp_path / "gk.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(GatekeeperError, match="cannot read the database"):
        rejection_report(path)


def test_map_links() -> None:
    assert map_link(45.5, -73.6) == "https://www.openstreetmap.org/?mlat=45.5&mlon=-73.6"
    assert map_link(0.00001, 10) == "https://www.openstreetmap.org/?mlat=0.00001&mlon=10.0"
    assert map_link(None, 1.0) is None


def test_summary_json_shape_and_counting(db: Path) -> None:
    report = rejection_report(db, today=DAY3)
    data = json.loads(render_json(report))
    assert data.keys() >= REPORT_KEYS
    assert (data["level"], data["service"], data["since"], data["until"]) == (
        "summary",
        "both",
        None,
        None,
    )
    # 192.0.2.7 is on two listeners: one address in the totals and in its location.
    assert (data["addresses"], data["attempts"]) == (3, 12)
    (loc,) = data["locations"]
    assert loc.keys() >= LOCATION_KEYS
    assert "entries" not in loc
    assert loc == loc | {
        "country": None,
        "country_name": "unknown",
        "region": None,
        "city": None,
        "latitude": None,
        "longitude": None,
        "addresses": 3,
        "attempts": 12,
        "map": None,
    }
    assert data["countries"] == [
        {"country": None, "country_name": "unknown", "addresses": 3, "percent": 100.0}
    ]


def test_detail_entries_one_per_listener_and_address(db: Path) -> None:
    report = rejection_report(db, level="detail", today=DAY3)
    data = json.loads(render_json(report))
    (loc,) = data["locations"]
    assert (loc["addresses"], loc["attempts"]) == (3, 12)
    got = loc["entries"]
    assert all(e.keys() >= ENTRY_KEYS for e in got)
    # by attempts, descending
    assert [(e["listener"], e["address"], e["attempts"]) for e in got] == [
        ("ftp", "192.0.2.7", 5),
        ("ftp", "198.51.100.1", 4),
        ("telnet", "203.0.113.5", 2),
        ("telnet", "192.0.2.7", 1),
    ]
    ftp7 = got[0]
    assert ftp7["first"] == "2026-11-18T13:01:02Z"  # 08:01:02 local, UTC-5
    assert ftp7["last"] == "2026-11-20T16:00:00Z"
    assert (ftp7["reason"], ftp7["rule"], ftp7["new"], ftp7["monitor"]) == (
        "ban",
        None,
        False,
        False,
    )
    assert ftp7["map"] is None
    user = got[1]
    assert (user["reason"], user["user"], user["new"]) == ("user", "ROOT", True)
    monitor = got[2]
    assert (monitor["monitor"], monitor["monitor_attempts"], monitor["new"]) == (True, 2, False)
    # 23:30 local on day 2 is 04:30Z on day 3, and still counts for day 2
    assert got[3]["first"] == "2026-11-20T04:30:00Z"
    assert data["entries_total"] == 4


def test_service_filter(db: Path) -> None:
    ftp = rejection_report(db, service="ftp", level="detail")
    assert (ftp.service, ftp.addresses, ftp.attempts) == ("ftp", 2, 9)
    assert {e["listener"] for e in entries(ftp)} == {"ftp"}
    telnet = rejection_report(db, service="telnet")
    assert (telnet.addresses, telnet.attempts) == (2, 3)
    assert rejection_report(db, service="tcp").addresses == 0


def test_date_bounds_select_local_days(db: Path) -> None:
    def totals(**kw: str) -> tuple[int, int]:
        r = rejection_report(db, **kw)  # type: ignore[arg-type]
        return r.addresses, r.attempts

    assert totals(since="2026-11-19") == (3, 10)
    assert totals(until="2026-11-19") == (2, 5)  # the whole of the 19th, 23:30 included
    assert totals(since="2026-11-19", until="2026-11-19") == (2, 3)
    assert totals(since="2026-11-18", until="2026-11-18") == (1, 2)
    assert totals(since="2026-11-21") == (0, 0)
    report = rejection_report(db, since="2026-11-19", until="2026-11-20")
    assert (report.since, report.until) == ("2026-11-19", "2026-11-20")


def test_timestamp_bounds_select_overlapping_day_rows(db: Path) -> None:
    def totals(**kw: str) -> tuple[int, int]:
        r = rejection_report(db, **kw)  # type: ignore[arg-type]
        return r.addresses, r.attempts

    # The day-3 ftp row of 192.0.2.7 spans 09:00-11:00 local: any overlap selects it whole.
    assert totals(since="2026-11-20T10:30:00", until="2026-11-20T10:45:00") == (1, 3)
    assert totals(since="2026-11-20T15:30:00Z", until="2026-11-20T15:45:00Z") == (1, 3)
    assert totals(since="2026-11-20T11:30:00-05:00", until="2026-11-20T11:45:00-05:00") == (0, 0)
    # Telnet at 23:30 local on the 19th is 04:30Z on the 20th.
    assert totals(since="2026-11-20T04:00:00Z", until="2026-11-20T05:00:00Z") == (1, 1)
    assert totals(since="2026-11-20T12:02:00") == (1, 4)  # 198.51.100.1 only
    report = rejection_report(db, since="2026-11-20T12:02:00")
    assert report.since == "2026-11-20T17:02:00Z"


def test_new_is_first_attempt_ever_today(db: Path) -> None:
    on_day3 = {
        (e["listener"], e["address"]): e["new"]
        for e in entries(rejection_report(db, level="detail", since="2026-11-20", today=DAY3))
    }
    # 192.0.2.7 was rejected on ftp on day 1 already: not new, even in a day-3 report.
    assert on_day3 == {("ftp", "192.0.2.7"): False, ("ftp", "198.51.100.1"): True}
    on_day2 = {
        (e["listener"], e["address"]): e["new"]
        for e in entries(rejection_report(db, level="detail", today=DAY2))
    }
    assert on_day2[("telnet", "203.0.113.5")] and on_day2[("telnet", "192.0.2.7")]
    assert not on_day2[("ftp", "198.51.100.1")]


def test_reason_is_that_of_the_latest_attempt_in_range(db: Path) -> None:
    (e,) = [
        e
        for e in entries(rejection_report(db, level="detail", until="2026-11-18"))
        if e["address"] == "192.0.2.7"
    ]
    assert (e["reason"], e["attempts"], e["last"]) == ("default", 2, "2026-11-18T14:00:00Z")


def test_locations_countries_and_maps(tmp_path: Path) -> None:
    path = tmp_path / "gk.db"
    t = at(DAY3, 12)
    fill(
        path,
        [
            *[rej("175.16.199.1", t + i) for i in range(5)],
            *[rej("175.16.199.2", t + i, "telnet") for i in range(2)],
            rej("175.16.199.2", t),  # one address, two listeners
            *[rej("175.16.199.3", t + i) for i in range(3)],  # CN, another city
            *[rej("81.2.69.142", t + i) for i in range(9)],  # GB
            rej("192.0.2.1", t),  # unknown: no row
            rej("192.0.2.2", t),  # unknown: a row without a country
        ],
    )
    locate(
        path,
        ("175.16.199.1", "CN", "China", "Jilin Sheng", "Changchun", 43.88, 125.3228),
        ("175.16.199.2", "CN", "China", "Jilin Sheng", "Changchun", 43.88, 125.3228),
        ("175.16.199.3", "CN", "China", None, None, 34.7732, 113.722),
        ("81.2.69.142", "GB", "United Kingdom", "England", "London", 51.5142, -0.0931),
        ("192.0.2.2", None, None, None, None, None, None),
    )
    report = rejection_report(path, level="detail", today=DAY3)
    data = json.loads(render_json(report))
    assert (data["addresses"], data["attempts"]) == (6, 22)
    locs = [
        (x["country"], x["region"], x["city"], x["addresses"], x["attempts"], x["map"])
        for x in data["locations"]
    ]
    assert locs == [
        (
            "CN",
            "Jilin Sheng",
            "Changchun",
            2,
            8,
            "https://www.openstreetmap.org/?mlat=43.88&mlon=125.3228",
        ),
        (None, None, None, 2, 2, None),
        (
            "GB",
            "England",
            "London",
            1,
            9,
            "https://www.openstreetmap.org/?mlat=51.5142&mlon=-0.0931",
        ),
        ("CN", None, None, 1, 3, "https://www.openstreetmap.org/?mlat=34.7732&mlon=113.722"),
    ]
    assert data["locations"][0]["country_name"] == "China"
    assert [
        (e["listener"], e["address"], e["attempts"], e["map"] is not None)
        for e in data["locations"][0]["entries"]
    ] == [
        ("ftp", "175.16.199.1", 5, True),
        ("telnet", "175.16.199.2", 2, True),
        ("ftp", "175.16.199.2", 1, True),
    ]
    assert data["countries"] == [
        {"country": "CN", "country_name": "China", "addresses": 3, "percent": 50.0},
        {"country": None, "country_name": "unknown", "addresses": 2, "percent": 33.3},
        {"country": "GB", "country_name": "United Kingdom", "addresses": 1, "percent": 16.7},
    ]
    assert all(c.keys() >= COUNTRY_KEYS for c in data["countries"])

    text = render_text(report)
    assert "CN China / Jilin Sheng / Changchun: 2 addresses, 8 attempts" in text
    assert "50.0%" in text and "33.3%" in text and "16.7%" in text

    summary = render_csv(rejection_report(path))
    rows = list(csv.DictReader(io.StringIO(summary)))
    assert [(r["country"], r["city"], r["addresses"], r["longitude"]) for r in rows] == [
        ("CN", "Changchun", "2", "125.3228"),
        ("", "", "2", ""),
        ("GB", "London", "1", "-0.0931"),  # a number: never quoted as a formula
        ("CN", "", "1", "113.722"),
    ]


def test_pages_of_entries(tmp_path: Path) -> None:
    path = tmp_path / "gk.db"
    t = at(DAY3, 12)
    events = [rej(f"10.0.0.{i}", t + j) for i in range(1, 8) for j in range(i)]
    events += [rej(f"10.0.1.{i}", t + j) for i in range(1, 4) for j in range(10 * i)]
    fill(path, events)
    locate(
        path, *[(f"10.0.1.{i}", "SE", "Sweden", None, "Linköping", 58.4, 15.6) for i in range(1, 4)]
    )

    def page(offset: int, limit: int | None) -> list[str]:
        r = rejection_report(path, level="detail", limit=limit, offset=offset)
        assert r.entries_total == 10
        assert (r.addresses, len(r.locations)) == (10, 2)  # totals are never paged
        return [e["address"] for e in entries(r)]

    everything = page(0, None)
    assert everything == [
        *["10.0.0.7", "10.0.0.6", "10.0.0.5", "10.0.0.4", "10.0.0.3", "10.0.0.2", "10.0.0.1"],
        *["10.0.1.3", "10.0.1.2", "10.0.1.1"],
    ]
    assert page(0, 4) + page(4, 4) + page(8, 4) == everything
    assert page(10, 4) == []
    assert page(0, 0) == []
    text = render_text(rejection_report(path, level="detail", limit=2, offset=7))
    assert "Addresses shown: 8-9 of 10" in text
    assert "10.0.1.3" in text and "10.0.0.7" not in text


def test_monitor_rows_are_included_and_flagged(db: Path) -> None:
    report = rejection_report(db, level="detail", service="telnet")
    (e,) = [e for e in entries(report) if e["address"] == "203.0.113.5"]
    assert e["monitor"] is True
    assert "(would reject)" in render_text(report)
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert {r["address"]: r["monitor"] for r in rows} == {"203.0.113.5": "yes", "192.0.2.7": "no"}


# -- renderings ---------------------------------------------------------------------------


def test_text_report_rows_letters_and_local_times(db: Path) -> None:
    report = rejection_report(
        db, level="detail", today=DAY3, since="2026-11-18", until="2026-11-20"
    )
    text = render_text(report)
    assert "Service: both" in text and "2026-11-18 to 2026-11-20" in text
    assert "Rejected addresses: 3    Attempts: 12" in text
    lines = text.splitlines()
    (ftp7,) = [x for x in lines if "192.0.2.7" in x and x.split()[0] == "F"]
    assert "2026-11-18 08:01:02" in ftp7 and "2026-11-20 11:00:00" in ftp7  # local time
    assert ftp7.split()[6] == "5" and "NEW" not in ftp7
    (user,) = [x for x in lines if "198.51.100.1" in x]
    assert user.split()[0] == "F" and "NEW" in user and "ROOT" in user
    assert [x.split()[0] for x in lines if "203.0.113.5" in x] == ["T"]
    assert "COUNTRIES" in text and "100.0%" in text

    custom = render_text(report, letters={"ftp": "X", "telnet": "Y"})
    assert [x.split()[0] for x in custom.splitlines() if "203.0.113.5" in x] == ["Y"]
    unnamed = render_text(report, letters={})
    assert [x.split()[0] for x in unnamed.splitlines() if "203.0.113.5" in x] == ["telnet"]

    summary = render_text(rejection_report(db))
    assert "192.0.2.7" not in summary
    assert any(
        x.startswith("unknown") and x.split()[1:3] == ["3", "12"] for x in summary.splitlines()
    )


def test_csv_detail_local_times_and_formula_escaping(tmp_path: Path) -> None:
    path = tmp_path / "gk.db"
    t = at(DAY3, 12)
    users = ["=cmd|' /C calc'!A0", "+SUM(1)", "-2+3", "@A1", "PLAIN", "\x1b[31mRED",
             "\t=1+1", "\r=1+1", "\0=1", "A=B"]  # fmt: skip
    fill(path, [rej("192.0.2.1", t + i, reason=Reason.USER, user=u) for i, u in enumerate(users)])
    fill(
        path,
        [rej(f"192.0.2.{i + 2}", t + i, reason=Reason.USER, user=u) for i, u in enumerate(users)],
    )
    report = rejection_report(path, level="detail", today=DAY3)
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert list(rows[0].keys())[:6] == [
        "country",
        "country_name",
        "region",
        "city",
        "listener",
        "address",
    ]
    assert rows[0]["address"] == "192.0.2.1" and rows[0]["attempts"] == str(len(users))
    assert rows[0]["first"] == "2026-11-20 12:00:00" and rows[0]["last"] == "2026-11-20 12:00:09"
    assert rows[0]["new"] == "yes"
    by_address = {r["address"]: r["user"] for r in rows}
    assert [by_address[f"192.0.2.{i + 2}"] for i in range(len(users))] == [
        "'=cmd|' /C calc'!A0",
        "'+SUM(1)",
        "'-2+3",
        "'@A1",
        "PLAIN",
        "\x1b[31mRED",
        "'\t=1+1",
        "'\r=1+1",
        "'\0=1",
        "A=B",  # only the first character counts
    ]
    text = render_text(report)
    assert "\x1b" not in text and "\\x1b[31mRED" in text  # no terminal escape gets through
    assert "\\x09=1+1" in text and "\\x0d=1+1" in text and "\\x00=1" in text
    assert "\x1b" not in render_json(report)  # JSON escapes it
    entries = json.loads(render_json(report))["locations"][0]["entries"]
    by_address = {e["address"]: e["user"] for e in entries}
    assert [by_address[f"192.0.2.{i + 2}"] for i in range(len(users))] == users  # exact


def test_text_escapes_control_and_format_characters_and_cuts_long_names(tmp_path: Path) -> None:
    """Terminal escapes, bidi overrides and bytes that were not UTF-8 show as visible
    escapes; a long name is cut so that it cannot stretch every line of the table."""
    path = tmp_path / "gk.db"
    users = ["\x1b]0;owned\x07", "\u202eTXT.EXE", "A\u0085B\x7f", "L" * 4000, "MÜLLER"]
    t = at(DAY3, 12)
    fill(path, [rej(f"192.0.2.{i + 1}", t + i, reason=Reason.USER, user=u)
                for i, u in enumerate(users)])  # fmt: skip
    text = render_text(rejection_report(path, level="detail", today=DAY3))
    for shown in ("\\x1b]0;owned\\x07", "\\u202eTXT.EXE", "A\\x85B\\x7f", "MÜLLER"):
        assert shown in text
    assert "L" * (TEXT_USER_CHARS - 1) + "…" in text and "L" * TEXT_USER_CHARS not in text
    assert max(map(len, text.splitlines())) < 200
    bad = [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs")]
    assert bad == []


def test_json_is_one_object_with_utc_times(db: Path) -> None:
    out = render_json(rejection_report(db, level="detail"))
    data = json.loads(out)  # one object, nothing else
    assert isinstance(data, dict)
    for e in entries(rejection_report(db, level="detail")):
        assert datetime.strptime(e["first"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert e["last"].endswith("Z") and len(e["last"]) == 20


def test_report_reads_while_the_recorder_writes(tmp_path: Path) -> None:
    """WAL: a report sees committed rows while the daemon holds its connection open."""
    path = tmp_path / "gk.db"

    async def main() -> None:
        rec = Recorder(path, flush_interval=3600)
        await rec.start()
        rec.rejected(rej("192.0.2.1", at(DAY3, 9)))
        await rec.flush()
        rec.rejected(rej("192.0.2.2", at(DAY3, 9)))  # pending, not yet visible
        report = await asyncio.to_thread(rejection_report, path)
        assert (report.addresses, report.attempts) == (1, 1)
        await rec.close()

    asyncio.run(main())
    assert rejection_report(path).addresses == 2


def test_dropped_records_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "gk.db"

    async def main() -> None:
        rec = Recorder(path, max_pending=1)
        await rec.start()
        rec.rejected(rej("192.0.2.1", at(DAY3, 9)))
        rec.rejected(rej("192.0.2.2", at(DAY3, 9)))
        await rec.close()

    asyncio.run(main())
    report = rejection_report(path)
    assert report.to_dict()["dropped"] == 1
    assert "could not write: 1" in render_text(report)

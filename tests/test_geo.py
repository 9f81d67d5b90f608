"""GeoIP: the lookup class, its checks, country rules with it, locations in the log."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import sqlite3
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gatekeeper import cli, geo
from gatekeeper.config import load
from gatekeeper.errors import ConfigError
from gatekeeper.events import Rejection
from gatekeeper.geo import GeoLocator, Location, check
from gatekeeper.report.query import rejection_report
from gatekeeper.rules.engine import RuleSet
from gatekeeper.rules.model import Action, Reason, Rule, RulesSpec, Source
from gatekeeper.settings import GeoipSettings
from gatekeeper.store import recorder as recorder_module
from gatekeeper.store.recorder import Recorder
from tests.geo_fixtures import (
    CITY_CASES,
    CITY_NETWORKS,
    SHARED_ASN,
    SHARED_CITY_CASES,
    SHARED_GEOIP,
    Expected,
    make_city_db,
)


def city(path: Path, asn: Path | None = None) -> GeoLocator:
    return GeoLocator.open(GeoipSettings(city=path, asn=asn))


def as_location(expected: Expected | None) -> Location | None:
    return None if expected is None else Location(*expected)


@pytest.fixture(params=["built", "maxmind"])
def database(
    request: pytest.FixtureRequest, city_db: Path
) -> tuple[Path, dict[str, Expected | None]]:
    """Our own City database, and MaxMind's test database when ../shared/geoip is here."""
    if request.param == "built":
        return city_db, CITY_CASES
    return request.getfixturevalue("shared_city_db"), SHARED_CITY_CASES


def count_lookups(locator: GeoLocator) -> list[Any]:
    """Make the locator's city database count the lookups that reach it."""
    calls: list[Any] = []
    held = locator._city
    assert held is not None

    def ask(address: Any) -> Any:
        calls.append(address)
        return held.ask(address)

    locator._city = dataclasses.replace(held, ask=ask)
    return calls


# -- the lookup class ------------------------------------------------------------------


def test_locations(database: tuple[Path, dict[str, Expected | None]]) -> None:
    path, cases = database
    locator = city(path)
    assert locator.available and locator.configured
    for address, expected in cases.items():
        assert locator.locate(address) == as_location(expected), address
        code = expected.country if expected is not None else None
        assert locator.country(address) == code, address
        assert locator.country(ipaddress.ip_address(address)) == code, address


def test_region_is_the_first_subdivision_and_missing_fields_are_none(city_db: Path) -> None:
    locator = city(city_db)
    london = locator.locate("192.0.2.1")
    assert london is not None and london.region == "England"  # not "Greater London"
    centroid = locator.locate("192.0.2.200")
    assert centroid == Location("US", "United States", None, None, 37.751, -97.822)
    registered = locator.locate("203.0.113.5")  # only a registered country in the record
    assert registered is not None and registered.country == "DE"
    assert registered.country_name == "Germany"


def test_unknown_and_bad_addresses(city_db: Path) -> None:
    locator = city(city_db)
    for text in ("10.0.0.1", "::1", "fe80::1%eth0", "not an address", "", "1.2.3", "::ffff:"):
        assert locator.locate(text) is None, text
        assert locator.country(text) is None, text


def test_without_settings_everything_is_unknown() -> None:
    for settings in (None, GeoipSettings()):
        locator = GeoLocator.open(settings)
        assert not locator.available and not locator.configured
        assert locator.locate("198.51.100.7") is None
        assert locator.country(ipaddress.ip_address("198.51.100.7")) is None
        assert locator.epoch == "none"


def test_asn_database(city_db: Path, asn_db: Path) -> None:
    locator = city(city_db, asn_db)
    found = locator.locate("198.51.100.7")
    assert found is not None and (found.asn, found.organisation) == (64500, "Example Backbone")
    assert found.city == "Shenzhen"
    v6 = locator.locate("2001:db8:1::5")
    assert v6 is not None and (v6.country, v6.asn, v6.organisation) == ("JP", 64501, None)
    assert locator.locate("192.0.2.1") == as_location(CITY_CASES["192.0.2.1"])
    only_asn = GeoLocator.open(GeoipSettings(asn=asn_db))
    assert not only_asn.available  # no city database: countries unknown
    assert only_asn.locate("198.51.100.7") == Location(
        None, "unknown", None, None, None, None, 64500, "Example Backbone"
    )
    assert only_asn.country("198.51.100.7") is None


def test_lookups_are_cached(city_db: Path) -> None:
    locator = city(city_db)
    calls = count_lookups(locator)
    first = locator.locate("198.51.100.7")
    assert locator.locate("198.51.100.7") is first
    assert locator.country(ipaddress.ip_address("198.51.100.7")) == "CN"
    assert locator.country(ipaddress.ip_address("198.51.100.7")) == "CN"
    assert locator.locate("10.0.0.1") is None
    assert locator.locate("10.0.0.1") is None  # unknown is cached too
    assert len(calls) == 2
    # Bounded: an LRU of LOCATION_CACHE locations and COUNTRY_CACHE country codes.
    assert locator._located.cache_info().maxsize == geo.LOCATION_CACHE
    assert locator._countries.cache_info().maxsize == geo.COUNTRY_CACHE


def test_country_database_is_accepted_for_city(tmp_path: Path) -> None:
    path = make_city_db(tmp_path / "Country.mmdb", database_type="GeoLite2-Country")
    assert check(GeoipSettings(city=path)) == []
    locator = city(path)
    assert locator.locate("198.51.100.7") == Location("CN", "China", None, None, None, None)
    assert locator.country("192.0.2.1") == "GB"


# -- problems: `gatekeeper check` and the daemon's warning ------------------------------


def broken_files(tmp_path: Path, city_db: Path, asn_db: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path given as geoip.city, what the problem must say)."""
    data = city_db.read_bytes()
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.mmdb"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.mmdb"
    truncated.write_bytes(data[: len(data) // 2])
    damaged = tmp_path / "damaged.mmdb"
    damaged.write_bytes(b"\xff" * 256 + data[256:])  # the search tree points nowhere
    folder = tmp_path / "folder.mmdb"
    folder.mkdir()
    return {
        "missing": (tmp_path / "nowhere" / "City.mmdb", "not found; install it"),
        "folder": (folder, "not a file"),
        "garbage": (garbage, "not a MaxMind DB (.mmdb) file"),
        "empty": (empty, "not a MaxMind DB (.mmdb) file"),
        "truncated": (truncated, "not a MaxMind DB (.mmdb) file, or an incomplete one"),
        "damaged": (damaged, "the database is damaged"),
        "asn as city": (asn_db, "is a GeoLite2-ASN database; geoip.city needs a City or Country"),
    }


def test_check_finds_problems(tmp_path: Path, city_db: Path, asn_db: Path) -> None:
    for name, (path, says) in broken_files(tmp_path, city_db, asn_db).items():
        (problem,) = check(GeoipSettings(city=path))
        assert problem.startswith(f"geoip.city: {path}: "), name
        assert says in problem, (name, problem)
    (problem,) = check(GeoipSettings(city=city_db, asn=city_db))
    assert problem == (
        f"geoip.asn: {city_db}: is a GeoLite2-City database; "
        "geoip.asn needs an ASN database (GeoLite2-ASN.mmdb)"
    )
    assert check(GeoipSettings(city=city_db, asn=asn_db)) == []
    assert check(None) == [] and check(GeoipSettings()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_check_unreadable(tmp_path: Path, city_db: Path) -> None:
    path = tmp_path / "City.mmdb"
    path.write_bytes(city_db.read_bytes())
    path.chmod(0)
    (problem,) = check(GeoipSettings(city=path))
    assert "cannot be read: permission denied" in problem
    assert not city(path).available


@pytest.mark.skipif(not SHARED_ASN.is_file(), reason="../shared/geoip is not here")
def test_check_maxmind_databases() -> None:
    assert check(GeoipSettings(city=SHARED_GEOIP / "GeoLite2-City-Test.mmdb", asn=SHARED_ASN)) == []
    assert check(GeoipSettings(city=SHARED_GEOIP / "GeoLite2-Country-Test.mmdb")) == []
    assert check(GeoipSettings(city=SHARED_GEOIP / "GeoIP2-City-Test.mmdb")) == []
    (problem,) = check(GeoipSettings(city=SHARED_ASN))
    assert "is a GeoLite2-ASN database; geoip.city needs" in problem


def test_open_warns_once_and_answers_unknown(
    tmp_path: Path, city_db: Path, asn_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    deny_cn = country_rules()
    for name, (path, says) in broken_files(tmp_path, city_db, asn_db).items():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gatekeeper.geo"):
            locator = city(path)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, (name, caplog.text)
        message = warnings[0].getMessage()
        assert str(path) in message and says in message, message
        assert "country rules match nothing" in message
        assert not locator.available and locator.configured
        assert locator.locate("198.51.100.7") is None
        assert locator.country(ipaddress.ip_address("198.51.100.7")) is None
        rules = RuleSet.build(deny_cn, country_of=locator.country)
        assert rules.decide("198.51.100.7", "ftp").reason is Reason.DEFAULT


def test_reopen_keeps_an_unchanged_locator(tmp_path: Path, city_db: Path) -> None:
    path = tmp_path / "City.mmdb"
    path.write_bytes(city_db.read_bytes())
    settings = GeoipSettings(city=path)
    first = GeoLocator.open(settings)
    assert GeoLocator.open(settings, previous=first) is first
    # geoipupdate writes a new file and renames it over the old one.
    moved = dict(CITY_NETWORKS)
    moved["192.0.2.0/25"] = CITY_NETWORKS["198.51.100.0/24"]
    new = make_city_db(tmp_path / "new.mmdb", moved)
    os.replace(new, path)
    second = GeoLocator.open(settings, previous=first)
    assert second is not first and second.epoch != first.epoch
    assert second.country("192.0.2.1") == "CN" and first.country("192.0.2.1") == "GB"
    # A locator without its database is never kept: the file is tried again.
    path.unlink()
    third = GeoLocator.open(settings, previous=second)
    assert not third.available
    path.write_bytes(city_db.read_bytes())
    assert GeoLocator.open(settings, previous=third).available


# -- country rules ---------------------------------------------------------------------


def country_rules() -> RulesSpec:
    deny = Rule(Action.DENY, Source("rules.yaml", 4), countries=frozenset({"CN"}))
    allow = Rule(Action.ALLOW, Source("rules.yaml", 6), countries=frozenset({"GB", "JP"}))
    return RulesSpec(default=Action.DENY, default_source=Source("rules.yaml", 1),
                     rules=(deny, allow))  # fmt: skip


def test_country_rules_with_the_locator(database: tuple[Path, dict[str, Any]]) -> None:
    path, cases = database
    rules = RuleSet.build(country_rules(), country_of=city(path).country)
    for address, expected in cases.items():
        decision = rules.decide(address, "ftp")
        code = expected.country if expected is not None else None
        if code == "CN":
            assert (decision.action, decision.reason, decision.match) == (
                Action.DENY, Reason.COUNTRY, "CN")  # fmt: skip
            assert str(decision.source) == "rules.yaml:4"
        elif code in ("GB", "JP"):
            assert (decision.action, decision.reason, decision.match) == (
                Action.ALLOW, Reason.COUNTRY, code)  # fmt: skip
        else:
            assert (decision.action, decision.reason) == (Action.DENY, Reason.DEFAULT), address


# -- config check and the command line -------------------------------------------------

CONFIG = """\
database: var/gk.db
geoip:
  city: {city}
  asn: {asn}
rules: [rules.d/*.yaml]
listeners:
  - {{name: ftp, protocol: ftp, listen: "127.0.0.1:0", upstream: "127.0.0.1:21"}}
  - {{name: telnet, protocol: telnet, listen: "127.0.0.1:0", upstream: "127.0.0.1:23"}}
"""

RULES = """\
default: allow
deny:
  - 10.66.0.0/16
  - {country: [CN]}
"""


def write_config(tmp_path: Path, city: Path | str, asn: Path | str | None = None) -> Path:
    (tmp_path / "rules.d").mkdir(exist_ok=True)
    (tmp_path / "rules.d" / "r.yaml").write_text(RULES)
    text = CONFIG.format(city=city, asn=asn)
    if asn is None:
        text = text.replace("  asn: None\n", "")
    path = tmp_path / "gk.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_check_reports_geoip_problems_with_file_and_line(
    tmp_path: Path, city_db: Path, asn_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "geo/City.mmdb", city_db)
    load(path)  # the daemon starts (and warns): not an error there
    with pytest.raises(ConfigError) as info:
        load(path, check_geoip=True)
    city_problem, asn_problem = info.value.problems
    assert (city_problem.file, city_problem.line) == (str(path), 3)
    assert city_problem.message.startswith(f"geoip.city: {tmp_path / 'geo' / 'City.mmdb'}: not")
    assert (asn_problem.line, asn_problem.message.split(":")[0]) == (4, "geoip.asn")
    assert "is a GeoLite2-City database" in asn_problem.message

    assert cli.main(["check", "-c", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{path}:3: geoip.city: ") and err[1].startswith(f"{path}:4: ")

    path = write_config(tmp_path, city_db, asn_db)
    assert cli.main(["check", "-c", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ok")


def test_lookup_shows_the_country_rule(
    tmp_path: Path, city_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, city_db)
    rules = tmp_path / "rules.d" / "r.yaml"
    assert cli.main(["lookup", "198.51.100.7", "-c", str(path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [
        {"listener": name, "action": "deny", "reason": "country", "match": "CN",
         "source": f"{rules}:4"}
        for name in ("ftp", "telnet")
    ]  # fmt: skip
    assert cli.main(["lookup", "::ffff:198.51.100.7", "-c", str(path), "--listener", "ftp"]) == 0
    assert capsys.readouterr().out.split("\t") == ["ftp", "deny", "country", "CN", f"{rules}:4\n"]
    assert cli.main(["lookup", "192.0.2.1", "-c", str(path), "--listener", "ftp"]) == 0
    assert capsys.readouterr().out.split("\t")[:3] == ["ftp", "allow", "default"]


def test_lookup_without_the_database_warns_and_decides(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "missing.mmdb")
    with caplog.at_level(logging.WARNING, logger="gatekeeper.geo"):
        assert cli.main(["lookup", "198.51.100.7", "-c", str(path), "--listener", "ftp"]) == 0
    assert capsys.readouterr().out.split("\t")[:3] == ["ftp", "allow", "default"]
    assert len(caplog.records) == 1 and "missing.mmdb: not found" in caplog.text


# -- locations in the log --------------------------------------------------------------


def rejected(address: str, listener: str = "ftp") -> Rejection:
    return Rejection(listener, address, Reason.COUNTRY, "rules.yaml:4", time.time())


def table(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def locations(db: Path) -> dict[str, tuple[Any, ...]]:
    return {
        row[0]: row[1:]
        for row in table(
            db,
            "SELECT address, country, country_name, region, city, latitude, longitude"
            " FROM locations",
        )
    }


def epoch(db: Path) -> str | None:
    rows = table(db, "SELECT value FROM meta WHERE key = 'geoip_epoch'")
    return rows[0][0] if rows else None


def run_recorder(recorder: Recorder, step: Callable[[Recorder], Any]) -> None:
    async def main() -> None:
        await recorder.start()
        try:
            result = step(recorder)
            if asyncio.iscoroutine(result):
                await result
        finally:
            await recorder.close()

    asyncio.run(main())


CN_ROW = ("CN", "China", "Guangdong", "Shenzhen", 22.5431, 114.0579)
UNKNOWN_ROW = (None, None, None, None, None, None)


def test_recorder_writes_locations(tmp_path: Path, city_db: Path) -> None:
    db = tmp_path / "gk.db"
    locator = city(city_db)
    asked: list[str] = []
    locate = locator.locate

    def counting(address: str) -> Location | None:
        asked.append(address)
        return locate(address)

    locator.locate = counting  # type: ignore[method-assign]
    recorder = Recorder(db, flush_interval=3600, locator=locator)

    async def step(rec: Recorder) -> None:
        for address in ("198.51.100.7", "192.0.2.200", "10.0.0.1", "2001:db8:1::1"):
            rec.rejected(rejected(address))
            rec.rejected(rejected(address, "telnet"))
        await rec.flush()
        assert sorted(asked) == ["10.0.0.1", "192.0.2.200", "198.51.100.7", "2001:db8:1::1"]
        rec.rejected(rejected("10.0.0.1"))
        rec.rejected(rejected("198.51.100.7"))
        await rec.flush()
        assert len(asked) == 4  # each address is looked up once, unknown ones too

    run_recorder(recorder, step)
    rows = locations(db)
    assert rows == {
        "198.51.100.7": CN_ROW,
        "192.0.2.200": ("US", "United States", None, None, 37.751, -97.822),
        "10.0.0.1": UNKNOWN_ROW,  # NULL, never ""
        "2001:db8:1::1": ("JP", "Japan", "Tokyo", "Tokyo", 35.6895, 139.6917),
    }
    assert epoch(db) == locator.epoch

    report = rejection_report(db, level="detail").to_dict()
    assert report["addresses"] == 4 and report["attempts"] == 10
    china = next(loc for loc in report["locations"] if loc["country"] == "CN")
    assert (china["region"], china["city"], china["attempts"]) == ("Guangdong", "Shenzhen", 3)
    assert china["map"] == "https://www.openstreetmap.org/?mlat=22.5431&mlon=114.0579"
    assert {e["listener"] for e in china["entries"]} == {"ftp", "telnet"}
    countries = {c["country"]: (c["country_name"], c["percent"]) for c in report["countries"]}
    assert countries == {
        "CN": ("China", 25.0), "US": ("United States", 25.0), "JP": ("Japan", 25.0),
        None: ("unknown", 25.0),
    }  # fmt: skip


def test_recorder_without_a_database_writes_no_location(tmp_path: Path) -> None:
    db = tmp_path / "gk.db"
    recorder = Recorder(db, flush_interval=3600, locator=city(tmp_path / "missing.mmdb"))

    async def step(rec: Recorder) -> None:
        rec.rejected(rejected("198.51.100.7"))
        await rec.flush()

    run_recorder(recorder, step)
    assert locations(db) == {} and epoch(db) is None
    assert table(db, "SELECT address FROM rejections") == [("198.51.100.7",)]


def test_recorder_locates_again_when_the_database_changes(
    tmp_path: Path, city_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder_module, "LOCATE_CHUNK", 2)  # walk in several flushes
    db = tmp_path / "gk.db"
    china = [f"198.51.100.{i}" for i in range(1, 6)]
    everyone = [*china, "192.0.2.1", "10.0.0.1"]
    moved = dict(CITY_NETWORKS)
    moved["198.51.100.0/24"] = {
        **CITY_NETWORKS["198.51.100.0/24"],
        "city": {"names": {"en": "Guangzhou"}},
        "location": {"latitude": 23.1291, "longitude": 113.2644},
    }
    first, second = city(city_db), city(make_city_db(tmp_path / "New.mmdb", moved))
    flushes: list[int] = []

    async def flush_until_done(rec: Recorder) -> None:
        count = 0
        await rec.flush()
        while rec._geo_due():
            count += 1
            assert count < 20
            await rec.flush()
        flushes.append(count + 1)

    async def step(rec: Recorder) -> None:
        # Rejected while no database could be read: no location yet.
        for address in everyone:
            rec.rejected(rejected(address))
        await rec.flush()
        assert locations(db) == {}
        # A database appears (a reload): the earlier addresses are located, a chunk a flush.
        rec.locator = first
        await flush_until_done(rec)
        assert len(locations(db)) == len(everyone) and epoch(db) == first.epoch
        assert locations(db)["198.51.100.3"] == CN_ROW
        # Another database: everything is located again; the old answer stays meanwhile.
        rec.locator = second
        await rec.flush()
        assert epoch(db) == ""  # some rows are still of the previous database
        assert len(locations(db)) == len(everyone)
        await flush_until_done(rec)
        assert epoch(db) == second.epoch

    run_recorder(Recorder(db, flush_interval=3600, locator=None), step)
    assert flushes[0] >= 4  # 7 addresses in chunks of 2
    rows = locations(db)
    assert {rows[a][2:] for a in china} == {("Guangdong", "Guangzhou", 23.1291, 113.2644)}
    assert rows["10.0.0.1"] == UNKNOWN_ROW and rows["192.0.2.1"][0] == "GB"

    # A restart with the same database redoes nothing; with the first one, everything.
    run_recorder(Recorder(db, flush_interval=3600, locator=second), flush_until_done)
    assert flushes[-1] == 1 and locations(db) == rows
    run_recorder(Recorder(db, flush_interval=3600, locator=first), flush_until_done)
    assert locations(db)["198.51.100.3"] == CN_ROW and epoch(db) == first.epoch


def test_purged_addresses_are_located_again(tmp_path: Path, city_db: Path) -> None:
    db = tmp_path / "gk.db"
    recorder = Recorder(db, flush_interval=3600, retention=86400, locator=city(city_db))

    async def step(rec: Recorder) -> None:
        rec.rejected(rejected("198.51.100.7"))
        await rec.flush()
        assert "198.51.100.7" in locations(db)
        assert await rec.purge(now=time.time() + 10 * 86400) == 1
        assert locations(db) == {}
        rec.rejected(rejected("198.51.100.7"))
        await rec.flush()

    run_recorder(recorder, step)
    assert locations(db) == {"198.51.100.7": CN_ROW}

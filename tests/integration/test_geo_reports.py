"""GeoIP end to end: country rules at accept, locations in the report, database changes.

Clients claim their addresses with PROXY headers, so one test machine knocks from China,
Britain, the United States, Japan and nowhere known. The report is read after the daemon
stopped (every record written, PRODUCT.md: "Stop").
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.geo_fixtures import CITY_CASES, CITY_NETWORKS, SHARED_CITY_CASES, make_city_db
from tests.integration.harness import (
    BANNER,
    Daemon,
    Upstream,
    connect,
    read_until_closed,
    recv_exactly,
    wait_for,
)


class Knockers(NamedTuple):
    """Client addresses of one database, by what the rules make of them."""

    china: tuple[str, str]  # denied by the country rule
    britain_denied: str  # denied by a network rule (more specific than the country rule)
    britain: str  # allowed by the country rule
    states: str  # no rule: the default (deny)
    japan: str  # IPv6, allowed by the country rule
    nowhere: str  # not in the database: the default


BUILT = Knockers(("198.51.100.7", "198.51.100.8"), "192.0.2.1", "192.0.2.2", "192.0.2.200",
                 "2001:db8:1::1", "10.9.9.9")  # fmt: skip
MAXMIND = Knockers(("175.16.199.1", "175.16.199.2"), "81.2.69.142", "81.2.69.143",
                   "216.160.83.56", "2001:218::1", "10.9.9.9")  # fmt: skip


def rules(knockers: Knockers) -> dict[str, Any]:
    return {
        "default": "deny",
        "allow": [{"country": ["GB", "JP"]}],
        "deny": [{"country": ["CN"], "comment": "no business there"}, knockers.britain_denied],
    }


def listener(upstream: Upstream) -> dict[str, Any]:
    return {"name": "tel", "protocol": "telnet", "listen": "127.0.0.1:0",
            "upstream": upstream.address, "proxy_protocol": ["127.0.0.1/32"]}  # fmt: skip


def gatekeeper(daemon: Daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", *args, "-c", str(daemon.config_path)],
        check=check, capture_output=True, text=True, cwd=daemon.workdir,
    )  # fmt: skip


def report(daemon: Daemon) -> dict[str, Any]:
    out = gatekeeper(daemon, "report", "--format", "json", "--level", "detail").stdout
    result: dict[str, Any] = json.loads(out)
    return result


def deny_country_line(daemon: Daemon) -> int:
    """The line of the ``{country: [CN]}`` item in the rule file the harness wrote."""
    lines = daemon.rules_path.read_text().splitlines()
    return lines.index("deny:") + 2


def knock(daemon: Daemon, claim: str) -> bytes:
    with connect(daemon.address("tel"), claim=claim) as sock:
        return read_until_closed(sock)


def get_in(daemon: Daemon, claim: str) -> None:
    with connect(daemon.address("tel"), claim=claim) as sock:
        assert recv_exactly(sock, len(BANNER)) == BANNER


def location_rows(db: Path) -> dict[str, tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return {row[0]: row[1:] for row in conn.execute("SELECT * FROM locations")}
    finally:
        conn.close()


def map_link(lat: float | None, lon: float | None) -> str | None:
    if lat is None or lon is None:
        return None
    return f"https://www.openstreetmap.org/?mlat={lat}&mlon={lon}"


@pytest.mark.parametrize("dataset", ["built", "maxmind"])
def test_country_rules_and_locations_in_the_report(
    daemon: Any, upstream: Upstream, request: pytest.FixtureRequest, dataset: str
) -> None:
    if dataset == "built":
        mmdb, who, cases = request.getfixturevalue("city_db"), BUILT, CITY_CASES
    else:
        mmdb, who, cases = request.getfixturevalue("shared_city_db"), MAXMIND, SHARED_CITY_CASES
    d: Daemon = daemon(
        {"geoip": {"city": str(mmdb)}, "listeners": [listener(upstream)]}, rules(who)
    ).start()

    # lookup: the country rule decides, and says where it is written.
    (row,) = json.loads(
        gatekeeper(d, "lookup", who.china[0], "--listener", "tel", "--format", "json").stdout
    )
    assert row == {"listener": "tel", "action": "deny", "reason": "country", "match": "CN",
                   "source": f"{d.rules_path}:{deny_country_line(d)}"}  # fmt: skip
    text = gatekeeper(d, "lookup", who.china[0], "--listener", "tel").stdout
    assert text.split("\t")[2:4] == ["country", "CN"]

    attempts = {who.china[0]: 2, who.china[1]: 1, who.britain_denied: 1, who.states: 2,
                who.nowhere: 1}  # fmt: skip
    for address, times in attempts.items():
        for _ in range(times):
            assert knock(d, address) == b""  # telnet: a plain close, no banner
    get_in(d, who.britain)
    get_in(d, who.japan)
    assert upstream.connections == 2  # no rejected client reached the upstream
    assert d.stop() == 0

    rep = report(d)
    assert (rep["addresses"], rep["attempts"]) == (5, 7)
    # Each address's location, straight from the database.
    by_address = {e["address"]: (loc, e) for loc in rep["locations"] for e in loc["entries"]}
    assert set(by_address) == set(attempts)
    reasons = {who.china[0]: "country", who.china[1]: "country", who.britain_denied: "network",
               who.states: "default", who.nowhere: "default"}  # fmt: skip
    for address, times in attempts.items():
        loc, entry = by_address[address]
        expected = cases[address]
        assert (entry["listener"], entry["attempts"], entry["reason"]) == (
            "tel", times, reasons[address])  # fmt: skip
        assert entry["new"] is True
        if expected is None:
            assert (loc["country"], loc["country_name"], loc["region"], loc["city"]) == (
                None, "unknown", None, None)  # fmt: skip
            assert loc["latitude"] is None and loc["map"] is None and entry["map"] is None
            continue
        got = (loc["country"], loc["country_name"], loc["region"], loc["city"],
               loc["latitude"], loc["longitude"])  # fmt: skip
        assert got == tuple(expected), address
        assert loc["map"] == entry["map"] == map_link(expected.latitude, expected.longitude)
    china = by_address[who.china[0]][0]
    assert (china["addresses"], china["attempts"]) == (2, 3)
    assert rep["locations"][0]["country"] == "CN"  # the most addresses first
    # Countries ranked by addresses, unknown ones included (country null).
    assert rep["countries"] == [
        {"country": "CN", "country_name": "China", "addresses": 2, "percent": 40.0},
        {"country": "GB", "country_name": "United Kingdom", "addresses": 1, "percent": 20.0},
        {"country": "US", "country_name": "United States", "addresses": 1, "percent": 20.0},
        {"country": None, "country_name": "unknown", "addresses": 1, "percent": 20.0},
    ]


def test_reload_picks_up_a_new_database(
    daemon: Any, upstream: Upstream, tmp_path: Path, city_db: Path
) -> None:
    mmdb = tmp_path / "geoip" / "City.mmdb"
    mmdb.parent.mkdir()
    mmdb.write_bytes(city_db.read_bytes())
    d: Daemon = daemon(
        {"geoip": {"city": "geoip/City.mmdb"}, "listeners": [listener(upstream)]}, rules(BUILT)
    ).start()
    assert knock(d, BUILT.china[0]) == b""
    wait_for(lambda: BUILT.china[0] in location_rows(d.database), what="a location row")
    assert location_rows(d.database)[BUILT.china[0]][3] == "Shenzhen"

    # geoipupdate's way: a new file renamed over the old one, then `systemctl reload`.
    # In the new edition, the Chinese network is in Guangzhou and the US one is Chinese.
    moved = dict(CITY_NETWORKS)
    china = CITY_NETWORKS["198.51.100.0/24"]
    moved["198.51.100.0/24"] = {
        **china,
        "city": {"names": {"en": "Guangzhou"}},
        "location": {"latitude": 23.1291, "longitude": 113.2644},
    }
    moved["192.0.2.128/25"] = china
    os.replace(make_city_db(tmp_path / "geoip" / "new.mmdb", moved), mmdb)
    d.reload()
    assert knock(d, BUILT.states) == b""
    (row,) = json.loads(
        gatekeeper(d, "lookup", BUILT.states, "--listener", "tel", "--format", "json").stdout
    )
    assert (row["reason"], row["match"]) == ("country", "CN")
    wait_for(
        lambda: location_rows(d.database).get(BUILT.china[0], ())[3:4] == ("Guangzhou",),
        what="the earlier address located again with the new database",
    )
    assert d.stop() == 0
    rep = report(d)
    entries = {e["address"]: (loc, e) for loc in rep["locations"] for e in loc["entries"]}
    assert entries[BUILT.china[0]][0]["city"] == "Guangzhou"
    assert entries[BUILT.states][0]["city"] == "Shenzhen"
    assert entries[BUILT.states][1]["reason"] == "country"
    assert [c["country"] for c in rep["countries"]] == ["CN"]


def test_missing_database_warns_once_and_locations_are_unknown(
    daemon: Any, upstream: Upstream, tmp_path: Path
) -> None:
    rule_file = {"default": "allow", "deny": [{"country": ["CN"]}, "10.66.0.0/16"]}
    d: Daemon = daemon(
        {"geoip": {"city": "geoip/missing.mmdb"}, "listeners": [listener(upstream)]}, rule_file
    ).start()
    get_in(d, BUILT.china[0])  # the country rule cannot match: the default lets it in
    assert knock(d, "10.66.1.1") == b""
    assert knock(d, "10.66.1.1") == b""
    checked = gatekeeper(d, "check", check=False)
    assert checked.returncode == 1
    line = d.config_path.read_text().splitlines().index("  city: geoip/missing.mmdb") + 1
    assert checked.stderr.startswith(
        f"{d.config_path}:{line}: geoip.city: {tmp_path}/geoip/missing.mmdb: not found"
    )
    assert d.stop() == 0

    warnings = [line for line in d.output().splitlines() if "missing.mmdb" in line]
    assert len(warnings) == 1, d.output()
    assert "WARNING" in warnings[0] and "country rules match nothing" in warnings[0]
    assert "Traceback" not in d.output()
    rep = report(d)
    (loc,) = rep["locations"]
    assert (loc["country"], loc["country_name"], loc["region"], loc["city"], loc["map"]) == (
        None, "unknown", None, None, None)  # fmt: skip
    assert (loc["addresses"], loc["attempts"]) == (1, 2)
    assert rep["countries"] == [
        {"country": None, "country_name": "unknown", "addresses": 1, "percent": 100.0}
    ]


def test_asn_is_recorded_with_the_location(
    daemon: Any, upstream: Upstream, city_db: Path, asn_db: Path
) -> None:
    """With geoip.asn, each rejected address carries its network (AS number, owner)."""
    geoip = {"city": str(city_db), "asn": str(asn_db)}
    d: Daemon = daemon({"geoip": geoip, "listeners": [listener(upstream)]}, rules(BUILT)).start()
    for address in (BUILT.china[0], BUILT.nowhere):
        assert knock(d, address) == b""
    assert d.stop() == 0
    entries = {e["address"]: e for loc in report(d)["locations"] for e in loc["entries"]}
    assert (entries[BUILT.china[0]]["asn"], entries[BUILT.china[0]]["organisation"]) == (
        64500, "Example Backbone")  # fmt: skip
    assert (entries[BUILT.nowhere]["asn"], entries[BUILT.nowhere]["organisation"]) == (None, None)

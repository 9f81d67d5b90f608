"""Small GeoIP databases made with ``mmdb-writer``, shaped like MaxMind's, for any test.

``make_city_db(path)`` writes a GeoLite2-City-like database (IPv6 tree, IPv4 networks in
``::/96``) with the networks of ``CITY_NETWORKS``; ``CITY_CASES`` says what each of its
addresses must locate to. ``make_asn_db(path)`` writes a GeoLite2-ASN-like one.
``SHARED_GEOIP`` is where MaxMind's own test databases are when ``shared/`` is beside the
repository (it is not in a clone of the project: tests using it skip then), and
``SHARED_CITY_CASES`` lists their known entries (DESIGN.md, "Test data").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from mmdb_writer import MMDBWriter
from netaddr import IPSet

SHARED_GEOIP = Path(__file__).resolve().parents[1].parent / "shared" / "geoip"
SHARED_CITY = SHARED_GEOIP / "GeoLite2-City-Test.mmdb"
SHARED_ASN = SHARED_GEOIP / "GeoLite2-ASN-Test.mmdb"


class Expected(NamedTuple):
    """What an address must locate to."""

    country: str | None
    country_name: str
    region: str | None
    city: str | None
    latitude: float | None
    longitude: float | None


def _names(en: str, **other: str) -> dict[str, str]:
    return {"en": en, **other}


def _country(code: str, name: str, geoname_id: int) -> dict[str, Any]:
    return {"iso_code": code, "geoname_id": geoname_id, "names": _names(name, de=name)}


CHINA = _country("CN", "China", 1814991)
BRITAIN = _country("GB", "United Kingdom", 2635167)
STATES = _country("US", "United States", 6252001)
JAPAN = _country("JP", "Japan", 1861060)
GERMANY = _country("DE", "Germany", 2921044)

# Documentation networks (RFC 5737, RFC 3849): nothing real is ever in them.
CITY_NETWORKS: dict[str, dict[str, Any]] = {
    # China: a province and a city.
    "198.51.100.0/24": {
        "continent": {"code": "AS", "names": _names("Asia")},
        "country": CHINA,
        "registered_country": CHINA,
        "subdivisions": [{"iso_code": "GD", "names": _names("Guangdong", de="Guangdong")}],
        "city": {"geoname_id": 1795565, "names": _names("Shenzhen")},
        "location": {
            "latitude": 22.5431,
            "longitude": 114.0579,
            "accuracy_radius": 50,
            "time_zone": "Asia/Shanghai",
        },
    },
    # Britain: England is the first subdivision, Greater London the second.
    "192.0.2.0/25": {
        "continent": {"code": "EU", "names": _names("Europe")},
        "country": BRITAIN,
        "registered_country": BRITAIN,
        "subdivisions": [
            {"iso_code": "ENG", "names": _names("England")},
            {"iso_code": "LND", "names": _names("Greater London")},
        ],
        "city": {"geoname_id": 2643743, "names": _names("London")},
        "location": {"latitude": 51.5074, "longitude": -0.1278, "accuracy_radius": 20},
    },
    # The United States with no subdivision and no city: the country's centroid.
    "192.0.2.128/25": {
        "continent": {"code": "NA", "names": _names("North America")},
        "country": STATES,
        "registered_country": STATES,
        "location": {"latitude": 37.751, "longitude": -97.822, "accuracy_radius": 1000},
    },
    # Japan over IPv6.
    "2001:db8:1::/48": {
        "continent": {"code": "AS", "names": _names("Asia")},
        "country": JAPAN,
        "registered_country": JAPAN,
        "subdivisions": [{"iso_code": "13", "names": _names("Tokyo")}],
        "city": {"names": _names("Tokyo")},
        "location": {"latitude": 35.6895, "longitude": 139.6917},
    },
    # Only a registered country (an anycast network): the country falls back to it.
    "203.0.113.0/24": {"registered_country": GERMANY},
}

CN = Expected("CN", "China", "Guangdong", "Shenzhen", 22.5431, 114.0579)
GB = Expected("GB", "United Kingdom", "England", "London", 51.5074, -0.1278)
US = Expected("US", "United States", None, None, 37.751, -97.822)
JP = Expected("JP", "Japan", "Tokyo", "Tokyo", 35.6895, 139.6917)
DE = Expected("DE", "Germany", None, None, None, None)

CITY_CASES: dict[str, Expected | None] = {
    "198.51.100.7": CN,
    "198.51.100.8": CN,
    "198.51.100.255": CN,
    "::ffff:198.51.100.8": CN,  # IPv4-mapped IPv6 is the IPv4 address
    "192.0.2.1": GB,
    "192.0.2.2": GB,
    "192.0.2.127": GB,
    "192.0.2.200": US,
    "2001:db8:1::1": JP,
    "2001:db8:1:ffff::9": JP,
    "203.0.113.5": DE,
    "10.0.0.1": None,  # unknown
    "10.9.9.9": None,
    "2001:db8:2::1": None,
    "198.51.101.1": None,
}

# MaxMind's GeoLite2-City-Test.mmdb (DESIGN.md, "Test data").
CHANGCHUN = Expected("CN", "China", "Jilin Sheng", "Changchun", 43.88, 125.3228)
LONDON = Expected("GB", "United Kingdom", "England", "London", 51.5142, -0.0931)
SHARED_CITY_CASES: dict[str, Expected | None] = {
    "175.16.199.0": CHANGCHUN,
    "175.16.199.1": CHANGCHUN,
    "175.16.199.2": CHANGCHUN,
    "175.16.199.255": CHANGCHUN,
    "81.2.69.142": LONDON,  # 81.2.69.142/31 and 81.2.69.144/28
    "81.2.69.143": LONDON,
    "81.2.69.150": LONDON,
    # The first subdivision (England), not the most specific one (West Berkshire).
    "2.125.160.216": Expected("GB", "United Kingdom", "England", "Boxford", 51.75, -1.25),
    "89.160.20.112": Expected("SE", "Sweden", "Östergötland County", "Linköping", 58.4167, 15.6167),
    "216.160.83.56": Expected("US", "United States", "Washington", "Milton", 47.2513, -122.3149),
    "67.43.156.1": Expected("BT", "Bhutan", None, None, 27.5, 90.5),
    "2001:218::1": Expected("JP", "Japan", None, None, 35.68536, 139.75309),
    "1.1.1.1": None,
    "10.0.0.1": None,
    "10.9.9.9": None,
    "::1": None,
}

ASN_NETWORKS: dict[str, dict[str, Any]] = {
    "198.51.100.0/24": {"autonomous_system_number": 64500, "autonomous_system_organization":
                        "Example Backbone"},
    "2001:db8:1::/48": {"autonomous_system_number": 64501},
}  # fmt: skip


def _write(
    path: Path, database_type: str, networks: dict[str, dict[str, Any]], description: str
) -> Path:
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description=description,
    )
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(path))
    return path


def make_city_db(
    path: Path,
    networks: dict[str, dict[str, Any]] | None = None,
    database_type: str = "GeoLite2-City",
) -> Path:
    """Write a City database to ``path`` (default networks: ``CITY_NETWORKS``)."""
    chosen = CITY_NETWORKS if networks is None else networks
    return _write(path, database_type, chosen, "gatekeeper test City database")


def make_asn_db(path: Path, networks: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write an ASN database to ``path`` (default networks: ``ASN_NETWORKS``)."""
    chosen = ASN_NETWORKS if networks is None else networks
    return _write(path, "GeoLite2-ASN", chosen, "gatekeeper test ASN database")

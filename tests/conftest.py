"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.geo_fixtures import SHARED_CITY, make_asn_db, make_city_db


@pytest.fixture(scope="session")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GeoLite2-City-like database (``tests.geo_fixtures.CITY_NETWORKS``)."""
    return make_city_db(tmp_path_factory.mktemp("geoip") / "City.mmdb")


@pytest.fixture(scope="session")
def asn_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GeoLite2-ASN-like database (``tests.geo_fixtures.ASN_NETWORKS``)."""
    return make_asn_db(tmp_path_factory.mktemp("geoip") / "ASN.mmdb")


@pytest.fixture(scope="session")
def shared_city_db() -> Path:
    """MaxMind's GeoLite2-City-Test.mmdb from ``../shared/geoip``; skips when absent."""
    if not SHARED_CITY.is_file():
        pytest.skip(f"{SHARED_CITY} is not here (only beside the project's own checkout)")
    return SHARED_CITY

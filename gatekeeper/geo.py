"""Where an address is: MaxMind GeoIP2/GeoLite2 databases behind one small class.

``GeoLocator.open(settings)`` never raises: a database that is missing, unreadable, not
an mmdb file or of the wrong type logs one warning naming the file and what to do, and
the locator answers "unknown" (``None``) for it. ``check(settings)`` finds the same
problems for ``gatekeeper check``, where they are errors.

No disk I/O on the accept path: with maxminddb's C extension the file is memory-mapped
(``MODE_MMAP_EXT``) and read ahead into the page cache at open; without it, it is read
into memory whole (``MODE_MEMORY``). A database is replaced by writing a new file and
renaming it over the old one (as ``geoipupdate`` does); the mapped old file stays valid
until the next reload opens the new one. Answers are cached in bounded LRU caches, so a
repeated address costs a dict hit; ``country()`` is what the rules call at accept.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import geoip2.database
import geoip2.errors
import maxminddb

from gatekeeper.settings import GeoipSettings, normalise_address

__all__ = ["UNKNOWN", "GeoLocator", "Location", "check", "database_problems"]

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"  # country_name of a location without a country
LOCALES = ["en"]  # names are shown in English (PRODUCT.md's report: "Quebec", "Montreal")

# Cache sizes, in addresses. A country entry is a key and a two-letter code (~200 bytes):
# 65,536 cover the distinct sources of a large flood in about 13 MB. A location holds a
# few strings (~600 bytes): the recorder looks each new address up once, so fewer do.
COUNTRY_CACHE = 65_536
LOCATION_CACHE = 16_384

# Substrings of the metadata's ``database_type`` each setting accepts:
# "GeoLite2-City", "GeoIP2-City", "GeoIP2-Enterprise", "GeoLite2-Country", "DBIP-City-Lite"…
_CITY_TYPES = ("City", "Enterprise", "Country")
_ASN_TYPES = ("ASN", "ISP")
_KINDS = {"city": _CITY_TYPES, "asn": _ASN_TYPES}
_WANTED = {
    "city": "a City or Country database (GeoLite2-City.mmdb)",
    "asn": "an ASN database (GeoLite2-ASN.mmdb)",
}
_PROBE = "192.0.2.1"  # TEST-NET-1: in no database, but a lookup walks the search tree
_READAHEAD = getattr(os, "POSIX_FADV_WILLNEED", None)


def _has_extension() -> bool:
    try:
        from maxminddb import extension
    except ImportError:
        return False
    return hasattr(extension, "Reader")


# The mode the daemon reads in: memory-mapped by the C extension, or all in memory.
_MODE = maxminddb.MODE_MMAP_EXT if _has_extension() else maxminddb.MODE_MEMORY


@dataclass(frozen=True, slots=True)
class Location:
    """Where an address is. Unknown fields are None; ``country_name`` is English."""

    country: str | None  # ISO 3166 code; the registered country when no other is known
    country_name: str  # "unknown" when country is None
    region: str | None  # the first subdivision: state, province, England
    city: str | None
    latitude: float | None
    longitude: float | None
    asn: int | None = None
    organisation: str | None = None


@dataclass(frozen=True, slots=True)
class _Database:
    """One open database and how to ask it."""

    kind: str  # "city" or "asn"
    path: Path
    reader: geoip2.database.Reader
    database_type: str
    build_epoch: int
    signature: tuple[int, int, int, int]  # (device, inode, size, mtime_ns): same file?
    ask: Callable[[Address], Any]  # the reader's method for this type; raises if absent

    def describe(self) -> str:
        built = datetime.fromtimestamp(self.build_epoch, UTC).strftime("%Y-%m-%d")
        return f"{self.database_type} built {built}"


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _method(reader: geoip2.database.Reader, kind: str, database_type: str) -> Callable[..., Any]:
    if kind == "asn":
        return reader.asn if "ASN" in database_type else reader.isp
    if "City" in database_type:
        return reader.city
    if "Enterprise" in database_type:
        return reader.enterprise
    return reader.country


def _open(kind: str, path: Path, mode: int) -> _Database | str:
    """The open database, or what is wrong with it (a message starting with the path)."""
    shown = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (
            f"{shown}: not found; install it (e.g. with geoipupdate) or fix the path"
            if kind == "city"
            else f"{shown}: not found; install it or remove geoip.asn"
        )
    except OSError as exc:
        return f"{shown}: cannot be read: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"{shown}: not a file; write the path of the .mmdb file"
    try:
        reader = geoip2.database.Reader(shown, locales=LOCALES, mode=mode)
    except PermissionError:
        return f"{shown}: cannot be read: permission denied; let gatekeeper's user read it"
    except OSError as exc:
        return f"{shown}: cannot be read: {exc.strerror or exc}"
    except Exception:  # InvalidDatabaseError, ValueError: empty, truncated, another format
        return (
            f"{shown}: not a MaxMind DB (.mmdb) file, or an incomplete one; download "
            f"{_WANTED[kind]} from MaxMind (the .mmdb itself, not the CSV or the .tar.gz)"
        )
    try:
        database = _inspect(kind, path, reader, st)
    except Exception as exc:
        database = f"{shown}: the database is damaged ({exc}); download it again"
    if isinstance(database, str):
        reader.close()
        return database
    if mode == maxminddb.MODE_MMAP_EXT and _READAHEAD is not None:
        _read_ahead(path, st.st_size)
    return database


def _inspect(
    kind: str, path: Path, reader: geoip2.database.Reader, st: os.stat_result
) -> _Database | str:
    """Check the type of an open database and that a lookup works."""
    metadata = reader.metadata()
    database_type = str(metadata.database_type)
    if not any(t in database_type for t in _KINDS[kind]):
        return f"{path}: is a {database_type} database; geoip.{kind} needs {_WANTED[kind]}"
    ask = _method(reader, kind, database_type)
    # A damaged search tree or data section shows here. Not found is fine, and so is
    # ValueError: an IPv4 address asked of an IPv6-only database.
    with contextlib.suppress(geoip2.errors.AddressNotFoundError, ValueError):
        ask(_PROBE)
    return _Database(
        kind, path, reader, database_type, int(metadata.build_epoch), _signature(st), ask
    )


def _read_ahead(path: Path, size: int) -> None:
    """Ask the kernel to bring the mapped file into the page cache now, not at accept."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, size, _READAHEAD)  # type: ignore[arg-type]
    except OSError:
        pass
    finally:
        os.close(fd)


def database_problems(settings: GeoipSettings | None) -> list[tuple[str, str]]:
    """(setting, message) for each configured database that cannot be used."""
    found: list[tuple[str, str]] = []
    if settings is None:
        return found
    for kind in ("city", "asn"):
        path: Path | None = getattr(settings, kind)
        if path is None:
            continue
        opened = _open(kind, path, maxminddb.MODE_AUTO)
        if isinstance(opened, str):
            found.append((kind, opened))
        else:
            opened.reader.close()
    return found


def check(settings: GeoipSettings | None) -> list[str]:
    """What ``gatekeeper check`` reports: ``"geoip.city: PATH: problem; what to do"``."""
    return [f"geoip.{kind}: {message}" for kind, message in database_problems(settings)]


class GeoLocator:
    """Addresses to locations and country codes; "unknown" (None) when it cannot tell."""

    def __init__(
        self,
        city: _Database | None = None,
        asn: _Database | None = None,
        *,
        configured: bool = False,
    ) -> None:
        """Use ``open``; ``GeoLocator()`` answers "unknown" to everything."""
        self._city = city
        self._asn = asn
        self.configured = configured  # a city database is named in the config
        self._located = lru_cache(maxsize=LOCATION_CACHE)(self._locate)
        self._countries = lru_cache(maxsize=COUNTRY_CACHE)(self._country)
        self._failing = False  # a lookup failed unexpectedly (logged once)

    @classmethod
    def open(cls, settings: GeoipSettings | None, previous: GeoLocator | None = None) -> GeoLocator:
        """Open the databases ``settings`` names; never raises. A file that cannot be used
        logs one warning and is left out. ``previous`` (at reload) is given back as it is,
        caches and all, when it has the same files, unchanged on disk."""
        if settings is None:
            return cls()
        if previous is not None and previous._same_files(settings):
            return previous
        opened: dict[str, _Database | None] = {"city": None, "asn": None}
        for kind in ("city", "asn"):
            path: Path | None = getattr(settings, kind)
            if path is None:
                continue
            result = _open(kind, path, _MODE)
            if isinstance(result, str):
                what = (
                    "locations are unknown and country rules match nothing"
                    if kind == "city"
                    else "AS numbers are unknown"
                )
                log.warning(
                    "geoip.%s: %s; %s until the file is fixed and gatekeeper reloaded",
                    kind,
                    result,
                    what,
                )
            else:
                opened[kind] = result
                log.info("geoip.%s: %s (%s)", kind, path, result.describe())
        return cls(opened["city"], opened["asn"], configured=settings.city is not None)

    def _same_files(self, settings: GeoipSettings) -> bool:
        for kind, held in (("city", self._city), ("asn", self._asn)):
            path: Path | None = getattr(settings, kind)
            if path is None and held is None:
                continue
            if path is None or held is None or held.path != path:
                return False
            try:
                if _signature(os.stat(path)) != held.signature:
                    return False
            except OSError:
                return False
        return True

    @property
    def available(self) -> bool:
        """Is a city (or country) database open?"""
        return self._city is not None

    @property
    def epoch(self) -> str:
        """Names the city database's content: it changes when another file is opened.

        The recorder stores it; a change means the stored locations are stale.
        """
        db = self._city
        if db is None:
            return "none"
        _dev, _ino, size, mtime_ns = db.signature
        return f"{db.database_type} {db.build_epoch} {size} {mtime_ns} {db.path}"

    def describe(self) -> str:
        """For the log: which databases are open."""
        parts = [f"{db.kind} {db.describe()}" for db in (self._city, self._asn) if db]
        return ", ".join(parts) or "no GeoIP database"

    def close(self) -> None:
        for db in (self._city, self._asn):
            if db is not None:
                db.reader.close()
        self._city = self._asn = None
        self._located.cache_clear()
        self._countries.cache_clear()

    # -- lookups ------------------------------------------------------------------------

    def locate(self, address: str) -> Location | None:
        """Where ``address`` is; None when no database knows it (or none is open)."""
        return self._located(address)

    def country(self, address: str | Address) -> str | None:
        """The ISO country code of ``address`` (for country rules), or None."""
        return self._countries(address)

    def _country(self, address: str | Address) -> str | None:
        location = self._located(str(address))
        return location.country if location is not None else None

    def _locate(self, text: str) -> Location | None:
        city, asn = self._city, self._asn
        if city is None and asn is None:
            return None
        try:
            address = normalise_address(text)
        except ValueError:
            return None
        found = self._ask(city, address)
        network = self._ask(asn, address)
        if found is None and network is None:
            return None
        location = _location(found) if found is not None else _NOWHERE
        if network is not None:
            location = Location(
                location.country,
                location.country_name,
                location.region,
                location.city,
                location.latitude,
                location.longitude,
                network.autonomous_system_number,
                network.autonomous_system_organization,
            )
        return location

    def _ask(self, db: _Database | None, address: Address) -> Any:
        if db is None:
            return None
        try:
            return db.ask(address)
        except (geoip2.errors.AddressNotFoundError, ValueError):
            return None  # not in it; or IPv6 asked of an IPv4-only database
        except Exception as exc:  # a damaged database: say it once, answer "unknown"
            if not self._failing:
                self._failing = True
                log.error("geoip.%s: %s: lookup failed: %s", db.kind, db.path, exc)
            return None


_NOWHERE = Location(None, UNKNOWN, None, None, None, None)


def _location(model: Any) -> Location:
    """A geoip2 City, Country or Enterprise model as a Location."""
    country = model.country
    code = country.iso_code
    name = country.name
    if code is None:  # an anycast or satellite network: where it is registered
        registered = model.registered_country
        code, name = registered.iso_code, registered.name
    region = city = latitude = longitude = None
    if hasattr(model, "subdivisions"):
        if model.subdivisions:
            first = model.subdivisions[0]
            region = first.name or first.iso_code
        city = model.city.name
        latitude = model.location.latitude
        longitude = model.location.longitude
    return Location(
        code,
        (name or code) if code is not None else UNKNOWN,
        region,
        city,
        latitude,
        longitude,
    )

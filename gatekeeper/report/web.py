"""``gatekeeper web``: the report pages (aiohttp + jinja2), read-only.

Paths (PRODUCT.md): ``/`` (menu), ``/report?level=&service=&since=&until=&page=``,
``/stats?since=&until=``, and the same data as ``/report.json``, ``/report.csv`` and
``/stats.json`` — for the same query they are byte for byte what ``gatekeeper report`` and
``gatekeeper stats`` print; with ``page=`` they hold that page only, as on screen.

- Database reads run in a thread on a read-only connection (``asyncio.to_thread``): a slow
  query never stalls the pages, and WAL means it never blocks the daemon.
- Everything an attacker controls (user names, addresses, reasons) goes through jinja2's
  autoescape; no template marks data ``|safe``. Charts are inline SVG computed here, with
  no script, no font and no external resource: the pages work offline, only the
  OpenStreetMap links leave the machine. A strict Content-Security-Policy backs that up.
- Bound to a loopback address, no login is needed; anywhere else the server refuses to
  start unless ``web: {user, password_hash}`` is configured, and with credentials every
  request needs HTTP Basic auth (PBKDF2-HMAC-SHA256, constant-time comparisons).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import secrets
import signal
import string
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import yaml
from aiohttp import web

from gatekeeper import __version__
from gatekeeper.errors import GatekeeperError
from gatekeeper.report import query, render
from gatekeeper.report.stats import Stats, day_ranges, trend_stats
from gatekeeper.settings import PASSWORD_SCHEME, PasswordHash, Settings, WebAuth

log = logging.getLogger(__name__)

PAGE_SIZE = 200  # addresses per page at level detail: a page stays quick to render and read
# OWASP's 2023 figure for PBKDF2-HMAC-SHA256; verified once per browser session (cached).
DEFAULT_ITERATIONS = 600_000
DB_READERS = 2  # report queries at once (each in a thread); more wait their turn
REALM = "gatekeeper"

# No script at all; style only from our own /style.css; images only ours or inline data
# (the favicon is a data: URL); the menu's form only submits to ourselves.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a map link does not tell OpenStreetMap our URL
    "Cache-Control": "no-store",
}

# Slice colours of the pie (Tableau 10, readable on white); unknown locations are grey.
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#2f4b7c",
)  # fmt: skip
UNKNOWN_COLOUR = "#bab0ac"


# -- credentials ---------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or the name localhost: only this machine can connect."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything


def _line_of(path: Path, keys: tuple[str, ...]) -> int | None:
    """The 1-based line of ``keys`` (a path of mapping keys) in a YAML file, if found."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None
        found = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key]
        if not found:
            return None
        name, node = found[-1]  # the last one wins, as in YAML
        line = name.start_mark.line + 1
    return line


def check_exposure(settings: Settings) -> None:
    """Refuse to serve beyond loopback without credentials: GatekeeperError naming the
    file and the line of ``web.listen``."""
    listen = settings.web_listen
    if settings.web_auth is None and not is_loopback(listen.host):
        line = _line_of(settings.path, ("web", "listen"))
        where = f"{settings.path}:{line}" if line is not None else str(settings.path)
        raise GatekeeperError(
            f"{where}: web.listen {listen} is not a loopback address, and the "
            "report pages show who attacks you: configure a login first, "
            'web: {listen: "' + str(listen) + '", user: NAME, password_hash: "..."} '
            "(the hash line comes from 'gatekeeper web --hash-password'), or listen on "
            "127.0.0.1"
        )


def hash_password(
    password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: str | None = None
) -> str:
    """The ``pbkdf2_sha256$ITERATIONS$SALT$HASH`` line for ``web.password_hash``."""
    if salt is None:
        alphabet = string.ascii_letters + string.digits
        salt = "".join(secrets.choice(alphabet) for _ in range(22))
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return str(PasswordHash(iterations, salt, digest))


def verify_password(password: str, hashed: PasswordHash) -> bool:
    digest = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), hashed.salt.encode(), hashed.iterations
    )
    return hmac.compare_digest(digest, hashed.digest)


class _BasicAuth:
    """Checks ``Authorization: Basic …``. PBKDF2 is slow on purpose, so it runs in a thread,
    one at a time; a header that passed once is remembered (as its SHA-256) and passes
    with one constant-time comparison afterwards."""

    def __init__(self, auth: WebAuth) -> None:
        self.auth = auth
        self._user = auth.user.encode()
        self._good: bytes | None = None
        self._lock = asyncio.Lock()

    async def check(self, header: str | None) -> bool:
        if not header:
            return False
        token = hashlib.sha256(header.encode("utf-8", "surrogateescape")).digest()
        if self._good is not None and hmac.compare_digest(token, self._good):
            return True
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = (
                base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
            )
        except (binascii.Error, ValueError):
            return False
        if not sep:
            return False
        async with self._lock:
            ok = await asyncio.to_thread(verify_password, password, self.auth.password_hash)
        # Both comparisons always happen: the time taken does not tell which one failed.
        ok = hmac.compare_digest(user.encode(), self._user) & ok
        if ok:
            self._good = token
        return ok


# -- charts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Slice:
    """One country of the pie: an SVG path (or a full circle), its colour and legend."""

    key: str  # ISO code, or "unknown"
    label: str
    addresses: int
    percent: float
    colour: str
    path: str | None  # None: the only slice, drawn as a circle


PIE_RADIUS = 100.0
PIE_CENTRE = 110.0


def _point(fraction: float) -> tuple[float, float]:
    angle = 2 * math.pi * fraction - math.pi / 2  # from 12 o'clock, clockwise
    return PIE_CENTRE + PIE_RADIUS * math.cos(angle), PIE_CENTRE + PIE_RADIUS * math.sin(angle)


def pie_slices(countries: list[query.Country]) -> list[Slice]:
    """One slice per country, by rejected addresses, in the countries table's order."""
    total = sum(c.addresses for c in countries)
    slices: list[Slice] = []
    done = 0
    for i, c in enumerate(countries):
        colour = UNKNOWN_COLOUR if c.country is None else PALETTE[i % len(PALETTE)]
        label = f"{c.country} {c.country_name}" if c.country else c.country_name
        path: str | None = None
        if len(countries) > 1 and total:
            (x0, y0), (x1, y1) = _point(done / total), _point((done + c.addresses) / total)
            large = 1 if c.addresses * 2 > total else 0
            path = (
                f"M{PIE_CENTRE:.2f},{PIE_CENTRE:.2f} L{x0:.2f},{y0:.2f} "
                f"A{PIE_RADIUS:.2f},{PIE_RADIUS:.2f} 0 {large} 1 {x1:.2f},{y1:.2f} Z"
            )
        done += c.addresses
        slices.append(Slice(c.country or "unknown", label, c.addresses, c.percent, colour, path))
    return slices


@dataclass(frozen=True, slots=True)
class Bar:
    label: str  # the date (or first date of the week / the month)
    x: float
    width: float
    y: float
    height: float
    value: int
    kind: str  # "rejected" | "accepted"


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    y: float
    text: str


@dataclass(frozen=True, slots=True)
class BarChart:
    width: int
    height: int
    left: int
    top: int
    bottom: int  # y of the x axis
    right: int
    bars: list[Bar]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    unit: str  # "day" | "week" | "month"


CHART_W, CHART_H = 960, 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 12, 36


def _axis(value: int) -> tuple[int, int]:
    """The y axis for values up to ``value``: ``(top, step)``, the step being 1, 2 or 5
    times a power of ten and about a quarter of the top (whole numbers on every tick)."""
    step = 1
    while step * 4 < value:  # 1, 2, 5, 10, 20, 50, ...
        text = str(step)
        step = {"1": 2, "2": 5, "5": 10}[text[0]] * 10 ** (len(text) - 1)
    top = max(step, -(-value // step) * step)  # the first multiple of step at or above
    return top, step


def _buckets(daily: list[tuple[str, int, int]]) -> tuple[str, list[tuple[str, int, int]]]:
    """Days, or weeks (over three months), or months (over two years)."""
    if len(daily) <= 92:
        return "day", daily
    unit = "week" if len(daily) <= 731 else "month"
    sums: dict[str, list[int]] = {}
    for text, accepted, rejected in daily:
        day = date.fromisoformat(text)
        key = (day - timedelta(days=day.weekday())).isoformat() if unit == "week" else text[:7]
        pair = sums.setdefault(key, [0, 0])
        pair[0] += accepted
        pair[1] += rejected
    return unit, [(k, a, r) for k, (a, r) in sums.items()]


def bar_chart(stats: Stats) -> BarChart | None:
    """Rejected and accepted connections per day (all listeners), as SVG geometry."""
    daily = stats.daily_totals()
    if not daily:
        return None
    unit, buckets = _buckets(daily)
    top, step = _axis(max(max(a, r) for _, a, r in buckets))
    plot_w = CHART_W - _LEFT - _RIGHT
    plot_h = CHART_H - _TOP - _BOTTOM
    base = _TOP + plot_h
    slot = plot_w / len(buckets)
    bar_w = min(max(slot * 0.38, 0.6), 24.0)  # a few days do not make slabs
    bars: list[Bar] = []
    for i, (label, accepted, rejected) in enumerate(buckets):
        x = _LEFT + i * slot + (slot - 2 * bar_w) / 2
        for j, (kind, value) in enumerate((("rejected", rejected), ("accepted", accepted))):
            h = plot_h * value / top
            bars.append(Bar(label, round(x + j * bar_w, 2), round(bar_w, 2),
                            round(base - h, 2), round(h, 2), value, kind))  # fmt: skip
    every = max(1, math.ceil(len(buckets) / 10))  # at most about ten date labels
    x_ticks = [
        Tick(round(_LEFT + (i + 0.5) * slot, 2), base + 16, label)
        for i, (label, _, _) in enumerate(buckets)
        if i % every == 0
    ]
    y_ticks = [
        Tick(_LEFT - 6, round(base - plot_h * v / top, 2), f"{v:,}")
        for v in range(0, top + 1, step)
    ]
    return BarChart(CHART_W, CHART_H, _LEFT, _TOP, base, CHART_W - _RIGHT, bars,
                    x_ticks, y_ticks, unit)  # fmt: skip


# -- requests ------------------------------------------------------------------------------


class BadRequest(Exception):
    """A query parameter that cannot be used: 400 with this message."""


def _params(request: web.Request, known: tuple[str, ...]) -> dict[str, str | None]:
    """The known parameters (absent or empty: None); a repeated one is a bad request."""
    out: dict[str, str | None] = {}
    for name in known:
        values = request.query.getall(name, [])
        if len(values) > 1:
            raise BadRequest(f"{name}: given {len(values)} times; give it once")
        value = values[0].strip() if values else ""
        out[name] = value or None
    return out


def _bound(name: str, text: str | None, *, end: bool) -> query.Bound | None:
    if text is None:
        return None
    try:
        return query.parse_bound(text, end=end)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def _check_bounds(since: str | None, until: str | None) -> None:
    low, high = _bound("since", since, end=False), _bound("until", until, end=True)
    if low is not None and high is not None and low.when > high.when:
        raise BadRequest(f"since {since} is after until {until}: swap them")


@dataclass(frozen=True, slots=True)
class ReportQuery:
    level: str
    service: str
    since: str | None
    until: str | None
    page: int | None  # None: not asked (the page shows page 1; a download has everything)

    def params(self, **change: Any) -> dict[str, str]:
        values = {"level": self.level, "service": self.service, "since": self.since,
                  "until": self.until, "page": self.page}  # fmt: skip
        values.update(change)
        return {k: str(v) for k, v in values.items() if v is not None}


def _local(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _url(path: str, params: Mapping[str, str]) -> str:
    return f"{path}?{urlencode(params)}" if params else path


class Pages:
    """The handlers, with what they share: settings, templates, the readers' semaphore."""

    def __init__(self, settings: Settings, page_size: int) -> None:
        self.settings = settings
        self.page_size = page_size
        self.listeners = [x.name for x in settings.listeners]
        self.letters = {x.name: x.letter for x in settings.listeners}
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("gatekeeper.report", "templates"),
            autoescape=True,  # every {{ }} is escaped; no template uses |safe on data
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["local"] = _local
        self.env.filters["num"] = lambda n: f"{n:,}"
        self.env.globals["version"] = __version__
        self.style = (
            resources.files("gatekeeper.report").joinpath("templates", "style.css").read_bytes()
        )
        self._readers = asyncio.Semaphore(DB_READERS)

    def _html(self, template: str, status: int = 200, **context: Any) -> web.Response:
        zone = time.strftime("%Z") or "local time"
        body = self.env.get_template(template).render(
            listeners=self.listeners, zone=zone, **context
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    async def _read(self, func: Callable[..., Any], /, **kwargs: Any) -> Any:
        async with self._readers:
            try:
                return await asyncio.to_thread(func, self.settings.database, **kwargs)
            except ValueError as exc:  # arguments the checks above let through
                raise BadRequest(str(exc)) from None

    # -- the rejection report --

    def _report_query(self, request: web.Request) -> ReportQuery:
        p = _params(request, ("level", "service", "since", "until", "page"))
        level = p["level"] or "summary"
        if level not in query.LEVELS:
            raise BadRequest(f"level {level!r}: use summary or detail")
        service = p["service"] or query.BOTH
        if service != query.BOTH and service not in self.listeners:
            raise BadRequest(f"service {service!r}: use one of {', '.join(self.listeners)} or both")
        _check_bounds(p["since"], p["until"])
        page = None
        if p["page"] is not None:
            text = p["page"]
            if not (text.isascii() and text.isdigit()) or int(text) < 1 or len(text) > 9:
                raise BadRequest(f"page {text!r}: use a page number from 1")
            page = int(text)
        return ReportQuery(level, service, p["since"], p["until"], page)

    async def _report(self, q: ReportQuery, *, paged: bool) -> query.Report:
        limit: int | None = None
        offset = 0
        if q.level == "detail" and (paged or q.page is not None):
            limit = self.page_size
            offset = ((q.page or 1) - 1) * self.page_size
        report: query.Report = await self._read(
            query.rejection_report, level=q.level, service=q.service, since=q.since,
            until=q.until, limit=limit, offset=offset,
        )  # fmt: skip
        return report

    async def report_page(self, request: web.Request) -> web.Response:
        q = self._report_query(request)
        report = await self._report(q, paged=True)
        pages = 1
        if report.level == "detail" and report.entries_total:
            pages = math.ceil(report.entries_total / self.page_size)
        page = q.page or 1
        # Downloads hold what is on screen: this page when there are several, else all.
        download = q.params(page=page if pages > 1 else None)
        shown = sum(len(loc.entries or ()) for loc in report.locations)
        slices = pie_slices(report.countries)
        return self._html(
            "report.html",
            q=q,
            report=report,
            slices=slices,
            colours={s.key: s.colour for s in slices},
            letters=self.letters,
            page=page,
            pages=pages,
            first=report.offset + 1 if shown else report.offset,
            shown=shown,
            prev_url=_url("/report", q.params(page=page - 1)) if page > 1 else None,
            next_url=_url("/report", q.params(page=page + 1)) if page < pages else None,
            json_url=_url("/report.json", download),
            csv_url=_url("/report.csv", download),
            title=f"Rejected connections - {report.level}",
        )

    async def report_json(self, request: web.Request) -> web.Response:
        report = await self._report(self._report_query(request), paged=False)
        return _download(render.render_json(report), "application/json",
                         f"gatekeeper-report-{report.level}.json")  # fmt: skip

    async def report_csv(self, request: web.Request) -> web.Response:
        report = await self._report(self._report_query(request), paged=False)
        return _download(render.render_csv(report), "text/csv",
                         f"gatekeeper-report-{report.level}.csv")  # fmt: skip

    # -- the trend report --

    async def _stats(self, request: web.Request) -> tuple[dict[str, str | None], Stats]:
        p = _params(request, ("since", "until"))
        _check_bounds(p["since"], p["until"])
        stats: Stats = await self._read(trend_stats, since=p["since"], until=p["until"])
        return p, stats

    async def stats_page(self, request: web.Request) -> web.Response:
        p, stats = await self._stats(request)
        params = {k: v for k, v in p.items() if v is not None}
        total = stats.accepted + stats.rejected
        return self._html(
            "stats.html",
            stats=stats,
            since=p["since"],
            until=p["until"],
            chart=bar_chart(stats),
            quiet=day_ranges(stats.quiet_days),
            rejected_share=round(100.0 * stats.rejected / total, 1) if total else None,
            json_url=_url("/stats.json", params),
            title="Connections per day",
        )

    async def stats_json(self, request: web.Request) -> web.Response:
        _, stats = await self._stats(request)
        return _download(render.render_stats_json(stats), "application/json",
                         "gatekeeper-stats.json")  # fmt: skip

    # -- the rest --

    async def index(self, request: web.Request) -> web.Response:
        _params(request, ())
        return self._html("index.html", title="Reports")

    async def stylesheet(self, request: web.Request) -> web.Response:
        return web.Response(body=self.style, content_type="text/css", charset="utf-8")

    def error(self, request: web.Request, status: int, message: str) -> web.Response:
        if request.path.endswith(".json"):
            return web.Response(
                text=json.dumps({"error": message}) + "\n", status=status,
                content_type="application/json",
            )  # fmt: skip
        if request.path.endswith(".csv"):
            return web.Response(text=message + "\n", status=status, content_type="text/plain")
        return self._html("error.html", status=status, message=message, title="Error")


def _download(text: str, content_type: str, filename: str) -> web.Response:
    response = web.Response(text=text, content_type=content_type, charset="utf-8")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


AUTH_KEY: web.AppKey[_BasicAuth | None] = web.AppKey("auth")
PAGES_KEY: web.AppKey[Pages] = web.AppKey("pages")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    pages = request.app[PAGES_KEY]
    try:
        return await handler(request)
    except BadRequest as exc:
        return pages.error(request, 400, str(exc))
    except GatekeeperError as exc:
        log.error("%s: %s", request.remote, exc)
        return pages.error(request, 503, str(exc))


@web.middleware
async def _login(request: web.Request, handler: _Handler) -> web.StreamResponse:
    auth = request.app[AUTH_KEY]
    if auth is not None and not await auth.check(request.headers.get("Authorization")):
        log.warning("%s: web login required or refused for %s", request.remote, request.path)
        raise web.HTTPUnauthorized(
            text="401: sign on to see gatekeeper's reports\n",
            headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
        )
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value


def make_app(settings: Settings, *, page_size: int = PAGE_SIZE) -> web.Application:
    """The report pages for ``settings``; GatekeeperError when they may not be served."""
    check_exposure(settings)
    pages = Pages(settings, page_size)
    app = web.Application(middlewares=[_login, _errors])
    app[PAGES_KEY] = pages
    app[AUTH_KEY] = _BasicAuth(settings.web_auth) if settings.web_auth is not None else None
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", pages.index)
    app.router.add_get("/report", pages.report_page)
    app.router.add_get("/report.json", pages.report_json)
    app.router.add_get("/report.csv", pages.report_csv)
    app.router.add_get("/stats", pages.stats_page)
    app.router.add_get("/stats.json", pages.stats_json)
    app.router.add_get("/style.css", pages.stylesheet)
    return app


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    app = make_app(settings)
    runner = web.AppRunner(app, access_log=log)
    await runner.setup()
    listen = settings.web_listen
    site = web.TCPSite(runner, listen.host, listen.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise GatekeeperError(f"web.listen {listen}: {exc.strerror or exc}") from None
    for address in runner.addresses:
        host, port = address[:2]
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        login = "with login" if settings.web_auth else "no login"
        log.info("serving the report pages on http://%s/ (%s)", shown, login)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


__all__ = [
    "PASSWORD_SCHEME",
    "BadRequest",
    "check_exposure",
    "hash_password",
    "is_loopback",
    "make_app",
    "serve",
    "verify_password",
]

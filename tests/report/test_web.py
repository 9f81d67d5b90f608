"""The report pages through aiohttp's test client: every path, downloads equal to the CLI's
output, 400s, escaping, security headers, no external resource, credentials."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gatekeeper import cli, config
from gatekeeper.errors import ConfigError, GatekeeperError
from gatekeeper.events import Outcome
from gatekeeper.report import query, web
from gatekeeper.settings import Settings, parse_password_hash
from tests.report.test_stats import D1, D3, D5, at, fill, rej, session

TZ = "EST5EDT,M3.2.0,M11.1.0"
EVIL = "<script>alert(1)</script>"
T = TypeVar("T")

LOCATIONS = [
    ("175.16.199.1", "CN", "China", "Jilin Sheng", "Changchun", 43.88, 125.3228),
    ("175.16.199.2", "CN", "China", "Jilin Sheng", "Changchun", 43.88, 125.3228),
    ("81.2.69.142", "GB", "United Kingdom", "England", "London", 51.5142, -0.0931),
    ("89.160.20.113", "SE", "Sweden", "Östergötland County", "Linköping", 58.4167, 15.6167),
]


@pytest.fixture(autouse=True)
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", TZ)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "var" / "gk.db"
    fill(
        path,
        [
            rej("175.16.199.1", at(D1, 8)),
            rej("175.16.199.1", at(D3, 8), "telnet"),
            rej("175.16.199.2", at(D3, 9), reason="network", rule="rules.yaml:7"),
            rej("81.2.69.142", at(D3, 10)),
            rej("89.160.20.113", at(D5, 11), "telnet"),
            rej("192.0.2.66", at(D5, 12), reason="user", user=EVIL),
            session(at(D1, 9), files_sent=2),
            session(at(D5, 12), address="192.0.2.66", user=EVIL, outcome=Outcome.DENIED_USER),
        ],
    )
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO locations"
            " (address, country, country_name, region, city, latitude, longitude)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            LOCATIONS,
        )
    conn.close()
    return path


def write_config(tmp_path: Path, db: Path, web_line: str = "") -> Path:
    cfg = tmp_path / "gatekeeper.yaml"
    cfg.write_text(
        f"database: {db}\n"
        f"{web_line}"
        "listeners:\n"
        "  - {name: ftp, protocol: ftp, listen: '127.0.0.1:2121', upstream: 'ibmi:21'}\n"
        "  - {name: telnet, protocol: telnet, listen: '127.0.0.1:2323', upstream: 'ibmi:23'}\n"
    )
    return cfg


@pytest.fixture
def cfg(tmp_path: Path, db: Path) -> Path:
    return write_config(tmp_path, db)


def on_server(
    settings: Settings, use: Callable[[TestClient[Any, Any]], Awaitable[T]], **kw: Any
) -> T:
    async def main() -> T:
        async with TestClient(TestServer(web.make_app(settings, **kw))) as client:
            return await use(client)

    return asyncio.run(main())


def fetch(settings: Settings, *paths: str, **kw: Any) -> list[tuple[int, dict[str, str], str]]:
    """GET each path: (status, headers, body text)."""

    async def use(client: TestClient[Any, Any]) -> list[tuple[int, dict[str, str], str]]:
        out = []
        for path in paths:
            async with client.get(path, headers=kw.get("headers")) as resp:
                out.append((resp.status, dict(resp.headers), await resp.text()))
        return out

    return on_server(settings, use, **{k: v for k, v in kw.items() if k != "headers"})


def cli_out(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(list(argv)) == 0
    out: str = capsys.readouterr().out
    return out


PAGES = {
    "/": "text/html",
    "/report": "text/html",
    "/report?level=detail&service=ftp&since=2026-11-16&until=2026-11-20": "text/html",
    "/report.json": "application/json",
    "/report.csv": "text/csv",
    "/stats": "text/html",
    "/stats?since=2026-11-16&until=2026-11-21": "text/html",
    "/stats.json": "application/json",
    "/style.css": "text/css",
}


def test_every_path_status_type_and_headers(cfg: Path) -> None:
    settings = config.load_settings(cfg)
    for (status, headers, body), (path, kind) in zip(
        fetch(settings, *PAGES), PAGES.items(), strict=True
    ):
        assert status == 200, (path, body)
        assert headers["Content-Type"].split(";")[0] == kind, path
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "style-src 'self'" in csp
        assert "img-src 'self' data:" in csp and "script-src" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
    status, headers, _ = fetch(settings, "/nothing-here")[0]
    assert status == 404 and "Content-Security-Policy" in headers


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--level", "detail"],
        ["--level", "detail", "--service", "telnet", "--since", "2026-11-18"],
        ["--level", "summary", "--service", "ftp", "--until", "2026-11-18T15:00:00Z"],
    ],
)
def test_downloads_are_the_cli_output(
    cfg: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = config.load_settings(cfg)
    params = "&".join(f"{a[2:]}={v}" for a, v in zip(args[::2], args[1::2], strict=True))
    (_, _, as_json), (_, _, as_csv), (_, _, page) = fetch(
        settings, f"/report.json?{params}", f"/report.csv?{params}", f"/report?{params}"
    )
    assert as_json == cli_out(capsys, "report", "-c", str(cfg), "--format", "json", *args)
    assert as_csv == cli_out(capsys, "report", "-c", str(cfg), "--format", "csv", *args)
    # The page links to exactly these downloads.
    hrefs = re.findall(r'href="(/report\.(?:json|csv)[^"]*)"', page)
    assert sorted(h.replace("&amp;", "&").split("?")[0] for h in hrefs) == [
        "/report.csv",
        "/report.json",
    ]
    [(_, _, linked)] = fetch(settings, hrefs[0].replace("&amp;", "&"))
    assert linked == as_json


def test_stats_json_is_the_cli_output(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = config.load_settings(cfg)
    (_, _, everything), (_, _, ranged), (_, _, page) = fetch(
        settings, "/stats.json", "/stats.json?since=2026-11-17&until=2026-11-20", "/stats"
    )
    assert everything == cli_out(capsys, "stats", "-c", str(cfg), "--format", "json")
    assert ranged == cli_out(
        capsys, "stats", "-c", str(cfg), "--format", "json",
        "--since", "2026-11-17", "--until", "2026-11-20",
    )  # fmt: skip
    data = json.loads(ranged)
    assert data["quiet_days"] == ["2026-11-17", "2026-11-19"]
    assert 'href="/stats.json"' in page


def test_report_page_content(cfg: Path) -> None:
    settings = config.load_settings(cfg)
    (_, _, summary), (_, _, detail) = fetch(settings, "/report", "/report?level=detail")
    # Part 1: locations with map links; part 2: countries with percent; part 3: the pie.
    assert "Jilin Sheng" in summary and "Changchun" in summary
    assert 'href="https://www.openstreetmap.org/?mlat=43.88&amp;mlon=125.3228"' in summary
    assert "40.0%" in summary  # CN: 2 of 5 rejected addresses
    slices = re.findall(r'<(path|circle) class="slice" data-country="([^"]+)"', summary)
    assert [c for _, c in slices] == ["CN", "GB", "SE", "unknown"]
    assert all(kind == "path" for kind, _ in slices)
    # Detail: each location's addresses with listener letter, local times, attempts.
    row = re.search(r'<tr class="entry">.*?175\.16\.199\.1<.*?</tr>', detail, re.S)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(0), re.S)
    assert cells[0] == "T" or cells[0] == "F"
    assert "2026-11-16 08:00:00" in detail  # local time (UTC-5), not UTC
    assert "F = ftp, T = telnet" in detail


def test_single_country_is_a_circle(tmp_path: Path) -> None:
    path = tmp_path / "one.db"
    fill(path, [rej("192.0.2.1", at(D3, 8))])
    settings = config.load_settings(write_config(tmp_path, path))
    [(_, _, page)] = fetch(settings, "/report")
    assert re.findall(r'<(path|circle) class="slice" data-country="([^"]+)"', page) == [
        ("circle", "unknown")
    ]


def test_detail_is_paginated(cfg: Path) -> None:
    settings = config.load_settings(cfg)
    (_, _, first), (_, _, second), (_, _, as_json), (_, _, last) = fetch(
        settings,
        "/report?level=detail",
        "/report?level=detail&page=2",
        "/report.json?level=detail&page=2",
        "/report?level=detail&page=9",
        page_size=2,
    )
    assert first.count('<tr class="entry">') == 2 and second.count('<tr class="entry">') == 2
    assert "Addresses 1&ndash;2 of 6" in first and "page 1 of 3" in first
    assert 'href="/report?level=detail&amp;service=both&amp;page=2"' in first
    assert 'href="/report.json?level=detail&amp;service=both&amp;page=1"' in first
    data = json.loads(as_json)
    assert (data["limit"], data["offset"], data["entries_total"]) == (2, 2, 6)
    assert sum(len(loc["entries"]) for loc in data["locations"]) == 2
    assert "No address on this page" in last


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/report?level=full", "level 'full': use summary or detail"),
        ("/report?service=nope", "service 'nope': use one of ftp, telnet or both"),
        ("/report?since=yesterday", "since: bad date or time"),
        ("/report?until=2026-02-30", "until: bad date"),
        ("/report?since=2026-11-20&until=2026-11-01", "is after until"),
        ("/report?level=detail&page=0", "page '0': use a page number from 1"),
        ("/report?level=detail&page=x", "page 'x'"),
        ("/report?level=detail&level=summary", "level: given 2 times"),
        ("/stats?since=soon", "since: bad date or time"),
        ("/report.json?level=x", "level 'x'"),
        ("/report.csv?service=x", "service 'x'"),
        ("/stats.json?until=x", "until: bad date"),
    ],
)
def test_bad_parameters_are_400_with_a_message(cfg: Path, path: str, message: str) -> None:
    [(status, headers, body)] = fetch(config.load_settings(cfg), path)
    assert status == 400
    if ".json" in path:
        assert headers["Content-Type"].startswith("application/json")
        assert message in json.loads(body)["error"]
    elif ".csv" in path:
        assert message in body
    else:
        assert headers["Content-Type"].startswith("text/html")
        assert message.replace("'", "&#39;") in body


def test_attacker_strings_are_escaped(cfg: Path) -> None:
    settings = config.load_settings(cfg)
    pages = fetch(settings, "/report?level=detail", "/stats", "/report?level=detail&page=1")
    for _, _, body in pages:
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
        assert "<script" not in body.lower()  # the pages carry no script of any kind
    [(_, _, stats_json)] = fetch(settings, "/stats.json")
    assert {"user": EVIL, "attempts": 1} in json.loads(stats_json)["top_users"]


def test_no_external_resource(cfg: Path) -> None:
    settings = config.load_settings(cfg)
    for _, _, body in fetch(settings, "/", "/report", "/report?level=detail", "/stats"):
        for url in re.findall(r"(?:https?:)?//[^\s\"'<>]+", body):
            assert url.startswith("https://www.openstreetmap.org/"), url
        assert not re.search(r"\s(?:src|style)=", body)  # nothing loaded, no inline style
        assert re.findall(r'<link[^>]*href="([^"]+)"', body) == ["data:,", "/style.css"]
    [(_, _, css)] = fetch(settings, "/style.css")
    assert "url(" not in css and "@import" not in css and "http" not in css


def test_missing_database(tmp_path: Path) -> None:
    settings = config.load_settings(write_config(tmp_path, tmp_path / "none" / "gk.db"))
    pages = fetch(settings, "/report?level=detail", "/stats", "/report.json", "/stats.json")
    assert [status for status, _, _ in pages] == [200, 200, 200, 200]
    assert "No rejected connection in this range" in pages[0][2]
    assert "No record in this range" in pages[1][2]
    assert not (tmp_path / "none").exists()


def test_database_reads_run_in_a_thread(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[threading.Thread] = []
    real = query.rejection_report

    def spy(*args: Any, **kw: Any) -> query.Report:
        threads.append(threading.current_thread())
        return real(*args, **kw)

    monkeypatch.setattr(query, "rejection_report", spy)
    [(status, _, _)] = fetch(config.load_settings(cfg), "/report")
    assert status == 200 and threads and threads[0] is not threading.main_thread()


# -- credentials ---------------------------------------------------------------------------

FAST = 1000  # PBKDF2 iterations in tests (the default is slow on purpose)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_beyond_loopback_needs_credentials(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, db, 'web: {listen: "0.0.0.0:8020"}\n')
    settings = config.load_settings(cfg)
    with pytest.raises(GatekeeperError, match="not a loopback address"):
        web.make_app(settings)
    assert cli.main(["web", "-c", str(cfg)]) == 1
    assert "configure a login" in capsys.readouterr().err

    hashed = web.hash_password("correct horse", iterations=FAST)
    cfg = write_config(
        tmp_path, db, f'web: {{listen: "0.0.0.0:8020", user: admin, password_hash: "{hashed}"}}\n'
    )
    settings = config.load_settings(cfg)
    assert settings.web_auth is not None and settings.web_auth.user == "admin"

    async def use(client: TestClient[Any, Any]) -> None:
        for headers in (None, basic("admin", "wrong"), basic("root", "correct horse"),
                        {"Authorization": "Bearer x"}, {"Authorization": "Basic !!"}):  # fmt: skip
            async with client.get("/report", headers=headers) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith('Basic realm="gatekeeper"')
                assert "Content-Security-Policy" in resp.headers
        for path in ("/report", "/stats.json", "/style.css", "/report"):
            async with client.get(path, headers=basic("admin", "correct horse")) as resp:
                assert resp.status == 200, path

    on_server(settings, use)


@pytest.mark.parametrize(
    ("web_line", "line"),
    [
        ('web: {listen: "0.0.0.0:8020"}\n', 2),
        ('web:\n  # the pages, for the whole LAN\n  listen: "[::]:8020"\n', 4),
        ("web:\n  listen: 10.1.1.1:8020\n", 3),
    ],
)
def test_beyond_loopback_error_names_file_and_line(
    tmp_path: Path, db: Path, web_line: str, line: int
) -> None:
    cfg = write_config(tmp_path, db, web_line)
    with pytest.raises(GatekeeperError) as caught:
        web.check_exposure(config.load_settings(cfg))
    assert str(caught.value).startswith(f"{cfg}:{line}: web.listen ")
    assert "--hash-password" in str(caught.value)


def test_loopback_needs_no_login(cfg: Path) -> None:
    assert web.is_loopback("127.0.0.1") and web.is_loopback("::1")
    assert web.is_loopback("127.1.2.3") and web.is_loopback("localhost")
    assert not web.is_loopback("0.0.0.0") and not web.is_loopback("::")
    assert not web.is_loopback("10.1.1.1") and not web.is_loopback("reports.example.com")
    [(status, _, _)] = fetch(config.load_settings(cfg), "/report")
    assert status == 200


def test_hash_password_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pass\n"))
    line = cli_out(capsys, "web", "--hash-password").strip()
    hashed = parse_password_hash(line)
    assert line.startswith("pbkdf2_sha256$600000$")
    assert web.verify_password("s3cret pass", hashed)
    assert not web.verify_password("s3cret pass\n", hashed)
    assert not web.verify_password("other", hashed)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert cli.main(["web", "--hash-password"]) == 1
    assert "empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("web_line", "line", "message"),
    [
        ("web:\n  user: admin\n", 3, "user without password_hash"),
        ('web:\n  password_hash: "{hash}"\n', 3, "password_hash without user"),
        ('web:\n  user: admin\n  password_hash: "md5$1$x$y"\n', 4, "expected pbkdf2_sha256$"),
        (
            'web:\n  user: admin\n  password_hash: "pbkdf2_sha256$0$saltsalt$AAAA"\n',
            4,
            "iterations",
        ),
        (
            'web:\n  user: admin\n  password_hash: "pbkdf2_sha256$1000$saltsalt$AAAA"\n',
            4,
            "the hash is 3 bytes",
        ),
        ('web:\n  user: "a:b"\n  password_hash: "{hash}"\n', 3, "no colon"),
    ],
)
def test_credentials_config_validation(
    tmp_path: Path, db: Path, web_line: str, line: int, message: str
) -> None:
    hashed = web.hash_password("pw", iterations=FAST)
    cfg = write_config(tmp_path, db, web_line.replace("{hash}", hashed))
    with pytest.raises(ConfigError) as caught:
        config.load_settings(cfg)
    (problem,) = caught.value.problems
    assert (problem.file, problem.line) == (str(cfg), line)
    assert message in problem.message

"""Security properties end to end (issue 7), with the daemon and the report pages as real
processes on loopback:

- hostile FTP user names (HTML, SQL, shell, spreadsheet formulas, terminal escapes, bytes
  that are not UTF-8, very long names), recorded as rejections and as sessions, come out
  escaped or neutralised in every report format, exact in JSON, and are plain data in the
  database; no SQL is built from values, and no shell is ever run;
- bound beyond loopback, the report pages answer nothing but 401 without credentials, and
  refuse to start without a login configured (``file:line``);
- no password (FTP, web) or TLS key material appears in a log, the database, the status
  file, the metrics, a report, a page or a command's output;
- the daemon and the report pages run as an unprivileged user, as the shipped units run
  them: ports below 1024 come in as passed sockets, the database is read-only to the pages.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import csv
import ftplib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import unicodedata
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.report import web
from gatekeeper.report.render import TEXT_USER_CHARS
from gatekeeper.store import schema
from tests.integration.ftp_harness import PASSWORD, USER, FtpUpstream, make_certificate
from tests.integration.harness import (
    BANNER,
    Daemon,
    Upstream,
    connect,
    free_port,
    read_until_closed,
    recv_exactly,
    wait_for,
)
from tests.integration.test_ftp import ftp_listener
from tests.integration.test_gate import sessions
from tests.integration.test_socket_activation import SHIM, listening

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "gatekeeper"
GK = [sys.executable, "-m", "gatekeeper"]
FAST = 1000  # PBKDF2 iterations for the web login in tests (the default is slow on purpose)

# -- hostile user names ---------------------------------------------------------------------

LONG = "L" * 4000  # USER and the name fit the 4096-byte line limit: recorded in full
# (name as the client sends it, refused by deny_users?, attempts). Refused names are
# rejections (reason user) and denied-user sessions; the others reach the upstream and
# fail to sign on (login-failed sessions, failed logins). The two HTML names are tried
# twice so that they lead the web page's top ten user names.
HOSTILE: list[tuple[str | bytes, bool, int]] = [
    ("<script>alert(1)</script>", True, 2),
    ('"><img src=x onerror=alert(1)>', False, 2),
    ("'; DROP TABLE sessions;--", True, 1),
    ("Robert'); DELETE FROM rejections; --", False, 1),
    ("$(touch pwned)", False, 1),
    ("`id`", True, 1),
    ("; rm -rf /", False, 1),
    ("|nc", True, 1),
    ("=cmd|' /C calc'!A0", True, 1),
    ("+SUM(1+1)", False, 1),
    ("-2+3", True, 1),
    ("@SUM(A1:A9)", False, 1),
    ("\x1b[31mRED\x1b[0m", True, 1),  # ANSI colour (CSI)
    ("\x1b]0;owned\x07", False, 1),  # ANSI window title (OSC ... BEL)
    ("\u202eTXT.EXE", True, 1),  # right-to-left override
    (LONG, True, 1),
    (b"caf\xe9", True, 1),  # Latin-1, not UTF-8
]
DENY_USERS = ["<SCRIPT>*", "'*", "`*", "|*", "=*", "-*", "\x1b[*", "\u202e*", "LLLL*", "CAF*"]
RULES: dict[str, Any] = {
    "default": "deny",
    "allow": ["198.51.100.0/24", "127.0.0.0/8"],
    "ftp": {"deny_users": DENY_USERS},  # no ban: every name gets its attempts
}
FORMULA = ("=", "+", "-", "@", "\t", "\r", "\0")  # what a CSV cell may not start with


def ftp_upstream(root: Path) -> FtpUpstream:
    """pyftpdlib as the IBM i, answering a failed sign-on at once (not after 3 s)."""
    server = FtpUpstream(root)
    server.server.handler.auth_failed_timeout = 0
    return server


def recorded(name: str | bytes) -> str:
    """The name as gatekeeper records it: upper-cased; bytes that are not UTF-8 as \\xNN."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "surrogateescape").upper()
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name.strip().upper()


def claim(i: int) -> str:
    return f"198.51.100.{i + 1}"


def ftp_on(sock: socket.socket) -> ftplib.FTP:
    """ftplib over a connected socket (ours carries a PROXY header first), as connect()."""
    ftp = ftplib.FTP(timeout=10)
    ftp.sock = sock
    ftp.af = sock.family
    ftp.file = sock.makefile("r", encoding=ftp.encoding)
    ftp.welcome = ftp.getresp()
    return ftp


def try_user(address: tuple[str, int], source: str, name: str | bytes, denied: bool) -> None:
    """One sign-on attempt with ``name`` from the claimed address ``source``."""
    ftp = ftp_on(connect(address, claim=source, timeout=10))
    try:
        assert ftp.welcome.startswith("220"), ftp.welcome
        if isinstance(name, bytes):  # ftplib sends str only
            ftp.sock.sendall(b"USER " + name + b"\r\n")
        else:
            ftp.putcmd(f"USER {name}")
        if denied:
            with pytest.raises(ftplib.error_perm, match=r"^530"):
                ftp.getresp()
            assert read_until_closed(ftp.sock) == b""  # and the connection is closed
            return
        assert ftp.getresp().startswith("331")
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.sendcmd("PASS not-the-password")
        ftp.quit()
    finally:
        ftp.close()


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A gatekeeper command; its output as written (CSV lines end in CRLF)."""
    out = subprocess.run([*GK, *args], capture_output=True, timeout=60)
    done = subprocess.CompletedProcess(
        out.args, out.returncode, out.stdout.decode(), out.stderr.decode()
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def tables(database: Path) -> set[str]:
    """The tables and indexes of a database (SQLite's own statistics left out)."""
    con = sqlite3.connect(database)
    try:
        query = "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite%'"
        return {f"{kind} {name}" for kind, name in con.execute(query)}
    finally:
        con.close()


def raw_controls(text: str) -> list[str]:
    """Characters a terminal would act on: controls but the line end, and format characters
    (bidi overrides), and lone surrogates."""
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs")]


# Tags no template has: data that became markup would show up as one of them.
FOREIGN_TAGS = {"script", "style", "img", "iframe", "frame", "object", "embed", "base", "applet",
                "audio", "video", "textarea", "math"}  # fmt: skip


class Page(HTMLParser):
    """The tags, attributes and user-name cells of an HTML page."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.users: list[str] = []
        self._in_user = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "td" and dict(attrs).get("class") == "user":
            self._in_user = True
            self.users.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_user = False

    def handle_data(self, data: str) -> None:
        if self._in_user:
            self.users[-1] += data


def assert_inert(html: str) -> Page:
    """No script, no event handler, no foreign link: whatever the data, the page's markup
    is the templates' own."""
    page = Page(html)
    assert not {tag for tag, _ in page.tags} & FOREIGN_TAGS
    for tag, attrs in page.tags:
        assert not [a for a in attrs if a.startswith("on") or a == "http-equiv"], (tag, attrs)
        for key in ("href", "src", "action"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("/", "data:,", "https://www.openstreetmap.org/")), value
    return page


# Query strings reflected in error pages: each is a bad parameter (400).
HOSTILE_QUERIES = (
    "/report?level=%3Cscript%3Ealert(1)%3C/script%3E",
    "/report?service=%22%3E%3Cscript%3Ealert(1)%3C/script%3E",
    "/report?since=%3Cscript%3E&until=x",
    "/report?since=2026-11-20T08:00%22%3E%3Cscript%3E",  # a timestamp's start, then markup
    "/stats?until=%27%3E%3Cscript%3Ealert(1)%3C/script%3E",
    "/report.json?level=%3Cscript%3E",
    "/report.csv?service=%3Cscript%3E",
    "/report?page=%3Cscript%3E",
)

# -- the report pages as a process ----------------------------------------------------------

SERVING = re.compile(r"serving the report pages on http://(\[[^\]]+\]|[^/:]+):(\d+)/")


class WebProcess:
    """``gatekeeper web`` as a child process; ``port`` once it listens."""

    def __init__(
        self, config: Path, log: Path, command: tuple[str, ...], env: dict[str, str]
    ) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [*command, "web", "-c", str(config)],
                stdout=out, stderr=subprocess.STDOUT, cwd=config.parent,
                env=dict(os.environ, **env),
            )  # fmt: skip

        def port() -> int | None:
            assert self.proc.poll() is None, log.read_text()
            m = SERVING.search(log.read_text())
            return int(m.group(2)) if m else None

        self.port: int = wait_for(port, what="gatekeeper web to listen")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def web_process() -> Iterator[Any]:
    made: list[WebProcess] = []

    def start(
        config: Path,
        log: Path,
        command: tuple[str, ...] = tuple(GK),
        env: dict[str, str] | None = None,
    ) -> WebProcess:
        made.append(WebProcess(config, log, command, env or {}))
        return made[-1]

    yield start
    for w in made:
        w.stop()


def request(
    host: str, port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request of any method: (status, headers with lower-case names, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# -- hostile user names through every report format -------------------------------------


def test_hostile_user_names_in_every_report_format(daemon, tmp_path: Path, web_process) -> None:
    home = tmp_path / "ftp-home"
    home.mkdir()
    upstream = ftp_upstream(home)
    try:
        listener = ftp_listener(upstream, proxy_protocol=["127.0.0.1/32"])
        config = {"listeners": [listener], "web": {"listen": "127.0.0.1:0"}}
        d = daemon(config, RULES).start()
        address = d.address("ftp")
        for i, (name, denied, attempts) in enumerate(HOSTILE):
            for _ in range(attempts):
                try_user(address, claim(i), name, denied)
        assert d.stop() == 0
    finally:
        upstream.close()
    names = {claim(i): recorded(n) for i, (n, _, _) in enumerate(HOSTILE)}
    refused = {claim(i): recorded(n) for i, (n, denied, _) in enumerate(HOSTILE) if denied}
    tried = {recorded(n): attempts for n, _, attempts in HOSTILE}
    sent = [n for n, denied, _ in HOSTILE if not denied and isinstance(n, str)]
    assert not [u for u in upstream.users_seen if recorded(u) in refused.values()]
    assert sorted(upstream.users_seen) == sorted(u for u in sent for _ in range(tried[recorded(u)]))

    # The database: names stored as data, tables intact, the file sound.
    con = sqlite3.connect(d.database)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = con.execute("SELECT address, user, reason, attempts FROM rejections").fetchall()
        failed = dict(con.execute("SELECT user, SUM(attempts) FROM logins GROUP BY user"))
    finally:
        con.close()
    fresh = tmp_path / "fresh.db"
    schema.prepare(fresh)
    assert tables(d.database) == tables(fresh)
    assert {a: u for a, u, _, _ in rows} == refused
    assert {r for _, _, r, _ in rows} == {"user"}
    assert {a: n for a, _, _, n in rows} == {a: tried[u] for a, u in refused.items()}
    assert failed == {u: tried[u] for a, u in names.items() if a not in refused}
    recorded_sessions = sessions(d.database)
    assert sorted(r["user"] for r in recorded_sessions) == sorted(
        u for u in names.values() for _ in range(tried[u])
    )
    assert {r["outcome"] for r in recorded_sessions} == {"denied-user", "login-failed"}
    # No shell ran anything: nothing named pwned appeared.
    assert not list(tmp_path.rglob("*pwned*")) and not list(tmp_path.rglob("*PWNED*"))
    print(f"\nhostile names: {len(HOSTILE)} ({len(refused)} refused, "
          f"{len(HOSTILE) - len(refused)} signed on and failed), "
          f"{sum(tried.values())} attempts, {len(recorded_sessions)} sessions recorded, "
          f"{len(rows)} rejection rows, integrity ok")  # fmt: skip

    cfg = str(d.config_path)
    # JSON: exact, to the byte (upper-cased as recorded).
    detail_json = run("report", "-c", cfg, "--level", "detail", "--format", "json").stdout
    report = json.loads(detail_json)
    got = {e["address"]: e["user"] for loc in report["locations"] for e in loc["entries"]}
    assert got == refused
    stats_json = run("stats", "-c", cfg, "--format", "json", "--top", "100").stdout
    top = {u["user"]: u["attempts"] for u in json.loads(stats_json)["top_users"]}
    assert top == tried

    # CSV: the csv module gives the name back; a formula start gets a leading apostrophe.
    detail_csv = run("report", "-c", cfg, "--level", "detail", "--format", "csv").stdout
    cells = {r["address"]: r["user"] for r in csv.DictReader(io.StringIO(detail_csv))}
    assert cells == {a: "'" + u if u.startswith(FORMULA) else u for a, u in refused.items()}
    assert not [c for c in cells.values() if c.startswith(FORMULA)]

    # Text: no control or format character reaches the terminal; they show as \xNN.
    detail_text = run("report", "-c", cfg, "--level", "detail").stdout
    stats_text = run("stats", "-c", cfg, "--top", "100").stdout
    for text in (detail_text, stats_text):
        assert raw_controls(text) == []
        assert "\\x1b[31MRED\\x1b[0M" in text and "\\u202eTXT.EXE" in text
        assert "CAF\\xe9" in text and "'; DROP TABLE SESSIONS;--" in text
        assert "L" * (TEXT_USER_CHARS - 1) + "…" in text and "L" * TEXT_USER_CHARS not in text
        assert max(len(line) for line in text.splitlines()) < 300
    assert "\\x1b]0;OWNED\\x07" in stats_text

    # The pages: escaped text in inert markup; downloads byte for byte the CLI's output.
    w = web_process(d.config_path, tmp_path / "web.log")
    pages = {}
    for path in ("/report?level=detail", "/report.json?level=detail",
                 "/report.csv?level=detail", "/stats", "/stats.json"):  # fmt: skip
        status, headers, body = request("127.0.0.1", w.port, "GET", path)
        assert status == 200, (path, body[:300])
        # And if markup got through anyway, the browser would run no script of any kind.
        assert headers["content-security-policy"].startswith("default-src 'none';")
        assert "script-src" not in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        pages[path] = body.decode()
    assert pages["/report.json?level=detail"] == detail_json
    assert pages["/report.csv?level=detail"] == detail_csv
    assert pages["/stats.json"] == run("stats", "-c", cfg, "--format", "json").stdout
    html = pages["/report?level=detail"]
    assert sorted(assert_inert(html).users) == sorted(refused.values())
    assert "&lt;SCRIPT&gt;ALERT(1)&lt;/SCRIPT&gt;" in html and "<SCRIPT>" not in html.upper()
    on_page = json.loads(pages["/stats.json"])["top_users"]
    assert assert_inert(pages["/stats"]).users == [u["user"] for u in on_page]
    assert {recorded(HOSTILE[0][0]), recorded(HOSTILE[1][0])} <= {u["user"] for u in on_page}
    assert "&#34;&gt;&lt;IMG SRC=X ONERROR=ALERT(1)&gt;" in pages["/stats"]
    # What the address bar carries is attacker-controlled too (a link sent to the admin).
    for path in HOSTILE_QUERIES:
        status, headers, body = request("127.0.0.1", w.port, "GET", path)
        assert status == 400, path
        if headers["content-type"].startswith("text/html"):
            assert_inert(body.decode())
            assert "&lt;script&gt;" in body.decode()  # shown, as text
        elif headers["content-type"].startswith("application/json"):
            assert "<script>" in json.loads(body)["error"]  # data, in a JSON string
        else:
            assert headers["content-type"].startswith("text/plain")
    assert w.stop() == 0
    print(f"report formats checked: json, csv, text (report and stats), 5 web pages; "
          f"{len(on_page)} names on the trend page, {len(refused)} on the detail page")  # fmt: skip


# -- no SQL from values, no shell -------------------------------------------------------------

# Every expression the package formats into SQL text, each reviewed: WHERE clauses built
# from fixed terms with named parameters (the values go in as parameters), fixed column
# names, placeholders, integer constants. A new one fails the test until it is reviewed.
SQL_INTERPOLATIONS = {
    "where", "rejections", "sessions", "logins",  # report/query.py, report/stats.py _where
    "alias", "low", "high",  # report/stats.py _where: table alias and column, from callers
    "', '.join(_LOCATION)", "_LOCATION[0]", "_LOCATION[1]", "_LOCATION[2]",  # constants
    "', '.join('?' * len(wanted))",  # store/recorder.py: one placeholder per value
    "BUSY_TIMEOUT_MS", "schema.BUSY_TIMEOUT_MS", "JOURNAL_SIZE_LIMIT", "version + 1",  # ints
}  # fmt: skip
_SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|PRAGMA|WHERE|VALUES|FROM|AND|OR|LIMIT)\b|[<>=] :\w"
)


def _template(node: ast.AST, constants: dict[str, ast.AST]) -> str:
    """The literal text of a string expression (a module constant followed by name)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_template(v, constants) for v in node.values)
    if isinstance(node, ast.Name) and node.id in constants:
        return _template(constants[node.id], constants)
    return ""


def _interpolated(node: ast.AST, constants: dict[str, ast.AST]) -> tuple[str, list[ast.AST]]:
    """(template text, expressions put into it) of an f-string, ``.format`` or ``%``."""
    if isinstance(node, ast.JoinedStr):
        values = [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
        return _template(node, constants), values
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and (node.func.attr == "format")
    ):
        values = [*node.args, *(k.value for k in node.keywords)]
        return _template(node.func.value, constants), values
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return _template(node.left, constants), [node.right]
    return "", []


def test_sql_takes_values_only_as_parameters() -> None:
    """No SQL text anywhere in the package is built from a value: whatever is formatted
    into something that reads as SQL is one of the reviewed fragments above."""
    built = 0
    seen: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        constants = {
            node.targets[0].id: node.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        }
        for node in ast.walk(tree):
            text, values = _interpolated(node, constants)
            if not values or not _SQL_WORDS.search(text):
                continue
            built += 1
            for value in values:
                source = ast.unparse(value)
                seen.add(source)
                where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
                assert source in SQL_INTERPOLATIONS, f"{where}: SQL built with {source!r}"
    assert built >= 15 and seen  # the scan does find the store's and the reports' SQL
    print(f"\nSQL texts built by formatting: {built}, from {len(seen)} reviewed fragments")


def test_no_shell_anywhere() -> None:
    """The package never starts a process: no subprocess, os.system, os.popen, os.exec*,
    os.spawn*, pty (a user name can never reach a shell)."""
    banned_modules = {"subprocess", "pty", "commands"}
    banned_calls = re.compile(r"^(system|popen|exec[lv]p?e?|spawn[lv]p?e?|posix_spawnp?|fork)$")
    files = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        files += 1
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & banned_modules, where
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in banned_modules, where
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "os":
                    assert not banned_calls.match(node.attr), where
            elif isinstance(node, ast.keyword) and node.arg == "shell":
                raise AssertionError(f"{where}: shell=")
    print(f"\nfiles scanned for process starts: {files}, none found")


# -- the report pages beyond loopback ---------------------------------------------------------

PATHS = ("/", "/report", "/report?level=detail", "/report.json", "/report.csv", "/stats",
         "/stats.json", "/style.css", "/nothing-here", "/favicon.ico",
         "/report.json/..%2f")  # fmt: skip
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS")


@pytest.mark.parametrize(("bind", "connect_to"), [("0.0.0.0", "127.0.0.1"), ("::", "::1")])
def test_web_beyond_loopback_answers_only_with_credentials(
    tmp_path: Path, web_process, bind: str, connect_to: str
) -> None:
    password = "Web-Pw-2288-frotz"
    hashed = web.hash_password(password, iterations=FAST)
    listen = f"[{bind}]:0" if ":" in bind else f"{bind}:0"
    cfg = tmp_path / "gatekeeper.yaml"
    cfg.write_text(
        "database: var/gk.db\n"
        "listeners:\n"
        "  - {name: ftp, protocol: ftp, listen: '127.0.0.1:2121', upstream: 'ibmi:21'}\n"
        "web:\n"
        f'  listen: "{listen}"\n'
        "  user: security\n"
        f'  password_hash: "{hashed}"\n'
    )
    schema.prepare(tmp_path / "var" / "gk.db")
    w = web_process(cfg, tmp_path / "web.log")
    wrong = [
        {},
        basic("security", "wrong"),
        basic("root", password),
        basic("security", password + " "),
        {"Authorization": "Bearer " + password},
        {"Authorization": "Basic !!!"},
        {"Authorization": "Basic " + base64.b64encode(password.encode()).decode()},
    ]
    refused = 0
    for path in PATHS:
        for method in METHODS:
            for headers in wrong:
                status, got, body = request(connect_to, w.port, method, path, headers)
                assert status == 401, (method, path, headers, status)
                assert got["www-authenticate"] == 'Basic realm="gatekeeper", charset="UTF-8"'
                assert b"gatekeeper's reports" in body or method == "HEAD"
                assert b"<table" not in body and b"locations" not in body
                refused += 1
    good = basic("security", password)
    expected = {"/nothing-here": 404, "/favicon.ico": 404, "/report.json/..%2f": 404}
    for path in PATHS:
        status, _, _ = request(connect_to, w.port, "GET", path, good)
        assert status == expected.get(path, 200), path
        status, _, body = request(connect_to, w.port, "HEAD", path, good)
        assert status == expected.get(path, 200) and body == b"", path
        status, _, _ = request(connect_to, w.port, "POST", path, good)
        assert status in (404, 405), path
    assert w.stop() == 0
    assert password not in w.log.read_text()
    print(f"\n{bind}: {refused} requests without good credentials, all 401; "
          f"{3 * len(PATHS)} with them answered")  # fmt: skip


def test_web_beyond_loopback_without_login_refuses_to_start(tmp_path: Path) -> None:
    cfg = tmp_path / "gatekeeper.yaml"
    cfg.write_text(
        "database: var/gk.db\n"
        "listeners:\n"
        "  - {name: ftp, protocol: ftp, listen: '127.0.0.1:2121', upstream: 'ibmi:21'}\n"
        "web:\n"
        '  listen: "0.0.0.0:0"\n'
    )
    out = run("web", "-c", str(cfg), check=False)
    assert out.returncode == 1 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"gatekeeper: {cfg}:5: web.listen 0.0.0.0:0 is not a loopback"), line
    assert "gatekeeper web --hash-password" in line
    print(f"\nrefused: {line}")


# -- no secret anywhere -----------------------------------------------------------------------

FTP_SECRET = "Zq9-Vault-7781-xyzzy"  # a successful sign-on
WRONG_SECRET = "Wrong-Guess-4417-plugh"  # a failed one
EARLY_SECRET = "Early-Pass-5573-quux"  # PASS before USER
ACCT_SECRET = "Acct-Secret-6620-grue"
SITE_SECRET = "Site-Secret-9931-zork"
LONG_SECRET = "Long-Line-Secret-3141"  # in a line over the limit
NUL_SECRET = "Nul-Secret-2718"  # in a line refused for its NUL
WEB_SECRET = "Web-Pw-5150-frobozz"
WEB_TYPO = "Web-Pw-5151-frobozz"  # a wrong password is often the right one mistyped


def test_no_password_or_key_anywhere(daemon, tmp_path: Path, root: Path, web_process) -> None:
    cert, key = make_certificate(tmp_path / "tls")
    key_pem = key.read_text()
    key_body = [line for line in key_pem.splitlines() if line and "-----" not in line]
    key_der = base64.b64decode("".join(key_body))
    hashed = web.hash_password(WEB_SECRET, iterations=FAST)
    digest = hashed.rsplit("$", 1)[1]
    upstream = ftp_upstream(root)
    upstream.server.handler.authorizer.add_user("keeper", FTP_SECRET, str(root), perm="elr")
    metrics = free_port()
    try:
        tls = {"mode": "terminate", "certificate": str(cert), "key": str(key)}
        config = {
            "listeners": [ftp_listener(upstream, tls=tls)],
            "metrics": {"listen": f"127.0.0.1:{metrics}"},
            "web": {"listen": "127.0.0.1:0", "user": "security", "password_hash": hashed},
        }
        d = daemon(config, {"default": "deny", "allow": ["127.0.0.0/8"]})
        d.start("-v")  # debug logging on
        port = d.address("ftp")[1]

        ftp = ftplib.FTP(timeout=10)
        ftp.connect("127.0.0.1", port)
        with pytest.raises(ftplib.error_perm, match=r"^503"):
            ftp.sendcmd(f"PASS {EARLY_SECRET}")  # PASS before USER: forwarded, answered 503
        ftp.login("keeper", FTP_SECRET)
        with contextlib.suppress(ftplib.Error):  # forwarded (housekeeping); pyftpdlib: 502
            ftp.sendcmd(f"ACCT {ACCT_SECRET}")
        with pytest.raises(ftplib.Error):
            ftp.sendcmd(f"SITE CHMOD 777 {SITE_SECRET}")
        with pytest.raises(ftplib.error_perm, match=r"^500"):
            ftp.sendcmd(f"PASS {LONG_SECRET}" + "x" * 5000)
        ftp.sock.sendall(f"PASS {NUL_SECRET}\0\r\n".encode())
        with pytest.raises(ftplib.error_perm, match=r"^501"):
            ftp.getresp()
        ftp.quit()

        ftp = ftplib.FTP(timeout=10)
        ftp.connect("127.0.0.1", port)
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.login(USER, WRONG_SECRET)
        ftp.close()

        context = ssl.create_default_context(cafile=str(cert))
        ftps = ftplib.FTP_TLS(context=context, timeout=10)
        ftps.connect("127.0.0.1", port)
        ftps.auth()
        ftps.login(USER, PASSWORD)  # over TLS
        ftps.quit()

        # While it runs: the database with its WAL, the status file, the metrics.
        wait_for(lambda: len(sessions(d.database)) == 3, what="the sessions to be written")
        blobs: dict[str, bytes] = {}
        for path in sorted(d.database.parent.iterdir()):
            blobs[f"running {path.name}"] = path.read_bytes()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as resp:
            blobs["metrics"] = resp.read()
        cfg = str(d.config_path)
        for args in (("status",), ("status", "--format", "json"), ("check",)):
            blobs[" ".join(args)] = run(*args, "-c", cfg).stdout.encode()
        d.reload()  # a reload logs what changed
        w = web_process(d.config_path, tmp_path / "web.log")
        for path in ("/", "/report?level=detail", "/report.json?level=detail",
                     "/report.csv?level=detail", "/stats", "/stats.json"):  # fmt: skip
            for who, headers in (("", {}), ("wrong ", basic("security", WEB_TYPO)),
                                 ("good ", basic("security", WEB_SECRET))):  # fmt: skip
                status, _, body = request("127.0.0.1", w.port, "GET", path, headers)
                assert status == (200 if who == "good " else 401)
                blobs[f"web {who}{path}"] = body
        assert w.stop() == 0
        blobs["web log"] = w.log.read_bytes()

        # A password pasted where its hash belongs: refused without showing it.
        config["web"]["password_hash"] = WEB_SECRET
        d.write_config(config)
        bad_check = run("check", "-c", cfg, check=False)
        assert bad_check.returncode == 1 and "password_hash" in bad_check.stderr
        blobs["check, password as hash"] = (bad_check.stdout + bad_check.stderr).encode()
        d.reload()  # refused: the daemon keeps its settings and logs why
        assert "bad password_hash" in d.output()
        config["web"]["password_hash"] = hashed
        d.write_config(config)
        assert d.stop() == 0
    finally:
        upstream.close()
    rows = sessions(d.database)
    assert [r["user"] for r in rows] == ["KEEPER", USER.upper(), USER.upper()]
    assert [r["outcome"] for r in rows][:2] == ["logged-in", "login-failed"]

    for path in sorted(d.database.parent.iterdir()):
        blobs[f"stopped {path.name}"] = path.read_bytes()
    for args in (("report", "--level", "detail"), ("report", "--format", "json"),
                 ("report", "--level", "detail", "--format", "csv"), ("stats",),
                 ("stats", "--format", "json"), ("bans", "list")):  # fmt: skip
        blobs[" ".join(args)] = run(*args, "-c", cfg).stdout.encode()
    blobs["daemon log"] = d.log_path.read_bytes()

    secrets = {
        "FTP password": FTP_SECRET, "failed password": WRONG_SECRET,
        "PASS before USER": EARLY_SECRET, "ACCT": ACCT_SECRET, "SITE argument": SITE_SECRET,
        "long PASS line": LONG_SECRET, "PASS with NUL": NUL_SECRET,
        "TLS upstream password": PASSWORD, "web password": WEB_SECRET,
        "web password hash": digest,
        "web Basic token": base64.b64encode(f"security:{WEB_SECRET}".encode()).decode(),
        "wrong web password": WEB_TYPO,
        "wrong web Basic token": base64.b64encode(f"security:{WEB_TYPO}".encode()).decode(),
    }  # fmt: skip
    needles = {k: v.encode() for k, v in secrets.items()}
    needles |= {f"TLS key line {i}": line.encode() for i, line in enumerate(key_body)}
    needles["TLS key (DER)"] = key_der
    found = [(what, where) for what, needle in needles.items()
             for where, blob in blobs.items() if needle in blob]  # fmt: skip
    assert found == []
    # The search can find things: the names it must find are there.
    assert b"KEEPER" in blobs["stopped gk.db"] and "file descriptors" in d.output()
    total = sum(len(b) for b in blobs.values())
    print(
        f"\nsearched {len(blobs)} outputs ({total:,} bytes) for {len(needles)} secrets: none found"
    )


# -- unprivileged, as the shipped units run it ------------------------------------------------

NOBODY = 65534  # nobody / nogroup: uid and gid of an unprivileged user on Debian
UNIT_LIKE = (
    "setpriv",
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--no-new-privs",
    "--inh-caps=-all",
    "--bounding-set=-all",
)  # fmt: skip  User=, Group=, NoNewPrivileges=yes, CapabilityBoundingSet= of the units


def _low_ports(n: int) -> list[int]:
    """Free ports below 1024 on 127.0.0.1 (only root can bind them)."""
    found: list[int] = []
    for port in range(1000, 600, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    pytest.fail("no free port below 1024")


def _process_identity(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _assert_unprivileged(pid: int) -> dict[str, str]:
    status = _process_identity(pid)
    assert status["Uid"].split() == [str(NOBODY)] * 4, status["Uid"]
    assert status["Gid"].split() == [str(NOBODY)] * 4, status["Gid"]
    assert status["Groups"] == ""
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    assert status["NoNewPrivs"] == "1"
    return status


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder the unprivileged user may use (pytest's own are root's, mode 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="gk-unpriv-"))
    folder.chmod(0o755)
    os.chown(folder, NOBODY, NOBODY)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _unit_python() -> tuple[str, dict[str, str]]:
    """An interpreter the unprivileged user can run, and the environment it needs to find
    gatekeeper and its packages. The test's own may live where that user cannot go (pyenv
    under /root, which `make install` refuses for the same reason); then the system's
    python3 of the same version runs the same packages, as the installed units do."""
    env = {"PYTHONPATH": os.pathsep.join(
        dict.fromkeys([str(REPO), sysconfig.get_paths()["purelib"],
                       sysconfig.get_paths()["platlib"]])
    )}  # fmt: skip
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}"):
        # It must find its own files as that user, and exec itself (as the shim does).
        check = "import os, sys; os.execv(sys.executable, [sys.executable, '-c', '{}'])".format(
            "import csv, gatekeeper.app, aiosqlite, aiohttp"
        )
        probe = subprocess.run(
            [*UNIT_LIKE, python, "-c", check],
            capture_output=True, env=dict(os.environ, **env), timeout=60, cwd="/",
        )  # fmt: skip
        if probe.returncode == 0:
            return python, env
    pytest.skip(f"no {version} the unprivileged user may run (the test's is {sys.executable})")


class UnitLikeDaemon(Daemon):
    """The daemon started as systemd starts gatekeeper@.service with its socket: as an
    unprivileged user without any capability, the listening sockets passed in."""

    def start_as_unit(
        self, sockets: list[tuple[str, socket.socket]], python: str, env: dict[str, str]
    ) -> UnitLikeDaemon:
        self.sockdir.chmod(0o711)  # the notify socket: systemd's, writable for the service
        (self.sockdir / "n").chmod(0o666)
        environ = dict(os.environ, NOTIFY_SOCKET=str(self.sockdir / "n"), PYTHONUNBUFFERED="1",
                       LISTEN_FDNAMES=":".join(name for name, _ in sockets), **env)  # fmt: skip
        for name in ("JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID"):
            environ.pop(name, None)
        fds = [sock.fileno() for _, sock in sockets]
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*UNIT_LIKE, python, "-c", SHIM, ",".join(map(str, fds)),
             "-m", "gatekeeper", "run", "-c", str(self.config_path)],
            stdout=self.log, stderr=subprocess.STDOUT, env=environ, cwd=self.workdir,
            pass_fds=fds,
        )  # fmt: skip
        self.wait_message("READY=1")
        return self


def test_daemon_and_pages_run_unprivileged_as_the_units_run_them(
    shared_dir: Path, upstream: Upstream, web_process
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user (make test runs as root)")
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv is missing (util-linux)")
    python, env = _unit_python()
    ftp_home = shared_dir / "ftp-home"
    ftp_home.mkdir()
    (ftp_home / "hello.txt").write_text("hello from the IBM i\n")
    ftp_port, telnet_port, spare = _low_ports(3)
    made: list[socket.socket] = []
    ftp_upstream = FtpUpstream(ftp_home)
    d = UnitLikeDaemon(
        shared_dir,
        {"listeners": [
            ftp_listener(ftp_upstream, listen=f"127.0.0.1:{ftp_port}"),
            {"name": "telnet", "protocol": "telnet", "listen": f"127.0.0.1:{telnet_port}",
             "upstream": upstream.address, "proxy_protocol": ["127.0.0.1/32"]},
        ], "web": {"listen": "127.0.0.1:0"}},
        RULES,
    )  # fmt: skip
    try:
        ftp_sock = listening(made, ftp_port)  # opened by root, as systemd opens them
        telnet_sock = listening(made, telnet_port)
        d.start_as_unit([("ftp", ftp_sock), ("telnet", telnet_sock)], python, env)
        identity = _assert_unprivileged(d.proc.pid)
        assert d.status == {"ftp": f"127.0.0.1:{ftp_port}", "telnet": f"127.0.0.1:{telnet_port}"}

        # It gates and relays on ports it could not have bound itself.
        ftp = ftplib.FTP(timeout=10)
        ftp.connect("127.0.0.1", ftp_port)
        ftp.login(USER, PASSWORD)
        got = io.BytesIO()
        ftp.retrbinary("RETR hello.txt", got.write)  # the passive port is its own, above 1024
        assert got.getvalue() == (ftp_home / "hello.txt").read_bytes()
        ftp.quit()
        with connect(("127.0.0.1", telnet_port), claim="198.51.100.9") as client:
            assert recv_exactly(client, len(BANNER)) == BANNER
            client.sendall(b"5250 data")
            assert recv_exactly(client, 9) == b"5250 data"
        for _ in range(3):
            with connect(("127.0.0.1", telnet_port), claim="203.0.113.5") as client:
                assert read_until_closed(client) == b""
        assert upstream.connections == 1
        bind = subprocess.run(
            [*UNIT_LIKE, python, "-c",
             f"import socket; socket.socket().bind(('127.0.0.1', {spare}))"],
            capture_output=True, text=True, timeout=30, cwd="/",
        )  # fmt: skip
        unprivileged_start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
        if spare < unprivileged_start:  # the user could not have bound the ports itself
            assert bind.returncode != 0 and "PermissionError" in bind.stderr, bind.stderr
        assert d.stop() == 0
    finally:
        d.close()
        ftp_upstream.close()
        for sock in made:
            sock.close()
    con = sqlite3.connect(d.database)
    try:
        rejected = con.execute("SELECT address, attempts, reason FROM rejections").fetchall()
    finally:
        con.close()
    assert rejected == [("203.0.113.5", 3, "default")]
    assert [(r["listener"], r["user"], r["outcome"]) for r in sessions(d.database)] == [
        ("ftp", "ALICE", "logged-in"), ("telnet", None, "closed")
    ]  # fmt: skip
    assert d.database.stat().st_uid == NOBODY  # written by the service user

    # The pages: the same user, the database folder read-only (ProtectSystem=strict).
    var = d.database.parent
    for path in var.iterdir():
        path.chmod(0o444)
    var.chmod(0o555)
    before = {p.name: p.read_bytes() for p in var.iterdir()}
    w = web_process(
        d.config_path, shared_dir / "web.log", (*UNIT_LIKE, python, "-m", "gatekeeper"), env
    )
    _assert_unprivileged(w.proc.pid)
    status, _, body = request("127.0.0.1", w.port, "GET", "/report.json?level=detail")
    assert status == 200
    entries = [e for loc in json.loads(body)["locations"] for e in loc["entries"]]
    assert [(e["address"], e["attempts"]) for e in entries] == [("203.0.113.5", 3)]
    assert w.stop() == 0
    assert {p.name: p.read_bytes() for p in var.iterdir()} == before
    print(f"\nunprivileged: uid/gid {NOBODY}, CapEff {identity['CapEff']}, NoNewPrivs "
          f"{identity['NoNewPrivs']}; served FTP on :{ftp_port} and Telnet on :{telnet_port} "
          f"(passed sockets), 1 FTP download, 1 Telnet echo, 3 rejections recorded; "
          f"bind :{spare} as that user: {'refused' if bind.returncode else 'allowed'}; "
          "the pages read the read-only database")  # fmt: skip

"""The report pages in a real browser, over what a real daemon recorded.

The daemon rejects connections from PROXY-claimed addresses and refuses an FTP user name
that is a script; it stops; ``gatekeeper web`` serves the database on a free loopback
port; headless Chromium loads the pages. The DOM must hold the addresses, a pie slice per
country, and the user name as text (never as a script). Screenshots are kept under the
test's tmp dir and in ``var/screenshots/`` of the repository for a person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ftp_harness import FtpUpstream
from tests.integration.harness import Daemon, Upstream, connect, read_until_closed, wait_for

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "var" / "screenshots"
NAME = "<script>document.title='pwned'</script>"
SHOWN = "&lt;SCRIPT&gt;DOCUMENT.TITLE='PWNED'&lt;/SCRIPT&gt;"  # upper-cased as recorded, as text

# Claimed client address -> (listener, connections). Locations as MaxMind's test database
# has them (DESIGN.md); 192.0.2.1 has none ("unknown").
KNOCKS = {
    "175.16.199.1": ("ftp", 3),
    "175.16.199.2": ("telnet", 1),
    "81.2.69.142": ("ftp", 2),
    "89.160.20.113": ("telnet", 1),
    "216.160.83.57": ("ftp", 1),
    "192.0.2.1": ("telnet", 1),
}
LOCATIONS = [
    ("175.16.199.1", "CN", "China", "Jilin Sheng", "Changchun", 43.88, 125.3228),
    ("175.16.199.2", "CN", "China", "Jilin Sheng", "Changchun", 43.88, 125.3228),
    ("81.2.69.142", "GB", "United Kingdom", "England", "London", 51.5142, -0.0931),
    ("89.160.20.113", "SE", "Sweden", "Östergötland County", "Linköping", 58.4167, 15.6167),
    ("216.160.83.57", "US", "United States", "Washington", "Milton", 47.2513, -122.3149),
]
USER_CLIENT = "198.51.100.7"  # allowed through the gate, refused at USER
RULES: dict[str, Any] = {
    "default": "deny",
    "allow": ["198.51.100.0/24"],
    "deny": ["175.16.199.0/24"],
    "ftp": {"deny_users": ["<SCRIPT>*", "ADMIN"]},
}
BROWSER_TIMEOUT = 60.0


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (make test installs it): required in CI")
        pytest.skip("chromium is not installed (make test installs it; in CI this test runs)")
    return found


def browse(browser: str, home: Path, url: str, *extra: str) -> str:
    """Headless Chromium, nothing but the page: no network of its own, a fresh profile."""
    args = [
        browser, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={home / 'profile'}", *extra, url,
    ]  # fmt: skip
    env = dict(os.environ, HOME=str(home))
    out = subprocess.run(
        args, capture_output=True, text=True, timeout=BROWSER_TIMEOUT, env=env, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def screenshot(browser: str, home: Path, url: str, path: Path) -> None:
    browse(browser, home, url, f"--screenshot={path}", "--window-size=1280,1800")
    assert path.stat().st_size > 10_000  # a real picture, not an empty page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / path.name)


def knock(d: Daemon) -> None:
    for address, (listener, times) in KNOCKS.items():
        for _ in range(times):
            with connect(d.address(listener), claim=address) as sock:
                read_until_closed(sock)
    with connect(d.address("ftp"), claim=USER_CLIENT) as sock:
        banner = sock.recv(1024)
        assert banner.startswith(b"220"), banner
        sock.sendall(f"USER {NAME}\r\n".encode())
        assert read_until_closed(sock).startswith(b"530")


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: Path) -> str:
        log = tmp_path / "web.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gatekeeper", "web", "-c", str(config)],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            )  # fmt: skip
        procs.append(proc)

        def address() -> str | None:
            assert proc.poll() is None, log.read_text()
            m = re.search(
                r"serving the report pages on (http://127\.0\.0\.1:\d+)/", log.read_text()
            )
            return m.group(1) if m else None

        found: str = wait_for(address, what="gatekeeper web to listen")
        return found

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(10) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def test_report_pages_in_a_browser(daemon, tmp_path: Path, web_server) -> None:
    browser = chromium()
    home = tmp_path / "ftp-home"
    home.mkdir()
    ftp_upstream = FtpUpstream(home)
    telnet_upstream = Upstream()
    try:
        listeners = [
            {"name": "ftp", "protocol": "ftp", "listen": "127.0.0.1:0",
             "upstream": ftp_upstream.address, "proxy_protocol": ["127.0.0.1/32"]},
            {"name": "telnet", "protocol": "telnet", "listen": "127.0.0.1:0",
             "upstream": telnet_upstream.address, "proxy_protocol": ["127.0.0.1/32"]},
        ]  # fmt: skip
        config: dict[str, Any] = {"listeners": listeners}
        d: Daemon = daemon(config, RULES).start()
        knock(d)
        assert d.stop() == 0
    finally:
        ftp_upstream.close()
        telnet_upstream.close()
    assert ftp_upstream.users_seen == []  # the script never reached the upstream

    # What GeoIP would have recorded (this daemon has no GeoIP database configured).
    conn = sqlite3.connect(d.database)
    with conn:
        conn.executemany(
            "INSERT OR IGNORE INTO locations (address, country, country_name, region, city, "
            "latitude, longitude) VALUES (?, ?, ?, ?, ?, ?, ?)",
            LOCATIONS,
        )
    conn.close()

    # The daemon is stopped; the pages read the database on their own.
    d.write_config({**config, "web": {"listen": "127.0.0.1:0"}})
    base = web_server(d.config_path)
    profile = tmp_path / "chromium"
    profile.mkdir()

    dom = browse(browser, profile, f"{base}/report?level=detail", "--dump-dom")
    for address in [*KNOCKS, USER_CLIENT]:
        assert f'<td class="addr">{address}</td>' in dom, address
    slices = re.findall(r'<(?:path|circle) class="slice" data-country="([^"]+)"', dom)
    assert sorted(slices) == ["CN", "GB", "SE", "US", "unknown"]
    countries = re.search(r'<section id="countries">.*?<tbody>(.*?)</tbody>', dom, re.S)
    assert countries is not None and countries.group(1).count("<tr>") == len(slices)
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert title is not None and title.group(1) == "Rejected connections - detail - gatekeeper"
    assert f'<td class="user">{SHOWN}</td>' in dom  # shown as text, escaped
    assert "<script" not in dom.lower()  # and no script element came of it
    letters = re.findall(r'<td class="letter" title="(\w+)">(\w)</td>', dom)
    assert ("ftp", "F") in letters and ("telnet", "T") in letters

    stats = browse(browser, profile, f"{base}/stats", "--dump-dom")
    assert f'<td class="user">{SHOWN}</td>' in stats
    assert "<script" not in stats.lower()
    assert 'class="bar rejected"' in stats and 'class="bar accepted"' in stats
    title = re.search(r"<title>(.*?)</title>", stats, re.S)
    assert title is not None and "pwned" not in title.group(1).lower()

    screenshot(browser, profile, f"{base}/report?level=detail", tmp_path / "report-detail.png")
    screenshot(browser, profile, f"{base}/stats", tmp_path / "stats.png")

"""Bans across a restart and ``gatekeeper bans``, against a running daemon process."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gatekeeper.store import schema
from tests.integration.harness import Daemon, Upstream, wait_for
from tests.integration.test_gate import RULES, listener


def gk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", *args], capture_output=True, text=True
    )


def bans(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return gk("bans", *args, "-c", str(d.config_path))


def listed(d: Daemon) -> list[dict[str, Any]]:
    out = bans(d, "list", "--format", "json")
    assert out.returncode == 0, out.stderr
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


def table(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT * FROM bans ORDER BY key").fetchall()
    finally:
        conn.close()


def test_bans_restored_listed_and_lifted(daemon, upstream: Upstream) -> None:
    d = daemon({"listeners": [listener("ftp", upstream.address)]}, RULES)
    now = time.time()
    u = schema.utc_text
    schema.prepare(d.database)
    conn = sqlite3.connect(d.database)
    with conn:
        conn.executemany(
            "INSERT INTO bans (key, address, listener, since, until, failures, lifted) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                ("2001:db8:1:2::/64", "2001:db8:1:2::9", "ftp", u(now - 60), u(now + 3600), 3,
                 None),
                ("192.0.2.8", "192.0.2.8", "ftp", u(now - 7200), u(now - 3600), 3, None),
                ("192.0.2.9", "192.0.2.9", "ftp", u(now - 60), u(now + 3600), 3, u(now - 1)),
            ],
        )  # fmt: skip
    conn.close()
    before = table(d.database)

    # Only the active ban comes back, and nothing is written again (no re-ban storm).
    d.start()
    wait_for(lambda: "restored 1 active bans" in d.output(), what="bans restored")
    (ban,) = listed(d)
    assert ban == {
        "key": "2001:db8:1:2::/64",
        "address": "2001:db8:1:2::9",
        "listener": "ftp",
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60)),
        "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600)),
        "failures": 3,
    }
    text = bans(d)  # `bans` alone lists, in local time
    assert text.returncode == 0
    assert "2001:db8:1:2::/64" in text.stdout
    assert time.strftime("%Y-%m-%d %H:%M", time.localtime(now + 3600)) in text.stdout

    # Lift by an address inside the banned /64; the daemon applies it at its next poll.
    lift = bans(d, "lift", "2001:db8:1:2::abcd")
    assert lift.returncode == 0, lift.stderr
    assert "2001:db8:1:2::/64" in lift.stdout
    wait_for(lambda: "ban on 2001:db8:1:2::/64 lifted" in d.output(), what="the daemon's lift")
    assert listed(d) == []
    assert bans(d).stdout.strip() == "no bans"

    again = bans(d, "lift", "2001:db8:1:2::/64")
    assert again.returncode == 1
    assert "no active ban covers 2001:db8:1:2::/64" in again.stderr
    bad = bans(d, "lift", "not-an-address")
    assert bad.returncode == 1 and "not an IPv4 or IPv6 address" in bad.stderr
    assert d.stop() == 0
    assert "restored 1 active bans" in d.output()

    rows = table(d.database)
    assert len(rows) == len(before) == 3
    assert [r for r in rows if r[0] != "2001:db8:1:2::/64"] == [
        r for r in before if r[0] != "2001:db8:1:2::/64"
    ]

    # Read-only commands work with the daemon stopped.
    assert listed(d) == []


def test_bans_without_a_database(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text("default: deny\n")
    config = tmp_path / "gk.yaml"
    config.write_text(
        "database: var/gk.db\nrules: [rules.yaml]\nlisteners:\n"
        "  - {name: ftp, protocol: ftp, listen: '127.0.0.1:2121', upstream: '127.0.0.1:21'}\n"
    )
    out = gk("bans", "-c", str(config))
    assert (out.returncode, out.stdout.strip()) == (0, "no bans")
    out = gk("bans", "list", "--format", "json", "-c", str(config))
    assert (out.returncode, json.loads(out.stdout)) == (0, [])
    out = gk("bans", "-c", str(config), "lift", "192.0.2.1")
    assert out.returncode == 1 and "no such database" in out.stderr
    assert not (tmp_path / "var").exists()

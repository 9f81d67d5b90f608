"""Reload, stop and the command line, against a running daemon process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.harness import (
    BANNER,
    Upstream,
    connect,
    read_until_closed,
    recv_exactly,
    wait_for,
)
from tests.integration.test_gate import RULES, entries, listener, report, sessions


def gk(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", *args], capture_output=True, text=True, cwd=cwd
    )


def test_reload_swaps_rules_and_keeps_sessions(daemon, upstream: Upstream) -> None:
    d = daemon({"listeners": [listener("t", upstream.address)]}, RULES).start()
    addr = d.address("t")
    session = connect(addr, claim="10.1.1.1")
    assert recv_exactly(session, len(BANNER)) == BANNER

    d.write_rules({**RULES, "deny": ["10.1.0.0/16"]})
    d.reload()
    with connect(addr, claim="10.1.1.1") as c:  # now denied
        assert read_until_closed(c) == b""
    session.sendall(b"still here")  # the established session survived the reload
    assert recv_exactly(session, 10) == b"still here"
    assert d.address("t") == addr  # same listener, same socket
    session.close()

    # A broken rule file changes nothing; the error names file and line.
    d.write_rules({"default": "deny", "allow": ["10.0.0.0/8", "10.0.0.0/33"]})
    d.reload()
    assert f"{d.rules_path}:4" in d.output()
    with connect(addr, claim="10.1.1.1") as c:  # the previous (deny 10.1/16) rules stay
        assert read_until_closed(c) == b""
    with connect(addr, claim="10.2.2.2") as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
    assert d.stop() == 0


def test_enforce_on_reload_cuts_denied_sessions(daemon, upstream: Upstream) -> None:
    d = daemon({"listeners": [listener("t", upstream.address, enforce_on_reload=True)]}, RULES)
    d.start()
    session = connect(d.address("t"), claim="10.1.1.1")
    keep = connect(d.address("t"), claim="10.2.2.2")
    assert recv_exactly(session, len(BANNER)) == BANNER
    assert recv_exactly(keep, len(BANNER)) == BANNER
    d.write_rules({**RULES, "deny": ["10.1.0.0/16"]})
    d.reload()
    assert read_until_closed(session) == b""
    keep.sendall(b"ok")
    assert recv_exactly(keep, 2) == b"ok"
    session.close()
    keep.close()
    assert d.stop() == 0
    assert sorted(r["outcome"] for r in sessions(d.database)) == ["closed", "enforced"]


def test_signals_coalesce_and_listeners_survive(daemon, upstream: Upstream) -> None:
    d = daemon({"listeners": [listener("t", upstream.address)]}, RULES).start()
    assert d.proc is not None
    for _ in range(20):
        d.proc.send_signal(signal.SIGHUP)
    d.write_rules({**RULES, "deny": ["10.3.0.0/16"]})
    d.proc.send_signal(signal.SIGHUP)

    def denied() -> bool:  # an allowed connection gets the banner, a denied one a close
        with connect(d.address("t"), claim="10.3.0.1") as c:
            return c.recv(100) == b""

    wait_for(denied, what="the last rule file to be in force")  # the last reload reads it
    with connect(d.address("t"), claim="10.4.0.1") as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
    assert d.stop() == 0


def test_reload_adds_and_removes_listeners(daemon, upstream: Upstream) -> None:
    config: dict[str, Any] = {"listeners": [listener("a", upstream.address)]}
    d = daemon(config, RULES).start()
    config["listeners"] = [listener("b", upstream.address)]
    d.write_config(config | {"database": "var/gk.db", "rules": ["rules.d/*.yaml"]})
    d.reload()
    assert set(d.status) == {"b"}
    with connect(d.address("b"), claim="10.0.0.1") as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
    assert d.stop() == 0


def test_stop_drains_then_cuts(daemon, upstream: Upstream) -> None:
    d = daemon(
        {"listeners": [listener("t", upstream.address)], "timeouts": {"drain": "0.5s"}}, RULES
    )
    d.start()
    with connect(d.address("t"), claim="10.0.0.1") as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        assert read_until_closed(c) == b""  # cut after the drain period
    assert d.stop() == 0
    assert [r["outcome"] for r in sessions(d.database)] == ["shutdown"]
    assert "stopped" in d.output()


def test_stop_waits_for_sessions_that_finish(daemon, upstream: Upstream) -> None:
    d = daemon(
        {"listeners": [listener("t", upstream.address)], "timeouts": {"drain": "20s"}}, RULES
    )
    d.start()
    c = connect(d.address("t"), claim="10.0.0.1")
    assert recv_exactly(c, len(BANNER)) == BANNER
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    d.wait_message("STOPPING=1")
    c.sendall(b"bye")  # still relayed while draining
    assert recv_exactly(c, 3) == b"bye"
    c.close()
    assert d.stop() == 0
    assert [r["outcome"] for r in sessions(d.database)] == ["closed"]


def test_check_and_lookup(tmp_path: Path) -> None:
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "gk.yaml").write_text(
        "database: var/gk.db\nrules: [rules.d/*.yaml]\nlisteners:\n"
        "  - {name: ftp, protocol: ftp, listen: '127.0.0.1:2121', upstream: '127.0.0.1:21'}\n"
        "  - {name: tel, protocol: telnet, listen: '127.0.0.1:2323', upstream: '127.0.0.1:23'}\n"
    )
    rules = tmp_path / "rules.d" / "a.yaml"
    rules.write_text(
        "default: deny\n"
        "allow:\n"
        "  - 10.0.0.0/8\n"
        "  - {network: 198.51.100.0/24, listeners: [ftp], hours: 'Mon-Fri 07:00-19:00'}\n"
        "deny:\n"
        "  - 10.66.0.0/16\n"
    )
    cfg = str(tmp_path / "gk.yaml")
    assert gk("check", "-c", cfg).returncode == 0

    out = gk("lookup", "10.66.1.2", "-c", cfg, "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert rows == [
        {"listener": n, "action": "deny", "reason": "network", "match": "10.66.0.0/16",
         "source": f"{rules}:6"} for n in ("ftp", "tel")
    ]  # fmt: skip
    monday_8 = gk(
        "lookup", "198.51.100.7", "--listener", "ftp", "--at", "2026-11-23T08:00", "-c", cfg
    )
    assert monday_8.stdout.split("\t")[:3] == ["ftp", "allow", "network"]
    sunday = gk(
        "lookup", "198.51.100.7", "--listener", "ftp", "--at", "2026-11-22T08:00", "-c", cfg
    )
    assert sunday.stdout.split("\t")[:3] == ["ftp", "deny", "schedule"]
    other = gk("lookup", "::ffff:192.0.2.1", "-c", cfg, "--listener", "tel")
    assert other.stdout.strip().split("\t") == ["tel", "deny", "default", "-", f"{rules}:1"]

    rules.write_text(
        "default: deny\nallow:\n  - 10.0.0.0/8\n  - 10.0.0.1/8\n  - {netwrk: 1.2.3.4}\n"
    )
    bad = gk("check", "-c", cfg)
    assert bad.returncode == 1
    lines = bad.stderr.splitlines()
    assert any(line.startswith(f"{rules}:4: ") for line in lines), bad.stderr
    assert any(line.startswith(f"{rules}:5: ") for line in lines), bad.stderr


def test_config_errors_stop_the_start(tmp_path: Path) -> None:
    (tmp_path / "gk.yaml").write_text("database: x.db\nrules: [r.yaml]\nlisteners: []\nbogus: 1\n")
    (tmp_path / "r.yaml").write_text("default: deny\n")
    out = gk("run", "-c", str(tmp_path / "gk.yaml"))
    assert out.returncode == 1
    assert f"{tmp_path / 'gk.yaml'}:4: " in out.stderr


def test_report_works_without_daemon(daemon, upstream: Upstream) -> None:
    d = daemon({"listeners": [listener("t", upstream.address)]}, RULES).start()
    with connect(d.address("t"), claim="192.0.2.1") as c:
        read_until_closed(c)
    assert d.stop() == 0
    rep = report(d, "--level", "detail", "--service", "t")
    assert rep["level"] == "detail" and rep["service"] == "t"
    assert entries(rep)[("t", "192.0.2.1")]["reason"] == "default"
    text = gk("report", "-c", str(d.config_path))
    assert text.returncode == 0 and "192.0.2.1" not in text.stdout  # summary: no addresses
    csv = gk("report", "-c", str(d.config_path), "--level", "detail", "--format", "csv")
    assert "192.0.2.1" in csv.stdout

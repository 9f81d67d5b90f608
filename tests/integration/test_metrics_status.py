"""/metrics and ``gatekeeper status`` against a real daemon: exact counts, reloads, stop."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gatekeeper.config import load
from gatekeeper.rules.engine import RuleSet
from tests.integration.harness import (
    BANNER,
    Upstream,
    connect,
    free_port,
    read_until_closed,
    recv_exactly,
    wait_for,
)
from tests.integration.test_gate import RULES, listener

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def status(daemon: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", "status", "-c", str(daemon.config_path), *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def status_json(daemon: Any) -> dict[str, Any]:
    out = status(daemon, "--format", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_metrics_and_status(daemon, upstream: Upstream) -> None:
    port = free_port()
    d = daemon(
        {"listeners": [listener("tel", upstream.address, protocol="telnet")],
         "metrics": {"listen": f"127.0.0.1:{port}"}},
        RULES,
    ).start()  # fmt: skip
    addr = d.address("tel")

    for claim in ("192.0.2.1", "192.0.2.2", "192.0.2.1", "10.66.1.1"):
        with connect(addr, claim=claim) as c:
            assert read_until_closed(c) == b""
    with connect(addr, claim="10.1.2.3") as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
        c.sendall(b"hello")
        assert recv_exactly(c, 5) == b"hello"
    assert upstream.connections == 1

    want = {
        ("gatekeeper_connections_accepted_total", (("listener", "tel"),)): 1,
        ("gatekeeper_connections_rejected_total", (("listener", "tel"), ("reason", "default"))): 3,
        ("gatekeeper_connections_rejected_total", (("listener", "tel"), ("reason", "network"))): 1,
        ("gatekeeper_sessions_active", (("listener", "tel"),)): 0,
        ("gatekeeper_bytes_total", (("direction", "up"), ("listener", "tel"))): 5,
        ("gatekeeper_bytes_total", (("direction", "down"), ("listener", "tel"))): len(BANNER) + 5,
        ("gatekeeper_upstream_failures_total", (("listener", "tel"),)): 0,
        ("gatekeeper_reloads_total", ()): 0,
        ("gatekeeper_reload_failures_total", ()): 0,
        ("gatekeeper_recorder_dropped_total", ()): 0,
        ("gatekeeper_bans_active", ()): 0,
    }
    want_samples = {(name, frozenset(labels)): value for (name, labels), value in want.items()}

    def counted() -> bool:
        got = scrape(port)
        return all(got.get(k) == v for k, v in want_samples.items())

    wait_for(counted, what=f"the metrics to reach {want}")
    _, spec = load(d.config_path)
    rules = RuleSet.build(spec).counts()
    got = scrape(port)
    for kind, n in rules.items():
        assert got[("gatekeeper_rules", frozenset({("kind", kind)}))] == n

    # gatekeeper status: the same numbers from the status file (rewritten every second).
    def status_caught_up() -> dict[str, Any] | None:
        data = status_json(d)
        (tel,) = data["listeners"]
        return data if tel["accepted"] == 1 and sum(tel["rejected"].values()) == 4 else None

    data = wait_for(status_caught_up, what="the status file to show the connections")
    assert data["running"] is True and data["state"] == "running"
    assert data["pid"] == d.proc.pid
    (tel,) = data["listeners"]
    assert tel["name"] == "tel" and tel["protocol"] == "telnet" and tel["mode"] == "enforce"
    assert tel["address"] == f"127.0.0.1:{addr[1]}" and tel["upstream"] == upstream.address
    assert tel["rejected"] == {"default": 3, "network": 1} and tel["sessions"] == 0
    assert data["rules"] == rules
    assert data["reloads"] == 0 and data["last_reload"] is None
    assert data["metrics"] == f"127.0.0.1:{port}"
    text = status(d)
    assert text.returncode == 0, text.stderr
    assert "running" in text.stdout and "tel" in text.stdout
    assert "4 (default 3, network 1)" in text.stdout

    # SIGHUP: the reload is counted, the listener's counters survive it.
    d.reload()
    after = scrape(port)
    assert after[("gatekeeper_reloads_total", frozenset())] == 1
    assert after[("gatekeeper_connections_accepted_total", frozenset({("listener", "tel")}))] == 1
    assert status_json(d)["reloads"] == 1  # written at reload, not only by the timer
    d.write_rules({"default": "deny", "allow": ["not a network"]})
    d.reload()
    assert scrape(port)[("gatekeeper_reload_failures_total", frozenset())] == 1
    data = status_json(d)
    assert data["reload_failures"] == 1 and data["last_reload_failed"] is True
    assert "LAST RELOAD FAILED" in status(d).stdout

    assert d.stop() == 0
    out = status(d)
    assert out.returncode == 3 and "not running" in out.stdout, out
    out = status(d, "--format", "json")
    assert out.returncode == 3 and json.loads(out.stdout)["running"] is False


def test_status_of_a_daemon_never_started(daemon, upstream: Upstream) -> None:
    d = daemon({"listeners": [listener("tel", upstream.address)]}, RULES)
    out = status(d)
    assert out.returncode == 3 and "not running" in out.stdout


def test_metrics_address_taken_fails_the_start(daemon, upstream: Upstream) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = daemon(
            {"listeners": [listener("tel", upstream.address)],
             "metrics": {"listen": f"127.0.0.1:{port}"}},
            RULES,
        )  # fmt: skip
        try:
            d.start()
        except AssertionError as exc:
            assert "metrics: cannot listen on" in str(exc)
        else:
            raise AssertionError("the daemon started although the metrics port is taken")
        assert d.proc is not None and d.proc.wait(10) != 0

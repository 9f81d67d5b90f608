"""gatekeeper.metrics: the collector's output, the status file, the metrics config."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatekeeper import metrics
from gatekeeper.config import load_settings
from gatekeeper.errors import ConfigError
from gatekeeper.rules.model import Source
from gatekeeper.settings import HostPort, ListenerSettings, Mode, Protocol, RejectStyle

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fake_listener(name: str, **counts: Any) -> SimpleNamespace:
    settings = ListenerSettings(
        name=name, protocol=Protocol.TELNET, listen=HostPort("0.0.0.0", 23),
        upstream=HostPort("ibmi", 23), reject=RejectStyle.CLOSE, source=Source("gk.yaml", 3),
        mode=counts.pop("mode", Mode.ENFORCE),
    )  # fmt: skip
    up, down = counts.pop("bytes", (0, 0))
    x = SimpleNamespace(
        name=name, settings=settings, address=f"127.0.0.1:{len(name)}", relays={1, 2},
        accepted=0, rejected={}, would_reject={}, upstream_failures=0, bans=0,
        bytes_totals=lambda: (up, down),
    )  # fmt: skip
    for key, value in counts.items():
        setattr(x, key, value)
    return x


def fake_app(**extra: Any) -> SimpleNamespace:
    listeners = {
        "telnet": fake_listener(
            "telnet", accepted=7, rejected={"default": 3, "network": 2}, upstream_failures=1,
            bytes=(100, 2000),
        ),
        "ftp": fake_listener(
            "ftp", accepted=2, would_reject={"country": 4}, bans=2, mode=Mode.MONITOR
        ),
    }  # fmt: skip
    app = SimpleNamespace(
        config_path=Path("/etc/gatekeeper/x.yaml"), started=1_700_000_000.0,
        listeners=listeners, bans=[object()], ruleset=SimpleNamespace(
            counts=lambda: {"rules": 5, "networks": 4, "countries": 1}),
        recorder=SimpleNamespace(pending=12, dropped=3), reloads=2, reload_failures=1,
        last_reload=1_700_000_100.0, last_reload_failed=False,
    )  # fmt: skip
    for key, value in extra.items():
        setattr(app, key, value)
    return app


def scrape(app: Any) -> Samples:
    text = generate_latest(metrics.registry_for(app)).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_collector_reads_the_numbers_at_scrape_time() -> None:
    app = fake_app()
    got = scrape(app)
    assert value(got, "gatekeeper_connections_accepted_total", listener="telnet") == 7
    assert value(got, "gatekeeper_connections_accepted_total", listener="ftp") == 2
    rejected = "gatekeeper_connections_rejected_total"
    assert value(got, rejected, listener="telnet", reason="default") == 3
    assert value(got, rejected, listener="telnet", reason="network") == 2
    assert not any(k[0] == rejected and ("listener", "ftp") in k[1] for k in got)
    would = "gatekeeper_connections_would_reject_total"
    assert value(got, would, listener="ftp", reason="country") == 4
    assert value(got, "gatekeeper_sessions_active", listener="telnet") == 2
    assert value(got, "gatekeeper_bytes_total", listener="telnet", direction="up") == 100
    assert value(got, "gatekeeper_bytes_total", listener="telnet", direction="down") == 2000
    assert value(got, "gatekeeper_upstream_failures_total", listener="telnet") == 1
    assert value(got, "gatekeeper_upstream_failures_total", listener="ftp") == 0
    assert value(got, "gatekeeper_bans_active") == 1
    assert value(got, "gatekeeper_bans_total") == 2
    assert value(got, "gatekeeper_recorder_pending") == 12
    assert value(got, "gatekeeper_recorder_dropped_total") == 3
    assert value(got, "gatekeeper_reloads_total") == 2
    assert value(got, "gatekeeper_reload_failures_total") == 1
    assert value(got, "gatekeeper_rules", kind="networks") == 4
    assert value(got, "gatekeeper_rules", kind="countries") == 1
    assert value(got, "gatekeeper_start_time_seconds") == 1_700_000_000.0

    # Live numbers: the next scrape sees what changed, nothing is cached.
    app.listeners["telnet"].accepted = 8
    app.listeners["telnet"].rejected["ban"] = 1
    del app.listeners["ftp"]
    got = scrape(app)
    assert value(got, "gatekeeper_connections_accepted_total", listener="telnet") == 8
    assert value(got, rejected, listener="telnet", reason="ban") == 1
    assert ("gatekeeper_connections_accepted_total", frozenset({("listener", "ftp")})) not in got


def test_registry_is_not_the_global_one() -> None:
    from prometheus_client import REGISTRY

    before = generate_latest(REGISTRY)
    metrics.registry_for(fake_app())
    assert b"gatekeeper_" not in before
    assert b"gatekeeper_" not in generate_latest(REGISTRY)


def test_snapshot_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "gk.db.status.json"
    data = metrics.snapshot(fake_app()).to_json()
    metrics.write_status(path, data)
    assert json.loads(path.read_text()) == data
    assert list(tmp_path.iterdir()) == [path]  # the temporary file is gone
    assert (path.stat().st_mode & 0o777) & ~0o640 == 0
    (telnet, ftp) = data["listeners"]
    assert telnet["rejected"] == {"default": 3, "network": 2} and telnet["sessions"] == 2
    assert ftp["mode"] == "monitor" and ftp["would_reject"] == {"country": 4}
    assert data["bans"] == {"active": 1, "total": 2}
    assert data["recorder"] == {"pending": 12, "dropped": 3}


def test_read_status_judges_running(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    now = time.time()
    assert not metrics.read_status(path, now).running  # absent
    data = metrics.snapshot(fake_app(), now=now).to_json()
    metrics.write_status(path, data)
    found = metrics.read_status(path, now + 1)
    assert found.running and found.data == data
    stale = metrics.read_status(path, now + metrics.STATUS_STALE + 1)
    assert not stale.running and "not updated" in stale.why
    metrics.write_status(path, {**data, "pid": 2**22 + 12345})  # above pid_max: never alive
    assert "gone" in metrics.read_status(path, now).why
    metrics.mark_stopped(path, data)
    assert metrics.read_status(path, now).why == "stopped"
    path.write_text("{not json")
    assert "unreadable" in metrics.read_status(path, now).why
    assert data["pid"] == os.getpid()


CONFIG = """\
database: var/gk.db
listeners:
  - name: tel
    protocol: telnet
    listen: "127.0.0.1:2323"
    upstream: "127.0.0.1:23"
"""


def load(tmp_path: Path, extra: str) -> Any:
    (tmp_path / "rules.d").mkdir(exist_ok=True)
    (tmp_path / "rules.d" / "r.yaml").write_text("default: deny\n")
    path = tmp_path / "gk.yaml"
    path.write_text(textwrap.dedent(CONFIG) + "rules: [rules.d/*.yaml]\n" + extra)
    return load_settings(path)


def test_metrics_config(tmp_path: Path) -> None:
    settings = load(tmp_path, "")
    assert settings.metrics_listen is None
    assert settings.status_file == tmp_path / "var" / "gk.db.status.json"
    settings = load(tmp_path, 'metrics:\n  listen: "127.0.0.1:9120"\nstatus_file: st.json\n')
    assert settings.metrics_listen == HostPort("127.0.0.1", 9120)
    assert settings.status_file == tmp_path / "st.json"


@pytest.mark.parametrize(
    ("extra", "line", "words"),
    [
        ('metrics:\n  listen: "nowhere"\n', 9, "bad metrics listen address"),
        ('metrics:\n  listen: "127.0.0.1:0"\n', 9, "port must be"),
        ('metrics:\n  listen: "127.0.0.1:2323"\n', 9, "clashes with listener 'tel'"),
        ('metrics:\n  listen: "0.0.0.0:2323"\n', 9, "clashes"),
        ('metrics:\n  port: 9120\n', 9, "unknown key 'port'"),
    ],
)  # fmt: skip
def test_metrics_config_problems(tmp_path: Path, extra: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, extra)
    problems = caught.value.problems
    assert any(
        p.file.endswith("gk.yaml") and p.line == line and words in p.message for p in problems
    ), problems

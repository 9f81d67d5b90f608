"""What the running daemon is doing: Prometheus metrics and the status file.

Nothing here touches the accept path. The listeners keep plain integer counters
(``gatekeeper.net.listener``); ``snapshot()`` reads them, with the other numbers of the
daemon, into plain data when asked:

- ``GatekeeperCollector``, a ``prometheus_client`` collector registered in a registry of its
  own, calls it at each scrape, in the metrics server's thread (``MetricsServer``: the
  library's ``start_http_server``), so a slow scraper never holds up the event loop;
- the daemon writes it every second as a small JSON file next to the database (written
  to a temporary file and renamed, so a reader never sees half of it), which
  ``gatekeeper status`` reads (``read_status``).

Two numbers tell an administrator (and the fault tests) that nothing leaks: the event
loop's tasks, and the process's open files (``/proc/self/fd``; Prometheus gets them from
the library's own process collector as ``process_open_fds``, with memory and CPU). Counting
descriptors takes milliseconds with thousands of sessions, so it is done where the file is
written, in the writer's thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gatekeeper import __version__
from gatekeeper.settings import HostPort, ListenerSettings

# The status file is rewritten every STATUS_INTERVAL seconds; one older than STATUS_STALE
# is from a daemon that no longer runs (killed, or its event loop is stuck).
STATUS_INTERVAL = 1.0
STATUS_STALE = 5.0
# A scrape reads dicts the event loop may change meanwhile; it starts over (rarely needed).
_SNAPSHOT_TRIES = 5


class ObservedListener(Protocol):
    """What is read of a listener (``gatekeeper.net.listener.Listener``)."""

    @property
    def name(self) -> str: ...
    @property
    def settings(self) -> ListenerSettings: ...
    @property
    def accepted(self) -> int: ...
    @property
    def rejected(self) -> dict[str, int]: ...
    @property
    def would_reject(self) -> dict[str, int]: ...
    @property
    def upstream_failures(self) -> int: ...
    @property
    def bans(self) -> int: ...

    @property
    def address(self) -> str: ...

    @property
    def relays(self) -> Any: ...  # a Sized collection of sessions

    def bytes_totals(self) -> tuple[int, int]: ...


class ObservedRecorder(Protocol):
    @property
    def dropped(self) -> int: ...

    @property
    def pending(self) -> int: ...


class ObservedRules(Protocol):
    def counts(self) -> dict[str, int]: ...


class Observed(Protocol):
    """What is read of the daemon (``gatekeeper.app.App``)."""

    @property
    def config_path(self) -> Path: ...
    @property
    def started(self) -> float: ...
    @property
    def listeners(self) -> Mapping[str, ObservedListener]: ...
    @property
    def recorder(self) -> ObservedRecorder: ...
    @property
    def ruleset(self) -> ObservedRules: ...
    @property
    def reloads(self) -> int: ...
    @property
    def reload_failures(self) -> int: ...
    @property
    def last_reload(self) -> float | None: ...
    @property
    def last_reload_failed(self) -> bool: ...

    @property
    def bans(self) -> Any: ...  # Sized: the bans held


@dataclass(frozen=True, slots=True)
class ListenerSnapshot:
    name: str
    protocol: str
    address: str
    upstream: str
    mode: str
    sessions: int
    accepted: int
    rejected: dict[str, int]
    would_reject: dict[str, int]
    upstream_failures: int
    bans: int
    bytes_up: int
    bytes_down: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    pid: int
    version: str
    config: str
    started: float
    updated: float
    listeners: list[ListenerSnapshot]
    rules: dict[str, int]
    bans_active: int
    bans_total: int
    recorder_pending: int
    recorder_dropped: int
    reloads: int
    reload_failures: int
    last_reload: float | None
    last_reload_failed: bool
    state: str = "running"
    tasks: int = 0  # the event loop's asyncio tasks (a handful when idle: a leak shows)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "pid": self.pid,
            "version": self.version,
            "config": self.config,
            "started": self.started,
            "updated": self.updated,
            "listeners": [
                {
                    "name": x.name,
                    "protocol": x.protocol,
                    "address": x.address,
                    "upstream": x.upstream,
                    "mode": x.mode,
                    "sessions": x.sessions,
                    "accepted": x.accepted,
                    "rejected": x.rejected,
                    "would_reject": x.would_reject,
                    "upstream_failures": x.upstream_failures,
                    "bans": x.bans,
                    "bytes_up": x.bytes_up,
                    "bytes_down": x.bytes_down,
                }
                for x in self.listeners
            ],
            "rules": self.rules,
            "bans": {"active": self.bans_active, "total": self.bans_total},
            "recorder": {"pending": self.recorder_pending, "dropped": self.recorder_dropped},
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "last_reload": self.last_reload,
            "last_reload_failed": self.last_reload_failed,
            "tasks": self.tasks,
        }


def _address(listener: ObservedListener) -> str:
    try:
        return listener.address
    except OSError:  # its socket is closed (stopping)
        return str(listener.settings.listen)


def _listener_snapshot(x: ObservedListener) -> ListenerSnapshot:
    up, down = x.bytes_totals()
    s = x.settings
    return ListenerSnapshot(
        name=x.name, protocol=str(s.protocol), address=_address(x), upstream=str(s.upstream),
        mode=str(s.mode), sessions=len(x.relays), accepted=x.accepted,
        rejected=dict(x.rejected), would_reject=dict(x.would_reject),
        upstream_failures=x.upstream_failures, bans=x.bans, bytes_up=up, bytes_down=down,
    )  # fmt: skip


def count_tasks(loop: asyncio.AbstractEventLoop | None = None) -> int:
    """Tasks not yet done on ``loop`` (default: this thread's running loop; none: 0).
    ``asyncio.all_tasks`` may be called from another thread: it copies the task set,
    starting over if the loop changed it meanwhile."""
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return 0
    return len(asyncio.all_tasks(loop))


def count_open_files() -> int:
    """File descriptors the process holds (sockets, pipes, the database, ...)."""
    return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir opened to read it


def snapshot(
    app: Observed, now: float | None = None, *, loop: asyncio.AbstractEventLoop | None = None
) -> Snapshot:
    """The daemon's numbers as plain data. Safe from another thread (pass the daemon's
    ``loop`` there, for its tasks): it only reads, and starts over if the event loop changed
    a collection while it was being copied."""
    for attempt in range(_SNAPSHOT_TRIES):
        try:
            listeners = [_listener_snapshot(x) for x in list(app.listeners.values())]
            break
        except RuntimeError:  # "changed size during iteration"
            if attempt == _SNAPSHOT_TRIES - 1:
                raise
    return Snapshot(
        pid=os.getpid(),
        version=__version__,
        config=str(app.config_path),
        started=app.started,
        updated=time.time() if now is None else now,
        listeners=listeners,
        rules=dict(app.ruleset.counts()),
        bans_active=len(app.bans),
        bans_total=sum(x.bans for x in listeners),
        recorder_pending=app.recorder.pending,
        recorder_dropped=app.recorder.dropped,
        reloads=app.reloads,
        reload_failures=app.reload_failures,
        last_reload=app.last_reload,
        last_reload_failed=app.last_reload_failed,
        tasks=count_tasks(loop),
    )


# -- Prometheus ------------------------------------------------------------------------------
class GatekeeperCollector(Collector):
    """Reads the daemon's numbers at each scrape (no metric objects updated on the hot path)."""

    def __init__(self, app: Observed) -> None:
        self.app = app
        # Made on the daemon's loop; scrapes run in the server's thread and read its tasks.
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    def collect(self) -> Iterator[Metric]:
        snap = snapshot(self.app, loop=self.loop)
        by_listener = ["listener"]
        accepted = CounterMetricFamily(
            "gatekeeper_connections_accepted",
            "Connections let through to the upstream (monitor mode's would-rejects included).",
            labels=by_listener,
        )
        rejected = CounterMetricFamily(
            "gatekeeper_connections_rejected",
            "Connections rejected, by reason (network, country, default, schedule, ban, user, "
            "limit, proxy).",
            labels=["listener", "reason"],
        )
        would = CounterMetricFamily(
            "gatekeeper_connections_would_reject",
            "Monitor mode: connections let through that the rules would reject, by reason.",
            labels=["listener", "reason"],
        )
        active = GaugeMetricFamily(
            "gatekeeper_sessions_active", "Sessions open now.", labels=by_listener
        )
        relayed = CounterMetricFamily(
            "gatekeeper_bytes",
            "Bytes relayed: up is client to upstream, down is upstream to client.",
            labels=["listener", "direction"],
        )
        upstream = CounterMetricFamily(
            "gatekeeper_upstream_failures",
            "Admitted connections whose upstream could not be reached.",
            labels=by_listener,
        )
        for x in snap.listeners:
            accepted.add_metric([x.name], x.accepted)
            for reason, n in sorted(x.rejected.items()):
                rejected.add_metric([x.name, reason], n)
            for reason, n in sorted(x.would_reject.items()):
                would.add_metric([x.name, reason], n)
            active.add_metric([x.name], x.sessions)
            relayed.add_metric([x.name, "up"], x.bytes_up)
            relayed.add_metric([x.name, "down"], x.bytes_down)
            upstream.add_metric([x.name], x.upstream_failures)
        yield from (accepted, rejected, would, active, relayed, upstream)
        yield GaugeMetricFamily("gatekeeper_bans_active", "Bans in force.", snap.bans_active)
        yield CounterMetricFamily(
            "gatekeeper_bans", "Bans made since start.", value=snap.bans_total
        )
        yield GaugeMetricFamily(
            "gatekeeper_recorder_pending",
            "Records waiting to be written to the database.",
            snap.recorder_pending,
        )
        yield CounterMetricFamily(
            "gatekeeper_recorder_dropped",
            "Records that could not be written and were given up.",
            value=snap.recorder_dropped,
        )
        yield CounterMetricFamily(
            "gatekeeper_reloads", "Successful reloads since start.", value=snap.reloads
        )
        yield CounterMetricFamily(
            "gatekeeper_reload_failures",
            "Reloads refused (configuration or rule errors) since start.",
            value=snap.reload_failures,
        )
        rules = GaugeMetricFamily(
            "gatekeeper_rules", "Size of the rule set in force, by kind.", labels=["kind"]
        )
        for kind, n in snap.rules.items():
            rules.add_metric([kind], n)
        yield rules
        yield GaugeMetricFamily(
            "gatekeeper_start_time_seconds", "When the daemon started (Unix time).", snap.started
        )
        yield GaugeMetricFamily(
            "gatekeeper_tasks",
            "asyncio tasks of the event loop (steady when nothing leaks).",
            snap.tasks,
        )
        info = GaugeMetricFamily("gatekeeper_info", "The running version.", labels=["version"])
        info.add_metric([snap.version], 1)
        yield info


def registry_for(app: Observed) -> CollectorRegistry:
    """A registry of its own (not the global one): the gatekeeper collector and the
    library's process collector (``process_open_fds``, memory, CPU, from /proc)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatekeeperCollector(app))
    ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """``/metrics`` served by prometheus_client's own HTTP server, in its own thread."""

    def __init__(self, listen: HostPort, registry: CollectorRegistry) -> None:
        self.listen = listen
        self.registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; OSError if the address cannot be bound."""
        self._server, self._thread = start_http_server(
            self.listen.port, self.listen.host.strip("[]"), registry=self.registry
        )

    @property
    def address(self) -> str:
        if self._server is None:
            return str(self.listen)
        host, port = self._server.server_address[:2]
        return str(HostPort(str(host), int(port)))

    def stop(self) -> None:
        """Stop serving (blocks up to half a second: run it in a thread)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None


# -- the status file -------------------------------------------------------------------------
def write_status(path: Path, data: Mapping[str, Any], *, process: bool = False) -> None:
    """Write ``data`` as JSON atomically: a temporary file in the same folder, renamed.

    Mode 0640 (with the umask): readable by the daemon's group, as the state directory is.
    ``process``: add the figures read from /proc (``open_files``), here in the caller's
    thread: the daemon writes from a worker thread, off the event loop.
    """
    if process:
        data = {**data, "open_files": count_open_files()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(data, indent=1, sort_keys=False) + "\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def mark_stopped(path: Path, data: Mapping[str, Any]) -> None:
    """At a clean stop: the last numbers, marked stopped."""
    write_status(path, {**data, "state": "stopped", "stopped": time.time()})


@dataclass(frozen=True, slots=True)
class Status:
    """What ``gatekeeper status`` found: ``running`` or why not, and the file's data."""

    running: bool
    why: str  # "" when running
    data: dict[str, Any] | None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (the daemon runs as gatekeeper)
        return True
    except OSError:
        return True
    return True


def read_status(path: Path, now: float | None = None) -> Status:
    """Read the status file and judge whether the daemon that wrote it still runs."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Status(False, f"no status file {path}", None)
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        updated = float(data["updated"])
        pid = int(data["pid"])
    except (ValueError, KeyError, TypeError) as exc:
        return Status(False, f"unreadable status file {path}: {exc}", None)
    now = time.time() if now is None else now
    if data.get("state") == "stopped":
        return Status(False, "stopped", data)
    if now - updated > STATUS_STALE:
        return Status(False, f"status file not updated for {now - updated:.0f}s", data)
    if not _pid_alive(pid):
        return Status(False, f"process {pid} is gone", data)
    return Status(True, "", data)

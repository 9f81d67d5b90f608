"""Wiring: listeners, recorder and signals (HUP reloads, TERM drains and stops).

The rule set is one reference, ``App.ruleset``: a reload builds the new one off to the side
(in a thread, so the event loop keeps accepting) and swaps it in one assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

from gatekeeper import __version__, config, metrics, systemd
from gatekeeper.bans import BanList
from gatekeeper.errors import ConfigError, GatekeeperError
from gatekeeper.eventlog import EventLog
from gatekeeper.geo import GeoLocator
from gatekeeper.net.listener import Listener
from gatekeeper.rules.engine import RuleSet
from gatekeeper.settings import ListenerSettings, Mode, Settings
from gatekeeper.store.recorder import Recorder, tuning_from_env

log = logging.getLogger(__name__)

# How often the daemon looks for bans lifted by ``gatekeeper bans lift`` and drops expired
# ones: PRODUCT.md promises a lift takes effect within a second.
BAN_POLL_INTERVAL = 1.0


def _load(path: Path, locator: GeoLocator | None = None) -> tuple[Settings, RuleSet, GeoLocator]:
    """Config, rules and GeoIP databases. ``locator`` (at reload) is kept if its files are
    unchanged; a database that cannot be used is a warning, never an error: the daemon
    runs with locations unknown and country rules matching nothing."""
    settings, spec = config.load(path)
    settings = _apply_global_mode(settings)
    locator = GeoLocator.open(settings.geoip, previous=locator)
    return settings, RuleSet.build(spec, country_of=locator.country), locator


def _apply_global_mode(settings: Settings) -> Settings:
    """``mode: monitor`` at the top puts every listener in monitor mode."""
    if settings.mode is not Mode.MONITOR:
        return settings
    listeners = tuple(replace(x, mode=Mode.MONITOR) for x in settings.listeners)
    return replace(settings, listeners=listeners)


class App:
    """The running daemon."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.settings, self.ruleset, self.locator = _load(config_path)
        self.listeners: dict[str, Listener] = {}
        self.retired: list[Listener] = []  # removed at reload; their sessions still drain
        self.recorder = Recorder(
            self.settings.database,
            retention=self.settings.retention,
            locator=self.locator,
            **tuning_from_env(),  # GATEKEEPER_FLUSH_INTERVAL, GATEKEEPER_MAX_PENDING (tests)
        )
        # First rejections, flood summaries and syslog, from what each flush wrote.
        self.eventlog = self.recorder.observer = EventLog(self.settings.syslog)
        self.bans = BanList()
        self._bans_task: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()
        self.started = time.time()
        self.reloads = 0
        self.last_reload: float | None = None
        self.reload_failures = 0
        self.last_reload_failed = False
        # /metrics (metrics.listen) in a thread of its own, and the status file.
        self.metrics_server: metrics.MetricsServer | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._status_failing = False
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_again = False
        # Socket activation: listener name -> the socket systemd passed for it. Kept for
        # the daemon's life: each listener gets a duplicate, so a reload never loses one.
        self.passed: dict[str, systemd.PassedSocket] = {}
        self._watchdog_task: asyncio.Task[None] | None = None

    # -- start and stop -----------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        _raise_fd_limit()
        await self.recorder.start()
        self.eventlog.start()
        marker = await self._restore_bans()
        self._bans_task = loop.create_task(self._watch_bans(marker), name="gatekeeper-bans")
        self._adopt_sockets()
        try:
            for settings in self.settings.listeners:
                self.listeners[settings.name] = await self._start_listener(settings)
            await self._apply_metrics(self.settings)
        except GatekeeperError:
            await self._shutdown()
            raise
        self._status_task = loop.create_task(self._write_status(), name="gatekeeper-status")
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        log.info("gatekeeper %s started: %s; %s", __version__, self._listening(), self._rules())
        systemd.notify("READY=1", f"STATUS={self._status()}")
        if (period := systemd.watchdog_period()) is not None:
            watchdog = systemd.keep_alive(period)
            self._watchdog_task = loop.create_task(watchdog, name="gatekeeper-watchdog")
        await self.stopping.wait()
        systemd.notify("STOPPING=1", "STATUS=stopping: draining sessions")
        loop.remove_signal_handler(signal.SIGHUP)  # a further TERM or INT changes nothing
        await self._shutdown()
        return 0

    async def _start_listener(self, settings: ListenerSettings) -> Listener:
        listener = Listener(settings, self, self.recorder)
        passed = self.passed.get(settings.name)
        try:
            await listener.start(passed.sock.dup() if passed is not None else None)
        except OSError as exc:
            raise GatekeeperError(
                f"{settings.source}: listener {settings.name}: cannot listen on "
                f"{settings.listen}: {exc.strerror or exc}"
            ) from exc
        return listener

    async def _shutdown(self) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
        if self._status_task is not None:
            self._status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._status_task
            self._status_task = None
        if self._bans_task is not None:
            self._bans_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._bans_task
            self._bans_task = None
        every = [*self.listeners.values(), *self.retired]
        for listener in every:
            await listener.stop_accepting()
        sessions = sum(len(x.relays) for x in every)
        if sessions:
            log.info("stopping: draining %d session(s)", sessions)
        cut = await asyncio.gather(*(x.drain(x.settings.timeouts.drain) for x in every))
        if sum(cut):
            log.warning("stopping: cut %d session(s) still open after the drain period", sum(cut))
        await self.recorder.close()
        await self.eventlog.close()  # after the last flush: its events are sent too
        await self._stop_metrics()
        self._save_status(stopped=True)
        for passed in self.passed.values():
            passed.sock.close()
        if self._watchdog_task is not None:  # pinged while sessions drained
            self._watchdog_task.cancel()
        log.info("gatekeeper stopped")

    def _adopt_sockets(self) -> None:
        """Socket activation: take the sockets systemd passed, one per listener (by name,
        else by port); close the ones no listener wants."""
        passed, unmatched = systemd.assign(systemd.listen_sockets(), self.settings.listeners)
        for item in unmatched:
            log.warning(
                "socket %r on %s passed by systemd matches no listener by name or port: closed",
                item.name, item.address,
            )  # fmt: skip
            item.sock.close()
        for name, item in passed.items():
            log.info("listener %s: socket %r on %s passed by systemd (the socket unit sets "
                     "the address; listen: in the config is not used)", name, item.name,
                     item.address)  # fmt: skip
        self.passed = passed

    # -- bans ---------------------------------------------------------------------------
    async def _restore_bans(self) -> int | None:
        """Put the active bans of the database back in force, without recording them again.

        Returns the lift marker for ``_watch_bans``, taken before the bans are read so a
        lift made in between is seen by the first poll. None if the database could not be
        read (logged; the poll tries again).
        """
        try:
            _, marker = await self.recorder.lifted_since(None)
            saved = await self.recorder.load_bans(time.time())
        except (sqlite3.Error, ValueError) as exc:
            log.error("cannot restore bans from %s: %s", self.settings.database, exc)
            return None
        restored = 0
        for ban in saved:
            try:
                self.bans.add(ban)
            except ValueError as exc:
                log.warning("%s: ban on %r not restored: %s", self.settings.database, ban.key, exc)
            else:
                restored += 1
        log.info("restored %d active bans", restored)
        return marker

    async def _watch_bans(self, marker: int | None) -> None:
        """Once a second: apply lifts made by an administrator, drop expired bans."""
        failing = False
        while True:
            await asyncio.sleep(BAN_POLL_INTERVAL)
            try:
                keys, marker = await self.recorder.lifted_since(marker)
            except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite connection gone
                if not failing:
                    log.error("bans: cannot read lifts from %s: %s", self.settings.database, exc)
                failing = True
            else:
                failing = False
                for key in keys:
                    if self.bans.lift(key):
                        log.info("ban on %s lifted", key)
                    else:
                        log.info("ban on %s lifted (it was not in force here)", key)
            self.bans.prune(time.time())

    # -- reload -------------------------------------------------------------------------
    def request_reload(self) -> None:
        """SIGHUP: reload now, or once more after the reload under way (signals coalesce)."""
        if self._reload_task is not None:
            self._reload_again = True
            return
        self._reload_task = asyncio.get_running_loop().create_task(self._reload_loop())

    async def _reload_loop(self) -> None:
        try:
            while True:
                self._reload_again = False
                await self.reload()
                if not self._reload_again:
                    break
        finally:
            self._reload_task = None

    async def reload(self) -> bool:
        """Re-read config and rules; on any error keep everything as it was."""
        systemd.reloading()
        try:
            settings, ruleset, locator = await asyncio.to_thread(
                _load, self.config_path, self.locator
            )
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload failed: %s", problem)
            log.error("reload failed: the previous configuration and rules stay in force")
            self.reload_failures += 1
            self.last_reload_failed = True
            self._save_status()
            systemd.notify("READY=1", f"STATUS={self._status()}; last reload failed")
            return False
        if settings.database != self.settings.database:
            log.warning("database: a new path takes effect at restart, not at reload")
        before = self.ruleset.counts(), set(self.listeners)
        self.ruleset = ruleset
        self.locator = self.recorder.locator = locator
        await self._apply_listeners(settings)
        self.settings = settings
        self.eventlog.configure(settings.syslog)
        cut = sum(x.enforce() for x in self.listeners.values() if x.settings.enforce_on_reload)
        await self.recorder.flush()
        await self._apply_metrics(settings, reload=True)
        self.reloads += 1
        self.last_reload = time.time()
        self.last_reload_failed = False
        self._save_status()
        log.info("reloaded: %s; %s%s", self._changes(*before), self._listening(),
                 f"; cut {cut} session(s) now denied" if cut else "")  # fmt: skip
        systemd.notify("READY=1", f"STATUS={self._status()}")
        return True

    async def _apply_listeners(self, settings: Settings) -> None:
        """Keep listeners whose address is unchanged, start new ones, retire removed ones.

        A listener that moves is started on its new address before the old one stops, so a
        bind failure leaves the old one accepting: a reload never loses a listener.
        """
        wanted = {x.name: x for x in settings.listeners}
        for name, listener in list(self.listeners.items()):
            new = wanted.get(name)
            adopted = name in self.passed  # its address is the socket unit's, not ours
            if new is not None and (new.listen == listener.settings.listen or adopted):
                listener.update(new)
                continue
            if new is not None:
                try:
                    replacement = await self._start_listener(new)
                except GatekeeperError as exc:
                    log.error("reload: %s; it keeps listening on %s", exc, listener.address)
                    continue
            await listener.stop_accepting()
            self.retired.append(self.listeners.pop(name))
            if new is not None:
                self.listeners[name] = replacement
        for name, new in wanted.items():
            if name not in self.listeners:
                try:
                    self.listeners[name] = await self._start_listener(new)
                except GatekeeperError as exc:
                    log.error("reload: %s", exc)
        self.retired = [x for x in self.retired if x.relays]

    # -- metrics and the status file ------------------------------------------------------
    async def _apply_metrics(self, settings: Settings, *, reload: bool = False) -> None:
        """Serve /metrics on ``settings.metrics_listen`` (a changed address: serve anew)."""
        listen = settings.metrics_listen
        current = self.metrics_server
        if current is not None and current.listen == listen:
            return
        await self._stop_metrics()
        if listen is None:
            return
        server = metrics.MetricsServer(listen, metrics.registry_for(self))
        try:
            await asyncio.to_thread(server.start)
        except OSError as exc:
            message = f"metrics: cannot listen on {listen}: {exc.strerror or exc}"
            if not reload:
                raise GatekeeperError(f"{settings.path}: {message}") from exc
            log.error("reload: %s; /metrics is not served", message)
            return
        self.metrics_server = server
        log.info("metrics: serving /metrics on %s", server.address)

    async def _stop_metrics(self) -> None:
        server, self.metrics_server = self.metrics_server, None
        if server is not None:
            await asyncio.to_thread(server.stop)

    def _status_data(self) -> dict[str, object]:
        data = metrics.snapshot(self).to_json()
        if self.metrics_server is not None:
            data["metrics"] = self.metrics_server.address
        return data

    def _save_status(self, *, stopped: bool = False) -> None:
        """Write the status file now (start, reload, stop): one small file, renamed."""
        path = self.settings.status_file
        if path is None:
            return
        try:
            if stopped:
                metrics.mark_stopped(path, self._status_data())
            else:  # on the loop, at start and reload only: /proc/self/fd is read once
                metrics.write_status(path, self._status_data(), process=True)
        except OSError as exc:
            log.warning("status file %s: cannot write: %s", path, exc.strerror or exc)

    async def _write_status(self) -> None:
        """Every second: the numbers on the loop, the file written in a thread."""
        while True:
            path = self.settings.status_file
            if path is not None:
                try:
                    data = self._status_data()  # on the loop; open files in the thread
                    await asyncio.to_thread(metrics.write_status, path, data, process=True)
                except OSError as exc:
                    if not self._status_failing:
                        log.warning("status file %s: cannot write: %s", path, exc.strerror or exc)
                    self._status_failing = True
                else:
                    self._status_failing = False
            await asyncio.sleep(metrics.STATUS_INTERVAL)

    # -- what to tell people ------------------------------------------------------------
    def _listening(self) -> str:
        parts = []
        for x in self.listeners.values():
            mode = ", monitor" if x.settings.mode is Mode.MONITOR else ""
            parts.append(
                f"{x.name} ({x.settings.protocol}{mode}) on {x.address} -> {x.settings.upstream}"
            )
        return ", ".join(parts) or "no listeners"

    def _changes(self, counts: dict[str, int], listeners: set[str]) -> str:
        """What a reload changed: "rules 12 -> 14, networks 30, ...; listeners added: x"."""
        now = self.ruleset.counts()
        parts = [f"{k} {counts.get(k, 0)} -> {v}" if counts.get(k) != v else f"{k} {v}"
                 for k, v in now.items()]  # fmt: skip
        text = ", ".join(parts)
        if added := sorted(set(self.listeners) - listeners):
            text += "; listeners added: " + ", ".join(added)
        if removed := sorted(listeners - set(self.listeners)):
            text += "; listeners removed: " + ", ".join(removed)
        return text

    def _rules(self) -> str:
        counts = self.ruleset.counts()
        return ", ".join(f"{v} {k}" for k, v in counts.items())

    def _status(self) -> str:
        return "listening: " + " ".join(f"{x.name}={x.address}" for x in self.listeners.values())


def _raise_fd_limit() -> None:
    """Every session holds two descriptors: take the whole hard limit (as HAProxy and nginx
    do), not the soft 1,024 a shell or unit starts with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    log.info("file descriptors: up to %d (about %d sessions)", soft, max(0, soft - 64) // 2)

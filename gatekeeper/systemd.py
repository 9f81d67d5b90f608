"""systemd's side of the daemon, standard library only; each part does nothing without systemd.

- the notification protocol (sd_notify): one datagram to ``$NOTIFY_SOCKET``;
- the watchdog: ``WATCHDOG=1`` at half the interval of ``$WATCHDOG_USEC``;
- socket activation: the listening sockets of ``$LISTEN_FDS``, named by ``$LISTEN_FDNAMES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from gatekeeper.settings import ListenerSettings, normalise_host

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``fields`` (e.g. ``"READY=1"``, ``"STATUS=..."``); True if a manager was told."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never wait on the event loop: a manager that is not reading (its queue full)
            # loses this message, the daemon goes on.
            sock.setblocking(False)
            sock.sendto(message, path)
    except BlockingIOError:
        log.warning("systemd's notify socket %s is full: %r not sent", path, message[:60])
        return False
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", path, exc)
        return False
    return True


def reloading() -> bool:
    """Tell systemd a reload started (with the timestamp Type=notify-reload asks for)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


# -- watchdog -------------------------------------------------------------------------------
def watchdog_period(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or None when systemd watches no one here.

    ``WatchdogSec=`` reaches the service as ``$WATCHDOG_USEC``; ``$WATCHDOG_PID``, when set,
    names the process it is meant for. We ping at half the interval, as
    sd_watchdog_enabled(3) recommends, so one late tick of a busy loop is no missed ping.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "").strip()
    if not usec:
        return None
    watched = env.get("WATCHDOG_PID", "").strip()
    if watched and watched != str(os.getpid() if pid is None else pid):
        return None
    try:
        interval = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
        return None
    return interval / 2 / 1_000_000 if interval > 0 else None


async def keep_alive(period: float) -> None:
    """Tell systemd we are alive every ``period`` seconds, until cancelled.

    The pings come from the event loop itself: a loop that hangs stops them, and systemd
    kills and restarts the service (``WatchdogSec=`` with ``Restart=on-failure``).
    """
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(period)


# -- socket activation ----------------------------------------------------------------------
SD_LISTEN_FDS_START = 3  # the first descriptor systemd passes, sd_listen_fds(3)
_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


@dataclass(frozen=True)
class PassedSocket:
    """A listening socket systemd passed us, with its ``FileDescriptorName=``."""

    name: str
    sock: socket.socket

    @property
    def host(self) -> str:
        return normalise_host(str(self.sock.getsockname()[0]))

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def address(self) -> str:
        host, port = self.host, self.port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_sockets(
    environ: MutableMapping[str, str] | None = None,
    pid: int | None = None,
    first: int = SD_LISTEN_FDS_START,
) -> list[PassedSocket]:
    """Adopt the sockets of socket activation: ``$LISTEN_FDS`` descriptors from 3 on.

    Only when ``$LISTEN_PID`` is our pid (the variables may have been inherited by a process
    they were not meant for). The variables are removed in every case, so that no child of
    ours takes them for its own. A descriptor that is not a listening TCP socket is logged
    and closed. The names are ``$LISTEN_FDNAMES`` (``FileDescriptorName=``), "unknown" when
    systemd gave none, as in sd_listen_fds_with_names(3). ``first`` is the first
    descriptor: 3 under systemd, another for tests.
    """
    env = os.environ if environ is None else environ
    values = {key: env.pop(key, None) for key in _ACTIVATION_VARIABLES}
    count_text, listen_pid = values["LISTEN_FDS"], values["LISTEN_PID"]
    fdnames = values["LISTEN_FDNAMES"]
    if not count_text or not listen_pid:
        return []
    if listen_pid.strip() != str(os.getpid() if pid is None else pid):
        log.info("LISTEN_FDS ignored: meant for process %s, not this one", listen_pid.strip())
        return []
    try:
        count = int(count_text)
    except ValueError:
        log.warning("LISTEN_FDS=%r ignored: not a number", count_text)
        return []
    names = fdnames.split(":") if fdnames else []
    if names and len(names) != count:
        log.warning("LISTEN_FDNAMES has %d names for %d sockets", len(names), count)
    names = (names + ["unknown"] * count)[:count]
    passed = []
    for offset, name in enumerate(names):
        adopted = _adopt(first + offset, name)
        if adopted is not None:
            passed.append(adopted)
    return passed


def _adopt(fd: int, name: str) -> PassedSocket | None:
    try:
        os.set_inheritable(fd, False)  # systemd passes them inheritable; our children get none
        sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
    except OSError as exc:
        log.warning("socket %r (fd %d) passed by systemd is unusable: %s", name, fd, exc)
        with contextlib.suppress(OSError):
            os.close(fd)
        return None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or sock.family not in _TCP_FAMILIES or not listening:
        log.warning(
            "socket %r (fd %d) passed by systemd is not a listening TCP socket: closed "
            "(gatekeeper takes ListenStream= sockets with Accept=no)", name, fd
        )  # fmt: skip
        sock.close()
        return None
    sock.setblocking(False)
    return PassedSocket(name, sock)


def assign(
    passed: Sequence[PassedSocket], listeners: Sequence[ListenerSettings]
) -> tuple[dict[str, PassedSocket], list[PassedSocket]]:
    """Match passed sockets to listeners: ``({listener name: socket}, unmatched)``.

    By name first: ``FileDescriptorName=ftp`` goes to the listener named ``ftp`` (of several
    with that name, the one on the listener's configured port). A socket whose name is no
    listener's — systemd names every socket of a unit alike, by default after the unit —
    goes to the one listener still without a socket that is configured on its port (on its
    port and host, when several are). A listener takes one socket at most.
    """
    wanted = {x.name: x for x in listeners}
    taken: dict[str, PassedSocket] = {}
    unnamed: list[PassedSocket] = []
    unmatched: list[PassedSocket] = []

    def off_port(item: PassedSocket) -> bool:
        return item.name not in wanted or item.port != wanted[item.name].listen.port

    for item in sorted(passed, key=off_port):  # stable: otherwise in systemd's order
        if item.name not in wanted:
            unnamed.append(item)
        elif item.name in taken:
            unmatched.append(item)
        else:
            taken[item.name] = item
    for item in unnamed:
        free = [x for x in listeners if x.name not in taken and x.listen.port == item.port]
        if len(free) > 1:
            free = [x for x in free if normalise_host(x.listen.host.strip("[]")) == item.host]
        if len(free) == 1:
            taken[free[0].name] = item
        else:
            unmatched.append(item)
    return taken, unmatched

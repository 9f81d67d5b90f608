"""A Telnet or plain TCP session: no inspection, so no transports and no task.

The client's socket comes straight from the listener's accept loop. The upstream is
connected with a non-blocking ``connect`` and a writability callback (a name, not an
address, is resolved first in the loop's resolver); then a ``Pump`` moves the bytes both
ways, splicing bulk streams in the kernel. Until the upstream answers, the client's bytes
wait in its socket's receive queue: nothing is read early, nothing needs buffering.

The session keeps the relay's outward shape (address, byte counts, ``close``, ``abort``)
so the listener drains, enforces and counts both kinds alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import time
from ipaddress import ip_address
from typing import TYPE_CHECKING

from gatekeeper.events import Outcome
from gatekeeper.net.pump import Pump
from gatekeeper.net.relay import CLOSE_LINGER, keep_alive

if TYPE_CHECKING:
    from gatekeeper.net.listener import Listener

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def _is_address(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def _established(sock: socket.socket) -> bool:
    """Has a non-blocking connect already completed? (getpeername() fails until it has.)"""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


class PlainSession:
    """One accepted Telnet/TCP client, its upstream connection and the pump between them."""

    __slots__ = (
        "address", "client", "closed", "listener", "local", "loop", "outcome", "port",
        "pump", "start", "timer", "upstream", "would_reject",
    )  # fmt: skip

    def __init__(
        self,
        listener: Listener,
        client: socket.socket,
        address: str,
        port: int,
        would_reject: str | None,
    ) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.client = client
        self.address = address
        self.port = port
        self.would_reject = would_reject
        self.upstream: socket.socket | None = None
        self.pump: Pump | None = None
        self.local: str | None = None
        self.start = time.time()
        self.outcome = Outcome.CLOSED
        self.closed = False
        # Connect timeout while connecting; idle timeout, then close linger, afterwards.
        self.timer: asyncio.TimerHandle | None = None

    @property
    def bytes_up(self) -> int:
        return self.pump.bytes_ab if self.pump is not None else 0

    @property
    def bytes_down(self) -> int:
        return self.pump.bytes_ba if self.pump is not None else 0

    # -- connecting -----------------------------------------------------------------------
    def begin(self) -> None:
        self.listener.opened(self)
        target = self.listener.settings.upstream
        if _is_address(target.host):
            self._connect(target.host, target.port)
        else:
            self.loop.create_task(self._resolve(target.host, target.port))

    async def _resolve(self, host: str, port: int) -> None:
        try:
            infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            self._failed(exc)
            return
        if not self.closed:
            self._connect(str(infos[0][4][0]), port)

    def _connect(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            upstream = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # out of file descriptors
            self._failed(exc)
            return
        self.upstream = upstream
        upstream.setblocking(False)
        code = upstream.connect_ex((host, port))
        if code == errno.EINPROGRESS and _established(upstream):
            code = 0  # on loopback the handshake is done inside connect(): no need to wait
        if code == 0:
            self._connected()
        elif code == errno.EINPROGRESS:
            self.loop.add_writer(upstream.fileno(), self._connect_done)
            timeout = self.listener.settings.timeouts.connect
            self.timer = self.loop.call_later(timeout, self._connect_timeout)
        else:
            self._failed(OSError(code, errno.errorcode.get(code, "connect failed")))

    def _connect_done(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        self.loop.remove_writer(upstream.fileno())
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        code = upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._failed(OSError(code, errno.errorcode.get(code, "connect failed")))
        else:
            self._connected()

    def _connect_timeout(self) -> None:
        self.timer = None
        if self.upstream is not None:
            self.loop.remove_writer(self.upstream.fileno())
        self._failed(None)

    def _failed(self, exc: OSError | None) -> None:
        settings = self.listener.settings
        if not self.closed:
            log.warning(
                "%s: upstream %s of listener %s unreachable: %s",
                self.address, settings.upstream, settings.name,
                (exc.strerror or exc) if exc is not None else "timed out",
            )  # fmt: skip
            self.outcome = Outcome.UPSTREAM_FAILED
            self.listener.upstream_failures += 1
        self._close_sockets()
        self._finish()

    def _connected(self) -> None:
        client, upstream = self.client, self.upstream
        assert upstream is not None
        if self.closed:  # stopped or cut while connecting
            self._close_sockets()
            self._finish()
            return
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            keep_alive(sock)
        with contextlib.suppress(OSError):
            host, port = upstream.getsockname()[:2]
            self.local = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.pump = Pump(self.loop, client, upstream, self._pumped)
        self.pump.start()
        self._arm_idle()

    # -- idle timeout ---------------------------------------------------------------------
    def _arm_idle(self) -> None:
        assert self.pump is not None
        idle = self.listener.settings.timeouts.idle
        self.timer = self.loop.call_at(self.pump.last_active + idle, self._check_idle)

    def _check_idle(self) -> None:
        self.timer = None
        if self.closed or self.pump is None:
            return
        idle = self.listener.settings.timeouts.idle
        if self.loop.time() - self.pump.last_active >= idle:
            log.info("%s: idle for %gs on %s, closing", self.address, idle, self.listener.name)
            self.close(Outcome.IDLE)
            if not self.pump.closed:
                # Bytes are still pending for a side that took none for ``idle`` seconds:
                # it is not reading, and lingering for it would only hold the session.
                self.pump.abort()
        else:
            self._arm_idle()

    # -- ending ---------------------------------------------------------------------------
    def close(self, outcome: Outcome | None = None) -> None:
        """Flush what is in flight and close both sides; cut them after ``CLOSE_LINGER``."""
        if outcome is not None and self.outcome is Outcome.CLOSED:
            self.outcome = outcome
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pump is not None:
            self.pump.close()
            if not self.pump.closed:
                self.timer = self.loop.call_later(CLOSE_LINGER, self._linger_expired)
        # While connecting, the connect callback (or its timeout) finishes the session.

    def abort(self, outcome: Outcome) -> None:
        """Cut both sides now, with a reset (stop after the drain period, enforced reload)."""
        if self.outcome is Outcome.CLOSED:
            self.outcome = outcome
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pump is not None:
            self.pump.abort()  # its on_done finishes the session
        elif self.upstream is not None:  # still connecting: stop waiting for it
            self.loop.remove_writer(self.upstream.fileno())
            self._close_sockets()
            self._finish()

    def _linger_expired(self) -> None:
        self.timer = None
        if self.pump is not None:
            self.pump.abort()

    def _pumped(self, pump: Pump, exc: Exception | None) -> None:
        """The pump is done and has closed both sockets."""
        if exc is not None and self.outcome is Outcome.CLOSED:
            # The pump's b end is the upstream: say which side broke the session.
            upstream = pump.broken_end == "b"
            self.outcome = Outcome.UPSTREAM_RESET if upstream else Outcome.ERROR
            if upstream:
                settings = self.listener.settings
                log.warning(
                    "%s: upstream %s of %s broke the connection: %s",
                    self.address, settings.upstream, settings.name, exc,
                )  # fmt: skip
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._finish()

    def _close_sockets(self) -> None:
        self.closed = True
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()

    def _finish(self) -> None:
        self.listener.finished(self)  # records the session (once)

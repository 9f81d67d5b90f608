"""The two-way byte pump of an accepted session: flow control, half-close, idle timeout, counts.

The client side's protocol is the listener's ``FrontProtocol``; it hands every event to its
``Relay`` once the connection is admitted. The upstream side is ``_Upstream`` below. Each
side's write buffer is bounded: when it passes the high-water mark, the *other* side stops
reading until it drains (``pause_writing``/``resume_writing`` from asyncio), so a slow peer
never makes memory grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gatekeeper.events import Outcome
from gatekeeper.settings import sockaddr_host

if TYPE_CHECKING:
    from gatekeeper.ftp.session import FtpSession
    from gatekeeper.net.listener import Listener

log = logging.getLogger(__name__)

# Write buffer per direction. 256 KiB keeps a 10 Gbit/s loopback stream busy between
# event-loop turns while bounding a session's worst-case memory to about half a megabyte.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# Bytes a client may send before the upstream connection is up (read is paused after this).
EARLY_LIMIT = 64 * 1024
# After both sides said goodbye, how long the last buffered bytes may take to flush before
# the session is cut (a peer that neither reads nor closes must not hold it forever).
CLOSE_LINGER = 60.0
REPLY_421 = b"421 Service not available, closing control connection.\r\n"


def keep_alive(sock: socket.socket | None) -> None:
    """Turn on TCP keepalive (HAProxy's ``clitcpka``/``srvtcpka``): a peer that vanished
    without a FIN or a RST (power cut, a NAT or firewall forgetting the flow) is found by
    the kernel's probes even under a long ``timeouts.idle``. The timers are the system's
    (``net.ipv4.tcp_keepalive_time``, 2 hours unless tuned). ``sock`` may be a transport's
    socket (uvloop's stands in for one), or None when the transport has none."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def timeout_reply(what: str, seconds: float) -> bytes:
    """The 421 an FTP client gets when a timeout ends its session (ProFTPD's wording)."""
    return f"421 {what} timeout ({seconds:g} seconds): closing control connection.\r\n".encode()


class Relay:
    """One accepted session between a client transport and an upstream transport."""

    __slots__ = (
        "_lost", "address", "bytes_down", "bytes_up", "client", "client_eof", "client_protocol",
        "closed", "data_address", "early", "ftp", "idle_handle", "last_active", "listener",
        "local", "loop", "outcome", "port", "start", "task", "upstream", "upstream_eof",
        "upstream_hold", "upstream_protocol", "would_reject",
    )  # fmt: skip

    def __init__(
        self,
        listener: Listener,
        client: asyncio.Transport,
        address: str,
        port: int,
        early: bytearray,
        would_reject: str | None,
    ) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.client = client
        self.address = address
        self.port = port
        self.early = early  # client bytes read before the upstream was connected
        self.would_reject = would_reject
        self.upstream: asyncio.Transport | None = None
        self.local: str | None = None
        self.start = time.time()
        self.bytes_up = 0
        self.bytes_down = 0
        self.client_eof = False
        self.upstream_eof = False
        self.closed = False
        self.outcome = Outcome.CLOSED
        self.last_active = self.loop.time()
        self.idle_handle: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.ftp: FtpSession | None = None  # the control-channel inspector of FTP listeners
        self.data_address = address  # FTP data connections must come from here
        self.client_protocol: asyncio.Protocol | None = None  # for TLS upgrades (FTP AUTH TLS)
        self.upstream_protocol: _Upstream | None = None
        self.upstream_hold: list[bytes] | None = None  # bytes held while upstream TLS starts
        self._lost = 0  # transports gone (client, upstream); the record is written at 2

    # -- life cycle -------------------------------------------------------------------
    def begin(self) -> None:
        """Connect to the upstream in a task; the client stays paused until it is up."""
        self.listener.opened(self)
        keep_alive(self.client.get_extra_info("socket"))
        self.task = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        settings = self.listener.settings
        target = settings.upstream
        try:
            async with asyncio.timeout(settings.timeouts.connect):
                protocol = self.upstream_protocol = _Upstream(self)
                transport, _ = await self.loop.create_connection(
                    lambda: protocol, target.host, target.port
                )
        except (OSError, TimeoutError) as exc:
            log.warning(
                "%s: upstream %s of listener %s unreachable: %s",
                self.address, target, settings.name, str(exc) or "timed out",
            )  # fmt: skip
            self.outcome = Outcome.UPSTREAM_FAILED
            self.listener.upstream_failures += 1
            if not self.closed and settings.protocol == "ftp":
                self.client.write(REPLY_421)
            self._side_lost(None)  # the upstream side that never was
            return
        except asyncio.CancelledError:  # aborted while connecting (stop, enforced reload)
            self._side_lost(None)
            return
        finally:
            self.task = None
        if self.closed:  # the client went away (or we were stopped) while connecting
            transport.close()
            return
        self.upstream = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        keep_alive(transport.get_extra_info("socket"))
        sockname = transport.get_extra_info("sockname")
        if sockname:
            host = sockname[0]
            self.local = f"[{host}]:{sockname[1]}" if ":" in host else f"{host}:{sockname[1]}"
        if self.early:
            early = bytes(self.early)
            self.early.clear()
            self._from_client(early)
        if self.client_eof and transport.can_write_eof():
            transport.write_eof()
        self.client.resume_reading()
        self._arm_idle(self.last_active)

    def close(self, outcome: Outcome | None = None) -> None:
        """Close both sides, flushing what is buffered; the record is written when both are gone."""
        if outcome is not None and self.outcome is Outcome.CLOSED:
            self.outcome = outcome
        if self.closed:
            return
        self.closed = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        self.idle_handle = self.loop.call_later(CLOSE_LINGER, self._linger_expired)
        if self.ftp is not None:
            self.ftp.close()
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()

    def expire(self, outcome: Outcome, reply: bytes | None = None) -> None:
        """A timeout ended the session: tell an FTP client why (``reply``), close both sides,
        and cut at once a side that is not reading: nothing it would take has moved for a
        while, so lingering for it would only hold the session open."""
        if self.closed:
            return
        if reply is not None and not self.client.is_closing():
            self.send_client(reply)
        self.close(outcome)
        for transport in (self.client, self.upstream):
            if transport is not None and transport.get_write_buffer_size():
                transport.abort()

    def abort(self, outcome: Outcome) -> None:
        """Cut both sides now (stop after the drain period, enforced reload)."""
        self.close(outcome)
        if self.task is not None:
            self.task.cancel()
        self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()

    def _linger_expired(self) -> None:
        if self._lost < 2:
            self.client.abort()
            if self.upstream is not None:
                self.upstream.abort()

    def upstream_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.ftp is not None and not self.closed:
            # The upstream reset the control connection: an FTP client gets a reply and an
            # orderly close, not a reset (the inspector only ever passes whole replies on,
            # so the 421 cannot land in the middle of one).
            log.warning(
                "%s: upstream %s of %s reset the connection: %s",
                self.address, self.listener.settings.upstream, self.listener.name, exc,
            )  # fmt: skip
            if self.outcome is Outcome.CLOSED:
                self.outcome = Outcome.UPSTREAM_RESET
            if not self.client.is_closing():
                self.send_client(REPLY_421)
            self._side_lost(None)  # an orderly close toward the client, 421 first
            return
        self._side_lost(exc, Outcome.UPSTREAM_RESET)

    def _side_lost(self, exc: Exception | None, broken: Outcome = Outcome.ERROR) -> None:
        self._lost += 1
        if exc is not None:
            # A side broke (reset): what is buffered for the other side is moot; cut it too,
            # or a peer stuck writing to us would hold the session open.
            if self.outcome is Outcome.CLOSED:
                self.outcome = broken
            self.close()
            self.client.abort()
            if self.upstream is not None:
                self.upstream.abort()
        else:
            self.close()
        if self._lost == 2:
            self._finish()

    def _finish(self) -> None:
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        ftp = self.ftp
        if ftp is None:
            self.listener.finished(self)
            return
        if ftp.outcome is not None and self.outcome is Outcome.CLOSED:
            self.outcome = Outcome(ftp.outcome)
        self.listener.finished(self, user=ftp.user, files=(ftp.files_sent, ftp.files_received))

    # -- addresses the FTP inspector needs ------------------------------------------------
    @property
    def client_local(self) -> str:
        """The address the client connected to (where its data connections should go)."""
        return sockaddr_host(self.client.get_extra_info("sockname"))

    @property
    def upstream_host(self) -> str:
        """The upstream's address as connected (its data ports live there too)."""
        if self.upstream is None:
            return self.listener.settings.upstream.host
        return sockaddr_host(self.upstream.get_extra_info("peername"))

    @property
    def upstream_local(self) -> str | None:
        """gatekeeper's own address toward the upstream (announced in PORT/EPRT)."""
        return (
            None
            if self.upstream is None
            else sockaddr_host(self.upstream.get_extra_info("sockname"))
        )

    # -- idle timeout -----------------------------------------------------------------
    def _arm_idle(self, last: float) -> None:
        idle = self.listener.settings.timeouts.idle
        self.idle_handle = self.loop.call_at(last + idle, self._check_idle)

    def _check_idle(self) -> None:
        if self.closed:
            return
        idle = self.listener.settings.timeouts.idle
        last = self.last_active
        if self.ftp is not None:  # a transfer on the data connection is activity too
            data = self.ftp.data_active()
            if data is not None and data > last:
                last = data
        if self.loop.time() - last >= idle:
            log.info("%s: idle for %gs on %s, closing", self.address, idle, self.listener.name)
            reply = timeout_reply("Idle", idle) if self.ftp is not None else None
            self.expire(Outcome.IDLE, reply)
        else:
            self._arm_idle(last)

    # -- client side (called by FrontProtocol) ----------------------------------------
    def client_data(self, data: bytes) -> None:
        upstream = self.upstream
        if self.closed:
            return
        if upstream is None:
            self.early += data
            if len(self.early) > EARLY_LIMIT:
                self.client.pause_reading()
            return
        self.last_active = self.loop.time()
        self._from_client(data)

    def _from_client(self, data: bytes) -> None:
        if self.ftp is not None:
            self.ftp.from_client(data)
        else:
            self.send_upstream(data)

    def send_upstream(self, data: bytes) -> None:
        assert self.upstream is not None
        if self.upstream_hold is not None:
            self.upstream_hold.append(data)
            return
        self.bytes_up += len(data)
        self.upstream.write(data)

    # -- TLS upgrades (FTP AUTH TLS with tls: terminate) ----------------------------------
    def start_client_tls(self, context: ssl.SSLContext, done: Callable[[], None]) -> None:
        """Become the TLS server on the client connection; ``done`` runs once it is up."""
        self.loop.create_task(self._start_tls(context, client=True, done=done))

    def start_upstream_tls(self, context: ssl.SSLContext, done: Callable[[], None]) -> None:
        """Become a TLS client on the upstream connection; what the client sends meanwhile
        is held and sent once TLS is up, never in plain."""
        if self.upstream_hold is None:
            self.upstream_hold = []
        self.loop.create_task(self._start_tls(context, client=False, done=done))

    async def _start_tls(
        self, context: ssl.SSLContext, *, client: bool, done: Callable[[], None]
    ) -> None:
        settings = self.listener.settings
        transport = self.client if client else self.upstream
        protocol = self.client_protocol if client else self.upstream_protocol
        assert transport is not None and protocol is not None
        try:
            new = await self.loop.start_tls(
                transport, protocol, context, server_side=client,
                server_hostname=None if client else settings.upstream.host,
                ssl_handshake_timeout=settings.timeouts.connect,
            )  # fmt: skip
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            side = "client" if client else f"upstream {settings.upstream}"
            log.warning(
                "%s: TLS with the %s failed: %s", self.address, side, str(exc) or "timed out"
            )
            if not client and not self.closed:
                self.client.write(REPLY_421)
            self.close(Outcome.ERROR)
            return
        if new is None or self.closed:
            return
        tls_transport = new
        if client:
            self.client = tls_transport
            front = self.client_protocol
            if front is not None and hasattr(front, "transport"):
                front.transport = tls_transport
        else:
            self.upstream = tls_transport
            held, self.upstream_hold = self.upstream_hold or [], None
            for data in held:
                self.send_upstream(data)
        done()

    def send_client(self, data: bytes) -> None:
        self.bytes_down += len(data)
        self.client.write(data)

    def client_eof_received(self) -> None:
        self.client_eof = True
        upstream = self.upstream
        if upstream is not None:
            if self.upstream_eof or not upstream.can_write_eof():
                self.close()
            else:
                upstream.write_eof()

    def client_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.ftp is not None and self.ftp.said_goodbye:
            # After QUIT's 221 a client may close as it likes. An FTPS client that closes
            # without a TLS close_notify (Python's ftplib, many others) answers ours with a
            # reset: an orderly end all the same.
            exc = None
        self._side_lost(exc)

    def client_pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def client_resume_writing(self) -> None:
        if self.upstream is not None and not self.closed:
            self.upstream.resume_reading()

    # -- upstream side (called by _Upstream) ------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_active = self.loop.time()
        if self.ftp is not None:
            self.ftp.from_upstream(data)
        else:
            self.send_client(data)

    def upstream_eof_received(self) -> None:
        self.upstream_eof = True
        if self.client_eof or not self.client.can_write_eof():
            self.close()
        else:
            self.client.write_eof()


class _Upstream(asyncio.Protocol):
    """Protocol of the connection to the upstream: forwards everything to the relay."""

    __slots__ = ("relay",)

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        self.relay.upstream_data(data)

    def eof_received(self) -> bool:
        relay = self.relay
        relay.upstream_eof_received()
        # Keep our write side open (half-close); over TLS that cannot be.
        upstream = relay.upstream
        return upstream is None or upstream.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.upstream_lost(exc)

    def pause_writing(self) -> None:  # the upstream is slow: stop reading the client
        self.relay.client.pause_reading()

    def resume_writing(self) -> None:
        if not self.relay.closed:
            self.relay.client.resume_reading()

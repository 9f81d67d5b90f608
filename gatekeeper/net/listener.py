"""Accept → decide → reject or hand over to a session.

The listener runs its own accept loop on the listening socket (a reader callback that
accepts until the queue is empty), so a rejected client never becomes a Python socket, a
transport or a protocol: it is a file descriptor, a decision and a close. Nothing on this
path waits: the decision is a synchronous call into the current rule set, the record is a
call into the in-memory recorder. A denied client never causes a connection upstream.

Admitted clients go one of two ways. Telnet and plain TCP listeners hand the socket to a
``PlainSession`` (raw sockets, splice). FTP listeners, and any listener that takes PROXY
headers, adopt it into a transport with ``FrontProtocol`` and a ``Relay``, where the FTP
inspector and the PROXY parser read every byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from ipaddress import ip_address
from typing import Protocol as TypingProtocol
from typing import cast

from gatekeeper.bans import BanList
from gatekeeper.errors import ProtocolError
from gatekeeper.events import Ban, Login, Outcome, RefusedRequest, Rejection, SessionRecord, Sink
from gatekeeper.ftp import tls
from gatekeeper.ftp.data import PortPool
from gatekeeper.ftp.session import FtpSession
from gatekeeper.net.limits import AddressLimits
from gatekeeper.net.plain import PlainSession
from gatekeeper.net.proxyproto import NEED_DATA, V1_PREFIX, V2_SIGNATURE, ProxyParser
from gatekeeper.net.relay import EARLY_LIMIT, HIGH_WATER, LOW_WATER, REPLY_421, Relay
from gatekeeper.rules.engine import RuleSet
from gatekeeper.rules.model import Reason
from gatekeeper.settings import ListenerSettings, Mode, Protocol, RejectStyle, normalise_host

log = logging.getLogger(__name__)

Session = Relay | PlainSession  # an accepted connection, inspected or not

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
_LINGER_OFF = struct.pack("ii", 0, 0)
# Connections accepted per wakeup before other events get their turn.
_ACCEPT_BATCH = 256
# Out of file descriptors (or kernel memory): stop accepting this long, then try again.
_ACCEPT_PAUSE = 0.1
_ACCEPT_WARN_EVERY = 60.0  # seconds between warnings about it
# accept() errors that concern one connection only (it went away while queued).
_ACCEPT_TRANSIENT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
# How often per-address rate history is pruned of addresses that went quiet.
_PRUNE_INTERVAL = 10.0


class Gate(TypingProtocol):
    """What a listener asks before letting anyone in; the app swaps ``ruleset`` on reload."""

    ruleset: RuleSet
    bans: BanList


def _is_proxy_header(first: bytes) -> bool:
    """Does a client's first chunk carry a PROXY header (v1 line or v2 signature)?"""
    return first.startswith(V1_PREFIX) or (len(first) >= 6 and V2_SIGNATURE.startswith(first[:12]))


class FrontProtocol(asyncio.Protocol):
    """The client connection, from accept to close."""

    __slots__ = (
        "decided", "early", "listener", "parser", "peer", "relay", "timer", "transport", "trusted",
    )  # fmt: skip

    def __init__(self, listener: Listener, decided: str | None = None) -> None:
        """``decided``: the listener's accept loop already admitted the client; the value is
        the monitor mode's "would reject" reason ("" when there is none)."""
        self.listener = listener
        self.decided = decided
        self.transport: asyncio.Transport | None = None
        self.relay: Relay | None = None
        self.parser: ProxyParser | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.early = bytearray()  # bytes read before a relay exists (PROXY trailing bytes)
        self.peer: tuple[str, int] = ("", 0)
        self.trusted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's isn't a subclass
        peer = transport.get_extra_info("peername")
        self.peer = (normalise_host(peer[0]), peer[1]) if peer else ("", 0)
        listener = self.listener
        if listener.proxy_senders and listener.is_proxy_sender(self.peer[0]):
            self.trusted = True
            self.parser = ProxyParser()
            self.timer = listener.loop.call_later(
                listener.settings.timeouts.proxy_header, self._proxy_timeout
            )
            return
        if self.decided is not None:
            self.start_relay(*self.peer, self.decided or None)
        else:
            self.admit(*self.peer)

    # -- PROXY protocol -----------------------------------------------------------------
    def _proxy_timeout(self) -> None:
        self.timer = None
        if self.parser is not None:
            self.parser = None
            self._proxy_failed("no PROXY header within the timeout")

    def _proxy_failed(self, why: str) -> None:
        log.warning("%s: %s on %s", self.peer[0], why, self.listener.name)
        self.reject(self.peer[0], Reason.PROXY, None)

    def _feed_proxy(self, parser: ProxyParser, data: bytes) -> None:
        parser.receive_data(data)
        try:
            header = parser.next_event()
        except ProtocolError as exc:
            self.parser = None
            self._proxy_failed(f"bad PROXY header: {exc}")
            return
        if header is NEED_DATA:
            return
        self.parser = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.early += parser.trailing
        if header.local or header.source is None:
            self.admit(*self.peer)
        else:
            self.admit(normalise_host(header.source[0]), header.source[1])

    # -- the decision ---------------------------------------------------------------------
    def admit(self, address: str, port: int) -> None:
        """Decide for ``address`` (from a PROXY header) and either reject or start the relay."""
        listener = self.listener
        reason = listener.judge(address)
        if reason is not None and not listener.monitoring:
            self._close_rejected()
            return
        self.start_relay(address, port, reason)

    def start_relay(self, address: str, port: int, would_reject: str | None) -> None:
        listener = self.listener
        transport = self.transport
        assert transport is not None
        listener.accepted += 1
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        transport.pause_reading()  # until the upstream is connected; early bytes are buffered
        relay = Relay(listener, transport, address, port, self.early, would_reject)
        relay.data_address = self.peer[0]
        if listener.settings.protocol is Protocol.FTP:
            # ABOR comes after a Telnet interrupt sent as TCP urgent data: keep it in line.
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
            relay.ftp = FtpSession(relay)
            relay.client_protocol = self
        self.relay = relay
        relay.begin()

    def reject(self, address: str, reason: Reason, rule: str | None) -> None:
        """Record a rejection made outside the rule set (PROXY, ban) and close."""
        listener = self.listener
        listener.sink.rejected(Rejection(listener.name, address, reason.value, rule, time.time()))
        self._close_rejected()

    def _close_rejected(self) -> None:
        transport = self.transport
        assert transport is not None
        style = self.listener.settings.reject
        if style is RejectStyle.REPLY:
            transport.write(REPLY_421)
            transport.close()
        elif style is RejectStyle.RESET:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            transport.abort()
        else:
            transport.close()

    # -- events from the client ---------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None:
            if (
                relay.bytes_up == 0
                and not self.trusted
                and self.listener.proxy_senders
                and not relay.early
                and _is_proxy_header(data)
            ):
                log.warning(
                    "%s: PROXY header from an untrusted sender on %s",
                    self.peer[0],
                    self.listener.name,
                )
                self.listener.sink.rejected(
                    Rejection(
                        self.listener.name, relay.address, Reason.PROXY.value, None, time.time()
                    )
                )
                relay.close(Outcome.PROXY)
                return
            relay.client_data(data)
        elif self.parser is not None:
            self._feed_proxy(self.parser, data)
        elif len(self.early) < EARLY_LIMIT:
            self.early += data

    def eof_received(self) -> bool:
        if self.relay is not None:
            self.relay.client_eof_received()
            # Keep writing after the client's EOF (half-close); over TLS that cannot be.
            return self.transport is None or self.transport.get_extra_info("sslcontext") is None
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.parser = None
        if self.relay is not None:
            self.relay.client_lost(exc)

    def pause_writing(self) -> None:
        if self.relay is not None:
            self.relay.client_pause_writing()

    def resume_writing(self) -> None:
        if self.relay is not None:
            self.relay.client_resume_writing()


class CountingSink:
    """The listener's sink: counts rejections (by reason, "would reject" apart) and bans in
    plain integers on the listener, then passes every event on. Metrics and ``gatekeeper
    status`` read the counts; nothing here waits or allocates beyond a dict update."""

    __slots__ = ("listener", "login", "refused_request", "session", "sink")

    def __init__(self, listener: Listener, sink: Sink) -> None:
        self.listener = listener
        self.sink = sink
        # Events not counted go straight to the sink: no extra call on their way.
        self.session: Callable[[SessionRecord], None] = sink.session
        self.login: Callable[[Login], None] = sink.login
        self.refused_request: Callable[[RefusedRequest], None] = sink.refused_request

    def rejected(self, event: Rejection) -> None:
        counts = self.listener.would_reject if event.monitor else self.listener.rejected
        counts[event.reason] = counts.get(event.reason, 0) + 1
        self.sink.rejected(event)

    def banned(self, ban: Ban) -> None:
        self.listener.bans += 1
        self.sink.banned(ban)


class Listener:
    """One configured listener: its socket, its sessions, its per-address limits, and its
    counters (plain integers, read by ``gatekeeper.metrics`` and the status file)."""

    def __init__(
        self,
        settings: ListenerSettings,
        gate: Gate,
        sink: Sink,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.gate = gate
        self.sink: Sink = CountingSink(self, sink)
        self.settings = settings
        self.name = settings.name
        self.limits = AddressLimits(settings.limits)
        self.proxy_senders = settings.proxy_protocol
        # Monitor mode: rejections are recorded as "would reject" and let through.
        self.monitoring = settings.mode is Mode.MONITOR
        self.ports = PortPool(settings.passive_ports)
        self.client_tls = tls.client_context(settings)
        self.upstream_tls = tls.upstream_context(settings)
        self.relays: set[Session] = set()  # open sessions
        self.sock: socket.socket | None = None
        self.accepting = False
        self.accept_pauses = 0  # times accept() failed for want of descriptors (or memory)
        self._accept_warned = -_ACCEPT_WARN_EVERY  # loop time of the last warning about it
        self._resume: asyncio.TimerHandle | None = None  # accepting again after EMFILE
        self._adopting: set[asyncio.Task[None]] = set()  # sockets becoming transports
        self._prune: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        # Counters since start (kept across reloads: the listener object stays).
        self.accepted = 0  # connections let through to the upstream (monitor ones included)
        self.rejected: dict[str, int] = {}  # reason -> connections rejected
        self.would_reject: dict[str, int] = {}  # reason -> monitor mode "would reject"
        self.upstream_failures = 0  # sessions whose upstream could not be reached
        self.bans = 0  # bans made by this listener's sessions
        self.bytes_up_closed = 0  # bytes of sessions that ended (live ones: bytes_totals)
        self.bytes_down_closed = 0

    def bytes_totals(self) -> tuple[int, int]:
        """Bytes relayed (client to upstream, upstream to client), live sessions included."""
        up, down = self.bytes_up_closed, self.bytes_down_closed
        for relay in list(self.relays):
            up += relay.bytes_up
            down += relay.bytes_down
        return up, down

    # -- settings -----------------------------------------------------------------------
    def update(self, settings: ListenerSettings) -> None:
        """Take new settings at reload (the socket and running sessions stay)."""
        old, self.settings = self.settings, settings
        self.proxy_senders = settings.proxy_protocol
        self.monitoring = settings.mode is Mode.MONITOR
        if settings.reject != old.reject:
            self._set_linger()
        if settings.limits != self.limits.limits:
            self.limits.limits = settings.limits
        if settings.tls != old.tls:
            self.client_tls = tls.client_context(settings)
            self.upstream_tls = tls.upstream_context(settings)
        if settings.passive_ports != self.ports.ports:
            self.ports = PortPool(settings.passive_ports)  # channels still open release to the old

    def is_proxy_sender(self, host: str) -> bool:
        addr = ip_address(host)
        return any(addr in net for net in self.proxy_senders)

    # -- socket -------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The bound address as host:port (the real port when the config said 0)."""
        if self.sock is None:
            return str(self.settings.listen)
        host, port = self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind (or adopt ``sock``) and start accepting."""
        self.sock = sock or bind_socket(self.settings.listen.host, self.settings.listen.port)
        self.sock.setblocking(False)
        self._set_linger()
        self._accept_on()
        self._prune = self.loop.call_later(_PRUNE_INTERVAL, self._prune_limits)

    def _set_linger(self) -> None:
        """Accepted sockets inherit the listening socket's SO_LINGER: with the reset style
        set it there, and a rejected client's close() sends the RST with no extra call.
        (Admitted clients get it switched off again.)"""
        if self.sock is not None:
            reset = self.settings.reject is RejectStyle.RESET
            self.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET if reset else _LINGER_OFF
            )

    def _accept_on(self) -> None:
        self._resume = None
        if self.sock is not None:
            self.loop.add_reader(self.sock.fileno(), self._accept_ready)
            self.accepting = True

    def _accept_ready(self) -> None:
        """The listening socket is readable: accept what is queued, a batch at a time."""
        assert self.sock is not None
        # socket._accept(): the accept4() under socket.accept(), giving (fd, peer) without
        # making a socket object, which a client we refuse would only need for its close.
        accept = self.sock._accept  # type: ignore[attr-defined]
        for _ in range(_ACCEPT_BATCH):
            try:
                fd, peer = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_TRANSIENT:
                    continue
                self._accept_failed(exc)
                return
            self._arrived(fd, normalise_host(peer[0]), peer[1])

    def _accept_failed(self, exc: OSError) -> None:
        """EMFILE, ENFILE, ENOBUFS, ENOMEM: leave the clients queued in the backlog and try
        again shortly, when sessions have closed. Said at most once a minute."""
        assert self.sock is not None
        now = self.loop.time()
        if now - self._accept_warned >= _ACCEPT_WARN_EVERY:
            self._accept_warned = now
            log.warning(
                "listener %s: cannot accept (%s); clients wait in the backlog until "
                "sessions close (%d pause(s) so far)",
                self.name, exc.strerror or exc, self.accept_pauses + 1,
            )  # fmt: skip
        self.accept_pauses += 1
        self.loop.remove_reader(self.sock.fileno())
        self.accepting = False
        self._resume = self.loop.call_later(_ACCEPT_PAUSE, self._accept_on)

    def _arrived(self, fd: int, host: str, port: int) -> None:
        """Decide for a client just accepted (its descriptor only) and refuse or admit it."""
        if self.proxy_senders and self.is_proxy_sender(host):
            self._adopt(fd, None)  # the PROXY header names the client: decide after it
            return
        reason = self.judge(host)
        if reason is not None and not self.monitoring:
            style = self.settings.reject
            if style is RejectStyle.REPLY:
                # One short write into an empty socket buffer. A plain try, not suppress():
                # this is the flood path. OSError: the client has gone already.
                try:  # noqa: SIM105
                    os.write(fd, REPLY_421)
                except OSError:
                    pass
            os.close(fd)  # with the reset style, SO_LINGER (inherited) makes this an RST
            return
        if self.settings.protocol is Protocol.FTP or self.proxy_senders:
            self._adopt(fd, reason or "")
            return
        self.accepted += 1
        client = self._socket(fd)
        PlainSession(self, client, host, port, reason).begin()

    def _socket(self, fd: int) -> socket.socket:
        assert self.sock is not None
        client = socket.socket(self.sock.family, socket.SOCK_STREAM, 0, fileno=fd)
        if self.settings.reject is RejectStyle.RESET:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
        return client

    def _adopt(self, fd: int, decided: str | None) -> None:
        """Make an accepted socket a transport with a ``FrontProtocol``."""
        client = self._socket(fd)
        client.setblocking(False)
        task = self.loop.create_task(self._adopt_socket(client, decided))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _adopt_socket(self, client: socket.socket, decided: str | None) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: FrontProtocol(self, decided), client)
        except OSError as exc:  # the client went away before the transport was made
            log.debug("listener %s: accepted connection lost: %s", self.name, exc)
            client.close()

    def judge(self, address: str) -> str | None:
        """Decide for a client address now: None to let it in, else the rejection reason
        (recorded here; in monitor mode as "would reject", and the caller lets it in)."""
        now = time.time()
        gate = self.gate
        rule: str | None
        if gate.bans.check(address, now) is not None:
            reason, rule = Reason.BAN.value, None
        elif not (decision := gate.ruleset.decide(address, self.name)).allowed:
            reason, rule = decision.texts
        elif not self.limits.admit(address, now):
            reason, rule = Reason.LIMIT.value, str(self.settings.source)
        else:
            return None
        self.sink.rejected(Rejection(self.name, address, reason, rule, now, self.monitoring))
        return reason

    def _prune_limits(self) -> None:
        self.limits.prune(time.time())
        self._prune = self.loop.call_later(_PRUNE_INTERVAL, self._prune_limits)

    async def stop_accepting(self) -> None:
        """Stop accepting and close the listening socket (sessions go on)."""
        if self._prune is not None:
            self._prune.cancel()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self.sock is not None:
            if self.accepting:
                self.loop.remove_reader(self.sock.fileno())
            self.accepting = False
            self.sock.close()
        for task in list(self._adopting):
            await task

    # -- sessions -----------------------------------------------------------------------
    def opened(self, relay: Session) -> None:
        self.relays.add(relay)
        self.limits.opened(relay.address)
        self._idle.clear()

    def finished(
        self, relay: Session, *, user: str | None = None, files: tuple[int, int] = (0, 0)
    ) -> None:
        """A session ended: count its bytes and record it, once (later calls do nothing).
        ``user`` and ``files`` (sent, received) are the FTP inspector's."""
        if relay not in self.relays:
            return
        self.relays.discard(relay)
        self.limits.closed(relay.address)
        if not self.relays:
            self._idle.set()
        self.bytes_up_closed += relay.bytes_up
        self.bytes_down_closed += relay.bytes_down
        self.sink.session(
            SessionRecord(
                listener=self.name,
                address=relay.address,
                port=relay.port,
                start=relay.start,
                end=time.time(),
                outcome=relay.outcome,
                upstream=str(self.settings.upstream),
                local=relay.local,
                bytes_up=relay.bytes_up,
                bytes_down=relay.bytes_down,
                user=user,
                files_sent=files[0],
                files_received=files[1],
                would_reject=relay.would_reject,
            )
        )

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for sessions to end, then cut the rest; return how many."""
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
            return 0
        except TimeoutError:
            left = list(self.relays)
            for relay in left:
                relay.abort(Outcome.SHUTDOWN)
            await self._idle.wait()
            return len(left)

    def enforce(self) -> int:
        """Cut sessions whose address the current rules deny; returns how many."""
        ruleset = self.gate.ruleset
        cut = [r for r in self.relays if not ruleset.decide(r.address, self.name).allowed]
        for relay in cut:
            log.info("%s: session on %s cut: address now denied", relay.address, self.name)
            relay.abort(Outcome.ENFORCED)
        return len(cut)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket; ``::`` (or ``[::]``) also takes IPv4 clients."""
    host = host.strip("[]")
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.bind(sockaddr)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock

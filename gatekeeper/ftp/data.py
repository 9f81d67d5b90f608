"""FTP data connections through gatekeeper: passive and active channels, the port pool.

Passive (PASV/EPSV): gatekeeper listens on a port from the listener's ``passive_ports`` and
announces it to the client; the first connection from the client's own address is spliced
to the upstream's real data port. A connection from any other address gets nothing and the
listening port stays open for the real client (unless the listener allows foreign data
connections). Active (PORT/EPRT): gatekeeper tells the upstream a port of its own; the
upstream's connection (from the upstream host only) is spliced to the client's address.

A channel closes its listening socket when its connection is made, when the session asks
for a new one, when the session ends, or after ``ACCEPT_TIMEOUT``.

The listening socket is watched with the loop's ``add_reader`` and connections are taken
with ``accept()``: nothing is read from one before it is admitted (a trusted PROXY sender's
header excepted), so a refused connection costs no transport. In plain FTP, the common
case, the other end is connected with ``sock_connect`` and a ``Pump`` moves the bytes
between the two raw sockets, splicing bulk transfers in the kernel. With TLS on either end
(PROT P), both ends become asyncio transports and ``Splice`` relays between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Protocol, cast

from gatekeeper.errors import ProtocolError
from gatekeeper.net.proxyproto import MAX_HEADER, NEED_DATA, ProxyParser
from gatekeeper.net.pump import Pump
from gatekeeper.net.relay import HIGH_WATER, LOW_WATER  # the same bound as the control relay
from gatekeeper.settings import sockaddr_host

log = logging.getLogger(__name__)

# A client that asked for a data port but never connects: the port goes back to the pool.
ACCEPT_TIMEOUT = 60.0
# Connections taken from a listening socket per readiness callback (the rest wait a turn).
ACCEPT_BATCH = 16


class PortPool:
    """Ports from a listener's ``passive_ports`` range; without a range, the kernel picks."""

    def __init__(self, ports: tuple[int, int] | None) -> None:
        self.ports = ports
        self._free = list(range(ports[0], ports[1] + 1)) if ports else []
        self._used: set[int] = set()
        self._next = 0

    def open(self, host: str) -> socket.socket | None:
        """A listening socket on ``host`` and a free port; None when the range is exhausted."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if self.ports is None:
            return _listen(family, host, 0)
        for _ in range(len(self._free)):
            port = self._free[self._next % len(self._free)]
            self._next += 1
            if port in self._used:
                continue
            try:
                sock = _listen(family, host, port)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:  # someone else's: try the next one
                    continue
                raise
            self._used.add(port)
            return sock
        return None

    def release(self, port: int) -> None:
        """The channel on ``port`` is done (its socket already closed): the port is free."""
        self._used.discard(port)


def listen_on(host: str, port: int = 0) -> socket.socket:
    """A listening socket for one data connection on ``host`` (port 0: the kernel picks)."""
    return _listen(socket.AF_INET6 if ":" in host else socket.AF_INET, host, port)


def _listen(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(8)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Splice:
    """Bytes both ways between two TLS-capable data transports, with flow control and
    half-close (plain data connections use a ``Pump`` instead)."""

    def __init__(self, on_done: Callable[[Splice], None]) -> None:
        self.sides: list[_Side] = []
        self.on_done = on_done
        self.loop = asyncio.get_running_loop()
        self.last_active = self.loop.time()  # of the last byte either way (idle timeout)
        self.bytes = [0, 0]  # bytes read from side 0, from side 1
        self._lost = 0
        self._eof = [False, False]

    def attach(self, side: _Side) -> None:
        side.splice = self
        side.index = len(self.sides)
        self.sides.append(side)

    def start(self) -> None:
        """Both sides attached: flush what each buffered and start reading."""
        for side in self.sides:
            assert side.transport is not None
            side.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        for side in self.sides:
            if side.early:
                self._data(side, bytes(side.early))
                side.early.clear()
            if side.early_eof:
                self._eof_from(side)
            assert side.transport is not None
            side.transport.resume_reading()
        for side in self.sides:
            if side.gone:  # lost while the other end was being connected
                self._lost_side(side, side.gone_exc)

    def other(self, side: _Side) -> _Side:
        return self.sides[1 - side.index]

    def _data(self, side: _Side, data: bytes) -> None:
        self.bytes[side.index] += len(data)
        self.last_active = self.loop.time()
        other = self.other(side).transport
        if other is not None and not other.is_closing():
            other.write(data)

    def _eof_from(self, side: _Side) -> None:
        self._eof[side.index] = True
        other = self.other(side).transport
        if other is None:
            return
        if all(self._eof) or not other.can_write_eof():
            self.close()
        else:
            other.write_eof()

    def _lost_side(self, side: _Side, exc: Exception | None) -> None:
        self._lost += 1
        other = self.other(side).transport if len(self.sides) == 2 else None
        if other is not None:
            if exc is not None:
                other.abort()
            else:
                other.close()
        if self._lost == len(self.sides):
            self.on_done(self)

    def close(self) -> None:
        for side in self.sides:
            if side.transport is not None:
                side.transport.close()

    def abort(self) -> None:
        for side in self.sides:
            if side.transport is not None:
                side.transport.abort()


class _Side(asyncio.Protocol):
    """One data connection; before its splice starts it buffers (uvloop may deliver early)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.splice: Splice | None = None
        self.index = 0
        self.early = bytearray()
        self.early_eof = False
        self.started = False
        self.gone = False  # connection lost before the splice started
        self.gone_exc: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        splice = self.splice
        if splice is None or len(splice.sides) < 2 or not self.started:
            self.early += data
            if len(self.early) > HIGH_WATER and self.transport is not None:
                self.transport.pause_reading()
            return
        splice._data(self, data)

    def eof_received(self) -> bool:
        splice = self.splice
        if splice is None or len(splice.sides) < 2 or not self.started:
            self.early_eof = True
        else:
            splice._eof_from(self)
        return not self.tls  # keep writing after EOF (half-close); TLS cannot

    @property
    def tls(self) -> bool:
        return (
            self.transport is not None and self.transport.get_extra_info("sslcontext") is not None
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.splice is not None and self.started:
            self.splice._lost_side(self, exc)
        else:
            self.gone, self.gone_exc = True, exc

    def pause_writing(self) -> None:
        if self.splice is not None and len(self.splice.sides) == 2:
            other = self.splice.other(self).transport
            if other is not None:
                other.pause_reading()

    def resume_writing(self) -> None:
        if self.splice is not None and len(self.splice.sides) == 2:
            other = self.splice.other(self).transport
            if other is not None and not other.is_closing():
                other.resume_reading()


class DataChannel:
    """One data connection being set up for a session: a listening socket and what follows.

    ``expect`` is the address the incoming connection must come from, as (TCP peer, address
    claimed in a PROXY header): like with like, as the control connection (None: anyone);
    ``target`` is where to connect once it has come. ``client_side`` says which end the
    accepted connection is: the client (passive) or the upstream (active).
    """

    def __init__(
        self,
        owner: DataOwner,
        sock: socket.socket,
        *,
        expect: tuple[str, str] | None,
        target: tuple[str, int],
        client_side: bool,
        release: Callable[[int], None],
        client_tls: ssl.SSLContext | None = None,
        upstream_tls: ssl.SSLContext | None = None,
        upstream_hostname: str | None = None,
    ) -> None:
        self.owner = owner
        self.sock = sock
        self.expect = expect
        self.target = target
        self.client_side = client_side
        self.release = release
        self.client_tls = client_tls
        self.upstream_tls = upstream_tls
        self.upstream_hostname = upstream_hostname
        self.loop = asyncio.get_running_loop()
        self.pump: Pump | None = None  # plain: the bytes move in a pump
        self.splice: Splice | None = None  # TLS on either end: through transports
        self.task: asyncio.Task[None] | None = None  # connecting the other end
        self.closed = False
        self.admitted = False  # a connection was taken: the listening socket is gone
        self.port: int = sock.getsockname()[1]
        self._listening = True
        self._reported = False
        # While connecting: sockets not yet handed to a pump or a transport, and the TLS
        # sides made so far; what ``_abandon`` lets go of if the connecting fails.
        self._owned: list[socket.socket] = []
        self._sides: tuple[_Side, ...] = ()
        # Connections from a trusted PROXY sender whose header has not all come yet.
        self._headers: dict[socket.socket, tuple[ProxyParser, str]] = {}
        self._timer = self.loop.call_later(ACCEPT_TIMEOUT, self._accept_timeout)
        self.loop.add_reader(sock.fileno(), self._accept)

    @property
    def last_active(self) -> float | None:
        """Loop time of the last byte relayed either way; None before the relaying starts."""
        if self.pump is not None:
            return self.pump.last_active
        if self.splice is not None:
            return self.splice.last_active
        return None

    @property
    def plain(self) -> bool:
        """No TLS on either end: the data moves in a pump, not through transports."""
        return self.client_tls is None and self.upstream_tls is None

    # -- accepting ------------------------------------------------------------------------
    def _accept(self) -> None:
        """The listening socket is readable: take what came (nothing is read from it yet)."""
        for _ in range(ACCEPT_BATCH):
            if not self._listening:
                return
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # out of file descriptors: this transfer fails
                log.warning(
                    "%s: cannot accept on data port %d: %s", self.owner.address, self.port, exc
                )
                self.close()
                return
            conn.setblocking(False)
            peer = sockaddr_host(addr)
            if self.client_side and self.client_tls is None and self.owner.proxy_trusted(peer):
                # From our PROXY sender: its header says who the client is (like with like).
                self._headers[conn] = (ProxyParser(), peer)
                self.loop.add_reader(conn.fileno(), self._header_data, conn)
            else:
                self.admit(conn, peer, claimed=False)

    def _header_data(self, conn: socket.socket) -> None:
        parser, peer = self._headers[conn]
        try:
            data = conn.recv(MAX_HEADER)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # gone before its header was complete
            self._drop_header(conn)
            return
        parser.receive_data(data)
        try:
            header = parser.next_event()
        except ProtocolError as exc:
            log.warning("%s: bad PROXY header on a data connection: %s", peer, exc)
            self._drop_header(conn)
            return
        if header is NEED_DATA:
            return
        self._forget_header(conn)
        if header.local or header.source is None:
            self.admit(conn, peer, claimed=False, early=parser.trailing)
        else:
            self.admit(conn, sockaddr_host(header.source), claimed=True, early=parser.trailing)

    def _forget_header(self, conn: socket.socket) -> None:
        self.loop.remove_reader(conn.fileno())
        del self._headers[conn]

    def _drop_header(self, conn: socket.socket) -> None:
        self._forget_header(conn)
        _reset(conn)

    def admit(
        self, conn: socket.socket, address: str, *, claimed: bool, early: bytes = b""
    ) -> None:
        """Take the connection if it comes from the right address, else refuse it (reset)."""
        if self.admitted or self.closed:
            _reset(conn)
            return
        expect = None if self.expect is None else self.expect[1 if claimed else 0]
        if expect is not None and address != expect:
            log.warning(
                "%s: data connection from foreign address %s refused (port %d)",
                self.owner.address, address, self.port,
            )  # fmt: skip
            _reset(conn)
            return
        self.admitted = True
        self._stop_listening()
        self._owned.append(conn)
        connect = self._connect_plain if self.plain else self._connect_tls
        self.task = self.loop.create_task(connect(conn, early))
        self.task.add_done_callback(self._connect_ended)

    def _accept_timeout(self) -> None:
        if not self.admitted:
            log.info("%s: data connection on port %d never came", self.owner.address, self.port)
            self.close()

    def _stop_listening(self) -> None:
        self._timer.cancel()
        if not self._listening:
            return
        self._listening = False
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for conn in list(self._headers):  # a PROXY sender still on its header: too late
            self._drop_header(conn)
        self.release(self.port)

    # -- connecting the other end ---------------------------------------------------------
    async def _connect_plain(self, accepted: socket.socket, early: bytes) -> None:
        """Connect the other end and pump: the bytes never pass through a transport."""
        host, port = self.target
        try:
            outgoing = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            self._owned.append(outgoing)
            outgoing.setblocking(False)
            async with asyncio.timeout(self.owner.connect_timeout):
                await self.loop.sock_connect(outgoing, (host, port))
        except (OSError, TimeoutError) as exc:
            self._failed(host, port, exc)
            return
        self.task = None
        self._owned.clear()  # the pump's from here
        # The client is end a (its bytes go up); in active mode it is the one we connected.
        client, upstream = (accepted, outgoing) if self.client_side else (outgoing, accepted)
        self.pump = Pump(self.loop, client, upstream, self._pumped, early_a=early)
        self.pump.start()

    def _pumped(self, pump: Pump, exc: Exception | None) -> None:
        self._report(pump.bytes_ab, pump.bytes_ba)

    async def _connect_tls(self, accepted: socket.socket, early: bytes) -> None:
        """Put TLS on the ends that need it (PROT P) and splice through transports.

        gatekeeper is the TLS server toward the client and the TLS client toward the
        upstream, whichever side opened the TCP connection (RFC 4217). The accepted socket
        goes to its transport before a byte is read from it: a client's hello sent at once
        is the TLS layer's to read. A transport the loop makes owns its socket from the
        call on (the loop closes it if the call fails).
        """
        client, upstream = self._sides = (_Side(), _Side())
        host, port = self.target
        try:
            if self.client_side:  # passive: the client is in, now the upstream
                self._owned.remove(accepted)
                await self.loop.connect_accepted_socket(
                    lambda: client, accepted, ssl=self.client_tls,
                    ssl_handshake_timeout=ACCEPT_TIMEOUT if self.client_tls else None,
                )  # fmt: skip
                client.early += early
                async with asyncio.timeout(self.owner.connect_timeout):
                    await self.loop.create_connection(
                        lambda: upstream, host, port, ssl=self.upstream_tls,
                        server_hostname=self.upstream_hostname if self.upstream_tls else None,
                    )  # fmt: skip
            else:  # active: the upstream is in, now the client
                async with asyncio.timeout(self.owner.connect_timeout):
                    self._owned.remove(accepted)
                    if self.upstream_tls is not None:  # the upstream waits for our hello
                        await self.loop.create_connection(
                            lambda: upstream, sock=accepted, ssl=self.upstream_tls,
                            server_hostname=self.upstream_hostname,
                        )  # fmt: skip
                    else:
                        await self.loop.connect_accepted_socket(lambda: upstream, accepted)
                    await self._connect_client(client, host, port)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._failed(host, port, exc)
            return
        self.task = None
        self._sides = ()
        splice = self.splice = Splice(self._spliced)
        splice.attach(client)
        splice.attach(upstream)
        client.started = upstream.started = True
        splice.start()

    async def _connect_client(self, side: _Side, host: str, port: int) -> None:
        """Active mode: connect to the client; with PROT P be its TLS server from the first
        byte (the client sends its hello at once, before a start_tls() could take over)."""
        if self.client_tls is None:
            await self.loop.create_connection(lambda: side, host, port)
            return
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await self.loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        await self.loop.connect_accepted_socket(lambda: side, sock, ssl=self.client_tls)

    def _spliced(self, splice: Splice) -> None:
        self._report(splice.bytes[0], splice.bytes[1])  # side 0 is the client: its bytes go up

    def _failed(self, host: str, port: int, exc: BaseException) -> None:
        log.warning(
            "%s: data connection to %s:%d failed: %s",
            self.owner.address, host, port, str(exc) or type(exc).__name__,
        )  # fmt: skip
        self._abandon()

    def _connect_ended(self, task: asyncio.Task[None]) -> None:
        """Cancelled (the channel was closed), or a bug: let go of what the task held."""
        self.task = None
        if task.cancelled():
            self._abandon()
        elif (exc := task.exception()) is not None:
            log.error("%s: data connection setup failed", self.owner.address, exc_info=exc)
            self._abandon()

    def _abandon(self) -> None:
        self.task = None
        for sock in self._owned:
            _reset(sock)
        self._owned.clear()
        _cut(*self._sides)
        self._sides = ()
        self._report(0, 0)

    def _report(self, up: int, down: int) -> None:
        """Tell the session, once, that the channel is finished and what went through it."""
        if not self._reported:
            self._reported = True
            self.owner.data_done(self, up, down)

    # -- ending ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening and cut any transfer in progress."""
        if self.closed:
            return
        self.closed = True
        self._stop_listening()
        if self.task is not None:
            self.task.cancel()  # ``_connect_ended`` lets go of its sockets and reports
        elif self.pump is not None:
            self.pump.abort()  # reports from within
        elif self.splice is not None:
            self.splice.abort()  # reports once both transports are gone
        else:
            self._report(0, 0)


def _reset(sock: socket.socket) -> None:
    """Close a connection we will not serve with a reset: it gets nothing, not even a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _cut(*sides: _Side) -> None:
    for side in sides:
        if side.transport is not None:
            side.transport.abort()


class DataOwner(Protocol):
    """What a data channel reports to: the FTP session (see session.py)."""

    address: str
    connect_timeout: float

    def proxy_trusted(self, peer: str) -> bool:
        """Is ``peer`` a trusted PROXY sender of the listener?"""

    def data_done(self, channel: DataChannel, bytes_up: int, bytes_down: int) -> None:
        """The channel is finished; these bytes went through it."""

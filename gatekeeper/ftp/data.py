"""FTP data connections through gatekeeper: passive and active channels, the port pool.

Passive (PASV/EPSV): gatekeeper listens on a port from the listener's ``passive_ports`` and
announces it to the client; the first connection from the client's own address is spliced
to the upstream's real data port. A connection from any other address gets nothing and the
listening port stays open for the real client (unless the listener allows foreign data
connections). Active (PORT/EPRT): gatekeeper tells the upstream a port of its own; the
upstream's connection (from the upstream host only) is spliced to the client's address.

A channel closes its listening socket when its connection is made, when the session asks
for a new one, when the session ends, or after ``ACCEPT_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Protocol, cast

from gatekeeper.errors import ProtocolError
from gatekeeper.net.proxyproto import NEED_DATA, ProxyParser
from gatekeeper.net.relay import HIGH_WATER, LOW_WATER  # the same bound as the control relay
from gatekeeper.settings import sockaddr_host

log = logging.getLogger(__name__)

# A client that asked for a data port but never connects: the port goes back to the pool.
ACCEPT_TIMEOUT = 60.0


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
    """Bytes both ways between two data connections, with flow control and half-close."""

    def __init__(self, on_done: Callable[[Splice], None]) -> None:
        self.sides: list[_Side] = []
        self.on_done = on_done
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

    def other(self, side: _Side) -> _Side:
        return self.sides[1 - side.index]

    def _data(self, side: _Side, data: bytes) -> None:
        self.bytes[side.index] += len(data)
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
        if self.splice is not None:
            self.splice._lost_side(self, exc)

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
        self.server: asyncio.Server | None = None
        self.splice: Splice | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.port: int = sock.getsockname()[1]
        self._timer = self.loop.call_later(ACCEPT_TIMEOUT, self._accept_timeout)
        self._serve = self.loop.create_task(self._start_server())

    async def _start_server(self) -> None:
        # A passive port that must speak TLS to the client does so from the accept on: the
        # client may send its ClientHello at once, and (under uvloop) bytes can reach a
        # plain protocol before a later start_tls() could take them.
        tls = self.client_tls if self.client_side else None
        self.server = await self.loop.create_server(
            self._protocol, sock=self.sock, ssl=tls,
            ssl_handshake_timeout=ACCEPT_TIMEOUT if tls is not None else None,
        )  # fmt: skip

    def _protocol(self) -> asyncio.Protocol:
        return _Accepted(self)

    def _accept_timeout(self) -> None:
        if self.splice is None:
            log.info("%s: data connection on port %d never came", self.owner.address, self.port)
            self.close()

    def accepted(self, side: _Accepted) -> None:
        """A connection arrived on the listening socket."""
        assert side.transport is not None
        peer = sockaddr_host(side.transport.get_extra_info("peername"))
        if self.client_side and self.client_tls is None and self.owner.proxy_trusted(peer):
            # From our PROXY sender: its header says who the client is (like with like).
            side.proxy = ProxyParser()
            side.peer = peer
            side.transport.resume_reading()
            return
        self.admit(side, peer, claimed=False)

    def admit(self, side: _Side, address: str, *, claimed: bool) -> None:
        """Splice the connection if it comes from the right address, else refuse it."""
        assert side.transport is not None
        if self.splice is not None or self.closed:
            side.transport.abort()
            return
        expect = None if self.expect is None else self.expect[1 if claimed else 0]
        if expect is not None and address != expect:
            log.warning(
                "%s: data connection from foreign address %s refused (port %d)",
                self.owner.address, address, self.port,
            )  # fmt: skip
            side.transport.abort()
            return
        self._stop_listening()
        splice = self.splice = Splice(self._done)
        self.task = self.loop.create_task(self._connect(side, splice))

    async def _connect(self, accepted: _Side, splice: Splice) -> None:
        """Connect the other end, put TLS on the ends that need it (PROT P), then splice.

        gatekeeper is the TLS server toward the client and the TLS client toward the
        upstream, whichever side opened the TCP connection (RFC 4217).
        """
        outgoing = _Side()
        client, upstream = (accepted, outgoing) if self.client_side else (outgoing, accepted)
        host, port = self.target
        try:
            async with asyncio.timeout(self.owner.connect_timeout):
                if (
                    self.client_side
                ):  # passive: the client is in (TLS done at accept), now the upstream
                    await self.loop.create_connection(
                        lambda: outgoing, host, port, ssl=self.upstream_tls,
                        server_hostname=self.upstream_hostname if self.upstream_tls else None,
                    )  # fmt: skip
                else:  # active: the upstream is in, now the client
                    if self.upstream_tls is not None:  # the upstream waits for our hello
                        await self._wrap(upstream, self.upstream_tls)
                    await self._connect_client(outgoing, host, port)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning(
                "%s: data connection to %s:%d failed: %s",
                self.owner.address, host, port, str(exc) or type(exc).__name__,
            )  # fmt: skip
            self._cut(accepted, outgoing)
            self.splice = None
            self.owner.data_done(self, 0, 0)
            return
        except asyncio.CancelledError:
            self._cut(accepted, outgoing)
            raise
        finally:
            self.task = None
        splice.attach(client)
        splice.attach(upstream)
        client.started = upstream.started = True
        splice.start()

    @staticmethod
    def _cut(*sides: _Side) -> None:
        for side in sides:
            if side.transport is not None:
                side.transport.abort()

    async def _connect_client(self, side: _Side, host: str, port: int) -> None:
        """Active mode: connect to the client; with PROT P be its TLS server from the first
        byte (the client sends its hello at once, before a start_tls() could take over)."""
        if self.client_tls is None:
            await self.loop.create_connection(lambda: side, host, port)
            return
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await self.loop.sock_connect(sock, (host, port))
            await self.loop.connect_accepted_socket(lambda: side, sock, ssl=self.client_tls)
        except BaseException:
            sock.close()
            raise

    async def _wrap(self, side: _Side, context: ssl.SSLContext) -> None:
        """Become the TLS client on a data connection the upstream opened (active, PROT P)."""
        assert side.transport is not None
        transport = await self.loop.start_tls(
            side.transport, side, context, server_hostname=self.upstream_hostname
        )
        assert transport is not None
        side.transport = transport

    def _done(self, splice: Splice) -> None:
        up, down = (splice.bytes[0], splice.bytes[1])
        self.owner.data_done(self, up, down)  # side 0 is the client: its bytes go up

    def _stop_listening(self) -> None:
        self._timer.cancel()
        if self.server is not None:
            self.server.close()  # closes the listening socket too
            self.server = None
        else:
            self._serve.cancel()
            self.sock.close()
        self.release(self.port)

    def close(self) -> None:
        """Stop listening and cut any transfer in progress."""
        if self.closed:
            return
        self.closed = True
        self._stop_listening()
        if self.task is not None:
            self.task.cancel()
        if self.splice is not None:
            self.splice.abort()
        else:
            self.owner.data_done(self, 0, 0)


class _Accepted(_Side):
    """A connection to a data channel's listening socket (maybe starting with a PROXY header)."""

    def __init__(self, channel: DataChannel) -> None:
        super().__init__()
        self.channel = channel
        self.proxy: ProxyParser | None = None
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.channel.accepted(self)

    def data_received(self, data: bytes) -> None:
        parser = self.proxy
        if parser is None:
            super().data_received(data)
            return
        parser.receive_data(data)
        try:
            header = parser.next_event()
        except ProtocolError as exc:
            log.warning("%s: bad PROXY header on a data connection: %s", self.peer, exc)
            assert self.transport is not None
            self.transport.abort()
            return
        if header is NEED_DATA:
            return
        self.proxy = None
        self.early += parser.trailing
        if header.local or header.source is None:
            self.channel.admit(self, self.peer, claimed=False)
        else:
            self.channel.admit(self, sockaddr_host(header.source), claimed=True)


class DataOwner(Protocol):
    """What a data channel reports to: the FTP session (see session.py)."""

    address: str
    connect_timeout: float

    def proxy_trusted(self, peer: str) -> bool:
        """Is ``peer`` a trusted PROXY sender of the listener?"""

    def data_done(self, channel: DataChannel, bytes_up: int, bytes_down: int) -> None:
        """The channel is finished; these bytes went through it."""

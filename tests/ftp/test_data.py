"""FTP data channels (plain): admission, PROXY headers, timeouts, counts, closing; both loops.

The session is a stand-in (``Owner``); clients and upstreams are real sockets on loopback.
TLS data channels are exercised end to end in ``tests/integration/test_ftp_tls.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from gatekeeper.ftp import data
from gatekeeper.ftp.data import DataChannel, listen_on
from gatekeeper.net.proxyproto import encode_v1
from tests.test_pump import LOOPS, fd_count, poll, read_all, read_exactly, run_on, send_all

T = TypeVar("T")
HOST = "127.0.0.1"


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Coroutine[Any, Any, T]]], T]:
    return lambda main: run_on(request.param, main)


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


class Owner:
    """What a data channel reports to (the FTP session in the daemon)."""

    address = HOST

    def __init__(self, *, trusted: frozenset[str] = frozenset(), connect_timeout: float = 5.0):
        self.trusted = trusted
        self.connect_timeout = connect_timeout
        self.reports: list[tuple[int, int]] = []
        self.released: list[int] = []

    def proxy_trusted(self, peer: str) -> bool:
        return peer in self.trusted

    def data_done(self, channel: DataChannel, bytes_up: int, bytes_down: int) -> None:
        self.reports.append((bytes_up, bytes_down))

    def channel(
        self,
        target: tuple[str, int],
        *,
        client_side: bool = True,
        expect: str = HOST,
        claimed: str | None = None,
    ) -> DataChannel:
        """A channel expecting its connection from ``expect`` (or ``claimed`` by PROXY)."""
        return DataChannel(
            self, listen_on(HOST), expect=(expect, claimed or expect), target=target,
            client_side=client_side, release=self.released.append,
        )  # fmt: skip

    async def reported(self) -> tuple[int, int]:
        await poll(lambda: bool(self.reports), "the channel to report")
        assert len(self.reports) == 1, self.reports
        return self.reports[0]


def listener(stack: contextlib.ExitStack, backlog: int = 8) -> socket.socket:
    sock = socket.socket()
    stack.callback(sock.close)
    sock.bind((HOST, 0))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


async def connect(
    stack: contextlib.ExitStack, port: int, source: str = HOST, payload: bytes = b""
) -> socket.socket:
    sock = socket.socket()
    stack.callback(sock.close)
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    if payload:
        await send_all(sock, payload, eof=False)
    return sock


async def refused(sock: socket.socket) -> bool:
    """The connection got nothing: closed on it, with a reset or without."""
    try:
        return await read_all(sock) == b""
    except ConnectionResetError:
        return True


async def turned_away(
    stack: contextlib.ExitStack, port: int, payload: bytes = b"", source: str = HOST
) -> bool:
    """Connect, send ``payload``: the connection gets nothing (it may be reset so soon that
    even the connect or the send fails)."""
    try:
        sock = await connect(stack, port, source, payload)
    except ConnectionResetError:
        return True
    return await refused(sock)


async def accept(lsock: socket.socket) -> socket.socket:
    conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(lsock), 5)
    conn.setblocking(False)
    return conn


# -- transfers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_transfer_both_ways_counts_bytes(run, stack, passive: bool) -> None:
    down = random.Random(1).randbytes(3_000_000)  # a download: bulk, so it is spliced
    up = b"a small upload"

    async def main() -> None:
        owner = Owner()
        other = listener(stack)  # the upstream's data port (passive) or the client's (active)
        channel = owner.channel(other.getsockname(), client_side=passive)
        opener = await connect(stack, channel.port)  # the client (passive) or the upstream
        taken = await accept(other)
        stack.callback(taken.close)
        client, upstream = (opener, taken) if passive else (taken, opener)
        assert owner.released == [channel.port]  # the port is free once the connection came
        got_down, got_up, _, _ = await asyncio.gather(
            read_all(client), read_all(upstream), send_all(upstream, down), send_all(client, up)
        )
        assert got_down == down and got_up == up
        assert await owner.reported() == (len(up), len(down))
        assert channel.pump is not None and channel.pump.closed
        assert channel.pump.spliced[1] == hasattr(os, "splice")
        channel.close()  # at the session's end: nothing more to report
        assert owner.reports == [(len(up), len(down))]

    run(main)


def test_foreign_address_refused_and_the_client_still_served(run, stack) -> None:
    async def main() -> None:
        owner = Owner(connect_timeout=5)
        upstream = listener(stack)
        channel = owner.channel(upstream.getsockname(), expect="127.0.0.2")
        assert await turned_away(stack, channel.port)  # 127.0.0.1: not the client's address
        assert owner.reports == [] and owner.released == []  # still listening
        client = await connect(stack, channel.port, source="127.0.0.2", payload=b"hi")
        conn = await accept(upstream)
        stack.callback(conn.close)
        assert await read_exactly(conn, 2) == b"hi"
        channel.close()  # the session ends mid-transfer: cut
        assert owner.reports == [(2, 0)]
        assert await refused(client)

    run(main)


def test_proxy_header_from_a_trusted_sender(run, stack) -> None:
    async def main() -> None:
        owner = Owner(trusted=frozenset({HOST}))
        upstream = listener(stack)
        channel = owner.channel(upstream.getsockname(), claimed="192.0.2.7")
        header = encode_v1(("192.0.2.7", 40000), (HOST, channel.port))
        other = encode_v1(("198.51.100.1", 40000), (HOST, channel.port))
        assert await turned_away(stack, channel.port, other + b"steal")  # another client
        assert await turned_away(stack, channel.port, b"PROXY nonsense\r\n")
        slow = await connect(stack, channel.port, payload=header[:10])  # the rest comes later
        await send_all(slow, header[10:] + b"first bytes", eof=False)
        conn = await accept(upstream)
        stack.callback(conn.close)
        assert await read_exactly(conn, 11) == b"first bytes"  # what followed the header
        slow.shutdown(socket.SHUT_WR)
        conn.shutdown(socket.SHUT_WR)
        assert await read_all(conn) == b"" and await read_all(slow) == b""
        assert await owner.reported() == (11, 0)

    run(main)


def test_closing_drops_a_half_sent_proxy_header(run, stack) -> None:
    async def main() -> None:
        owner = Owner(trusted=frozenset({HOST}))
        channel = owner.channel((HOST, 9), claimed="192.0.2.7")
        half = await connect(stack, channel.port, payload=b"PROXY TCP4 192.0.2.7")
        await poll(lambda: bool(channel._headers), "the header to start")
        channel.close()
        assert await refused(half)
        assert owner.reports == [(0, 0)] and owner.released == [channel.port]

    run(main)


# -- never came, failed, closed -------------------------------------------------------------------
def test_accept_timeout_frees_the_port(run, stack, monkeypatch) -> None:
    monkeypatch.setattr(data, "ACCEPT_TIMEOUT", 0.05)

    async def main() -> None:
        owner = Owner()
        channel = owner.channel((HOST, 9))
        assert await owner.reported() == (0, 0)
        assert owner.released == [channel.port] and channel.closed
        with pytest.raises(ConnectionRefusedError):
            await connect(stack, channel.port)

    run(main)


def test_close_before_any_connection(run, stack) -> None:
    async def main() -> None:
        owner = Owner()
        channel = owner.channel((HOST, 9))
        channel.close()
        channel.close()
        assert owner.reports == [(0, 0)] and owner.released == [channel.port]
        with pytest.raises(ConnectionRefusedError):
            await connect(stack, channel.port)

    run(main)


def test_connect_failure_resets_the_client(run, stack) -> None:
    async def main() -> None:
        owner = Owner()
        closed_port = listener(stack).getsockname()[1]
        stack.close()  # nothing listens there now
        channel = owner.channel((HOST, closed_port))
        with contextlib.ExitStack() as mine:
            client = await connect(mine, channel.port)
            assert await owner.reported() == (0, 0)
            assert await refused(client)
        channel.close()
        assert owner.reports == [(0, 0)]

    run(main)


@pytest.mark.parametrize("how", ["timeout", "closed"])
def test_upstream_that_never_answers(run, stack, how: str) -> None:
    async def main() -> None:
        owner = Owner(connect_timeout=0.2 if how == "timeout" else 30)
        full = listener(stack, backlog=0)  # its queue fills: further SYNs are dropped
        await connect(stack, full.getsockname()[1])
        baseline = fd_count()
        channel = owner.channel(full.getsockname())
        client = await connect(stack, channel.port)
        await poll(lambda: channel.task is not None and not channel.pump, "the connect to start")
        if how == "closed":
            channel.close()
        assert await owner.reported() == (0, 0)
        assert await refused(client)
        client.close()
        assert fd_count() == baseline

    run(main)


def test_close_just_as_a_connection_is_admitted(run, stack) -> None:
    async def main() -> None:
        owner = Owner()
        channel = owner.channel((HOST, 9))
        mine, theirs = socket.socketpair()
        stack.callback(mine.close)
        mine.setblocking(False)
        channel.admit(theirs, HOST, claimed=False)  # its connect task has not run yet
        channel.close()
        assert await owner.reported() == (0, 0)
        assert theirs.fileno() == -1 and await refused(mine)

    run(main)


def test_close_mid_transfer_cuts_and_counts(run, stack) -> None:
    down = bytes(20_000_000)

    async def main() -> None:
        owner = Owner()
        upstream_port = listener(stack)
        baseline = fd_count()
        channel = owner.channel(upstream_port.getsockname())
        with contextlib.ExitStack() as mine:
            client = await connect(mine, channel.port)
            upstream = await accept(upstream_port)
            mine.callback(upstream.close)
            sender = asyncio.ensure_future(send_all(upstream, down))
            assert await read_exactly(client, 1000) == bytes(1000)  # flowing; client stops
            await poll(lambda: channel.pump is not None and channel.pump.pending[1] > 0, "a jam")
            channel.close()
            ((up, moved),) = owner.reports  # reported at once, before the sockets go
            assert up == 0 and 1000 <= moved < len(down)
            assert await refused(upstream)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
        assert fd_count() == baseline

    run(main)

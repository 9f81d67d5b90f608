"""The fast path: Telnet and TCP listeners without PROXY headers.

Rejected clients never become more than a file descriptor (the listener's own accept
loop), admitted ones are relayed by a ``PlainSession`` and its ``Pump`` on raw sockets.
The clients here connect directly, so the rules judge 127.0.0.1 (and ::1) itself.
"""

from __future__ import annotations

import os
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.harness import (
    BANNER,
    Upstream,
    connect,
    free_port,
    read_until_closed,
    recv_exactly,
    rss_kib,
    wait_for,
)
from tests.integration.test_gate import REPLY_421, entries, report, sessions

ADMIT = {"default": "deny", "allow": ["127.0.0.0/8", "::1"]}
DENY = {"default": "allow", "deny": ["127.0.0.0/8", "::1"]}


def plain(name: str, upstream: str, **extra: Any) -> dict[str, Any]:
    item = {"name": name, "protocol": extra.pop("protocol", "telnet"), "listen": "127.0.0.1:0",
            "upstream": upstream}  # fmt: skip
    item.update(extra)
    return item


def test_relay_records_the_session(daemon, upstream: Upstream) -> None:
    d = daemon({"listeners": [plain("tel", upstream.address)]}, ADMIT).start()
    with connect(d.address("tel")) as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
        c.sendall(b"hello through the gate")
        assert recv_exactly(c, 22) == b"hello through the gate"
    assert upstream.connections == 1
    wait_for(lambda: len(sessions(d.database)) == 1, what="the session recorded")
    assert d.stop() == 0
    (row,) = sessions(d.database)
    assert row["address"] == "127.0.0.1" and row["outcome"] == "closed"
    assert row["bytes_up"] == 22 and row["bytes_down"] == len(BANNER) + 22
    assert row["local"].startswith("127.0.0.1:")


def test_bulk_both_ways_and_half_close(daemon, upstream: Upstream) -> None:
    """20 MiB into the echo (bulk: the pump splices) and back, after the client's EOF."""
    d = daemon({"listeners": [plain("t", upstream.address)]}, ADMIT).start()
    payload = os.urandom(20 << 20)
    with connect(d.address("t"), timeout=30) as c, ThreadPoolExecutor(1) as pool:
        sender = pool.submit(lambda: (c.sendall(payload), c.shutdown(socket.SHUT_WR)))
        got = read_until_closed(c, limit=len(BANNER) + len(payload) + 1)
        sender.result()
    assert got == BANNER + payload
    assert d.stop() == 0
    (row,) = sessions(d.database)
    assert row["bytes_up"] == len(payload)
    assert row["bytes_down"] == len(BANNER) + len(payload)


@pytest.mark.parametrize("style", ["reply", "close", "reset"])
def test_reject_styles_and_exact_counts(daemon, upstream: Upstream, style: str) -> None:
    proto = "ftp" if style == "reply" else "tcp"
    d = daemon({"listeners": [plain("x", upstream.address, protocol=proto, reject=style)]}, DENY)
    d.start()
    addr = d.address("x")

    def attempt(_: int) -> bytes | str:
        got = b""
        try:  # the reset may come before connect() returns
            with connect(addr) as c:
                while data := c.recv(100):
                    got += data
        except ConnectionResetError:
            return "reset"
        return got

    with ThreadPoolExecutor(8) as pool:
        seen = set(pool.map(attempt, range(300)))
    assert seen == {{"reply": REPLY_421, "close": b"", "reset": "reset"}[style]}
    assert upstream.connections == 0
    assert d.stop() == 0
    assert entries(report(d, "--level", "detail"))[("x", "127.0.0.1")]["attempts"] == 300


def test_admitted_client_on_a_reset_listener_is_closed_gently(daemon, upstream: Upstream) -> None:
    """The reset style is set on the listening socket (accepted sockets inherit it): an
    admitted client must get it switched off, and see an orderly close, not a reset."""
    d = daemon({"listeners": [plain("t", upstream.address, reject="reset")]}, ADMIT).start()
    with connect(d.address("t")) as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
        linger = c.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)
        assert struct.unpack("ii", linger) == (0, 0)  # ours, for the record
        c.shutdown(socket.SHUT_WR)  # the echo server ends, gatekeeper passes it on
        assert read_until_closed(c) == b""  # EOF, no ConnectionResetError
    assert d.stop() == 0


def test_idle_timeout(daemon, upstream: Upstream) -> None:
    d = daemon({"listeners": [plain("t", upstream.address, timeouts={"idle": "0.5s"})]}, ADMIT)
    d.start()
    with connect(d.address("t")) as c:
        assert read_until_closed(c) == BANNER  # then silence, then gatekeeper closes
    assert d.stop() == 0
    assert [r["outcome"] for r in sessions(d.database)] == ["idle-timeout"]


def test_upstream_unreachable_and_by_name(daemon, upstream: Upstream) -> None:
    dead = f"127.0.0.1:{free_port()}"
    by_name = f"localhost:{upstream.port}"  # resolved in the loop's resolver, then relayed
    config = {"listeners": [plain("dead", dead), plain("named", by_name)]}
    d = daemon(config, ADMIT).start()
    with connect(d.address("dead")) as c:
        assert read_until_closed(c) == b""
    with connect(d.address("named")) as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
    assert d.stop() == 0
    outcomes = {r["listener"]: r["outcome"] for r in sessions(d.database)}
    assert outcomes == {"dead": "upstream-failed", "named": "closed"}
    assert report(d)["attempts"] == 0  # an upstream failure is not a rejection


def test_client_that_never_reads_is_bounded(daemon, upstream: Upstream) -> None:
    """Send 256 MiB into an echo while never reading: the client's send stalls early."""
    d = daemon({"listeners": [plain("t", upstream.address)]}, ADMIT).start()
    with connect(d.address("t"), timeout=1.0) as c:
        chunk = b"x" * 65536
        sent = 0
        with pytest.raises(TimeoutError):
            while sent < 256 << 20:
                sent += c.send(chunk)
        assert sent < 96 << 20  # kernel buffers and at most a pipe per direction
        rss = rss_kib(d.proc.pid)
        assert rss < 200 * 1024, f"daemon RSS {rss} KiB while a client never reads"
        with connect(d.address("t"), timeout=5.0) as other:  # other sessions go on meanwhile
            assert recv_exactly(other, len(BANNER)) == BANNER
            other.sendall(b"still served")
            assert recv_exactly(other, 12) == b"still served"
    assert d.stop() == 0


def test_monitor_mode_lets_through_and_records(daemon, upstream: Upstream) -> None:
    d = daemon({"listeners": [plain("t", upstream.address, mode="monitor")]}, DENY).start()
    with connect(d.address("t")) as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
    assert d.stop() == 0
    (entry,) = entries(report(d, "--level", "detail")).values()
    assert entry["address"] == "127.0.0.1" and entry["monitor"] is True
    (row,) = sessions(d.database)
    assert row["would_reject"] == "network"


def test_stop_cuts_sessions_after_the_drain(daemon, upstream: Upstream) -> None:
    d = daemon({"listeners": [plain("t", upstream.address, timeouts={"drain": "0.3s"})]}, ADMIT)
    d.start()
    with connect(d.address("t")) as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
        assert d.stop() == 0
        with pytest.raises(ConnectionResetError):
            while c.recv(100):
                pass
    assert [r["outcome"] for r in sessions(d.database)] == ["shutdown"]


def test_reload_enforces_new_rules_on_open_sessions(daemon, upstream: Upstream) -> None:
    config = {"listeners": [plain("t", upstream.address, enforce_on_reload=True)]}
    d = daemon(config, ADMIT).start()
    with connect(d.address("t")) as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
        d.write_rules(DENY)
        d.reload()
        with pytest.raises(ConnectionResetError):
            while c.recv(100):
                pass
    with connect(d.address("t")) as c:  # and new clients are refused
        assert read_until_closed(c) == b""
    assert d.stop() == 0
    assert [r["outcome"] for r in sessions(d.database)] == ["enforced"]

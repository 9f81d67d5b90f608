"""The gate through real sockets: decide at accept, reject styles, relay, limits, PROXY."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.net.proxyproto import encode_v2
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

REPLY_421 = b"421 Service not available, closing control connection.\r\n"
RULES: dict[str, Any] = {
    "default": "deny",
    "allow": ["10.0.0.0/8", "2001:db8::/32"],
    "deny": ["10.66.0.0/16"],
}


def listener(name: str, upstream: str, **extra: Any) -> dict[str, Any]:
    item = {"name": name, "protocol": extra.pop("protocol", "tcp"), "listen": "127.0.0.1:0",
            "upstream": upstream, "proxy_protocol": ["127.0.0.1/32"]}  # fmt: skip
    item.update(extra)
    return item


def report(daemon: Any, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "report", "-c", str(daemon.config_path),
         "--format", "json", *args],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def entries(rep: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["listener"], e["address"]): e for loc in rep["locations"] for e in loc["entries"]}


def sessions(db: Path) -> list[sqlite3.Row]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return con.execute("SELECT * FROM sessions ORDER BY start").fetchall()
    finally:
        con.close()


def test_allowed_is_relayed_and_denied_never_reaches_upstream(daemon, upstream: Upstream) -> None:
    d = daemon({"listeners": [listener("tel", upstream.address, protocol="telnet")]}, RULES).start()
    addr = d.address("tel")

    with connect(addr, claim="10.1.2.3") as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
        c.sendall(b"hello through the gate")
        assert recv_exactly(c, 22) == b"hello through the gate"
    assert upstream.connections == 1

    for claim in ("10.66.1.1", "192.0.2.1", "2001:db9::1"):
        with connect(addr, claim=claim) as c:
            assert read_until_closed(c) == b""
    assert upstream.connections == 1  # no denied client caused an upstream connection

    assert d.stop() == 0
    rep = report(d, "--level", "detail")
    got = entries(rep)
    assert got[("tel", "10.66.1.1")]["reason"] == "network"
    assert got[("tel", "192.0.2.1")]["reason"] == "default"
    assert got[("tel", "2001:db9::1")]["attempts"] == 1
    assert rep["addresses"] == 3 and rep["attempts"] == 3
    (row,) = sessions(d.database)
    assert row["address"] == "10.1.2.3" and row["outcome"] == "closed"
    assert row["bytes_up"] == 22 and row["bytes_down"] == len(BANNER) + 22
    assert row["local"].startswith("127.0.0.1:")  # gatekeeper's own end toward the upstream


@pytest.mark.parametrize("style", ["reply", "close", "reset"])
def test_reject_styles(daemon, upstream: Upstream, style: str) -> None:
    proto = "ftp" if style == "reply" else "tcp"
    d = daemon(
        {"listeners": [listener("x", upstream.address, protocol=proto, reject=style)]}, RULES
    )
    d.start()
    with connect(d.address("x"), claim="192.0.2.9") as c:
        if style == "reset":
            with pytest.raises(ConnectionResetError):
                while c.recv(100):
                    pass
        else:
            assert read_until_closed(c) == (REPLY_421 if style == "reply" else b"")
    assert upstream.connections == 0
    assert d.stop() == 0


def test_counts_are_exact(daemon, upstream: Upstream) -> None:
    """2,000 rejected connections from 20 PROXY-claimed addresses: exactly 100 each."""
    d = daemon({"listeners": [listener("tel", upstream.address)]}, RULES).start()
    addr = d.address("tel")
    claims = [f"192.0.2.{i}" for i in range(1, 21)]

    def attempt(i: int) -> bytes:
        with connect(addr, claim=claims[i % 20]) as c:
            return read_until_closed(c)

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(attempt, range(2000))) == {b""}
    assert d.stop() == 0
    rep = report(d, "--level", "detail")
    assert rep["attempts"] == 2000 and rep["addresses"] == 20
    assert {k[1]: e["attempts"] for k, e in entries(rep).items()} == dict.fromkeys(claims, 100)
    assert upstream.connections == 0


def test_upstream_unreachable(daemon) -> None:
    dead = f"127.0.0.1:{free_port()}"
    config = {
        "listeners": [listener("f", dead, protocol="ftp"), listener("t", dead, protocol="telnet")]
    }
    d = daemon(config, RULES).start()
    with connect(d.address("f"), claim="10.0.0.1") as c:
        assert read_until_closed(c) == REPLY_421
    with connect(d.address("t"), claim="10.0.0.1") as c:
        assert read_until_closed(c) == b""
    assert d.stop() == 0
    assert report(d)["attempts"] == 0  # an upstream failure is not a rejection
    assert [r["outcome"] for r in sessions(d.database)] == ["upstream-failed"] * 2


def test_per_address_limits(daemon, upstream: Upstream) -> None:
    config = {
        "listeners": [listener("t", upstream.address, limits={"per_address": 2, "rate": "4/60s"})]
    }
    d = daemon(config, RULES).start()
    addr = d.address("t")
    first = [connect(addr, claim="10.0.0.5") for _ in range(2)]
    for c in first:
        assert recv_exactly(c, len(BANNER)) == BANNER
    with connect(addr, claim="10.0.0.5") as c:  # third at once: over per_address
        assert read_until_closed(c) == b""
    with connect(addr, claim="10.0.0.6") as c:  # another address is not affected
        assert recv_exactly(c, len(BANNER)) == BANNER
    for c in first:
        c.close()
    wait_for(lambda: len(sessions(d.database)) == 3, what="three sessions recorded as ended")
    # 10.0.0.5 has made 3 connections in the window; one more is allowed, then the rate bites.
    with connect(addr, claim="10.0.0.5") as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
    with connect(addr, claim="10.0.0.5") as c:
        assert read_until_closed(c) == b""
    assert d.stop() == 0
    got = entries(report(d, "--level", "detail"))
    assert got[("t", "10.0.0.5")]["reason"] == "limit"
    assert got[("t", "10.0.0.5")]["attempts"] == 2
    assert ("t", "10.0.0.6") not in got


def test_monitor_mode_records_and_lets_through(daemon, upstream: Upstream) -> None:
    config = {"listeners": [listener("t", upstream.address, mode="monitor")]}
    d = daemon(config, RULES).start()
    with connect(d.address("t"), claim="192.0.2.50") as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
    assert d.stop() == 0
    (entry,) = entries(report(d, "--level", "detail")).values()
    assert entry["address"] == "192.0.2.50" and entry["monitor"] is True
    (row,) = sessions(d.database)
    assert row["would_reject"] == "default"


def test_proxy_protocol_edges(daemon, upstream: Upstream) -> None:
    short = listener("t", upstream.address, timeouts={"proxy_header": "0.5s"})
    open_listener = listener("open", upstream.address, proxy_protocol=["192.0.2.0/24"])
    config = {"listeners": [short, open_listener]}
    rules = {**RULES, "allow": [*RULES["allow"], "127.0.0.1"]}
    d = daemon(config, rules).start()
    t, open_ = d.address("t"), d.address("open")
    with connect(t) as c:  # trusted sender, no header within the timeout
        assert read_until_closed(c) == b""
    with connect(t) as c:  # malformed header
        c.sendall(b"PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n")
        assert read_until_closed(c) == b""
    with connect(t) as c:  # v2 LOCAL: the sender's own address (127.0.0.1, allowed)
        c.sendall(encode_v2(None, None))
        assert recv_exactly(c, len(BANNER)) == BANNER
    with connect(t) as c:  # v2 PROXY with a claimed address, byte by byte
        for b in encode_v2(("10.9.9.9", 1234), ("127.0.0.1", 21)):
            c.sendall(bytes([b]))
        assert recv_exactly(c, len(BANNER)) == BANNER
    with connect(open_, claim="10.1.1.1") as c:  # 127.0.0.1 is not trusted on this one
        assert read_until_closed(c) in (b"", BANNER)  # closed, maybe after the banner
    assert d.stop() == 0
    got = entries(report(d, "--level", "detail"))
    assert got[("t", "127.0.0.1")]["attempts"] == 2 and got[("t", "127.0.0.1")]["reason"] == "proxy"
    assert got[("open", "127.0.0.1")]["reason"] == "proxy"
    assert {r["address"] for r in sessions(d.database)} >= {"127.0.0.1", "10.9.9.9"}


def test_half_close_relays_the_rest(daemon, upstream: Upstream) -> None:
    d = daemon({"listeners": [listener("t", upstream.address)]}, RULES).start()
    with connect(d.address("t"), claim="10.0.0.1") as c:
        payload = bytes(range(256)) * 4096  # 1 MiB
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)  # we are done sending; the echo must still come back
        assert read_until_closed(c, limit=4 << 20) == BANNER + payload
    assert d.stop() == 0


def test_idle_timeout(daemon, upstream: Upstream) -> None:
    d = daemon({"listeners": [listener("t", upstream.address, timeouts={"idle": "0.5s"})]}, RULES)
    d.start()
    with connect(d.address("t"), claim="10.0.0.1") as c:
        assert read_until_closed(c) == BANNER  # then silence, then gatekeeper closes
    assert d.stop() == 0
    assert [r["outcome"] for r in sessions(d.database)] == ["idle-timeout"]


def test_client_that_never_reads_is_bounded(daemon, upstream: Upstream) -> None:
    """Send 256 MiB into an echo while never reading: the client's send stalls early."""
    d = daemon({"listeners": [listener("t", upstream.address)]}, RULES).start()
    with connect(d.address("t"), claim="10.0.0.1", timeout=1.0) as c:
        chunk = b"x" * 65536
        sent = 0
        with pytest.raises(TimeoutError):
            while sent < 256 << 20:
                sent += c.send(chunk)
        # Kernel buffers on four sockets plus gatekeeper's bounded buffers: tens of MB at most.
        assert sent < 96 << 20
        rss = rss_kib(d.proc.pid)
        assert rss < 200 * 1024, f"daemon RSS {rss} KiB while a client never reads"
        with connect(d.address("t"), claim="10.0.0.2") as other:  # others go on meanwhile
            assert recv_exactly(other, len(BANNER)) == BANNER
            other.sendall(b"still served")
            assert recv_exactly(other, 12) == b"still served"
    assert d.stop() == 0


def test_ipv6_and_dual_stack(daemon) -> None:
    up = Upstream("::1")
    try:
        config = {"listeners": [
            {"name": "v6", "protocol": "tcp", "listen": "[::1]:0", "upstream": up.address},
            {"name": "dual", "protocol": "tcp", "listen": "[::]:0", "upstream": up.address},
        ]}  # fmt: skip
        rules = {"default": "deny", "allow": ["::1", "127.0.0.1"]}
        d = daemon(config, rules).start()
        with connect(("::1", d.address("v6")[1])) as c:
            assert recv_exactly(c, len(BANNER)) == BANNER
        with connect(("127.0.0.1", d.address("dual")[1])) as c:  # IPv4 client on [::]
            assert recv_exactly(c, len(BANNER)) == BANNER
        assert d.stop() == 0
        assert {r["address"] for r in sessions(d.database)} == {"::1", "127.0.0.1"}
    finally:
        up.close()


def test_untrusted_proxy_header_is_rejected_after_admission(daemon, upstream: Upstream) -> None:
    config = {"listeners": [listener("t", upstream.address, proxy_protocol=["192.0.2.0/24"])]}
    d = daemon(config, {**RULES, "allow": ["127.0.0.0/8"]}).start()
    with connect(d.address("t")) as c:
        c.sendall(b"PROXY TCP4 10.0.0.1 127.0.0.1 1 2\r\n")
        data = read_until_closed(c)
        assert b"PROXY" not in data  # never echoed back: the upstream didn't get it
    wait_for(lambda: upstream.connections == 1, what="the session's upstream connection")
    assert d.stop() == 0
    assert entries(report(d, "--level", "detail"))[("t", "127.0.0.1")]["reason"] == "proxy"

"""Process faults: out of file descriptors, a storm of reloads."""

from __future__ import annotations

import signal
import socket
from contextlib import ExitStack

from tests.integration.harness import BANNER, Upstream, connect, recv_exactly, wait_for
from tests.integration.test_gate import sessions
from tests.integration.test_plain import ADMIT, plain


def _banner(address: tuple[str, int]) -> bool:
    try:
        with connect(address, timeout=2.0) as c:
            return recv_exactly(c, len(BANNER)) == BANNER
    except OSError:
        return False


def test_out_of_descriptors_keeps_running_and_recovers(daemon, upstream: Upstream) -> None:
    """``ulimit -n 256`` and 1,000 clients at once: the daemon serves what it can hold,
    leaves the rest in the backlog, says so once, and serves again when they close."""
    d = daemon({"listeners": [plain("t", upstream.address)]}, ADMIT).start(nofile=256)
    addr = d.address("t")
    with ExitStack() as stack:
        clients = []
        for _ in range(1000):
            sock = socket.create_connection(addr, timeout=5)  # the backlog takes them all
            stack.enter_context(sock)
            clients.append(sock)
        wait_for(lambda: "cannot accept" in d.output(), what="the daemon running out")
        assert d.proc is not None and d.proc.poll() is None
        served = 0
        for sock in clients[:50]:  # the first ones got their sessions
            sock.settimeout(5)
            served += recv_exactly(sock, len(BANNER)) == BANNER
        assert served == 50
    # All closed: descriptors come back, the backlog drains, new clients are served.
    wait_for(lambda: _banner(addr), what="a new client served after the storm")
    assert d.output().count("cannot accept") == 1  # said once, not at every retry
    assert d.stop() == 0
    rows = sessions(d.database)
    assert len(rows) >= 1000  # every client was accepted in the end and recorded


def test_a_hundred_reloads_in_a_second(daemon, upstream: Upstream) -> None:
    """SIGHUP 100 times at once: the daemon keeps every listener and ends on the last
    rules written."""
    config = {"listeners": [plain("a", upstream.address), plain("b", upstream.address)]}
    d = daemon(config, ADMIT).start()
    assert d.proc is not None
    for i in range(100):  # ending on a file that admits nobody
        d.write_rules({"default": "deny", "allow": [] if i % 2 else ["127.0.0.0/8"]})
        d.proc.send_signal(signal.SIGHUP)
    d.write_rules(ADMIT)  # the last word: only if it is read do the clients below get in
    d.proc.send_signal(signal.SIGHUP)
    for name in ("a", "b"):
        wait_for(lambda n=name: _banner(d.address(n)), what=f"listener {name} serving")
    assert d.proc.poll() is None
    assert d.stop() == 0

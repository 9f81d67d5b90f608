"""Slow and silent peers: an upstream that never reads, a client that trickles bytes, a
peer that may be gone without a word. Memory stays bounded, timeouts end what must end,
and the daemon's other sessions go on meanwhile.

Already proven elsewhere: a client that never reads stalls its sender at a bounded memory
(``test_plain``/``test_gate.test_client_that_never_reads_is_bounded``), and a silent session
is closed by the idle timeout (``test_idle_timeout`` in both).

Both listener paths are driven: Telnet (raw sockets and a ``Pump``) and FTP (the control
relay with its inspector, data connections in a ``Pump``). Times are scaled down through
the config (fractional seconds).
"""

from __future__ import annotations

import ftplib
import os
import select
import socket
import time
from pathlib import Path

import pytest

from tests.integration.fake_ftp import NEVER_READ, FakeFtp
from tests.integration.harness import (
    BANNER,
    WAIT,
    Upstream,
    connect,
    free_port,
    read_until_closed,
    recv_exactly,
    rss_kib,
    wait_for,
)
from tests.integration.test_gate import REPLY_421, sessions
from tests.integration.test_plain import ADMIT, plain
from tests.integration.test_upstream_faults import Baseline, ftp_listener, login, passive

PUSH = 200 << 20  # what a client tries to push into an upstream that never reads
CHUNK = b"x" * 65536
# Kernel socket buffers on the way (loopback autotuning: up to 4 MiB to send and 6 MiB to
# receive per socket) plus one pump pipe of 1 MiB: a sender must stall well before this.
STALL_BOUND = 64 << 20
RSS_GROWTH_BOUND = 32 * 1024  # KiB the daemon may grow by while a peer is stuck


def push_until_stalled(sock: socket.socket) -> int:
    """Send until the kernel stops taking bytes (``sock`` has a short timeout); the count."""
    sent = 0
    with pytest.raises(TimeoutError):
        while sent < PUSH:
            sent += sock.send(CHUNK)
    return sent


def still_open(sock: socket.socket) -> bool:
    """No EOF and no reset has come: the peer (gatekeeper) keeps the connection."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


def test_telnet_upstream_that_never_reads(daemon, upstream: Upstream, silent) -> None:
    """A Telnet client pushes 200 MiB at an upstream that never reads: its send stalls
    early, the daemon's memory does not grow with it, an echo session beside it works, and
    the idle timeout then ends the stuck session (recorded ``idle-timeout``) and frees all
    it held."""
    stuck = silent()
    config = {"listeners": [plain("stuck", stuck.address, timeouts={"idle": "3s"}),
                            plain("echo", upstream.address)]}  # fmt: skip
    d = daemon(config, ADMIT).start()
    with connect(d.address("echo")) as c:  # a first session (see Baseline)
        assert recv_exactly(c, len(BANNER)) == BANNER
    base = Baseline(d)
    rss_before = rss_kib(base.pid)
    with connect(d.address("stuck"), timeout=0.5) as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
        sent = push_until_stalled(c)
        rss = rss_kib(base.pid)
        # Meanwhile another session through the same daemon: 1 MiB each way, intact.
        payload = bytes(range(256)) * 4096
        with connect(d.address("echo"), timeout=WAIT) as e:
            assert recv_exactly(e, len(BANNER)) == BANNER
            e.sendall(payload)
            assert recv_exactly(e, len(payload)) == payload
        assert still_open(c), "the stuck session ended before the idle timeout"
        c.settimeout(WAIT)
        read_until_closed(c)  # the idle timeout: a reset (bytes were still pending)
    wait_for(lambda: stuck.gone() == 1, what="the upstream side of the stuck session closed")
    fds, tasks = base.settled("an upstream that never read")
    assert (fds, tasks) == (base.fds, base.tasks)
    assert sent < STALL_BOUND, f"{sent} bytes taken before the sender stalled"
    assert rss - rss_before < RSS_GROWTH_BOUND, f"RSS {rss_before} -> {rss} KiB"
    assert d.stop() == 0
    row = next(r for r in sessions(d.database) if r["listener"] == "stuck")
    assert row["outcome"] == "idle-timeout"
    assert row["bytes_up"] <= sent
    print(f"telnet, upstream never reads: pushed {sent >> 20} MiB before the send stalled "
          f"(tried {PUSH >> 20} MiB), {row['bytes_up'] >> 20} MiB reached the upstream's "
          f"buffers; RSS {rss_before} -> {rss} KiB; fds {base.fds} -> {fds}")  # fmt: skip


def test_ftp_upstream_that_never_reads(daemon, fake, silent) -> None:
    """FTP: an upload whose upstream data connection is never read stalls the client's
    data connection at a bounded memory; another session on the same listener downloads
    meanwhile through the same (one) passive port; the idle timeout then ends the stuck
    session with ``421 Idle timeout`` on control. On the control connection itself an
    upstream that never answers cannot make the daemon buffer commands: past 64
    outstanding the client gets 421."""
    upstream: FakeFtp = fake(NEVER_READ)
    mute = silent(b"220 mute\r\n")
    port = free = free_port()
    config = {"listeners": [ftp_listener("ftp", upstream.address, port, timeouts={"idle": "3s"}),
                            ftp_listener("mute", mute.address, free_port())]}  # fmt: skip
    d = daemon(config, ADMIT).start()
    login(d).quit()
    base = Baseline(d)
    rss_before = rss_kib(base.pid)
    stuck = login(d)
    host, data_port = passive(stuck)
    assert data_port == port
    with socket.create_connection((host, data_port), timeout=0.5) as data:
        assert stuck.sendcmd("STOR up.bin").startswith("150")
        sent = push_until_stalled(data)
        rss = rss_kib(base.pid)
        # Meanwhile: a whole download on the same listener, through the same passive port
        # (the stuck channel gave it back when its connection came).
        other = login(d)
        host, other_port = passive(other)
        assert other_port == free
        with socket.create_connection((host, other_port), timeout=WAIT) as down:
            assert other.sendcmd("RETR big.bin").startswith("150")
            assert read_until_closed(down, limit=len(upstream.payload)) == upstream.payload
        assert other.voidresp().startswith("226")
        other.quit()
        # And the control channel toward an upstream that never answers.
        with connect(d.address("mute"), timeout=WAIT) as c:
            assert recv_exactly(c, 10) == b"220 mute\r\n"
            c.sendall(b"NOOP\r\n" * 200)
            assert read_until_closed(c) == REPLY_421
        assert still_open(data), "the stuck session ended before the idle timeout"
        with pytest.raises(ftplib.error_temp, match=r"^421 Idle timeout \(3 seconds\)"):
            stuck.getresp()
        assert stuck.file.read() == ""  # then an orderly close of control
        data.settimeout(WAIT)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            while True:  # the data connection is cut: the next sends fail
                data.send(CHUNK)
    stuck.close()
    fds, tasks = base.settled("an upload the upstream never read")
    assert (fds, tasks) == (base.fds, base.tasks)
    assert sent < STALL_BOUND, f"{sent} bytes taken before the sender stalled"
    assert rss - rss_before < RSS_GROWTH_BOUND, f"RSS {rss_before} -> {rss} KiB"
    assert d.stop() == 0
    rows = {r["port"]: r for r in sessions(d.database) if r["listener"] == "ftp"}
    outcomes = sorted(r["outcome"] for r in rows.values())
    assert outcomes == ["idle-timeout", "logged-in", "logged-in"]
    print(f"ftp, upstream never reads the upload: pushed {sent >> 20} MiB before the send "
          f"stalled (tried {PUSH >> 20} MiB); RSS {rss_before} -> {rss} KiB; "
          f"fds {base.fds} -> {fds}, tasks {base.tasks} -> {tasks}; "
          f"a download of {len(upstream.payload)} bytes verified meanwhile")  # fmt: skip


def test_telnet_slow_typist_is_only_subject_to_idle(daemon, upstream: Upstream) -> None:
    """A person typing slowly on a Telnet session is legitimate: a byte every 0.2 s for
    longer than twice the idle timeout keeps the session open (each byte is echoed); only
    silence for ``idle`` ends it."""
    d = daemon({"listeners": [plain("t", upstream.address, timeouts={"idle": "1s"})]}, ADMIT)
    d.start()
    typed = 0
    with connect(d.address("t"), timeout=WAIT) as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
        started = time.monotonic()
        while time.monotonic() - started < 2.4:  # bounded: at most ~12 keystrokes
            c.sendall(b"k")
            assert recv_exactly(c, 1) == b"k", f"cut after {typed} keystrokes"
            typed += 1
            time.sleep(0.2)  # the typist's pace, not a wait for an event
        assert read_until_closed(c) == b""  # then silence: the idle timeout, a clean close
    assert d.stop() == 0
    (row,) = sessions(d.database)
    assert row["outcome"] == "idle-timeout" and row["bytes_up"] == typed
    print(f"telnet slow typist: {typed} keystrokes over 2.4 s with idle 1 s, all echoed")


def test_ftp_login_timeout_cuts_a_trickle(daemon, fake) -> None:
    """Slowloris before sign-on: a byte every 0.2 s keeps the idle timeout (5 s) from ever
    firing, but ``timeouts.login`` (1 s) ends it with ``421 Login timeout`` and a close,
    recorded ``login-timeout``; the upstream's connection goes too. A user who signed on in
    time is not subject to it."""
    upstream: FakeFtp = fake()
    config = {"listeners": [ftp_listener("ftp", upstream.address, free_port(),
                                         timeouts={"login": "1s", "idle": "5s"})]}  # fmt: skip
    d = daemon(config, ADMIT).start()
    signed_on = login(d)  # before the trickler: its session outlives the login timeout
    trickle = b"USER alice\r\nPASS secret\r\n"
    got = b""
    sent = 0
    with connect(d.address("ftp"), timeout=0.2) as c:
        for byte in trickle:  # bounded: 24 bytes, 0.2 s each at most
            try:
                c.sendall(bytes([byte]))
                sent += 1
                got += c.recv(200)  # waits up to 0.2 s: the trickler's pace
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if got.endswith(b"\r\n") and b"421" in got:
                c.settimeout(WAIT)
                got += read_until_closed(c)
                break
    assert got == (
        b"220 fake IBM i FTP server ready\r\n"
        b"421 Login timeout (1 seconds): closing control connection.\r\n"
    ), got
    assert sent < len(trickle), "the trickle finished: the login timeout did not fire"
    # The signed-on user, past the login timeout, goes on.
    assert signed_on.sendcmd("NOOP").startswith("200")
    signed_on.quit()
    wait_for(lambda: upstream.ended == 2, what="the upstream's connections to end")
    assert d.stop() == 0
    outcomes = sorted(r["outcome"] for r in sessions(d.database))
    assert outcomes == ["logged-in", "login-timeout"]
    assert "not signed on within 1s" in d.output()
    print(f"ftp login trickle: cut after {sent} of {len(trickle)} bytes with 421 Login timeout")


def test_idle_timeout_counts_the_data_connection(daemon, fake) -> None:
    """A download that trickles for three times the idle timeout while the control
    connection is silent is activity, not idleness: it completes (226). Once both are
    silent, the idle timeout ends the session with ``421 Idle timeout``."""
    upstream: FakeFtp = fake(size=240 << 10, trickle=(8 << 10, 0.05))  # 30 chunks, ~1.5 s
    port = free_port()
    config = {"listeners": [ftp_listener("ftp", upstream.address, port,
                                         timeouts={"idle": "0.5s"})]}  # fmt: skip
    d = daemon(config, ADMIT).start()
    ftp = login(d)
    host, data_port = passive(ftp)
    started = time.monotonic()
    with socket.create_connection((host, data_port), timeout=WAIT) as data:
        assert ftp.sendcmd("RETR slow.bin").startswith("150")
        assert read_until_closed(data, limit=len(upstream.payload)) == upstream.payload
    took = time.monotonic() - started
    assert ftp.voidresp().startswith("226")
    with pytest.raises(ftplib.error_temp, match=r"^421 Idle timeout \(0.5 seconds\)"):
        ftp.getresp()
    ftp.close()
    assert d.stop() == 0
    (row,) = sessions(d.database)
    assert row["outcome"] == "idle-timeout" and row["files_sent"] == 1
    print(f"ftp slow download: {len(upstream.payload)} bytes over {took:.1f} s with idle 0.5 s")


def _tcp_timers(pid: int) -> dict[tuple[str, str], int]:
    """(local, remote) address -> the kernel's timer kind (``/proc/net/tcp``: 2 is the
    keepalive timer) for the established TCP sockets the process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    timers = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "01" and f[9] in inodes:  # ESTABLISHED
            timers[(f[1], f[2])] = int(f[5].split(":")[0], 16)
    return timers


def test_keepalive_on_both_sides_of_sessions(daemon, upstream: Upstream, fake) -> None:
    """A peer gone without FIN or RST (power cut, a firewall forgetting the flow) cannot be
    made on loopback without dropping packets, so this shows what can be shown: every
    connection the daemon holds for a Telnet and an FTP session, toward the client and
    toward the upstream, has TCP keepalive on (the kernel's keepalive timer runs), while a
    socket without it (the test's own client) has none. That the probes then find a dead
    peer is the kernel's part; a silent peer is also ended by the idle timeout
    (``test_idle_timeout``)."""
    ftp_upstream: FakeFtp = fake()
    config = {"listeners": [plain("t", upstream.address),
                            ftp_listener("ftp", ftp_upstream.address, free_port())]}  # fmt: skip
    d = daemon(config, ADMIT).start()
    assert d.proc is not None
    with connect(d.address("t")) as c:
        assert recv_exactly(c, len(BANNER)) == BANNER
        ftp = login(d)
        # Polled: a socket with bytes in flight shows its retransmit timer (1) until acked.
        timers = wait_for(
            lambda: sorted((t := _tcp_timers(d.proc.pid)).values()) == [2, 2, 2, 2] and t,
            what=f"4 session sockets with the keepalive timer: {_tcp_timers(d.proc.pid)}",
        )
        own = _tcp_timers_of_test(c)
        ftp.quit()
    assert sorted(timers.values()) == [2, 2, 2, 2], timers
    assert own == 0, "the test's own client socket has no keepalive: the probe tells apart"
    assert d.stop() == 0
    print(f"keepalive timer on {len(timers)} of {len(timers)} daemon session sockets")


def _tcp_timers_of_test(sock: socket.socket) -> int:
    """The timer kind of one of this process's sockets, from /proc/net/tcp, found by its
    inode (an old connection on the same port may linger there in TIME_WAIT)."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[9] == inode:
            return int(f[5].split(":")[0], 16)
    raise AssertionError(f"socket {sock.getsockname()} not in /proc/net/tcp")

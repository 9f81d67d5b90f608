"""Socket activation and the watchdog, with the test playing systemd.

The test opens the listening sockets itself, as systemd does for a socket unit, and starts
``gatekeeper run`` through a small exec shim that puts them on descriptors 3, 4… and sets
``LISTEN_FDS``/``LISTEN_FDNAMES``/``LISTEN_PID`` (the shim's pid is the daemon's: it execs).
While no daemon runs, the test keeps the sockets open, so clients that connect then wait
in the backlog, as they do in systemd's socket while a service restarts.
"""

from __future__ import annotations

import ftplib
import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ftp_harness import PASSWORD, USER, FtpUpstream
from tests.integration.harness import (
    BANNER,
    WAIT,
    Daemon,
    Upstream,
    connect,
    free_port,
    read_until_closed,
    recv_exactly,
)
from tests.integration.test_ftp import RULES as FTP_RULES
from tests.integration.test_ftp import ftp_listener
from tests.integration.test_gate import RULES, listener

# Moves the descriptors named in argv[1] to 3, 4…, says they are for this process, execs.
SHIM = """
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",") if x]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for offset, fd in enumerate(high):
    os.dup2(fd, 3 + offset)
for fd in {*high, *fds} - set(range(3, 3 + len(fds))):
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class ActivatedDaemon(Daemon):
    """The harness's daemon, started the way systemd starts a socket-activated service."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.extra_env: dict[str, str] = {}

    def activate(self, sockets: list[tuple[str, socket.socket]], **env: str) -> ActivatedDaemon:
        environ = dict(os.environ, NOTIFY_SOCKET=str(self.sockdir / "n"), PYTHONUNBUFFERED="1")
        for key in ("JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            environ.pop(key, None)
        environ.update(env)
        if sockets:
            environ["LISTEN_FDNAMES"] = ":".join(name for name, _ in sockets)
        fds = [sock.fileno() for _, sock in sockets]
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        command = ["-m", "gatekeeper", "run", "-c", str(self.config_path)]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SHIM, ",".join(map(str, fds)), *command],
            stdout=self.log, stderr=subprocess.STDOUT, env=environ, cwd=self.workdir,
            pass_fds=fds,
        )  # fmt: skip
        self.wait_message("READY=1")
        return self

    def open_sockets(self) -> set[int]:
        """Inodes of the sockets the daemon holds open."""
        assert self.proc is not None
        found = set()
        for fd in Path(f"/proc/{self.proc.pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
        return found


@pytest.fixture
def activated(tmp_path: Path) -> Iterator[Any]:
    made: list[ActivatedDaemon] = []

    def make(config: dict[str, Any], rules: dict[str, Any]) -> ActivatedDaemon:
        d = ActivatedDaemon(tmp_path, config, rules)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def listening(made: list[socket.socket], port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    made.append(sock)
    return sock


def address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return host, port


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def listening_inodes() -> set[int]:
    """Inodes of every TCP socket in LISTEN state on this machine (/proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                found.add(int(fields[9]))
    return found


def assert_served(client: socket.socket, payload: bytes) -> None:
    assert recv_exactly(client, len(BANNER)) == BANNER
    client.sendall(payload)
    assert recv_exactly(client, len(payload)) == payload


def test_serves_on_passed_sockets_and_binds_nothing_else(
    activated, upstream: Upstream, sockets: list[socket.socket]
) -> None:
    unused_a, unused_b = free_port(), free_port()
    by_name = listening(sockets)
    by_port = listening(sockets)
    stray = listening(sockets)
    config = {
        "listeners": [
            # Its configured address is not used: the socket named after it is.
            listener("a", upstream.address, listen=f"127.0.0.1:{unused_a}"),
            # Matched by port: systemd named its socket after the unit, not the listener.
            listener("b", upstream.address, listen=f"127.0.0.1:{address(by_port)[1]}"),
            # No socket passed: binds its own address, as without systemd.
            listener("c", upstream.address),
        ]
    }
    d = activated(config, RULES).activate(
        [("a", by_name), ("gatekeeper@x.socket", by_port), ("stray", stray)]
    )
    assert d.status["a"] == f"127.0.0.1:{address(by_name)[1]}"
    assert d.status["b"] == f"127.0.0.1:{address(by_port)[1]}"
    for name in ("a", "b", "c"):
        with connect(d.address(name), claim="10.1.1.1") as c:
            assert_served(c, f"via {name}".encode())
        with connect(d.address(name), claim="10.66.1.1") as c:  # and the gate holds
            assert read_until_closed(c) == b""

    # Nothing listens on a's configured address; the stray socket was closed, not kept.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", unused_a), timeout=5).close()
    held = d.open_sockets()
    assert inode(stray) not in held
    listening_held = held & listening_inodes()
    assert len(listening_held) == 3  # a and b on the passed sockets, c on its own
    assert {inode(by_name), inode(by_port)} <= listening_held
    output = d.output()
    stray_address = f"127.0.0.1:{address(stray)[1]}"
    assert f"socket 'stray' on {stray_address} passed by systemd matches no listener" in output
    assert "listener b: socket 'gatekeeper@x.socket'" in output

    # A reload keeps the passed sockets (even with another address in the config).
    config["listeners"][0]["listen"] = f"127.0.0.1:{unused_b}"
    d.write_config(config)
    d.reload()
    assert d.status["a"] == f"127.0.0.1:{address(by_name)[1]}"
    with connect(d.address("a"), claim="10.1.1.1") as c:
        assert_served(c, b"after reload")
    # A listener removed at reload and added back gets its passed socket again.
    d.write_config({**config, "listeners": config["listeners"][1:]})
    d.reload()
    assert "a" not in d.status
    d.write_config(config)
    d.reload()
    assert d.status["a"] == f"127.0.0.1:{address(by_name)[1]}"
    with connect(d.address("a"), claim="10.1.1.1") as c:
        assert_served(c, b"back again")
    assert d.stop() == 0


def test_restart_loses_no_queued_connection(
    activated, upstream: Upstream, sockets: list[socket.socket]
) -> None:
    sock = listening(sockets)
    config = {"listeners": [listener("tel", upstream.address, listen=f"127.0.0.1:{free_port()}")]}

    # Connections made before the daemon runs wait in the backlog, their first bytes too.
    early = [connect(address(sock), claim=f"10.1.1.{i}") for i in range(1, 4)]
    for i, c in enumerate(early):
        c.sendall(b"early %d" % i)
    first = activated(config, RULES).activate([("tel", sock)])
    for i, c in enumerate(early):
        assert recv_exactly(c, len(BANNER)) == BANNER
        assert recv_exactly(c, 7) == b"early %d" % i
        c.close()
    assert first.stop() == 0

    # Between stop and start (a restart): clients queue in the socket the test keeps open.
    waiting = [connect(address(sock), claim=f"10.2.2.{i}") for i in range(1, 4)]
    second = activated(config, RULES).activate([("tel", sock)])
    for i, c in enumerate(waiting):
        assert_served(c, b"queued %d" % i)
        c.close()
    assert second.stop() == 0
    assert upstream.connections == 6


def test_without_activation_variables_the_daemon_binds(activated, upstream: Upstream) -> None:
    d = activated({"listeners": [listener("t", upstream.address)]}, RULES).activate([])
    with connect(d.address("t"), claim="10.1.1.1") as c:
        assert_served(c, b"own socket")
    assert "passed by systemd" not in d.output()
    assert d.stop() == 0


def test_watchdog_pings(activated, upstream: Upstream) -> None:
    d = activated({"listeners": [listener("t", upstream.address)]}, RULES)
    d.activate([], WATCHDOG_USEC="200000")  # WatchdogSec=0.2s: a ping every 0.1 s
    for _ in range(3):
        d.wait_message("WATCHDOG=1", timeout=WAIT)
    d.reload()
    d.wait_message("WATCHDOG=1")  # still alive after a reload
    assert d.stop() == 0


def test_watchdog_meant_for_another_process(activated, upstream: Upstream) -> None:
    d = activated({"listeners": [listener("t", upstream.address)]}, RULES)
    d.activate([], WATCHDOG_USEC="20000", WATCHDOG_PID="1")  # pid 1 is not the daemon
    d.reload()
    d.reload()
    assert d.stop() == 0
    while d._receive(0.05) is not None:
        pass
    assert not any("WATCHDOG=1" in m.splitlines() for m in d.messages)


def test_ftp_on_a_dual_stack_socket(activated, root: Path, sockets: list[socket.socket]) -> None:
    """What `ListenStream=21` passes: [::]:21 taking IPv4 clients too. PASV and PORT work
    for an IPv4 client, whose address the daemon sees as ::ffff:127.0.0.1."""
    upstream = FtpUpstream(root)
    try:
        dual = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sockets.append(dual)
        dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        dual.bind(("::", 0))
        dual.listen(16)
        port = dual.getsockname()[1]
        d = activated({"listeners": [ftp_listener(upstream, listen="0.0.0.0:21")]}, FTP_RULES)
        d.activate([("ftp", dual)])
        assert d.status["ftp"] == f"[::]:{port}"
        for passive in (True, False):
            ftp = ftplib.FTP(timeout=10)
            ftp.connect("127.0.0.1", port)
            ftp.set_pasv(passive)
            ftp.login(USER, PASSWORD)
            got = io.BytesIO()
            ftp.retrbinary("RETR hello.txt", got.write)
            assert got.getvalue() == (root / "hello.txt").read_bytes()
            ftp.quit()
        assert d.stop() == 0
    finally:
        upstream.close()

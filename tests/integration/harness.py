"""Real peers for socket tests: an upstream server, the daemon as a process, PROXY clients.

The daemon is started as ``python -m gatekeeper run`` with ``NOTIFY_SOCKET`` pointing at a
socket of ours, so the test plays systemd: it learns readiness, reloads and the bound
addresses (listeners use port 0) from the daemon's own notifications, never by sleeping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gatekeeper.net.proxyproto import encode_v1

BANNER = b"220 upstream ready\r\n"
WAIT = 20.0  # upper bound for anything a test waits for; polling ends as soon as it holds


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)  # polling interval, not a wait for an event we could await
        delay = min(delay * 2, 0.05)


class Upstream:
    """A TCP server that sends a banner then echoes; counts the connections it got."""

    def __init__(self, host: str = "127.0.0.1", banner: bytes = BANNER) -> None:
        outer = self
        self.connections = 0
        self.banner = banner
        self._lock = threading.Lock()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with outer._lock:
                    outer.connections += 1
                sock: socket.socket = self.request
                try:
                    if outer.banner:
                        sock.sendall(outer.banner)
                    while data := sock.recv(65536):
                        sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(socketserver.ThreadingTCPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 1024  # socketserver's 5 drops bursts of connections

        self.server = Server((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.host = host
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SilentUpstream:
    """An upstream that accepts, sends ``banner`` and never reads: what is sent to it piles
    up in the kernel's buffers until the sender must stop. Holds its connections until
    ``close()``; counts them, and the ones whose peer has gone (EOF or reset)."""

    def __init__(self, banner: bytes = BANNER) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.banner = banner
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            if self.banner:
                conn.sendall(self.banner)
            self.held.append(conn)

    @property
    def connections(self) -> int:
        return len(self.held)

    def gone(self) -> int:
        """Held connections whose peer has closed or reset (looked at without reading:
        a peek at a connection whose receive queue is full never says EOF, so the TCP
        state is asked instead)."""
        return sum(_tcp_state(c) not in (_TCP_ESTABLISHED,) for c in self.held)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


_TCP_ESTABLISHED = 1  # tcp_states.h


def _tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of a socket (first byte of ``struct tcp_info``)."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return -1


def open_files(pid: int) -> int:
    """File descriptors a process holds now."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def daemon_status(daemon: Daemon, path: Path | None = None) -> dict[str, Any]:
    """The status file the daemon rewrites every second (``{}`` until the first one);
    ``path``: the configured ``status_file``, if not the default next to the database."""
    if path is None:
        path = daemon.database.with_name(daemon.database.name + ".status.json")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):  # not yet written (renames are atomic)
        return {}
    return data


def free_port() -> int:
    """A port nobody listens on (for 'upstream unreachable')."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """gatekeeper run as a child process, with us as its systemd."""

    def __init__(self, workdir: Path, config: dict[str, Any], rules: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config_path = workdir / "gatekeeper.yaml"
        self.rules_path = workdir / "rules.d" / "rules.yaml"
        self.rules_path.parent.mkdir(exist_ok=True)
        config.setdefault("database", "var/gk.db")
        config.setdefault("rules", ["rules.d/*.yaml"])
        self.write_config(config)
        self.write_rules(rules)
        self.sockdir = Path(tempfile.mkdtemp(prefix="gk"))  # short: AF_UNIX paths are limited
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.sockdir / "n"))
        self.messages: list[str] = []
        self.status: dict[str, str] = {}
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def database(self) -> Path:
        return self.workdir / "var" / "gk.db"

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def write_rules(self, rules: dict[str, Any]) -> None:
        self.rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))

    def start(self, *extra: str, nofile: int | None = None) -> Daemon:
        """Run it; ``nofile``: its limit on open file descriptors (soft and hard)."""
        env = dict(os.environ, NOTIFY_SOCKET=str(self.sockdir / "n"), PYTHONUNBUFFERED="1")
        env.pop("JOURNAL_STREAM", None)
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        limit = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] if nofile is not None else []
        self.proc = subprocess.Popen(
            [*limit, sys.executable, "-m", "gatekeeper", "run", "-c", str(self.config_path),
             *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
        )  # fmt: skip
        self.wait_message("READY=1")
        return self

    def _receive(self, timeout: float) -> str | None:
        self.notify.settimeout(timeout)
        try:
            data = self.notify.recv(65536)
        except TimeoutError:
            return None
        text = data.decode()
        self.messages.append(text)
        for line in text.splitlines():
            if line.startswith("STATUS=listening: "):
                listeners = line.split(": ", 1)[1].split(";")[0]
                self.status = dict(x.split("=", 1) for x in listeners.split())
        return text

    def wait_message(self, field: str, timeout: float = WAIT) -> str:
        """Wait for a notification carrying ``field`` (e.g. READY=1); fail if the daemon dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            text = self._receive(0.1)
            if text is not None and field in text.splitlines():
                return text
        raise AssertionError(f"no {field} from the daemon:\n{self.output()}")

    def address(self, listener: str) -> tuple[str, int]:
        host, _, port = self.status[listener].rpartition(":")
        return host.strip("[]"), int(port)

    def reload(self) -> str:
        """SIGHUP and wait until the daemon says it is ready again."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        self.wait_message("RELOADING=1")
        return self.wait_message("READY=1")

    def stop(self, timeout: float = WAIT) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.log.close()
        return code

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: nothing is flushed or closed."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(WAIT)
        self.log.close()

    def limit_file_size(self, limit: int | None) -> None:
        """Set the running daemon's ``RLIMIT_FSIZE`` soft limit (None: unlimited): writing
        past ``limit`` bytes into any file then fails with EFBIG, as on a full disk, and
        works again when it is lifted. No privilege needed (the hard limit stays)."""
        assert self.proc is not None
        value = "unlimited" if limit is None else str(limit)
        subprocess.run(
            ["prlimit", f"--pid={self.proc.pid}", f"--fsize={value}:"], check=True, timeout=WAIT
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and not self.log.closed:
            self.log.close()
        self.notify.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)


def connect(
    address: tuple[str, int], claim: str | None = None, timeout: float = 5.0
) -> socket.socket:
    """A client connection; with ``claim``, a PROXY v1 header saying it comes from there."""
    sock = socket.create_connection(address, timeout=timeout)
    if claim is not None:
        # The header's two addresses are of one family; the destination is not checked.
        destination = "::1" if ":" in claim else "127.0.0.1"
        try:
            sock.sendall(encode_v1((claim, 40000), (destination, address[1])))
        except OSError:  # the daemon went away in between (killed, reset)
            sock.close()
            raise
    return sock


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the peer sends until it closes (RST counts as closed)."""
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
            if sum(map(len, chunks)) > limit:
                break
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            break
        buf += data
    return bytes(buf)


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")

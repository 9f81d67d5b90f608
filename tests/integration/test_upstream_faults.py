"""Upstream faults on an FTP listener: the IBM i refusing, not answering, resetting the
control connection mid-transfer, closing or aborting a passive data connection halfway.

Each time the client gets a clean FTP reply or a close, the session is recorded with its
outcome, and nothing leaks: the daemon's file descriptors (``/proc/PID/fd``) and its event
loop's tasks (the status file's ``tasks``) come back to where they were, and the one port
of the passive range is handed out again.

Already proven elsewhere, not repeated here: an upstream refusing the connection (nothing
listening) gives an FTP client ``421`` and a Telnet client a close, recorded as
``upstream-failed`` and not as a rejection (``test_gate.test_upstream_unreachable``,
``test_plain.test_upstream_unreachable_and_by_name``). Below, the refusal is repeated only
to count descriptors and tasks after it.
"""

from __future__ import annotations

import ftplib
import socket
import time
from typing import Any

import pytest

from tests.integration.fake_ftp import ABORT_DATA, CHUNK, CLOSE_DATA, RESET_CONTROL, FakeFtp
from tests.integration.harness import (
    Daemon,
    connect,
    daemon_status,
    free_port,
    open_files,
    read_until_closed,
    recv_exactly,
    wait_for,
)
from tests.integration.test_gate import REPLY_421, report, sessions
from tests.integration.test_metrics_status import scrape
from tests.integration.test_plain import ADMIT


def ftp_listener(name: str, upstream: str, port: int, **extra: Any) -> dict[str, Any]:
    """An FTP listener with a passive range of one port: a leaked port shows at once."""
    item = {"name": name, "protocol": "ftp", "listen": "127.0.0.1:0", "upstream": upstream,
            "passive_ports": f"{port}-{port}"}  # fmt: skip
    item.update(extra)
    return item


def login(d: Daemon, name: str = "ftp") -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=10)
    ftp.connect("127.0.0.1", d.address(name)[1])
    ftp.login("alice", "secret")
    ftp.voidcmd("TYPE I")
    return ftp


def passive(ftp: ftplib.FTP) -> tuple[str, int]:
    return ftplib.parse227(ftp.sendcmd("PASV"))


class Baseline:
    """The daemon's descriptors and tasks when no session is open, and a check that they
    come back there (polled: sessions end and the status file is rewritten each second).

    Take it after a first session: on its first upstream connection uvloop's libuv starts
    its thread pool and keeps a descriptor open for good (``/dev/null``), which is no leak.
    """

    def __init__(self, d: Daemon) -> None:
        assert d.proc is not None
        self.d = d
        self.pid = d.proc.pid
        self.since = time.time()
        wait_for(self.idle, what="no session open")
        self.fds = open_files(self.pid)
        # The status file's own count agrees with /proc seen from outside.
        status = wait_for(
            lambda: (s := self.idle()) and s["open_files"] == open_files(self.pid) and s,
            what="the status file's open_files to match /proc",
        )
        self.tasks = status["tasks"]

    def idle(self) -> dict[str, Any] | None:
        """The status file, if written since this check began and showing no session."""
        status = daemon_status(self.d)
        if not status or status["updated"] < self.since:
            return None
        if any(x["sessions"] for x in status["listeners"]):
            return None
        return status

    def settled(self, what: str) -> tuple[int, int]:
        """Wait until no session is open and descriptors and tasks are back; return them."""
        self.since = time.time()
        wait_for(self.idle, what=f"no session open after {what}")
        wait_for(
            lambda: open_files(self.pid) == self.fds,
            what=f"file descriptors back to {self.fds} after {what} (now {open_files(self.pid)})",
        )
        status = wait_for(
            lambda: (s := self.idle()) is not None and s["tasks"] == self.tasks and s,
            what=f"tasks back to {self.tasks} after {what}",
        )
        print(f"{what}: fds {self.fds} -> {open_files(self.pid)}, "
              f"tasks {self.tasks} -> {status['tasks']}")  # fmt: skip
        return open_files(self.pid), status["tasks"]


def test_refused_and_silent_upstreams_leak_nothing(daemon) -> None:
    """Nothing listening (refused at once) and an upstream that drops our SYNs (its accept
    queue is full: a host that does not answer): the FTP client gets 421 each time, the
    sessions are recorded as ``upstream-failed``, descriptors and tasks come back (and
    /metrics says so too)."""
    metrics = free_port()
    with (
        socket.create_server(("127.0.0.1", 0), backlog=0) as full,
        socket.create_connection(full.getsockname()),  # fills the queue of one
    ):
        silent = f"127.0.0.1:{full.getsockname()[1]}"
        config = {"listeners": [
            ftp_listener("refused", f"127.0.0.1:{free_port()}", free_port()),
            ftp_listener("silent", silent, free_port(), timeouts={"connect": "0.3s"}),
        ], "metrics": {"listen": f"127.0.0.1:{metrics}"}}  # fmt: skip
        d = daemon(config, ADMIT).start()
        base: Baseline | None = None
        for name in ("refused", "silent"):
            for _ in range(3):
                with connect(d.address(name)) as c:
                    assert read_until_closed(c) == REPLY_421
                if base is None:
                    wait_for(lambda: len(sessions(d.database)) == 1, what="a first session")
                    base = Baseline(d)
        fds, tasks = base.settled("5 more failed upstream connections")
    assert (fds, tasks) == (base.fds, base.tasks)
    got = scrape(metrics)
    assert got[("gatekeeper_tasks", frozenset())] == tasks
    # Counted during the scrape: its own connection and the directory being listed too.
    assert fds <= got[("process_open_fds", frozenset())] <= fds + 3
    assert d.stop() == 0
    outcomes = [(r["listener"], r["outcome"]) for r in sessions(d.database)]
    assert (
        sorted(outcomes)
        == [("refused", "upstream-failed")] * 3 + [("silent", "upstream-failed")] * 3
    )
    assert report(d)["attempts"] == 0  # not rejections
    log = d.output()
    assert log.count("unreachable") == 6 and "timed out" in log


def test_upstream_resets_control_during_retr(daemon, fake) -> None:
    """The IBM i's FTP job dies mid-download (RST on its control connection): the client's
    data connection ends, its control connection gets 421 and an orderly close (no reset),
    the session is recorded as ``upstream-reset``, and nothing is left behind."""
    upstream: FakeFtp = fake(RESET_CONTROL)
    port = free_port()
    d = daemon({"listeners": [ftp_listener("ftp", upstream.address, port)]}, ADMIT).start()
    login(d).quit()
    base = Baseline(d)
    ftp = login(d)
    host, data_port = passive(ftp)
    assert data_port == port
    with socket.create_connection((host, data_port), timeout=10) as data:
        assert ftp.sendcmd("RETR big.bin").startswith("150")
        first = recv_exactly(data, CHUNK)  # the transfer is flowing...
        upstream.go.set()  # ...when the upstream resets
        got = first + read_until_closed(data, limit=len(upstream.payload))
    # A prefix of the file came (how much depends on buffers), never the whole file.
    assert CHUNK <= len(got) < len(upstream.payload) and got == upstream.payload[: len(got)]
    with pytest.raises(ftplib.error_temp, match=r"^421 Service not available"):
        ftp.getresp()
    assert ftp.file.read() == ""  # then an orderly close: EOF, not ConnectionResetError
    ftp.close()
    fds, tasks = base.settled("an upstream reset")
    assert (fds, tasks) == (base.fds, base.tasks)
    # The passive port went back: the next session gets it.
    upstream.faults.append(None)
    ftp = login(d)
    assert passive(ftp)[1] == port
    ftp.quit()
    assert d.stop() == 0
    _, broken, second = sessions(d.database)
    assert broken["outcome"] == "upstream-reset" and second["outcome"] == "logged-in"
    assert broken["bytes_down"] >= len(got)
    assert "reset the connection" in d.output()
    print(f"reset mid-RETR: client got {len(got)} of {len(upstream.payload)} bytes, then "
          f"421 and EOF on control; outcome {broken['outcome']}")  # fmt: skip


def test_upstream_closes_or_aborts_the_data_connection(daemon, fake) -> None:
    """The upstream ends a passive download halfway, once with a FIN and once with a RST,
    and says 426: the client's data connection ends after exactly (FIN) or at most (RST)
    what was sent, the 426 reaches it, the session goes on, the one passive port is handed
    out again for each PASV and for the next session, and nothing is left behind."""
    upstream: FakeFtp = fake(CLOSE_DATA, ABORT_DATA, None)
    port = free_port()
    d = daemon({"listeners": [ftp_listener("ftp", upstream.address, port)]}, ADMIT).start()
    login(d).quit()
    base = Baseline(d)
    ftp = login(d)
    cut = upstream.fault_at
    for fault in (CLOSE_DATA, ABORT_DATA):
        host, data_port = passive(ftp)
        assert data_port == port  # the one port: the previous channel gave it back
        with socket.create_connection((host, data_port), timeout=10) as data:
            assert ftp.sendcmd("RETR big.bin").startswith("150")
            got = read_until_closed(data, limit=len(upstream.payload))
        with pytest.raises(ftplib.error_temp, match=r"^426"):
            ftp.voidresp()
        assert got == upstream.payload[: len(got)]
        if fault == CLOSE_DATA:
            assert len(got) == cut  # a FIN: everything sent before it arrives
        else:
            assert len(got) <= cut  # a RST: what was in flight may be lost
        print(f"{fault}: client got {len(got)} of {cut} bytes sent before the fault")
    # The session is whole: a full download through the same port works.
    host, data_port = passive(ftp)
    assert data_port == port
    with socket.create_connection((host, data_port), timeout=10) as data:
        assert ftp.sendcmd("RETR big.bin").startswith("150")
        assert read_until_closed(data, limit=len(upstream.payload)) == upstream.payload
    assert ftp.voidresp().startswith("226")
    ftp.quit()
    fds, tasks = base.settled("two broken data connections")
    assert (fds, tasks) == (base.fds, base.tasks)
    ftp = login(d)  # and the next session gets the port
    assert passive(ftp)[1] == port
    ftp.quit()
    assert d.stop() == 0
    first = sessions(d.database)[1]
    assert first["outcome"] == "logged-in" and first["files_sent"] == 1  # 426s are no files
    assert first["bytes_down"] >= 2 * cut

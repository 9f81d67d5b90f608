"""Process faults around the database: SIGKILL during a flood, a read-only or full disk.

The daemon runs as a process; its clients claim addresses from 100.64.0.0/10 with PROXY
headers and are rejected. What is promised: after a SIGKILL and a restart the database is
intact and keeps everything committed (what is lost is at most the last flush interval
and the flush under way); while the database cannot be written the gate keeps working, the
error is logged once, what does not fit in memory is counted, and once the database can be
written again, recorded + counted as dropped == sent, exactly.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.store.recorder import FLUSH_INTERVAL_ENV, MAX_PENDING_ENV
from tests.integration.harness import (
    BANNER,
    WAIT,
    Daemon,
    Upstream,
    connect,
    daemon_status,
    read_until_closed,
    recv_exactly,
    wait_for,
)
from tests.integration.test_flood import _recorded
from tests.integration.test_gate import sessions
from tests.integration.test_plain import plain

RULES = {"default": "deny", "allow": ["127.0.0.0/8", "10.0.0.0/8"]}  # 100.64/10 is rejected


def _claims(count: int, first: int = 0) -> list[str]:
    """``count`` distinct addresses of 100.64.0.0/10 (rejected by RULES), from ``first`` on."""
    return [f"100.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}" for i in range(first, first + count)]


def _listener(upstream: Upstream) -> dict[str, Any]:
    return plain("tel", upstream.address, proxy_protocol=["127.0.0.1/32"])


def _rejected(address: tuple[str, int], claim: str) -> bool:
    """One client claiming ``claim``: True if it was turned away (closed, nothing sent)."""
    with connect(address, claim=claim) as sock:
        return read_until_closed(sock) == b""


def _served(address: tuple[str, int], claim: str) -> bool:
    """A legitimate session: the upstream's banner, and an echo."""
    with connect(address, claim=claim) as sock:
        if recv_exactly(sock, len(BANNER)) != BANNER:
            return False
        sock.sendall(b"still here")
        return recv_exactly(sock, 10) == b"still here"


def _query(db: Path, sql: str) -> list[Any]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _integrity(db: Path) -> str:
    return str(_query(db, "PRAGMA integrity_check")[0][0])


def _per_address(db: Path) -> dict[str, tuple[int, str]]:
    """Attempts and first attempt per address (summed over days: the test may span midnight)."""
    rows = _query(db, "SELECT address, SUM(attempts), MIN(first) FROM rejections GROUP BY address")
    return {address: (int(attempts), first) for address, attempts, first in rows}


# -- SIGKILL during a flood ------------------------------------------------------------------

KILL_FLUSH = 0.25  # the flush interval the daemon runs with (seconds)
# Besides the flush interval, a rejection seen by its client may still be in memory when the
# process dies because of the flush under way when it was recorded, its own flush's
# transaction and the event loop's delay: this much, at most. (Measured on the shared
# 2-core machine, under the flood and other test runs: the lost ones were all seen in the
# last 0.1-0.6 s before the kill.)
IN_FLIGHT = 1.0
FLOOD_CLIENTS = 8  # client threads
FLOOD_ADDRESSES = 2000
FLOOD_LIMIT = 5000  # connections per client thread, at most
KILL_AFTER = 8000  # rejections the clients have seen when the daemon is killed
AGAIN = 3  # after the restart, each of the first 100 addresses is rejected this often again


@dataclass
class _Flood:
    """What the flood's clients did; ``seen``: when each saw its rejection (monotonic)."""

    sent: int = 0  # connections that reached the daemon's socket with their PROXY header
    seen: list[float] = field(default_factory=list)
    served: int = 0  # clients that got any byte: must stay 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _flood(address: tuple[str, int], claims: list[str], stop: threading.Event, out: _Flood) -> None:
    for i in range(FLOOD_LIMIT):
        if stop.is_set():
            return
        try:
            sock = connect(address, claim=claims[i % len(claims)])
        except OSError:  # refused: the daemon is gone
            return
        with sock:
            with out.lock:
                out.sent += 1
            try:
                data = read_until_closed(sock)
            except OSError:
                continue
            now = time.monotonic()
        with out.lock:
            if data:
                out.served += 1
            else:
                out.seen.append(now)


def test_sigkill_during_a_flood_then_restart(
    daemon, upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL while clients are being rejected, restart on the same database: it is intact,
    holds every rejection its client saw up to one flush interval (and the flush under way)
    before the kill and never more than were sent, and the new run counts on top of it."""
    monkeypatch.setenv(FLUSH_INTERVAL_ENV, str(KILL_FLUSH))
    d = daemon({"listeners": [_listener(upstream)]}, RULES).start()
    db = d.database
    address = d.address("tel")
    claims = _claims(FLOOD_ADDRESSES)
    flood, stop = _Flood(), threading.Event()
    workers = [
        threading.Thread(target=_flood, args=(address, claims[i::FLOOD_CLIENTS], stop, flood))
        for i in range(FLOOD_CLIENTS)
    ]
    committed = 0  # what a reader saw committed before the kill

    def mid_flood() -> bool:
        nonlocal committed
        committed = _recorded(db)
        return committed > 0 and len(flood.seen) >= KILL_AFTER

    for w in workers:
        w.start()
    try:
        wait_for(mid_flood, what=f"{KILL_AFTER} rejections seen and some committed")
        killed = time.monotonic()
        d.kill()
    finally:
        stop.set()
        for w in workers:
            w.join(WAIT)
    assert not any(w.is_alive() for w in workers)
    assert flood.served == 0

    # What the files hold, read from copies so the restarted daemon does its own recovery:
    # the main file alone (checkpointed pages only), and the main file with its WAL.
    wal = db.with_name(db.name + "-wal")
    wal_bytes = wal.stat().st_size if wal.exists() else 0
    (tmp_path / "main").mkdir()
    (tmp_path / "wal").mkdir()
    shutil.copy(db, tmp_path / "main" / db.name)
    shutil.copy(db, tmp_path / "wal" / db.name)
    if wal_bytes:
        shutil.copy(wal, tmp_path / "wal" / wal.name)
    in_main = _recorded(tmp_path / "main" / db.name)
    recovered = _recorded(tmp_path / "wal" / db.name)
    before = _per_address(tmp_path / "wal" / db.name)

    cutoff = killed - KILL_FLUSH - IN_FLIGHT
    owed = sum(t < cutoff for t in flood.seen)  # seen long enough before the kill
    window = sum(cutoff <= t < killed for t in flood.seen)
    seen = sorted(flood.seen)
    lost = len(seen) - recovered  # seen by their clients, not in the database
    span = killed - seen[recovered] if lost > 0 else 0.0  # the lost ones: the latest seen
    print(f"SIGKILL after {len(seen)} rejections seen ({flood.sent} connections sent): "
          f"{recovered} recovered ({in_main} in the main file, the rest from a {wal_bytes}-byte "
          f"WAL), {committed} seen committed before the kill; {owed} seen before kill - "
          f"{KILL_FLUSH}s - {IN_FLIGHT}s, {window} in that last window; {max(lost, 0)} seen "
          f"and lost, all in the last {span:.2f}s before the kill")  # fmt: skip
    assert recovered >= committed  # nothing committed is lost
    assert recovered >= owed  # at most the last flush interval (and the flush under way)
    assert recovered <= flood.sent  # nothing invented
    assert in_main < recovered  # the WAL held committed rows: the restart must recover them

    # The restart recovers the WAL itself and keeps counting on top of the old rows.
    d.start()
    assert _integrity(db) == "ok"
    assert _recorded(db) == recovered
    address = d.address("tel")
    again = claims[:100]
    for claim in again * AGAIN:
        assert _rejected(address, claim)
    wait_for(lambda: _recorded(db) == recovered + len(again) * AGAIN, what="the new run recorded")
    assert d.stop() == 0
    assert _integrity(db) == "ok"
    assert _recorded(db) == recovered + len(again) * AGAIN
    after = _per_address(db)
    for claim in again:
        attempts, first = before.get(claim, (0, None))
        assert after[claim][0] == attempts + AGAIN, claim
        if first is not None:
            assert after[claim][1] == first, claim  # the first attempt is kept
    assert {a: v for a, v in after.items() if a not in again} == {
        a: v for a, v in before.items() if a not in again
    }


# -- a read-only or full disk under the database ---------------------------------------------

DISK_FLUSH = 0.1  # the flush interval the daemon runs with (seconds)
MAX_PENDING = 200  # rows the recorder may hold while it cannot write
BEFORE = 100  # rejected before the disk fails, from as many addresses
DURING = 400  # rejected while it fails, from as many other addresses (more than MAX_PENDING)
FAILED_FLUSHES = 5  # flush intervals the failure lasts at least, for "logged once"
CANNOT_WRITE = "cannot write to"  # the recorder's error line


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT, check=False)


def _root_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (with CAP_SYS_ADMIN) to mount a file system for the database")


def _mount_or_skip(*args: str) -> None:
    result = _run("mount", *args)
    if result.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {result.stderr.strip()}")


def _unmount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))  # something still holds it: detach it anyway


class _Disk:
    """Where the database lives, how its disk fails, how an administrator repairs it."""

    name = ""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "disk"
        self.dir.mkdir()

    @property
    def database(self) -> Path:
        return self.dir / "gk.db"

    def fail(self, d: Daemon) -> None:
        raise NotImplementedError

    def repair(self, d: Daemon) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ReadOnly(_Disk):
    """ext4 with ``errors=remount-ro`` on a loop device; ``trigger_fs_error`` makes it go
    read-only under the running daemon as a disk error would. (A plain ``mount -o
    remount,ro`` is refused with EBUSY while a process holds a file open for writing, which
    the daemon always does.) The repair: unmount, ``e2fsck``, mount again."""

    name = "read-only"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        _root_or_skip()
        if shutil.which("mkfs.ext4") is None or shutil.which("e2fsck") is None:
            pytest.skip("needs mkfs.ext4 and e2fsck (e2fsprogs)")
        self.image = tmp_path / "disk.img"
        with open(self.image, "wb") as f:
            f.truncate(32 << 20)
        made = _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(self.image))
        assert made.returncode == 0, made.stderr
        self.mount()
        source = _run("findmnt", "-n", "-o", "SOURCE", str(self.dir)).stdout.strip()
        self.trigger = Path("/sys/fs/ext4") / Path(source).name / "trigger_fs_error"
        if not self.trigger.exists():
            self.close()
            pytest.skip(f"{self.trigger} is missing: cannot make ext4 fail on purpose")

    def mount(self) -> None:
        _mount_or_skip("-o", "loop,errors=remount-ro", str(self.image), str(self.dir))
        self.mounted = True

    def fail(self, d: Daemon) -> None:
        # What is written so far reaches the disk, as it would after a while (a disk error
        # loses what the kernel had not written yet; that is not what is tested here).
        synced = _run("sync", "-f", str(self.dir))
        assert synced.returncode == 0, synced.stderr
        self.trigger.write_text("gatekeeper test: the disk fails\n")
        with pytest.raises(OSError) as caught:
            (self.dir / "probe").write_text("")
        assert caught.value.errno == errno.EROFS

    def repair(self, d: Daemon) -> None:
        # The administrator can only unmount once the daemon no longer holds the files.
        wait_for(lambda: _run("umount", str(self.dir)).returncode == 0,
                 what="the daemon to let go of the read-only file system")  # fmt: skip
        self.mounted = False
        checked = _run("e2fsck", "-fy", str(self.image))
        assert checked.returncode in (0, 1), checked.stdout + checked.stderr  # 1: fixed
        self.mount()

    def close(self) -> None:
        if self.mounted:
            _unmount(self.dir)
            self.mounted = False


class _Full(_Disk):
    """A small tmpfs filled up by a file; the repair deletes the file."""

    name = "full"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        _root_or_skip()
        _mount_or_skip("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.dir))
        self.filler = self.dir / "filler"

    def fail(self, d: Daemon) -> None:
        with open(self.filler, "wb", buffering=0) as f:
            free = os.statvfs(self.dir).f_bavail * os.statvfs(self.dir).f_frsize
            os.posix_fallocate(f.fileno(), 0, free)
            f.seek(0, os.SEEK_END)
            for _ in range(1024):  # whatever is left, a page at a time (bounded)
                try:
                    f.write(b"\0" * 4096)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
        assert os.statvfs(self.dir).f_bavail == 0

    def repair(self, d: Daemon) -> None:
        self.filler.unlink()

    def close(self) -> None:
        _unmount(self.dir)


class _FileSizeLimit(_Disk):
    """No root needed: the daemon's ``RLIMIT_FSIZE`` is set below its database's size, so
    SQLite's writes fail (EFBIG) as on a full disk (CPython ignores SIGXFSZ); the repair
    lifts the limit. The daemon's log is a file too: it must stay below the limit."""

    name = "file-size-limit"

    def fail(self, d: Daemon) -> None:
        wal = self.database.with_name(self.database.name + "-wal")
        self.limit = min(self.database.stat().st_size, wal.stat().st_size)
        assert d.log_path.stat().st_size < self.limit // 2, "the log would hit the limit too"
        d.limit_file_size(self.limit)

    def repair(self, d: Daemon) -> None:
        assert d.log_path.stat().st_size < self.limit, "the daemon's log hit the limit"
        d.limit_file_size(None)


def _logged_at(d: Daemon, text: str) -> float | None:
    """When the daemon logged its first line containing ``text`` (its local time stamp)."""
    for line in d.output().splitlines():
        if text in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    return None


def _recorder(d: Daemon, path: Path) -> dict[str, int]:
    """The recorder's numbers in the status file (pending rows, dropped records)."""
    return dict(daemon_status(d, path).get("recorder", {}))


def _dropped_in_meta(db: Path) -> int:
    rows = _query(db, "SELECT value FROM meta WHERE key = 'dropped'")
    return int(rows[0][0]) if rows else 0


def _accounted(db: Path) -> int:
    """Records in the database: rejections, sessions, and those counted as dropped."""
    return _recorded(db) + len(sessions(db)) + _dropped_in_meta(db)


@pytest.mark.parametrize("kind", [_ReadOnly, _Full, _FileSizeLimit], ids=lambda k: k.name)
def test_unwritable_database_keeps_gating_and_counts_exactly(
    daemon, upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: type[_Disk]
) -> None:
    """The database's disk fails under the running daemon, clients keep coming, the disk is
    repaired: the gate never stops, the error is logged once, the recorder holds what it can
    (bounded) and counts the rest, and then writes it all: recorded + dropped == sent."""
    disk = kind(tmp_path)
    d: Daemon | None = None
    try:
        monkeypatch.setenv(FLUSH_INTERVAL_ENV, str(DISK_FLUSH))
        monkeypatch.setenv(MAX_PENDING_ENV, str(MAX_PENDING))
        status = tmp_path / "status.json"  # not on the failing disk: the test reads it
        config = {"database": str(disk.database), "status_file": str(status),
                  "listeners": [_listener(upstream)]}  # fmt: skip
        d = daemon(config, RULES).start()
        address = d.address("tel")
        for claim in _claims(BEFORE):
            assert _rejected(address, claim)
        wait_for(lambda: _recorded(disk.database) == BEFORE, what="the rejections recorded")

        disk.fail(d)
        assert _served(address, "10.1.1.1")  # legitimate sessions go on
        for claim in _claims(DURING, BEFORE):
            assert _rejected(address, claim)  # and so does the gate
        failed_at = wait_for(lambda: _logged_at(d, CANNOT_WRITE), what="the recorder's error")
        sent = BEFORE + DURING + 1  # the session is a record too
        dropped = DURING + 1 - MAX_PENDING  # rows that did not fit, one record each
        held = wait_for(lambda: (r := _recorder(d, status)).get("dropped") == dropped and r,
                        what="the status file counting the dropped records")  # fmt: skip
        assert held["pending"] == MAX_PENDING  # bounded, not growing
        assert d.proc is not None and d.proc.poll() is None
        # "Logged once" means something across several failed flushes: the failure lasts
        # (what is waited for here is the clock itself).
        wait_for(lambda: time.time() > failed_at + FAILED_FLUSHES * DISK_FLUSH,
                 what="several flushes failing")  # fmt: skip
        failing = time.time() - failed_at
        assert d.output().count(CANNOT_WRITE) == 1

        disk.repair(d)
        wait_for(lambda: _accounted(disk.database) == sent, what="the pending records written")
        assert _recorded(disk.database) + len(sessions(disk.database)) == BEFORE + MAX_PENDING
        assert _dropped_in_meta(disk.database) == dropped
        wait_for(lambda: _recorder(d, status).get("pending") == 0, what="nothing pending")
        assert _served(address, "10.1.1.2")
        assert _rejected(address, _claims(1)[0])
        assert d.stop() == 0
        log = d.output()
        assert log.count(CANNOT_WRITE) == 1
        assert log.count(f"writing to {disk.database} again") == 1  # and once it works
        assert _integrity(disk.database) == "ok"
        assert _accounted(disk.database) == sent + 2  # and the run after the repair
        assert _recorder(d, status)["dropped"] == dropped
        print(f"{disk.name}: {sent} records sent ({BEFORE} before, {DURING} rejections and a "
              f"session while failing for {failing:.1f}s = {failing / DISK_FLUSH:.0f} flush "
              f"intervals), {held['pending']} rows held, {dropped} counted as dropped, "
              f"{MAX_PENDING} written after the repair; error lines: "
              f"{log.count(CANNOT_WRITE)}")  # fmt: skip
    finally:
        if d is not None:
            d.close()  # before the file system goes: it holds the database
        disk.close()

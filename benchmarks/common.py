"""Shared pieces for benchmarks: process CPU time, a baseline server, an async load client."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {host}:{port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(cmd: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _hammer(host: str, port: int, count: int, concurrency: int, header: bytes | None) -> int:
    """Open ``count`` connections, ``concurrency`` at a time; read each until closed."""
    done = 0
    next_i = 0

    async def worker() -> None:
        nonlocal done, next_i
        while next_i < count:
            next_i += 1
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except ConnectionResetError:
                done += 1  # reset during the handshake: rejected all the same
                continue
            except OSError:
                continue
            try:
                if header is not None:
                    writer.write(header)
                await reader.read()
            except ConnectionResetError:
                pass  # a reset is how the "reset" style rejects
            finally:
                writer.close()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def hammer(
    host: str, port: int, count: int, concurrency: int = 32, header: bytes | None = None
) -> tuple[int, float]:
    """Run the load; returns (connections completed, wall seconds)."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        start = time.perf_counter()
        done = runner.run(_hammer(host, port, count, concurrency, header))
        return done, time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)

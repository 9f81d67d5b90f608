"""Shared pieces for benchmarks: process CPU time, ports, processes, medians, targets."""

from __future__ import annotations

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


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def target(
    name: str, value: float, reference: float, unit: str, limit: float, *, higher: bool
) -> dict[str, object]:
    """One target as every benchmark reports it: ``value`` against ``reference`` (measured
    in the same run, or a fixed bound), their ratio, the limit on it and the verdict."""
    ratio = value / reference
    return {
        "name": name, "value": value, "reference": reference, "unit": unit, "ratio": ratio,
        "limit": limit, "higher": higher, "pass": ratio >= limit if higher else ratio <= limit,
    }  # fmt: skip


def print_targets(targets: Sequence[dict[str, object]]) -> None:
    for t in targets:
        verdict = "PASS" if t["pass"] else "FAIL"
        bound = ">=" if t["higher"] else "<="
        print(f"{t['name']}: {t['value']:.1f} vs {t['reference']:.1f} {t['unit']}, "
              f"ratio {t['ratio']:.2f} (target {bound} {t['limit']}) {verdict}")  # fmt: skip

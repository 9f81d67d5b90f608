"""Build and run the benchmarks' C programs: the references any Python server is measured against.

``benchmarks/c/baseline.c`` is the server a Python server competes with: a single-threaded
epoll loop that accepts like HAProxy and nginx do and then does the least each mode needs
(``close``, ``reset``, ``reply`` with the 421 line, ``banner`` for latency and idle sessions,
``source`` for bulk throughput, ``sink``).  ``benchmarks/c/loadgen.c`` is the client: fast
enough that the server under test, not the load generator, is what a benchmark measures
(``flood``, ``latency``, ``bulk``, ``idle``).  Both are described in their header comments;
each prints one JSON line on stdout.

The binaries are built on demand into ``benchmarks/build/`` (git-ignored) with the system's
``cc``, and rebuilt whenever the source is newer.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE_DIR = HERE / "c"
BUILD_DIR = HERE / "build"
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror")

Process = subprocess.Popen[bytes]


def build(name: str) -> Path:
    """Compile ``benchmarks/c/{name}.c`` unless ``benchmarks/build/{name}`` is up to date."""
    src = SOURCE_DIR / f"{name}.c"
    out = BUILD_DIR / name
    if not src.is_file():
        raise RuntimeError(f"no such C program: {src}")
    if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    BUILD_DIR.mkdir(exist_ok=True)
    tmp = out.with_name(f".{name}.{os.getpid()}.tmp")  # then a rename: safe if built twice at once
    cmd = ["cc", *CFLAGS, "-o", str(tmp), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}")
    tmp.replace(out)
    return out


def _read_json_line(proc: Process, timeout: float, what: str) -> dict[str, Any]:
    """The first line ``proc`` writes on stdout, as JSON; waits at most ``timeout`` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{what}: no output line within {timeout} s")
            if not sel.select(left):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                stderr = stop(proc)
                raise RuntimeError(f"{what} exited ({proc.returncode}) without output: {stderr}")
            data += chunk
    line = data.split(b"\n", 1)[0]
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise RuntimeError(f"{what}: not JSON: {line!r}") from exc
    if not isinstance(value, dict):
        raise RuntimeError(f"{what}: not a JSON object: {line!r}")
    return value


def _close_stdin(proc: Process) -> None:
    """Close our end of ``proc``'s stdin (communicate() would flush an already closed one)."""
    if proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError):  # it exited with data still unread
            proc.stdin.close()
        proc.stdin = None


def stop(proc: Process) -> str:
    """SIGTERM, up to 10 s to exit, then SIGKILL; closes the pipes.  Returns its stderr."""
    _close_stdin(proc)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return (err or b"").decode(errors="replace")


def start_baseline(
    mode: str, host: str = "127.0.0.1", port: int = 0, *, timeout: float | None = None
) -> tuple[Process, int]:
    """Start ``baseline MODE HOST PORT``; returns the process and the port it listens on.

    ``timeout`` is the server's own time limit (``--timeout``; its default is an hour).
    Its stderr is a pipe read only by :func:`stop`: the server writes there at exit and
    a few lines at most before.
    """
    cmd = [str(build("baseline")), mode, host, str(port)]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        result = _read_json_line(proc, 10, "baseline")
        return proc, int(result["port"])
    except BaseException:
        stop(proc)
        raise


def run_loadgen(*args: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``loadgen ARGS...`` to the end; returns its JSON result."""
    cmd = [str(build("loadgen")), *args]
    result = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
    )
    stdout = result.stdout.decode(errors="replace")
    stderr = result.stderr.decode(errors="replace")
    if result.returncode != 0:
        raise RuntimeError(f"loadgen {' '.join(args)}: exit {result.returncode}: {stdout}{stderr}")
    try:
        value = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise RuntimeError(f"loadgen {' '.join(args)}: bad output {stdout!r}: {stderr}") from exc
    if not isinstance(value, dict):
        raise RuntimeError(f"loadgen {' '.join(args)}: not a JSON object: {stdout!r}")
    return value


def start_idle(
    host: str,
    port: int,
    count: int,
    hold_seconds: int = 600,
    *,
    proxy: bool = False,
    timeout: float = 120,
) -> tuple[Process, dict[str, Any]]:
    """Start ``loadgen idle``; returns it once all ``count`` connections are open (or failed).

    The result is ``{"open", "errors", "seconds"}``.  The connections stay open until
    ``proc.stdin`` is closed (:func:`finish_idle`), ``hold_seconds`` pass, or :func:`stop`.
    ``proxy`` sends a PROXY v1 header on each; ``timeout`` bounds the opening.
    """
    cmd = [str(build("loadgen")), "idle", host, str(port), "--count", str(count)]
    cmd += ["--hold-seconds", str(hold_seconds), "--timeout", str(timeout)]
    if proxy:
        cmd += ["--proxy", "v1"]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        return proc, _read_json_line(proc, timeout + 10, "loadgen idle")
    except BaseException:
        stop(proc)
        raise


def finish_idle(proc: Process, timeout: float = 30) -> int:
    """Close ``loadgen idle``'s stdin, so it closes its connections and exits; its exit code."""
    _close_stdin(proc)
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
    assert proc.returncode is not None
    return proc.returncode

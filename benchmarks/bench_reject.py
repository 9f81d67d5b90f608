"""Rejected connections per second and server CPU per rejected connection.

gatekeeper (100,000 deny networks loaded, recording on) against, in the same run, a minimal
asyncio server that accepts and closes — the floor any Python server sits on. Prints a
table with the ratio gatekeeper / baseline for each rejection style.

    .venv/bin/python -m benchmarks.bench_reject [--count 20000] [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.common import cpu_seconds, free_port, hammer, median, spawn, stop, wait_port

RULES = 100_000


def write_config(workdir: Path, port: int, style: str) -> Path:
    rng = random.Random(7)
    nets = sorted({f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24"
                   for _ in range(RULES + 5000)})[:RULES]  # fmt: skip
    (workdir / "drop.txt").write_text("# generated\n" + "\n".join(nets) + "\n")
    (workdir / "rules.yaml").write_text(
        yaml.safe_dump({"default": "deny", "deny": [{"file": "drop.txt"}], "allow": ["10.0.0.0/8"]})
    )
    config = {
        "database": "var/bench.db",
        "rules": ["rules.yaml"],
        "listeners": [{
            "name": "bench", "protocol": "ftp" if style == "reply" else "tcp",
            "listen": f"127.0.0.1:{port}", "upstream": "127.0.0.1:9", "reject": style,
        }],
    }  # fmt: skip
    path = workdir / "gatekeeper.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def measure(pid: int, port: int, count: int, concurrency: int) -> tuple[float, float]:
    """(connections per second, server CPU µs per connection) over ``count`` connections."""
    hammer("127.0.0.1", port, min(2000, count // 10), concurrency)  # warm up
    cpu0 = cpu_seconds(pid)
    done, wall = hammer("127.0.0.1", port, count, concurrency)
    cpu = cpu_seconds(pid) - cpu0
    return done / wall, cpu / done * 1e6


def run_gatekeeper(
    style: str, count: int, concurrency: int, loop: str, rounds: int
) -> list[tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="gk-bench") as tmp:
        port = free_port()
        config = write_config(Path(tmp), port, style)
        env = dict(os.environ)
        if loop == "asyncio":
            env["GATEKEEPER_LOOP"] = "asyncio"
        proc = spawn(
            [sys.executable, "-m", "gatekeeper", "run", "-c", str(config)], env=env, cwd=tmp
        )
        try:
            wait_port("127.0.0.1", port, timeout=60)
            return [measure(proc.pid, port, count, concurrency) for _ in range(rounds)]
        finally:
            stop(proc)


def run_baseline(
    style: str, count: int, concurrency: int, loop: str, rounds: int
) -> list[tuple[float, float]]:
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.baseline_server", "--port", str(port), "--loop", loop]
    if style == "reply":
        cmd.append("--reply")
    proc = spawn(cmd)
    try:
        wait_port("127.0.0.1", port)
        return [measure(proc.pid, port, count, concurrency) for _ in range(rounds)]
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="connections per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--styles", default="close,reply,reset")
    args = parser.parse_args()
    print(f"{args.count} connections x {args.rounds} rounds, concurrency {args.concurrency}, "
          f"loop {args.loop}, {RULES} rules; medians")  # fmt: skip
    print(f"{'style':8} {'server':22} {'conn/s':>9} {'CPU µs/conn':>12} {'CPU ratio':>10}")
    for style in args.styles.split(","):
        base = run_baseline(style, args.count, args.concurrency, args.loop, args.rounds)
        gate = run_gatekeeper(style, args.count, args.concurrency, args.loop, args.rounds)
        b_rate, b_cpu = median([x[0] for x in base]), median([x[1] for x in base])
        g_rate, g_cpu = median([x[0] for x in gate]), median([x[1] for x in gate])
        print(f"{style:8} {'baseline accept+close':22} {b_rate:9.0f} {b_cpu:12.1f} {'1.00':>10}")
        print(f"{style:8} {'gatekeeper':22} {g_rate:9.0f} {g_cpu:12.1f} {g_cpu / b_cpu:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

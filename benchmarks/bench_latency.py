"""Latency: connect → first byte of the upstream's banner, one connection at a time.

The upstream is the C ``baseline banner`` server; the client is ``loadgen latency``. Each
round measures, in turn, the upstream directly, HAProxy, nginx's stream module, socat and
gatekeeper (a Telnet/TCP listener, 100,000 deny networks, recording on); gatekeeper's FTP
listener, whose banner passes the FTP inspector, is shown too, and so is the "Python
floor" (``floor_proxy.py``: accept, connect, copy, nothing else, on the same event loop).
Medians over the rounds of each subject's p50 and p99.

Target: gatekeeper's p50 and p99 at most 1.15 x HAProxy's.

    .venv/bin/python -m benchmarks.bench_latency [--count 5000] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import cprogs
from benchmarks.common import median, print_targets, target
from benchmarks.subjects import (
    Subject,
    start_floor,
    start_gatekeeper,
    start_haproxy,
    start_nginx,
    start_socat,
)

LIMIT = 1.15


def latency(port: int, count: int) -> dict[str, Any]:
    # Each connection ends with an RST: no TIME_WAIT piles up to slow the next subject's
    # connect() calls (the measured interval, connect to first byte, is the same).
    args = ("latency", "127.0.0.1", str(port), "--count", str(count), "--close", "reset")
    return cprogs.run_loadgen(*args)


def run(count: int, rounds: int) -> dict[str, Any]:
    upstream, up_port = cprogs.start_baseline("banner")
    samples: dict[str, list[dict[str, Any]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="gk-bench-latency") as tmp:
            work = Path(tmp)
            starters: dict[str, Callable[[], Subject]] = {
                "HAProxy": lambda: start_haproxy(work / "haproxy", up_port),
                "nginx stream": lambda: start_nginx(work / "nginx", up_port),
                "socat": lambda: start_socat(work / "socat", up_port),
                "Python floor": lambda: start_floor(work / "floor", up_port),
                "gatekeeper": lambda: start_gatekeeper(work / "gk", up_port),
                "gatekeeper (FTP listener)": lambda: start_gatekeeper(
                    work / "gk-ftp", up_port, protocol="ftp"
                ),
            }
            subjects = {name: start() for name, start in starters.items()}
            try:
                for _ in range(rounds):
                    samples.setdefault("direct", []).append(latency(up_port, count))
                    for name, subject in subjects.items():
                        samples.setdefault(name, []).append(latency(subject.port, count))
            finally:
                for subject in subjects.values():
                    subject.stop()
    finally:
        cprogs.stop(upstream)
    rows = [
        {
            "server": name,
            "p50_us": median([r["p50_us"] for r in results]),
            "p99_us": median([r["p99_us"] for r in results]),
            "errors": sum(r["errors"] for r in results),
        }
        for name, results in samples.items()
    ]
    by = {r["server"]: r for r in rows}
    targets = [
        target(
            f"latency {p}: gatekeeper vs HAProxy",
            by["gatekeeper"][f"{p}_us"],
            by["HAProxy"][f"{p}_us"],
            "µs",
            LIMIT,
            higher=False,
        )
        for p in ("p50", "p99")
    ]
    return {"rows": rows, "targets": targets}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="connections per subject/round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.count, args.rounds)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.count} connections x {args.rounds} rounds per subject; medians")
    print(f"{'server':28} {'p50 µs':>8} {'p99 µs':>8} {'errors':>7}")
    for r in result["rows"]:
        print(f"{r['server']:28} {r['p50_us']:8.0f} {r['p99_us']:8.0f} {r['errors']:7d}")
    print_targets(result["targets"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rejecting: server CPU per rejected connection and connections per second.

For each rejection style (close, reset, a 421 line) gatekeeper (100,000 deny networks,
recording on) is measured against the C baseline server doing the same thing, in the same
run, with the same C load generator; HAProxy (``tcp-request connection reject``, an RST)
and nginx's stream module (``deny all``, a close) are measured beside them.

Targets: gatekeeper's CPU per connection at most 1.3 x the C baseline of the same style;
its connections per second at least HAProxy's.

    .venv/bin/python -m benchmarks.bench_reject [--count 30000] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import cprogs
from benchmarks.common import median, print_targets, target
from benchmarks.subjects import Subject, start_gatekeeper, start_haproxy, start_nginx

STYLES = ("close", "reset", "reply")
CPU_LIMIT = 1.3


def measure(subject: Subject, count: int, concurrency: int, rounds: int) -> dict[str, float]:
    """Median connections/s and server CPU µs per connection over ``rounds`` floods."""
    # --close reset: the client answers the server's close with an RST, so no socket is
    # left in TIME_WAIT; tens of thousands of them would slow whichever subject runs later.
    flood = ("flood", "127.0.0.1", str(subject.port), "--concurrency", str(concurrency),
             "--close", "reset")  # fmt: skip
    cprogs.run_loadgen(*flood, "--count", str(min(3000, count)))  # warm-up
    rates, cpus = [], []
    for _ in range(rounds):
        cpu0 = subject.cpu()
        result = cprogs.run_loadgen(*flood, "--count", str(count))
        done = result["connections"] - result["errors"]
        if done <= 0:
            raise RuntimeError(f"{subject.name}: no connection completed: {result}")
        cpus.append((subject.cpu() - cpu0) / done * 1e6)
        rates.append(result["rate"])
    return {"rate": median(rates), "cpu_us": median(cpus)}


def run(count: int, concurrency: int, rounds: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    # Connections that get through HAProxy and nginx go nowhere: they are all rejected.
    with tempfile.TemporaryDirectory(prefix="gk-bench-reject") as tmp:
        work = Path(tmp)
        for style in STYLES:
            proc, port = cprogs.start_baseline(style)
            try:
                base = measure(Subject(f"C {style}", proc, port), count, concurrency, rounds)
            finally:
                cprogs.stop(proc)
            gate = start_gatekeeper(
                work / f"gk-{style}", 9, protocol="ftp" if style == "reply" else "tcp",
                admit_loopback=False, reject=style,
            )  # fmt: skip
            try:
                mine = measure(gate, count, concurrency, rounds)
            finally:
                gate.stop()
            rows.append({"style": style, "server": "C baseline", **base})
            rows.append({"style": style, "server": "gatekeeper", **mine})
            targets.append(
                target(f"reject {style}: CPU per connection vs C baseline", mine["cpu_us"],
                       base["cpu_us"], "µs", CPU_LIMIT, higher=False)
            )  # fmt: skip
        haproxy = start_haproxy(work / "haproxy", 9, reject=True)
        try:
            hap = measure(haproxy, count, concurrency, rounds)
        finally:
            haproxy.stop()
        nginx = start_nginx(work / "nginx", 9, reject=True)
        try:
            ngx = measure(nginx, count, concurrency, rounds)
        finally:
            nginx.stop()
    rows.append({"style": "reset", "server": "HAProxy", **hap})
    rows.append({"style": "close", "server": "nginx stream", **ngx})
    gk_rate = min(r["rate"] for r in rows if r["server"] == "gatekeeper")
    targets.append(
        target("reject: connections/s (slowest style) vs HAProxy", gk_rate, hap["rate"],
               "conn/s", 1.0, higher=True)
    )  # fmt: skip
    return {"rows": rows, "targets": targets}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30_000, help="connections per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.count, args.concurrency, args.rounds)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.count} connections x {args.rounds} rounds, concurrency {args.concurrency}; "
          "medians")  # fmt: skip
    print(f"{'style':7} {'server':14} {'conn/s':>9} {'CPU µs/conn':>12}")
    for r in result["rows"]:
        print(f"{r['style']:7} {r['server']:14} {r['rate']:9.0f} {r['cpu_us']:12.1f}")
    print_targets(result["targets"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Relay: bulk throughput of one stream and of eight at once, through each proxy.

The upstream is the C ``baseline source`` (it sends the bytes a client asks for); the
client is ``loadgen bulk``, which checks every stream's length and pattern. Each round
measures, in turn, the upstream directly, HAProxy with 16 KiB and 128 KiB buffers, nginx's
stream module with the same two, socat with 8 KiB and 128 KiB blocks, and gatekeeper (a
Telnet/TCP listener, 100,000 deny networks, recording on). Medians over the rounds.

Targets: one stream at least 0.85 x direct and at least HAProxy with 128 KiB buffers;
eight streams at least HAProxy (the better of its two buffer sizes).

    .venv/bin/python -m benchmarks.bench_relay [--gib 4] [--rounds 3] [--json]
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
    start_gatekeeper,
    start_haproxy,
    start_nginx,
    start_socat,
)

KIB = 1024


def bulk(port: int, total: int, streams: int) -> float:
    result = cprogs.run_loadgen(
        "bulk", "127.0.0.1", str(port), "--bytes", str(total // streams),
        "--streams", str(streams), timeout=300,
    )  # fmt: skip
    if result["errors"]:
        raise RuntimeError(f"bulk transfer through port {port} failed: {result}")
    return float(result["mb_per_s"])


def run(total: int, rounds: int) -> dict[str, Any]:
    upstream, up_port = cprogs.start_baseline("source")
    speeds: dict[tuple[str, int], list[float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="gk-bench-relay") as tmp:
            work = Path(tmp)
            starters: dict[str, Callable[[], Subject]] = {
                "HAProxy 16k": lambda: start_haproxy(work / "h16", up_port, bufsize=16 * KIB),
                "HAProxy 128k": lambda: start_haproxy(work / "h128", up_port, bufsize=128 * KIB),
                "nginx 16k": lambda: start_nginx(work / "n16", up_port, bufsize=16 * KIB),
                "nginx 128k": lambda: start_nginx(work / "n128", up_port, bufsize=128 * KIB),
                "socat 8k": lambda: start_socat(work / "s8", up_port, bufsize=8 * KIB),
                "socat 128k": lambda: start_socat(work / "s128", up_port, bufsize=128 * KIB),
                "gatekeeper": lambda: start_gatekeeper(work / "gk", up_port),
            }
            subjects = {name: start() for name, start in starters.items()}
            ports = {"direct": up_port} | {name: s.port for name, s in subjects.items()}
            try:
                for _ in range(rounds):
                    for streams in (1, 8):
                        for name, port in ports.items():
                            speeds.setdefault((name, streams), []).append(
                                bulk(port, total, streams)
                            )
            finally:
                for subject in subjects.values():
                    subject.stop()
    finally:
        cprogs.stop(upstream)
    rows = [
        {"server": name, "streams": streams, "mb_per_s": median(values)}
        for (name, streams), values in speeds.items()
    ]
    mb = {(r["server"], r["streams"]): r["mb_per_s"] for r in rows}
    gk1, gk8 = mb["gatekeeper", 1], mb["gatekeeper", 8]
    hap8 = max(mb["HAProxy 16k", 8], mb["HAProxy 128k", 8])
    targets = [
        target("relay 1 stream: gatekeeper vs direct", gk1, mb["direct", 1], "MB/s", 0.85,
               higher=True),
        target("relay 1 stream: gatekeeper vs HAProxy 128k", gk1, mb["HAProxy 128k", 1],
               "MB/s", 1.0, higher=True),
        target("relay 8 streams: gatekeeper vs HAProxy", gk8, hap8, "MB/s", 1.0, higher=True),
    ]  # fmt: skip
    return {"rows": rows, "targets": targets}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4, help="GiB per transfer (all streams)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(int(args.gib * KIB**3), args.rounds)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.gib} GiB per transfer x {args.rounds} rounds; medians")
    print(f"{'server':14} {'streams':>7} {'MB/s':>8}")
    for r in result["rows"]:
        print(f"{r['server']:14} {r['streams']:7d} {r['mb_per_s']:8.0f}")
    print_targets(result["targets"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

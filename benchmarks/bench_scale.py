"""Scale: many idle sessions, and a flood beside a legitimate client.

1. Idle sessions: gatekeeper's Telnet listener in front of the C ``baseline banner``
   server; ``loadgen idle`` opens 10,000 sessions and holds them (each has had its banner
   through gatekeeper). The daemon's RSS before and with them open gives the memory per
   session; ``loadgen latency`` measures the next client's connect → banner before and
   while they are open.
2. Flood: ``loadgen flood`` from 127.0.0.2 (denied by the rules), open loop at 10,000
   connections a second (as a flood from outside comes, whatever the server's speed), while
   ``loadgen latency`` from 127.0.0.1 (let through) measures a legitimate client's connect
   → banner; compared with the same measurement without the flood.

Targets: under 20 KB of RSS per idle session; the next client's latency unchanged (p50
and p99 within 1.2 x) with the sessions open; the legitimate client's p99 during the
flood at most 2 x its quiet value.

    .venv/bin/python -m benchmarks.bench_scale [--sessions 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import cprogs
from benchmarks.bench_latency import latency
from benchmarks.common import print_targets, target
from benchmarks.subjects import Subject, start_gatekeeper

SESSION_KB = 20.0
UNCHANGED = 1.2
FLOOD_P99 = 2.0


def idle_sessions(gate: Subject, sessions: int, count: int) -> dict[str, Any]:
    quiet = latency(gate.port, count)
    rss0 = gate.rss_kib()
    proc, opened = cprogs.start_idle("127.0.0.1", gate.port, sessions)
    try:
        if opened["open"] != sessions:
            raise RuntimeError(f"only {opened['open']} of {sessions} sessions opened: {opened}")
        rss1 = gate.rss_kib()
        busy = latency(gate.port, count)
    finally:
        cprogs.finish_idle(proc)
    per_session = (rss1 - rss0) * 1024 / sessions / 1000  # KB (10^3 bytes) per session
    return {
        "sessions": sessions, "open_seconds": opened["seconds"],
        "rss_before_kib": rss0, "rss_open_kib": rss1, "kb_per_session": per_session,
        "quiet": quiet, "busy": busy,
    }  # fmt: skip


def flood(gate: Subject, count: int, flood_count: int, rate: int) -> dict[str, Any]:
    quiet = latency(gate.port, count)
    args = ("flood", "127.0.0.1", str(gate.port), "--count", str(flood_count), "--rate", str(rate))
    flooder = subprocess.Popen(
        [str(cprogs.build("loadgen")), *args, "--concurrency", "100", "--bind", "127.0.0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        during = latency(gate.port, count)
    finally:
        flooder.terminate()  # it stops, prints what it did and exits 0
        out, err = flooder.communicate(timeout=30)
    if flooder.returncode != 0:
        raise RuntimeError(f"flood failed: {err.decode(errors='replace')}")
    return {"quiet": quiet, "flood": during, "flooder": json.loads(out)}


def most_sessions(wanted: int) -> int:
    """``wanted``, or fewer when the hard limit on file descriptors (which no process here
    can raise) cannot hold them: each session is two descriptors in gatekeeper."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return wanted
    return min(wanted, (hard - 100) // 2)


def run(sessions: int, count: int, flood_count: int, rate: int) -> dict[str, Any]:
    sessions = most_sessions(sessions)
    upstream, up_port = cprogs.start_baseline("banner")
    try:
        with tempfile.TemporaryDirectory(prefix="gk-bench-scale") as tmp:
            work = Path(tmp)
            gate = start_gatekeeper(
                work / "gk", up_port, protocol="telnet", extra={"timeouts": {"idle": "1h"}}
            )
            try:
                idle = idle_sessions(gate, sessions, count)
            finally:
                gate.stop()
            gate = start_gatekeeper(work / "gk", up_port, protocol="telnet", deny=("127.0.0.2",))
            try:
                storm = flood(gate, count, flood_count, rate)
            finally:
                gate.stop()
    finally:
        cprogs.stop(upstream)
    busy, quiet = idle["busy"], idle["quiet"]
    targets = [
        target("idle sessions: RSS per session", idle["kb_per_session"], SESSION_KB, "KB", 1.0,
               higher=False),
        target("idle sessions: next client p50 vs none open", busy["p50_us"], quiet["p50_us"],
               "µs", UNCHANGED, higher=False),
        target("idle sessions: next client p99 vs none open", busy["p99_us"], quiet["p99_us"],
               "µs", UNCHANGED, higher=False),
        target("flood: legitimate client p99 vs quiet", storm["flood"]["p99_us"],
               storm["quiet"]["p99_us"], "µs", FLOOD_P99, higher=False),
    ]  # fmt: skip
    return {"idle": idle, "flood": storm, "targets": targets}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--count", type=int, default=3000, help="latency samples")
    parser.add_argument("--flood", type=int, default=200_000, help="flood connections (max)")
    parser.add_argument("--rate", type=int, default=10_000, help="flood connections per second")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.sessions, args.count, args.flood, args.rate)
    if args.json:
        print(json.dumps(result))
        return 0
    idle, storm = result["idle"], result["flood"]
    print(f"{idle['sessions']} idle Telnet sessions opened in {idle['open_seconds']:.2f} s; "
          f"RSS {idle['rss_before_kib']} -> {idle['rss_open_kib']} KiB "
          f"({idle['kb_per_session']:.1f} KB per session)")  # fmt: skip
    for label, r in (("no sessions", idle["quiet"]), (f"{idle['sessions']} open", idle["busy"]),
                     ("quiet", storm["quiet"]), ("during flood", storm["flood"])):  # fmt: skip
        print(f"  next client, {label:14}: p50 {r['p50_us']:7.0f} µs  p99 {r['p99_us']:7.0f} µs")
    print(f"  flood: {storm['flooder']['connections']} connections, "
          f"{storm['flooder']['rate']:.0f}/s")  # fmt: skip
    print_targets(result["targets"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

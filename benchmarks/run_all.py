"""Every benchmark in one run: gatekeeper against its references, a table of the targets.

Installs what the benchmarks need (HAProxy, socat and nginx's stream module from Debian's
packages; pytricia from PyPI), builds the C load generator and baseline servers, runs
each subject's script in its own process and prints one table: each target with
gatekeeper's figure, the reference measured in the same run, the ratio, the limit and
PASS/FAIL. The full results go to ``var/benchmarks/latest.json``. About 15 minutes on 2
cores; ``--quick`` runs every subject small (a smoke run, figures not meaningful).

    .venv/bin/python -m benchmarks.run_all [--quick] [--only reject,latency,...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import cprogs
from benchmarks.subjects import ensure_packages

# subject -> (module, full arguments, quick arguments)
SUBJECTS: dict[str, tuple[str, list[str], list[str]]] = {
    "reject": ("bench_reject", ["--count", "30000", "--rounds", "3"],
               ["--count", "2000", "--rounds", "1"]),
    "latency": ("bench_latency", ["--count", "5000", "--rounds", "3"],
                ["--count", "300", "--rounds", "1"]),
    "relay": ("bench_relay", ["--gib", "4", "--rounds", "3"], ["--gib", "0.25", "--rounds", "1"]),
    "ftp": ("bench_ftp", ["--size-mb", "1024", "--rounds", "3"],
            ["--size-mb", "32", "--rounds", "1"]),
    "rules": ("bench_rules", [], ["--rules", "10000", "--lookups", "20000"]),
    "scale": ("bench_scale", ["--sessions", "10000"],
              ["--sessions", "500", "--count", "300", "--flood", "5000"]),
    "report": ("bench_report", ["--addresses", "1000000"], ["--addresses", "20000"]),
}  # fmt: skip
TIMEOUT = 900  # seconds for one subject's script


def prepare() -> None:
    ensure_packages("haproxy", "socat", "nginx")
    if importlib.util.find_spec("pytricia") is None:
        print("installing pytricia from PyPI", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pytricia"], check=True)
    cprogs.build("loadgen")
    cprogs.build("baseline")


def run_subject(name: str, quick: bool) -> dict[str, Any]:
    module, full, small = SUBJECTS[name]
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *(small if quick else full), "--json"]
    start = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    seconds = time.monotonic() - start
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-3000:], "seconds": seconds, "targets": []}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["seconds"] = seconds
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs: a smoke test")
    parser.add_argument("--only", help="comma-separated subjects: " + ",".join(SUBJECTS))
    parser.add_argument("--out", type=Path, default=Path("var/benchmarks/latest.json"))
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SUBJECTS)
    unknown = [n for n in names if n not in SUBJECTS]
    if unknown:
        parser.error(f"unknown subject(s): {', '.join(unknown)}")
    prepare()
    results: dict[str, Any] = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_subject(name, args.quick)
        print(f"  {name}: {results[name]['seconds']:.0f} s", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))

    print(f"{'target':58} {'gatekeeper':>11} {'reference':>11} {'ratio':>6} {'limit':>7}  ")
    failed = 0
    for name, result in results.items():
        if "error" in result:
            failed += 1
            print(f"{name}: FAILED TO RUN\n{result['error']}")
            continue
        for t in result["targets"]:
            bound = ">=" if t["higher"] else "<="
            verdict = "PASS" if t["pass"] else "FAIL"
            failed += not t["pass"]
            print(f"{t['name'][:58]:58} {t['value']:9.1f}{t['unit'][:2]:>2} "
                  f"{t['reference']:9.1f}{t['unit'][:2]:>2} {t['ratio']:6.2f} "
                  f"{bound}{t['limit']:5.2f}  {verdict}")  # fmt: skip
    total = sum(r["seconds"] for r in results.values())
    print(f"{failed} target(s) missed or failed to run; {total / 60:.1f} minutes; "
          f"details in {args.out}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

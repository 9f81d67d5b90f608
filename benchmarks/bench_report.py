"""The rejection report over a large log: 1,000,000 rejected addresses by default.

Builds a database with the project's own schema (addresses spread over 30 days, two
listeners, some on several days, locations for most of them in 200 places), then times
`gatekeeper report --level summary` as a process and the first page of the detail level.
Target: the summary in under 5 s.

    .venv/bin/python -m benchmarks.bench_report [--addresses 1000000] [--keep PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import target
from gatekeeper.report.query import rejection_report
from gatekeeper.store import schema

SUMMARY_LIMIT = 5.0  # seconds

PLACES = [
    (
        f"C{i % 40:02d}",
        f"Country {i % 40}",
        f"Region {i}",
        f"City {i}",
        i % 80 - 40.0,
        i % 300 - 150.0,
    )
    for i in range(200)
]


def build(db: Path, addresses: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    conn = schema.connect(db)
    day0 = time.time() - 30 * 86400
    rows, locs = [], []
    for i in range(addresses):
        address = f"{1 + (i >> 24) % 223}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        for _ in range(1 + (i % 7 == 0)):  # every seventh address came back another day
            when = day0 + rng.random() * 30 * 86400
            first = schema.utc_text(when)
            rows.append((schema.local_day(when), "ftp" if i % 3 else "telnet", address, 0,
                         first, first, 1 + i % 5, "default", None, None))  # fmt: skip
        if i % 10:  # a tenth stay "unknown"
            locs.append((address, *PLACES[i % len(PLACES)]))
        if len(rows) >= 100_000:
            _insert(conn, rows, locs)
            rows, locs = [], []
    _insert(conn, rows, locs)
    conn.execute("ANALYZE")
    conn.close()


def _insert(conn, rows, locs) -> None:  # type: ignore[no-untyped-def]
    with conn:
        conn.executemany(
            "INSERT OR IGNORE INTO rejections (day, listener, address, monitor, first, last,"
            " attempts, reason, rule, user) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)  # fmt: skip
        conn.executemany(
            "INSERT OR IGNORE INTO locations"
            " (address, country, country_name, region, city, latitude, longitude)"
            " VALUES (?,?,?,?,?,?,?)",
            locs,
        )


def timed(func) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="build (or reuse) the database here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gk-report-bench") as tmp:
        db = args.keep or Path(tmp) / "big.db"
        if not db.exists():
            seconds, _ = timed(lambda: build(db, args.addresses))
            print(f"built {db} with {args.addresses:,} addresses in {seconds:.0f} s",
                  file=sys.stderr if args.json else sys.stdout)  # fmt: skip
        (Path(tmp) / "r.yaml").write_text("default: deny\n")
        config = Path(tmp) / "gk.yaml"
        config.write_text(yaml.safe_dump({
            "database": str(db.resolve()), "rules": ["r.yaml"],
            "listeners": [
                {"name": n, "protocol": n, "listen": f"127.0.0.1:{p}",
                 "upstream": f"127.0.0.1:{p + 1}"}
                for n, p in (("ftp", 2121), ("telnet", 2323))
            ],
        }))  # fmt: skip
        cmd = [sys.executable, "-m", "gatekeeper", "report", "-c", str(config), "--format", "json"]
        cli, out = timed(lambda: subprocess.run(cmd, check=True, capture_output=True))
        page, rep = timed(lambda: rejection_report(db, level="detail", limit=200))
        if args.json:
            goal = target(f"report summary over {args.addresses:,} addresses", cli,
                          SUMMARY_LIMIT, "s", 1.0, higher=False)  # fmt: skip
            rows = [{"what": "summary (process)", "seconds": cli},
                    {"what": "detail, first page", "seconds": page}]  # fmt: skip
            print(json.dumps({"rows": rows, "targets": [goal]}))
            return 0
        print(
            f"gatekeeper report --level summary (process, JSON): {cli:.2f} s, "
            f"{len(out.stdout):,} bytes"
        )  # type: ignore[attr-defined]
        print(
            f"detail level, first page of 200 entries:           {page:.2f} s "
            f"({rep.addresses:,} addresses, {rep.attempts:,} attempts)"
        )  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())

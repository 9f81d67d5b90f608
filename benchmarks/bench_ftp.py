"""One FTP passive download through gatekeeper against the same download direct.

pyftpdlib serves a file (sendfile) from its own process; curl (C) downloads it to
/dev/null, first straight from the upstream, then through gatekeeper, alternating, in one
run. Prints MB/s of each and the ratio. Target: through gatekeeper at least 0.8 x direct.

    .venv/bin/python -m benchmarks.bench_ftp [--size-mb 512] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.common import free_port, median, spawn, stop, target, wait_port

LIMIT = 0.8


def download(port: int, size: int) -> float:
    """MB/s of one curl download of big.bin from 127.0.0.1:port (EPSV)."""
    out = subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "120", "--user", "bench:bench",
         "-o", "/dev/null", "-w", "%{size_download} %{speed_download}",
         f"ftp://127.0.0.1:{port}/big.bin"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    got, speed = out.stdout.split()
    if int(float(got)) != size:
        raise RuntimeError(f"downloaded {got} bytes, expected {size}")
    return float(speed) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    size = args.size_mb * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="gk-ftp-bench") as tmp:
        work = Path(tmp)
        home = work / "home"
        home.mkdir()
        with open(home / "big.bin", "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mb):
                f.write(block)
        up_port, gk_port = free_port(), free_port()
        upstream = spawn([sys.executable, "-m", "benchmarks.ftp_upstream",
                          "--root", str(home), "--port", str(up_port)])  # fmt: skip
        (work / "rules.yaml").write_text("default: allow\n")
        first = free_port()
        config = {
            "database": "var/bench.db",
            "rules": ["rules.yaml"],
            "listeners": [{
                "name": "ftp", "protocol": "ftp", "listen": f"127.0.0.1:{gk_port}",
                "upstream": f"127.0.0.1:{up_port}", "passive_ports": f"{first}-{first + 49}",
            }],
        }  # fmt: skip
        (work / "gk.yaml").write_text(yaml.safe_dump(config))
        gate = spawn(
            [sys.executable, "-m", "gatekeeper", "run", "-c", str(work / "gk.yaml")], cwd=work
        )
        try:
            wait_port("127.0.0.1", up_port)
            wait_port("127.0.0.1", gk_port, timeout=30)
            direct, through = [], []
            for _ in range(args.rounds):
                direct.append(download(up_port, size))
                through.append(download(gk_port, size))
        finally:
            stop(gate)
            stop(upstream)
    d, g = median(direct), median(through)
    if args.json:
        goal = target("FTP passive download: gatekeeper vs direct", g, d, "MB/s", LIMIT,
                      higher=True)  # fmt: skip
        rows = [{"server": "direct", "mb_per_s": d}, {"server": "gatekeeper", "mb_per_s": g}]
        print(json.dumps({"rows": rows, "targets": [goal]}))
        return 0
    print(f"FTP passive download of {args.size_mb} MiB, curl, median of {args.rounds}")
    print(f"{'direct from pyftpdlib':28} {d:9.0f} MB/s")
    print(f"{'through gatekeeper':28} {g:9.0f} MB/s   ratio {g / d:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

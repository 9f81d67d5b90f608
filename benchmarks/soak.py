"""Soak mode: the hostile-input fuzzing with a huge example budget, then the hard-to-break
integration tests over and over, until the time is up.

    .venv/bin/python -m benchmarks.soak --minutes 60     # or: make soak SOAK_MINUTES=60
    .venv/bin/python -m benchmarks.soak --minutes 1      # a quick check

Phase 1 takes ``--fuzz-share`` of the time (40 % by default): ``tests/fuzz`` in rounds,
each with a new hypothesis seed and ``GATEKEEPER_FUZZ_EXAMPLES`` scaled from the rate the
round before measured (``make test`` runs about 2,300 cases; hypothesis makes 100-150 a
second on 2 cores, so an hour runs ~200,000 and a night, ``--minutes 480 --fuzz-share 0.9``,
millions). Phase 2 runs the integration test files below in turn, one pytest process each,
until the time is up (at least one file runs, and a file once started runs to its end, so
the total may pass ``--minutes`` by one file's time). Every process is bounded by a timeout;
what a failing run printed is kept in ``var/soak/``. Prints a summary (rounds, cases,
failures) and exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FUZZ = "tests/fuzz"
# The integration tests of issue 7 ("hard to break"), run when present.
INTEGRATION = [
    "tests/integration/test_flood.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_slow_peers.py",
    "tests/integration/test_upstream_faults.py",
    "tests/integration/test_process_faults.py",
    "tests/integration/test_hostile.py",
    "tests/integration/test_security.py",
]
FUZZ_ENV = "GATEKEEPER_FUZZ_EXAMPLES"  # tests/fuzz/__init__.py reads it
FIRST_ROUND = 350  # examples per test in the first round: make test's budget, to calibrate
MAX_ROUND = 20 * 60.0  # seconds a fuzz round aims at, at most (a failure shows up sooner)
FILE_TIMEOUT = 20 * 60.0  # seconds for one integration file (pytest-timeout: 120 s a test)

_CASES = re.compile(r"- (\d+) passing, (\d+) failing, and \d+ invalid test cases")
_OUTCOME = re.compile(r"(\d+) (passed|failed|errors?)\b")


@dataclass
class Tally:
    fuzz_rounds: int = 0
    fuzz_cases: int = 0
    fuzz_seconds: float = 0.0
    tests: int = 0  # integration tests run
    files: dict[str, list[int]] = field(default_factory=dict)  # file -> [runs, failed runs]
    failures: list[str] = field(default_factory=list)


def pytest_run(
    args: list[str], env: dict[str, str], log: Path, timeout: float, basetemp: Path
) -> tuple[int | None, str]:
    """One pytest process; its exit code (None if it had to be killed) and its output."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           f"--basetemp={basetemp}", *args]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
    return code, log.read_text(errors="replace")


def fuzz_round(
    examples: int, budget: float, logs: Path, basetemp: Path, tally: Tally
) -> tuple[int, float]:
    """``tests/fuzz`` once with ``examples`` per test; returns (cases run, seconds)."""
    seed = random.randrange(1 << 32)
    env = dict(os.environ, **{FUZZ_ENV: str(examples)})
    log = logs / f"fuzz-{tally.fuzz_rounds + 1:03d}.log"
    timeout = 2 * budget + 120  # a round far past its estimate has hung: a failure
    args = [FUZZ, "--hypothesis-show-statistics", f"--hypothesis-seed={seed}",
            f"--timeout={int(timeout)}"]  # fmt: skip
    start = time.monotonic()
    code, output = pytest_run(args, env, log, timeout, basetemp)
    seconds = time.monotonic() - start
    cases = sum(int(p) + int(f) for p, f in _CASES.findall(output))
    cases += sum(int(n) for n, what in _OUTCOME.findall(_summary(output)) if what == "passed")
    tally.fuzz_rounds += 1
    tally.fuzz_cases += cases
    tally.fuzz_seconds += seconds
    status = "ok" if code == 0 else "timed out" if code is None else f"FAILED (exit {code})"
    print(f"fuzz round {tally.fuzz_rounds}: {examples} examples a test, seed {seed}: {cases} cases "
          f"in {seconds:.0f}s, {status}", flush=True)  # fmt: skip
    if code != 0:
        tally.failures.append(f"fuzz round {tally.fuzz_rounds} (seed {seed}): {status}; see {log}")
    else:
        log.unlink()
    return cases, seconds


def _count(n: int, noun: str) -> str:
    return (
        f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}es" if noun.endswith("s") else f"{n:,} {noun}s"
    )


def _summary(output: str) -> str:
    """pytest's last line ("3 passed, 1 failed in 9.1s")."""
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def integration_run(path: str, logs: Path, basetemp: Path, tally: Tally) -> None:
    runs = tally.files.setdefault(path, [0, 0])
    runs[0] += 1
    log = logs / f"{Path(path).stem}-{runs[0]:03d}.log"
    start = time.monotonic()
    code, output = pytest_run([path], dict(os.environ), log, FILE_TIMEOUT, basetemp)
    counts = {what: int(n) for n, what in _OUTCOME.findall(_summary(output))}
    tally.tests += sum(counts.values())
    status = "ok" if code == 0 else "timed out" if code is None else _summary(output)
    print(f"  {path}: {_summary(output) if code is not None else status} "
          f"({time.monotonic() - start:.0f}s)", flush=True)  # fmt: skip
    if code != 0:
        runs[1] += 1
        tally.failures.append(f"{path} run {runs[0]}: {status}; see {log}")
    else:
        log.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long (default 60)")
    parser.add_argument("--fuzz-share", type=float, default=0.4,
                        help="part of the time for the fuzzing (default 0.4)")  # fmt: skip
    parser.add_argument("--logs", type=Path, default=REPO / "var" / "soak",
                        help="where the output of failed runs is kept")  # fmt: skip
    args = parser.parse_args()
    if args.minutes <= 0 or not 0 <= args.fuzz_share <= 1:
        parser.error("--minutes must be positive and --fuzz-share between 0 and 1")
    start = time.monotonic()
    deadline = start + args.minutes * 60
    fuzz_until = start + args.minutes * 60 * args.fuzz_share
    logs = args.logs / time.strftime("%Y%m%d-%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)
    basetemp = Path(tempfile.mkdtemp(prefix="gatekeeper-soak-")) / "run"
    tally = Tally()
    passes = 0
    try:
        # Phase 1: fuzz rounds, each sized from the rate of the one before (the first, with
        # make test's budget, calibrates); no round starts that would not fit.
        examples = FIRST_ROUND
        while args.fuzz_share > 0:
            budget = fuzz_until - time.monotonic()
            cases, seconds = fuzz_round(examples, max(budget, 60.0), logs, basetemp, tally)
            if cases == 0 or tally.failures:
                break  # the failure is shrunk and logged; more rounds would repeat it
            rate = cases / seconds  # cases a second, all tests together
            tests = cases / examples  # how many tests share a round (weights included)
            budget = fuzz_until - time.monotonic()
            if budget < FIRST_ROUND * tests / rate:
                break
            examples = max(FIRST_ROUND, int(rate * min(budget, MAX_ROUND) / tests))
        # Phase 2: the integration files in turn until the time is up (at least one).
        files = [f for f in INTEGRATION if (REPO / f).is_file()]
        while files and (passes == 0 or time.monotonic() < deadline):
            passes += 1
            print(f"integration pass {passes}:", flush=True)
            for path in files:
                if time.monotonic() >= deadline and tally.files:
                    break
                integration_run(path, logs, basetemp, tally)
    finally:
        shutil.rmtree(basetemp.parent, ignore_errors=True)
        if not any(logs.iterdir()):
            logs.rmdir()

    minutes = (time.monotonic() - start) / 60
    print(f"\nsoak: {minutes:.1f} min; {_count(tally.fuzz_rounds, 'fuzz round')}, "
          f"{_count(tally.fuzz_cases, 'case')} in {tally.fuzz_seconds / 60:.1f} min; "
          f"{_count(passes, 'integration pass')}, {_count(tally.tests, 'test')}")  # fmt: skip
    for path, (runs, failed) in tally.files.items():
        print(f"  {path}: {_count(runs, 'run')}, {failed} failed")
    if tally.failures:
        print(f"{_count(len(tally.failures), 'failure')}:")
        for failure in tally.failures:
            print(f"  {failure}")
        return 1
    print("no failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rules against pytricia: lookup and decide per address, reload time and stall, memory.

With ``--rules`` random IPv4 prefixes (mostly /16../32, like FireHOL or Spamhaus lists) and,
separately, as many IPv6 prefixes (mostly /32../64), in one run and on the same data:

* lookup per address from its text (what the daemon has from ``getpeername``), on the same
  shuffled mix of hits and misses: the bare ``PrefixTable`` lookup and the whole
  ``RuleSet.decide``, each against ``pytricia.PyTricia.get`` from the same text (≤ 2x);
* a reload of a rule file ``deny: [{file: drop.txt}]`` naming a list of that many lines, as
  the daemon does it (``config.load`` then ``RuleSet.build``): the time (≤ 0.5 s), and the
  longest the event loop goes without running while it runs in ``asyncio.to_thread`` (a
  1 ms ticker; ≤ 50 ms);
* memory: resident-set growth of building the ``RuleSet`` from the loaded rules against
  inserting the same prefixes into a pytricia, each in a fresh interpreter (≤ 3x).

Shown for information: ``decide`` on a fresh rule set (each interval worked out the first
time), and in those fresh interpreters the time of a full ``gc.collect()`` and of dropping
everything loaded: both hold the GIL, so both stall the daemon's event loop when they
happen (the first after each reload, the second when the old rules go).

    .venv/bin/python -m benchmarks.bench_rules [--rules 100000] [--lookups 200000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytricia  # type: ignore[import-not-found]
import yaml

from benchmarks.common import target
from gatekeeper import config
from gatekeeper.rules.engine import RuleSet
from gatekeeper.rules.trie import PrefixTable, RadixTrie

LISTENER = "bench"
ROUNDS = 5  # reloads timed alone (median) and in a worker thread (longest stall)
LOOKUP_ROUNDS = 5  # timed passes per lookup measurement: best
LOOKUP_LIMIT = 2.0  # gatekeeper / pytricia, per lookup
BUILD_LIMIT = 0.5  # seconds for config.load + RuleSet.build
STALL_MS = 50  # milliseconds the event loop may go without running during a reload
MEMORY_LIMIT = 3.0  # gatekeeper / pytricia, resident-set growth

# (lengths, weight): how often a prefix length range turns up in the generated lists.
V4_LENGTHS = [
    (range(8, 16), 0.5),
    (range(16, 24), 20.0),
    (range(24, 25), 35.0),
    (range(25, 32), 4.5),
    (range(32, 33), 40.0),
]
V6_LENGTHS = [
    (range(19, 32), 2.0),
    (range(32, 33), 20.0),
    (range(33, 48), 18.0),
    (range(48, 49), 25.0),
    (range(49, 64), 10.0),
    (range(64, 65), 20.0),
    (range(65, 129), 5.0),
]


@dataclass(frozen=True)
class Family:
    name: str
    bits: int
    af: int
    lengths: list[tuple[range, float]]
    low: int  # addresses drawn from [low, high): unicast only
    high: int

    def text(self, value: int) -> str:
        return socket.inet_ntop(self.af, value.to_bytes(self.bits // 8, "big"))


V4 = Family("v4", 32, socket.AF_INET, V4_LENGTHS, 1 << 24, 224 << 24)  # 1.0.0.0 .. 223.x
V6 = Family("v6", 128, socket.AF_INET6, V6_LENGTHS, 1 << 125, 2 << 125)  # 2000::/3


def make_prefixes(family: Family, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """``count`` distinct random (prefix, length) pairs, in random order."""
    ranges = [r for r, _ in family.lengths]
    weights = [w for _, w in family.lengths]
    seen: dict[tuple[int, int], None] = {}
    for _ in range(count * 20):  # bounded: duplicates are rare but possible among short prefixes
        if len(seen) == count:
            break
        length = rng.choice(rng.choices(ranges, weights)[0])
        host = family.bits - length
        seen[rng.randrange(family.low, family.high) >> host << host, length] = None
    return list(seen)


def make_addresses(
    family: Family, prefixes: list[tuple[int, int]], count: int, rng: random.Random
) -> list[str]:
    """``count`` address texts, shuffled: half inside a random listed prefix, half anywhere."""
    values = []
    for i in range(count):
        if i % 2:
            prefix, length = rng.choice(prefixes)
            values.append(prefix | rng.getrandbits(family.bits - length))
        else:
            values.append(rng.randrange(family.low, family.high))
    rng.shuffle(values)
    return [family.text(v) for v in values]


def write_config(workdir: Path, family: Family, prefixes: list[tuple[int, int]]) -> Path:
    lines = [f"{family.text(prefix)}/{length}" for prefix, length in prefixes]
    (workdir / "drop.txt").write_text("# generated\n" + "\n".join(lines) + "\n")
    (workdir / "rules.yaml").write_text(
        yaml.safe_dump({"default": "allow", "deny": [{"file": "drop.txt"}]})
    )
    settings = {
        "database": "bench.db",
        "rules": ["rules.yaml"],
        "listeners": [{
            "name": LISTENER, "protocol": "tcp",
            "listen": "127.0.0.1:2121", "upstream": "127.0.0.1:9",
        }],
    }  # fmt: skip
    path = workdir / "gatekeeper.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def reload(path: Path) -> RuleSet:
    """What the daemon's reload runs in its worker thread (less the GeoIP databases)."""
    _, spec = config.load(path)
    return RuleSet.build(spec)


# -- lookups ---------------------------------------------------------------------------------
def best_ns(runs: dict[str, Callable[[list[str]], None]], addresses: list[str]) -> dict[str, float]:
    """Nanoseconds per address of each run, best of ``LOOKUP_ROUNDS`` passes over
    ``addresses``; the runs take turns, so a busy spell on the machine hits them alike."""
    for run in runs.values():
        run(addresses[: len(addresses) // 10])  # warm up
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(LOOKUP_ROUNDS):
        for name, run in runs.items():
            start = time.perf_counter()
            run(addresses)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds / len(addresses) * 1e9 for name, seconds in best.items()}


def first_pass_ns(run: Callable[[list[str]], None], addresses: list[str]) -> float:
    start = time.perf_counter()
    run(addresses)
    return (time.perf_counter() - start) / len(addresses) * 1e9


def table_lookups(table: PrefixTable[int], af: int) -> Callable[[list[str]], None]:
    lookup, pton, from_bytes = table.longest_match, socket.inet_pton, int.from_bytes

    def run(addresses: list[str]) -> None:
        for address in addresses:
            lookup(from_bytes(pton(af, address), "big"))

    return run


def decisions(ruleset: RuleSet) -> Callable[[list[str]], None]:
    decide = ruleset.decide

    def run(addresses: list[str]) -> None:
        for address in addresses:
            decide(address, LISTENER)

    return run


def pytricia_lookups(pyt: Any) -> Callable[[list[str]], None]:
    get = pyt.get

    def run(addresses: list[str]) -> None:
        for address in addresses:
            get(address)

    return run


def check_agreement(
    family: Family,
    table: PrefixTable[int],
    ruleset: RuleSet,
    pyt: Any,
    addresses: list[str],
) -> None:
    """The three answer alike: the same longest prefix, and a denial exactly on a match."""
    for address in addresses:
        value = int.from_bytes(socket.inet_pton(family.af, address), "big")
        chain = table.lookup(value)
        key = pyt.get_key(address)
        ours = chain[0][0] if chain else None
        theirs = int(key.rsplit("/", 1)[1]) if key is not None else None
        if ours != theirs:
            raise AssertionError(f"{address}: table says /{ours}, pytricia says {key}")
        if ruleset.decide(address, LISTENER).allowed != (key is None):
            raise AssertionError(f"{address}: decide disagrees with pytricia ({key})")


# -- reload: time and event-loop stall -------------------------------------------------------
async def stalled_reload(path: Path) -> tuple[float, float]:
    """(seconds, longest event-loop gap) of a reload in a worker thread, a 1 ms ticker running."""
    done = False
    longest = 0.0

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)  # the ticker is running
    longest = 0.0
    start = time.perf_counter()
    await asyncio.to_thread(reload, path)
    seconds = time.perf_counter() - start
    done = True
    await tick
    return seconds, longest


def pytricia_from_file(path: Path, bits: int) -> Any:
    """What loading the list into pytricia takes: read, skip comments, insert each line."""
    pyt = pytricia.PyTricia(bits)
    for n, line in enumerate(path.read_text().splitlines()):
        if line and not line.startswith("#"):
            pyt[line] = n
    return pyt


# -- memory, each in a fresh interpreter -----------------------------------------------------
_MEMORY = """
import gc, json, os, sys, time
from pathlib import Path
from gatekeeper import config
from gatekeeper.rules.engine import RuleSet
import pytricia

def rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

path, subject, bits = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
if subject == "gatekeeper":
    _, loaded = config.load(path)
    before = rss()
    built = RuleSet.build(loaded)
else:  # the lines of the list, each with its number as its value
    loaded = [x for x in (path.parent / "drop.txt").read_text().splitlines() if x[:1] != "#"]
    before = rss()
    built = pytricia.PyTricia(bits)
    for number, line in enumerate(loaded):
        built[line] = number
grown = rss() - before
start = time.perf_counter()
gc.collect()
full_gc = time.perf_counter() - start
start = time.perf_counter()
del loaded, built
dropped = time.perf_counter() - start
print(json.dumps({"rss": grown, "full_gc": full_gc, "drop": dropped}))
"""


def memory(path: Path, subject: str, bits: int) -> dict[str, float]:
    """In a fresh process: the resident-set growth in bytes from building a RuleSet from
    ``path``'s loaded rules, or a pytricia from the lines of its list; then the seconds a
    full garbage collection takes, and dropping what was loaded and built (both hold the
    GIL: a stall of the event loop wherever they happen)."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY, str(path), subject, str(bits)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    found: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


# -- the run ---------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    value: float
    reference: float | None
    limit: float | None  # None: shown for information
    unit: str
    on_ratio: bool = False  # the limit is on value / reference; else on value itself

    @property
    def ratio(self) -> float | None:
        return self.value / self.reference if self.reference else None

    @property
    def passed(self) -> bool | None:
        if self.limit is None:
            return None
        measured = self.ratio if self.on_ratio else self.value
        return measured is not None and measured <= self.limit


def run_family(
    family: Family, rules: int, lookups: int, seed: int, figures: dict[str, Any]
) -> list[Target]:
    rng = random.Random(f"{seed}-{family.name}")
    prefixes = make_prefixes(family, rules, rng)
    addresses = make_addresses(family, prefixes, lookups, rng)
    name = family.name
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="gk-bench-rules") as tmp:
        path = write_config(Path(tmp), family, prefixes)

        # Reload: time alone, then the loop's longest gap with the reload in a worker thread.
        # As in the daemon, the previous rule set is still alive while the next is built.
        ruleset = reload(path)
        build_times = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            ruleset = reload(path)
            build_times.append(time.perf_counter() - start)
        stalls = [asyncio.run(stalled_reload(path)) for _ in range(ROUNDS)]
        pytricia_times = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            pytricia_from_file(Path(tmp) / "drop.txt", family.bits)
            pytricia_times.append(time.perf_counter() - start)
        pytricia_build = statistics.median(pytricia_times)
        build = statistics.median(build_times)
        stall = max(gap for _, gap in stalls)
        figures[f"build_{name}_s"] = build
        figures[f"build_{name}_min_s"] = min(build_times)
        figures[f"build_{name}_threaded_s"] = statistics.median(s for s, _ in stalls)
        figures[f"pytricia_build_{name}_s"] = pytricia_build
        figures[f"stall_{name}_ms"] = stall * 1e3
        targets += [
            Target(f"reload {name} (load+build), s", build, pytricia_build, BUILD_LIMIT, "s"),
            Target(f"reload {name}: longest loop gap, ms", stall * 1e3, None, STALL_MS, "ms"),
        ]

        # Lookups: the same addresses, the same shape of loop, the runs taking turns.
        trie = RadixTrie[int](family.bits)
        pyt = pytricia.PyTricia(family.bits)
        for i, (prefix, length) in enumerate(prefixes):
            trie.add(prefix, length, i)
            pyt[f"{family.text(prefix)}/{length}"] = i
        table = trie.compile()
        check_agreement(family, table, ruleset, pyt, addresses[:20_000])
        cold = first_pass_ns(decisions(reload(path)), addresses)  # every interval new
        ns = best_ns(
            {
                "pytricia": pytricia_lookups(pyt),
                "lookup": table_lookups(table, family.af),
                "decide": decisions(ruleset),
            },
            addresses,
        )
        figures[f"pytricia_{name}_ns"] = ns["pytricia"]
        figures[f"lookup_{name}_ns"] = ns["lookup"]
        figures[f"decide_{name}_ns"] = ns["decide"]
        figures[f"decide_first_{name}_ns"] = cold
        for what in ("lookup", "decide"):
            pair = ns[what], ns["pytricia"]
            targets.append(Target(f"{what} {name}, ns", *pair, LOOKUP_LIMIT, "ns", on_ratio=True))
        targets.append(Target(f"decide {name}, first pass, ns", cold, ns["pytricia"], None, "ns"))
        del ruleset, table, trie, pyt

        # Memory, and what a full collection and dropping the rules cost, in fresh processes.
        ours = memory(path, "gatekeeper", family.bits)
        theirs = memory(path, "pytricia", family.bits)
        figures[f"memory_{name}_bytes"] = ours["rss"]
        figures[f"pytricia_memory_{name}_bytes"] = theirs["rss"]
        figures[f"full_gc_{name}_ms"] = ours["full_gc"] * 1e3
        figures[f"drop_{name}_ms"] = ours["drop"] * 1e3
        mb = ours["rss"] / 1e6, theirs["rss"] / 1e6
        targets.append(Target(f"memory {name}, MB", *mb, MEMORY_LIMIT, "MB", on_ratio=True))
        full_gc = ours["full_gc"] * 1e3, theirs["full_gc"] * 1e3
        targets.append(Target(f"full gc.collect() {name}, ms", *full_gc, None, "ms"))
        dropped = ours["drop"] * 1e3, theirs["drop"] * 1e3
        targets.append(Target(f"dropping the rules {name}, ms", *dropped, None, "ms"))
    return targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=100_000, help="prefixes per family")
    parser.add_argument("--lookups", type=int, default=200_000, help="addresses per family")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    figures: dict[str, Any] = {"rules": args.rules, "lookups": args.lookups}
    targets = [
        *run_family(V4, args.rules, args.lookups, args.seed, figures),
        *run_family(V6, args.rules, args.lookups, args.seed, figures),
    ]
    # As every benchmark reports them (a bound on the value itself is its reference).
    figures["targets"] = [
        target(t.name, t.value, t.reference or 0.0, t.unit, t.limit, higher=False)
        if t.on_ratio
        else target(t.name, t.value, t.limit, t.unit, 1.0, higher=False)
        for t in targets
        if t.limit is not None
    ]
    figures["pass"] = all(t.passed for t in targets if t.limit is not None)
    if args.json:
        print(json.dumps(figures))
        return 0
    print(
        f"{args.rules:,} prefixes per family, {args.lookups:,} lookups (half hits); lookups "
        f"best of {LOOKUP_ROUNDS}; reloads median of {ROUNDS}, stall the longest of {ROUNDS}"
    )
    print(f"{'subject':38} {'gatekeeper':>10} {'pytricia':>9} {'ratio':>6} {'target':>10}  result")
    for t in targets:
        ref = f"{t.reference:9.4g}" if t.reference is not None else f"{'-':>9}"
        ratio = f"{t.ratio:6.2f}" if t.ratio is not None else f"{'-':>6}"
        if t.limit is None:
            limit, verdict = "-", "info"
        else:
            limit = f"{'ratio' if t.on_ratio else t.unit} ≤ {t.limit:g}"
            verdict = "PASS" if t.passed else "FAIL"
        print(f"{t.name:38} {t.value:10.4g} {ref} {ratio} {limit:>10}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

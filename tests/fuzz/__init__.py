"""Hostile-input fuzzing of the four parsers an outsider (or a careless file) can reach.

Each test mutates valid input (truncation, byte flips, NULs, invalid UTF-8, Telnet IAC
sequences, CR without LF, overlong lines, huge numbers, deep YAML, alias bombs...) and
asserts the parser's whole contract, not just "no crash": the exact result against a
reference, bounded internal state, and errors only of the documented kind, with a location.

How many cases run is one knob, ``GATEKEEPER_FUZZ_EXAMPLES`` (examples per test at weight
1): unset, ``make test`` runs about 2,300 in all; ``benchmarks/soak.py`` sets it high.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

ENV = "GATEKEEPER_FUZZ_EXAMPLES"
# Examples per test at weight 1 in `make test`: about 2,300 cases in all, ~20 s on 2 cores.
DEFAULT_EXAMPLES = 350


def examples(weight: float = 1.0) -> int:
    """Examples for a test: ``GATEKEEPER_FUZZ_EXAMPLES`` (or the default) times ``weight``.

    Slow tests (files written per case, megabyte inputs) take a weight below 1."""
    base = int(os.environ.get(ENV, "").strip() or DEFAULT_EXAMPLES)
    return max(1, round(base * weight))


def fuzz_settings(weight: float = 1.0) -> settings:
    """Hypothesis settings for a fuzz test: the example budget, no per-example deadline
    (a shared 2-core machine is no place to time one case), no health check that would
    refuse big inputs, and no "explain" phase (it traces every line of a megabyte case:
    minutes); the example database stays in the ignored ``.hypothesis/``."""
    return settings(
        max_examples=examples(weight),
        deadline=None,
        phases=[p for p in Phase if p is not Phase.explain],
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )

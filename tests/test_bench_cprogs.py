"""The benchmarks' C programs (benchmarks/c): they build, and loadgen measures baseline."""

from __future__ import annotations

import shutil

import pytest

from benchmarks import cprogs

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    cprogs.build("baseline")
    cprogs.build("loadgen")


@pytest.mark.parametrize(
    ("mode", "host"),
    [("close", "127.0.0.1"), ("reset", "127.0.0.1"), ("reply", "127.0.0.1"), ("close", "::1")],
)
def test_flood(mode: str, host: str) -> None:
    proc, port = cprogs.start_baseline(mode, host)
    try:
        result = cprogs.run_loadgen(
            "flood", host, str(port), "--count", "500", "--concurrency", "20", "--timeout", "20"
        )
    finally:
        stderr = cprogs.stop(proc)
    assert proc.returncode == 0, stderr
    assert result["connections"] == 500
    assert result["errors"] == 0
    assert result["closed"] + result["reset"] == 500
    if mode == "reset":
        assert result["reset"] > 0
    else:
        assert result["closed"] > 0
    assert result["rate"] > 0


def test_latency() -> None:
    proc, port = cprogs.start_baseline("banner")
    try:
        result = cprogs.run_loadgen("latency", "127.0.0.1", str(port), "--count", "200")
    finally:
        cprogs.stop(proc)
    assert result["errors"] == 0
    assert result["count"] == 200 - result["warmup"] > 0
    assert 0 < result["p50_us"] <= result["p90_us"] <= result["p99_us"] <= result["max_us"]


def test_bulk() -> None:
    proc, port = cprogs.start_baseline("source")
    try:
        result = cprogs.run_loadgen(
            "bulk", "127.0.0.1", str(port), "--bytes", "10000000", "--streams", "2"
        )
    finally:
        cprogs.stop(proc)
    assert result["errors"] == 0
    assert result["streams"] == 2
    assert result["bytes"] == 2 * 10_000_000
    assert result["mb_per_s"] > 0


def test_idle() -> None:
    proc, port = cprogs.start_baseline("banner")
    try:
        idle, result = cprogs.start_idle("127.0.0.1", port, 200, hold_seconds=60)
        try:
            assert result == {"open": 200, "errors": 0, "seconds": result["seconds"]}
            assert idle.poll() is None  # holding them
        finally:
            code = cprogs.finish_idle(idle)
        assert code == 0
    finally:
        stderr = cprogs.stop(proc)
    assert "peak open 200" in stderr


def test_timeout_reports_and_fails() -> None:
    """A server that never closes: flood gives up at --timeout, exits non-zero."""
    proc, port = cprogs.start_baseline("banner")
    try:
        with pytest.raises(RuntimeError, match=r'(?s)"connections": 0.*timeout'):
            cprogs.run_loadgen(
                "flood",
                "127.0.0.1",
                str(port),
                "--count",
                "5",
                "--concurrency",
                "5",
                "--timeout",
                "0.3",
            )
    finally:
        cprogs.stop(proc)

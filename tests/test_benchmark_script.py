"""`make bench` works: the script runs, prints its table and saves what the book reads.

A smoke run on tiny shapes; nothing here asserts a time (timings are the
benchmark's business, not a test's).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HAVE_NUMBA = importlib.util.find_spec("numba") is not None


def test_benchmark_runs_and_saves(tmp_path: Path) -> None:
    saved = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--threads", "1", "--shapes", "4,3,2,2", "64,8",
         "--no-extras", "--save", str(saved)],
        capture_output=True, text=True, check=True, timeout=600,
    )
    assert "implementation" in result.stdout and "bnlit staged" in result.stdout
    record = json.loads(saved.read_text())
    assert {"date", "machine", "rows", "passes", "threads", "first_call"} <= record.keys()
    implementations = {row["implementation"] for row in record["rows"]}
    assert {"bnlit numpy", "bnlit staged"} <= implementations
    assert ("bnlit numba" in implementations) == HAVE_NUMBA
    assert {tuple(row["shape"]) for row in record["rows"]} == {(4, 3, 2, 2), (64, 8)}
    for row in record["rows"]:
        assert row["total_ms"] > 0 and row["floor_ms"] > 0 and row["repetitions"] >= 11
        spread = row["vs_floor"]
        assert 0 < spread["min"] <= spread["median"] <= spread["max"]
        if row["implementation"].startswith("bnlit"):
            assert row["peak_memory_x_input"] >= 1.0  # at least the returned outputs


def test_committed_benchmark_data_is_what_the_book_reads() -> None:
    record = json.loads((ROOT / "docs" / "data" / "benchmark.json").read_text())
    shapes = {tuple(row["shape"]) for row in record["rows"]}
    assert {(64, 64, 56, 56), (32, 256, 14, 14), (8, 16, 8, 8), (4096, 1024)} <= shapes
    assert {row["threads"] for row in record["rows"]} == {1, 2}
    assert {"bnlit numpy", "bnlit numba", "bnlit staged", "torch"} <= {row["implementation"] for row in record["rows"]}
    assert {row["outputs"] for row in record["threads"]} == {"reused", "fresh"}
    assert all(row["bandwidth"]["speedup_bound"] > 0 for row in record["threads"])
    assert record["first_call"]["cold_s"] > record["first_call"]["cached_s"] > 0

"""Smoke tests of benchmarks/: each script runs at tiny size and prints valid JSON.

They check that the scripts still run and report what they promise, never how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_sse import protocols

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# A stage of its own (`pytest -m benchmarks`, run by .ci/run): it takes a minute.
pytestmark = pytest.mark.benchmarks


def run_quick(script: str, *extra: str) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    document: dict[str, object] = json.loads(completed.stdout)
    return document


@pytest.mark.timeout(300)
def test_bench_sse_quick() -> None:
    document = run_quick("bench_sse.py")
    assert {"throughput", "large_event", "linearity", "protocols", "targets"} <= document.keys()
    text = json.dumps(document["throughput"])
    for name in ("feed", "feed_frames", "chat", "openai", "httpx-sse"):
        assert name in text
    rows = document["protocols"]
    assert isinstance(rows, list)
    assert [row["protocol"] for row in rows] == list(protocols.NAMES)
    for row in rows:
        assert row["us_per_event_median"] > 0
        assert row["us_per_piece_median"] > 0
        assert row["events"] >= row["pieces"] > 0
    targets = document["targets"]
    assert isinstance(targets, dict)
    assert {target["issue"] for target in targets.values()} == {2, 11}


def test_bench_tokens_quick() -> None:
    document = run_quick("bench_tokens.py")
    assert {"first_load", "counting", "prompts"} <= document.keys()


@pytest.mark.timeout(300)
def test_bench_client_quick() -> None:
    document = run_quick("bench_client.py", "--repeat", "1")
    assert {"server", "results", "targets"} <= document.keys()
    text = json.dumps(document["results"])
    for name in (
        "raw aiohttp",
        "qwen-sse",
        "qwen-sse otel",
        "openai",
        "httpx-sse",
        "aiohttp lines",
    ):
        assert name in text
    for workload in ("bulk", "paced", "memory"):
        assert workload in text
    targets = document["targets"]
    assert isinstance(targets, dict)
    assert targets["paced_cpu_per_event_telemetry_on_x_off"]["value"] > 0


@pytest.mark.timeout(300)
def test_bench_accuracy_quick() -> None:
    document = run_quick("bench_accuracy.py")
    levels = document["levels"]
    assert isinstance(levels, list)
    assert [level["concurrency"] for level in levels] == [1, 8]
    for level in levels:
        assert level["completed"] == level["requests"]
        # The emulator never writes a token before its time: no first token before the
        # TTFT. (A late token does not delay the next, so gaps may fall either side.)
        assert level["served"]["median_ttft_ms"] >= level["configured"]["ttft_ms"]
        assert level["served"]["median_itl_ms"] > 0
        assert level["measured"]["median_ttft_ms"] >= level["served"]["median_ttft_ms"]
        assert level["client_limited"] is bool(level["client_reasons"])


@pytest.mark.timeout(300)
def test_bench_capacity_quick() -> None:
    document = run_quick("bench_capacity.py")
    levels = document["levels"]
    assert isinstance(levels, list)
    assert [(row["concurrency"], row["generator"]) for row in levels] == [
        (4, "floor"),
        (4, "qwen-sse"),
        (8, "floor"),
        (8, "qwen-sse"),
    ]
    for row in levels:
        (run,) = row["runs"]
        # Every request was measured, and against the server's record of it.
        assert run["completed"] == run["requests"] == 8
        assert run["failed"] == 0
        emulator, generator = run["emulator"], run["generator_figures"]
        assert emulator["tokens_written"] >= 8
        # CPU time counts in clock ticks: a tiny run may not reach one.
        assert emulator["cpu_fraction"] >= 0
        assert emulator["cpu_us_per_token"] >= 0
        assert emulator["event_loop"] in ("asyncio", "uvloop")
        # No first token before its time, and no client reads a piece before it is sent.
        assert emulator["served_ttft_ms"]["median"] >= 30
        assert generator["ttft_ms"]["median"] >= emulator["served_ttft_ms"]["median"]
        assert generator["itl_ms"]["median"] > 0
        medians = row["medians"]
        assert medians["measured_vs_served_ttft_pct"] >= 0
        assert set(row["limited_by"]) <= {"server", "client"}
        if row["generator"] == "qwen-sse":
            assert row["client_limited_runs"] in (0, 1)
            assert generator["client_limited"] is bool(generator["client_reasons"])
        else:
            assert row["client_limited_runs"] is None

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
        # The emulator never runs faster than configured: sleeps only add time.
        assert level["served"]["median_ttft_ms"] >= level["configured"]["ttft_ms"]
        assert level["served"]["median_itl_ms"] >= level["configured"]["itl_ms"]
        assert level["measured"]["median_ttft_ms"] >= level["served"]["median_ttft_ms"]
        assert level["client_limited"] is bool(level["client_reasons"])


@pytest.mark.timeout(300)
def test_bench_proxy_quick() -> None:
    document = run_quick("bench_proxy.py")
    levels = document["levels"]
    assert isinstance(levels, list)
    assert [level["concurrency"] for level in levels] == [1, 4]
    for level in levels:
        assert level["failures"] == []
        for metric in ("ttfb_p50_ms", "ttfb_p99_ms", "itl_p50_ms", "itl_p99_ms"):
            figures = level[metric]
            # Two pieces read at once have a gap of 0; nothing arrives before it was sent.
            assert figures["direct"] >= 0
            assert figures["proxy"] >= 0
            assert figures["added"] == pytest.approx(figures["proxy"] - figures["direct"])
        assert level["ttfb_p50_ms"]["direct"] > 0
        assert level["ttfb_p50_ms"]["proxy"] > 0
    proxy = document["proxy_process"]
    assert isinstance(proxy, dict)
    # Every stream through the proxy (warm-up included) was summarised, complete, clean.
    assert proxy["exchanges"] == proxy["complete"] == 2 * (1 + 4) * 2
    assert proxy["anomalies"] == 0
    assert proxy["events"] > proxy["exchanges"]
    assert proxy["cpu_us_per_event"] > 0
    assert document["target"] == {"streams": 100, "measured": False}

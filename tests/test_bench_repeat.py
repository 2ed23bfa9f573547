"""Repeated runs: which keys are figures, the combined document and its intervals, and that
every run gets the one configuration (no I/O here; tests/test_cli_bench.py runs them)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from qwen_sse.bench.benchmark import BenchConfig, BenchResult
from qwen_sse.bench.metrics import Slo
from qwen_sse.bench.repeat import CONFIDENCE, combine, figure_keys, run_repeat, samples
from qwen_sse.bench.schedule import ClosedLoop
from qwen_sse.bench.schema import REPEAT_SCHEMA, REPEAT_SCHEMA_ID
from qwen_sse.bench.stats import mean_interval
from qwen_sse.bench.workload import SyntheticWorkload
from qwen_sse.errors import ConfigurationError
from tests.bench_documents import made_up_result

CONFIG = BenchConfig(
    shape=ClosedLoop(concurrency=2),
    workload=SyntheticWorkload(input_tokens=16, output_tokens=4, seed=3),
    requests=10,
    seed=3,
)


def three_runs() -> list[dict[str, Any]]:
    return [
        made_up_result(requests=40, failed=2).summary,
        made_up_result(requests=30, failed=0, lag_ms=25).summary,
        made_up_result(requests=20, failed=1).summary,
    ]


def test_the_figures_are_the_measured_keys_in_the_reports_order() -> None:
    summary = made_up_result(slo=Slo(ttft_ms=100)).summary
    keys = figure_keys(summary)
    assert keys[:4] == ["completed", "failed", "duration", "total_input_tokens"]
    assert "request_goodput" in keys
    ttft = [key for key in keys if key.endswith("_ttft_ms")]
    assert ttft == ["mean_ttft_ms", "median_ttft_ms", "std_ttft_ms"] + [
        f"p{p}_ttft_ms" for p in (90, 95, 99)
    ]
    assert "p99_e2el_ms" in keys
    assert "p99_queue_wait_ms" in keys
    for setting in ("num_prompts", "request_rate", "max_concurrency", "burstiness", "seed"):
        assert setting not in keys


def test_percentiles_sort_by_value_and_a_vllm_summary_gives_its_own_keys() -> None:
    vllm = {
        "request_throughput": 3.0,
        "mean_ttft_ms": 10.0,
        "p99.9_ttft_ms": 30.0,
        "p99_ttft_ms": 20.0,
        "p5_ttft_ms": 5.0,
        "ttfts": [0.01],
    }
    assert figure_keys(vllm) == [
        "request_throughput",
        "mean_ttft_ms",
        "p5_ttft_ms",
        "p99_ttft_ms",
        "p99.9_ttft_ms",
    ]


def test_samples_keep_numbers_only() -> None:
    assert samples([1, 2.5, None, True, "x"]) == [1.0, 2.5]


def test_the_document_keeps_every_run_and_gives_each_figure_its_interval() -> None:
    runs = three_runs()
    document = combine(runs)
    jsonschema.validate(document, REPEAT_SCHEMA)
    assert document["schema"] == REPEAT_SCHEMA_ID
    assert document["repeat"] == 3
    assert document["confidence"] == CONFIDENCE
    assert document["runs"] == runs
    assert document["client_saturated_runs"] == [2]
    completed = document["figures"]["completed"]
    assert completed["values"] == [38, 30, 19]
    interval = mean_interval([38.0, 30.0, 19.0])
    assert completed["mean"] == interval.mean
    assert completed["half_width"] == interval.half_width
    assert (completed["low"], completed["high"]) == (interval.low, interval.high)
    assert completed["n"] == 3
    assert set(document["figures"]) == set(figure_keys(runs[0]))


def test_a_figure_null_in_some_runs_counts_the_others_and_in_all_is_null() -> None:
    runs = three_runs()
    runs[1] = {**runs[1], "mean_ttft_ms": None}
    document = combine(runs)
    ttft = document["figures"]["mean_ttft_ms"]
    assert ttft["n"] == 2
    assert ttft["values"][1] is None
    assert ttft["mean"] == pytest.approx((runs[0]["mean_ttft_ms"] + runs[2]["mean_ttft_ms"]) / 2)
    goodput = document["figures"]["request_goodput"]  # no SLO given: null in every run
    assert goodput == {
        "n": 0,
        "mean": None,
        "std": None,
        "half_width": None,
        "low": None,
        "high": None,
        "values": [None, None, None],
    }
    jsonschema.validate(document, REPEAT_SCHEMA)


def test_the_schema_refuses_a_single_run_and_a_malformed_figure() -> None:
    document = combine(three_runs())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**document, "runs": document["runs"][:1]}, REPEAT_SCHEMA)
    bad = {**document, "figures": {"completed": {"mean": 1.0}}}
    with pytest.raises(jsonschema.ValidationError, match="half_width"):
        jsonschema.validate(bad, REPEAT_SCHEMA)


def test_repeats_need_two_runs() -> None:
    with pytest.raises(ConfigurationError, match="at least 2 runs, got 1"):
        combine(three_runs()[:1])
    with pytest.raises(ConfigurationError, match="at least 2 runs, got 1"):
        run_repeat(CONFIG, 1, lambda config: made_up_result())


def test_every_run_gets_the_same_configuration_in_turn() -> None:
    seen: list[BenchConfig] = []
    shown: list[int] = []
    results = [made_up_result(requests=n) for n in (10, 11, 12, 13)]

    def once(config: BenchConfig) -> BenchResult:
        seen.append(config)
        return results[len(seen) - 1]

    repeats = run_repeat(CONFIG, 4, once, on_run=lambda number, result: shown.append(number))
    assert repeats.cut is None
    document = combine(repeats.whole)
    # The same object every time: the same seeds, so the same prompts and schedule.
    assert all(config is CONFIG for config in seen)
    assert len(seen) == 4
    assert shown == [1, 2, 3, 4]
    assert document["runs"] == [result.summary for result in results]
    assert document["figures"]["completed"]["values"] == [8, 9, 10, 11]
    assert combine(run_repeat(CONFIG, 2, lambda config: made_up_result()).whole)["repeat"] == 2


def test_a_stopped_run_ends_the_repeats_and_is_kept_apart() -> None:
    results = [made_up_result(requests=n) for n in (10, 11, 12, 13)]
    ran: list[int] = []

    def once(config: BenchConfig) -> BenchResult:
        ran.append(1)
        return results[len(ran) - 1]

    repeats = run_repeat(CONFIG, 4, once, stopped=lambda result: result is results[2])
    assert len(ran) == 3  # nothing after the stopped run
    assert repeats.whole == [results[0].summary, results[1].summary]
    assert repeats.cut == results[2].summary

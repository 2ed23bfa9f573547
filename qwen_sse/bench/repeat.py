"""Repeated runs of one load (``--repeat``): the document that keeps every run's summary and
gives every figure's mean with its 95% confidence interval across the runs.

Edge layer (bench). It runs nothing itself (running one run is the caller's function,
normally :func:`qwen_sse.bench.benchmark.run`) and prints nothing; the statistics are
:mod:`qwen_sse.bench.stats`'s. The runs are independent samples of the whole benchmark,
so the interval of, say, ``p99_ttft_ms`` says how far that figure moves from run to run,
which is what tells two results apart (the spread of requests within one run does not).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from qwen_sse.bench.benchmark import BenchConfig, BenchResult
from qwen_sse.bench.metrics import METRICS
from qwen_sse.bench.schema import REPEAT_SCHEMA_ID
from qwen_sse.bench.stats import mean_interval
from qwen_sse.errors import ConfigurationError

__all__ = [
    "CONFIDENCE",
    "SCALAR_FIGURES",
    "Repeats",
    "combine",
    "figure_keys",
    "run_repeat",
    "samples",
]

CONFIDENCE = 0.95
"""The confidence of every interval (two-sided, Student t)."""

SCALAR_FIGURES = (
    "completed",
    "failed",
    "duration",
    "total_input_tokens",
    "total_output_tokens",
    "total_cached_tokens",
    "mean_cached_tokens",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "max_output_tokens_per_s",
    "max_concurrent_requests",
    "send_rate",
)
"""The figures of a summary that are one number for the whole run, in the report's order
(a multi-turn run's conversation and per-turn figures stay in each run's summary)."""

_DISTRIBUTIONS = (*METRICS, "schedule_lag", "queue_wait")
_PERCENTILE_KEY = re.compile(r"^p([0-9]+(?:\.[0-9]+)?)_([a-z0-9_]+)_ms$")


def figure_keys(summary: dict[str, Any]) -> list[str]:
    """The keys of ``summary`` that are measured figures (not settings), in the report's
    order: :data:`SCALAR_FIGURES`, then for TTFT, TPOT, ITL, E2EL, schedule lag and queue
    wait their mean, median, std and percentiles (ascending). Only keys present count, so
    a summary of vLLM's ``benchmark_serving`` (same key names) gives its own subset."""
    keys = [key for key in SCALAR_FIGURES if key in summary]
    percentiles: dict[str, list[tuple[float, str]]] = {name: [] for name in _DISTRIBUTIONS}
    for key in summary:
        match = _PERCENTILE_KEY.match(key)
        if match and match.group(2) in percentiles:
            percentiles[match.group(2)].append((float(match.group(1)), key))
    for name in _DISTRIBUTIONS:
        keys += [
            key
            for key in (f"mean_{name}_ms", f"median_{name}_ms", f"std_{name}_ms")
            if key in summary
        ]
        keys += [key for _, key in sorted(percentiles[name])]
    return keys


def samples(values: Sequence[Any]) -> list[float]:
    """The numbers among a figure's per-run ``values`` (a figure over no data is null)."""
    return [
        float(value)
        for value in values
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]


def combine(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The repeat document (:data:`~qwen_sse.bench.schema.REPEAT_SCHEMA`) of runs of one
    load: each figure of the first summary with its per-run ``values`` and, over the runs
    where it is not null, its mean and confidence interval."""
    if len(summaries) < 2:
        raise ConfigurationError(f"repeated runs need at least 2 runs, got {len(summaries)}")
    figures: dict[str, dict[str, Any]] = {}
    for key in figure_keys(summaries[0]):
        values = [summary.get(key) for summary in summaries]
        numbers = samples(values)
        figures[key] = {**_interval(numbers), "values": values}
    return {
        "schema": REPEAT_SCHEMA_ID,
        "repeat": len(summaries),
        "confidence": CONFIDENCE,
        "figures": figures,
        "client_saturated_runs": [
            number
            for number, summary in enumerate(summaries, start=1)
            if summary.get("client_saturated")
        ],
        "runs": list(summaries),
    }


def _interval(numbers: list[float]) -> dict[str, Any]:
    if not numbers:
        return {"n": 0, **dict.fromkeys(("mean", "std", "half_width", "low", "high"))}
    interval = mean_interval(numbers, CONFIDENCE)
    return {
        "n": interval.n,
        "mean": interval.mean,
        "std": interval.std,
        "half_width": interval.half_width,
        "low": interval.low,
        "high": interval.high,
    }


class Repeats(NamedTuple):
    """What :func:`run_repeat` ran: the summaries of the runs that went to their end
    (``whole``) and of the one a stop cut short (``cut``, None when none was)."""

    whole: list[dict[str, Any]]
    cut: dict[str, Any] | None


def run_repeat(
    config: BenchConfig,
    times: int,
    run_once: Callable[[BenchConfig], BenchResult],
    *,
    on_run: Callable[[int, BenchResult], None] | None = None,
    stopped: Callable[[BenchResult], bool] | None = None,
) -> Repeats:
    """Run ``config`` ``times`` times in sequence, the same load each time (same seed: the
    same prompts and arrival schedule). ``on_run`` sees each run's number (from 1) and
    result as it ends; when ``stopped`` says a run was stopped (a signal, or its first
    requests all refused), no run follows and that one is kept apart: a run cut short
    would pull every interval towards its partial figures."""
    if times < 2:
        raise ConfigurationError(f"repeated runs need at least 2 runs, got {times}")
    whole: list[dict[str, Any]] = []
    for number in range(1, times + 1):
        result = run_once(config)
        if on_run is not None:
            on_run(number, result)
        if stopped is not None and stopped(result):
            return Repeats(whole, result.summary)
        whole.append(result.summary)
    return Repeats(whole, None)

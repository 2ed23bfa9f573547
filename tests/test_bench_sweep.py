"""Sweeps: each level's configuration, and where saturation stops them (no I/O here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from qwen_sse.bench.benchmark import BenchConfig, BenchResult
from qwen_sse.bench.plot import sweep_figure
from qwen_sse.bench.schedule import ClosedLoop, OpenLoop
from qwen_sse.bench.sweep import SweepRule, config_at, run_sweep, saturation
from qwen_sse.bench.workload import SyntheticWorkload
from qwen_sse.errors import ConfigurationError
from tests.bench_documents import made_up_result

BASE = BenchConfig(
    shape=ClosedLoop(concurrency=1, ramp_up_s=0.2),
    workload=SyntheticWorkload(input_tokens=16, output_tokens=4),
    requests=10,
)


def summary(throughput: float, *, failed: int = 0, saturated: bool = False) -> dict[str, Any]:
    return {
        "request_throughput": throughput,
        "completed": 100 - failed,
        "failed": failed,
        "client_saturated": saturated,
        "client_saturation_reasons": ["event-loop lag p90 40.0 ms exceeds 10 ms"]
        if saturated
        else [],
    }


def test_levels_set_the_rate_or_the_concurrency() -> None:
    open_base = msgspec.structs.replace(
        BASE, shape=OpenLoop(rate=1, arrivals="gamma", burstiness=0.5, max_concurrency=8)
    )
    shape = config_at(open_base, "rates", 20).shape
    assert shape == OpenLoop(rate=20, arrivals="gamma", burstiness=0.5, max_concurrency=8)
    assert config_at(BASE, "rates", 3).shape == OpenLoop(rate=3)
    assert config_at(BASE, "concurrency", 16).shape == ClosedLoop(concurrency=16, ramp_up_s=0.2)
    assert config_at(BASE, "concurrency", 16).requests == 10
    with pytest.raises(ConfigurationError, match="whole number"):
        config_at(BASE, "concurrency", 1.5)


def test_the_rules_of_saturation() -> None:
    rule = SweepRule()
    assert saturation("rates", 10, summary(9.5), None, rule) is None
    assert "fell short of the offered 10" in (
        saturation("rates", 10, summary(8.0), None, rule) or ""
    )
    assert saturation("concurrency", 8, summary(20.0), summary(10.0), rule) is None
    gained_little = saturation("concurrency", 16, summary(21.0), summary(20.0), rule)
    assert gained_little is not None
    assert "gained less than 10%" in gained_little
    assert "6 of 100 requests failed" in (
        saturation("rates", 1, summary(1.0, failed=6), None, rule) or ""
    )
    client = saturation("rates", 1, summary(1.0, saturated=True), None, rule)
    assert client is not None
    assert client.startswith("the client saturated: event-loop lag")


def fake_runs(
    throughputs: dict[float, float],
) -> tuple[list[BenchConfig], Callable[[BenchConfig], BenchResult]]:
    seen: list[BenchConfig] = []

    def run_level(config: BenchConfig) -> BenchResult:
        seen.append(config)
        shape = config.shape
        level = shape.rate if isinstance(shape, OpenLoop) else shape.concurrency
        return BenchResult(summary=summary(throughputs[level]), records=[], loads=[])

    return seen, run_level


def test_a_sweep_climbs_until_the_endpoint_saturates() -> None:
    seen, run_level = fake_runs({1: 1.0, 2: 2.0, 4: 3.0, 8: 3.0})
    levels: list[float] = []
    document = run_sweep(
        BASE, "rates", [8, 1, 4, 2], run_level, on_level=lambda v, _: levels.append(v)
    )
    assert levels == [1, 2, 4]
    assert [config.shape.rate for config in seen] == [1, 2, 4]  # type: ignore[union-attr]
    assert document["levels"] == [1, 2, 4]
    assert document["saturated_at"] == 4
    assert "fell short" in document["stop_reason"]
    assert len(document["runs"]) == 3


def test_a_sweep_that_never_saturates_runs_every_level() -> None:
    _, run_level = fake_runs({1: 10.0, 2: 20.0, 4: 40.0})
    document = run_sweep(BASE, "concurrency", [1, 2, 4], run_level)
    assert document["levels"] == [1, 2, 4]
    assert document["saturated_at"] is None
    assert document["stop_reason"] is None


def test_a_sweep_needs_levels() -> None:
    _, run_level = fake_runs({})
    with pytest.raises(ConfigurationError, match="at least one level"):
        run_sweep(BASE, "rates", [], run_level)


@pytest.mark.parametrize(("stop_during", "kept"), [(1, [1, 2]), (0, [1])])
def test_a_stopped_sweep_keeps_the_levels_run_so_far(stop_during: int, kept: list[int]) -> None:
    seen, run_level = fake_runs({1: 10.0, 2: 20.0, 4: 40.0, 8: 80.0})
    reason: list[str] = []

    def level(config: BenchConfig) -> BenchResult:
        if len(seen) == stop_during:
            reason.append("interrupted by SIGINT")  # a signal came while this level ran
        return run_level(config)

    document = run_sweep(
        BASE, "concurrency", [1, 2, 4, 8], level, stopped=lambda: reason[0] if reason else None
    )
    assert document["levels"] == kept
    assert len(document["runs"]) == len(kept)
    assert document["saturated_at"] is None
    assert document["stop_reason"] == "interrupted by SIGINT"


def test_a_sweep_stopped_before_it_began_runs_no_level() -> None:
    seen, run_level = fake_runs({1: 10.0})
    document = run_sweep(BASE, "concurrency", [1], run_level, stopped=lambda: "interrupted")
    assert seen == []
    assert (document["levels"], document["stop_reason"]) == ([], "interrupted")


def test_the_sweep_document_is_what_its_chart_draws() -> None:
    # Each level's full summary is in the document: its chart needs nothing else.
    seen: list[float] = []

    def run_level(config: BenchConfig) -> BenchResult:
        shape = config.shape
        level = shape.concurrency if isinstance(shape, ClosedLoop) else shape.rate
        seen.append(level)
        result = made_up_result()
        summary = {**result.summary, "request_throughput": 10.0 * level}
        summary["output_throughput"] = 100.0 * level
        return BenchResult(summary=summary, records=result.records, loads=result.loads)

    document = run_sweep(BASE, "concurrency", [1, 2, 4], run_level)
    figure = sweep_figure(document)
    ttft: Any = next(a for a in figure.axes if a.get_title().startswith("Time to first token"))
    assert list(ttft.lines[0].get_xdata()) == [100.0, 200.0, 400.0]
    assert [text.get_text() for text in ttft.texts] == ["c=1", "c=2", "c=4"]
    assert seen == [1, 2, 4]

"""Whole benchmarks against the emulator (in a child process) on loopback.

These are the issue's acceptance checks: measured TTFT and ITL medians within 5% of what
the emulator really did (its record of each piece's write) at concurrency 1 to 256,
unless the verdict on the client says it limited the figures; a deliberately blocked
event loop reported as client saturation; an open loop that sends at its configured
rate over 1,000 requests, unless the client says it fell behind; and ``workers=2``
giving the one-worker schema with percentiles computed from the merged raw records.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import msgspec
import pytest

from qwen_sse.bench.benchmark import BenchConfig, plan_shards, run, run_async
from qwen_sse.bench.live import LiveProgress
from qwen_sse.bench.metrics import percentile_key
from qwen_sse.bench.mock import MOCK_API_KEY, MockServer, served_medians_s
from qwen_sse.bench.report import format_summary
from qwen_sse.bench.runner import Target
from qwen_sse.bench.schedule import ClosedLoop, OpenLoop, arrival_times
from qwen_sse.bench.schema import SUMMARY_SCHEMA
from qwen_sse.bench.workload import SyntheticWorkload
from qwen_sse.emulator import Emulator, EmulatorConfig
from qwen_sse.errors import ConfigurationError
from qwen_sse.tokens import count_tokens
from tests.hftokenizer import write_tokenizer
from tests.rawserver import frame, http_response, raw_server, sse_answer, sse_body


def mock(ttft_s: float, itl_s: float) -> Iterator[Target]:
    with MockServer(EmulatorConfig(ttft_s=ttft_s, itl_s=itl_s, jitter_s=0.0)) as server:
        yield Target(base_url=server.base_url, model="qwen-plus", api_key=MOCK_API_KEY)


@pytest.fixture(scope="module")
def fast() -> Iterator[Target]:
    yield from mock(0.1, 0.02)


@pytest.fixture(scope="module")
def slow() -> Iterator[Target]:
    yield from mock(0.4, 0.04)


def workload(output_tokens: int) -> SyntheticWorkload:
    return SyntheticWorkload(input_tokens=32, output_tokens=output_tokens)


# The law the load generator is held to, whatever the machine's speed or load: its
# medians match what the server really did (the emulator's record of when it wrote each
# piece) within 5%, or its report says that the client limited the figures. How close a
# busy server comes to its configured delays is the server's business, not the client's:
# benchmarks/bench_accuracy.py measures that, at higher concurrency. At 512 streams the
# law is still borderline on two cores: with the emulator writing from one timer its own
# delay before it reads a request is +0.3% to +0.5% of the TTFT on an idle machine, but one
# run of the whole suite measured +5.2% against the served TTFT with no verdict against the
# client, so the test stops at 256 and benchmarks/bench_capacity.py reports 512 and above.
@pytest.mark.parametrize(
    ("concurrency", "ttft_s", "itl_s", "requests"),
    [(1, 0.1, 0.02, 6), (64, 0.2, 0.04, 128), (256, 0.4, 0.04, 256)],
)
def test_medians_match_what_the_server_did_unless_the_client_limited_them(
    concurrency: int, ttft_s: float, itl_s: float, requests: int
) -> None:
    config = BenchConfig(
        shape=ClosedLoop(concurrency=concurrency, ramp_up_s=0.5 if concurrency > 1 else 0),
        workload=workload(10),
        requests=requests,
        # One request per slot first: connections open, then the measured ones follow.
        warmup=concurrency,
    )
    emulator = EmulatorConfig(ttft_s=ttft_s, itl_s=itl_s, jitter_s=0.0)
    with MockServer(emulator, timings=True) as server:
        target = Target(base_url=server.base_url, model="qwen-plus", api_key=MOCK_API_KEY)
        result = run(config, target)
        served = {timing.request_id: timing for timing in server.timings()}
    summary = result.summary
    assert summary["completed"] == requests, summary["errors"]
    assert summary["max_concurrent_requests"] <= concurrency
    # Every measured request is one the server answered, with every piece it wrote.
    measured = [served[record.request_id] for record in result.records]
    for record, timing in zip(result.records, measured, strict=True):
        assert len(timing.text_written_at_s) == 10
        # One clock for both processes, whatever the load: the client sent the request
        # before the server took it, and read the first piece after it was written.
        assert record.ttft_s is not None
        assert record.ttft_s >= timing.text_written_at_s[0] - timing.arrived_at_s
        # The server never wrote a token before its time on the stream's schedule (one
        # token a piece here; a nanosecond for the rounding of the sums).
        for index, at in enumerate(timing.text_written_at_s):
            assert at - timing.arrived_at_s >= ttft_s + index * itl_s - 1e-9
    served_ttft_s, served_itl_s = served_medians_s(measured)
    assert served_ttft_s is not None
    assert served_itl_s is not None
    assert served_ttft_s >= ttft_s
    report = format_summary(summary)
    if summary["client_saturated"]:
        assert summary["client_saturation_reasons"]
        assert "Client limited the figures:              YES" in report
    else:
        assert summary["median_ttft_ms"] == pytest.approx(served_ttft_s * 1000, rel=0.05)
        assert summary["median_itl_ms"] == pytest.approx(served_itl_s * 1000, rel=0.05)
        assert "Client limited the figures:              no" in report


async def test_a_blocked_event_loop_is_reported_as_client_saturation(fast: Target) -> None:
    stop = asyncio.Event()

    async def hog() -> None:
        while not stop.is_set():
            # Deliberately block the loop the benchmark measures on.
            time.sleep(0.03)  # noqa: ASYNC251 - the blocking is the point
            await asyncio.sleep(0.01)

    hogging = asyncio.create_task(hog())
    try:
        config = BenchConfig(shape=ClosedLoop(concurrency=4), workload=workload(5), requests=12)
        summary = (await run_async(config, fast)).summary
    finally:
        stop.set()
        await hogging
    assert summary["client_saturated"] is True
    assert any("event-loop lag" in reason for reason in summary["client_saturation_reasons"])
    assert summary["client"]["loop_lag_ms"]["p90"] > 10
    report = format_summary(summary)
    assert report.startswith("!" * 50)
    assert "CLIENT SATURATED" in report
    assert "Client limited the figures:              YES" in report


def test_an_open_loop_sends_at_its_configured_rate(fast: Target) -> None:
    rate = 250.0
    config = BenchConfig(shape=OpenLoop(rate=rate), workload=workload(1), requests=1000, seed=11)
    (plan,) = plan_shards(config)
    assert plan.arrivals_s is not None
    # The schedule itself has exactly the configured rate.
    assert (len(plan.arrivals_s) - 1) / plan.arrivals_s[-1] == pytest.approx(rate, rel=1e-12)
    result = run(config, target=fast)
    summary = result.summary
    assert summary["completed"] == 1000, summary["errors"]
    assert summary["request_rate"] == rate
    # What the client achieved: within 5% of the rate over the 1,000 requests, unless it
    # says that it could not keep up (a busy machine may leave it no time to).
    if summary["client_saturated"]:
        assert "Client limited the figures:              YES" in format_summary(summary)
    else:
        assert summary["send_rate"] == pytest.approx(rate, rel=0.05)
    for record in result.records:
        assert record.scheduled_at_s == plan.arrivals_s[record.index]
        assert record.schedule_lag_s >= 0
    assert summary[percentile_key(99, "schedule_lag")] is not None


def test_two_workers_give_the_same_schema_and_merged_percentiles(fast: Target) -> None:
    config = BenchConfig(
        shape=ClosedLoop(concurrency=4, ramp_up_s=0.1),
        workload=workload(6),
        requests=24,
        warmup=4,
        percentiles=[50, 90, 99],
    )
    one = run(config, fast)
    two = run(msgspec.structs.replace(config, workers=2), fast)
    assert set(two.summary) == set(one.summary)
    jsonschema.validate(one.summary, SUMMARY_SCHEMA)
    jsonschema.validate(two.summary, SUMMARY_SCHEMA)
    assert two.summary["load"]["workers"] == 2
    assert {record.worker for record in two.records} == {0, 1}
    assert sorted(record.index for record in two.records) == list(range(4, 28))
    assert [w["worker"] for w in two.summary["client"]["workers"]] == [0, 1]
    # Every percentile is the percentile of the merged raw records, recomputed here
    # independently (statistics' inclusive method is numpy's linear interpolation).
    ok = [record for record in two.records if record.ok]
    pools = {
        "ttft": [r.ttft_s for r in ok if r.ttft_s is not None],
        "itl": [gap for r in ok for gap in r.itl_s],
        "e2el": [r.e2e_s for r in ok],
    }
    for metric, values in pools.items():
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        for p in (50, 90, 99):
            assert two.summary[percentile_key(p, metric)] == pytest.approx(cuts[p - 1] * 1000)
        assert two.summary[f"median_{metric}_ms"] == pytest.approx(statistics.median(values) * 1000)


def test_plans_split_slots_requests_and_one_schedule() -> None:
    closed = BenchConfig(
        shape=ClosedLoop(concurrency=7), workload=workload(1), requests=10, warmup=2, workers=3
    )
    plans = plan_shards(closed)
    assert [plan.slots for plan in plans] == [[0, 3, 6], [1, 4], [2, 5]]
    assert [plan.shape.concurrency for plan in plans] == [3, 2, 2]  # type: ignore[union-attr]
    assert sorted(i for plan in plans for i in plan.indices or []) == list(range(12))
    assert all(plan.total_slots == 7 for plan in plans)
    opened = BenchConfig(
        shape=OpenLoop(rate=5.0, max_concurrency=5), workload=workload(1), requests=9, workers=2
    )
    first, second = plan_shards(opened)
    assert first.indices == [0, 2, 4, 6, 8]
    merged = sorted([*(first.arrivals_s or []), *(second.arrivals_s or [])])
    assert merged == arrival_times(9, 5.0, seed=0)
    assert (first.shape.max_concurrency, second.shape.max_concurrency) == (3, 2)  # type: ignore[union-attr]


def test_a_duration_bounds_an_open_loop() -> None:
    config = BenchConfig(shape=OpenLoop(rate=10.0), workload=workload(1), duration_s=3.0)
    assert config.planned_requests() == 30
    both = BenchConfig(shape=OpenLoop(rate=10.0), workload=workload(1), duration_s=3.0, requests=5)
    assert both.planned_requests() == 5
    closed = BenchConfig(shape=ClosedLoop(concurrency=2), workload=workload(1), duration_s=1.0)
    assert closed.planned_requests() is None
    (plan,) = plan_shards(closed)
    assert plan.indices is None
    assert plan.duration_s == 1.0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "number of requests or a duration"),
        ({"requests": 0}, "at least 1"),
        ({"requests": 1, "duration_s": -1.0}, "duration"),
        ({"requests": 1, "warmup": -1}, "warm-up"),
        ({"requests": 1, "workers": 0}, "workers"),
        ({"requests": 1, "percentiles": [101.0]}, "percentiles"),
        ({"requests": 1, "workers": 3}, "cannot share 2"),
        ({"duration_s": 1.0, "shape": OpenLoop(rate=math.inf)}, "infinite rate"),
    ],
)
def test_invalid_configurations_are_refused(fields: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"shape": ClosedLoop(concurrency=2), "workload": workload(1)}
    values.update(fields)
    with pytest.raises(ConfigurationError, match=message):
        BenchConfig(**values)  # type: ignore[arg-type]


async def test_run_async_runs_one_worker_only(fast: Target) -> None:
    config = BenchConfig(
        shape=ClosedLoop(concurrency=2), workload=workload(1), requests=1, workers=2
    )
    with pytest.raises(ConfigurationError, match="one worker"):
        await run_async(config, fast)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_run_draws_its_progress_on_a_terminal(fast: Target) -> None:
    terminal = Terminal()
    config = BenchConfig(shape=ClosedLoop(concurrency=2), workload=workload(20), requests=4)
    live = LiveProgress(terminal, planned=4, interval_s=0.05)
    run(config, fast, live=live)
    drawn = terminal.getvalue()
    # Redrawn while requests were still running, then finished on a line of its own.
    assert drawn.count("\r\x1b[2K") >= 3
    assert "4/4 done" in drawn.splitlines()[-1]
    assert drawn.endswith("\n")


def cached_answer(cached_tokens: int | None) -> bytes:
    """A whole answer whose usage reports ``cached_tokens`` (none when None), as DashScope
    reports hits of its context cache."""
    usage: dict[str, object] = {"prompt_tokens": 300, "completion_tokens": 2, "total_tokens": 302}
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    events = (
        frame([{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
        frame([{"index": 0, "delta": {"content": "ok then"}, "finish_reason": "stop"}]),
        frame([], usage=usage),
    )
    return http_response(sse_body(events))


async def test_a_shared_prefix_run_reports_the_servers_cache_hits() -> None:
    # The first request fills the cache, the next two hit the 256-token prefix, the last
    # server answer says nothing of a cache.
    answers = [cached_answer(0), cached_answer(256), cached_answer(256), cached_answer(None)]

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(answers[n - 1])
        await writer.drain()

    workload = SyntheticWorkload(input_tokens=300, output_tokens=2, prefix_tokens=260)
    async with raw_server(handler) as server:
        target = Target(base_url=server.url, model="qwen-plus", api_key="sk-test")
        config = BenchConfig(shape=ClosedLoop(concurrency=1), workload=workload, requests=4)
        result = await run_async(config, target)
        sent = [request.json()["messages"] for request in server.requests]
    summary = result.summary
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    assert [record.cached_tokens for record in result.records] == [0, 256, 256, None]
    assert summary["total_cached_tokens"] == 512
    assert summary["mean_cached_tokens"] == pytest.approx(512 / 3)
    assert summary["requests_with_cache_report"] == 3
    assert summary["workload"]["prefix_tokens"] == 260
    # Every request opened with the same system prompt.
    assert len({json.dumps(messages[0]) for messages in sent}) == 1
    table = format_summary(summary)
    assert re.search(r"\nCached input tokens \(server\): +512\n", table)
    assert re.search(r"\nWorkload: +synthetic, 300 tokens in \(260 shared\), 2 out\n", table)


async def test_a_shared_prefix_run_against_the_emulator_reports_its_cache_hits() -> None:
    # Two groups of prompts, each opening with its own 300-token system prompt: the first
    # request of each group fills the emulator's context cache, the later ones hit it for
    # the system message as ChatML renders it (<|im_start|>, "system\n" and the prompt,
    # <|im_end|>, "\n"); compatible mode says nothing of a cache on a miss.
    workload = SyntheticWorkload(
        input_tokens=320, output_tokens=2, prefix_tokens=300, prefix_groups=2, seed=3
    )
    config = BenchConfig(shape=ClosedLoop(concurrency=1), workload=workload, requests=6)
    async with Emulator(EmulatorConfig(api_key=None, ttft_s=0, itl_s=0)) as emulator:
        target = Target(base_url=emulator.base_url, model="qwen-plus", api_key="sk-test")
        result = await run_async(config, target)
    system = [workload.request(group).messages[0]["content"] for group in (0, 1)]
    held = [2 + count_tokens(f"system\n{text}") + count_tokens("\n") for text in system]
    assert [record.cached_tokens for record in result.records] == [None, None, *held, *held]
    summary = result.summary
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    assert summary["total_cached_tokens"] == 2 * sum(held)
    assert summary["requests_with_cache_report"] == 4
    assert re.search(
        rf"\nCached input tokens \(server\): +{2 * sum(held)}\n", format_summary(summary)
    )


async def test_a_conversation_run_summarises_turns_and_conversations(fast: Target) -> None:
    workload = SyntheticWorkload(input_tokens=24, output_tokens=3, turns=3)
    config = BenchConfig(shape=ClosedLoop(concurrency=2), workload=workload, requests=4, warmup=1)
    result = await run_async(config, fast)
    summary = result.summary
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    assert summary["num_prompts"] == 4
    assert summary["completed"] == 12
    assert summary["conversations"]["completed"] == 4
    assert [turn["completed"] for turn in summary["turns"]] == [4, 4, 4]
    prompts = [turn["mean_prompt_tokens"] for turn in summary["turns"]]
    assert prompts[0] == 24
    assert prompts[0] < prompts[1] < prompts[2]
    table = format_summary(summary)
    assert re.search(r"\nCompleted / failed / unfinished: +4 / 0 / 0\n", table)
    assert re.search(r"\nWorkload: +3-turn conversations, 24 tokens in, 3 out\n", table)
    assert re.search(r"\n +3 +4 +0 +[0-9]+ ", table)  # the third turn's line


async def test_without_usage_answers_are_counted_with_the_workloads_tokenizer(
    tmp_path: Path,
) -> None:
    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(sse_answer("the quick brown fox, unbelievably"))
        await writer.drain()

    tokenizer = str(write_tokenizer(tmp_path))
    workload = SyntheticWorkload(input_tokens=6, output_tokens=8, tokenizer=tokenizer)
    async with raw_server(handler) as server:
        target = Target(base_url=server.url, model="my-llama", api_key="sk-test")
        config = BenchConfig(shape=ClosedLoop(concurrency=1), workload=workload, requests=2)
        result = await run_async(config, target)
    # Four words of the test vocabulary, a comma and an unknown word: 6 tokens (Qwen: 7).
    assert [(r.output_tokens, r.output_tokens_source) for r in result.records] == [(6, "local")] * 2
    assert [(r.prompt_tokens, r.prompt_tokens_source) for r in result.records] == [(6, "local")] * 2
    assert result.summary["tokenizer_id"] == tokenizer

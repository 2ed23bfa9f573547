"""One shard against the emulator on loopback: closed and open loops, warm-up, failures,
conversations turn after turn."""

from __future__ import annotations

import asyncio
import itertools
import resource
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from qwen_sse import errors
from qwen_sse.bench import runner
from qwen_sse.bench.metrics import RequestRecord
from qwen_sse.bench.runner import (
    FAIL_FAST_REQUESTS,
    FailFast,
    ShardPlan,
    ShardProgress,
    Target,
    connections_needed,
    prepare,
    raise_open_files_limit,
    run_shard,
)
from qwen_sse.bench.schedule import ClosedLoop, OpenLoop
from qwen_sse.bench.tokenizer import TokenCounter, counter
from qwen_sse.bench.workload import FileWorkload, PromptEntry, SyntheticWorkload
from qwen_sse.emulator import Emulator, EmulatorConfig, Fault, emulated_answer
from tests.hftokenizer import write_tokenizer

WORKLOAD = SyntheticWorkload(input_tokens=20, output_tokens=3)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(api_key=None, ttft_s=0.02, itl_s=0.005)) as server:
        yield server


def target(server: Emulator) -> Target:
    return Target(base_url=server.base_url, model="qwen-plus", api_key="sk-any")


async def test_a_closed_loop_records_the_measured_requests(emulator: Emulator) -> None:
    plan = ShardPlan(
        shape=ClosedLoop(concurrency=3, ramp_up_s=0.03),
        slots=[0, 1, 2],
        total_slots=3,
        indices=list(range(9)),
        warmup=3,
        workload=WORKLOAD,
        params={"temperature": 0.5},
    )
    seen: list[RequestRecord] = []
    result = await run_shard(plan, target(emulator), on_record=seen.append)
    assert sorted(r.index for r in result.records) == list(range(3, 9))
    assert seen == result.records
    assert len(emulator.requests) == 9
    body = emulator.requests[-1].body
    assert body["temperature"] == 0.5
    assert body["max_tokens"] == 3
    for record in result.records:
        assert record.ok
        assert record.ttft_s is not None
        assert record.ttft_s >= 0.02
        assert len(record.itl_s) == 2
        assert record.output_tokens_source == "usage"
        assert record.prompt_tokens == 20
        assert record.sent_at_s >= record.scheduled_at_s
    assert result.load is not None
    assert result.load.lag_s
    # The run raised the soft limit to the hard one, and reports the limit in force.
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert result.load.open_files_limit == (None if soft == resource.RLIM_INFINITY else soft)


async def test_a_closed_loop_with_a_duration_stops_sending(emulator: Emulator) -> None:
    duration_s = 0.3
    plan = ShardPlan(
        shape=ClosedLoop(concurrency=2),
        slots=[0, 1],
        total_slots=2,
        indices=None,
        duration_s=duration_s,
        workload=WORKLOAD,
    )
    result = await run_shard(plan, target(emulator))
    assert result.records
    # However late the loop runs, nothing is sent once the duration is over.
    assert max(r.sent_at_s for r in result.records) < duration_s
    # Indices count from the worker by the number of workers: 0, 1, 2, ...
    assert sorted(r.index for r in result.records) == list(range(len(result.records)))


async def test_an_open_loop_keeps_its_schedule_and_queues_under_a_cap(emulator: Emulator) -> None:
    arrivals = [0.0, 0.0, 0.0, 0.05]
    plan = ShardPlan(
        shape=OpenLoop(rate=80.0, max_concurrency=1),
        indices=[0, 1, 2, 3],
        arrivals_s=arrivals,
        workload=WORKLOAD,
    )
    result = await run_shard(plan, target(emulator))
    records = sorted(result.records, key=lambda r: r.index)
    assert [r.scheduled_at_s for r in records] == pytest.approx(arrivals)
    # One at a time: each was sent only once the one before it had ended, so the second
    # and third waited for the first (and the second); the first did not wait.
    for before, after in itertools.pairwise(records):
        assert after.sent_at_s >= before.end_at_s
    assert records[0].queue_wait_s < records[1].queue_wait_s < records[2].queue_wait_s
    for record in records:
        assert record.schedule_lag_s >= 0
        assert record.sent_at_s == pytest.approx(
            record.scheduled_at_s + record.schedule_lag_s + record.queue_wait_s, abs=1e-3
        )


async def test_failures_are_recorded_by_type(emulator: Emulator) -> None:
    emulator.schedule(Fault(status=429), Fault(drop_after_events=2))
    plan = ShardPlan(
        shape=ClosedLoop(concurrency=1),
        slots=[0],
        indices=[0, 1, 2],
        workload=WORKLOAD,
    )
    result = await run_shard(plan, target(emulator))
    first, second, third = sorted(result.records, key=lambda r: r.index)
    assert (first.ok, first.error_type, first.status) == (False, "RateLimitError", 429)
    assert second.ok is False
    assert second.error_type is not None
    assert issubclass(getattr(errors, second.error_type), errors.QwenSSEError)
    assert second.ttft_s is not None  # what arrived before the drop is kept
    assert third.ok


async def test_an_unreachable_endpoint_fails_every_request_quickly() -> None:
    plan = ShardPlan(shape=ClosedLoop(concurrency=1), slots=[0], indices=[0, 1], workload=WORKLOAD)
    unreachable = Target(base_url="http://127.0.0.1:9/v1", model="qwen-plus", api_key="k")
    result = await asyncio.wait_for(run_shard(plan, unreachable), timeout=30)
    assert [r.error_type for r in result.records] == ["TransportError", "TransportError"]


def test_prepare_builds_the_plans_requests() -> None:
    plan = ShardPlan(shape=ClosedLoop(concurrency=1), slots=[0], indices=[4, 6], workload=WORKLOAD)
    specs = prepare(plan)
    assert sorted(specs) == [4, 6]
    assert specs[6].prompt_tokens == 20
    timed = ShardPlan(
        shape=ClosedLoop(concurrency=1), slots=[0], indices=None, duration_s=1, workload=WORKLOAD
    )
    assert prepare(timed) == {}


def test_prepare_loads_the_workloads_tokenizer_before_the_clock_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(write_tokenizer(tmp_path))
    loaded: list[str | None] = []

    def watched(tokenizer: str | None) -> TokenCounter:
        loaded.append(tokenizer)
        return counter(tokenizer)

    monkeypatch.setattr(runner, "counter", watched)
    entry = PromptEntry(messages=[{"role": "user", "content": "the fox"}], prompt_tokens=2)
    workload = FileWorkload(entries=[entry], tokenizer=path)
    timed = ShardPlan(
        shape=ClosedLoop(concurrency=1), slots=[0], indices=None, duration_s=1, workload=workload
    )
    prepare(timed)
    assert loaded == [path]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"shape": ClosedLoop(concurrency=2), "slots": [0], "indices": [0]}, "needs as many slots"),
        ({"shape": ClosedLoop(concurrency=1), "slots": [3], "indices": [0]}, "below total_slots"),
        ({"shape": ClosedLoop(concurrency=1), "slots": [0], "indices": None}, "needs a duration"),
        ({"shape": OpenLoop(rate=1), "indices": [0]}, "indices and their arrival times"),
        ({"shape": OpenLoop(rate=1), "indices": [0], "arrivals_s": []}, "one arrival time"),
    ],
)
def test_inconsistent_plans_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShardPlan(workload=WORKLOAD, **fields)


def test_the_pool_never_holds_fewer_connections_than_requests_in_flight() -> None:
    assert connections_needed(ClosedLoop(concurrency=5), 5) == 5
    assert connections_needed(OpenLoop(rate=1, max_concurrency=7), 0) == 7
    assert connections_needed(OpenLoop(rate=1), 0) == 0  # no limit


def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = raise_open_files_limit()
    assert limit is not None
    assert limit >= soft
    if hard != resource.RLIM_INFINITY:
        assert limit == hard


CONVERSATIONS = SyntheticWorkload(input_tokens=20, output_tokens=[2, 4], turns=3, seed=4)


def conversation_bodies(emulator: Emulator) -> dict[str, list[dict[str, Any]]]:
    """The bodies the emulator received, by the conversation's first user message."""
    bodies: dict[str, list[dict[str, Any]]] = {}
    for request in emulator.requests:
        first = next(m for m in request.body["messages"] if m["role"] == "user")
        bodies.setdefault(first["content"], []).append(request.body)
    return bodies


async def test_a_conversation_sends_each_turn_with_the_servers_answers(emulator: Emulator) -> None:
    plan = ShardPlan(
        shape=ClosedLoop(concurrency=2),
        slots=[0, 1],
        total_slots=2,
        indices=[0, 1, 2, 3],
        warmup=1,
        workload=CONVERSATIONS,
    )
    result = await run_shard(plan, target(emulator))
    # Every conversation was sent whole (the warm-up one too); only measured ones count.
    assert len(emulator.requests) == 12
    assert sorted((r.index, r.turn) for r in result.records) == [
        (index, turn) for index in (1, 2, 3) for turn in (1, 2, 3)
    ]
    assert all(r.ok and r.turns == 3 for r in result.records)
    for bodies in conversation_bodies(emulator).values():
        assert len(bodies) == 3
        for before, after in itertools.pairwise(bodies):
            answer = emulated_answer(before, answer_tokens=emulator.config.answer_tokens)
            # The next turn holds everything before it, the server's actual answer, then
            # the next user message.
            assert after["messages"][: len(before["messages"])] == before["messages"]
            assert after["messages"][len(before["messages"])] == {
                "role": "assistant",
                "content": answer.content,
            }
            assert after["messages"][-1]["role"] == "user"
            assert len(after["messages"]) == len(before["messages"]) + 2
    by_conversation: dict[int, list[RequestRecord]] = {}
    for record in sorted(result.records, key=lambda r: (r.index, r.turn or 0)):
        by_conversation.setdefault(record.index, []).append(record)
    for turns in by_conversation.values():
        # A turn goes once the previous one ended, and its prompt holds the previous one's.
        for earlier, later in itertools.pairwise(turns):
            assert later.sent_at_s >= earlier.end_at_s
            assert later.scheduled_at_s >= earlier.end_at_s
            assert later.prompt_tokens > earlier.prompt_tokens + earlier.output_tokens


async def test_an_open_loop_runs_each_arrival_as_a_conversation(emulator: Emulator) -> None:
    plan = ShardPlan(
        shape=OpenLoop(rate=50.0, max_concurrency=2),
        indices=[0, 1, 2],
        arrivals_s=[0.0, 0.01, 0.02],
        workload=CONVERSATIONS,
    )
    result = await run_shard(plan, target(emulator))
    assert len(result.records) == 9
    assert {(r.index, r.turn) for r in result.records} == {
        (index, turn) for index in range(3) for turn in (1, 2, 3)
    }
    # Later turns are scheduled when the turn before them ended, not by the arrivals.
    later = [r for r in result.records if r.turn != 1]
    assert all(r.scheduled_at_s > 0.02 for r in later)


async def test_a_failed_turn_ends_its_conversation(emulator: Emulator) -> None:
    # The first conversation's second turn is refused; the second conversation is whole.
    emulator.schedule(Fault(), Fault(status=500))
    plan = ShardPlan(
        shape=ClosedLoop(concurrency=1), slots=[0], indices=[0, 1], workload=CONVERSATIONS
    )
    result = await run_shard(plan, target(emulator))
    records = sorted(result.records, key=lambda r: (r.index, r.turn or 0))
    assert [(r.index, r.turn, r.ok) for r in records] == [
        (0, 1, True),
        (0, 2, False),
        (1, 1, True),
        (1, 2, True),
        (1, 3, True),
    ]
    assert len(emulator.requests) == 5


async def test_a_duration_sends_no_turn_after_its_end(emulator: Emulator) -> None:
    duration_s = 0.3
    plan = ShardPlan(
        shape=ClosedLoop(concurrency=1),
        slots=[0],
        indices=None,
        duration_s=duration_s,
        workload=SyntheticWorkload(input_tokens=20, output_tokens=2, turns=50),
    )
    result = await run_shard(plan, target(emulator))
    assert result.records
    assert max(r.sent_at_s for r in result.records) < duration_s
    # One conversation of 50 turns (1.5 s at least) was cut short, not finished.
    assert {r.index for r in result.records} == {0}
    assert len(result.records) < 50


SLOW_WORKLOAD = SyntheticWorkload(input_tokens=20, output_tokens=30)


@pytest.fixture
async def slow_emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(api_key=None, ttft_s=0.01, itl_s=1.0)) as server:
        yield server


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (a generous bound, never a measure)."""
    async with asyncio.timeout(60):
        while not condition():  # noqa: ASYNC110 (a shard's progress has no event to await)
            await asyncio.sleep(0.005)


async def test_a_stop_cuts_off_what_is_in_flight_once_its_grace_is_over(
    slow_emulator: Emulator,
) -> None:
    plan = ShardPlan(
        shape=ClosedLoop(concurrency=3),
        slots=[0, 1, 2],
        total_slots=3,
        indices=list(range(30)),
        workload=SLOW_WORKLOAD,
    )
    progress = ShardProgress()
    stop = asyncio.Event()
    seen: list[RequestRecord] = []
    run = asyncio.create_task(
        run_shard(
            plan,
            target(slow_emulator),
            on_record=seen.append,
            progress=progress,
            stop=stop,
            grace_s=0.05,
        )
    )
    await until(lambda: progress.streaming == 3)
    assert (progress.sent, progress.in_flight) == (3, 3)
    assert len(progress.take_first_tokens()) == 3
    assert progress.take_first_tokens() == []
    stop.set()
    result = await asyncio.wait_for(run, timeout=60)
    assert len(result.records) == 3
    assert seen == result.records  # the callback saw the cancelled records too
    for record in result.records:
        assert record.cancelled
        assert not record.ok
        assert record.error_type == "CancelledError"
        assert record.ttft_s is not None  # what had arrived is kept
    assert (progress.in_flight, progress.streaming) == (0, 0)
    assert len(slow_emulator.requests) == 3  # nothing more was sent
    assert result.stop_reason is None  # asked to stop, not by itself
    assert result.load is not None


async def test_after_a_stop_what_is_in_flight_may_end_within_the_grace(emulator: Emulator) -> None:
    plan = ShardPlan(
        shape=ClosedLoop(concurrency=2),
        slots=[0, 1],
        total_slots=2,
        indices=list(range(400)),
        workload=WORKLOAD,
    )
    progress = ShardProgress()
    stop = asyncio.Event()
    run = asyncio.create_task(
        run_shard(plan, target(emulator), progress=progress, stop=stop, grace_s=60)
    )
    await until(lambda: progress.streaming > 0)
    stop.set()
    result = await asyncio.wait_for(run, timeout=60)
    assert result.records
    assert all(record.ok for record in result.records)
    assert len(result.records) == len(emulator.requests) < 400


async def test_a_stopped_open_loop_sends_nothing_more_not_even_what_waits_for_its_cap(
    slow_emulator: Emulator,
) -> None:
    plan = ShardPlan(
        shape=OpenLoop(rate=1000.0, max_concurrency=1),
        indices=[0, 1, 2, 3],
        arrivals_s=[0.0, 0.0, 0.0, 30.0],
        workload=SLOW_WORKLOAD,
    )
    progress = ShardProgress()
    stop = asyncio.Event()
    run = asyncio.create_task(
        run_shard(plan, target(slow_emulator), progress=progress, stop=stop, grace_s=0.05)
    )
    await until(lambda: progress.streaming == 1)
    stop.set()
    result = await asyncio.wait_for(run, timeout=60)
    (record,) = result.records
    assert record.cancelled
    assert len(slow_emulator.requests) == 1


async def test_a_shard_stopped_before_its_start_sends_nothing(emulator: Emulator) -> None:
    plan = ShardPlan(shape=ClosedLoop(concurrency=1), slots=[0], indices=[0, 1], workload=WORKLOAD)
    stop = asyncio.Event()
    stop.set()
    loop = asyncio.get_running_loop()
    result = await run_shard(plan, target(emulator), stop=stop, start_at=loop.time() + 30)
    assert result.records == []
    assert emulator.requests == []


async def test_a_run_whose_first_requests_are_all_refused_alike_stops_early() -> None:
    async with Emulator(EmulatorConfig(api_key="sk-right", ttft_s=0.0, itl_s=0.0)) as server:
        plan = ShardPlan(
            shape=ClosedLoop(concurrency=2),
            slots=[0, 1],
            total_slots=2,
            indices=list(range(2000)),
            warmup=2,
            workload=WORKLOAD,
        )
        wrong = Target(base_url=server.base_url, model="qwen-plus", api_key="sk-wrong")
        result = await asyncio.wait_for(run_shard(plan, wrong), timeout=60)
        sent = len(server.requests)
    # The first 8 (warm-up included) decided; those already in flight ended too.
    assert FAIL_FAST_REQUESTS <= sent <= FAIL_FAST_REQUESTS + 2
    assert len(result.records) == sent - 2
    assert {record.error_type for record in result.records} == {"AuthenticationError"}
    assert result.stop_reason is not None
    assert result.stop_reason.startswith(
        "the first 8 requests all failed with AuthenticationError: HTTP 401"
    )
    assert "request id" not in result.stop_reason


async def test_server_errors_never_stop_a_run_early() -> None:
    config = EmulatorConfig(api_key=None, ttft_s=0.0, itl_s=0.0, fault=Fault(status=500))
    async with Emulator(config) as server:
        plan = ShardPlan(
            shape=ClosedLoop(concurrency=2),
            slots=[0, 1],
            total_slots=2,
            indices=list(range(20)),
            workload=WORKLOAD,
        )
        result = await asyncio.wait_for(run_shard(plan, target(server)), timeout=60)
    assert len(result.records) == 20
    assert result.stop_reason is None


def refused(
    status: int, message: str, request_id: str = "", code: str = ""
) -> errors.APIStatusError:
    return errors.status_error(status=status, code=code, message=message, request_id=request_id)


def test_fail_fast_needs_its_first_requests_all_refused_alike() -> None:
    rule = FailFast(3)
    assert rule.see(refused(401, "bad key", "r1"), request_id="r1") is None
    assert rule.see(refused(401, "bad key", "r2"), request_id="r2") is None
    reason = rule.see(refused(401, "bad key", "r3"), request_id="r3")
    assert reason == "the first 3 requests all failed with AuthenticationError: HTTP 401: bad key"
    assert rule.see(refused(401, "bad key")) is None  # said once


@pytest.mark.parametrize(
    "outcomes",
    [
        # One success among the first: the endpoint works.
        [refused(404, "no such model"), None, refused(404, "no such model")],
        # Two different refusals: not one cause.
        [refused(400, "bad top_k"), refused(400, "bad top_k"), refused(400, "bad n")],
        [refused(403, "denied"), refused(401, "denied"), refused(403, "denied")],
        # Throttling, server errors, timeouts and broken streams are what a load test measures.
        [refused(429, "slow down", code="limit_requests")] * 3,
        [refused(500, "boom")] * 3,
        [errors.TotalTimeoutError(timeout_s=1.0)] * 3,
        [errors.IncompleteStreamError("cut")] * 3,
    ],
)
def test_fail_fast_lets_anything_else_run(outcomes: list[BaseException | None]) -> None:
    rule = FailFast(3)
    assert [rule.see(outcome) for outcome in outcomes] == [None, None, None]
    assert rule.see(refused(401, "bad key")) is None  # decided: never after


def test_fail_fast_counts_an_unpaid_bill_and_a_single_request() -> None:
    bill = refused(429, "Arrearage", code="PrepaidBillOverdue")
    rule = FailFast(1)
    assert rule.see(bill) == f"the first request failed with RateLimitError: {bill}"

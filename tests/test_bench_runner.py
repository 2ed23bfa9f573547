"""One shard against the emulator on loopback: closed and open loops, warm-up, failures,
conversations turn after turn."""

from __future__ import annotations

import asyncio
import itertools
import resource
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from qwen_sse import errors
from qwen_sse.bench import runner
from qwen_sse.bench.metrics import RequestRecord
from qwen_sse.bench.runner import (
    ShardPlan,
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

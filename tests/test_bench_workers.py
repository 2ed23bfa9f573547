"""Shards in worker processes: a shared start, merged results, progress, and failures."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import pytest

from qwen_sse.bench.live import Sample
from qwen_sse.bench.mock import MOCK_API_KEY, MockServer
from qwen_sse.bench.runner import ShardPlan, Target
from qwen_sse.bench.schedule import ClosedLoop
from qwen_sse.bench.workers import WorkerError, run_workers
from qwen_sse.bench.workload import FileWorkload, SyntheticWorkload
from qwen_sse.emulator import EmulatorConfig

WORKLOAD = SyntheticWorkload(input_tokens=16, output_tokens=2)


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    with MockServer(EmulatorConfig(ttft_s=0.05, itl_s=0.01)) as server:
        yield Target(base_url=server.base_url, model="qwen-plus", api_key=MOCK_API_KEY)


def workers_alive() -> list[str]:
    return [
        p.name for p in multiprocessing.active_children() if p.name.startswith("qwen-sse-bench")
    ]


def plan(worker: int, indices: list[int]) -> ShardPlan:
    return ShardPlan(
        worker=worker,
        workers=2,
        shape=ClosedLoop(concurrency=1),
        slots=[worker],
        total_slots=2,
        indices=indices,
        warmup=1,
        workload=WORKLOAD,
    )


def test_workers_run_their_shards_from_one_start(target: Target) -> None:
    samples: list[Sample] = []
    idle: list[int] = []
    results = run_workers(
        [plan(0, [0, 2, 4]), plan(1, [1, 3, 5])],
        target,
        on_samples=samples.extend,
        on_idle=lambda: idle.append(1),
    )
    assert [result.worker for result in results] == [0, 1]
    assert [sorted(r.index for r in result.records) for result in results] == [[2, 4], [1, 3, 5]]
    everything = [record for result in results for record in result.records]
    assert all(record.ok for record in everything)
    # Times count from the shared start: worker 1's slot opened at it (its first request,
    # index 1, is measured), worker 0's first measured request followed its warm-up. How
    # soon after the start anything left depends on the machine's load.
    first_of_1 = min(results[1].records, key=lambda record: record.index)
    assert (first_of_1.index, first_of_1.scheduled_at_s) == (1, 0.0)
    first_of_0 = min(results[0].records, key=lambda record: record.index)
    assert first_of_0.scheduled_at_s > 0
    for record in everything:
        assert record.sent_at_s >= record.scheduled_at_s >= 0
    assert len(samples) == len(everything)
    assert idle
    assert [result.load.worker for result in results] == [0, 1]
    assert not workers_alive()


def test_a_failing_worker_stops_the_run(target: Target) -> None:
    broken = ShardPlan(
        worker=1,
        workers=2,
        shape=ClosedLoop(concurrency=1),
        slots=[1],
        total_slots=2,
        indices=[1],
        workload=FileWorkload(entries=[]),
    )
    with pytest.raises(WorkerError, match="worker 1 failed") as raised:
        run_workers([plan(0, [0, 2]), broken], target)
    assert "ZeroDivisionError" in str(raised.value)
    assert not workers_alive()

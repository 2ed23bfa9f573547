"""Shards in worker processes: a shared start, merged results, records streamed with the
progress, a stop that returns what finished, signals left to the parent, and failures."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator

import pytest

from qwen_sse.bench.mock import MOCK_API_KEY, MockServer
from qwen_sse.bench.runner import ShardPlan, Target
from qwen_sse.bench.schedule import ClosedLoop
from qwen_sse.bench.stop import Stop
from qwen_sse.bench.workers import WorkerError, WorkerProgress, run_workers
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
    reports: list[tuple[int, WorkerProgress]] = []
    idle: list[int] = []
    results = run_workers(
        [plan(0, [0, 2, 4]), plan(1, [1, 3, 5])],
        target,
        on_progress=lambda number, report: reports.append((number, report)),
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
    # Every record came with the progress reports (the results bring none of their own):
    # a parent killed midway has what had finished.
    for number, result in enumerate(results):
        streamed = [r for n, report in reports if n == number for r in report.records]
        assert streamed == result.records
    # Each worker sent (warm-up included) its three requests, and none is left in flight.
    last = {number: report for number, report in reports}
    assert [(last[n].sent, last[n].in_flight, last[n].streaming) for n in (0, 1)] == [(3, 0, 0)] * 2
    assert len([t for _, report in reports for t in report.first_tokens_s]) == 6
    assert idle
    assert [result.load.worker for result in results if result.load is not None] == [0, 1]
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
    assert "\n" not in str(raised.value)  # one line; the traceback is kept apart
    assert "Traceback" in raised.value.details
    assert not workers_alive()


@pytest.fixture
def slow_target() -> Iterator[Target]:
    """Answers that take about 30 s: whatever is in flight at a stop is cut off."""
    with MockServer(EmulatorConfig(ttft_s=0.01, itl_s=1.0, answer_tokens=30)) as server:
        yield Target(base_url=server.base_url, model="qwen-plus", api_key=MOCK_API_KEY)


def slow_plan(worker: int) -> ShardPlan:
    return ShardPlan(
        worker=worker,
        workers=2,
        shape=ClosedLoop(concurrency=1),
        slots=[worker],
        total_slots=2,
        indices=list(range(worker, 20, 2)),
        workload=SyntheticWorkload(input_tokens=16, output_tokens=30),
    )


def test_a_stop_returns_what_every_worker_had_and_cuts_off_the_rest(slow_target: Target) -> None:
    with Stop() as stop:

        def progress(number: int, report: WorkerProgress) -> None:
            # Stop once both workers stream an answer.
            streaming[number] = report.streaming
            if all(streaming.values()) and len(streaming) == 2:
                stop.set("enough")

        streaming: dict[int, int] = {}
        results = run_workers(
            [slow_plan(0), slow_plan(1)], slow_target, on_progress=progress, stop=stop
        )
    for result in results:
        (record,) = result.records
        assert record.cancelled
        assert not record.ok
        assert record.ttft_s is not None  # what had arrived is kept
        assert result.load is not None
        assert result.stop_reason is None  # stopped by the parent, not by itself
    assert not workers_alive()


def test_workers_leave_sigint_and_sigterm_to_their_parent(target: Target) -> None:
    signalled: list[int] = []

    def progress(number: int, report: WorkerProgress) -> None:
        for child in multiprocessing.active_children():
            if child.name == f"qwen-sse-bench-{number}" and child.pid not in signalled:
                assert child.pid is not None
                # What a Ctrl-C on a terminal sends to every process of its group.
                os.kill(child.pid, signal.SIGINT)
                os.kill(child.pid, signal.SIGTERM)
                signalled.append(child.pid)

    many = [plan(0, list(range(0, 40, 2))), plan(1, list(range(1, 40, 2)))]
    results = run_workers(many, target, on_progress=progress)
    assert len(signalled) == 2
    assert [len(result.records) for result in results] == [19, 20]
    assert all(record.ok for result in results for record in result.records)

"""The client's self-measurement and the verdict on whether it limited the figures: from
made-up samples, and against the emulator (a blocked loop is flagged; slots in lockstep on
an idle client are not; requests that all fail are no evidence)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qwen_sse.bench.benchmark import BenchConfig, run, run_async
from qwen_sse.bench.metrics import RequestRecord
from qwen_sse.bench.mock import MOCK_API_KEY, MockServer
from qwen_sse.bench.monitor import ClientLoad, LoopMonitor, ReceiveProbe, Thresholds, assess
from qwen_sse.bench.runner import Target
from qwen_sse.bench.schedule import ClosedLoop
from qwen_sse.bench.workload import SyntheticWorkload
from qwen_sse.emulator import Emulator, EmulatorConfig


def load(
    lag_ms: list[float],
    cpu_s: float = 0.1,
    wall_s: float = 1.0,
    worker: int = 0,
    receive_ms: list[float] | None = None,
) -> ClientLoad:
    """Samples every 10 ms from the start; the receive probe's are the timer's unless given."""
    receive = lag_ms if receive_ms is None else receive_ms
    return ClientLoad(
        worker=worker,
        interval_s=0.01,
        lag_s=[lag / 1000 for lag in lag_ms],
        lag_at_s=[index * 0.01 for index in range(len(lag_ms))],
        cpu=[(1.0, cpu_s / wall_s)],
        cpu_s=cpu_s,
        wall_s=wall_s,
        open_files_limit=1024,
        receive_lag_s=[lag / 1000 for lag in receive],
        receive_lag_at_s=[index * 0.01 for index in range(len(receive))],
    )


def record(
    scheduled_at_s: float,
    lag_s: float,
    *,
    e2e_s: float = 0.1,
    ok: bool = True,
    worker: int = 0,
) -> RequestRecord:
    fields: dict[str, Any] = {
        "index": 0,
        "worker": worker,
        "scheduled_at_s": scheduled_at_s,
        "schedule_lag_s": lag_s,
        "queue_wait_s": 0.0,
        "sent_at_s": scheduled_at_s + lag_s,
        "ttft_s": 0.1 if ok else None,
        "itl_s": [],
        "e2e_s": e2e_s,
        "tpot_s": None,
        "output_tokens": 1 if ok else 0,
        "output_tokens_source": "usage",
        "prompt_tokens": 1,
        "prompt_tokens_source": "usage",
        "ok": ok,
        "error_type": None if ok else "AuthenticationError",
        "error": None if ok else "HTTP 401: invalid_api_key",
        "status": None if ok else 401,
    }
    return RequestRecord(**fields)


def busy(until_s: float = 10.0, *, worker: int = 0) -> list[RequestRecord]:
    """One successful request in flight from the start to ``until_s``."""
    return [record(0.0, 0.0, e2e_s=until_s, worker=worker)]


async def test_the_monitor_sees_a_blocked_loop_and_an_idle_one() -> None:
    origin = asyncio.get_running_loop().time()
    monitor = LoopMonitor(interval_s=0.005, origin=origin - 1.0)
    monitor.start()
    await asyncio.sleep(0.1)
    idle = monitor.stop()
    # How late an idle loop's timers fire depends on the machine's load: only the
    # bookkeeping is certain. Samples are counted from the origin given.
    assert idle.lag_s
    assert min(idle.lag_s) >= 0
    assert len(idle.lag_at_s) == len(idle.lag_s)
    assert idle.lag_at_s[0] > 1.0
    assert idle.lag_at_s == sorted(idle.lag_at_s)
    # Without an origin, times count from start(), never from the clock's zero (which
    # may be the machine's boot, seconds ago or days ago).
    monitor = LoopMonitor(interval_s=0.005)
    monitor.start()
    await asyncio.sleep(0.01)
    # Deliberately block the loop: the next timer fires about this much late.
    time.sleep(0.06)  # noqa: ASYNC251 - the blocking is the point
    await asyncio.sleep(0.01)
    blocked = monitor.stop(open_files_limit=77)
    assert max(blocked.lag_s) >= 0.04
    assert blocked.open_files_limit == 77
    assert len(blocked.lag_s) == len(blocked.lag_at_s)
    assert blocked.lag_at_s[0] == pytest.approx(0.005)


async def test_the_receive_probe_times_data_left_in_its_socket() -> None:
    loop = asyncio.get_running_loop()
    probe = ReceiveProbe(mean_gap_s=0.005)
    origin = loop.time()
    probe.start(origin)
    await asyncio.sleep(0.05)
    # Deliberately block the loop: what the probe writes meanwhile waits in the socket.
    time.sleep(0.2)  # noqa: ASYNC251 - the blocking is the point
    await asyncio.sleep(0.05)
    lag_s, at_s = probe.stop()
    assert len(lag_s) == len(at_s)
    assert min(lag_s) >= 0
    # Writes came every 5 ms on average: the first of the block waited most of it.
    assert max(lag_s) >= 0.1
    # A sample's instant is its write, on the loop's clock from the origin given.
    assert all(0 <= at <= loop.time() - origin for at in at_s)
    assert at_s == sorted(at_s)
    # Stopped means stopped: nothing is added afterwards, and the sockets close.
    await asyncio.sleep(0.05)
    assert probe.lag_s == lag_s


async def test_a_probe_stopped_at_once_closes_cleanly() -> None:
    probe = ReceiveProbe()
    probe.start(asyncio.get_running_loop().time())
    assert probe.stop() == ([], [])
    await asyncio.sleep(0)


def test_a_quiet_client_is_trusted() -> None:
    verdict = assess([load([0.2] * 100)], [record(t / 10, 0.0001) for t in range(50)], Thresholds())
    assert not verdict.saturated
    assert verdict.reasons == []
    assert verdict.figures["loop_lag_ms"]["median"] == pytest.approx(0.2)
    assert verdict.figures["receive_lag_ms"]["median"] == pytest.approx(0.2)
    assert verdict.figures["workers"][0]["open_files_limit"] == 1024


def test_loop_lag_past_the_threshold_saturates() -> None:
    lag = [0.2] * 80 + [30.0] * 20
    verdict = assess([load(lag, receive_ms=[0.2] * 100)], busy(), Thresholds(max_loop_lag_ms=10))
    assert verdict.saturated
    assert verdict.reasons == [
        "event-loop lag p90 30.0 ms exceeds 10 ms while requests were in flight: chunks were "
        "timestamped late, latencies are overstated"
    ]


def test_receive_lag_past_the_threshold_saturates() -> None:
    # The timer saw nothing: data sat in the sockets while the loop worked through bursts.
    verdict = assess([load([0.2] * 100, receive_ms=[0.2] * 85 + [25.0] * 15)], busy(), Thresholds())
    assert verdict.reasons == [
        "receive lag p90 25.0 ms exceeds 10 ms: data sat in the socket that long before the "
        "client read it, latencies are overstated"
    ]
    assert verdict.figures["receive_lag_ms"]["p90"] == pytest.approx(25.0)
    assert verdict.figures["workers"][0]["receive_lag_ms"]["max"] == pytest.approx(25.0)
    assert not assess([load([0.2] * 100, receive_ms=[0.2] * 100)], busy(), Thresholds()).saturated


def test_only_samples_taken_while_requests_were_in_flight_count() -> None:
    # Late for the first half second (nothing in flight yet, e.g. starting up or warming
    # up), on time while the one request ran.
    late_then_quiet = load([50.0] * 50 + [0.2] * 50)
    verdict = assess([late_then_quiet], [record(0.5, 0.0, e2e_s=0.49)], Thresholds())
    assert not verdict.saturated
    assert verdict.figures["loop_lag_ms"]["max"] == pytest.approx(0.2)
    # The same samples while a request was in flight are evidence.
    assert assess([late_then_quiet], busy(), Thresholds()).saturated
    # Each worker's samples are judged by its own requests in flight.
    other_worker = assess([late_then_quiet], busy(worker=1), Thresholds())
    assert other_worker.figures["loop_lag_ms"]["p90"] is None


def test_lag_percentiles_pool_every_worker() -> None:
    # Neither worker alone has a p90 above 10 ms; both together do.
    loads = [load([0.1] * 92 + [50.0] * 8, worker=0), load([0.1] * 92 + [50.0] * 8, worker=1)]
    records = busy(worker=0) + busy(worker=1)
    assert all(
        worker["loop_lag_ms"]["p90"] < 10
        for worker in assess(loads, records, Thresholds()).figures["workers"]
    )
    loads = [load([0.1] * 100, worker=0), load([0.1] * 70 + [50.0] * 30, worker=1)]
    verdict = assess(loads, records, Thresholds())
    assert verdict.saturated
    assert verdict.figures["loop_lag_ms"]["p90"] == pytest.approx(50.0)
    assert verdict.figures["workers"][0]["loop_lag_ms"]["p90"] == pytest.approx(0.1)
    assert assess(loads, records, Thresholds(max_loop_lag_ms=60)).reasons == []


def test_a_busy_worker_saturates() -> None:
    loads = [load([0.1] * 10, cpu_s=0.2, worker=0), load([0.1] * 10, cpu_s=0.95, worker=1)]
    verdict = assess(loads, busy(worker=0), Thresholds())
    assert verdict.saturated
    assert verdict.reasons == [verdict.reasons[0]]
    assert verdict.reasons[0].startswith("worker 1 used 95% of a CPU core")
    assert verdict.figures["cpu_fraction_max"] == pytest.approx(0.95)


def test_a_worker_kept_waiting_for_a_cpu_saturates() -> None:
    # Loop lag and CPU look fine: the loop ran late only in bursts, between the samples.
    waiting = msgspec.structs.replace(load([0.1] * 10, wall_s=2.0), cpu_wait_s=0.3)
    verdict = assess([waiting], busy(), Thresholds())
    assert verdict.reasons == [
        "worker 0 waited for a CPU 15% of the run (limit 5%): other processes kept its event "
        "loop from sending and reading on time, latencies are overstated; leave the client "
        "a core of its own"
    ]
    assert verdict.figures["workers"][0]["cpu_wait_fraction"] == pytest.approx(0.15)
    assert verdict.figures["cpu_wait_fraction_max"] == pytest.approx(0.15)
    assert not assess([waiting], busy(), Thresholds(max_cpu_wait_fraction=0.2)).saturated
    # Where the kernel does not say, there is no figure and no verdict on it.
    unknown = assess([load([0.1] * 10)], busy(), Thresholds(max_cpu_wait_fraction=0.0))
    assert not unknown.saturated
    assert unknown.figures["workers"][0]["cpu_wait_fraction"] is None
    assert unknown.figures["cpu_wait_fraction_max"] is None


@pytest.mark.skipif(not Path("/proc/thread-self/schedstat").exists(), reason="Linux only")
async def test_the_monitor_counts_the_time_its_thread_waited_for_a_cpu() -> None:
    monitor = LoopMonitor(interval_s=0.005)
    monitor.start()
    await asyncio.sleep(0.05)
    measured = monitor.stop()
    assert measured.cpu_wait_s is not None
    assert 0 <= measured.cpu_wait_s <= measured.wall_s


def test_schedule_lag_alone_never_saturates() -> None:
    # Lockstep: every slot fell due at once and went out one after another, 50 ms late at
    # the last; and a schedule lag that grows over the run. On a quiet loop neither is
    # evidence that the client distorted a figure.
    lockstep = [record(0.0, t * 0.001) for t in range(50)] + [
        record(1.0 + t / 10, 0.0001) for t in range(50)
    ]
    growing = [record(t / 10, t * 0.0005) for t in range(100)]
    for records in (lockstep, growing):
        verdict = assess([load([0.2] * 1000)], records, Thresholds(max_schedule_lag_ms=5))
        assert not verdict.saturated, verdict.reasons
        assert verdict.figures["schedule_lag_p90_ms"] > 5


def test_a_growing_schedule_lag_supports_other_evidence() -> None:
    growing = [record(t / 10, t * 0.0005) for t in range(100)]
    late = load([0.2] * 800 + [40.0] * 200, receive_ms=[0.2] * 1000)
    verdict = assess([late], growing, Thresholds(max_schedule_lag_ms=40))
    assert verdict.saturated
    assert verdict.reasons[0].startswith("event-loop lag p90 40.0 ms")
    assert verdict.reasons[1].startswith("schedule lag grew from ")
    assert (
        verdict.figures["schedule_lag_last_tenth_ms"]
        > verdict.figures["schedule_lag_first_tenth_ms"]
    )
    flat = [record(t / 10, 0.0005) for t in range(100)]
    assert len(assess([late], flat, Thresholds(max_schedule_lag_ms=40)).reasons) == 1


def test_failed_requests_are_no_evidence() -> None:
    # Every request failed fast (a bad key) while the loop was late and the CPU busy: no
    # figure was measured, so none was distorted.
    failed = [record(t / 100, 0.0, e2e_s=0.01, ok=False) for t in range(1000)]
    hot = load([30.0] * 1000, cpu_s=1.0, wall_s=1.0)
    verdict = assess([hot], failed, Thresholds())
    assert not verdict.saturated
    assert verdict.reasons == []
    assert verdict.figures["loop_lag_ms"]["p90"] is None
    # The same run, had the requests succeeded, is judged.
    succeeded = [msgspec.structs.replace(r, ok=True, error_type=None) for r in failed]
    assert assess([hot], succeeded, Thresholds()).saturated
    # Failed requests in flight do not make late samples count either.
    mixed = [*failed, record(20.0, 0.0)]
    assert assess([hot], mixed, Thresholds(max_cpu_fraction=1.0)).reasons == []


def test_no_samples_no_verdict() -> None:
    verdict = assess([], [], Thresholds())
    assert not verdict.saturated
    assert verdict.figures["loop_lag_ms"]["p90"] is None
    assert verdict.figures["receive_lag_ms"]["p90"] is None


def test_too_few_open_files_for_the_connections_saturates() -> None:
    records = [record(0.0, 0.0) for _ in range(40)]
    tight = msgspec.structs.replace(load([0.1]), open_files_limit=80)
    verdict = assess([tight], records, Thresholds())
    assert verdict.reasons == [
        "worker 0 may open only 80 files for 40 connections in flight: raise the hard limit "
        "(ulimit -Hn) or use more --workers"
    ]
    assert not assess([load([0.1])], records, Thresholds()).saturated
    failing = [record(0.0, 0.0, ok=False) for _ in range(40)]
    assert not assess([tight], failing, Thresholds()).saturated


# Against the emulator. Its pacing is exact (no jitter), so the slots of a closed loop
# fall due together: at the start, and whenever answers end at the same server tick.


def workload(output_tokens: int) -> SyntheticWorkload:
    return SyntheticWorkload(input_tokens=32, output_tokens=output_tokens)


@pytest.fixture(scope="module")
def exact() -> Iterator[Target]:
    with MockServer(EmulatorConfig(ttft_s=0.1, itl_s=0.02, jitter_s=0.0)) as server:
        yield Target(base_url=server.base_url, model="qwen-plus", api_key=MOCK_API_KEY)


async def hogging(stop: asyncio.Event) -> None:
    """Block the loop 30 ms of every 40 ms until ``stop`` is set."""
    while not stop.is_set():
        time.sleep(0.03)  # noqa: ASYNC251 - the blocking is the point
        await asyncio.sleep(0.01)


async def test_a_blocked_loop_is_flagged_by_both_measures_of_lateness(exact: Target) -> None:
    stop = asyncio.Event()
    hog = asyncio.create_task(hogging(stop))
    try:
        config = BenchConfig(shape=ClosedLoop(concurrency=4), workload=workload(8), requests=16)
        result = await run_async(config, exact)
    finally:
        stop.set()
        await hog
    summary = result.summary
    assert summary["completed"] == 16, summary["errors"]
    assert summary["client_saturated"] is True
    reasons = summary["client_saturation_reasons"]
    limit = Thresholds().max_loop_lag_ms
    assert any(reason.startswith("event-loop lag p90 ") for reason in reasons), reasons
    assert any(reason.startswith("receive lag p90 ") for reason in reasons), reasons
    assert summary["client"]["loop_lag_ms"]["p90"] > limit
    assert summary["client"]["receive_lag_ms"]["p90"] > limit
    assert not any("schedule lag" in reason for reason in reasons)


def test_slots_in_lockstep_on_an_idle_client_are_not_flagged(exact: Target) -> None:
    concurrency = 64
    config = BenchConfig(
        shape=ClosedLoop(concurrency=concurrency),
        workload=workload(10),
        requests=3 * concurrency,
    )
    result = run(config, exact)
    summary = result.summary
    assert summary["completed"] == 3 * concurrency, summary["errors"]
    # Lockstep: every slot fell due at the start and they went out one after another.
    first = [record for record in result.records if record.index < concurrency]
    assert {record.scheduled_at_s for record in first} == {0.0}
    assert summary["p90_schedule_lag_ms"] > 0
    # And they stayed in step: every slot ended its n-th answer before any ended its next
    # (slots take the next index as they free up, so index // concurrency is the round).
    ends = [
        [record.end_at_s for record in result.records if record.index // concurrency == round_]
        for round_ in range(3)
    ]
    assert max(ends[0]) < min(ends[1])
    assert max(ends[1]) < min(ends[2])
    # However late that made the sends, it is no reason: judged again with a schedule-lag
    # limit below what this run saw, the verdict does not change.
    below = Thresholds(max_schedule_lag_ms=summary["p90_schedule_lag_ms"] / 2)
    again = assess(result.loads, result.records, below)
    assert again.saturated == summary["client_saturated"]
    # The client was idle unless its monitors say otherwise (other processes may take the
    # CPUs while this runs): the verdict is exactly that evidence, nothing else.
    client, limits = summary["client"], Thresholds()
    evidence = [
        (client["loop_lag_ms"]["p90"] or 0.0) > limits.max_loop_lag_ms,
        (client["receive_lag_ms"]["p90"] or 0.0) > limits.max_loop_lag_ms,
        client["cpu_fraction_max"] > limits.max_cpu_fraction,
        (client["cpu_wait_fraction_max"] or 0.0) > limits.max_cpu_wait_fraction,
    ]
    reasons = summary["client_saturation_reasons"]
    assert summary["client_saturated"] is any(evidence), reasons
    if not any(evidence):
        assert reasons == again.reasons == []


async def test_a_run_whose_every_request_fails_is_not_flagged() -> None:
    stop = asyncio.Event()
    async with Emulator(EmulatorConfig(api_key="sk-test", ttft_s=0.0)) as emulator:
        target = Target(base_url=emulator.base_url, model="qwen-plus", api_key="sk-wrong")
        # The loop is blocked as in the test above, and the requests fail as fast as they
        # go: a busy client, but no figure for it to distort.
        hog = asyncio.create_task(hogging(stop))
        try:
            config = BenchConfig(shape=ClosedLoop(concurrency=4), workload=workload(8), requests=40)
            result = await run_async(config, target)
        finally:
            stop.set()
            await hog
    summary = result.summary
    assert summary["completed"] == 0
    assert summary["failed"] == len(result.records) > 0
    assert {record.status for record in result.records} == {401}
    assert summary["client_saturated"] is False
    assert summary["client_saturation_reasons"] == []
    assert summary["client"]["loop_lag_ms"]["p90"] is None

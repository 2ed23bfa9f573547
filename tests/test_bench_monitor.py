"""The client's self-measurement and the verdict on whether it limited the figures."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qwen_sse.bench.metrics import RequestRecord
from qwen_sse.bench.monitor import ClientLoad, LoopMonitor, Thresholds, assess


def load(
    lag_ms: list[float], cpu_s: float = 0.1, wall_s: float = 1.0, worker: int = 0
) -> ClientLoad:
    return ClientLoad(
        worker=worker,
        interval_s=0.01,
        lag_s=[lag / 1000 for lag in lag_ms],
        lag_at_s=[index * 0.01 for index in range(len(lag_ms))],
        cpu=[(1.0, cpu_s / wall_s)],
        cpu_s=cpu_s,
        wall_s=wall_s,
        open_files_limit=1024,
    )


def record(scheduled_at_s: float, lag_s: float) -> RequestRecord:
    fields: dict[str, Any] = {
        "index": 0,
        "worker": 0,
        "scheduled_at_s": scheduled_at_s,
        "schedule_lag_s": lag_s,
        "queue_wait_s": 0.0,
        "sent_at_s": scheduled_at_s + lag_s,
        "ttft_s": 0.1,
        "itl_s": [],
        "e2e_s": 0.1,
        "tpot_s": None,
        "output_tokens": 1,
        "output_tokens_source": "usage",
        "prompt_tokens": 1,
        "prompt_tokens_source": "usage",
        "ok": True,
    }
    return RequestRecord(**fields)


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


def test_a_quiet_client_is_trusted() -> None:
    verdict = assess([load([0.2] * 100)], [record(t / 10, 0.0001) for t in range(50)], Thresholds())
    assert not verdict.saturated
    assert verdict.reasons == []
    assert verdict.figures["loop_lag_ms"]["median"] == pytest.approx(0.2)
    assert verdict.figures["workers"][0]["open_files_limit"] == 1024


def test_loop_lag_past_the_threshold_saturates() -> None:
    verdict = assess([load([0.2] * 80 + [30.0] * 20)], [], Thresholds(max_loop_lag_ms=10))
    assert verdict.saturated
    assert "event-loop lag p90 30.0 ms exceeds 10 ms" in verdict.reasons[0]


def test_lag_percentiles_pool_every_worker() -> None:
    # Neither worker alone has a p90 above 10 ms; both together do.
    loads = [load([0.1] * 85 + [50.0] * 15, worker=0), load([0.1] * 85 + [50.0] * 15, worker=1)]
    assert assess(loads, [], Thresholds()).saturated
    assert assess(loads, [], Thresholds(max_loop_lag_ms=60)).reasons == []


def test_a_busy_worker_saturates() -> None:
    loads = [load([0.1] * 10, cpu_s=0.2, worker=0), load([0.1] * 10, cpu_s=0.95, worker=1)]
    verdict = assess(loads, [], Thresholds())
    assert verdict.saturated
    assert verdict.reasons == [verdict.reasons[0]]
    assert verdict.reasons[0].startswith("worker 1 used 95% of a CPU core")
    assert verdict.figures["cpu_fraction_max"] == pytest.approx(0.95)


def test_a_worker_kept_waiting_for_a_cpu_saturates() -> None:
    # Loop lag and CPU look fine: the loop ran late only in bursts, between the samples.
    waiting = msgspec.structs.replace(load([0.1] * 10, wall_s=2.0), cpu_wait_s=0.3)
    verdict = assess([waiting], [], Thresholds())
    assert verdict.reasons == [
        "worker 0 waited for a CPU 15% of the run (limit 5%): other processes kept its event "
        "loop from sending and reading on time, latencies are overstated; leave the client "
        "a core of its own"
    ]
    assert verdict.figures["workers"][0]["cpu_wait_fraction"] == pytest.approx(0.15)
    assert verdict.figures["cpu_wait_fraction_max"] == pytest.approx(0.15)
    assert not assess([waiting], [], Thresholds(max_cpu_wait_fraction=0.2)).saturated
    # Where the kernel does not say, there is no figure and no verdict on it.
    unknown = assess([load([0.1] * 10)], [], Thresholds(max_cpu_wait_fraction=0.0))
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


def test_schedule_lag_high_or_growing_saturates() -> None:
    late = [record(t / 10, 0.05) for t in range(100)]
    reasons = assess([load([0.1])], late, Thresholds()).reasons
    assert any(reason.startswith("schedule lag p90 50.0 ms") for reason in reasons)
    growing = [record(t / 10, t * 0.0005) for t in range(100)]
    verdict = assess([load([0.1])], growing, Thresholds(max_schedule_lag_ms=40))
    assert verdict.saturated
    assert any("schedule lag grew from" in reason for reason in verdict.reasons)
    assert (
        verdict.figures["schedule_lag_last_tenth_ms"]
        > verdict.figures["schedule_lag_first_tenth_ms"]
    )


def test_no_samples_no_verdict() -> None:
    verdict = assess([], [], Thresholds())
    assert not verdict.saturated
    assert verdict.figures["loop_lag_ms"]["p90"] is None


def test_too_few_open_files_for_the_connections_saturates() -> None:
    records = [record(0.0, 0.0) for _ in range(40)]
    tight = msgspec.structs.replace(load([0.1]), open_files_limit=80)
    verdict = assess([tight], records, Thresholds())
    assert verdict.reasons == [
        "worker 0 may open only 80 files for 40 connections in flight: raise the hard limit "
        "(ulimit -Hn) or use more --workers"
    ]
    assert not assess([load([0.1])], records, Thresholds()).saturated

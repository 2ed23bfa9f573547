"""Is the client the bottleneck? Its event-loop lag and CPU during a run, and the verdict.

Edge layer (bench). :class:`LoopMonitor` runs inside the measuring event loop: a timer
that measures its own lateness (every callback that runs late delays every chunk's
timestamp by as much), the process's CPU time against the wall clock, and (on Linux) the
time the loop's thread waited for a CPU while other processes had them all. :func:`assess`
turns what the monitors saw, and the schedule lag of the requests, into a verdict with
reasons. Imports :mod:`qwen_sse.bench.metrics` only.

The lag measure has a floor near one millisecond: epoll sleeps in whole milliseconds, so
even an idle loop's timers fire up to 1 ms late. Socket readiness is not rounded, so the
chunks' timestamps do not share that floor; the thresholds sit well above it.

The lag samples alone miss a machine too busy for the client: the loop then runs late in
short bursts, when chunks and requests are due, and a timer every 10 ms rarely falls in
one. Time spent runnable but waiting for a CPU (the kernel's ``schedstat``) counts every
one of those delays, however short.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from qwen_sse.bench.metrics import RequestRecord, max_concurrency, percentile

__all__ = ["ClientLoad", "LoopMonitor", "Thresholds", "Verdict", "assess"]

_CPU_WINDOW_S = 1.0
_SPARE_FILES = 64
_SCHEDSTAT = "/proc/thread-self/schedstat"


def _cpu_wait_s() -> float | None:
    """Seconds this thread has spent runnable but waiting for a CPU, since it started
    (None where the kernel does not say: not Linux, or no scheduler statistics)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open(_SCHEDSTAT) as stat:
        return int(stat.read().split()[1]) / 1e9
    return None


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    """Where the client stops being trusted.

    * ``max_loop_lag_ms``: the 90th percentile of the event loop's lateness. Past it, one
      chunk in ten was timestamped that much late or more.
    * ``max_cpu_fraction``: CPU time over wall time of one worker process (an event loop
      runs on one core, so near 1.0 it has no time left to read sockets promptly).
    * ``max_schedule_lag_ms``: the 90th percentile of schedule lag, and the most it may
      grow from the first tenth of the run to the last.
    * ``max_cpu_wait_fraction``: the time one worker's event loop waited for a CPU (other
      processes had them all) over wall time. Each such wait delays a send or a read.
    """

    max_loop_lag_ms: float = 10.0
    max_cpu_fraction: float = 0.9
    max_schedule_lag_ms: float = 10.0
    max_cpu_wait_fraction: float = 0.05


class ClientLoad(msgspec.Struct, frozen=True, kw_only=True):
    """What one worker's monitor saw: ``lag_s`` samples of loop lateness taken at
    ``lag_at_s`` (seconds from the run's start), ``cpu`` as ``[at_s, fraction]`` pairs over
    windows of about a second, the totals ``cpu_s`` over ``wall_s``, and ``cpu_wait_s``,
    the time the loop's thread waited for a CPU (None where the kernel does not say)."""

    worker: int
    interval_s: float
    lag_s: list[float]
    lag_at_s: list[float]
    cpu: list[tuple[float, float]]
    cpu_s: float
    wall_s: float
    open_files_limit: int | None = None
    cpu_wait_s: float | None = None

    @property
    def cpu_fraction(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_wait_fraction(self) -> float | None:
        if self.cpu_wait_s is None:
            return None
        return self.cpu_wait_s / self.wall_s if self.wall_s > 0 else 0.0


class LoopMonitor:
    """Samples the running loop's lateness every ``interval_s`` and the process's CPU.

    ``origin`` is the loop-clock instant that times are counted from (None: the instant of
    :meth:`start`; never 0.0, as the loop's clock may count from boot). :meth:`start` and
    :meth:`stop` must be called from inside the loop; :meth:`stop` returns the samples.
    """

    def __init__(
        self, *, worker: int = 0, interval_s: float = 0.01, origin: float | None = None
    ) -> None:
        self._worker = worker
        self._interval_s = interval_s
        self._origin = origin
        self._lag: list[float] = []
        self._lag_at: list[float] = []
        self._cpu: list[tuple[float, float]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._started_wall = 0.0
        self._started_cpu = 0.0
        self._window_wall = 0.0
        self._window_cpu = 0.0
        self._started_wait: float | None = None

    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._started_wall = self._window_wall = time.perf_counter()
        self._started_cpu = self._window_cpu = time.process_time()
        self._started_wait = _cpu_wait_s()
        now = loop.time()
        if self._origin is None:
            self._origin = now
        self._due = now + self._interval_s
        self._handle = loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        loop, origin = self._loop, self._origin
        assert loop is not None
        assert origin is not None
        now = loop.time()
        # A timer may fire a hair early (clock resolution); early is not late.
        self._lag.append(max(0.0, now - self._due))
        self._lag_at.append(self._due - origin)
        wall = time.perf_counter()
        if wall - self._window_wall >= _CPU_WINDOW_S:
            cpu = time.process_time()
            fraction = (cpu - self._window_cpu) / (wall - self._window_wall)
            self._cpu.append((now - origin, fraction))
            self._window_wall, self._window_cpu = wall, cpu
        # From now, not from the missed due time: a stalled loop must not fire a burst.
        self._due = now + self._interval_s
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self, *, open_files_limit: int | None = None) -> ClientLoad:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        waited = _cpu_wait_s()
        started_wait = self._started_wait
        return ClientLoad(
            worker=self._worker,
            interval_s=self._interval_s,
            lag_s=self._lag,
            lag_at_s=self._lag_at,
            cpu=self._cpu,
            cpu_s=time.process_time() - self._started_cpu,
            wall_s=time.perf_counter() - self._started_wall,
            open_files_limit=open_files_limit,
            cpu_wait_s=None if waited is None or started_wait is None else waited - started_wait,
        )


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """``saturated`` when the client, not the server, may have limited the figures;
    ``reasons`` says why in words; ``figures`` holds the numbers the verdict rests on."""

    saturated: bool
    reasons: list[str]
    figures: dict[str, Any]


def _ms(seconds: float) -> float:
    return seconds * 1000


def _lag_figures(samples: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(samples)
    if not ordered:
        return dict.fromkeys(("mean", "median", "p90", "p99", "max"))
    return {
        "mean": _ms(statistics.fmean(ordered)),
        "median": _ms(percentile(ordered, 50)),
        "p90": _ms(percentile(ordered, 90)),
        "p99": _ms(percentile(ordered, 99)),
        "max": _ms(ordered[-1]),
    }


def _schedule_growth_s(records: Sequence[RequestRecord]) -> tuple[float, float] | None:
    """Median schedule lag of the first and of the last tenth of the run, by schedule."""
    if len(records) < 20:
        return None
    ordered = sorted(records, key=lambda record: record.scheduled_at_s)
    tenth = len(ordered) // 10
    first = statistics.median(record.schedule_lag_s for record in ordered[:tenth])
    last = statistics.median(record.schedule_lag_s for record in ordered[-tenth:])
    return first, last


def assess(
    loads: Sequence[ClientLoad], records: Sequence[RequestRecord], thresholds: Thresholds
) -> Verdict:
    """The verdict on the client over a run: loop lag, CPU and schedule lag against
    ``thresholds``. Lag percentiles pool every worker's samples; CPU is judged per worker
    (each worker is one event loop on one core)."""
    reasons: list[str] = []
    lag = _lag_figures([sample for load in loads for sample in load.lag_s])
    p90_lag = lag["p90"]
    if p90_lag is not None and p90_lag > thresholds.max_loop_lag_ms:
        reasons.append(
            f"event-loop lag p90 {p90_lag:.1f} ms exceeds {thresholds.max_loop_lag_ms:g} ms: "
            "chunks were timestamped late, latencies are overstated"
        )
    workers: list[dict[str, Any]] = []
    for load in sorted(loads, key=lambda load: load.worker):
        fraction = load.cpu_fraction
        busiest = max((window for _, window in load.cpu), default=fraction)
        waiting = load.cpu_wait_fraction
        workers.append(
            {
                "worker": load.worker,
                "cpu_fraction": fraction,
                "cpu_fraction_max": busiest,
                "cpu_wait_fraction": waiting,
                "loop_lag_ms": _lag_figures(load.lag_s),
                "open_files_limit": load.open_files_limit,
            }
        )
        if fraction > thresholds.max_cpu_fraction:
            reasons.append(
                f"worker {load.worker} used {fraction:.0%} of a CPU core (limit "
                f"{thresholds.max_cpu_fraction:.0%}): its event loop had no time to spare; "
                "use more --workers or a bigger machine"
            )
        if waiting is not None and waiting > thresholds.max_cpu_wait_fraction:
            reasons.append(
                f"worker {load.worker} waited for a CPU {waiting:.0%} of the run (limit "
                f"{thresholds.max_cpu_wait_fraction:.0%}): other processes kept its event "
                "loop from sending and reading on time, latencies are overstated; leave the "
                "client a core of its own"
            )
    ordered = sorted(record.schedule_lag_s for record in records)
    schedule_p90 = _ms(percentile(ordered, 90)) if ordered else None
    if schedule_p90 is not None and schedule_p90 > thresholds.max_schedule_lag_ms:
        reasons.append(
            f"schedule lag p90 {schedule_p90:.1f} ms exceeds "
            f"{thresholds.max_schedule_lag_ms:g} ms: requests went out later than planned"
        )
    for load in loads:
        limit = load.open_files_limit
        peak = max_concurrency(record for record in records if record.worker == load.worker)
        # A connection is a file; the interpreter and the pool need a few more.
        if limit is not None and peak + _SPARE_FILES > limit:
            reasons.append(
                f"worker {load.worker} may open only {limit} files for {peak} connections in "
                "flight: raise the hard limit (ulimit -Hn) or use more --workers"
            )
    growth = _schedule_growth_s(records)
    if growth is not None and _ms(growth[1] - growth[0]) > thresholds.max_schedule_lag_ms:
        reasons.append(
            f"schedule lag grew from {_ms(growth[0]):.1f} ms to {_ms(growth[1]):.1f} ms over "
            "the run: the client fell further and further behind the schedule"
        )
    figures: dict[str, Any] = {
        "loop_lag_ms": lag,
        "cpu_fraction_max": max((w["cpu_fraction"] for w in workers), default=0.0),
        "cpu_wait_fraction_max": max(
            (w["cpu_wait_fraction"] for w in workers if w["cpu_wait_fraction"] is not None),
            default=None,
        ),
        "schedule_lag_p90_ms": schedule_p90,
        "schedule_lag_first_tenth_ms": _ms(growth[0]) if growth else None,
        "schedule_lag_last_tenth_ms": _ms(growth[1]) if growth else None,
        "workers": workers,
        "thresholds": msgspec.to_builtins(thresholds),
    }
    return Verdict(saturated=bool(reasons), reasons=reasons, figures=figures)

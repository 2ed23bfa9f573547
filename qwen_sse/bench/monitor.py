"""Is the client the bottleneck? Its event loop's lateness and CPU during a run, and the verdict.

Edge layer (bench). :class:`LoopMonitor` runs inside the measuring event loop and records
how late that loop got to what was due: a timer that measures its own lateness, and a
receive probe that measures how long data sat in a socket before a task of the loop read
it; also the process's CPU time against the wall clock, and (on Linux) the time the
loop's thread waited for a CPU while other processes had them all. :func:`assess` turns
what the monitors saw into a verdict with reasons. Imports :mod:`qwen_sse.bench.metrics`
only.

The verdict rests on evidence that the client distorted the figures, never on the shape of
the load. Schedule lag (a request sent later than planned) is not such evidence: in a
closed loop, slots that fall due at the same instant (at the start, or when many answers
end at the same server tick) go out one after another, and the last ones are "late" by
the time it takes to send the others, on a client with time to spare. It is reported,
and its growth over the run supports a verdict that other evidence made.

The timer has a floor near one millisecond: epoll sleeps in whole milliseconds, so even an
idle loop's timers fire up to 1 ms late. Socket readiness is not rounded, so the receive
probe and the chunks' timestamps do not share that floor; the thresholds sit well above it.

The samples alone miss a machine too busy for the client: the loop then runs late in
short bursts, when chunks and requests are due, and samples at random moments rarely fall
in one. Time spent runnable but waiting for a CPU (the kernel's ``schedstat``) counts every
one of those delays, however short. Each wakeup of the loop then waits a little, and a
request's way out (several rounds of the loop) waits several times: measured against the
emulator on a loaded two-core machine, TTFT was overstated by 5 to 10% while the thread
waited a fifth of the run for a CPU, half a millisecond at a time.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import socket
import statistics
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from qwen_sse.bench.metrics import RequestRecord, max_concurrency, percentile

__all__ = ["ClientLoad", "LoopMonitor", "ReceiveProbe", "Thresholds", "Verdict", "assess"]

_CPU_WINDOW_S = 1.0
_SPARE_FILES = 64
_SCHEDSTAT = "/proc/thread-self/schedstat"
# One probe message: the writer's time.monotonic() as a C double.
_STAMP = struct.Struct("d")
_PROBE_JOIN_S = 1.0


def _cpu_wait_s() -> float | None:
    """Seconds this thread has spent runnable but waiting for a CPU, since it started
    (None where the kernel does not say: not Linux, or no scheduler statistics)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open(_SCHEDSTAT) as stat:
        return int(stat.read().split()[1]) / 1e9
    return None


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    """Where the client stops being trusted.

    * ``max_loop_lag_ms``: the 90th percentile of the event loop's lateness while requests
      were in flight, by either measure (the timer's, the receive probe's). Past it, one
      chunk in ten was timestamped that much late or more.
    * ``max_cpu_fraction``: CPU time over wall time of one worker process (an event loop
      runs on one core, so near 1.0 it has no time left to read sockets promptly).
    * ``max_schedule_lag_ms``: the most schedule lag may grow from the first tenth of the
      run to the last; past it, a supporting reason of a verdict other evidence made.
    * ``max_cpu_wait_fraction``: the time one worker's event loop waited for a CPU (other
      processes had them all) over wall time. Each such wait delays a send or a read.
    """

    max_loop_lag_ms: float = 10.0
    max_cpu_fraction: float = 0.9
    max_schedule_lag_ms: float = 10.0
    max_cpu_wait_fraction: float = 0.05


class ClientLoad(msgspec.Struct, frozen=True, kw_only=True):
    """What one worker's monitor saw: ``lag_s`` samples of the timer's lateness, due at
    ``lag_at_s`` (seconds from the run's start); ``receive_lag_s`` samples of the receive
    probe, written at ``receive_lag_at_s``; ``cpu`` as ``[at_s, fraction]`` pairs over
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
    receive_lag_s: list[float] = []
    receive_lag_at_s: list[float] = []

    @property
    def cpu_fraction(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_wait_fraction(self) -> float | None:
        if self.cpu_wait_s is None:
            return None
        return self.cpu_wait_s / self.wall_s if self.wall_s > 0 else 0.0


class ReceiveProbe:
    """How long data sits in a socket before a task of this loop reads it.

    A thread writes its clock reading into one end of a socket pair at random moments
    (exponential gaps of mean ``mean_gap_s``: moments that fall anywhere, so by the Poisson
    arrivals see time averages property the samples see the loop as a chunk arriving at any
    moment would); a task of the loop reads the other end through an asyncio stream. The
    path is a response chunk's: the selector reports the socket, the protocol feeds the
    stream reader, the reading task wakes in the next round of the loop and takes its
    timestamp. Each sample is the time from the write to that timestamp, so it counts the
    wait for the loop to poll (a blocked or busy loop), and the queue of other callbacks
    ahead of the reader (a burst of chunks read before it). Its floor is the thread's
    wake-up and one round of the loop, well under a millisecond on an idle machine.

    While the loop's thread runs Python, the writer must first get the interpreter lock
    (within the switch interval, 5 ms); a sample starts at its write, so a loop busy in
    Python for longer shows the rest of its busy spell, not all of it. :meth:`start` and
    :meth:`stop` are called from inside the loop.
    """

    def __init__(self, *, mean_gap_s: float = 0.01, seed: int = 0) -> None:
        self._mean_gap_s = mean_gap_s
        self._seed = seed
        self.lag_s: list[float] = []
        self.at_s: list[float] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading = False
        self._sockets: tuple[socket.socket, socket.socket] | None = None

    def start(self, origin: float) -> None:
        """Start probing; samples' instants count from ``origin`` on the loop's clock."""
        loop = asyncio.get_running_loop()
        self._sockets = socket.socketpair()
        self._task = loop.create_task(self._read(loop, origin, *self._sockets))

    async def _read(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: float,
        reading: socket.socket,
        writing: socket.socket,
    ) -> None:
        self._reading = True
        stream: asyncio.StreamWriter | None = None
        try:
            reader, stream = await asyncio.open_connection(sock=reading)
            writing.setblocking(False)
            # The writer starts once the reader is in place: no sample counts the set-up.
            self._thread = threading.Thread(
                target=self._write, args=(writing,), name="qwen-sse-receive-probe", daemon=True
            )
            self._thread.start()
            pending = b""
            while (data := await reader.read(4096)) and not self._stopping.is_set():
                read_at = time.monotonic()
                now = loop.time() - origin
                pending += data
                whole = len(pending) - len(pending) % _STAMP.size
                for (written,) in _STAMP.iter_unpack(pending[:whole]):
                    lag = max(0.0, read_at - written)
                    self.lag_s.append(lag)
                    self.at_s.append(now - lag)
                pending = pending[whole:]
        finally:
            # The transport unregisters its socket before it closes it: no other
            # connection can be given the same descriptor in between.
            if stream is not None:
                stream.close()
            else:
                reading.close()
            writing.close()

    def _write(self, writing: socket.socket) -> None:
        gaps = random.Random(self._seed)
        while not self._stopping.wait(gaps.expovariate(1 / self._mean_gap_s)):
            try:
                sent = writing.send(_STAMP.pack(time.monotonic()))
            except BlockingIOError:
                # The loop has not read for a long while: the samples already queued say so.
                continue
            except OSError:
                return
            if sent != _STAMP.size:
                # A torn message would shift every later one: stop rather than mismeasure.
                return

    def stop(self) -> tuple[list[float], list[float]]:
        """Stop probing; return the samples ``(lag_s, at_s)``. The reading task closes the
        sockets as it ends."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(_PROBE_JOIN_S)
        if self._task is not None:
            self._task.cancel()
        if not self._reading and self._sockets is not None:
            # Cancelled before its first step, the task never runs its body.
            for end in self._sockets:
                end.close()
        return list(self.lag_s), list(self.at_s)


class LoopMonitor:
    """Samples the running loop's lateness (a timer every ``interval_s`` and a
    :class:`ReceiveProbe`) and the process's CPU.

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
        self._probe = ReceiveProbe(mean_gap_s=interval_s, seed=worker)
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
        self._probe.start(self._origin)

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
        receive_lag, receive_at = self._probe.stop()
        waited, started = _cpu_wait_s(), self._started_wait
        return ClientLoad(
            worker=self._worker,
            interval_s=self._interval_s,
            lag_s=self._lag,
            lag_at_s=self._lag_at,
            cpu=self._cpu,
            cpu_s=time.process_time() - self._started_cpu,
            wall_s=time.perf_counter() - self._started_wall,
            open_files_limit=open_files_limit,
            cpu_wait_s=None if waited is None or started is None else waited - started,
            receive_lag_s=receive_lag,
            receive_lag_at_s=receive_at,
        )


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """``saturated`` when the client, not the server, may have limited the figures;
    ``reasons`` says why in words; ``figures`` holds the numbers the verdict rests on."""

    saturated: bool
    reasons: list[str]
    figures: dict[str, Any]


def _ms(seconds: float) -> float:
    return seconds * 1000


def _lag_figures(samples: Iterable[float]) -> dict[str, float | None]:
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


class _InFlight:
    """When successful requests of one worker were in flight: their send-to-end intervals,
    merged. A sample of the loop taken outside them could delay no figure."""

    def __init__(self, records: Iterable[RequestRecord]) -> None:
        spans: list[tuple[float, float]] = []
        for start, end in sorted((r.sent_at_s, r.end_at_s) for r in records):
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((start, end))
        self._starts = [start for start, _ in spans]
        self._ends = [end for _, end in spans]

    def covers(self, at_s: float) -> bool:
        index = bisect.bisect_right(self._starts, at_s) - 1
        return index >= 0 and at_s <= self._ends[index]

    def samples(self, values: Sequence[float], at_s: Sequence[float]) -> list[float]:
        return [value for value, at in zip(values, at_s, strict=True) if self.covers(at)]


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
    """The verdict on the client over a run, against ``thresholds``.

    Evidence that the client distorted the figures: the loop's lateness by the timer and by
    the receive probe (90th percentiles of the samples taken while a successful request of
    the same worker was in flight, every worker's pooled), each worker's CPU over the run,
    its wait for a CPU, and too few open files for the successful requests in flight.
    Failed requests are no evidence and measure nothing: without a successful request
    there is no verdict (the figures are still reported). Schedule lag is reported; its
    growth over the run is a reason only beside another.
    """
    ok = [record for record in records if record.ok]
    by_worker = {load.worker: _InFlight(r for r in ok if r.worker == load.worker) for load in loads}
    timer: list[float] = []
    probe: list[float] = []
    workers: list[dict[str, Any]] = []
    evidence: list[str] = []
    for load in sorted(loads, key=lambda load: load.worker):
        in_flight = by_worker[load.worker]
        worker_timer = in_flight.samples(load.lag_s, load.lag_at_s)
        worker_probe = in_flight.samples(load.receive_lag_s, load.receive_lag_at_s)
        timer += worker_timer
        probe += worker_probe
        fraction = load.cpu_fraction
        waiting = load.cpu_wait_fraction
        workers.append(
            {
                "worker": load.worker,
                "cpu_fraction": fraction,
                "cpu_fraction_max": max((window for _, window in load.cpu), default=fraction),
                "cpu_wait_fraction": waiting,
                "loop_lag_ms": _lag_figures(worker_timer),
                "receive_lag_ms": _lag_figures(worker_probe),
                "open_files_limit": load.open_files_limit,
            }
        )
        if fraction > thresholds.max_cpu_fraction:
            evidence.append(
                f"worker {load.worker} used {fraction:.0%} of a CPU core (limit "
                f"{thresholds.max_cpu_fraction:.0%}): its event loop had no time to spare; "
                "use more --workers or a bigger machine"
            )
        if waiting is not None and waiting > thresholds.max_cpu_wait_fraction:
            evidence.append(
                f"worker {load.worker} waited for a CPU {waiting:.0%} of the run (limit "
                f"{thresholds.max_cpu_wait_fraction:.0%}): other processes kept its event "
                "loop from sending and reading on time, latencies are overstated; leave the "
                "client a core of its own"
            )
        limit = load.open_files_limit
        peak = max_concurrency(r for r in ok if r.worker == load.worker)
        # A connection is a file; the interpreter and the pool need a few more.
        if limit is not None and peak + _SPARE_FILES > limit:
            evidence.append(
                f"worker {load.worker} may open only {limit} files for {peak} connections in "
                "flight: raise the hard limit (ulimit -Hn) or use more --workers"
            )
    loop_lag = _lag_figures(timer)
    receive_lag = _lag_figures(probe)
    lateness: list[str] = []
    timer_p90 = loop_lag["p90"]
    if timer_p90 is not None and timer_p90 > thresholds.max_loop_lag_ms:
        lateness.append(
            f"event-loop lag p90 {timer_p90:.1f} ms exceeds {thresholds.max_loop_lag_ms:g} ms "
            "while requests were in flight: chunks were timestamped late, latencies are "
            "overstated"
        )
    probe_p90 = receive_lag["p90"]
    if probe_p90 is not None and probe_p90 > thresholds.max_loop_lag_ms:
        lateness.append(
            f"receive lag p90 {probe_p90:.1f} ms exceeds {thresholds.max_loop_lag_ms:g} ms: "
            "data sat in the socket that long before the client read it, latencies are "
            "overstated"
        )
    reasons = (lateness + evidence) if ok else []
    growth = _schedule_growth_s(ok)
    grew = growth is not None and _ms(growth[1] - growth[0]) > thresholds.max_schedule_lag_ms
    if reasons and growth is not None and grew:
        reasons.append(
            f"schedule lag grew from {_ms(growth[0]):.1f} ms to {_ms(growth[1]):.1f} ms over "
            "the run: the client fell further and further behind the schedule"
        )
    scheduled = sorted(record.schedule_lag_s for record in records)
    figures: dict[str, Any] = {
        "loop_lag_ms": loop_lag,
        "receive_lag_ms": receive_lag,
        "cpu_fraction_max": max((w["cpu_fraction"] for w in workers), default=0.0),
        "cpu_wait_fraction_max": max(
            (w["cpu_wait_fraction"] for w in workers if w["cpu_wait_fraction"] is not None),
            default=None,
        ),
        "schedule_lag_p90_ms": _ms(percentile(scheduled, 90)) if scheduled else None,
        "schedule_lag_first_tenth_ms": _ms(growth[0]) if growth else None,
        "schedule_lag_last_tenth_ms": _ms(growth[1]) if growth else None,
        "workers": workers,
        "thresholds": msgspec.to_builtins(thresholds),
    }
    return Verdict(saturated=bool(reasons), reasons=reasons, figures=figures)

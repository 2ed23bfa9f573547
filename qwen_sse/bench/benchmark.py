"""One benchmark, from its configuration to its summary: plan, run, merge, judge.

Edge layer (bench). It splits a run into shards (:func:`plan_shards`), runs them in the
current event loop (one worker) or in worker processes (:mod:`qwen_sse.bench.workers`),
merges the raw records of every worker and computes every figure from the merged
records (:func:`qwen_sse.bench.metrics.summarize`), with the verdict on the client
(:func:`qwen_sse.bench.monitor.assess`). It prints nothing, and nothing in the package
below the CLI imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from qwen_sse.bench.live import LiveProgress
from qwen_sse.bench.metrics import RequestRecord, Slo, summarize
from qwen_sse.bench.monitor import ClientLoad, Thresholds, assess
from qwen_sse.bench.runner import ShardPlan, ShardProgress, ShardResult, Target, run_shard
from qwen_sse.bench.schedule import ClosedLoop, OpenLoop, arrival_times, split_evenly
from qwen_sse.bench.schema import SUMMARY_SCHEMA_ID
from qwen_sse.bench.stop import Stop
from qwen_sse.bench.workers import WorkerProgress, run_workers
from qwen_sse.bench.workload import Workload
from qwen_sse.config import shown_url
from qwen_sse.errors import ConfigurationError

__all__ = ["BenchConfig", "BenchResult", "compose", "plan_shards", "run", "run_async"]

DEFAULT_PERCENTILES = (90.0, 95.0, 99.0)


class BenchConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A benchmark run.

    * ``shape``: the load (:class:`~qwen_sse.bench.schedule.ClosedLoop` or
      :class:`~qwen_sse.bench.schedule.OpenLoop`).
    * ``requests`` measured requests and/or ``duration_s``: the run ends at whichever
      comes first (at least one is required; an infinite rate needs ``requests``).
    * ``warmup``: that many requests are sent first, under the same load, and left out of
      every figure (they open connections and warm caches).
    * ``workers``: processes, each with its own event loop and a share of the load.
    * ``seed``: the arrival schedule's (the workload has its own).
    * ``params``: extra body fields of every request (``enable_thinking``, ...).
    * ``percentiles``, ``slo`` (goodput) and ``thresholds`` (client verdict): reporting.
    """

    shape: ClosedLoop | OpenLoop
    workload: Workload
    requests: int | None = None
    duration_s: float | None = None
    warmup: int = 0
    workers: int = 1
    seed: int = 0
    params: dict[str, Any] = {}
    percentiles: list[float] = msgspec.field(default_factory=lambda: list(DEFAULT_PERCENTILES))
    slo: Slo | None = None
    thresholds: Thresholds = Thresholds()

    def __post_init__(self) -> None:
        if self.requests is None and self.duration_s is None:
            raise ConfigurationError("a run needs a number of requests or a duration")
        if self.requests is not None and self.requests < 1:
            raise ConfigurationError(f"requests must be at least 1, got {self.requests}")
        if self.duration_s is not None and not 0 < self.duration_s < math.inf:
            raise ConfigurationError(f"duration must be positive, got {self.duration_s}")
        if self.warmup < 0:
            raise ConfigurationError(f"warm-up must not be negative, got {self.warmup}")
        if self.workers < 1:
            raise ConfigurationError(f"workers must be at least 1, got {self.workers}")
        for p in self.percentiles:
            if not 0 <= p <= 100:
                raise ConfigurationError(f"percentiles must lie in 0-100, got {p:g}")
        shape = self.shape
        if isinstance(shape, OpenLoop) and math.isinf(shape.rate) and self.requests is None:
            raise ConfigurationError("an infinite rate needs a number of requests")
        lanes = shape.concurrency if isinstance(shape, ClosedLoop) else shape.max_concurrency
        if lanes is not None and lanes < self.workers:
            raise ConfigurationError(
                f"{self.workers} workers cannot share {lanes} concurrent requests: every "
                "worker needs at least one"
            )

    def planned_requests(self) -> int | None:
        """Measured requests the run will send (None: as many as fit in the duration)."""
        shape = self.shape
        if isinstance(shape, OpenLoop):
            by_time = (
                None if self.duration_s is None else max(1, round(shape.rate * self.duration_s))
            )
            counts = [count for count in (self.requests, by_time) if count is not None]
            return min(counts)
        return self.requests


class BenchResult(msgspec.Struct, frozen=True, kw_only=True):
    """A finished (or stopped) run: the ``summary`` document, the measured ``records`` (by
    index, cancelled ones included) and what each worker's monitor saw."""

    summary: dict[str, Any]
    records: list[RequestRecord]
    loads: list[ClientLoad]


def plan_shards(config: BenchConfig) -> list[ShardPlan]:
    """Split the run over ``config.workers`` workers.

    Request ``i`` goes to worker ``i mod workers``. Closed loop: slot ``s`` goes to worker
    ``s mod workers`` (so ramp-up offsets interleave). Open loop: the schedule is drawn
    once for the whole run and each worker keeps the arrival times of its requests, so
    the workers together send exactly the one schedule; the concurrency cap is split.
    """
    workers = config.workers
    shape = config.shape
    planned = config.planned_requests()
    total = None if planned is None else config.warmup + planned
    plans: list[ShardPlan] = []
    if isinstance(shape, ClosedLoop):
        for worker in range(workers):
            slots = list(range(worker, shape.concurrency, workers))
            plans.append(
                ShardPlan(
                    worker=worker,
                    workers=workers,
                    shape=ClosedLoop(concurrency=len(slots), ramp_up_s=shape.ramp_up_s),
                    slots=slots,
                    total_slots=shape.concurrency,
                    indices=None if total is None else list(range(worker, total, workers)),
                    duration_s=config.duration_s,
                    warmup=config.warmup,
                    workload=config.workload,
                    params=config.params,
                )
            )
        return plans
    assert total is not None
    times = arrival_times(
        total, shape.rate, arrivals=shape.arrivals, burstiness=shape.burstiness, seed=config.seed
    )
    caps = split_evenly(shape.max_concurrency, workers) if shape.max_concurrency else None
    for worker in range(workers):
        plans.append(
            ShardPlan(
                worker=worker,
                workers=workers,
                shape=msgspec.structs.replace(
                    shape, max_concurrency=caps[worker] if caps else None
                ),
                indices=list(range(worker, total, workers)),
                arrivals_s=times[worker::workers],
                warmup=config.warmup,
                workload=config.workload,
                params=config.params,
            )
        )
    return plans


async def run_async(
    config: BenchConfig,
    target: Target,
    *,
    on_record: Callable[[RequestRecord], None] | None = None,
    progress: ShardProgress | None = None,
    stop: asyncio.Event | None = None,
) -> BenchResult:
    """Run a one-worker benchmark in the running event loop (``config.workers`` must be
    1). Whatever else runs on this loop shares it with the measurement, and the monitor
    sees that: this is how a test proves the saturation warning works.

    ``on_record`` sees each measured record as it finishes, ``progress`` is kept up to
    date, and setting ``stop`` ends the run early (see
    :func:`~qwen_sse.bench.runner.run_shard`)."""
    if config.workers != 1:
        raise ConfigurationError("run_async runs one worker; use run() for several")
    (plan,) = plan_shards(config)
    result = await run_shard(plan, target, on_record=on_record, progress=progress, stop=stop)
    stopped = stop is not None and stop.is_set()
    return compose(config, target, [result], stopped="stopped" if stopped else None)


def run(
    config: BenchConfig,
    target: Target,
    *,
    live: LiveProgress | None = None,
    on_record: Callable[[RequestRecord], None] | None = None,
    stop: Stop | None = None,
) -> BenchResult:
    """Run a benchmark to its end (or until ``stop``) and return its result.

    ``live`` shows progress; ``on_record`` sees each measured record as soon as this
    process has it (one worker: as it finishes; several: within about half a second).
    Once ``stop`` is set, no new request is sent, those in flight get
    :data:`~qwen_sse.bench.runner.STOP_GRACE_S` to end and are then cancelled, and the
    result holds what finished (``stop_reason`` in its summary says why it ended early).

    One worker runs in this process's own new event loop; several run in processes
    of their own while this one only waits and draws progress.
    """
    if config.workers == 1:
        return asyncio.run(_run_here(config, target, live, on_record, stop))
    drawing = live is not None and live.enabled

    def progress(number: int, update: WorkerProgress) -> None:
        if on_record is not None:
            for record in update.records:
                on_record(record)
        if drawing:
            assert live is not None
            live.add(update.records)
            live.first_tokens(update.first_tokens_s)
            live.flight(
                number, sent=update.sent, in_flight=update.in_flight, streaming=update.streaming
            )

    try:
        results = run_workers(
            plan_shards(config),
            target,
            on_progress=progress,
            on_idle=live.refresh if drawing and live is not None else None,
            stop=stop,
        )
    finally:
        if live is not None:
            live.close()
    return compose(config, target, results, stopped=stop.reason if stop else None)


async def _run_here(
    config: BenchConfig,
    target: Target,
    live: LiveProgress | None,
    on_record: Callable[[RequestRecord], None] | None,
    stop: Stop | None,
) -> BenchResult:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    progress = ShardProgress()
    drawing = live is not None and live.enabled

    def wake() -> None:
        # Called from a signal handler, or from another thread: hand over to the loop.
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to stop
            loop.call_soon_threadsafe(stopping.set)

    def record(finished: RequestRecord) -> None:
        if on_record is not None:
            on_record(finished)
        if drawing:
            assert live is not None
            live.add([finished])

    def show(live: LiveProgress) -> None:
        live.first_tokens(progress.take_first_tokens())
        live.flight(
            0, sent=progress.sent, in_flight=progress.in_flight, streaming=progress.streaming
        )

    async def tick(live: LiveProgress) -> None:
        # Draw at once, then redraw even while no request ends (long answers), so the
        # clock keeps moving.
        while True:
            show(live)
            live.refresh()
            await asyncio.sleep(live.interval_s)

    unwatch = stop.watch(wake) if stop is not None else None
    ticker = asyncio.create_task(tick(live)) if drawing and live is not None else None
    try:
        (plan,) = plan_shards(config)
        result = await run_shard(plan, target, on_record=record, progress=progress, stop=stopping)
    finally:
        if unwatch is not None:
            unwatch()
        if ticker is not None:
            ticker.cancel()
        if live is not None:
            if drawing:
                show(live)  # the last line says what the run ended with
            live.close()
    return compose(config, target, [result], stopped=stop.reason if stop else None)


def compose(
    config: BenchConfig,
    target: Target,
    results: Sequence[ShardResult],
    *,
    stopped: str | None = None,
) -> BenchResult:
    """Merge the workers' raw records and compute the summary from them.

    ``stopped`` says why the run was asked to stop early, if it was; a shard that stopped
    by itself (its first requests all refused alike) gives the summary's ``stop_reason``
    instead.
    """
    records = sorted(
        (record for result in results for record in result.records),
        key=lambda record: record.index,
    )
    loads = [result.load for result in results if result.load is not None]
    stop_reason = next((r.stop_reason for r in results if r.stop_reason), None) or stopped
    figures = summarize(records, percentiles=config.percentiles, slo=config.slo)
    # A request cut off at a stop says nothing about the client.
    verdict = assess(loads, [r for r in records if not r.cancelled], config.thresholds)
    shape = config.shape
    if isinstance(shape, ClosedLoop):
        # vLLM's convention: a closed loop is an infinite rate under a concurrency cap.
        rate: float | str = "inf"
        burstiness: float | None = None
        cap: int | None = shape.concurrency
    else:
        rate = "inf" if math.isinf(shape.rate) else shape.rate
        burstiness = shape.burstiness
        cap = shape.max_concurrency
    summary: dict[str, Any] = {
        "schema": SUMMARY_SCHEMA_ID,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backend": "openai-chat",
        "model_id": target.model,
        "tokenizer_id": config.workload.tokenizer or "qwen",
        "base_url": shown_url(target.base_url),
        "protocol": target.protocol,
        "num_prompts": config.planned_requests(),
        "request_rate": rate,
        "burstiness": burstiness,
        "max_concurrency": cap,
        "load": _load_of(config),
        "workload": config.workload.summary(),
        "params": config.params,
        "percentiles": config.percentiles,
        "goodput_slo_ms": config.slo.as_dict() if config.slo is not None else None,
        **figures,
        "stop_reason": stop_reason,
        "client_saturated": verdict.saturated,
        "client_saturation_reasons": verdict.reasons,
        "client": verdict.figures,
        "python": sys.version.split()[0],
    }
    return BenchResult(summary=summary, records=records, loads=loads)


def _load_of(config: BenchConfig) -> dict[str, Any]:
    shape = config.shape
    load: dict[str, Any] = {
        "mode": "closed" if isinstance(shape, ClosedLoop) else "open",
        "requests": config.requests,
        "duration_s": config.duration_s,
        "warmup": config.warmup,
        "workers": config.workers,
        "seed": config.seed,
    }
    if isinstance(shape, ClosedLoop):
        load.update(concurrency=shape.concurrency, ramp_up_s=shape.ramp_up_s)
    else:
        load.update(
            rate=None if math.isinf(shape.rate) else shape.rate,
            arrivals=shape.arrivals,
            burstiness=shape.burstiness,
            max_concurrency=shape.max_concurrency,
        )
    return load

"""Shards of one run in parallel worker processes, each with its own event loop.

Edge layer (bench). The parent starts one ``spawn`` process per shard, waits until every
worker has built its requests and opened its client, then gives them all one start
instant on the wall clock (``time.time``, shared by every process on a host), so that
every record's instants count from the same origin. Workers send progress samples while
they run and their raw records at the end; percentiles are computed by the caller from
the merged records, never from per-worker figures. It imports the runner, never the
benchmark that calls it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import msgspec

from qwen_sse.bench.live import Sample, sample_of
from qwen_sse.bench.metrics import RequestRecord
from qwen_sse.bench.runner import ShardPlan, ShardResult, Target, prepare, run_shard

__all__ = ["WorkerError", "run_workers"]

_PROGRESS_EVERY_S = 0.5
_result_decoder = msgspec.msgpack.Decoder(ShardResult)


class WorkerError(RuntimeError):
    """A worker process failed or died; the message holds what it reported."""


def run_workers(
    plans: Sequence[ShardPlan],
    target: Target,
    *,
    start_delay_s: float = 0.25,
    on_samples: Callable[[list[Sample]], None] | None = None,
    on_idle: Callable[[], None] | None = None,
) -> list[ShardResult]:
    """Run each plan in a process of its own; return their results in plan order.

    ``on_samples`` receives progress samples as workers report them (about twice a
    second) and ``on_idle`` is called at least that often while waiting. Raises
    :class:`WorkerError` when a worker fails; the others are then stopped.
    """
    context = multiprocessing.get_context("spawn")
    links: list[Connection] = []
    processes: list[Any] = []
    try:
        for plan in plans:
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(child_end, plan, target, on_samples is not None),
                name=f"qwen-sse-bench-{plan.worker}",
                daemon=True,
            )
            process.start()
            child_end.close()
            links.append(parent_end)
            processes.append(process)
        for number, link in enumerate(links):
            _expect(link, "ready", number)
        start_epoch = time.time() + start_delay_s
        for link in links:
            link.send(("start", start_epoch))
        results: dict[int, ShardResult] = {}
        waiting = dict(enumerate(links))
        while waiting:
            for ready in wait(list(waiting.values()), timeout=_PROGRESS_EVERY_S):
                number = next(n for n, link in waiting.items() if link is ready)
                kind, payload = _receive(waiting[number], number)
                if kind == "progress" and on_samples is not None:
                    on_samples(payload)
                elif kind == "result":
                    results[number] = _result_decoder.decode(payload)
                    del waiting[number]
            if on_idle is not None:
                on_idle()
        for process in processes:
            process.join(timeout=10)
        return [results[number] for number in range(len(plans))]
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for link in links:
            link.close()


def _receive(link: Connection, number: int) -> tuple[str, Any]:
    try:
        kind, payload = link.recv()
    except EOFError:
        raise WorkerError(f"worker {number} exited without reporting") from None
    if kind == "error":
        raise WorkerError(f"worker {number} failed:\n{payload}")
    return str(kind), payload


def _expect(link: Connection, wanted: str, number: int) -> Any:
    kind, payload = _receive(link, number)
    if kind != wanted:
        raise WorkerError(f"worker {number} sent {kind!r} where {wanted!r} was due")
    return payload


def _worker_main(link: Connection, plan: ShardPlan, target: Target, progress: bool) -> None:
    """A worker process: prepare, report ready, wait for the start instant, run, report."""
    try:
        specs = prepare(plan)
        link.send(("ready", None))
        kind, start_epoch = link.recv()
        if kind != "start":
            return
        result = asyncio.run(
            _run(
                link,
                plan=plan,
                target=target,
                specs=specs,
                start_epoch=start_epoch,
                progress=progress,
            )
        )
        link.send(("result", msgspec.msgpack.encode(result)))
    except BaseException:
        link.send(("error", traceback.format_exc()))
    finally:
        link.close()


async def _run(
    link: Connection,
    *,
    plan: ShardPlan,
    target: Target,
    specs: dict[int, Any],
    start_epoch: float,
    progress: bool,
) -> ShardResult:
    loop = asyncio.get_running_loop()
    start_at = loop.time() + (start_epoch - time.time())
    pending: list[Sample] = []

    def collect(record: RequestRecord) -> None:
        pending.append(sample_of(record))

    async def report() -> None:
        while True:
            await asyncio.sleep(_PROGRESS_EVERY_S)
            if pending:
                link.send(("progress", pending[:]))
                pending.clear()

    reporter = asyncio.create_task(report()) if progress else None
    try:
        return await run_shard(
            plan,
            target,
            specs=specs,
            start_at=start_at,
            on_record=collect if progress else None,
        )
    finally:
        if reporter is not None:
            reporter.cancel()
            if pending:
                link.send(("progress", pending[:]))

"""Shards of one run in parallel worker processes, each with its own event loop.

Edge layer (bench). The parent starts one ``spawn`` process per shard, waits until every
worker has built its requests and opened its client, then gives them all one start
instant on the wall clock (``time.time``, shared by every process on a host), so that
every record's instants count from the same origin. Workers send their raw records as
they finish, with their progress, about twice a second (so that a run killed midway
keeps what reached the parent), and what their monitor saw at the end; percentiles are
computed by the caller from the merged records, never from per-worker figures.

Only the parent reacts to SIGINT and SIGTERM: workers ignore them
(:func:`~qwen_sse.bench.stop.leave_signals_to_parent`) and stop when the parent says
``stop``, returning what they have; a worker whose parent is gone exits at once. It
imports the runner, never the benchmark that calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import msgspec

from qwen_sse.bench.metrics import RequestRecord
from qwen_sse.bench.runner import (
    STOP_GRACE_S,
    ShardPlan,
    ShardProgress,
    ShardResult,
    Target,
    prepare,
    run_shard,
)
from qwen_sse.bench.stop import Stop, leave_signals_to_parent, signals_held

__all__ = ["WorkerError", "WorkerProgress", "run_workers"]

_PROGRESS_EVERY_S = 0.5
# After a stop, how long beyond the workers' own grace the parent waits for their results
# before it kills them (they have to cancel, record and send what they have).
_STOP_SLACK_S = 5.0


class WorkerProgress(msgspec.Struct, frozen=True, kw_only=True):
    """A worker's report while it runs: the measured ``records`` finished since its last
    report, the times to first token seen since then, its gauges now (see
    :class:`~qwen_sse.bench.runner.ShardProgress`), and why it stopped early, if it did."""

    records: list[RequestRecord]
    first_tokens_s: list[float]
    sent: int
    in_flight: int
    streaming: int
    stop_reason: str | None = None


_progress_decoder = msgspec.msgpack.Decoder(WorkerProgress)
_result_decoder = msgspec.msgpack.Decoder(ShardResult)


class WorkerError(RuntimeError):
    """A worker process failed or died; the message (one line) says how, ``details`` holds
    the worker's traceback when it sent one."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def run_workers(
    plans: Sequence[ShardPlan],
    target: Target,
    *,
    start_delay_s: float = 0.25,
    on_progress: Callable[[int, WorkerProgress], None] | None = None,
    on_idle: Callable[[], None] | None = None,
    stop: Stop | None = None,
) -> list[ShardResult]:
    """Run each plan in a process of its own; return their results in plan order, the
    records of each in the order they finished.

    ``on_progress`` receives each worker's reports (number, :class:`WorkerProgress`) as
    they come, about twice a second; ``on_idle`` is called at least that often while
    waiting. Once ``stop`` is set, or a worker stops early by itself, every worker is told
    to stop and return what it has; one that does not answer in time is killed, and its
    result holds the records it had reported (``load`` None). Raises
    :class:`WorkerError` when a worker fails; the others are then stopped.
    """
    context = multiprocessing.get_context("spawn")
    links: list[Connection] = []
    processes: list[Any] = []
    reported: set[int] = set()  # the workers that sent their result
    try:
        for plan in plans:
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(child_end, plan, target),
                name=f"qwen-sse-bench-{plan.worker}",
                daemon=True,
            )
            with signals_held():
                process.start()
            child_end.close()
            links.append(parent_end)
            processes.append(process)
        for number, link in enumerate(links):
            _expect(link, "ready", number)
        start_epoch = time.time() + start_delay_s
        for link in links:
            link.send(("start", start_epoch))
        return _collect(
            plans, links, reported=reported, on_progress=on_progress, on_idle=on_idle, stop=stop
        )
    finally:
        for number, process in enumerate(processes):
            if number in reported:
                process.join(timeout=10)
            if process.is_alive():
                # Workers ignore SIGTERM (it is their parent's to handle).
                process.kill()
                process.join(timeout=5)
        for link in links:
            link.close()


def _collect(
    plans: Sequence[ShardPlan],
    links: list[Connection],
    *,
    reported: set[int],
    on_progress: Callable[[int, WorkerProgress], None] | None,
    on_idle: Callable[[], None] | None,
    stop: Stop | None,
) -> list[ShardResult]:
    records: list[list[RequestRecord]] = [[] for _ in plans]
    reasons: list[str | None] = [None for _ in plans]
    results: dict[int, ShardResult] = {}
    waiting = dict(enumerate(links))
    stop_by: float | None = None  # monotonic deadline for the results, once stopping

    def stop_all() -> None:
        nonlocal stop_by
        if stop_by is not None:
            return
        stop_by = time.monotonic() + STOP_GRACE_S + _STOP_SLACK_S
        for link in waiting.values():
            # A worker that has just finished may be gone already.
            with contextlib.suppress(OSError):
                link.send(("stop", None))

    while waiting:
        watched: list[Connection | int] = list(waiting.values())
        if stop is not None and stop_by is None:
            watched.append(stop.fileno())
        timeout = _PROGRESS_EVERY_S
        if stop_by is not None:
            timeout = max(0.0, min(timeout, stop_by - time.monotonic()))
        for ready in wait(watched, timeout=timeout):
            if isinstance(ready, int):  # the stop's descriptor
                stop_all()
                continue
            number = next(n for n, link in waiting.items() if link is ready)
            kind, payload = _receive(waiting[number], number)
            if kind == "progress":
                progress = _progress_decoder.decode(payload)
                records[number].extend(progress.records)
                if progress.stop_reason is not None:
                    reasons[number] = progress.stop_reason
                    stop_all()
                if on_progress is not None:
                    on_progress(number, progress)
            elif kind == "result":
                results[number] = _result_decoder.decode(payload)
                reported.add(number)
                del waiting[number]
        if on_idle is not None:
            on_idle()
        if stop_by is not None and time.monotonic() >= stop_by:
            break
    lost = ShardResult(worker=0, records=[], load=None)
    return [
        msgspec.structs.replace(
            results.get(number, lost),
            worker=plan.worker,
            records=records[number],
            stop_reason=reasons[number] or results.get(number, lost).stop_reason,
        )
        for number, plan in enumerate(plans)
    ]


def _receive(link: Connection, number: int) -> tuple[str, Any]:
    try:
        kind, payload = link.recv()
    except EOFError:
        raise WorkerError(f"worker {number} exited without reporting") from None
    if kind == "error":
        summary, details = payload
        raise WorkerError(f"worker {number} failed: {summary}", details)
    return str(kind), payload


def _expect(link: Connection, wanted: str, number: int) -> Any:
    kind, payload = _receive(link, number)
    if kind != wanted:
        raise WorkerError(f"worker {number} sent {kind!r} where {wanted!r} was due")
    return payload


def _worker_main(link: Connection, plan: ShardPlan, target: Target) -> None:
    """A worker process: prepare, report ready, wait for the start instant, run, report."""
    leave_signals_to_parent()
    try:
        specs = prepare(plan)
        link.send(("ready", None))
        kind, start_epoch = link.recv()
        if kind != "start":
            return
        result = asyncio.run(
            _run(link, plan=plan, target=target, specs=specs, start_epoch=start_epoch)
        )
        link.send(("result", msgspec.msgpack.encode(result)))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        # The parent is gone: nobody is left to report to.
        return
    except BaseException as error:
        summary = " ".join(f"{type(error).__name__}: {error}".split())
        with contextlib.suppress(OSError):
            link.send(("error", (summary, traceback.format_exc())))
    finally:
        link.close()


async def _run(
    link: Connection,
    *,
    plan: ShardPlan,
    target: Target,
    specs: dict[int, Any],
    start_epoch: float,
) -> ShardResult:
    loop = asyncio.get_running_loop()
    start_at = loop.time() + (start_epoch - time.time())
    stop = asyncio.Event()
    progress = ShardProgress()
    finished: list[RequestRecord] = []

    def on_message() -> None:
        try:
            kind, _ = link.recv()
        except (EOFError, OSError):
            # The parent died (killed, or it exited at a second Ctrl-C): stop now, quietly.
            os._exit(1)
        if kind == "stop":
            stop.set()

    def report() -> None:
        update = WorkerProgress(
            records=finished[:],
            first_tokens_s=progress.take_first_tokens(),
            sent=progress.sent,
            in_flight=progress.in_flight,
            streaming=progress.streaming,
            stop_reason=progress.stop_reason,
        )
        finished.clear()
        link.send(("progress", msgspec.msgpack.encode(update)))

    async def reporter() -> None:
        while True:
            await asyncio.sleep(_PROGRESS_EVERY_S)
            report()

    loop.add_reader(link.fileno(), on_message)
    task = asyncio.create_task(reporter())
    try:
        result = await run_shard(
            plan,
            target,
            specs=specs,
            start_at=start_at,
            on_record=finished.append,
            progress=progress,
            stop=stop,
        )
    finally:
        task.cancel()
        loop.remove_reader(link.fileno())
    report()
    # The records went with the progress reports.
    return msgspec.structs.replace(result, records=[])

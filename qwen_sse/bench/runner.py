"""One shard of a load test, run in the current event loop: send, measure, record.

Edge layer (bench). It drives :class:`~qwen_sse.client.QwenClient` (the public API) under
a closed or an open loop, times every request on the loop's clock, watches the loop
itself with a :class:`~qwen_sse.bench.monitor.LoopMonitor`, and stops early when asked to
(or when its first requests are all refused alike). One process runs one shard;
:mod:`qwen_sse.bench.workers` runs several in parallel. It must not print (progress goes
to the ``on_record`` callback) and must not import the modules that run it (workers,
benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import resource
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from qwen_sse.bench.metrics import RequestRecord, record_of
from qwen_sse.bench.monitor import ClientLoad, LoopMonitor
from qwen_sse.bench.schedule import ClosedLoop, OpenLoop, slot_start_s
from qwen_sse.bench.tokenizer import counter
from qwen_sse.bench.workload import RequestSpec, Workload, follow_up
from qwen_sse.chat import ChatResult
from qwen_sse.client import QwenClient
from qwen_sse.config import API_KEY_ENV_VARS, Timeouts, resolve_api_key
from qwen_sse.errors import APIStatusError, ProxyError, QwenSSEError
from qwen_sse.retry import NO_RETRIES, classify

__all__ = [
    "FAIL_FAST_REQUESTS",
    "STOP_GRACE_S",
    "FailFast",
    "ShardPlan",
    "ShardProgress",
    "ShardResult",
    "Target",
    "raise_open_files_limit",
    "run_shard",
]

OnRecord = Callable[[RequestRecord], None]

# What "as many as allowed" means under an unlimited hard limit (Linux's default nr_open).
_UNLIMITED_FILES = 1 << 20

STOP_GRACE_S = 2.0
"""After a stop, how long the requests in flight may take to end before they are cancelled."""

FAIL_FAST_REQUESTS = 8
"""How many first requests, all refused alike, stop a run (:class:`FailFast`)."""


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """Where the load goes. ``base_url`` is ``protocol``'s base URL; ``api_key`` None reads
    it from the environment in each worker (so that it never travels between processes):
    from the variable ``api_key_env`` names, or ``DASHSCOPE_API_KEY`` (or ``QWEN_API_KEY``)
    when that is None; ``timeouts`` bound every request. ``proxy`` is
    :class:`~qwen_sse.client.QwenClient`'s: None takes it from the environment in each
    worker, ``""`` means none."""

    base_url: str
    model: str
    protocol: str = "compatible"
    api_key: str | None = None
    api_key_env: str | None = None
    timeouts: Timeouts = Timeouts()
    allow_insecure_http: bool = False
    proxy: str | None = None


class ShardPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What one worker sends.

    * ``shape``: this worker's share of the load (its slots or its concurrency cap).
    * ``slots``: closed loop, the global numbers of this worker's slots (for ramp-up
      offsets), out of ``total_slots``.
    * ``indices``: the request indices, in order; None (closed loop with a duration) means
      ``worker, worker + workers, ...`` for as long as the run lasts.
    * ``arrivals_s``: open loop, the intended send time of each index.
    * ``duration_s``: closed loop, stop sending new requests after this long.
    * ``warmup``: requests with a lower index are sent but not recorded.
    * ``params``: extra body fields for every request (DashScope's parameters).
    """

    worker: int = 0
    workers: int = 1
    shape: ClosedLoop | OpenLoop
    slots: list[int] = []
    total_slots: int = 1
    indices: list[int] | None
    arrivals_s: list[float] | None = None
    duration_s: float | None = None
    warmup: int = 0
    workload: Workload
    params: dict[str, Any] = {}

    def __post_init__(self) -> None:
        shape = self.shape
        if isinstance(shape, ClosedLoop):
            if len(self.slots) != shape.concurrency:
                raise ValueError(
                    f"a closed loop of {shape.concurrency} needs as many slots, got {self.slots}"
                )
            if any(not 0 <= slot < self.total_slots for slot in self.slots):
                raise ValueError(f"slots must lie below total_slots ({self.total_slots})")
            if self.indices is None and self.duration_s is None:
                raise ValueError("a closed loop without indices needs a duration")
        elif self.indices is None or self.arrivals_s is None:
            raise ValueError("an open loop needs its indices and their arrival times")
        elif len(self.indices) != len(self.arrivals_s):
            raise ValueError("an open loop needs one arrival time per index")


class ShardResult(msgspec.Struct, frozen=True, kw_only=True):
    """The measured (not warm-up) records of one worker, what its monitor saw (None: the
    worker was lost before it could say) and, when its first requests all failed alike,
    why it stopped early (``stop_reason``, see :class:`FailFast`)."""

    worker: int
    records: list[RequestRecord]
    load: ClientLoad | None
    stop_reason: str | None = None


class ShardProgress:
    """What a running shard has done so far, kept up to date by the runner for whoever
    shows progress: requests ``sent`` (warm-up included), ``in_flight`` now, and of those
    ``streaming`` (the first token came); ``first_tokens_s`` collects the time to first
    token of each request as its first token arrives (see :meth:`take_first_tokens`);
    ``stop_reason`` is set when the shard stops early by itself (:class:`FailFast`)."""

    __slots__ = ("first_tokens_s", "in_flight", "sent", "stop_reason", "streaming")

    def __init__(self) -> None:
        self.sent = 0
        self.in_flight = 0
        self.streaming = 0
        self.first_tokens_s: list[float] = []
        self.stop_reason: str | None = None

    def take_first_tokens(self) -> list[float]:
        """The times to first token collected since the last call."""
        taken, self.first_tokens_s = self.first_tokens_s, []
        return taken


class FailFast:
    """Stops a run that cannot succeed: when the first ``first`` requests to finish all
    failed with the same refusal (same error type and message, request ids aside), the
    rest would fail the same way.

    A refusal is an HTTP (or proxy) answer that retrying cannot change: a bad key (401),
    no permission (403), no such model or path (404), an invalid request (400), a redirect,
    an unpaid bill (429 "billing"), as :func:`qwen_sse.retry.classify` judges them. Timeouts,
    broken streams, throttling and server errors are the figures a load test is there to
    measure: they never stop a run.
    """

    def __init__(self, first: int) -> None:
        self.first = max(1, first)
        self._seen = 0
        self._same: tuple[str, str] | None = None
        self._decided = False

    def see(self, error: BaseException | None, *, request_id: str = "") -> str | None:
        """Take the outcome of the next request to finish (``error`` None: it succeeded);
        return the reason to stop, once, when the rule is met."""
        if self._decided:
            return None
        key = _refusal(error, request_id)
        if key is None or (self._same is not None and key != self._same):
            self._decided = True
            return None
        self._same = key
        self._seen += 1
        if self._seen < self.first:
            return None
        self._decided = True
        kind, message = key
        which = "request" if self.first == 1 else f"{self.first} requests all"
        return f"the first {which} failed with {kind}: {message}"


def _refusal(error: BaseException | None, request_id: str) -> tuple[str, str] | None:
    """``(type, message)`` of a refusal (see :class:`FailFast`), or None for anything else."""
    if not isinstance(error, APIStatusError | ProxyError):
        return None
    retryable, _ = classify(error)
    if retryable:
        return None
    message = str(error)
    if request_id:
        message = message.replace(f" (request id {request_id})", "")
    return type(error).__name__, message


def raise_open_files_limit() -> int | None:
    """Raise this process's open-file soft limit as far as the hard limit allows; return
    the limit now in force (None: unlimited). One connection is one file."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    wanted = _UNLIMITED_FILES if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        # The kernel may cap an "unlimited" hard limit lower (fs.nr_open): keep what is.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def prepare(plan: ShardPlan) -> dict[int, RequestSpec]:
    """The requests of a plan with a known list of indices, built before the clock starts
    (so that building prompts never competes with reading streams). It also loads the
    workload's tokenizer, which counts output tokens when a server reports no usage (and
    a conversation's answers): loading it mid-run would stall the loop for a good
    fraction of a second."""
    counter(plan.workload.tokenizer).text("qwen-sse bench")
    if plan.indices is None:
        return {}
    return {index: plan.workload.request(index) for index in plan.indices}


def connections_needed(shape: ClosedLoop | OpenLoop, slots: int) -> int:
    """The client's connection-pool size: never below the requests in flight, else waiting
    for a pooled connection would be counted as time to first token. 0 means no limit."""
    if isinstance(shape, ClosedLoop):
        return max(slots, 1)
    return shape.max_concurrency or 0


async def run_shard(
    plan: ShardPlan,
    target: Target,
    *,
    specs: dict[int, RequestSpec] | None = None,
    start_at: float | None = None,
    on_record: OnRecord | None = None,
    progress: ShardProgress | None = None,
    stop: asyncio.Event | None = None,
    grace_s: float = STOP_GRACE_S,
) -> ShardResult:
    """Run ``plan`` against ``target`` in the running loop and return what it measured.

    ``specs`` are the prepared requests (:func:`prepare`; built here when None).
    ``start_at`` is the loop-clock instant of the run's start, shared by every worker
    (now when None); all recorded instants count from it. Each measured record is passed
    to ``on_record`` as it completes (a cancelled one too), and ``progress`` is kept up
    to date.

    When ``stop`` is set (by the caller, or by the shard itself under :class:`FailFast`),
    no new request is sent; those in flight get ``grace_s`` to end, then are cancelled
    and recorded as ``cancelled``.
    """
    open_files = raise_open_files_limit()
    prepared = specs if specs is not None else prepare(plan)
    key_vars = API_KEY_ENV_VARS if target.api_key_env is None else (target.api_key_env,)
    client = QwenClient(
        resolve_api_key(target.api_key, env_vars=key_vars),
        target.base_url,
        model=target.model,
        timeouts=target.timeouts,
        # A load test measures each attempt as it is: a retry would hide a failure and
        # fold its time into a latency.
        retry=NO_RETRIES,
        max_connections=connections_needed(plan.shape, len(plan.slots)),
        allow_insecure_http=target.allow_insecure_http,
        protocol=target.protocol,
        proxy=target.proxy,
    )
    loop = asyncio.get_running_loop()
    shard = _Shard(
        plan=plan,
        target=target,
        client=client,
        specs=prepared,
        on_record=on_record,
        progress=progress if progress is not None else ShardProgress(),
        stop=stop if stop is not None else asyncio.Event(),
    )
    # Everything built so far lives for the whole run: keep the collector off it, so its
    # pauses (which stall the loop) stay short.
    gc.collect()
    gc.freeze()
    try:
        async with client:
            origin = shard.origin = start_at if start_at is not None else loop.time()
            watcher = asyncio.create_task(shard.watch_stop())
            try:
                await shard.wait_until(origin)
                monitor = LoopMonitor(worker=plan.worker, origin=origin)
                monitor.start()
                try:
                    await shard.run(plan.shape, grace_s)
                finally:
                    load = monitor.stop(open_files_limit=open_files)
            finally:
                watcher.cancel()
    finally:
        gc.unfreeze()
    return ShardResult(
        worker=plan.worker,
        records=shard.records,
        load=load,
        stop_reason=shard.progress.stop_reason,
    )


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Shard:
    """The running state of one shard: the client, the clock origin, the records."""

    def __init__(
        self,
        *,
        plan: ShardPlan,
        target: Target,
        client: QwenClient,
        specs: dict[int, RequestSpec],
        on_record: OnRecord | None,
        progress: ShardProgress,
        stop: asyncio.Event,
    ) -> None:
        self.plan = plan
        self.target = target
        self.client = client
        self.specs = specs
        self.origin = 0.0
        self.on_record = on_record
        self.progress = progress
        self.stop = stop
        self.records: list[RequestRecord] = []
        self.loop = asyncio.get_running_loop()
        self.fail_fast = FailFast(
            min(FAIL_FAST_REQUESTS, len(plan.indices))
            if plan.indices is not None
            else FAIL_FAST_REQUESTS
        )
        # The futures that sleeping slots (or the open loop's dispatcher) wait on: a stop
        # wakes them at once.
        self._sleepers: set[asyncio.Future[None]] = set()

    def _spec(self, index: int) -> RequestSpec:
        spec = self.specs.pop(index, None)
        return spec if spec is not None else self.plan.workload.request(index)

    async def watch_stop(self) -> None:
        await self.stop.wait()
        for sleeper in self._sleepers:
            _wake(sleeper)

    async def wait_until(self, when: float) -> bool:
        """Sleep until ``when`` on the loop clock; False when the run is stopping."""
        delay = when - self.loop.time()
        if delay > 0 and not self.stop.is_set():
            # asyncio.sleep's own mechanism (a future and a timer), plus a way to wake it.
            woken = self.loop.create_future()
            timer = self.loop.call_later(delay, _wake, woken)
            self._sleepers.add(woken)
            try:
                await woken
            finally:
                timer.cancel()
                self._sleepers.discard(woken)
        return not self.stop.is_set()

    async def run(self, shape: ClosedLoop | OpenLoop, grace_s: float) -> None:
        """Send the load until done or stopped; after a stop, ``grace_s`` for the requests
        in flight, then they are cancelled (each records its cancellation)."""
        if self.stop.is_set():
            return
        load = self.closed_loop(shape) if isinstance(shape, ClosedLoop) else self.open_loop(shape)
        work = asyncio.ensure_future(load)
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait((work, stopped), return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                await asyncio.wait((work,), timeout=grace_s)
        finally:
            stopped.cancel()
            if not work.done():
                work.cancel()
                await asyncio.wait((work,))
        if not work.cancelled():
            work.result()

    async def closed_loop(self, shape: ClosedLoop) -> None:
        plan = self.plan
        indices: Iterator[int] = (
            iter(plan.indices)
            if plan.indices is not None
            else itertools.count(plan.worker, plan.workers)
        )
        stop_at = None if plan.duration_s is None else self.origin + plan.duration_s

        async def slot(number: int) -> None:
            ready_at = self.origin + slot_start_s(number, plan.total_slots, shape.ramp_up_s)
            if not await self.wait_until(ready_at):
                return
            # Slots share one iterator; asyncio switches tasks only at awaits, so each
            # index is taken exactly once.
            for index in indices:
                if self.stop.is_set():
                    return
                spec = self._spec(index)
                # The reading that decides is the request's send time: building the spec
                # (which may take a while) cannot push a send past the end of the run.
                now = self.loop.time()
                if stop_at is not None and now >= stop_at:
                    return
                await self._unit(
                    spec, ready_at - self.origin, None, dispatched=now, stop_at=stop_at
                )
                ready_at = self.loop.time()

        await asyncio.gather(*(slot(number) for number in plan.slots))

    async def open_loop(self, shape: OpenLoop) -> None:
        plan = self.plan
        assert plan.indices is not None
        assert plan.arrivals_s is not None
        cap = asyncio.Semaphore(shape.max_concurrency) if shape.max_concurrency else None
        tasks: list[asyncio.Task[None]] = []
        try:
            for index, at_s in zip(plan.indices, plan.arrivals_s, strict=True):
                if not await self.wait_until(self.origin + at_s):
                    break
                request = self._unit(self._spec(index), at_s, cap)
                tasks.append(asyncio.create_task(request))
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            # Cut off at a stop: the requests in flight record their cancellation.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _request(
        self,
        spec: RequestSpec,
        scheduled_at_s: float,
        cap: asyncio.Semaphore | None,
        *,
        dispatched: float | None = None,
    ) -> ChatResult | None:
        """Send one request; ``scheduled_at_s`` is its intended instant from the origin,
        ``dispatched`` the loop-clock reading when the caller let it go (now when None).
        Returns its result when it succeeded, None when it failed. Once the run is
        stopping, a request still waiting under the cap is not sent (None)."""
        loop = self.loop
        if dispatched is None:
            dispatched = loop.time()
        scheduled = self.origin + scheduled_at_s
        sent = dispatched
        if cap is not None:
            await cap.acquire()
            if self.stop.is_set():
                cap.release()
                return None
            sent = loop.time()
        params = dict(self.plan.params)
        if spec.max_tokens is not None:
            params["max_tokens"] = spec.max_tokens
        progress = self.progress
        progress.sent += 1
        progress.in_flight += 1
        streaming = False
        stream = None
        result: ChatResult | None = None
        error: BaseException | None = None
        cancelled = False
        try:
            stream = self.client.stream_chat(spec.messages, self.target.model, **params)
            async with stream:
                # The client holds chunks without output back, so the first chunk out
                # is the first token (its exact time is in the result's timing).
                if await anext(stream, None) is not None:
                    streaming = True
                    progress.streaming += 1
                    progress.first_tokens_s.append(loop.time() - sent)
                    async for _ in stream:
                        pass
            result = stream.result
        except QwenSSEError as failure:
            result, error = failure.partial, failure
        except asyncio.CancelledError:
            # The run stopped and its grace ran out: record what arrived, then go.
            cancelled = True
            result = stream.result if stream is not None else None
        except Exception as failure:
            # One odd failure must not end a run: it is recorded by its type instead.
            error = failure
        finally:
            if cap is not None:
                cap.release()
            progress.in_flight -= 1
            if streaming:
                progress.streaming -= 1
        ended = loop.time()
        if spec.index >= self.plan.warmup:
            record = record_of(
                result,
                index=spec.index,
                worker=self.plan.worker,
                scheduled_at_s=scheduled_at_s,
                schedule_lag_s=max(0.0, dispatched - scheduled),
                queue_wait_s=sent - dispatched,
                sent_at_s=sent - self.origin,
                elapsed_s=ended - sent,
                prompt_tokens=spec.prompt_tokens,
                error=error,
                cancelled=cancelled,
                uncounted_parts=spec.uncounted_parts,
                turn=spec.turn,
                turns=spec.turns,
                count_text=counter(self.plan.workload.tokenizer).text,
            )
            self.records.append(record)
            if self.on_record is not None:
                self.on_record(record)
        if cancelled:
            raise asyncio.CancelledError
        # Warm-up requests count here too: they are the first to fail with a bad key.
        request_id = getattr(error, "request_id", "")
        reason = self.fail_fast.see(
            error, request_id=request_id if isinstance(request_id, str) else ""
        )
        if reason is not None and not self.stop.is_set():
            progress.stop_reason = reason
            self.stop.set()
        return result if error is None else None

    # -- conversations --------------------------------------------------------------------

    async def _unit(
        self,
        spec: RequestSpec,
        scheduled_at_s: float,
        cap: asyncio.Semaphore | None,
        *,
        dispatched: float | None = None,
        stop_at: float | None = None,
    ) -> None:
        """Send one unit of work: a request, or a conversation turn after turn.

        Each later turn of a conversation goes as soon as the previous one has ended (it is
        scheduled then), with the server's actual answer in its messages. A failed turn
        ends the conversation, and so does ``stop_at`` (closed loop with a duration): no
        turn is sent after it. Under ``cap`` (open loop) each turn takes a place of its own.
        """
        answer = await self._request(spec, scheduled_at_s, cap, dispatched=dispatched)
        while answer is not None and spec.later_turns:
            now = self.loop.time()
            if self.stop.is_set() or (stop_at is not None and now >= stop_at):
                return
            spec = follow_up(spec, answer.content, tokenizer=self.plan.workload.tokenizer)
            answer = await self._request(spec, now - self.origin, cap, dispatched=now)

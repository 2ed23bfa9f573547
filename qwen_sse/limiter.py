"""Admission control in front of the client: concurrency limits, RPM/TPM quotas (in one
process, or shared by many through Redis), adaptive concurrency, and the contract between
a limiter and the client.

I/O layer: it owns the waiting (asyncio) and the Redis round trips; the arithmetic is the
core's (:mod:`qwen_sse.ratelimit`), so the rules are the same in process and in Redis. It
must not import the client, the emulator or the CLI. The ``redis`` package is optional:
it is imported only when a :class:`RedisQuota` is built.

The client asks a :class:`Limiter` for a :class:`Permit` before every HTTP request
(retries and resumes included) and releases it exactly once when the request ends, with
the usage the server reported and an :data:`Outcome`. Every limiter here waits in FIFO
order, raises :class:`~qwen_sse.errors.QueueTimeoutError` when ``queue_timeout_s`` passes
first, reports the wait as ``Permit.queue_wait_s``, and releases without blocking.

* :class:`ConcurrencyLimiter`: at most N requests in flight, and at most M per model.
* :class:`QuotaLimiter`: RPM and TPM per model. A request reserves its prompt tokens
  (counted with the Qwen vocabulary) plus its expected output (``max_tokens``, else an
  estimate) and settles to the real total when the usage arrives.
* :class:`RedisQuota`: the quota's windows in Redis, one atomic Lua script per
  reservation and per settlement, for every process and host using one account.
* :class:`AdaptiveLimiter`: concurrency found by AIMD from the 429s, for unknown limits.
* :class:`CombinedLimiter`: several of these as the one ``limiter=`` of a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, TypeVar, runtime_checkable

import msgspec

from qwen_sse.chunks import Usage
from qwen_sse.config import resolve_api_key
from qwen_sse.errors import ConfigurationError, QueueTimeoutError, TransportError
from qwen_sse.ratelimit import AIMD, Quota, QuotaLimits, Reservation, smoothing_bucket
from qwen_sse.tokens import count_message_tokens

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "AdaptiveLimiter",
    "CombinedLimiter",
    "ConcurrencyLimiter",
    "LimitRequest",
    "Limiter",
    "Outcome",
    "Permit",
    "QuotaLimiter",
    "QuotaLimits",
    "RedisQuota",
    "account_fingerprint",
]

Outcome = Literal["ok", "throttled", "error", "cancelled"]
"""How a request ended, as a limiter needs to know it: ``throttled`` is an HTTP 429 that
means rate limiting (not billing); ``error`` any other failure."""

_log = logging.getLogger("qwen_sse.limiter")

_T = TypeVar("_T")

# Counting a prompt costs about 0.1 us per character; past this size it runs in a thread
# so that one huge prompt does not stall every other stream of the event loop.
_THREADED_PROMPT_CHARS = 1_000_000

# Weight of the newest sample in the running mean of successful request durations.
_DURATION_SMOOTHING = 0.2


class LimitRequest(msgspec.Struct, frozen=True):
    """What one request will cost: its model, its messages (to count the prompt), and
    the ``max_tokens`` it asks for (None: the limiter's own estimate of the output)."""

    model: str
    messages: Sequence[Mapping[str, Any]]
    max_tokens: int | None = None


class Permit(Protocol):
    """Admission of one request. ``queue_wait_s`` is how long ``acquire`` waited."""

    @property
    def queue_wait_s(self) -> float: ...

    def release(self, *, usage: Usage | None, outcome: Outcome) -> None:
        """Called exactly once when the request ends; ``usage`` settles a token
        reservation (None: the server reported none). Must not block."""


class Limiter(Protocol):
    """Anything that admits requests: concurrency, RPM/TPM buckets, shared or not."""

    async def acquire(self, request: LimitRequest) -> Permit:
        """Wait until the request may be sent; raise a ``QwenSSEError`` on queue timeout."""


@runtime_checkable
class _Closable(Protocol):
    async def aclose(self) -> None: ...


class _BasePermit:
    """A permit released at most once: by :meth:`release` when the request ended, or by
    :meth:`abandon` when it was never sent (a later limiter of a combination refused)."""

    __slots__ = ("_released", "queue_wait_s")

    def __init__(self, queue_wait_s: float) -> None:
        self.queue_wait_s = queue_wait_s
        self._released = False

    def release(self, *, usage: Usage | None, outcome: Outcome) -> None:
        if not self._released:
            self._released = True
            self._finish(usage, outcome)

    def abandon(self) -> None:
        """Give everything back: the request was never sent."""
        if not self._released:
            self._released = True
            self._give_back()

    def _finish(self, usage: Usage | None, outcome: Outcome) -> None:
        """What the limiter does when the request ended."""

    def _give_back(self) -> None:
        self._finish(None, "cancelled")


class _LimiterBase:
    """``async with`` support around :meth:`aclose`."""

    async def aclose(self) -> None:
        """Release what the limiter owns: pending settlements, held slots, connections."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _within(
    timeout_s: float | None, model: str, started_s: float, waiting: Coroutine[Any, Any, _T]
) -> _T:
    """Await ``waiting``; past ``timeout_s`` (from the call), raise QueueTimeoutError."""
    if timeout_s is None:
        return await waiting
    loop = asyncio.get_running_loop()
    deadline = asyncio.timeout_at(started_s + timeout_s)
    try:
        async with deadline:
            return await waiting
    except TimeoutError:
        if not deadline.expired():
            raise
        raise QueueTimeoutError(
            timeout_s=timeout_s, waited_s=loop.time() - started_s, model=model
        ) from None


class _Slots:
    """A FIFO-fair counting semaphore whose capacity may change while it is in use.

    A waiter is never overtaken by a later one; when the capacity drops below what is in
    use, nothing is granted until enough slots come back.
    """

    __slots__ = ("_capacity", "_waiters", "in_use")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._capacity = value
        self._grant()

    async def acquire(self) -> None:
        if not self._waiters and self.in_use < self._capacity:
            self.in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Granted in the same turn as the cancellation: hand the slot on.
                self.release()
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._grant()

    def _grant(self) -> None:
        waiters = self._waiters
        while waiters and self.in_use < self._capacity:
            waiter = waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)


# ---------------------------------------------------------------------------------------
# Concurrency


class _SlotsPermit(_BasePermit):
    __slots__ = ("_slots",)

    def __init__(self, queue_wait_s: float, slots: list[_Slots]) -> None:
        super().__init__(queue_wait_s)
        self._slots = slots

    def _finish(self, usage: Usage | None, outcome: Outcome) -> None:
        for slots in self._slots:
            slots.release()


async def _take_all(slots: list[_Slots]) -> None:
    taken: list[_Slots] = []
    try:
        for one in slots:
            await one.acquire()
            taken.append(one)
    except BaseException:
        for one in taken:
            one.release()
        raise


class ConcurrencyLimiter(_LimiterBase):
    """At most ``max_in_flight`` requests at once (None: no overall limit), and at most
    ``per_model[model]`` of one model; requests wait in FIFO order, the per-model queue
    first, so a model at its limit does not hold up the others.

    ``queue_timeout_s`` bounds the wait (QueueTimeoutError; None waits for as long as it
    takes). A request holds its slot until the client releases it, at the end of the
    stream.
    """

    def __init__(
        self,
        max_in_flight: int | None = None,
        *,
        per_model: Mapping[str, int] | None = None,
        queue_timeout_s: float | None = None,
    ) -> None:
        limits = {"max_in_flight": max_in_flight, **(per_model or {})}
        for name, value in limits.items():
            if value is not None and value < 1:
                raise ConfigurationError(f"concurrency limit {name} must be at least 1")
        _check_timeout(queue_timeout_s)
        self.max_in_flight = max_in_flight
        self.queue_timeout_s = queue_timeout_s
        self._all = _Slots(max_in_flight) if max_in_flight is not None else None
        self._per_model = {model: _Slots(limit) for model, limit in (per_model or {}).items()}

    def __repr__(self) -> str:
        return (
            f"ConcurrencyLimiter(max_in_flight={self.max_in_flight!r}, in_flight={self.in_flight})"
        )

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released (under the overall limit, if any, else
        summed over the per-model limits)."""
        if self._all is not None:
            return self._all.in_use
        return sum(slots.in_use for slots in self._per_model.values())

    async def acquire(self, request: LimitRequest) -> Permit:
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        slots = [s for s in (self._per_model.get(request.model), self._all) if s is not None]
        await _within(self.queue_timeout_s, request.model, started_s, _take_all(slots))
        return _SlotsPermit(loop.time() - started_s, slots)


def _check_timeout(queue_timeout_s: float | None) -> None:
    if queue_timeout_s is not None and not queue_timeout_s > 0:
        raise ConfigurationError(f"queue_timeout_s must be positive, got {queue_timeout_s}")


# ---------------------------------------------------------------------------------------
# Quotas


class _QuotaStore(Protocol):
    """Where the quota windows live: this process, or Redis."""

    async def reserve(self, model: str, limits: QuotaLimits, tokens: int) -> Reservation | float:
        """A reservation, or the seconds to wait before asking again."""

    def settle(
        self,
        model: str,
        limits: QuotaLimits,
        reservation: Reservation,
        tokens: int,
        *,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Settle to ``tokens`` in all, without blocking; ``then`` is called once done."""

    def cancel(
        self,
        model: str,
        limits: QuotaLimits,
        reservation: Reservation,
        *,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Return the whole reservation, without blocking; ``then`` is called once done."""

    async def usage(self, model: str, limits: QuotaLimits) -> tuple[int, int]:
        """``(requests, tokens)`` counted now in the model's windows."""

    async def aclose(self) -> None: ...


class _LocalStore:
    """The windows of this process: one core :class:`~qwen_sse.ratelimit.Quota` per model,
    on the event loop's clock."""

    def __init__(self) -> None:
        self._quotas: dict[str, Quota] = {}

    def _quota(self, model: str, limits: QuotaLimits) -> Quota:
        quota = self._quotas.get(model)
        if quota is None:
            quota = self._quotas[model] = Quota(limits)
        return quota

    async def reserve(self, model: str, limits: QuotaLimits, tokens: int) -> Reservation | float:
        return self._quota(model, limits).reserve(tokens, asyncio.get_running_loop().time())

    def settle(
        self,
        model: str,
        limits: QuotaLimits,
        reservation: Reservation,
        tokens: int,
        *,
        then: Callable[[], None] | None = None,
    ) -> None:
        now_s = asyncio.get_running_loop().time()
        self._quota(model, limits).settle(reservation, tokens, now_s)
        if then is not None:
            then()

    def cancel(
        self,
        model: str,
        limits: QuotaLimits,
        reservation: Reservation,
        *,
        then: Callable[[], None] | None = None,
    ) -> None:
        self._quota(model, limits).cancel(reservation, asyncio.get_running_loop().time())
        if then is not None:
            then()

    async def usage(self, model: str, limits: QuotaLimits) -> tuple[int, int]:
        return self._quota(model, limits).used(asyncio.get_running_loop().time())

    async def aclose(self) -> None:
        """Nothing to release: the windows are plain objects."""


class _QuotaPermit(_BasePermit):
    __slots__ = ("_limiter", "_limits", "_model", "_prompt_tokens", "_reservation")

    def __init__(
        self,
        queue_wait_s: float,
        *,
        limiter: QuotaLimiter,
        model: str,
        limits: QuotaLimits,
        reservation: Reservation,
        prompt_tokens: int,
    ) -> None:
        super().__init__(queue_wait_s)
        self._limiter = limiter
        self._model = model
        self._limits = limits
        self._reservation = reservation
        self._prompt_tokens = prompt_tokens

    def _finish(self, usage: Usage | None, outcome: Outcome) -> None:
        reservation = self._reservation
        if usage is not None:
            used = usage.total_tokens
        elif outcome == "throttled":
            # Refused by the server: it processed nothing.
            used = 0
        elif outcome == "error":
            # Mostly refused or broken before the answer: the prompt is what it probably
            # counted; its output estimate is given back.
            used = self._prompt_tokens
        else:
            # Cancelled mid-answer, or a server that reports no usage: it may have
            # produced all that was reserved, so the reservation stands.
            used = reservation.tokens
        if used != reservation.tokens:
            self._limiter._store.settle(
                self._model, self._limits, reservation, used, then=self._wake_the_queue
            )

    def _give_back(self) -> None:
        self._limiter._store.cancel(
            self._model, self._limits, self._reservation, then=self._wake_the_queue
        )

    def _wake_the_queue(self) -> None:
        """A refund may have made room: the head of the queue looks again."""
        self._limiter._wake(self._model)


class _FreePermit(_BasePermit):
    """Admission of a request no limit applies to."""

    __slots__ = ()


class QuotaLimiter(_LimiterBase):
    """RPM and TPM per model, in this process or shared through ``store`` (a
    :class:`RedisQuota`).

    ``limits`` is one :class:`~qwen_sse.ratelimit.QuotaLimits` for every model (each model
    still has its own windows, as DashScope counts them) or a mapping from model name to
    limits, in which case other models are not limited.

    Before a request is sent it reserves one request and ``prompt + expected output``
    tokens: the prompt counted as DashScope bills it
    (:func:`~qwen_sse.tokens.count_message_tokens`), the output ``max_tokens`` when the
    request sets it, else ``output_estimate_tokens``. On release the reservation settles
    to ``usage.total_tokens``; without usage, a throttled request is refunded all its
    tokens, another failure keeps its prompt tokens only, and a cancelled one keeps the
    reservation. The request itself stays counted: the server saw it.

    Requests of one model wait in FIFO order in this process (processes sharing Redis
    are not ordered among themselves). ``queue_timeout_s`` bounds the wait. A request
    that can never fit (more tokens than the TPM) raises ConfigurationError at once.

    Acquire the quota last, right before sending (:class:`CombinedLimiter` does): the
    server counts a request from its arrival, and a reservation made early would expire
    early. ``QuotaLimits.margin_s`` covers the time between reserving and arriving.
    """

    def __init__(
        self,
        limits: QuotaLimits | Mapping[str, QuotaLimits],
        *,
        store: RedisQuota | None = None,
        output_estimate_tokens: int = 1024,
        queue_timeout_s: float | None = None,
    ) -> None:
        if output_estimate_tokens < 0:
            raise ConfigurationError("output_estimate_tokens must not be negative")
        _check_timeout(queue_timeout_s)
        self.limits = limits
        self.output_estimate_tokens = output_estimate_tokens
        self.queue_timeout_s = queue_timeout_s
        self._store: _QuotaStore = store if store is not None else _LocalStore()
        self._turns: dict[str, asyncio.Lock] = {}
        self._changes: dict[str, asyncio.Event] = {}

    def __repr__(self) -> str:
        return f"QuotaLimiter({self.limits!r}, store={self._store!r})"

    def limits_of(self, model: str) -> QuotaLimits | None:
        """The limits that apply to ``model``, or None."""
        if isinstance(self.limits, QuotaLimits):
            return self.limits
        return self.limits.get(model)

    async def usage(self, model: str) -> tuple[int, int]:
        """``(requests, tokens)`` counted now in ``model``'s windows; ``(0, 0)`` for a
        model without limits."""
        limits = self.limits_of(model)
        if limits is None:
            return 0, 0
        return await self._store.usage(model, limits)

    async def acquire(self, request: LimitRequest) -> Permit:
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        model = request.model
        limits = self.limits_of(model)
        if limits is None:
            return _FreePermit(0.0)
        prompt_tokens = await _prompt_tokens(request.messages)
        expected = request.max_tokens
        tokens = prompt_tokens + (self.output_estimate_tokens if expected is None else expected)
        limits.check(tokens)
        reservation = await _within(
            self.queue_timeout_s, model, started_s, self._reserve(model, limits, tokens)
        )
        return _QuotaPermit(
            loop.time() - started_s,
            limiter=self,
            model=model,
            limits=limits,
            reservation=reservation,
            prompt_tokens=prompt_tokens,
        )

    async def _reserve(self, model: str, limits: QuotaLimits, tokens: int) -> Reservation:
        turn = self._turns.get(model)
        if turn is None:
            turn = self._turns[model] = asyncio.Lock()
        changed = self._changes.get(model)
        if changed is None:
            changed = self._changes[model] = asyncio.Event()
        # asyncio.Lock is FIFO-fair: the head of the queue waits for room, the rest for it.
        async with turn:
            while True:
                changed.clear()
                reserved = await self._store.reserve(model, limits, tokens)
                if isinstance(reserved, Reservation):
                    return reserved
                # A refund in this process may make room before the computed time.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(reserved):
                        await changed.wait()

    def _wake(self, model: str) -> None:
        changed = self._changes.get(model)
        if changed is not None:
            changed.set()

    async def aclose(self) -> None:
        await self._store.aclose()


async def _prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    chars = sum(len(content) for m in messages if isinstance(content := m.get("content"), str))
    if chars < _THREADED_PROMPT_CHARS:
        return count_message_tokens(messages)
    return await asyncio.to_thread(count_message_tokens, messages)


# ---------------------------------------------------------------------------------------
# Redis

# The quota of one account and model: KEYS[1] a sorted set of request keys, KEYS[2] a
# sorted set of token entries "<key>:<tokens>" (overruns "e<key>:<tokens>"), KEYS[3] the
# tokens in the window, KEYS[4] a hash of the smoothing buckets' levels and times. Scores
# and times are milliseconds. Units come back one hold after they were taken (the core's
# SlidingWindow and TokenBucket, in Lua); every key expires a hold after the last write,
# so whatever a dead process reserved is gone by then.
_LUA_COMMON = """
local function num(x) return string.format('%.17g', x) end

local function clock()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

local function amount_of(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

local function prune(now, hold)
  local cutoff = num(now - hold)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  local freed = 0
  repeat
    local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff, 'LIMIT', 0, 256)
    for _, member in ipairs(old) do freed = freed + amount_of(member) end
    if #old > 0 then redis.call('ZREM', KEYS[2], unpack(old)) end
  until #old < 256
  if freed > 0 then redis.call('DECRBY', KEYS[3], freed) end
  return tonumber(redis.call('GET', KEYS[3]) or '0')
end

-- A smoothing bucket's level at now: full when unknown, refilled since its last change.
local function level(name, cap, rate, now)
  local state = redis.call('HMGET', KEYS[4], name .. 'level', name .. 'at')
  local stored, at = tonumber(state[1]), tonumber(state[2])
  if not stored then return cap, now end
  if now <= at then return stored, at end
  return math.min(cap, stored + (now - at) / 1000 * rate), now
end

local function add(name, cap, rate, now, amount)
  local current, at = level(name, cap, rate, now)
  local updated = math.min(cap, current + amount)
  redis.call('HSET', KEYS[4], name .. 'level', num(updated), name .. 'at', num(at))
end

local function keep_for(hold)
  local ttl = math.ceil(hold) + 1000
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
end

local now, hold = clock(), tonumber(ARGV[2])
local rps, rps_rate = tonumber(ARGV[3]), tonumber(ARGV[4])
local tps, tps_rate = tonumber(ARGV[5]), tonumber(ARGV[6])
"""

# ARGV: now_ms or '', hold_ms, the smoothing buckets of requests and of tokens as capacity
# and rate per second ('' without), rpm or '', tpm or '', tokens, key.
# Returns {1, now_us} when reserved, else {0, wait_us}.
_LUA_RESERVE = (
    _LUA_COMMON
    + """
local rpm, tpm = tonumber(ARGV[7]), tonumber(ARGV[8])
local tokens, key = tonumber(ARGV[9]), ARGV[10]
local in_window = prune(now, hold)

-- Milliseconds until the oldest units of zkey free `excess` (weighted: tokens).
local function walk(zkey, weighted, excess)
  local freed, offset = 0, 0
  while true do
    local batch = redis.call('ZRANGE', zkey, offset, offset + 255, 'WITHSCORES')
    for i = 1, #batch, 2 do
      freed = freed + (weighted and amount_of(batch[i]) or 1)
      if freed >= excess then return tonumber(batch[i + 1]) + hold - now end
    end
    if #batch < 512 then return hold end
    offset = offset + 256
  end
end

local function bucket_wait(name, cap, rate, amount)
  local needed = math.min(amount, cap)
  local current = level(name, cap, rate, now)
  if current >= needed then return 0 end
  return (needed - current) / rate * 1000
end

local wait = 0
if rpm then
  local excess = redis.call('ZCARD', KEYS[1]) + 1 - rpm
  if excess > 0 then wait = math.max(wait, walk(KEYS[1], false, excess)) end
end
if rps then wait = math.max(wait, bucket_wait('r', rps, rps_rate, 1)) end
if tpm then
  local excess = in_window + tokens - tpm
  if excess > 0 then wait = math.max(wait, walk(KEYS[2], true, excess)) end
end
if tps then wait = math.max(wait, bucket_wait('t', tps, tps_rate, tokens)) end
if wait > 0 then return {0, math.ceil(wait * 1000)} end

redis.call('ZADD', KEYS[1], num(now), key)
if tokens > 0 then
  redis.call('ZADD', KEYS[2], num(now), key .. ':' .. tokens)
  redis.call('INCRBY', KEYS[3], tokens)
end
if rps then add('r', rps, rps_rate, now, -1) end
if tps then add('t', tps, tps_rate, now, -tokens) end
keep_for(hold)
return {1, math.floor(now * 1000)}
"""
)

# ARGV: now_ms or '', hold_ms, the smoothing buckets as for reserving, key, reserved
# tokens, tokens used, '1' to cancel (return the request too).
_LUA_SETTLE = (
    _LUA_COMMON
    + """
local key, reserved, used = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
prune(now, hold)
if ARGV[10] == '1' then
  redis.call('ZREM', KEYS[1], key)
  if rps then add('r', rps, rps_rate, now, 1) end
end
if used < reserved then
  local member = key .. ':' .. reserved
  local at = redis.call('ZSCORE', KEYS[2], member)
  if at then
    redis.call('ZREM', KEYS[2], member)
    if used > 0 then redis.call('ZADD', KEYS[2], at, key .. ':' .. used) end
    redis.call('DECRBY', KEYS[3], reserved - used)
  end
  if tps then add('t', tps, tps_rate, now, reserved - used) end
elseif used > reserved then
  redis.call('ZADD', KEYS[2], num(now), 'e' .. key .. ':' .. (used - reserved))
  redis.call('INCRBY', KEYS[3], used - reserved)
  if tps then add('t', tps, tps_rate, now, reserved - used) end
  keep_for(hold)
end
return 1
"""
)

# ARGV: now_ms or '', hold_ms, and the (unused) smoothing buckets. Returns {requests,
# tokens} in the window.
_LUA_USAGE = (
    _LUA_COMMON
    + """
local in_window = prune(now, hold)
return {redis.call('ZCARD', KEYS[1]), in_window}
"""
)


def account_fingerprint(api_key: str) -> str:
    """A stable name for the account of ``api_key`` that does not reveal the key."""
    digest = hashlib.blake2b(api_key.encode(), digest_size=12, person=b"qwen-sse-acct")
    return digest.hexdigest()


class RedisQuota:
    """The quota windows in Redis, shared by every process and host that uses the same
    Redis, ``account`` and model: pass it as ``QuotaLimiter(limits, store=RedisQuota(...))``.

    ``server`` is a URL (``redis://127.0.0.1:6379/0``; needs the ``redis`` package, the
    ``qwen-sse[redis]`` extra) or a ``redis.asyncio.Redis`` client (which stays the
    caller's to close). Keys are namespaced ``{prefix}:{account:model}:...`` (one Redis
    Cluster hash slot per account and model), where the account is ``account`` if given,
    else a fingerprint of ``api_key`` (or of the key in ``DASHSCOPE_API_KEY`` /
    ``QWEN_API_KEY``): never the key itself.

    Each reservation and each settlement is one atomic Lua script. Reservations count for
    one hold (window plus margin) and then expire, whether or not they were settled, so a
    process that dies holding some leaks nothing past that. Times come from Redis's own
    clock, so hosts whose clocks disagree still share one window; ``clock_s`` (seconds)
    replaces it in tests. Settlements run as tasks this object owns; :meth:`aclose` waits
    for them. A Redis failure while reserving raises TransportError; a failed settlement
    is logged, and its reservation simply expires.

    Every operation (reserve, settle, cancel, usage) is bounded by ``timeout_s`` seconds
    (default 2): a Redis that stops answering (a network blackhole) raises TransportError
    instead of hanging its callers. A client built from a URL also gets it as its socket
    and connect timeouts; a client passed in keeps its own, and the bound still applies.
    """

    def __init__(
        self,
        server: str | Redis,
        *,
        account: str | None = None,
        api_key: str | None = None,
        prefix: str = "qwen-sse",
        clock_s: Callable[[], float] | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        try:
            # Imported here: redis is an optional extra, needed by this class only.
            import redis.asyncio as redis_asyncio  # noqa: PLC0415
            from redis.exceptions import RedisError  # noqa: PLC0415
            from redis.exceptions import TimeoutError as RedisTimeoutError  # noqa: PLC0415
        except ImportError as error:
            raise ConfigurationError(
                "RedisQuota needs the redis package: pip install 'qwen-sse[redis]'"
            ) from error
        if account is None:
            account = account_fingerprint(resolve_api_key(api_key))
        if not account or any(char in account for char in "{}"):
            raise ConfigurationError(f"invalid account name {account!r}")
        if not timeout_s > 0:
            raise ConfigurationError(f"timeout_s must be positive, got {timeout_s}")
        self.account = account
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._owns_client = isinstance(server, str)
        self._redis: Redis = (
            redis_asyncio.Redis.from_url(
                server, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
            if isinstance(server, str)
            else server
        )
        self._redis_error: type[Exception] = RedisError
        self._redis_timeout: type[Exception] = RedisTimeoutError
        self._clock_s = clock_s
        self._reserve_script = self._redis.register_script(_LUA_RESERVE)
        self._settle_script = self._redis.register_script(_LUA_SETTLE)
        self._usage_script = self._redis.register_script(_LUA_USAGE)
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return (
            f"RedisQuota(account={self.account!r}, prefix={self.prefix!r}, "
            f"timeout_s={self.timeout_s!r})"
        )

    def keys(self, model: str) -> list[str]:
        """The Redis keys of ``model``'s windows."""
        base = f"{self.prefix}:{{{self.account}:{model}}}"
        return [
            f"{base}:requests",
            f"{base}:tokens",
            f"{base}:tokens-in-window",
            f"{base}:smoothing",
        ]

    def _now_arg(self) -> str:
        return "" if self._clock_s is None else repr(self._clock_s() * 1000.0)

    async def _run(
        self,
        operation: str,
        script: Callable[..., Awaitable[Any]],
        model: str,
        limits: QuotaLimits,
        args: list[str],
    ) -> Any:
        """Run one script within ``timeout_s``; any failure is a TransportError naming the
        store, the operation and the model (Redis's own message names host and port,
        never a password)."""
        common = [self._now_arg(), repr(limits.hold_s * 1000.0)]
        for limit in (limits.rpm, limits.tpm):
            if limit is None or not limits.smoothing:
                common += ["", ""]
            else:
                capacity, rate_per_s = smoothing_bucket(limit, limits.hold_s)
                common += [repr(capacity), repr(rate_per_s)]
        bound = asyncio.timeout(self.timeout_s)
        try:
            async with bound:
                return await script(keys=self.keys(model), args=[*common, *args])
        except (TimeoutError, self._redis_error) as error:
            # The socket timeout and the bound are the same: either may fire first.
            if isinstance(error, self._redis_timeout) or bound.expired():
                raise TransportError(
                    f"the Redis quota store did not answer {operation} for {model} "
                    f"within timeout_s={self.timeout_s}"
                ) from error
            if isinstance(error, TimeoutError):
                raise
            raise TransportError(
                f"the Redis quota store failed to {operation} for {model}: {error}"
            ) from error

    async def reserve(self, model: str, limits: QuotaLimits, tokens: int) -> Reservation | float:
        """Reserve a request of ``tokens`` in ``model``'s windows if it fits now (a
        :class:`~qwen_sse.ratelimit.Reservation` timed by Redis's clock); else the seconds
        to wait before asking again."""
        key = secrets.randbits(62)
        args = ["" if limit is None else str(limit) for limit in (limits.rpm, limits.tpm)]
        args += [str(tokens), str(key)]
        reserved, value = await self._run("reserve", self._reserve_script, model, limits, args)
        if reserved:
            return Reservation(key, tokens, int(value) / 1e6)
        return max(int(value), 1000) / 1e6

    def settle(
        self,
        model: str,
        limits: QuotaLimits,
        reservation: Reservation,
        tokens: int,
        *,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Settle ``reservation`` to ``tokens`` in all, in a task; ``then`` is called when
        it has reached Redis (or failed)."""
        settlement = self._settle(model, limits, reservation, max(0, tokens), cancel=False)
        self._spawn(settlement, then)

    def cancel(
        self,
        model: str,
        limits: QuotaLimits,
        reservation: Reservation,
        *,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Return ``reservation`` whole, its request included, in a task; ``then`` is
        called when that has reached Redis (or failed)."""
        self._spawn(self._settle(model, limits, reservation, 0, cancel=True), then)

    async def _settle(
        self,
        model: str,
        limits: QuotaLimits,
        reservation: Reservation,
        tokens: int,
        *,
        cancel: bool,
    ) -> None:
        args = [str(reservation.key), str(reservation.tokens), str(tokens), "1" if cancel else "0"]
        await self._run("cancel" if cancel else "settle", self._settle_script, model, limits, args)

    def _spawn(
        self, settlement: Coroutine[Any, Any, None], then: Callable[[], None] | None
    ) -> None:
        task = asyncio.get_running_loop().create_task(settlement)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and (error := task.exception()) is not None:
                _log.warning("a quota settlement in Redis failed (it expires by itself): %s", error)
            if then is not None:
                then()

        task.add_done_callback(done)

    async def usage(self, model: str, limits: QuotaLimits) -> tuple[int, int]:
        """``(requests, tokens)`` counted now in ``model``'s windows, by every process."""
        requests, tokens = await self._run("read usage", self._usage_script, model, limits, [])
        return int(requests), int(tokens)

    async def settled(self) -> None:
        """Wait until every settlement started so far has reached Redis (or failed)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def aclose(self) -> None:
        """Wait for pending settlements, then close the client if this object made it."""
        await self.settled()
        if self._owns_client:
            await self._redis.aclose()


# ---------------------------------------------------------------------------------------
# Adaptive concurrency


class _AdaptiveModel:
    """One model's AIMD state, its slots, and the running mean of successful requests'
    durations."""

    __slots__ = ("aimd", "holds", "mean_duration_s", "slots")

    def __init__(self, aimd: AIMD) -> None:
        self.aimd = aimd
        self.slots = _Slots(aimd.allowed)
        self.mean_duration_s: float | None = None
        self.holds: set[asyncio.TimerHandle] = set()


class _AdaptivePermit(_BasePermit):
    __slots__ = ("_generation", "_limiter", "_started_s", "_state")

    def __init__(
        self, queue_wait_s: float, limiter: AdaptiveLimiter, state: _AdaptiveModel
    ) -> None:
        super().__init__(queue_wait_s)
        self._limiter = limiter
        self._state = state
        self._generation = state.aimd.generation
        self._started_s = asyncio.get_running_loop().time()

    def _finish(self, usage: Usage | None, outcome: Outcome) -> None:
        self._limiter._ended(self._state, self._generation, self._started_s, outcome)

    def _give_back(self) -> None:
        self._state.slots.release()


class AdaptiveLimiter(_LimiterBase):
    """Concurrency per model found by AIMD (:class:`~qwen_sse.ratelimit.AIMD`) from the
    server's throttling 429s, for limits the client does not know.

    Each model starts at ``initial_limit`` requests in flight; successes raise the limit
    by one per round, a throttled request cuts it by ``decrease_factor`` (once per round),
    and the level that throttled is remembered for ``memory_s`` with ``headroom`` below
    it, so the limit settles under the server's instead of probing it again and again.

    A throttled request keeps its slot for the mean duration of the model's successful
    requests (not at all before the first success): a 429 comes back in a millisecond,
    and freeing its slot at once would send the next request into the same full window,
    hundreds of times a second.

    It bounds concurrency, so it bounds the request rate only through the requests'
    durations; when the limits are known, a :class:`QuotaLimiter` enforces them exactly.
    """

    def __init__(
        self,
        *,
        initial_limit: int = 8,
        min_limit: int = 1,
        max_limit: int = 256,
        decrease_factor: float = 0.5,
        headroom: float = 0.9,
        memory_s: float = 300.0,
        queue_timeout_s: float | None = None,
    ) -> None:
        self._aimd_settings = {
            "initial": initial_limit,
            "minimum": min_limit,
            "maximum": max_limit,
            "decrease_factor": decrease_factor,
            "headroom": headroom,
            "memory_s": memory_s,
        }
        AIMD(**self._aimd_settings)  # validates the settings now rather than per model
        _check_timeout(queue_timeout_s)
        self.queue_timeout_s = queue_timeout_s
        self._models: dict[str, _AdaptiveModel] = {}

    def __repr__(self) -> str:
        limits = {model: state.aimd.allowed for model, state in self._models.items()}
        return f"AdaptiveLimiter(limits={limits!r})"

    def limit(self, model: str) -> int:
        """The concurrency allowed now for ``model``."""
        return self._state(model).aimd.allowed

    def in_flight(self, model: str) -> int:
        """``model``'s slots taken now, those still held after a 429 included."""
        return self._state(model).slots.in_use

    def _state(self, model: str) -> _AdaptiveModel:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _AdaptiveModel(AIMD(**self._aimd_settings))
        return state

    async def acquire(self, request: LimitRequest) -> Permit:
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        state = self._state(request.model)
        await _within(self.queue_timeout_s, request.model, started_s, state.slots.acquire())
        return _AdaptivePermit(loop.time() - started_s, self, state)

    def _ended(
        self, state: _AdaptiveModel, generation: int, started_s: float, outcome: Outcome
    ) -> None:
        loop = asyncio.get_running_loop()
        now_s = loop.time()
        aimd = state.aimd
        if outcome == "ok":
            duration_s = now_s - started_s
            mean = state.mean_duration_s
            state.mean_duration_s = (
                duration_s if mean is None else mean + _DURATION_SMOOTHING * (duration_s - mean)
            )
            aimd.on_success(generation, now_s)
        elif outcome == "throttled":
            aimd.on_throttled(generation, now_s)
        state.slots.capacity = aimd.allowed
        hold_s = state.mean_duration_s if outcome == "throttled" else None
        if not hold_s:
            state.slots.release()
            return
        handle: asyncio.TimerHandle

        def end_hold() -> None:
            state.holds.discard(handle)
            state.slots.release()

        handle = loop.call_later(hold_s, end_hold)
        state.holds.add(handle)

    async def aclose(self) -> None:
        """Free the slots still held after throttling."""
        for state in self._models.values():
            for handle in state.holds:
                handle.cancel()
                state.slots.release()
            state.holds.clear()


# ---------------------------------------------------------------------------------------
# Combination


class _CombinedPermit(_BasePermit):
    __slots__ = ("_permits",)

    def __init__(self, queue_wait_s: float, permits: list[Permit]) -> None:
        super().__init__(queue_wait_s)
        self._permits = permits

    def _finish(self, usage: Usage | None, outcome: Outcome) -> None:
        for permit in reversed(self._permits):
            permit.release(usage=usage, outcome=outcome)

    def _give_back(self) -> None:
        _abandon_all(self._permits)


def _abandon_all(permits: list[Permit]) -> None:
    for permit in reversed(permits):
        if isinstance(permit, _BasePermit):
            permit.abandon()
        else:
            permit.release(usage=None, outcome="cancelled")


class CombinedLimiter(_LimiterBase):
    """Several limiters as one: a request is admitted when every one has admitted it,
    and released from each (in reverse order) when it ends.

    They are acquired in the order given, except that :class:`QuotaLimiter` instances
    come last whatever their place, so that a reservation is made right before sending
    and not while waiting for a concurrency slot. If one fails (queue timeout,
    cancellation), the permits already granted are given back untouched. The permit's
    ``queue_wait_s`` is the whole wait; ``queue_timeout_s``, if set, bounds it (each
    limiter's own timeout still applies). :meth:`aclose` closes every limiter that has an
    ``aclose``.

    Typical: ``CombinedLimiter(ConcurrencyLimiter(64), QuotaLimiter(limits))``.
    """

    def __init__(self, *limiters: Limiter, queue_timeout_s: float | None = None) -> None:
        if not limiters:
            raise ConfigurationError("CombinedLimiter needs at least one limiter")
        _check_timeout(queue_timeout_s)
        first = [one for one in limiters if not isinstance(one, QuotaLimiter)]
        self.limiters: tuple[Limiter, ...] = (
            *first,
            *(one for one in limiters if isinstance(one, QuotaLimiter)),
        )
        self.queue_timeout_s = queue_timeout_s

    def __repr__(self) -> str:
        return f"CombinedLimiter{self.limiters!r}"

    async def acquire(self, request: LimitRequest) -> Permit:
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        permits = await _within(
            self.queue_timeout_s, request.model, started_s, self._acquire_all(request)
        )
        return _CombinedPermit(loop.time() - started_s, permits)

    async def _acquire_all(self, request: LimitRequest) -> list[Permit]:
        permits: list[Permit] = []
        try:
            for limiter in self.limiters:
                permits.append(await limiter.acquire(request))
        except BaseException:
            _abandon_all(permits)
            raise
        return permits

    async def aclose(self) -> None:
        for limiter in self.limiters:
            if isinstance(limiter, _Closable):
                await limiter.aclose()

"""Tests of qwen_sse.limiter over real loopback sockets against the emulator (and of the
emulator's own RPM/TPM limits), and of the shared quota against a real redis-server that
a fixture starts on a free loopback port and stops after.

Windows are scaled down to a second or two. Assertions count 429s and completed requests
per window; the only timings asserted are those the behaviour guarantees (a request that
queued behind another waited at least as long as that one took).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import random
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import redis.asyncio

import qwen_sse.emulator.server as emulator_server
from qwen_sse.chunks import Usage
from qwen_sse.client import QwenClient
from qwen_sse.config import API_KEY_ENV_VARS
from qwen_sse.emulator import FAULT_HEADER, Emulator, EmulatorConfig, Fault
from qwen_sse.errors import (
    ConfigurationError,
    QueueTimeoutError,
    RateLimitError,
    TransportError,
)
from qwen_sse.limiter import (
    AdaptiveLimiter,
    CombinedLimiter,
    ConcurrencyLimiter,
    Limiter,
    LimitRequest,
    Outcome,
    Permit,
    QuotaLimiter,
    QuotaLimits,
    RedisQuota,
    account_fingerprint,
)
from qwen_sse.ratelimit import Quota, Reservation
from qwen_sse.retry import NO_RETRIES
from qwen_sse.tokens import count_message_tokens
from tests.redisserver import running_redis

KEY = "sk-test"
MODEL = "qwen-plus"


def question(number: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Question {number}: tell me about streaming parsers"}]


def emulator(**config: Any) -> Emulator:
    return Emulator(EmulatorConfig(**{"api_key": KEY, "ttft_s": 0.0, "itl_s": 0.0, **config}))


def client_of(server: Emulator, limiter: Limiter | None = None) -> QwenClient:
    return QwenClient(KEY, server.base_url, retry=NO_RETRIES, limiter=limiter)


def request(max_tokens: int | None = None, model: str = MODEL) -> LimitRequest:
    return LimitRequest(model=model, messages=question(0), max_tokens=max_tokens)


@dataclass
class Burst:
    """What a burst of calls got: ``done`` holds (completion time, total tokens)."""

    done: list[tuple[float, int]] = field(default_factory=list)
    throttled: int = 0
    queue_waits_s: list[float] = field(default_factory=list)


async def burst(client: QwenClient, calls: int, **params: Any) -> Burst:
    """Send ``calls`` chats at once; count completions and throttling 429s."""
    outcome = Burst()
    loop = asyncio.get_running_loop()

    async def one(number: int) -> None:
        try:
            result = await client.chat(question(number), MODEL, **params)
        except RateLimitError:
            outcome.throttled += 1
            return
        assert result.usage is not None
        outcome.done.append((loop.time(), result.usage.total_tokens))
        outcome.queue_waits_s.append(result.queue_wait_s)

    await asyncio.gather(*(one(number) for number in range(calls)))
    return outcome


# --- the emulator's limits ---


async def test_emulator_answers_429_limit_requests_over_its_rpm() -> None:
    async with emulator(rpm=2, limit_window_s=60.0) as server, client_of(server) as client:
        await client.chat(question(1), MODEL)
        await client.chat(question(2), MODEL)
        with pytest.raises(RateLimitError) as raised:
            await client.chat(question(3), MODEL)
    error = raised.value
    assert error.status == 429
    assert error.code == "limit_requests"
    assert error.kind == "rpm"
    body = json.loads(error.body)
    assert body["error"]["type"] == "limit_requests"
    assert body["request_id"] == error.request_id


async def test_emulator_answers_429_insufficient_quota_over_its_tpm() -> None:
    # The answers below take 40, 42, (42) and 19 tokens.
    async with emulator(tpm=105, limit_window_s=60.0) as server, client_of(server) as client:
        await client.chat(question(1), MODEL, max_tokens=20)
        await client.chat(question(2), MODEL, max_tokens=20)
        with pytest.raises(RateLimitError) as raised:
            await client.chat(question(3), MODEL, max_tokens=20)
        # A refused request is not counted: a smaller one still fits.
        await client.chat(question(4), MODEL, max_tokens=1)
    error = raised.value
    assert error.code == "insufficient_quota"
    assert error.error_message.startswith("Allocated quota exceeded")
    assert error.kind == "tpm"
    assert json.loads(error.body)["error"]["type"] == "insufficient_quota"


async def test_emulator_limits_are_per_key_and_model_and_recover() -> None:
    config = EmulatorConfig(api_key=None, ttft_s=0.0, itl_s=0.0, rpm=1, limit_window_s=0.3)
    async with (
        Emulator(config) as server,
        client_of(server) as one,
        QwenClient("sk-other", server.base_url) as two,
    ):
        await one.chat(question(1), MODEL)
        await one.chat(question(1), "qwen-max")  # another model, another window
        await two.chat(question(1), MODEL)  # another key, another window
        with pytest.raises(RateLimitError):
            await one.chat(question(2), MODEL)
        await asyncio.sleep(0.3)
        await one.chat(question(3), MODEL)


@pytest.mark.parametrize(
    "kwargs", [{"rpm": 0}, {"tpm": -5}, {"limit_window_s": 0.0}, {"limit_window_s": -1.0}]
)
def test_emulator_rejects_invalid_limits(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        EmulatorConfig(**kwargs)


# --- concurrency ---


async def test_concurrency_limit_bounds_the_streams_in_flight() -> None:
    limiter = ConcurrencyLimiter(3)
    async with emulator(ttft_s=0.05) as server, client_of(server, limiter) as client:
        seen: list[int] = []

        async def watch() -> None:
            while True:
                seen.append(server.active_streams)
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.gather(*(client.chat(question(n), MODEL) for n in range(12)))
        finally:
            watcher.cancel()
    assert max(seen) == 3
    assert limiter.in_flight == 0


async def test_concurrency_admits_in_fifo_order() -> None:
    limiter = ConcurrencyLimiter(1)
    first = await limiter.acquire(request())
    order: list[int] = []

    async def wait_turn(number: int) -> None:
        permit = await limiter.acquire(request())
        order.append(number)
        permit.release(usage=None, outcome="ok")

    waiters = []
    for number in range(6):
        waiters.append(asyncio.create_task(wait_turn(number)))
        await asyncio.sleep(0)
    first.release(usage=None, outcome="ok")
    await asyncio.gather(*waiters)
    assert order == list(range(6))


async def test_a_model_at_its_limit_does_not_hold_up_the_others() -> None:
    limiter = ConcurrencyLimiter(10, per_model={"qwen-max": 1})
    held = await limiter.acquire(request(model="qwen-max"))
    queued = asyncio.create_task(limiter.acquire(request(model="qwen-max")))
    other = await asyncio.wait_for(limiter.acquire(request(model=MODEL)), 1.0)
    assert not queued.done()
    held.release(usage=None, outcome="ok")
    (await queued).release(usage=None, outcome="ok")
    other.release(usage=None, outcome="ok")
    assert limiter.in_flight == 0


async def test_queue_timeout_raises_and_sends_nothing() -> None:
    limiter = ConcurrencyLimiter(1, queue_timeout_s=0.05)
    stall = Fault(stall_after_events=1, stall_s=0.3)
    async with emulator() as server, client_of(server, limiter) as client:
        slow = asyncio.create_task(client.chat(question(1), MODEL, extra_headers=stall.header()))
        await wait_until(lambda: server.active_streams > 0)
        with pytest.raises(QueueTimeoutError) as raised:
            await client.chat(question(2), MODEL)
        assert len(server.requests) == 1
        await slow
    error = raised.value
    assert error.model == MODEL
    assert error.timeout_s == 0.05
    assert error.waited_s >= 0.05
    assert "queue_timeout_s=0.05" in str(error)
    assert "it was not sent" in str(error)
    assert limiter.in_flight == 0


async def test_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    limiter = ConcurrencyLimiter(1)
    held = await limiter.acquire(request())
    waiter = asyncio.create_task(limiter.acquire(request()))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    held.release(usage=None, outcome="ok")
    again = await asyncio.wait_for(limiter.acquire(request()), 1.0)
    again.release(usage=None, outcome="ok")
    assert limiter.in_flight == 0


async def test_a_permit_is_released_once_only() -> None:
    limiter = ConcurrencyLimiter(2)
    permit = await limiter.acquire(request())
    permit.release(usage=None, outcome="ok")
    permit.release(usage=None, outcome="ok")
    assert limiter.in_flight == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: ConcurrencyLimiter(0),
        lambda: ConcurrencyLimiter(per_model={"qwen-max": 0}),
        lambda: ConcurrencyLimiter(4, queue_timeout_s=0),
        lambda: QuotaLimiter(QuotaLimits(rpm=1), output_estimate_tokens=-1),
        lambda: AdaptiveLimiter(initial_limit=0),
        CombinedLimiter,
    ],
)
def test_invalid_limiter_settings(make: Any) -> None:
    with pytest.raises(ConfigurationError):
        make()


# --- queue wait in results ---


async def test_queue_wait_appears_in_chat_results() -> None:
    limiter = ConcurrencyLimiter(1)
    async with emulator(ttft_s=0.2) as server, client_of(server, limiter) as client:
        results = await asyncio.gather(*(client.chat(question(n), MODEL) for n in range(2)))
    first, second = sorted(results, key=lambda result: result.queue_wait_s)
    # The second waited for the whole first stream, which took at least its ttft.
    assert second.queue_wait_s >= 0.2
    assert first.queue_wait_s < second.queue_wait_s


async def test_a_quota_wait_is_the_permits_queue_wait() -> None:
    limiter = QuotaLimiter(QuotaLimits(rpm=1, window_s=0.5, margin_s=0.0))
    async with emulator() as server, client_of(server, limiter) as client:
        first = await limiter.acquire(request())
        second = await limiter.acquire(request())
        # The window of the second is still running: the chat waits for it.
        result = await client.chat(question(1), MODEL)
    assert second.queue_wait_s >= 0.5 > first.queue_wait_s
    assert result.queue_wait_s > 0


# --- quotas ---


async def test_a_reservation_settles_to_the_reported_usage() -> None:
    limiter = QuotaLimiter(QuotaLimits(rpm=10, tpm=10_000))
    async with emulator() as server, client_of(server, limiter) as client:
        result = await client.chat(question(1), MODEL, max_tokens=500)
    assert result.usage is not None
    assert await limiter.usage(MODEL) == (1, result.usage.total_tokens)


async def test_the_prompt_and_the_output_estimate_are_reserved() -> None:
    limiter = QuotaLimiter(QuotaLimits(rpm=100, tpm=10_000), output_estimate_tokens=300)
    prompt = count_message_tokens(question(0))
    estimated = await limiter.acquire(request())
    assert await limiter.usage(MODEL) == (1, prompt + 300)
    bounded = await limiter.acquire(request(max_tokens=50))
    assert await limiter.usage(MODEL) == (2, 2 * prompt + 350)
    # Without usage: an error keeps the prompt, a cancellation the whole reservation.
    estimated.release(usage=None, outcome="error")
    bounded.release(usage=None, outcome="cancelled")
    assert await limiter.usage(MODEL) == (2, 2 * prompt + 50)


async def test_a_throttled_request_is_refunded_its_tokens() -> None:
    limiter = QuotaLimiter(QuotaLimits(rpm=100, tpm=10_000))
    async with emulator() as server, client_of(server, limiter) as client:
        server.schedule(Fault(status=429))
        with pytest.raises(RateLimitError):
            await client.chat(question(1), MODEL, max_tokens=500)
    assert await limiter.usage(MODEL) == (1, 0)


async def test_usage_larger_than_the_reservation_is_charged() -> None:
    limiter = QuotaLimiter(QuotaLimits(rpm=100, tpm=10_000))
    permit = await limiter.acquire(request(max_tokens=10))
    permit.release(
        usage=Usage(prompt_tokens=900, completion_tokens=100, total_tokens=1000), outcome="ok"
    )
    assert await limiter.usage(MODEL) == (1, 1000)


async def test_a_request_that_can_never_fit_fails_at_once() -> None:
    limiter = QuotaLimiter(QuotaLimits(tpm=100))
    async with emulator() as server, client_of(server, limiter) as client:
        with pytest.raises(ConfigurationError, match="can never fit"):
            await client.chat(question(1), MODEL, max_tokens=200)
        assert server.requests == []


async def test_models_without_limits_pass_freely() -> None:
    limiter = QuotaLimiter({"qwen-max": QuotaLimits(rpm=1)})
    for _ in range(5):
        permit = await limiter.acquire(request(model=MODEL))
        assert permit.queue_wait_s == 0.0
        permit.release(usage=None, outcome="ok")
    assert await limiter.usage(MODEL) == (0, 0)
    assert limiter.limits_of("qwen-max") == QuotaLimits(rpm=1)


async def test_a_quota_queue_timeout() -> None:
    limiter = QuotaLimiter(QuotaLimits(rpm=1), queue_timeout_s=0.05)
    await limiter.acquire(request())
    with pytest.raises(QueueTimeoutError, match="qwen-plus request waited"):
        await limiter.acquire(request())


async def test_a_refund_wakes_the_request_waiting_for_it() -> None:
    limiter = QuotaLimiter(QuotaLimits(tpm=1000))
    big = await limiter.acquire(request(max_tokens=900))
    waiting = asyncio.create_task(limiter.acquire(request(max_tokens=500)))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    big.release(usage=Usage(prompt_tokens=20, completion_tokens=30, total_tokens=50), outcome="ok")
    # Long before the window (a minute) would have freed anything.
    permit = await asyncio.wait_for(waiting, 5.0)
    assert permit.queue_wait_s < 5.0


# --- combinations ---


async def test_combined_acquires_the_quota_last_and_releases_all() -> None:
    quota = QuotaLimiter(QuotaLimits(rpm=100, tpm=100_000))
    slots = ConcurrencyLimiter(1)
    combined = CombinedLimiter(quota, slots)
    assert combined.limiters == (slots, quota)
    async with emulator() as server, client_of(server, combined) as client:
        results = await asyncio.gather(*(client.chat(question(n), MODEL) for n in range(3)))
    assert sum(result.queue_wait_s > 0 for result in results) >= 2
    assert slots.in_flight == 0
    assert await quota.usage(MODEL) == (3, sum(r.usage.total_tokens for r in results if r.usage))
    await combined.aclose()


async def test_combined_gives_back_what_it_got_when_a_later_limiter_fails() -> None:
    first = QuotaLimiter(QuotaLimits(tpm=10_000))
    second = QuotaLimiter(QuotaLimits(rpm=1), queue_timeout_s=0.05)
    await second.acquire(request())
    combined = CombinedLimiter(first, second)
    with pytest.raises(QueueTimeoutError):
        await combined.acquire(request())
    assert await first.usage(MODEL) == (0, 0)  # request and tokens both returned


async def test_combined_queue_timeout_bounds_the_whole_wait() -> None:
    slots = ConcurrencyLimiter(1)
    held = await slots.acquire(request())
    combined = CombinedLimiter(slots, queue_timeout_s=0.05)
    with pytest.raises(QueueTimeoutError):
        await combined.acquire(request())
    held.release(usage=None, outcome="ok")
    assert slots.in_flight == 0


class RecordingQuota(QuotaLimiter):
    """A QuotaLimiter that records when, on its clock, it reserved each question."""

    def __init__(self, limits: QuotaLimits) -> None:
        super().__init__(limits)
        self.reserved_at_s: dict[str, float] = {}
        self._last_at_s = 0.0

    async def _reserve(self, model: str, limits: QuotaLimits, tokens: int) -> Reservation:
        reservation = await super()._reserve(model, limits, tokens)
        self._last_at_s = reservation.at_s
        return reservation

    async def acquire(self, request: LimitRequest) -> Permit:
        permit = await super().acquire(request)
        # Nothing awaits between the reservation and here: the last one is this question's.
        self.reserved_at_s[request.messages[-1]["content"]] = self._last_at_s
        return permit


@dataclass
class Arrival:
    """When the emulator counted (or refused) a question against its rate limits: its
    clock is time.monotonic(), the event loop's too."""

    at_s: float
    question: str
    tokens: int
    admitted: bool


def record_arrivals(server: Emulator, monkeypatch: pytest.MonkeyPatch) -> list[Arrival]:
    """The emulator's rate decisions, each with the exact time it counted."""
    arrivals: list[Arrival] = []
    current: contextvars.ContextVar[str] = contextvars.ContextVar("question")
    respond = server._respond
    admit = emulator_server._RateWindow.admit

    async def respond_noting_the_question(exchange: Any, raw: bytes) -> Any:
        current.set(json.loads(raw)["messages"][-1]["content"])
        return await respond(exchange, raw)

    def admit_recording(window: Any, now_s: float, tokens: int, config: EmulatorConfig) -> None:
        try:
            admit(window, now_s, tokens, config)
        except Exception:
            arrivals.append(Arrival(now_s, current.get(), tokens, admitted=False))
            raise
        arrivals.append(Arrival(now_s, current.get(), tokens, admitted=True))

    monkeypatch.setattr(server, "_respond", respond_noting_the_question)
    monkeypatch.setattr(emulator_server._RateWindow, "admit", admit_recording)
    return arrivals


@pytest.mark.parametrize(
    ("limit", "tokens"),
    [({"rpm": 100, "tpm": 1_000_000}, False), ({"rpm": 10_000, "tpm": 6000}, True)],
    ids=["rpm", "tpm"],
)
async def test_a_burst_through_the_limiter_gets_no_429_but_from_late_arrivals(
    limit: dict[str, int], tokens: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several hundred concurrent calls through the limiter, against an emulator with the
    same limits: laws that hold at any speed and load.

    The limiter promises no 429 as long as every request reaches the server within
    ``margin_s`` of its reservation (the margin covers sending it). How late a request
    arrives depends on the machine's load, so the test does not assume it: it records
    when the limiter reserved each request and when the emulator counted it, and checks
    that the reservations kept the limit in every hold and that every 429 is explained by
    a request of the server's window that arrived later than the margin. On an idle
    machine nothing is late, and the check is: no 429 at all.
    """
    window_s, calls, margin_s = 2.0, 300 if not tokens else 250, 0.1
    binding = limit["tpm"] if tokens else limit["rpm"]

    def volume(arrival: Arrival) -> int:
        """What the limiter counts of it in the end: a refused request stays counted
        (the server saw it), its tokens are refunded."""
        if not tokens:
            return 1
        return arrival.tokens if arrival.admitted else 0

    # The control: without the limiter, a server window longer than the test refuses the
    # excess whatever the speed.
    async with (
        emulator(limit_window_s=600.0, **limit) as server,
        client_of(server) as client,
    ):
        unlimited = await burst(client, calls, max_tokens=64)
    assert unlimited.throttled > 0
    if not tokens:
        assert unlimited.throttled == calls - binding
    quota = QuotaLimits(rpm=limit["rpm"], tpm=limit["tpm"], window_s=window_s, margin_s=margin_s)
    limiter = RecordingQuota(quota)
    async with emulator(limit_window_s=window_s, **limit) as server:
        arrivals = record_arrivals(server, monkeypatch)
        async with client_of(server, limiter) as client:
            limited = await burst(client, calls, max_tokens=64)
    assert len(limited.done) + limited.throttled == calls
    assert len(arrivals) == calls
    reserved_at_s = limiter.reserved_at_s
    assert len(reserved_at_s) == calls

    # The limiter's law: what it reserved in any hold stays within the limit (counted
    # at what it settled to, which the reservation bounds from above).
    reservations = sorted((reserved_at_s[a.question], volume(a)) for a in arrivals)
    for at_s, _ in reservations:
        held = sum(
            units for other_s, units in reservations if at_s - quota.hold_s < other_s <= at_s
        )
        assert held <= binding
    # So the reservations span as many holds as their volume needs (three for the RPM
    # burst; for TPM it depends on how many were refused, whose tokens are refunded).
    total = sum(units for _, units in reservations)
    assert reservations[-1][0] - reservations[0][0] >= ((total - 1) // binding) * quota.hold_s

    # Every 429 comes from lateness: a request counted in the server's window (or the
    # refused one itself) reached the server later than margin_s after its reservation.
    def late(arrival: Arrival) -> bool:
        return arrival.at_s - reserved_at_s[arrival.question] > margin_s

    admitted = [a for a in arrivals if a.admitted]
    for refused in (a for a in arrivals if not a.admitted):
        in_window = [a for a in admitted if refused.at_s - window_s < a.at_s <= refused.at_s]
        assert late(refused) or any(late(a) for a in in_window), refused


# --- adaptive concurrency ---


async def test_adaptive_cuts_on_a_429_and_holds_the_throttled_slot() -> None:
    limiter = AdaptiveLimiter(initial_limit=4)
    async with emulator(ttft_s=0.05) as server, client_of(server, limiter) as client:
        await client.chat(question(1), MODEL)
        server.schedule(Fault(status=429))
        with pytest.raises(RateLimitError):
            await client.chat(question(2), MODEL)
        assert limiter.limit(MODEL) == 2
        # The 429 came back at once, but its slot stays taken for about a request's time.
        assert limiter.in_flight(MODEL) == 1
        await limiter.aclose()
        assert limiter.in_flight(MODEL) == 0


class ServerConcurrency:
    """A limiter in front of another that plays a server with a concurrency limit: each
    request admitted while more than ``capacity`` are in flight makes the emulator answer
    the next request 429, as a server that counts its streams would. It counts requests,
    not time, so what it throttles does not depend on the machine's speed."""

    def __init__(self, inner: Limiter, server: Emulator, capacity: int) -> None:
        self.inner = inner
        self.server = server
        self.capacity = capacity
        self.in_flight = 0

    async def acquire(self, request: LimitRequest) -> Permit:
        permit = await self.inner.acquire(request)
        self.in_flight += 1
        if self.in_flight > self.capacity:
            self.server.schedule(Fault(status=429))
        return _CountedPermit(self, permit)


@dataclass
class _CountedPermit:
    gate: ServerConcurrency
    permit: Permit

    @property
    def queue_wait_s(self) -> float:
        return self.permit.queue_wait_s

    def release(self, *, usage: Usage | None, outcome: Outcome) -> None:
        self.gate.in_flight -= 1
        self.permit.release(usage=usage, outcome=outcome)


async def test_adaptive_mode_converges_to_no_sustained_429s() -> None:
    """64 workers against a server that takes 12 requests at once; the client is not
    told. The adaptive limit starts above it (16), so the server pushes back at once;
    each episode of 429s lowers the remembered ceiling, and below the capacity nothing
    is throttled any more: after the first half of the calls, no 429, and the limit has
    settled between half the capacity and the capacity."""
    capacity, successes_wanted = 12, 400
    limiter = AdaptiveLimiter(initial_limit=16)
    outcomes: list[str] = []
    async with emulator(ttft_s=0.01) as server:
        gate = ServerConcurrency(limiter, server, capacity)
        async with client_of(server, gate) as client:

            async def worker() -> None:
                while outcomes.count("ok") < successes_wanted:
                    try:
                        await client.chat(question(1), MODEL)
                        outcomes.append("ok")
                    except RateLimitError:
                        outcomes.append("throttled")

            await asyncio.gather(*(worker() for _ in range(64)))
    await limiter.aclose()
    assert "throttled" in outcomes[: len(outcomes) // 2]
    assert "throttled" not in outcomes[len(outcomes) // 2 :]
    assert capacity // 2 <= limiter.limit(MODEL) <= capacity


# --- Redis ---


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of its own, on a free loopback port, stopped after the module."""
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.mark.parametrize("seed", range(4))
async def test_redis_quota_matches_the_in_process_quota(redis_url: str, seed: int) -> None:
    """The Lua scripts and the core arithmetic take the same decisions, step by step."""
    rng = random.Random(seed)
    # Rates and times exact in binary, so that both sides compute the same numbers.
    limits = QuotaLimits(rpm=120, tpm=7680, window_s=7.5, margin_s=0.0, smoothing=seed % 2 == 1)
    clock = FakeClock()
    # An account of its own: a repeated case must not see the windows of the last one,
    # whose fake clock started at the same reading.
    account = f"differential-{seed}-{secrets.token_hex(8)}"
    store = RedisQuota(redis_url, account=account, clock_s=clock)
    local = Quota(limits)
    open_: list[tuple[Reservation, Reservation]] = []
    admitted = refused = 0
    try:
        for _ in range(150):
            clock.now_s += rng.choice((0.0, 0.125, 0.25, 1.0))
            action = rng.random()
            if action < 0.6 or not open_:
                tokens = rng.randrange(0, 1500)
                expected = local.reserve(tokens, clock.now_s)
                got = await store.reserve(MODEL, limits, tokens)
                if isinstance(expected, Reservation):
                    assert isinstance(got, Reservation)
                    assert got.at_s == pytest.approx(clock.now_s)
                    open_.append((expected, got))
                    admitted += 1
                else:
                    assert not isinstance(got, Reservation)
                    refused += 1
                    assert got == pytest.approx(max(expected, 0.001), abs=2e-6)
            else:
                ours, theirs = open_.pop(rng.randrange(len(open_)))
                if action < 0.9:
                    used = rng.randrange(0, 2 * ours.tokens + 10)
                    local.settle(ours, used, clock.now_s)
                    store.settle(MODEL, limits, theirs, used)
                else:
                    local.cancel(ours, clock.now_s)
                    store.cancel(MODEL, limits, theirs)
                await store.settled()
            assert await store.usage(MODEL, limits) == local.used(clock.now_s)
    finally:
        await store.aclose()
    assert admitted >= 10
    assert refused >= 10


async def test_redis_keys_are_namespaced_by_a_fingerprint_never_the_key(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-a-secret-key-0123456789"
    store = RedisQuota(redis_url, api_key=secret)
    assert store.account == account_fingerprint(secret)
    assert all(secret not in key for key in store.keys(MODEL))
    assert store.keys(MODEL)[0] == f"qwen-sse:{{{store.account}:{MODEL}}}:requests"
    limits = QuotaLimits(rpm=5, window_s=1.0, margin_s=0.0)
    assert isinstance(await store.reserve(MODEL, limits, 10), Reservation)
    raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        stored = [str(key) for key in await raw.keys("*")]
        assert stored
        assert all(secret not in key for key in stored)
        # Reservations expire with their hold: the keys live no longer than that (+ 1 s).
        assert 0 < await raw.pttl(store.keys(MODEL)[0]) <= 2000
    finally:
        await raw.aclose()
        await store.aclose()
    monkeypatch.setenv("DASHSCOPE_API_KEY", secret)
    from_env = RedisQuota(redis_url)
    assert from_env.account == store.account
    await from_env.aclose()
    named = RedisQuota(redis_url, account="team-a", prefix="limits")
    assert named.keys("qwen-max")[1] == "limits:{team-a:qwen-max}:tokens"
    await named.aclose()
    with pytest.raises(ConfigurationError):
        RedisQuota(redis_url, account="bad{name}")


async def test_an_account_needs_no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """``account=`` names the windows: no key is needed, and one given is never kept."""
    for name in API_KEY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="no API key"):
        RedisQuota("redis://127.0.0.1:1/0")  # without an account the key names it
    store = RedisQuota("redis://127.0.0.1:1/0", account="team-a")
    assert store.keys("qwen-max")[0] == "qwen-sse:{team-a:qwen-max}:requests"
    await store.aclose()
    secret = "sk-test-never-kept-0123456789"
    store = RedisQuota("redis://127.0.0.1:1/0", account="team-a", api_key=secret)
    assert store.account == "team-a"
    assert secret not in repr(store)
    assert all(secret not in repr(value) for value in vars(store).values())
    await store.aclose()


async def test_an_unreachable_redis_is_a_transport_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = RedisQuota(f"redis://:not-a-password@127.0.0.1:{port}/0", account="nobody")
    limiter = QuotaLimiter(QuotaLimits(rpm=5), store=store)
    with pytest.raises(TransportError, match="Redis quota store failed to reserve") as raised:
        await limiter.acquire(request())
    assert "not-a-password" not in str(raised.value)
    await limiter.aclose()


@contextlib.asynccontextmanager
async def blackhole(*, reads: bool) -> AsyncIterator[str]:
    """A "Redis" on loopback that accepts connections and never answers: it reads and
    discards what it is sent (``reads``), or reads nothing at all. Yields its URL."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        if reads:
            while await reader.read(65536):
                pass
        else:
            await asyncio.Event().wait()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://:not-a-password@127.0.0.1:{port}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("given_client", [False, True], ids=["url", "client-without-timeouts"])
@pytest.mark.parametrize("reads", [False, True], ids=["silent", "reading"])
async def test_a_redis_that_stops_answering_raises_instead_of_hanging(
    reads: bool, given_client: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Every store operation is bounded by timeout_s, also with a client of the caller's
    that has no timeouts of its own; the limiter stays consistent: the concurrency slot
    it took is given back, and the next request fails the same way."""
    async with blackhole(reads=reads) as url:
        client = (
            redis.asyncio.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=None)
            if given_client
            else None
        )
        store = RedisQuota(client or url, account="blackholed", timeout_s=0.2)
        slots = ConcurrencyLimiter(1)
        limiter = CombinedLimiter(slots, QuotaLimiter(QuotaLimits(rpm=5), store=store))
        for _ in range(2):
            with pytest.raises(TransportError) as raised:
                await limiter.acquire(request())
            assert str(raised.value) == (
                "the Redis quota store did not answer reserve for qwen-plus within timeout_s=0.2"
            )
            assert slots.in_flight == 0
        limits = QuotaLimits(rpm=5)
        with pytest.raises(TransportError) as raised:
            await store.usage(MODEL, limits)
        assert str(raised.value) == (
            "the Redis quota store did not answer read usage for qwen-plus within timeout_s=0.2"
        )
        settled: list[str] = []
        store.settle(MODEL, limits, Reservation(1, 10, 0.0), 5, then=lambda: settled.append("s"))
        store.cancel(MODEL, limits, Reservation(2, 10, 0.0), then=lambda: settled.append("c"))
        with caplog.at_level("WARNING", logger="qwen_sse.limiter"):
            await limiter.aclose()
        if client is not None:
            await client.aclose()
    assert sorted(settled) == ["c", "s"]
    prefix = "a quota settlement in Redis failed (it expires by itself): "
    assert sorted(record.getMessage() for record in caplog.records) == [
        f"{prefix}the Redis quota store did not answer {operation} for qwen-plus "
        "within timeout_s=0.2"
        for operation in ("cancel", "settle")
    ]


@pytest.mark.parametrize("timeout_s", [0.0, -1.0])
def test_the_redis_timeout_must_be_positive(timeout_s: float) -> None:
    with pytest.raises(ConfigurationError, match="timeout_s must be positive"):
        RedisQuota("redis://127.0.0.1:1/0", account="a", timeout_s=timeout_s)


def test_the_limiter_imports_without_the_redis_package() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import qwen_sse.limiter as limiter\n"
        "try:\n"
        "    limiter.RedisQuota('redis://127.0.0.1:1/0', account='a')\n"
        "except limiter.ConfigurationError as error:\n"
        "    print(error)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'qwen-sse[redis]'" in completed.stdout


# A process of its own: a client limited by a quota shared through Redis, sending its
# calls at once; it prints what it got as JSON.
WORKER = """
import asyncio, json, sys
from qwen_sse.client import QwenClient
from qwen_sse.errors import RateLimitError
from qwen_sse.limiter import QuotaLimiter, QuotaLimits, RedisQuota
from qwen_sse.retry import NO_RETRIES

async def main(config):
    store = RedisQuota(config["redis"], account=config["account"]) if config["redis"] else None
    limiter = QuotaLimiter(QuotaLimits(**config["limits"]), store=store)
    async with limiter, QwenClient(
        "sk-test", config["base_url"], retry=NO_RETRIES, limiter=limiter
    ) as client:
        async def one(number):
            messages = [{"role": "user", "content": f"{config['name']} asks {number}"}]
            try:
                await client.chat(
                    messages, "qwen-plus", max_tokens=64, extra_headers=config["headers"]
                )
            except RateLimitError:
                return "throttled"
            return "ok"
        results = await asyncio.gather(*(one(n) for n in range(config["calls"])))
    print(json.dumps({"ok": results.count("ok"), "throttled": results.count("throttled")}))

asyncio.run(main(json.loads(sys.argv[1])))
"""


async def spawn_worker(
    server: Emulator,
    *,
    redis_url: str | None,
    name: str,
    calls: int,
    limits: dict[str, Any],
    headers: dict[str, str] | None = None,
    account: str = "",
) -> asyncio.subprocess.Process:
    config = {
        "base_url": server.base_url,
        "redis": redis_url,
        "account": account,
        "name": name,
        "calls": calls,
        "limits": limits,
        "headers": headers,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, json.dumps(config), stdout=asyncio.subprocess.PIPE
    )


async def outcome_of(process: asyncio.subprocess.Process) -> dict[str, int]:
    stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    result: dict[str, int] = json.loads(stdout)
    return result


async def wait_until(condition: Any, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


async def test_three_processes_sharing_a_redis_quota_stay_under_the_limit(
    redis_url: str,
) -> None:
    """Two processes run to the end; a third holds its reservations in stalled streams
    and is killed mid-run. No process gets a 429, and what the dead one reserved is gone
    one hold later."""
    # The margin covers how much later than its reservation a request may reach the server
    # (the server's window starts at the arrival): a second, for a busy machine whose
    # processes wait hundreds of milliseconds for a core (0.3 s was not always enough).
    window_s, rpm, tpm = 1.0, 60, 4000
    limits: dict[str, Any] = {"rpm": rpm, "tpm": tpm, "window_s": window_s, "margin_s": 1.0}
    quota = QuotaLimits(**limits)
    stall = Fault(stall_after_events=1, stall_s=60.0).header()
    async with emulator(rpm=rpm, tpm=tpm, limit_window_s=window_s) as server:
        account = f"three-processes-{secrets.token_hex(8)}"
        shared: dict[str, Any] = {"redis_url": redis_url, "limits": limits, "account": account}
        workers = [
            await spawn_worker(server, name="first", calls=60, **shared),
            await spawn_worker(server, name="second", calls=60, **shared),
        ]
        doomed = await spawn_worker(server, name="doomed", calls=20, headers=stall, **shared)
        try:
            await wait_until(lambda: any(FAULT_HEADER in r.headers for r in server.requests))
            await wait_until(lambda: sum(r.outcome == "completed" for r in server.requests) >= 30)
            doomed.kill()
            await doomed.wait()
            store = RedisQuota(redis_url, account=account)
            requests_held, _ = await store.usage(MODEL, quota)
            outcomes = [await outcome_of(worker) for worker in workers]
        finally:
            for process in (*workers, doomed):
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        statuses = [r.status for r in server.requests]
        stalled = sum(FAULT_HEADER in r.headers for r in server.requests)
    assert outcomes == [{"ok": 60, "throttled": 0}, {"ok": 60, "throttled": 0}]
    assert 429 not in statuses
    assert stalled >= 1
    assert requests_held >= stalled  # the dead process's reservations still count...
    await asyncio.sleep(quota.hold_s)
    assert await store.usage(MODEL, quota) == (0, 0)  # ...until they expire
    await store.aclose()

    # The control: the same processes, each with its own in-process limit, are throttled.
    async with emulator(rpm=rpm, tpm=tpm, limit_window_s=window_s) as server:
        alone = [
            await spawn_worker(server, redis_url=None, name=name, calls=40, limits=limits)
            for name in "abc"
        ]
        unshared = [await outcome_of(worker) for worker in alone]
    assert sum(outcome["throttled"] for outcome in unshared) > 0


async def test_a_redis_quota_in_a_client(redis_url: str) -> None:
    """A client limited through Redis: every call goes through, paced by the quota, and
    the reservations settle to the reported usage. The emulator sets no limit of its own:
    whether it would throttle depends on how late requests arrive, which depends on the
    machine's load (the burst test above checks that law)."""
    store = RedisQuota(redis_url, account=f"one-client-{secrets.token_hex(8)}")
    limits = QuotaLimits(rpm=3, tpm=10_000, window_s=0.5, margin_s=0.05, smoothing=True)
    limiter = QuotaLimiter(limits, store=store)
    loop = asyncio.get_running_loop()
    async with emulator() as server, client_of(server, limiter) as c:
        started_s = loop.time()
        results = await asyncio.gather(*(c.chat(question(n), MODEL) for n in range(7)))
        elapsed_s = loop.time() - started_s
        assert all(result.complete for result in results)
        await store.settled()
        requests, tokens = await store.usage(MODEL, limits)
    assert requests >= 1
    assert tokens <= sum(r.usage.total_tokens for r in results if r.usage)
    # Seven requests at three per hold: the last was reserved two holds after the first.
    assert elapsed_s >= 2 * limits.hold_s
    await limiter.aclose()

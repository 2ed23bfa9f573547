"""Tests of qwen_sse.ratelimit: sliding windows, token buckets, quotas and AIMD, on a
fake clock.

Every test passes time in; nothing sleeps. The windows are checked against a brute-force
reference model (every unit counted from its take until one hold later).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_sse.errors import ConfigurationError
from qwen_sse.ratelimit import (
    AIMD,
    Quota,
    QuotaLimits,
    Reservation,
    SlidingWindow,
    TokenBucket,
    smoothing_bucket,
)

# Times on a grid of 1/8 s are exact in binary floating point, so boundaries compare
# exactly in the window and in the reference model alike.
GRID_S = 0.125


@dataclass
class Reference:
    """A window as the definition says it: units count during [take, take + hold)."""

    capacity: float
    hold_s: float
    entries: list[tuple[float, int]] = field(default_factory=list)

    def used(self, now_s: float) -> int:
        return sum(amount for at, amount in self.entries if at <= now_s < at + self.hold_s)

    def fits(self, amount: int, now_s: float) -> bool:
        return self.used(now_s) + amount <= self.capacity

    def wait_s(self, amount: int, now_s: float) -> float:
        """The least wait after which the amount fits, searched over every expiry."""
        if self.fits(amount, now_s):
            return 0.0
        candidates = sorted(at + self.hold_s for at, _ in self.entries if at + self.hold_s > now_s)
        for when in candidates:
            if self.fits(amount, when):
                return when - now_s
        return math.inf


# --- QuotaLimits ---


def test_limits_hold_for_the_window_plus_a_sixtieth_by_default() -> None:
    assert QuotaLimits(rpm=600).hold_s == 61.0
    assert QuotaLimits(rpm=600, window_s=2.0, margin_s=0.25).hold_s == 2.25
    assert QuotaLimits(tpm=10, margin_s=0).hold_s == 60.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rpm": 0},
        {"tpm": -1},
        {"window_s": 0},
        {"window_s": math.inf},
        {"margin_s": -0.5},
    ],
)
def test_invalid_limits_are_configuration_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        QuotaLimits(**kwargs)  # type: ignore[arg-type]


def test_a_request_larger_than_the_tpm_can_never_fit() -> None:
    limits = QuotaLimits(tpm=100)
    limits.check(100)
    with pytest.raises(ConfigurationError, match="can never fit a limit of 100 tokens"):
        limits.check(101)
    with pytest.raises(ConfigurationError, match="negative"):
        limits.check(-1)


# --- SlidingWindow ---


def test_units_come_back_exactly_one_hold_after_they_were_taken() -> None:
    window = SlidingWindow(3, 10.0)
    for key, now in enumerate((0.0, 1.0, 2.0)):
        assert window.wait_s(1, now) == 0.0
        window.take(key, 1, now)
    assert window.used(2.0) == 3
    assert window.wait_s(1, 2.0) == 8.0  # the unit taken at 0 frees at 10
    assert window.wait_s(2, 2.0) == 9.0  # two units: the one taken at 1 frees at 11
    assert window.wait_s(1, 9.999) > 0
    assert window.wait_s(1, 10.0) == 0.0
    assert window.used(10.0) == 2
    assert window.used(12.0) == 0


def test_a_take_over_capacity_never_fits() -> None:
    assert SlidingWindow(5, 1.0).wait_s(6, 0.0) == math.inf


def test_refund_frees_at_once_and_never_after_expiry() -> None:
    window = SlidingWindow(100, 10.0)
    window.take(7, 60, 0.0)
    window.refund(7, 25, 1.0)
    assert window.used(1.0) == 35
    window.refund(7, 1000, 2.0)  # never below zero
    assert window.used(2.0) == 0
    window.take(8, 50, 3.0)
    window.refund(8, 50, 13.0)  # expired already: nothing to give back twice
    assert window.used(13.0) == 0
    window.take(9, 10, 14.0)
    assert window.used(14.0) == 10


def test_charge_counts_an_overrun_from_now_even_past_capacity() -> None:
    window = SlidingWindow(100, 10.0)
    window.take(1, 90, 0.0)
    window.charge(30, 5.0)
    assert window.used(5.0) == 120
    assert window.wait_s(1, 5.0) == 5.0  # 21 to free: the 90 taken at 0 free at 10
    assert window.wait_s(100, 5.0) == 10.0  # 120 to free: the overrun too, at 15
    assert window.used(10.0) == 30
    assert window.used(15.0) == 0


def test_time_never_goes_backwards() -> None:
    window = SlidingWindow(1, 10.0)
    window.take(1, 1, 5.0)
    assert window.wait_s(1, 0.0) == 10.0  # asked at 0, taken as at 5
    assert window.used(20.0) == 0


def test_a_window_needs_positive_capacity_and_duration() -> None:
    with pytest.raises(ConfigurationError):
        SlidingWindow(0, 1.0)
    with pytest.raises(ConfigurationError):
        SlidingWindow(1, 0.0)


_steps = st.lists(
    st.tuples(
        st.integers(0, 24), st.integers(0, 12), st.sampled_from(["take", "refund", "charge"])
    ),
    min_size=1,
    max_size=60,
)


@given(st.integers(1, 40), st.integers(1, 40), _steps)
@settings(max_examples=300, deadline=None)
def test_window_matches_the_reference_model(
    capacity: int, hold_ticks: int, steps: list[tuple[int, int, str]]
) -> None:
    hold_s = hold_ticks * GRID_S
    window = SlidingWindow(capacity, hold_s)
    reference = Reference(capacity, hold_s)
    taken: dict[int, int] = {}  # key -> index of its entry in the reference
    now = 0.0
    for key, (ticks, amount, action) in enumerate(steps):
        now += ticks * GRID_S
        assert window.used(now) == reference.used(now)
        assert window.wait_s(amount, now) == reference.wait_s(amount, now)
        if action == "take" and window.wait_s(amount, now) == 0.0:
            window.take(key, amount, now)
            taken[key] = len(reference.entries)
            reference.entries.append((now, amount))
        elif action == "refund" and taken:
            victim = sorted(taken)[amount % len(taken)]
            index = taken[victim]
            at, held = reference.entries[index]
            if now < at + hold_s:
                reference.entries[index] = (at, held - min(amount, held))
            window.refund(victim, amount, now)
        elif action == "charge":
            window.charge(amount, now)
            reference.entries.append((now, amount))
        assert window.used(now) == reference.used(now)


@given(
    st.integers(1, 30),
    st.integers(1, 16),
    st.lists(st.tuples(st.integers(0, 6), st.integers(1, 30)), min_size=1, max_size=80),
)
@settings(max_examples=300, deadline=None)
def test_greedy_admission_never_exceeds_capacity_in_any_window(
    capacity: int, hold_ticks: int, arrivals: list[tuple[int, int]]
) -> None:
    hold_s = hold_ticks * GRID_S
    window = SlidingWindow(capacity, hold_s)
    admitted: list[tuple[float, int]] = []
    now = 0.0
    for key, (ticks, amount) in enumerate(arrivals):
        now += ticks * GRID_S
        if window.wait_s(amount, now) == 0.0:
            window.take(key, amount, now)
            admitted.append((now, amount))
    # The fullest interval of one hold starts at an admission.
    for start, _ in admitted:
        inside = sum(amount for at, amount in admitted if start <= at < start + hold_s)
        assert inside <= capacity


@given(
    st.integers(1, 30),
    st.lists(st.tuples(st.integers(0, 6), st.integers(1, 30)), min_size=1, max_size=40),
    st.integers(1, 30),
)
@settings(max_examples=300, deadline=None)
def test_wait_is_exact_when_nothing_else_is_taken(
    capacity: int, arrivals: list[tuple[int, int]], amount: int
) -> None:
    def filled() -> tuple[SlidingWindow, float]:
        window = SlidingWindow(capacity, 2.0)
        now = 0.0
        for key, (ticks, size) in enumerate(arrivals):
            now += ticks * GRID_S
            if window.wait_s(size, now) == 0.0:
                window.take(key, size, now)
        return window, now

    window, now = filled()
    wait = window.wait_s(amount, now)
    if amount > capacity:
        assert wait == math.inf
    elif wait > 0:
        early, _ = filled()
        assert early.wait_s(amount, now + wait / 2) > 0
        assert window.wait_s(amount, now + wait) == 0.0


# --- TokenBucket ---


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(4, 2.0)
    assert bucket.level(0.0) == 4
    bucket.take(0, 4, 0.0)
    assert bucket.wait_s(1, 0.0) == 0.5
    assert bucket.wait_s(3, 0.0) == 1.5
    assert bucket.level(1.0) == 2
    assert bucket.level(100.0) == 4  # never above the capacity


def test_an_oversize_take_needs_a_full_bucket_and_leaves_a_debt() -> None:
    bucket = TokenBucket(4, 2.0)
    bucket.take(0, 1, 0.0)
    assert bucket.wait_s(10, 0.0) == 0.5  # a full bucket first
    bucket.take(1, 10, 0.5)
    assert bucket.level(0.5) == -6
    assert bucket.wait_s(1, 0.5) == 3.5


def test_a_bucket_refunds_up_to_its_capacity_and_charges_any_amount() -> None:
    bucket = TokenBucket(4, 1.0)
    bucket.take(0, 3, 0.0)
    bucket.refund(0, 10, 0.0)
    assert bucket.level(0.0) == 4
    bucket.charge(9, 0.0)
    assert bucket.level(0.0) == -5
    with pytest.raises(ConfigurationError):
        TokenBucket(0, 1.0)


@given(
    st.integers(1, 20),
    st.integers(1, 8),
    st.lists(st.tuples(st.integers(0, 6), st.integers(1, 30)), min_size=1, max_size=80),
)
@settings(max_examples=300, deadline=None)
def test_a_bucket_passes_at_most_its_burst_plus_its_rate(
    capacity: int, rate: int, arrivals: list[tuple[int, int]]
) -> None:
    bucket = TokenBucket(capacity, rate)
    admitted: list[tuple[float, int]] = []
    now = 0.0
    for key, (ticks, amount) in enumerate(arrivals):
        now += ticks * GRID_S
        if bucket.wait_s(amount, now) == 0.0:
            bucket.take(key, amount, now)
            admitted.append((now, amount))
    for i, (start, _) in enumerate(admitted):
        for j in range(i, len(admitted)):
            end, last = admitted[j]
            passed = sum(amount for _, amount in admitted[i : j + 1])
            # One oversize take may come on top, at the end of the interval.
            allowance = capacity + rate * (end - start) + max(0, last - capacity)
            assert passed <= allowance


def test_smoothing_bucket_is_a_sixtieth_refilled_at_the_average_rate() -> None:
    assert smoothing_bucket(600, 60.0) == (10.0, 10.0)
    assert smoothing_bucket(100, 2.0) == (100 / 60, 50.0)


# --- Quota ---


def test_quota_reserves_a_request_and_its_tokens() -> None:
    quota = Quota(QuotaLimits(rpm=2, tpm=100, window_s=10.0, margin_s=0))
    first = quota.reserve(40, 0.0)
    assert isinstance(first, Reservation)
    assert first.tokens == 40
    assert quota.used(0.0) == (1, 40)
    assert quota.reserve(70, 1.0) == 9.0  # tokens: the 40 at 0 free at 10
    second = quota.reserve(60, 1.0)
    assert isinstance(second, Reservation)
    assert quota.reserve(0, 2.0) == 8.0  # requests: the first frees at 10
    assert quota.used(2.0) == (2, 100)


def test_settle_refunds_the_unused_part_and_charges_an_overrun() -> None:
    quota = Quota(QuotaLimits(tpm=1000, window_s=10.0, margin_s=0))
    low = quota.reserve(300, 0.0)
    high = quota.reserve(300, 0.0)
    assert isinstance(low, Reservation)
    assert isinstance(high, Reservation)
    quota.settle(low, 120, 1.0)
    assert quota.used(1.0) == (0, 420)
    quota.settle(high, 450, 2.0)  # 150 more, counted from 2
    assert quota.used(2.0) == (0, 570)
    assert quota.used(10.0) == (0, 150)
    assert quota.used(12.0) == (0, 0)


def test_cancel_returns_the_request_and_every_token() -> None:
    quota = Quota(QuotaLimits(rpm=1, tpm=100, window_s=10.0))
    reservation = quota.reserve(80, 0.0)
    assert isinstance(reservation, Reservation)
    assert quota.reserve(10, 0.0) == pytest.approx(10.0 + 10.0 / 60)
    quota.cancel(reservation, 1.0)
    assert quota.used(1.0) == (0, 0)
    assert isinstance(quota.reserve(100, 1.0), Reservation)


def test_unlimited_dimensions_admit_everything() -> None:
    quota = Quota(QuotaLimits())
    for _ in range(1000):
        assert isinstance(quota.reserve(10**9, 0.0), Reservation)
    assert quota.used(0.0) == (0, 0)


def test_smoothing_spreads_a_burst_over_the_window() -> None:
    quota = Quota(QuotaLimits(rpm=120, window_s=60.0, margin_s=0, smoothing=True))
    admitted_at: list[float] = []
    now = 0.0
    while len(admitted_at) < 10:
        got = quota.reserve(0, now)
        if isinstance(got, Reservation):
            admitted_at.append(now)
        else:
            now += got
    # A burst of RPM/60, then RPM/60 per second, instead of all 10 at 0.
    assert admitted_at == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]


def test_smoothing_lets_a_request_larger_than_the_tps_through_and_paces_after_it() -> None:
    quota = Quota(QuotaLimits(tpm=600, window_s=60.0, margin_s=0, smoothing=True))
    assert isinstance(quota.reserve(500, 0.0), Reservation)  # TPS is 10
    assert quota.reserve(5, 0.5) == 49.0  # 490 owed and 5 more, at 10 a second


@given(
    st.lists(
        st.tuples(
            st.integers(0, 4),
            st.integers(0, 200),
            st.sampled_from(["reserve", "settle", "cancel"]),
            st.integers(0, 400),
        ),
        min_size=1,
        max_size=60,
    )
)
@settings(max_examples=300, deadline=None)
def test_reservations_conserve_tokens(steps: list[tuple[int, int, str, int]]) -> None:
    """What the windows hold is what the open reservations reserved plus what the settled
    ones used, while nothing has expired; and all of it comes back one hold later."""
    limits = QuotaLimits(rpm=50, tpm=5000, window_s=1000.0, margin_s=0)
    quota = Quota(limits)
    open_: list[Reservation] = []
    requests = tokens = 0
    now = 0.0
    for ticks, size, action, used in steps:
        now += ticks * GRID_S
        if action == "reserve":
            got = quota.reserve(size, now)
            if isinstance(got, Reservation):
                open_.append(got)
                requests += 1
                tokens += size
        elif open_:
            reservation = open_.pop(size % len(open_))
            if action == "settle":
                quota.settle(reservation, used, now)
                tokens += used - reservation.tokens
            else:
                quota.cancel(reservation, now)
                requests -= 1
                tokens -= reservation.tokens
        assert quota.used(now) == (requests, tokens)
    assert quota.used(now + limits.hold_s) == (0, 0)


# --- AIMD ---


def test_aimd_adds_one_slot_per_round_of_successes() -> None:
    aimd = AIMD(initial=4, maximum=100)
    for _ in range(4):
        aimd.on_success(0, 0.0)
    assert aimd.allowed == 4
    assert aimd.limit == pytest.approx(4.9, abs=0.1)
    for _ in range(5):
        aimd.on_success(0, 0.0)
    assert aimd.allowed == 5


def test_aimd_cuts_once_per_generation() -> None:
    aimd = AIMD(initial=32)
    assert aimd.on_throttled(0, 0.0)
    assert aimd.limit == 16
    # More 429s of requests sent before the cut change nothing.
    assert not aimd.on_throttled(0, 0.0)
    assert aimd.limit == 16
    assert aimd.on_throttled(1, 0.1)
    assert aimd.limit == 8
    assert aimd.generation == 2


def test_aimd_settles_below_the_level_that_throttled() -> None:
    aimd = AIMD(initial=20, headroom=0.9, memory_s=100.0)
    aimd.on_throttled(0, 0.0)
    assert aimd.ceiling(0.0) == 20
    for _ in range(10_000):
        aimd.on_success(aimd.generation, 1.0)
    assert aimd.limit == pytest.approx(18.0)
    # A new episode, at 18, lowers the ceiling.
    aimd.on_throttled(aimd.generation, 2.0)
    assert aimd.ceiling(2.0) == pytest.approx(18.0)
    for _ in range(10_000):
        aimd.on_success(aimd.generation, 3.0)
    assert aimd.limit == pytest.approx(16.2)


def test_a_cascade_of_cuts_keeps_the_ceiling_of_its_episode() -> None:
    aimd = AIMD(initial=32, memory_s=100.0)
    for generation in range(4):
        aimd.on_throttled(generation, 0.0)
    assert aimd.limit == 2
    assert aimd.ceiling(0.0) == 32  # no success in between: one episode


def test_the_ceiling_is_forgotten_after_memory_s() -> None:
    aimd = AIMD(initial=10, memory_s=5.0)
    aimd.on_throttled(0, 0.0)
    for _ in range(1000):
        aimd.on_success(aimd.generation, 4.0)
    assert aimd.limit == pytest.approx(9.0)
    assert aimd.ceiling(5.0) is None
    for _ in range(100):
        aimd.on_success(aimd.generation, 5.0)
    assert aimd.limit > 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.5, "minimum": 0.5},
        {"initial": 300, "maximum": 256},
        {"initial": 4, "minimum": 8},
        {"decrease_factor": 1.0},
        {"headroom": 0.0},
        {"memory_s": -1.0},
    ],
)
def test_invalid_aimd_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        AIMD(**kwargs)


@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 3), st.integers(0, 20)), max_size=300),
    st.integers(1, 4),
    st.integers(4, 64),
)
@settings(max_examples=200, deadline=None)
def test_aimd_stays_within_its_bounds(
    events: list[tuple[bool, int, int]], minimum: int, maximum: int
) -> None:
    aimd = AIMD(initial=minimum, minimum=minimum, maximum=maximum)
    now = 0.0
    for throttled, lag, ticks in events:
        now += ticks
        current = aimd.generation
        generation = max(0, current - lag)
        before = aimd.limit
        if throttled:
            cut = aimd.on_throttled(generation, now)
            assert cut == (generation == current)
            assert aimd.limit == (max(minimum, before / 2) if cut else before)
        else:
            aimd.on_success(generation, now)
            assert before <= aimd.limit <= before + 1
        assert minimum <= aimd.limit <= maximum
        assert minimum <= aimd.allowed <= aimd.limit

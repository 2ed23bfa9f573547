"""Rate-limit arithmetic: sliding-window buckets for requests and tokens (and token
buckets that smooth them), reservations settled to real usage, and the AIMD state of
adaptive concurrency.

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging.
Time arrives as ``now_s``, seconds on any clock that never goes backwards (a value earlier
than one already seen is taken as that one); nothing here sleeps, waits or reads a clock.
The I/O layer (:mod:`qwen_sse.limiter`) does the waiting, in process or through Redis,
with the same rules.

Why sliding windows and not refilling token buckets: a bucket of capacity C that refills
at C per window lets C through at once and C more during the next window, so 2C in one
window, which a server counting per sliding window (DashScope's limits "recover within a
minute") answers with 429s. Here every unit taken comes back exactly one window after it
was taken, so no interval of one window ever holds more than the capacity, whatever the
arrivals; sustained throughput is still the full capacity per window. Smoothing, where
only the rate matters, uses classic token buckets.
"""

from __future__ import annotations

import itertools
import math
from collections import deque

import msgspec

from qwen_sse.errors import ConfigurationError

__all__ = [
    "AIMD",
    "Quota",
    "QuotaLimits",
    "Reservation",
    "SlidingWindow",
    "TokenBucket",
    "smoothing_bucket",
]

SMOOTHING_DIVISOR = 60
"""With smoothing on, a burst is at most a sixtieth of the limit: RPM/60 requests and
TPM/60 tokens, a second's worth of DashScope's one-minute windows."""


class QuotaLimits(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The limits of one account on one model.

    ``rpm``: requests per window; ``tpm``: tokens (prompt plus completion) per window;
    None leaves that dimension unlimited. ``window_s`` is the server's window (60 s for
    DashScope; tests scale it down). ``margin_s`` lengthens how long a reservation is held
    beyond the window, because the server starts counting a request when it arrives,
    a little after the client reserved it; None means a sixtieth of the window (1 s of a
    minute). ``smoothing`` also paces each limit with a token bucket holding a sixtieth of
    it (DashScope may enforce RPS = RPM/60 and TPS = TPM/60; see :func:`smoothing_bucket`),
    so that a burst is spread over the window instead of sent at its start.
    """

    rpm: int | None = None
    tpm: int | None = None
    window_s: float = 60.0
    margin_s: float | None = None
    smoothing: bool = False

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigurationError(f"{name} must be at least 1, got {value}")
        if not self.window_s > 0 or math.isinf(self.window_s):
            raise ConfigurationError(f"window_s must be positive, got {self.window_s}")
        if self.margin_s is not None and not 0 <= self.margin_s < math.inf:
            raise ConfigurationError(f"margin_s must not be negative, got {self.margin_s}")

    def check(self, tokens: int) -> None:
        """Raise ConfigurationError when a request of ``tokens`` can never be admitted."""
        if tokens < 0:
            raise ConfigurationError(f"a reservation cannot be negative, got {tokens} tokens")
        if self.tpm is not None and tokens > self.tpm:
            raise ConfigurationError(
                f"a request of {tokens} tokens can never fit a limit of {self.tpm} tokens "
                "per window; lower max_tokens or the output estimate"
            )

    @property
    def hold_s(self) -> float:
        """How long a reservation counts: the window plus the margin."""
        if self.margin_s is not None:
            return self.window_s + self.margin_s
        # A sixtieth: 1 s of a minute, more than a request usually takes to arrive.
        return self.window_s * (1 + 1 / 60)


class _Entry:
    """Units taken at ``at_s``; ``amount`` shrinks when a reservation settles lower."""

    __slots__ = ("amount", "at_s", "key")

    def __init__(self, at_s: float, amount: int, key: int | None) -> None:
        self.at_s = at_s
        self.amount = amount
        self.key = key


class SlidingWindow:
    """At most ``capacity`` units in any interval of ``hold_s``: a unit taken at ``t``
    counts until ``t + hold_s`` and is free again from then on. A take larger than the
    capacity never fits.
    """

    __slots__ = ("_by_key", "_entries", "_now_s", "_used", "capacity", "hold_s")

    def __init__(self, capacity: int, hold_s: float) -> None:
        if not capacity > 0 or not hold_s > 0:
            raise ConfigurationError("a window needs a positive capacity and duration")
        self.capacity = capacity
        self.hold_s = hold_s
        self._entries: deque[_Entry] = deque()
        self._by_key: dict[int, _Entry] = {}
        self._used = 0
        self._now_s = -math.inf

    def used(self, now_s: float) -> int:
        """Units counted at ``now_s``."""
        self._advance(now_s)
        return self._used

    def wait_s(self, amount: int, now_s: float) -> float:
        """Seconds from ``now_s`` until ``amount`` fits, if nothing else is taken meanwhile:
        0.0 when it fits now, ``math.inf`` when it never can."""
        now_s = self._advance(now_s)
        if self._used + amount <= self.capacity:
            return 0.0
        if amount > self.capacity:
            return math.inf
        # The oldest units expire first: wait for the one that frees enough.
        excess = self._used + amount - self.capacity
        totals = itertools.accumulate(entry.amount for entry in self._entries)
        freeing = next(
            entry for entry, total in zip(self._entries, totals, strict=True) if total >= excess
        )
        return freeing.at_s + self.hold_s - now_s

    def take(self, key: int, amount: int, now_s: float) -> None:
        """Count ``amount`` units under ``key`` from ``now_s`` on. The caller has checked
        that they fit (``wait_s`` is 0); taking without room overfills the window."""
        now_s = self._advance(now_s)
        entry = _Entry(now_s, amount, key)
        self._entries.append(entry)
        self._by_key[key] = entry
        self._used += amount

    def refund(self, key: int, amount: int, now_s: float) -> None:
        """Free ``amount`` of what ``key`` took, at once. Units that already expired are
        not freed twice: a refund after the window is a no-op."""
        now_s = self._advance(now_s)
        entry = self._by_key.get(key)
        if entry is not None:
            freed = min(amount, entry.amount)
            entry.amount -= freed
            self._used -= freed

    def charge(self, amount: int, now_s: float) -> None:
        """Count ``amount`` more units from ``now_s`` on, room or not: an overrun already
        spent (a request that used more than it reserved). Later takes wait until it
        expires. It counts from now, not from the reservation, because the server may
        have counted it late (output tokens are produced after the request arrived)."""
        now_s = self._advance(now_s)
        self._entries.append(_Entry(now_s, amount, None))
        self._used += amount

    def _advance(self, now_s: float) -> float:
        now_s = max(now_s, self._now_s)
        self._now_s = now_s
        entries = self._entries
        while entries and entries[0].at_s + self.hold_s <= now_s:
            entry = entries.popleft()
            self._used -= entry.amount
            if entry.key is not None and self._by_key.get(entry.key) is entry:
                del self._by_key[entry.key]
        return now_s


class TokenBucket:
    """Holds up to ``capacity`` units and refills at ``rate_per_s``; it starts full.

    A take needs its units in the bucket, or a full bucket when it is larger than the
    capacity (a pacing bucket must not refuse what the window admits); the level may then
    go below zero, and later takes wait for the refill. So over any interval of ``t``
    seconds it passes at most ``capacity + rate_per_s * t`` units, plus one oversize take.
    It has the same methods as :class:`SlidingWindow`; keys are not needed here.
    """

    __slots__ = ("_level", "_now_s", "capacity", "rate_per_s")

    def __init__(self, capacity: float, rate_per_s: float) -> None:
        if not capacity > 0 or not rate_per_s > 0:
            raise ConfigurationError("a bucket needs a positive capacity and rate")
        self.capacity = capacity
        self.rate_per_s = rate_per_s
        self._level = capacity
        self._now_s = -math.inf

    def level(self, now_s: float) -> float:
        """Units in the bucket at ``now_s`` (negative while a debt refills)."""
        self._advance(now_s)
        return self._level

    def wait_s(self, amount: int, now_s: float) -> float:
        """Seconds from ``now_s`` until ``amount`` may be taken; 0.0 when it may now."""
        self._advance(now_s)
        needed = min(amount, self.capacity)
        if self._level >= needed:
            return 0.0
        return (needed - self._level) / self.rate_per_s

    def take(self, key: int, amount: int, now_s: float) -> None:
        """Take ``amount`` units; the caller has checked that it may (``wait_s`` is 0)."""
        self._advance(now_s)
        self._level -= amount

    def refund(self, key: int, amount: int, now_s: float) -> None:
        """Put ``amount`` units back, up to the capacity."""
        self._advance(now_s)
        self._level = min(self.capacity, self._level + amount)

    def charge(self, amount: int, now_s: float) -> None:
        """Take ``amount`` more units, available or not."""
        self._advance(now_s)
        self._level -= amount

    def _advance(self, now_s: float) -> None:
        if now_s > self._now_s:
            if self._now_s > -math.inf:
                refill = (now_s - self._now_s) * self.rate_per_s
                self._level = min(self.capacity, self._level + refill)
            self._now_s = now_s


def smoothing_bucket(limit: int, hold_s: float) -> tuple[float, float]:
    """``(capacity, rate_per_s)`` of the token bucket that smooths ``limit`` per ``hold_s``:
    a sixtieth of the limit as burst, refilled at the limit's own average rate."""
    return limit / SMOOTHING_DIVISOR, limit / hold_s


class Reservation(msgspec.Struct, frozen=True, gc=False):
    """One admitted request: its key in the windows, the tokens it reserved, and when."""

    key: int
    tokens: int
    at_s: float


class Quota:
    """Admission arithmetic of one account on one model: a sliding window for requests
    (RPM) and one for tokens (TPM), each paced by a smoothing bucket when asked.

    A request reserves 1 request and its expected tokens (prompt plus expected output);
    :meth:`settle` moves the reservation to what the request really used, refunding the
    rest, and :meth:`cancel` returns all of it, the request included, for a request that
    was never sent.
    """

    __slots__ = ("_next_key", "_requests", "_tokens", "limits")

    def __init__(self, limits: QuotaLimits) -> None:
        self.limits = limits
        self._requests = _Limit.of(limits.rpm, limits)
        self._tokens = _Limit.of(limits.tpm, limits)
        self._next_key = 0

    def wait_s(self, tokens: int, now_s: float) -> float:
        """Seconds from ``now_s`` until a request of ``tokens`` fits every window and
        bucket, if nothing else is reserved meanwhile; 0.0 when it fits now."""
        self.limits.check(tokens)
        return max(self._requests.wait_s(1, now_s), self._tokens.wait_s(tokens, now_s))

    def reserve(self, tokens: int, now_s: float) -> Reservation | float:
        """Reserve a request of ``tokens`` if it fits at ``now_s``; else the seconds to
        wait before asking again (positive)."""
        wait_s = self.wait_s(tokens, now_s)
        if wait_s > 0:
            return wait_s
        key = self._next_key
        self._next_key += 1
        self._requests.take(key, 1, now_s)
        self._tokens.take(key, tokens, now_s)
        return Reservation(key, tokens, now_s)

    def settle(self, reservation: Reservation, tokens: int, now_s: float) -> None:
        """The request used ``tokens`` in all (``usage.total_tokens``, or what a failed
        request is charged): refund the unused part of the reservation, or charge the
        overrun. Call it at most once per reservation."""
        difference = max(0, tokens) - reservation.tokens
        if difference < 0:
            self._tokens.refund(reservation.key, -difference, now_s)
        elif difference > 0:
            self._tokens.charge(difference, now_s)

    def cancel(self, reservation: Reservation, now_s: float) -> None:
        """The request was never sent: return its request and all its tokens (instead of
        :meth:`settle`)."""
        self._requests.refund(reservation.key, 1, now_s)
        self._tokens.refund(reservation.key, reservation.tokens, now_s)

    def used(self, now_s: float) -> tuple[int, int]:
        """``(requests, tokens)`` counted in the sliding windows at ``now_s`` (0 for an
        unlimited one)."""
        return self._requests.used(now_s), self._tokens.used(now_s)


class _Limit:
    """One dimension of a quota: its sliding window and smoothing bucket, if any."""

    __slots__ = ("bucket", "window")

    def __init__(self, window: SlidingWindow | None, bucket: TokenBucket | None) -> None:
        self.window = window
        self.bucket = bucket

    @classmethod
    def of(cls, limit: int | None, limits: QuotaLimits) -> _Limit:
        if limit is None:
            return cls(None, None)
        hold_s = limits.hold_s
        bucket = TokenBucket(*smoothing_bucket(limit, hold_s)) if limits.smoothing else None
        return cls(SlidingWindow(limit, hold_s), bucket)

    def _parts(self) -> tuple[SlidingWindow | TokenBucket, ...]:
        return tuple(part for part in (self.window, self.bucket) if part is not None)

    def wait_s(self, amount: int, now_s: float) -> float:
        return max((part.wait_s(amount, now_s) for part in self._parts()), default=0.0)

    def take(self, key: int, amount: int, now_s: float) -> None:
        for part in self._parts():
            part.take(key, amount, now_s)

    def refund(self, key: int, amount: int, now_s: float) -> None:
        for part in self._parts():
            part.refund(key, amount, now_s)

    def charge(self, amount: int, now_s: float) -> None:
        for part in self._parts():
            part.charge(amount, now_s)

    def used(self, now_s: float) -> int:
        return self.window.used(now_s) if self.window is not None else 0


class AIMD:
    """Additive-increase, multiplicative-decrease state of an allowed concurrency.

    ``limit`` starts at ``initial``. Every success adds ``1 / limit`` (one more slot per
    round of ``limit`` completions, as TCP's congestion avoidance does); a throttling 429
    multiplies it by ``decrease_factor``, never below ``minimum`` nor above ``maximum``.

    Two rules make it settle instead of oscillating:

    * Generations. Each permit carries the ``generation`` in force when it was admitted,
      and a decrease starts a new one; a 429 of an older generation was sent at a limit
      already cut, so it cuts nothing more (one decrease per round, not one per 429).
    * A ceiling. The limit at which throttling began is remembered for ``memory_s``, and
      meanwhile the limit grows to ``headroom`` times that ceiling at most, so it stops
      probing a level known to be too high; a later episode of throttling lowers the
      ceiling. After ``memory_s`` without throttling the ceiling is forgotten, so capacity
      freed elsewhere is found again (at the cost of one episode of 429s per
      ``memory_s``). An episode starts with the first 429 after a whole round of
      successes (``allowed`` of them) of the current generation; the decreases of one
      episode keep its ceiling, since a window the server still counts as full throttles
      a few requests after a cut.
    """

    __slots__ = (
        "_ceiling",
        "_ceiling_until_s",
        "_successes",
        "decrease_factor",
        "generation",
        "headroom",
        "limit",
        "maximum",
        "memory_s",
        "minimum",
    )

    def __init__(
        self,
        *,
        initial: float = 8.0,
        minimum: float = 1.0,
        maximum: float = 256.0,
        decrease_factor: float = 0.5,
        headroom: float = 0.9,
        memory_s: float = 300.0,
    ) -> None:
        if not 1 <= minimum <= initial <= maximum:
            raise ConfigurationError(
                "AIMD needs 1 <= minimum <= initial <= maximum, got "
                f"{minimum}, {initial}, {maximum}"
            )
        if not 0 < decrease_factor < 1:
            raise ConfigurationError(f"decrease_factor must be in (0, 1), got {decrease_factor}")
        if not 0 < headroom <= 1:
            raise ConfigurationError(f"headroom must be in (0, 1], got {headroom}")
        if not memory_s >= 0:
            raise ConfigurationError(f"memory_s must not be negative, got {memory_s}")
        self.limit = float(initial)
        self.minimum = float(minimum)
        self.maximum = float(maximum)
        self.decrease_factor = decrease_factor
        self.headroom = headroom
        self.memory_s = memory_s
        self.generation = 0
        self._ceiling: float | None = None
        self._ceiling_until_s = -math.inf
        self._successes = 0

    @property
    def allowed(self) -> int:
        """The concurrency allowed now: the limit rounded down, at least ``minimum``."""
        return max(int(self.minimum), math.floor(self.limit))

    def ceiling(self, now_s: float) -> float | None:
        """The remembered level that throttled, while remembered; None otherwise."""
        return self._ceiling if now_s < self._ceiling_until_s else None

    def on_success(self, generation: int, now_s: float) -> None:
        """A request admitted in ``generation`` succeeded."""
        if generation == self.generation:
            self._successes += 1
        top = self.maximum
        ceiling = self.ceiling(now_s)
        if ceiling is not None:
            top = min(top, max(self.minimum, self.headroom * ceiling))
        if self.limit < top:
            self.limit = min(top, self.limit + 1.0 / self.limit)

    def on_throttled(self, generation: int, now_s: float) -> bool:
        """A request admitted in ``generation`` was throttled; True when the limit was cut."""
        if generation != self.generation:
            return False
        if self._successes >= self.allowed or self.ceiling(now_s) is None:
            self._ceiling = self.limit
        self._ceiling_until_s = now_s + self.memory_s
        self.limit = max(self.minimum, self.limit * self.decrease_factor)
        self.generation += 1
        self._successes = 0
        return True

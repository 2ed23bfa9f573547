"""When to try a request again, and how long to wait first: a pure retry policy.

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging.
Time and randomness arrive as arguments (``elapsed_s``, ``now_epoch_s``,
``random_fraction``), so every decision is reproducible in a test.

Retried: connection failures (a proxy that cannot be reached or answers 5xx included),
connect timeouts, a stream that failed or stalled before its first token (a total timeout
is final), HTTP 408, 409, 429 that means throttling (RPM, TPM, burst), and 5xx. Never
retried: other 4xx (a proxy's 407 or 403 included), billing 429s (``CommodityNotPurchased``,
``PrepaidBillOverdue``, ``PostpaidBillOverdue``, an exhausted plan), in-band errors
(moderation is deliberate), protocol errors and redirects (3xx, never followed). A server's
``x-should-retry: true|false`` (any letter case) overrides the status rule. Delays:
``retry-after-ms``, else ``Retry-After`` (seconds or an HTTP date; a negative value is
ignored), capped by ``max_retry_after_s``; else exponential backoff with full jitter,
``initial_delay_s`` doubling up to ``max_delay_s``.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

import msgspec

from qwen_sse.errors import (
    APIStatusError,
    ConfigurationError,
    ConnectTimeoutError,
    FirstTokenTimeoutError,
    IdleTimeoutError,
    IncompleteStreamError,
    ProxyError,
    QwenSSEError,
    RateLimitError,
    RedirectError,
    TransportError,
)

__all__ = ["NO_RETRIES", "RetryDecision", "RetryPolicy", "retry_after_s"]

_RETRYABLE_STATUSES = frozenset({408, 409})


class RetryDecision(msgspec.Struct, frozen=True, gc=False):
    """``retry`` or not; ``delay_s`` to wait first; ``reason`` in words, for the log."""

    retry: bool
    delay_s: float = 0.0
    reason: str = ""


class RetryPolicy(msgspec.Struct, frozen=True, gc=False):
    """How many times, how long, and (opt-in) whether to resume broken streams.

    ``max_attempts`` bounds the consecutive attempts of one request, the first included
    (1 means no retries). A resumed stream's continuation is a new request with the same
    rules: it gets ``max_attempts`` attempts of its own, with the same backoff and
    ``Retry-After`` handling, so a call makes at most ``max_attempts * (1 + max_resumes)``
    attempts (``ChatResult.attempts`` counts them all). ``deadline_s`` bounds the time from
    the first attempt of a request (or of a continuation) to the start of its last one; the
    client never sleeps past its ``Timeouts.total_s`` either. ``resume``: continue a stream
    that broke mid-answer with DashScope's partial mode, at most ``max_resumes`` times per
    call (see the client).
    """

    max_attempts: int = 3
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    deadline_s: float | None = 60.0
    max_retry_after_s: float = 60.0
    resume: bool = False
    max_resumes: int = 3

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_delay_s < 0 or self.max_delay_s < 0 or self.max_retry_after_s < 0:
            raise ConfigurationError("retry delays must not be negative")
        if self.max_resumes < 0:
            raise ConfigurationError(f"max_resumes must not be negative, got {self.max_resumes}")

    def backoff_s(self, attempt: int, random_fraction: float) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**(attempt-1))).

        ``attempt`` is the number of the attempt that just failed (1 for the first);
        ``random_fraction`` is uniform in [0, 1).
        """
        ceiling: float = min(self.max_delay_s, self.initial_delay_s * 2.0 ** (attempt - 1))
        return ceiling * random_fraction

    def decide(
        self,
        error: QwenSSEError,
        *,
        attempt: int,
        elapsed_s: float,
        random_fraction: float,
        now_epoch_s: float = 0.0,
    ) -> RetryDecision:
        """Whether to send attempt ``attempt + 1`` after ``error``, and after what delay.

        ``elapsed_s`` is the time since the first attempt started; ``now_epoch_s`` the
        wall-clock time (for ``Retry-After`` dates).
        """
        retryable, reason = classify(error)
        if not retryable:
            return RetryDecision(False, reason=reason)
        if attempt >= self.max_attempts:
            return RetryDecision(False, reason=f"{reason}; {self.max_attempts} attempts made")
        hinted = _hinted_delay_s(error, now_epoch_s)
        if hinted is not None:
            delay_s = min(hinted, self.max_retry_after_s)
        else:
            delay_s = self.backoff_s(attempt, random_fraction)
        if self.deadline_s is not None and elapsed_s + delay_s > self.deadline_s:
            return RetryDecision(
                False, reason=f"{reason}; the retry deadline of {self.deadline_s:g} s would pass"
            )
        return RetryDecision(True, delay_s, reason)


NO_RETRIES = RetryPolicy(max_attempts=1)
"""A policy that never retries and never resumes."""


def classify(error: QwenSSEError) -> tuple[bool, str]:
    """``(retryable, reason)`` for an error that happened before any output was delivered."""
    if isinstance(error, RedirectError):
        return False, f"HTTP {error.status} redirect is never followed"
    if isinstance(error, APIStatusError):
        should_retry = error.headers.get("x-should-retry", "").lower()
        if should_retry in ("true", "false"):
            return should_retry == "true", f"HTTP {error.status}, x-should-retry: {should_retry}"
        if isinstance(error, RateLimitError):
            kind = error.kind
            if kind == "billing":
                return False, f"HTTP 429 {error.code}: billing, not throttling"
            return True, f"HTTP 429 {error.code or 'rate limited'}"
        if error.status in _RETRYABLE_STATUSES or error.status >= 500:
            return True, f"HTTP {error.status} {error.code}".rstrip()
        return False, f"HTTP {error.status} is not retryable"
    if isinstance(error, ProxyError) and error.status is not None and error.status < 500:
        return False, f"the proxy answered {error.status}"
    if isinstance(error, TransportError | ConnectTimeoutError):
        return True, str(error)
    if isinstance(error, FirstTokenTimeoutError | IdleTimeoutError | IncompleteStreamError):
        return True, f"{error} (before the first token)"
    return False, f"{type(error).__name__} is not retryable"


def _hinted_delay_s(error: QwenSSEError, now_epoch_s: float) -> float | None:
    if not isinstance(error, APIStatusError):
        return None
    return retry_after_s(error.headers, now_epoch_s)


def retry_after_s(headers: dict[str, str], now_epoch_s: float) -> float | None:
    """The server's requested delay: ``retry-after-ms``, else ``Retry-After`` as seconds or
    as an HTTP date (relative to ``now_epoch_s``); None when absent or unreadable."""
    lowered = {key.lower(): value for key, value in headers.items()}
    milliseconds = lowered.get("retry-after-ms")
    if milliseconds is not None:
        try:
            value = float(milliseconds)
        except ValueError:
            value = -1.0
        if value >= 0:
            return value / 1000.0
    retry_after = lowered.get("retry-after")
    if retry_after is None:
        return None
    try:
        seconds = float(retry_after)
    except ValueError:
        try:
            when = parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - now_epoch_s)
    return seconds if seconds >= 0 else None

"""Tests of qwen_sse.retry: which errors retry, and the delays, with time passed in."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_sse.errors import (
    ConfigurationError,
    ConnectTimeoutError,
    FirstTokenTimeoutError,
    IdleTimeoutError,
    InBandError,
    IncompleteStreamError,
    ProtocolError,
    ProxyError,
    QwenSSEError,
    RedirectError,
    StreamLimitError,
    TotalTimeoutError,
    TransportError,
    status_error,
)
from qwen_sse.retry import NO_RETRIES, RetryPolicy, classify, retry_after_s

POLICY = RetryPolicy()


def http(status: int, code: str = "", message: str = "", **headers: str) -> QwenSSEError:
    return status_error(
        status=status,
        code=code,
        message=message,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (TransportError("cannot connect"), True),
        (ProxyError("cannot connect to the proxy", proxy="http://p:3128"), True),
        (ProxyError("tunnel refused", proxy="http://p:3128", status=502), True),
        (ProxyError("credentials refused", proxy="http://p:3128", status=407), False),
        (ProxyError("target forbidden", proxy="http://p:3128", status=403), False),
        (ConnectTimeoutError(timeout_s=1), True),
        (FirstTokenTimeoutError(timeout_s=1), True),
        (IncompleteStreamError("cut before the first token"), True),
        (http(408), True),
        (http(409), True),
        (http(429, "limit_requests"), True),
        (http(429, "Throttling.RateQuota"), True),
        (http(429, "insufficient_quota", "Allocated quota exceeded"), True),
        (http(429, "limit_burst_rate"), True),
        (http(429, "CommodityNotPurchased"), False),
        (http(429, "PrepaidBillOverdue"), False),
        (http(429, "PostpaidBillOverdue"), False),
        (
            http(429, "insufficient_quota", "You exceeded your current quota, check your plan"),
            False,
        ),
        (http(500, "InternalError.Algo"), True),
        (http(503), True),
        (http(400, "invalid_parameter_error"), False),
        (http(401, "invalid_api_key"), False),
        (http(403), False),
        (http(404, "model_not_found"), False),
        (InBandError(code="data_inspection_failed", message="m"), False),
        (ProtocolError("bad json"), False),
        (IdleTimeoutError(timeout_s=1), True),
        (TotalTimeoutError(timeout_s=1), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_classification(error: QwenSSEError, retryable: bool) -> None:
    assert classify(error)[0] is retryable


def test_x_should_retry_overrides_the_status_rule() -> None:
    assert classify(http(400, x_should_retry="true"))[0] is True
    assert classify(http(503, x_should_retry="false"))[0] is False


@pytest.mark.parametrize("spelling", ["True", "TRUE", "tRuE"])
def test_x_should_retry_true_in_any_letter_case(spelling: str) -> None:
    assert classify(http(400, x_should_retry=spelling))[0] is True


@pytest.mark.parametrize("spelling", ["False", "FALSE", "fAlSe"])
def test_x_should_retry_false_in_any_letter_case(spelling: str) -> None:
    assert classify(http(503, x_should_retry=spelling))[0] is False


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_never_retried_whatever_the_server_says(status: int) -> None:
    error = http(status, x_should_retry="true", location="https://elsewhere.example/")
    assert isinstance(error, RedirectError)
    assert classify(error)[0] is False
    assert not POLICY.decide(error, attempt=1, elapsed_s=0, random_fraction=0).retry


@pytest.mark.parametrize("value", ["-5", "-0.001", "-1e9"])
def test_a_negative_retry_after_is_ignored_not_a_negative_delay(value: str) -> None:
    assert retry_after_s({"Retry-After": value}, 0) is None
    decision = POLICY.decide(
        http(503, retry_after=value), attempt=1, elapsed_s=0, random_fraction=0.5
    )
    assert decision.retry
    assert decision.delay_s == POLICY.backoff_s(1, 0.5)
    assert decision.delay_s > 0


def test_backoff_is_full_jitter_doubling_to_the_cap() -> None:
    policy = RetryPolicy(initial_delay_s=0.5, max_delay_s=8.0)
    assert [policy.backoff_s(n, 0.999999) for n in range(1, 7)] == pytest.approx(
        [0.5, 1.0, 2.0, 4.0, 8.0, 8.0], rel=1e-5
    )
    assert policy.backoff_s(3, 0.0) == 0.0
    assert policy.backoff_s(3, 0.5) == pytest.approx(1.0)


@given(st.integers(1, 30), st.floats(0, 1, exclude_max=True))
def test_backoff_stays_within_bounds(attempt: int, fraction: float) -> None:
    delay = POLICY.backoff_s(attempt, fraction)
    assert 0 <= delay < min(POLICY.max_delay_s, POLICY.initial_delay_s * 2 ** (attempt - 1)) + 1e-9


def test_decide_counts_attempts() -> None:
    error = http(503)
    first = POLICY.decide(error, attempt=1, elapsed_s=0, random_fraction=0.5)
    assert first.retry
    assert first.delay_s == pytest.approx(0.25)
    assert POLICY.decide(error, attempt=2, elapsed_s=1, random_fraction=0.5).retry
    last = POLICY.decide(error, attempt=3, elapsed_s=2, random_fraction=0.5)
    assert not last.retry
    assert "3 attempts" in last.reason


def test_no_retries_policy() -> None:
    assert not NO_RETRIES.decide(http(503), attempt=1, elapsed_s=0, random_fraction=0).retry


def test_retry_after_seconds_wins_over_backoff_and_is_capped() -> None:
    decision = POLICY.decide(http(429, retry_after="1"), attempt=1, elapsed_s=0, random_fraction=0)
    assert decision.delay_s == 1.0
    capped = RetryPolicy(max_retry_after_s=5).decide(
        http(429, retry_after="3600"), attempt=1, elapsed_s=0, random_fraction=0
    )
    assert capped.delay_s == 5


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert retry_after_s({"retry-after-ms": "250", "Retry-After": "9"}, 0) == 0.25
    assert retry_after_s({"Retry-After": "2.5"}, 0) == 2.5
    assert retry_after_s({}, 0) is None
    assert retry_after_s({"Retry-After": "soon"}, 0) is None
    assert retry_after_s({"retry-after-ms": "-5", "retry-after": "1"}, 0) == 1.0


def test_retry_after_http_date() -> None:
    now = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
    header = format_datetime(datetime(2026, 11, 24, 12, 0, 7, tzinfo=UTC), usegmt=True)
    assert retry_after_s({"Retry-After": header}, now.timestamp()) == pytest.approx(7.0)
    past = format_datetime(datetime(2026, 11, 24, 11, 0, 0, tzinfo=UTC), usegmt=True)
    assert retry_after_s({"Retry-After": past}, now.timestamp()) == 0.0


def test_the_deadline_bounds_the_total_time() -> None:
    policy = RetryPolicy(deadline_s=2.0, max_attempts=10)
    assert policy.decide(http(503), attempt=1, elapsed_s=1.0, random_fraction=0.5).retry
    late = policy.decide(http(429, retry_after="5"), attempt=1, elapsed_s=0.0, random_fraction=0)
    assert not late.retry
    assert "deadline" in late.reason


def test_invalid_policies() -> None:
    with pytest.raises(ConfigurationError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigurationError, match="negative"):
        RetryPolicy(initial_delay_s=-1)


def test_a_stream_over_a_bound_is_never_retried() -> None:
    error = StreamLimitError(limit="max_stream_bytes", limit_value=1, observed=2, unit="bytes")
    assert classify(error) == (False, "StreamLimitError is not retryable")


def test_the_defaults_are_the_documented_ones() -> None:
    """README: RetryPolicy(max_attempts=3, initial_delay_s=0.5, max_delay_s=8, deadline_s=60,
    resume=False, max_resumes=3)."""
    policy = RetryPolicy()
    documented = (3, 0.5, 8.0, 60.0, False, 3)
    assert (
        policy.max_attempts,
        policy.initial_delay_s,
        policy.max_delay_s,
        policy.deadline_s,
        policy.resume,
        policy.max_resumes,
    ) == documented
    assert (NO_RETRIES.max_attempts, NO_RETRIES.resume) == (1, False)

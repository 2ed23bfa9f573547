"""Tests of qwen_sse.errors: the HTTP status mapping, messages, and pickling."""

from __future__ import annotations

import pickle

import pytest

from qwen_sse import errors
from qwen_sse.chat import ChatResult, ChoiceResult
from qwen_sse.errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ContentFilterError,
    ContextLengthError,
    EventTooLargeError,
    IdleTimeoutError,
    InBandError,
    IncompleteStreamError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ProxyError,
    QwenSSEError,
    RateLimitError,
    RedirectError,
    ServerError,
    StreamError,
    StreamLimitError,
    TokenLimitError,
    status_error,
)


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (
            400,
            "invalid_parameter_error",
            "Range of input length should be [1, 30720]",
            ContextLengthError,
        ),
        (
            400,
            "InvalidParameter",
            "<400> InternalError.Algo.InvalidParameter: bad top_p",
            BadRequestError,
        ),
        (
            400,
            "data_inspection_failed",
            "Input data may contain inappropriate content.",
            ContentFilterError,
        ),
        (401, "invalid_api_key", "Incorrect API key provided.", AuthenticationError),
        (403, "Model.AccessDenied", "denied", PermissionDeniedError),
        (404, "model_not_found", "The model `qwen-x` does not exist", NotFoundError),
        (429, "limit_requests", "Requests rate limit exceeded", RateLimitError),
        (500, "InternalError.Algo", "boom", ServerError),
        (503, "", "", ServerError),
        (418, "teapot", "", APIStatusError),
    ],
)
def test_status_mapping(
    status: int, code: str, message: str, expected: type[APIStatusError]
) -> None:
    error = status_error(status=status, code=code, message=message, request_id="rid-1")
    assert type(error) is expected
    assert error.status == status
    assert error.code == code
    assert str(error).startswith(f"HTTP {status}")
    assert "rid-1" in str(error)


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        ("limit_requests", "Requests rate limit exceeded", "rpm"),
        ("Throttling.RateQuota", "", "rpm"),
        (
            "insufficient_quota",
            "Allocated quota exceeded, please increase your quota limit.",
            "tpm",
        ),
        ("Throttling.AllocationQuota", "", "tpm"),
        (
            "insufficient_quota",
            "You exceeded your current quota, please check your plan and billing details.",
            "billing",
        ),
        ("limit_burst_rate", "", "burst"),
        ("Throttling", "", "burst"),
        ("CommodityNotPurchased", "", "billing"),
        ("PrepaidBillOverdue", "", "billing"),
        ("PostpaidBillOverdue", "", "billing"),
        ("something_else", "", ""),
    ],
)
def test_rate_limit_kind(code: str, message: str, kind: str) -> None:
    error = status_error(status=429, code=code, message=message)
    assert isinstance(error, RateLimitError)
    assert error.kind == kind


def sample_errors() -> list[QwenSSEError]:
    partial = ChatResult(choices=(ChoiceResult(content="so far"),), request_id="r")
    too_large = EventTooLargeError(max_event_bytes=10, event_bytes=11)
    too_large.events = [("message", b"x")]
    return [
        QwenSSEError("root", partial=partial),
        status_error(
            status=429, code="limit_requests", message="slow down", headers={"retry-after": "1"}
        ),
        InBandError(code="data_inspection_failed", message="bad", request_id="r", partial=partial),
        ProtocolError("broken", frame=b"\xff{", partial=partial),
        too_large,
        IdleTimeoutError(timeout_s=2.5, partial=partial),
        TokenLimitError(model="qwen-max", prompt_tokens=40000, limit=30720),
        StreamLimitError(
            limit="max_answer_chars", limit_value=10, observed=12, unit="chars", partial=partial
        ),
        EventTooLargeError(max_event_bytes=10, event_bytes=11, between_events=True),
        ProxyError("the proxy refused", proxy="http://127.0.0.1:3128", status=407),
    ]


@pytest.mark.parametrize("error", sample_errors(), ids=lambda e: type(e).__name__)
def test_every_error_pickles_with_its_attributes(error: QwenSSEError) -> None:
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert clone.__dict__ == error.__dict__


def test_messages_name_what_went_wrong() -> None:
    assert str(IdleTimeoutError(timeout_s=2.5)) == "idle timeout after 2.5 s"
    assert str(TokenLimitError(model="qwen-max", prompt_tokens=40000, limit=30720)) == (
        "prompt is 40000 tokens, over qwen-max's input limit of 30720 tokens"
    )
    assert "frame: b'\\xff{'" in str(ProtocolError("broken", frame=b"\xff{"))
    assert isinstance(IdleTimeoutError(timeout_s=1), TimeoutError)
    limit = StreamLimitError(limit="max_stream_bytes", limit_value=8, observed=9, unit="bytes")
    assert str(limit) == "stream stopped after 9 bytes: over max_stream_bytes=8"
    assert isinstance(limit, StreamError)
    assert not isinstance(limit, IncompleteStreamError)  # never resumed as a cut stream
    assert str(EventTooLargeError(max_event_bytes=4, event_bytes=5, between_events=True)) == (
        "no SSE event in 5 bytes (blank lines and comments included), over max_event_bytes=4"
    )


def test_every_public_error_derives_from_the_root() -> None:
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type):
            assert issubclass(value, QwenSSEError), name


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308])
def test_a_3xx_is_a_redirect_error_naming_the_location(status: int) -> None:
    error = status_error(status=status, headers={"location": "https://elsewhere.example/v1"})
    assert type(error) is RedirectError
    assert isinstance(error, APIStatusError)
    assert error.location == "https://elsewhere.example/v1"
    assert str(error).startswith(f"HTTP {status}: redirect to https://elsewhere.example/v1 ")
    assert "never follows redirects" in str(error)
    bare = status_error(status=status)
    assert isinstance(bare, RedirectError)
    assert bare.location == ""
    assert "redirect without a Location" in str(bare)


def test_a_multi_line_server_message_gives_a_one_line_str() -> None:
    message = "first line\nsecond line\r\n\tthird"
    http = status_error(status=500, code="boom", message=message)
    assert str(http) == "HTTP 500 boom: first line second line third"
    assert http.error_message == message
    in_band = InBandError(code="x", message=message)
    assert str(in_band) == "in-band error x: first line second line third"
    assert in_band.error_message == message


@pytest.mark.parametrize("status", [404, 405])
def test_a_status_that_blames_the_address_names_the_url_tried(status: int) -> None:
    url = "http://127.0.0.1:8000/wrong/chat/completions"
    error = status_error(
        status=status, message=f"{status}: Not Found", method="POST", url=url, request_id="r1"
    )
    # The bare server's reason repeats no status; the request id stays.
    assert str(error) == f"HTTP {status}: Not Found (POST {url}; request id r1)"
    assert (error.method, error.url, error.error_message) == ("POST", url, f"{status}: Not Found")
    coded = status_error(status=status, code="model_not_found", message="no\nsuch", url=url)
    assert str(coded) == f"HTTP {status} model_not_found: no such ({url})"
    assert str(status_error(status=status, url=url, method="POST")) == f"HTTP {status} (POST {url})"


@pytest.mark.parametrize("status", [400, 401, 403, 429, 500])
def test_other_statuses_keep_their_message_short(status: int) -> None:
    error = status_error(status=status, message="m", method="POST", url="https://h/v1/x")
    assert str(error) == f"HTTP {status}: m"
    assert error.url == "https://h/v1/x"

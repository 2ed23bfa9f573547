"""The exception tree of qwen-sse: every error the package raises, and nothing else.

Core module: imports nothing from aiohttp, asyncio, os, time, random or logging.

::

    QwenSSEError                      root; .partial is the ChatResult received so far, or None
    ├── ConfigurationError            bad or missing settings (no API key, unknown region, ...)
    ├── TokenLimitError               pre-flight: the prompt is over the model's input limit
    ├── ProtocolError                 the bytes on the wire break the protocol; .frame holds them
    │   └── EventTooLargeError        one SSE event outgrew max_event_bytes
    ├── StreamError                   the stream began (HTTP 200) but did not end properly
    │   ├── InBandError               a data frame carried {"error": {...}}
    │   ├── StreamLimitError          the answer outgrew a bound (bytes, characters, chunks)
    │   └── IncompleteStreamError     truncated: no end marker, or no finish reason before it
    │       └── StreamInterruptedError  the connection broke mid-stream
    ├── TransportError                the connection failed (refused, reset, TLS, DNS)
    │   └── ProxyError                the proxy is unreachable or refused (407, 403); .proxy
    ├── QueueTimeoutError             a limiter did not admit the request in time; nothing sent
    ├── RequestTimeoutError           a deadline passed; subclasses say which one
    │   ├── ConnectTimeoutError
    │   ├── FirstTokenTimeoutError
    │   ├── IdleTimeoutError
    │   └── TotalTimeoutError
    └── APIStatusError                the server answered with an HTTP error status
        ├── RedirectError             3xx: never followed (the key must not travel); .location
        ├── BadRequestError           400
        │   ├── ContextLengthError    400, the input is longer than the model accepts
        │   └── ContentFilterError    400, data_inspection_failed (moderation)
        ├── AuthenticationError       401
        ├── PermissionDeniedError     403
        ├── NotFoundError             404
        ├── RateLimitError            429; .kind says "rpm", "tpm", "burst", "billing" or ""
        └── ServerError               5xx

Every error has a one-line ``str()`` naming what went wrong (a server's multi-line message
is shown on one line; the full text stays on ``error_message``), and pickles with all of its
attributes (so it can cross a process boundary in a load generator).
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwen_sse.chat import ChatResult

__all__ = [
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ConnectTimeoutError",
    "ContentFilterError",
    "ContextLengthError",
    "EventTooLargeError",
    "FirstTokenTimeoutError",
    "IdleTimeoutError",
    "InBandError",
    "IncompleteStreamError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "ProxyError",
    "QueueTimeoutError",
    "QwenSSEError",
    "RateLimitError",
    "RedirectError",
    "RequestTimeoutError",
    "ServerError",
    "StreamError",
    "StreamInterruptedError",
    "StreamLimitError",
    "TokenLimitError",
    "TotalTimeoutError",
    "TransportError",
    "one_line",
    "status_error",
]

_FRAME_PREVIEW_CHARS = 200


def _rebuild(cls: type[QwenSSEError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class QwenSSEError(Exception):
    """Root of every qwen-sse error.

    ``partial`` is the :class:`~qwen_sse.chat.ChatResult` accumulated before the failure
    when a stream had started (its ``complete`` is False), else None: nothing received is
    lost.
    """

    partial: ChatResult | None

    def __init__(self, message: str, *, partial: ChatResult | None = None) -> None:
        super().__init__(message)
        self.partial = partial

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class ConfigurationError(QwenSSEError, ValueError):
    """A setting is missing or invalid; raised before any network traffic."""


class TokenLimitError(QwenSSEError, ValueError):
    """The prompt has more tokens than the model accepts as input; nothing was sent."""

    def __init__(self, *, model: str, prompt_tokens: int, limit: int) -> None:
        super().__init__(
            f"prompt is {prompt_tokens} tokens, over {model}'s input limit of {limit} tokens"
        )
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.limit = limit


class ProtocolError(QwenSSEError):
    """The server's bytes break the SSE or chat-chunk protocol.

    ``frame`` holds the offending frame (the event's data, or the raw bytes), untruncated.
    """

    def __init__(
        self, message: str, *, frame: str | bytes = "", partial: ChatResult | None = None
    ) -> None:
        if frame:
            preview = frame[:_FRAME_PREVIEW_CHARS]
            more = "..." if len(frame) > _FRAME_PREVIEW_CHARS else ""
            message = f"{message}; frame: {preview!r}{more}"
        super().__init__(message, partial=partial)
        self.frame = frame


class EventTooLargeError(ProtocolError):
    """An SSE event grew past ``max_event_bytes``; the decoder stops to bound memory.

    ``events`` holds what the failing ``feed`` call completed before the overflow (events,
    or ``(type, data)`` frames), so that a caller can still deliver them.

    ``between_events`` marks the other overflow: ``event_bytes`` arrived without any event
    being dispatched (blank lines and comments count), which bounds the work a flood of
    them can cause.
    """

    def __init__(
        self, *, max_event_bytes: int, event_bytes: int, between_events: bool = False
    ) -> None:
        if between_events:
            message = (
                f"no SSE event in {event_bytes} bytes (blank lines and comments included), "
                f"over max_event_bytes={max_event_bytes}"
            )
        else:
            message = (
                f"SSE event is larger than max_event_bytes={max_event_bytes} "
                f"(at least {event_bytes} bytes received without a blank line)"
            )
        super().__init__(message)
        self.max_event_bytes = max_event_bytes
        self.event_bytes = event_bytes
        self.events: list[Any] = []


class StreamError(QwenSSEError):
    """The response started as a stream but did not finish properly.

    ``partial`` always holds what arrived before the failure.
    """


class InBandError(StreamError):
    """A data frame carried ``{"error": {...}}`` after the HTTP 200 (e.g. moderation)."""

    def __init__(
        self,
        *,
        code: str,
        message: str,
        type: str = "",
        request_id: str = "",
        partial: ChatResult | None = None,
    ) -> None:
        rid = f" (request id {request_id})" if request_id else ""
        shown = one_line(message)
        super().__init__(f"in-band error {code or type or '?'}: {shown}{rid}", partial=partial)
        self.code = code
        self.error_message = message
        self.type = type
        self.request_id = request_id


class StreamLimitError(StreamError):
    """The answer outgrew one of the client's bounds, so the stream was stopped; not
    retried, not resumed (the server would only send more of the same).

    ``limit`` names the setting (``max_stream_bytes``, ``max_answer_chars`` or
    ``max_answer_chunks``), ``limit_value`` is its value and ``observed`` how much had
    arrived when the stream was stopped.
    """

    def __init__(
        self,
        *,
        limit: str,
        limit_value: int,
        observed: int,
        unit: str,
        partial: ChatResult | None = None,
    ) -> None:
        super().__init__(
            f"stream stopped after {observed} {unit}: over {limit}={limit_value}",
            partial=partial,
        )
        self.limit = limit
        self.limit_value = limit_value
        self.observed = observed


class IncompleteStreamError(StreamError):
    """The answer is truncated: the stream ended or was cut before its end marker
    (``data: [DONE]``), or the end marker came while a choice had no finish reason."""


class StreamInterruptedError(IncompleteStreamError):
    """The connection broke mid-stream (reset, aborted, incomplete chunked body)."""


class TransportError(QwenSSEError):
    """The connection could not be made or broke (refused, reset, TLS, DNS)."""


class ProxyError(TransportError):
    """The proxy could not be reached, or refused the request or its ``CONNECT`` tunnel.

    ``proxy`` is its URL without credentials; ``status`` is its HTTP answer (407: it wants
    credentials or refused them; 403: it forbids the target), or None when it could not be
    reached.
    """

    def __init__(self, message: str, *, proxy: str, status: int | None = None) -> None:
        super().__init__(message)
        self.proxy = proxy
        self.status = status


class QueueTimeoutError(QwenSSEError):
    """A limiter kept the request queued for longer than its ``queue_timeout_s``; the
    request was never sent. ``model`` is the request's model, ``waited_s`` the time spent
    queued."""

    def __init__(self, *, timeout_s: float, waited_s: float, model: str = "") -> None:
        what = f"a {model} request" if model else "the request"
        super().__init__(
            f"{what} waited {waited_s:.3g} s for admission by the limiter, over "
            f"queue_timeout_s={timeout_s:g}; it was not sent"
        )
        self.timeout_s = timeout_s
        self.waited_s = waited_s
        self.model = model


class RequestTimeoutError(QwenSSEError, builtins.TimeoutError):
    """A deadline passed. ``timeout_s`` is the setting that expired."""

    kind = "total"

    def __init__(self, *, timeout_s: float, partial: ChatResult | None = None) -> None:
        super().__init__(f"{self.kind} timeout after {timeout_s:g} s", partial=partial)
        self.timeout_s = timeout_s


class ConnectTimeoutError(RequestTimeoutError):
    """No connection (or no response headers) within ``connect_timeout_s``."""

    kind = "connect"


class FirstTokenTimeoutError(RequestTimeoutError):
    """No content or reasoning text within ``first_token_timeout_s`` of sending."""

    kind = "first-token"


class IdleTimeoutError(RequestTimeoutError):
    """No SSE event for ``idle_timeout_s``; keep-alive comments do not count."""

    kind = "idle"


class TotalTimeoutError(RequestTimeoutError):
    """The whole request took longer than ``total_timeout_s``."""

    kind = "total"


class APIStatusError(QwenSSEError):
    """The server answered with an HTTP error status.

    ``code`` is DashScope's (or OpenAI's) error code verbatim, ``request_id`` the
    ``x-request-id`` header or the body's ``request_id``, ``body`` the raw response text,
    ``method`` and ``url`` the request's ("" when not known). The message is one line; for
    a status that says the address is wrong (404, 405) it names the method and URL.
    """

    def __init__(
        self,
        *,
        status: int,
        code: str = "",
        message: str = "",
        request_id: str = "",
        body: str = "",
        headers: dict[str, str] | None = None,
        method: str = "",
        url: str = "",
    ) -> None:
        parts = [f"HTTP {status}"]
        if code:
            parts.append(code)
        # A bare server's reason ("404: Not Found") would repeat the status.
        shown = one_line(message).removeprefix(f"{status}: ")
        text = " ".join(parts) + (f": {shown}" if shown else "")
        about = []
        if url and status in _ADDRESS_STATUSES:
            about.append(f"{method} {url}".strip())
        if request_id:
            about.append(f"request id {request_id}")
        if about:
            text += f" ({'; '.join(about)})"
        super().__init__(text)
        self.status = status
        self.code = code
        self.error_message = message
        self.request_id = request_id
        self.body = body
        self.headers = dict(headers or {})
        self.method = method
        self.url = url


# The statuses that say the address is wrong: their message names the URL tried.
_ADDRESS_STATUSES = frozenset({404, 405})


class RedirectError(APIStatusError):
    """HTTP 3xx: the server redirects; qwen-sse never follows a redirect, so that the API key
    never travels to another URL. ``location`` is the ``Location`` header ("" if none).
    Never retried: point ``base_url`` at the final address instead."""

    @property
    def location(self) -> str:
        return self.headers.get("location", "")


class BadRequestError(APIStatusError):
    """HTTP 400: the request is invalid."""


class ContextLengthError(BadRequestError):
    """HTTP 400: the input is longer than the model accepts."""


class ContentFilterError(BadRequestError):
    """HTTP 400 ``data_inspection_failed``: moderation rejected the input."""


class AuthenticationError(APIStatusError):
    """HTTP 401: the API key is missing, wrong, or for another region."""


class PermissionDeniedError(APIStatusError):
    """HTTP 403: the key may not use this model or feature."""


class NotFoundError(APIStatusError):
    """HTTP 404: unknown model or path."""


class RateLimitError(APIStatusError):
    """HTTP 429. ``kind``: "rpm", "tpm", "burst", "billing" (never retry) or ""."""

    @property
    def kind(self) -> str:
        return rate_limit_kind(self.code, self.error_message)


class ServerError(APIStatusError):
    """HTTP 5xx."""


_RPM_CODES = frozenset({"limit_requests", "Throttling.RateQuota"})
_TPM_CODES = frozenset({"insufficient_quota", "Throttling.AllocationQuota"})
_BURST_CODES = frozenset({"limit_burst_rate", "Throttling", "Throttling.BurstRate"})
_BILLING_CODES = frozenset({"CommodityNotPurchased", "PrepaidBillOverdue", "PostpaidBillOverdue"})


def one_line(text: str) -> str:
    """``text`` with every run of whitespace, line breaks included, shown as one space."""
    return " ".join(text.split())


def rate_limit_kind(code: str, message: str) -> str:
    """Classify a 429 by DashScope's code: "rpm", "tpm", "burst", "billing" or ""."""
    if code in _BILLING_CODES:
        return "billing"
    if code in _RPM_CODES:
        return "rpm"
    if code in _TPM_CODES:
        # OpenAI uses insufficient_quota for an exhausted plan, DashScope for TPM.
        lowered = message.lower()
        if "plan" in lowered or "billing" in lowered or "exceeded your current quota" in lowered:
            return "billing"
        return "tpm"
    if code in _BURST_CODES:
        return "burst"
    return ""


def status_error(
    *,
    status: int,
    code: str = "",
    message: str = "",
    request_id: str = "",
    body: str = "",
    headers: dict[str, str] | None = None,
    method: str = "",
    url: str = "",
) -> APIStatusError:
    """Build the typed error for an HTTP error response (one mapping for the whole package);
    ``method`` and ``url`` are the request's."""
    cls: type[APIStatusError]
    if 300 <= status < 400:
        cls = RedirectError
        location = (headers or {}).get("location", "")
        where = f"to {location}" if location else "without a Location"
        message = (
            f"redirect {where} not followed: qwen-sse never follows redirects (the API key "
            "must not travel); set base_url to the final address"
        )
    elif status == 400:
        lowered = message.lower()
        if code in ("data_inspection_failed", "DataInspectionFailed"):
            cls = ContentFilterError
        elif "input length" in lowered or "context length" in lowered or "too long" in lowered:
            cls = ContextLengthError
        else:
            cls = BadRequestError
    elif status == 401:
        cls = AuthenticationError
    elif status == 403:
        cls = PermissionDeniedError
    elif status == 404:
        cls = NotFoundError
    elif status == 429:
        cls = RateLimitError
    elif status >= 500:
        cls = ServerError
    else:
        cls = APIStatusError
    return cls(
        status=status,
        code=code,
        message=message,
        request_id=request_id,
        body=body,
        headers=headers,
        method=method,
        url=url,
    )

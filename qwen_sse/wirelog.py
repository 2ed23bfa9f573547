"""The wire log: what each HTTP attempt of a call did, in readable lines on standard logging.

I/O layer. :class:`WireLog` is a wire tap that :class:`~qwen_sse.client.ChatStream` puts
in front of the application's own (if any) whenever this module's logger would show it; the
client calls :func:`enable_from_env` as it is built, so ``QWEN_SSE_LOG`` works without code.

Loggers (standard :mod:`logging`; the package logger ``qwen_sse`` has a ``NullHandler`` and
no level, so nothing shows unless the application or ``QWEN_SSE_LOG`` asks):

* ``qwen_sse.wirelog`` at INFO: one line per attempt when it ends (method, URL, status,
  request id, time to headers, time to first token, bytes, events, duration, outcome); at
  DEBUG also the request headers and the response head, as sent and received.
* ``qwen_sse.wirelog.content`` at DEBUG: the request body and every line of the response
  body. Prompts and answers are the application's data: this logger is off (its level is
  above CRITICAL) until its level is set, which ``QWEN_SSE_LOG_CONTENT=1`` does with
  ``QWEN_SSE_LOG=debug``.
* ``qwen_sse.client`` at WARNING: retries and resumes, with their reason and delay.

The key never reaches a log record: the client hands the tap headers with the key replaced
(``Bearer ***``) and what the server sent with any echo of it redacted, and every line is
scrubbed again before it is logged. Content is logged by whole lines (a key holds no
whitespace, so no line break cuts an echo of it), so an echo split across two reads is
caught too.
"""

from __future__ import annotations

import itertools
import logging
import sys
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from qwen_sse.chat import ChatResult
from qwen_sse.config import log_switch
from qwen_sse.errors import ConfigurationError, QwenSSEError
from qwen_sse.limiter import Outcome

if TYPE_CHECKING:
    from qwen_sse.client import WireTap

__all__ = ["CONTENT_LOGGER", "WireLog", "enable_from_env", "log_to_stderr", "wanted"]

CONTENT_LOGGER = __name__ + ".content"
"""The logger of prompts and answers, off until its level is set."""
_log = logging.getLogger(__name__)
_content_log = logging.getLogger(CONTENT_LOGGER)
_package_log = logging.getLogger("qwen_sse")
# Above CRITICAL: no record of the content logger passes until its level is set on purpose,
# whatever level the application gives the package or the root logger.
_OFF = logging.CRITICAL + 1
_content_log.setLevel(_OFF)
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Calls are numbered in the log, so that the lines of concurrent calls can be told apart.
_call_numbers = itertools.count(1)


def wanted() -> bool:
    """True when a :class:`WireLog` would log anything (checked once per call)."""
    return _log.isEnabledFor(logging.INFO) or _content_log.isEnabledFor(logging.DEBUG)


def log_to_stderr(level: int | str = logging.INFO, *, content: bool = False) -> None:
    """Show the package's log records from ``level`` up on stderr: what ``QWEN_SSE_LOG``
    does, for applications that configure no logging of their own (the command line, a
    script). One handler on the ``qwen_sse`` logger, added once; the root logger is never
    touched. ``content`` turns the content logger on (it shows at ``DEBUG``) or off."""
    if not any(isinstance(handler, _StderrHandler) for handler in _package_log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        _package_log.addHandler(handler)
    _package_log.setLevel(level)
    _content_log.setLevel(logging.DEBUG if content else _OFF)


def enable_from_env(environ: Mapping[str, str] | None = None) -> None:
    """Apply ``QWEN_SSE_LOG=debug|info`` (and ``QWEN_SSE_LOG_CONTENT=1``, which only the
    debug level honours) through :func:`log_to_stderr`. Unset, it does nothing, so the
    application's logging configuration stays as it is; an unknown value is ignored with a
    :class:`RuntimeWarning` (a log switch never stops a service)."""
    try:
        switch = log_switch(environ)
    except ConfigurationError as error:
        warnings.warn(f"{error}; ignored", RuntimeWarning, stacklevel=3)
        return
    if switch.level is not None:
        log_to_stderr(switch.level.upper(), content=switch.content and switch.level == "debug")


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record comes (as ``logging.lastResort``
    does), so that a redirected or captured stderr gets the lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


class _Progress(Protocol):
    """The call being logged (a :class:`~qwen_sse.client.ChatStream`)."""

    @property
    def result(self) -> ChatResult: ...


class _Scrubber(Protocol):
    """Removes the API key from text (the client's key scrubber)."""

    def data(self, data: bytes) -> bytes: ...

    def value(self, value: Any) -> Any: ...


class WireLog:
    """A wire tap that logs each attempt of one call, then hands every callback on to
    ``inner`` (the application's tap, if any).

    Events and the first token of an attempt come from the call's result (``stream``):
    the counts at the attempt's start are subtracted from those at its end, so an attempt
    that got no stream (an HTTP error) shows none, and a continuation shows only its own.
    Times are seconds since the attempt was sent. Like any tap, it never raises.
    """

    __slots__ = (
        "_attempt",
        "_bytes",
        "_call",
        "_carry",
        "_content",
        "_events_at_start",
        "_headers_at_s",
        "_inner",
        "_method",
        "_request_id",
        "_scrubber",
        "_sent_after_s",
        "_status",
        "_stream",
        "_tokens_at_start",
        "_url",
    )

    def __init__(
        self, stream: _Progress, scrubber: _Scrubber, *, inner: WireTap | None = None
    ) -> None:
        self._stream = stream
        self._scrubber = scrubber
        self._inner = inner
        self._call = next(_call_numbers)
        self._attempt = 0
        self._content = False
        self._method = ""
        self._url = ""
        self._status: int | None = None
        self._headers_at_s: float | None = None
        self._request_id = ""
        self._bytes = 0
        self._carry = b""
        self._events_at_start = 0
        self._tokens_at_start = 0
        self._sent_after_s = 0.0

    def request(self, *, method: str, url: str, headers: Mapping[str, str], body: bytes) -> None:
        if self._inner is not None:
            self._inner.request(method=method, url=url, headers=headers, body=body)
        self._attempt += 1
        self._method, self._url = method, url
        self._status, self._headers_at_s, self._request_id = None, None, ""
        self._bytes, self._carry = 0, b""
        self._content = _content_log.isEnabledFor(logging.DEBUG)
        timing = self._stream.result.timing
        self._events_at_start = timing.events
        self._tokens_at_start = len(timing.token_times_s)
        # Token times count from the call's start; this attempt was sent this long after it.
        self._sent_after_s = timing.total_s or 0.0
        if _log.isEnabledFor(logging.DEBUG):
            self._say(_log, f"> {method} {url}; headers: {_joined(headers)}")
        if self._content:
            self._say(_content_log, f"> {body.decode('utf-8', 'replace')}")

    def response(self, *, status: int, headers: Mapping[str, str], at_s: float) -> None:
        if self._inner is not None:
            self._inner.response(status=status, headers=headers, at_s=at_s)
        self._status, self._headers_at_s = status, at_s
        self._request_id = headers.get("x-request-id", "")
        if _log.isEnabledFor(logging.DEBUG):
            self._say(_log, f"< {status} after {at_s:.3f} s; headers: {_joined(headers)}")

    def data(self, chunk: bytes, at_s: float) -> None:
        if self._inner is not None:
            self._inner.data(chunk, at_s)
        self._bytes += len(chunk)
        if self._content:
            pending = self._carry + chunk
            # The last line waits for its line break: only whole lines are scrubbed.
            cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1
            self._carry = pending[cut:]
            self._content_lines(pending[:cut], at_s)

    def end(self, *, at_s: float, outcome: Outcome, error: QwenSSEError | None) -> None:
        if self._inner is not None:
            self._inner.end(at_s=at_s, outcome=outcome, error=error)
        if self._content and self._carry:
            self._content_lines(self._carry, at_s)
            self._carry = b""
        if not _log.isEnabledFor(logging.INFO):
            return
        result = self._stream.result
        timing = result.timing
        parts = [
            f"{self._method} {self._url} -> "
            + ("no response" if self._status is None else str(self._status))
        ]
        request_id = self._request_id or (result.request_id if self._status else "")
        if request_id:
            parts.append(f"request id {request_id}")
        if self._headers_at_s is not None:
            parts.append(f"headers {self._headers_at_s:.3f} s")
        if len(timing.token_times_s) > self._tokens_at_start:
            first_token_s = timing.token_times_s[self._tokens_at_start] - self._sent_after_s
            parts.append(f"first token {max(0.0, first_token_s):.3f} s")
        parts.append(f"{self._bytes} bytes")
        parts.append(f"{timing.events - self._events_at_start} events")
        parts.append(f"{at_s:.3f} s")
        ending = outcome if error is None else f"{outcome}: {type(error).__name__}: {error}"
        self._say(_log, f"{', '.join(parts)}: {ending}", logging.INFO)

    def _content_lines(self, data: bytes, at_s: float) -> None:
        for line in data.splitlines():
            if line:
                self._say(_content_log, f"< {at_s:.3f} s: {line.decode('utf-8', 'replace')}")

    def _say(self, logger: logging.Logger, text: str, level: int = logging.DEBUG) -> None:
        logger.log(level, "call %d attempt %d: %s", self._call, self._attempt, self._scrub(text))

    def _scrub(self, text: str) -> str:
        scrubbed: str = self._scrubber.value(text)
        return scrubbed


def _joined(headers: Mapping[str, str]) -> str:
    return "; ".join(f"{name}: {value}" for name, value in headers.items())

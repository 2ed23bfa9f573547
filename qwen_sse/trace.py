"""The wire, made readable: a live trace of one call with its anomalies flagged inline.

Edge layer. :class:`TraceView` is a :class:`~qwen_sse.client.WireTap`: the client hands it
every attempt's request, response head and raw body reads with their arrival times, and
it prints them at once: each read with its raw lines (line endings shown), every comment,
every event boundary with its data as compact JSON, and anomalies:

* ``stall``: no bytes, or no event (keep-alives aside), for longer than ``stall_ms``;
* ``non-utf8``: a line that is not valid UTF-8;
* ``joined-frames``: one event holding several JSON objects joined by a single LF (a
  blank line missing between two frames);
* ``broken-json``: a data JSON that does not parse, and ``stray-line`` for a line with
  no known field (often the rest of a JSON object broken by a raw line feed);
* ``in-band-error``: the server's own error event (``{"error": ...}``, a native
  ``event:error``, an Anthropic or Responses ``error`` event);
* ``protocol-error``: an event the protocol's grammar does not allow where it came (events
  out of order, a delta for a content block never started, a content block never stopped,
  a field of the wrong type), as the protocol's reader reports it;
* ``missing-end``: a stream that ended without its protocol's end marker (``data:
  [DONE]``, ``message_stop``, ``response.completed``, the native frame with the last
  finish reason);
* ``end-without-finish``: the end marker while a choice (or every choice: none came) has
  no finish reason, the way llama.cpp's server ends an interrupted stream: the answer is
  truncated, whatever the clean end suggests;
* ``usage-mismatch``: the reported output tokens far from the Qwen token count of the text.

:meth:`TraceView.summary` closes with the last attempt's body bytes (an error body's too),
events, time to first byte ("no body" when none came) and first token, inter-token gap
percentiles, usage and request id. The same view replays recordings.
Without an output (``out=None``) it prints nothing and only checks: the debugging proxy
(:mod:`qwen_sse.debugproxy`) tees every exchange into a quiet view and shows its anomalies
and summary.
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
from collections.abc import Mapping
from typing import Any, TextIO

import msgspec

from qwen_sse import protocols
from qwen_sse.chat import ChatResult, ChatStreamDecoder
from qwen_sse.errors import (
    EventTooLargeError,
    InBandError,
    IncompleteStreamError,
    ProtocolError,
    QwenSSEError,
)
from qwen_sse.limiter import Outcome
from qwen_sse.protocols import WireProtocol
from qwen_sse.sse import SSEComment, SSEDecoder
from qwen_sse.tokens import count_tokens

__all__ = ["Anomaly", "TraceView"]

_SEGMENT = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_KNOWN_FIELDS = (b"data", b"event", b"id", b"retry")
# The start of a line (of LF-ended lines) that is not blank, not a comment, not a known field.
_NOT_A_FIELD = re.compile(rb"(?m)^(?!(?:data|event|id|retry)[:\n]|[:\n]|\Z)")
_USAGE_TOLERANCE_TOKENS = 2
_USAGE_TOLERANCE_RATIO = 0.1


class Anomaly(msgspec.Struct, frozen=True, gc=False):
    """One thing on the wire that deserves a look: ``kind`` (see the module docstring),
    when (ms since the attempt's request), and what."""

    kind: str
    at_ms: float
    detail: str


def _show_line(segment: bytes, width: int) -> str:
    body = segment.rstrip(b"\r\n")
    ending = segment[len(body) :].decode("ascii").replace("\r", "\\r").replace("\n", "\\n")
    text = body.decode("utf-8", "replace")
    if len(text) > width:
        text = f"{text[:width]}… ({len(body)} B)"
    return f"{text}{ending}"


class TraceView:
    """Prints a call's wire to ``out`` as it happens, and keeps what it saw; with ``out=None``
    it prints nothing (none of the formatting is done) but checks and keeps the same.

    ``protocol`` (a name or object of :mod:`qwen_sse.protocols`) is the grammar the events
    are checked against, for the request each attempt sends; ``stall_ms`` the silence worth
    flagging; ``width`` how much of a line to show.
    """

    def __init__(
        self,
        out: TextIO | None,
        *,
        protocol: str | WireProtocol = "compatible",
        stall_ms: float = 2000.0,
        width: int = 160,
    ) -> None:
        self._out = out
        self._protocol = protocols.get(protocol)
        self._stall_ms = stall_ms
        self._width = width
        self.anomalies: list[Anomaly] = []
        self.attempts = 0
        self._reset_attempt()

    def _reset_attempt(self, request: dict[str, Any] | None = None) -> None:
        self._sse = SSEDecoder()
        self._chat = ChatStreamDecoder(protocol=self._protocol, request=request)
        self._json_flagged = False
        self._last_at_ms = 0.0
        self._last_event_ms = 0.0
        self._first_byte_ms: float | None = None
        self._body_bytes = 0
        self._events = 0
        self._status: int | None = None
        self._request_id = ""
        self._stray_lines = 0
        self._line_tail = bytearray()

    def _print(self, text: str) -> None:
        if self._out is not None:
            self._out.write(text + "\n")
            self._out.flush()

    def _flag(self, kind: str, at_ms: float, detail: str) -> None:
        self.anomalies.append(Anomaly(kind, at_ms, detail))
        self._print(f"    !! {kind}: {detail}")

    # -- WireTap --------------------------------------------------------------------------

    def request(self, *, method: str, url: str, headers: Mapping[str, str], body: bytes) -> None:
        self.attempts += 1
        self._reset_attempt(_request_body(body))
        if self._out is None:
            return
        self._print(f"=== attempt {self.attempts}: {method} {url}")
        for name, value in headers.items():
            self._print(f"  > {name}: {value}")
        self._print(f"  > {body.decode('utf-8', 'replace')}")

    def response(self, *, status: int, headers: Mapping[str, str], at_s: float) -> None:
        self._status = status
        self._request_id = headers.get("x-request-id", "")
        if self._out is None:
            return
        self._print(f"[{at_s * 1000:10.1f} ms] < HTTP {status}")
        for name, value in headers.items():
            self._print(f"  < {name}: {value}")

    def data(self, chunk: bytes, at_s: float) -> None:
        if not chunk:
            return  # an empty body handed over whole: no byte arrived
        at_ms = at_s * 1000
        gap_ms = at_ms - self._last_at_ms
        byte_stall = self._first_byte_ms is not None and gap_ms > self._stall_ms
        if byte_stall:
            self._flag("stall", at_ms, f"{gap_ms / 1000:.2f} s without a byte")
        if self._first_byte_ms is None:
            self._first_byte_ms = at_ms
        self._last_at_ms = at_ms
        self._body_bytes += len(chunk)
        shown = self._out is not None
        if shown:
            self._print(f"[{at_ms:10.1f} ms] +{len(chunk)} B")
        if shown or not self._clean_lines(chunk):
            for segment in _SEGMENT.findall(chunk):
                if shown:
                    self._print(f"    | {_show_line(segment, self._width)}")
                if segment.endswith((b"\r", b"\n")):
                    # Lines are checked whole, even when a read split one (or a character).
                    self._inspect_line(bytes(self._line_tail) + segment, at_ms)
                    self._line_tail.clear()
                else:
                    self._line_tail += segment
        if self._status is not None and self._status >= 400:
            return
        for item in self._sse.feed_with_comments(chunk):
            if isinstance(item, SSEComment):
                if shown:
                    self._print(f"    : comment {item.text!r}")  # keep-alives, HTTP_STATUS
                continue
            event_gap_ms = at_ms - self._last_event_ms
            if self._events and event_gap_ms > self._stall_ms and not byte_stall:
                self._flag("stall", at_ms, f"{event_gap_ms / 1000:.2f} s without an event")
            self._events += 1
            self._last_event_ms = at_ms
            self._show_event(item.event, item.id, item.data, at_ms)
        # A decoder failure was flagged as it happened; the summary reports the result.
        failed_before = self._chat.error is not None
        with contextlib.suppress(QwenSSEError):
            self._chat.feed(chunk, at_s)
        error = self._chat.error
        if not failed_before and error is not None:
            self._flag_failure(error, at_ms)

    def _flag_failure(self, error: QwenSSEError, at_ms: float) -> None:
        """Flag what the protocol's reader found wrong (once per attempt)."""
        if isinstance(error, IncompleteStreamError):
            # Only the end marker ends a fed stream as incomplete: it came too early.
            self._flag("end-without-finish", at_ms, f"the answer is truncated: {error}")
        elif isinstance(error, InBandError):
            self._flag("in-band-error", at_ms, str(error))
        elif (
            isinstance(error, ProtocolError)
            and not isinstance(error, EventTooLargeError)
            and not self._json_flagged  # broken JSON was flagged with its cause already
        ):
            self._flag("protocol-error", at_ms, error.message)

    def end(self, *, at_s: float, outcome: Outcome, error: QwenSSEError | None) -> None:
        at_ms = at_s * 1000
        if self._status is not None and self._status < 400 and outcome != "cancelled":
            if not self._chat.done and self._chat.error is None:
                marker = self._protocol.end_marker
                self._flag("missing-end", at_ms, f"the stream ended without {marker}")
            self._check_usage(at_ms)
        reason = "" if error is None else f": {type(error).__name__}: {error}"
        self._print(f"[{at_ms:10.1f} ms] end of attempt {self.attempts} ({outcome}){reason}")

    # -- inspection ---------------------------------------------------------------------

    def _clean_lines(self, chunk: bytes) -> bool:
        """True when ``chunk`` is whole LF-ended lines, valid UTF-8, each blank, a comment or
        a known field: what :meth:`_inspect_line` would pass, found without splitting (the
        usual read of a well-behaved stream)."""
        return (
            not self._line_tail
            and chunk.endswith(b"\n")
            and b"\r" not in chunk
            and _NOT_A_FIELD.search(chunk) is None
            and (chunk.isascii() or _is_utf8(chunk))
        )

    def _inspect_line(self, segment: bytes, at_ms: float) -> None:
        line = segment.rstrip(b"\r\n")
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            self._flag("non-utf8", at_ms, f"invalid UTF-8 at byte {error.start} of a line")
        if not line or line.startswith(b":"):
            return
        field = line.split(b":", 1)[0]
        if field not in _KNOWN_FIELDS:
            self._stray_lines += 1
            self._flag("stray-line", at_ms, f"a line with no known field: {line[:40]!r}")

    def _show_event(self, event: str, event_id: str, data: str, at_ms: float) -> None:
        stray_lines, self._stray_lines = self._stray_lines, 0
        if data == "[DONE]":
            if self._out is not None:
                self._print(f"    -- {self._label(event, event_id)}: [DONE]")
            return
        label = ""
        try:
            decoded: Any = json.loads(data)
            if self._out is None:
                return
            label = self._label(event, event_id)
            compact = json.dumps(decoded, ensure_ascii=False, separators=(",", ":"))
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            label = label or self._label(event, event_id)
            self._print(f"    -- {label}: {data[: self._width]!r}")
            self._json_flagged = True
            parts = data.split("\n")
            if len(parts) > 1 and all(_parses(part) for part in parts):
                self._flag(
                    "joined-frames",
                    at_ms,
                    f"{len(parts)} JSON objects joined by a single LF: a blank line is missing",
                )
            else:
                hint = " (a JSON object broken by a raw line feed?)" if stray_lines else ""
                self._flag("broken-json", at_ms, f"the data is not valid JSON{hint}")
            return
        if len(compact) > self._width:
            compact = compact[: self._width] + "…"
        self._print(f"    -- {label}: {compact}")

    def _label(self, event: str, event_id: str) -> str:
        return f"event #{self._events} {event}" + (f" id={event_id}" if event_id else "")

    def _check_usage(self, at_ms: float) -> None:
        result = self._chat.result()
        usage = result.usage
        if usage is None:
            return
        text_tokens = count_tokens(result.reasoning_content + result.content)
        reported = usage.completion_tokens
        if result.tool_calls:
            text_tokens += sum(count_tokens(call.function.arguments) for call in result.tool_calls)
        allowed = max(_USAGE_TOLERANCE_TOKENS, _USAGE_TOLERANCE_RATIO * text_tokens)
        if abs(reported - text_tokens) > allowed:
            self._flag(
                "usage-mismatch",
                at_ms,
                f"completion_tokens is {reported} but the streamed text is {text_tokens} tokens",
            )

    # -- the end ------------------------------------------------------------------------

    @property
    def result(self) -> ChatResult:
        """The last attempt's decoded result (timing relative to its request)."""
        return self._chat.result(self._last_at_ms / 1000)

    def summary(self) -> str:
        """The closing lines: sizes, times, gaps, usage, request id, anomalies."""
        result = self.result
        timing = result.timing
        lines = [
            "=== summary",
            f"attempts {self.attempts}, {self._body_bytes} B, {timing.events} events,"
            f" complete: {'yes' if result.complete else 'no'}",
        ]
        first_byte = (
            "no body" if self._first_byte_ms is None else f"first byte {self._first_byte_ms:.1f} ms"
        )
        first_token = "-" if timing.ttft_s is None else f"{timing.ttft_s * 1000:.1f} ms"
        lines.append(f"{first_byte}, first token {first_token}")
        gaps = [gap * 1000 for gap in timing.inter_token_gaps_s]
        if len(gaps) >= 2:
            cuts = statistics.quantiles(gaps, n=100, method="inclusive")
            lines.append(
                f"inter-token gaps ms: p50 {cuts[49]:.1f}, p90 {cuts[89]:.1f},"
                f" p99 {cuts[98]:.1f}, max {max(gaps):.1f}"
            )
        usage = result.usage
        if usage is not None:
            lines.append(
                f"usage: prompt {usage.prompt_tokens}, completion {usage.completion_tokens},"
                f" total {usage.total_tokens}"
            )
        request_id = self._request_id or result.request_id
        if request_id:
            lines.append(f"request id {request_id}")
        kinds = sorted({anomaly.kind for anomaly in self.anomalies})
        lines.append(f"anomalies: {', '.join(kinds) if kinds else 'none'}")
        return "\n".join(lines)


def _request_body(body: bytes) -> dict[str, Any] | None:
    """The JSON object an attempt sent, to check the answer against (None if it is not one)."""
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return decoded if isinstance(decoded, dict) else None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True

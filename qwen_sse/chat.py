"""Chat-stream semantics: SSE bytes in, typed chunks out, folded into a ``ChatResult``.

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging;
time arrives as ``now_s`` arguments from the caller's clock.

Rules (protocol.md, compatible mode): ``data: [DONE]`` ends the stream; an answer is
complete only when every choice that arrived has its finish reason **and** ``[DONE]``
arrived, so ``[DONE]`` before a finish reason (llama.cpp's server ends an interrupted
stream that way) and input that ends before ``[DONE]`` are both an
:class:`~qwen_sse.errors.IncompleteStreamError`; a frame with a top-level ``error`` object
is an :class:`~qwen_sse.errors.InBandError`; the ``choices: []`` chunk carries usage
(normal after the finish chunk); malformed JSON is a
:class:`~qwen_sse.errors.ProtocolError`. Every such error carries ``.partial``.
Tool calls accumulate by ``index``; ``id``, ``type`` and ``name`` are taken only from
non-empty strings (DashScope repeats ``"id": ""`` on continuations), ``arguments``
fragments are concatenated, ids never are.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import ClassVar

import msgspec

from qwen_sse.chunks import (
    ChatCompletionChunk,
    ChoiceDeltaToolCall,
    ErrorBody,
    Usage,
    chunk_decoder,
    chunk_protocol_error,
    decode_error_frame,
)
from qwen_sse.errors import (
    EventTooLargeError,
    InBandError,
    IncompleteStreamError,
    ProtocolError,
    QwenSSEError,
)
from qwen_sse.sse import DEFAULT_MAX_EVENT_BYTES, ServerSentEvent, SSEDecoder

__all__ = [
    "DONE_MARKER",
    "ChatAccumulator",
    "ChatResult",
    "ChatStreamDecoder",
    "ChoiceResult",
    "StreamTiming",
    "ToolCall",
    "ToolCallFunction",
]

DONE_MARKER = "[DONE]"
_DONE_BYTES = DONE_MARKER.encode()


class ToolCallFunction(msgspec.Struct, frozen=True, gc=False):
    """A tool call's function: its name and its arguments, joined from every fragment."""

    name: str = ""
    arguments: str = ""


class ToolCall(msgspec.Struct, frozen=True, gc=False):
    """One complete (or, in a partial result, partly received) tool call."""

    index: int
    id: str
    type: str
    function: ToolCallFunction


class ChoiceResult(msgspec.Struct, frozen=True, gc=False):
    """Everything one choice streamed, joined."""

    index: int = 0
    role: str = "assistant"
    content: str = ""
    reasoning_content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None


class StreamTiming(msgspec.Struct, frozen=True, gc=False):
    """When things arrived, in seconds since the request was sent.

    ``ttft_s`` is the arrival of the first content or reasoning text (the role-only first
    chunk does not count); ``token_times_s`` holds the arrival of every chunk that carried
    text; ``total_s`` is when the stream ended or failed.
    """

    ttft_s: float | None = None
    token_times_s: tuple[float, ...] = ()
    total_s: float | None = None
    bytes_received: int = 0
    events: int = 0

    @property
    def inter_token_gaps_s(self) -> tuple[float, ...]:
        """Gaps between consecutive text-bearing chunks (what vLLM calls ITL)."""
        times = self.token_times_s
        return tuple(later - earlier for earlier, later in itertools.pairwise(times))


class ChatResult(msgspec.Struct, frozen=True, gc=False):
    """A whole streamed answer (``complete``) or what arrived before a failure.

    ``complete`` is True only when every choice received its finish reason and the
    protocol's end marker arrived (``data: [DONE]``; natively, the frame that carries the
    finish reason); anything less is a truncated answer, raised as an error whose
    ``.partial`` is this result with ``complete`` False.

    ``content``, ``reasoning_content``, ``tool_calls`` and ``finish_reason`` are those of
    choice 0; ``choices`` holds every choice when ``n > 1``. ``request_id`` is the
    ``x-request-id`` header when the client saw one, else the chunk id's uuid.

    Set by the client: ``attempts`` (HTTP requests made, retries and resumes included),
    ``resumes`` (continuations spliced in after a broken stream), and ``queue_wait_s``
    (time spent waiting for a limiter before the first request, apart from the network).
    """

    choices: tuple[ChoiceResult, ...] = ()
    usage: Usage | None = None
    id: str = ""
    request_id: str = ""
    model: str = ""
    complete: bool = False
    timing: StreamTiming = StreamTiming()
    attempts: int = 1
    resumes: int = 0
    queue_wait_s: float = 0.0

    @property
    def content(self) -> str:
        return self.choices[0].content if self.choices else ""

    @property
    def reasoning_content(self) -> str:
        return self.choices[0].reasoning_content if self.choices else ""

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self.choices[0].tool_calls if self.choices else ()

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None


class _ToolCallState:
    __slots__ = ("arguments", "id", "name", "type")

    def __init__(self) -> None:
        self.id = ""
        self.type = ""
        self.name = ""
        self.arguments: list[str] = []


class _ChoiceState:
    __slots__ = ("content", "finish_reason", "reasoning", "role", "tools")

    def __init__(self) -> None:
        self.role = ""
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tools: dict[int, _ToolCallState] = {}
        self.finish_reason: str | None = None


class ChatAccumulator:
    """Folds chunks into a :class:`ChatResult`; ``add`` is on the hot path, ``result`` not.

    ``started_at_s`` is the caller's clock reading when the request was sent; ``now_s``
    given to :meth:`add` is the same clock at the chunk's arrival.
    """

    __slots__ = (
        "_choices",
        "_token_times",
        "id",
        "model",
        "request_id",
        "started_at_s",
        "usage",
    )

    def __init__(self, started_at_s: float = 0.0, request_id: str = "") -> None:
        self.started_at_s = started_at_s
        self.request_id = request_id
        self.id = ""
        self.model = ""
        self.usage: Usage | None = None
        self._choices: dict[int, _ChoiceState] = {}
        self._token_times: list[float] = []

    def reset(self) -> None:
        """Forget everything folded in so far (a retry starts over); keeps the start time."""
        self.id = ""
        self.model = ""
        self.usage = None
        self._choices = {}
        self._token_times = []

    @property
    def has_text(self) -> bool:
        """True once any content or reasoning text has arrived."""
        return bool(self._token_times)

    def unfinished_choices(self) -> list[int]:
        """Indices of the choices that arrived without a finish reason yet, ascending."""
        return sorted(
            index for index, state in self._choices.items() if state.finish_reason is None
        )

    @property
    def has_choices(self) -> bool:
        """True once any chunk carried a choice."""
        return bool(self._choices)

    def add(self, chunk: ChatCompletionChunk, now_s: float = 0.0) -> None:
        """Fold one chunk in."""
        if not self.id:
            self.id = chunk.id
            self.model = chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        text = False
        for choice in chunk.choices:
            state = self._choices.get(choice.index)
            if state is None:
                state = self._choices[choice.index] = _ChoiceState()
            delta = choice.delta
            if delta.content:
                state.content.append(delta.content)
                text = True
            if delta.reasoning_content:
                state.reasoning.append(delta.reasoning_content)
                text = True
            if delta.tool_calls:
                self._add_tool_calls(state, delta.tool_calls)
            if delta.role and not state.role:
                state.role = delta.role
            if choice.finish_reason is not None:
                state.finish_reason = choice.finish_reason
        if text:
            self._token_times.append(now_s - self.started_at_s)

    @staticmethod
    def _add_tool_calls(state: _ChoiceState, deltas: list[ChoiceDeltaToolCall]) -> None:
        for delta in deltas:
            call = state.tools.get(delta.index)
            if call is None:
                call = state.tools[delta.index] = _ToolCallState()
            if delta.id and not call.id:
                call.id = delta.id
            if delta.type and not call.type:
                call.type = delta.type
            function = delta.function
            if function is not None:
                if function.name and not call.name:
                    call.name = function.name
                if function.arguments:
                    call.arguments.append(function.arguments)

    def result(
        self,
        *,
        complete: bool,
        now_s: float | None = None,
        bytes_received: int = 0,
        events: int = 0,
    ) -> ChatResult:
        """Snapshot of everything so far; ``now_s`` (if given) sets ``timing.total_s``."""
        choices = tuple(
            ChoiceResult(
                index=index,
                role=state.role or "assistant",
                content="".join(state.content),
                reasoning_content="".join(state.reasoning),
                tool_calls=tuple(
                    ToolCall(
                        index=call_index,
                        id=call.id,
                        type=call.type or "function",
                        function=ToolCallFunction(call.name, "".join(call.arguments)),
                    )
                    for call_index, call in sorted(state.tools.items())
                ),
                finish_reason=state.finish_reason,
            )
            for index, state in sorted(self._choices.items())
        )
        times = tuple(self._token_times)
        request_id = self.request_id or self.id.removeprefix("chatcmpl-")
        return ChatResult(
            choices=choices,
            usage=self.usage,
            id=self.id,
            request_id=request_id,
            model=self.model,
            complete=complete,
            timing=StreamTiming(
                ttft_s=times[0] if times else None,
                token_times_s=times,
                total_s=None if now_s is None else now_s - self.started_at_s,
                bytes_received=bytes_received,
                events=events,
            ),
        )


class ChatStreamDecoder:
    """Sans-I/O decoder of one streamed chat completion: bytes in, chunks out.

    ``feed(data, now_s)`` returns the chunks that ``data`` completed, each already folded
    into the accumulator. It stops at the first failure: the chunks before the failure are
    returned, and the error (with ``.partial``) is raised by the next ``feed`` or
    ``feed_eof`` call, or at once when no chunk precedes it; ``error`` shows it meanwhile,
    so a caller that must not wait for more bytes checks it after each ``feed``.
    ``feed_eof(now_s)`` raises :class:`IncompleteStreamError` unless ``[DONE]`` arrived.
    ``[DONE]`` completes the answer (``done``) only when at least one choice arrived and
    every choice has its finish reason; otherwise it is an :class:`IncompleteStreamError`
    naming the choices without one (a truncated answer is never ``complete``).
    Bytes after ``[DONE]`` are counted and otherwise ignored. ``accumulator`` lets
    several streams (a resumed answer) fold into one result.
    """

    # How the end-of-input error names the protocol's end marker.
    _END_MARKER: ClassVar[str] = "data: [DONE]"

    __slots__ = (
        "_sse",
        "accumulator",
        "bytes_after_done",
        "bytes_received",
        "done",
        "error",
        "events",
    )

    def __init__(
        self,
        *,
        started_at_s: float = 0.0,
        request_id: str = "",
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        accumulator: ChatAccumulator | None = None,
    ) -> None:
        self._sse = SSEDecoder(max_event_bytes)
        self.accumulator = accumulator or ChatAccumulator(started_at_s, request_id)
        self.done = False
        self.error: QwenSSEError | None = None
        self.bytes_received = 0
        self.bytes_after_done = 0
        self.events = 0

    def result(self, now_s: float | None = None) -> ChatResult:
        """The result so far; ``complete`` once ``[DONE]`` arrived after every choice's
        finish reason."""
        return self.accumulator.result(
            complete=self.done,
            now_s=now_s,
            bytes_received=self.bytes_received,
            events=self.events,
        )

    def feed(self, data: bytes, now_s: float = 0.0) -> list[ChatCompletionChunk]:
        """Decode ``data`` (any chunking); return the chunks it completed."""
        self._raise_pending()
        if self.done:
            self.bytes_after_done += len(data)
            return []
        self.bytes_received += len(data)
        try:
            frames = self._sse.feed_frames(data)
        except EventTooLargeError as error:
            chunks = self._decode_frames(error.events, now_s)
            if self.error is None:  # an error frame before the overflow is the real cause
                self._fail(error, now_s)
            return self._deliver(chunks)
        return self._deliver(self._decode_frames(frames, now_s))

    def feed_events(
        self, events: Iterable[ServerSentEvent], now_s: float = 0.0
    ) -> list[ChatCompletionChunk]:
        """Decode already-parsed SSE events (for callers with their own SSE source)."""
        return self._decode_frames([(event.event, event.data.encode()) for event in events], now_s)

    def _decode_frames(
        self, frames: list[tuple[str, bytes]], now_s: float
    ) -> list[ChatCompletionChunk]:
        out: list[ChatCompletionChunk] = []
        if self.done or self.error is not None:
            return out
        add = self.accumulator.add
        decode = chunk_decoder.decode
        for _, data in frames:
            if data == _DONE_BYTES:
                self.events += 1
                self._end_marker(now_s, len(out))
                break
            try:
                chunk = decode(data)
            except msgspec.DecodeError as decode_error:
                self.events += 1
                error = self._frame_error(data) or chunk_protocol_error(decode_error, data)
                self._fail(error, now_s)
                break
            if chunk.error is not None:
                self.events += 1
                body = (
                    ErrorBody(message=chunk.error) if isinstance(chunk.error, str) else chunk.error
                )
                self._fail(self._in_band_error(body, chunk.id), now_s)
                break
            add(chunk, now_s)
            out.append(chunk)
        self.events += len(out)
        return out

    def _end_marker(self, now_s: float, undelivered_events: int) -> None:
        """``[DONE]`` arrived: the answer is complete only if every choice has finished.

        ``undelivered_events`` are the chunks of this batch not yet added to ``events``."""
        unfinished = self.accumulator.unfinished_choices()
        if self.accumulator.has_choices and not unfinished:
            self.done = True
            return
        if not unfinished:
            missing = "no choice arrived"
        elif len(unfinished) == 1:
            missing = f"choice {unfinished[0]} has no finish_reason"
        else:
            missing = f"choices {', '.join(map(str, unfinished))} have no finish_reason"
        events = self.events + undelivered_events
        error = IncompleteStreamError(
            f"stream ended with data: [DONE] but {missing}"
            f" ({events} events, {self.bytes_received} bytes)"
        )
        error.partial = self.accumulator.result(
            complete=False, now_s=now_s, bytes_received=self.bytes_received, events=events
        )
        self.error = error

    def _frame_error(self, data: bytes) -> QwenSSEError | None:
        """For a frame that is not a valid chunk: its in-band error, if it is one (for
        example ``{"error": {...}, "choices": null}``), or its malformed-JSON error."""
        try:
            failure = decode_error_frame(data)
        except ProtocolError as protocol_error:
            return protocol_error
        return None if failure is None else self._in_band_error(*failure)

    def _in_band_error(self, body: ErrorBody, frame_id: str) -> InBandError:
        if frame_id and not self.accumulator.id:
            self.accumulator.id = frame_id
        return InBandError(
            code="" if body.code is None else str(body.code),
            message=body.message,
            type=body.type or "",
            request_id=self.accumulator.request_id or frame_id.removeprefix("chatcmpl-"),
        )

    def feed_eof(self, now_s: float = 0.0) -> list[ChatCompletionChunk]:
        """End of input: returns ``[]`` after ``[DONE]``, else raises with ``.partial``."""
        self._raise_pending()
        if self.done:
            return []
        unterminated = self._sse.pending_bytes
        in_event = self._sse.in_event
        self._sse.feed_eof()
        detail = (
            f"; an unterminated event ({unterminated} bytes pending) was discarded"
            if in_event
            else ""
        )
        error = IncompleteStreamError(
            f"stream ended without {self._END_MARKER} after {self.events} events and "
            f"{self.bytes_received} bytes{detail}"
        )
        self._fail(error, now_s)
        self._raise_pending()
        return []

    def fail(self, error: QwenSSEError, now_s: float = 0.0) -> QwenSSEError:
        """Record an outside failure (timeout, dropped connection); return it with ``.partial``."""
        if self.error is None:
            self._fail(error, now_s)
        return self.error if self.error is not None else error

    def _fail(self, error: QwenSSEError, now_s: float) -> None:
        error.partial = self.result(now_s)
        self.error = error

    def _deliver(self, chunks: list[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
        if not chunks:
            self._raise_pending()
        return chunks

    def _raise_pending(self) -> None:
        if self.error is not None:
            raise self.error

"""Chat-stream semantics: SSE bytes in, typed chunks out, folded into a ``ChatResult``.

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging;
time arrives as ``now_s`` arguments from the caller's clock.

The grammar of each wire protocol is its :class:`~qwen_sse.protocols.base.FrameReader`
(``qwen_sse.protocols``); the rules here hold for every protocol: an answer is complete
only when every choice that arrived has its finish reason (not "") **and** the protocol's
end marker arrived (``data: [DONE]``, ``message_stop``, ``response.completed``...), so an
end marker before a finish reason (llama.cpp's server ends an interrupted stream that way)
and input that ends before the end marker are both an
:class:`~qwen_sse.errors.IncompleteStreamError`; the server's own error event is an
:class:`~qwen_sse.errors.InBandError`; malformed JSON, or any other failure to decode or
fold a frame, is a :class:`~qwen_sse.errors.ProtocolError`. Every such error carries
``.partial``, and a decoder that raised one refuses further input.
Tool calls accumulate by ``index``; ``id``, ``type`` and ``name`` are taken only from
non-empty strings (DashScope repeats ``"id": ""`` on continuations), ``arguments``
fragments are concatenated, ids never are. A choice's spoken answer (Qwen-Omni's
``delta.audio``) is kept as its base64 pieces and decoded only by ``result()``, which never
raises over it: pieces that are not base64 are left out and counted
(:class:`AudioResult`).

Bounds, so that no server can make a client grow or spin without end (defaults fit the
largest documented answer, 131,072 answer plus 81,920 reasoning tokens, with wide margins):
``max_stream_bytes`` per response, ``max_answer_chars`` (audio's base64 and transcript
included) and ``max_answer_chunks`` over the whole answer (all its choices, resumes
included); past one the stream stops with a :class:`~qwen_sse.errors.StreamLimitError`
carrying ``.partial``. ``None`` turns one off.
"""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import msgspec

from qwen_sse import protocols
from qwen_sse.chunks import (
    ChatCompletionChunk,
    ChoiceDeltaAudio,
    ChoiceDeltaToolCall,
    SearchResult,
    Usage,
)
from qwen_sse.errors import (
    EventTooLargeError,
    InBandError,
    IncompleteStreamError,
    QwenSSEError,
    StreamLimitError,
)
from qwen_sse.protocols import WireProtocol
from qwen_sse.protocols.base import frame_failure
from qwen_sse.protocols.compatible import DONE_MARKER
from qwen_sse.sse import DEFAULT_MAX_EVENT_BYTES, ServerSentEvent, SSEDecoder

__all__ = [
    "DEFAULT_MAX_ANSWER_CHARS",
    "DEFAULT_MAX_ANSWER_CHUNKS",
    "DEFAULT_MAX_STREAM_BYTES",
    "DONE_MARKER",
    "AudioResult",
    "ChatAccumulator",
    "ChatResult",
    "ChatStreamDecoder",
    "ChoiceResult",
    "StreamTiming",
    "ToolCall",
    "ToolCallFunction",
    "decode",
]

_UNBOUNDED = 1 << 62  # what None stands for: a plain int keeps the hot-path checks cheap

DEFAULT_MAX_STREAM_BYTES = 1 << 30
"""Decoded bytes of one response (1 GiB). The largest documented answer, 212,992 tokens
at DashScope's one or few tokens per chunk of 250-350 bytes, is under 80 MB: a margin of
more than 12. (Native frames with ``incremental_output: false`` repeat the text so far:
see :class:`~qwen_sse.native.NativeStreamDecoder`.)"""

DEFAULT_MAX_ANSWER_CHARS = 1 << 26
"""Characters of content, reasoning, tool-call arguments and audio (base64 and transcript)
of the whole answer (64 Mi). No token of Qwen's vocabulary is longer than 128 characters,
so even 212,992 of the longest tokens (27.3 M characters) fit more than twice; a typical
answer of that length is under 1 M characters. Spoken answers take 64,000 base64
characters a second (24 kHz 16-bit mono PCM), so this admits about 17 minutes of audio."""

DEFAULT_MAX_ANSWER_CHUNKS = 1 << 20
"""Chunks folded into the whole answer (1 Mi); each keeps an arrival time and a piece of
text. Each new choice and each new tool call counts as one more chunk (one chunk can name
thousands, each kept as a state). Every chunk with text carries at least one token, so the
largest documented answer takes at most 212,992 of them, plus a handful without text: a
margin of nearly 5."""


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


class AudioResult(msgspec.Struct, frozen=True, gc=False):
    """A choice's spoken answer (Qwen-Omni with ``modalities: ["text", "audio"]``).

    ``data`` is the decoded audio: raw 16-bit little-endian mono PCM at 24 kHz, no header.
    ``transcript`` joins its text pieces (they are not part of the choice's ``content``).
    ``id`` and ``expires_at`` (epoch seconds) are the first the server sent.
    ``invalid_pieces`` counts base64 pieces that could not be decoded and were left out of
    ``data`` (a cut stream's unfinished last quantum counts as one): the result is never an
    error over bad audio, so a caller that needs all of it checks this is 0.
    """

    sample_rate_hz: ClassVar[int] = 24_000
    sample_width_bytes: ClassVar[int] = 2
    channels: ClassVar[int] = 1

    id: str = ""
    data: bytes = b""
    transcript: str = ""
    expires_at: int | None = None
    invalid_pieces: int = 0

    @property
    def duration_s(self) -> float:
        """How long ``data`` plays."""
        return len(self.data) / (self.sample_rate_hz * self.sample_width_bytes * self.channels)


class ChoiceResult(msgspec.Struct, frozen=True, gc=False):
    """Everything one choice streamed, joined; ``audio`` is None when no audio arrived;
    ``reasoning_signature`` is the Anthropic protocol's signature of the thinking text
    (send it back with that text in the next turn), "" elsewhere."""

    index: int = 0
    role: str = "assistant"
    content: str = ""
    reasoning_content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    audio: AudioResult | None = None
    reasoning_signature: str = ""


class StreamTiming(msgspec.Struct, frozen=True, gc=False):
    """When things arrived, in seconds since the request was sent.

    ``ttft_s`` is the arrival of the first content, reasoning or audio (the role-only first
    chunk does not count); ``token_times_s`` holds the arrival of every chunk that carried
    any of them; ``total_s`` is when the stream ended or failed.
    """

    ttft_s: float | None = None
    token_times_s: tuple[float, ...] = ()
    total_s: float | None = None
    bytes_received: int = 0
    events: int = 0

    @property
    def inter_token_gaps_s(self) -> tuple[float, ...]:
        """Gaps between consecutive chunks with output (what vLLM calls ITL)."""
        times = self.token_times_s
        return tuple(later - earlier for earlier, later in itertools.pairwise(times))


class ChatResult(msgspec.Struct, frozen=True, gc=False):
    """A whole streamed answer (``complete``) or what arrived before a failure.

    ``complete`` is True only when every choice received its finish reason and the
    protocol's end marker arrived (``data: [DONE]``, ``message_stop``,
    ``response.completed``; natively, the frame that carries the last finish reason);
    anything less is a truncated answer, raised as an error whose ``.partial`` is this
    result with ``complete`` False. Finish reasons are the OpenAI names whatever the
    protocol (``stop``, ``length``, ``tool_calls``, ``content_filter``).

    ``content``, ``reasoning_content``, ``tool_calls``, ``finish_reason``, ``audio`` and
    ``reasoning_signature`` are those of choice 0; ``choices`` holds every choice when
    ``n > 1``. ``search_results`` are the web-search sources the native protocol returns
    with ``enable_search``. ``request_id`` is the ``x-request-id`` header when the client
    saw one, else the chunk id's uuid.

    Set by the client: ``attempts`` (HTTP requests made, retries and resumes included),
    ``resumes`` (continuations spliced in after a broken stream), and ``queue_wait_s``
    (time spent waiting for a limiter before the first request, apart from the network).
    """

    choices: tuple[ChoiceResult, ...] = ()
    usage: Usage | None = None
    search_results: tuple[SearchResult, ...] = ()
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

    @property
    def reasoning_signature(self) -> str:
        return self.choices[0].reasoning_signature if self.choices else ""

    @property
    def audio(self) -> AudioResult | None:
        return self.choices[0].audio if self.choices else None


class _ToolCallState:
    __slots__ = ("arguments", "id", "name", "type")

    def __init__(self) -> None:
        self.id = ""
        self.type = ""
        self.name = ""
        self.arguments: list[str] = []


class _AudioState:
    __slots__ = ("data", "expires_at", "id", "transcript")

    def __init__(self) -> None:
        self.id = ""
        self.expires_at: int | None = None
        self.data: list[str] = []  # base64 pieces, decoded only by result()
        self.transcript: list[str] = []

    def result(self) -> AudioResult:
        data, invalid_pieces = _decode_base64_pieces(self.data)
        return AudioResult(
            id=self.id,
            data=data,
            transcript="".join(self.transcript),
            expires_at=self.expires_at,
            invalid_pieces=invalid_pieces,
        )


class _ChoiceState:
    __slots__ = ("audio", "content", "finish_reason", "reasoning", "role", "signature", "tools")

    def __init__(self) -> None:
        self.role = ""
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.signature: list[str] = []
        self.tools: dict[int, _ToolCallState] = {}
        self.audio: _AudioState | None = None
        self.finish_reason: str | None = None


class ChatAccumulator:
    """Folds chunks into a :class:`ChatResult`; ``add`` is on the hot path, ``result`` not.

    ``started_at_s`` is the caller's clock reading when the request was sent; ``now_s``
    given to :meth:`add` is the same clock at the chunk's arrival.
    """

    __slots__ = (
        "_chars",
        "_chars_cap",
        "_choices",
        "_chunks",
        "_chunks_cap",
        "_token_times",
        "_unfinished",
        "expected_choices",
        "id",
        "model",
        "request_id",
        "search_results",
        "started_at_s",
        "usage",
    )

    def __init__(
        self,
        started_at_s: float = 0.0,
        request_id: str = "",
        *,
        max_answer_chars: int | None = DEFAULT_MAX_ANSWER_CHARS,
        max_answer_chunks: int | None = DEFAULT_MAX_ANSWER_CHUNKS,
    ) -> None:
        _check_bound("max_answer_chars", max_answer_chars)
        _check_bound("max_answer_chunks", max_answer_chunks)
        self.started_at_s = started_at_s
        self.request_id = request_id
        # How many choices the request asked for (``n``): fewer is a truncated answer.
        self.expected_choices = 1
        # Plain ints, so that the check on the hot path is two comparisons.
        self._chars_cap = _UNBOUNDED if max_answer_chars is None else max_answer_chars
        self._chunks_cap = _UNBOUNDED if max_answer_chunks is None else max_answer_chunks
        self.id = ""
        self.model = ""
        self.usage: Usage | None = None
        self.search_results: tuple[SearchResult, ...] = ()
        self._choices: dict[int, _ChoiceState] = {}
        self._token_times: list[float] = []
        self._chars = 0
        self._chunks = 0
        self._unfinished = 0

    def reset(self) -> None:
        """Forget everything folded in so far (a retry starts over); keeps the start time."""
        self.id = ""
        self.model = ""
        self.usage = None
        self.search_results = ()
        self._choices = {}
        self._token_times = []
        self._chars = 0
        self._chunks = 0
        self._unfinished = 0

    @property
    def max_answer_chars(self) -> int | None:
        """The bound on :attr:`chars` (None: unbounded)."""
        return None if self._chars_cap == _UNBOUNDED else self._chars_cap

    @property
    def max_answer_chunks(self) -> int | None:
        """The bound on :attr:`chunks` (None: unbounded)."""
        return None if self._chunks_cap == _UNBOUNDED else self._chunks_cap

    @property
    def chars(self) -> int:
        """Characters of content, reasoning, tool-call arguments and audio (base64 data and
        transcript) folded in so far."""
        return self._chars

    @property
    def chunks(self) -> int:
        """Chunks counted by :meth:`check_bounds` so far, each new choice and each new tool
        call counting as one more (one chunk may name thousands, each kept as a state)."""
        return self._chunks

    def check_bounds(self, folded: int) -> StreamLimitError | None:
        """Count ``folded`` more chunks; return the error for a bound now passed, if any.

        :meth:`add` counts characters but checks nothing, to stay cheap; the decoders
        call this once per read, so an answer passes a bound by at most one read.
        """
        self._chunks += folded
        if self._chunks > self._chunks_cap:
            return StreamLimitError(
                limit="max_answer_chunks",
                limit_value=self._chunks_cap,
                observed=self._chunks,
                unit="chunks",
            )
        if self._chars > self._chars_cap:
            return StreamLimitError(
                limit="max_answer_chars",
                limit_value=self._chars_cap,
                observed=self._chars,
                unit="characters of answer",
            )
        return None

    @property
    def has_text(self) -> bool:
        """True once any content, reasoning or audio has arrived."""
        return bool(self._token_times)

    def unfinished_choices(self) -> list[int]:
        """Indices of the choices without a finish reason yet, ascending: those that arrived
        without one, and those of the ``expected_choices`` that never arrived."""
        missing = [index for index in range(self.expected_choices) if index not in self._choices]
        return sorted(
            missing
            + [index for index, state in self._choices.items() if state.finish_reason is None]
        )

    @property
    def has_choices(self) -> bool:
        """True once any chunk carried a choice."""
        return bool(self._choices)

    @property
    def all_finished(self) -> bool:
        """True once ``expected_choices`` choices arrived and every choice has its finish
        reason (O(1): the native decoder asks after every frame)."""
        return not self._unfinished and len(self._choices) >= max(1, self.expected_choices)

    def add(self, chunk: ChatCompletionChunk, now_s: float = 0.0) -> None:
        """Fold one chunk in (see :meth:`check_bounds` for the bounds). A choice whose
        ``finish_reason`` is the string ``"null"`` has none: the chunk is corrected in
        place, so whoever receives it next sees ``None``."""
        if not self.id:
            self.id = chunk.id
            self.model = chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.search_results is not None:
            self.search_results = tuple(chunk.search_results)
        text_chars = 0
        for choice in chunk.choices:
            state = self._choices.get(choice.index)
            if state is None:
                state = self._choices[choice.index] = _ChoiceState()
                self._unfinished += 1
                self._chunks += 1
            delta = choice.delta
            content = delta.content
            if content:
                state.content.append(content)
                text_chars += len(content)
            reasoning = delta.reasoning_content
            if reasoning:
                state.reasoning.append(reasoning)
                text_chars += len(reasoning)
            if delta.tool_calls:
                self._chars += self._add_tool_calls(state, delta.tool_calls)
            audio = delta.audio
            if audio is not None:
                text_chars += self._add_audio(state, audio)
            signature = delta.reasoning_signature
            if signature:
                state.signature.append(signature)
                self._chars += len(signature)
            if delta.role and not state.role:
                state.role = delta.role
            finish_reason = choice.finish_reason
            if finish_reason:  # "" is a placeholder some servers send, not a reason
                if finish_reason == "null":
                    # The string means null (DashScope's native frames, and at times its
                    # compatible mode). Fixed in the chunk itself, before anyone sees it:
                    # checked here, on this rare branch, it costs the hot path nothing.
                    msgspec.structs.force_setattr(choice, "finish_reason", None)
                else:
                    if state.finish_reason is None:
                        self._unfinished -= 1
                    state.finish_reason = finish_reason
        if text_chars:
            self._chars += text_chars
            self._token_times.append(now_s - self.started_at_s)

    def _add_tool_calls(self, state: _ChoiceState, deltas: list[ChoiceDeltaToolCall]) -> int:
        """Fold tool-call deltas in; return the argument characters they added."""
        chars = 0
        for delta in deltas:
            call = state.tools.get(delta.index)
            if call is None:
                self._chunks += 1
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
                    chars += len(function.arguments)
        return chars

    @staticmethod
    def _add_audio(state: _ChoiceState, delta: ChoiceDeltaAudio) -> int:
        """Fold an audio delta in; return the characters it added (base64 and transcript).

        Audio marks a token arrival like text does: Qwen-Omni speaks its answer in
        ``audio`` (the text in ``transcript``) with no ``content``, and the first-token
        deadline and timing must see it.
        """
        audio = state.audio
        if audio is None:
            audio = state.audio = _AudioState()
        if delta.id and not audio.id:
            audio.id = delta.id
        if delta.expires_at is not None and audio.expires_at is None:
            audio.expires_at = delta.expires_at
        chars = 0
        data = delta.data
        if data:
            audio.data.append(data)
            chars += len(data)
        transcript = delta.transcript
        if transcript:
            audio.transcript.append(transcript)
            chars += len(transcript)
        return chars

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
                reasoning_signature="".join(state.signature),
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
                audio=None if state.audio is None else state.audio.result(),
            )
            for index, state in sorted(self._choices.items())
        )
        times = tuple(self._token_times)
        request_id = self.request_id or self.id.removeprefix("chatcmpl-")
        return ChatResult(
            choices=choices,
            usage=self.usage,
            search_results=self.search_results,
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
    """Sans-I/O decoder of one streamed chat answer in any wire protocol: bytes in, chunks out.

    ``protocol`` (a name of :data:`qwen_sse.protocols.NAMES` or a protocol object) and
    ``request``, the request body when known, choose the grammar: the protocol's
    :class:`~qwen_sse.protocols.base.FrameReader` for that request, how many choices the
    answer must have (``n``), and the byte bound's factor (see
    :data:`~qwen_sse.protocols.native.CUMULATIVE_STREAM_BYTES_FACTOR`).

    ``feed(data, now_s)`` returns the chunks that ``data`` completed, each already folded
    into the accumulator. It stops at the first failure: the chunks before the failure are
    returned, and the error (with ``.partial``) is raised by the next ``feed`` or
    ``feed_eof`` call, or at once when no chunk precedes it; ``error`` shows it meanwhile,
    so a caller that must not wait for more bytes checks it after each ``feed``.
    ``feed_eof(now_s)`` raises :class:`IncompleteStreamError` unless the end marker arrived.
    The end marker completes the answer (``done``) only when ``accumulator.expected_choices``
    choices arrived and every choice has its finish reason; otherwise it is an
    :class:`IncompleteStreamError` naming the choices without one (a truncated answer is
    never ``complete``). Bytes after the end marker are counted and otherwise ignored.
    ``accumulator`` lets several streams (a resumed answer) fold into one result;
    ``max_answer_chars`` and ``max_answer_chunks`` configure the accumulator made when none
    is given (a given one keeps its own bounds).

    Bounds: the bytes fed past ``max_stream_bytes`` are not decoded, and the stream fails
    with :class:`~qwen_sse.errors.StreamLimitError` unless the answer ended first; it fails
    the same way after a read that takes the answer past ``max_answer_chars`` or
    ``max_answer_chunks`` (the chunks of that read are still returned, and are in the
    partial) unless that read ended the answer. Any failure to decode or fold a frame
    (deep nesting included) is a :class:`~qwen_sse.errors.ProtocolError` with the frame.
    Either way the error is kept: every later ``feed`` or ``feed_eof`` raises it again.
    """

    __slots__ = (
        "_end_marker_name",
        "_reader",
        "_sse",
        "_stream_cap",
        "accumulator",
        "bytes_after_done",
        "bytes_received",
        "done",
        "error",
        "events",
        "protocol",
    )

    def __init__(
        self,
        *,
        protocol: str | WireProtocol = protocols.DEFAULT,
        request: Mapping[str, Any] | None = None,
        started_at_s: float = 0.0,
        request_id: str = "",
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_stream_bytes: int | None = DEFAULT_MAX_STREAM_BYTES,
        max_answer_chars: int | None = DEFAULT_MAX_ANSWER_CHARS,
        max_answer_chunks: int | None = DEFAULT_MAX_ANSWER_CHUNKS,
        accumulator: ChatAccumulator | None = None,
    ) -> None:
        _check_bound("max_stream_bytes", max_stream_bytes)
        wire = protocols.get(protocol)
        body: Mapping[str, Any] = request if request is not None else {}
        self.protocol = wire
        self._reader = wire.reader(body)
        self._end_marker_name = wire.end_marker
        self._sse = SSEDecoder(max_event_bytes)
        # A plain int, so that the check on the hot path is one comparison.
        self._stream_cap = (
            _UNBOUNDED
            if max_stream_bytes is None
            else max_stream_bytes * wire.stream_bytes_factor(body)
        )
        self.accumulator = accumulator or ChatAccumulator(
            started_at_s,
            request_id,
            max_answer_chars=max_answer_chars,
            max_answer_chunks=max_answer_chunks,
        )
        if request is not None:
            self.accumulator.expected_choices = wire.facts(body).choices
        self.done = False
        self.error: QwenSSEError | None = None
        self.bytes_received = 0
        self.bytes_after_done = 0
        self.events = 0

    @property
    def max_stream_bytes(self) -> int | None:
        """The bound on the bytes of this response (None: unbounded)."""
        return None if self._stream_cap == _UNBOUNDED else self._stream_cap

    def result(self, now_s: float | None = None) -> ChatResult:
        """The result so far; ``complete`` once the end marker arrived after every choice's
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
        received = self.bytes_received + len(data)
        if received > self._stream_cap:
            return self._deliver(self._feed_to_limit(data, now_s))
        self.bytes_received = received
        try:
            frames = self._sse.feed_frames(data)
        except EventTooLargeError as error:
            return self._deliver(self._overflow(error, now_s))
        return self._deliver(self._decode_frames(frames, now_s))

    def _feed_to_limit(self, data: bytes, now_s: float) -> list[ChatCompletionChunk]:
        """Decode what fits under the byte bound; fail unless the stream ended within it."""
        limit = self._stream_cap
        room = max(0, limit - self.bytes_received)
        self.bytes_received += room
        chunks = self._decode_bytes(data[:room], now_s) if room else []
        if self.done:
            self.bytes_after_done += len(data) - room
        else:
            self.bytes_received += len(data) - room
            if self.error is None:
                error = StreamLimitError(
                    limit="max_stream_bytes",
                    limit_value=limit,
                    observed=self.bytes_received,
                    unit="bytes",
                )
                self._fail(error, now_s)
        return chunks

    def _decode_bytes(self, data: bytes, now_s: float) -> list[ChatCompletionChunk]:
        try:
            frames = self._sse.feed_frames(data)
        except EventTooLargeError as error:
            return self._overflow(error, now_s)
        return self._decode_frames(frames, now_s)

    def _overflow(self, error: EventTooLargeError, now_s: float) -> list[ChatCompletionChunk]:
        """The chunks completed before ``error``; the failure is ``error`` unless an error
        frame came first (then that frame is the real cause) or the answer ended first
        (the bytes after its end are ignored)."""
        chunks = self._decode_frames(error.events, now_s)
        if self.error is None and not self.done:
            self._fail(error, now_s)
        return chunks

    def feed_events(
        self, events: Iterable[ServerSentEvent], now_s: float = 0.0
    ) -> list[ChatCompletionChunk]:
        """Decode already-parsed SSE events (for callers with their own SSE source)."""
        return self._decode_frames([(event.event, event.data.encode()) for event in events], now_s)

    def _decode_frames(
        self, frames: list[tuple[str, bytes]], now_s: float
    ) -> list[ChatCompletionChunk]:
        out: list[ChatCompletionChunk] = []
        if self.done or self.error is not None or not frames:
            return out
        try:
            consumed, error = self._reader.read(frames, out)
        except Exception as failure:  # a reader's own bug: still one clear error, not a crash
            consumed, error = len(frames), frame_failure(failure, frames[-1][1])
        add = self.accumulator.add
        for chunk in out:
            add(chunk, now_s)
        self.events += consumed
        if error is not None:
            if isinstance(error, InBandError) and self.accumulator.request_id:
                # The response's x-request-id names the exchange, whatever the frame says.
                error = InBandError(
                    code=error.code,
                    message=error.error_message,
                    type=error.type,
                    request_id=self.accumulator.request_id,
                )
            self._fail(error, now_s)
        elif self._reader.ended:
            self._end_marker(now_s)
        elif out:
            self._check_bounds(len(out), now_s)
        return out

    def _end_marker(self, now_s: float) -> None:
        """The end marker arrived: the answer is complete only if every choice has finished."""
        if self.accumulator.all_finished:
            self.done = True
            return
        unfinished = self.accumulator.unfinished_choices()
        if not self.accumulator.has_choices:
            missing = "no choice arrived"
        elif len(unfinished) == 1:
            missing = f"choice {unfinished[0]} has no finish_reason"
        else:
            missing = f"choices {', '.join(map(str, unfinished))} have no finish_reason"
        self._fail(
            IncompleteStreamError(
                f"stream ended with {self._end_marker_name} but {missing}"
                f" ({self.events} events, {self.bytes_received} bytes)"
            ),
            now_s,
        )

    def _check_bounds(self, folded: int, now_s: float) -> None:
        limit_error = self.accumulator.check_bounds(folded)
        if limit_error is not None and self.error is None:
            self._fail(limit_error, now_s)

    def feed_eof(self, now_s: float = 0.0) -> list[ChatCompletionChunk]:
        """End of input: returns ``[]`` after the end marker, else raises with ``.partial``."""
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
            f"stream ended without {self._end_marker_name} after {self.events} events and "
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


def decode(
    data: bytes,
    protocol: str | WireProtocol = "compatible",
    *,
    request: Mapping[str, Any] | None = None,
) -> ChatResult:
    """A whole saved stream of ``protocol`` decoded offline into its :class:`ChatResult`.

    Raises what the client would raise, with ``.partial``: an
    :class:`~qwen_sse.errors.IncompleteStreamError` when the stream is cut (no end marker,
    or a choice without its finish reason), an :class:`~qwen_sse.errors.InBandError` for
    the server's error event, a :class:`~qwen_sse.errors.ProtocolError` for what cannot be
    read. ``request``, the request body, tells what the answer must hold (``n`` choices,
    the native protocol's ``incremental_output``); without it the protocol's defaults apply.
    The default bounds apply (a saved stream is input like any other).
    """
    decoder = ChatStreamDecoder(protocol=protocol, request=request)
    decoder.feed(data)
    decoder.feed_eof()
    return decoder.result()


_BASE64_PIECE = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _decode_base64_pieces(pieces: list[str]) -> tuple[bytes, int]:
    """The bytes of base64 ``pieces`` in order, and how many pieces had to be left out.

    The pieces joined are one base64 text in the common case (DashScope's own sample code
    joins them before one decode), so that is tried first. When it fails (pieces that carry
    their own padding, or a piece that is not base64) they are decoded one by one, an
    unfinished 4-character quantum carried into the next: a piece that is not base64, or
    whose padding ends a quantum early, is left out and counted, as is an unfinished
    quantum at the end (a cut stream). Never raises.
    """
    try:
        return base64.b64decode("".join(pieces), validate=True), 0
    except ValueError:  # binascii.Error, or a non-ASCII character
        pass
    decoded = bytearray()
    invalid = 0
    carry = ""
    for piece in pieces:
        if not _BASE64_PIECE.fullmatch(piece):
            invalid += 1
            continue
        text = carry + piece
        cut = len(text) if piece.endswith("=") else len(text) - len(text) % 4
        try:
            decoded += base64.b64decode(text[:cut], validate=True)
        except ValueError:  # padding that does not end a whole quantum
            invalid += 1
            continue
        carry = text[cut:]
    return bytes(decoded), invalid + (1 if carry else 0)


def _check_bound(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be positive or None, got {value}")

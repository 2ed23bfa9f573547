"""DashScope's native streaming protocol: its frames in, the same typed chunks out.

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging.

The native protocol (``X-DashScope-SSE: enable``) differs from the compatible mode: frames
carry ``id:`` and ``event:result`` fields and a ``:HTTP_STATUS/200`` comment; the data is
``{"output": {"choices": [{"message": {...}, "finish_reason": "null"}]}, "usage":
{"input_tokens", "output_tokens", "total_tokens"}, "request_id"}`` (or ``output.text``
with ``result_format: "text"``); ``finish_reason`` is the *string* ``"null"`` until the
end; usage is cumulative in every frame; there is no ``[DONE]``: the frame with a real
finish reason ends the answer. With ``incremental_output: false`` the content is
cumulative too, and deltas are recovered by difference. Errors are ``event:error`` frames
with ``{"code", "message", "request_id"}`` at the top level.

:class:`NativeStreamDecoder` turns this into :class:`~qwen_sse.chunks.ChatCompletionChunk`
objects and the same :class:`~qwen_sse.chat.ChatResult`, so application code does not
change with the protocol.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from qwen_sse.chat import (
    DEFAULT_MAX_ANSWER_CHARS,
    DEFAULT_MAX_ANSWER_CHUNKS,
    DEFAULT_MAX_STREAM_BYTES,
    ChatAccumulator,
    ChatStreamDecoder,
)
from qwen_sse.chunks import (
    ChatCompletionChunk,
    ChoiceDelta,
    CompletionTokensDetails,
    DeltaChoice,
    PromptTokensDetails,
    Usage,
    chunk_protocol_error,
)
from qwen_sse.errors import InBandError, ProtocolError
from qwen_sse.protocols.base import frame_failure
from qwen_sse.sse import DEFAULT_MAX_EVENT_BYTES

__all__ = ["CUMULATIVE_STREAM_BYTES_FACTOR", "NativeStreamDecoder", "native_request_body"]

CUMULATIVE_STREAM_BYTES_FACTOR = 32
"""How many times ``max_stream_bytes`` a stream of cumulative frames may take. With
``incremental_output: false`` frame *k* repeats the *k* tokens before it, so the bytes grow
with the square of the answer: the longest answer that mode allows (65,536 tokens, thinking
needs incremental output), one token per frame at about 4 bytes a token, is about 9 GB
(18 GB if every CJK character came escaped as six bytes); 32 GiB fits it."""

_NOT_FINISHED = (None, "", "null")


class _NativeChoice(msgspec.Struct, frozen=True, gc=False):
    index: int = 0
    message: ChoiceDelta = msgspec.field(default_factory=ChoiceDelta)
    finish_reason: str | None = None


class _NativeOutput(msgspec.Struct, frozen=True, gc=False):
    choices: list[_NativeChoice] | None = None
    text: str | None = None
    finish_reason: str | None = None


class _OutputTokensDetails(msgspec.Struct, frozen=True, gc=False):
    reasoning_tokens: int | None = None


class _NativeUsage(msgspec.Struct, frozen=True, gc=False):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None
    output_tokens_details: _OutputTokensDetails | None = None


class _NativeFrame(msgspec.Struct, frozen=True, gc=False):
    output: _NativeOutput | None = None
    usage: _NativeUsage | None = None
    request_id: str = ""
    code: str | None = None
    message: str | None = None


_frame_decoder = msgspec.json.Decoder(_NativeFrame)


def native_request_body(
    model: str, messages: list[object], params: dict[str, object]
) -> dict[str, object]:
    """The native request body: messages under ``input``, options under ``parameters``
    (``result_format: "message"`` and ``incremental_output: true`` unless given)."""
    parameters: dict[str, object] = {"result_format": "message", "incremental_output": True}
    parameters.update(params)
    return {"model": model, "input": {"messages": messages}, "parameters": parameters}


class NativeStreamDecoder(ChatStreamDecoder):
    """:class:`~qwen_sse.chat.ChatStreamDecoder` for the native protocol.

    ``incremental`` says whether the request set ``incremental_output`` (the default);
    without it each frame repeats the whole text so far, and the byte bound is
    ``max_stream_bytes`` times :data:`CUMULATIVE_STREAM_BYTES_FACTOR`. There is no
    ``[DONE]``: ``done`` turns true at the frame that gives the last unfinished choice a real
    finish reason (not ``"null"``); input that ends before that (even a clean EOF) is an
    :class:`~qwen_sse.errors.IncompleteStreamError`.
    """

    _END_MARKER: ClassVar[str] = "a finish reason for every choice"

    __slots__ = ("_cumulative", "incremental")

    def __init__(
        self,
        *,
        incremental: bool = True,
        started_at_s: float = 0.0,
        request_id: str = "",
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_stream_bytes: int | None = DEFAULT_MAX_STREAM_BYTES,
        max_answer_chars: int | None = DEFAULT_MAX_ANSWER_CHARS,
        max_answer_chunks: int | None = DEFAULT_MAX_ANSWER_CHUNKS,
        accumulator: ChatAccumulator | None = None,
    ) -> None:
        super().__init__(
            started_at_s=started_at_s,
            request_id=request_id,
            max_event_bytes=max_event_bytes,
            max_stream_bytes=max_stream_bytes,
            max_answer_chars=max_answer_chars,
            max_answer_chunks=max_answer_chunks,
            accumulator=accumulator,
        )
        if not incremental and max_stream_bytes is not None:
            self._stream_cap = max_stream_bytes * CUMULATIVE_STREAM_BYTES_FACTOR
        self.incremental = incremental
        self._cumulative: dict[tuple[int, str], str] = {}

    def _decode_frames(
        self, frames: list[tuple[str, bytes]], now_s: float
    ) -> list[ChatCompletionChunk]:
        out: list[ChatCompletionChunk] = []
        if self.done or self.error is not None:
            return out
        add = self.accumulator.add
        for event_type, data in frames:
            self.events += 1
            try:
                frame = _frame_decoder.decode(data)
            except msgspec.DecodeError as decode_error:
                self._fail(chunk_protocol_error(decode_error, data), now_s)
                break
            except Exception as failure:  # e.g. RecursionError from deeply nested JSON
                self._fail(frame_failure(failure, data), now_s)
                break
            if event_type == "error" or (frame.code and frame.output is None):
                self._fail(
                    InBandError(
                        code=frame.code or "",
                        message=frame.message or "",
                        request_id=self.accumulator.request_id or frame.request_id,
                    ),
                    now_s,
                )
                break
            try:
                chunk = self._chunk(frame)
                add(chunk, now_s)
            except ProtocolError as protocol_error:
                protocol_error.frame = data
                self._fail(protocol_error, now_s)
                break
            except Exception as failure:
                self._fail(frame_failure(failure, data), now_s)
                break
            out.append(chunk)
            # Complete once every choice seen has its finish reason; a stream that ends
            # with "null" on every frame is cut, however cleanly it closes.
            if chunk.choices and self.accumulator.all_finished:
                self.done = True
                break
        if out and not self.done:
            self._check_bounds(len(out), now_s)
        return out

    def _chunk(self, frame: _NativeFrame) -> ChatCompletionChunk:
        choices: list[DeltaChoice] = []
        output = frame.output
        if output is not None:
            if output.choices is not None:
                for choice in output.choices:
                    choices.append(
                        DeltaChoice(
                            index=choice.index,
                            delta=self._delta(choice.index, choice.message),
                            finish_reason=_finish(choice.finish_reason),
                        )
                    )
            elif output.text is not None:
                delta = self._delta(0, ChoiceDelta(role="assistant", content=output.text))
                choices.append(DeltaChoice(0, delta, _finish(output.finish_reason)))
        return ChatCompletionChunk(
            id=frame.request_id,
            object="chat.completion.chunk",
            choices=choices,
            usage=_usage(frame.usage),
        )

    def _delta(self, index: int, message: ChoiceDelta) -> ChoiceDelta:
        if self.incremental:
            return message
        return msgspec.structs.replace(
            message,
            content=self._difference(index, "content", message.content),
            reasoning_content=self._difference(
                index, "reasoning_content", message.reasoning_content
            ),
        )

    def _difference(self, index: int, field: str, text: str | None) -> str | None:
        if text is None:
            return None
        before = self._cumulative.get((index, field), "")
        if not text.startswith(before):
            raise ProtocolError(
                f"cumulative {field} of choice {index} does not extend the previous frame's"
            )
        self._cumulative[(index, field)] = text
        return text[len(before) :]


def _finish(reason: str | None) -> str | None:
    return None if reason in _NOT_FINISHED else reason


def _usage(usage: _NativeUsage | None) -> Usage | None:
    if usage is None:
        return None
    details = usage.output_tokens_details
    return Usage(
        prompt_tokens=usage.input_tokens,
        completion_tokens=usage.output_tokens,
        total_tokens=(
            usage.total_tokens
            if usage.total_tokens is not None
            else usage.input_tokens + usage.output_tokens
        ),
        prompt_tokens_details=usage.prompt_tokens_details,
        completion_tokens_details=(
            CompletionTokensDetails(details.reasoning_tokens) if details is not None else None
        ),
    )

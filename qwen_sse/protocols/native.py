"""DashScope's native generation protocols, text (``native``) and multimodal.

The registry names them ``native`` and ``native-multimodal``.

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging.

Request: ``POST {base}/services/aigc/text-generation/generation`` (multimodal:
``.../multimodal-generation/generation``) with ``Authorization: Bearer`` and
``X-DashScope-SSE: enable``; the body is ``{"model", "input": {"messages"}, "parameters"}``
with the caller's parameters under ``parameters`` (``result_format: "message"`` and
``incremental_output: true`` unless given). Multimodal messages carry ``content`` as an
array of parts (``[{"text": ...}, {"image": url}]``), in requests and in the stream.

Stream (protocol.md): frames carry ``id:``, ``event:result`` and a ``:HTTP_STATUS/200``
comment; the data is ``{"output": {"choices": [{"message": {...}, "finish_reason":
"null"}]}, "usage": {"input_tokens", "output_tokens", "total_tokens"}, "request_id"}`` (or
``output.text`` with ``result_format: "text"``); ``finish_reason`` is the *string*
``"null"`` until the end; usage is cumulative in every frame; web search adds
``output.search_info.search_results`` and, at the end, ``usage.plugins``. There is no
``[DONE]``: the frame that gives the last unfinished choice a real finish reason ends the
answer, and input that ends before it (even a clean EOF) is cut. With
``incremental_output: false`` content, reasoning and tool-call arguments are cumulative, and
deltas are recovered by difference (a frame that does not extend the previous one is a
:class:`~qwen_sse.errors.ProtocolError`). Errors are ``event:error`` frames with
``{"code", "message", "request_id"}`` at the top level, sometimes sent as an
``application/json`` body. Resume (text protocol only): DashScope's partial mode, as in
compatible mode, under ``input.messages``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from qwen_sse.chunks import (
    ChatCompletionChunk,
    ChoiceDelta,
    ChoiceDeltaAudio,
    ChoiceDeltaToolCall,
    DeltaChoice,
    InputOutputUsage,
    SearchResult,
    chunk_protocol_error,
)
from qwen_sse.errors import InBandError, ProtocolError, QwenSSEError
from qwen_sse.protocols.base import (
    Frame,
    ProtocolDefaults,
    RequestFacts,
    frame_failure,
    json_error_in_body,
    max_choices,
    sampling_value,
)
from qwen_sse.protocols.compatible import partial_messages
from qwen_sse.sse import SSEDecoder

if TYPE_CHECKING:
    from qwen_sse.chat import ChatResult

__all__ = [
    "CUMULATIVE_STREAM_BYTES_FACTOR",
    "NATIVE",
    "NATIVE_MULTIMODAL",
    "NativeProtocol",
    "NativeReader",
    "native_request_body",
]

CUMULATIVE_STREAM_BYTES_FACTOR = 32
"""How many times ``max_stream_bytes`` a stream of cumulative frames may take. With
``incremental_output: false`` frame *k* repeats the *k* tokens before it, so the bytes grow
with the square of the answer: the longest answer that mode allows (65,536 tokens, thinking
needs incremental output), one token per frame at about 4 bytes a token, is about 9 GB
(18 GB if every CJK character came escaped as six bytes); 32 GiB fits it."""

_NOT_FINISHED = (None, "", "null")


class _Part(msgspec.Struct, frozen=True, gc=False):
    text: str | None = None


class _NativeMessage(msgspec.Struct, frozen=True, gc=False):
    role: str | None = None
    content: str | list[_Part] | None = None
    reasoning_content: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None
    audio: ChoiceDeltaAudio | None = None


class _NativeChoice(msgspec.Struct, frozen=True, gc=False):
    index: int = 0
    message: _NativeMessage = msgspec.field(default_factory=_NativeMessage)
    finish_reason: str | None = None


class _SearchInfo(msgspec.Struct, frozen=True, gc=False):
    search_results: list[SearchResult] | None = None


class _NativeOutput(msgspec.Struct, frozen=True, gc=False):
    choices: list[_NativeChoice] | None = None
    text: str | None = None
    finish_reason: str | None = None
    search_info: _SearchInfo | None = None


class _NativeFrame(msgspec.Struct, frozen=True, gc=False):
    output: _NativeOutput | None = None
    usage: InputOutputUsage | None = None
    request_id: str = ""
    code: str | None = None
    message: str | None = None


_frame_decoder = msgspec.json.Decoder(_NativeFrame)


def native_request_body(
    model: str, messages: Sequence[Any], params: Mapping[str, Any]
) -> dict[str, Any]:
    """The native request body: messages under ``input``, options under ``parameters``
    (``result_format: "message"`` and ``incremental_output: true`` unless given)."""
    parameters: dict[str, Any] = {"result_format": "message", "incremental_output": True}
    parameters.update(params)
    return {"model": model, "input": {"messages": list(messages)}, "parameters": parameters}


class NativeReader:
    """Reads native frames until every choice has its finish reason (see
    :class:`~qwen_sse.protocols.base.FrameReader`); ``incremental`` False recovers deltas
    from cumulative frames; ``choices`` is how many choices the request asked for."""

    __slots__ = ("_cumulative", "_finished", "_seen", "choices", "ended", "incremental")

    def __init__(self, *, incremental: bool = True, choices: int = 1) -> None:
        self.incremental = incremental
        self.choices = choices
        self.ended = False
        self._cumulative: dict[tuple[int, str, int], str] = {}
        self._seen: set[int] = set()
        self._finished: set[int] = set()

    def read(
        self, frames: Sequence[Frame], out: list[ChatCompletionChunk]
    ) -> tuple[int, QwenSSEError | None]:
        consumed = 0
        for event_type, data in frames:
            consumed += 1
            try:
                frame = _frame_decoder.decode(data)
            except msgspec.DecodeError as decode_error:
                return consumed, chunk_protocol_error(decode_error, data)
            except Exception as failure:  # e.g. RecursionError from deeply nested JSON
                return consumed, frame_failure(failure, data)
            if event_type == "error" or (frame.code and frame.output is None):
                error = InBandError(
                    code=frame.code or "", message=frame.message or "", request_id=frame.request_id
                )
                return consumed, error
            try:
                chunk = self._chunk(frame)
            except ProtocolError as protocol_error:
                protocol_error.frame = data
                return consumed, protocol_error
            out.append(chunk)
            # Complete once every choice has its finish reason; a stream that ends with
            # "null" on every frame is cut, however cleanly it closes.
            if chunk.choices and self._all_finished(chunk):
                self.ended = True
                break
        return consumed, None

    def _all_finished(self, chunk: ChatCompletionChunk) -> bool:
        for choice in chunk.choices:
            self._seen.add(choice.index)
            if choice.finish_reason is not None:
                self._finished.add(choice.index)
        return len(self._finished) == len(self._seen) >= self.choices

    def _chunk(self, frame: _NativeFrame) -> ChatCompletionChunk:
        choices: list[DeltaChoice] = []
        output = frame.output
        search_results = None
        if output is not None:
            if output.search_info is not None:
                search_results = output.search_info.search_results
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
                message = _NativeMessage(role="assistant", content=output.text)
                finish_reason = _finish(output.finish_reason)
                choices.append(DeltaChoice(0, self._delta(0, message), finish_reason))
        return ChatCompletionChunk(
            id=frame.request_id,
            object="chat.completion.chunk",
            choices=choices,
            usage=None if frame.usage is None else frame.usage.usage(),
            search_results=search_results,
        )

    def _delta(self, index: int, message: _NativeMessage) -> ChoiceDelta:
        content = message.content
        if isinstance(content, list):
            content = "".join(part.text for part in content if part.text) if content else None
        delta = ChoiceDelta(
            role=message.role,
            content=content,
            reasoning_content=message.reasoning_content,
            tool_calls=message.tool_calls,
            audio=message.audio,
        )
        if self.incremental:
            return delta
        tool_calls = delta.tool_calls
        if tool_calls:
            tool_calls = [self._call_difference(index, call) for call in tool_calls]
        reasoning = delta.reasoning_content
        return msgspec.structs.replace(
            delta,
            content=self._difference(index, "content", 0, delta.content),
            reasoning_content=self._difference(index, "reasoning_content", 0, reasoning),
            tool_calls=tool_calls,
        )

    def _call_difference(self, index: int, call: ChoiceDeltaToolCall) -> ChoiceDeltaToolCall:
        function = call.function
        if function is None or function.arguments is None:
            return call
        arguments = self._difference(index, "arguments", call.index, function.arguments)
        return msgspec.structs.replace(
            call, function=msgspec.structs.replace(function, arguments=arguments)
        )

    def _difference(self, index: int, field: str, call: int, text: str | None) -> str | None:
        if text is None:
            return None
        key = (index, field, call)
        before = self._cumulative.get(key, "")
        if not text.startswith(before):
            where = f"tool call {call} " if field == "arguments" else ""
            raise ProtocolError(
                f"cumulative {where}{field} of choice {index} does not extend the previous frame's"
            )
        self._cumulative[key] = text
        return text[len(before) :]


def _finish(reason: str | None) -> str | None:
    return None if reason in _NOT_FINISHED else reason


class NativeProtocol(ProtocolDefaults):
    """DashScope's native generation protocol at ``path``; see the module docstring."""

    root = "/api/v1"
    end_marker = "a finish reason for every choice"
    # The caller's params go under "parameters": none can replace the model or messages.
    built_fields: frozenset[str] = frozenset()

    def __init__(self, name: str, path: str, *, partial_mode: bool, resume: str) -> None:
        self.name = name
        self.path = path
        self.resume = resume
        self._partial_mode = partial_mode

    def headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}", "X-DashScope-SSE": "enable"}

    def request_body(
        self,
        model: str,
        messages: Sequence[Any],
        params: Mapping[str, Any],
        *,
        include_usage: bool,
    ) -> dict[str, Any]:
        return native_request_body(model, messages, params)

    def facts(self, body: Mapping[str, Any]) -> RequestFacts:
        parameters = _parameters(body)
        max_tokens = parameters.get("max_tokens")
        return RequestFacts(
            model=str(body.get("model", "")),
            messages=_messages(body),
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            choices=max_choices(parameters.get("n", 1)),
            temperature=sampling_value(parameters.get("temperature")),
            top_p=sampling_value(parameters.get("top_p")),
        )

    def reader(self, body: Mapping[str, Any]) -> NativeReader:
        parameters = _parameters(body)
        return NativeReader(
            incremental=parameters.get("incremental_output", True) is not False,
            choices=max_choices(parameters.get("n", 1)),
        )

    def stream_bytes_factor(self, body: Mapping[str, Any]) -> int:
        incremental = _parameters(body).get("incremental_output", True) is not False
        return 1 if incremental else CUMULATIVE_STREAM_BYTES_FACTOR

    def error_in_body(self, body: bytes, request_id: str = "") -> InBandError | None:
        # DashScope sends native error frames under application/json at times.
        with contextlib.suppress(ProtocolError):
            frames = SSEDecoder().feed_frames(body + b"\n\n")
            _, error = NativeReader().read(frames, [])
            if isinstance(error, InBandError):
                if not request_id:
                    return error
                return InBandError(
                    code=error.code, message=error.error_message, request_id=request_id
                )
        return json_error_in_body(body, request_id)

    def continuation(self, body: Mapping[str, Any], so_far: ChatResult) -> dict[str, Any] | None:
        parameters = _parameters(body)
        if (
            not self._partial_mode
            or parameters.get("enable_thinking") is True
            or parameters.get("n", 1) != 1
        ):
            return None
        messages = partial_messages(_messages(body), so_far.content)
        return {**body, "input": {**body.get("input", {}), "messages": messages}}


def _parameters(body: Mapping[str, Any]) -> Mapping[str, Any]:
    parameters = body.get("parameters")
    return parameters if isinstance(parameters, Mapping) else {}


def _messages(body: Mapping[str, Any]) -> Sequence[Any]:
    input_ = body.get("input")
    messages = input_.get("messages") if isinstance(input_, Mapping) else None
    return messages if isinstance(messages, list) else ()


NATIVE = NativeProtocol(
    "native",
    "/services/aigc/text-generation/generation",
    partial_mode=True,
    resume="partial mode, as in compatible mode, under input.messages",
)
NATIVE_MULTIMODAL = NativeProtocol(
    "native-multimodal",
    "/services/aigc/multimodal-generation/generation",
    partial_mode=False,
    resume=(
        "none: DashScope documents partial mode for text generation only, and a multimodal "
        "continuation would resend every image or video of the conversation"
    ),
)

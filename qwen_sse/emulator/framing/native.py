"""The native framings: DashScope's own generation protocol, text (``native``) and
multimodal (``native-multimodal``).

Edge layer (part of :mod:`qwen_sse.emulator`). The body ``{"model", "input": {"messages"},
"parameters": {...}}`` reads as the compatible body with ``model``, ``messages`` and the
parameters at the top level (only the envelope is checked here). With ``X-DashScope-SSE:
enable`` the answer streams as protocol.md's frames: ``id:<n>``, ``event:result``, a
``:HTTP_STATUS/200`` comment, then ``data:{"output": {"choices": [{"message": {...},
"finish_reason": "null"}]}, "usage": {"total_tokens", "output_tokens", "input_tokens"},
"request_id"}`` with no space after the colons; one frame per piece, no role-only frame,
usage cumulative in every frame (output tokens so far), and a last frame with empty
content and the real finish reason instead of ``[DONE]``. ``parameters.incremental_output``
(default false, as DashScope's) false repeats the whole ``content`` and
``reasoning_content`` so far in each frame, and each tool call as it stands (its id, name
and arguments so far);
``result_format: "text"`` (the default, as DashScope's; it refuses ``enable_thinking``,
``tools`` and ``n``) gives ``{"output": {"finish_reason", "text"}}``. With ``n`` (2 to 4)
each frame carries one choice with its ``index``, the choices' frames interleaved token by
token, each choice ending with its own finish frame. Without the header the answer
is one JSON ``{"output", "usage", "request_id"}``. Errors are native too: HTTP bodies
``{"code", "message", "request_id"}`` with DashScope's native codes (``InvalidApiKey``,
``ModelNotFound``, ``InvalidParameter``, ``DataInspectionFailed``,
``Throttling.RateQuota``, ``Throttling.AllocationQuota``...), and in-band
``event:error`` frames with ``:HTTP_STATUS/400``. A native stream keeps its frames under
any content type a fault imposes, as DashScope sends error frames under
``application/json``.

The multimodal protocol is the same at ``.../multimodal-generation/generation``, except
that message content is an array of parts, in requests (``[{"text": ...}, {"image":
...}]``; the text parts are what the answer and the prompt count read) and in answers
(``[{"text": ...}]``, ``[]`` for a frame without text), and that it always answers in the
message format (``result_format`` is not its business).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from qwen_sse.emulator.answers import EmulatedAnswer, Piece
from qwen_sse.emulator.faults import Events, FaultFrames, Item, paced
from qwen_sse.emulator.framing.base import Answering
from qwen_sse.emulator.framing.compatible import encode, tool_calls_of
from qwen_sse.emulator.rejects import Reject, bad_request, json_object
from qwen_sse.protocols.native import NATIVE, NATIVE_MULTIMODAL, NativeProtocol

__all__ = ["MULTIMODAL_FRAMING", "NATIVE_FRAMING", "NATIVE_SSE_HEADER", "NativeFraming"]

NATIVE_SSE_HEADER = "X-DashScope-SSE"
"""The request header that asks for a native stream (value ``enable``)."""

# The native protocol spells DashScope's codes its own way; codes not listed are the same.
_NATIVE_CODES = {
    "invalid_parameter_error": "InvalidParameter",
    "invalid_api_key": "InvalidApiKey",
    "model_not_found": "ModelNotFound",
    "data_inspection_failed": "DataInspectionFailed",
    "limit_requests": "Throttling.RateQuota",
    "insufficient_quota": "Throttling.AllocationQuota",
    "limit_burst_rate": "Throttling.BurstRate",
    "internal_error": "InternalError",
}


def _native_code(code: str) -> str:
    return _NATIVE_CODES.get(code, code)


_NATIVE_ONLY_PARAMETERS = frozenset({"result_format", "incremental_output"})


class _NativeOptions(NamedTuple):
    text_format: bool
    incremental: bool
    parts: bool  # message content as an array of parts (multimodal), not a string


def _from_native(body: Any, *, multimodal: bool) -> tuple[dict[str, Any], _NativeOptions]:
    """The compatible body equivalent to a native one, and the native output options.

    The compatible body is checked as any other afterwards; only the native envelope is
    checked here (400 ``InvalidParameter``). ``multimodal`` answers in the message format
    whatever ``result_format`` says, with content parts.
    """
    inputs = json_object(body).get("input")
    if not isinstance(inputs, dict):
        raise bad_request("input must be an object with messages.")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise bad_request("parameters must be an object.")
    result_format = parameters.get("result_format", "text")
    if result_format not in ("message", "text"):
        raise bad_request("result_format should be 'message' or 'text'.")
    incremental = parameters.get("incremental_output", False)
    if not isinstance(incremental, bool):
        raise bad_request("incremental_output should be a boolean.")
    text_format = result_format == "text" and not multimodal
    if text_format and (parameters.get("enable_thinking") is True or parameters.get("tools")):
        raise bad_request("enable_thinking and tools need result_format 'message'.")
    if text_format and parameters.get("n", 1) != 1:
        raise bad_request("n needs result_format 'message'.")
    compatible = {
        name: value for name, value in parameters.items() if name not in _NATIVE_ONLY_PARAMETERS
    }
    compatible["model"] = body.get("model")
    compatible["messages"] = inputs.get("messages")
    return compatible, _NativeOptions(text_format, incremental, multimodal)


def _content(text: str, *, parts: bool) -> str | list[dict[str, str]]:
    """A message's content: the text, or as parts ``[{"text": ...}]`` (none when empty)."""
    if not parts:
        return text
    return [{"text": text}] if text else []


def _native_usage(
    input_tokens: int, output_tokens: int, reasoning: int | None, cached: int
) -> dict[str, Any]:
    # The cache's details come in every frame, 0 when nothing hit (as DashScope sends them).
    usage: dict[str, Any] = {
        "total_tokens": input_tokens + output_tokens,
        "output_tokens": output_tokens,
        "input_tokens": input_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    if reasoning is not None:
        usage["output_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


class _ChoiceText:
    """What one choice has streamed so far, for cumulative frames: its reasoning, its
    content, and each tool call as it stands (id, name, arguments so far)."""

    __slots__ = ("calls", "content", "reasoning")

    def __init__(self) -> None:
        self.reasoning = ""
        self.content = ""
        self.calls: dict[int, tuple[str, str, str]] = {}


class NativeFrames:
    """Builds one native response's frames, in the order they are sent.

    Every frame carries the usage so far: the prompt, and the output tokens of every
    choice's pieces sent so far (reasoning counted apart, as the compatible mode bills
    it). The ``id:`` line is added as a frame is sent (:meth:`numbered`), so injected
    frames keep the ids in sequence. With several choices, each frame carries one, with
    its ``index``.
    """

    huge_after = 1  # the first frame stays as it is

    __slots__ = (
        "_cached_tokens",
        "_choices",
        "_end",
        "_eol",
        "_error_head",
        "_incremental",
        "_indexed",
        "_input_tokens",
        "_output_tokens",
        "_parts",
        "_reasoning_tokens",
        "_request_id",
        "_result_head",
        "_text_format",
        "_thinking",
    )

    def __init__(
        self,
        request_id: str,
        line_ending: str,
        options: _NativeOptions,
        *,
        thinking: bool,
        input_tokens: int,
        cached_tokens: int,
        choices: int = 1,
    ) -> None:
        eol = line_ending.encode()
        self._eol = eol
        self._end = eol * 2
        self._result_head = b"".join((b"event:result", eol, b":HTTP_STATUS/200", eol, b"data:"))
        self._error_head = b"".join((b"event:error", eol, b":HTTP_STATUS/400", eol, b"data:"))
        self._request_id = request_id
        self._text_format = options.text_format
        self._parts = options.parts
        self._incremental = options.incremental
        self._thinking = thinking
        self._input_tokens = input_tokens
        self._cached_tokens = cached_tokens
        self._choices = [_ChoiceText() for _ in range(choices)]
        self._indexed = choices > 1
        self._reasoning_tokens = 0
        self._output_tokens = 0

    def numbered(self, frame: bytes, number: int) -> bytes:
        return b"".join((b"id:", str(number).encode(), self._eol, frame))

    def piece(self, piece: Piece, call_id: str, name: str, choice: int = 0) -> bytes:
        """The frame of one piece of choice ``choice``; ``call_id`` and ``name`` are set on
        a call's first."""
        state = self._choices[choice]
        if piece.kind == "reasoning_content":
            state.reasoning += piece.text
            self._reasoning_tokens += piece.tokens
            reasoning = piece.text if self._incremental else state.reasoning
            return self._message(choice, "", None, reasoning=reasoning)
        self._output_tokens += piece.tokens
        if piece.kind == "content":
            state.content += piece.text
            return self._text(choice, piece.text if self._incremental else state.content)
        if not self._incremental:
            known_id, known_name, arguments = state.calls.get(piece.call_index, ("", "", ""))
            call_id, name = call_id or known_id, name or known_name
            state.calls[piece.call_index] = (call_id, name, arguments + piece.text)
            piece = piece._replace(text=arguments + piece.text)
        function = {"name": name, "arguments": piece.text} if call_id else {"arguments": piece.text}
        call = {"index": piece.call_index, "id": call_id, "type": "function", "function": function}
        return self._message(choice, self._so_far(state.content), [call])

    def finish(self, reason: str, choice: int = 0) -> bytes:
        """The last frame of choice ``choice``: no new text, the real finish reason."""
        content = self._so_far(self._choices[choice].content)
        if self._text_format:
            return self._frame({"finish_reason": reason, "text": content})
        return self._message(choice, content, None, finish_reason=reason)

    def error(self, code: str, message: str) -> bytes:
        payload = {"code": _native_code(code), "message": message, "request_id": self._request_id}
        return b"".join((self._error_head, encode(payload), self._end))

    def malformed(self) -> bytes:
        return b"".join(
            (self._result_head, b'{"output":{"choices":[{"message":{"content":"broken', self._end)
        )

    def huge(self, size: int) -> bytes:
        bare = len(self._text(0, "x")) - 1 - len(self._result_head) - len(self._end)
        return self._text(0, "x" * max(0, size - bare))

    def _so_far(self, text: str) -> str:
        return "" if self._incremental else text

    def _text(self, choice: int, text: str) -> bytes:
        if self._text_format:
            return self._frame({"finish_reason": "null", "text": text})
        return self._message(choice, text, None)

    def _message(
        self,
        choice: int,
        content: str,
        tool_calls: list[dict[str, Any]] | None,
        *,
        reasoning: str | None = None,
        finish_reason: str = "null",
    ) -> bytes:
        message: dict[str, Any] = {"content": _content(content, parts=self._parts)}
        if self._thinking:
            message["reasoning_content"] = (
                reasoning
                if reasoning is not None
                else self._so_far(self._choices[choice].reasoning)
            )
        if tool_calls is not None:
            message["tool_calls"] = tool_calls
        message["role"] = "assistant"
        entry: dict[str, Any] = {"message": message, "finish_reason": finish_reason}
        if self._indexed:
            entry["index"] = choice
        return self._frame({"choices": [entry]})

    def _frame(self, output: dict[str, Any]) -> bytes:
        usage = _native_usage(
            self._input_tokens,
            self._reasoning_tokens + self._output_tokens,
            self._reasoning_tokens if self._thinking else None,
            self._cached_tokens,
        )
        payload = {"output": output, "usage": usage, "request_id": self._request_id}
        return b"".join((self._result_head, encode(payload), self._end))


def _events(
    *, frames: NativeFrames, answers: tuple[EmulatedAnswer, ...], no_done: bool
) -> Iterator[Item]:
    """A native stream: one frame per piece, each choice ending with the frame of its
    finish reason after its last piece; the last of those ends the stream."""
    announced = [set[int]() for _ in answers]
    left = [len(answer.pieces) for answer in answers]
    unfinished = len(answers)

    def finish(choice: int) -> Item | None:
        """The choice's finish frame; None when it is the end marker a no_done fault
        holds back."""
        nonlocal unfinished
        unfinished -= 1
        if not unfinished and no_done:
            return None
        return frames.finish(answers[choice].finish_reason, choice), None

    for choice, count in enumerate(left):
        if not count:
            if (end := finish(choice)) is None:
                return
            yield end
    for wait, choice, piece in paced(answers):
        if wait:
            yield wait
        call_id = name = ""
        if piece.kind == "arguments" and piece.call_index not in announced[choice]:
            announced[choice].add(piece.call_index)
            answer = answers[choice]
            call_id = answer.tool_call_ids[piece.call_index]
            name = answer.tool_calls[piece.call_index][0]
        yield frames.piece(piece, call_id, name, choice), piece.kind
        left[choice] -= 1
        if not left[choice]:
            if (end := finish(choice)) is None:
                return
            yield end


class _NativeReply:
    __slots__ = ("_options", "_sse", "answer_request")

    def __init__(self, body: dict[str, Any], options: _NativeOptions, *, sse: bool) -> None:
        self.answer_request = body
        self._options = options
        self._sse = sse

    def streams(self, content_type: str | None) -> bool:
        return self._sse

    def stream(self, answering: Answering) -> tuple[FaultFrames, Events]:
        frames = NativeFrames(
            answering.request_id,
            answering.line_ending,
            self._options,
            thinking=answering.body.get("enable_thinking") is True,
            input_tokens=answering.usage.prompt_tokens,
            cached_tokens=answering.usage.cached_tokens,
            choices=len(answering.answers),
        )

        def events(no_done: bool) -> Iterator[Item]:
            return _events(frames=frames, answers=answering.answers, no_done=no_done)

        return frames, events

    def completion(self, answering: Answering) -> bytes:
        answer, usage = answering.answer, answering.usage
        output: dict[str, Any]
        if self._options.text_format:
            output = {"finish_reason": answer.finish_reason, "text": answer.content}
        else:
            choices = []
            for index, each in enumerate(answering.answers):
                message: dict[str, Any] = {
                    "content": _content(each.content, parts=self._options.parts)
                }
                if answering.body.get("enable_thinking") is True:
                    message["reasoning_content"] = each.reasoning
                if each.tool_calls:
                    message["tool_calls"] = tool_calls_of(each)
                message["role"] = "assistant"
                choice: dict[str, Any] = {"finish_reason": each.finish_reason, "message": message}
                if len(answering.answers) > 1:
                    choice["index"] = index
                choices.append(choice)
            output = {"choices": choices}
        payload = {
            "output": output,
            "usage": _native_usage(
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.reasoning_tokens,
                usage.cached_tokens,
            ),
            "request_id": answering.request_id,
        }
        return encode(payload)


class NativeFraming:
    """The framing of a native ``protocol``; ``multimodal`` for ``native-multimodal``
    (see the module docstring)."""

    def __init__(self, protocol: NativeProtocol, *, multimodal: bool) -> None:
        self.protocol = protocol
        self._multimodal = multimodal

    def reply_to(self, body: Any, headers: Mapping[str, str]) -> _NativeReply:
        answer_request, options = _from_native(body, multimodal=self._multimodal)
        sse = headers.get(NATIVE_SSE_HEADER, "").lower() == "enable"
        return _NativeReply(answer_request, options, sse=sse)

    def error_body(self, reject: Reject, request_id: str) -> bytes:
        payload = {
            "code": _native_code(reject.code),
            "message": reject.message,
            "request_id": request_id,
        }
        return encode(payload)


NATIVE_FRAMING = NativeFraming(NATIVE, multimodal=False)
MULTIMODAL_FRAMING = NativeFraming(NATIVE_MULTIMODAL, multimodal=True)

"""The Anthropic framing: Anthropic's Messages API as DashScope serves it at
``POST /apps/anthropic/v1/messages`` (key in ``x-api-key``, or ``Authorization: Bearer``
as Claude Code's ``ANTHROPIC_AUTH_TOKEN`` sends it).

Edge layer (part of :mod:`qwen_sse.emulator`). The request reads as the answer request
with ``messages`` from ``system`` (a system message) and ``messages`` (text blocks joined;
``tool_use`` blocks become the assistant's tool calls, ``tool_result`` blocks tool
messages; thinking and media blocks are ignored; a last assistant message is a prefill,
continued as DashScope's partial mode continues it), ``max_tokens`` (required),
``temperature`` and ``top_p`` as they are (DashScope's ranges, not Anthropic's),
``thinking: {"type": "enabled", "budget_tokens"}`` as ``enable_thinking`` and
``thinking_budget``, ``tools`` (``{"name", "description", "input_schema"}``) and
``tool_choice`` (``auto``, ``none``, ``tool``; ``any`` calls the first tool) in Chat
Completions' shape, with parallel calls unless ``disable_parallel_tool_use``. The Messages
API has no ``n``: one answer, always.

With ``"stream": true`` the answer streams as DashScope streams it: ``event:<type>`` and
``data:{...}`` lines, no space after the colons: ``message_start`` (the message with
``usage.input_tokens``, less the tokens the context cache held, which
``usage.cache_read_input_tokens`` counts when there are any), per content block
``content_block_start`` (``thinking``, ``text`` or ``tool_use`` with ``id`` and ``name``),
``content_block_delta`` per piece
(``thinking_delta``, ``text_delta``, ``input_json_delta``; a thinking block ends with a
``signature_delta``) and ``content_block_stop``, one ``ping`` after the first block
starts, then ``message_delta`` (``stop_reason`` ``end_turn``, ``max_tokens`` or
``tool_use``; ``usage.output_tokens``) and ``message_stop``. The in-band error is ``event:
error`` with ``{"type": "error", "error": {"type", "message"}}``. Without ``stream`` the
answer is the message. HTTP errors are Anthropic's ``{"type": "error", "error": {"type",
"message"}, "request_id"}``, DashScope's codes spelled as Anthropic's error types
(``invalid_request_error``, ``authentication_error``, ``rate_limit_error``...; codes
without an Anthropic type as they are).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from typing import Any

from qwen_sse.emulator.accounting import AnswerUsage
from qwen_sse.emulator.answers import EmulatedAnswer, Piece, digest
from qwen_sse.emulator.faults import Events, FaultFrames, Item, paced
from qwen_sse.emulator.framing.base import Answering
from qwen_sse.emulator.framing.compatible import encode
from qwen_sse.emulator.rejects import Reject, bad_request, json_object
from qwen_sse.protocols.anthropic import ANTHROPIC

__all__ = ["ANTHROPIC_FRAMING", "AnthropicFraming"]


# DashScope's codes as Anthropic's error types; a code not listed is its own type.
_ERROR_TYPES = {
    "invalid_parameter_error": "invalid_request_error",
    "invalid_api_key": "authentication_error",
    "AccessDenied": "permission_error",
    "model_not_found": "not_found_error",
    "limit_requests": "rate_limit_error",
    "insufficient_quota": "rate_limit_error",
    "limit_burst_rate": "rate_limit_error",
    "internal_error": "api_error",
    "ServiceUnavailable": "overloaded_error",
}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_BLOCK_TYPES = {"reasoning_content": "thinking", "content": "text", "arguments": "tool_use"}
_DELTAS = {
    "reasoning_content": ("thinking_delta", "thinking"),
    "content": ("text_delta", "text"),
    "arguments": ("input_json_delta", "partial_json"),
}


def _error_type(code: str) -> str:
    return _ERROR_TYPES.get(code, code)


def _text_of_blocks(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    return "".join(
        block["text"]
        for block in content
        if isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    )


def _message(message: Any) -> list[Any]:
    """The chat messages of one Anthropic message (tool results first, as they answer the
    calls before them)."""
    if not isinstance(message, dict):
        return [message]
    if not isinstance(message.get("content"), list):
        return [dict(message)]  # a copy: a prefill gets marked partial
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for block in message["content"]:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input", {}), ensure_ascii=False)
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        elif kind == "tool_result":
            content = _text_of_blocks(block.get("content", ""))
            results.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content}
            )
    chat: dict[str, Any] = {"role": message.get("role"), "content": "".join(texts)}
    if calls:
        chat["tool_calls"] = calls
    return [*results, chat] if texts or calls or not results else results


def _messages(system: Any, messages: Any) -> Any:
    if not isinstance(messages, list):
        return messages
    chat: list[Any] = []
    if system:
        chat.append({"role": "system", "content": _text_of_blocks(system)})
    for message in messages:
        chat += _message(message)
    last = chat[-1] if chat else None
    if isinstance(last, dict) and last.get("role") == "assistant" and "tool_calls" not in last:
        last["partial"] = True  # a prefill: the answer continues it
    return chat


def _tools(tools: Any) -> Any:
    if not isinstance(tools, list):
        return tools
    return [
        {
            "type": "function",
            "function": {
                "name": tool.get("name"),
                "description": tool.get("description", ""),
                "parameters": tool.get("input_schema", {}),
            },
        }
        for tool in tools
        if isinstance(tool, dict) and tool.get("type", "custom") == "custom"
    ]


def _answer_request(body: dict[str, Any]) -> dict[str, Any]:
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise bad_request("max_tokens: Field required")
    request: dict[str, Any] = {
        "model": body.get("model"),
        "messages": _messages(body.get("system"), body.get("messages")),
        "max_tokens": max_tokens,
    }
    for name in ("temperature", "top_p"):
        if name in body:
            request[name] = body[name]
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled"):
        request["enable_thinking"] = thinking["type"] == "enabled"
        if "budget_tokens" in thinking:
            request["thinking_budget"] = thinking["budget_tokens"]
    tools = _tools(body.get("tools"))
    if tools is not None:
        request["tools"] = tools
    choice = body.get("tool_choice")
    request["parallel_tool_calls"] = not (
        isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True
    )
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind in ("auto", "none"):
            request["tool_choice"] = kind
        elif kind == "tool":
            request["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind == "any" and isinstance(tools, list) and tools:
            request["tool_choice"] = {
                "type": "function",
                "function": {"name": tools[0]["function"]["name"]},
            }
    return request


class AnthropicFrames:
    """Builds one message's events in the order they are sent (events carry no id)."""

    __slots__ = ("_answering", "_end", "_eol", "_index", "_open")

    huge_after = 3  # message_start, the first content_block_start and the ping

    def __init__(self, answering: Answering) -> None:
        self._answering = answering
        self._eol = answering.line_ending.encode()
        self._end = self._eol * 2
        self._open: Piece | None = None
        self._index = -1

    def numbered(self, frame: bytes, number: int) -> bytes:
        return frame

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        data = encode({"type": kind, **fields})
        return b"".join((b"event:", kind.encode(), self._eol, b"data:", data, self._end))

    def message_start(self) -> bytes:
        message = _message_object(self._answering, content=[], stop_reason=None)
        message["usage"]["output_tokens"] = 0
        return self._event("message_start", {"message": message})

    def enter(self, piece: Piece) -> list[bytes]:
        """The events that close the open block and start ``piece``'s, if it is another."""
        open_ = self._open
        if open_ is not None and (open_.kind, open_.call_index) == (piece.kind, piece.call_index):
            return []
        frames = self.leave()
        self._open = piece
        self._index += 1
        block: dict[str, Any] = {"type": _BLOCK_TYPES[piece.kind]}
        if piece.kind == "reasoning_content":
            block.update(thinking="", signature="")
        elif piece.kind == "content":
            block["text"] = ""
        else:
            answer = self._answering.answer
            block.update(
                id=answer.tool_call_ids[piece.call_index],
                name=answer.tool_calls[piece.call_index][0],
                input={},
            )
        frames.append(
            self._event("content_block_start", {"index": self._index, "content_block": block})
        )
        if self._index == 0:
            frames.append(self._event("ping", {}))
        return frames

    def delta(self, text: str) -> bytes:
        """The open block's delta event."""
        if self._open is None:
            raise RuntimeError("no content block is open")
        kind, field = _DELTAS[self._open.kind]
        return self._event(
            "content_block_delta", {"index": self._index, "delta": {"type": kind, field: text}}
        )

    def leave(self) -> list[bytes]:
        """The events that close the open block, if any."""
        if self._open is None:
            return []
        frames = []
        if self._open.kind == "reasoning_content":
            delta = {"type": "signature_delta", "signature": _signature(self._answering)}
            frames.append(
                self._event("content_block_delta", {"index": self._index, "delta": delta})
            )
        frames.append(self._event("content_block_stop", {"index": self._index}))
        self._open = None
        return frames

    def message_delta(self) -> bytes:
        answer, usage = self._answering.answer, self._answering.usage
        delta = {"stop_reason": _STOP_REASONS[answer.finish_reason], "stop_sequence": None}
        return self._event(
            "message_delta", {"delta": delta, "usage": {"output_tokens": usage.completion_tokens}}
        )

    def message_stop(self) -> bytes:
        return self._event("message_stop", {})

    def error(self, code: str, message: str) -> bytes:
        return self._event("error", {"error": {"type": _error_type(code), "message": message}})

    def malformed(self) -> bytes:
        head = b"".join((b"event:content_block_delta", self._eol, b"data:"))
        return (
            head
            + b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"broken'
            + self._end
        )

    def huge(self, size: int) -> bytes:
        bare = self.delta("")
        data_bytes = len(bare) - bare.index(b"data:") - len(b"data:") - len(self._end)
        return self.delta("x" * max(0, size - data_bytes))


def _signature(answering: Answering) -> str:
    """The thinking block's signature: opaque, as Anthropic's, and the same every time."""
    return base64.b64encode(digest(48, "signature", answering.answer.reasoning)).decode()


def _message_object(
    answering: Answering, *, content: list[dict[str, Any]], stop_reason: str | None
) -> dict[str, Any]:
    usage = answering.usage
    return {
        "id": f"msg_{digest(12, 'message', answering.request_id).hex()}",
        "type": "message",
        "role": "assistant",
        "model": answering.body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _usage_of(usage),
    }


def _usage_of(usage: AnswerUsage) -> dict[str, Any]:
    """Anthropic's usage: ``input_tokens`` leaves out the tokens read from the cache,
    ``cache_read_input_tokens`` (only when some were) counts them apart."""
    wire: dict[str, Any] = {"input_tokens": usage.prompt_tokens - usage.cached_tokens}
    if usage.cached_tokens:
        wire["cache_read_input_tokens"] = usage.cached_tokens
    wire["output_tokens"] = usage.completion_tokens
    return wire


def _blocks(answering: Answering) -> list[dict[str, Any]]:
    """The whole message's content blocks."""
    answer = answering.answer
    blocks: list[dict[str, Any]] = []
    if answer.reasoning:
        blocks.append(
            {"type": "thinking", "thinking": answer.reasoning, "signature": _signature(answering)}
        )
    if answer.content or not answer.tool_calls:
        blocks.append({"type": "text", "text": answer.content})
    for (name, arguments), call_id in zip(answer.tool_calls, answer.tool_call_ids, strict=True):
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": _input(arguments)})
    return blocks


def _input(arguments: str) -> Any:
    """A tool call's input: its arguments JSON, or ``{}`` when max_tokens cut it short."""
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return {}


def _events(*, frames: AnthropicFrames, answer: EmulatedAnswer, no_done: bool) -> Iterator[Item]:
    """A Messages stream: message_start, the content blocks, message_delta, message_stop."""
    yield frames.message_start(), None
    for wait, _, piece in paced((answer,)):
        if wait:
            yield wait
        for frame in frames.enter(piece):
            yield frame, None
        yield frames.delta(piece.text), piece.kind
    for frame in frames.leave():
        yield frame, None
    yield frames.message_delta(), None
    if not no_done:
        yield frames.message_stop(), None


class _AnthropicReply:
    __slots__ = ("_stream", "answer_request")

    def __init__(self, body: dict[str, Any]) -> None:
        self.answer_request = _answer_request(body)
        self._stream = body.get("stream") is True

    def streams(self, content_type: str | None) -> bool:
        return self._stream and not (content_type and "json" in content_type.lower())

    def stream(self, answering: Answering) -> tuple[FaultFrames, Events]:
        frames = AnthropicFrames(answering)

        def events(no_done: bool) -> Iterator[Item]:
            return _events(frames=frames, answer=answering.answer, no_done=no_done)

        return frames, events

    def completion(self, answering: Answering) -> bytes:
        stop_reason = _STOP_REASONS[answering.answer.finish_reason]
        return encode(
            _message_object(answering, content=_blocks(answering), stop_reason=stop_reason)
        )


class AnthropicFraming:
    """The Anthropic framing (see the module docstring)."""

    protocol = ANTHROPIC

    def reply_to(self, body: Any, headers: Mapping[str, str]) -> _AnthropicReply:
        return _AnthropicReply(json_object(body))

    def error_body(self, reject: Reject, request_id: str) -> bytes:
        error = {"type": _error_type(reject.code), "message": reject.message}
        return encode({"type": "error", "error": error, "request_id": request_id})


ANTHROPIC_FRAMING = AnthropicFraming()

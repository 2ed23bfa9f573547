"""The Responses framing: OpenAI's Responses API as DashScope serves it at
``POST /compatible-mode/v1/responses`` (``Authorization: Bearer``).

Edge layer (part of :mod:`qwen_sse.emulator`). The request reads as the answer request
with ``messages`` from ``instructions`` (a system message) and ``input`` (a string is one
user message; items are messages whose text parts are joined, ``function_call`` items
become an assistant's tool calls, ``function_call_output`` items tool messages; other
items are ignored), ``max_output_tokens`` as ``max_tokens``, function ``tools``
(``{"type": "function", "name", "parameters"}``) and ``tool_choice`` in Chat Completions'
shape, and ``temperature``, ``top_p``, DashScope's ``enable_thinking``,
``thinking_budget`` and ``parallel_tool_calls`` as they are. ``previous_response_id`` is
ignored: the emulator keeps no conversation, so a client must send the whole input. The
Responses API has no ``n``: one answer, always.

With ``"stream": true`` the answer streams as DashScope's gateway frames it: ``id:<n>``,
``event:<type>``, a ``:HTTP_STATUS/200`` comment and ``data:{"type", "sequence_number",
...}`` (numbered from 0 across every event, injected ones included): ``response.created``,
``response.in_progress``, then per output item ``response.output_item.added``, for a
reasoning item (thinking) or the message ``response.content_part.added``,
``response.reasoning_text.delta`` or ``response.output_text.delta`` per piece, their
``.done``, ``response.content_part.done``, for a function call
``response.function_call_arguments.delta`` per fragment and ``.done``, then
``response.output_item.done``; last ``response.completed`` with ``usage``, or
``response.incomplete`` (``incomplete_details.reason: "max_output_tokens"``) when
``max_output_tokens`` cut the answer. The in-band error is an ``event:error`` frame
``{"type": "error", "code", "message", "param"}`` (``:HTTP_STATUS/400``). Without
``stream`` (or under a fault's JSON content type) the answer is the final response object.
HTTP errors are OpenAI's ``{"error": {message, type, param, code}, "request_id"}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from qwen_sse.emulator.answers import EmulatedAnswer, Piece, digest
from qwen_sse.emulator.faults import Events, FaultFrames, Item, paced
from qwen_sse.emulator.framing.base import Answering
from qwen_sse.emulator.framing.compatible import encode, error_envelope
from qwen_sse.emulator.rejects import Reject, bad_request, json_object
from qwen_sse.protocols.responses import RESPONSES

__all__ = ["RESPONSES_FRAMING", "ResponsesFraming"]


# Answer requests take these as they are; the rest of a Responses body is mapped or ignored.
_PASSED_THROUGH = (
    "model",
    "enable_thinking",
    "thinking_budget",
    "parallel_tool_calls",
    "temperature",
    "top_p",
)


def _text_of_parts(content: Any) -> Any:
    """A Responses message content as a chat message's: the text of its parts (input_text,
    output_text...) joined; anything else as it is, for the checks to refuse."""
    if not isinstance(content, list):
        return content
    return "".join(
        part["text"]
        for part in content
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


def _messages(instructions: Any, items: Any) -> list[Any]:
    messages: list[Any] = []
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    if not isinstance(items, list):
        raise bad_request("input must be a string or a list of input items.")
    for item in items:
        if not isinstance(item, dict):
            messages.append(item)
            continue
        kind = item.get("type", "message")
        if kind == "message":
            role = "system" if item.get("role") == "developer" else item.get("role")
            messages.append({"role": role, "content": _text_of_parts(item.get("content"))})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            }
            last = messages[-1] if messages else None
            if isinstance(last, dict) and last.get("role") == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": _text_of_parts(output) if isinstance(output, list) else output,
                }
            )
    return messages


def _tools(tools: Any) -> Any:
    """Function tools in Chat Completions' shape; built-in tools (web search...) left out."""
    if not isinstance(tools, list):
        return tools
    return [
        {
            "type": "function",
            "function": {
                name: tool[name] for name in ("name", "description", "parameters") if name in tool
            },
        }
        for tool in tools
        if isinstance(tool, dict) and tool.get("type") == "function"
    ]


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _answer_request(body: dict[str, Any]) -> dict[str, Any]:
    if "input" not in body:
        raise bad_request("input is required.")
    request: dict[str, Any] = {name: body[name] for name in _PASSED_THROUGH if name in body}
    request["messages"] = _messages(body.get("instructions"), body["input"])
    if "max_output_tokens" in body:
        request["max_tokens"] = body["max_output_tokens"]
    if "tools" in body:
        request["tools"] = _tools(body["tools"])
    if "tool_choice" in body:
        request["tool_choice"] = _tool_choice(body["tool_choice"])
    return request


class _Item(NamedTuple):
    """One output item: the kind of the pieces it holds, and their call's index."""

    kind: str
    call_index: int
    id: str


_ITEM_PREFIXES = {"reasoning_content": "rs", "content": "msg", "arguments": "fc"}


def _items(answer: EmulatedAnswer, request_id: str) -> list[_Item]:
    """The output items of ``answer``, in order: its runs of pieces of one kind (and call)."""
    items: list[_Item] = []
    for piece in answer.pieces:
        if not items or (items[-1].kind, items[-1].call_index) != (piece.kind, piece.call_index):
            item_id = digest(12, "item", request_id, len(items)).hex()
            items.append(
                _Item(piece.kind, piece.call_index, f"{_ITEM_PREFIXES[piece.kind]}_{item_id}")
            )
    return items


class _Output:
    """The answer's output items and response objects, as the stream and the non-stream
    body show them."""

    __slots__ = ("_answering", "_reply", "items", "response_id")

    def __init__(self, answering: Answering, reply: _ResponsesReply) -> None:
        self._answering = answering
        self._reply = reply
        self.items = _items(answering.answer, answering.request_id)
        self.response_id = f"resp_{digest(16, 'response', answering.request_id).hex()}"

    @property
    def incomplete(self) -> bool:
        return self._answering.answer.finish_reason == "length"

    def text(self, item: _Item) -> str:
        answer = self._answering.answer
        if item.kind == "reasoning_content":
            return answer.reasoning
        if item.kind == "content":
            return answer.content
        return answer.tool_calls[item.call_index][1]

    def part(self, item: _Item, text: str) -> dict[str, Any]:
        if item.kind == "reasoning_content":
            return {"type": "reasoning_text", "text": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def item(self, item: _Item, *, done: bool) -> dict[str, Any]:
        """An item as ``output_item.added`` (not ``done``) or ``.done`` shows it."""
        status = "in_progress"
        if done:
            status = "incomplete" if item.kind == "content" and self.incomplete else "completed"
        if item.kind == "arguments":
            name, arguments = self._answering.answer.tool_calls[item.call_index]
            return {
                "id": item.id,
                "type": "function_call",
                "status": status,
                "arguments": arguments if done else "",
                "call_id": self._answering.answer.tool_call_ids[item.call_index],
                "name": name,
            }
        content = [self.part(item, self.text(item))] if done else []
        if item.kind == "reasoning_content":
            return {
                "id": item.id,
                "type": "reasoning",
                "summary": [],
                "content": content,
                "status": status,
            }
        return {
            "id": item.id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def response(self, *, done: bool) -> dict[str, Any]:
        """The response object: in progress (no output yet), or as it ended."""
        status = "in_progress"
        incomplete_details = None
        if done:
            status = "incomplete" if self.incomplete else "completed"
            if self.incomplete:
                incomplete_details = {"reason": "max_output_tokens"}
        body = self._answering.body
        usage = self._answering.usage
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self._answering.created_s,
            "status": status,
            "model": body["model"],
            "output": [self.item(item, done=True) for item in self.items] if done else [],
            "parallel_tool_calls": body.get("parallel_tool_calls") is True,
            "tool_choice": self._reply.tool_choice,
            "tools": self._reply.tools,
            "max_output_tokens": body.get("max_tokens"),
            "error": None,
            "incomplete_details": incomplete_details,
            "usage": {
                "input_tokens": usage.prompt_tokens,
                "input_tokens_details": {"cached_tokens": usage.cached_tokens},
                "output_tokens": usage.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
                "total_tokens": usage.total_tokens,
            }
            if done
            else None,
        }


_DELTA_EVENTS = {
    "reasoning_content": "response.reasoning_text.delta",
    "content": "response.output_text.delta",
    "arguments": "response.function_call_arguments.delta",
}
_DONE_EVENTS = {
    "reasoning_content": "response.reasoning_text.done",
    "content": "response.output_text.done",
    "arguments": "response.function_call_arguments.done",
}
_TYPE_KEY = b'data:{"type":"'


class ResponsesFrames:
    """Builds one response's events in the order they are sent; the ``id:`` line and each
    event's ``sequence_number`` are added as it is sent (:meth:`numbered`), so injected
    events keep both in sequence."""

    __slots__ = ("_end", "_eol", "_open", "_output", "huge_after")

    def __init__(self, output: _Output, line_ending: str) -> None:
        self._output = output
        self._eol = line_ending.encode()
        self._end = self._eol * 2
        self._open: tuple[int, _Item] | None = None
        # created, in_progress, the first item's added and (but for a call) its content part
        first = output.items[0].kind if output.items else "content"
        self.huge_after = 3 if first == "arguments" else 4

    def numbered(self, frame: bytes, number: int) -> bytes:
        at = frame.index(b'"', frame.index(_TYPE_KEY) + len(_TYPE_KEY)) + 1
        sequence = b',"sequence_number":' + str(number - 1).encode()
        return b"".join((b"id:", str(number).encode(), self._eol, frame[:at], sequence, frame[at:]))

    def _event(self, kind: str, fields: dict[str, Any], *, status: int = 200) -> bytes:
        eol = self._eol
        head = b"".join((b"event:", kind.encode(), eol, b":HTTP_STATUS/", str(status).encode()))
        return b"".join((head, eol, b"data:", encode({"type": kind, **fields}), self._end))

    def created(self) -> bytes:
        return self._event("response.created", {"response": self._output.response(done=False)})

    def in_progress(self) -> bytes:
        response = self._output.response(done=False)
        return self._event("response.in_progress", {"response": response})

    def enter(self, piece: Piece) -> list[bytes]:
        """The events that close the open item and open ``piece``'s, if it is another."""
        open_ = self._open
        if open_ is not None and (open_[1].kind, open_[1].call_index) == (
            piece.kind,
            piece.call_index,
        ):
            return []
        frames = self.leave()
        index = 0 if open_ is None else open_[0] + 1
        item = self._output.items[index]
        self._open = (index, item)
        added = {"output_index": index, "item": self._output.item(item, done=False)}
        frames.append(self._event("response.output_item.added", added))
        if item.kind != "arguments":
            part = self._output.part(item, "")
            fields = {"item_id": item.id, "output_index": index, "content_index": 0, "part": part}
            frames.append(self._event("response.content_part.added", fields))
        return frames

    def delta(self, text: str) -> bytes:
        """The open item's delta event."""
        if self._open is None:
            raise RuntimeError("no output item is open")
        index, item = self._open
        fields: dict[str, Any] = {"item_id": item.id, "output_index": index}
        if item.kind != "arguments":
            fields["content_index"] = 0
        fields["delta"] = text
        if item.kind == "content":
            fields["logprobs"] = []
        return self._event(_DELTA_EVENTS[item.kind], fields)

    def leave(self) -> list[bytes]:
        """The events that close the open item, if any."""
        if self._open is None:
            return []
        index, item = self._open
        output = self._output
        text = output.text(item)
        frames = []
        fields: dict[str, Any] = {"item_id": item.id, "output_index": index}
        if item.kind == "arguments":
            fields["arguments"] = text
            frames.append(self._event(_DONE_EVENTS[item.kind], fields))
        else:
            fields["content_index"] = 0
            done = {**fields, "text": text}
            if item.kind == "content":
                done["logprobs"] = []
            frames.append(self._event(_DONE_EVENTS[item.kind], done))
            part = {**fields, "part": output.part(item, text)}
            frames.append(self._event("response.content_part.done", part))
        done_item = {"output_index": index, "item": output.item(item, done=True)}
        frames.append(self._event("response.output_item.done", done_item))
        self._open = None
        return frames

    def end(self) -> bytes:
        """``response.completed``, or ``response.incomplete`` for a cut answer."""
        kind = "response.incomplete" if self._output.incomplete else "response.completed"
        return self._event(kind, {"response": self._output.response(done=True)})

    def error(self, code: str, message: str) -> bytes:
        fields = {"code": code, "message": message, "param": None}
        return self._event("error", fields, status=400)

    def malformed(self) -> bytes:
        bare = self._event(_DELTA_EVENTS["content"], {})  # ...data:{"type":"..."}
        return bare[: -len(self._end) - 1] + b',"delta":"broken' + self._end

    def huge(self, size: int) -> bytes:
        bare = self.delta("")
        data_bytes = len(bare) - bare.index(_TYPE_KEY) - len(b"data:") - len(self._end)
        # The sequence number goes in as the event is sent, after huge_after events.
        data_bytes += len(b',"sequence_number":') + len(str(self.huge_after))
        return self.delta("x" * max(0, size - data_bytes))


def _events(*, frames: ResponsesFrames, answer: EmulatedAnswer, no_done: bool) -> Iterator[Item]:
    """A Responses stream: the lifecycle events, the items, and the end event."""
    yield frames.created(), None
    yield frames.in_progress(), None
    for wait, _, piece in paced((answer,)):
        if wait:
            yield wait
        for frame in frames.enter(piece):
            yield frame, None
        yield frames.delta(piece.text), piece.kind
    for frame in frames.leave():
        yield frame, None
    if not no_done:
        yield frames.end(), None


class _ResponsesReply:
    __slots__ = ("_stream", "answer_request", "tool_choice", "tools")

    def __init__(self, body: dict[str, Any]) -> None:
        self.answer_request = _answer_request(body)
        self._stream = body.get("stream") is True
        # Echoed in the response object, as the request gave them.
        self.tools: Any = body.get("tools", [])
        self.tool_choice: Any = body.get("tool_choice", "auto")

    def streams(self, content_type: str | None) -> bool:
        return self._stream and not (content_type and "json" in content_type.lower())

    def stream(self, answering: Answering) -> tuple[FaultFrames, Events]:
        frames = ResponsesFrames(_Output(answering, self), answering.line_ending)

        def events(no_done: bool) -> Iterator[Item]:
            return _events(frames=frames, answer=answering.answer, no_done=no_done)

        return frames, events

    def completion(self, answering: Answering) -> bytes:
        return encode(_Output(answering, self).response(done=True))


class ResponsesFraming:
    """The Responses framing (see the module docstring)."""

    protocol = RESPONSES

    def reply_to(self, body: Any, headers: Mapping[str, str]) -> _ResponsesReply:
        return _ResponsesReply(json_object(body))

    def error_body(self, reject: Reject, request_id: str) -> bytes:
        return error_envelope(reject, request_id)


RESPONSES_FRAMING = ResponsesFraming()

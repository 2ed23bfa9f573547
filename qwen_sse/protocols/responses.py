"""The OpenAI Responses API as DashScope serves it (``protocol="responses"``).

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging.

Sources: OpenAI's "Streaming API responses" guide and "Responses streaming events"
reference (developers.openai.com, ``/docs/guides/streaming-responses`` and
``/api/reference/resources/responses/streaming-events``) for the event grammar and field
names (``ResponseErrorEvent`` ``{"type": "error", "code", "message", "param",
"sequence_number"}``; ``response.function_call_arguments.delta`` ``{"item_id",
"output_index", "delta"}``; function-call items ``{"type": "function_call", "id",
"call_id", "name", "arguments"}``); Alibaba Cloud Model Studio's "OpenAI Responses API
reference" and "OpenAI Responses compatibility" pages (alibabacloud.com and
help.aliyun.com, ``model-studio/qwen-api-via-openai-responses`` and
``.../compatibility-with-openai-responses-api``, 2026) for the endpoint (the path
``/api/v2/apps/protocols/compatible-mode/v1/responses`` is being retired for
``/compatible-mode/v1/responses``), string or chat-message ``input``, ``enable_thinking``
and the parameters DashScope ignores; Qwen Cloud's "Thinking" page
(docs.qwencloud.com) for thinking text sent as ``reasoning_summary_text`` events, where
protocol.md has DashScope's ``reasoning_text``.

Request: ``POST {base}/responses`` with ``Authorization: Bearer``; the body is ``{"model",
"input", "stream": true}`` plus the caller's parameters at the top level, where a chat
``max_tokens`` becomes ``max_output_tokens`` (DashScope ignores parameters it does not
document, so a ``max_tokens`` left as it is would bound nothing), and Chat Completions
``tools`` and a named ``tool_choice`` take the Responses shape (the function's ``name``,
``description`` and ``parameters`` beside ``"type": "function"``). Each chat message
becomes an input item: ``{"role", "content"}`` (content as given; system messages stay
``role: "system"``, as DashScope does not take ``instructions`` everywhere); an assistant
message's ``tool_calls`` become ``function_call`` items after it and a ``tool`` message a
``function_call_output`` item; anything that already has a ``type`` is a Responses item
and goes as it is.

Stream: ``event: <type>`` and ``data: {json}`` frames; the JSON's ``type`` names the event
(the ``event:`` line stands in when it has none); ``sequence_number`` is not checked (one
HTTP stream cannot reorder). Mapped to one choice (index 0):

- ``response.created``: the chunk id (``response.id``), model and ``created_at``; a chunk
  with ``role: "assistant"``. It must come first: an item, delta or end before it is a
  :class:`~qwen_sse.errors.ProtocolError`.
- ``response.output_text.delta``: ``delta.content``; ``response.reasoning_text.delta``
  and ``response.reasoning_summary_text.delta``: ``delta.reasoning_content``. Their
  ``.done`` events, ``content_part`` and ``reasoning_summary_part`` events repeat the
  text and add nothing.
- ``response.output_item.added`` of a ``function_call`` item: a tool call whose ``index``
  is the order of the function-call items (0, 1, ...), ``id`` its ``call_id`` (what a
  ``function_call_output`` must name; not the item id), ``type`` ``"function"`` and the
  item's ``name``, and its ``arguments`` if the item already has them.
  ``response.function_call_arguments.delta`` (by ``item_id``, else ``output_index``):
  argument fragments. The full arguments of ``response.function_call_arguments.done`` or
  ``response.output_item.done`` add only what the fragments lacked (usually nothing), so
  arguments are never doubled; full arguments that do not extend the fragments are a
  ProtocolError.
- ``response.completed``: finish reason ``"tool_calls"`` if a function call came, else
  ``"stop"``, then a usage chunk (``prompt_tokens`` = ``input_tokens``,
  ``completion_tokens`` = ``output_tokens``, ``input_tokens_details.cached_tokens``,
  ``output_tokens_details.reasoning_tokens``). It is the end marker.
- ``response.incomplete``: the answer stopped by a limit, an end marker like ``completed``:
  finish reason ``"length"`` for ``max_output_tokens``, ``"content_filter"`` for
  ``content_filter``, any other reason verbatim (``"incomplete"`` when none is given),
  then usage if present.
- ``response.failed`` (``response.error``) and ``error`` events (``code``, ``message``,
  or an ``error`` object): :class:`~qwen_sse.errors.InBandError`, its request id the
  response id when known.
- Out of order: a delta or item event naming an item no ``response.output_item.added``
  announced, or one already done, an item added twice, argument fragments for an item
  that is not a function call: ProtocolError naming the event. Unknown event types (web
  search, MCP, in-progress notices...) are consumed and add nothing, even when their
  fields have shapes this module does not know.

Resume: none (see :attr:`ResponsesProtocol.resume`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from qwen_sse.chunks import (
    ChatCompletionChunk,
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
    DeltaChoice,
    InputOutputUsage,
    chunk_protocol_error,
)
from qwen_sse.errors import InBandError, ProtocolError, QwenSSEError
from qwen_sse.protocols.base import (
    MAX_ANSWER_PARTS,
    Frame,
    ProtocolDefaults,
    RequestFacts,
    frame_failure,
    sampling_value,
    text_of,
)

if TYPE_CHECKING:
    pass

__all__ = ["RESPONSES", "ResponsesProtocol", "ResponsesReader"]

_CREATED = "response.created"
_ITEM_ADDED = "response.output_item.added"
_ITEM_DONE = "response.output_item.done"
_TEXT_DELTA = "response.output_text.delta"
_REASONING_DELTAS = frozenset(
    {"response.reasoning_text.delta", "response.reasoning_summary_text.delta"}
)
_ARGUMENTS_DELTA = "response.function_call_arguments.delta"
_ARGUMENTS_DONE = "response.function_call_arguments.done"
_COMPLETED = "response.completed"
_INCOMPLETE = "response.incomplete"
_FAILED = "response.failed"
_ERROR = "error"
# Events about one item's parts that add nothing to the answer: only their order is checked.
_ITEM_EVENTS = frozenset(
    {
        "response.content_part.added",
        "response.content_part.done",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_part.done",
    }
)
# The full text of one part, which the deltas before it carried (checked in _text_done).
_TEXT_DONE = "response.output_text.done"
_REASONING_DONES = frozenset(
    {"response.reasoning_text.done", "response.reasoning_summary_text.done"}
)
_KNOWN = frozenset(
    {
        _CREATED,
        _ITEM_ADDED,
        _ITEM_DONE,
        _TEXT_DELTA,
        _ARGUMENTS_DELTA,
        _ARGUMENTS_DONE,
        _COMPLETED,
        _INCOMPLETE,
        _FAILED,
        _ERROR,
        _TEXT_DONE,
        *_REASONING_DELTAS,
        *_REASONING_DONES,
        *_ITEM_EVENTS,
    }
)
_INCOMPLETE_FINISH = {"max_output_tokens": "length", "content_filter": "content_filter"}


class _Item(msgspec.Struct, frozen=True, gc=False):
    type: str = ""
    id: str = ""
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None


class _Error(msgspec.Struct, frozen=True, gc=False):
    code: str | int | None = None
    message: str | None = None
    type: str | None = None


class _IncompleteDetails(msgspec.Struct, frozen=True, gc=False):
    reason: str | None = None


class _Response(msgspec.Struct, frozen=True, gc=False):
    # ``output`` is left out on purpose: the items already arrived as events, and not
    # building them keeps the final event cheap.
    id: str = ""
    model: str = ""
    created_at: int | float | None = None
    usage: InputOutputUsage | None = None
    error: _Error | None = None
    incomplete_details: _IncompleteDetails | None = None


class _Event(msgspec.Struct, frozen=True, gc=False):
    """Every field any handled event carries, so that each frame is decoded once."""

    type: str = ""
    delta: str | None = None
    text: str | None = None
    item_id: str | None = None
    output_index: int | None = None
    content_index: int | None = None
    summary_index: int | None = None
    item: _Item | None = None
    arguments: str | None = None
    response: _Response | None = None
    code: str | int | None = None
    message: str | None = None
    error: _Error | str | None = None


class _Type(msgspec.Struct, frozen=True, gc=False):
    type: str = ""


_event_decoder = msgspec.json.Decoder(_Event)
_type_decoder = msgspec.json.Decoder(_Type)


class _ItemState:
    """One output item: its type, whether it is done, for a function call its tool-call
    index and the argument fragments emitted so far, and the text emitted for each of its
    text parts (keyed by reasoning or not, and ``summary_index`` or ``content_index``)."""

    __slots__ = ("call", "done", "emitted", "id", "texts", "type")

    def __init__(self, item_id: str, item_type: str, call: int) -> None:
        self.id = item_id
        self.type = item_type
        self.call = call
        self.done = False
        self.emitted: list[str] = []
        self.texts: dict[tuple[bool, int], list[str]] = {}


class ResponsesReader:
    """Reads Responses events until ``response.completed`` or ``response.incomplete``
    (see :class:`~qwen_sse.protocols.base.FrameReader` and the module docstring)."""

    __slots__ = (
        "_by_index",
        "_calls",
        "_created_s",
        "_id",
        "_items",
        "_model",
        "_started",
        "ended",
    )

    def __init__(self) -> None:
        self.ended = False
        self._started = False
        self._id = ""
        self._model = ""
        self._created_s = 0
        self._calls = 0
        self._items: dict[str, _ItemState] = {}
        self._by_index: dict[int, _ItemState] = {}

    def read(
        self, frames: Sequence[Frame], out: list[ChatCompletionChunk]
    ) -> tuple[int, QwenSSEError | None]:
        consumed = 0
        for event_type, data in frames:
            consumed += 1
            try:
                event = _event_decoder.decode(data)
            except msgspec.ValidationError as invalid:
                if _unknown_type(data, event_type):  # an event this module does not read
                    continue
                return consumed, ProtocolError(
                    f"event has a field of the wrong type: {invalid}", frame=data
                )
            except msgspec.DecodeError as decode_error:
                return consumed, chunk_protocol_error(decode_error, data, what="event")
            except Exception as failure:  # e.g. RecursionError from deeply nested JSON
                return consumed, frame_failure(failure, data)
            try:
                error = self._event(event.type or event_type, event, out)
            except ProtocolError as out_of_order:
                return consumed, ProtocolError(out_of_order.message, frame=data)
            if error is not None:
                return consumed, error
            if self.ended:
                break
        return consumed, None

    def _event(
        self, kind: str, event: _Event, out: list[ChatCompletionChunk]
    ) -> InBandError | None:
        """Append what ``event`` adds to the answer; return its error, if it is one."""
        if kind == _TEXT_DELTA:
            self._text(kind, event, event.delta, out, reasoning=False)
        elif kind in _REASONING_DELTAS:
            self._text(kind, event, event.delta, out, reasoning=True)
        elif kind == _TEXT_DONE:
            self._text_done(kind, event, out, reasoning=False)
        elif kind in _REASONING_DONES:
            self._text_done(kind, event, out, reasoning=True)
        elif kind == _ARGUMENTS_DELTA:
            call = self._call_of(kind, event)
            if event.delta:
                call.emitted.append(event.delta)
                out.append(self._call_chunk(call, arguments=event.delta))
        elif kind == _ITEM_ADDED:
            self._add_item(event, out)
        elif kind == _ARGUMENTS_DONE:
            self._complete_arguments(kind, self._call_of(kind, event), event.arguments, out)
        elif kind == _ITEM_DONE:
            self._item_done(event, out)
        elif kind in _ITEM_EVENTS:
            self._find(kind, event.item_id, event.output_index)
        elif kind == _CREATED:
            self._create(event.response, out)
        elif kind == _COMPLETED:
            self._end(kind, "tool_calls" if self._calls else "stop", event.response, out)
        elif kind == _INCOMPLETE:
            response = event.response
            details = response.incomplete_details if response is not None else None
            reason = details.reason if details is not None else None
            finish = _INCOMPLETE_FINISH.get(reason or "", reason or "incomplete")
            self._end(kind, finish, response, out)
        elif kind == _FAILED:
            response = event.response
            failure = response.error if response is not None else None
            request_id = (response.id if response is not None else "") or self._id
            if failure is None:
                return InBandError(
                    code="", message="response.failed without an error", request_id=request_id
                )
            return _in_band_error(failure, request_id)
        elif kind == _ERROR:
            if isinstance(event.error, _Error):
                return _in_band_error(event.error, self._id)
            if isinstance(event.error, str):
                return _in_band_error(_Error(code=event.code, message=event.error), self._id)
            return _in_band_error(_Error(code=event.code, message=event.message), self._id)
        return None

    def _create(self, response: _Response | None, out: list[ChatCompletionChunk]) -> None:
        if self._started:
            raise ProtocolError(f"{_CREATED} came twice")
        self._started = True
        if response is not None:
            self._id = response.id
            self._model = response.model
            self._created_s = int(response.created_at or 0)
        out.append(self._chunk(ChoiceDelta(role="assistant")))

    def _end(
        self,
        kind: str,
        finish_reason: str,
        response: _Response | None,
        out: list[ChatCompletionChunk],
    ) -> None:
        self._require_start(kind)
        out.append(self._chunk(ChoiceDelta(), finish_reason))
        usage = response.usage if response is not None else None
        if usage is not None:
            out.append(
                ChatCompletionChunk(
                    id=self._id,
                    created=self._created_s,
                    model=self._model,
                    usage=usage.usage(),
                )
            )
        self.ended = True

    def _add_item(self, event: _Event, out: list[ChatCompletionChunk]) -> None:
        self._require_start(_ITEM_ADDED)
        item = event.item
        if item is None:
            raise ProtocolError(f"{_ITEM_ADDED} has no item")
        # An item without an id can still be named by its output_index.
        key = item.id or f"#{event.output_index}"
        if key in self._items:
            raise ProtocolError(f"{_ITEM_ADDED} announces item {key!r} a second time")
        if len(self._items) >= MAX_ANSWER_PARTS:
            raise ProtocolError(f"more than {MAX_ANSWER_PARTS} output items in one answer")
        is_call = item.type == "function_call"
        state = _ItemState(key, item.type, self._calls if is_call else -1)
        self._items[key] = state
        if event.output_index is not None:
            self._by_index[event.output_index] = state
        if not is_call:
            return
        self._calls += 1
        if item.arguments:
            state.emitted.append(item.arguments)
        call = ChoiceDeltaToolCall(
            index=state.call,
            id=item.call_id,
            type="function",
            function=ChoiceDeltaToolCallFunction(name=item.name, arguments=item.arguments or None),
        )
        out.append(self._chunk(ChoiceDelta(tool_calls=[call])))

    def _item_done(self, event: _Event, out: list[ChatCompletionChunk]) -> None:
        item = event.item
        if item is None:
            raise ProtocolError(f"{_ITEM_DONE} has no item")
        state = self._find(_ITEM_DONE, item.id or None, event.output_index)
        if state is None:
            raise ProtocolError(f"{_ITEM_DONE} names no item")
        if state.call >= 0:
            self._complete_arguments(_ITEM_DONE, state, item.arguments, out)
        state.done = True

    def _text(
        self,
        kind: str,
        event: _Event,
        text: str | None,
        out: list[ChatCompletionChunk],
        *,
        reasoning: bool,
    ) -> None:
        """Emit ``text``, a piece of one text part of the item ``event`` names."""
        state = self._find(kind, event.item_id, event.output_index)
        if not text:
            return
        if state is not None:
            part = event.summary_index if reasoning else event.content_index
            state.texts.setdefault((reasoning, part or 0), []).append(text)
        delta = ChoiceDelta(reasoning_content=text) if reasoning else ChoiceDelta(content=text)
        out.append(self._chunk(delta))

    def _text_done(
        self, kind: str, event: _Event, out: list[ChatCompletionChunk], *, reasoning: bool
    ) -> None:
        """A part's full text: emit what it adds to the deltas (usually nothing); a text
        that does not extend them is a ProtocolError, never a silent loss."""
        state = self._find(kind, event.item_id, event.output_index)
        final = event.text
        if state is None or final is None:
            return
        part = (reasoning, (event.summary_index if reasoning else event.content_index) or 0)
        streamed = "".join(state.texts.get(part, ()))
        if not final.startswith(streamed):
            raise ProtocolError(
                f"{kind} gives item {state.id!r} a text that does not extend the "
                f"{len(streamed)} characters its deltas carried"
            )
        if len(final) > len(streamed):
            self._text(kind, event, final[len(streamed) :], out, reasoning=reasoning)

    def _complete_arguments(
        self, kind: str, call: _ItemState, final: str | None, out: list[ChatCompletionChunk]
    ) -> None:
        """Emit what the full arguments ``final`` add to the fragments already emitted."""
        if final is None:
            return
        streamed = "".join(call.emitted)
        if not final.startswith(streamed):
            raise ProtocolError(
                f"{kind} gives item {call.id!r} arguments that do not extend the "
                f"{len(streamed)} characters its fragments carried"
            )
        call.emitted = [final]
        if len(final) > len(streamed):
            out.append(self._call_chunk(call, arguments=final[len(streamed) :]))

    def _call_of(self, kind: str, event: _Event) -> _ItemState:
        state = self._find(kind, event.item_id, event.output_index)
        if state is None:
            raise ProtocolError(f"{kind} names no item")
        if state.call < 0:
            raise ProtocolError(f"{kind} for item {state.id!r}, a {state.type!r} item")
        return state

    def _find(self, kind: str, item_id: str | None, output_index: int | None) -> _ItemState | None:
        """The open item ``kind`` names by ``item_id``, else ``output_index`` (None when it
        names none); an unknown or finished one is a ProtocolError."""
        self._require_start(kind)
        if item_id is not None:
            state = self._items.get(item_id)
            name = repr(item_id)
        elif output_index is not None:
            state = self._by_index.get(output_index)
            name = f"at output_index {output_index}"
        else:
            return None
        if state is None:
            raise ProtocolError(f"{kind} for item {name}, which no {_ITEM_ADDED} announced")
        if state.done:
            raise ProtocolError(f"{kind} for item {name} after its {_ITEM_DONE}")
        return state

    def _require_start(self, kind: str) -> None:
        if not self._started:
            raise ProtocolError(f"{kind} before {_CREATED}")

    def _chunk(self, delta: ChoiceDelta, finish_reason: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self._id,
            created=self._created_s,
            model=self._model,
            choices=[DeltaChoice(0, delta, finish_reason)],
        )

    def _call_chunk(self, call: _ItemState, *, arguments: str) -> ChatCompletionChunk:
        function = ChoiceDeltaToolCallFunction(arguments=arguments)
        return self._chunk(
            ChoiceDelta(tool_calls=[ChoiceDeltaToolCall(index=call.call, function=function)])
        )


def _is_text_parts(content: Any) -> bool:
    """True for a message content given as text parts (``[{"type": "text", "text"}]``)."""
    return isinstance(content, list) and all(
        isinstance(part, Mapping) and isinstance(part.get("text"), str) for part in content
    )


def _unknown_type(data: bytes, event_type: str) -> bool:
    """True for a frame whose ``type`` (else its ``event:`` name) names no event this module
    reads."""
    try:
        return (_type_decoder.decode(data).type or event_type) not in _KNOWN
    except (msgspec.DecodeError, RecursionError):
        return False


def _in_band_error(error: _Error, request_id: str) -> InBandError:
    return InBandError(
        code="" if error.code is None else str(error.code),
        message=error.message or "",
        type=error.type or "",
        request_id=request_id,
    )


def _input_items(messages: Sequence[Any]) -> list[Any]:
    """Chat ``messages`` as Responses input items (see the module docstring)."""
    items: list[Any] = []
    for message in messages:
        if not isinstance(message, Mapping) or "type" in message:
            items.append(message)
            continue
        role = message.get("role")
        if role == "tool":
            output = message.get("content")
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message.get("tool_call_id", ""),
                    "output": output
                    if isinstance(output, str)
                    else text_of(output)
                    if _is_text_parts(output)
                    else msgspec.json.encode(output).decode(),
                }
            )
            continue
        calls = message.get("tool_calls") if role == "assistant" else None
        content = message.get("content")
        if not calls or content:
            items.append({"role": role, "content": "" if content is None else content})
        for call in calls or ():
            function = call.get("function") or {}
            items.append(
                {
                    "type": "function_call",
                    "call_id": call.get("id", ""),
                    "name": function.get("name", ""),
                    "arguments": function.get("arguments", ""),
                }
            )
    return items


def _chat_messages(body: Mapping[str, Any]) -> list[Any]:
    """The chat messages a Responses body stands for, for the prompt's token count: a
    string ``input`` is one user message, ``instructions`` a leading system message,
    ``function_call`` items assistant tool calls (joined to the assistant message before
    them) and ``function_call_output`` items tool messages; other typed items (reasoning,
    built-in tool calls) are left out."""
    messages: list[Any] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    input_ = body.get("input")
    if isinstance(input_, str):
        messages.append({"role": "user", "content": input_})
        return messages
    if not isinstance(input_, list):
        return messages
    for item in input_:
        if not isinstance(item, Mapping):
            messages.append(item)  # the token counter names what is wrong with it
            continue
        kind = item.get("type")
        if "role" in item and kind in (None, "message"):
            messages.append(item)
        elif kind == "function_call":
            call = {
                "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")}
            }
            last = messages[-1] if messages else None
            if isinstance(last, Mapping) and last.get("role") == "assistant":
                messages[-1] = {**last, "tool_calls": [*(last.get("tool_calls") or ()), call]}
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "content": output if isinstance(output, str) else ""})
    return messages


class ResponsesProtocol(ProtocolDefaults):
    """OpenAI Responses (``responses``); see the module docstring. The usual byte bound
    fits: the ``.done`` events and ``response.completed`` repeat the answer a few times,
    but once per item, not per token (a few bytes a token against a delta frame's ~200)."""

    name = "responses"
    root = "/compatible-mode/v1"
    path = "/responses"
    end_marker = "response.completed (or response.incomplete)"
    built_fields = frozenset({"model", "input", "stream"})
    resume = (
        "none: the Responses API has no prefix continuation (no partial mode), so a broken "
        "answer cannot be continued where it stopped"
    )

    def request_body(
        self,
        model: str,
        messages: Sequence[Any],
        params: Mapping[str, Any],
        *,
        include_usage: bool,
    ) -> dict[str, Any]:
        # Usage always comes with response.completed: include_usage changes nothing.
        body: dict[str, Any] = {"model": model, "input": _input_items(messages), "stream": True}
        body.update(params)
        if "max_tokens" in body:
            max_tokens = body.pop("max_tokens")
            body.setdefault("max_output_tokens", max_tokens)
        tools = body.get("tools")
        if isinstance(tools, list):
            body["tools"] = [_function_tool(tool) for tool in tools]
        choice = body.get("tool_choice")
        if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
            body["tool_choice"] = {"type": "function", "name": choice["function"].get("name")}
        return body

    def facts(self, body: Mapping[str, Any]) -> RequestFacts:
        max_tokens = body.get("max_output_tokens")
        return RequestFacts(
            model=str(body.get("model", "")),
            messages=_chat_messages(body),
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            choices=1,
            temperature=sampling_value(body.get("temperature")),
            top_p=sampling_value(body.get("top_p")),
        )

    def reader(self, body: Mapping[str, Any]) -> ResponsesReader:
        return ResponsesReader()


def _function_tool(tool: Any) -> Any:
    """A Chat Completions tool (``{"type": "function", "function": {"name", "description",
    "parameters"}}``) as the Responses API takes it (the function's fields one level up);
    any other tool as it is."""
    if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping):
        return {"type": "function", **tool["function"]}
    return tool


RESPONSES = ResponsesProtocol()

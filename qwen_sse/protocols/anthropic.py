"""The Anthropic Messages protocol as DashScope serves it (``protocol="anthropic"``).

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging.

Request: ``POST {base}/v1/messages`` (DashScope's root is ``/apps/anthropic``) with the key
in ``x-api-key`` and ``anthropic-version: 2023-06-01``. The body is ``{"model",
"max_tokens", "messages", "stream": true}``: ``max_tokens`` is :data:`DEFAULT_MAX_TOKENS`
unless given (the API rejects a request without it); the chat's system messages leave
``messages`` (Anthropic has no system role there) and are joined into a top-level
``"system"`` string; the caller's parameters go at the top level (``thinking``, ``tools``,
``tool_choice``, or a ``system`` list of blocks with ``cache_control``, which replaces the
joined string). The Chat Completions spellings of the common options are translated, so
one call works with every protocol: ``enable_thinking`` (with ``thinking_budget``, else
:data:`DEFAULT_THINKING_BUDGET_TOKENS`) becomes ``thinking``, ``stop`` becomes
``stop_sequences``, function ``tools`` become ``{"name", "description",
"input_schema"}``, ``tool_choice`` ``"auto"``, ``"none"``, ``"required"`` or a named
function becomes ``{"type": "auto" | "none" | "any" | "tool"}``; an assistant message's
``tool_calls`` become ``tool_use`` blocks and ``tool`` messages ``tool_result`` blocks of
a user turn. Usage is always streamed, so ``include_usage`` changes nothing.

Stream (protocol.md; Anthropic's "Streaming Messages" page): ``event: <type>`` and
``data: {...}`` whose ``type`` repeats the event name. ``message_start``; per content
block ``content_block_start``, ``content_block_delta``..., ``content_block_stop``;
``message_delta`` (``stop_reason``, cumulative usage); ``message_stop``, the end marker;
``ping`` anywhere; ``error`` in band. Events and deltas of types not named here are skipped
(Anthropic's versioning policy adds new ones), as are the blocks the chunk model has no
place for: ``redacted_thinking`` and server-tool blocks (``server_tool_use``,
``web_search_tool_result``...).

Mapping onto the shared chunk model, one choice (index 0), every chunk with the message's
``id`` and ``model``:

- ``message_start``: a chunk with ``role: "assistant"``.
- ``text_delta`` -> ``delta.content``; ``thinking_delta`` -> ``delta.reasoning_content``;
  ``signature_delta`` -> ``delta.reasoning_signature``.
- Each ``tool_use`` block is a tool call of ``type: "function"`` whose ``index`` counts the
  ``tool_use`` blocks (0, 1, ...): ``id`` and ``name`` come with its start, each
  ``input_json_delta.partial_json`` is an ``arguments`` fragment, and a block stopped
  without any JSON text gets its start ``input`` as arguments, exactly as the server wrote
  it (``"{}"`` when it had none: called without input).
- ``message_delta``: a chunk whose ``finish_reason`` is the ``stop_reason`` the OpenAI way
  (``end_turn`` and ``stop_sequence``: ``stop``; ``max_tokens``: ``length``; ``tool_use``:
  ``tool_calls``; ``refusal``: ``content_filter``; any other verbatim, e.g.
  ``pause_turn``), then a usage chunk (``choices == []``). ``prompt_tokens`` is
  ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``: Anthropic counts
  the tokens read from and written to the cache apart from ``input_tokens``, the shared
  model (like OpenAI's) counts them in; ``prompt_tokens_details.cached_tokens`` is
  ``cache_read_input_tokens``, ``cache_creation_input_tokens`` stays as it is;
  ``completion_tokens`` is the cumulative ``output_tokens``. Each field ``message_delta``
  gives replaces ``message_start``'s; when neither event has usage there is no usage chunk.
- ``error`` (``{"type": "error", "error": {"type", "message"}}``): an
  :class:`~qwen_sse.errors.InBandError` whose code and type are the error's ``type``.

Grammar violations are a :class:`~qwen_sse.errors.ProtocolError` naming the event: a block
event, ``message_delta`` or ``message_stop`` before ``message_start``; a second
``message_start``; a block started twice; a delta or stop for a block never started or
already stopped; a block event without ``index``; ``message_stop`` while a block was never
stopped. Resume: none (see :attr:`AnthropicProtocol.resume`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from qwen_sse.chunks import (
    CacheCreation,
    ChatCompletionChunk,
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
    DeltaChoice,
    PromptTokensDetails,
    Usage,
    chunk_protocol_error,
)
from qwen_sse.errors import InBandError, ProtocolError, QwenSSEError
from qwen_sse.protocols.base import (
    MAX_ANSWER_PARTS,
    Frame,
    ProtocolDefaults,
    RequestFacts,
    bearer_key,
    frame_failure,
    sampling_value,
    text_of,
)

if TYPE_CHECKING:
    pass

__all__ = [
    "ANTHROPIC",
    "ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_THINKING_BUDGET_TOKENS",
    "FINISH_REASONS",
    "AnthropicProtocol",
    "AnthropicReader",
]

ANTHROPIC_VERSION = "2023-06-01"
"""The ``anthropic-version`` header every request carries (the one DashScope documents)."""

DEFAULT_MAX_TOKENS = 4096
"""``max_tokens`` of a request whose parameters give none: the Messages API requires it."""

DEFAULT_THINKING_BUDGET_TOKENS = 1024
"""The thinking budget sent for ``enable_thinking=True`` without ``thinking_budget``: the
smallest Anthropic accepts (it must also stay below ``max_tokens``)."""

FINISH_REASONS: Mapping[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""``stop_reason`` -> the shared model's ``finish_reason``; any other reason is kept."""


class _Usage(msgspec.Struct, frozen=True, gc=False):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_creation: CacheCreation | None = None


class _Message(msgspec.Struct, frozen=True, gc=False):
    id: str = ""
    model: str = ""
    usage: _Usage | None = None


class _Block(msgspec.Struct, frozen=True, gc=False):
    type: str = ""
    id: str = ""
    name: str = ""
    text: str = ""
    thinking: str = ""
    input: msgspec.Raw = msgspec.Raw()  # kept as sent: re-encoding could recurse or grow


class _Delta(msgspec.Struct, frozen=True, gc=False):
    type: str = ""
    text: str = ""
    thinking: str = ""
    signature: str = ""
    partial_json: str = ""
    stop_reason: str | None = None


class _Error(msgspec.Struct, frozen=True, gc=False):
    type: str = ""
    message: str = ""


class _Event(msgspec.Struct, frozen=True, gc=False):
    """Every event's fields in one shape, so that each frame takes one typed decode."""

    type: str = ""
    message: _Message | None = None
    index: int | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _Error | str | None = None


_event_decoder = msgspec.json.Decoder(_Event)
_NO_USAGE = _Usage()
_NOT_A_TOOL_CALL = -1


class _BlockState:
    """One content block: its type, its tool-call index (or -1), whether it is still open,
    and, for a tool call, its start ``input`` as sent (until JSON text streams) and whether
    any JSON text streamed."""

    __slots__ = ("input", "json_streamed", "open", "tool_index", "type")

    def __init__(self, block: _Block, tool_index: int) -> None:
        self.type = block.type
        self.tool_index = tool_index
        # Only a tool call's input can become its arguments; a copy, so that the frame it
        # came in is not kept alive with it.
        given = bytes(block.input) if tool_index != _NOT_A_TOOL_CALL else b""
        self.input: bytes | None = given if given not in (b"", b"null") else None
        self.open = True
        self.json_streamed = False


class AnthropicReader:
    """Reads Messages events until ``message_stop`` (see
    :class:`~qwen_sse.protocols.base.FrameReader` and the module docstring)."""

    __slots__ = ("_blocks", "_id", "_model", "_start_usage", "_started", "_tool_calls", "ended")

    def __init__(self) -> None:
        self.ended = False
        self._started = False
        self._id = ""
        self._model = ""
        self._start_usage: _Usage | None = None
        self._blocks: dict[int, _BlockState] = {}
        self._tool_calls = 0

    def read(
        self, frames: Sequence[Frame], out: list[ChatCompletionChunk]
    ) -> tuple[int, QwenSSEError | None]:
        consumed = 0
        for event_type, data in frames:
            consumed += 1
            try:
                event = _event_decoder.decode(data)
            except msgspec.DecodeError as decode_error:
                return consumed, chunk_protocol_error(decode_error, data, what="event")
            except Exception as failure:  # e.g. RecursionError from deeply nested JSON
                return consumed, frame_failure(failure, data)
            kind = "error" if event_type == "error" else event.type or event_type
            try:
                if kind == "content_block_delta":
                    self._content_delta(event, out)
                elif kind == "content_block_start":
                    self._content_start(event, out)
                elif kind == "content_block_stop":
                    self._content_stop(event, out)
                elif kind == "message_start":
                    self._message_start(event, out)
                elif kind == "message_delta":
                    self._message_delta(event, out)
                elif kind == "message_stop":
                    self._message_stop()
                    self.ended = True
                    break
                elif kind == "error":
                    return consumed, _in_band_error(event.error)
            except _Violation as violation:
                return consumed, ProtocolError(str(violation), frame=data)
        return consumed, None

    def _chunk(
        self, delta: ChoiceDelta | None = None, finish_reason: str | None = None
    ) -> ChatCompletionChunk:
        choice = DeltaChoice(0, ChoiceDelta() if delta is None else delta, finish_reason)
        return ChatCompletionChunk(id=self._id, model=self._model, choices=[choice])

    def _message_start(self, event: _Event, out: list[ChatCompletionChunk]) -> None:
        if self._started:
            raise _Violation("a second message_start")
        self._started = True
        message = event.message or _Message()
        self._id = message.id
        self._model = message.model
        self._start_usage = message.usage
        out.append(self._chunk(ChoiceDelta(role="assistant")))

    def _content_start(self, event: _Event, out: list[ChatCompletionChunk]) -> None:
        index = self._index("content_block_start", event)
        block = event.content_block
        if block is None:
            raise _Violation(f"content_block_start of content block {index} has no content_block")
        if index in self._blocks:
            raise _Violation(f"content block {index} started twice")
        if len(self._blocks) >= MAX_ANSWER_PARTS:
            raise _Violation(f"more than {MAX_ANSWER_PARTS} content blocks in one answer")
        tool_index = _NOT_A_TOOL_CALL
        if block.type == "tool_use":
            tool_index = self._tool_calls
            self._tool_calls += 1
            call = ChoiceDeltaToolCall(
                index=tool_index,
                id=block.id,
                type="function",
                function=ChoiceDeltaToolCallFunction(name=block.name),
            )
            out.append(self._chunk(ChoiceDelta(tool_calls=[call])))
        elif block.type == "text" and block.text:
            out.append(self._chunk(ChoiceDelta(content=block.text)))
        elif block.type == "thinking" and block.thinking:
            out.append(self._chunk(ChoiceDelta(reasoning_content=block.thinking)))
        self._blocks[index] = _BlockState(block, tool_index)

    def _content_delta(self, event: _Event, out: list[ChatCompletionChunk]) -> None:
        state = self._open_block("content_block_delta", event)
        delta = event.delta
        if delta is None:
            return
        kind = delta.type
        if kind == "text_delta":
            if delta.text:
                out.append(self._chunk(ChoiceDelta(content=delta.text)))
        elif kind == "input_json_delta":
            if delta.partial_json and state.tool_index != _NOT_A_TOOL_CALL:
                state.json_streamed = True
                state.input = None
                out.append(self._arguments(state.tool_index, delta.partial_json))
        elif kind == "thinking_delta":
            if delta.thinking:
                out.append(self._chunk(ChoiceDelta(reasoning_content=delta.thinking)))
        elif kind == "signature_delta" and delta.signature:
            out.append(self._chunk(ChoiceDelta(reasoning_signature=delta.signature)))

    def _content_stop(self, event: _Event, out: list[ChatCompletionChunk]) -> None:
        state = self._open_block("content_block_stop", event)
        state.open = False
        if state.tool_index != _NOT_A_TOOL_CALL and not state.json_streamed:
            given = state.input
            state.input = None
            arguments = "{}" if given is None else given.decode()
            out.append(self._arguments(state.tool_index, arguments))

    def _arguments(self, tool_index: int, fragment: str) -> ChatCompletionChunk:
        function = ChoiceDeltaToolCallFunction(arguments=fragment)
        return self._chunk(
            ChoiceDelta(tool_calls=[ChoiceDeltaToolCall(index=tool_index, function=function)])
        )

    def _message_delta(self, event: _Event, out: list[ChatCompletionChunk]) -> None:
        if not self._started:
            raise _Violation("message_delta before message_start")
        reason = event.delta.stop_reason if event.delta is not None else None
        if reason:
            out.append(self._chunk(finish_reason=FINISH_REASONS.get(reason, reason)))
        usage = _usage(self._start_usage, event.usage)
        if usage is not None:
            out.append(ChatCompletionChunk(id=self._id, model=self._model, usage=usage))

    def _message_stop(self) -> None:
        if not self._started:
            raise _Violation("message_stop before message_start")
        for index, state in self._blocks.items():
            if state.open:
                raise _Violation(f"message_stop, but content block {index} was never stopped")

    def _index(self, kind: str, event: _Event) -> int:
        if not self._started:
            raise _Violation(f"{kind} before message_start")
        if event.index is None:
            raise _Violation(f"{kind} without an index")
        return event.index

    def _open_block(self, kind: str, event: _Event) -> _BlockState:
        index = self._index(kind, event)
        state = self._blocks.get(index)
        if state is None:
            raise _Violation(f"{kind} for content block {index}, which was never started")
        if not state.open:
            raise _Violation(f"{kind} for content block {index} after its content_block_stop")
        return state


class _Violation(Exception):
    """A grammar violation, raised inside the reader and returned as a ProtocolError."""


def _usage(start: _Usage | None, delta: _Usage | None) -> Usage | None:
    """The shared model's usage from ``message_start``'s and ``message_delta``'s (see the
    module docstring), or None when neither has any."""
    if start is None and delta is None:
        return None
    first, last = start or _NO_USAGE, delta or _NO_USAGE
    input_tokens = _latest(last.input_tokens, first.input_tokens) or 0
    output_tokens = _latest(last.output_tokens, first.output_tokens) or 0
    cache_read = _latest(last.cache_read_input_tokens, first.cache_read_input_tokens)
    cache_creation = _latest(last.cache_creation_input_tokens, first.cache_creation_input_tokens)
    details = None
    if cache_read is not None or cache_creation is not None:
        details = PromptTokensDetails(
            cached_tokens=cache_read,
            cache_creation_input_tokens=cache_creation,
            cache_creation=last.cache_creation or first.cache_creation,
        )
    prompt_tokens = input_tokens + (cache_read or 0) + (cache_creation or 0)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=output_tokens,
        total_tokens=prompt_tokens + output_tokens,
        prompt_tokens_details=details,
    )


def _latest(later: int | None, earlier: int | None) -> int | None:
    return earlier if later is None else later


def _in_band_error(error: _Error | str | None) -> InBandError:
    if isinstance(error, str):
        return InBandError(code="", message=error)
    body = error or _Error()
    return InBandError(code=body.type, message=body.message, type=body.type)


class AnthropicProtocol(ProtocolDefaults):
    """Anthropic Messages (``anthropic``); see the module docstring."""

    name = "anthropic"
    root = "/apps/anthropic"
    path = "/v1/messages"
    end_marker = "message_stop"
    built_fields = frozenset({"model", "messages", "stream", "system"})
    resume = (
        "none: Anthropic's prefill (a last assistant message) could continue the text, but "
        "it rejects a prefill that ends in whitespace, cannot prefill thinking, and DashScope "
        "does not document prefill for this endpoint"
    )

    def api_key_of(self, headers: Mapping[str, str]) -> str:
        # The official SDK sends a key given as auth_token as a bearer token instead.
        for header, value in headers.items():
            if header.lower() == "x-api-key":
                return value.strip()
        return bearer_key(headers)

    def headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}

    def request_body(
        self,
        model: str,
        messages: Sequence[Any],
        params: Mapping[str, Any],
        *,
        include_usage: bool,
    ) -> dict[str, Any]:
        system: list[str] = []
        chat: list[Any] = []
        for message in messages:
            if isinstance(message, Mapping) and message.get("role") == "system":
                system.append(text_of(message.get("content")))
            else:
                chat.append(message)
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": DEFAULT_MAX_TOKENS,
            "messages": _anthropic_messages(chat),
            "stream": True,
        }
        if system:
            body["system"] = "\n\n".join(system)
        options = dict(params)
        thinking = options.pop("enable_thinking", None)
        budget = options.pop("thinking_budget", None)
        if isinstance(thinking, bool) and "thinking" not in options:
            options["thinking"] = (
                {"type": "enabled", "budget_tokens": budget or DEFAULT_THINKING_BUDGET_TOKENS}
                if thinking
                else {"type": "disabled"}
            )
        stop = options.pop("stop", None)
        if stop is not None and "stop_sequences" not in options:
            options["stop_sequences"] = [stop] if isinstance(stop, str) else stop
        tools = options.get("tools")
        if isinstance(tools, list):
            options["tools"] = [_anthropic_tool(tool) for tool in tools]
        if "tool_choice" in options:
            options["tool_choice"] = _anthropic_tool_choice(options["tool_choice"])
        body.update(options)
        return body

    def facts(self, body: Mapping[str, Any]) -> RequestFacts:
        messages = body.get("messages")
        chat = messages if isinstance(messages, list) else []
        system = body.get("system")
        if system:  # counted as the prompt's first message, as the model reads it
            chat = [{"role": "system", "content": system}, *chat]
        max_tokens = body.get("max_tokens")
        return RequestFacts(
            model=str(body.get("model", "")),
            messages=chat,
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            choices=1,
            temperature=sampling_value(body.get("temperature")),
            top_p=sampling_value(body.get("top_p")),
        )

    def reader(self, body: Mapping[str, Any]) -> AnthropicReader:
        return AnthropicReader()


def _anthropic_messages(messages: Sequence[Any]) -> list[Any]:
    """Chat messages as Anthropic takes them: an assistant message's ``tool_calls`` become
    ``tool_use`` blocks after its text, and each run of ``tool`` messages one user turn of
    ``tool_result`` blocks; any other message goes as it is."""
    converted: list[Any] = []
    for message in messages:
        if not isinstance(message, Mapping):
            converted.append(message)
        elif message.get("role") == "assistant" and message.get("tool_calls"):
            text = text_of(message.get("content"))
            blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
            for call in message["tool_calls"]:
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id", ""),
                        "name": function.get("name", ""),
                        "input": _json_object(function.get("arguments")),
                    }
                )
            converted.append({"role": "assistant", "content": blocks})
        elif message.get("role") == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": message.get("content", ""),
            }
            last = converted[-1] if converted else None
            if isinstance(last, Mapping) and last.get("role") == "user" and _is_results(last):
                # A new message: ``last`` may be the caller's own, which must not change.
                converted[-1] = {**last, "content": [*last["content"], result]}
            else:
                converted.append({"role": "user", "content": [result]})
        else:
            converted.append(message)
    return converted


def _is_results(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and all(
        isinstance(block, Mapping) and block.get("type") == "tool_result" for block in content
    )


def _json_object(arguments: Any) -> Any:
    """A tool call's arguments string as the object ``tool_use.input`` wants ({} if empty;
    a string that is not JSON is kept as a string, for the server to refuse)."""
    if not isinstance(arguments, str):
        return arguments if arguments is not None else {}
    if not arguments.strip():
        return {}
    try:
        return msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return arguments


def _anthropic_tool(tool: Any) -> Any:
    """A Chat Completions function tool as Anthropic takes it; any other tool as it is."""
    if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping):
        function = tool["function"]
        converted = {
            "name": function.get("name", ""),
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            converted["description"] = function["description"]
        return converted
    return tool


def _anthropic_tool_choice(choice: Any) -> Any:
    """A Chat Completions ``tool_choice`` as Anthropic takes it; its own shape as it is."""
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        return {"type": "tool", "name": choice["function"].get("name", "")}
    return choice


ANTHROPIC = AnthropicProtocol()

"""A local emulator of DashScope's chat endpoints (compatible mode and native), with faults.

Edge layer: an ``aiohttp.web`` server built on the core (SSE framing, token counting, model
limits); it must not import the client, the limiter or the CLI. The tests, ``qwen-sse chat
--mock``, ``qwen-sse serve`` and the benchmarks all talk to it over real loopback sockets.

It reproduces protocol.md's compatible mode byte for byte where it matters to a client: the
role-only first chunk, ``usage: null`` and ``system_fingerprint: null`` in every chunk, the
chunk id ``chatcmpl-<x-request-id>``, ``reasoning_content`` deltas, tool-call deltas with
DashScope's quirks, the usage chunk, ``data: [DONE]``, HTTP error bodies
``{"error": {message, type, param, code}, "request_id"}`` and partial mode. Its answers are
a pure function of the request (:func:`emulated_answer`), so a test can predict every piece.

It also answers DashScope's native protocol at :data:`NATIVE_PATH`: the body
``{"model", "input": {"messages"}, "parameters": {...}}`` gets the answer of the equivalent
compatible body (``model``, ``messages`` and the parameters at the top level), under the
same checks, limits and faults. With ``X-DashScope-SSE: enable`` it streams frames like
protocol.md's: ``id:<n>``, ``event:result``, a ``:HTTP_STATUS/200`` comment, then
``data:{"output": {"choices": [{"message": {...}, "finish_reason": "null"}]}, "usage":
{"total_tokens", "output_tokens", "input_tokens"}, "request_id"}`` with no space after the
colons; one frame per piece, no role-only frame, usage cumulative in every frame (output
tokens so far), and a last frame with empty content and the real finish reason instead of
``[DONE]``. ``parameters.incremental_output`` (default false, as DashScope's) false repeats
the whole ``content`` and ``reasoning_content`` so far in each frame (tool-call arguments
stay fragments); ``result_format: "text"`` (the default, as DashScope's; it refuses
``enable_thinking`` and ``tools``) gives ``{"output": {"finish_reason", "text"}}``.
Without the header the answer is one JSON ``{"output", "usage", "request_id"}``. Errors
are native too: HTTP bodies ``{"code", "message", "request_id"}`` with DashScope's native
codes (``InvalidApiKey``, ``ModelNotFound``, ``InvalidParameter``,
``DataInspectionFailed``, ``Throttling.RateQuota``, ``Throttling.AllocationQuota``...),
and in-band ``event:error`` frames with ``:HTTP_STATUS/400``.

Faults (:class:`Fault`) come from three places; the first that has one wins:

1. the server's queue, filled by :meth:`Emulator.schedule` (every chat request takes one);
2. the request's ``X-Emulator-Fault`` header, a JSON object of :class:`Fault` fields;
3. :attr:`EmulatorConfig.fault`, the server default.

A request is checked in this order: fault header syntax (400), API key (401), the fault's
``status``, the body (400; a native body's envelope first), the model (404), moderation,
input length and ``max_tokens`` against the model's limits (400), partial mode with
thinking (400), the rate limits (429); then it is answered, streamed or not, with the
fault's stream effects.

Rate limits (:attr:`EmulatorConfig.rpm`, :attr:`EmulatorConfig.tpm`) are DashScope's: per
API key and per model, over a sliding window of ``limit_window_s`` (a minute by default,
seconds in tests). A request is admitted when the requests admitted in the last window,
plus this one, stay within ``rpm``, and their total tokens (prompt plus completion, known
in advance because answers are deterministic), plus this one's, within ``tpm``; else it is
answered 429 ``limit_requests`` (RPM, checked first) or 429 ``insufficient_quota``
"Allocated quota exceeded..." (TPM). A refused request is not counted. Both protocols
count against the same limits.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, NamedTuple, Protocol, Self

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from multidict import CIMultiDict, CIMultiDictProxy

from qwen_sse import protocols
from qwen_sse.chat import DONE_MARKER
from qwen_sse.errors import ConfigurationError
from qwen_sse.models import MODEL_LIMITS, model_limits
from qwen_sse.protocols import WireProtocol
from qwen_sse.sse import encode_comment
from qwen_sse.tokens import count_tokens, message_token_count

__all__ = [
    "CHAT_PATH",
    "DEFAULT_MODELS",
    "FAULT_HEADER",
    "MODERATION_TRIGGER",
    "NATIVE_PATH",
    "NATIVE_SSE_HEADER",
    "EmulatedAnswer",
    "Emulator",
    "EmulatorConfig",
    "Fault",
    "Outcome",
    "Piece",
    "RecordedRequest",
    "emulated_answer",
]

FAULT_HEADER = "X-Emulator-Fault"
"""Request header carrying a JSON :class:`Fault` for that request only."""

CHAT_PATH = "/compatible-mode/v1/chat/completions"
"""The compatible-mode path (``POST``); ``base_url`` is everything before ``/chat``."""

NATIVE_PATH = "/api/v1/services/aigc/text-generation/generation"
"""The native-protocol path (``POST``); ``native_base_url`` is everything before
``/services``."""

NATIVE_SSE_HEADER = "X-DashScope-SSE"
"""The request header that asks for a native stream (value ``enable``)."""

DEFAULT_MODELS = tuple(MODEL_LIMITS)
"""The models of protocol.md's table (:data:`qwen_sse.models.MODEL_LIMITS`); by default any
other model name is a 404 ``model_not_found``."""

MODERATION_TRIGGER = "[[moderate-input]]"
"""A user message containing this text is rejected with 400 ``data_inspection_failed``."""

LineEnding = Literal["\n", "\r\n", "\r"]

Outcome = Literal[
    "pending",
    "completed",
    "http_error",
    "dropped",
    "in_band_error",
    "no_done",
    "client_disconnected",
    "server_closed",
]


def _check_count(name: str, value: int | None, minimum: int = 0) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


class Fault(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to do wrong with one response. Every field is optional; unset means normal.

    Event counts ("after N events") count ``data:`` events already written, the role chunk,
    usage chunk and ``[DONE]`` included; comments are not events. A count larger than the
    stream never triggers. Stream effects apply to streaming responses only.

    * ``status`` (400-599): answer with that HTTP status and DashScope's error body, using
      ``code`` and ``message`` or the status's usual ones (429: ``limit_requests``).
    * ``retry_after`` / ``retry_after_ms``: values of the ``Retry-After`` (seconds or an
      HTTP date) and ``retry-after-ms`` headers, sent with the response.
    * ``drop_after_events`` / ``drop_after_bytes``: abort the connection after that many
      events, or after exactly that many body bytes (mid-line, mid-character, between CR
      and LF as it falls), so the client sees a broken chunked body, not a clean end.
    * ``stall_after_events`` + ``stall_s``: pause that long, sending ``: keep-alive``
      comments every ``keepalive_every_s`` if set, then continue normally.
    * ``error_after_events``: send the in-band error frame (``data_inspection_failed``, or
      ``code``/``message``), then end the body cleanly without ``[DONE]``.
    * ``no_done``: end the body cleanly without ``data: [DONE]``.
    * ``malformed_after_events``: insert one data frame of broken JSON, then continue.
    * ``line_ending``: the SSE line ending, LF, CRLF or CR.
    * ``write_bytes``: write the body in pieces of at most this many bytes, one write each.
    * ``huge_event_bytes``: insert, after the role chunk, one chunk whose ``data`` line
      value is that many bytes (its content padded with ``x``; at least the chunk's JSON).
    * ``content_type``: the 200 response's content type; a type containing ``json`` gets
      the non-streaming ``chat.completion`` body, any other the usual event stream.

    Native requests take the same faults, their codes in DashScope's native spelling
    (``limit_requests`` is ``Throttling.RateQuota``, ``data_inspection_failed``
    ``DataInspectionFailed``...; other codes as given). Their events are frames (``id``,
    ``event``, the ``:HTTP_STATUS`` comment and the data); ``error_after_events`` sends an
    ``event:error`` frame; ``no_done`` ends before the frame with the finish reason;
    ``huge_event_bytes`` pads the content of a frame after the first; a native stream
    keeps its frames under any ``content_type``, as DashScope sends error frames under
    ``application/json``.
    """

    status: int | None = None
    code: str | None = None
    message: str | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    drop_after_events: int | None = None
    drop_after_bytes: int | None = None
    stall_after_events: int | None = None
    stall_s: float = 0.0
    keepalive_every_s: float | None = None
    error_after_events: int | None = None
    no_done: bool = False
    malformed_after_events: int | None = None
    line_ending: LineEnding = "\n"
    write_bytes: int | None = None
    huge_event_bytes: int | None = None
    content_type: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {self.status}")
        for name in (
            "drop_after_events",
            "drop_after_bytes",
            "stall_after_events",
            "error_after_events",
            "malformed_after_events",
            "huge_event_bytes",
        ):
            _check_count(name, getattr(self, name))
        _check_count("write_bytes", self.write_bytes, 1)
        if self.stall_s < 0:
            raise ValueError(f"stall_s must not be negative, got {self.stall_s}")
        if self.keepalive_every_s is not None and self.keepalive_every_s <= 0:
            raise ValueError(f"keepalive_every_s must be positive, got {self.keepalive_every_s}")

    def to_json(self) -> str:
        """The JSON of the fields that are set, as the ``X-Emulator-Fault`` header wants it."""
        return json.dumps(
            {
                name: value
                for name in self.__struct_fields__
                if (value := getattr(self, name)) != getattr(_NO_FAULT, name)
            },
            separators=(",", ":"),
        )

    def header(self) -> dict[str, str]:
        """``{"X-Emulator-Fault": <json>}``, to merge into one request's headers."""
        return {FAULT_HEADER: self.to_json()}


_NO_FAULT = Fault()
_fault_decoder = msgspec.json.Decoder(Fault)


class EmulatorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Server-wide settings.

    ``api_key`` is the accepted bearer key; None accepts any non-empty one. Timing:
    ``ttft_s`` passes between the response headers and the first chunk, ``itl_s`` between
    two text pieces, each delay moved by up to ``jitter_s`` either way (deterministic from
    ``seed``). ``answer_tokens`` is the length of an answer in pieces when the request sets
    no ``max_tokens``. ``models`` are the known model names. ``fault`` applies to every
    request that has no fault of its own. ``record_requests`` keeps every request in
    :attr:`Emulator.requests`; a long-running server turns it off to bound its memory.
    ``rpm`` and ``tpm`` limit requests and tokens per API key and model over a sliding
    window of ``limit_window_s`` (None: unlimited; see the module).
    """

    api_key: str | None = "sk-test"
    ttft_s: float = 0.25
    itl_s: float = 0.03
    jitter_s: float = 0.0
    seed: int = 0
    answer_tokens: int = 40
    models: tuple[str, ...] = DEFAULT_MODELS
    fault: Fault | None = None
    record_requests: bool = True
    rpm: int | None = None
    tpm: int | None = None
    limit_window_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("ttft_s", "itl_s", "jitter_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        _check_count("answer_tokens", self.answer_tokens, 1)
        _check_count("rpm", self.rpm, 1)
        _check_count("tpm", self.tpm, 1)
        if not self.limit_window_s > 0:
            raise ValueError(f"limit_window_s must be positive, got {self.limit_window_s}")


# ---------------------------------------------------------------------------------------
# Deterministic answers


class Piece(NamedTuple):
    """One delta of an answer: ``kind`` is the delta field it fills.

    ``kind`` is ``"reasoning_content"``, ``"content"`` or ``"arguments"``; for arguments,
    ``call_index`` is the tool call's index and ``text`` one fragment of its arguments JSON.
    """

    kind: str
    text: str
    call_index: int = 0


class EmulatedAnswer(msgspec.Struct, frozen=True):
    """The answer the emulator gives to a request body.

    ``pieces`` are the deltas in streaming order; ``reasoning`` and ``content`` are their
    joined texts, ``tool_calls`` the ``(name, arguments JSON)`` of each call and
    ``tool_call_ids`` their ids. In partial mode ``content`` is only the continuation.
    """

    reasoning: str
    content: str
    tool_calls: tuple[tuple[str, str], ...]
    tool_call_ids: tuple[str, ...]
    pieces: tuple[Piece, ...]
    finish_reason: str


_EN_WORDS = (
    "the", "stream", "model", "answer", "token", "server", "client", "event", "request",
    "context", "latency", "buffer", "region", "prompt", "signal", "network", "parser",
    "delta", "reply", "data", "cloud", "quick", "steady", "clear", "simple", "useful",
    "careful", "small", "large", "every", "first", "final", "then", "also", "because",
    "while", "within", "across", "before", "after", "each", "short", "long", "fresh",
    "café", "naïve", "résumé", "façade", "jalapeño", "über", "Zürich", "São", "Paulo",
    "so", "we", "it", "can", "will", "should", "keeps", "sends", "reads", "waits",
)  # fmt: skip
_EN_EXTRAS = (" —", "…", " 🙂", " “quoted”", " 42°C", " ½")
_ZH_WORDS = (
    "模型", "流式", "数据", "服务", "请求", "延迟", "缓冲", "客户端", "事件", "令牌",
    "回答", "问题", "网络", "解析", "通义", "千问", "阿里云", "地域", "上下文", "计费",
    "稳定", "快速", "清晰", "简单", "可靠", "我们", "这个", "每个", "首先", "然后",
    "因此", "但是", "同时", "已经", "可以", "需要", "进行", "处理", "输出", "输入",
)  # fmt: skip
_ZH_EXTRAS = ("、", "；", "：", "😊", "“好的”", "（例如）")
_EN_REASONING_OPENERS = ("Okay", ",", " the", " user", " asks", " about", " this", ".")
_ZH_REASONING_OPENERS = ("嗯", "，", "用户", "在", "问", "这个", "问题", "。")


def _has_cjk(text: str) -> bool:
    return any("\u3400" <= char <= "\u9fff" or "\uf900" <= char <= "\ufaff" for char in text)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _words(rng: random.Random, chinese: bool) -> Iterator[str]:
    """An endless, plausible text as pieces (about one BPE token each)."""
    words, extras = (_ZH_WORDS, _ZH_EXTRAS) if chinese else (_EN_WORDS, _EN_EXTRAS)
    while True:
        for position in range(rng.randint(4, 11)):
            word = rng.choice(words)
            if chinese:
                yield word
            elif position == 0:
                yield word[0].upper() + word[1:]
            else:
                yield " " + word
            roll = rng.random()
            if roll < 0.12:
                yield "，" if chinese else ","
            elif roll < 0.2:
                yield rng.choice(extras)
        yield rng.choice(("。", "！", "？") if chinese else (".", "!", "?", "…"))
        if not chinese:
            yield " "


def _take(pieces: Iterator[str], count: int) -> list[str]:
    return [next(pieces) for _ in range(count)]


def _digest(size: int, *parts: Any) -> bytes:
    return hashlib.blake2b(msgspec.json.encode(parts, order="sorted"), digest_size=size).digest()


def _seed_of(*parts: Any) -> int:
    return int.from_bytes(_digest(8, *parts), "big")


def _schema_value(schema: Any, rng: random.Random, chinese: bool, depth: int = 0) -> Any:
    if not isinstance(schema, dict):
        schema = {}
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "integer":
        return rng.randint(1, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array" and depth < 3:
        return [_schema_value(schema.get("items"), rng, chinese, depth + 1) for _ in range(2)]
    if kind == "object" and depth < 3:
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {
            str(name): _schema_value(sub, rng, chinese, depth + 1)
            for name, sub in properties.items()
        }
    return rng.choice(_ZH_WORDS if chinese else _EN_WORDS)


def _called_functions(body: Mapping[str, Any], messages: Sequence[Any]) -> list[dict[str, Any]]:
    """The functions the answer calls: tool_choice's, else those the last user message names."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or choice == "none":
        return []
    functions = [
        tool["function"]
        for tool in tools
        if isinstance(tool, dict)
        and isinstance(tool.get("function"), dict)
        and isinstance(tool["function"].get("name"), str)
        and tool["function"]["name"]
    ]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        wanted = choice["function"].get("name")
        return [function for function in functions if function["name"] == wanted][:1]
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "user":
        # After a tool result the model answers in text, so a tool loop ends.
        return []
    text = _text_of(last.get("content"))
    named = [function for function in functions if function["name"] in text]
    return named if body.get("parallel_tool_calls") is True else named[:1]


def _fragments(text: str, rng: random.Random) -> list[str]:
    out = []
    start = 0
    while start < len(text):
        size = rng.randint(2, 9)
        out.append(text[start : start + size])
        start += size
    return out


def _max_pieces(body: Mapping[str, Any]) -> int | None:
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _is_partial(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("role") == "assistant"
        and message.get("partial") is True
    )


def _language_is_chinese(messages: Sequence[Any]) -> bool:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _has_cjk(_text_of(message.get("content")))
    return False


def _fresh_answer(
    body: Mapping[str, Any],
    messages: Sequence[Any],
    *,
    seed: int,
    answer_tokens: int,
    thinking: bool,
    with_tools: bool,
) -> EmulatedAnswer:
    model = body.get("model")
    base = _seed_of(model, messages, seed)
    chinese = _language_is_chinese(messages)
    pieces: list[Piece] = []
    if thinking:
        budget = body.get("thinking_budget")
        count = answer_tokens
        if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
            count = min(count, budget)
        openers = _ZH_REASONING_OPENERS if chinese else _EN_REASONING_OPENERS
        reasoning = [*openers, *_take(_words(random.Random(base + 1), chinese), answer_tokens)]
        pieces += [Piece("reasoning_content", text) for text in reasoning[:count]]
    functions = _called_functions(body, messages) if with_tools else []
    calls: list[tuple[str, str]] = []
    ids: list[str] = []
    if functions:
        rng = random.Random(base + 2)
        for index, function in enumerate(functions):
            arguments = json.dumps(
                _schema_value(function.get("parameters"), rng, chinese), ensure_ascii=False
            )
            if not arguments.startswith("{"):
                arguments = "{}"
            calls.append((function["name"], arguments))
            ids.append(f"call_{rng.getrandbits(88):022x}")
            pieces += [Piece("arguments", text, index) for text in _fragments(arguments, rng)]
        finish_reason = "tool_calls"
    else:
        # The content does not depend on thinking or tools, only on the conversation.
        content = _take(_words(random.Random(base), chinese), answer_tokens)
        limit = _max_pieces(body)
        finish_reason = "stop"
        if limit is not None and limit < len(content):
            content = content[:limit]
            finish_reason = "length"
        pieces += [Piece("content", text) for text in content]
    return _answer_of(pieces, calls, ids, finish_reason)


def _answer_of(
    pieces: list[Piece],
    calls: list[tuple[str, str]],
    ids: list[str],
    finish_reason: str,
) -> EmulatedAnswer:
    return EmulatedAnswer(
        reasoning="".join(p.text for p in pieces if p.kind == "reasoning_content"),
        content="".join(p.text for p in pieces if p.kind == "content"),
        tool_calls=tuple(calls),
        tool_call_ids=tuple(ids),
        pieces=tuple(pieces),
        finish_reason=finish_reason,
    )


def emulated_answer(
    body: Mapping[str, Any], *, seed: int = 0, answer_tokens: int = 40
) -> EmulatedAnswer:
    """The answer the emulator streams for ``body`` (a chat-completion request body).

    Pure and deterministic: the text depends only on ``model``, ``messages``, ``seed`` and
    ``max_tokens`` (or ``max_completion_tokens``), which truncates the content to that many
    pieces with finish reason ``length`` (else ``stop``). Chinese when the last user message
    has CJK characters, English otherwise.

    * ``enable_thinking: true`` adds ``answer_tokens`` reasoning pieces (at most
      ``thinking_budget``) before the content; the content itself does not change.
    * With ``tools``, a ``tool_choice`` naming a function, or a last user message that
      contains a function's name, makes the answer a call to it (all the named ones when
      ``parallel_tool_calls`` is true) with arguments built from its JSON schema, no
      content, and finish reason ``tool_calls``. ``tool_choice: "none"`` disables calls.
    * Partial mode (last message ``{"role": "assistant", "content": prefix, "partial":
      true}``): the answer to the conversation without that message, without tools or
      thinking, minus ``prefix`` when it starts with it, so a client resuming a broken
      stream with the text received so far gets exactly the rest. Otherwise the
      continuation is a fresh text seeded by the whole conversation, prefix included.
    """
    raw_messages = body.get("messages")
    messages: list[Any] = list(raw_messages) if isinstance(raw_messages, list) else []
    thinking = body.get("enable_thinking") is True
    if not messages or not _is_partial(messages[-1]):
        return _fresh_answer(
            body,
            messages,
            seed=seed,
            answer_tokens=answer_tokens,
            thinking=thinking,
            with_tools=True,
        )
    prefix = _text_of(messages[-1].get("content"))
    full = _fresh_answer(
        body,
        messages[:-1],
        seed=seed,
        answer_tokens=answer_tokens,
        thinking=False,
        with_tools=False,
    )
    if not full.content.startswith(prefix):
        return _fresh_answer(
            body, messages, seed=seed, answer_tokens=answer_tokens, thinking=False, with_tools=False
        )
    rest: list[Piece] = []
    skip = len(prefix)
    for piece in full.pieces:
        if skip >= len(piece.text):
            skip -= len(piece.text)
            continue
        rest.append(piece._replace(text=piece.text[skip:]))
        skip = 0
    return _answer_of(rest, [], [], full.finish_reason)


# ---------------------------------------------------------------------------------------
# Token accounting


def _count_text_tokens(text: str) -> int:
    return count_tokens(text) if text else 0


def _prompt_tokens(body: Mapping[str, Any], messages: list[Any]) -> int:
    """The prompt as DashScope bills it: the ChatML messages, with the tools block if any."""
    tools = body.get("tools")
    try:
        count = message_token_count(messages, tools if isinstance(tools, list) else None)
    except ConfigurationError as error:
        raise _bad_request(str(error)) from None
    return count.tokens


def _usage(body: Mapping[str, Any], answer: EmulatedAnswer, prompt_tokens: int) -> dict[str, Any]:
    arguments = "".join(arguments for _, arguments in answer.tool_calls)
    reasoning_tokens = _count_text_tokens(answer.reasoning)
    completion = reasoning_tokens + _count_text_tokens(answer.content + arguments)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
    if body.get("enable_thinking") is True:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return usage


def _tool_calls(answer: EmulatedAnswer) -> list[dict[str, Any]]:
    """The answer's tool calls as a whole message carries them."""
    return [
        {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        for index, ((name, arguments), call_id) in enumerate(
            zip(answer.tool_calls, answer.tool_call_ids, strict=True)
        )
    ]


# ---------------------------------------------------------------------------------------
# Errors

_ERROR_DEFAULTS: dict[int, tuple[str, str, str]] = {
    400: (
        "invalid_parameter_error",
        "invalid_request_error",
        "<400> InternalError.Algo.InvalidParameter: The request is invalid.",
    ),
    401: ("invalid_api_key", "invalid_request_error", "Incorrect API key provided. "),
    403: ("AccessDenied", "invalid_request_error", "Access denied."),
    404: ("model_not_found", "invalid_request_error", "The model does not exist."),
    429: (
        "limit_requests",
        "limit_requests",
        "Requests rate limit exceeded, please try again later.",
    ),
    500: (
        "internal_error",
        "internal_error",
        "An internal error has occured, please try again later or contact service support.",
    ),
    503: (
        "ServiceUnavailable",
        "ServiceUnavailable",
        "The service is temporarily unavailable, please try again later.",
    ),
}
_TPM_CODE = "insufficient_quota"
_TPM_MESSAGE = "Allocated quota exceeded, please increase your quota limit."
_IN_BAND_CODE = "data_inspection_failed"
_IN_BAND_MESSAGE = "Output data may contain inappropriate content."
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


class _Reject(Exception):
    """An HTTP error answer, decided while checking the request or by a fault."""

    def __init__(self, status: int, code: str | None = None, message: str | None = None) -> None:
        super().__init__(status)
        default_code, default_type, default_message = _ERROR_DEFAULTS.get(
            status, _ERROR_DEFAULTS[500 if status >= 500 else 400]
        )
        self.status = status
        self.code = code or default_code
        self.message = message or default_message
        # Client errors are typed invalid_request_error; throttling, server errors and
        # moderation repeat their code as the type.
        if code is None or code == default_code:
            self.type = default_type
        elif status == 429 or status >= 500 or code == "data_inspection_failed":
            self.type = code
        else:
            self.type = "invalid_request_error"


def _bad_request(message: str) -> _Reject:
    return _Reject(
        400, "invalid_parameter_error", f"<400> InternalError.Algo.InvalidParameter: {message}"
    )


# ---------------------------------------------------------------------------------------
# Requests as recorded for tests


@dataclass(slots=True)
class RecordedRequest:
    """One request as the emulator saw it, and what it did with it.

    ``headers`` are case-insensitive, with ``Authorization`` redacted; ``body`` is the
    parsed JSON (None when it was not JSON). ``outcome`` is ``"pending"`` while the
    response is in flight. ``events_sent`` and ``bytes_sent`` count the SSE body.

    ``arrived_at_s`` and ``written`` are what the server really did, whatever its
    configured delays (a busy machine runs every delay late), on the event loop's clock
    (``loop.time()``, which is ``time.monotonic()``, one clock for every process of a
    host). ``arrived_at_s`` is when the server took the request off its connection; while
    the response is in flight it is when the handler started, which a busy server reaches
    later, as it works through the requests that came before. ``written`` holds, for each
    piece of the answer streamed, in order, its :attr:`Piece.kind` and the loop time just
    before its event was handed to the connection (so no client can read it earlier): one
    pair per piece, so it is bounded by the answer's length.
    """

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: Any = None
    request_id: str = ""
    fault: Fault | None = None
    status: int = 0
    outcome: Outcome = "pending"
    events_sent: int = 0
    bytes_sent: int = 0
    arrived_at_s: float | None = None
    written: list[tuple[str, float]] = field(default_factory=list)


def _redacted(headers: Mapping[str, str]) -> CIMultiDictProxy[str]:
    copy: CIMultiDict[str] = CIMultiDict(headers)
    if "Authorization" in copy:
        scheme = copy["Authorization"].partition(" ")[0]
        copy["Authorization"] = f"{scheme} REDACTED" if scheme.lower() == "bearer" else "REDACTED"
    return CIMultiDictProxy(copy)


# ---------------------------------------------------------------------------------------
# Streaming

_encode = msgspec.json.Encoder().encode


class _Stop(Exception):
    """Ends a stream early; ``aborted`` when the connection was cut rather than ended."""

    def __init__(self, outcome: Outcome, *, aborted: bool) -> None:
        super().__init__(outcome)
        self.outcome: Outcome = outcome
        self.aborted = aborted


class _Frames:
    """Builds one response's SSE events from pre-encoded parts: a few byte joins each."""

    __slots__ = ("_chunk_id", "_created", "_end", "_model", "_suffix")

    def __init__(self, chunk_id: str, model: str, created: int, line_ending: str) -> None:
        self._chunk_id = chunk_id
        self._model = model
        self._created = created
        self._end = (line_ending * 2).encode()
        self._suffix = b"".join(
            (
                b',"object":"chat.completion.chunk","usage":null,"created":',
                str(created).encode(),
                b',"system_fingerprint":null,"model":',
                _encode(model),
                b',"id":',
                _encode(chunk_id),
                b"}",
            )
        )

    def data(self, payload: bytes) -> bytes:
        return b"".join((b"data: ", payload, self._end))

    def choice(self, choice: bytes) -> bytes:
        return b"".join((b'data: {"choices":[', choice, b"]", self._suffix, self._end))

    def choice_dict(self, choice: dict[str, Any]) -> bytes:
        return self.choice(_encode(choice))

    def role(self) -> bytes:
        return self.choice(
            b'{"delta":{"content":"","role":"assistant"},"index":0,"logprobs":null,'
            b'"finish_reason":null}'
        )

    def content(self, text: str, *, first: bool, after_reasoning: bool) -> bytes:
        # Key order varies between real chunks; the first text chunk leads with finish_reason.
        delta = b"".join(
            (
                b'{"content":',
                _encode(text),
                b',"reasoning_content":null}' if after_reasoning else b"}",
            )
        )
        if first:
            return self.choice(
                b'{"finish_reason":null,"delta":' + delta + b',"index":0,"logprobs":null}'
            )
        return self.choice(
            b'{"delta":' + delta + b',"finish_reason":null,"index":0,"logprobs":null}'
        )

    def reasoning(self, text: str) -> bytes:
        return self.choice(
            b'{"delta":{"content":null,"reasoning_content":'
            + _encode(text)
            + b'},"finish_reason":null,"index":0,"logprobs":null}'
        )

    def tool_call(self, piece: Piece, call_id: str, name: str) -> bytes:
        if call_id:
            # The first delta of a call carries its id and name, and the first fragment.
            call = {
                "index": piece.call_index,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": piece.text},
            }
            return self.choice_dict(
                {
                    "delta": {"content": None, "tool_calls": [call]},
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
        # Continuations repeat an empty id and omit the finish_reason and logprobs keys.
        call = {
            "index": piece.call_index,
            "id": "",
            "type": "function",
            "function": {"arguments": piece.text},
        }
        return self.choice_dict({"delta": {"tool_calls": [call]}, "index": 0})

    def empty_function(self, index: int) -> bytes:
        call = {"function": {}, "index": index, "id": "", "type": "function"}
        return self.choice_dict(
            {
                "delta": {"tool_calls": [call]},
                "index": 0,
                "logprobs": None,
                "finish_reason": None,
            }
        )

    def finish(self, reason: str) -> bytes:
        return self.choice(
            b'{"finish_reason":'
            + _encode(reason)
            + b',"delta":{"content":""},"index":0,"logprobs":null}'
        )

    def usage(self, usage: dict[str, Any]) -> bytes:
        chunk = {
            "choices": [],
            "object": "chat.completion.chunk",
            "usage": usage,
            "created": self._created,
            "system_fingerprint": None,
            "model": self._model,
            "id": self._chunk_id,
        }
        return self.data(_encode(chunk))

    def huge(self, size: int) -> bytes:
        head = b'{"choices":[{"delta":{"content":"'
        tail = b'"},"finish_reason":null,"index":0,"logprobs":null}]' + self._suffix
        padding = b"x" * max(0, size - len(head) - len(tail))
        return self.data(b"".join((head, padding, tail)))

    def malformed(self) -> bytes:
        return self.data(b'{"choices":[{"delta":{"content":"broken')

    def error(self, code: str, message: str) -> bytes:
        frame = {
            "error": {"message": message, "type": code, "code": code},
            "id": self._chunk_id,
        }
        return self.data(_encode(frame))

    def done(self) -> bytes:
        return self.data(DONE_MARKER.encode())

    def numbered(self, frame: bytes, number: int) -> bytes:
        # Compatible-mode events carry no id.
        return frame


class _FaultFrames(Protocol):
    """What :class:`_Streamer` needs of a protocol's frames to apply a fault."""

    def numbered(self, frame: bytes, number: int) -> bytes:
        """``frame`` as sent as the ``number``-th event (from 1)."""

    def error(self, code: str, message: str) -> bytes:
        """The in-band error frame."""

    def malformed(self) -> bytes:
        """A frame whose data is broken JSON."""

    def huge(self, size: int) -> bytes:
        """A text frame whose data line value is ``size`` bytes (at least its JSON)."""


# ---------------------------------------------------------------------------------------
# The native protocol

_NATIVE_ONLY_PARAMETERS = frozenset({"result_format", "incremental_output"})


class _NativeOptions(NamedTuple):
    text_format: bool
    incremental: bool


def _from_native(body: Any) -> tuple[dict[str, Any], _NativeOptions]:
    """The compatible body equivalent to a native one, and the native output options.

    The compatible body is checked as any other afterwards; only the native envelope is
    checked here (400 ``InvalidParameter``).
    """
    if not isinstance(body, dict):
        raise _bad_request("The request body is not a JSON object.")
    inputs = body.get("input")
    if not isinstance(inputs, dict):
        raise _bad_request("input must be an object with messages.")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise _bad_request("parameters must be an object.")
    result_format = parameters.get("result_format", "text")
    if result_format not in ("message", "text"):
        raise _bad_request("result_format should be 'message' or 'text'.")
    incremental = parameters.get("incremental_output", False)
    if not isinstance(incremental, bool):
        raise _bad_request("incremental_output should be a boolean.")
    text_format = result_format == "text"
    if text_format and (parameters.get("enable_thinking") is True or parameters.get("tools")):
        raise _bad_request("enable_thinking and tools need result_format 'message'.")
    compatible = {
        name: value for name, value in parameters.items() if name not in _NATIVE_ONLY_PARAMETERS
    }
    compatible["model"] = body.get("model")
    compatible["messages"] = inputs.get("messages")
    return compatible, _NativeOptions(text_format, incremental)


def _native_usage(input_tokens: int, output_tokens: int, reasoning: int | None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "total_tokens": input_tokens + output_tokens,
        "output_tokens": output_tokens,
        "input_tokens": input_tokens,
    }
    if reasoning is not None:
        usage["output_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


# Characters that end a run of letters for good: the pre-tokenizer never joins a letter to
# one of them, and NFC never composes them with what precedes them.
_SETTLING_CHARS = frozenset(" ,.!?…，。！？、；：")


class _TokenTally:
    """The token count of a growing text, always equal to ``count_tokens`` of the whole.

    BPE never crosses a pre-tokenizer boundary, and the pre-tokenizer splits between a
    letter and a following character of :data:`_SETTLING_CHARS` whatever comes next, so
    the text before the last such boundary is counted once and only the rest is recounted
    as the text grows.
    """

    __slots__ = ("_settled", "_tail")

    def __init__(self) -> None:
        self._settled = 0
        self._tail = ""

    def add(self, text: str) -> int:
        """Append ``text``; the count of everything added so far."""
        tail = self._tail + text
        for cut in range(len(tail) - 1, 0, -1):
            if tail[cut] in _SETTLING_CHARS and tail[cut - 1].isalpha():
                self._settled += count_tokens(tail[:cut])
                tail = tail[cut:]
                break
        self._tail = tail
        return self._settled + _count_text_tokens(tail)


class _NativeFrames:
    """Builds one native response's frames, in the order they are sent.

    Every frame carries the usage so far: the prompt, and the output tokens of the text
    built so far (reasoning counted apart, as the compatible mode bills it). The ``id:``
    line is added as a frame is sent (:meth:`numbered`), so injected frames keep the ids
    in sequence.
    """

    __slots__ = (
        "_content",
        "_end",
        "_eol",
        "_error_head",
        "_incremental",
        "_input_tokens",
        "_output_tally",
        "_output_tokens",
        "_reasoning",
        "_reasoning_tally",
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
    ) -> None:
        eol = line_ending.encode()
        self._eol = eol
        self._end = eol * 2
        self._result_head = b"".join((b"event:result", eol, b":HTTP_STATUS/200", eol, b"data:"))
        self._error_head = b"".join((b"event:error", eol, b":HTTP_STATUS/400", eol, b"data:"))
        self._request_id = request_id
        self._text_format = options.text_format
        self._incremental = options.incremental
        self._thinking = thinking
        self._input_tokens = input_tokens
        self._reasoning = ""
        self._content = ""
        self._reasoning_tally = _TokenTally()
        self._output_tally = _TokenTally()
        self._reasoning_tokens = 0
        self._output_tokens = 0

    def numbered(self, frame: bytes, number: int) -> bytes:
        return b"".join((b"id:", str(number).encode(), self._eol, frame))

    def piece(self, piece: Piece, call_id: str, name: str) -> bytes:
        """The frame of one piece; ``call_id`` and ``name`` are set on a call's first."""
        if piece.kind == "reasoning_content":
            self._reasoning += piece.text
            self._reasoning_tokens = self._reasoning_tally.add(piece.text)
            reasoning = piece.text if self._incremental else self._reasoning
            return self._message("", None, reasoning=reasoning)
        self._output_tokens = self._output_tally.add(piece.text)
        if piece.kind == "content":
            self._content += piece.text
            return self._text(piece.text if self._incremental else self._content)
        function = {"name": name, "arguments": piece.text} if call_id else {"arguments": piece.text}
        call = {"index": piece.call_index, "id": call_id, "type": "function", "function": function}
        return self._message(self._so_far(self._content), [call])

    def finish(self, reason: str) -> bytes:
        """The last frame: no new text, the real finish reason."""
        content = self._so_far(self._content)
        if self._text_format:
            return self._frame({"finish_reason": reason, "text": content})
        return self._message(content, None, finish_reason=reason)

    def error(self, code: str, message: str) -> bytes:
        payload = {"code": _native_code(code), "message": message, "request_id": self._request_id}
        return b"".join((self._error_head, _encode(payload), self._end))

    def malformed(self) -> bytes:
        return b"".join(
            (self._result_head, b'{"output":{"choices":[{"message":{"content":"broken', self._end)
        )

    def huge(self, size: int) -> bytes:
        bare = len(self._text("")) - len(self._result_head) - len(self._end)
        return self._text("x" * max(0, size - bare))

    def _so_far(self, text: str) -> str:
        return "" if self._incremental else text

    def _text(self, text: str) -> bytes:
        if self._text_format:
            return self._frame({"finish_reason": "null", "text": text})
        return self._message(text, None)

    def _message(
        self,
        content: str,
        tool_calls: list[dict[str, Any]] | None,
        *,
        reasoning: str | None = None,
        finish_reason: str = "null",
    ) -> bytes:
        message: dict[str, Any] = {"content": content}
        if self._thinking:
            message["reasoning_content"] = (
                reasoning if reasoning is not None else self._so_far(self._reasoning)
            )
        if tool_calls is not None:
            message["tool_calls"] = tool_calls
        message["role"] = "assistant"
        return self._frame({"choices": [{"message": message, "finish_reason": finish_reason}]})

    def _frame(self, output: dict[str, Any]) -> bytes:
        usage = _native_usage(
            self._input_tokens,
            self._reasoning_tokens + self._output_tokens,
            self._reasoning_tokens if self._thinking else None,
        )
        payload = {"output": output, "usage": usage, "request_id": self._request_id}
        return b"".join((self._result_head, _encode(payload), self._end))


class _Streamer:
    """Writes one response's events, applying the fault's stream effects on the way."""

    __slots__ = (
        "_fault",
        "_frames",
        "_huge_sent",
        "_keepalive",
        "_loop",
        "_malformed_sent",
        "_request",
        "_resp",
        "_stalled",
        "no_done",
        "record",
    )

    def __init__(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        frames: _FaultFrames,
        fault: Fault | None,
        record: RecordedRequest,
    ) -> None:
        self._request = request
        self._resp = resp
        self._frames = frames
        self._fault = fault
        self.record = record
        self._stalled = False
        self._malformed_sent = False
        self._huge_sent = False
        self.no_done = fault is not None and fault.no_done
        line_ending = fault.line_ending if fault is not None else "\n"
        self._keepalive = encode_comment(" keep-alive", line_ending)
        self._loop = asyncio.get_running_loop()

    async def event(self, frame: bytes, kind: str | None = None) -> None:
        """Write one event; ``kind`` names the answer piece it carries, if it carries one."""
        if self._fault is not None:
            await self._before_event(self._fault)
        if kind is not None:
            # Read before the write: a client may read the bytes before this task runs again.
            self.record.written.append((kind, self._loop.time()))
        await self._emit(frame)

    async def _emit(self, frame: bytes) -> None:
        await self._send(self._frames.numbered(frame, self.record.events_sent + 1))
        self.record.events_sent += 1

    async def _before_event(self, fault: Fault) -> None:
        while True:
            sent = self.record.events_sent
            if sent == fault.stall_after_events and not self._stalled:
                self._stalled = True
                await self._stall(fault)
            if sent == fault.drop_after_events:
                await self._drop()
            if sent == fault.error_after_events:
                await self._emit(
                    self._frames.error(
                        fault.code or _IN_BAND_CODE, fault.message or _IN_BAND_MESSAGE
                    )
                )
                raise _Stop("in_band_error", aborted=False)
            if sent == fault.malformed_after_events and not self._malformed_sent:
                self._malformed_sent = True
                frame = self._frames.malformed()
            elif fault.huge_event_bytes is not None and sent == 1 and not self._huge_sent:
                self._huge_sent = True
                frame = self._frames.huge(fault.huge_event_bytes)
            else:
                return
            await self._emit(frame)

    async def _stall(self, fault: Fault) -> None:
        every = fault.keepalive_every_s
        if every is None:
            await asyncio.sleep(fault.stall_s)
            return
        comments, rest = divmod(fault.stall_s, every)
        for _ in range(int(comments)):
            await asyncio.sleep(every)
            await self._send(self._keepalive)
        await asyncio.sleep(rest)

    async def _send(self, data: bytes) -> None:
        fault = self._fault
        if fault is None:
            await self._resp.write(data)
            self.record.bytes_sent += len(data)
            return
        limit = fault.drop_after_bytes
        if limit is not None and self.record.bytes_sent + len(data) >= limit:
            await self._write(fault, data[: limit - self.record.bytes_sent])
            await self._drop()
        await self._write(fault, data)

    async def _write(self, fault: Fault, data: bytes) -> None:
        step = fault.write_bytes
        if step is None or len(data) <= step:
            await self._resp.write(data)
        else:
            for start in range(0, len(data), step):
                await self._resp.write(data[start : start + step])
        self.record.bytes_sent += len(data)

    async def _drop(self) -> None:
        transport = self._request.transport
        if transport is not None:
            # abort() discards what the transport still buffers; let the kernel take it first
            # so the client receives exactly the bytes written.
            # No event signals an emptied transport buffer, hence the polling.
            while transport.get_write_buffer_size() and not transport.is_closing():  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            transport.abort()
        raise _Stop("dropped", aborted=True)


# ---------------------------------------------------------------------------------------
# Rate limits


class _RateWindow:
    """What one API key sent to one model during the last window: when each admitted
    request arrived and its tokens."""

    __slots__ = ("requests", "tokens_in_window")

    def __init__(self) -> None:
        self.requests: deque[tuple[float, int]] = deque()
        self.tokens_in_window = 0

    def admit(self, now_s: float, tokens: int, config: EmulatorConfig) -> None:
        """Count the request, or raise the 429 DashScope answers when it is over a limit."""
        requests = self.requests
        while requests and requests[0][0] <= now_s - config.limit_window_s:
            self.tokens_in_window -= requests.popleft()[1]
        if config.rpm is not None and len(requests) + 1 > config.rpm:
            raise _Reject(429)
        if config.tpm is not None and self.tokens_in_window + tokens > config.tpm:
            raise _Reject(429, _TPM_CODE, _TPM_MESSAGE)
        requests.append((now_s, tokens))
        self.tokens_in_window += tokens


# ---------------------------------------------------------------------------------------
# The server


class Emulator:
    """The emulated DashScope server; an async context manager that starts and closes it.

    It listens on ``host``:``port`` (loopback, port chosen by the OS, by default) and
    answers ``POST {base_url}/chat/completions`` and, in the native protocol,
    ``POST {native_base_url}/services/aigc/text-generation/generation``. ``requests``
    records every chat request of either protocol (unless ``config.record_requests`` is
    off), ``active_streams`` counts the responses being streamed. :meth:`close` cancels
    in-flight handlers, so a client in the middle of a stream sees its connection close.
    """

    def __init__(
        self, config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.host = host
        self.requests: list[RecordedRequest] = []
        self._received = 0
        self._port = port
        self._queue: deque[Fault] = deque()
        self._active_streams = 0
        self._handlers: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._models = frozenset(self.config.models)
        # Keyed by a digest of the API key, so that the server keeps no key it was sent.
        self._rate_windows: dict[tuple[bytes, str], _RateWindow] = {}
        # The records of the exchanges in flight, by id() of their request, until aiohttp
        # reports when it took each request off its connection (_ArrivalClock).
        self._in_flight: dict[int, RecordedRequest] = {}

    @property
    def port(self) -> int:
        """The port listened on (the OS's choice when constructed with 0)."""
        if self._runner is None:
            raise RuntimeError("the emulator is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/compatible-mode/v1``; chat is ``POST {base_url}/chat/completions``."""
        return f"{self._origin}/compatible-mode/v1"

    @property
    def native_base_url(self) -> str:
        """``http://HOST:PORT/api/v1``, the native protocol's root (``QwenClient(...,
        protocol="native")`` takes it as ``base_url``)."""
        return f"{self._origin}/api/v1"

    def base_url_for(self, protocol: str | WireProtocol) -> str:
        """The base URL of ``protocol`` (a name or a protocol object) on this server."""
        return self._origin + protocols.get(protocol).root

    @property
    def _origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def active_streams(self) -> int:
        """Streaming responses in flight: started, not yet ended, aborted or cancelled."""
        return self._active_streams

    def schedule(self, *faults: Fault) -> None:
        """Queue faults: each next chat request (of either protocol) takes one, before any
        other fault source."""
        self._queue.extend(faults)

    async def start(self) -> None:
        """Start listening; ``port`` and the base URLs are valid afterwards."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already started")
        # Large enough for long-context requests (the input-length check counts tokens).
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app[_EMULATOR] = self
        app.router.add_post(CHAT_PATH, self._handle)
        app.router.add_post(NATIVE_PATH, self._handle_native)
        # handler_cancellation: a client that disconnects cancels its handler at once, so
        # active_streams drops even during a stall.
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=_ARRIVALS_LOGGER,
            access_log_class=_ArrivalClock,
            handler_cancellation=True,
            shutdown_timeout=0.1,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = int(runner.addresses[0][1])
        self._runner = runner
        self._closing = False

    async def close(self) -> None:
        """Stop listening and cancel in-flight handlers; returns promptly. Idempotent."""
        runner = self._runner
        if runner is None:
            return
        self._closing = True
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=1.0)
        await runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- request handling ---------------------------------------------------------------

    async def _handle_native(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, native=True)

    async def _handle(self, request: web.Request, *, native: bool = False) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        number = self._received
        self._received += 1
        record = RecordedRequest(request.method, request.path, _redacted(request.headers))
        record.arrived_at_s = asyncio.get_running_loop().time()
        record.request_id = str(uuid.UUID(bytes=_digest(16, "request", self.config.seed, number)))
        if self.config.record_requests:
            self.requests.append(record)
            self._in_flight[id(request)] = record
        exchange = _Exchange(request, record, number, time.monotonic(), native)
        try:
            raw = await request.read()
            record.fault = self._pick_fault(request)
            return await self._respond(exchange, raw)
        except _Reject as reject:
            return self._error_response(exchange, reject)
        except asyncio.CancelledError:
            record.outcome = "server_closed" if self._closing else "client_disconnected"
            # aiohttp reports no arrival for a cancelled exchange.
            self._in_flight.pop(id(request), None)
            raise
        finally:
            if task is not None:
                self._handlers.discard(task)

    def _pick_fault(self, request: web.Request) -> Fault | None:
        if self._queue:
            return self._queue.popleft()
        header = request.headers.get(FAULT_HEADER)
        if header is None:
            return self.config.fault
        try:
            return _fault_decoder.decode(header)
        except msgspec.DecodeError as error:
            raise _bad_request(f"invalid {FAULT_HEADER} header: {error}") from None

    def _headers(self, exchange: _Exchange, content_type: str) -> dict[str, str]:
        fault = exchange.record.fault
        headers = {
            "Content-Type": content_type,
            "x-request-id": exchange.record.request_id,
            "req-cost-time": str(int((time.monotonic() - exchange.started_s) * 1000)),
            "x-dashscope-call-gateway": "true",
        }
        if fault is not None:
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = fault.retry_after_ms
        return headers

    def _error_response(self, exchange: _Exchange, reject: _Reject) -> web.Response:
        record = exchange.record
        record.status = reject.status
        record.outcome = "http_error"
        body: dict[str, Any]
        if exchange.native:
            body = {
                "code": _native_code(reject.code),
                "message": reject.message,
                "request_id": record.request_id,
            }
        else:
            body = {
                "error": {
                    "message": reject.message,
                    "type": reject.type,
                    "param": None,
                    "code": reject.code,
                },
                "request_id": record.request_id,
            }
        headers = self._headers(exchange, "application/json")
        return web.Response(status=reject.status, body=_encode(body), headers=headers)

    def _check_key(self, request: web.Request) -> str:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        expected = self.config.api_key
        if scheme.lower() != "bearer" or not key or (expected is not None and key != expected):
            raise _Reject(401)
        return key

    def _check_rate(self, key: str, model: str, tokens: int) -> None:
        config = self.config
        if config.rpm is None and config.tpm is None:
            return
        account = (hashlib.blake2b(key.encode(), digest_size=16).digest(), model)
        window = self._rate_windows.get(account)
        if window is None:
            window = self._rate_windows[account] = _RateWindow()
        window.admit(time.monotonic(), tokens, config)

    async def _respond(self, exchange: _Exchange, raw: bytes) -> web.StreamResponse:
        record = exchange.record
        fault = record.fault
        try:
            record.body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            record.body = None
        key = self._check_key(exchange.request)
        if fault is not None and fault.status is not None:
            raise _Reject(fault.status, fault.code, fault.message)
        native: _NativeOptions | None = None
        compatible = record.body
        if exchange.native:
            compatible, native = _from_native(record.body)
        body, messages = self._check_body(compatible)
        prompt_tokens = _prompt_tokens(body, messages)
        self._check_content(body, messages, prompt_tokens)
        answer = emulated_answer(
            body, seed=self.config.seed, answer_tokens=self.config.answer_tokens
        )
        usage = _usage(body, answer, prompt_tokens)
        self._check_rate(key, body["model"], usage["total_tokens"])
        if native is not None:
            return await self._respond_native(exchange, body, answer, usage, native)
        content_type = fault.content_type if fault is not None else None
        if body.get("stream") is not True or (content_type and "json" in content_type.lower()):
            return self._completion(exchange, body, answer, usage)
        line_ending = fault.line_ending if fault is not None else "\n"
        frames = _Frames(
            f"chatcmpl-{record.request_id}", body["model"], int(time.time()), line_ending
        )
        include_usage = isinstance(options := body.get("stream_options"), dict) and (
            options.get("include_usage") is True
        )
        return await self._stream(
            exchange,
            frames,
            functools.partial(
                _send_compatible,
                frames=frames,
                answer=answer,
                usage=usage if include_usage else None,
            ),
        )

    async def _respond_native(
        self,
        exchange: _Exchange,
        body: dict[str, Any],
        answer: EmulatedAnswer,
        usage: dict[str, Any],
        options: _NativeOptions,
    ) -> web.StreamResponse:
        record = exchange.record
        thinking = body.get("enable_thinking") is True
        if exchange.request.headers.get(NATIVE_SSE_HEADER, "").lower() != "enable":
            return self._native_completion(exchange, answer, usage, options, thinking=thinking)
        fault = record.fault
        frames = _NativeFrames(
            record.request_id,
            fault.line_ending if fault is not None else "\n",
            options,
            thinking=thinking,
            input_tokens=usage["prompt_tokens"],
        )
        return await self._stream(
            exchange, frames, functools.partial(_send_native, frames=frames, answer=answer)
        )

    def _check_body(self, body: Any) -> tuple[dict[str, Any], list[Any]]:
        if not isinstance(body, dict):
            raise _bad_request("The request body is not a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _bad_request("The model parameter is required.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad_request("messages must be a non-empty list.")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise _bad_request("Each message must be an object with a role.")
        if model not in self._models:
            raise _Reject(
                404,
                "model_not_found",
                f"The model `{model}` does not exist or you do not have access to it.",
            )
        if body.get("tool_choice") == "required":
            raise _bad_request("tool_choice 'required' is not supported.")
        return body, messages

    def _check_content(self, body: dict[str, Any], messages: list[Any], prompt_tokens: int) -> None:
        for message in messages:
            if message.get("role") == "user" and MODERATION_TRIGGER in _text_of(
                message.get("content")
            ):
                raise _Reject(
                    400, "data_inspection_failed", "Input data may contain inappropriate content."
                )
        limits = model_limits(body["model"])
        if limits is not None:
            if prompt_tokens > limits.max_input_tokens:
                raise _bad_request(
                    f"Range of input length should be [1, {limits.max_input_tokens}]"
                )
            for name in ("max_tokens", "max_completion_tokens"):
                value = body.get(name)
                if value is not None and (
                    not isinstance(value, int)
                    or isinstance(value, bool)
                    or not 1 <= value <= limits.max_output_tokens
                ):
                    raise _bad_request(f"Range of {name} should be [1, {limits.max_output_tokens}]")
        if _is_partial(messages[-1]) and body.get("enable_thinking") is True:
            raise _bad_request("Partial mode is not supported when enable_thinking is true.")

    def _completion(
        self,
        exchange: _Exchange,
        body: dict[str, Any],
        answer: EmulatedAnswer,
        usage: dict[str, Any],
    ) -> web.Response:
        message: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if body.get("enable_thinking") is True:
            message["reasoning_content"] = answer.reasoning
        if answer.tool_calls:
            message["tool_calls"] = _tool_calls(answer)
        record = exchange.record
        completion = {
            "choices": [
                {
                    "message": message,
                    "finish_reason": answer.finish_reason,
                    "index": 0,
                    "logprobs": None,
                }
            ],
            "object": "chat.completion",
            "usage": usage,
            "created": int(time.time()),
            "system_fingerprint": None,
            "model": body["model"],
            "id": f"chatcmpl-{record.request_id}",
        }
        fault = record.fault
        content_type = fault.content_type if fault is not None else None
        headers = self._headers(exchange, content_type or "application/json")
        record.status = 200
        record.outcome = "completed"
        return web.Response(body=_encode(completion), headers=headers)

    def _native_completion(
        self,
        exchange: _Exchange,
        answer: EmulatedAnswer,
        usage: dict[str, Any],
        options: _NativeOptions,
        *,
        thinking: bool,
    ) -> web.Response:
        output: dict[str, Any]
        if options.text_format:
            output = {"finish_reason": answer.finish_reason, "text": answer.content}
        else:
            message: dict[str, Any] = {"content": answer.content}
            if thinking:
                message["reasoning_content"] = answer.reasoning
            if answer.tool_calls:
                message["tool_calls"] = _tool_calls(answer)
            message["role"] = "assistant"
            output = {"choices": [{"finish_reason": answer.finish_reason, "message": message}]}
        record = exchange.record
        details = usage.get("completion_tokens_details")
        payload = {
            "output": output,
            "usage": _native_usage(
                usage["prompt_tokens"],
                usage["completion_tokens"],
                details["reasoning_tokens"] if details is not None else None,
            ),
            "request_id": record.request_id,
        }
        fault = record.fault
        content_type = fault.content_type if fault is not None else None
        headers = self._headers(exchange, content_type or "application/json")
        record.status = 200
        record.outcome = "completed"
        return web.Response(body=_encode(payload), headers=headers)

    async def _stream(
        self,
        exchange: _Exchange,
        frames: _FaultFrames,
        send: Callable[[_Streamer, _Pacer], Awaitable[Outcome]],
    ) -> web.StreamResponse:
        """Stream a 200 response: ``send`` writes its events and says how it ended."""
        record = exchange.record
        fault = record.fault
        content_type = fault.content_type if fault is not None else None
        headers = self._headers(exchange, content_type or "text/event-stream;charset=utf-8")
        headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(headers=headers)
        streamer = _Streamer(exchange.request, resp, frames, fault, record)
        pacer = _Pacer(self.config, exchange.number)
        record.status = 200
        self._active_streams += 1
        try:
            await resp.prepare(exchange.request)
            # Send the headers now: the time to first token runs from here, as it does when
            # a server accepts the request before the model has produced anything.
            await resp.write(b"")
            await pacer.first()
            record.outcome = await send(streamer, pacer)
        except _Stop as stop:
            record.outcome = stop.outcome
            if stop.aborted:
                return resp
        except ConnectionError:
            record.outcome = "client_disconnected"
            return resp
        finally:
            self._active_streams -= 1
        await resp.write_eof()
        return resp


_EMULATOR = web.AppKey("qwen_sse.emulator", Emulator)
_ARRIVALS_LOGGER = logging.getLogger("qwen_sse.emulator.arrivals")


class _ArrivalClock(AbstractAccessLogger):
    """Not a log: aiohttp hands its access logger, as each exchange ends, how long ago it
    took the request off its connection. That instant, before the handler ran, is the
    request's true arrival (see :attr:`RecordedRequest.arrived_at_s`)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        emulator = request.app.get(_EMULATOR) if isinstance(request, web.Request) else None
        if emulator is None:
            return
        record = emulator._in_flight.pop(id(request), None)
        if record is not None:
            record.arrived_at_s = asyncio.get_running_loop().time() - time

    @property
    def enabled(self) -> bool:
        return True


@dataclass(slots=True)
class _Exchange:
    """One chat request in progress: what every step of answering it needs."""

    request: web.Request
    record: RecordedRequest
    number: int
    started_s: float
    native: bool


class _Pacer:
    """The delays of one stream: ``ttft_s`` first, ``itl_s`` between pieces, with jitter."""

    __slots__ = ("_config", "_rng")

    def __init__(self, config: EmulatorConfig, number: int) -> None:
        self._config = config
        self._rng = random.Random(_seed_of("timing", config.seed, number))

    async def first(self) -> None:
        await self._sleep(self._config.ttft_s)

    async def next(self) -> None:
        await self._sleep(self._config.itl_s)

    async def _sleep(self, base_s: float) -> None:
        jitter = self._config.jitter_s
        delay = max(0.0, base_s + self._rng.uniform(-jitter, jitter)) if jitter else base_s
        if delay:
            await asyncio.sleep(delay)


async def _send_compatible(
    streamer: _Streamer,
    pacer: _Pacer,
    *,
    frames: _Frames,
    answer: EmulatedAnswer,
    usage: dict[str, Any] | None,
) -> Outcome:
    """A compatible-mode stream: role chunk, pieces, finish, usage (if asked), ``[DONE]``."""
    await streamer.event(frames.role())
    await _stream_pieces(streamer, frames, answer, pacer)
    await streamer.event(frames.finish(answer.finish_reason))
    if usage is not None:
        await streamer.event(frames.usage(usage))
    if streamer.no_done:
        return "no_done"
    await streamer.event(frames.done())
    return "completed"


async def _send_native(
    streamer: _Streamer, pacer: _Pacer, *, frames: _NativeFrames, answer: EmulatedAnswer
) -> Outcome:
    """A native stream: one frame per piece, then the frame with the finish reason."""
    announced: set[int] = set()
    for number, piece in enumerate(answer.pieces):
        if number:
            await pacer.next()
        call_id = name = ""
        if piece.kind == "arguments" and piece.call_index not in announced:
            announced.add(piece.call_index)
            call_id = answer.tool_call_ids[piece.call_index]
            name = answer.tool_calls[piece.call_index][0]
        await streamer.event(frames.piece(piece, call_id, name), piece.kind)
    if streamer.no_done:
        return "no_done"
    await streamer.event(frames.finish(answer.finish_reason))
    return "completed"


async def _stream_pieces(
    streamer: _Streamer, frames: _Frames, answer: EmulatedAnswer, pacer: _Pacer
) -> None:
    after_reasoning = False
    first_content = True
    announced: set[int] = set()
    for number, piece in enumerate(answer.pieces):
        if number:
            await pacer.next()
        kind = piece.kind
        if kind == "content":
            frame = frames.content(piece.text, first=first_content, after_reasoning=after_reasoning)
            first_content = after_reasoning = False
        elif kind == "reasoning_content":
            frame = frames.reasoning(piece.text)
            after_reasoning = True
        else:
            call = piece.call_index
            new = call not in announced
            announced.add(call)
            frame = frames.tool_call(
                piece, answer.tool_call_ids[call] if new else "", answer.tool_calls[call][0]
            )
        await streamer.event(frame, kind)
    if answer.tool_calls:
        await streamer.event(frames.empty_function(len(answer.tool_calls) - 1))

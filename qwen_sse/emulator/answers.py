"""The emulator's answers: a pure, deterministic function of a chat request body.

Edge layer (part of :mod:`qwen_sse.emulator`); it imports nothing from aiohttp and does
no I/O. Every protocol's request is first read as the equivalent compatible-mode body
(the *answer request*: ``model``, ``messages``, ``tools``, ``enable_thinking``,
``max_tokens``...), so the same conversation gets the same answer in every protocol.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from qwen_sse.protocols.base import text_of

__all__ = [
    "EmulatedAnswer",
    "Piece",
    "digest",
    "emulated_answer",
    "is_partial",
    "max_pieces",
    "seed_of",
]


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


def digest(size: int, *parts: Any) -> bytes:
    """A ``size``-byte digest of JSON-encodable ``parts``: the emulator's only source of
    request-dependent randomness (answers, request ids, timing jitter)."""
    return hashlib.blake2b(msgspec.json.encode(parts, order="sorted"), digest_size=size).digest()


def seed_of(*parts: Any) -> int:
    """A 64-bit random seed derived from ``parts`` (see :func:`digest`)."""
    return int.from_bytes(digest(8, *parts), "big")


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
    text = text_of(last.get("content"))
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


def max_pieces(body: Mapping[str, Any]) -> int | None:
    """The output bound of an answer request (``max_tokens`` or ``max_completion_tokens``)."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def is_partial(message: Any) -> bool:
    """Whether ``message`` is a partial-mode prefix (``"partial": true`` assistant message)."""
    return (
        isinstance(message, dict)
        and message.get("role") == "assistant"
        and message.get("partial") is True
    )


def _language_is_chinese(messages: Sequence[Any]) -> bool:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _has_cjk(text_of(message.get("content")))
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
    base = seed_of(model, messages, seed)
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
        limit = max_pieces(body)
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
    if not messages or not is_partial(messages[-1]):
        return _fresh_answer(
            body,
            messages,
            seed=seed,
            answer_tokens=answer_tokens,
            thinking=thinking,
            with_tools=True,
        )
    prefix = text_of(messages[-1].get("content"))
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

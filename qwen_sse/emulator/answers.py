"""The emulator's answers: a pure, deterministic function of a chat request body.

Edge layer (part of :mod:`qwen_sse.emulator`); it imports nothing from aiohttp and does
no I/O. Every protocol's request is first read as the equivalent compatible-mode body
(the *answer request*: ``model``, ``messages``, ``tools``, ``enable_thinking``,
``max_tokens``...), so the same conversation gets the same answer in every protocol.

Answers are measured in Qwen tokens (:mod:`qwen_sse.tokens`) and streamed one token a
piece, as a model generates them. A token that holds only part of a character's UTF-8
sequence cannot travel alone as JSON text, so the fewest consecutive tokens that decode to
whole characters travel as one piece, which says how many tokens it holds
(:attr:`Piece.tokens`); an answer's token counts are its pieces' sums, and always equal
``count_tokens`` of its texts. Readable texts come from :mod:`qwen_sse.emulator.corpus`:
a request's digest picks where its answer starts in a corpus and the step through it, and
the tokenized texts are kept (:func:`functools.lru_cache`), so that a busy emulator
tokenizes each text once, not once a request.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from qwen_sse.emulator import corpus
from qwen_sse.protocols.base import text_of
from qwen_sse.tokens import count_tokens, encode, token_bytes

__all__ = [
    "EmulatedAnswer",
    "Piece",
    "digest",
    "emulated_answer",
    "is_partial",
    "max_tokens_of",
    "seed_of",
]


class Piece(NamedTuple):
    """One delta of an answer: ``kind`` is the delta field it fills.

    ``kind`` is ``"reasoning_content"``, ``"content"`` or ``"arguments"``; for arguments,
    ``call_index`` is the tool call's index and ``text`` one fragment of its arguments JSON.
    ``tokens`` is the number of tokens ``text`` holds: 1, or more when a character's UTF-8
    sequence spans several tokens (see the module).
    """

    kind: str
    text: str
    call_index: int = 0
    tokens: int = 1


class EmulatedAnswer(msgspec.Struct, frozen=True):
    """The answer the emulator gives to a request body.

    ``pieces`` are the deltas in streaming order; ``reasoning`` and ``content`` are their
    joined texts, ``tool_calls`` the ``(name, arguments JSON)`` of each call and
    ``tool_call_ids`` their ids. In partial mode ``content`` is only the continuation.
    ``completion_tokens`` counts every piece's tokens (reasoning, content and arguments),
    ``reasoning_tokens`` those of the reasoning.
    """

    reasoning: str
    content: str
    tool_calls: tuple[tuple[str, str], ...]
    tool_call_ids: tuple[str, ...]
    pieces: tuple[Piece, ...]
    finish_reason: str
    reasoning_tokens: int = 0
    completion_tokens: int = 0


class _Text(NamedTuple):
    """Pieces of one kind, their joined text and their tokens."""

    pieces: tuple[Piece, ...]
    text: str
    tokens: int


_NO_TEXT = _Text((), "", 0)
_CORPORA = {
    (False, "content"): corpus.CONTENT_EN,
    (True, "content"): corpus.CONTENT_ZH,
    (False, "reasoning_content"): corpus.REASONING_EN,
    (True, "reasoning_content"): corpus.REASONING_ZH,
}
# Steps through a corpus: 1 to this; each corpus has a prime number of sentences, more
# than this, so every step visits all sentences before one repeats.
_STEPS = 4
# The readable texts kept tokenized. Few are ever asked for (2 languages x 2 kinds x
# the sentences x _STEPS starts, for each answer length in use), so a load test hits
# the cache once warm.
_CACHED_TEXTS = 512


def _has_cjk(text: str) -> bool:
    return any("\u3400" <= char <= "\u9fff" or "\uf900" <= char <= "\ufaff" for char in text)


def _pieces_of(text: str, kind: str, call_index: int = 0) -> list[Piece]:
    """``text`` as pieces of one token, or of the fewest tokens that decode to whole
    characters."""
    pieces: list[Piece] = []
    pending = b""
    count = 0
    for token in token_bytes(encode(text)):
        pending += token
        count += 1
        try:
            piece = pending.decode()
        except UnicodeDecodeError:
            continue  # a character continues in the next token
        pieces.append(Piece(kind, piece, call_index, count))
        pending = b""
        count = 0
    return pieces


def _text_of(pieces: Sequence[Piece], limit: int | None = None) -> _Text:
    """The longest run of ``pieces`` from the first that holds at most ``limit`` tokens
    and whose text counts as many tokens as its pieces hold (re-encoding a text cut inside
    a word gives the same tokens nearly always; where it does not, one piece less)."""
    keep = len(pieces)
    tokens = sum(piece.tokens for piece in pieces)
    if limit is not None and tokens > limit:
        keep = tokens = 0
        while keep < len(pieces) and tokens + pieces[keep].tokens <= limit:
            tokens += pieces[keep].tokens
            keep += 1
        while keep and count_tokens("".join(piece.text for piece in pieces[:keep])) != tokens:
            keep -= 1
            tokens -= pieces[keep].tokens
    kept = tuple(pieces[:keep])
    return _Text(kept, "".join(piece.text for piece in kept), tokens)


class _Reading(NamedTuple):
    """Where a readable text comes from: the corpus of ``kind`` in one language, read from
    sentence ``start`` every ``step`` sentences."""

    chinese: bool
    kind: str
    start: int
    step: int


@functools.lru_cache(maxsize=_CACHED_TEXTS)
def _sentences(reading: _Reading, tokens: int) -> _Text:
    """Sentences of ``reading``, whole, until they hold at least ``tokens`` tokens."""
    sentences = _CORPORA[reading.chinese, reading.kind]
    joiner = "" if reading.chinese else " "
    chosen: list[str] = []
    estimate = 0
    index = reading.start
    while True:
        while estimate < tokens or not chosen:
            sentence = sentences[index % len(sentences)]
            chosen.append(sentence)
            estimate += _sentence_tokens(sentence)
            index += reading.step
        text = _text_of(_pieces_of(joiner.join(chosen), reading.kind))
        if text.tokens >= tokens:
            return text
        estimate = text.tokens  # sentences merged at a boundary: one more


@functools.lru_cache(maxsize=_CACHED_TEXTS)
def _readable(reading: _Reading, tokens: int, limit: int | None) -> _Text:
    """:func:`_sentences`, cut at ``limit`` tokens (or one piece less, see
    :func:`_text_of`) when it holds more."""
    whole = _sentences(reading, tokens)
    return whole if limit is None or whole.tokens <= limit else _text_of(whole.pieces, limit)


@functools.cache
def _sentence_tokens(sentence: str) -> int:
    return count_tokens(sentence)


def _reading(seed: int, chinese: bool, kind: str) -> _Reading:
    sentences = len(_CORPORA[chinese, kind])
    return _Reading(chinese, kind, seed % sentences, 1 + (seed // sentences) % _STEPS)


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
    return rng.choice(corpus.WORDS_ZH if chinese else corpus.WORDS_EN)


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


def max_tokens_of(body: Mapping[str, Any]) -> int | None:
    """The output bound of an answer request (``max_tokens`` or ``max_completion_tokens``),
    in tokens."""
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
    choice: int,
) -> EmulatedAnswer:
    model = body.get("model")
    # Choice 0 is the answer of a request without n.
    base = seed_of(model, messages, seed) if choice == 0 else seed_of(model, messages, seed, choice)
    chinese = _language_is_chinese(messages)
    budget = max_tokens_of(body)
    finish_reason = "stop"
    reasoning = content = _NO_TEXT
    if thinking:
        thinking_budget = body.get("thinking_budget")
        if not (
            isinstance(thinking_budget, int)
            and not isinstance(thinking_budget, bool)
            and thinking_budget > 0
        ):
            thinking_budget = None
        reading = _reading(seed_of("reasoning", base), chinese, "reasoning_content")
        reasoning = _readable(reading, answer_tokens, thinking_budget)
        if budget is not None:
            # Reasoning tokens are completion tokens, and max_tokens bounds them all; a
            # budget spent while thinking leaves nothing for the rest.
            if budget < reasoning.tokens:
                reasoning = _readable(reading, answer_tokens, budget)
                budget = 0
            else:
                budget -= reasoning.tokens
    functions = _called_functions(body, messages) if with_tools else []
    calls: list[tuple[str, str]] = []
    ids: list[str] = []
    arguments: list[_Text] = []
    if functions:
        finish_reason = "tool_calls"
        rng = random.Random(base + 2)
        for index, function in enumerate(functions):
            if budget == 0:
                finish_reason = "length"
                break
            json_text = json.dumps(
                _schema_value(function.get("parameters"), rng, chinese), ensure_ascii=False
            )
            if not json_text.startswith("{"):
                json_text = "{}"
            pieces = _pieces_of(json_text, "arguments", index)
            text = _text_of(pieces, budget)
            if text.tokens == 0:
                finish_reason = "length"
                break
            calls.append((function["name"], text.text))
            ids.append(f"call_{rng.getrandbits(88):022x}")
            arguments.append(text)
            if budget is not None:
                budget -= text.tokens
                if len(text.pieces) < len(pieces):
                    finish_reason = "length"
                    break
    else:
        # The content does not depend on thinking or tools, only on the conversation.
        reading = _reading(base, chinese, "content")
        content = _readable(reading, answer_tokens, budget)
        if content.tokens < _sentences(reading, answer_tokens).tokens:
            finish_reason = "length"
    return _answer_of(
        reasoning, content, arguments=arguments, calls=calls, ids=ids, finish_reason=finish_reason
    )


def _answer_of(
    reasoning: _Text,
    content: _Text,
    *,
    arguments: list[_Text],
    calls: list[tuple[str, str]],
    ids: list[str],
    finish_reason: str,
) -> EmulatedAnswer:
    pieces = reasoning.pieces + content.pieces
    for text in arguments:
        pieces += text.pieces
    return EmulatedAnswer(
        reasoning=reasoning.text,
        content=content.text,
        tool_calls=tuple(calls),
        tool_call_ids=tuple(ids),
        pieces=pieces,
        finish_reason=finish_reason,
        reasoning_tokens=reasoning.tokens,
        completion_tokens=reasoning.tokens
        + content.tokens
        + sum(text.tokens for text in arguments),
    )


def emulated_answer(
    body: Mapping[str, Any], *, seed: int = 0, answer_tokens: int = 40, choice: int = 0
) -> EmulatedAnswer:
    """The answer the emulator streams for ``body`` (a chat-completion request body), or
    for its choice number ``choice`` when the request asks for several (``n``).

    Pure and deterministic: the text depends only on ``model``, ``messages``, ``seed``,
    ``choice`` and the token bounds. It is readable sentences, in Chinese when the last
    user message has CJK characters, in English otherwise: whole sentences until they
    hold at least ``answer_tokens`` tokens (a sentence holds 9 to 24), with finish reason
    ``stop``.

    * ``max_tokens`` (or ``max_completion_tokens``) bounds every token of the answer,
      reasoning and tool-call arguments included, as ``completion_tokens`` counts them:
      the same text is cut at that many tokens (or one piece less, when the text cut
      there would re-encode otherwise) with finish reason ``length``, and
      ``completion_tokens`` never exceeds it.
    * ``enable_thinking: true`` adds reasoning before the content, as long as an answer
      (readable sentences of its own) but cut at ``thinking_budget`` tokens; the content
      itself does not change, but when ``max_tokens`` runs out during the reasoning there
      is none.
    * With ``tools``, a ``tool_choice`` naming a function, or a last user message that
      contains a function's name, makes the answer a call to it (all the named ones when
      ``parallel_tool_calls`` is true) with arguments built from its JSON schema, no
      content, and finish reason ``tool_calls``. ``tool_choice: "none"`` disables calls.
    * Partial mode (last message ``{"role": "assistant", "content": prefix, "partial":
      true}``): the answer to the conversation without that message, without tools or
      thinking, minus ``prefix`` when it starts with it, so a client resuming a broken
      stream with the text received so far gets exactly the rest (re-tokenized, and
      bounded by ``max_tokens`` again). Otherwise the continuation is a fresh text seeded
      by the whole conversation, prefix included.
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
            choice=choice,
        )
    prefix = text_of(messages[-1].get("content"))
    full = _fresh_answer(
        body,
        messages[:-1],
        seed=seed,
        answer_tokens=answer_tokens,
        thinking=False,
        with_tools=False,
        choice=choice,
    )
    if not full.content.startswith(prefix):
        return _fresh_answer(
            body,
            messages,
            seed=seed,
            answer_tokens=answer_tokens,
            thinking=False,
            with_tools=False,
            choice=choice,
        )
    pieces = _pieces_of(full.content[len(prefix) :], "content")
    rest = _text_of(pieces, max_tokens_of(body))
    finish_reason = full.finish_reason if len(rest.pieces) == len(pieces) else "length"
    return _answer_of(_NO_TEXT, rest, arguments=[], calls=[], ids=[], finish_reason=finish_reason)

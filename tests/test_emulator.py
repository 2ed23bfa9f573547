"""Tests of qwen_sse.emulator over real loopback sockets, read with a plain aiohttp session.

The emulator's streams are parsed with the core decoders (``SSEDecoder``,
``ChatStreamDecoder``), never with the client, so these tests pin the server alone.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import itertools
import json
import logging
import re
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDictProxy

import qwen_sse
from qwen_sse import protocols
from qwen_sse.chat import ChatResult, ChatStreamDecoder
from qwen_sse.chunks import ChatCompletionChunk, PromptTokensDetails
from qwen_sse.emulator import (
    DEFAULT_MODELS,
    FAULT_HEADER,
    MODERATION_TRIGGER,
    NATIVE_PATH,
    NATIVE_SSE_HEADER,
    EmulatedAnswer,
    Emulator,
    EmulatorConfig,
    Fault,
    Piece,
    corpus,
    emulated_answer,
)
from qwen_sse.emulator import loop as emulator_loop
from qwen_sse.emulator import server as server_module
from qwen_sse.emulator.faults import paced
from qwen_sse.emulator.loop import loop_name
from qwen_sse.emulator.records import RecordedRequest, redacted
from qwen_sse.errors import (
    EventTooLargeError,
    InBandError,
    IncompleteStreamError,
    ProtocolError,
)
from qwen_sse.sse import ServerSentEvent, SSEComment, SSEDecoder
from qwen_sse.tokens import (
    count_message_tokens,
    count_tokens,
    encode,
    message_token_count,
    token_bytes,
)

FAST = EmulatorConfig(ttft_s=0.0, itl_s=0.0)
KEY = "sk-test"
USER_EN = [{"role": "user", "content": "Tell me about streaming."}]
USER_ZH = [{"role": "user", "content": "请介绍一下流式输出。"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


def chat_body(messages: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "qwen-plus",
        "messages": USER_EN if messages is None else messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body.update(extra)
    return body


class Received(NamedTuple):
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    error: aiohttp.ClientError | None  # raised while reading the body, if any


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(FAST) as emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def post(
    session: aiohttp.ClientSession,
    emu: Emulator,
    body: Any,
    *,
    key: str | None = KEY,
    fault: Fault | None = None,
    headers: dict[str, str] | None = None,
    url: str | None = None,
) -> Received:
    sent = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if fault is not None:
        sent.update(fault.header())
    sent.update(headers or {})
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    data = bytearray()
    error: aiohttp.ClientError | None = None
    url = url or f"{emu.base_url}/chat/completions"
    async with session.post(url, data=payload, headers=sent) as resp:
        try:
            async for piece in resp.content.iter_any():
                data += piece
        except aiohttp.ClientError as exc:
            error = exc
    return Received(resp.status, resp.headers, bytes(data), error)


def chat_chunks(body: bytes) -> tuple[list[ChatCompletionChunk], ChatResult]:
    """Decode a whole stream; raises what the chat decoder raises."""
    decoder = ChatStreamDecoder()
    chunks = decoder.feed(body)
    decoder.feed_eof()
    return chunks, decoder.result()


def raw_frames(body: bytes) -> list[Any]:
    """The JSON of every data event (``"[DONE]"`` kept as the string)."""
    events = SSEDecoder().feed(body)
    return [event.data if event.data == "[DONE]" else json.loads(event.data) for event in events]


def normalized(body: bytes) -> bytes:
    """The body with its per-request parts (ids, timestamps) zeroed, lengths kept, so that
    a cut body compares with the same cut of another."""

    def zeros(match: re.Match[bytes]) -> bytes:
        return match[1] + b"0" * len(match[2])

    return re.sub(rb'("created":|chatcmpl-)([0-9a-f-]+)', zeros, body)


def texts(answer: EmulatedAnswer, kind: str) -> list[str]:
    return [piece.text for piece in answer.pieces if piece.kind == kind]


# --- emulated_answer, the pure part ---------------------------------------------------------


def test_emulated_answer_is_deterministic_and_depends_on_the_seed() -> None:
    body = chat_body()
    assert emulated_answer(body) == emulated_answer(dict(body))
    assert emulated_answer(body, seed=1).content != emulated_answer(body).content
    assert emulated_answer(body).content != emulated_answer(chat_body(USER_ZH)).content


def assert_pieces_are_tokens(text: str, pieces: list[Piece]) -> None:
    """``pieces`` are ``text``'s Qwen tokens in order: one each, or the fewest consecutive
    tokens that decode to whole characters, each piece saying how many it holds."""
    tokens = token_bytes(encode(text))
    assert sum(piece.tokens for piece in pieces) == len(tokens) == count_tokens(text)
    at = 0
    for piece in pieces:
        held = tokens[at : at + piece.tokens]
        at += piece.tokens
        assert b"".join(held).decode() == piece.text
        if piece.tokens > 1:  # merged only because the first token splits a character
            with pytest.raises(UnicodeDecodeError):
                held[0].decode()


def pieces_of(answer: EmulatedAnswer, kind: str, call_index: int = 0) -> list[Piece]:
    return [p for p in answer.pieces if p.kind == kind and p.call_index == call_index]


def whole_sentences(text: str, sentences: tuple[str, ...], joiner: str) -> tuple[int, str]:
    """How many corpus sentences ``text`` starts with, one after the other, and the rest."""
    count = 0
    while True:
        for sentence in sentences:
            if text.startswith(sentence + joiner) or text == sentence:
                text = text[len(sentence) + len(joiner) :]
                count += 1
                break
        else:
            return count, text


def test_emulated_answer_is_answer_tokens_tokens_one_piece_each() -> None:
    answer = emulated_answer(chat_body(), answer_tokens=25)
    assert all(piece.kind == "content" for piece in answer.pieces)
    assert "".join(texts(answer, "content")) == answer.content
    assert_pieces_are_tokens(answer.content, list(answer.pieces))
    # At least answer_tokens, to the end of the sentence: a sentence holds 9 to 24.
    assert 25 <= answer.completion_tokens == count_tokens(answer.content) < 25 + 24
    assert answer.content.endswith((".", "!", "?", "…", "🚀"))
    assert answer.reasoning_tokens == 0
    assert answer.finish_reason == "stop"
    assert answer.reasoning == ""
    assert answer.tool_calls == ()


@pytest.mark.parametrize(
    ("messages", "sentences", "joiner"),
    [(USER_EN, corpus.CONTENT_EN, " "), (USER_ZH, corpus.CONTENT_ZH, "")],
)
def test_answers_are_readable_sentences_of_the_corpus(
    messages: list[dict[str, Any]], sentences: tuple[str, ...], joiner: str
) -> None:
    for seed in range(5):
        answer = emulated_answer(chat_body(messages), seed=seed, answer_tokens=120)
        count, rest = whole_sentences(answer.content, sentences, joiner)
        assert count >= 5
        assert rest == ""
        # max_tokens cuts it inside a sentence.
        cut = emulated_answer(chat_body(messages, max_tokens=100), seed=seed, answer_tokens=120)
        count, rest = whole_sentences(cut.content, sentences, joiner)
        assert any(sentence.startswith(rest) for sentence in sentences)


def test_answers_carry_every_kind_of_unicode_a_client_must_handle() -> None:
    english = "".join(
        emulated_answer(chat_body(), seed=seed, answer_tokens=400).content for seed in range(8)
    )
    chinese = "".join(
        emulated_answer(chat_body(USER_ZH), seed=seed, answer_tokens=400).content
        for seed in range(8)
    )
    assert re.search(r"[A-Za-z]{3}", english)
    assert not re.search(r"[\u4e00-\u9fff]", english)
    assert len(re.findall(r"[\u4e00-\u9fff]", chinese)) > 1000
    for char in "éïüãçñ“”—…°½😊🚀.,;:!?":
        assert char in english, char
    for char in "，。！？、；：“”（）😊🚀龘":
        assert char in chinese, char
    # Characters split across tokens travel as one piece of several tokens.
    for body in (chat_body(), chat_body(USER_ZH)):
        merged = [
            piece
            for seed in range(8)
            for piece in emulated_answer(body, seed=seed, answer_tokens=400).pieces
            if piece.tokens > 1
        ]
        assert merged
        assert all(count_tokens(piece.text) == piece.tokens for piece in merged)


def test_a_character_split_across_tokens_is_one_piece_of_its_tokens() -> None:
    body = chat_body(USER_ZH)
    seed, answer = next(
        (seed, answer)
        for seed in range(100)
        if "龘" in (answer := emulated_answer(body, seed=seed, answer_tokens=400)).content
    )
    [dragon] = [piece for piece in answer.pieces if "龘" in piece.text]
    assert dragon.tokens == count_tokens(dragon.text) >= 2
    assert_pieces_are_tokens(answer.content, list(answer.pieces))
    # Cut just inside the character, max_tokens keeps the text before it: no piece is
    # ever part of a character, and the bound holds.
    before = answer.pieces[: answer.pieces.index(dragon)]
    limit = sum(piece.tokens for piece in before) + 1
    cut = emulated_answer({**body, "max_tokens": limit}, seed=seed, answer_tokens=400)
    assert cut.content == "".join(piece.text for piece in before)
    assert cut.completion_tokens == limit - 1 == count_tokens(cut.content)
    assert cut.finish_reason == "length"


def test_max_tokens_truncates_the_same_text_with_finish_reason_length() -> None:
    full = emulated_answer(chat_body())
    short = emulated_answer(chat_body(max_tokens=5))
    assert short.pieces == full.pieces[: len(short.pieces)]
    assert short.completion_tokens == count_tokens(short.content) == 5
    assert short.finish_reason == "length"
    assert emulated_answer(chat_body(max_completion_tokens=5)).pieces == short.pieces
    assert emulated_answer(chat_body(max_tokens=full.completion_tokens)) == full
    almost = emulated_answer(chat_body(max_tokens=full.completion_tokens - 1))
    assert almost.finish_reason == "length"
    assert almost.completion_tokens < full.completion_tokens


def test_max_tokens_6_is_6_tokens_not_9() -> None:
    # The issue's case: word pieces made 9 tokens of a 6-piece answer.
    for messages in (USER_EN, USER_ZH):
        for seed in range(10):
            answer = emulated_answer(chat_body(messages, max_tokens=6), seed=seed)
            assert answer.completion_tokens == count_tokens(answer.content) <= 6
            assert len(answer.pieces) <= 6


@settings(max_examples=150, deadline=None)
@given(
    max_tokens=st.integers(1, 90),
    answer_tokens=st.integers(1, 60),
    seed=st.integers(0, 2**32),
    chinese=st.booleans(),
    thinking=st.booleans(),
    tools=st.sampled_from(["none", "one", "parallel"]),
    thinking_budget=st.none() | st.integers(1, 50),
)
def test_completion_tokens_never_exceed_max_tokens(
    *,
    max_tokens: int,
    answer_tokens: int,
    seed: int,
    chinese: bool,
    thinking: bool,
    tools: str,
    thinking_budget: int | None,
) -> None:
    question = "请调用 get_weather 和 get_time" if chinese else "call get_weather and get_time"
    extra: dict[str, Any] = {"max_tokens": max_tokens, "enable_thinking": thinking}
    if thinking_budget is not None:
        extra["thinking_budget"] = thinking_budget
    if tools != "none":
        extra.update(tools=[WEATHER, TIME], parallel_tool_calls=tools == "parallel")
    body = chat_body([{"role": "user", "content": question}], **extra)
    answer = emulated_answer(body, seed=seed, answer_tokens=answer_tokens)
    unbounded = emulated_answer(
        {**body, "max_tokens": None}, seed=seed, answer_tokens=answer_tokens
    )
    # Reasoning, content and arguments all count, and never pass max_tokens.
    arguments = [arguments for _, arguments in answer.tool_calls]
    assert answer.completion_tokens == count_tokens(answer.reasoning) + count_tokens(
        answer.content
    ) + sum(count_tokens(each) for each in arguments)
    assert answer.completion_tokens <= max_tokens
    assert answer.reasoning_tokens == count_tokens(answer.reasoning)
    assert_pieces_are_tokens(answer.reasoning, pieces_of(answer, "reasoning_content"))
    assert_pieces_are_tokens(answer.content, pieces_of(answer, "content"))
    for index, each in enumerate(arguments):
        assert_pieces_are_tokens(each, pieces_of(answer, "arguments", index))
    # The same answer, cut: length when anything is missing, else the unbounded finish.
    assert answer.pieces == unbounded.pieces[: len(answer.pieces)]
    if answer.completion_tokens < unbounded.completion_tokens:
        assert answer.finish_reason == "length"
    else:
        assert answer == unbounded


def test_thinking_adds_reasoning_first_and_keeps_the_content() -> None:
    plain = emulated_answer(chat_body())
    thinking = emulated_answer(chat_body(enable_thinking=True))
    kinds = [piece.kind for piece in thinking.pieces]
    reasoning = pieces_of(thinking, "reasoning_content")
    assert kinds == ["reasoning_content"] * len(reasoning) + ["content"] * len(plain.pieces)
    assert thinking.reasoning_tokens == count_tokens(thinking.reasoning) >= 40
    assert_pieces_are_tokens(thinking.reasoning, reasoning)
    assert thinking.content == plain.content
    assert thinking.completion_tokens == thinking.reasoning_tokens + plain.completion_tokens
    budget = emulated_answer(chat_body(enable_thinking=True, thinking_budget=3))
    assert budget.reasoning_tokens == 3
    assert budget.content == plain.content
    assert budget.finish_reason == "stop"
    # max_tokens bounds reasoning and content together: reasoning first.
    spent = emulated_answer(chat_body(enable_thinking=True, max_tokens=30))
    assert (spent.reasoning_tokens, spent.content, spent.finish_reason) == (30, "", "length")
    assert thinking.reasoning.startswith(spent.reasoning)
    limit = thinking.reasoning_tokens + 10
    shared = emulated_answer(chat_body(enable_thinking=True, max_tokens=limit))
    assert shared.reasoning == thinking.reasoning
    assert shared.completion_tokens == limit
    assert plain.content.startswith(shared.content)
    assert shared.finish_reason == "length"


def test_reasoning_is_readable_too() -> None:
    for messages, sentences, joiner in (
        (USER_EN, corpus.REASONING_EN, " "),
        (USER_ZH, corpus.REASONING_ZH, ""),
    ):
        answer = emulated_answer(chat_body(messages, enable_thinking=True), answer_tokens=100)
        count, rest = whole_sentences(answer.reasoning, sentences, joiner)
        assert count >= 3
        assert any(sentence.startswith(rest) for sentence in sentences)


def test_tool_call_when_the_user_names_a_function() -> None:
    messages = [{"role": "user", "content": "Use get_weather for Hangzhou."}]
    answer = emulated_answer(chat_body(messages, tools=[WEATHER, TIME]))
    assert answer.finish_reason == "tool_calls"
    assert answer.content == ""
    [(name, arguments)] = answer.tool_calls
    assert name == "get_weather"
    parsed = json.loads(arguments)
    assert set(parsed) == {"city", "unit", "days"}
    assert parsed["unit"] in ("celsius", "fahrenheit")
    assert isinstance(parsed["days"], int)
    assert "".join(texts(answer, "arguments")) == arguments
    assert re.fullmatch(r"call_[0-9a-f]{22}", answer.tool_call_ids[0])


def test_tool_choice_parallel_none_and_tool_results() -> None:
    both = [{"role": "user", "content": "get_time and get_weather please"}]
    assert [n for n, _ in emulated_answer(chat_body(both, tools=[WEATHER, TIME])).tool_calls] == [
        "get_weather"
    ]
    parallel = emulated_answer(chat_body(both, tools=[WEATHER, TIME], parallel_tool_calls=True))
    assert [n for n, _ in parallel.tool_calls] == ["get_weather", "get_time"]
    assert {piece.call_index for piece in parallel.pieces} == {0, 1}
    named = {"type": "function", "function": {"name": "get_time"}}
    chosen = emulated_answer(chat_body(tools=[WEATHER, TIME], tool_choice=named))
    assert [n for n, _ in chosen.tool_calls] == ["get_time"]
    assert emulated_answer(chat_body(both, tools=[WEATHER], tool_choice="none")).tool_calls == ()
    after_tool: list[dict[str, Any]] = [
        *both,
        {"role": "assistant", "content": "", "tool_calls": []},
        {"role": "tool", "content": "sunny"},
    ]
    answered = emulated_answer(chat_body(after_tool, tools=[WEATHER]))
    assert answered.tool_calls == ()
    assert answered.finish_reason == "stop"


def test_partial_mode_continues_the_full_answer() -> None:
    full = emulated_answer(chat_body())
    for cut in (0, 1, 3, len(full.content) // 2, len(full.content)):
        prefix = full.content[:cut]
        resumed = chat_body([*USER_EN, {"role": "assistant", "content": prefix, "partial": True}])
        rest = emulated_answer(resumed)
        assert prefix + rest.content == full.content
        assert rest.finish_reason == full.finish_reason
        assert all(piece.text for piece in rest.pieces)


def test_partial_mode_with_a_foreign_prefix_is_still_deterministic() -> None:
    resumed = chat_body([*USER_EN, {"role": "assistant", "content": "Zzz", "partial": True}])
    rest = emulated_answer(resumed)
    assert rest.content
    assert rest == emulated_answer(resumed)
    assert not emulated_answer(chat_body()).content.startswith("Zzz")


def test_fault_json_round_trips_and_validates() -> None:
    fault = Fault(status=429, retry_after="2", drop_after_bytes=10, line_ending="\r")
    assert json.loads(fault.to_json()) == {
        "status": 429,
        "retry_after": "2",
        "drop_after_bytes": 10,
        "line_ending": "\r",
    }
    assert msgspec.json.decode(fault.to_json(), type=Fault) == fault
    assert Fault().to_json() == "{}"
    with pytest.raises(ValueError, match="status"):
        Fault(status=200)
    with pytest.raises(ValueError, match="write_bytes"):
        Fault(write_bytes=0)
    with pytest.raises(ValueError, match="drop_after_events"):
        Fault(drop_after_events=-1)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"stall": 1}', type=Fault)


# --- the plain stream -----------------------------------------------------------------------


async def test_plain_stream_matches_emulated_answer_chunk_by_chunk(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body()
    received = await post(session, emu, body)
    assert received.status == 200
    assert received.error is None
    assert received.headers["Content-Type"] == "text/event-stream;charset=utf-8"
    request_id = received.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", request_id)
    assert int(received.headers["req-cost-time"]) >= 0

    answer = emulated_answer(body)
    chunks, result = chat_chunks(received.body)
    assert result.complete
    assert result.content == answer.content
    assert result.finish_reason == "stop"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert [c.choices[0].delta.content for c in chunks[1:-2]] == texts(answer, "content")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-2].choices[0].delta.content == ""
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    prompt = count_message_tokens(body["messages"])
    completion = count_tokens(answer.content)
    assert (
        chunks[-1].usage.prompt_tokens,
        chunks[-1].usage.completion_tokens,
        chunks[-1].usage.total_tokens,
    ) == (prompt, completion, prompt + completion)
    assert {chunk.id for chunk in chunks} == {f"chatcmpl-{request_id}"}

    frames = raw_frames(received.body)
    assert frames[-1] == "[DONE]"
    for frame in frames[:-2]:
        assert frame["usage"] is None
        assert frame["system_fingerprint"] is None
        assert frame["object"] == "chat.completion.chunk"
        assert frame["model"] == "qwen-plus"
    assert frames[-2]["system_fingerprint"] is None
    assert received.body.endswith(b"data: [DONE]\n\n")

    [record] = emu.requests
    assert record.outcome == "completed"
    assert record.status == 200
    assert record.body == body
    assert record.events_sent == len(frames)
    assert record.bytes_sent == len(received.body)
    assert record.request_id == request_id
    assert emu.active_streams == 0


async def test_without_include_usage_there_is_no_usage_at_all(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body()
    del body["stream_options"]
    received = await post(session, emu, body)
    frames = raw_frames(received.body)
    assert frames[-1] == "[DONE]"
    assert all(frame["choices"] for frame in frames[:-1])
    assert all(frame["usage"] is None for frame in frames[:-1])
    assert chat_chunks(received.body)[1].usage is None


async def test_request_ids_are_unique_and_answers_repeat(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    first = await post(session, emu, chat_body())
    second = await post(session, emu, chat_body())
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert chat_chunks(first.body)[1].content == chat_chunks(second.body)[1].content
    assert normalized(first.body) == normalized(second.body)


async def test_seed_and_answer_tokens_of_the_config(session: aiohttp.ClientSession) -> None:
    config = EmulatorConfig(ttft_s=0, itl_s=0, seed=7, answer_tokens=12)
    async with Emulator(config) as emu:
        received = await post(session, emu, chat_body())
    expected = emulated_answer(chat_body(), seed=7, answer_tokens=12)
    assert chat_chunks(received.body)[1].content == expected.content
    assert expected.content != emulated_answer(chat_body()).content
    assert expected.completion_tokens >= 12


async def test_max_tokens_ends_with_length(emu: Emulator, session: aiohttp.ClientSession) -> None:
    received = await post(session, emu, chat_body(max_tokens=3))
    chunks, result = chat_chunks(received.body)
    assert result.finish_reason == "length"
    assert len(chunks) == 1 + 3 + 2
    assert result.content == emulated_answer(chat_body(max_tokens=3)).content


async def test_chinese_stream_round_trips_multibyte_text(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body(USER_ZH)
    received = await post(session, emu, body)
    answer = emulated_answer(body)
    assert chat_chunks(received.body)[1].content == answer.content
    # Non-ASCII travels as raw UTF-8, not as \u escapes: each piece's JSON string is in
    # the body byte for byte.
    assert not answer.content.isascii()
    assert b"\\u" not in received.body
    for piece in answer.pieces:
        assert b'"content":"' + piece.text.encode() + b'"' in received.body


# --- thinking and tool calls ------------------------------------------------------------------


async def test_thinking_stream_puts_reasoning_first(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body(enable_thinking=True)
    received = await post(session, emu, body)
    answer = emulated_answer(body)
    chunks, result = chat_chunks(received.body)
    assert result.reasoning_content == answer.reasoning
    assert result.content == answer.content
    reasoning = len(texts(answer, "reasoning_content"))
    deltas = [chunk.choices[0].delta for chunk in chunks[1 : 1 + reasoning]]
    assert [d.reasoning_content for d in deltas] == texts(answer, "reasoning_content")
    assert all(d.content is None for d in deltas)
    content = [chunk.choices[0].delta for chunk in chunks[1 + reasoning : -2]]
    assert [d.content for d in content] == texts(answer, "content")
    assert all(d.reasoning_content is None for d in content)
    frames = raw_frames(received.body)
    # The first content delta says reasoning_content null, later ones leave the key out.
    assert frames[1 + reasoning]["choices"][0]["delta"]["reasoning_content"] is None
    assert "reasoning_content" not in frames[2 + reasoning]["choices"][0]["delta"]
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == count_tokens(answer.reasoning)
    assert usage.completion_tokens == count_tokens(answer.reasoning) + count_tokens(answer.content)


async def test_tool_call_stream_has_dashscope_quirks_chunk_by_chunk(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    messages = [{"role": "user", "content": "What does get_weather say for 杭州?"}]
    body = chat_body(messages, tools=[WEATHER])
    received = await post(session, emu, body)
    answer = emulated_answer(body)
    [(name, arguments)] = answer.tool_calls
    fragments = texts(answer, "arguments")
    assert len(fragments) > 2

    frames = raw_frames(received.body)
    assert frames[0]["choices"][0]["delta"] == {"content": "", "role": "assistant"}
    calls = [frame["choices"][0] for frame in frames[1 : 1 + len(fragments)]]
    first = calls[0]["delta"]["tool_calls"][0]
    assert first == {
        "index": 0,
        "id": answer.tool_call_ids[0],
        "type": "function",
        "function": {"name": name, "arguments": fragments[0]},
    }
    assert calls[0]["finish_reason"] is None
    for choice, fragment in zip(calls[1:], fragments[1:], strict=True):
        assert choice["delta"]["tool_calls"] == [
            {"index": 0, "id": "", "type": "function", "function": {"arguments": fragment}}
        ]
        assert "finish_reason" not in choice
        assert "logprobs" not in choice
    empty = frames[1 + len(fragments)]["choices"][0]["delta"]["tool_calls"][0]
    assert empty == {"function": {}, "index": 0, "id": "", "type": "function"}
    finish = frames[2 + len(fragments)]["choices"][0]
    assert finish["finish_reason"] == "tool_calls"
    assert finish["delta"] == {"content": ""}
    assert frames[-2]["usage"]["completion_tokens"] == count_tokens(arguments)
    assert frames[-1] == "[DONE]"

    result = chat_chunks(received.body)[1]
    [call] = result.tool_calls
    assert (call.id, call.type, call.function.name) == (answer.tool_call_ids[0], "function", name)
    assert call.function.arguments == arguments
    assert json.loads(call.function.arguments)
    assert result.finish_reason == "tool_calls"


async def test_parallel_tool_calls_stream_by_index(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    messages = [{"role": "user", "content": "call get_weather and get_time"}]
    body = chat_body(messages, tools=[WEATHER, TIME], parallel_tool_calls=True)
    received = await post(session, emu, body)
    result = chat_chunks(received.body)[1]
    answer = emulated_answer(body)
    assert [(c.function.name, c.function.arguments) for c in result.tool_calls] == list(
        answer.tool_calls
    )
    assert [c.id for c in result.tool_calls] == list(answer.tool_call_ids)


# --- partial mode ---------------------------------------------------------------------------


async def test_partial_mode_resumes_a_broken_stream_exactly(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body(USER_ZH)
    full = emulated_answer(body).content
    broken = await post(session, emu, body, fault=Fault(drop_after_events=6))
    assert isinstance(broken.error, aiohttp.ClientPayloadError)
    with pytest.raises(IncompleteStreamError) as caught:
        chat_chunks(broken.body)
    assert caught.value.partial is not None
    prefix = caught.value.partial.content
    assert prefix
    assert full.startswith(prefix)

    partial = {"role": "assistant", "content": prefix, "partial": True}
    resumed = await post(session, emu, chat_body([*USER_ZH, partial]))
    rest = chat_chunks(resumed.body)[1]
    assert prefix + rest.content == full
    assert rest.finish_reason == "stop"
    assert emu.requests[-1].body["messages"][-1] == partial


# --- HTTP errors ------------------------------------------------------------------------------


def error_of(received: Received) -> dict[str, Any]:
    assert received.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = json.loads(received.body)
    assert set(body) == {"error", "request_id"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["request_id"] == received.headers["x-request-id"]
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize("key", ["sk-wrong", None, ""])
async def test_bad_or_missing_key_is_401(
    emu: Emulator, session: aiohttp.ClientSession, key: str | None
) -> None:
    received = await post(session, emu, chat_body(), key=key)
    assert received.status == 401
    assert error_of(received)["code"] == "invalid_api_key"
    assert emu.requests[0].outcome == "http_error"
    assert emu.requests[0].status == 401


async def test_api_key_none_accepts_any_bearer_key(session: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(api_key=None, ttft_s=0, itl_s=0)) as emu:
        accepted = await post(session, emu, chat_body(), key="sk-anything")
        missing = await post(session, emu, chat_body(), key=None)
    assert accepted.status == 200
    assert chat_chunks(accepted.body)[1].complete
    assert missing.status == 401


async def test_unknown_model_is_404(emu: Emulator, session: aiohttp.ClientSession) -> None:
    received = await post(session, emu, chat_body(model="qwen-nonexistent"))
    assert received.status == 404
    error = error_of(received)
    assert error["code"] == "model_not_found"
    assert "qwen-nonexistent" in error["message"]


async def test_every_default_model_is_known(emu: Emulator, session: aiohttp.ClientSession) -> None:
    for model in DEFAULT_MODELS:
        received = await post(session, emu, chat_body(model=model, stream=False))
        assert received.status == 200, model
        assert json.loads(received.body)["model"] == model


async def test_too_long_input_is_400_with_the_models_limit(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    text = "streaming tokens " * 16_000
    assert count_tokens(text) > 30_720
    received = await post(
        session, emu, chat_body([{"role": "user", "content": text}], model="qwen-max")
    )
    assert received.status == 400
    error = error_of(received)
    assert error["code"] == "invalid_parameter_error"
    assert "Range of input length should be [1, 30720]" in error["message"]
    fits = await post(session, emu, chat_body([{"role": "user", "content": text}]))
    assert fits.status == 200


async def test_max_tokens_over_the_models_output_limit_is_400(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    for value in (0, 8193, "10"):
        received = await post(session, emu, chat_body(model="qwen-max", max_tokens=value))
        assert received.status == 400
        assert "Range of max_tokens should be [1, 8192]" in error_of(received)["message"]
    assert (await post(session, emu, chat_body(model="qwen-max", max_tokens=8192))).status == 200


async def test_prompt_tokens_count_the_tools_block(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body(tools=[WEATHER], stream=False)
    completion = json.loads((await post(session, emu, body)).body)
    with_tools = message_token_count(body["messages"], [WEATHER]).tokens
    assert completion["usage"]["prompt_tokens"] == with_tools
    assert with_tools > count_message_tokens(body["messages"])


async def test_moderated_input_is_400_data_inspection_failed(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    messages = [{"role": "user", "content": f"please {MODERATION_TRIGGER} this"}]
    received = await post(session, emu, chat_body(messages))
    assert received.status == 400
    error = error_of(received)
    assert error["code"] == "data_inspection_failed"
    assert error["type"] == "data_inspection_failed"


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"[1, 2]",
        json.dumps({"model": "qwen-plus"}).encode(),
        json.dumps({"model": "qwen-plus", "messages": []}).encode(),
        json.dumps({"model": "qwen-plus", "messages": ["hi"]}).encode(),
        json.dumps({"model": "qwen-plus", "messages": [{"role": "user", "content": 5}]}).encode(),
        json.dumps({"messages": USER_EN}).encode(),
        json.dumps(chat_body(tools=[WEATHER], tool_choice="required")).encode(),
    ],
)
async def test_malformed_request_is_400(
    emu: Emulator, session: aiohttp.ClientSession, payload: bytes
) -> None:
    received = await post(session, emu, payload)
    assert received.status == 400
    assert error_of(received)["code"] == "invalid_parameter_error"


async def test_partial_mode_with_thinking_is_400(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    partial = {"role": "assistant", "content": "I", "partial": True}
    received = await post(session, emu, chat_body([*USER_EN, partial], enable_thinking=True))
    assert received.status == 400
    error = error_of(received)
    assert error["code"] == "invalid_parameter_error"
    assert "Partial mode" in error["message"]


RATE_LIMITED = "Requests rate limit exceeded, please try again later."


@pytest.mark.parametrize(
    ("fault", "code", "message"),
    [
        (Fault(status=429), "limit_requests", RATE_LIMITED),
        (
            Fault(status=429, code="insufficient_quota", message="TPM exceeded"),
            "insufficient_quota",
            "TPM exceeded",
        ),
        (Fault(status=429, code="CommodityNotPurchased"), "CommodityNotPurchased", None),
        (Fault(status=500), "internal_error", None),
        (Fault(status=503), "ServiceUnavailable", None),
        (Fault(status=403, code="Model.AccessDenied"), "Model.AccessDenied", None),
    ],
)
async def test_fault_status_answers_with_dashscope_error_body(
    emu: Emulator, session: aiohttp.ClientSession, fault: Fault, code: str, message: str | None
) -> None:
    received = await post(session, emu, chat_body(), fault=fault)
    assert received.status == fault.status
    error = error_of(received)
    assert error["code"] == code
    assert error["param"] is None
    assert error["message"]
    if message is not None:
        assert error["message"] == message
    assert "Retry-After" not in received.headers


async def test_fault_retry_after_headers(emu: Emulator, session: aiohttp.ClientSession) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    received = await post(
        session, emu, chat_body(), fault=Fault(status=429, retry_after="3", retry_after_ms="2500")
    )
    assert received.headers["Retry-After"] == "3"
    assert received.headers["retry-after-ms"] == "2500"
    dated = await post(session, emu, chat_body(), fault=Fault(status=503, retry_after=date))
    assert dated.status == 503
    assert dated.headers["Retry-After"] == date


async def test_invalid_fault_header_is_400(emu: Emulator, session: aiohttp.ClientSession) -> None:
    for header in ("{oops", '{"status": 200}', '{"nonsense": 1}'):
        received = await post(session, emu, chat_body(), headers={FAULT_HEADER: header})
        assert received.status == 400
        assert FAULT_HEADER in error_of(received)["message"]


# --- stream faults ----------------------------------------------------------------------------


async def test_drop_after_events_breaks_the_chunked_body(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    for count in (0, 1, 4):
        received = await post(session, emu, chat_body(), fault=Fault(drop_after_events=count))
        assert received.status == 200
        assert isinstance(received.error, aiohttp.ClientPayloadError)
        assert len(SSEDecoder().feed(received.body)) == count
        assert emu.requests[-1].outcome == "dropped"
        assert emu.requests[-1].events_sent == count
    assert emu.active_streams == 0


async def test_drop_after_bytes_sends_exactly_that_many_bytes(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body(USER_ZH)
    reference = normalized((await post(session, emu, body, fault=Fault(line_ending="\r\n"))).body)
    wide = next(char for char in emulated_answer(body).content if len(char.encode()) == 3)
    multibyte = reference.index(wide.encode()) + 1  # inside a three-byte character
    between_cr_lf = reference.index(b"\r\n") + 1
    first_event = reference.index(b"\r\n\r\n") + 4
    for limit in (0, 1, multibyte, between_cr_lf, first_event - 1, first_event, len(reference) - 3):
        fault = Fault(drop_after_bytes=limit, line_ending="\r\n")
        received = await post(session, emu, body, fault=fault)
        assert isinstance(received.error, aiohttp.ClientPayloadError), limit
        assert len(received.body) == limit
        assert normalized(received.body) == reference[:limit]
        assert emu.requests[-1].bytes_sent == limit
        assert emu.requests[-1].outcome == "dropped"


async def test_stall_with_keepalive_comments_then_normal_end(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    fault = Fault(stall_after_events=2, stall_s=0.25, keepalive_every_s=0.05)
    received = await post(session, emu, chat_body(), fault=fault)
    items = SSEDecoder().feed_with_comments(received.body)
    comments = [i for i, item in enumerate(items) if isinstance(item, SSEComment)]
    assert comments
    assert all(items[i] == SSEComment(" keep-alive") for i in comments)
    # The comments sit between the second and third events.
    assert comments[0] == 2
    assert comments == list(range(2, 2 + len(comments)))
    assert chat_chunks(received.body)[1].content == emulated_answer(chat_body()).content


async def test_stall_without_keepalive_sends_nothing_meanwhile(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    fault = Fault(stall_after_events=1, stall_s=0.05)
    received = await post(session, emu, chat_body(), fault=fault)
    assert not any(
        isinstance(i, SSEComment) for i in SSEDecoder().feed_with_comments(received.body)
    )
    assert chat_chunks(received.body)[1].complete


async def test_in_band_error_after_events_ends_without_done(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    received = await post(session, emu, chat_body(), fault=Fault(error_after_events=4))
    assert received.error is None  # a clean end of the body
    frames = raw_frames(received.body)
    assert len(frames) == 5
    assert "[DONE]" not in frames
    error_frame = frames[-1]
    assert error_frame["error"]["code"] == "data_inspection_failed"
    assert error_frame["error"]["type"] == "data_inspection_failed"
    assert error_frame["error"]["message"].startswith("Output data may contain inappropriate")
    assert error_frame["id"] == f"chatcmpl-{received.headers['x-request-id']}"
    with pytest.raises(InBandError) as caught:
        chat_chunks(received.body)
    assert caught.value.code == "data_inspection_failed"
    assert caught.value.partial is not None
    assert caught.value.partial.content == "".join(
        texts(emulated_answer(chat_body()), "content")[:3]
    )
    assert emu.requests[0].outcome == "in_band_error"


async def test_no_done_ends_cleanly_without_the_marker(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    received = await post(session, emu, chat_body(), fault=Fault(no_done=True))
    assert received.error is None
    assert b"[DONE]" not in received.body
    assert raw_frames(received.body)[-1]["usage"] is not None
    with pytest.raises(IncompleteStreamError) as caught:
        chat_chunks(received.body)
    assert caught.value.partial is not None
    assert caught.value.partial.content == emulated_answer(chat_body()).content
    assert emu.requests[0].outcome == "no_done"


async def test_malformed_frame_after_events(emu: Emulator, session: aiohttp.ClientSession) -> None:
    received = await post(session, emu, chat_body(), fault=Fault(malformed_after_events=3))
    events = SSEDecoder().feed(received.body)
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[3].data)
    assert events[-1].data == "[DONE]"
    assert len(events) == len(raw_frames((await post(session, emu, chat_body())).body)) + 1
    with pytest.raises(ProtocolError):
        chat_chunks(received.body)


@pytest.mark.parametrize("line_ending", ["\n", "\r\n", "\r"])
async def test_each_line_ending_decodes_to_the_same_answer(
    emu: Emulator, session: aiohttp.ClientSession, line_ending: str
) -> None:
    body = chat_body(enable_thinking=True)
    received = await post(session, emu, body, fault=Fault(line_ending=line_ending))  # type: ignore[arg-type]
    eol = line_ending.encode()
    assert received.body.endswith(b"data: [DONE]" + eol + eol)
    stripped = received.body.replace(eol, b"")
    assert b"\r" not in stripped
    assert b"\n" not in stripped
    result = chat_chunks(received.body)[1]
    answer = emulated_answer(body)
    assert (result.reasoning_content, result.content) == (answer.reasoning, answer.content)


async def test_one_byte_writes_give_the_same_stream(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body(USER_ZH)
    plain = await post(session, emu, body)
    bytewise = await post(session, emu, body, fault=Fault(write_bytes=1))
    assert normalized(bytewise.body) == normalized(plain.body)
    assert chat_chunks(bytewise.body)[1].content == emulated_answer(body).content
    assert emu.requests[-1].bytes_sent == len(bytewise.body)


async def test_huge_event_after_the_role_chunk(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    size = 300_000
    received = await post(session, emu, chat_body(), fault=Fault(huge_event_bytes=size))
    events = SSEDecoder().feed(received.body)
    assert len(events[1].data.encode()) == size
    assert all(len(e.data) < 10_000 for i, e in enumerate(events) if i != 1)
    chunk = msgspec.json.decode(events[1].data, type=ChatCompletionChunk)
    assert set(chunk.choices[0].delta.content or "") == {"x"}
    with pytest.raises(EventTooLargeError):
        SSEDecoder(max_event_bytes=64 * 1024).feed(received.body)


async def test_content_type_override(emu: Emulator, session: aiohttp.ClientSession) -> None:
    as_json = await post(session, emu, chat_body(), fault=Fault(content_type="application/json"))
    assert as_json.status == 200
    assert as_json.headers["Content-Type"] == "application/json"
    completion = json.loads(as_json.body)
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == emulated_answer(chat_body()).content
    as_text = await post(session, emu, chat_body(), fault=Fault(content_type="text/plain"))
    assert as_text.headers["Content-Type"] == "text/plain"
    assert chat_chunks(as_text.body)[1].complete


# --- where faults come from -------------------------------------------------------------------


async def test_fault_precedence_queue_then_header_then_server_default(
    session: aiohttp.ClientSession,
) -> None:
    config = EmulatorConfig(ttft_s=0, itl_s=0, fault=Fault(status=500))
    async with Emulator(config) as emu:
        assert (await post(session, emu, chat_body())).status == 500
        header = Fault(status=429)
        assert (await post(session, emu, chat_body(), fault=header)).status == 429
        emu.schedule(Fault(status=503), Fault(status=401))
        assert (await post(session, emu, chat_body(), fault=header)).status == 503
        assert (await post(session, emu, chat_body())).status == 401
        assert (await post(session, emu, chat_body(), fault=header)).status == 429
        assert (await post(session, emu, chat_body())).status == 500
        faults = [record.fault for record in emu.requests]
    assert faults == [
        Fault(status=500),
        header,
        Fault(status=503),
        Fault(status=401),
        header,
        Fault(status=500),
    ]


async def test_schedule_then_normal_service(emu: Emulator, session: aiohttp.ClientSession) -> None:
    emu.schedule(Fault(status=503), Fault(status=503))
    statuses = [(await post(session, emu, chat_body())).status for _ in range(3)]
    assert statuses == [503, 503, 200]


# --- what the emulator records ------------------------------------------------------------------


async def test_requests_record_headers_with_authorization_redacted(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    await post(session, emu, chat_body(), headers={"X-Custom": "kept"})
    [record] = emu.requests
    assert record.method == "POST"
    assert record.path == "/compatible-mode/v1/chat/completions"
    assert record.headers["authorization"] == "Bearer REDACTED"
    assert record.headers["X-Custom"] == "kept"
    assert KEY not in repr(record)
    assert all(KEY not in value for value in record.headers.values())


async def test_record_requests_off_keeps_nothing(session: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(ttft_s=0, itl_s=0, record_requests=False)) as emu:
        first = await post(session, emu, chat_body())
        second = await post(session, emu, chat_body())
    assert emu.requests == []
    assert first.status == second.status == 200
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


# --- non-streaming ------------------------------------------------------------------------------


async def test_non_streaming_completion(emu: Emulator, session: aiohttp.ClientSession) -> None:
    body = chat_body(enable_thinking=True, stream=False)
    received = await post(session, emu, body)
    assert received.status == 200
    completion = json.loads(received.body)
    answer = emulated_answer(body)
    assert completion["object"] == "chat.completion"
    assert completion["id"] == f"chatcmpl-{received.headers['x-request-id']}"
    [choice] = completion["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": answer.content,
        "reasoning_content": answer.reasoning,
    }
    assert choice["finish_reason"] == "stop"
    prompt = count_message_tokens(body["messages"])
    assert completion["usage"]["prompt_tokens"] == prompt
    assert completion["usage"]["total_tokens"] == prompt + completion["usage"]["completion_tokens"]


async def test_non_streaming_tool_call(emu: Emulator, session: aiohttp.ClientSession) -> None:
    messages = [{"role": "user", "content": "get_weather in Paris"}]
    body = chat_body(messages, tools=[WEATHER])
    del body["stream"]
    completion = json.loads((await post(session, emu, body)).body)
    answer = emulated_answer(body)
    [choice] = completion["choices"]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call == {
        "index": 0,
        "id": answer.tool_call_ids[0],
        "type": "function",
        "function": {"name": "get_weather", "arguments": answer.tool_calls[0][1]},
    }


# --- timing, disconnects, shutdown ----------------------------------------------------------------


async def test_timing_delays_are_at_least_the_configured_ones(
    session: aiohttp.ClientSession,
) -> None:
    config = EmulatorConfig(ttft_s=0.05, itl_s=0.01, jitter_s=0.005, answer_tokens=10)
    loop = asyncio.get_running_loop()
    async with Emulator(config) as emu:
        url = f"{emu.base_url}/chat/completions"
        headers = {"Authorization": f"Bearer {KEY}"}
        started = loop.time()
        async with session.post(url, json=chat_body(), headers=headers) as resp:
            headers_at = loop.time()
            decoder = SSEDecoder()
            arrivals: list[float] = []
            async for piece in resp.content.iter_any():
                arrivals += [loop.time()] * len(decoder.feed(piece))
    # No token is written before its time on the stream's schedule (the time to first
    # token, then a delay a token, each at least its configured value minus the jitter):
    # lower bounds that hold however loaded the machine is.
    assert arrivals[0] - started >= 0.05 - 0.005
    assert arrivals[-1] - started >= 0.05 - 0.005 + 9 * (0.01 - 0.005)
    assert headers_at <= arrivals[0]


@pytest.mark.parametrize("thinking", [False, True])
async def test_the_record_says_when_each_piece_was_really_written(
    session: aiohttp.ClientSession, thinking: bool
) -> None:
    config = EmulatorConfig(ttft_s=0.05, itl_s=0.01, jitter_s=0.005, answer_tokens=8)
    body = chat_body(enable_thinking=True) if thinking else chat_body()
    loop = asyncio.get_running_loop()
    async with Emulator(config) as emu:
        url = f"{emu.base_url}/chat/completions"
        started = loop.time()
        async with session.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}) as resp:
            headers_at = loop.time()
            decoder = SSEDecoder()
            arrivals: list[float] = []
            async for piece in resp.content.iter_any():
                arrivals += [loop.time()] * len(decoder.feed(piece))
        (record,) = emu.requests
    answer = emulated_answer(body, answer_tokens=8)
    assert [kind for kind, _ in record.written] == [piece.kind for piece in answer.pieces]
    written = [at for _, at in record.written]
    # One clock for the server and this client (they share the loop): the request arrived
    # after it was sent, and no piece arrived before it was written (events: the role
    # chunk, then one per piece). No piece is written before its last token's time on the
    # stream's schedule (the time to first token, then a delay a token, each at least its
    # configured value minus the jitter), so the lower bounds hold however loaded the
    # machine is.
    assert record.arrived_at_s is not None
    assert started <= record.arrived_at_s <= headers_at
    assert written[0] - record.arrived_at_s >= 0.05 - 0.005
    last_tokens = itertools.accumulate(piece.tokens for piece in answer.pieces)
    for at, tokens in zip(written, last_tokens, strict=True):
        assert at - record.arrived_at_s >= 0.05 - 0.005 + (tokens - 1) * (0.01 - 0.005)
    for number, at in enumerate(written, start=1):
        assert arrivals[number] >= at


def test_an_arrival_read_late_is_never_after_the_handler_started() -> None:
    # aiohttp hands the access logger "how long ago" the request was taken, read on its
    # clock; the logger subtracts it from its own "now". A process preempted between those
    # two reads (a busy host) would date the arrival after the handler's start, and a
    # token written on time would look early. Simulated here: "taken 0 s ago".
    emulator = Emulator(EmulatorConfig(record_requests=True))
    app = web.Application()
    app[server_module._EMULATOR] = emulator
    clock = server_module._ArrivalClock(logging.getLogger("test"), "")
    for handler_started_s, ago_s, expected_s in [
        (time.monotonic() - 1.0, 0.0, "handler"),
        (time.monotonic() - 1.0, 5.0, "taken"),
    ]:
        request = make_mocked_request("POST", "/compatible-mode/v1/chat/completions", app=app)
        record = RecordedRequest("POST", request.path, redacted(request.headers, ""))
        record.arrived_at_s = handler_started_s
        emulator._in_flight[id(request)] = record
        before_s = time.monotonic()
        clock.log(request, web.Response(), ago_s)
        assert record.arrived_at_s is not None
        if expected_s == "handler":
            assert record.arrived_at_s == handler_started_s
        else:
            assert before_s - ago_s <= record.arrived_at_s <= time.monotonic() - ago_s
        assert id(request) not in emulator._in_flight


async def test_a_native_stream_records_its_pieces_too(session: aiohttp.ClientSession) -> None:
    config = EmulatorConfig(ttft_s=0, itl_s=0, answer_tokens=5)
    async with Emulator(config) as emu:
        body = {"model": "qwen-plus", "input": {"messages": USER_EN}, "parameters": {}}
        headers = {"Authorization": f"Bearer {KEY}", "X-DashScope-SSE": "enable"}
        async with session.post(
            f"{emu.native_base_url}/services/aigc/text-generation/generation",
            json=body,
            headers=headers,
        ) as resp:
            await resp.read()
        (record,) = emu.requests
    answer = emulated_answer(chat_body(), answer_tokens=5)
    assert [kind for kind, _ in record.written] == [piece.kind for piece in answer.pieces]
    times = [at for _, at in record.written]
    assert times == sorted(times)
    assert record.arrived_at_s is not None
    assert record.arrived_at_s <= times[0]


async def test_client_disconnect_releases_the_stream(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    fault = Fault(stall_after_events=1, stall_s=60)
    url = f"{emu.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}", **fault.header()}
    async with session.post(url, json=chat_body(), headers=headers) as resp:
        decoder = SSEDecoder()
        events: list[ServerSentEvent] = []
        while not events:
            events += decoder.feed(await resp.content.readany())
        assert emu.active_streams == 1
        resp.close()
    for _ in range(500):
        if emu.active_streams == 0:
            break
        await asyncio.sleep(0.01)
    assert emu.active_streams == 0
    assert emu.requests[0].outcome == "client_disconnected"


@pytest.mark.timeout(30)
async def test_close_with_a_stream_in_flight_returns_promptly(
    session: aiohttp.ClientSession,
) -> None:
    emu = Emulator(
        EmulatorConfig(ttft_s=0, itl_s=0, fault=Fault(stall_after_events=1, stall_s=600))
    )
    await emu.start()
    url = f"{emu.base_url}/chat/completions"
    async with session.post(
        url, json=chat_body(), headers={"Authorization": f"Bearer {KEY}"}
    ) as resp:
        first = await resp.content.readany()
        assert first.startswith(b"data: ")
        # Far below the stall: close() must cancel the handler, not wait for it.
        await asyncio.wait_for(emu.close(), timeout=10)
        with pytest.raises(aiohttp.ClientPayloadError):
            while await resp.content.readany():
                pass
    assert emu.requests[0].outcome == "server_closed"
    assert emu.active_streams == 0
    await emu.close()  # idempotent


async def test_base_url_needs_a_started_emulator() -> None:
    emu = Emulator(FAST)
    with pytest.raises(RuntimeError):
        _ = emu.base_url
    async with emu:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/compatible-mode/v1", emu.base_url)
        assert emu.port > 0


def test_piece_is_a_plain_tuple() -> None:
    assert Piece("content", "hi") == ("content", "hi", 0, 1)


# --- the native protocol ------------------------------------------------------------------------

NATIVE_FIXTURE = Path(__file__).parent / "fixtures" / "native-plain.sse"
NATIVE_FRAME = re.compile(rb"id:(\d+)\nevent:(\w+)\n:HTTP_STATUS/(\d+)\ndata:([^\n]*)\n\n")
NATIVE_IN_BAND = b"Output data may contain inappropriate content."


def native_body(messages: list[dict[str, Any]] | None = None, **parameters: Any) -> dict[str, Any]:
    """A native body asking for the message format and incremental output (``parameters``
    add to or override those)."""
    return {
        "model": "qwen-plus",
        "input": {"messages": USER_EN if messages is None else messages},
        "parameters": {"result_format": "message", "incremental_output": True, **parameters},
    }


def compatible_of(body: dict[str, Any]) -> dict[str, Any]:
    """The compatible body whose answer a native body gets."""
    return {
        "model": body["model"],
        "messages": body["input"]["messages"],
        **body.get("parameters", {}),
    }


async def post_native(
    session: aiohttp.ClientSession,
    emu: Emulator,
    body: Any,
    *,
    stream: bool = True,
    key: str | None = KEY,
    fault: Fault | None = None,
) -> Received:
    headers = {NATIVE_SSE_HEADER: "enable"} if stream else {}
    url = emu.native_base_url + "/services/aigc/text-generation/generation"
    return await post(session, emu, body, key=key, fault=fault, headers=headers, url=url)


def native_frames(body: bytes) -> list[tuple[int, str, Any]]:
    """``(id, event, data JSON)`` of every frame of an LF native stream that is nothing but
    frames laid out as DashScope's, its status comment matching its event."""
    matches = list(NATIVE_FRAME.finditer(body))
    assert b"".join(match[0] for match in matches) == body
    for match in matches:
        assert (match[2], match[3]) in ((b"result", b"200"), (b"error", b"400"))
    return [(int(match[1]), match[2].decode(), json.loads(match[4])) for match in matches]


def native_result(body: bytes, *, incremental: bool = True) -> ChatResult:
    """Decode a whole native stream; raises what the native decoder raises."""
    request = {"parameters": {"incremental_output": incremental}}
    decoder = ChatStreamDecoder(protocol="native", request=request)
    decoder.feed(body)
    decoder.feed_eof()
    return decoder.result()


def native_normalized(body: bytes) -> bytes:
    return re.sub(rb'"request_id":"[0-9a-f-]+"', b'"request_id":""', body)


def shape(value: Any) -> Any:
    """The keys and value types of a JSON value, recursively."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def native_error_of(received: Received) -> dict[str, Any]:
    assert received.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = json.loads(received.body)
    assert set(body) == {"code", "message", "request_id"}
    assert body["request_id"] == received.headers["x-request-id"]
    return body


def prefixes(pieces: list[str]) -> list[str]:
    return list(itertools.accumulate(pieces))


async def test_native_stream_has_the_fixtures_frames_piece_by_piece(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    body = native_body()
    received = await post_native(session, emu, body)
    assert received.status == 200
    assert received.error is None
    assert received.headers["Content-Type"].startswith("text/event-stream")
    request_id = received.headers["x-request-id"]
    frames = native_frames(received.body)
    answer = emulated_answer(compatible_of(body))
    pieces = texts(answer, "content")

    fixture_shape = shape(native_frames(NATIVE_FIXTURE.read_bytes())[0][2])
    assert [(frame_id, event) for frame_id, event, _ in frames] == [
        (number, "result") for number in range(1, len(pieces) + 2)
    ]
    assert all(shape(data) == fixture_shape for _, _, data in frames)
    choices = [data["output"]["choices"][0] for _, _, data in frames]
    assert [choice["message"]["content"] for choice in choices[:-1]] == pieces
    assert [choice["finish_reason"] for choice in choices] == ["null"] * len(pieces) + ["stop"]
    assert choices[-1]["message"] == {"content": "", "role": "assistant"}
    assert {data["request_id"] for _, _, data in frames} == {request_id}
    prompt = count_message_tokens(USER_EN)
    for (_, _, data), text in zip(frames, [*prefixes(pieces), answer.content], strict=True):
        output = count_tokens(text)
        assert data["usage"] == {
            "total_tokens": prompt + output,
            "output_tokens": output,
            "input_tokens": prompt,
            "prompt_tokens_details": {"cached_tokens": 0},
        }
    assert b"[DONE]" not in received.body

    result = native_result(received.body)
    assert result.complete
    assert (result.content, result.finish_reason) == (answer.content, "stop")
    assert result.usage is not None
    assert result.usage.completion_tokens == count_tokens(answer.content)

    [record] = emu.requests
    assert record.path == NATIVE_PATH
    assert record.body == body
    assert record.headers[NATIVE_SSE_HEADER] == "enable"
    assert record.outcome == "completed"
    assert record.events_sent == len(frames)
    assert record.bytes_sent == len(received.body)
    assert record.request_id == request_id


async def test_native_answer_and_usage_equal_the_compatible_modes(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    for extra in ({}, {"enable_thinking": True}, {"max_tokens": 5}):
        native = native_result((await post_native(session, emu, native_body(**extra))).body)
        compatible = chat_chunks((await post(session, emu, chat_body(**extra))).body)[1]
        assert native.reasoning_content == compatible.reasoning_content
        assert native.content == compatible.content
        assert native.finish_reason == compatible.finish_reason
        assert native.usage is not None
        assert compatible.usage is not None
        # Native usage always has the context cache's details (0: no hit), compatible
        # mode's only on a hit.
        assert native.usage.prompt_tokens_details == PromptTokensDetails(cached_tokens=0)
        assert compatible.usage.prompt_tokens_details is None
        assert msgspec.structs.replace(native.usage, prompt_tokens_details=None) == compatible.usage


async def test_native_cumulative_output_repeats_the_text_so_far(
    session: aiohttp.ClientSession,
) -> None:
    # Long enough, and in Chinese, for the running token counts to be worth checking.
    async with Emulator(EmulatorConfig(ttft_s=0, itl_s=0, answer_tokens=150)) as emu:
        body = native_body(USER_ZH)
        del body["parameters"]["incremental_output"]  # DashScope's default: cumulative
        received = await post_native(session, emu, body)
    answer = emulated_answer(compatible_of(body), answer_tokens=150)
    datas = [data for _, _, data in native_frames(received.body)]
    so_far = [*prefixes(texts(answer, "content")), answer.content]
    assert [d["output"]["choices"][0]["message"]["content"] for d in datas] == so_far
    assert [d["usage"]["output_tokens"] for d in datas] == [count_tokens(t) for t in so_far]
    assert native_result(received.body, incremental=False).content == answer.content


@pytest.mark.parametrize("incremental", [False, True])
async def test_native_text_format(
    emu: Emulator, session: aiohttp.ClientSession, incremental: bool
) -> None:
    body: dict[str, Any] = {"model": "qwen-plus", "input": {"messages": USER_EN}}
    if incremental:
        body["parameters"] = {"incremental_output": True}  # the text format is the default
    received = await post_native(session, emu, body)
    answer = emulated_answer(compatible_of(body))
    pieces = texts(answer, "content")
    outputs = [data["output"] for _, _, data in native_frames(received.body)]
    expected = pieces if incremental else prefixes(pieces)
    assert outputs == [
        *({"finish_reason": "null", "text": text} for text in expected),
        {"finish_reason": "stop", "text": "" if incremental else answer.content},
    ]
    result = native_result(received.body, incremental=incremental)
    assert (result.content, result.finish_reason) == (answer.content, "stop")


@pytest.mark.parametrize("incremental", [True, False])
async def test_native_thinking_streams_reasoning_first(
    emu: Emulator, session: aiohttp.ClientSession, incremental: bool
) -> None:
    body = native_body(enable_thinking=True, incremental_output=incremental)
    received = await post_native(session, emu, body)
    answer = emulated_answer(compatible_of(body))
    reasoning = texts(answer, "reasoning_content")
    content = texts(answer, "content")
    datas = [data for _, _, data in native_frames(received.body)]
    messages = [d["output"]["choices"][0]["message"] for d in datas]
    if incremental:
        shown = [("", text) for text in reasoning] + [(text, "") for text in content] + [("", "")]
    else:
        shown = [("", text) for text in prefixes(reasoning)]
        shown += [(text, answer.reasoning) for text in prefixes(content)]
        shown += [(answer.content, answer.reasoning)]
    assert messages == [
        {"content": text, "reasoning_content": thought, "role": "assistant"}
        for text, thought in shown
    ]
    reasoning_so_far = [*prefixes(reasoning), *[answer.reasoning] * (len(content) + 1)]
    content_so_far = [""] * len(reasoning) + [*prefixes(content), answer.content]
    for data, thought, text in zip(datas, reasoning_so_far, content_so_far, strict=True):
        assert data["usage"]["output_tokens"] == count_tokens(thought) + count_tokens(text)
        assert data["usage"]["output_tokens_details"] == {"reasoning_tokens": count_tokens(thought)}
    result = native_result(received.body, incremental=incremental)
    assert (result.reasoning_content, result.content) == (answer.reasoning, answer.content)
    assert result.usage is not None
    assert result.usage.completion_tokens_details is not None
    assert result.usage.completion_tokens_details.reasoning_tokens == count_tokens(answer.reasoning)


async def test_native_tool_call_frames(emu: Emulator, session: aiohttp.ClientSession) -> None:
    body = native_body([{"role": "user", "content": "get_weather in Paris"}], tools=[WEATHER])
    received = await post_native(session, emu, body)
    answer = emulated_answer(compatible_of(body))
    datas = [data for _, _, data in native_frames(received.body)]
    messages = [d["output"]["choices"][0]["message"] for d in datas]
    calls = [message.pop("tool_calls") for message in messages[:-1]]
    assert all(message == {"content": "", "role": "assistant"} for message in messages)
    fragments = texts(answer, "arguments")
    assert calls[0] == [
        {
            "index": 0,
            "id": answer.tool_call_ids[0],
            "type": "function",
            "function": {"name": "get_weather", "arguments": fragments[0]},
        }
    ]
    assert [call for [call] in calls[1:]] == [
        {"index": 0, "id": "", "type": "function", "function": {"arguments": fragment}}
        for fragment in fragments[1:]
    ]
    assert datas[-1]["output"]["choices"][0]["finish_reason"] == "tool_calls"
    [call] = native_result(received.body).tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        answer.tool_call_ids[0],
        "get_weather",
        answer.tool_calls[0][1],
    )
    assert datas[-1]["usage"]["output_tokens"] == count_tokens(answer.tool_calls[0][1])


async def test_native_without_the_sse_header_answers_one_json(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    body = native_body(enable_thinking=True)
    received = await post_native(session, emu, body, stream=False)
    assert received.status == 200
    assert received.headers["Content-Type"] == "application/json"
    answer = emulated_answer(compatible_of(body))
    compatible = raw_frames((await post(session, emu, chat_body(enable_thinking=True))).body)
    usage = compatible[-2]["usage"]
    assert json.loads(received.body) == {
        "output": {
            "choices": [
                {
                    "finish_reason": "stop",
                    "message": {
                        "content": answer.content,
                        "reasoning_content": answer.reasoning,
                        "role": "assistant",
                    },
                }
            ]
        },
        "usage": {
            "total_tokens": usage["total_tokens"],
            "output_tokens": usage["completion_tokens"],
            "input_tokens": usage["prompt_tokens"],
            "prompt_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": usage["completion_tokens_details"],
        },
        "request_id": received.headers["x-request-id"],
    }
    text_body = {"model": "qwen-plus", "input": {"messages": USER_EN}}
    text = json.loads((await post_native(session, emu, text_body, stream=False)).body)
    assert text["output"] == {"finish_reason": "stop", "text": emulated_answer(chat_body()).content}


async def test_native_http_errors_have_native_bodies(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    wrong_key = await post_native(session, emu, native_body(), key="sk-wrong")
    assert wrong_key.status == 401
    assert native_error_of(wrong_key)["code"] == "InvalidApiKey"
    assert emu.requests[-1].outcome == "http_error"

    unknown = await post_native(session, emu, {**native_body(), "model": "qwen-nonexistent"})
    assert unknown.status == 404
    error = native_error_of(unknown)
    assert error["code"] == "ModelNotFound"
    assert "qwen-nonexistent" in error["message"]

    moderated = native_body([{"role": "user", "content": f"say {MODERATION_TRIGGER}"}])
    received = await post_native(session, emu, moderated)
    assert received.status == 400
    assert native_error_of(received)["code"] == "DataInspectionFailed"

    long_text = [{"role": "user", "content": "streaming tokens " * 16_000}]
    received = await post_native(session, emu, {**native_body(long_text), "model": "qwen-max"})
    assert received.status == 400
    error = native_error_of(received)
    assert error["code"] == "InvalidParameter"
    assert "Range of input length should be [1, 30720]" in error["message"]

    received = await post_native(session, emu, native_body(max_tokens=40_000))
    assert received.status == 400
    assert "Range of max_tokens should be [1, 32768]" in native_error_of(received)["message"]


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"[1, 2]",
        json.dumps({"model": "qwen-plus"}).encode(),
        json.dumps({"model": "qwen-plus", "input": "hi"}).encode(),
        json.dumps({"model": "qwen-plus", "input": {"messages": []}}).encode(),
        json.dumps({"input": {"messages": USER_EN}}).encode(),
        json.dumps({**native_body(), "parameters": "fast"}).encode(),
        json.dumps(native_body(result_format="json")).encode(),
        json.dumps(native_body(incremental_output="yes")).encode(),
        json.dumps(native_body(result_format="text", enable_thinking=True)).encode(),
        json.dumps(native_body(result_format="text", tools=[WEATHER])).encode(),
    ],
)
async def test_malformed_native_request_is_400(
    emu: Emulator, session: aiohttp.ClientSession, payload: bytes
) -> None:
    received = await post_native(session, emu, payload)
    assert received.status == 400
    assert native_error_of(received)["code"] == "InvalidParameter"


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault(status=429), "Throttling.RateQuota"),
        (Fault(status=429, code="insufficient_quota"), "Throttling.AllocationQuota"),
        (Fault(status=429, code="CommodityNotPurchased"), "CommodityNotPurchased"),
        (Fault(status=500), "InternalError"),
        (Fault(status=503), "ServiceUnavailable"),
        (Fault(status=403, code="Model.AccessDenied"), "Model.AccessDenied"),
    ],
)
async def test_native_fault_status_answers_with_native_codes(
    emu: Emulator, session: aiohttp.ClientSession, fault: Fault, code: str
) -> None:
    received = await post_native(session, emu, native_body(), fault=fault)
    assert received.status == fault.status
    error = native_error_of(received)
    assert error["code"] == code
    assert error["message"]


async def test_native_and_compatible_requests_share_the_rate_limits(
    session: aiohttp.ClientSession,
) -> None:
    async with Emulator(EmulatorConfig(ttft_s=0, itl_s=0, rpm=2)) as emu:
        statuses = [
            (await post_native(session, emu, native_body())).status,
            (await post(session, emu, chat_body())).status,
        ]
        refused = await post_native(session, emu, native_body())
    assert statuses == [200, 200]
    assert refused.status == 429
    assert native_error_of(refused)["code"] == "Throttling.RateQuota"

    answer = emulated_answer(chat_body())
    tokens = count_message_tokens(USER_EN) + count_tokens(answer.content)
    async with Emulator(EmulatorConfig(ttft_s=0, itl_s=0, tpm=tokens)) as emu:
        assert (await post_native(session, emu, native_body())).status == 200
        refused = await post_native(session, emu, native_body())
    assert refused.status == 429
    error = native_error_of(refused)
    assert error["code"] == "Throttling.AllocationQuota"
    assert error["message"].startswith("Allocated quota exceeded")


async def test_native_in_band_error_frame_then_the_end(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    received = await post_native(session, emu, native_body(), fault=Fault(error_after_events=3))
    assert received.error is None  # a clean end of the body
    frames = native_frames(received.body)
    assert [(frame_id, event) for frame_id, event, _ in frames] == [
        (1, "result"),
        (2, "result"),
        (3, "result"),
        (4, "error"),
    ]
    request_id = received.headers["x-request-id"].encode()
    assert received.body.endswith(
        b'id:4\nevent:error\n:HTTP_STATUS/400\ndata:{"code":"DataInspectionFailed","message":"'
        + NATIVE_IN_BAND
        + b'","request_id":"'
        + request_id
        + b'"}\n\n'
    )
    with pytest.raises(InBandError) as caught:
        native_result(received.body)
    assert caught.value.code == "DataInspectionFailed"
    assert caught.value.partial is not None
    answer = emulated_answer(compatible_of(native_body()))
    assert caught.value.partial.content == "".join(texts(answer, "content")[:3])
    assert emu.requests[0].outcome == "in_band_error"


async def test_native_no_done_ends_before_the_finishing_frame(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    received = await post_native(session, emu, native_body(), fault=Fault(no_done=True))
    assert received.error is None
    frames = native_frames(received.body)
    answer = emulated_answer(compatible_of(native_body()))
    assert len(frames) == len(answer.pieces)
    assert all(data["output"]["choices"][0]["finish_reason"] == "null" for _, _, data in frames)
    with pytest.raises(IncompleteStreamError) as caught:
        native_result(received.body)
    assert caught.value.partial is not None
    assert caught.value.partial.content == answer.content
    assert emu.requests[0].outcome == "no_done"


async def test_native_drops_and_stalls(emu: Emulator, session: aiohttp.ClientSession) -> None:
    dropped = await post_native(session, emu, native_body(), fault=Fault(drop_after_events=2))
    assert isinstance(dropped.error, aiohttp.ClientPayloadError)
    assert len(native_frames(dropped.body)) == 2
    assert emu.requests[-1].outcome == "dropped"

    cut = await post_native(session, emu, native_body(), fault=Fault(drop_after_bytes=100))
    assert isinstance(cut.error, aiohttp.ClientPayloadError)
    assert len(cut.body) == 100

    fault = Fault(stall_after_events=2, stall_s=0.06, keepalive_every_s=0.02)
    stalled = await post_native(session, emu, native_body(), fault=fault)
    items = SSEDecoder().feed_with_comments(stalled.body)
    labels = [item.text if isinstance(item, SSEComment) else "event" for item in items]
    assert labels[:4] == ["HTTP_STATUS/200", "event"] * 2
    keepalives = [i for i, label in enumerate(labels) if label == " keep-alive"]
    assert keepalives
    assert keepalives == list(range(4, 4 + len(keepalives)))
    assert native_result(stalled.body).content == emulated_answer(chat_body()).content


async def test_native_malformed_frame_keeps_the_ids_in_order(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    received = await post_native(session, emu, native_body(), fault=Fault(malformed_after_events=2))
    ids = [int(line[3:]) for line in received.body.split(b"\n") if line.startswith(b"id:")]
    assert ids == list(range(1, len(ids) + 1))
    events = SSEDecoder().feed(received.body)
    assert events[2].data == '{"output":{"choices":[{"message":{"content":"broken'
    assert events[2].event == "result"
    with pytest.raises(ProtocolError):
        native_result(received.body)


@pytest.mark.parametrize("line_ending", ["\r\n", "\r"])
async def test_native_line_endings_and_byte_writes_give_the_same_stream(
    emu: Emulator, session: aiohttp.ClientSession, line_ending: str
) -> None:
    body = native_body(USER_ZH, enable_thinking=True)
    plain = await post_native(session, emu, body)
    fault = Fault(line_ending=line_ending, write_bytes=3)  # type: ignore[arg-type]
    received = await post_native(session, emu, body, fault=fault)
    assert native_normalized(received.body.replace(line_ending.encode(), b"\n")) == (
        native_normalized(plain.body)
    )
    answer = emulated_answer(compatible_of(body))
    result = native_result(received.body)
    assert (result.reasoning_content, result.content) == (answer.reasoning, answer.content)


async def test_native_huge_frame_and_json_content_type(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    size = 200_000
    huge = await post_native(session, emu, native_body(), fault=Fault(huge_event_bytes=size))
    events = SSEDecoder().feed(huge.body)
    assert len(events[1].data.encode()) == size
    assert set(json.loads(events[1].data)["output"]["choices"][0]["message"]["content"]) == {"x"}
    with pytest.raises(EventTooLargeError):
        decoder = ChatStreamDecoder(protocol="native", max_event_bytes=64 * 1024)
        decoder.feed(huge.body)
        decoder.feed_eof()

    # DashScope sends native error frames under application/json too: the frames stay.
    fault = Fault(content_type="application/json", error_after_events=0)
    received = await post_native(session, emu, native_body(), fault=fault)
    assert received.headers["Content-Type"] == "application/json"
    [(frame_id, event, data)] = native_frames(received.body)
    assert (frame_id, event, data["code"]) == (1, "error", "DataInspectionFailed")


async def test_native_base_url(emu: Emulator) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/v1", emu.native_base_url)
    assert emu.native_base_url + "/services/aigc/text-generation/generation" == (
        emu.base_url.removesuffix("/compatible-mode/v1") + NATIVE_PATH
    )


async def test_base_url_for_takes_a_name_or_a_protocol(emu: Emulator) -> None:
    assert emu.base_url_for("compatible") == emu.base_url
    assert emu.base_url_for(protocols.get("native")) == emu.native_base_url
    assert emu.base_url_for("native-multimodal") == emu.native_base_url
    with pytest.raises(ValueError, match="does not serve protocol 'carrier-pigeon'"):
        emu.base_url_for("carrier-pigeon")


# --- the native multimodal protocol -------------------------------------------------------------

MULTIMODAL_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
USER_PARTS = [
    {
        "role": "user",
        "content": [{"image": "https://example.com/cat.png"}, {"text": "Tell me about streaming."}],
    }
]


async def post_multimodal(
    session: aiohttp.ClientSession, emu: Emulator, body: Any, *, stream: bool = True
) -> Received:
    headers = {NATIVE_SSE_HEADER: "enable"} if stream else {}
    url = emu.base_url_for("native-multimodal") + "/services/aigc/multimodal-generation/generation"
    return await post(session, emu, body, headers=headers, url=url)


def multimodal_result(body: bytes, *, incremental: bool = True) -> ChatResult:
    request = {"parameters": {"incremental_output": incremental}}
    decoder = ChatStreamDecoder(protocol="native-multimodal", request=request)
    decoder.feed(body)
    decoder.feed_eof()
    return decoder.result()


@pytest.mark.parametrize("incremental", [True, False])
async def test_multimodal_streams_content_as_parts(
    emu: Emulator, session: aiohttp.ClientSession, incremental: bool
) -> None:
    body = native_body(USER_PARTS, enable_thinking=True, incremental_output=incremental)
    received = await post_multimodal(session, emu, body)
    assert received.status == 200
    answer = emulated_answer(compatible_of(body))
    reasoning, content = texts(answer, "reasoning_content"), texts(answer, "content")
    messages = [
        data["output"]["choices"][0]["message"] for _, _, data in native_frames(received.body)
    ]
    if incremental:
        shown = [*([""] * len(reasoning)), *content, ""]
    else:
        shown = [*([""] * len(reasoning)), *prefixes(content), answer.content]
    assert [message["content"] for message in messages] == [
        [{"text": text}] if text else [] for text in shown
    ]
    assert all(isinstance(message["reasoning_content"], str) for message in messages)
    result = multimodal_result(received.body, incremental=incremental)
    assert result.complete
    assert (result.reasoning_content, result.content) == (answer.reasoning, answer.content)
    [record] = emu.requests
    assert record.path == MULTIMODAL_PATH


async def test_multimodal_answer_reads_the_text_parts_and_ignores_result_format(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    # The text format is the text protocol's default; the multimodal one answers messages.
    body = {"model": "qwen-plus", "input": {"messages": USER_PARTS}}
    received = await post_multimodal(session, emu, body)
    answer = emulated_answer(compatible_of(body))
    assert multimodal_result(received.body, incremental=False).content == answer.content
    # The image part counts for nothing, as the prompt count reads it.
    multimodal_usage = multimodal_result(received.body, incremental=False).usage
    assert multimodal_usage is not None
    assert multimodal_usage.prompt_tokens_details == PromptTokensDetails(cached_tokens=0)
    assert (
        msgspec.structs.replace(multimodal_usage, prompt_tokens_details=None)
        == chat_chunks((await post(session, emu, chat_body(USER_PARTS))).body)[1].usage
    )

    one = await post_multimodal(session, emu, body, stream=False)
    [choice] = json.loads(one.body)["output"]["choices"]
    assert choice["message"] == {"content": [{"text": answer.content}], "role": "assistant"}


async def test_multimodal_faults_and_errors_are_native(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    huge = Fault(huge_event_bytes=100_000)
    emu.schedule(huge, Fault(error_after_events=2), Fault(status=429))
    received = await post_multimodal(session, emu, native_body(USER_PARTS))
    events = SSEDecoder().feed(received.body)
    assert len(events[1].data.encode()) == 100_000
    [part] = json.loads(events[1].data)["output"]["choices"][0]["message"]["content"]
    assert set(part["text"]) == {"x"}

    cut = await post_multimodal(session, emu, native_body(USER_PARTS))
    frames = native_frames(cut.body)
    assert [event for _, event, _ in frames] == ["result", "result", "error"]
    assert frames[-1][2]["code"] == "DataInspectionFailed"
    with pytest.raises(InBandError):
        multimodal_result(cut.body)

    limited = await post_multimodal(session, emu, native_body(USER_PARTS))
    assert limited.status == 429
    assert native_error_of(limited)["code"] == "Throttling.RateQuota"


# --- the OpenAI Responses protocol --------------------------------------------------------------

RESPONSES_FRAME = re.compile(
    rb"id:(\d+)\nevent:([\w.]+)\n:HTTP_STATUS/(\d+)\ndata:([^\n]*)\n\n", re.ASCII
)


def flat(tool: dict[str, Any]) -> dict[str, Any]:
    """A Chat Completions tool in the Responses API's shape."""
    return {"type": "function", **tool["function"]}


WEATHER_FLAT = flat(WEATHER)
TIME_FLAT = flat(TIME)


def without_ids(value: Any) -> Any:
    """A JSON value with the parts that differ between two requests (ids, times) nulled."""
    if isinstance(value, dict):
        return {
            key: None if key in ("id", "item_id", "created_at") else without_ids(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [without_ids(item) for item in value]
    return value


def responses_body(text: str = "Tell me about streaming.", **extra: Any) -> dict[str, Any]:
    return {"model": "qwen-plus", "input": text, "stream": True, **extra}


async def post_responses(
    session: aiohttp.ClientSession, emu: Emulator, body: Any, **options: Any
) -> Received:
    url = emu.base_url_for("responses") + "/responses"
    return await post(session, emu, body, url=url, **options)


def responses_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``(event, data JSON)`` of every frame of an LF Responses stream that is nothing but
    DashScope-style frames, numbered from 1 (ids) and 0 (sequence numbers) without a gap."""
    matches = list(RESPONSES_FRAME.finditer(body))
    assert b"".join(match[0] for match in matches) == body
    events = []
    for number, match in enumerate(matches):
        data = json.loads(match[4])
        assert (int(match[1]), data["sequence_number"]) == (number + 1, number)
        assert data["type"] == match[2].decode()
        assert match[3] == (b"400" if data["type"] == "error" else b"200")
        events.append((data["type"], data))
    return events


def joined(events: list[tuple[str, dict[str, Any]]], kind: str) -> str:
    return "".join(data["delta"] for event, data in events if event == kind)


async def test_responses_stream_reasoning_then_text(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    body = responses_body(enable_thinking=True)
    received = await post_responses(session, emu, body)
    assert received.status == 200
    assert received.headers["Content-Type"].startswith("text/event-stream")
    events = responses_events(received.body)
    answer = emulated_answer(chat_body(enable_thinking=True))
    reasoning, content = texts(answer, "reasoning_content"), texts(answer, "content")
    item = ["response.output_item.added", "response.content_part.added"]
    done = ["response.content_part.done", "response.output_item.done"]
    assert [event for event, _ in events] == [
        "response.created",
        "response.in_progress",
        *item,
        *["response.reasoning_text.delta"] * len(reasoning),
        "response.reasoning_text.done",
        *done,
        *item,
        *["response.output_text.delta"] * len(content),
        "response.output_text.done",
        *done,
        "response.completed",
    ]
    assert joined(events, "response.reasoning_text.delta") == answer.reasoning
    assert joined(events, "response.output_text.delta") == answer.content
    response = events[-1][1]["response"]
    assert response["status"] == "completed"
    thought, message = response["output"]
    assert thought["content"] == [{"type": "reasoning_text", "text": answer.reasoning}]
    assert message["content"][0]["text"] == answer.content
    prompt = count_message_tokens(USER_EN)
    completion = count_tokens(answer.reasoning) + count_tokens(answer.content)
    assert response["usage"] == {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": count_tokens(answer.reasoning)},
        "total_tokens": prompt + completion,
    }
    [record] = emu.requests
    assert record.path == "/compatible-mode/v1/responses"
    assert [kind for kind, _ in record.written] == [piece.kind for piece in answer.pieces]


async def test_responses_input_items_read_as_the_chat_messages(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather"}
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "get_weather, Paris?"}]},
        {**call, "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ]
    body = {
        "model": "qwen-plus",
        "instructions": "Be brief.",
        "input": items,
        "tools": [WEATHER_FLAT],
    }
    received = await post_responses(session, emu, body)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "get_weather, Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    answer = emulated_answer({"model": "qwen-plus", "messages": messages, "tools": [WEATHER]})
    response = json.loads(received.body)  # no "stream": one response object
    assert response["object"] == "response"
    assert response["status"] == "completed"
    [message] = response["output"]  # after a tool result, the answer is text
    assert message["content"][0]["text"] == answer.content
    assert response["usage"]["input_tokens"] == message_token_count(messages, [WEATHER]).tokens


async def test_responses_tool_calls_are_function_call_items(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    text = "Use get_weather and get_time."
    body = responses_body(text, tools=[WEATHER_FLAT, TIME_FLAT], parallel_tool_calls=True)
    events = responses_events((await post_responses(session, emu, body)).body)
    chat = chat_body([{"role": "user", "content": text}], tools=[WEATHER, TIME])
    answer = emulated_answer({**chat, "parallel_tool_calls": True})
    assert len(answer.tool_calls) == 2
    done = [data["item"] for event, data in events if event == "response.output_item.done"]
    assert [(item["name"], item["arguments"]) for item in done] == list(answer.tool_calls)
    assert [item["call_id"] for item in done] == list(answer.tool_call_ids)
    for index, item in enumerate(done):
        deltas = [
            data["delta"]
            for event, data in events
            if event == "response.function_call_arguments.delta" and data["output_index"] == index
        ]
        assert "".join(deltas) == item["arguments"]
    assert "response.content_part.added" not in [event for event, _ in events]


async def test_responses_max_output_tokens_ends_incomplete(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    events = responses_events(
        (await post_responses(session, emu, responses_body(max_output_tokens=5))).body
    )
    answer = emulated_answer(chat_body(max_tokens=5))
    assert answer.finish_reason == "length"
    event, data = events[-1]
    assert event == "response.incomplete"
    assert data["response"]["status"] == "incomplete"
    assert data["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert data["response"]["output"][0]["status"] == "incomplete"
    assert joined(events, "response.output_text.delta") == answer.content


async def test_responses_errors_are_openai_shaped(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    unauthorized = await post_responses(session, emu, responses_body(), key="sk-wrong")
    assert unauthorized.status == 401
    assert json.loads(unauthorized.body)["error"]["code"] == "invalid_api_key"
    no_input = await post_responses(session, emu, {"model": "qwen-plus"})
    assert no_input.status == 400
    assert "input is required" in json.loads(no_input.body)["error"]["message"]
    limited = await post_responses(session, emu, responses_body(), fault=Fault(status=429))
    assert json.loads(limited.body)["error"]["code"] == "limit_requests"


async def test_responses_in_band_error_continues_the_numbering(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    fault = Fault(error_after_events=5, code="InternalError", message="boom")
    received = await post_responses(session, emu, responses_body(), fault=fault)
    events = responses_events(received.body)
    assert len(events) == 6
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "sequence_number": 5,
            "code": "InternalError",
            "message": "boom",
            "param": None,
        },
    )
    assert emu.requests[-1].outcome == "in_band_error"


async def test_responses_no_done_malformed_and_huge(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    whole = responses_events((await post_responses(session, emu, responses_body())).body)
    no_done = await post_responses(session, emu, responses_body(), fault=Fault(no_done=True))
    assert [event for event, _ in responses_events(no_done.body)] == [
        event for event, _ in whole[:-1]
    ]

    malformed = await post_responses(
        session, emu, responses_body(), fault=Fault(malformed_after_events=4)
    )
    events = SSEDecoder().feed(malformed.body)
    assert [event.id for event in events] == [str(n) for n in range(1, len(whole) + 2)]
    assert (
        events[4].data == '{"type":"response.output_text.delta","sequence_number":4,"delta":"broken'
    )

    huge = await post_responses(
        session, emu, responses_body(), fault=Fault(huge_event_bytes=70_000)
    )
    events = SSEDecoder().feed(huge.body)
    assert [event.event for event in events[3:6]] == [
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
    ]
    assert len(events[4].data.encode()) == 70_000
    assert set(json.loads(events[4].data)["delta"]) == {"x"}
    assert json.loads(events[4].data)["sequence_number"] == 4


@pytest.mark.parametrize("line_ending", ["\r\n", "\r"])
async def test_responses_line_endings_and_byte_writes_give_the_same_events(
    emu: Emulator, session: aiohttp.ClientSession, line_ending: str
) -> None:
    def normalized_events(body: bytes) -> list[tuple[str, str, Any]]:
        return [(e.id, e.event, without_ids(json.loads(e.data))) for e in SSEDecoder().feed(body)]

    plain = await post_responses(session, emu, responses_body())
    fault = Fault(line_ending=line_ending, write_bytes=7)  # type: ignore[arg-type]
    other = await post_responses(session, emu, responses_body(), fault=fault)
    assert normalized_events(plain.body) == normalized_events(other.body)
    assert line_ending.encode() * 2 in other.body


# --- the Anthropic Messages protocol ------------------------------------------------------------

ANTHROPIC_FRAME = re.compile(rb"event:(\w+)\ndata:([^\n]*)\n\n", re.ASCII)
WEATHER_TOOL = {
    "name": "get_weather",
    "description": WEATHER_FLAT["description"],
    "input_schema": WEATHER_FLAT["parameters"],
}


def anthropic_body(text: str = "Tell me about streaming.", **extra: Any) -> dict[str, Any]:
    return {
        "model": "qwen-plus",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": text}],
        "stream": True,
        **extra,
    }


async def post_anthropic(
    session: aiohttp.ClientSession, emu: Emulator, body: Any, **options: Any
) -> Received:
    url = emu.base_url_for("anthropic") + "/v1/messages"
    key = options.pop("key", KEY)
    headers = {"x-api-key": key} if key is not None else {}
    return await post(session, emu, body, url=url, key=None, headers=headers, **options)


def anthropic_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``(event, data JSON)`` of every event of an LF Messages stream that is nothing but
    DashScope-style events, each data's type its event's."""
    matches = list(ANTHROPIC_FRAME.finditer(body))
    assert b"".join(match[0] for match in matches) == body
    events = [(match[1].decode(), json.loads(match[2])) for match in matches]
    assert all(data["type"] == event for event, data in events)
    return events


def deltas_of(events: list[tuple[str, dict[str, Any]]], kind: str, field: str) -> str:
    return "".join(
        data["delta"][field]
        for event, data in events
        if event == "content_block_delta" and data["delta"]["type"] == kind
    )


async def test_anthropic_stream_thinking_then_text(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    body = anthropic_body(thinking={"type": "enabled", "budget_tokens": 1024})
    received = await post_anthropic(session, emu, body)
    assert received.status == 200
    events = anthropic_events(received.body)
    answer = emulated_answer(chat_body(enable_thinking=True))
    reasoning, content = texts(answer, "reasoning_content"), texts(answer, "content")
    assert [event for event, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * (len(reasoning) + 1),  # and the signature
        "content_block_stop",
        "content_block_start",
        *["content_block_delta"] * len(content),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert deltas_of(events, "thinking_delta", "thinking") == answer.reasoning
    assert deltas_of(events, "text_delta", "text") == answer.content
    assert deltas_of(events, "signature_delta", "signature")
    blocks = [
        data["content_block"]["type"] for event, data in events if event == "content_block_start"
    ]
    assert blocks == ["thinking", "text"]
    start, delta = events[0][1]["message"], events[-2][1]
    assert start["usage"] == {"input_tokens": count_message_tokens(USER_EN), "output_tokens": 0}
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    completion = count_tokens(answer.reasoning) + count_tokens(answer.content)
    assert delta["usage"] == {"output_tokens": completion}
    [record] = emu.requests
    assert record.path == "/apps/anthropic/v1/messages"
    assert record.headers["x-api-key"] == "REDACTED"


async def test_anthropic_tool_use_and_the_tool_loop(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    question = "What does get_weather say for Paris?"
    body = anthropic_body(question, tools=[WEATHER_TOOL])
    events = anthropic_events((await post_anthropic(session, emu, body)).body)
    answer = emulated_answer(chat_body([{"role": "user", "content": question}], tools=[WEATHER]))
    [(name, arguments)] = answer.tool_calls
    [block] = [data["content_block"] for event, data in events if event == "content_block_start"]
    assert block == {"type": "tool_use", "id": answer.tool_call_ids[0], "name": name, "input": {}}
    assert deltas_of(events, "input_json_delta", "partial_json") == arguments
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    use = {"type": "tool_use", "id": block["id"], "name": name, "input": json.loads(arguments)}
    result = {"type": "tool_result", "tool_use_id": block["id"], "content": "sunny"}
    body["messages"] += [
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result]},
    ]
    body["stream"] = False
    message = json.loads((await post_anthropic(session, emu, body)).body)
    assert message["stop_reason"] == "end_turn"
    assert [block["type"] for block in message["content"]] == ["text"]


async def test_anthropic_prefill_continues_as_partial_mode(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    whole = emulated_answer(chat_body())
    prefix = whole.content[:30]
    body = anthropic_body(stream=False)
    body["messages"].append({"role": "assistant", "content": prefix})
    message = json.loads((await post_anthropic(session, emu, body)).body)
    assert prefix + message["content"][0]["text"] == whole.content
    assert emu.requests[-1].body == body  # recorded as sent


async def test_anthropic_errors_are_anthropic_shaped(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    def error_of(received: Received) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(received.body)
        assert body["type"] == "error"
        assert body["request_id"] == received.headers["x-request-id"]
        return dict(body["error"])

    missing = await post_anthropic(session, emu, anthropic_body(), key=None)
    assert missing.status == 401
    assert error_of(missing)["type"] == "authentication_error"
    no_max = anthropic_body()
    del no_max["max_tokens"]
    refused = await post_anthropic(session, emu, no_max)
    assert refused.status == 400
    assert error_of(refused)["type"] == "invalid_request_error"
    limited = await post_anthropic(session, emu, anthropic_body(), fault=Fault(status=429))
    assert error_of(limited)["type"] == "rate_limit_error"
    overloaded = Fault(status=529, code="overloaded_error", message="Overloaded")
    busy = await post_anthropic(session, emu, anthropic_body(), fault=overloaded)
    assert (busy.status, error_of(busy)) == (
        529,
        {"type": "overloaded_error", "message": "Overloaded"},
    )
    # Claude Code's ANTHROPIC_AUTH_TOKEN sends the key as a bearer token.
    url = emu.base_url_for("anthropic") + "/v1/messages"
    assert (await post(session, emu, anthropic_body(), url=url)).status == 200


async def test_anthropic_faults(emu: Emulator, session: aiohttp.ClientSession) -> None:
    whole = anthropic_events((await post_anthropic(session, emu, anthropic_body())).body)
    cut = await post_anthropic(session, emu, anthropic_body(), fault=Fault(error_after_events=4))
    events = anthropic_events(cut.body)
    assert without_ids(events[:4]) == without_ids(whole[:4])
    assert events[4] == (
        "error",
        {
            "type": "error",
            "error": {"type": "data_inspection_failed", "message": NATIVE_IN_BAND.decode()},
        },
    )
    no_done = await post_anthropic(session, emu, anthropic_body(), fault=Fault(no_done=True))
    assert without_ids(anthropic_events(no_done.body)) == without_ids(whole[:-1])

    huge = await post_anthropic(
        session, emu, anthropic_body(), fault=Fault(huge_event_bytes=50_000)
    )
    sse_events = SSEDecoder().feed(huge.body)
    assert [event.event for event in sse_events[:4]] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
    ]
    assert len(sse_events[3].data.encode()) == 50_000
    assert set(json.loads(sse_events[3].data)["delta"]["text"]) == {"x"}

    dropped = await post_anthropic(session, emu, anthropic_body(), fault=Fault(drop_after_events=3))
    assert dropped.error is not None
    assert without_ids(anthropic_events(dropped.body)) == without_ids(whole[:3])


# --- every protocol ----------------------------------------------------------------------------


async def test_every_protocol_counts_against_the_same_limits(
    session: aiohttp.ClientSession,
) -> None:
    # The same conversation costs the same tokens in every protocol: three fit, not four.
    answer = emulated_answer(chat_body())
    tokens = count_message_tokens(USER_EN) + count_tokens(answer.content)
    config = EmulatorConfig(ttft_s=0, itl_s=0, rpm=4, tpm=3 * tokens)
    async with Emulator(config) as emu:
        statuses = [
            (await post(session, emu, chat_body())).status,
            (await post_responses(session, emu, responses_body())).status,
            (await post_anthropic(session, emu, anthropic_body())).status,
        ]
        refused = await post_anthropic(session, emu, anthropic_body())
    assert statuses == [200, 200, 200]
    assert refused.status == 429
    assert json.loads(refused.body)["error"]["type"] == "rate_limit_error"
    assert json.loads(refused.body)["error"]["message"].startswith("Allocated quota exceeded")


# --- tokens, choices and sampling ranges, in every protocol --------------------------------------


class Sent(NamedTuple):
    status: int
    body: bytes
    request: dict[str, Any]


async def post_protocol(
    session: aiohttp.ClientSession,
    emu: Emulator,
    name: str,
    params: dict[str, Any],
    messages: list[dict[str, Any]] | None = None,
) -> Sent:
    """A streaming request of protocol ``name``, as its client builds it."""
    protocol = protocols.PROTOCOLS[name]
    request = protocol.request_body(
        "qwen-plus", USER_EN if messages is None else messages, params, include_usage=True
    )
    url = emu.base_url_for(protocol) + protocol.path
    async with session.post(url, json=request, headers=protocol.headers(KEY)) as resp:
        return Sent(resp.status, await resp.read(), request)


@pytest.mark.parametrize("name", protocols.NAMES)
@pytest.mark.parametrize("messages", [USER_EN, USER_ZH])
async def test_every_protocol_streams_a_token_a_delta_within_max_tokens(
    emu: Emulator, session: aiohttp.ClientSession, name: str, messages: list[dict[str, Any]]
) -> None:
    # Six word pieces were nine tokens (the issue); six tokens are now six deltas at most.
    for params in ({"max_tokens": 6}, {"max_tokens": 30, "enable_thinking": True}):
        sent = await post_protocol(session, emu, name, params, messages)
        assert sent.status == 200, sent.body
        result = qwen_sse.decode(sent.body, name, request=sent.request)
        answer = emulated_answer(chat_body(messages, **params))
        assert (result.reasoning_content, result.content) == (answer.reasoning, answer.content)
        assert result.finish_reason == "length"
        assert result.usage is not None
        assert result.usage.completion_tokens == answer.completion_tokens <= params["max_tokens"]
        assert result.usage.completion_tokens == count_tokens(answer.reasoning) + count_tokens(
            answer.content
        )
        # One chunk of text per piece, and the pieces are the answer's tokens.
        assert len(result.timing.token_times_s) == len(answer.pieces)


@pytest.mark.parametrize("name", ["compatible", "native", "native-multimodal"])
async def test_n_streams_every_choice_with_its_own_finish_and_summed_usage(
    emu: Emulator, session: aiohttp.ClientSession, name: str
) -> None:
    cases: list[dict[str, Any]] = [
        {"n": 3},
        {"n": 2, "max_tokens": 7},
        {"n": 4, "enable_thinking": True},
        # Natively, cumulative frames repeat each choice's own text so far.
        {"n": 2, "enable_thinking": True, "incremental_output": False},
    ]
    for params in cases:
        sent = await post_protocol(session, emu, name, params)
        assert sent.status == 200, sent.body
        result = qwen_sse.decode(sent.body, name, request=sent.request)
        body = chat_body(**params)
        answers = [emulated_answer(body, choice=choice) for choice in range(params["n"])]
        assert answers[0] == emulated_answer(chat_body(**{**params, "n": 1}))
        assert len({answer.content for answer in answers}) == len(answers)
        assert [
            (choice.index, choice.content, choice.reasoning_content, choice.finish_reason)
            for choice in result.choices
        ] == [
            (index, answer.content, answer.reasoning, answer.finish_reason)
            for index, answer in enumerate(answers)
        ]
        assert result.usage is not None
        assert result.usage.prompt_tokens == count_message_tokens(USER_EN)
        assert result.usage.completion_tokens == sum(a.completion_tokens for a in answers)


async def test_n_choices_stream_side_by_side_each_ending_after_its_last_piece(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body(n=2, max_tokens=3)
    received = await post(session, emu, body)
    frames = raw_frames(received.body)
    choices = [frame["choices"][0] for frame in frames[:-2]]
    # Role chunks first, then a piece of each choice per token, choice 0 first.
    assert [(c["index"], c["delta"].get("role")) for c in choices[:2]] == [
        (0, "assistant"),
        (1, "assistant"),
    ]
    first, second = (emulated_answer(body, choice=choice) for choice in (0, 1))
    pieces = [
        (c["index"], c["delta"]["content"]) for c in choices[2:] if c["finish_reason"] is None
    ]
    assert sorted(pieces) == sorted(
        [(0, p.text) for p in first.pieces] + [(1, p.text) for p in second.pieces]
    )
    assert [index for index, _ in pieces[:2]] == [0, 1]
    finishes = [(c["index"], c["finish_reason"]) for c in choices if c["finish_reason"]]
    assert finishes == [(0, "length"), (1, "length")]
    assert frames[-2]["usage"]["completion_tokens"] == 6
    # Non-streaming: every choice in one body.
    completion = json.loads((await post(session, emu, {**body, "stream": False})).body)
    assert [c["message"]["content"] for c in completion["choices"]] == [
        first.content,
        second.content,
    ]
    assert [c["index"] for c in completion["choices"]] == [0, 1]


@pytest.mark.parametrize(
    ("name", "n"), [("responses", 3), ("anthropic", 3), ("compatible", 1), ("native", 1)]
)
async def test_protocols_without_n_answer_one_choice(
    emu: Emulator, session: aiohttp.ClientSession, name: str, n: int
) -> None:
    # The Responses and Messages APIs have no n: the field is ignored, as those APIs do.
    sent = await post_protocol(session, emu, name, {"n": n})
    assert sent.status == 200
    result = qwen_sse.decode(sent.body, name)
    assert len(result.choices) == 1
    assert result.content == emulated_answer(chat_body()).content


@pytest.mark.parametrize("name", protocols.NAMES)
async def test_sampling_values_outside_dashscopes_ranges_are_400_in_every_protocol(
    emu: Emulator, session: aiohttp.ClientSession, name: str
) -> None:
    refused = [
        ("temperature", 2, "Range of temperature should be [0.0, 2.0)"),
        ("temperature", 5, "Range of temperature should be [0.0, 2.0)"),
        ("temperature", -0.1, "Range of temperature should be [0.0, 2.0)"),
        ("temperature", "1", "Range of temperature should be [0.0, 2.0)"),
        ("top_p", 0, "Range of top_p should be (0.0, 1.0]"),
        ("top_p", 1.5, "Range of top_p should be (0.0, 1.0]"),
    ]
    if name in ("compatible", "native", "native-multimodal"):
        refused += [
            ("n", 5, "Range of n should be [1, 4]"),
            ("n", 0, "Range of n should be [1, 4]"),
        ]
    protocol = protocols.PROTOCOLS[name]
    for field, value, message in refused:
        sent = await post_protocol(session, emu, name, {field: value})
        assert sent.status == 400, (field, value)
        error = protocol.error_fields(sent.body)
        assert error.message == f"<400> InternalError.Algo.InvalidParameter: {message}"
        assert error.code in (
            "invalid_parameter_error",
            "InvalidParameter",
            "invalid_request_error",
        )
    for field, value in (("temperature", 0), ("temperature", 1.99), ("top_p", 1), ("top_p", 0.01)):
        sent = await post_protocol(session, emu, name, {field: value})
        assert sent.status == 200, (field, value, sent.body)


async def test_a_native_text_format_request_cannot_ask_for_n(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    received = await post_native(session, emu, native_body(result_format="text", n=2))
    assert received.status == 400
    assert native_error_of(received)["code"] == "InvalidParameter"


def test_a_piece_of_several_tokens_comes_that_many_delays_after_the_last() -> None:
    answers = (
        emulated_answer(chat_body(USER_ZH), seed=seed, answer_tokens=200) for seed in range(100)
    )
    answer = next(answer for answer in answers if any(p.tokens > 1 for p in answer.pieces))
    order = list(paced((answer,)))
    assert [piece for _, _, piece in order] == list(answer.pieces)
    # One delay a token: a piece waits for each of its tokens but the first piece's first,
    # which the time to first token covered.
    expected = [piece.tokens for piece in answer.pieces]
    expected[0] -= 1
    assert [wait for wait, _, _ in order] == expected
    assert sum(wait for wait, _, _ in order) == answer.completion_tokens - 1


def test_choices_advance_together_a_token_at_a_time() -> None:
    body = chat_body(USER_ZH)
    answers = tuple(emulated_answer(body, choice=choice, answer_tokens=200) for choice in range(3))
    order = list(paced(answers))
    for choice, answer in enumerate(answers):
        assert [piece for _, index, piece in order if index == choice] == list(answer.pieces)
    # Waits cover the longest choice's tokens: the choices are generated side by side.
    waits = [wait for wait, _, _ in order]
    assert sum(waits) == max(answer.completion_tokens for answer in answers) - 1
    assert [(index, piece) for _, index, piece in order[:3]] == [
        (choice, answers[choice].pieces[0]) for choice in range(3)
    ]
    assert waits[:3] == [0, 0, 0]


# --- the listening socket and the event loop ---------------------------------------------------


def _somaxconn() -> int:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return 0


BURST = 300


@pytest.mark.skipif(_somaxconn() < BURST, reason="the kernel caps every listen backlog lower")
async def test_the_default_backlog_queues_a_burst_of_connections_not_yet_accepted() -> None:
    # aiohttp's default backlog (128) lets the kernel complete 129 handshakes and drop
    # the rest, which their clients retry a second or more later. The emulator's queue
    # holds the whole burst. This code never yields to the event loop the emulator runs
    # on, so nothing is accepted while the connections are made: only the queue holds them.
    assert EmulatorConfig().backlog >= BURST
    async with Emulator(FAST) as emu:
        chosen = selectors.DefaultSelector()
        sockets = [socket.socket() for _ in range(BURST)]
        try:
            for sock in sockets:
                sock.setblocking(False)
                assert sock.connect_ex(("127.0.0.1", emu.port)) in (0, errno.EINPROGRESS)
                chosen.register(sock, selectors.EVENT_WRITE)
            connected = 0
            deadline = time.monotonic() + 60
            while connected < BURST and time.monotonic() < deadline:
                for key, _ in chosen.select(timeout=1.0):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    assert ready.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                    chosen.unregister(ready)
                    connected += 1
            assert connected == BURST
        finally:
            chosen.close()
            for sock in sockets:
                sock.close()


def test_the_backlog_must_be_positive() -> None:
    with pytest.raises(ValueError, match="backlog must be at least 1"):
        EmulatorConfig(backlog=0)


def test_a_serving_process_collects_garbage_rarely() -> None:
    # In a process of its own: the collector's settings are the whole process's.
    code = (
        "import gc, json\n"
        "from qwen_sse.emulator.loop import collect_rarely\n"
        "before = gc.get_threshold()\n"
        "collect_rarely()\n"
        "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    before, after, frozen = json.loads(completed.stdout)
    assert after == list(emulator_loop.SERVING_GC_THRESHOLDS)
    assert after[0] > before[0]
    # What the process had at start-up is out of every collection.
    assert frozen > 1000


def test_the_emulators_processes_run_on_uvloop_when_it_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def running() -> tuple[str, type[asyncio.AbstractEventLoop]]:
        loop = asyncio.get_running_loop()
        return loop_name(loop), type(loop)

    if importlib.util.find_spec("uvloop") is not None:
        name, kind = emulator_loop.run(running())
        assert name == "uvloop"
        assert kind.__module__.startswith("uvloop")
    # Without it, asyncio's own loop.
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    name, kind = emulator_loop.run(running())
    assert name == "asyncio"
    assert kind.__module__.startswith("asyncio")

"""Tests of qwen_sse.client over real loopback sockets against the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import random
import socket
import traceback
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_sse.chat import ChatStreamDecoder
from qwen_sse.chunks import ChatCompletionChunk, PromptTokensDetails
from qwen_sse.client import QwenClient
from qwen_sse.config import Timeouts
from qwen_sse.emulator import NATIVE_PATH, Emulator, EmulatorConfig, Fault, emulated_answer
from qwen_sse.errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConnectTimeoutError,
    ContentFilterError,
    ContextLengthError,
    EventTooLargeError,
    FirstTokenTimeoutError,
    IdleTimeoutError,
    InBandError,
    IncompleteStreamError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    QwenSSEError,
    RateLimitError,
    RedirectError,
    ServerError,
    StreamInterruptedError,
    StreamLimitError,
    TotalTimeoutError,
    TransportError,
)
from qwen_sse.limiter import ConcurrencyLimiter
from qwen_sse.retry import NO_RETRIES, RetryPolicy
from tests.fakesleep import FakeSleep
from tests.rawserver import frame, held_answer, http_response, raw_server, sse_answer, sse_body

KEY = "sk-test"
SECRET_KEY = "sk-test-not-a-real-key-0123456789"
HELLO = [{"role": "user", "content": "你好，介绍一下你自己"}]
ENGLISH = [{"role": "user", "content": "Tell me about streaming parsers"}]


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(api_key=KEY, ttft_s=0.0, itl_s=0.0)) as server:
        yield server


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[QwenClient]:
    async with QwenClient(KEY, emulator.base_url, retry=NO_RETRIES) as qwen:
        yield qwen


def plain_client(server: Emulator) -> QwenClient:
    """A client of ``server`` that never retries, so each fault shows as it is."""
    return QwenClient(KEY, server.base_url, retry=NO_RETRIES)


def native_client(server: Emulator, api_key: str = KEY) -> QwenClient:
    """A native-protocol client of ``server`` that never retries."""
    return QwenClient(api_key, server.native_base_url, protocol="native", retry=NO_RETRIES)


def expected(messages: list[dict[str, Any]], **params: Any) -> Any:
    body = {"model": "qwen-plus", "messages": messages, **params}
    return emulated_answer(body, answer_tokens=EmulatorConfig().answer_tokens)


async def collect(stream: Any) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in stream]


async def settle(emulator: Emulator) -> None:
    """Wait (bounded) until the emulator has seen every stream end."""
    for _ in range(200):
        if emulator.active_streams == 0:
            return
        await asyncio.sleep(0.01)


# --- the happy path ---


async def test_stream_chat_yields_typed_chunks_and_a_complete_result(
    client: QwenClient, emulator: Emulator
) -> None:
    async with client.stream_chat(HELLO) as stream:
        chunks = await collect(stream)
    answer = expected(HELLO)
    contents = [c.choices[0].delta.content for c in chunks if c.choices]
    assert contents[0] == ""  # the role-only first chunk
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c or "" for c in contents) == answer.content
    assert [p.text for p in answer.pieces] == [c for c in contents if c]
    assert chunks[-1].choices == []
    result = stream.result
    assert result.complete
    assert result.content == answer.content
    assert result.finish_reason == "stop"
    assert result.usage is not None
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    (request,) = emulator.requests
    assert result.request_id == request.request_id
    assert result.id == f"chatcmpl-{request.request_id}"
    assert result.timing.ttft_s is not None
    assert result.timing.events == len(chunks) + 1  # and [DONE]
    assert result.timing.bytes_received == request.bytes_sent


async def test_chat_returns_the_result_and_sends_params_at_top_level(
    client: QwenClient, emulator: Emulator
) -> None:
    result = await client.chat(ENGLISH, "qwen-max", enable_search=True, top_k=5, seed=7)
    assert result.content == emulated_answer({"model": "qwen-max", "messages": ENGLISH}).content
    body = emulator.requests[-1].body
    assert body["model"] == "qwen-max"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["enable_search"], body["top_k"], body["seed"]) == (True, 5, 7)
    headers = emulator.requests[-1].headers
    assert headers["Accept"] == "text/event-stream"
    assert headers["Authorization"] == "Bearer REDACTED"


async def test_without_include_usage_there_is_no_usage(emulator: Emulator) -> None:
    async with QwenClient(KEY, emulator.base_url, include_usage=False, retry=NO_RETRIES) as qwen:
        result = await qwen.chat(HELLO)
    assert "stream_options" not in emulator.requests[-1].body
    assert result.usage is None
    assert result.complete


async def test_thinking_stream_chunk_by_chunk(client: QwenClient) -> None:
    async with client.stream_chat(HELLO, enable_thinking=True) as stream:
        chunks = await collect(stream)
    answer = expected(HELLO, enable_thinking=True)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = [d.reasoning_content for d in deltas if d.reasoning_content]
    content = [d.content for d in deltas if d.content]
    assert reasoning == [p.text for p in answer.pieces if p.kind == "reasoning_content"]
    assert content == [p.text for p in answer.pieces if p.kind == "content"]
    first_content = next(i for i, d in enumerate(deltas) if d.content)
    assert all(not d.reasoning_content for d in deltas[first_content:])
    assert stream.result.reasoning_content == answer.reasoning
    assert stream.result.content == answer.content
    usage = stream.result.usage
    assert usage is not None
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


async def test_tool_call_stream_chunk_by_chunk(client: QwenClient) -> None:
    messages = [{"role": "user", "content": "Use get_weather for Hangzhou"}]
    async with client.stream_chat(messages, tools=[WEATHER_TOOL]) as stream:
        chunks = await collect(stream)
    answer = expected(messages, tools=[WEATHER_TOOL])
    calls = [
        call
        for chunk in chunks
        for choice in chunk.choices
        for call in choice.delta.tool_calls or []
    ]
    assert calls[0].id == answer.tool_call_ids[0]
    assert calls[0].function is not None
    assert calls[0].function.name == "get_weather"
    assert all(call.id == "" for call in calls[1:])  # DashScope's continuation quirk
    result = stream.result
    assert result.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in result.tool_calls] == list(
        answer.tool_calls
    )
    assert [c.id for c in result.tool_calls] == list(answer.tool_call_ids)


# --- HTTP errors ---


async def test_wrong_key_is_an_authentication_error(emulator: Emulator) -> None:
    async with QwenClient(SECRET_KEY, emulator.base_url, retry=NO_RETRIES) as qwen:
        with pytest.raises(AuthenticationError) as caught:
            await qwen.chat(HELLO)
    error = caught.value
    assert error.status == 401
    assert error.code == "invalid_api_key"
    assert error.request_id == emulator.requests[-1].request_id
    assert_key_absent(error, SECRET_KEY)


async def test_unknown_model_is_not_found(client: QwenClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        await client.chat(HELLO, "qwen-nonexistent")
    assert caught.value.code == "model_not_found"
    assert f"(POST {client.base_url}/chat/completions; request id " in str(caught.value)


async def test_a_wrong_path_names_the_url_tried(emulator: Emulator) -> None:
    wrong = emulator.base_url.replace("/compatible-mode/v1", "/v1")
    async with QwenClient(KEY, wrong, retry=NO_RETRIES) as qwen:
        with pytest.raises(NotFoundError) as caught:
            await qwen.chat(HELLO)
    assert str(caught.value) == f"HTTP 404: Not Found (POST {wrong}/chat/completions)"
    assert caught.value.url == f"{wrong}/chat/completions"


async def test_context_too_long(client: QwenClient) -> None:
    long_prompt = [{"role": "user", "content": "长文本测试。" * 20000}]
    with pytest.raises(ContextLengthError) as caught:
        await client.chat(long_prompt, "qwen-max")
    assert "Range of input length" in str(caught.value)


async def test_input_moderation(client: QwenClient) -> None:
    with pytest.raises(ContentFilterError) as caught:
        await client.chat([{"role": "user", "content": "[[moderate-input]] hi"}])
    assert caught.value.code == "data_inspection_failed"


@pytest.mark.parametrize("native", [False, True], ids=["compatible", "native"])
@pytest.mark.parametrize(
    ("fault", "error_type", "kind"),
    [
        (Fault(status=429, retry_after="1"), RateLimitError, "rpm"),
        (Fault(status=429, code="insufficient_quota"), RateLimitError, "tpm"),
        (Fault(status=429, code="CommodityNotPurchased"), RateLimitError, "billing"),
        (Fault(status=403), PermissionDeniedError, None),
        (Fault(status=500), ServerError, None),
        (Fault(status=503), ServerError, None),
    ],
)
async def test_status_faults_map_to_typed_errors(
    emulator: Emulator,
    fault: Fault,
    error_type: type[APIStatusError],
    kind: str | None,
    native: bool,
) -> None:
    emulator.schedule(fault)
    async with native_client(emulator) if native else plain_client(emulator) as qwen:
        with pytest.raises(error_type) as caught:
            await qwen.chat(HELLO)
    error = caught.value
    assert error.status == fault.status
    if kind is not None:
        assert isinstance(error, RateLimitError)
        assert error.kind == kind
    if fault.retry_after:
        assert error.headers["retry-after"] == fault.retry_after
    assert error.request_id == emulator.requests[-1].request_id


async def test_non_sse_200_shows_the_start_of_the_body(client: QwenClient) -> None:
    with pytest.raises(ProtocolError) as caught:
        await client.chat(HELLO, extra_headers=Fault(content_type="application/json").header())
    assert "expected a text/event-stream response" in str(caught.value)
    frame = caught.value.frame
    assert isinstance(frame, bytes)
    assert b"chat.completion" in frame


# --- failures after the stream started: nothing received is lost ---


async def test_in_band_error_after_content(client: QwenClient, emulator: Emulator) -> None:
    emulator.schedule(Fault(error_after_events=5))
    received: list[str] = []
    with pytest.raises(InBandError) as caught:
        async with client.stream_chat(HELLO) as stream:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    error = caught.value
    assert error.code == "data_inspection_failed"
    assert error.partial is not None
    assert error.partial.content == "".join(received)
    assert len(received) == 5
    assert expected(HELLO).content.startswith(error.partial.content)
    assert not error.partial.complete


@pytest.mark.parametrize(
    "fault",
    [Fault(drop_after_events=6), Fault(no_done=True), Fault(drop_after_bytes=1000)],
    ids=["drop-after-events", "no-done", "drop-after-bytes"],
)
async def test_cut_streams_raise_incomplete_with_the_partial(
    client: QwenClient, emulator: Emulator, fault: Fault
) -> None:
    data = await raw_stream(emulator, CHAT_BODY)
    if fault.drop_after_events is not None:
        received = b"".join(event + b"\n\n" for event in data.split(b"\n\n")[:6])
    elif fault.drop_after_bytes is not None:
        received = data[: fault.drop_after_bytes]
    else:
        received = data.removesuffix(b"data: [DONE]\n\n")
    emulator.schedule(fault)
    with pytest.raises(IncompleteStreamError) as caught:
        await client.chat(HELLO)
    partial = caught.value.partial
    assert partial is not None
    assert not partial.complete
    assert partial.content == decoded(received).content
    assert partial.content
    if fault.no_done:
        assert partial.content == expected(HELLO).content
    else:
        assert len(partial.content) < len(expected(HELLO).content)


async def test_drop_at_every_kind_of_offset_never_passes_off_a_truncated_answer(
    client: QwenClient, emulator: Emulator
) -> None:
    data = await raw_stream(emulator, {**CHAT_BODY, "messages": ENGLISH})
    assert len(data) == (await client.chat(ENGLISH)).timing.bytes_received
    # Every cut before the last byte loses at least the end of data: [DONE].
    for offset in range(0, len(data), max(1, len(data) // 60)):
        emulator.schedule(Fault(drop_after_bytes=offset))
        with pytest.raises(IncompleteStreamError) as caught:
            await client.chat(ENGLISH)
        assert caught.value.partial is not None
        assert not caught.value.partial.complete
        assert caught.value.partial.content == decoded(data[:offset]).content, offset


async def test_malformed_frame_is_a_protocol_error_with_partial(
    client: QwenClient, emulator: Emulator
) -> None:
    emulator.schedule(Fault(malformed_after_events=4))
    with pytest.raises(ProtocolError) as caught:
        await client.chat(HELLO)
    assert caught.value.partial is not None
    assert expected(HELLO).content.startswith(caught.value.partial.content)


@pytest.mark.parametrize(
    "fault",
    [
        Fault(line_ending="\r"),
        Fault(line_ending="\r\n"),
        Fault(write_bytes=1),
        Fault(write_bytes=7, line_ending="\r"),
    ],
    ids=["CR", "CRLF", "one-byte-writes", "7-byte-writes-CR"],
)
async def test_wire_variants_decode_identically(
    client: QwenClient, emulator: Emulator, fault: Fault
) -> None:
    emulator.schedule(fault)
    result = await client.chat(HELLO)
    assert result.complete
    assert result.content == expected(HELLO).content


async def test_huge_event_over_the_limit(emulator: Emulator) -> None:
    emulator.schedule(Fault(huge_event_bytes=200_000))
    async with QwenClient(
        KEY, emulator.base_url, max_event_bytes=64 * 1024, retry=NO_RETRIES
    ) as qwen:
        with pytest.raises(EventTooLargeError) as caught:
            await qwen.chat(HELLO)
    assert caught.value.partial is not None
    assert caught.value.max_event_bytes == 64 * 1024


async def test_huge_event_under_the_limit_is_fine(client: QwenClient, emulator: Emulator) -> None:
    emulator.schedule(Fault(huge_event_bytes=1_000_000))
    result = await client.chat(HELLO)
    assert result.complete
    assert result.content.endswith(expected(HELLO).content)


# --- bounds: whatever a server sends, the client's memory and work stay bounded ---

_SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-request-id: r-bound\r\n"


def _numbered(n: int) -> bytes:
    return sse_body([frame([{"index": 0, "delta": {"content": f"{n} "}}])], done=False)


async def _endless(writer: asyncio.StreamWriter, piece: Callable[[int], bytes]) -> None:
    """Write the head, then ``piece(0)``, ``piece(1)``, ... until the client hangs up (or,
    so that the server stops by itself whatever the client does, 256 MiB went out)."""
    writer.write(_SSE_HEAD + b"\r\n")
    n = sent = 0
    while sent < 256 * 1024 * 1024:
        data = piece(n)
        writer.write(data)
        sent += len(data)
        n += 1
        if n % 64 == 0:
            await writer.drain()  # raises once the client has closed the connection


async def test_an_endless_stream_of_valid_chunks_stops_at_max_stream_bytes() -> None:
    limit = 64 * 1024

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        await _endless(writer, _numbered)

    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, max_stream_bytes=limit, retry=RetryPolicy(resume=True)) as qwen,
    ):
        with pytest.raises(StreamLimitError) as caught:
            await qwen.chat(HELLO)
    error = caught.value
    assert error.limit == "max_stream_bytes"
    assert (
        str(error) == f"stream stopped after {error.observed} bytes: over max_stream_bytes={limit}"
    )
    partial = error.partial
    assert partial is not None
    assert not partial.complete
    # Everything decoded lies within the bound: the chunks that fit in it, in order.
    received = partial.timing.bytes_received
    assert limit < received <= limit + 1024 * 1024  # the read that crossed it, no more
    fitting = len(partial.content.split())
    assert partial.content == "".join(f"{n} " for n in range(fitting))
    assert len(b"".join(_numbered(n) for n in range(fitting + 1))) > limit
    assert partial.attempts == 1  # neither retried nor resumed
    assert len(server.requests) == 1


async def test_an_endless_stream_without_output_stops_at_max_answer_chunks_unretried() -> None:
    def role_only(n: int) -> bytes:
        return sse_body([frame([{"index": 0, "delta": {"role": "assistant"}}])], done=False)

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        await _endless(writer, role_only)

    sleep = FakeSleep()
    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, max_answer_chunks=1000, sleep=sleep) as qwen,
    ):
        with pytest.raises(StreamLimitError) as caught:
            await qwen.chat(HELLO)
    assert caught.value.limit == "max_answer_chunks"
    assert caught.value.observed > 1000
    assert sleep.delays == []
    assert len(server.requests) == 1


async def test_a_gzip_bomb_of_line_breaks_stops_within_max_event_bytes() -> None:
    first = sse_body([frame([{"index": 0, "delta": {"content": "before"}}])], done=False)
    bomb = gzip.compress(first + b"\n" * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 128 * 1024

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(
            _SSE_HEAD + f"content-encoding: gzip\r\ncontent-length: {len(bomb)}\r\n\r\n".encode()
        )
        writer.write(bomb)
        await writer.drain()

    limit = 1024 * 1024
    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, max_event_bytes=limit) as qwen,
    ):
        with pytest.raises(EventTooLargeError) as caught:
            await qwen.chat(HELLO)
    error = caught.value
    assert "no SSE event in" in str(error)
    assert error.partial is not None
    assert error.partial.content == "before"
    # Decoding stopped within the bound (plus the read that crossed it), not at 64 MiB.
    assert error.partial.timing.bytes_received <= len(first) + 2 * limit
    assert len(server.requests) == 1


def _deep_frame(depth: int) -> str:
    nested = '{"a":' * depth + "1" + "}" * depth
    return (
        '{"id":"chatcmpl-x","choices":[{"index":0,"delta":{"content":"lost"},'
        f'"logprobs":{nested},"finish_reason":null}}]}}'
    )


async def _deep_json_server(writer: asyncio.StreamWriter, n: int) -> None:
    events = (
        frame([{"index": 0, "delta": {"role": "assistant", "content": "kept "}}]),
        _deep_frame(1000),
        frame([{"index": 0, "delta": {"content": "after"}, "finish_reason": "stop"}]),
    )
    writer.write(http_response(sse_body(events)))
    await writer.drain()


async def test_json_nested_too_deep_is_a_protocol_error_and_the_stream_stays_failed() -> None:
    async with (
        raw_server(_deep_json_server) as server,
        QwenClient(KEY, server.url) as qwen,
    ):
        with pytest.raises(ProtocolError) as caught:
            await qwen.chat(HELLO)
        assert type(caught.value) is ProtocolError
        assert caught.value.partial is not None
        assert caught.value.partial.content == "kept "
        assert caught.value.frame == _deep_frame(1000).encode()

        # A consumer that catches the error and keeps iterating never gets a complete answer.
        texts: list[str] = []
        failures: list[QwenSSEError] = []
        async with qwen.stream_chat(HELLO) as stream:
            for _ in range(10):
                try:
                    chunk = await stream.__anext__()
                except StopAsyncIteration:
                    break
                except QwenSSEError as error:
                    failures.append(error)
                    continue
                texts.extend(choice.delta.content or "" for choice in chunk.choices)
        assert [type(failure) for failure in failures] == [ProtocolError]
        assert "".join(texts) == "kept "
        assert not stream.result.complete
        assert stream.result.content == "kept "
    assert len(server.requests) == 2  # one per call: a protocol error is not retried


async def test_after_any_exception_from_the_read_path_the_stream_stays_failed() -> None:
    class FailingTap:
        def request(self, **_: Any) -> None: ...
        def response(self, **_: Any) -> None: ...
        def end(self, **_: Any) -> None: ...

        def data(self, chunk: bytes, at_s: float) -> None:
            if b"[DONE]" in chunk:
                raise RuntimeError("a wire tap that raises")

    first_seen = asyncio.Event()

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        events = [frame([{"index": 0, "delta": {"content": "hi"}}])]
        writer.write(_SSE_HEAD + b"\r\n" + sse_body(events, done=False))
        await writer.drain()
        await first_seen.wait()  # so that [DONE] comes in a read of its own
        writer.write(sse_body([frame([{"index": 0, "delta": {}, "finish_reason": "stop"}])]))
        await writer.drain()

    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, wire_tap=FailingTap()) as qwen,
        qwen.stream_chat(HELLO) as stream,
    ):
        first = await stream.__anext__()
        assert first.choices[0].delta.content == "hi"
        first_seen.set()
        raised: list[BaseException] = []
        for _ in range(10):
            try:
                await stream.__anext__()
            except StopAsyncIteration:
                break
            except RuntimeError as error:
                raised.append(error)
        assert len(raised) == 1
        assert not stream.result.complete


def test_bounds_are_configurable_and_must_be_positive() -> None:
    qwen = QwenClient(KEY, max_stream_bytes=None, max_answer_chars=10, max_answer_chunks=20)
    assert (qwen.max_stream_bytes, qwen.max_answer_chars, qwen.max_answer_chunks) == (None, 10, 20)
    with pytest.raises(ConfigurationError, match="max_stream_bytes"):
        QwenClient(KEY, max_stream_bytes=0)
    with pytest.raises(ConfigurationError, match="max_answer_chars"):
        QwenClient(KEY, max_answer_chars=-5)
    with pytest.raises(ConfigurationError, match="max_answer_chunks"):
        QwenClient(KEY, max_answer_chunks=0)


# --- timeouts ---


async def test_first_token_timeout() -> None:
    config = EmulatorConfig(api_key=KEY, ttft_s=5.0, itl_s=0.0)
    async with (
        Emulator(config) as server,
        plain_client(server) as qwen,
    ):
        with pytest.raises(FirstTokenTimeoutError) as caught:
            await qwen.chat(HELLO, timeouts=Timeouts(first_token_s=0.2))
        assert caught.value.timeout_s == 0.2
        assert caught.value.partial is not None
        assert caught.value.partial.content == ""


async def test_idle_timeout_keeps_the_partial(client: QwenClient, emulator: Emulator) -> None:
    emulator.schedule(Fault(stall_after_events=4, stall_s=5.0))
    with pytest.raises(IdleTimeoutError) as caught:
        await client.chat(HELLO, timeouts=Timeouts(idle_s=0.2))
    partial = caught.value.partial
    assert partial is not None
    assert partial.content
    assert expected(HELLO).content.startswith(partial.content)


async def test_keep_alive_comments_do_not_reset_the_idle_timeout(
    client: QwenClient, emulator: Emulator
) -> None:
    emulator.schedule(Fault(stall_after_events=4, stall_s=5.0, keepalive_every_s=0.05))
    with pytest.raises(IdleTimeoutError):
        await client.chat(HELLO, timeouts=Timeouts(idle_s=0.3))


async def test_a_stall_shorter_than_the_idle_timeout_is_fine(
    client: QwenClient, emulator: Emulator
) -> None:
    emulator.schedule(Fault(stall_after_events=4, stall_s=0.1, keepalive_every_s=0.02))
    result = await client.chat(HELLO, timeouts=Timeouts(idle_s=5.0))
    assert result.content == expected(HELLO).content


async def test_total_timeout() -> None:
    config = EmulatorConfig(api_key=KEY, ttft_s=0.0, itl_s=0.05)
    async with (
        Emulator(config) as server,
        plain_client(server) as qwen,
    ):
        with pytest.raises(TotalTimeoutError) as caught:
            await qwen.chat(HELLO, timeouts=Timeouts(total_s=0.3))
    partial = caught.value.partial
    assert partial is not None
    assert expected(HELLO).content.startswith(partial.content)


async def test_connect_timeout_against_a_full_backlog() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    port = listener.getsockname()[1]
    try:
        # Fill the accept queue so that further SYNs are dropped and connect() hangs.
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        async with QwenClient(KEY, f"http://127.0.0.1:{port}/v1", retry=NO_RETRIES) as qwen:
            with pytest.raises(ConnectTimeoutError) as caught:
                await qwen.chat(HELLO, timeouts=Timeouts(connect_s=0.3))
        assert caught.value.timeout_s == 0.3
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_connection_refused_is_a_transport_error() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    async with QwenClient(SECRET_KEY, f"http://127.0.0.1:{port}/v1", retry=NO_RETRIES) as qwen:
        with pytest.raises(TransportError) as caught:
            await qwen.chat(HELLO)
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert_key_absent(caught.value, SECRET_KEY)


# --- leaving early releases the connection ---


async def test_break_releases_the_connection(client: QwenClient, emulator: Emulator) -> None:
    emulator.schedule(Fault(stall_after_events=2, stall_s=60.0))  # in flight when we leave
    async with client.stream_chat(HELLO) as stream:
        async for _ in stream:
            assert emulator.active_streams == 1
            break
    assert not stream.result.complete
    await settle(emulator)
    assert emulator.active_streams == 0


async def test_consumer_exception_releases_the_connection(
    client: QwenClient, emulator: Emulator
) -> None:
    emulator.schedule(Fault(stall_after_events=2, stall_s=60.0))  # in flight when we leave
    with pytest.raises(KeyError):
        async with client.stream_chat(HELLO) as stream:
            async for _ in stream:
                assert emulator.active_streams == 1
                raise KeyError("consumer bug")
    await settle(emulator)
    assert emulator.active_streams == 0


async def test_cancellation_releases_the_connection() -> None:
    config = EmulatorConfig(api_key=KEY, ttft_s=0.0, itl_s=0.05)
    async with (
        Emulator(config) as server,
        plain_client(server) as qwen,
    ):
        task = asyncio.create_task(qwen.chat(HELLO))
        await asyncio.sleep(0.15)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle(server)
        assert server.active_streams == 0


@pytest.mark.timeout(300)
async def test_ten_thousand_streams_with_random_cancellations_leak_nothing() -> None:
    rng = random.Random(1)
    config = EmulatorConfig(api_key=KEY, ttft_s=0.0, itl_s=0.0, answer_tokens=4)
    async with (
        Emulator(config) as server,
        plain_client(server) as qwen,
    ):
        semaphore = asyncio.Semaphore(100)
        completed = 0

        async def one(action: int) -> None:
            nonlocal completed
            async with semaphore:
                if action == 0:  # break after the first chunk
                    async with qwen.stream_chat(HELLO) as stream:
                        async for _ in stream:
                            break
                elif action == 1:  # cancelled from outside mid-flight
                    task = asyncio.create_task(qwen.chat(HELLO))
                    await asyncio.sleep(0)
                    task.cancel()
                    try:
                        await task
                    except asyncio.CancelledError:
                        pass
                    else:
                        completed += 1
                else:
                    result = await qwen.chat(HELLO)
                    assert result.complete
                    completed += 1

        await asyncio.gather(*(one(rng.randrange(3)) for _ in range(10_000)))
        await settle(server)
        assert server.active_streams == 0
        assert completed > 3000
        connector = qwen._require_session().connector
        assert connector is not None
        # Every connection is either idle in the pool or closed; none is still held.
        await asyncio.sleep(0)
        assert len(connector._acquired) == 0


# --- configuration and the key ---


def assert_key_absent(error: BaseException, key: str) -> None:
    seen: BaseException | None = error
    while seen is not None:
        assert key not in repr(seen)
        assert key not in str(seen)
        assert key not in repr(vars(seen))
        seen = seen.__cause__ or seen.__context__


def test_missing_key_is_a_clear_error_before_any_traffic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("QWEN_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="DASHSCOPE_API_KEY"):
        QwenClient()


def test_key_from_the_environment_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.setenv("QWEN_API_KEY", SECRET_KEY)
    client = QwenClient(region="singapore")
    assert client.base_url == "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"
    assert SECRET_KEY not in repr(client)
    assert SECRET_KEY not in repr(vars(client)).replace(f"Bearer {SECRET_KEY}", "")
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-dashscope")
    assert "sk-test-dashscope" not in repr(QwenClient())


def test_plain_http_to_a_remote_host_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="plain http"):
        QwenClient(KEY, "http://example.com/v1")
    assert QwenClient(KEY, "http://example.com/v1", allow_insecure_http=True).base_url
    assert QwenClient(KEY, "http://localhost:8000/v1").base_url
    assert QwenClient(KEY, "http://[::1]:8000/v1").base_url


def test_unknown_region_and_bad_url() -> None:
    with pytest.raises(ConfigurationError, match="unknown region"):
        QwenClient(KEY, region="mars")
    with pytest.raises(ConfigurationError, match="base_url"):
        QwenClient(KEY, "ftp://host/v1")


async def test_using_a_closed_client_is_a_clear_error() -> None:
    client = QwenClient(KEY, "http://127.0.0.1:9/v1")
    with pytest.raises(ConfigurationError, match="not open"):
        await client.chat(HELLO)


async def test_result_before_the_end_is_partial() -> None:
    # The server holds the rest of the answer until the test has looked, so no timing can
    # deliver the whole stream in the first read.
    looked = asyncio.Event()
    role = frame([{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}])
    rest = frame([{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}])

    async with (
        raw_server(held_answer(role, rest, looked)) as server,
        QwenClient(KEY, server.url, retry=NO_RETRIES) as qwen,
        qwen.stream_chat(HELLO) as stream,
    ):
        first = await anext(aiter(stream))
        assert first.choices[0].delta.role == "assistant"
        assert (stream.result.complete, stream.result.content) == (False, "Hel")
        looked.set()
        await collect(stream)
    assert (stream.result.complete, stream.result.content) == (True, "Hello")


async def test_errors_are_all_rooted(client: QwenClient, emulator: Emulator) -> None:
    emulator.schedule(Fault(status=503))
    with pytest.raises(ServerError) as caught:
        await client.chat(HELLO)
    assert type(caught.value) is ServerError
    assert isinstance(caught.value, QwenSSEError)
    assert caught.value.status == 503


# --- retries (before any output reached the caller) ---


def retrying_client(
    server: Emulator, sleep: FakeSleep, policy: RetryPolicy | None = None, key: str = KEY
) -> QwenClient:
    return QwenClient(
        key,
        server.base_url,
        retry=policy or RetryPolicy(),
        sleep=sleep,
        random_source=random.Random(7),
    )


async def test_503_503_then_200_is_one_complete_result(emulator: Emulator) -> None:
    sleep = FakeSleep()
    emulator.schedule(Fault(status=503), Fault(status=503))
    async with retrying_client(emulator, sleep) as qwen:
        result = await qwen.chat(HELLO)
    assert result.complete
    assert result.content == expected(HELLO).content
    assert result.attempts == 3
    assert len(emulator.requests) == 3
    jitter = random.Random(7)
    policy = RetryPolicy()
    assert sleep.delays == pytest.approx(
        [policy.backoff_s(1, jitter.random()), policy.backoff_s(2, jitter.random())]
    )


async def test_retry_after_is_honoured(emulator: Emulator) -> None:
    sleep = FakeSleep()
    emulator.schedule(Fault(status=429, retry_after="1"))
    async with retrying_client(emulator, sleep) as qwen:
        result = await qwen.chat(HELLO)
    assert sleep.delays == [1.0]
    assert result.attempts == 2


async def test_retry_after_ms_is_honoured(emulator: Emulator) -> None:
    sleep = FakeSleep()
    emulator.schedule(Fault(status=503, retry_after_ms="150", retry_after="9"))
    async with retrying_client(emulator, sleep) as qwen:
        await qwen.chat(HELLO)
    assert sleep.delays == [0.15]


@pytest.mark.parametrize(
    "fault",
    [Fault(status=429, code="CommodityNotPurchased"), Fault(status=400)],
    ids=["billing-429", "400"],
)
async def test_final_errors_are_not_retried(emulator: Emulator, fault: Fault) -> None:
    sleep = FakeSleep()
    emulator.schedule(fault)
    async with retrying_client(emulator, sleep) as qwen:
        with pytest.raises(APIStatusError):
            await qwen.chat(HELLO)
    assert sleep.delays == []
    assert len(emulator.requests) == 1


async def test_wrong_key_is_not_retried(emulator: Emulator) -> None:
    sleep = FakeSleep()
    async with retrying_client(emulator, sleep, key=SECRET_KEY) as qwen:
        with pytest.raises(AuthenticationError):
            await qwen.chat(HELLO)
    assert sleep.delays == []
    assert len(emulator.requests) == 1


async def test_connection_refused_retries_then_fails_clearly() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    sleep = FakeSleep()
    client = QwenClient(KEY, f"http://127.0.0.1:{port}/v1", sleep=sleep)
    async with client as qwen:
        with pytest.raises(TransportError) as caught:
            await qwen.chat(HELLO)
    assert len(sleep.delays) == 2
    assert "gave up after 3 attempts" in caught.value.__notes__


async def test_the_deadline_bounds_the_retries(emulator: Emulator) -> None:
    policy = RetryPolicy(deadline_s=0.3, initial_delay_s=0.05, max_delay_s=0.05, max_attempts=1000)
    emulator.schedule(*[Fault(status=503)] * 1000)
    async with QwenClient(KEY, emulator.base_url, retry=policy) as qwen:
        with pytest.raises(ServerError) as caught:
            await qwen.chat(HELLO)
    attempts = len(emulator.requests)
    assert 2 <= attempts < 1000
    assert f"gave up after {attempts} attempts" in caught.value.__notes__


async def test_a_stream_cut_before_the_first_token_is_retried_without_repeating_chunks(
    emulator: Emulator,
) -> None:
    sleep = FakeSleep()
    emulator.schedule(Fault(drop_after_events=1))  # only the role chunk gets through
    async with retrying_client(emulator, sleep) as qwen, qwen.stream_chat(HELLO) as stream:
        chunks = await collect(stream)
    roles = [c for c in chunks if c.choices and c.choices[0].delta.role]
    assert len(roles) == 1
    assert stream.result.content == expected(HELLO).content
    assert stream.result.attempts == 2


async def test_retries_and_resumes_are_logged_without_the_key(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    sleep = FakeSleep()
    emulator.schedule(Fault(status=503), Fault(drop_after_events=8))
    policy = RetryPolicy(resume=True)
    with caplog.at_level("WARNING", logger="qwen_sse.client"):
        async with retrying_client(emulator, sleep, policy) as qwen:
            result = await qwen.chat(HELLO)
    assert result.resumes == 1
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("retrying in") and "HTTP 503" in m for m in messages)
    assert any(m.startswith("resuming a broken stream") and "request id" in m for m in messages)
    assert all(KEY not in m for m in messages)


# --- resume by continuation (after output reached the caller) ---


CHAT_BODY: dict[str, Any] = {
    "model": "qwen-plus",
    "messages": HELLO,
    "stream": True,
    "stream_options": {"include_usage": True},
}
"""The body ``client.chat(HELLO)`` sends (the emulator's answer depends on it)."""


def decoded(prefix: bytes) -> Any:
    """What a decoder makes of these first bytes of a stream, cut there."""
    decoder = ChatStreamDecoder()
    decoder.feed(prefix)
    return decoder.result()


async def raw_stream(server: Emulator, body: dict[str, Any], fault: Fault | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {KEY}", **(fault.header() if fault else {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.base_url}/chat/completions", json=body, headers=headers) as response,
    ):
        return await response.read()


def interesting_offsets(data: bytes) -> set[int]:
    """Byte offsets of the cases the issue names, in the raw stream ``data``."""
    offsets = {data.index(b"data: [DONE]"), data.index(b'"content"') + 3}
    multibyte = next(i for i, byte in enumerate(data) if byte >= 0xC0)
    offsets.add(multibyte + 1)  # inside a UTF-8 character
    if b"\r\n" in data:
        offsets.add(data.index(b"\r\n", 200) + 1)  # between CR and LF
    return offsets


@pytest.mark.parametrize("line_ending", ["\n", "\r\n"], ids=["LF", "CRLF"])
async def test_resume_at_every_offset_returns_exactly_the_full_answer(
    emulator: Emulator, line_ending: str
) -> None:
    body = {
        "model": "qwen-plus",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    data = await raw_stream(emulator, body, Fault(line_ending=line_ending))  # type: ignore[arg-type]
    full = expected(HELLO).content
    offsets = set(range(1, len(data), 41)) | interesting_offsets(data)
    sleep = FakeSleep()
    async with retrying_client(emulator, sleep, RetryPolicy(resume=True)) as qwen:
        for offset in sorted(offsets):
            emulator.schedule(Fault(drop_after_bytes=offset, line_ending=line_ending))  # type: ignore[arg-type]
            delivered: list[str] = []
            try:
                async with qwen.stream_chat(HELLO) as stream:
                    async for chunk in stream:
                        if chunk.choices:
                            delivered.append(chunk.choices[0].delta.content or "")
            except IncompleteStreamError as error:
                # Only a cut after the answer finished is not resumed: it stays an error,
                # with the whole answer and its finish reason in the partial.
                assert error.partial is not None
                assert error.partial.finish_reason == "stop", offset
                assert error.partial.content == full, offset
                assert finished_by(data[:offset]), offset
                continue
            result = stream.result
            assert result.complete, offset
            assert "".join(delivered) == full, offset
            assert result.content == full, offset
            assert result.attempts == 2, offset


def finished_by(prefix: bytes) -> bool:
    """Whether these first bytes of a stream already carry its finish reason."""
    decoder = ChatStreamDecoder()
    decoder.feed(prefix)
    return decoder.result().finish_reason is not None


async def test_a_resumed_usage_counts_the_prefix_in_the_prompt(emulator: Emulator) -> None:
    whole = await retrying_client(emulator, FakeSleep()).__aenter__()
    try:
        plain = await whole.chat(HELLO)
        emulator.schedule(Fault(drop_after_events=8))
        resumed = await whole.chat(HELLO, retry=RetryPolicy(resume=True))
    finally:
        await whole.close()
    assert plain.usage is not None
    assert resumed.usage is not None
    assert resumed.resumes == 1
    assert resumed.content == plain.content
    # The cut attempt reported no usage; the continuation's prompt holds the text so far.
    assert resumed.usage.prompt_tokens > plain.usage.prompt_tokens
    assert resumed.usage.completion_tokens < plain.usage.completion_tokens


async def test_resume_does_not_apply_in_thinking_mode(emulator: Emulator) -> None:
    emulator.schedule(Fault(drop_after_events=10))
    async with retrying_client(emulator, FakeSleep(), RetryPolicy(resume=True)) as qwen:
        with pytest.raises(IncompleteStreamError) as caught:
            await qwen.chat(HELLO, enable_thinking=True)
    assert caught.value.partial is not None
    assert caught.value.partial.reasoning_content
    assert len(emulator.requests) == 1


async def test_resume_does_not_apply_with_a_tool_call_in_flight(emulator: Emulator) -> None:
    emulator.schedule(Fault(drop_after_events=4))
    messages = [{"role": "user", "content": "Use get_weather for Hangzhou"}]
    async with retrying_client(emulator, FakeSleep(), RetryPolicy(resume=True)) as qwen:
        with pytest.raises(IncompleteStreamError) as caught:
            await qwen.chat(messages, tools=[WEATHER_TOOL])
    assert caught.value.partial is not None
    assert caught.value.partial.tool_calls


async def test_a_rejected_resume_falls_back_to_the_partial(emulator: Emulator) -> None:
    emulator.schedule(
        Fault(drop_after_events=8),
        Fault(status=400, code="invalid_parameter_error", message="partial mode not supported"),
    )
    async with retrying_client(emulator, FakeSleep(), RetryPolicy(resume=True)) as qwen:
        with pytest.raises(IncompleteStreamError) as caught:
            await qwen.chat(HELLO)
    error = caught.value
    assert error.partial is not None
    assert expected(HELLO).content.startswith(error.partial.content)
    assert any("resuming failed: HTTP 400" in note for note in error.__notes__)


async def test_resume_after_an_idle_timeout(emulator: Emulator) -> None:
    emulator.schedule(Fault(stall_after_events=6, stall_s=5.0))
    async with retrying_client(emulator, FakeSleep(), RetryPolicy(resume=True)) as qwen:
        result = await qwen.chat(HELLO, timeouts=Timeouts(idle_s=0.2))
    assert result.content == expected(HELLO).content
    assert result.resumes == 1


_fault_choices = st.one_of(
    st.builds(lambda n: Fault(drop_after_bytes=n), st.integers(0, 6000)),
    st.builds(lambda n: Fault(drop_after_events=n), st.integers(0, 45)),
    st.builds(lambda n: Fault(error_after_events=n), st.integers(2, 45)),
    st.just(Fault(status=503)),
    st.just(Fault(no_done=True)),
)


def assert_the_error_the_faults_cause(
    error: QwenSSEError, faults: list[Fault], requests: int
) -> None:
    """``error`` is the one the fault of the last request causes, or, when resuming failed,
    the break it tried to resume."""
    assert requests <= len(faults)  # a request without a fault succeeds
    if any(note.startswith("resuming failed") for note in getattr(error, "__notes__", ())):
        assert type(error) in (IncompleteStreamError, StreamInterruptedError)
        return
    fault = faults[requests - 1]
    if fault.status is not None:
        assert type(error) is ServerError
        assert error.status == fault.status
    elif fault.error_after_events is not None:
        assert type(error) is InBandError
    else:
        assert type(error) in (IncompleteStreamError, StreamInterruptedError)


@given(st.lists(_fault_choices, max_size=4), st.booleans())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_content_is_lost_or_duplicated_under_random_faults(
    faults: list[Fault], resume: bool
) -> None:
    async def scenario() -> None:
        config = EmulatorConfig(api_key=KEY, ttft_s=0.0, itl_s=0.0)
        policy = RetryPolicy(resume=resume, max_attempts=3, max_resumes=4)
        async with Emulator(config) as server:
            server.schedule(*faults)
            delivered: list[str] = []
            client = QwenClient(KEY, server.base_url, retry=policy, sleep=FakeSleep())
            async with client as qwen:
                try:
                    async with qwen.stream_chat(ENGLISH) as stream:
                        async for chunk in stream:
                            if chunk.choices:
                                delivered.append(chunk.choices[0].delta.content or "")
                    outcome = stream.result
                except QwenSSEError as error:
                    assert error.partial is not None
                    outcome = error.partial
                    assert_the_error_the_faults_cause(error, faults, len(server.requests))
            full = expected(ENGLISH).content
            assert "".join(delivered) == outcome.content
            if outcome.complete:
                assert outcome.content == full
            else:
                assert full.startswith(outcome.content)

    asyncio.run(scenario())


# --- the native protocol and the wire tap ---

NATIVE_FIXTURE = Path(__file__).parent / "fixtures" / "native-plain.sse"


@pytest.fixture
async def native_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A tiny server answering the native path with the recorded native stream."""
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append({"headers": dict(request.headers), "body": await request.json()})
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream;charset=UTF-8", "x-request-id": "r-n"}
        )
        await response.prepare(request)
        data = NATIVE_FIXTURE.read_bytes()
        for start in range(0, len(data), 97):
            await response.write(data[start : start + 97])
        return response

    app = web.Application()
    app.router.add_post("/api/v1/services/aigc/text-generation/generation", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/api/v1", seen
    finally:
        await runner.cleanup()


async def test_native_protocol_yields_the_same_chunks_and_result(
    native_server: tuple[str, list[dict[str, Any]]],
) -> None:
    base_url, seen = native_server
    qwen = QwenClient(KEY, base_url, protocol="native", retry=NO_RETRIES)
    async with qwen, qwen.stream_chat(HELLO, "qwen-plus", enable_thinking=False) as stream:
        chunks = await collect(stream)
    result = stream.result
    assert result.complete
    assert result.content == "".join(c.choices[0].delta.content or "" for c in chunks)
    assert result.content.startswith("I am Qwen")
    assert result.finish_reason == "stop"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (26, 66)
    (request,) = seen
    assert request["headers"]["X-DashScope-SSE"] == "enable"
    assert request["body"] == {
        "model": "qwen-plus",
        "input": {"messages": HELLO},
        "parameters": {
            "result_format": "message",
            "incremental_output": True,
            "enable_thinking": False,
        },
    }


def test_native_region_urls() -> None:
    assert QwenClient(KEY, region="singapore", protocol="native").base_url == (
        "https://dashscope-intl.aliyuncs.com/api/v1"
    )
    with pytest.raises(ConfigurationError, match="protocol"):
        QwenClient(KEY, protocol="grpc")


class RecordingTap:
    """A wire tap that keeps everything it is shown."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def request(self, *, method: str, url: str, headers: Mapping[str, str], body: bytes) -> None:
        self.calls.append(("request", (method, url, dict(headers), body)))

    def response(self, *, status: int, headers: Mapping[str, str], at_s: float) -> None:
        self.calls.append(("response", (status, at_s)))
        self.headers.append(dict(headers))

    def data(self, chunk: bytes, at_s: float) -> None:
        self.calls.append(("data", (chunk, at_s)))

    def end(self, *, at_s: float, outcome: str, error: QwenSSEError | None) -> None:
        self.calls.append(("end", (outcome, error)))


async def test_the_wire_tap_sees_every_byte_and_never_the_key() -> None:
    tap = RecordingTap()
    async with Emulator(EmulatorConfig(api_key=None, ttft_s=0, itl_s=0)) as open_server:
        client = QwenClient(SECRET_KEY, open_server.base_url, wire_tap=tap, sleep=FakeSleep())
        open_server.schedule(Fault(status=503))
        async with client as qwen:
            result = await qwen.chat(HELLO)
        kinds = [kind for kind, _ in tap.calls]
        assert kinds[:4] == ["request", "response", "data", "end"]  # the 503 attempt
        assert kinds[4:6] == ["request", "response"]
        assert kinds[-1] == "end"
        assert tap.calls[3][1][0] == "error"
        assert tap.calls[-1][1] == ("ok", None)
        body = b"".join(args[0] for kind, args in tap.calls[6:] if kind == "data")
        assert len(body) == result.timing.bytes_received == open_server.requests[-1].bytes_sent
        times = [args[1] for kind, args in tap.calls[6:] if kind == "data"]
        assert times == sorted(times)
        assert SECRET_KEY not in repr(tap.calls)
        assert tap.calls[0][1][2]["Authorization"] == "Bearer ***"


# --- the native protocol against the emulator ---

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    ("messages", "params"),
    [
        (HELLO, {}),
        (ENGLISH, {"enable_thinking": True}),
        (ENGLISH, {"max_tokens": 5}),
        ([{"role": "user", "content": "get_weather for Paris"}], {"tools": [WEATHER_TOOL]}),
    ],
    ids=["plain", "thinking", "max-tokens", "tool-call"],
)
@pytest.mark.parametrize("incremental", [True, False], ids=["incremental", "cumulative"])
async def test_native_client_gets_what_the_compatible_client_gets(
    client: QwenClient,
    emulator: Emulator,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    incremental: bool,
) -> None:
    compatible = await client.chat(messages, **params)
    async with native_client(emulator) as qwen:
        native = await qwen.chat(messages, incremental_output=incremental, **params)
    assert native.complete
    assert native.content == compatible.content
    assert native.reasoning_content == compatible.reasoning_content
    assert native.tool_calls == compatible.tool_calls
    assert native.finish_reason == compatible.finish_reason
    # The native protocol reports the context cache in every frame (0: no hit, as
    # DashScope sends it); compatible mode only on a hit. Otherwise the same usage.
    assert native.usage is not None
    assert compatible.usage is not None
    assert native.usage.prompt_tokens_details == PromptTokensDetails(cached_tokens=0)
    assert compatible.usage.prompt_tokens_details is None
    assert msgspec.structs.replace(native.usage, prompt_tokens_details=None) == compatible.usage
    request = emulator.requests[-1]
    assert request.path == NATIVE_PATH
    assert native.request_id == request.request_id


async def test_native_in_band_error_after_content(emulator: Emulator) -> None:
    emulator.schedule(Fault(error_after_events=5))
    received: list[str] = []
    async with native_client(emulator) as qwen:
        with pytest.raises(InBandError) as caught:
            async with qwen.stream_chat(HELLO) as stream:
                async for chunk in stream:
                    received.append(chunk.choices[0].delta.content or "")
    error = caught.value
    assert error.code == "DataInspectionFailed"
    assert error.request_id == emulator.requests[-1].request_id
    assert error.partial is not None
    assert error.partial.content == "".join(received)
    assert len(received) == 5
    assert expected(HELLO).content.startswith(error.partial.content)
    assert not error.partial.complete


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        (Fault(drop_after_events=6), IncompleteStreamError),
        (Fault(no_done=True), IncompleteStreamError),
        (Fault(drop_after_bytes=1000), IncompleteStreamError),
        (Fault(malformed_after_events=4), ProtocolError),
    ],
    ids=["drop-after-events", "no-done", "drop-after-bytes", "malformed"],
)
async def test_native_broken_streams_raise_with_the_partial(
    emulator: Emulator, fault: Fault, error_type: type[QwenSSEError]
) -> None:
    emulator.schedule(fault)
    async with native_client(emulator) as qwen:
        with pytest.raises(error_type) as caught:
            await qwen.chat(HELLO)
    partial = caught.value.partial
    assert partial is not None
    assert partial.content
    assert expected(HELLO).content.startswith(partial.content)
    assert not partial.complete


async def test_native_request_errors_map_to_the_same_typed_errors(emulator: Emulator) -> None:
    async with native_client(emulator, SECRET_KEY) as qwen:
        with pytest.raises(AuthenticationError) as refused:
            await qwen.chat(HELLO)
    assert (refused.value.status, refused.value.code) == (401, "InvalidApiKey")
    assert refused.value.request_id == emulator.requests[-1].request_id
    assert_key_absent(refused.value, SECRET_KEY)
    async with native_client(emulator) as qwen:
        with pytest.raises(NotFoundError) as unknown:
            await qwen.chat(HELLO, "qwen-nonexistent")
        assert unknown.value.code == "ModelNotFound"
        with pytest.raises(ContextLengthError):
            await qwen.chat([{"role": "user", "content": "长文本测试。" * 20000}], "qwen-max")
        with pytest.raises(BadRequestError) as moderated:
            await qwen.chat([{"role": "user", "content": "[[moderate-input]] hi"}])
        assert moderated.value.code == "DataInspectionFailed"


# --- regressions from review: raw servers that misbehave in precise ways ---


async def test_a_timed_out_attempt_gives_its_permit_back_before_the_retry() -> None:
    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await asyncio.sleep(1.0)  # no response head in time
        writer.write(sse_answer("hi"))
        await writer.drain()

    limiter = ConcurrencyLimiter(1, queue_timeout_s=2.0)
    async with raw_server(handler) as server:
        client = QwenClient(
            KEY,
            server.url,
            limiter=limiter,
            timeouts=Timeouts(first_token_s=0.2),
            sleep=FakeSleep(),
        )
        async with client:
            result = await client.chat(HELLO)
    assert result.content == "hi"
    assert result.attempts == 2
    assert result.request_id == "r-ok"
    assert limiter.in_flight == 0


async def test_an_error_body_is_read_whole_and_a_cancelled_read_frees_the_permit() -> None:
    body = json.dumps({"error": {"code": "PrepaidBillOverdue", "message": "pay"}}).encode()

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n")
        writer.write(f"content-length: {len(body)}\r\n\r\n".encode() + body[:20])
        await writer.drain()
        await asyncio.sleep(0.05 if n == 1 else 5.0)  # the rest comes later, or never
        writer.write(body[20:])
        await writer.drain()

    sleep = FakeSleep()
    limiter = ConcurrencyLimiter(1)
    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, sleep=sleep, limiter=limiter) as qwen,
    ):
        with pytest.raises(RateLimitError) as caught:
            await qwen.chat(HELLO)
        assert caught.value.kind == "billing"  # so it was not retried
        assert sleep.delays == []
        task = asyncio.create_task(qwen.chat(HELLO))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert limiter.in_flight == 0


async def test_after_a_retry_the_request_id_is_the_answers(emulator: Emulator) -> None:
    emulator.schedule(Fault(status=503))
    async with retrying_client(emulator, FakeSleep()) as qwen:
        result = await qwen.chat(HELLO)
    assert result.request_id == emulator.requests[-1].request_id
    assert result.request_id != emulator.requests[0].request_id


async def test_a_broken_response_head_leaves_no_key_in_the_exception_chain() -> None:
    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nbroken header line\r\n\r\n")
        await writer.drain()

    async with (
        raw_server(handler) as server,
        QwenClient(SECRET_KEY, server.url, retry=NO_RETRIES) as qwen,
    ):
        with pytest.raises(TransportError) as caught:
            await qwen.chat(HELLO)
    seen: BaseException | None = caught.value
    while seen is not None:
        assert not isinstance(seen, aiohttp.ClientResponseError)
        seen = seen.__cause__ or seen.__context__
    assert_key_absent(caught.value, SECRET_KEY)


async def test_a_native_error_frame_under_a_json_content_type_is_an_in_band_error(
    emulator: Emulator,
) -> None:
    emulator.schedule(Fault(content_type="application/json", error_after_events=0))
    async with native_client(emulator) as qwen:
        with pytest.raises(InBandError) as caught:
            await qwen.chat(HELLO)
    assert caught.value.code == "DataInspectionFailed"


# --- issue 16: continuations are retried, deadlines bound sleeps, 3xx and encodings ---

RESUMED_TEXT = "The first half, and the second half."
FIRST_HALF = "The first half,"


def sse_head(*headers: str) -> bytes:
    """A 200 event-stream head without a length: the body ends when the server closes."""
    lines = ["HTTP/1.1 200 OK", "content-type: text/event-stream", "x-request-id: r-1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def content_frame(text: str, finish_reason: str | None = None) -> str:
    return frame([{"index": 0, "delta": {"content": text}, "finish_reason": finish_reason}])


ROLE_FRAME = frame([{"index": 0, "delta": {"role": "assistant", "content": ""}}])


def cut_answer() -> bytes:
    """The first half of the answer, then a clean end without a finish reason or [DONE]."""
    return sse_head() + sse_body([ROLE_FRAME, content_frame(FIRST_HALF)], done=False)


def rest_answer() -> bytes:
    rest = RESUMED_TEXT.removeprefix(FIRST_HALF)
    return http_response(sse_body([ROLE_FRAME, content_frame(rest, "stop")]))


def refused_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


FAILED_CONTINUATIONS = {
    "503": http_response(b'{"error": {"message": "busy"}}', status="503 Service Unavailable"),
    "429-retry-after-0": http_response(
        b'{"error": {"code": "limit_requests", "message": "slow down"}}',
        status="429 Too Many Requests",
        content_type="application/json",
        headers=("retry-after: 0",),
    ),
    "disconnect-before-response": b"",
}


@pytest.mark.parametrize("failure", list(FAILED_CONTINUATIONS), ids=list(FAILED_CONTINUATIONS))
async def test_a_failed_continuation_is_retried_like_any_request(failure: str) -> None:
    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write({1: cut_answer(), 2: FAILED_CONTINUATIONS[failure]}.get(n, rest_answer()))
        await writer.drain()

    sleep = FakeSleep()
    policy = RetryPolicy(resume=True, max_attempts=3)
    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, retry=policy, sleep=sleep) as qwen,
    ):
        result = await qwen.chat(HELLO)
    assert result.complete
    assert result.content == RESUMED_TEXT
    assert (result.resumes, result.attempts) == (1, 3)
    assert len(sleep.delays) == 1
    if failure == "429-retry-after-0":
        assert sleep.delays == [0.0]
    continuations = [request.json()["messages"][-1] for request in server.requests[1:]]
    assert continuations == [{"role": "assistant", "content": FIRST_HALF, "partial": True}] * 2


async def test_a_continuation_gets_max_attempts_then_the_partial_is_raised() -> None:
    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(cut_answer() if n == 1 else FAILED_CONTINUATIONS["503"])
        await writer.drain()

    sleep = FakeSleep()
    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, retry=RetryPolicy(resume=True), sleep=sleep) as qwen,
    ):
        with pytest.raises(IncompleteStreamError) as caught:
            await qwen.chat(HELLO)
    assert len(server.requests) == 1 + 3
    assert len(sleep.delays) == 2
    assert caught.value.partial is not None
    assert caught.value.partial.content == FIRST_HALF
    notes = caught.value.__notes__
    assert notes == ["resuming failed after 3 attempts: HTTP 503: busy (request id r-ok)"]


async def test_a_continuation_refused_by_a_closed_port_is_retried() -> None:
    """The server goes away after the cut; the continuation's attempts all fail to connect."""

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(cut_answer())
        await writer.drain()

    sleep = FakeSleep()
    async with raw_server(handler) as server:
        qwen = QwenClient(KEY, server.url, retry=RetryPolicy(resume=True), sleep=sleep)
        await qwen.__aenter__()
        stream = qwen.stream_chat(HELLO)
        await stream.__aenter__()
        first = [chunk async for chunk in _until_text(stream)]
    # The server is closed now: every continuation attempt is refused.
    try:
        with pytest.raises(IncompleteStreamError) as caught:
            await collect(stream)
    finally:
        await stream.__aexit__(None, None, None)
        await qwen.close()
    assert first
    assert len(sleep.delays) == 2
    notes = caught.value.__notes__
    assert any(
        note.startswith("resuming failed after 3 attempts: cannot connect") for note in notes
    )
    assert caught.value.partial is not None
    assert caught.value.partial.content == FIRST_HALF


async def _until_text(stream: Any) -> AsyncIterator[ChatCompletionChunk]:
    async for chunk in stream:
        yield chunk
        if chunk.choices and chunk.choices[0].delta.content:
            return


async def test_a_retry_after_past_the_total_deadline_raises_at_once() -> None:
    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(
            http_response(
                b'{"error": {"code": "limit_requests", "message": "later"}}',
                status="429 Too Many Requests",
                headers=("retry-after: 10",),
            )
            if n in (1, 2)
            else sse_answer("hi")
        )
        await writer.drain()

    sleep = FakeSleep()
    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, sleep=sleep, timeouts=Timeouts(total_s=2.0)) as qwen,
    ):
        with pytest.raises(RateLimitError) as caught:
            await qwen.chat(HELLO)
        assert sleep.delays == []
        assert len(server.requests) == 1
        assert "not retried: waiting 10 s would pass total_s=2" in caught.value.__notes__
        # Within the deadline the same hint is honoured.
        result = await qwen.chat(HELLO, timeouts=Timeouts(total_s=600.0))
    assert result.content == "hi"
    assert sleep.delays == [10.0]


def gzip_of(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=31)
    return compressor.compress(data) + compressor.flush()


BAD_ENCODINGS = {
    "corrupt-gzip": ("gzip", b"\x1f\x8b\x08\x00" + b"not gzip at all" * 20, "gzip"),
    "br-unknown": ("br-unknown", sse_body([ROLE_FRAME, content_frame("hi", "stop")]), "br-unknown"),
    "zstd-x": ("zstd-x", b"(\xb5/\xfd garbage", "zstd-x"),
}


@pytest.mark.parametrize("case", list(BAD_ENCODINGS), ids=list(BAD_ENCODINGS))
async def test_an_undecodable_body_is_a_protocol_error_never_retried(case: str) -> None:
    encoding, body, named = BAD_ENCODINGS[case]

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(http_response(body, headers=(f"content-encoding: {encoding}",)))
        await writer.drain()

    sleep = FakeSleep()
    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, retry=RetryPolicy(resume=True), sleep=sleep) as qwen,
    ):
        with pytest.raises(ProtocolError) as caught:
            await qwen.chat(HELLO)
    message = str(caught.value)
    assert "Content-Encoding" in message
    assert named in message
    assert "\n" not in message
    assert len(server.requests) == 1
    assert sleep.delays == []


async def test_corrupt_gzip_after_output_is_not_resumed() -> None:
    first_read = asyncio.Event()
    good = gzip_of(sse_body([ROLE_FRAME, content_frame(FIRST_HALF)], done=False))

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        head = sse_head("content-encoding: gzip", "transfer-encoding: chunked")
        # The gzip stream without its trailer decodes to the first half...
        part = good[:-8]
        writer.write(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        await writer.drain()
        await first_read.wait()
        # ... then bytes that are not deflate data at all.
        junk = b"\xff" * 64
        writer.write(f"{len(junk):x}\r\n".encode() + junk + b"\r\n0\r\n\r\n")
        await writer.drain()

    sleep = FakeSleep()
    received: list[str] = []
    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, retry=RetryPolicy(resume=True), sleep=sleep) as qwen,
    ):
        with pytest.raises(ProtocolError) as caught:
            async with qwen.stream_chat(HELLO) as stream:
                async for chunk in stream:
                    received.append(chunk.choices[0].delta.content or "")
                    if "".join(received):
                        first_read.set()
    assert "".join(received) == FIRST_HALF
    assert caught.value.partial is not None
    assert caught.value.partial.content == FIRST_HALF
    assert not caught.value.partial.complete
    assert len(server.requests) == 1
    assert sleep.delays == []


REDIRECTS = {
    "301-html": http_response(
        b"<html>moved</html>",
        status="301 Moved Permanently",
        content_type="text/html",
        headers=("location: https://elsewhere.example/v1/chat/completions",),
    ),
    "307-with-sse-and-x-should-retry": http_response(
        sse_body([ROLE_FRAME, content_frame("not the answer", "stop")]),
        status="307 Temporary Redirect",
        headers=(
            "location: https://elsewhere.example/v1/chat/completions",
            "x-should-retry: true",
        ),
    ),
}


@pytest.mark.parametrize("case", list(REDIRECTS), ids=list(REDIRECTS))
async def test_a_redirect_is_never_followed_nor_retried(case: str) -> None:
    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(REDIRECTS[case])
        await writer.drain()

    sleep = FakeSleep()
    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, sleep=sleep) as qwen,
    ):
        with pytest.raises(RedirectError) as caught:
            await qwen.chat(HELLO)
    error = caught.value
    assert isinstance(error, APIStatusError)
    assert error.status == int(case[:3])
    assert error.location == "https://elsewhere.example/v1/chat/completions"
    assert str(error) == (
        f"HTTP {error.status}: redirect to https://elsewhere.example/v1/chat/completions not "
        "followed: qwen-sse never follows redirects (the API key must not travel); set "
        "base_url to the final address"
    )
    assert len(server.requests) == 1
    assert sleep.delays == []


# --- issue 16: the key is unreachable from every raised error ---


def assert_key_unreachable(error: BaseException, key: str) -> None:
    """What error trackers capture holds no trace of ``key``: the formatted exception with
    every frame's locals, and, walked recursively, every chained exception, its str, repr,
    attributes and notes, and the repr of every local of every frame of every traceback
    (containers are walked into; other objects are seen through their repr, as trackers do)."""
    formatted = traceback.TracebackException.from_exception(error, capture_locals=True)
    assert key not in "".join(formatted.format())
    seen: set[int] = set()

    def visit(value: Any, depth: int = 0) -> None:
        if id(value) in seen or depth > 8:
            return
        seen.add(id(value))
        text = value.decode("latin-1") if isinstance(value, bytes) else repr(value)
        assert key not in text, text[:200]
        if isinstance(value, BaseException):
            assert key not in str(value)
            for item in [*vars(value).values(), *value.args, *getattr(value, "__notes__", ())]:
                visit(item, depth + 1)
            tb = value.__traceback__
            while tb is not None:
                for local in tb.tb_frame.f_locals.values():
                    visit(local, depth + 1)
                tb = tb.tb_next
            for linked in (value.__cause__, value.__context__):
                if linked is not None:
                    visit(linked, depth + 1)
        elif isinstance(value, dict):
            for name, item in value.items():
                visit(name, depth + 1)
                visit(item, depth + 1)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                visit(item, depth + 1)

    visit(error)


async def raised_by(call: Awaitable[Any]) -> QwenSSEError:
    """The error ``call`` raises, caught in a frame whose locals hold nothing of the test."""
    try:
        await call
    except QwenSSEError as error:
        return error
    raise AssertionError("no error raised")


async def _disconnect(writer: asyncio.StreamWriter, n: int) -> None:
    """Close the connection without a response."""


async def _not_tls(writer: asyncio.StreamWriter, n: int) -> None:
    writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\nthis is not TLS")
    await writer.drain()


async def test_a_refused_connection_leaves_the_key_unreachable() -> None:
    url = f"http://127.0.0.1:{refused_port()}/v1"
    async with QwenClient(SECRET_KEY, url, sleep=FakeSleep()) as qwen:
        error = await raised_by(qwen.chat(HELLO))
    assert isinstance(error, TransportError)
    assert str(error).startswith("cannot connect to 127.0.0.1:")
    assert error.__cause__ is None
    assert_key_unreachable(error, SECRET_KEY)


async def test_a_disconnect_before_the_response_leaves_the_key_unreachable() -> None:
    async with (
        raw_server(_disconnect) as server,
        QwenClient(SECRET_KEY, server.url, sleep=FakeSleep()) as qwen,
    ):
        error = await raised_by(qwen.chat(HELLO))
    assert isinstance(error, TransportError)
    assert "ServerDisconnectedError" in str(error)
    assert len(server.requests) == 3
    assert_key_unreachable(error, SECRET_KEY)


async def test_a_tls_failure_leaves_the_key_unreachable() -> None:
    async with raw_server(_not_tls, read_request=False) as server:
        url = server.url.replace("http://", "https://")
        async with QwenClient(SECRET_KEY, url, retry=NO_RETRIES) as qwen:
            error = await raised_by(qwen.chat(HELLO))
    assert isinstance(error, TransportError)
    assert str(error).startswith("TLS with 127.0.0.1:")
    assert_key_unreachable(error, SECRET_KEY)


async def test_a_timeout_before_the_response_leaves_the_key_unreachable() -> None:
    release = asyncio.Event()

    async def silent(writer: asyncio.StreamWriter, n: int) -> None:
        await release.wait()

    async with (
        raw_server(silent) as server,
        QwenClient(SECRET_KEY, server.url, retry=NO_RETRIES) as qwen,
    ):
        try:
            error = await raised_by(qwen.chat(HELLO, timeouts=Timeouts(first_token_s=0.2)))
        finally:
            release.set()
    assert isinstance(error, FirstTokenTimeoutError)
    assert error.__context__ is None
    assert_key_unreachable(error, SECRET_KEY)


async def test_a_break_mid_stream_leaves_the_key_unreachable() -> None:
    piece = sse_body([ROLE_FRAME, content_frame("partial answer")], done=False)

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        # A chunk announced longer than what is sent before the connection closes.
        chunked = f"{len(piece) + 100:x}\r\n".encode() + piece
        writer.write(sse_head("transfer-encoding: chunked") + chunked)
        await writer.drain()

    async with (
        raw_server(handler) as server,
        QwenClient(SECRET_KEY, server.url, retry=NO_RETRIES) as qwen,
    ):
        error = await raised_by(qwen.chat(HELLO))
    assert type(error) is StreamInterruptedError
    assert error.partial is not None
    assert error.partial.content == "partial answer"
    assert error.__cause__ is None
    assert_key_unreachable(error, SECRET_KEY)


ECHO = f"Authorization: Bearer {SECRET_KEY}"


async def test_a_key_echoed_in_an_error_response_is_scrubbed_everywhere() -> None:
    body = json.dumps({"error": {"code": "invalid_api_key", "message": f"bad {ECHO}"}}).encode()

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(
            http_response(
                body,
                status=f"401 {SECRET_KEY} is wrong",
                content_type="application/json",
                headers=(f"x-request-id: {SECRET_KEY}", f"x-echo: {SECRET_KEY}"),
            )
        )
        await writer.drain()

    tap = RecordingTap()
    async with (
        raw_server(handler) as server,
        QwenClient(SECRET_KEY, server.url, wire_tap=tap, sleep=FakeSleep()) as qwen,
    ):
        error = await raised_by(qwen.chat(HELLO))
    assert isinstance(error, AuthenticationError)
    assert error.error_message == "bad Authorization: Bearer sk-***"
    assert error.request_id == "sk-***"
    assert "sk-***" in error.body
    assert_key_unreachable(error, SECRET_KEY)
    assert SECRET_KEY not in repr(tap.calls)
    assert SECRET_KEY not in repr(tap.headers)


async def test_a_key_echoed_in_a_stream_is_scrubbed_from_errors_and_the_tap() -> None:
    in_band = json.dumps({"error": {"code": "bad_key", "message": f"echo {ECHO}"}})
    events = [ROLE_FRAME, content_frame("partial answer"), in_band]

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(http_response(sse_body(events, done=False)))
        await writer.drain()

    tap = RecordingTap()
    async with (
        raw_server(handler) as server,
        QwenClient(SECRET_KEY, server.url, wire_tap=tap, retry=NO_RETRIES) as qwen,
    ):
        error = await raised_by(qwen.chat(HELLO))
    assert isinstance(error, InBandError)
    assert error.error_message == "echo Authorization: Bearer sk-***"
    assert error.partial is not None
    assert error.partial.content == "partial answer"
    assert_key_unreachable(error, SECRET_KEY)
    data = b"".join(args[0] for kind, args in tap.calls if kind == "data")
    assert SECRET_KEY.encode() not in data
    assert b"Bearer sk-***" in data


async def test_a_key_cut_by_an_error_preview_leaves_no_prefix_of_it() -> None:
    """A bad frame's message previews its first 200 characters; when the cut falls inside an
    echoed key, the part of the key before the cut is scrubbed too."""
    head = "not json: Authorization: Bearer "
    bad_frame = "x" * (200 - len(head) - 12) + head + SECRET_KEY + " and more"

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(http_response(sse_body([ROLE_FRAME, bad_frame], done=False)))
        await writer.drain()

    async with (
        raw_server(handler) as server,
        QwenClient(SECRET_KEY, server.url, retry=NO_RETRIES) as qwen,
    ):
        error = await raised_by(qwen.chat(HELLO))
    assert isinstance(error, ProtocolError)
    assert SECRET_KEY[:12] not in str(error)
    assert "Bearer sk-***" in str(error)
    assert_key_unreachable(error, SECRET_KEY)


async def test_a_key_echoed_in_a_body_that_is_not_a_stream_is_scrubbed() -> None:
    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(http_response(f"<p>{ECHO}</p>".encode(), content_type="text/html"))
        await writer.drain()

    async with (
        raw_server(handler) as server,
        QwenClient(SECRET_KEY, server.url, retry=NO_RETRIES) as qwen,
    ):
        error = await raised_by(qwen.chat(HELLO))
    assert isinstance(error, ProtocolError)
    assert error.frame == b"<p>Authorization: Bearer sk-***</p>"
    assert_key_unreachable(error, SECRET_KEY)


# --- issue 16: other servers' error bodies ---


ERROR_BODIES = {
    "fastapi-detail": (
        "401 Unauthorized",
        {"detail": "Invalid API Key"},
        AuthenticationError,
        "Invalid API Key",
        "HTTP 401: Invalid API Key (request id r-ok)",
    ),
    "fastapi-validation-list": (
        "422 Unprocessable Entity",
        {
            "detail": [
                {"loc": ["body", "messages", 0, "role"], "msg": "field required", "type": "x"},
                {"loc": ["body", "temperature"], "msg": "must be <= 2", "type": "y"},
            ]
        },
        APIStatusError,
        "body.messages.0.role: field required\nbody.temperature: must be <= 2",
        "HTTP 422: body.messages.0.role: field required body.temperature: must be <= 2"
        " (request id r-ok)",
    ),
    "fastapi-detail-object": (
        "500 Internal Server Error",
        {"detail": {"code": 7, "where": "engine"}},
        ServerError,
        '{"code":7,"where":"engine"}',
        'HTTP 500: {"code":7,"where":"engine"} (request id r-ok)',
    ),
    "multi-line-message": (
        "500 Internal Server Error",
        {"error": {"code": "boom", "message": "line one\nline two\r\n  line three"}},
        ServerError,
        "line one\nline two\r\n  line three",
        "HTTP 500 boom: line one line two line three (request id r-ok)",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_BODIES), ids=list(ERROR_BODIES))
async def test_error_bodies_of_other_servers_keep_their_message(case: str) -> None:
    status, body, error_type, full, shown = ERROR_BODIES[case]

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        encoded = json.dumps(body).encode()
        writer.write(http_response(encoded, status=status, content_type="application/json"))
        await writer.drain()

    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, sleep=FakeSleep(), retry=NO_RETRIES) as qwen,
    ):
        error = await raised_by(qwen.chat(HELLO))
    assert type(error) is error_type
    assert isinstance(error, APIStatusError)
    assert error.error_message == full
    assert str(error) == shown


@pytest.mark.parametrize(
    "body",
    [
        b'{"detail": [{"loc": 5, "msg": "odd location"}]}',
        b'{"detail": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
        b'{"error": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
    ids=["loc-not-a-list", "deep-detail", "deep-error"],
)
async def test_a_hostile_error_body_is_still_an_api_status_error(body: bytes) -> None:
    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(http_response(body, status="500 Oops", content_type="application/json"))
        await writer.drain()

    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, sleep=FakeSleep(), retry=NO_RETRIES) as qwen,
    ):
        error = await raised_by(qwen.chat(HELLO))
    assert type(error) is ServerError
    assert str(error).startswith("HTTP 500")
    assert "\n" not in str(error)
    assert error.body == body.decode()


# --- issue 16: tests that notice a broken deadline or pool promise ---


async def test_the_role_only_first_chunk_does_not_stop_the_first_token_timer() -> None:
    release = asyncio.Event()

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(sse_head() + sse_body([ROLE_FRAME], done=False))
        await writer.drain()
        await release.wait()  # stalls until the test is done

    timeouts = Timeouts(first_token_s=0.2, idle_s=1.0)
    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, retry=NO_RETRIES) as qwen,
    ):
        try:
            error = await raised_by(qwen.chat(HELLO, timeouts=timeouts))
        finally:
            release.set()
    assert type(error) is FirstTokenTimeoutError
    assert error.partial is not None
    assert error.partial.content == ""
    assert error.partial.timing.events == 1


async def test_a_slow_consumer_is_not_an_idle_server() -> None:
    """The consumer pauses longer than idle_s between two chunks; the server sends the next
    chunk only once the pause is over, so the read after the pause waits for it. Only the
    time spent waiting for the server counts: the stream completes."""
    paused = asyncio.Event()
    first = frame([{"index": 0, "delta": {"role": "assistant", "content": "slow "}}])
    rest = frame([{"index": 0, "delta": {"content": "reader"}, "finish_reason": "stop"}])

    received: list[str] = []
    async with (
        raw_server(held_answer(first, rest, paused)) as server,
        QwenClient(KEY, server.url, retry=NO_RETRIES) as qwen,
        qwen.stream_chat(ENGLISH, timeouts=Timeouts(idle_s=0.5)) as stream,
    ):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
            if len(received) == 1:
                await asyncio.sleep(1.0)  # the consumer's own time, twice idle_s
                paused.set()
    assert (stream.result.complete, "".join(received)) == (True, "slow reader")


async def test_more_than_a_hundred_streams_are_open_at_once() -> None:
    """aiohttp's default pool holds 100 connections; the client's must not stop there (a
    101st stream would wait for a connection until its first-token timeout)."""
    config = EmulatorConfig(api_key=KEY, ttft_s=600.0, itl_s=0.0)
    async with Emulator(config) as server, plain_client(server) as qwen:
        timeouts = Timeouts(first_token_s=30.0)
        streams = [qwen.stream_chat(HELLO, timeouts=timeouts) for _ in range(150)]
        try:
            await asyncio.gather(*(stream.__aenter__() for stream in streams))
            assert server.active_streams == 150
        finally:
            for stream in streams:
                await stream.__aexit__(None, None, None)


async def test_a_key_echoed_in_a_frame_that_fails_its_read_is_unreachable() -> None:
    # The failing frame is the whole read, so the decoder raises from feed: the raised
    # error's traceback runs through the frames that held the read's raw bytes.
    for frame_text in (
        json.dumps({"error": {"code": "bad_key", "message": f"echo {ECHO}"}}),
        f'{{"choices": "{ECHO}"}}',
    ):
        body = sse_body([frame_text], done=False)

        async def handler(writer: asyncio.StreamWriter, n: int, body: bytes = body) -> None:
            writer.write(http_response(body))
            await writer.drain()

        async with (
            raw_server(handler) as server,
            QwenClient(SECRET_KEY, server.url, retry=NO_RETRIES) as qwen,
        ):
            error = await raised_by(qwen.chat(HELLO))
        assert isinstance(error, InBandError | ProtocolError)
        assert_key_unreachable(error, SECRET_KEY)

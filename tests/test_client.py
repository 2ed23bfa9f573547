"""Tests of qwen_sse.client over real loopback sockets against the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import random
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_sse.chat import ChatStreamDecoder
from qwen_sse.chunks import ChatCompletionChunk
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
    ServerError,
    StreamLimitError,
    TotalTimeoutError,
    TransportError,
)
from qwen_sse.limiter import ConcurrencyLimiter
from qwen_sse.retry import NO_RETRIES, RetryPolicy
from tests.rawserver import frame, http_response, raw_server, sse_answer, sse_body

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
    emulator.schedule(fault)
    with pytest.raises(IncompleteStreamError) as caught:
        await client.chat(HELLO)
    partial = caught.value.partial
    assert partial is not None
    assert partial.content
    assert expected(HELLO).content.startswith(partial.content)
    assert partial.content != expected(HELLO).content or fault.no_done


async def test_drop_at_every_kind_of_offset_never_passes_off_a_truncated_answer(
    client: QwenClient, emulator: Emulator
) -> None:
    full = expected(ENGLISH).content
    total_bytes = (await client.chat(ENGLISH)).timing.bytes_received
    for offset in range(0, total_bytes, max(1, total_bytes // 60)):
        emulator.schedule(Fault(drop_after_bytes=offset))
        try:
            result = await client.chat(ENGLISH)
        except IncompleteStreamError as error:
            assert error.partial is not None
            assert full.startswith(error.partial.content), offset
        else:
            assert result.complete
            assert result.content == full, offset


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

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        events = [frame([{"index": 0, "delta": {"content": "hi"}}])]
        writer.write(_SSE_HEAD + b"\r\n" + sse_body(events, done=False))
        await writer.drain()
        await asyncio.sleep(0.05)  # so that [DONE] comes in a read of its own
        writer.write(sse_body([frame([{"index": 0, "delta": {}, "finish_reason": "stop"}])]))
        await writer.drain()

    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, wire_tap=FailingTap()) as qwen,
        qwen.stream_chat(HELLO) as stream,
    ):
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
    async with client.stream_chat(HELLO) as stream:
        async for _ in stream:
            break
    assert not stream.result.complete
    await settle(emulator)
    assert emulator.active_streams == 0


async def test_consumer_exception_releases_the_connection(
    client: QwenClient, emulator: Emulator
) -> None:
    with pytest.raises(KeyError):
        async with client.stream_chat(HELLO) as stream:
            async for _ in stream:
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


async def test_result_before_the_end_is_partial(client: QwenClient) -> None:
    async with client.stream_chat(HELLO) as stream:
        first = await anext(aiter(stream))
        assert first.choices[0].delta.role == "assistant"
        assert not stream.result.complete
        await collect(stream)
    assert stream.result.complete


async def test_errors_are_all_rooted(client: QwenClient, emulator: Emulator) -> None:
    emulator.schedule(Fault(status=503))
    with pytest.raises(QwenSSEError):
        await client.chat(HELLO)


# --- retries (before any output reached the caller) ---


class FakeSleep:
    """Records the delays the client asks for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


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
        QwenClient(KEY, protocol="grpc")  # type: ignore[arg-type]


class RecordingTap:
    """A wire tap that keeps everything it is shown."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def request(self, *, method: str, url: str, headers: Mapping[str, str], body: bytes) -> None:
        self.calls.append(("request", (method, url, dict(headers), body)))

    def response(self, *, status: int, headers: Mapping[str, str], at_s: float) -> None:
        self.calls.append(("response", (status, at_s)))

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
    assert native.usage == compatible.usage
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


async def test_a_slow_consumer_is_not_an_idle_server(emulator: Emulator) -> None:
    received: list[str] = []
    async with (
        plain_client(emulator) as qwen,
        qwen.stream_chat(ENGLISH, timeouts=Timeouts(idle_s=0.1)) as stream,
    ):
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
            if len(received) in (2, 5):
                await asyncio.sleep(0.3)  # the whole answer waits in the buffer meanwhile
    assert stream.result.complete
    assert "".join(received) == expected(ENGLISH).content


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

"""The client speaks every registered wire protocol over a real loopback socket.

A scripted raw server plays each protocol's documented stream (Anthropic's "Streaming
Messages" examples, the native fixture, ...) so that what the client sends (path, key
header, body) and what it makes of the answer are checked against bytes nobody here
generated; the emulator, which serves all five protocols, is exercised elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from qwen_sse import protocols
from qwen_sse.chat import ChatResult
from qwen_sse.client import QwenClient, WireTap
from qwen_sse.emulator import EmulatedAnswer, Emulator, EmulatorConfig, Fault, emulated_answer
from qwen_sse.errors import (
    AuthenticationError,
    InBandError,
    IncompleteStreamError,
    QwenSSEError,
    RateLimitError,
)
from qwen_sse.limiter import Outcome
from qwen_sse.retry import NO_RETRIES, RetryPolicy
from qwen_sse.tokens import count_tokens
from tests.fakesleep import FakeSleep
from tests.rawserver import RawHandler, RawServer, http_response, raw_server

FIXTURES = Path(__file__).parent / "fixtures"
KEY = "sk-test-protocols-0123456789"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]


def origin_of(server: RawServer) -> str:
    return server.url.removesuffix("/v1")


async def ask(
    server: RawServer, protocol: str, **params: Any
) -> tuple[QwenClient, ChatResult, bytes]:
    wire = protocols.get(protocol)
    async with QwenClient(
        KEY, origin_of(server) + wire.root, protocol=protocol, retry=NO_RETRIES
    ) as client:
        result = await client.chat(MESSAGES, "qwen-plus", **params)
    return client, result, server.requests[-1].head


def answering(body: bytes, **options: str) -> RawHandler:
    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(http_response(body, **options))
        await writer.drain()

    return handler


async def test_anthropic_sends_its_key_in_x_api_key_and_reads_the_documented_stream() -> None:
    stream = (FIXTURES / "anthropic-basic.sse").read_bytes()
    async with raw_server(answering(stream)) as server:
        _, result, head = await ask(server, "anthropic", max_tokens=256)
    request = server.requests[0]
    assert head.startswith(b"POST /apps/anthropic/v1/messages HTTP/1.1")
    assert f"x-api-key: {KEY}".encode() in head
    assert b"authorization" not in head.lower()
    assert b"anthropic-version: 2023-06-01" in head.lower()
    body = request.json()
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": "Hello"}]
    assert (body["max_tokens"], body["stream"]) == (256, True)
    assert result.complete
    assert result.content == "Hello!"
    assert result.finish_reason == "stop"


async def test_anthropic_tool_use_and_thinking_through_the_client() -> None:
    tools = (FIXTURES / "anthropic-tool-use.sse").read_bytes()
    thinking = (FIXTURES / "anthropic-thinking.sse").read_bytes()
    async with raw_server(answering(tools)) as server:
        _, with_tools, _ = await ask(server, "anthropic")
    async with raw_server(answering(thinking)) as server:
        _, with_thinking, _ = await ask(server, "anthropic", enable_thinking=True)
    assert server.requests[0].json()["thinking"]["type"] == "enabled"
    assert with_tools.complete
    assert with_tools.finish_reason == "tool_calls"
    (call,) = with_tools.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments.startswith("{")
    assert with_thinking.complete
    assert with_thinking.reasoning_content
    assert with_thinking.reasoning_signature


async def test_an_anthropic_in_band_error_keeps_what_arrived() -> None:
    stream = (FIXTURES / "anthropic-error.sse").read_bytes()
    async with raw_server(answering(stream)) as server:
        with pytest.raises(InBandError) as caught:
            await ask(server, "anthropic")
    assert caught.value.code == "overloaded_error"
    assert caught.value.partial is not None
    assert not caught.value.partial.complete


async def test_an_anthropic_http_error_body_is_typed() -> None:
    body = b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}'
    status = "401 Unauthorized"
    async with raw_server(
        answering(body, status=status, content_type="application/json")
    ) as server:
        with pytest.raises(AuthenticationError) as caught:
            await ask(server, "anthropic")
    assert caught.value.code == "authentication_error"
    assert "invalid x-api-key" in str(caught.value)


async def test_the_wire_tap_never_shows_the_x_api_key() -> None:
    stream = (FIXTURES / "anthropic-basic.sse").read_bytes()
    seen: list[dict[str, str]] = []

    class Tap:
        def request(
            self, *, method: str, url: str, headers: Mapping[str, str], body: bytes
        ) -> None:
            seen.append(dict(headers))

        def response(self, *, status: int, headers: Mapping[str, str], at_s: float) -> None:
            pass

        def data(self, chunk: bytes, at_s: float) -> None:
            pass

        def end(self, *, at_s: float, outcome: Outcome, error: QwenSSEError | None) -> None:
            pass

    tap: WireTap = Tap()

    async with (
        raw_server(answering(stream)) as server,
        QwenClient(
            KEY,
            origin_of(server) + protocols.get("anthropic").root,
            protocol="anthropic",
            wire_tap=tap,
        ) as client,
    ):
        await client.chat(MESSAGES)
    (headers,) = seen
    assert headers["x-api-key"] == "***"
    assert KEY not in repr(headers)
    assert KEY not in repr(client)


async def test_native_and_multimodal_send_the_sse_header_to_their_paths() -> None:
    stream = (FIXTURES / "native-plain.sse").read_bytes()
    for protocol, path in (
        ("native", b"/api/v1/services/aigc/text-generation/generation"),
        ("native-multimodal", b"/api/v1/services/aigc/multimodal-generation/generation"),
    ):
        async with raw_server(answering(stream)) as server:
            _, result, head = await ask(server, protocol, top_k=5)
        assert head.startswith(b"POST " + path + b" HTTP/1.1"), protocol
        assert b"x-dashscope-sse: enable" in head.lower()
        assert f"authorization: bearer {KEY}".lower().encode() in head.lower()
        body = server.requests[0].json()
        assert body["input"]["messages"] == MESSAGES
        assert body["parameters"]["top_k"] == 5
        assert result.complete
        assert result.finish_reason == "stop"


async def test_a_responses_stream_that_stops_short_is_never_complete() -> None:
    events: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "response": {"id": "resp_1", "model": "m", "status": "in_progress", "output": []},
        },
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"type": "message", "id": "msg_1", "role": "assistant", "content": []},
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Half an",
        },
    ]
    stream = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()
    async with raw_server(answering(stream)) as server:
        with pytest.raises(IncompleteStreamError) as caught:
            await ask(server, "responses", max_tokens=64)
    assert server.requests[0].head.startswith(b"POST /compatible-mode/v1/responses HTTP/1.1")
    body = server.requests[0].json()
    assert body["max_output_tokens"] == 64
    assert "max_tokens" not in body
    partial = caught.value.partial
    assert partial is not None
    assert not partial.complete
    assert partial.content == "Half an"


async def test_a_throttled_responses_request_is_a_rate_limit_error() -> None:
    error = {"message": "Requests rate limit exceeded", "code": "limit_requests"}
    body = json.dumps({"error": error}).encode()
    async with raw_server(
        answering(body, status="429 Too Many Requests", content_type="application/json")
    ) as server:
        with pytest.raises(RateLimitError) as caught:
            await ask(server, "responses")
    assert caught.value.kind == "rpm"


# --- Every registered protocol against the emulator, which serves them all. ---

EMULATOR_KEY = "sk-test"
ASK = [{"role": "user", "content": "Tell me about streaming."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
RESUMABLE = {"compatible", "native"}


def expected_answer(*, choice: int = 0, **params: Any) -> EmulatedAnswer:
    """What the emulator answers ``ASK`` with, whatever the protocol it is asked in (the
    answer of choice ``choice`` when ``params`` ask for ``n``)."""
    return emulated_answer({"model": "qwen-plus", "messages": ASK, **params}, choice=choice)


def continuation_of(protocol: str, body: Mapping[str, Any]) -> str:
    """What the emulator streams for a partial-mode ``body`` of ``protocol``: the rest of
    the answer after the prefix in its last message."""
    facts = protocols.get(protocol).facts(body)
    return emulated_answer({"model": facts.model, "messages": list(facts.messages)}).content


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    config = EmulatorConfig(api_key=EMULATOR_KEY, ttft_s=0, itl_s=0)
    async with Emulator(config) as running:
        yield running


def client_of(emulator: Emulator, protocol: str, **options: Any) -> QwenClient:
    return QwenClient(EMULATOR_KEY, emulator.base_url_for(protocol), protocol=protocol, **options)


@pytest.mark.parametrize("protocol", protocols.NAMES)
async def test_every_protocol_gets_the_answer_the_emulator_meant(
    emulator: Emulator, protocol: str
) -> None:
    async with client_of(emulator, protocol) as client:
        plain = await client.chat(ASK, "qwen-plus")
        thinking = await client.chat(ASK, "qwen-plus", enable_thinking=True)
        tools = await client.chat(ASK, "qwen-plus", tools=[WEATHER_TOOL], tool_choice="auto")
    expected = expected_answer()
    assert plain.complete
    assert plain.content == expected.content
    assert plain.finish_reason == "stop"
    assert plain.usage is not None
    assert plain.usage.completion_tokens == count_tokens(expected.content)
    reasoning = expected_answer(enable_thinking=True)
    assert thinking.complete
    assert (thinking.reasoning_content, thinking.content) == (
        reasoning.reasoning,
        reasoning.content,
    )
    called = expected_answer(tools=[WEATHER_TOOL], tool_choice="auto")
    assert tools.complete
    assert tools.finish_reason == called.finish_reason
    assert [(c.function.name, c.function.arguments) for c in tools.tool_calls] == list(
        called.tool_calls
    )


@pytest.mark.parametrize("protocol", ["compatible", "native", "native-multimodal"])
async def test_n_choices_stream_end_to_end_through_the_client(
    emulator: Emulator, protocol: str
) -> None:
    async with client_of(emulator, protocol) as client:
        async with client.stream_chat(ASK, "qwen-plus", n=3, max_tokens=5) as stream:
            indices = {choice.index async for chunk in stream for choice in chunk.choices}
        result = stream.result
    answers = [expected_answer(n=3, max_tokens=5, choice=choice) for choice in range(3)]
    assert indices == {0, 1, 2}
    assert result.complete
    assert [(c.index, c.content, c.finish_reason) for c in result.choices] == [
        (index, answer.content, answer.finish_reason) for index, answer in enumerate(answers)
    ]
    assert result.usage is not None
    assert result.usage.completion_tokens == sum(a.completion_tokens for a in answers) <= 15


@pytest.mark.parametrize("protocol", protocols.NAMES)
async def test_every_protocol_reports_an_in_band_error_with_what_arrived(
    emulator: Emulator, protocol: str
) -> None:
    emulator.schedule(Fault(error_after_events=4, code="data_inspection_failed"))
    async with client_of(emulator, protocol, retry=NO_RETRIES) as client:
        with pytest.raises(InBandError) as caught:
            await client.chat(ASK, "qwen-plus")
    partial = caught.value.partial
    assert partial is not None
    assert not partial.complete
    assert expected_answer().content.startswith(partial.content)


@pytest.mark.parametrize("protocol", protocols.NAMES)
async def test_a_cut_stream_resumes_where_the_protocol_can_and_is_never_complete_elsewhere(
    emulator: Emulator, protocol: str
) -> None:
    emulator.schedule(Fault(drop_after_events=6))
    policy = RetryPolicy(resume=True, initial_delay_s=0.001)
    expected = expected_answer().content
    async with client_of(emulator, protocol, retry=policy, sleep=FakeSleep()) as client:
        if protocol in RESUMABLE:
            result = await client.chat(ASK, "qwen-plus")
            assert result.complete
            assert result.resumes == 1
            continuation = emulator.requests[-1].body
            assert continuation is not None
            last = protocols.get(protocol).facts(continuation).messages[-1]
            assert last["role"] == "assistant"
            assert last["partial"] is True
            assert result.content == last["content"] + continuation_of(protocol, continuation)
            return
        with pytest.raises(IncompleteStreamError) as caught:
            await client.chat(ASK, "qwen-plus")
    partial = caught.value.partial
    assert partial is not None
    assert not partial.complete
    assert partial.content
    assert expected.startswith(partial.content)
    assert len(emulator.requests) == 1  # no continuation exists: none was sent


@pytest.mark.parametrize("protocol", protocols.NAMES)
async def test_a_stream_without_its_end_marker_is_never_complete(
    emulator: Emulator, protocol: str
) -> None:
    emulator.schedule(Fault(no_done=True))
    async with client_of(emulator, protocol, retry=NO_RETRIES) as client:
        with pytest.raises(IncompleteStreamError) as caught:
            await client.chat(ASK, "qwen-plus")
    assert caught.value.partial is not None
    assert not caught.value.partial.complete
    assert caught.value.partial.content == expected_answer().content

"""Tests of qwen_sse.debugproxy.server over real loopback sockets: the official SDKs, which
nobody here wrote, talk through the proxy to the emulator; a TCP relay on each side keeps
the bytes, so what an SDK received is compared with what the emulator sent, and the proxy's
summary with what the emulator meant to send (:func:`emulated_answer`)."""

from __future__ import annotations

import asyncio
import gzip
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from qwen_sse.cli import main
from qwen_sse.client import QwenClient
from qwen_sse.debugproxy import DebugProxy, ExchangeSummary, ProxyFault
from qwen_sse.emulator import Emulator, EmulatorConfig, emulated_answer
from qwen_sse.errors import ConfigurationError
from qwen_sse.recording import ReplayServer, load_recording
from qwen_sse.retry import NO_RETRIES
from qwen_sse.sse import SSEDecoder
from qwen_sse.tokens import count_message_tokens, count_tokens
from tests.rawserver import raw_server
from tests.tcptee import HTTPMessage, Tee, tcp_tee

KEY = "sk-test-proxy-1234"
MODEL = "qwen-plus"
QUESTION = "Tell me about streaming."
USER: list[Any] = [{"role": "user", "content": QUESTION}]


def chat(**extra: Any) -> dict[str, Any]:
    """The Chat Completions body every protocol's request is read as."""
    return {"model": MODEL, "messages": USER, **extra}


@dataclass
class Chain:
    """SDK -> client tee -> proxy -> upstream tee -> emulator."""

    emulator: Emulator
    proxy: DebugProxy
    client_side: Tee
    upstream_side: Tee
    out: io.StringIO

    def url(self, protocol: str) -> str:
        """The base URL of ``protocol`` through the proxy (and the client-side relay)."""
        return self.emulator.base_url_for(protocol).replace(
            f"http://127.0.0.1:{self.emulator.port}", self.client_side.origin
        )

    def one_exchange(self) -> tuple[HTTPMessage, HTTPMessage, ExchangeSummary]:
        """The response the SDK received, the one the emulator sent, and the summary."""
        [received] = self.client_side.responses()
        [sent] = self.upstream_side.responses()
        [summary] = self.proxy.exchanges
        return received, sent, summary


@asynccontextmanager
async def chain(**options: Any) -> AsyncIterator[Chain]:
    config = EmulatorConfig(api_key=KEY, ttft_s=0, itl_s=0)
    async with (
        Emulator(config) as emulator,
        tcp_tee("127.0.0.1", emulator.port) as upstream_side,
    ):
        out = io.StringIO()
        async with (
            DebugProxy(upstream_side.origin, out=out, **options) as proxy,
            tcp_tee("127.0.0.1", proxy.port) as client_side,
        ):
            yield Chain(emulator, proxy, client_side, upstream_side, out)


def assert_forwarded_unchanged(link: Chain) -> None:
    """The request went upstream as the SDK sent it (but Host, and the hop-by-hop headers),
    and the SDK received the emulator's response byte for byte."""
    [asked] = link.client_side.requests()
    [forwarded] = link.upstream_side.requests()
    assert forwarded.start == asked.start
    assert forwarded.body == asked.body
    dropped = {"host", "connection", "content-length"}
    assert [h for h in forwarded.headers if h[0] not in dropped] == [
        h for h in asked.headers if h[0] not in dropped
    ]
    received, sent, _ = link.one_exchange()
    assert received.whole
    assert sent.whole
    assert received.status == sent.status
    assert received.body == sent.body
    for name in ("content-type", "x-request-id", "cache-control", "req-cost-time"):
        assert received.header(name) == sent.header(name)


def events_in(body: bytes) -> int:
    return len(SSEDecoder().feed(body))


def assert_summary(summary: ExchangeSummary, protocol: str, sent: HTTPMessage) -> None:
    assert (summary.protocol, summary.model, summary.status) == (protocol, MODEL, 200)
    assert (summary.kind, summary.outcome, summary.complete) == ("stream", "ok", True)
    assert summary.anomalies == ()
    assert summary.request_id == sent.header("x-request-id")
    assert summary.bytes == len(sent.body)
    assert summary.events == events_in(sent.body)
    assert summary.first_byte_ms is not None
    assert summary.head_ms is not None
    assert summary.first_token_ms is not None
    assert summary.first_token_ms >= summary.first_byte_ms >= summary.head_ms
    assert summary.gap_p50_ms is not None
    assert summary.gap_max_ms is not None
    assert summary.gap_max_ms >= summary.gap_p50_ms


def text_of(path: str | Path) -> str:
    return Path(path).read_text("utf-8")


def assert_key_nowhere(*texts: str) -> None:
    for text in texts:
        assert KEY not in text


# --- the official SDKs, streaming, through the proxy ---------------------------------------------


async def test_openai_chat_completions_stream_through_the_proxy() -> None:
    answer = emulated_answer(chat(enable_thinking=True))
    async with chain() as link:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=link.url("compatible"), max_retries=0)
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"enable_thinking": True},
        )
        content, reasoning, usage = [], [], None
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                content.append(choice.delta.content or "")
                reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
        await client.close()
        assert ("".join(reasoning), "".join(content)) == (answer.reasoning, answer.content)
        assert_forwarded_unchanged(link)
        _, sent, summary = link.one_exchange()
    assert_summary(summary, "compatible", sent)
    assert summary.result is not None
    assert (summary.result.reasoning_content, summary.result.content) == (
        answer.reasoning,
        answer.content,
    )
    assert summary.result.finish_reason == "stop"
    assert usage is not None
    assert summary.usage is not None
    assert summary.usage.prompt_tokens == usage.prompt_tokens == count_message_tokens(USER)
    assert summary.usage.completion_tokens == usage.completion_tokens
    assert usage.completion_tokens == count_tokens(answer.reasoning) + count_tokens(answer.content)
    out = link.out.getvalue()
    assert "[#1] POST /compatible-mode/v1/chat/completions (compatible, qwen-plus)" in out
    assert "[#1] 200 compatible qwen-plus complete: " in out
    assert "anomalies: none" in out
    assert_key_nowhere(out, repr(summary))


async def test_openai_responses_stream_through_the_proxy() -> None:
    answer = emulated_answer(chat(enable_thinking=True))
    async with chain() as link:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=link.url("responses"), max_retries=0)
        async with client.responses.stream(
            model=MODEL, input=QUESTION, extra_body={"enable_thinking": True}
        ) as stream:
            texts = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            response = await stream.get_final_response()
        await client.close()
        assert "".join(texts) == response.output_text == answer.content
        assert_forwarded_unchanged(link)
        _, sent, summary = link.one_exchange()
    assert_summary(summary, "responses", sent)
    assert summary.result is not None
    assert summary.result.content == answer.content
    assert summary.result.reasoning_content == answer.reasoning
    assert response.usage is not None
    assert summary.usage is not None
    assert summary.usage.prompt_tokens == response.usage.input_tokens == count_message_tokens(USER)
    assert summary.usage.completion_tokens == response.usage.output_tokens


async def test_anthropic_messages_stream_through_the_proxy() -> None:
    answer = emulated_answer(chat(max_tokens=1024))
    async with chain() as link:
        client = anthropic.AsyncAnthropic(
            api_key=KEY, base_url=link.url("anthropic"), max_retries=0
        )
        async with client.messages.stream(model=MODEL, max_tokens=1024, messages=USER) as stream:
            pieces = [text async for text in stream.text_stream]
            message = await stream.get_final_message()
        await client.close()
        assert "".join(pieces) == answer.content
        assert_forwarded_unchanged(link)
        [asked] = link.client_side.requests()
        # The key went through as the SDK sent it (this version as a bearer token).
        assert asked.header("authorization") == f"Bearer {KEY}"
        _, sent, summary = link.one_exchange()
    assert_summary(summary, "anthropic", sent)
    assert summary.result is not None
    assert summary.result.content == answer.content
    assert summary.result.finish_reason == "stop"
    assert summary.usage is not None
    assert summary.usage.prompt_tokens == message.usage.input_tokens
    assert summary.usage.completion_tokens == message.usage.output_tokens
    assert message.usage.output_tokens == count_tokens(answer.content)


@pytest.mark.parametrize("protocol", ["native", "native-multimodal"])
async def test_the_native_protocols_through_the_proxy(protocol: str) -> None:
    """No official client here speaks them: qwen-sse's own does, as the dashscope SDK would."""
    answer = emulated_answer(chat())
    async with chain() as link:
        client = QwenClient(KEY, link.url(protocol), protocol=protocol, retry=NO_RETRIES)
        async with client:
            result = await client.chat(USER, MODEL)
        assert result.content == answer.content
        assert_forwarded_unchanged(link)
        _, sent, summary = link.one_exchange()
    assert_summary(summary, protocol, sent)
    assert summary.result is not None
    assert summary.result.content == answer.content


async def test_a_whole_json_answer_is_forwarded_and_not_read_as_a_stream() -> None:
    answer = emulated_answer(chat(max_tokens=5))
    async with chain() as link:
        client = anthropic.AsyncAnthropic(
            api_key=KEY, base_url=link.url("anthropic"), max_retries=0
        )
        message = await client.messages.create(model=MODEL, max_tokens=5, messages=USER)
        await client.close()
        assert message.content[0].type == "text"
        assert message.content[0].text == answer.content
        assert_forwarded_unchanged(link)
        _, _, summary = link.one_exchange()
    assert (summary.kind, summary.complete, summary.result, summary.anomalies) == (
        "json",
        None,
        None,
        (),
    )


# --- faults the SDKs see --------------------------------------------------------------------------


async def test_a_drop_reaches_the_sdk_and_the_recording_shows_it(tmp_path: Path) -> None:
    fault = ProxyFault(drop_after_events=5)
    async with chain(fault=fault, record_dir=tmp_path) as link:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=link.url("compatible"), max_retries=0)
        received_text = []
        with pytest.raises(openai.APIConnectionError):
            stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
            async for chunk in stream:
                received_text.append(chunk.choices[0].delta.content or "")
        await client.close()
        received, sent, summary = link.one_exchange()
    assert not received.whole  # a broken chunked body, not a clean end
    decoder = SSEDecoder()
    assert len(decoder.feed(received.body)) == 5
    assert received.body == sent.body[: len(received.body)]
    assert received.body.endswith(b"\n\n")
    assert (summary.outcome, summary.complete, summary.events) == ("fault", False, 5)
    assert summary.fault == '{"drop_after_events":5}'
    assert "missing-end" in {anomaly.kind for anomaly in summary.anomalies}
    assert summary.recording is not None
    [attempt] = load_recording(summary.recording)
    assert attempt.data == received.body
    assert attempt.error_type == "StreamInterruptedError"
    assert attempt.outcome == "error"
    assert "".join(received_text) in emulated_answer(chat()).content


async def test_no_done_the_sdk_reads_leniently_and_the_proxy_flags_it(tmp_path: Path) -> None:
    answer = emulated_answer(chat(max_tokens=1024))
    async with chain(fault=ProxyFault(no_done=True), record_dir=tmp_path) as link:
        client = anthropic.AsyncAnthropic(
            api_key=KEY, base_url=link.url("anthropic"), max_retries=0
        )
        async with client.messages.stream(model=MODEL, max_tokens=1024, messages=USER) as stream:
            message = await stream.get_final_message()
        await client.close()
        received, sent, summary = link.one_exchange()
    # Lenient where qwen-sse is not: without message_stop the SDK still gives a message.
    assert message.content[0].type == "text"
    assert message.content[0].text == answer.content
    assert received.whole
    assert sent.body.endswith(b'event:message_stop\ndata:{"type":"message_stop"}\n\n')
    assert received.body == sent.body[: sent.body.rindex(b"event:message_stop")]
    assert (summary.outcome, summary.complete) == ("fault", False)
    assert [anomaly.kind for anomaly in summary.anomalies] == ["missing-end"]
    assert summary.recording is not None
    [attempt] = load_recording(summary.recording)
    assert (attempt.outcome, attempt.data) == ("ok", received.body)


async def test_an_error_status_is_answered_in_the_protocols_shape_without_the_upstream() -> None:
    fault = ProxyFault(status=429, retry_after="2", model=MODEL)
    async with chain(fault=fault) as link:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=link.url("compatible"), max_retries=0)
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        assert limited.value.code == "limit_requests"
        assert limited.value.response.headers["retry-after"] == "2"
        # Another model is not picked: it goes through.
        other = await client.chat.completions.create(model="qwen-max", messages=USER)
        assert other.choices[0].message.content
        claude = anthropic.AsyncAnthropic(
            api_key=KEY, base_url=link.url("anthropic"), max_retries=0
        )
        with pytest.raises(anthropic.RateLimitError) as anthropic_limited:
            await claude.messages.create(model=MODEL, max_tokens=5, messages=USER)
        assert isinstance(anthropic_limited.value.body, dict)
        assert anthropic_limited.value.body["error"]["type"] == "rate_limit_error"
        await client.close()
        await claude.close()
        assert [request.body["model"] for request in link.emulator.requests] == ["qwen-max"]
        first, second, third = link.proxy.exchanges
    assert (first.status, first.outcome, first.error) == (
        429,
        "fault",
        "limit_requests: Requests rate limit exceeded, please try again later.",
    )
    assert (second.status, second.outcome, second.fault) == (200, "ok", "")
    assert (third.status, third.protocol) == (429, "anthropic")
    assert link.proxy.totals["fault"] == 2


async def test_a_stall_behind_keep_alives_is_forwarded_and_flagged() -> None:
    fault = ProxyFault(stall_after_events=3, stall_s=0.5, keepalive_every_s=0.05)
    answer = emulated_answer(chat())
    async with chain(fault=fault, stall_ms=200) as link:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=link.url("compatible"), max_retries=0)
        stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        received, sent, summary = link.one_exchange()
    assert text == answer.content
    keepalives = received.body.count(b": keep-alive\n")
    assert keepalives == int(divmod(0.5, 0.05)[0])  # as the emulator counts them
    assert received.body.replace(b": keep-alive\n", b"") == sent.body
    assert (summary.outcome, summary.complete) == ("ok", True)
    stalls = [anomaly.detail for anomaly in summary.anomalies if anomaly.kind == "stall"]
    assert any("without an event" in detail for detail in stalls)


# --- recordings -----------------------------------------------------------------------------------


async def test_a_recording_replays_and_serves_the_bytes_the_application_received(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with chain(record_dir=tmp_path) as link:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=link.url("responses"), max_retries=0)
        async with client.responses.stream(model=MODEL, input=QUESTION) as stream:
            await stream.get_final_response()
        await client.close()
        received, _, summary = link.one_exchange()
    assert summary.recording is not None
    assert Path(summary.recording).name == "000001-responses.jsonl"
    recording = text_of(summary.recording)
    assert_key_nowhere(recording)
    assert '"Authorization":"Bearer ***"' in recording
    [attempt] = load_recording(summary.recording)
    assert attempt.protocol == "responses"
    assert attempt.data == received.body
    assert await asyncio.to_thread(main, ["replay", summary.recording]) == 0
    replayed = capsys.readouterr().out
    assert "complete: yes" in replayed
    assert "anomalies: none" in replayed
    async with (
        ReplayServer(load_recording(summary.recording)) as replay,
        aiohttp.ClientSession() as session,
        session.post(replay.base_url + "/responses", json={}) as again,
    ):
        assert await again.read() == received.body


async def test_recordings_are_numbered_on_from_those_already_there(tmp_path: Path) -> None:
    (tmp_path / "000041-compatible.jsonl").write_text("old\n")
    async with chain(record_dir=tmp_path) as link:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=link.url("compatible"), max_retries=0)
        await client.chat.completions.create(model=MODEL, messages=USER)
        await client.close()
        [summary] = link.proxy.exchanges
    assert summary.recording == str(tmp_path / "000042-compatible.jsonl")
    assert (tmp_path / "000041-compatible.jsonl").read_text() == "old\n"


async def test_an_echoed_key_reaches_the_application_but_no_recording_nor_output(
    tmp_path: Path,
) -> None:
    """A gateway that echoes the key, split across two reads and in a header: forwarded as
    it is, masked in the recording, the output and the summary."""
    half = len(KEY) // 2

    async def echo(writer: asyncio.StreamWriter, _: int) -> None:
        writer.write(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
            + f"x-echo: {KEY}\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n".encode()
        )
        first = f'{{"error": {{"code": "invalid_api_key", "message": "bad key {KEY[:half]}'
        second = f'{KEY[half:]}"}}}}'
        for piece in (first, second):
            writer.write(f"{len(piece):x}\r\n{piece}\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.05)  # two reads, as far as loopback lets us tell
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with raw_server(echo) as upstream:
        out = io.StringIO()
        origin = upstream.url.removesuffix("/v1")
        async with DebugProxy(origin, out=out, record_dir=tmp_path, verbose=True) as proxy:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{proxy.base_url}/compatible-mode/v1/chat/completions?key={KEY}",
                    json=chat(stream=True),
                    headers={"Authorization": f"Bearer {KEY}"},
                ) as response,
            ):
                body = await response.read()
                assert response.headers["x-echo"] == KEY
            [summary] = proxy.exchanges
    assert body.decode().endswith(f'bad key {KEY}"}}}}')  # the application's bytes, unchanged
    assert summary.status == 401
    assert summary.error.startswith("invalid_api_key: bad key sk-")
    recording = text_of(tmp_path / "000001-compatible.jsonl")
    [request] = upstream.requests
    assert KEY.encode() in request.head  # the upstream got the key
    assert_key_nowhere(recording, out.getvalue(), repr(summary), repr(proxy.exchanges))
    [attempt] = load_recording(tmp_path / "000001-compatible.jsonl")
    assert len(attempt.data) == len(body)
    assert "sk-***************" in attempt.data.decode()


# --- forwarding, refusals and bounds --------------------------------------------------------------


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` as it is and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_hop_by_hop_headers_stay_and_compressed_bytes_pass_undecoded() -> None:
    compressed = gzip.compress(b'{"object": "list", "data": []}')

    async def gzipped(writer: asyncio.StreamWriter, _: int) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
            b"keep-alive: timeout=5\r\nconnection: close\r\n"
            + f"content-length: {len(compressed)}\r\n\r\n".encode()
            + compressed
        )
        await writer.drain()

    async with raw_server(gzipped) as upstream:
        async with DebugProxy(upstream.url.removesuffix("/v1") + "/base/") as proxy:
            answer = await raw_exchange(
                proxy.port,
                b"GET /v1/models?x=1%202 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Custom: kept\r\n"
                b"Connection: close, X-Hop\r\nX-Hop: dropped\r\nKeep-Alive: 5\r\n"
                b"Proxy-Authorization: Basic c2VjcmV0\r\nAccept-Encoding: gzip\r\n\r\n",
            )
            [summary] = proxy.exchanges
        [request] = upstream.requests
    head, _, body = answer.partition(b"\r\n\r\n")
    assert body == compressed
    assert b"content-encoding: gzip" in head.lower()
    assert b"keep-alive" not in head.lower()
    start, *lines = request.head.decode().split("\r\n")
    assert start == "GET /base/v1/models?x=1%202 HTTP/1.1"
    names = {line.partition(":")[0].lower() for line in lines if line}
    assert names == {"host", "x-custom", "accept-encoding"}  # nothing added, hops dropped
    assert "X-Custom: kept" in lines
    assert (summary.protocol, summary.kind, summary.status, summary.bytes) == (
        "",
        "other",
        200,
        len(compressed),
    )


async def test_an_unreachable_upstream_is_a_502_in_one_line() -> None:
    async with raw_server(lambda writer, n: asyncio.sleep(0)) as gone:
        origin = gone.url.removesuffix("/v1")
    async with DebugProxy(origin) as proxy:
        client = openai.AsyncOpenAI(
            api_key=KEY, base_url=f"{proxy.base_url}/compatible-mode/v1", max_retries=0
        )
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        await client.close()
        [summary] = proxy.exchanges
    assert failed.value.status_code == 502
    assert "cannot reach the upstream" in str(failed.value.message)
    assert (summary.status, summary.outcome) == (502, "no-upstream")
    assert "\n" not in summary.error
    assert summary.error.startswith("qwen-sse proxy: cannot reach the upstream: ClientConnector")


async def test_an_upstream_that_breaks_mid_body_breaks_the_application_too() -> None:
    async def breaks(writer: asyncio.StreamWriter, _: int) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 1000\r\n\r\n"
            b'data: {"choices": [{"index": 0, "delta": {"content": "half"}}]}\n\n'
        )
        await writer.drain()
        writer.transport.abort()

    async with (
        raw_server(breaks) as upstream,
        DebugProxy(upstream.url.removesuffix("/v1")) as proxy,
    ):
        client = openai.AsyncOpenAI(
            api_key=KEY, base_url=f"{proxy.base_url}/compatible-mode/v1", max_retries=0
        )
        with pytest.raises(openai.APIConnectionError):
            stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
            async for _ in stream:
                pass
        await client.close()
        [summary] = proxy.exchanges
    assert (summary.outcome, summary.complete) == ("upstream-broke", False)
    assert summary.error.startswith("the upstream broke: ")
    assert summary.result is not None
    assert summary.result.content == "half"
    assert "missing-end" in {anomaly.kind for anomaly in summary.anomalies}


async def test_requests_over_the_bound_and_absolute_targets_are_refused() -> None:
    async with raw_server(lambda writer, n: asyncio.sleep(0)) as upstream:
        async with DebugProxy(upstream.url.removesuffix("/v1"), max_request_bytes=100) as proxy:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{proxy.base_url}/compatible-mode/v1/chat/completions", data=b"x" * 101
                ) as too_large,
            ):
                assert too_large.status == 413
                assert b"over the proxy's limit of 100 bytes" in await too_large.read()
            answer = await raw_exchange(
                proxy.port,
                b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"
                b"Connection: close\r\n\r\n",
            )
            assert answer.startswith(b"HTTP/1.1 400")
            assert b"this is a reverse proxy" in answer
            outcomes = [(s.status, s.outcome) for s in proxy.exchanges]
        assert upstream.requests == []
    assert outcomes == [(413, "refused"), (400, "refused")]


async def test_an_application_that_goes_away_cancels_the_upstream_request() -> None:
    config = EmulatorConfig(api_key=KEY, ttft_s=0, itl_s=0.05, answer_tokens=400)
    async with Emulator(config) as emulator:
        origin = emulator.base_url.removesuffix("/compatible-mode/v1")
        async with DebugProxy(origin) as proxy:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{proxy.base_url}/compatible-mode/v1/chat/completions",
                    json=chat(stream=True),
                    headers={"Authorization": f"Bearer {KEY}"},
                ) as response,
            ):
                await response.content.readany()
                assert emulator.active_streams == 1
            # Leaving the block closed the connection mid-stream.
            for _ in range(1000):
                if proxy.exchanges and not emulator.active_streams:
                    break
                await asyncio.sleep(0.01)
            [summary] = proxy.exchanges
    assert emulator.active_streams == 0
    assert emulator.requests[0].outcome == "client_disconnected"
    assert (summary.outcome, summary.complete) == ("client-gone", False)
    assert "missing-end" not in {anomaly.kind for anomaly in summary.anomalies}


async def test_only_the_first_max_stream_bytes_are_watched_all_are_forwarded(
    tmp_path: Path,
) -> None:
    async with chain(max_stream_bytes=300, record_dir=tmp_path) as link:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=link.url("compatible"), max_retries=0)
        stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        received, sent, summary = link.one_exchange()
    assert text == emulated_answer(chat()).content
    assert received.body == sent.body
    assert summary.bytes == len(sent.body)
    assert "tee-limit" in {anomaly.kind for anomaly in summary.anomalies}
    assert summary.recording is not None
    assert load_recording(summary.recording)[0].data == sent.body[:300]


async def test_the_verbose_view_shows_the_wire_prefixed_and_without_the_key() -> None:
    async with chain(verbose=True) as link:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=link.url("compatible"), max_retries=0)
        await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        await asyncio.sleep(0)
        async for _ in await client.chat.completions.create(
            model=MODEL, messages=USER, stream=True
        ):
            pass
        await client.close()
    out = link.out.getvalue()
    assert "[#2] === attempt 1: POST http://127.0.0.1:" in out
    assert "[#2]   > Authorization: Bearer ***" in out
    assert "[#2]     -- event #1 message: " in out
    assert "[#2] === summary" not in out  # the proxy's own summary line instead
    assert "[#2] 200 compatible qwen-plus complete: " in out
    assert_key_nowhere(out)


def test_unsafe_settings_are_refused() -> None:
    for upstream, words in [
        ("http://example.com", "refusing to send the API key over plain http to example.com"),
        ("ftp://example.com", "must be an http(s) URL"),
        ("https://user:pw@example.com", "must not hold credentials"),
        ("https://example.com/v1?x=1", "no query or fragment"),
    ]:
        with pytest.raises(ConfigurationError, match=r".") as caught:
            DebugProxy(upstream)
        assert words in str(caught.value)
        assert "pw" not in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"refusing to listen on 0\.0\.0\.0"):
        DebugProxy("https://example.com", host="0.0.0.0")
    DebugProxy("https://example.com", host="0.0.0.0", allow_remote=True)
    DebugProxy("http://example.com", allow_insecure_http=True)
    DebugProxy("http://localhost:8000")
    with pytest.raises(ConfigurationError, match="max_request_bytes must be at least 1"):
        DebugProxy("https://example.com", max_request_bytes=0)


async def test_closing_the_proxy_ends_the_exchanges_in_flight() -> None:
    config = EmulatorConfig(api_key=KEY, ttft_s=0, itl_s=0.05, answer_tokens=400)
    async with Emulator(config) as emulator:
        origin = emulator.base_url.removesuffix("/compatible-mode/v1")
        proxy = DebugProxy(origin)
        await proxy.start()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{proxy.base_url}/compatible-mode/v1/chat/completions",
                json=chat(stream=True),
                headers={"Authorization": f"Bearer {KEY}"},
            ) as response,
        ):
            await response.content.readany()
            await proxy.close()
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        [summary] = proxy.exchanges
    assert (summary.outcome, summary.complete, summary.status) == ("client-gone", False, 200)
    assert proxy.totals["client-gone"] == 1

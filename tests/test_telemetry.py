"""Tests of qwen_sse.telemetry: what a call reports to OpenTelemetry, read back from the SDK's
in-memory span exporter and metric reader, over real loopback sockets to the emulator (and to a
scripted raw server for a key echoed where the emulator never puts one)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from qwen_sse import protocols, telemetry
from qwen_sse.chat import ChatResult
from qwen_sse.client import QwenClient
from qwen_sse.emulator import Emulator, EmulatorConfig, Fault
from qwen_sse.errors import (
    ConfigurationError,
    InBandError,
    ServerError,
    StreamInterruptedError,
)
from qwen_sse.limiter import ConcurrencyLimiter
from qwen_sse.retry import NO_RETRIES, RetryPolicy
from qwen_sse.telemetry import (
    OPERATION_DURATION,
    SCHEMA_URL,
    TIME_PER_OUTPUT_CHUNK,
    TIME_PER_OUTPUT_TOKEN,
    TIME_TO_FIRST_CHUNK,
    TOKEN_USAGE,
    Telemetry,
    instrument,
    uninstrument,
)
from tests.fakesleep import FakeSleep
from tests.rawserver import frame, held_answer, http_response, raw_server, sse_body

KEY = "sk-test"
SECRET_KEY = "sk-test-not-a-real-key-0123456789"
HELLO = [{"role": "user", "content": "你好，介绍一下你自己"}]


@dataclass
class Otel:
    """A Telemetry wired to in-memory exporters, and what they received."""

    telemetry: Telemetry
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    meter_provider: MeterProvider

    def spans(self) -> Sequence[ReadableSpan]:
        return self.exporter.get_finished_spans()

    def span(self) -> ReadableSpan:
        (only,) = self.spans()
        return only

    def points(self, name: str) -> list[HistogramDataPoint]:
        data = self.reader.get_metrics_data()
        found: list[HistogramDataPoint] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [
                            p for p in metric.data.data_points if isinstance(p, HistogramDataPoint)
                        ]
        return found

    def everything(self) -> str:
        """Every name, attribute, event and status text recorded, spans and metrics."""
        text = []
        for span in self.spans():
            text.append(span.name)
            text.append(repr(dict(span.attributes or {})))
            text.append(span.status.description or "")
            text += [f"{event.name} {dict(event.attributes or {})!r}" for event in span.events]
        data = self.reader.get_metrics_data()
        if data is not None:
            text.append(data.to_json())
        return "\n".join(text)


def make_otel(**options: Any) -> Otel:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    return Otel(
        Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider, **options),
        exporter,
        reader,
        meter_provider,
    )


@pytest.fixture
def otel() -> Otel:
    return make_otel()


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(api_key=KEY, ttft_s=0.0, itl_s=0.0)) as server:
        yield server


def client_of(server: Emulator, otel: Otel, **options: Any) -> QwenClient:
    options.setdefault("retry", NO_RETRIES)
    return QwenClient(KEY, server.base_url, telemetry=otel.telemetry, **options)


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(event.attributes or {}) for event in span.events if event.name == name]


# --- a plain call ---


async def test_a_call_is_one_client_span_with_the_conventions_attributes(
    emulator: Emulator, otel: Otel
) -> None:
    async with client_of(emulator, otel) as qwen:
        result = await qwen.chat(HELLO)
    span = otel.span()
    assert span.name == "chat qwen-plus"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.schema_url == SCHEMA_URL
    assert result.usage is not None
    assert attributes(span) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "dashscope",
        "gen_ai.request.model": "qwen-plus",
        "gen_ai.request.stream": True,
        "server.address": "127.0.0.1",
        "server.port": emulator.port,
        "qwen_sse.protocol": "compatible",
        "gen_ai.response.id": result.id,
        "gen_ai.response.model": result.model,
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": result.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": result.usage.completion_tokens,
        "gen_ai.response.time_to_first_chunk": result.timing.ttft_s,
        "qwen_sse.request_id": result.request_id,
    }  # qwen_sse.attempts and .resumes only when the call retried or resumed
    assert result.id.startswith("chatcmpl-")
    assert span.events == ()


async def test_a_call_records_the_client_metrics(emulator: Emulator, otel: Otel) -> None:
    async with client_of(emulator, otel) as qwen:
        result = await qwen.chat(HELLO)
    assert result.usage is not None
    assert result.timing.ttft_s is not None
    common = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "dashscope",
        "gen_ai.request.model": "qwen-plus",
        "gen_ai.response.model": "qwen-plus",
        "server.address": "127.0.0.1",
        "server.port": emulator.port,
    }
    (duration,) = otel.points(OPERATION_DURATION)
    assert dict(duration.attributes or {}) == common
    assert duration.count == 1
    assert 0 < duration.sum < 60
    assert result.timing.ttft_s <= duration.sum
    assert duration.explicit_bounds[:3] == (0.01, 0.02, 0.04)
    tokens = {
        (p.attributes or {})["gen_ai.token.type"]: (dict(p.attributes or {}), p.sum)
        for p in otel.points(TOKEN_USAGE)
    }
    assert tokens == {
        "input": ({**common, "gen_ai.token.type": "input"}, result.usage.prompt_tokens),
        "output": ({**common, "gen_ai.token.type": "output"}, result.usage.completion_tokens),
    }
    assert otel.points(TOKEN_USAGE)[0].explicit_bounds[:3] == (1, 4, 16)
    (first,) = otel.points(TIME_TO_FIRST_CHUNK)
    assert (first.count, first.sum) == (1, result.timing.ttft_s)
    (per_token,) = otel.points(TIME_PER_OUTPUT_TOKEN)
    assert per_token.count == 1
    expected_s = (duration.sum - result.timing.ttft_s) / (result.usage.completion_tokens - 1)
    assert per_token.sum == pytest.approx(expected_s)
    assert otel.points(TIME_PER_OUTPUT_CHUNK) == []  # off unless chunk_metrics=True


async def test_a_call_sampled_out_exports_no_span_and_still_counts_in_the_metrics(
    emulator: Emulator,
) -> None:
    otel = make_otel()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ALWAYS_OFF)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    sampled_out = Telemetry(tracer_provider=tracer_provider, meter_provider=otel.meter_provider)
    async with QwenClient(KEY, emulator.base_url, telemetry=sampled_out) as qwen:
        result = await qwen.chat(HELLO)
    assert result.complete
    assert exporter.get_finished_spans() == ()
    (duration,) = otel.points(OPERATION_DURATION)
    assert duration.count == 1


async def test_chunk_metrics_record_every_gap_between_output_chunks(emulator: Emulator) -> None:
    otel = make_otel(chunk_metrics=True)
    async with client_of(emulator, otel) as qwen:
        result = await qwen.chat(HELLO)
    gaps = result.timing.inter_token_gaps_s
    assert len(gaps) > 2
    (per_chunk,) = otel.points(TIME_PER_OUTPUT_CHUNK)
    assert per_chunk.count == len(gaps)
    assert per_chunk.sum == pytest.approx(sum(gaps))


@pytest.mark.parametrize("protocol", protocols.NAMES)
async def test_every_protocol_reports_the_request_settings_where_it_puts_them(
    emulator: Emulator, otel: Otel, protocol: str
) -> None:
    async with QwenClient(
        KEY, emulator.base_url_for(protocol), protocol=protocol, telemetry=otel.telemetry
    ) as qwen:
        result = await qwen.chat(HELLO, max_tokens=64, temperature=0.25, top_p=0.5)
    assert result.complete
    span_attributes = attributes(otel.span())
    assert span_attributes["qwen_sse.protocol"] == protocol
    assert span_attributes["gen_ai.request.max_tokens"] == 64
    assert span_attributes["gen_ai.request.temperature"] == 0.25
    assert span_attributes["gen_ai.request.top_p"] == 0.5
    assert span_attributes["gen_ai.response.finish_reasons"] == (result.finish_reason,)
    assert "error.type" not in span_attributes


async def test_a_request_for_several_choices_says_how_many(otel: Otel) -> None:
    choices = [
        {"index": index, "delta": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        for index, text in enumerate(("one", "two"))
    ]

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(http_response(sse_body([frame(choices)])))
        await writer.drain()

    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, telemetry=otel.telemetry) as qwen,
    ):
        result = await qwen.chat(HELLO, n=2)
    assert result.complete
    assert [choice.content for choice in result.choices] == ["one", "two"]
    span_attributes = attributes(otel.span())
    assert span_attributes["gen_ai.request.choice.count"] == 2
    assert span_attributes["gen_ai.response.finish_reasons"] == ("stop", "stop")


# --- failures ---


async def test_an_http_error_ends_the_span_in_error_with_its_type(
    emulator: Emulator, otel: Otel
) -> None:
    emulator.schedule(Fault(status=500))
    async with client_of(emulator, otel) as qwen:
        with pytest.raises(ServerError) as caught:
            await qwen.chat(HELLO)
    span = otel.span()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == str(caught.value)
    span_attributes = attributes(span)
    assert span_attributes["error.type"] == "ServerError"
    assert span_attributes["qwen_sse.error.code"] == caught.value.code
    assert caught.value.code
    assert "gen_ai.usage.input_tokens" not in span_attributes
    (duration,) = otel.points(OPERATION_DURATION)
    assert (duration.attributes or {})["error.type"] == "ServerError"
    assert otel.points(TOKEN_USAGE) == []
    assert otel.points(TIME_TO_FIRST_CHUNK) == []


async def test_an_in_band_error_ends_the_span_in_error_with_what_arrived(
    emulator: Emulator, otel: Otel
) -> None:
    emulator.schedule(Fault(error_after_events=4))
    async with client_of(emulator, otel) as qwen:
        with pytest.raises(InBandError) as caught:
            await qwen.chat(HELLO)
    partial = caught.value.partial
    assert partial is not None
    assert partial.content
    span = otel.span()
    assert span.status.status_code is StatusCode.ERROR
    span_attributes = attributes(span)
    assert span_attributes["error.type"] == "InBandError"
    assert span_attributes["qwen_sse.error.code"] == "data_inspection_failed"
    assert span_attributes["gen_ai.response.id"] == partial.id
    assert span_attributes["gen_ai.response.time_to_first_chunk"] == partial.timing.ttft_s
    assert "gen_ai.response.finish_reasons" not in span_attributes
    (duration,) = otel.points(OPERATION_DURATION)
    assert (duration.attributes or {})["error.type"] == "InBandError"
    # The first chunk did arrive; a time per token needs a complete answer.
    assert len(otel.points(TIME_TO_FIRST_CHUNK)) == 1
    assert otel.points(TIME_PER_OUTPUT_TOKEN) == []


async def test_a_call_left_before_its_end_is_cancelled(otel: Otel) -> None:
    release = asyncio.Event()
    first = frame([{"index": 0, "delta": {"role": "assistant", "content": "first"}}])
    rest = frame([{"index": 0, "delta": {"content": " rest"}, "finish_reason": "stop"}])
    async with (
        raw_server(held_answer(first, rest, release)) as server,
        QwenClient(KEY, server.url, telemetry=otel.telemetry) as qwen,
    ):
        async with qwen.stream_chat(HELLO) as stream:
            async for _ in stream:
                break
        release.set()
    span = otel.span()
    assert span.status.status_code is StatusCode.ERROR
    assert attributes(span)["error.type"] == "cancelled"
    (duration,) = otel.points(OPERATION_DURATION)
    assert (duration.attributes or {})["error.type"] == "cancelled"


# --- retries, resumes, the limiter ---


async def test_a_retry_is_a_span_event_with_its_reason_and_delay(
    emulator: Emulator, otel: Otel
) -> None:
    sleep = FakeSleep()
    emulator.schedule(Fault(status=429))
    async with client_of(emulator, otel, retry=RetryPolicy(), sleep=sleep) as qwen:
        result = await qwen.chat(HELLO)
    assert result.attempts == 2
    span = otel.span()
    assert span.status.status_code is StatusCode.UNSET
    assert events(span, "qwen_sse.retry") == [
        {
            "error.type": "RateLimitError",
            "qwen_sse.attempt": 1,
            "qwen_sse.retry.delay_s": sleep.delays[0],
            "qwen_sse.retry.reason": "HTTP 429 limit_requests",
        }
    ]
    span_attributes = attributes(span)
    assert span_attributes["qwen_sse.attempts"] == 2
    assert "error.type" not in span_attributes  # a retried error is not the call's
    assert span_attributes["qwen_sse.request_id"] == emulator.requests[-1].request_id
    (duration,) = otel.points(OPERATION_DURATION)
    assert "error.type" not in (duration.attributes or {})


async def test_retries_that_run_out_end_in_error_after_one_event_each(
    emulator: Emulator, otel: Otel
) -> None:
    sleep = FakeSleep()
    emulator.schedule(Fault(status=503), Fault(status=503))
    policy = RetryPolicy(max_attempts=2)
    async with client_of(emulator, otel, retry=policy, sleep=sleep) as qwen:
        with pytest.raises(ServerError):
            await qwen.chat(HELLO)
    span = otel.span()
    assert [e["qwen_sse.attempt"] for e in events(span, "qwen_sse.retry")] == [1]
    assert attributes(span)["error.type"] == "ServerError"
    assert attributes(span)["qwen_sse.attempts"] == 2


async def test_a_resume_is_a_span_event_and_the_usage_is_the_billed_sum(
    emulator: Emulator, otel: Otel
) -> None:
    emulator.schedule(Fault(drop_after_events=8))
    async with client_of(emulator, otel, retry=RetryPolicy(resume=True), sleep=FakeSleep()) as qwen:
        result = await qwen.chat(HELLO)
    assert result.resumes == 1
    assert result.complete
    span = otel.span()
    assert span.status.status_code is StatusCode.UNSET
    (resume,) = events(span, "qwen_sse.resume")
    assert resume["error.type"] == "StreamInterruptedError"
    assert resume["qwen_sse.resume"] == 1
    assert 0 < resume["qwen_sse.resume.received_chars"] < len(result.content)
    assert "connection lost mid-stream" in resume["qwen_sse.resume.reason"]
    assert result.usage is not None
    span_attributes = attributes(span)
    assert span_attributes["qwen_sse.resumes"] == 1
    assert span_attributes["qwen_sse.attempts"] == 2
    assert span_attributes["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens
    assert span_attributes["gen_ai.usage.output_tokens"] == result.usage.completion_tokens
    usage = {(p.attributes or {})["gen_ai.token.type"]: p.sum for p in otel.points(TOKEN_USAGE)}
    assert usage == {
        "input": result.usage.prompt_tokens,
        "output": result.usage.completion_tokens,
    }


async def test_the_limiter_admission_is_a_span_event_with_the_queue_wait(otel: Otel) -> None:
    release = asyncio.Event()
    first_frame = frame([{"index": 0, "delta": {"role": "assistant", "content": "first"}}])
    rest = frame([{"index": 0, "delta": {"content": " rest"}, "finish_reason": "stop"}])
    limiter = ConcurrencyLimiter(1)
    async with (
        raw_server(held_answer(first_frame, rest, release)) as server,
        QwenClient(KEY, server.url, telemetry=otel.telemetry, limiter=limiter) as qwen,
    ):
        async with qwen.stream_chat(HELLO) as first:
            await first.__anext__()  # the first call holds the one permit, mid-stream
            second = asyncio.create_task(qwen.chat(HELLO))
            for _ in range(20):  # let it reach the limiter and queue there
                await asyncio.sleep(0)
            assert not second.done()
            release.set()
            async for _ in first:
                pass
        result = await second
    assert result.content == "first rest"
    assert result.queue_wait_s > 0
    by_start = sorted(otel.spans(), key=lambda span: span.start_time or 0)
    waits = [events(span, "qwen_sse.limiter.admitted") for span in by_start]
    assert len(waits[0]) == 1
    assert waits[1] == [{"qwen_sse.queue_wait_s": result.queue_wait_s}]


# --- content and the key ---


TOOL_EXCHANGE: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "rainy, 14 °C"},
]


async def test_content_is_recorded_only_when_asked_for(emulator: Emulator) -> None:
    plain, capturing = make_otel(), make_otel(capture_content=True)
    results: list[ChatResult] = []
    for otel in (plain, capturing):
        async with client_of(emulator, otel) as qwen:
            results.append(await qwen.chat(TOOL_EXCHANGE))
    answer = results[0].content
    assert answer == results[1].content
    everything = plain.everything()
    assert answer not in everything
    assert "Paris" not in everything
    assert "Be brief" not in everything
    span_attributes = attributes(capturing.span())
    assert json.loads(span_attributes["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "tool_call",
                    "id": "call_1",
                    "name": "get_weather",
                    "arguments": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": "call_1", "response": "rainy, 14 °C"}],
        },
    ]
    assert json.loads(span_attributes["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": answer}],
            "finish_reason": "stop",
        }
    ]


async def test_a_cut_answer_is_recorded_with_an_error_finish(emulator: Emulator) -> None:
    otel = make_otel(capture_content=True)
    emulator.schedule(Fault(drop_after_events=6))
    async with client_of(emulator, otel) as qwen:
        with pytest.raises(StreamInterruptedError) as caught:
            await qwen.chat(HELLO)
    partial = caught.value.partial
    assert partial is not None
    (message,) = json.loads(attributes(otel.span())["gen_ai.output.messages"])
    assert message["finish_reason"] == "error"
    assert message["parts"] == [{"type": "text", "content": partial.content}]


ECHO = f"Authorization: Bearer {SECRET_KEY}"


async def test_the_key_is_in_no_span_event_or_metric_even_when_the_server_echoes_it() -> None:
    """A server that echoes the key everywhere it can (header, chunk id, model, text, the
    in-band error), recorded with content capture on: the key shows nowhere."""
    echoing = frame(
        [{"index": 0, "delta": {"role": "assistant", "content": f"you sent {ECHO}"}}],
        id=SECRET_KEY,
        model=f"qwen-plus {SECRET_KEY}",
    )
    error = json.dumps({"error": {"code": SECRET_KEY, "message": f"echo {ECHO}"}})

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        headers = (f"x-request-id: {SECRET_KEY}",)
        if n == 1:
            body = json.dumps({"error": {"code": "invalid_api_key", "message": ECHO}}).encode()
            writer.write(
                http_response(
                    body,
                    status="429 Too Many Requests",
                    content_type="application/json",
                    headers=headers,
                )
            )
        else:
            writer.write(http_response(sse_body([echoing, error], done=False), headers=headers))
        await writer.drain()

    otel = make_otel(capture_content=True)
    async with (
        raw_server(handler) as server,
        QwenClient(
            SECRET_KEY,
            server.url,
            telemetry=otel.telemetry,
            sleep=FakeSleep(),
            retry=RetryPolicy(max_attempts=2),
        ) as qwen,
    ):
        with pytest.raises(InBandError):
            await qwen.chat(HELLO)
    span = otel.span()
    assert events(span, "qwen_sse.retry")
    assert span.status.description
    assert "sk-***" in attributes(span)["gen_ai.output.messages"]
    everything = otel.everything()
    assert SECRET_KEY not in everything
    assert SECRET_KEY[:12] not in everything


# --- turning it on and off ---


async def test_instrument_turns_telemetry_on_for_clients_without_a_setting(
    emulator: Emulator,
) -> None:
    otel = make_otel()
    default = QwenClient(KEY, emulator.base_url)
    off = QwenClient(KEY, emulator.base_url, telemetry=False)
    async with default, off:
        await default.chat(HELLO)  # before instrument(): nothing
        assert instrument(otel.telemetry) is otel.telemetry
        try:
            await default.chat(HELLO)
            await off.chat(HELLO)
        finally:
            uninstrument()
        await default.chat(HELLO)
    assert len(otel.spans()) == 1


def test_true_is_one_shared_telemetry_on_the_global_providers() -> None:
    first = QwenClient(KEY, "http://127.0.0.1:1/v1", telemetry=True)
    second = QwenClient(KEY, "http://127.0.0.1:1/v1", telemetry=True)
    assert isinstance(first.telemetry, Telemetry)
    assert first.telemetry is second.telemetry
    assert QwenClient(KEY, "http://127.0.0.1:1/v1").telemetry is None


def test_without_opentelemetry_the_client_works_and_telemetry_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'qwen-sse\[otel\]'"):
        Telemetry()
    assert QwenClient(KEY, "http://127.0.0.1:1/v1").telemetry is None


def test_the_client_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, qwen_sse.client\n"
        "print(any(name.startswith('opentelemetry') for name in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(root), "PATH": ""},
    )
    assert done.stdout.strip() == "False"


def test_the_module_names_the_pinned_conventions() -> None:
    assert telemetry.SEMCONV_VERSION == "1.41.0"
    assert telemetry.SEMCONV_VERSION in (telemetry.__doc__ or "")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    assert f"v{telemetry.SEMCONV_VERSION}" in readme

"""OpenTelemetry for chat calls: one span and the GenAI client metrics per call, after the
OpenTelemetry semantic conventions for generative AI, version 1.41.0 (:data:`SEMCONV_VERSION`).

I/O layer. ``opentelemetry`` (the ``qwen-sse[otel]`` extra: the API only; the SDK and its
exporters are the application's choice) is imported when a :class:`Telemetry` is built,
never when this module is, so the package works without it. Telemetry is off unless a
client is given ``telemetry=`` or :func:`instrument` was called; when off, a call costs one
function call that returns None. It must not import the emulator, the CLI or the bench.

What a call reports (:class:`CallTelemetry`; the client calls it at the call's start, on
each limiter admission, retry and resume, and once at the end):

* A span named ``chat {gen_ai.request.model}``, kind ``CLIENT``, from the call's start to
  its end (retries, resumes and limiter waits included, as the conventions ask of a
  logical operation). At the start: ``gen_ai.operation.name`` (``chat``),
  ``gen_ai.provider.name``, ``gen_ai.request.model``, ``server.address``, ``server.port``,
  ``gen_ai.request.stream`` (true), ``gen_ai.request.max_tokens``, ``.temperature``,
  ``.top_p`` and ``.choice.count`` (when not 1) as the request sets them, and
  ``qwen_sse.protocol`` (the wire protocol's name). At the end: ``gen_ai.response.id``,
  ``gen_ai.response.model``, ``gen_ai.response.finish_reasons``,
  ``gen_ai.usage.input_tokens`` / ``output_tokens`` (summed over a resumed call's
  attempts, as billed), ``gen_ai.usage.cache_read.input_tokens`` and
  ``gen_ai.usage.reasoning.output_tokens`` where the server reports them,
  ``gen_ai.response.time_to_first_chunk``, ``qwen_sse.request_id``, and
  ``qwen_sse.attempts`` and ``qwen_sse.resumes`` when the call was retried or resumed.
  Attributes set at the end are skipped for a span that is not recording (sampled out).
* On failure: status ``ERROR``, ``error.type`` (the exception's class name, one of
  :mod:`qwen_sse.errors`: ``RateLimitError``, ``InBandError``, ``FirstTokenTimeoutError``
  ...; ``cancelled`` when the caller cancelled the call or left it before its end;
  ``_OTHER`` for an exception that is not the package's), ``qwen_sse.error.code`` (the
  server's error code, when it sent one), and the error's message as the status
  description (but a :class:`~qwen_sse.errors.ProtocolError`'s, which quotes the offending
  frame, only with content capture on).
* Span events: ``qwen_sse.retry`` (``error.type`` of the failed attempt,
  ``qwen_sse.attempt``, ``qwen_sse.retry.delay_s``, ``qwen_sse.retry.reason``),
  ``qwen_sse.resume`` (``error.type`` of the break, ``qwen_sse.resume``,
  ``qwen_sse.resume.received_chars``, ``qwen_sse.resume.reason``) and
  ``qwen_sse.limiter.admitted`` (``qwen_sse.queue_wait_s``), when they happen.
* Metrics (histograms, bucket boundaries as the conventions advise):
  ``gen_ai.client.token.usage`` (``{token}``, ``gen_ai.token.type`` ``input`` or
  ``output``), ``gen_ai.client.operation.duration`` (s, with ``error.type`` on failure),
  ``gen_ai.client.operation.time_to_first_chunk`` (s), qwen-sse's own
  ``qwen_sse.client.operation.time_per_output_token`` (s: the time after the first chunk
  over the output tokens after the first, for complete answers with usage; the
  conventions name no client-side token metric) and, only with ``chunk_metrics=True``,
  ``gen_ai.client.operation.time_per_output_chunk`` (s, one value per output chunk after
  the first; about one histogram record per chunk, off by default for its cost).
  Their attributes: ``gen_ai.operation.name``, ``gen_ai.provider.name``,
  ``gen_ai.request.model``, ``server.address``, ``server.port`` and
  ``gen_ai.response.model``.

A *chunk* here is one that carries output (text, reasoning or audio): qwen-sse holds chunks
without output (the role-only first chunk) back until output arrives, so that is when the
caller receives its first chunk; the times are the ones :class:`~qwen_sse.chat.StreamTiming`
holds, from the call's start.

Content: prompts and answers are recorded only with ``capture_content=True``, as the
conventions' opt-in ``gen_ai.input.messages`` and ``gen_ai.output.messages`` span
attributes (JSON strings in the conventions' message schema; structured attribute values
are not supported by every OpenTelemetry version this package accepts). The API key is
never recorded: every string that came from the server or the caller passes through the
client's key scrubber first.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from qwen_sse import __version__
from qwen_sse.errors import APIStatusError, ConfigurationError, InBandError, ProtocolError
from qwen_sse.protocols.base import text_of

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram, Meter
    from opentelemetry.metrics import MeterProvider as OTelMeterProvider
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
    from opentelemetry.trace import TracerProvider as OTelTracerProvider

    from qwen_sse.chat import ChatResult
    from qwen_sse.limiter import Outcome
    from qwen_sse.protocols import WireProtocol

__all__ = [
    "DEFAULT_PROVIDER_NAME",
    "OPERATION_DURATION",
    "SCHEMA_URL",
    "SEMCONV_VERSION",
    "TIME_PER_OUTPUT_CHUNK",
    "TIME_PER_OUTPUT_TOKEN",
    "TIME_TO_FIRST_CHUNK",
    "TOKEN_USAGE",
    "CallTelemetry",
    "Telemetry",
    "instrument",
    "start_call",
    "telemetry_setting",
    "uninstrument",
]

SEMCONV_VERSION = "1.41.0"
"""The OpenTelemetry semantic conventions release whose GenAI conventions are followed."""
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

DEFAULT_PROVIDER_NAME = "dashscope"
"""``gen_ai.provider.name`` unless told otherwise. Alibaba Cloud Model Studio (DashScope)
is not among the conventions' well-known providers, which then allow a custom value; an
application pointing the client at another server names that server's provider
(``Telemetry(provider_name="openai")`` for api.openai.com, ...)."""

TOKEN_USAGE = "gen_ai.client.token.usage"
OPERATION_DURATION = "gen_ai.client.operation.duration"
TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
TIME_PER_OUTPUT_CHUNK = "gen_ai.client.operation.time_per_output_chunk"
TIME_PER_OUTPUT_TOKEN = "qwen_sse.client.operation.time_per_output_token"

_OPERATION = "chat"
# The bucket boundaries the conventions advise for each histogram.
_TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
_SECONDS_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
_INSTRUMENTATION = "qwen_sse"
_TOKEN_TYPE = "gen_ai.token.type"
# Finish reasons as the conventions' output-message schema spells them (the rest agree).
_SCHEMA_FINISH_REASONS = {"tool_calls": "tool_call", "function_call": "tool_call"}

Scrub = Callable[[str], str]


class Telemetry:
    """Where a client's calls report: a tracer and a meter, and what to record.

    ``tracer_provider`` and ``meter_provider`` default to OpenTelemetry's global ones (set
    by the application, as usual, before or after this is built). ``provider_name`` is
    ``gen_ai.provider.name`` (:data:`DEFAULT_PROVIDER_NAME`). ``capture_content`` records
    prompts and answers (off: they may hold personal data). ``chunk_metrics`` records
    ``gen_ai.client.operation.time_per_output_chunk``, one histogram value per output
    chunk. Raises :class:`~qwen_sse.errors.ConfigurationError` when OpenTelemetry is not
    installed.
    """

    __slots__ = (
        "_client_kind",
        "_duration",
        "_first_chunk",
        "_per_chunk",
        "_per_token",
        "_status",
        "_status_code",
        "_token_usage",
        "_tracer",
        "capture_content",
        "chunk_metrics",
        "provider_name",
    )

    def __init__(
        self,
        *,
        tracer_provider: OTelTracerProvider | None = None,
        meter_provider: OTelMeterProvider | None = None,
        provider_name: str = DEFAULT_PROVIDER_NAME,
        capture_content: bool = False,
        chunk_metrics: bool = False,
    ) -> None:
        try:
            # Here, not at the top: the package must import and run without the extra.
            from opentelemetry import metrics, trace  # noqa: PLC0415
        except ImportError:
            raise ConfigurationError(
                "telemetry needs OpenTelemetry: pip install 'qwen-sse[otel]'"
            ) from None
        self.provider_name = provider_name
        self.capture_content = capture_content
        self.chunk_metrics = chunk_metrics
        self._tracer = trace.get_tracer(
            _INSTRUMENTATION, __version__, tracer_provider, schema_url=SCHEMA_URL
        )
        self._client_kind: SpanKind = trace.SpanKind.CLIENT
        self._status: type[Status] = trace.Status
        self._status_code: type[StatusCode] = trace.StatusCode
        meter = metrics.get_meter(
            _INSTRUMENTATION, __version__, meter_provider, schema_url=SCHEMA_URL
        )
        self._token_usage = meter.create_histogram(
            TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self._duration = self._seconds(meter, OPERATION_DURATION, "GenAI operation duration.")
        self._first_chunk = self._seconds(
            meter,
            TIME_TO_FIRST_CHUNK,
            "Time to receive the first chunk, from when the client issues the request.",
        )
        self._per_token = self._seconds(
            meter,
            TIME_PER_OUTPUT_TOKEN,
            "Time after the first chunk over the output tokens after the first.",
        )
        self._per_chunk = (
            self._seconds(
                meter,
                TIME_PER_OUTPUT_CHUNK,
                "Time per output chunk, for each chunk after the first.",
            )
            if chunk_metrics
            else None
        )

    @staticmethod
    def _seconds(meter: Meter, name: str, description: str) -> Histogram:
        return meter.create_histogram(
            name,
            unit="s",
            description=description,
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )

    def __repr__(self) -> str:
        return (
            f"Telemetry(provider_name={self.provider_name!r}, "
            f"capture_content={self.capture_content}, chunk_metrics={self.chunk_metrics})"
        )

    def start_call(
        self, wire: WireProtocol, body: Mapping[str, Any], *, url: str, scrub: Scrub
    ) -> CallTelemetry:
        """Open the span of one call of ``body`` to ``url`` over ``wire``; ``scrub`` takes
        the API key out of a string."""
        return CallTelemetry(self, wire, body, url=url, scrub=scrub)


class CallTelemetry:
    """One call's span and measurements, from its start to :meth:`end` (called once)."""

    __slots__ = (
        "_error",
        "_metric_attributes",
        "_scrub",
        "_span",
        "_started_at_s",
        "_telemetry",
    )

    def __init__(
        self,
        telemetry: Telemetry,
        wire: WireProtocol,
        body: Mapping[str, Any],
        *,
        url: str,
        scrub: Scrub,
    ) -> None:
        self._telemetry = telemetry
        self._scrub = scrub
        self._error: BaseException | None = None
        facts = wire.facts(body)
        address, port = _server_of(url)
        common: dict[str, Any] = {
            "gen_ai.operation.name": _OPERATION,
            "gen_ai.provider.name": telemetry.provider_name,
            "gen_ai.request.model": facts.model,
            "server.address": address,
            "server.port": port,
        }
        self._metric_attributes = common
        attributes = {
            **common,
            "gen_ai.request.stream": True,
            "qwen_sse.protocol": wire.name,
        }
        if facts.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = facts.max_tokens
        if facts.temperature is not None:
            attributes["gen_ai.request.temperature"] = facts.temperature
        if facts.top_p is not None:
            attributes["gen_ai.request.top_p"] = facts.top_p
        if facts.choices != 1:
            attributes["gen_ai.request.choice.count"] = facts.choices
        if telemetry.capture_content:
            attributes["gen_ai.input.messages"] = scrub(_json(_input_messages(facts.messages)))
        name = f"{_OPERATION} {facts.model}" if facts.model else _OPERATION
        self._span: Span = telemetry._tracer.start_span(
            name, kind=telemetry._client_kind, attributes=attributes
        )
        self._started_at_s = time.perf_counter()

    def queue_wait(self, waited_s: float) -> None:
        """A limiter admitted an attempt after ``waited_s`` in its queue."""
        self._span.add_event("qwen_sse.limiter.admitted", {"qwen_sse.queue_wait_s": waited_s})

    def retry(self, error: BaseException, *, attempt: int, delay_s: float, reason: str) -> None:
        """Attempt number ``attempt`` failed with ``error``; the next one follows in
        ``delay_s``; ``reason`` says why it is retried."""
        self._span.add_event(
            "qwen_sse.retry",
            {
                "error.type": type(error).__qualname__,
                "qwen_sse.attempt": attempt,
                "qwen_sse.retry.delay_s": delay_s,
                "qwen_sse.retry.reason": self._scrub(reason),
            },
        )

    def resume(self, error: BaseException, *, resume: int, received_chars: int) -> None:
        """The stream broke with ``error`` after ``received_chars`` characters of answer;
        resume number ``resume`` continues it."""
        self._span.add_event(
            "qwen_sse.resume",
            {
                "error.type": type(error).__qualname__,
                "qwen_sse.resume": resume,
                "qwen_sse.resume.received_chars": received_chars,
                "qwen_sse.resume.reason": self._scrub(str(error)),
            },
        )

    def _describe(self, result: ChatResult, error_type: str | None) -> None:
        """Set the span's response attributes, and its error status if ``error_type``."""
        telemetry = self._telemetry
        scrub = self._scrub
        span = self._span
        attributes: dict[str, Any] = {}
        if result.id:
            attributes["gen_ai.response.id"] = scrub(result.id)
        if result.model:
            attributes["gen_ai.response.model"] = scrub(result.model)
        reasons = [scrub(c.finish_reason) for c in result.choices if c.finish_reason]
        if reasons:
            attributes["gen_ai.response.finish_reasons"] = reasons
        usage = result.usage
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
            cached = usage.prompt_tokens_details
            if cached is not None and cached.cached_tokens is not None:
                attributes["gen_ai.usage.cache_read.input_tokens"] = cached.cached_tokens
            reasoning = usage.completion_tokens_details
            if reasoning is not None and reasoning.reasoning_tokens is not None:
                attributes["gen_ai.usage.reasoning.output_tokens"] = reasoning.reasoning_tokens
        if result.timing.ttft_s is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = result.timing.ttft_s
        if result.request_id:
            attributes["qwen_sse.request_id"] = scrub(result.request_id)
        if result.attempts > 1:
            attributes["qwen_sse.attempts"] = result.attempts
        if result.resumes:
            attributes["qwen_sse.resumes"] = result.resumes
        if telemetry.capture_content:
            attributes["gen_ai.output.messages"] = scrub(_json(_output_messages(result)))
        if error_type is not None:
            error = self._error
            attributes["error.type"] = error_type
            code = error.code if isinstance(error, APIStatusError | InBandError) else ""
            if code:
                attributes["qwen_sse.error.code"] = scrub(code)
            description = None
            if error is not None and (
                telemetry.capture_content or not isinstance(error, ProtocolError)
            ):
                description = scrub(str(error))
            span.set_status(telemetry._status(telemetry._status_code.ERROR, description))
        span.set_attributes(attributes)

    def failed(self, error: BaseException) -> None:
        """The call is about to end with ``error`` (raised to the caller)."""
        self._error = error

    def end(self, result: ChatResult, outcome: Outcome) -> None:
        """The call ended (``ok`` only when the answer is complete) with ``result``: set the
        response attributes and status, end the span, record the metrics."""
        # The result's clock where it has one, so that the time to the first chunk (on that
        # clock) never exceeds the duration; a call that never got past the limiter has none.
        duration_s = result.timing.total_s
        if duration_s is None:
            duration_s = time.perf_counter() - self._started_at_s
        telemetry = self._telemetry
        span = self._span
        usage = result.usage
        timing = result.timing
        metric_attributes = self._metric_attributes
        if result.model:
            model = self._scrub(result.model)
            metric_attributes = {**metric_attributes, "gen_ai.response.model": model}
        error_type = None if outcome == "ok" else _error_type(self._error, outcome)
        if span.is_recording():  # a span sampled out takes no attributes: skip the work
            self._describe(result, error_type)
        span.end()
        telemetry._duration.record(
            duration_s,
            metric_attributes
            if error_type is None
            else {**metric_attributes, "error.type": error_type},
        )
        if usage is not None:
            record = telemetry._token_usage.record
            record(usage.prompt_tokens, {**metric_attributes, _TOKEN_TYPE: "input"})
            record(usage.completion_tokens, {**metric_attributes, _TOKEN_TYPE: "output"})
        ttft_s = timing.ttft_s
        if ttft_s is None:
            return
        telemetry._first_chunk.record(ttft_s, metric_attributes)
        if outcome == "ok" and usage is not None and usage.completion_tokens > 1:
            per_token_s = (duration_s - ttft_s) / (usage.completion_tokens - 1)
            telemetry._per_token.record(max(per_token_s, 0.0), metric_attributes)
        per_chunk = telemetry._per_chunk
        if per_chunk is not None:
            for gap_s in timing.inter_token_gaps_s:
                per_chunk.record(gap_s, metric_attributes)


_instrumented: Telemetry | None = None
_global: Telemetry | None = None


def instrument(telemetry: Telemetry | None = None, /, **options: Any) -> Telemetry:
    """Turn telemetry on for every client built without ``telemetry=`` (those built before
    included): ``telemetry``, else ``Telemetry(**options)``. Returns what is now on."""
    global _instrumented
    _instrumented = telemetry if telemetry is not None else Telemetry(**options)
    return _instrumented


def uninstrument() -> None:
    """Undo :func:`instrument`: clients built without ``telemetry=`` report nothing again."""
    global _instrumented
    _instrumented = None


def telemetry_setting(setting: Telemetry | bool | None) -> Telemetry | bool | None:
    """A client's ``telemetry=`` as it keeps it: a :class:`Telemetry`, False (off, whatever
    :func:`instrument` says) or None (whatever :func:`instrument` says at each call);
    True is one shared ``Telemetry()`` on the global providers."""
    global _global
    if setting is True:
        if _global is None:
            _global = Telemetry()
        return _global
    return setting


def start_call(
    setting: Telemetry | bool | None,
    wire: WireProtocol,
    body: Mapping[str, Any],
    *,
    url: str,
    scrub: Scrub,
) -> CallTelemetry | None:
    """The telemetry of a call starting now under a client's ``setting`` (see
    :func:`telemetry_setting`), or None when telemetry is off for it."""
    telemetry = _instrumented if setting is None else setting
    if not isinstance(telemetry, Telemetry):
        return None
    return telemetry.start_call(wire, body, url=url, scrub=scrub)


@functools.lru_cache(maxsize=64)
def _server_of(url: str) -> tuple[str, int]:
    """``server.address`` and ``server.port`` of a request URL (the scheme's port if none)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port


def _error_type(error: BaseException | None, outcome: Outcome) -> str:
    if error is not None:
        return type(error).__qualname__
    return "cancelled" if outcome == "cancelled" else "_OTHER"


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _arguments(text: Any) -> Any:
    """Tool-call arguments as an object when they are JSON, else as sent."""
    if not isinstance(text, str):
        return text
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def _input_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Chat messages in the conventions' input-message schema (role and parts)."""
    converted: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = str(message.get("role") or "user")
        text = text_of(message.get("content"))
        parts: list[dict[str, Any]] = []
        if role == "tool":
            parts.append(
                {"type": "tool_call_response", "id": message.get("tool_call_id"), "response": text}
            )
        elif text:
            parts.append({"type": "text", "content": text})
        for call in message.get("tool_calls") or ():
            if isinstance(call, Mapping):
                function = call.get("function") or {}
                parts.append(
                    {
                        "type": "tool_call",
                        "id": call.get("id"),
                        "name": function.get("name", ""),
                        "arguments": _arguments(function.get("arguments")),
                    }
                )
        converted.append({"role": role, "parts": parts})
    return converted


def _output_messages(result: ChatResult) -> list[dict[str, Any]]:
    """Each choice in the conventions' output-message schema; a choice without its finish
    reason (a cut or failed answer) finishes with ``error``."""
    messages: list[dict[str, Any]] = []
    for choice in result.choices:
        parts: list[dict[str, Any]] = []
        if choice.reasoning_content:
            parts.append({"type": "reasoning", "content": choice.reasoning_content})
        if choice.content:
            parts.append({"type": "text", "content": choice.content})
        for call in choice.tool_calls:
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.id,
                    "name": call.function.name,
                    "arguments": _arguments(call.function.arguments),
                }
            )
        reason = choice.finish_reason
        finish = _SCHEMA_FINISH_REASONS.get(reason, reason) if reason else "error"
        messages.append(
            {"role": choice.role or "assistant", "parts": parts, "finish_reason": finish}
        )
    return messages

"""The emulated DashScope server (:class:`Emulator`): routes, the key check, the order in
which a request is checked, the rate windows, and the streaming of an answer.

Edge layer (part of :mod:`qwen_sse.emulator`): an ``aiohttp.web`` server. What a protocol's
requests and answers look like is its framing's business (:mod:`qwen_sse.emulator.framing`);
the server routes each framing at its protocol's ``root + path`` and reads the key with the
protocol's ``api_key_of``, whatever the protocol.

A request is checked in this order: fault header syntax (400), API key (401), the fault's
``status``, the body (400; the protocol's envelope first), the model (404), moderation,
input length and ``max_tokens`` against the model's limits (400), ``temperature`` in
[0, 2), ``top_p`` in (0, 1] and ``n`` in [1, 4] (400, DashScope's ranges), partial mode
with thinking (400), the rate limits (429); then it is answered, streamed or not, with the
fault's stream effects. A request with ``n`` gets that many answers
(:func:`~qwen_sse.emulator.answers.emulated_answer` of each choice), their usage summed.

``GET {base_url}/models`` lists the known models (:attr:`EmulatorConfig.models`) in
OpenAI's list format, as the openai SDK's ``models.list()`` reads it, and
``GET {base_url}/models/{model}`` one of them (404 ``model_not_found`` for another); both
want the API key.

``GET /metrics`` is the Prometheus page of :mod:`~qwen_sse.emulator.metrics` (requests
running, tokens answered, under vLLM's names); it wants no key.

Rate limits (:attr:`EmulatorConfig.rpm`, :attr:`EmulatorConfig.tpm`) are DashScope's: per
API key and per model, over a sliding window of ``limit_window_s`` (a minute by default,
seconds in tests). A request is admitted when the requests admitted in the last window,
plus this one, stay within ``rpm``, and their total tokens (prompt plus completion, known
in advance because answers are deterministic), plus this one's, within ``tpm``; else it is
answered 429 ``limit_requests`` (RPM, checked first) or 429 ``insufficient_quota``
"Allocated quota exceeded..." (TPM). A refused request is not counted. Every protocol
counts against the same limits.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from qwen_sse.emulator.accounting import answer_usage, prompt_tokens
from qwen_sse.emulator.answers import digest, emulated_answer, is_partial
from qwen_sse.emulator.config import EmulatorConfig
from qwen_sse.emulator.context_cache import ContextCache
from qwen_sse.emulator.faults import (
    FAULT_HEADER,
    Events,
    Fault,
    FaultFrames,
    Pacer,
    Stop,
    Streamer,
    fault_decoder,
)
from qwen_sse.emulator.framing import FRAMINGS, Answering, Endpoint, Framing, framing_for
from qwen_sse.emulator.framing.compatible import COMPATIBLE_FRAMING, encode
from qwen_sse.emulator.metrics import add_metrics, count_answer
from qwen_sse.emulator.records import Outcome, RecordedRequest, redacted
from qwen_sse.emulator.rejects import TPM_CODE, TPM_MESSAGE, Reject, bad_request, json_object
from qwen_sse.emulator.script import Script, render
from qwen_sse.emulator.ticker import Ticker
from qwen_sse.models import model_limits
from qwen_sse.protocols.base import text_of
from qwen_sse.protocols.compatible import COMPATIBLE
from qwen_sse.protocols.native import NATIVE

__all__ = ["MODERATION_TRIGGER", "Emulator"]

MODERATION_TRIGGER = "[[moderate-input]]"
"""A user message containing this text is rejected with 400 ``data_inspection_failed``."""


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
            raise Reject(429)
        if config.tpm is not None and self.tokens_in_window + tokens > config.tpm:
            raise Reject(429, TPM_CODE, TPM_MESSAGE)
        requests.append((now_s, tokens))
        self.tokens_in_window += tokens


class Emulator:
    """The emulated DashScope server; an async context manager that starts and closes it.

    It listens on ``host``:``port`` (loopback, port chosen by the OS, by default) and
    answers ``POST {base_url_for(protocol)}{protocol.path}`` for every protocol it serves
    (:data:`~qwen_sse.emulator.framing.FRAMINGS`): compatible mode at
    ``{base_url}/chat/completions``, the native protocol at
    ``{native_base_url}/services/aigc/text-generation/generation``... ``requests`` records
    every chat request of any protocol (unless ``config.record_requests`` is off),
    ``active_streams`` counts the responses being streamed. :meth:`close` cancels in-flight
    handlers, so a client in the middle of a stream sees its connection close.
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
        self._started_s = 0
        self._model_errors = 0
        self._models = frozenset(self.config.models)
        # Keyed by a digest of the API key, so that the server keeps no key it was sent.
        self._rate_windows: dict[tuple[bytes, str], _RateWindow] = {}
        self._context_cache = ContextCache(self.config.context_cache_entries)
        # The records of the exchanges in flight, by id() of their request, until aiohttp
        # reports when it took each request off its connection (_ArrivalClock).
        self._in_flight: dict[int, RecordedRequest] = {}
        self._ticker: Ticker | None = None

    @property
    def port(self) -> int:
        """The port listened on (the OS's choice when constructed with 0)."""
        if self._runner is None:
            raise RuntimeError("the emulator is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/compatible-mode/v1``; chat is ``POST {base_url}/chat/completions``."""
        return self.base_url_for(COMPATIBLE)

    @property
    def native_base_url(self) -> str:
        """``http://HOST:PORT/api/v1``, the native protocol's root (``QwenClient(...,
        protocol="native")`` takes it as ``base_url``)."""
        return self.base_url_for(NATIVE)

    def base_url_for(self, protocol: str | Endpoint) -> str:
        """``http://HOST:PORT`` and the root of ``protocol`` (a name or a protocol object):
        the ``base_url`` a client of that protocol takes. ValueError for a protocol the
        emulator does not serve."""
        return self._origin + framing_for(protocol).protocol.root

    @property
    def _origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def active_streams(self) -> int:
        """Streaming responses in flight: started, not yet ended, aborted or cancelled."""
        return self._active_streams

    def schedule(self, *faults: Fault) -> None:
        """Queue faults: each next chat request (of any protocol) takes one, before any
        other fault source."""
        self._queue.extend(faults)

    async def start(self) -> None:
        """Start listening; ``port`` and the base URLs are valid afterwards."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already started")
        # Large enough for long-context requests (the input-length check counts tokens).
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app[_EMULATOR] = self
        for framing in FRAMINGS.values():
            protocol = framing.protocol
            app.router.add_post(protocol.root + protocol.path, self._handler(framing))
        app.router.add_get(COMPATIBLE.root + "/models", self._list_models)
        app.router.add_get(COMPATIBLE.root + "/models/{model}", self._get_model)
        add_metrics(app, self)
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
            await web.TCPSite(runner, self.host, self._port, backlog=self.config.backlog).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = int(runner.addresses[0][1])
        self._runner = runner
        self._ticker = Ticker(asyncio.get_running_loop())
        self._started_s = int(time.time())
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
        if self._ticker is not None:
            self._ticker.close()
            self._ticker = None

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

    # -- the model list -------------------------------------------------------------------

    def _model_object(self, model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": self._started_s, "owned_by": "system"}

    def _model_reject(self, request: web.Request) -> web.Response | None:
        """The 401 answer to a model-list request without the accepted key, else None."""
        key = COMPATIBLE.api_key_of(request.headers)
        expected = self.config.api_key
        if key and (expected is None or key == expected):
            return None
        return self._plain_error(Reject(401))

    def _plain_error(self, reject: Reject) -> web.Response:
        self._model_errors += 1
        request_id = str(
            uuid.UUID(bytes=digest(16, "models", self.config.seed, self._model_errors))
        )
        body = COMPATIBLE_FRAMING.error_body(reject, request_id)
        headers = {"Content-Type": "application/json", "x-request-id": request_id}
        return web.Response(status=reject.status, body=body, headers=headers)

    async def _list_models(self, request: web.Request) -> web.Response:
        refused = self._model_reject(request)
        if refused is not None:
            return refused
        data = [self._model_object(model) for model in self.config.models]
        return _json_response({"object": "list", "data": data})

    async def _get_model(self, request: web.Request) -> web.Response:
        refused = self._model_reject(request)
        if refused is not None:
            return refused
        model = request.match_info["model"]
        if model not in self._models:
            return self._plain_error(_model_not_found(model))
        return _json_response(self._model_object(model))

    # -- request handling ---------------------------------------------------------------

    def _handler(self, framing: Framing) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, framing)

        return handle

    async def _handle(self, request: web.Request, framing: Framing) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        number = self._received
        self._received += 1
        key = framing.protocol.api_key_of(request.headers)
        record = RecordedRequest(request.method, request.path, redacted(request.headers, key))
        record.arrived_at_s = time.monotonic()
        record.request_id = str(uuid.UUID(bytes=digest(16, "request", self.config.seed, number)))
        if self.config.record_requests:
            self.requests.append(record)
            self._in_flight[id(request)] = record
        exchange = _Exchange(request, record, number, time.monotonic(), framing, key)
        try:
            raw = await request.read()
            record.fault = self._pick_fault(request)
            return await self._respond(exchange, raw)
        except Reject as reject:
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
            return fault_decoder.decode(header)
        except msgspec.DecodeError as error:
            raise bad_request(f"invalid {FAULT_HEADER} header: {error}") from None

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

    def _error_response(self, exchange: _Exchange, reject: Reject) -> web.Response:
        record = exchange.record
        record.status = reject.status
        record.outcome = "http_error"
        body = exchange.framing.error_body(reject, record.request_id)
        headers = self._headers(exchange, "application/json")
        return web.Response(status=reject.status, body=body, headers=headers)

    def _check_key(self, exchange: _Exchange) -> str:
        key = exchange.key
        expected = self.config.api_key
        if not key or (expected is not None and key != expected):
            raise Reject(401)
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
        key = self._check_key(exchange)
        if fault is not None and fault.status is not None:
            raise Reject(fault.status, fault.code, fault.message)
        reply = exchange.framing.reply_to(record.body, exchange.request.headers)
        body, messages = self._check_body(reply.answer_request)
        prompt = prompt_tokens(body, messages)
        self._check_content(body, messages, prompt)
        answers = tuple(
            emulated_answer(
                body, seed=self.config.seed, answer_tokens=self.config.answer_tokens, choice=choice
            )
            for choice in range(body.get("n") or 1)
        )
        usage = answer_usage(body, answers, prompt)
        self._check_rate(key, body["model"], usage.total_tokens)
        # Only a request the model takes reaches the cache.
        tools = body.get("tools")
        cached = self._context_cache.cached_tokens(
            messages,
            tools if isinstance(tools, list) else None,
            prompt,
            model=body["model"],
            api_key=key,
        )
        usage = usage._replace(cached_tokens=cached)
        count_answer(exchange.request, usage)
        answering = Answering(
            record.request_id,
            body,
            answers,
            usage,
            fault.line_ending if fault is not None else "\n",
            int(time.time()),
        )
        content_type = fault.content_type if fault is not None else None
        if not reply.streams(content_type):
            headers = self._headers(exchange, content_type or "application/json")
            record.status = 200
            record.outcome = "completed"
            return web.Response(body=reply.completion(answering), headers=headers)
        frames, events = reply.stream(answering)
        return await self._stream(exchange, frames, events)

    def _check_body(self, raw: Any) -> tuple[dict[str, Any], list[Any]]:
        body = json_object(raw)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("The model parameter is required.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("messages must be a non-empty list.")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise bad_request("Each message must be an object with a role.")
        if model not in self._models:
            raise _model_not_found(model)
        if body.get("tool_choice") == "required":
            raise bad_request("tool_choice 'required' is not supported.")
        return body, messages

    def _check_content(self, body: dict[str, Any], messages: list[Any], prompt: int) -> None:
        for message in messages:
            if message.get("role") == "user" and MODERATION_TRIGGER in text_of(
                message.get("content")
            ):
                raise Reject(
                    400, "data_inspection_failed", "Input data may contain inappropriate content."
                )
        limits = model_limits(body["model"])
        if limits is not None:
            if prompt > limits.max_input_tokens:
                raise bad_request(f"Range of input length should be [1, {limits.max_input_tokens}]")
            for name in ("max_tokens", "max_completion_tokens"):
                value = body.get(name)
                if value is not None and (
                    not isinstance(value, int)
                    or isinstance(value, bool)
                    or not 1 <= value <= limits.max_output_tokens
                ):
                    raise bad_request(f"Range of {name} should be [1, {limits.max_output_tokens}]")
        _check_range(body, "temperature", 0.0, 2.0, "[0.0, 2.0)", closed_below=True)
        _check_range(body, "top_p", 0.0, 1.0, "(0.0, 1.0]", closed_below=False)
        choices = body.get("n")
        if choices is not None and (
            not isinstance(choices, int) or isinstance(choices, bool) or not 1 <= choices <= 4
        ):
            raise bad_request("Range of n should be [1, 4]")
        if is_partial(messages[-1]) and body.get("enable_thinking") is True:
            raise bad_request("Partial mode is not supported when enable_thinking is true.")

    async def _stream(
        self, exchange: _Exchange, frames: FaultFrames, events: Events
    ) -> web.StreamResponse:
        """Stream a 200 response of ``events``.

        A stream that no fault rewrites is rendered first (:func:`render`) and written by
        the loop's :class:`Ticker`; a faulty one goes event by event through a
        :class:`Streamer`. The bytes and the delays are the same either way."""
        record = exchange.record
        fault = record.fault
        content_type = fault.content_type if fault is not None else None
        headers = self._headers(exchange, content_type or "text/event-stream;charset=utf-8")
        headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(headers=headers)
        pacer = Pacer(self.config, exchange.number, started_s=exchange.started_s)
        no_done = fault is not None and fault.no_done
        outcome: Outcome = "no_done" if no_done else "completed"
        script = None
        if fault is None or not fault.rewrites_stream:
            script = render(events(no_done), frames, pacer, outcome=outcome)
        record.status = 200
        self._active_streams += 1
        try:
            await resp.prepare(exchange.request)
            # Send the headers now, as a server does that accepts the request before the
            # model has produced anything; the first token is due on the schedule that
            # started when the request arrived.
            await resp.write(b"")
            if script is not None:
                record.outcome = await self._play(exchange, script)
                if record.outcome == "client_disconnected":
                    return resp
            else:
                streamer = Streamer(exchange.request, resp, frames, fault, record, pacer=pacer)
                await streamer.play(events(no_done))
                record.outcome = outcome
        except Stop as stop:
            record.outcome = stop.outcome
            if stop.aborted:
                return resp
        except ConnectionError:
            record.outcome = "client_disconnected"
            return resp
        finally:
            self._active_streams -= 1
        try:
            await resp.write_eof()
        except ConnectionError:
            # The client left between the last event and the end of the body.
            record.outcome = "client_disconnected"
        return resp

    async def _play(self, exchange: _Exchange, script: Script) -> Outcome:
        """Have the ticker write ``script`` to the request's connection, on the schedule
        that started when the request arrived; its outcome."""
        record = exchange.record
        transport = exchange.request.transport
        if transport is None or transport.is_closing() or self._ticker is None:
            return "client_disconnected"
        playing = self._ticker.play(
            transport,
            script,
            record,
            started_s=exchange.started_s,
            keep_times=self.config.record_requests,
        )
        try:
            return await playing.done
        finally:
            playing.close()


def _check_range(
    body: dict[str, Any], name: str, low: float, high: float, shown: str, *, closed_below: bool
) -> None:
    """The 400 DashScope answers a sampling setting outside its range: ``[low, high)`` when
    ``closed_below``, else ``(low, high]``; a value that is not a number is outside."""
    value = body.get(name)
    if value is None:
        return
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not (low <= value < high if closed_below else low < value <= high)
    ):
        raise bad_request(f"Range of {name} should be {shown}")


def _model_not_found(model: str) -> Reject:
    return Reject(
        404,
        "model_not_found",
        f"The model `{model}` does not exist or you do not have access to it.",
    )


def _json_response(payload: dict[str, Any]) -> web.Response:
    return web.Response(body=encode(payload), content_type="application/json")


_EMULATOR = web.AppKey("qwen_sse.emulator", Emulator)
_ARRIVALS_LOGGER = logging.getLogger("qwen_sse.emulator.arrivals")


class _ArrivalClock(AbstractAccessLogger):
    """Not a log: aiohttp hands its access logger, as each exchange ends, how long ago it
    took the request off its connection. That instant, before the handler ran, is the
    request's true arrival (see :attr:`RecordedRequest.arrived_at_s`), to the precision of
    the loop's clock: asyncio's is ``time.monotonic()``, uvloop's counts milliseconds.

    Taking "how long ago" from "now" reads two clocks one after the other; a process
    preempted between the two reads would put the arrival later than it was (by
    milliseconds on a busy host), even after the handler started. The arrival is never
    later than the handler's start, so that bound, which the stream's schedule runs from,
    is kept: no token is ever recorded as written before its time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_s: float) -> None:
        emulator = request.app.get(_EMULATOR) if isinstance(request, web.Request) else None
        if emulator is None:
            return
        record = emulator._in_flight.pop(id(request), None)
        # The handler dated the record as it started.
        if record is not None and record.arrived_at_s is not None:
            record.arrived_at_s = min(time.monotonic() - time_s, record.arrived_at_s)

    @property
    def enabled(self) -> bool:
        return True


@dataclass(slots=True)
class _Exchange:
    """One chat request in progress: what every step of answering it needs (``key`` is the
    API key its headers carry, "" if none)."""

    request: web.Request
    record: RecordedRequest
    number: int
    started_s: float
    framing: Framing
    key: str

"""The debugging proxy's server (:class:`DebugProxy`): where it listens, what it refuses, and
the forwarding of each exchange to the upstream, byte for byte, with faults applied.

Edge layer (part of :mod:`qwen_sse.debugproxy`): an ``aiohttp.web`` server in front of an
``aiohttp`` client session to the upstream. It must not import the client (qwen-sse's own
calls are not what it carries) nor the CLI.

Forwarding: the method, the path and query (joined onto the upstream URL's path), the
headers but the hop-by-hop ones and ``Host``, and the body go upstream unchanged; nothing is
added (no ``User-Agent``, ``Accept-Encoding`` or ``Content-Type`` of aiohttp's own). The
response's status, reason and headers (but the hop-by-hop ones) come back, then its body,
each read written to the application as it arrives, undecoded (``Content-Encoding`` passes
through, compressed bytes stay compressed), so the application receives exactly the bytes
the upstream sent. Redirects are passed back, never followed; cookies are never kept.

Bounds: a request body over ``max_request_bytes`` is answered 413 and never forwarded; a
response body is forwarded whole, whatever its size, but only its first
``max_stream_bytes`` are watched and recorded (the summary flags ``tee-limit``): the proxy
must not change what the application receives, and the application has its own bounds.
The upstream is reached with TLS verification on; the connection timeout is
``connect_timeout_s``, and no read timeout applies (the application's own timeouts are the
ones under test: when it gives up and disconnects, the upstream request is cancelled).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import re
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TextIO
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from qwen_sse import protocols
from qwen_sse.chat import DEFAULT_MAX_STREAM_BYTES
from qwen_sse.config import check_transport_security, is_loopback_host
from qwen_sse.debugproxy.exchange import ExchangeSummary, ExchangeView, request_object
from qwen_sse.debugproxy.faults import (
    FaultCutter,
    FaultPicker,
    ProxyFault,
    Step,
    fault_headers,
)
from qwen_sse.debugproxy.secrets import Secrets
from qwen_sse.emulator.framing import framing_for
from qwen_sse.emulator.rejects import Reject
from qwen_sse.errors import (
    ConfigurationError,
    QwenSSEError,
    StreamInterruptedError,
    TransportError,
)
from qwen_sse.protocols import WireProtocol
from qwen_sse.sse import encode_comment

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "DebugProxy"]

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""The largest request body forwarded (64 MiB: a long-context prompt, or a few images as
base64, fits many times over)."""

# Never forwarded, either way: the hop-by-hop headers (RFC 9110 section 7.6.1, and the old
# Proxy-Connection), the credentials meant for a forward proxy (Proxy-Authorization, never
# for the upstream), and Expect (the proxy has read the whole body already).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
# Nor upstream: Host (the upstream's own) and Content-Length (set for the body as read).
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "content-length"}
# What aiohttp's client would add on its own to a request that lacks them.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_KEEPALIVE = encode_comment(" keep-alive")
_RECORDING_NAME = re.compile(r"^(\d{6})-")
# How long a connection being dropped may take to hand the kernel what was written to it.
_FLUSH_BEFORE_ABORT_S = 5.0


class DebugProxy:
    """A reverse proxy for debugging another application's streaming calls; an async
    context manager that starts and closes it.

    The application's base URL points at :attr:`base_url` plus the path it would use below
    ``upstream`` (``http://127.0.0.1:PORT/compatible-mode/v1`` for an ``upstream`` of
    ``https://dashscope.aliyuncs.com``). Each exchange is forwarded (see the module),
    watched by an :class:`~qwen_sse.debugproxy.exchange.ExchangeView` (live lines to
    ``out``, None for none; ``verbose`` for the whole trace view), recorded into
    ``record_dir`` if given (one recording per exchange, ``NNNNNN-<protocol>.jsonl``,
    numbered on from the highest number already there), and broken by ``fault`` when it
    picks the exchange. :attr:`exchanges` keeps the last ``keep_exchanges`` summaries,
    :attr:`totals` counts every exchange.

    Refused at construction (:class:`~qwen_sse.errors.ConfigurationError`): an upstream
    that is not an ``http(s)`` URL, or has credentials, a query or a fragment; plain
    ``http://`` to a host off loopback unless ``allow_insecure_http``; a ``host`` off
    loopback unless ``allow_remote`` (the proxy would relay anyone's requests).
    """

    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        out: TextIO | None = None,
        verbose: bool = False,
        record_dir: str | Path | None = None,
        fault: ProxyFault | None = None,
        stall_ms: float = 2000.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_stream_bytes: int | None = DEFAULT_MAX_STREAM_BYTES,
        connect_timeout_s: float | None = 30.0,
        allow_insecure_http: bool = False,
        allow_remote: bool = False,
        keep_exchanges: int = 10_000,
    ) -> None:
        self.upstream = _upstream(upstream, allow_insecure_http=allow_insecure_http)
        if not is_loopback_host(host) and not allow_remote:
            raise ConfigurationError(
                f"refusing to listen on {host}, off loopback: anyone who reaches it could "
                "send requests through it; pass allow_remote=True if that is meant"
            )
        if max_request_bytes < 1:
            raise ConfigurationError(
                f"max_request_bytes must be at least 1, got {max_request_bytes}"
            )
        if max_stream_bytes is not None and max_stream_bytes < 1:
            raise ConfigurationError(f"max_stream_bytes must be at least 1, got {max_stream_bytes}")
        self.host = host
        self._port = port
        self._out = out
        self._verbose = verbose
        self._record_dir = Path(record_dir) if record_dir is not None else None
        self.fault = fault
        self._picker = FaultPicker(fault)
        self._stall_ms = stall_ms
        self._max_request_bytes = max_request_bytes
        self._max_stream_bytes = max_stream_bytes
        self._connect_timeout_s = connect_timeout_s
        self._exchanges: deque[ExchangeSummary] = deque(maxlen=keep_exchanges)
        self.totals: Counter[str] = Counter()
        """Every exchange so far: ``exchanges``, each ``outcome``, ``complete`` and
        ``incomplete`` streams, and each anomaly kind (``anomaly:stall``...)."""
        self._numbers = itertools.count(1)
        self._first_recording = 1
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (the OS's choice when constructed with 0)."""
        if self._runner is None:
            raise RuntimeError("the proxy is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``: what replaces the upstream's origin in the application's
        base URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def exchanges(self) -> list[ExchangeSummary]:
        """The summaries of the last exchanges that ended, oldest first."""
        return list(self._exchanges)

    async def start(self) -> None:
        """Start listening; :attr:`port` and :attr:`base_url` are valid afterwards. An
        unwritable ``record_dir`` is a ConfigurationError; a port in use an OSError."""
        if self._runner is not None:
            raise RuntimeError("the proxy is already started")
        if self._record_dir is not None:
            self._first_recording = _next_recording_number(self._record_dir)
        app = web.Application(client_max_size=self._max_request_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: an application that disconnects cancels its exchange, and
        # so the upstream request, at once (even during a stall).
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=0.1,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = int(runner.addresses[0][1])
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s),
        )
        self._runner = runner

    async def close(self) -> None:
        """Stop listening; exchanges in flight end as ``client-gone``. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

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

    # -- one exchange ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        number = next(self._numbers)
        secrets = Secrets(request.headers)
        if not request.raw_path.startswith("/"):
            # An absolute-form target: the application took this for a forward proxy.
            view = self._view(number, request, secrets)
            view.request(url=request.raw_path, headers=request.headers, body=b"")
            return self._refuse(
                view, 400, "this is a reverse proxy: send requests to its own URL, with a path"
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            view = self._view(number, request, secrets)
            view.request(url=request.raw_path, headers=request.headers, body=b"")
            return self._refuse(
                view,
                413,
                f"the request body is over the proxy's limit of {self._max_request_bytes} bytes",
            )
        url = self.upstream + request.raw_path
        protocol = _chat_protocol(url)
        request_body = None
        fault = None
        if protocol is not None and self.fault is not None:
            # Which exchanges a fault takes depends on the body's model: read it now.
            request_body = request_object(body)
            model = protocol.facts(request_body).model if request_body is not None else ""
            fault = self._picker.pick(model)
        view = self._view(number, request, secrets, protocol=protocol, fault=fault)
        headers = _forwarded(request.headers.items())
        if fault is not None and fault.status is not None and protocol is not None:
            view.request(url=url, headers=headers, body=body, request_body=request_body)
            return self._inject_status(view, protocol, fault)
        cutter = None
        if fault is not None and protocol is not None:
            cutter = FaultCutter(fault, protocol.reader(request_body or {}))
        exchange = _Exchange(request, view, asyncio.get_running_loop())
        # The view reads, masks and shows the request while the upstream works on it: a long
        # prompt must not wait for that on its way.
        exchange.show_request_soon(
            functools.partial(
                view.request, url=url, headers=headers, body=body, request_body=request_body
            )
        )
        try:
            await self._forward(exchange, url, headers, body, cutter=cutter, secrets=secrets)
        except asyncio.CancelledError:
            exchange.show_request()
            self._end(view, exchange.at_s(), "client-gone", None)
            raise
        return exchange.response or web.Response(status=502)

    async def _forward(
        self,
        exchange: _Exchange,
        url: str,
        headers: CIMultiDict[str],
        body: bytes,
        *,
        cutter: FaultCutter | None,
        secrets: Secrets,
    ) -> None:
        """Forward one request and stream its response back, through ``cutter`` if a fault
        took the exchange; end the exchange's view with what happened."""
        session = self._session
        assert session is not None, "started"
        request, view = exchange.request, exchange.view
        try:
            async with session.request(
                request.method,
                URL(url, encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    lower = name.lower()
                    # A cut body is shorter than the upstream's Content-Length says.
                    if lower not in _HOP_BY_HOP and (cutter is None or lower != "content-length"):
                        response.headers.add(name, value)
                exchange.show_request()
                view.response(
                    status=upstream.status, headers=response.headers, at_s=exchange.at_s()
                )
                await exchange.start(response)
                if cutter is None:
                    async for chunk in upstream.content.iter_any():
                        await exchange.write(chunk)
                else:
                    async for chunk in upstream.content.iter_any():
                        await self._steps(exchange, cutter.feed(chunk))
                        if cutter.finished:
                            break
                    await self._steps(exchange, cutter.feed_eof())
                if not exchange.dropped:
                    await exchange.finish()
        except _ApplicationGone:
            exchange.show_request()
            self._end(view, exchange.at_s(), "client-gone", None)
            return
        except aiohttp.ClientError as failure:
            reason = _reason(failure, secrets)
            if exchange.response is None:
                self._bad_gateway(exchange, reason)
                return
            # The upstream broke mid-body: so does the application's connection.
            await exchange.drop()
            self._end(
                view, exchange.at_s(), "upstream-broke", _cut(f"the upstream broke: {reason}")
            )
            return
        if exchange.dropped:
            self._end(view, exchange.at_s(), "fault", _cut("dropped by the proxy's fault"))
        else:
            finished = cutter is not None and cutter.finished
            self._end(view, exchange.at_s(), "fault" if finished else "ok", None)

    async def _steps(self, exchange: _Exchange, steps: Iterable[Step]) -> None:
        """Carry out a cutter's steps."""
        for step in steps:
            if isinstance(step, bytes):
                await exchange.write(step)
            elif step == "stall":
                await self._stall(exchange)
            elif step == "drop":
                await exchange.drop()
                return

    async def _stall(self, exchange: _Exchange) -> None:
        fault = self.fault
        assert fault is not None
        every = fault.keepalive_every_s
        if every is None:
            await asyncio.sleep(fault.stall_s)
            return
        comments, rest = divmod(fault.stall_s, every)
        for _ in range(int(comments)):
            await asyncio.sleep(every)
            await exchange.write(_KEEPALIVE)
        await asyncio.sleep(rest)

    def _inject_status(
        self, view: ExchangeView, protocol: WireProtocol, fault: ProxyFault
    ) -> web.StreamResponse:
        """Answer the fault's error status in the protocol's error body, as DashScope (and
        the emulator) would; the upstream never sees the request."""
        assert fault.status is not None
        request_id = str(uuid.uuid4())
        # The emulator's error bodies, so that the proxy and the emulator answer alike.
        body = framing_for(protocol).error_body(
            Reject(fault.status, fault.code, fault.message), request_id
        )
        headers = {
            "Content-Type": "application/json",
            "x-request-id": request_id,
            **fault_headers(fault),
        }
        view.response(status=fault.status, headers=headers, at_s=0.0)
        view.data(body, 0.0)
        self._end(view, 0.0, "fault", None)
        return web.Response(status=fault.status, body=body, headers=headers)

    def _refuse(self, view: ExchangeView, status: int, message: str) -> web.StreamResponse:
        body = _error_body("proxy_refused", f"qwen-sse proxy: {message}")
        headers = {"Content-Type": "application/json"}
        view.response(status=status, headers=headers, at_s=0.0)
        view.data(body, 0.0)
        self._end(view, 0.0, "refused", None)
        return web.Response(status=status, body=body, headers=headers)

    def _bad_gateway(self, exchange: _Exchange, reason: str) -> None:
        message = f"qwen-sse proxy: cannot reach the upstream: {reason}"
        body = _error_body("upstream_unreachable", message)
        headers = {"Content-Type": "application/json"}
        at_s = exchange.at_s()
        exchange.show_request()
        exchange.view.response(status=502, headers=headers, at_s=at_s)
        exchange.view.data(body, at_s)
        self._end(exchange.view, at_s, "no-upstream", TransportError(message))
        exchange.response = web.Response(status=502, body=body, headers=headers)

    def _end(
        self, view: ExchangeView, at_s: float, outcome: str, error: QwenSSEError | None
    ) -> None:
        """End the exchange's view as soon as the handler has returned: the summary (the
        usage check counts the answer's tokens) must not delay the application's next
        request on the same connection."""
        asyncio.get_running_loop().call_soon(self._summarise, view, at_s, outcome, error)

    def _summarise(
        self, view: ExchangeView, at_s: float, outcome: str, error: QwenSSEError | None
    ) -> None:
        if view.ended:  # cancelled after it ended (the proxy closing)
            return
        summary = view.end(at_s=at_s, outcome=outcome, error=error)
        self._exchanges.append(summary)
        totals = self.totals
        totals["exchanges"] += 1
        totals[outcome] += 1
        if summary.complete is not None:
            totals["complete" if summary.complete else "incomplete"] += 1
        for anomaly in summary.anomalies:
            totals[f"anomaly:{anomaly.kind}"] += 1

    def _view(
        self,
        number: int,
        request: web.Request,
        secrets: Secrets,
        *,
        protocol: WireProtocol | None = None,
        fault: ProxyFault | None = None,
    ) -> ExchangeView:
        recording: IO[str] | None = None
        recording_path: str | None = None
        if self._record_dir is not None:
            name = protocol.name if protocol is not None else request.method.lower()
            path = self._record_dir / f"{self._first_recording + number - 1:06d}-{name}.jsonl"
            try:
                recording = open(path, "x", encoding="utf-8")  # noqa: SIM115 - closed by the view
                recording_path = str(path)
            except OSError as failure:
                if self._out is not None:
                    self._out.write(
                        f"[#{number}] !! record-failed: cannot write {path}: "
                        f"{failure.strerror or failure}\n"
                    )
        return ExchangeView(
            number,
            method=request.method,
            path=request.raw_path,
            protocol=protocol,
            secrets=secrets,
            out=self._out,
            verbose=self._verbose,
            recording=recording,
            recording_path=recording_path,
            stall_ms=self._stall_ms,
            max_stream_bytes=self._max_stream_bytes,
            fault=fault.describe() if fault is not None else "",
        )


def _upstream(url: str, *, allow_insecure_http: bool) -> str:
    """The upstream's origin and path prefix, without a trailing slash."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"the upstream must be an http(s) URL, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "the upstream URL must not hold credentials: the application's own go through"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError("the upstream URL must have no query or fragment")
    check_transport_security(url, allow_insecure_http=allow_insecure_http)
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _chat_protocol(url: str) -> WireProtocol | None:
    """The protocol whose chat endpoint ``url`` is, or None (a path of no chat endpoint)."""
    protocol = protocols.for_url(url)
    path = urlsplit(url).path.rstrip("/")
    return protocol if path.endswith(protocol.path) else None


def _forwarded(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """The request headers that go upstream: all but the hop-by-hop ones (and those the
    ``Connection`` header names), ``Host`` and ``Content-Length``."""
    items = list(headers)
    named = {
        token.strip().lower()
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return CIMultiDict(
        (name, value)
        for name, value in items
        if name.lower() not in _NOT_FORWARDED and name.lower() not in named
    )


def _error_body(code: str, message: str) -> bytes:
    """An error body in OpenAI's shape (what every SDK reads), for the proxy's own errors."""
    return json.dumps(
        {"error": {"message": message, "type": "proxy_error", "code": code}},
        ensure_ascii=False,
    ).encode()


def _reason(failure: aiohttp.ClientError, secrets: Secrets) -> str:
    """One line on an upstream failure: its kind and message, never its request details."""
    text = " ".join(str(failure).split()) or type(failure).__name__
    return secrets.text(f"{type(failure).__name__}: {text}")


def _cut(message: str) -> StreamInterruptedError:
    return StreamInterruptedError(message)


class _ApplicationGone(Exception):
    """Writing to the application failed: it went away."""


class _Exchange:
    """The application's side of one exchange: its response, written and timed (seconds
    since the request was sent upstream), and handed to the view as it goes."""

    __slots__ = ("_loop", "_request_shown", "_sent_at", "dropped", "request", "response", "view")

    def __init__(
        self, request: web.Request, view: ExchangeView, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.request = request
        self.view = view
        self._loop = loop
        self._sent_at = loop.time()
        self.response: web.StreamResponse | None = None
        self.dropped = False
        self._request_shown: Callable[[], None] | None = None

    def show_request_soon(self, show: Callable[[], None]) -> None:
        """Show the request at the loop's next turn, or before the view is told anything
        else (:meth:`show_request`), whichever comes first."""
        self._request_shown = show
        self._loop.call_soon(self.show_request)

    def show_request(self) -> None:
        show, self._request_shown = self._request_shown, None
        if show is not None:
            show()

    def at_s(self) -> float:
        return self._loop.time() - self._sent_at

    async def start(self, response: web.StreamResponse) -> None:
        """Send the response head now, as the upstream sent it."""
        self.response = response
        try:
            await response.prepare(self.request)
            await response.write(b"")
        except ConnectionResetError:
            raise _ApplicationGone from None

    async def write(self, data: bytes) -> None:
        """Forward ``data``, then let the view see it (timed at its arrival)."""
        at_s = self._loop.time() - self._sent_at
        assert self.response is not None
        try:
            await self.response.write(data)
        except ConnectionResetError:
            raise _ApplicationGone from None
        self.view.data(data, at_s)

    async def finish(self) -> None:
        assert self.response is not None
        try:
            await self.response.write_eof()
        except ConnectionResetError:
            raise _ApplicationGone from None

    async def drop(self) -> None:
        self.dropped = True
        await _abort(self.request)


async def _abort(request: web.Request) -> None:
    """Break the application's connection, once the kernel has what was written to it."""
    transport = request.transport
    if transport is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _FLUSH_BEFORE_ABORT_S
    # No event signals an emptied transport buffer, hence the polling (as the emulator's).
    while (  # noqa: ASYNC110
        transport.get_write_buffer_size() and not transport.is_closing() and loop.time() < deadline
    ):
        await asyncio.sleep(0.001)
    transport.abort()


def _next_recording_number(directory: Path) -> int:
    """The number after the highest recording in ``directory`` (created if missing)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        names = [entry.name for entry in directory.iterdir()]
    except OSError as failure:
        raise ConfigurationError(
            f"cannot record into {directory}: {failure.strerror or failure}"
        ) from None
    numbers = [int(match[1]) for name in names if (match := _RECORDING_NAME.match(name))]
    return max(numbers, default=0) + 1

"""The streaming chat client: one aiohttp session, one read loop, typed chunks out.

I/O layer. Everything it knows about the wire comes from the sans-I/O core: the protocol
object (:mod:`qwen_sse.protocols`: request, headers, error bodies, continuation) and
:class:`~qwen_sse.chat.ChatStreamDecoder`; this module owns only the HTTP exchange, the
deadlines, connection release, and the mapping of aiohttp's exceptions to the package's
(in :func:`_map_client_error`, the one place that does it).

The read loop is ``resp.content.iter_any()`` feeding the decoder: never ``readline`` nor
``async for line in resp.content`` (LF-only, 128 KiB line cap).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
import re
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol, Self

import aiohttp
import msgspec
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.http_exceptions import ContentEncodingError
from multidict import CIMultiDict, CIMultiDictProxy

from qwen_sse import protocols, wirelog
from qwen_sse.chat import (
    DEFAULT_MAX_ANSWER_CHARS,
    DEFAULT_MAX_ANSWER_CHUNKS,
    DEFAULT_MAX_STREAM_BYTES,
    ChatAccumulator,
    ChatResult,
    ChatStreamDecoder,
)
from qwen_sse.chunks import (
    ChatCompletionChunk,
    CompletionTokensDetails,
    PromptTokensDetails,
    Usage,
)
from qwen_sse.config import (
    Timeouts,
    check_transport_security,
    redact_key,
    resolve_api_key,
    resolve_base_url,
)
from qwen_sse.errors import (
    ConfigurationError,
    ConnectTimeoutError,
    FirstTokenTimeoutError,
    IdleTimeoutError,
    IncompleteStreamError,
    ProtocolError,
    QwenSSEError,
    RateLimitError,
    RequestTimeoutError,
    StreamInterruptedError,
    TotalTimeoutError,
    TransportError,
    status_error,
)
from qwen_sse.limiter import Limiter, LimitRequest, Outcome, Permit
from qwen_sse.protocols import WireProtocol
from qwen_sse.proxy import Proxy, check_proxy_security, resolve_proxy
from qwen_sse.retry import RetryPolicy
from qwen_sse.sse import DEFAULT_MAX_EVENT_BYTES
from qwen_sse.telemetry import CallTelemetry, Telemetry, start_call, telemetry_setting

__all__ = ["ChatStream", "QwenClient", "WireTap"]

_USER_AGENT = "qwen-sse/0.1.0"
_ERROR_BODY_MAX_BYTES = 64 * 1024
_NON_SSE_PREVIEW_BYTES = 2048
_ERROR_BODY_WAIT_S = 30.0
# Response headers kept on HTTP errors: what a retry policy or a human needs.
_KEPT_ERROR_HEADERS = (
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "x-request-id",
    "location",
)
# The Content-Encodings aiohttp decodes; it passes any other through, still encoded.
_DECODED_ENCODINGS = frozenset(
    {"", "identity", "gzip", "deflate"}
    | ({"br"} if HAS_BROTLI else set())
    | ({"zstd"} if HAS_ZSTD else set())
)

Message = Mapping[str, Any]

_log = logging.getLogger("qwen_sse.client")


class WireTap(Protocol):
    """Sees the wire of every attempt, for logging or recording it. Times are seconds since
    that attempt's request was sent; headers come with the key redacted, and so do the
    server's headers and body pieces, should a server echo the key (an echo split across two
    reads is not seen). Callbacks run on the read path: they must be quick and must not
    raise. A proxy's credentials show as ``Proxy-Authorization: ***``."""

    def request(self, *, method: str, url: str, headers: Mapping[str, str], body: bytes) -> None:
        """An attempt is about to be sent."""

    def response(self, *, status: int, headers: Mapping[str, str], at_s: float) -> None:
        """The response head arrived."""

    def data(self, chunk: bytes, at_s: float) -> None:
        """One read of the response body, exactly as received."""

    def end(self, *, at_s: float, outcome: Outcome, error: QwenSSEError | None) -> None:
        """The attempt ended: ``ok``, ``cancelled`` by the caller, or with ``error``."""


class _Deadlines:
    """One lazily re-armed timer per stream instead of a timeout context per read.

    A context per read costs microseconds each; here each read costs a clock reading and a
    few attribute stores, and the timer callback does the arithmetic only when it fires.
    The idle timeout counts only time spent waiting in reads since the last event, so a
    consumer that is slow between chunks never makes the server look silent.
    """

    __slots__ = (
        "fired",
        "first_token_at",
        "handle",
        "idle_s",
        "idle_waited_s",
        "loop",
        "read_started_at",
        "reading",
        "task",
        "timeouts",
        "total_at",
    )

    def __init__(self, timeouts: Timeouts, sent_at: float, call_started_at: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.timeouts = timeouts
        self.first_token_at = (
            None if timeouts.first_token_s is None else sent_at + timeouts.first_token_s
        )
        # The total deadline spans the whole call, retries and resumes included.
        self.total_at = None if timeouts.total_s is None else call_started_at + timeouts.total_s
        self.idle_s = timeouts.idle_s
        self.idle_waited_s = 0.0
        self.read_started_at = sent_at
        self.reading = False
        self.fired: RequestTimeoutError | None = None
        self.handle: asyncio.TimerHandle | None = None

    def first_token_arrived(self) -> None:
        """From now on the idle deadline applies; the timer is re-armed at the next read."""
        self.first_token_at = None
        self.stop()

    def read_done(self, now: float, *, event: bool) -> None:
        """A read returned: an event restarts the idle count, anything else adds to it."""
        self.idle_waited_s = 0.0 if event else self.idle_waited_s + now - self.read_started_at

    def expired(self, now: float) -> RequestTimeoutError | None:
        """The timeout that has passed at ``now``, if any (total first: it is the widest)."""
        t = self.timeouts
        if self.total_at is not None and now >= self.total_at:
            return TotalTimeoutError(timeout_s=t.total_s or 0.0)
        if self.first_token_at is not None and now >= self.first_token_at:
            return FirstTokenTimeoutError(timeout_s=t.first_token_s or 0.0)
        idle_s = self.idle_s
        if idle_s is not None and self.first_token_at is None:
            waited = self.idle_waited_s + (now - self.read_started_at if self.reading else 0.0)
            if waited >= idle_s:
                return IdleTimeoutError(timeout_s=idle_s)
        return None

    def _next_deadline(self) -> float | None:
        candidates = [self.total_at, self.first_token_at]
        if self.idle_s is not None and self.first_token_at is None:
            candidates.append(self.read_started_at + self.idle_s - self.idle_waited_s)
        present = [c for c in candidates if c is not None]
        return min(present) if present else None

    def arm(self) -> None:
        """Before a read: raise if a deadline already passed, else make sure a timer runs."""
        self.task = asyncio.current_task()
        self.read_started_at = now = self.loop.time()
        if self.handle is None:
            expired = self.expired(now)
            if expired is not None:
                raise expired
            when = self._next_deadline()
            if when is not None:
                self.handle = self.loop.call_at(when, self._fire)
        self.reading = True

    def _fire(self) -> None:
        self.handle = None
        expired = self.expired(self.loop.time())
        if expired is None:
            when = self._next_deadline()
            if when is not None:
                self.handle = self.loop.call_at(when, self._fire)
        elif self.reading and self.task is not None:
            self.fired = expired
            self.task.cancel()
        # Expired while the consumer was busy elsewhere: the next arm() decides.

    def cancelled(self) -> RequestTimeoutError | None:
        """After a CancelledError: our timeout (cancellation undone) or None (a real one)."""
        fired, self.fired = self.fired, None
        if fired is not None and self.task is not None and self.task.uncancel() == 0:
            return fired
        return None

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class ChatStream:
    """One streamed chat completion: an async context manager and an async iterator.

    ``async with client.stream_chat(...) as stream`` sends the request and raises typed
    HTTP errors; ``async for chunk in stream`` yields
    :class:`~qwen_sse.chunks.ChatCompletionChunk` objects as they arrive. ``result`` is
    the :class:`~qwen_sse.chat.ChatResult` so far (``complete`` only once every choice's
    finish reason and then the end marker arrived; ``[DONE]`` without a finish reason, as
    llama.cpp's server ends an interrupted stream, is a cut like any other).
    Leaving the block early (``break``, an exception, cancellation) closes the connection
    at once. Every error raised after the response started carries ``.partial``.

    Failures before any output reached the caller are retried under the client's
    :class:`~qwen_sse.retry.RetryPolicy` (chunks without output, like the role-only first
    chunk, are held back until output arrives, so a retry never repeats one). After
    output, a broken stream raises, or, with ``resume`` on, is continued (the protocol's
    continuation: DashScope's partial mode, where the protocol has one) and spliced into
    the same iteration; the continuation request
    is retried under the same policy. A redirect (3xx) is never followed: it raises
    :class:`~qwen_sse.errors.RedirectError`.
    """

    def __init__(
        self,
        client: QwenClient,
        *,
        url: str,
        body: dict[str, Any],
        payload: bytes,
        headers: dict[str, str],
        timeouts: Timeouts,
        retry: RetryPolicy,
    ) -> None:
        self._client = client
        self._url = url
        self._body = body
        self._payload = payload
        self._headers = headers
        self._timeouts = timeouts
        self._retry = retry
        self._response: aiohttp.ClientResponse | None = None
        self._reader: AsyncIterator[bytes] | None = None
        self._accumulator = ChatAccumulator(
            max_answer_chars=client.max_answer_chars, max_answer_chunks=client.max_answer_chunks
        )
        self._decoder = self._new_decoder()
        self._deadlines: _Deadlines | None = None
        self._permit: Permit | None = None
        self._chunks: list[ChatCompletionChunk] = []
        self._position = 0
        self._held: list[ChatCompletionChunk] = []
        self._committed = False
        self._skip_preamble = False
        self._failure: QwenSSEError | None = None
        self._started = False
        self._finished = False
        self._final: ChatResult | None = None
        self._call_started_at = 0.0
        self._attempts = 0
        # The attempts of the current request (the first, or a continuation) and when its
        # first attempt started: the retry policy bounds each request by these.
        self._request_attempts = 0
        self._request_started_at = 0.0
        self._scrubber = client._scrubber
        self._resumes = 0
        self._queue_wait_s = 0.0
        self._earlier_usage: list[Usage] = []
        self._bytes_before = 0
        self._events_before = 0
        self._tap = client.wire_tap
        if wirelog.wanted():
            self._tap = wirelog.WireLog(self, self._scrubber, inner=self._tap)
        self._tap_open = False
        self._sent_at = 0.0
        self._otel: CallTelemetry | None = None
        self.status: int | None = None
        self.headers: Mapping[str, str] = {}

    def __repr__(self) -> str:
        state = "finished" if self._finished else "open" if self._started else "not started"
        return f"<ChatStream {self._url} {state}>"

    @property
    def request_id(self) -> str:
        return self.result.request_id

    @property
    def result(self) -> ChatResult:
        """The result so far; ``complete`` only once every choice received its finish
        reason and the protocol's end marker arrived."""
        if self._final is not None:
            return self._final
        return self._snapshot()

    async def __aenter__(self) -> Self:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish("ok" if self._decoder.done else "cancelled")

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        while True:
            if self._position < len(self._chunks):
                chunk = self._chunks[self._position]
                self._position += 1
                return chunk
            if self._failure is not None:
                failure, self._failure = self._failure, None
                await self._recover(failure)
                continue
            if self._finished:
                raise StopAsyncIteration
            if not self._started:
                await self._start()
                continue
            try:
                await self._read_more()
            except QwenSSEError as error:
                # Without the traceback of the read that raised it: its frames hold the
                # read's raw bytes, which may echo the key (scrubbed only on the error).
                self._failure = error.with_traceback(None)
            except Exception:
                # Not one of ours (a bug, a wire tap that raised): the call ends failed for
                # good, so iterating on can never turn it into a complete answer.
                self._finish("error")
                raise

    def _new_decoder(self) -> ChatStreamDecoder:
        # Always the original body: it says what the whole answer must hold (a continuation
        # asks for the rest of the same answer).
        return ChatStreamDecoder(
            protocol=self._client.wire,
            request=self._body,
            accumulator=self._accumulator,
            max_event_bytes=self._client.max_event_bytes,
            max_stream_bytes=self._client.max_stream_bytes,
        )

    # -- sending -------------------------------------------------------------------------

    async def _start(self) -> None:
        """Send the first request, retrying failures before the response under the policy."""
        if self._started:
            return
        self._started = True
        self._call_started_at = asyncio.get_running_loop().time()
        self._request_started_at = self._call_started_at
        self._accumulator.started_at_s = self._call_started_at
        self._otel = start_call(
            self._client.telemetry,
            self._client.wire,
            self._body,
            url=self._url,
            scrub=self._scrubber.value,
        )
        await self._open_with_retries(self._body)

    async def _open_with_retries(self, body: dict[str, Any], *, continuation: bool = False) -> None:
        """Open ``body``, retrying under the policy; anything that escapes (the final error,
        a cancellation) ends the call with its connection and permit released."""
        try:
            while True:
                try:
                    await self._open(body)
                    return
                except QwenSSEError as error:
                    await self._retry_or_raise(error, continuation=continuation)
        except BaseException:
            self._finish("cancelled")  # no effect after _give_up, which finished already
            raise

    async def _retry_or_raise(self, error: QwenSSEError, *, continuation: bool = False) -> None:
        """Sleep before the next attempt if the policy allows one; else raise ``error``.

        The failed attempt's connection, permit and tap are closed first (each at most once).
        A retry never sleeps past the total deadline (``Timeouts.total_s``): when its delay
        would, ``error`` is raised at once, with a note saying so. ``continuation``: the
        failed attempt continued a resumed stream, whose output so far is kept.
        """
        self._scrubber.error(error)
        self._close_response(clean=False)
        self._release_permit("throttled" if _is_throttling(error) else "error")
        self._tap_end(error)
        loop = asyncio.get_running_loop()
        now = loop.time()
        decision = self._retry.decide(
            error,
            attempt=self._request_attempts,
            elapsed_s=now - self._request_started_at,
            random_fraction=self._client._random.random(),
            now_epoch_s=time.time(),
        )
        if not decision.retry:
            raise self._give_up(error)
        total_s = self._timeouts.total_s
        if total_s is not None and now + decision.delay_s >= self._call_started_at + total_s:
            error.add_note(
                f"not retried: waiting {decision.delay_s:g} s would pass total_s={total_s:g}"
            )
            raise self._give_up(error)
        _log.warning(
            "retrying in %.2f s (attempt %d of %d): %s%s",
            decision.delay_s,
            self._request_attempts + 1,
            self._retry.max_attempts,
            decision.reason,
            self._request_id_note(error),
        )
        if self._otel is not None:
            self._otel.retry(
                error, attempt=self._attempts, delay_s=decision.delay_s, reason=decision.reason
            )
        try:
            await self._client._sleep(decision.delay_s)
        except BaseException:
            self._finish("cancelled")
            raise
        if not continuation:
            # A retry starts over: nothing of the failed attempt reached the caller.
            self._accumulator.reset()
            self._held = []

    async def _open(self, body: dict[str, Any]) -> None:
        """One HTTP request: admission, send, status and content-type checks."""
        self._attempts += 1
        self._request_attempts += 1
        limiter = self._client.limiter
        if limiter is not None:
            request = _limit_request(self._client.wire, body)
            waited_from = asyncio.get_running_loop().time()
            self._permit = await limiter.acquire(request)
            waited_s = asyncio.get_running_loop().time() - waited_from
            self._queue_wait_s += waited_s
            if self._otel is not None:
                self._otel.queue_wait(waited_s)
        loop = asyncio.get_running_loop()
        sent_at = self._sent_at = loop.time()
        deadlines = self._deadlines = _Deadlines(self._timeouts, sent_at, self._call_started_at)
        if self._accumulator.has_text:
            deadlines.first_token_arrived()
        session = self._client._require_session()
        # Only a continuation differs from the original body, and it is plain JSON too.
        payload = self._payload if body is self._body else msgspec.json.encode(body)
        tap = self._tap
        if tap is not None:
            tap.request(
                method="POST",
                url=self._url,
                headers=self._scrubber.sent_headers(self._headers),
                body=payload,
            )
            self._tap_open = True
        failure: QwenSSEError | None = None
        try:
            deadlines.arm()
            response = await session.post(
                self._url,
                data=payload,
                headers=self._headers,
                allow_redirects=False,
                timeout=self._client._request_timeout(self._timeouts),
                proxy=self._client._proxy_url,
                proxy_headers=self._client._proxy_headers,
            )
        except asyncio.CancelledError:
            failure = self._timeout_after_cancel()
            if failure is None:
                raise
        except aiohttp.ClientError as error:
            failure = _map_client_error(
                error, self._timeouts, started=False, proxy=self._client.proxy
            )
        except ValueError as error:
            # aiohttp refuses malformed headers (e.g. control characters in extra headers).
            failure = ConfigurationError(f"the request could not be sent: {error}")
        finally:
            deadlines.reading = False
        if failure is not None:
            # Raised outside the except block and unchained: aiohttp's error and the frames
            # of its traceback hold the request headers, key included.
            raise failure from None
        self._response = response
        headers = self._scrubber.headers(response.headers)
        if tap is not None:
            tap.response(status=response.status, headers=headers, at_s=self._since_sent())
        self.status = response.status
        self.headers = headers
        request_id = headers.get("x-request-id", "")
        if not self._committed:
            # The result is this attempt's (a resume keeps the first answer's id).
            self._accumulator.request_id = request_id
        content_type = headers.get("content-type", "")
        if response.status >= 300:
            # Redirects are never followed (allow_redirects=False): the key must not travel.
            failure = await self._status_error(response, request_id)
        elif not content_type.lower().startswith("text/event-stream"):
            failure = await self._not_sse_error(response, content_type, request_id)
        elif encoding := _unsupported_encoding(response):
            self._close_response(clean=False)
            failure = ProtocolError(
                f"unsupported Content-Encoding {encoding!r}: the body cannot be decoded"
            )
        if failure is not None:
            # No frame of the raised traceback may hold the response: its repr shows the
            # headers, which may echo the key.
            del response, headers
            raise failure
        self._bytes_before += self._decoder.bytes_received
        self._events_before += self._decoder.events
        self._decoder = self._new_decoder()
        self._reader = response.content.iter_any().__aiter__()

    async def _read_body(self, response: aiohttp.ClientResponse, limit: int) -> bytes:
        """Up to ``limit`` bytes of a body that is not a stream, read to its end within the
        call's deadlines (an error body is short: at most ``_ERROR_BODY_WAIT_S``); what
        arrived before a deadline or a broken connection is kept."""
        deadlines = self._deadlines
        assert deadlines is not None
        now = deadlines.loop.time()
        limits = [now + _ERROR_BODY_WAIT_S, deadlines.total_at, deadlines.first_token_at]
        if deadlines.idle_s is not None:
            limits.append(now + deadlines.idle_s)
        pieces: list[bytes] = []
        size = 0
        with contextlib.suppress(TimeoutError, aiohttp.ClientError):
            async with asyncio.timeout_at(min(t for t in limits if t is not None)):
                while size < limit:
                    piece = await response.content.read(limit - size)
                    if not piece:
                        break
                    pieces.append(piece)
                    size += len(piece)
        return b"".join(pieces)

    async def _status_error(
        self, response: aiohttp.ClientResponse, request_id: str
    ) -> QwenSSEError:
        try:
            body = await self._read_body(response, _ERROR_BODY_MAX_BYTES)
        finally:
            self._close_response(clean=False)
        body = self._scrubber.data(body)
        if self._tap is not None:
            self._tap.data(body, self._since_sent())
        code, message, body_request_id = self._client.wire.error_fields(body)
        kept = {k: v for k in _KEPT_ERROR_HEADERS if (v := response.headers.get(k)) is not None}
        error: QwenSSEError
        proxy = self._client.proxy
        if response.status == 407 and proxy is not None:
            # Only a proxy says 407: this one refused a plain-http request (https goes
            # through CONNECT, whose refusal aiohttp raises).
            error = proxy.refused(407, response.reason or "")
        else:
            error = status_error(
                status=response.status,
                code=code,
                message=message or (response.reason or ""),
                request_id=request_id or body_request_id,
                body=body.decode("utf-8", "replace"),
                headers=kept,
                method="POST",
                url=self._url,
            )
        self._scrubber.error(error)  # the reason phrase and the headers kept, too
        self._release_permit("throttled" if _is_throttling(error) else "error")
        self._tap_end(error)
        return error

    async def _not_sse_error(
        self, response: aiohttp.ClientResponse, content_type: str, request_id: str
    ) -> QwenSSEError:
        try:
            head = await self._read_body(response, _NON_SSE_PREVIEW_BYTES)
        finally:
            self._close_response(clean=False)
        head = self._scrubber.data(head)
        if self._tap is not None:
            self._tap.data(head, self._since_sent())
        self._release_permit("error")
        error: QwenSSEError | None = self._client.wire.error_in_body(head, request_id)
        if error is None:
            error = ProtocolError(
                f"expected a text/event-stream response, got {content_type or 'none'!r}",
                frame=head,
            )
        self._tap_end(error)
        return error

    # -- reading -------------------------------------------------------------------------

    async def _read_more(self) -> None:
        reader = self._reader
        deadlines = self._deadlines
        assert reader is not None
        assert deadlines is not None
        decoder = self._decoder
        failure: QwenSSEError | None = None
        data = b""
        try:
            deadlines.arm()
            data = await reader.__anext__()
        except StopAsyncIteration:
            pass
        except asyncio.CancelledError:
            failure = self._timeout_after_cancel()
            if failure is None:
                raise
        except aiohttp.ClientError as error:
            encoding = self.headers.get("content-encoding", "")
            failure = _map_client_error(error, self._timeouts, started=True, encoding=encoding)
        finally:
            deadlines.reading = False
        if failure is not None:
            # Unchained, outside the except block: see _open.
            self._close_response(clean=False)
            raise failure from None
        now = deadlines.loop.time()
        if self._tap is not None:
            self._tap.data(self._scrubber.data(data), now - self._sent_at)
        if not data:
            self._close_response(clean=False)
            decoder.feed_eof(now)
            return
        events_before = decoder.events
        try:
            chunks = decoder.feed(data, now)
        except QwenSSEError:
            self._close_response(clean=False)
            raise
        event = decoder.events != events_before
        deadlines.read_done(now, event=event)
        if event and deadlines.first_token_at is not None and _has_output(decoder, chunks):
            deadlines.first_token_arrived()
        if self._committed and not self._skip_preamble:
            self._chunks = chunks
        else:
            self._stage(chunks, decoder.done)
        self._position = 0
        if decoder.done:
            self._close_response(clean=True)
            self._tap_end(None)
            self._finish("ok")
        elif decoder.error is not None:
            # Deliver what preceded the failure, then handle it without waiting for bytes.
            self._close_response(clean=False)
            self._failure = decoder.error

    def _stage(self, chunks: list[ChatCompletionChunk], done: bool) -> None:
        """Before output: hold chunks back; after a resume: drop the new role preamble."""
        if self._skip_preamble:
            kept = list(itertools.dropwhile(_is_preamble, chunks))
            self._skip_preamble = not kept and not done
            self._chunks = kept
            return
        self._held.extend(chunks)
        if done or any(not _is_preamble(chunk) for chunk in chunks):
            self._committed = True
            self._chunks, self._held = self._held, []
        else:
            self._chunks = []

    # -- failures ------------------------------------------------------------------------

    async def _recover(self, error: QwenSSEError) -> None:
        """Retry (before output), resume (after output, if allowed), or raise ``error``.

        A continuation is retried like any request (see :class:`RetryPolicy`); when all its
        attempts fail, ``error`` is raised with a note naming the last failure."""
        self._scrubber.error(error)
        self._close_response(clean=False)
        self._tap_end(error)
        if not self._committed:
            await self._retry_or_raise(error)
            await self._open_with_retries(self._body)
            return
        body = self._resume_body(error)
        if body is None:
            raise self._give_up(error)
        self._release_permit("error")
        self._resumes += 1
        _log.warning(
            "resuming a broken stream at once after %d characters (resume %d of %d): %s%s",
            len(self._accumulator.result(complete=False).content),
            self._resumes,
            self._retry.max_resumes,
            error,
            self._request_id_note(error),
        )
        if self._otel is not None:
            received_chars = len(self._accumulator.result(complete=False).content)
            self._otel.resume(error, resume=self._resumes, received_chars=received_chars)
        if self._accumulator.usage is not None:
            self._earlier_usage.append(self._accumulator.usage)
            self._accumulator.usage = None
        self._request_attempts = 0
        self._request_started_at = asyncio.get_running_loop().time()
        try:
            await self._open_with_retries(body, continuation=True)
        except QwenSSEError as refused:
            tries = self._request_attempts
            after = f" after {tries} attempts" if tries > 1 else ""
            error.add_note(f"resuming failed{after}: {refused}")
            raise self._give_up(error, count_attempts=False) from refused
        self._skip_preamble = True

    def _resume_body(self, error: QwenSSEError) -> dict[str, Any] | None:
        """The continuation request for a broken stream, or None where resume cannot apply."""
        policy = self._retry
        if not policy.resume or self._resumes >= policy.max_resumes:
            return None
        if not isinstance(error, IncompleteStreamError | IdleTimeoutError | TransportError):
            return None
        so_far = self._accumulator.result(complete=False)
        if so_far.tool_calls or so_far.reasoning_content or not so_far.content:
            return None
        if so_far.finish_reason is not None:
            # The answer is whole; only its usage or end marker was lost. Continuing it
            # would bill a request and could append text to a finished answer.
            return None
        return self._client.wire.continuation(self._body, so_far)

    def _request_id_note(self, error: QwenSSEError) -> str:
        request_id = getattr(error, "request_id", "") or self._accumulator.request_id
        return f" (request id {request_id})" if request_id else ""

    def _give_up(self, error: QwenSSEError, *, count_attempts: bool = True) -> QwenSSEError:
        """Finish with ``error``: attach the partial result and the attempt count."""
        if count_attempts and self._request_attempts > 1:
            error.add_note(f"gave up after {self._request_attempts} attempts")
        if self._otel is not None:
            self._otel.failed(error)
        self._finish("throttled" if _is_throttling(error) else "error")
        error.partial = self._final
        return self._scrubber.error(error)

    def _timeout_after_cancel(self) -> RequestTimeoutError | None:
        """On CancelledError: our timeout if it caused it, else None after cleaning up (the
        caller re-raises the cancellation). The caller raises the timeout outside its except
        block, so that the cancellation (its traceback runs through aiohttp's frames, which
        hold the request headers) is not its ``__context__``."""
        deadlines = self._deadlines
        timeout = deadlines.cancelled() if deadlines is not None else None
        self._close_response(clean=False)
        if timeout is None:
            self._finish("cancelled")
        return timeout

    # -- ending --------------------------------------------------------------------------

    def _snapshot(self) -> ChatResult:
        decoder = self._decoder
        now = self._deadlines.loop.time() if self._deadlines is not None else None
        result = self._accumulator.result(
            complete=decoder.done,
            now_s=now,
            bytes_received=self._bytes_before + decoder.bytes_received,
            events=self._events_before + decoder.events,
        )
        usage = _sum_usage([*self._earlier_usage, result.usage])
        return msgspec.structs.replace(
            result,
            usage=usage,
            attempts=max(1, self._attempts),
            resumes=self._resumes,
            queue_wait_s=self._queue_wait_s,
        )

    def _close_response(self, *, clean: bool) -> None:
        """Release the connection: back to the pool after the end marker, else closed."""
        if self._deadlines is not None:
            self._deadlines.stop()
        response = self._response
        if response is not None:
            self._response = None
            if clean:
                response.release()
            else:
                response.close()

    def _since_sent(self) -> float:
        return asyncio.get_running_loop().time() - self._sent_at

    def _tap_end(self, error: QwenSSEError | None, outcome: Outcome | None = None) -> None:
        if self._tap is not None and self._tap_open:
            self._tap_open = False
            if outcome is None:
                outcome = (
                    "ok" if error is None else "throttled" if _is_throttling(error) else "error"
                )
            self._tap.end(at_s=self._since_sent(), outcome=outcome, error=error)

    def _release_permit(self, outcome: Outcome) -> None:
        permit, self._permit = self._permit, None
        if permit is not None:
            permit.release(usage=self._accumulator.usage, outcome=outcome)

    def _finish(self, outcome: Outcome) -> None:
        """End the call for good (idempotent): connection, permit, final result."""
        self._close_response(clean=False)
        if self._tap_open:
            self._tap_end(None, outcome)
        self._release_permit(outcome)
        if not self._finished:
            self._finished = True
            if self._started and self._final is None:
                self._final = self._snapshot()
            if self._otel is not None and self._final is not None:
                self._otel.end(self._final, outcome)


class QwenClient:
    """Async client for DashScope's OpenAI-compatible chat API, or any compatible server.

    ``QwenClient(api_key=None, base_url=None, region=None)``: the key comes from the
    argument, else ``DASHSCOPE_API_KEY``, else ``QWEN_API_KEY`` (a missing key raises
    :class:`~qwen_sse.errors.ConfigurationError` before any traffic); ``base_url``
    overrides ``region`` (``beijing`` by default, ``singapore``, ``us``, ``hongkong``), and
    either argument overrides ``DASHSCOPE_BASE_URL`` and ``DASHSCOPE_REGION``
    (:func:`~qwen_sse.config.resolve_base_url`). ``QWEN_SSE_LOG=debug|info`` turns on the
    wire log (:mod:`qwen_sse.wirelog`).
    Use it as ``async with QwenClient() as client``; it owns one ``aiohttp.ClientSession``
    whose pool holds up to ``max_connections`` connections (streams hold one each).
    The key never appears in a repr, log line, or exception (no raised error chains
    aiohttp's, whose traceback frames hold the request headers; a key a server echoes is
    replaced by its redacted form, ``sk-***``, in every error and in what the wire tap
    sees); it is refused over plain ``http://`` to a non-loopback host unless
    ``allow_insecure_http=True``.

    ``protocol`` names the wire protocol (:data:`qwen_sse.protocols.NAMES`: ``compatible``,
    ``native``, ``native-multimodal``, ``responses``, ``anthropic``) or is a protocol
    object; every one yields the same chunks and result, and ``base_url`` then names that
    protocol's root (``.../compatible-mode/v1``, ``.../api/v1``, ``.../apps/anthropic``).
    ``wire_tap`` receives every request, response head and raw body piece with its arrival
    time (:class:`WireTap`). ``telemetry`` reports every call to OpenTelemetry
    (:mod:`qwen_sse.telemetry`): a :class:`~qwen_sse.telemetry.Telemetry`, True for the
    global providers, False for none; None (the default) follows
    :func:`qwen_sse.telemetry.instrument`.

    ``proxy``: None (the default) takes the proxy from ``HTTPS_PROXY``, ``HTTP_PROXY``,
    ``ALL_PROXY`` and ``NO_PROXY`` (either letter case) as httpx and the openai SDK do
    (:mod:`qwen_sse.proxy`); a URL (``http://user:password@host:3128``, or ``https://`` for
    TLS to the proxy) sends every request through that proxy, ``NO_PROXY`` aside; ``""``
    means no proxy whatever the environment says. The choice is made here, once: ``proxy``
    is then the :class:`~qwen_sse.proxy.Proxy` (its repr hides the password) or None.
    An https target is reached through a ``CONNECT`` tunnel: the proxy sees its host and
    port, never the key. A plain-http target hands the proxy the whole request, key
    included, so a proxy not on loopback is refused unless ``allow_insecure_http=True``.
    A proxy that cannot be reached or refuses raises :class:`~qwen_sse.errors.ProxyError`.
    ``ssl_context`` verifies https servers (and an https proxy) in place of the system's
    trust store, e.g. with a private CA.

    ``retry`` is the :class:`~qwen_sse.retry.RetryPolicy` (``NO_RETRIES`` turns retries
    off; ``RetryPolicy(resume=True)`` resumes broken streams); ``limiter`` admits every
    request (:mod:`qwen_sse.limiter`). ``sleep`` and ``random_source`` are the clock and
    the jitter source of retries, replaceable in tests.

    Bounds on what a server can make the client hold or parse: ``max_event_bytes`` (one
    SSE event, and the lines between two events), ``max_stream_bytes`` (decoded bytes of
    one response), ``max_answer_chars`` and ``max_answer_chunks`` (the whole answer,
    resumes included); ``None`` turns off any of the last three. Defaults and reasons are
    in :mod:`qwen_sse.chat`. Past one the call raises
    :class:`~qwen_sse.errors.EventTooLargeError` or
    :class:`~qwen_sse.errors.StreamLimitError` with ``.partial``, never retried or resumed.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        region: str | None = None,
        *,
        model: str = "qwen-plus",
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        limiter: Limiter | None = None,
        max_connections: int = 4096,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_stream_bytes: int | None = DEFAULT_MAX_STREAM_BYTES,
        max_answer_chars: int | None = DEFAULT_MAX_ANSWER_CHARS,
        max_answer_chunks: int | None = DEFAULT_MAX_ANSWER_CHUNKS,
        include_usage: bool = True,
        allow_insecure_http: bool = False,
        default_headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random_source: random.Random | None = None,
        protocol: str | WireProtocol = "compatible",
        wire_tap: WireTap | None = None,
        proxy: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        telemetry: Telemetry | bool | None = None,
    ) -> None:
        wirelog.enable_from_env()
        self.wire = protocols.get(protocol)
        self.protocol = self.wire.name
        self.wire_tap = wire_tap
        self.telemetry = telemetry_setting(telemetry)
        self.base_url = resolve_base_url(base_url, region, root=self.wire.root)
        self._chat_url = self.base_url + self.wire.path
        check_transport_security(self.base_url, allow_insecure_http=allow_insecure_http)
        self.proxy: Proxy | None = resolve_proxy(self.base_url, proxy)
        check_proxy_security(self.base_url, self.proxy, allow_insecure_http=allow_insecure_http)
        self._proxy_url = self.proxy.url if self.proxy is not None else None
        self._proxy_headers = (self.proxy.headers or None) if self.proxy is not None else None
        self.ssl_context = ssl_context
        self.model = model
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.limiter = limiter
        self._sleep = sleep
        self._random = random_source or random.Random()
        self.max_connections = max_connections
        self.max_event_bytes = max_event_bytes
        for name, bound in (
            ("max_stream_bytes", max_stream_bytes),
            ("max_answer_chars", max_answer_chars),
            ("max_answer_chunks", max_answer_chunks),
        ):
            if bound is not None and bound <= 0:
                raise ConfigurationError(f"{name} must be positive or None, got {bound}")
        self.max_stream_bytes = max_stream_bytes
        self.max_answer_chars = max_answer_chars
        self.max_answer_chunks = max_answer_chunks
        self.include_usage = include_usage
        key = resolve_api_key(api_key)
        self._redacted_key = redact_key(key)
        self._scrubber = _KeyScrubber(key)
        self._headers = {
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            **(default_headers or {}),
            **self.wire.headers(key),
        }
        if self._proxy_headers and self.base_url.startswith("http:"):
            # aiohttp sends proxy_headers only with CONNECT; a plain-http request goes to
            # the proxy itself, so it carries them (never an https request: its headers
            # travel through the tunnel to the server).
            self._headers.update(self._proxy_headers)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        via = f", proxy={self.proxy.redacted!r}" if self.proxy is not None else ""
        return f"QwenClient(base_url={self.base_url!r}, api_key={self._redacted_key!r}{via})"

    async def __aenter__(self) -> Self:
        self._open_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=0,
                ttl_dns_cache=300,
                ssl=self.ssl_context if self.ssl_context is not None else True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=True,
            )
        return self._session

    @staticmethod
    @functools.cache
    def _request_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s, connect=None)

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise ConfigurationError(
                "QwenClient is not open: use `async with QwenClient() as client:`"
            )
        return self._session

    async def close(self) -> None:
        """Close the session and every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def stream_chat(
        self,
        messages: Iterable[Message],
        model: str | None = None,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **params: Any,
    ) -> ChatStream:
        """A :class:`ChatStream` for one streamed completion; nothing is sent until it is
        entered or iterated. ``params`` go into the JSON body at top level (DashScope wants
        ``enable_thinking``, ``enable_search``, ``top_k`` ... there)."""
        body = self.wire.request_body(
            model or self.model, list(messages), params, include_usage=self.include_usage
        )
        try:
            payload = msgspec.json.encode(body)
        except (TypeError, msgspec.EncodeError) as error:
            raise ConfigurationError(f"request body is not JSON-serialisable: {error}") from None
        headers = self._headers if not extra_headers else {**self._headers, **extra_headers}
        return ChatStream(
            self,
            url=self._chat_url,
            body=body,
            payload=payload,
            headers=headers,
            timeouts=timeouts or self.timeouts,
            retry=retry or self.retry,
        )

    async def chat(
        self,
        messages: Iterable[Message],
        model: str | None = None,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **params: Any,
    ) -> ChatResult:
        """Stream a completion to its end and return the :class:`ChatResult`."""
        stream = self.stream_chat(
            messages, model, timeouts=timeouts, retry=retry, extra_headers=extra_headers, **params
        )
        async with stream:
            async for _ in stream:
                pass
        return stream.result


# The shortest run of a key's first characters that error text may not show (redact_key
# shows three).
_MIN_KEY_PREFIX_CHARS = 8


class _KeyScrubber:
    """Replaces the API key with its redacted form in text a server sent: a gateway may echo
    the ``Authorization`` header (or the bare key) in an error body, a header or a frame.
    Its repr never shows the key."""

    __slots__ = ("_key", "_key_bytes", "_key_prefix", "_redacted", "_redacted_bytes")

    def __init__(self, key: str) -> None:
        self._key = key
        self._key_bytes = key.encode()
        self._redacted = redact_key(key)
        self._redacted_bytes = self._redacted.encode()
        # A message that previews a frame may cut an echoed key: in error text, any run of
        # the key's first characters (at least _MIN_KEY_PREFIX_CHARS) goes too.
        self._key_prefix: re.Pattern[str] | None = None
        if len(key) > _MIN_KEY_PREFIX_CHARS:
            rest = key[_MIN_KEY_PREFIX_CHARS:]
            pattern = "".join(f"(?:{re.escape(char)}" for char in rest) + ")?" * len(rest)
            self._key_prefix = re.compile(re.escape(key[:_MIN_KEY_PREFIX_CHARS]) + pattern)

    def __repr__(self) -> str:
        return f"<key scrubber for {self._redacted}>"

    def data(self, data: bytes) -> bytes:
        """``data`` without the key (cheap when it is absent: one search)."""
        if self._key_bytes in data:
            return data.replace(self._key_bytes, self._redacted_bytes)
        return data

    def sent_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Request headers safe to show: the key becomes ``***`` wherever it appears
        (``Authorization: Bearer ***``, ``x-api-key: ***``), and so do a proxy's
        credentials (``Proxy-Authorization: ***``)."""
        key = self._key
        return {
            name: "***" if name.lower() == "proxy-authorization" else value.replace(key, "***")
            for name, value in headers.items()
        }

    def headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """``headers`` itself when no value holds the key, else a scrubbed copy."""
        key = self._key
        if not any(key in value for value in headers.values()):
            return headers
        return CIMultiDictProxy(
            CIMultiDict(
                (name, value.replace(key, self._redacted)) for name, value in headers.items()
            )
        )

    def value(self, value: Any) -> Any:
        """A string, bytes or a container of them without the key; other values as they are."""
        if isinstance(value, str):
            if self._key in value:
                value = value.replace(self._key, self._redacted)
            prefix = self._key_prefix
            if prefix is not None and self._key[:_MIN_KEY_PREFIX_CHARS] in value:
                value = prefix.sub(self._redacted, value)
            return value
        if isinstance(value, bytes):
            return self.data(value)
        if isinstance(value, dict):
            return {name: self.value(item) for name, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(item) for item in value)
        return value

    def error(self, error: QwenSSEError) -> QwenSSEError:
        """``error`` with the key scrubbed from its message, notes and attributes (in place);
        the partial result is the answer as received and stays as it is."""
        error.args = self.value(error.args)
        for name, item in vars(error).items():
            if name not in ("partial", "__notes__"):
                setattr(error, name, self.value(item))
        notes = getattr(error, "__notes__", None)
        if notes:
            notes[:] = [self.value(note) for note in notes]
        return error


def _unsupported_encoding(response: aiohttp.ClientResponse) -> str:
    """The response's ``Content-Encoding`` if aiohttp cannot decode it (it would pass the
    encoded bytes through as if they were the stream), else ""."""
    encoding = response.headers.get("content-encoding", "").strip()
    return "" if encoding.lower() in _DECODED_ENCODINGS else encoding


def _limit_request(wire: WireProtocol, body: Mapping[str, Any]) -> LimitRequest:
    """What a limiter needs to know of a request body."""
    facts = wire.facts(body)
    return LimitRequest(model=facts.model, messages=facts.messages, max_tokens=facts.max_tokens)


def _is_preamble(chunk: ChatCompletionChunk) -> bool:
    """A chunk that carries no output: no text, tool call, finish reason or usage."""
    if chunk.usage is not None:
        return False
    for choice in chunk.choices:
        delta = choice.delta
        if delta.content or delta.reasoning_content or delta.tool_calls or choice.finish_reason:
            return False
    return True


def _sum_usage(parts: Iterable[Usage | None]) -> Usage | None:
    """Usage summed over the attempts of a resumed stream (None when none reported any)."""
    present = [usage for usage in parts if usage is not None]
    if len(present) <= 1:
        return present[0] if present else None
    cached = [u.prompt_tokens_details.cached_tokens for u in present if u.prompt_tokens_details]
    reasoning = [
        u.completion_tokens_details.reasoning_tokens for u in present if u.completion_tokens_details
    ]
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in present),
        completion_tokens=sum(u.completion_tokens for u in present),
        total_tokens=sum(u.total_tokens for u in present),
        prompt_tokens_details=PromptTokensDetails(sum(c or 0 for c in cached)) if cached else None,
        completion_tokens_details=(
            CompletionTokensDetails(sum(r or 0 for r in reasoning)) if reasoning else None
        ),
    )


def _is_throttling(error: QwenSSEError) -> bool:
    return isinstance(error, RateLimitError) and error.kind != "billing"


def _has_output(decoder: ChatStreamDecoder, chunks: list[ChatCompletionChunk]) -> bool:
    """True once text or a tool call has arrived: the first-token deadline is met."""
    if decoder.accumulator.has_text:
        return True
    return any(choice.delta.tool_calls for chunk in chunks for choice in chunk.choices)


def _map_client_error(
    error: aiohttp.ClientError,
    timeouts: Timeouts,
    *,
    started: bool,
    encoding: str = "",
    proxy: Proxy | None = None,
) -> QwenSSEError:
    """The one mapping of aiohttp's exceptions to the package's.

    The result is raised ``from None``, never chained to ``error``: aiohttp's exceptions and
    their tracebacks' frames hold the request headers, API key included. Its message keeps
    what a human needs: aiohttp's class name and description. ``encoding`` is the
    response's ``Content-Encoding``, to name it when its decoding fails.
    ``proxy`` is the request's proxy: an error of its own names it without credentials.
    """
    name = type(error).__name__
    reason = " ".join((str(error) or name).split())
    if isinstance(error, aiohttp.ServerTimeoutError) and not started:
        return ConnectTimeoutError(timeout_s=timeouts.connect_s or 0.0)
    if proxy is not None and isinstance(error, aiohttp.ClientProxyConnectionError):
        return proxy.unreachable(str(error.os_error))
    if proxy is not None and isinstance(error, aiohttp.ClientHttpProxyError):
        return proxy.refused(error.status, error.message)
    if isinstance(error, aiohttp.ClientSSLError):
        return TransportError(f"TLS with {error.host}:{error.port} failed: {error.os_error}")
    if isinstance(error, aiohttp.ClientConnectorError):
        return TransportError(f"cannot connect to {error.host}:{error.port}: {error.os_error}")
    if isinstance(error, aiohttp.ClientResponseError):
        return TransportError(f"HTTP exchange failed: {error.status} {error.message}")
    if isinstance(error, aiohttp.ClientPayloadError) and _is_decoding_failure(error):
        return ProtocolError(
            f"the response body cannot be decoded as Content-Encoding {encoding or '?'}: "
            "corrupt or truncated compressed data"
        )
    if started:
        return StreamInterruptedError(f"connection lost mid-stream: {reason} ({name})")
    return TransportError(f"request failed: {reason} ({name})")


def _is_decoding_failure(error: BaseException) -> bool:
    """True when aiohttp could not decompress the body (not when the connection broke)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ContentEncodingError | zlib.error):
            return True
        seen = seen.__cause__ or seen.__context__
    return False

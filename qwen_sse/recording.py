"""Recordings of the wire: the file format, a wire tap that writes it, and a server that
plays one back with its original timing and read boundaries.

Edge layer. A recording is JSON Lines, one record a line, so that two recordings diff
well. The first line is ``{"format": "qwen-sse-recording", "version": 1}``; then, for
every attempt of a call (retries and resumes included):

* ``{"type": "request", "attempt": n, "method", "url", "headers", "body", "protocol"}``:
  headers with the key redacted (``Authorization: Bearer ***``); ``body`` the JSON body as
  sent; ``protocol`` the wire protocol's name (absent in older recordings: replay then
  goes by the URL's path);
* ``{"type": "response", "attempt": n, "at_ms", "status", "headers"}``;
* ``{"type": "data", "attempt": n, "at_ms", "text"}`` for each read of the body, exactly as
  received: ``text`` when the read is valid UTF-8, else ``"base64"`` holding the bytes;
* ``{"type": "end", "attempt": n, "at_ms", "outcome", "error", "error_type"}``:
  ``outcome`` is ``ok``, ``cancelled``, ``throttled`` or ``error``; ``error`` the error's
  message and ``error_type`` its class name, or null.

``at_ms`` counts milliseconds since that attempt's request was sent. The key never
reaches a recording: the tap only ever sees redacted headers, and bodies hold no key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import msgspec
from aiohttp import web

from qwen_sse.errors import ConfigurationError, QwenSSEError
from qwen_sse.limiter import Outcome

__all__ = ["FORMAT", "RecordedAttempt", "Recorder", "ReplayServer", "load_recording"]

FORMAT = {"format": "qwen-sse-recording", "version": 1}
_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


class RecordedAttempt(msgspec.Struct, kw_only=True):
    """One attempt read back from a recording."""

    attempt: int
    method: str = "POST"
    url: str = ""
    protocol: str = ""
    request_headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: Any = None
    status: int | None = None
    response_headers: dict[str, str] = msgspec.field(default_factory=dict)
    response_at_s: float = 0.0
    pieces: list[tuple[float, bytes]] = msgspec.field(default_factory=list)
    outcome: str = ""
    error: str | None = None
    error_type: str | None = None
    end_at_s: float = 0.0

    @property
    def data(self) -> bytes:
        """The whole response body, as received."""
        return b"".join(piece for _, piece in self.pieces)


class Recorder:
    """A :class:`~qwen_sse.client.WireTap` that writes a recording to ``file`` as it goes
    (flushed at the end of every attempt, so a crash keeps what came before); ``protocol``
    names the wire protocol in every request record."""

    def __init__(self, file: IO[str], *, protocol: str = "") -> None:
        self._file = file
        self._protocol = protocol
        self._attempt = 0
        self._write(FORMAT)

    def _write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")

    def request(self, *, method: str, url: str, headers: Mapping[str, str], body: bytes) -> None:
        self._attempt += 1
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        record = {
            "type": "request",
            "attempt": self._attempt,
            "method": method,
            "url": url,
            "headers": dict(headers),
            "body": parsed,
        }
        if self._protocol:
            record["protocol"] = self._protocol
        self._write(record)

    def response(self, *, status: int, headers: Mapping[str, str], at_s: float) -> None:
        self._write(
            {
                "type": "response",
                "attempt": self._attempt,
                "at_ms": round(at_s * 1000, 3),
                "status": status,
                "headers": dict(headers),
            }
        )

    def data(self, chunk: bytes, at_s: float) -> None:
        record: dict[str, Any] = {
            "type": "data",
            "attempt": self._attempt,
            "at_ms": round(at_s * 1000, 3),
        }
        try:
            record["text"] = chunk.decode("utf-8")
        except UnicodeDecodeError:
            record["base64"] = base64.b64encode(chunk).decode("ascii")
        self._write(record)

    def end(self, *, at_s: float, outcome: Outcome, error: QwenSSEError | None) -> None:
        self._write(
            {
                "type": "end",
                "attempt": self._attempt,
                "at_ms": round(at_s * 1000, 3),
                "outcome": outcome,
                "error": None if error is None else str(error),
                "error_type": None if error is None else type(error).__name__,
            }
        )
        self._file.flush()


def _records(lines: list[str], source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each record with its line number."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ConfigurationError(f"{source}:{number}: not a JSON line: {error}") from None
        if not isinstance(record, dict):
            raise ConfigurationError(f"{source}:{number}: a record must be a JSON object")
        yield number, record


# How the lines of a saved event stream begin (a field name and a colon, or a comment).
_SSE_LINE = re.compile(r"(?:data|event|id|retry)?:")


def _text(path: str | Path, source: str) -> str:
    """The recording's text; a file that cannot be one raises ``ConfigurationError``."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read recording {source}: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigurationError(
            f"{source} is not a qwen-sse recording: it is not UTF-8 text ({error.reason} at "
            f"byte {error.start}); recordings are JSON lines written by qwen-sse trace --record"
        ) from None
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise ConfigurationError(f"{source} is empty: not a qwen-sse recording")
    if _SSE_LINE.match(first):
        raise ConfigurationError(
            f"{source} looks like a saved SSE stream, not a qwen-sse recording (JSON lines "
            f"written by qwen-sse trace --record): decode it with qwen-sse decode {source}"
        )
    return text


def load_recording(path: str | Path) -> list[RecordedAttempt]:
    """Read a recording; a file that is not one raises ``ConfigurationError`` naming the
    line that is wrong (or saying what the file looks like instead: empty, not text, a
    saved SSE stream). A recording of no attempt is an empty list."""
    source = str(path)
    records = _records(_text(path, source).splitlines(), source)
    _, header = next(records)
    if header != FORMAT:
        raise ConfigurationError(f"{source}: not a qwen-sse recording (first line {header!r})")
    attempts: dict[int, RecordedAttempt] = {}
    for number, record in records:
        try:
            _add_record(attempts, record)
        except ConfigurationError as error:
            raise ConfigurationError(f"{source}:{number}: {error}") from None
        except (KeyError, TypeError, ValueError) as error:
            # ValueError: a number that is not one, base64 that is not (binascii.Error).
            kind = record.get("type")
            raise ConfigurationError(
                f"{source}:{number}: a malformed {kind} record ({type(error).__name__}: {error})"
            ) from None
    return [attempts[number] for number in sorted(attempts)]


def _add_record(attempts: dict[int, RecordedAttempt], record: dict[str, Any]) -> None:
    """Add one record to the attempt it belongs to."""
    number = int(record.get("attempt", 1))
    attempt = attempts.setdefault(number, RecordedAttempt(attempt=number))
    kind = record.get("type")
    at_s = float(record.get("at_ms", 0.0)) / 1000
    if kind == "request":
        attempt.method = str(record.get("method", "POST"))
        attempt.url = str(record.get("url", ""))
        attempt.protocol = str(record.get("protocol") or "")
        attempt.request_headers = _strings(record.get("headers") or {})
        attempt.body = record.get("body")
    elif kind == "response":
        attempt.status = int(record["status"])
        attempt.response_headers = _strings(record.get("headers") or {})
        attempt.response_at_s = at_s
    elif kind == "data":
        if "base64" in record:
            piece = base64.b64decode(record["base64"], validate=True)
        else:
            piece = str(record.get("text", "")).encode("utf-8")
        attempt.pieces.append((at_s, piece))
    elif kind == "end":
        attempt.outcome = str(record.get("outcome", ""))
        attempt.error = record.get("error")
        attempt.error_type = record.get("error_type")
        attempt.end_at_s = at_s
    else:
        raise ConfigurationError(f"unknown record type {kind!r}")


def _strings(headers: object) -> dict[str, str]:
    """Recorded headers: a JSON object of strings (anything else is a TypeError)."""
    if not isinstance(headers, dict):
        raise TypeError(f"headers must be a JSON object, got {type(headers).__name__}")
    return {str(name): str(value) for name, value in headers.items()}


class ReplayServer:
    """Serves a recorded response again, byte for byte, with its original status, headers,
    read boundaries and timing, to any POST; each request takes the next recorded attempt
    that got a response (cycling), so a client bug can be reproduced against exact bytes.
    Listens on 127.0.0.1 unless told otherwise; stops with :meth:`close`."""

    def __init__(
        self, attempts: list[RecordedAttempt], *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._attempts = [a for a in attempts if a.status is not None]
        if not self._attempts:
            raise ConfigurationError("the recording has no response to replay")
        self._host = host
        self._port = port
        self._served = 0
        self._runner: web.AppRunner | None = None

    @property
    def attempts(self) -> int:
        """How many recorded responses it cycles through."""
        return len(self._attempts)

    @property
    def base_url(self) -> str:
        """The URL prefix that clients use; any path below it is answered."""
        return f"http://{self._host}:{self._port}/compatible-mode/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        attempt = self._attempts[self._served % len(self._attempts)]
        self._served += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(attempt.response_at_s)
        headers = {
            name: value
            for name, value in attempt.response_headers.items()
            if name.lower() not in _HOP_BY_HOP
        }
        response = web.StreamResponse(status=attempt.status or 200, headers=headers)
        await response.prepare(request)
        for at_s, piece in attempt.pieces:
            delay = started + at_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await response.write(piece)
        if attempt.error_type == "StreamInterruptedError" and request.transport is not None:
            # The recorded connection broke: break this one too, rather than end it cleanly.
            request.transport.abort()
            return response
        await response.write_eof()
        return response

"""A scripted raw HTTP/1.1 server on loopback, for misbehaviour the emulator cannot produce.

Each connection's request is read whole (head and ``content-length`` body) and recorded in
``RawServer.requests``; then ``handler(writer, n)`` writes the n-th answer byte for byte.
With ``read_request=False`` the handler answers as soon as a connection opens (to play a
server that does not speak what the client sends, e.g. plain bytes to a TLS client).
The server listens on 127.0.0.1 with an OS-chosen port and stops when the block exits.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

RawHandler = Callable[[asyncio.StreamWriter, int], Awaitable[None]]


@dataclass
class RawRequest:
    """One request as the server read it."""

    head: bytes
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RawServer:
    """Where the server listens (``url`` ends in ``/v1``) and what it received."""

    url: str
    requests: list[RawRequest] = field(default_factory=list)


@asynccontextmanager
async def raw_server(handler: RawHandler, *, read_request: bool = True) -> AsyncIterator[RawServer]:
    """A bare HTTP/1.1 server on loopback: ``handler(writer, n)`` writes the n-th answer."""
    server_state = RawServer(url="")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not read_request:
                server_state.requests.append(RawRequest(b"", b""))
                await handler(writer, len(server_state.requests))
                return
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?i)content-length: *(\d+)", head)
            body = await reader.readexactly(int(match.group(1))) if match else b""
            server_state.requests.append(RawRequest(head, body))
            await handler(writer, len(server_state.requests))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server_state.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield server_state
    finally:
        server.close()
        await server.wait_closed()


def frame(choices: list[dict[str, Any]], **fields: Any) -> str:
    """A compatible-mode chunk's JSON with ``choices`` (and any other top-level fields)."""
    return json.dumps({"id": "chatcmpl-x", "choices": choices, **fields}, ensure_ascii=False)


def sse_body(frames: Iterable[str], *, done: bool = True) -> bytes:
    """``data:`` events for ``frames``, then ``data: [DONE]`` unless ``done`` is False."""
    body = "".join(f"data: {f}\n\n" for f in frames).encode()
    return body + (b"data: [DONE]\n\n" if done else b"")


def http_response(
    body: bytes,
    *,
    status: str = "200 OK",
    content_type: str = "text/event-stream",
    headers: Iterable[str] = ("x-request-id: r-ok",),
) -> bytes:
    """A whole HTTP/1.1 response with a ``content-length`` (and ``connection: close``: the
    server closes every connection after its answer, so none may be pooled)."""
    lines = [f"HTTP/1.1 {status}", f"content-type: {content_type}", "connection: close", *headers]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def sse_answer(text: str) -> bytes:
    """A whole, well-formed answer: role chunk, text with ``finish_reason: stop``, [DONE]."""
    events = (
        frame([{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
        frame([{"index": 0, "delta": {"content": text}, "finish_reason": "stop"}]),
    )
    return http_response(sse_body(events))


def held_answer(first: str, rest: str, release: asyncio.Event) -> RawHandler:
    """A handler that streams the ``first`` frame, holds the rest until ``release`` is set,
    then sends the ``rest`` frame and ``[DONE]``: no read timing can deliver both at once."""

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        )
        writer.write(f"data: {first}\n\n".encode())
        await writer.drain()
        await release.wait()
        writer.write(f"data: {rest}\n\ndata: [DONE]\n\n".encode())
        await writer.drain()

    return handler

"""Loopback relays for the proxy tests: a forward HTTP proxy that records what it sees, and
a TLS front that gives the plain-http emulator an https address.

The proxy answers ``CONNECT host:port`` with 200 and then relays bytes both ways untouched
(for an https target they are TLS records). A request in absolute form (``POST
http://host:port/path HTTP/1.1``) goes on to its host with the request line in origin form
and the ``Proxy-*`` headers dropped; the rest of that connection is relayed as it comes.
With ``credentials`` it answers 407 to a request without the matching ``Proxy-Authorization:
Basic``; with ``deny_connect`` it answers 403 to every ``CONNECT``. Both listen on
127.0.0.1 with an OS-chosen port and stop, cutting every relay, when their block exits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_REFUSALS = {
    407: b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="t"\r\n',
    403: b"HTTP/1.1 403 Forbidden\r\n",
}


@dataclass
class ProxySeen:
    """Where the proxy listens (``url``) and every byte a client sent it: the request heads
    (``heads``, each ``CONNECT`` or absolute-form request) and what followed (``relayed``)."""

    url: str = ""
    heads: list[bytes] = field(default_factory=list)
    relayed: bytearray = field(default_factory=bytearray)

    @property
    def everything(self) -> bytes:
        return b"".join(self.heads) + bytes(self.relayed)

    @property
    def connects(self) -> list[str]:
        """The ``host:port`` of each ``CONNECT``."""
        return [h.split(b" ")[1].decode() for h in self.heads if h.startswith(b"CONNECT ")]


async def _relay(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None
) -> None:
    try:
        while data := await reader.read(65536):
            if record is not None:
                record += data
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _join(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    record: bytearray | None,
) -> None:
    """Relay both ways until either side closes."""
    await asyncio.gather(
        _relay(client[0], upstream[1], record),
        _relay(upstream[0], client[1], None),
    )


@asynccontextmanager
async def _serving(
    handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """Serve ``handler`` on 127.0.0.1; yield the port; cancel every connection at exit."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@asynccontextmanager
async def forward_proxy(
    *,
    credentials: tuple[str, str] | None = None,
    deny_connect: bool = False,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[ProxySeen]:
    """A forward proxy on loopback; ``ProxySeen.url`` is ``http://127.0.0.1:PORT``, or
    ``https://`` with ``tls`` (its server context: clients speak TLS to the proxy)."""
    seen = ProxySeen()
    expected = b""
    if credentials is not None:
        expected = base64.b64encode(":".join(credentials).encode())

    async def refuse(writer: asyncio.StreamWriter, status: int) -> None:
        writer.write(_REFUSALS[status] + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.heads.append(head)
        request_line, *lines = head[:-4].split(b"\r\n")
        method, target, version = request_line.split(b" ", 2)
        tokens = [
            token
            for line in lines
            if line.lower().startswith(b"proxy-authorization:")
            for scheme, _, token in [line.partition(b":")[2].strip().partition(b" ")]
            if scheme.lower() == b"basic"
        ]
        if credentials is not None and expected not in tokens:
            await refuse(writer, 407)
            return
        if method == b"CONNECT":
            if deny_connect:
                await refuse(writer, 403)
                return
            host, _, port = target.decode().rpartition(":")
            upstream = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = urlsplit(target.decode())
            upstream = await asyncio.open_connection(url.hostname, url.port or 80)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            kept = [line for line in lines if not line.lower().startswith(b"proxy-")]
            first = b" ".join([method, path.encode(), version])
            upstream[1].write(b"\r\n".join([first, *kept]) + b"\r\n\r\n")
        await _join((reader, writer), upstream, seen.relayed)

    async with _serving(handle, tls) as port:
        seen.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        yield seen


@asynccontextmanager
async def tls_front(target_port: int, context: ssl.SSLContext) -> AsyncIterator[int]:
    """A TLS server on loopback (``context`` holds its certificate) relaying the decrypted
    bytes to 127.0.0.1:``target_port``; yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await asyncio.open_connection("127.0.0.1", target_port)
        await _join((reader, writer), upstream, None)

    async with _serving(handle, context) as port:
        yield port


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port

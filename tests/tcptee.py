"""A TCP relay on loopback that keeps every byte it relays, and a reader of the HTTP/1.1
messages in them: the independent witness of what went over a connection (what the
emulator sent, what an SDK received), for tests of the debugging proxy.

The relay listens on 127.0.0.1 with an OS-chosen port and stops when its block exits. A
side that breaks its connection (a reset) breaks the other side's too, so a cut reaches the
client as it would without the relay.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field


@dataclass
class Relayed:
    """One connection: the bytes the client sent, and those it received."""

    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)


@dataclass
class Tee:
    """Where the relay listens (``origin``: ``http://127.0.0.1:PORT``) and its connections,
    in the order they were accepted."""

    origin: str = ""
    connections: list[Relayed] = field(default_factory=list)

    def responses(self) -> list[HTTPMessage]:
        """Every response relayed, connection by connection."""
        return [m for c in self.connections for m in http_messages(bytes(c.received))]

    def requests(self) -> list[HTTPMessage]:
        """Every request relayed, connection by connection."""
        return [m for c in self.connections for m in http_messages(bytes(c.sent))]


async def _pipe(
    source: asyncio.StreamReader, target: asyncio.StreamWriter, kept: bytearray
) -> None:
    try:
        while data := await source.read(65536):
            kept += data
            target.write(data)
            await target.drain()
    except ConnectionError:
        target.transport.abort()  # a reset on one side is a reset on the other
        return
    with suppress(ConnectionError, OSError):
        target.write_eof()


@asynccontextmanager
async def tcp_tee(host: str, port: int) -> AsyncIterator[Tee]:
    """Relay every connection made to the tee to ``host``:``port``, keeping the bytes."""
    tee = Tee()
    tasks: set[asyncio.Task[None]] = set()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Relayed()
        tee.connections.append(connection)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.transport.abort()
            return
        try:
            await asyncio.gather(
                _pipe(reader, up_writer, connection.sent),
                _pipe(up_reader, writer, connection.received),
            )
        finally:
            writer.close()
            up_writer.close()

    def start(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(relay(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(start, "127.0.0.1", 0)
    tee.origin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield tee
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await server.wait_closed()


@dataclass
class HTTPMessage:
    """One HTTP/1.1 message: its start line, headers (lower-case names, in order), and its
    body as sent (chunked transfer coding undone); ``whole`` is False when the connection
    ended before the body did."""

    start: str
    headers: list[tuple[str, str]]
    body: bytes
    whole: bool

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def status(self) -> int:
        return int(self.start.split(" ", 2)[1])


def http_messages(stream: bytes) -> list[HTTPMessage]:
    """The HTTP/1.1 messages one side of a connection carried, in order (a body without a
    length and not chunked runs to the end of the stream)."""
    messages = []
    rest = stream
    while rest:
        head, separator, rest = rest.partition(b"\r\n\r\n")
        if not separator:
            break
        start, *lines = head.decode("latin-1").split("\r\n")
        headers = [
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in lines)
        ]
        message = HTTPMessage(start, headers, b"", True)
        transfer = (message.header("transfer-encoding") or "").lower()
        length = message.header("content-length")
        if "chunked" in transfer:
            body = bytearray()
            while True:
                size_line, found, after = rest.partition(b"\r\n")
                if not found:
                    message.whole = False
                    break
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    rest = after.partition(b"\r\n")[2]  # no trailers here
                    break
                if len(after) < size + 2:
                    body += after[:size]
                    message.whole = False
                    rest = b""
                    break
                body += after[:size]
                rest = after[size + 2 :]
            message.body = bytes(body)
        elif length is not None:
            message.body = rest[: int(length)]
            message.whole = len(message.body) == int(length)
            rest = rest[int(length) :]
        elif start.startswith("HTTP/"):
            message.body, rest = rest, b""
        messages.append(message)
        if not message.whole:
            break
    return messages

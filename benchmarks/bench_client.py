"""CPU per event, event rate and memory per open stream of whole streaming clients.

What it measures
----------------
Five HTTP streaming clients (and qwen-sse once more with telemetry on) read the same
DashScope-like chat stream from the same local server, each in a fresh process of its own,
one process per client and workload:

=================  ==========================================================================
client             what it does with every stream
=================  ==========================================================================
``raw aiohttp``    ``aiohttp`` POST, then ``resp.content.iter_any()`` counting bytes: no SSE,
                   no JSON. The floor: what HTTP and the event loop cost on their own.
``qwen-sse``       ``QwenClient.stream_chat``: every typed chunk (SSE framing, msgspec
                   decoding, accumulation into ``ChatResult``), then ``stream.result``.
``qwen-sse otel``  the same with ``QwenClient(telemetry=...)``: the OpenTelemetry SDK
                   records every call's span (batched to an exporter that drops them)
                   and metrics (kept in an in-memory reader): what telemetry costs.
``openai``         ``AsyncOpenAI(max_retries=0)`` over its own httpx client sized for the
                   concurrency, ``chat.completions.create(stream=True)``: pydantic chunks.
``httpx-sse``      ``httpx.AsyncClient`` + ``httpx_sse.aconnect_sse`` + ``json.loads`` of
                   each ``data:`` payload.
``aiohttp lines``  ``aiohttp`` POST, ``async for line in resp.content`` + ``json.loads`` of
                   each ``data:`` line.
=================  ==========================================================================

Every client but the floor reads each chunk's ``choices[0].delta.content``; each stream is
checked when it ends: the exact chunk count, ``data: [DONE]`` seen, the text length (and for
qwen-sse ``result.complete`` and ``result.content`` equal to the text sent; for the floor,
the exact byte count). A client that loses or mangles anything is reported as an error,
never as a fast client. The peers (``openai``, ``httpx``/``httpx-sse``) and the
OpenTelemetry SDK are optional: if one cannot be imported its rows say "not installed" and
the rest runs.

Workloads (sizes with ``--quick`` in brackets):

``bulk``
    400 streams of 500 chunks, 50 at a time [20 x 50, 10 at a time]. The server writes a
    whole stream in one ``write``; the client gets big reads (often a whole stream of
    about 130 KB), so this is the cost of decoding.
``paced``
    1,000 concurrent streams of 100 chunks [50 x 20]; every 10 ms one server timer writes
    the next chunk of every open stream, one ``write`` per chunk (at most 100,000 events/s
    in all; wall time includes the pacing). A client that keeps up reads one chunk per
    read, so the figure is dominated by per-read overhead (event loop wake-up, HTTP
    parser, buffers, iterator layers) - that is the point. A client that cannot keep up
    (``CPU%`` near 100) finds several chunks per read.
``memory``
    4,000 concurrent streams [200], each sent one chunk per second so that all stay open.
    RSS (``VmRSS``) is read after a warm-up, then again the moment all streams are open
    and have received their first chunk; the difference over the stream count is the
    memory per concurrent open stream (connection, buffers, parser, decoder, and the
    benchmark's own task per stream, the same for every client).

A stream has ``chunks`` JSON chunks (the role-only chunk, text chunks of Chinese and
English, the ``finish_reason: stop`` chunk, the ``choices: []`` usage chunk; about 260
bytes each, shaped and ordered like the real streams in ``shared/fixtures``), then
``data: [DONE]``. An *event* below is one of those JSON chunks (``[DONE]`` is not counted).

The server is a raw ``asyncio.Protocol`` HTTP/1.1 server (keep-alive, chunked transfer
encoding, one HTTP chunk per SSE event, ``text/event-stream``) in a process of its own on
127.0.0.1, port chosen by the OS. It answers each POST to ``/v1/chat/completions`` with
pre-encoded bytes, reads the request body only to find its end (``Content-Length``), and
reports its own CPU time, connections and timer lag, so that the JSON shows it was not the
bottleneck. It stops by itself (hard lifetime, ``--server-lifetime``) and is terminated in
a ``finally`` block; each client process has an alarm at ``--timeout`` seconds.

Method: in each client process one untimed warm-up pass of the whole workload (so imports,
lazy set-up and the connection pool are in place), then ``--repeat`` timed passes, each
after ``gc.collect()`` (the collector stays on, as in a service). CPU time is the process's
user + system time (``resource.getrusage``, every thread), wall time ``perf_counter``, both
over the whole pass. ``CPU us/event`` = CPU time / events; ``events/s`` = events / wall
time. The median over the passes is reported (and the minimum in the JSON). Memory runs
once per fresh process, ``--repeat`` processes per client; the median is reported.
``RLIMIT_NOFILE`` is raised to its hard limit in every process; if that is still short of
the streams needed, the run says so instead of measuring.

How to run
----------
::

    pip install -e '.[bench]'
    python benchmarks/bench_client.py                      # full run, a few minutes
    python benchmarks/bench_client.py --quick              # smoke test, well under a minute
    python benchmarks/bench_client.py --json out.json      # JSON to a file, not stdout
    python benchmarks/bench_client.py --only raw,qwen --workloads bulk,paced --repeat 5
    python benchmarks/bench_client.py --only raw,qwen,qwen-otel --workloads paced  # telemetry
    python benchmarks/bench_client.py --only qwen --profile /tmp/bench_client_prof

``--profile DIR`` runs the timed passes under cProfile in each client process and writes
``DIR/<client>-<workload>.prof`` and a ``.txt`` summary (the figures of a profiled run are
inflated and marked so). ``--pin`` puts the server on one CPU and the clients on another.

How to read the output
----------------------
The table goes to **stderr**, the JSON document to **stdout** (or ``--json FILE``).
Per workload and client: ``CPU us/ev`` (median; lower is better), ``min``, ``events/s``
(median), ``x raw`` (the client's CPU per event over the raw floor's in the same workload),
``CPU%`` (client CPU time over wall time: near 100% means the client was saturated; in
``paced`` its reads then coalesce several chunks, which flatters its per-event figure;
well under 100% with a wall time longer than the floor's means the client was kept off
the CPU by something else, and the run should be repeated, with ``--pin`` on a machine
with few CPUs),
``wall s`` and ``conns`` (connections the server accepted for the whole process: warm-up
included; more than the concurrency means the client reconnected). Under each workload:
the server's CPU per event (small beside the clients': it was not the bottleneck), its
pacing timer's worst and 99th-percentile lag (well under 10 ms: the chunks left on time),
and the floor's events per read (about 1 is one chunk per read, the ``[DONE]`` write being
a read too; more means its reads coalesced because it could not keep up). For
``memory``: ``KB/stream`` (median), RSS before and at the peak, and how long opening all
streams took (qwen-sse holds the role-only chunk back until text arrives, so its first
chunk comes one server tick later). Last, the targets of issues 4 and 12 (telemetry: paced
CPU per event with telemetry on over off), as information: a miss never changes the exit
status, which is 0 unless the script itself is misused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import resource
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import benchenv

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnProcess

    import aiohttp

    from qwen_sse.client import QwenClient
    from qwen_sse.telemetry import Telemetry

MODEL = "qwen-plus"
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "你好，请介绍一下你自己。"}]
REQUEST: dict[str, Any] = {
    "model": MODEL,
    "messages": MESSAGES,
    "stream": True,
    "stream_options": {"include_usage": True},
}
API_KEY = "sk-test"
HEADERS = {
    "Authorization": f"Bearer {API_KEY}",
    "Content-Type": "application/json",
    "Accept": "text/event-stream",
}

CLIENTS = ("raw aiohttp", "qwen-sse", "qwen-sse otel", "openai", "httpx-sse", "aiohttp lines")
ALIASES = {
    "raw": "raw aiohttp",
    "raw-aiohttp": "raw aiohttp",
    "qwen": "qwen-sse",
    "qwen-otel": "qwen-sse otel",
    "otel": "qwen-sse otel",
    "openai": "openai",
    "httpx": "httpx-sse",
    "httpx-sse": "httpx-sse",
    "lines": "aiohttp lines",
    "aiohttp-lines": "aiohttp lines",
}
FLOOR = "raw aiohttp"
OURS = "qwen-sse"
OURS_WITH_TELEMETRY = "qwen-sse otel"
WORKLOADS = ("bulk", "paced", "memory")

TARGET_BULK_US = 2.5
TARGET_PACED_RATIO = 1.2
TARGET_MEMORY_KB = 30.0
TARGET_TELEMETRY_RATIO = 1.1

SERVER_LIFETIME_S = 3600.0
HOLD_CHUNKS = 3600  # memory streams: one chunk a second, far longer than a measurement


class BenchError(Exception):
    """A client did not receive exactly what the server sent."""


# ---------------------------------------------------------------------------------------
# Workloads and the stream they carry


@dataclass(frozen=True, slots=True)
class Workload:
    """One workload: ``interval_s`` 0 writes each stream at once, else one chunk a tick."""

    name: str
    streams: int
    concurrency: int
    chunks: int
    interval_s: float
    hold: bool = False  # memory: open them all, measure, then cancel

    @property
    def events(self) -> int:
        return self.streams * self.chunks


def workloads(args: argparse.Namespace) -> list[Workload]:
    quick = args.quick
    table = {
        "bulk": Workload("bulk", 20, 10, 50, 0.0) if quick else Workload("bulk", 400, 50, 500, 0.0),
        "paced": (
            Workload("paced", 50, 50, 20, 0.01)
            if quick
            else Workload("paced", 1000, 1000, 100, 0.01)
        ),
        "memory": Workload(
            "memory", args.memory_streams, args.memory_streams, HOLD_CHUNKS, 1.0, hold=True
        ),
    }
    return [table[name] for name in args.workloads]


_CHUNK_ID = "chatcmpl-6f1d2c9e-83b4-9a57-b0e2-4c71d5a3f8e6"
_CREATED = 1726132850
# Pieces of text in the sizes DashScope streams them: a few characters to a phrase.
_PIECES = (
    "您好",
    "！我是",
    "通义千问",
    "，由阿里云",
    "开发的大规模语言模型",
    "。我可以",
    "回答问题、创作文字",
    "，还能写代码",
    "。",
    "Sure",
    ", here",
    " is a short",
    " overview of",
    " streaming with",
    " server-sent events",
    ".",
    "\n\n",
    " 例如",
    "：`data:` 行",
)
# The key orders DashScope's compatible mode sends a choice in.
_CHOICE_ORDERS = (
    ("delta", "finish_reason", "index", "logprobs"),
    ("finish_reason", "delta", "index", "logprobs"),
    ("delta", "index", "logprobs", "finish_reason"),
)


def _event(choices: list[dict[str, Any]], usage: dict[str, int] | None) -> bytes:
    chunk = {
        "choices": choices,
        "object": "chat.completion.chunk",
        "usage": usage,
        "created": _CREATED,
        "system_fingerprint": None,
        "model": MODEL,
        "id": _CHUNK_ID,
    }
    return (
        b"data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    )


def _choice(delta: dict[str, str], finish_reason: str | None, order: int) -> dict[str, Any]:
    values: dict[str, Any] = {
        "delta": delta,
        "finish_reason": finish_reason,
        "index": 0,
        "logprobs": None,
    }
    return {key: values[key] for key in _CHOICE_ORDERS[order]}


def stream_events(chunks: int) -> tuple[list[bytes], str]:
    """``chunks`` SSE events (role, text..., stop, usage), then ``[DONE]``; and the text."""
    if chunks < 4:
        raise ValueError("a stream needs at least 4 chunks")
    events = [_event([_choice({"content": "", "role": "assistant"}, None, 2)], None)]
    texts: list[str] = []
    for i in range(chunks - 3):
        text = _PIECES[(i * 7 + i // len(_PIECES)) % len(_PIECES)]
        texts.append(text)
        events.append(_event([_choice({"content": text}, None, i % 2)], None))
    events.append(_event([_choice({"content": ""}, "stop", 1)], None))
    completion = len(texts)
    usage = {"prompt_tokens": 21, "completion_tokens": completion, "total_tokens": 21 + completion}
    events.append(_event([], usage))
    events.append(b"data: [DONE]\n\n")
    return events, "".join(texts)


@dataclass(frozen=True, slots=True)
class Expected:
    chunks: int
    content: str
    body_bytes: int


def expected(workload: Workload) -> Expected:
    events, content = stream_events(workload.chunks)
    return Expected(workload.chunks, content, sum(map(len, events)))


# ---------------------------------------------------------------------------------------
# Limits and process plumbing


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _nofile_short(needed: int, limits: tuple[int, int]) -> str | None:
    soft = limits[0]
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    return (
        f"RLIMIT_NOFILE is {limits[0]} (hard {limits[1]}); {needed} file descriptors are "
        "needed: raise the hard limit (ulimit -Hn) to measure this"
    )


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def _cpu_s() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_kb() -> int:
    """Current resident set size; ``ru_maxrss`` (the peak) where /proc is missing."""
    value = _status_kb("VmRSS")
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---------------------------------------------------------------------------------------
# The server


_RESPONSE_HEAD = (
    "HTTP/1.1 200 OK\r\n"
    "content-type: text/event-stream;charset=UTF-8\r\n"
    "cache-control: no-cache\r\n"
    "transfer-encoding: chunked\r\n"
    "x-request-id: {request_id}\r\n"
    "\r\n"
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_MAX_HEAD_BYTES = 64 * 1024


def _http_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: finds each request's end, answers it."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.request: tuple[bool, bool] | None = None  # (answerable, keep_alive)
        self.body_left = 0
        self.responding = False
        self.keep_alive = True
        self.position = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.opened()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.paced.pop(self, None)
        self.server.closed()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.responding:
            self.process()

    def process(self) -> None:
        transport = self.transport
        assert transport is not None
        while not self.responding and not transport.is_closing():
            if self.request is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > _MAX_HEAD_BYTES:
                        transport.write(_BAD_REQUEST)
                        transport.close()
                    return
                head = bytes(self.buffer[:end])
                del self.buffer[: end + 4]
                parsed = self.parse(head)
                if parsed is None:
                    transport.write(_BAD_REQUEST)
                    transport.close()
                    return
                self.request, self.body_left = parsed
            if self.body_left:
                taken = min(self.body_left, len(self.buffer))
                del self.buffer[:taken]
                self.body_left -= taken
                if self.body_left:
                    return
            (answerable, keep_alive), self.request = self.request, None
            self.respond(answerable, keep_alive)

    @staticmethod
    def parse(head: bytes) -> tuple[tuple[bool, bool], int] | None:
        lines = head.split(b"\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            return None
        method, target, version = parts
        length = 0
        keep_alive = version == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return None
            elif name == b"transfer-encoding" and value != b"identity":
                return None  # no client here sends a chunked request body
            elif name == b"connection":
                keep_alive = value != b"close" if version == b"HTTP/1.1" else value == b"keep-alive"
        answerable = method == b"POST" and target.split(b"?")[0] == b"/v1/chat/completions"
        return (answerable, keep_alive), length

    def respond(self, answerable: bool, keep_alive: bool) -> None:
        transport = self.transport
        assert transport is not None
        server = self.server
        self.keep_alive = keep_alive
        if not answerable:
            transport.write(_NOT_FOUND)
            if not keep_alive:
                transport.close()
            return
        server.requests += 1
        head = _RESPONSE_HEAD.format(request_id=f"bench-{os.getpid()}-{server.requests}").encode()
        if server.interval_s <= 0:
            transport.write(head + server.whole_body)
            server.completed += 1
            if not keep_alive:
                transport.close()
            return
        transport.write(head)
        self.responding = True
        self.position = 0
        server.paced[self] = None

    def finish(self) -> None:
        self.responding = False
        self.server.paced.pop(self, None)
        self.server.completed += 1
        transport = self.transport
        assert transport is not None
        if not self.keep_alive:
            transport.close()
        elif self.buffer:
            self.process()


class _Server:
    """Workload state, the one pacing timer, and the statistics the parent asks for."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.frames: list[bytes] = []
        self.whole_body = b""
        self.interval_s = 0.0
        self.paced: dict[_Connection, None] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.next_tick = 0.0
        self.requests = 0
        self.open_now = 0
        self.reset()

    def reset(self) -> None:
        self.cpu_at_reset = _cpu_s()
        self.accepted = 0
        self.peak_open = self.open_now
        self.completed = 0
        self.requests_at_reset = self.requests
        self.ticks = 0
        self.late_ticks = 0
        self.lags: list[float] = []
        self.tick_work_s = 0.0
        self.max_tick_work_s = 0.0

    def configure(self, workload: Workload) -> None:
        events, _ = stream_events(workload.chunks)
        frames = [_http_chunk(event) for event in events]
        frames[-1] += _LAST_CHUNK
        self.frames = frames
        self.whole_body = b"".join(frames)
        self.interval_s = workload.interval_s
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.interval_s > 0:
            self.next_tick = self.loop.time() + self.interval_s
            self.timer = self.loop.call_at(self.next_tick, self.tick)
        self.reset()

    def opened(self) -> None:
        self.accepted += 1
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)

    def closed(self) -> None:
        self.open_now -= 1

    def tick(self) -> None:
        started = self.loop.time()
        lag = started - self.next_tick
        self.ticks += 1
        self.lags.append(lag)
        if lag > self.interval_s / 2:
            self.late_ticks += 1
        frames = self.frames
        last = len(frames) - 1
        finished: list[_Connection] = []
        for connection in self.paced:
            transport = connection.transport
            if transport is None or transport.is_closing():
                continue
            position = connection.position
            transport.write(frames[position])
            if position == last:
                finished.append(connection)
            else:
                connection.position = position + 1
        for connection in finished:
            connection.finish()
        now = self.loop.time()
        work = now - started
        self.tick_work_s += work
        self.max_tick_work_s = max(self.max_tick_work_s, work)
        # Fixed schedule; when late, the next tick starts now rather than bursting.
        self.next_tick = max(self.next_tick + self.interval_s, now)
        self.timer = self.loop.call_at(self.next_tick, self.tick)

    def snapshot(self) -> dict[str, Any]:
        user, system = _cpu_s()
        lags = sorted(self.lags)
        return {
            "cpu_s": user + system - sum(self.cpu_at_reset),
            "connections_accepted": self.accepted,
            "peak_open_connections": self.peak_open,
            "requests": self.requests - self.requests_at_reset,
            "streams_completed": self.completed,
            "ticks": self.ticks,
            "late_ticks": self.late_ticks,
            "max_lag_ms": lags[-1] * 1e3 if lags else None,
            "p99_lag_ms": lags[int(len(lags) * 0.99)] * 1e3 if lags else None,
            "mean_tick_work_ms": self.tick_work_s / self.ticks * 1e3 if self.ticks else None,
            "max_tick_work_ms": self.max_tick_work_s * 1e3 if self.ticks else None,
        }


def server_main(control: Connection, lifetime_s: float, cpu: int | None) -> None:
    """Entry point of the server process: serve until told to stop or the lifetime ends."""
    signal.alarm(int(lifetime_s) + 30)  # backstop: the process ends even if the loop hangs
    _pin(cpu)
    limits = raise_nofile()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = _Server(loop)
    stopped = loop.create_future()

    def stop() -> None:
        if not stopped.done():
            stopped.set_result(None)

    def on_control() -> None:
        try:
            message = control.recv()
        except (EOFError, OSError):
            stop()  # the parent is gone
            return
        kind = message[0]
        if kind == "configure":
            server.configure(Workload(**message[1]))
            control.send(("ok",))
        elif kind == "stats":
            control.send(("stats", server.snapshot()))
            server.reset()
        else:
            stop()

    async def run() -> None:
        listener = await loop.create_server(
            lambda: _Connection(server), "127.0.0.1", 0, backlog=8192, reuse_address=True
        )
        port = listener.sockets[0].getsockname()[1]
        control.send(("ready", port, list(limits)))
        loop.add_reader(control.fileno(), on_control)
        loop.call_later(lifetime_s, stop)
        try:
            await stopped
        finally:
            loop.remove_reader(control.fileno())
            listener.close()
            for connection in list(server.paced):
                if connection.transport is not None:
                    connection.transport.abort()

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()


# ---------------------------------------------------------------------------------------
# The clients


OnFirst: TypeAlias = Callable[[], None] | None


class BenchClient:
    """One client library: open a pool for ``connections``, run one stream, close."""

    reads: int | None = None  # reads off the HTTP layer, where the client can count them

    async def open(self, base_url: str, connections: int) -> None:
        raise NotImplementedError

    async def stream(self, expect: Expected, on_first: OnFirst) -> int:
        """Read one whole stream; return its event count, raise BenchError if wrong."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


def _check(name: str, expect: Expected, events: int, done: bool, chars: int) -> int:
    if events != expect.chunks or not done or chars != len(expect.content):
        raise BenchError(
            f"{name}: incomplete stream: {events} of {expect.chunks} chunks, "
            f"[DONE] {'seen' if done else 'missing'}, {chars} of {len(expect.content)} characters"
        )
    return events


class _AiohttpBase(BenchClient):
    session: aiohttp.ClientSession
    url: str

    async def open(self, base_url: str, connections: int) -> None:
        import aiohttp  # noqa: PLC0415  (each client process imports only its own library)

        connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_read=120)
        )
        self.url = f"{base_url}/chat/completions"

    async def close(self) -> None:
        await self.session.close()


class RawAiohttp(_AiohttpBase):
    """The floor: bytes off the socket through aiohttp's HTTP parser, nothing decoded."""

    body = json.dumps(REQUEST).encode()

    reads = 0

    async def stream(self, expect: Expected, on_first: OnFirst) -> int:
        received = reads = 0
        async with self.session.post(self.url, data=self.body, headers=HEADERS) as response:
            if response.status != 200:
                raise BenchError(f"raw aiohttp: HTTP {response.status}")
            async for data in response.content.iter_any():
                if not received and on_first is not None:
                    on_first()
                received += len(data)
                reads += 1
        self.reads += reads
        if received != expect.body_bytes:
            raise BenchError(f"raw aiohttp: {received} of {expect.body_bytes} bytes")
        return expect.chunks


class AiohttpLines(_AiohttpBase):
    """aiohttp's line iterator and json.loads: the usual hand-written SSE client."""

    async def stream(self, expect: Expected, on_first: OnFirst) -> int:
        loads = json.loads
        events = chars = 0
        done = False
        async with self.session.post(self.url, json=REQUEST, headers=HEADERS) as response:
            if response.status != 200:
                raise BenchError(f"aiohttp lines: HTTP {response.status}")
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].rstrip(b"\r\n")
                if payload == b"[DONE]":
                    done = True
                    continue
                chunk = loads(payload)
                events += 1
                if events == 1 and on_first is not None:
                    on_first()
                choices = chunk["choices"]
                if choices:
                    content = choices[0]["delta"].get("content")
                    if content:
                        chars += len(content)
        return _check("aiohttp lines", expect, events, done, chars)


class QwenSSE(BenchClient):
    """``QwenClient``: typed chunks, accumulation, the ``ChatResult``."""

    client: QwenClient

    async def open(self, base_url: str, connections: int) -> None:
        from qwen_sse.client import QwenClient  # noqa: PLC0415

        self.client = QwenClient(
            api_key=API_KEY,
            base_url=base_url,
            max_connections=max(4096, connections + 64),
            telemetry=self.telemetry(),
        )
        await self.client.__aenter__()

    def telemetry(self) -> Telemetry | bool:
        return False

    async def stream(self, expect: Expected, on_first: OnFirst) -> int:
        events = chars = 0
        async with self.client.stream_chat(MESSAGES, model=MODEL) as stream:
            async for chunk in stream:
                events += 1
                if events == 1 and on_first is not None:
                    on_first()
                if chunk.choices:
                    content = chunk.choices[0].delta.content
                    if content:
                        chars += len(content)
        result = stream.result
        if not result.complete or result.content != expect.content:
            raise BenchError(
                f"qwen-sse: result complete={result.complete}, "
                f"{len(result.content)} of {len(expect.content)} characters accumulated"
            )
        return _check("qwen-sse", expect, events, result.complete, chars)

    async def close(self) -> None:
        await self.client.close()


class QwenSSEWithTelemetry(QwenSSE):
    """``QwenClient`` with telemetry on, through the OpenTelemetry SDK as a service runs it:
    spans to a batch processor (its exporter drops them: exporting is the collector's
    cost, not the client's), metrics aggregated in memory."""

    shutdown: list[Callable[[], object]]

    def telemetry(self) -> Telemetry | bool:
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from qwen_sse.telemetry import Telemetry  # noqa: PLC0415

        class Dropped(SpanExporter):
            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(Dropped()))
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        self.shutdown = [tracer_provider.shutdown, meter_provider.shutdown]
        return Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)

    async def close(self) -> None:
        await super().close()
        for shutdown in self.shutdown:
            shutdown()


class OpenAISDK(BenchClient):
    """``AsyncOpenAI`` with ``stream=True``; its httpx pool sized for the concurrency."""

    client: Any

    async def open(self, base_url: str, connections: int) -> None:
        openai = importlib.import_module("openai")
        constants = importlib.import_module("openai._constants")
        # The SDK's own httpx flavour (httpx or httpx2, by version): take its classes.
        limits_cls = type(constants.DEFAULT_CONNECTION_LIMITS)
        timeout_cls = type(constants.DEFAULT_TIMEOUT)
        http_client = openai.DefaultAsyncHttpxClient(
            limits=limits_cls(max_connections=connections, max_keepalive_connections=connections),
            timeout=timeout_cls(120.0, connect=10.0),
            trust_env=False,
        )
        self.client = openai.AsyncOpenAI(
            api_key=API_KEY, base_url=base_url, max_retries=0, http_client=http_client
        )

    async def stream(self, expect: Expected, on_first: OnFirst) -> int:
        events = chars = 0
        stream = await self.client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            async for chunk in stream:
                events += 1
                if events == 1 and on_first is not None:
                    on_first()
                if chunk.choices:
                    content = chunk.choices[0].delta.content
                    if content:
                        chars += len(content)
        # The SDK swallows [DONE]; an exact count of chunks through to usage stands for it.
        return _check("openai", expect, events, True, chars)

    async def close(self) -> None:
        await self.client.close()


class HttpxSSE(BenchClient):
    """httpx + httpx-sse's ``aconnect_sse`` + ``json.loads``."""

    client: Any
    connect: Any
    url: str

    async def open(self, base_url: str, connections: int) -> None:
        httpx = importlib.import_module("httpx")
        self.connect = importlib.import_module("httpx_sse").aconnect_sse
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            timeout=httpx.Timeout(120.0, connect=10.0),
            trust_env=False,
        )
        self.url = f"{base_url}/chat/completions"

    async def stream(self, expect: Expected, on_first: OnFirst) -> int:
        loads = json.loads
        events = chars = 0
        done = False
        headers = {"Authorization": HEADERS["Authorization"]}
        async with self.connect(
            self.client, "POST", self.url, json=REQUEST, headers=headers
        ) as source:
            if source.response.status_code != 200:
                raise BenchError(f"httpx-sse: HTTP {source.response.status_code}")
            async for sse in source.aiter_sse():
                data = sse.data
                if data == "[DONE]":
                    done = True
                    continue
                chunk = loads(data)
                events += 1
                if events == 1 and on_first is not None:
                    on_first()
                choices = chunk["choices"]
                if choices:
                    content = choices[0]["delta"].get("content")
                    if content:
                        chars += len(content)
        return _check("httpx-sse", expect, events, done, chars)

    async def close(self) -> None:
        await self.client.aclose()


CLIENT_CLASSES: dict[str, type[BenchClient]] = {
    "raw aiohttp": RawAiohttp,
    "qwen-sse": QwenSSE,
    "qwen-sse otel": QwenSSEWithTelemetry,
    "openai": OpenAISDK,
    "httpx-sse": HttpxSSE,
    "aiohttp lines": AiohttpLines,
}


# ---------------------------------------------------------------------------------------
# A client process


async def run_pass(client: BenchClient, workload: Workload, expect: Expected) -> int:
    """Every stream of the workload, ``concurrency`` at a time; the events received."""
    remaining = workload.streams
    total = 0

    async def worker() -> None:
        nonlocal remaining, total
        while remaining > 0:
            remaining -= 1
            events = await client.stream(expect, None)
            total += events  # not `total += await ...`: that reads total before awaiting

    await asyncio.gather(*(worker() for _ in range(min(workload.concurrency, workload.streams))))
    if total != workload.events:
        raise BenchError(f"{total} events received, {workload.events} expected")
    return total


async def timed_passes(
    client: BenchClient,
    workload: Workload,
    expect: Expected,
    *,
    repeat: int,
    profile: Path | None,
    name: str,
) -> dict[str, Any]:
    await run_pass(client, workload, expect)  # warm-up: imports, lazy set-up, the pool
    profiler = None
    if profile is not None:
        import cProfile  # noqa: PLC0415

        profiler = cProfile.Profile()
    runs: list[dict[str, float]] = []
    for _ in range(repeat):
        gc.collect()
        reads0 = client.reads
        user0, sys0 = _cpu_s()
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        events = await run_pass(client, workload, expect)
        if profiler is not None:
            profiler.disable()
        wall = time.perf_counter() - start
        user1, sys1 = _cpu_s()
        cpu = (user1 - user0) + (sys1 - sys0)
        runs.append(
            {
                "events": events,
                "wall_s": wall,
                "cpu_s": cpu,
                "user_s": user1 - user0,
                "sys_s": sys1 - sys0,
                "cpu_us_per_event": cpu / events * 1e6,
                "events_per_s": events / wall,
                "cpu_share": cpu / wall,
            }
        )
        if client.reads is not None and reads0 is not None:
            runs[-1]["events_per_read"] = events / (client.reads - reads0)
    result: dict[str, Any] = {"status": "ok", "runs": runs}
    if profiler is not None and profile is not None:
        result["profile"] = _write_profile(profiler, profile, name, workload.name)
    return result


def _write_profile(profiler: Any, directory: Path, client: str, workload: str) -> str:
    import io  # noqa: PLC0415
    import pstats  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{client.replace(' ', '-')}-{workload}"
    profiler.dump_stats(str(stem) + ".prof")
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(40)
    Path(str(stem) + ".txt").write_text(text.getvalue())
    return str(stem) + ".prof"


async def hold_streams(client: BenchClient, workload: Workload, expect: Expected) -> dict[str, Any]:
    """Open ``streams`` streams at once; RSS per stream once all have a first chunk."""

    async def open_all(count: int) -> tuple[list[asyncio.Task[int]], bool]:
        opened = 0
        all_open = asyncio.Event()

        def first() -> None:
            nonlocal opened
            opened += 1
            if opened == count:
                all_open.set()

        tasks = [asyncio.create_task(client.stream(expect, first)) for _ in range(count)]
        waiter = asyncio.create_task(all_open.wait())
        await asyncio.wait([waiter, *tasks], timeout=300, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        return tasks, all_open.is_set()

    async def cancel(tasks: list[asyncio.Task[int]]) -> BaseException | None:
        failure = next(
            (t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()),
            None,
        )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return failure

    warm, ok = await open_all(min(8, workload.streams))  # imports and lazy set-up
    failure = await cancel(warm)
    if not ok:
        raise BenchError(f"warm-up streams did not open: {failure!r}")
    gc.collect()
    await asyncio.sleep(0.2)  # let the cancelled connections close
    before = rss_kb()
    start = time.perf_counter()
    tasks, ok = await open_all(workload.streams)
    open_s = time.perf_counter() - start
    peak = rss_kb()
    hwm = _status_kb("VmHWM")
    failure = await cancel(tasks)
    if not ok:
        raise BenchError(
            f"not all {workload.streams} streams opened within 300 s: {failure!r}"
            if failure is not None
            else f"not all {workload.streams} streams opened within 300 s"
        )
    return {
        "status": "ok",
        "streams": workload.streams,
        "rss_before_kb": before,
        "rss_peak_kb": peak,
        "vm_hwm_kb": hwm,
        "kb_per_stream": (peak - before) / workload.streams,
        "open_s": open_s,
    }


def client_main(
    control: Connection,
    *,
    name: str,
    workload_fields: dict[str, Any],
    base_url: str,
    repeat: int,
    profile: str | None,
    time_limit_s: int,
    cpu: int | None,
) -> None:
    """Entry point of a client process: run one workload with one client, send the result."""
    signal.alarm(time_limit_s)  # backstop: the process ends even if a stream hangs
    _pin(cpu)
    workload = Workload(**workload_fields)
    limits = raise_nofile()
    result: dict[str, Any]
    short = _nofile_short(workload.concurrency + 128, limits)
    if short is not None:
        result = {"status": f"skipped: {short}"}
    else:
        try:
            result = asyncio.run(_client_run(name, workload, base_url, repeat, profile))
        except ImportError as error:
            result = {"status": f"not installed ({error})"}
        except Exception as error:
            result = {"status": f"error: {type(error).__name__}: {error}"}
    result["nofile"] = list(limits)
    result["pid"] = os.getpid()
    control.send(result)
    control.close()


async def _client_run(
    name: str, workload: Workload, base_url: str, repeat: int, profile: str | None
) -> dict[str, Any]:
    client = CLIENT_CLASSES[name]()
    expect = expected(workload)
    await client.open(base_url, workload.concurrency + 64)
    try:
        if workload.hold:
            return await hold_streams(client, workload, expect)
        directory = None if profile is None else Path(profile)
        return await timed_passes(
            client, workload, expect, repeat=repeat, profile=directory, name=name
        )
    finally:
        await client.close()


# ---------------------------------------------------------------------------------------
# The parent: server, client processes, tables, JSON


class ServerHandle:
    def __init__(self, context: Any, lifetime_s: float, cpu: int | None) -> None:
        self.control, child = context.Pipe()
        self.process: SpawnProcess = context.Process(
            target=server_main, args=(child, lifetime_s, cpu), name="bench-server", daemon=True
        )
        self.process.start()
        child.close()
        if not self.control.poll(60):
            raise RuntimeError("the benchmark server did not start within 60 s")
        _, self.port, self.nofile = self.control.recv()

    def ask(self, message: tuple[Any, ...]) -> Any:
        self.control.send(message)
        if not self.control.poll(60):
            raise RuntimeError(f"the benchmark server did not answer {message[0]!r}")
        return self.control.recv()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.control.send(("stop",))
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.control.close()


def run_client_process(
    context: Any,
    *,
    name: str,
    workload: Workload,
    base_url: str,
    args: argparse.Namespace,
    cpu: int | None,
) -> dict[str, Any]:
    parent, child = context.Pipe()
    process = context.Process(
        target=client_main,
        args=(child,),
        kwargs={
            "name": name,
            "workload_fields": asdict(workload),
            "base_url": base_url,
            "repeat": args.repeat,
            "profile": args.profile,
            "time_limit_s": args.timeout,
            "cpu": cpu,
        },
        name=f"bench-{name}",
        daemon=True,
    )
    process.start()
    child.close()
    try:
        if parent.poll(args.timeout + 30):
            result: dict[str, Any] = parent.recv()
        else:
            result = {"status": f"error: no result within {args.timeout} s"}
    except EOFError:
        result = {"status": f"error: the client process died (exit code {process.exitcode})"}
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        parent.close()
    return result


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def summarize(row: dict[str, Any]) -> None:
    """Add the medians (and minimums) of the runs to a CPU-workload row."""
    runs = row.get("runs")
    if not runs:
        return
    row["cpu_us_per_event_median"] = _median([r["cpu_us_per_event"] for r in runs])
    row["cpu_us_per_event_min"] = min(r["cpu_us_per_event"] for r in runs)
    row["events_per_s_median"] = _median([r["events_per_s"] for r in runs])
    row["wall_s_median"] = _median([r["wall_s"] for r in runs])
    row["cpu_share_median"] = _median([r["cpu_share"] for r in runs])
    if all("events_per_read" in r for r in runs):
        row["events_per_read_median"] = _median([r["events_per_read"] for r in runs])


def bench(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    two_cpus = args.pin and (os.cpu_count() or 1) >= 2
    server_cpu, client_cpu = (0, 1) if two_cpus else (None, None)
    server = ServerHandle(context, args.server_lifetime, server_cpu)
    base_url = f"http://127.0.0.1:{server.port}/v1"
    log(f"server on 127.0.0.1:{server.port}, RLIMIT_NOFILE {server.nofile[0]}")
    rows: list[dict[str, Any]] = []
    try:
        for workload in workloads(args):
            server.ask(("configure", asdict(workload)))
            short = _nofile_short(workload.concurrency + 128, tuple(server.nofile))
            for name in args.only:
                row: dict[str, Any] = {"workload": workload.name, "client": name}
                rows.append(row)
                if short is not None:
                    row["status"] = f"skipped: server: {short}"
                    log(f"  {workload.name:<7} {name:<14} {row['status']}")
                    continue
                processes = args.repeat if workload.hold else 1
                results = []
                server.ask(("stats",))  # reset
                started = time.perf_counter()
                for _ in range(processes):
                    results.append(
                        run_client_process(
                            context,
                            name=name,
                            workload=workload,
                            base_url=base_url,
                            args=args,
                            cpu=client_cpu,
                        )
                    )
                    if results[-1]["status"] != "ok":
                        break
                elapsed = time.perf_counter() - started
                stats = server.ask(("stats",))[1]
                row["server"] = stats
                bad = next((r for r in results if r["status"] != "ok"), None)
                row["status"] = "ok" if bad is None else bad["status"]
                row["nofile"] = results[-1].get("nofile")
                if workload.hold:
                    row["processes"] = results
                    good = [r["kb_per_stream"] for r in results if r["status"] == "ok"]
                    if bad is None and good:
                        row["kb_per_stream_median"] = _median(good)
                        row["rss_before_kb_median"] = _median([r["rss_before_kb"] for r in results])
                        row["rss_peak_kb_median"] = _median([r["rss_peak_kb"] for r in results])
                        row["open_s_median"] = _median([r["open_s"] for r in results])
                else:
                    only = results[0]
                    row["runs"] = only.get("runs", [])
                    if "profile" in only:
                        row["profile"] = only["profile"]
                    if bad is None:
                        summarize(row)
                        passes = args.repeat + 1
                        row["server_cpu_us_per_event"] = (
                            stats["cpu_s"] / (workload.events * passes) * 1e6
                        )
                log(f"  {workload.name:<7} {name:<14} {_short(row['status'])} ({elapsed:.1f} s)")
    finally:
        server.stop()
    for workload in workloads(args):
        floor = next(
            (
                r
                for r in rows
                if r["workload"] == workload.name
                and r["client"] == FLOOR
                and "cpu_us_per_event_median" in r
            ),
            None,
        )
        for row in rows:
            if row["workload"] == workload.name and "cpu_us_per_event_median" in row:
                row["x_raw"] = (
                    None
                    if floor is None
                    else row["cpu_us_per_event_median"] / floor["cpu_us_per_event_median"]
                )
    return {"server_port": server.port, "server_nofile": server.nofile, "results": rows}


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def find(workload: str, client: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["workload"] == workload and r["client"] == client), None)

    bulk = find("bulk", OURS)
    paced = find("paced", OURS)
    memory = find("memory", OURS)
    bulk_us = None if bulk is None else bulk.get("cpu_us_per_event_median")
    paced_ratio = None if paced is None else paced.get("x_raw")
    memory_kb = None if memory is None else memory.get("kb_per_stream_median")
    paced_us = None if paced is None else paced.get("cpu_us_per_event_median")
    with_telemetry = find("paced", OURS_WITH_TELEMETRY)
    telemetry_us = None if with_telemetry is None else with_telemetry.get("cpu_us_per_event_median")
    telemetry_ratio = None if paced_us is None or telemetry_us is None else telemetry_us / paced_us
    return {
        "bulk_cpu_us_per_event": {
            "value": bulk_us,
            "target_max": TARGET_BULK_US,
            "pass": None if bulk_us is None else bulk_us <= TARGET_BULK_US,
        },
        "paced_cpu_per_event_x_raw": {
            "value": paced_ratio,
            "target_max": TARGET_PACED_RATIO,
            "pass": None if paced_ratio is None else paced_ratio <= TARGET_PACED_RATIO,
        },
        "memory_kb_per_stream": {
            "value": memory_kb,
            "target_max": TARGET_MEMORY_KB,
            "pass": None if memory_kb is None else memory_kb <= TARGET_MEMORY_KB,
        },
        "paced_cpu_per_event_telemetry_on_x_off": {
            "value": telemetry_ratio,
            "target_max": TARGET_TELEMETRY_RATIO,
            "pass": None if telemetry_ratio is None else telemetry_ratio <= TARGET_TELEMETRY_RATIO,
        },
    }


# ---------------------------------------------------------------------------------------
# Environment and output


def environment() -> dict[str, Any]:
    packages = (
        "qwen-sse",
        "aiohttp",
        "msgspec",
        "openai",
        "httpx",
        "httpx2",
        "httpx-sse",
        "opentelemetry-sdk",
    )
    return {**benchenv.environment(packages), "event_loop": "asyncio default (selector)"}


def _short(status: str) -> str:
    return status if len(status) <= 160 else status[:157] + "..."


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def table(rows: list[dict[str, Any]]) -> list[str]:
    header = (
        f"{'workload':<8} {'client':<14} {'CPU us/ev':>9} {'min':>7} {'events/s':>10} "
        f"{'x raw':>6} {'CPU%':>5} {'wall s':>7} {'conns':>6}"
    )
    lines = [header, "-" * len(header)]
    cpu_rows = [r for r in rows if r["workload"] != "memory"]
    for workload in dict.fromkeys(r["workload"] for r in cpu_rows):
        server_cpu: list[str] = []
        server_lag: list[str] = []
        per_read: list[str] = []
        for row in (r for r in cpu_rows if r["workload"] == workload):
            start = f"{workload:<8} {row['client']:<14}"
            if "cpu_us_per_event_median" not in row:
                lines.append(f"{start} {_short(row['status'])}")
                continue
            stats = row.get("server", {})
            lines.append(
                f"{start} {row['cpu_us_per_event_median']:>9.2f} "
                f"{row['cpu_us_per_event_min']:>7.2f} {row['events_per_s_median']:>10,.0f} "
                f"{_fmt(row.get('x_raw'), '.2f', 'x'):>6} "
                f"{row['cpu_share_median'] * 100:>4.0f}% {row['wall_s_median']:>7.3f} "
                f"{stats.get('connections_accepted', 0):>6}"
                + ("  [profiled]" if "profile" in row else "")
            )
            server_cpu.append(f"{row['client']} {row['server_cpu_us_per_event']:.2f}")
            if stats.get("max_lag_ms") is not None:
                server_lag.append(
                    f"{row['client']} {stats['max_lag_ms']:.1f}/{stats['p99_lag_ms']:.1f}"
                )
            if "events_per_read_median" in row:
                per_read.append(f"{row['client']} {row['events_per_read_median']:.2f}")
        indent = " " * 9
        if server_cpu:
            lines.append(f"{indent}server CPU us/ev: " + ", ".join(server_cpu))
        if server_lag:
            lines.append(f"{indent}server timer lag max/p99 ms: " + ", ".join(server_lag))
        if per_read:
            lines.append(f"{indent}events per read: " + ", ".join(per_read))
        lines.append("")
    memory_rows = [r for r in rows if r["workload"] == "memory"]
    if memory_rows:
        header = (
            f"{'workload':<8} {'client':<14} {'KB/stream':>9} {'RSS before MB':>13} "
            f"{'RSS peak MB':>11} {'open s':>7} {'streams':>7}"
        )
        lines += [header, "-" * len(header)]
        for row in memory_rows:
            start = f"{'memory':<8} {row['client']:<14}"
            if "kb_per_stream_median" not in row:
                lines.append(f"{start} {_short(row['status'])}")
                continue
            streams = row["processes"][0]["streams"]
            lines.append(
                f"{start} {row['kb_per_stream_median']:>9.1f} "
                f"{row['rss_before_kb_median'] / 1024:>13.1f} "
                f"{row['rss_peak_kb_median'] / 1024:>11.1f} {row['open_s_median']:>7.2f} "
                f"{streams:>7}"
            )
        lines.append("")
    return lines


def target_lines(goal: dict[str, Any], quick: bool) -> list[str]:
    def verdict(passed: bool | None) -> str:
        return "n/a" if passed is None else ("PASS" if passed else "MISS")

    bulk = goal["bulk_cpu_us_per_event"]
    paced = goal["paced_cpu_per_event_x_raw"]
    memory = goal["memory_kb_per_stream"]
    telemetry = goal["paced_cpu_per_event_telemetry_on_x_off"]
    caveat = "; --quick sizes are too small to judge them by" if quick else ""
    return [
        f"targets (issues 4, 12; information only, a miss never changes the exit status{caveat}):",
        f"  bulk: qwen-sse CPU per event {_fmt(bulk['value'], '.2f', ' us')} "
        f"(target <= {TARGET_BULK_US} us) {verdict(bulk['pass'])}",
        f"  paced: qwen-sse CPU per event {_fmt(paced['value'], '.2f', 'x')} the raw floor's "
        f"(target <= {TARGET_PACED_RATIO}x) {verdict(paced['pass'])}",
        f"  memory: qwen-sse {_fmt(memory['value'], '.1f', ' KB')} per concurrent stream "
        f"(target <= {TARGET_MEMORY_KB:g} KB) {verdict(memory['pass'])}",
        f"  telemetry: paced CPU per event with telemetry on "
        f"{_fmt(telemetry['value'], '.3f', 'x')} off "
        f"(target <= {TARGET_TELEMETRY_RATIO}x) {verdict(telemetry['pass'])}",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    benchenv.add_report_options(parser)
    parser.add_argument("--repeat", type=int, default=3, help="timed passes (memory: processes)")
    parser.add_argument(
        "--only",
        default=",".join(CLIENTS),
        help="comma-separated clients: raw, qwen, qwen-otel, openai, httpx-sse, aiohttp-lines",
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated: bulk, paced, memory"
    )
    parser.add_argument(
        "--memory-streams", type=int, default=4000, help="concurrent streams (memory)"
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="cProfile the timed passes into DIR (inflates figures)"
    )
    parser.add_argument("--pin", action="store_true", help="server on CPU 0, clients on CPU 1")
    parser.add_argument(
        "--timeout", type=int, default=900, help="seconds a client process may take"
    )
    parser.add_argument(
        "--server-lifetime", type=float, default=SERVER_LIFETIME_S, help="server hard limit, s"
    )
    args = parser.parse_args(argv)
    names = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = [name for name in names if name not in ALIASES and name not in CLIENTS]
    if unknown or not names:
        parser.error(f"unknown client(s) {unknown}; choose from {', '.join(ALIASES)}")
    args.only = list(dict.fromkeys(ALIASES.get(name, name) for name in names))
    chosen = [part.strip() for part in args.workloads.split(",") if part.strip()]
    if not chosen or any(name not in WORKLOADS for name in chosen):
        parser.error(f"--workloads takes a comma-separated subset of {', '.join(WORKLOADS)}")
    args.workloads = list(dict.fromkeys(chosen))
    if args.quick:
        args.repeat = min(args.repeat, 2)
        args.memory_streams = min(args.memory_streams, 200)
        args.timeout = min(args.timeout, 120)
    if args.repeat < 1 or args.memory_streams < 8 or args.timeout < 10:
        parser.error("--repeat must be >= 1, --memory-streams >= 8, --timeout >= 10")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    env = environment()
    packages = env["packages"]
    log(
        f"bench_client: Python {platform.python_version()}, {env['cpu_model']} "
        f"x{env['cpu_count']}, qwen-sse {packages['qwen-sse']}, aiohttp {packages['aiohttp']}, "
        f"openai {packages['openai'] or '-'}, httpx-sse {packages['httpx-sse'] or '-'}"
    )
    plan = workloads(args)
    for workload in plan:
        log(
            f"{workload.name}: {workload.streams:,} streams x {workload.chunks:,} chunks, "
            f"{workload.concurrency:,} at a time"
            + (f", one chunk per {workload.interval_s * 1e3:g} ms" if workload.interval_s else "")
        )
    log(f"repeat={args.repeat}; clients: {', '.join(args.only)}")
    outcome = bench(args, log)
    rows = outcome["results"]
    goal = targets(rows)
    env["load_average_at_end"] = list(os.getloadavg())
    log("")
    log("\n".join(table(rows)))
    log("\n".join(target_lines(goal, args.quick)))

    document = {
        "benchmark": "bench_client",
        "schema": 1,
        "config": {
            "quick": args.quick,
            "repeat": args.repeat,
            "clients": args.only,
            "workloads": [asdict(w) | {"events": w.events} for w in plan],
            "profile": args.profile,
            "pinned": bool(args.pin),
            "event": "one JSON chunk of the stream; data: [DONE] is not counted",
            "cpu": "process user + system time (getrusage), whole pass, every thread",
            "statistic": "median (and min) over --repeat timed passes after one warm-up pass",
            "memory": "(VmRSS when all streams are open - VmRSS before) / streams",
        },
        "environment": env,
        "server": {"port": outcome["server_port"], "nofile": outcome["server_nofile"]},
        "results": rows,
        "targets": goal,
    }
    benchenv.emit(document, args.json or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

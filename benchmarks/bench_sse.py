"""Throughput of qwen-sse's SSE framing and chat decoding, beside openai-python and httpx-sse.

What it measures
----------------
1. **Read sizes.** A synthetic DashScope compatible-mode stream (``--events`` content chunks
   of 240-290 bytes, mean about 268 as in the real streams under ``shared/fixtures``,
   Chinese and English text, key order varying as there, then the ``choices: []`` usage
   chunk and ``data: [DONE]``) is split into reads of 1 B, 64 B, 1 KiB, 16 KiB and 256 KiB *before*
   timing, and each decoder consumes the whole stream:

   ======================  ==============  ==============================================
   decoder                 layer           what runs
   ======================  ==============  ==============================================
   ``qwen feed``           framing         ``SSEDecoder.feed`` -> ``ServerSentEvent``
   ``qwen feed_frames``    framing         ``SSEDecoder.feed_frames`` -> (type, bytes)
   ``openai``              framing         ``openai._streaming.SSEDecoder().iter_bytes``
                                           over an iterator of the reads, as openai's
                                           ``Stream`` calls it
   ``httpx-sse``           framing         ``httpx_sse.EventSource.iter_sse`` over a
                                           response stand-in whose ``iter_text`` is
                                           httpx's ``TextDecoder`` on the reads, as
                                           ``httpx.Response.iter_text`` does
   ``qwen chat``           full            ``ChatStreamDecoder.feed``: framing + typed
                                           msgspec decoding + accumulation
   ``qwen feed+json``      framing+json    ``feed`` + ``json.loads`` of each payload
   ``openai+json``         framing+json    as ``openai`` + ``sse.json()`` per event,
                                           stopping at ``[DONE]`` as ``Stream`` does
   ``httpx-sse+json``      framing+json    as ``httpx-sse`` + ``json.loads`` per event
   ======================  ==============  ==============================================

   The ``+json`` rows are the fair reference for ``qwen chat``: they are what a peer does
   before it even builds a typed object (openai then builds a pydantic model on top).
   The peers are optional ("bench" extra); a peer that cannot be imported is reported as
   "not installed" and the rest runs. The peers start where bytes leave the HTTP library;
   no HTTP library runs under any decoder.

   At small read sizes the stream is shortened so that one run makes at most
   ``--max-reads`` ``feed`` calls (whole events, still ending in usage and ``[DONE]``);
   per-event figures stay comparable, and the JSON records the event count of each size.

2. **One large event**, fed in 1 KiB reads: one ``data:`` line of 1, 4 and 16 MiB, and an
   event of the same sizes made of 1 KiB ``data:`` lines (ASCII and 3-byte UTF-8, so
   reads cut through characters), through each framing decoder (``--quick``: 64 KiB to
   1 MiB). Linear cost shows as t(4x)/t(1x) near 4 and t(16x)/t(1x) near 16, i.e. a flat
   ms/MiB. Those ratios also carry the machine's cache steps (an event that no longer
   fits in L2 costs more per byte for every decoder), so the largest event is fed once
   more with the clock read before every read: ``late/early``, the mean cost of a read
   in the last quarter of the event over one in the first quarter, stays near 1 for a
   linear decoder and grows with the event for one that re-copies or re-scans its buffer.

3. **Protocols.** The same answer in each wire protocol qwen-sse speaks
   (``qwen_sse.protocols.NAMES``: compatible, native, native-multimodal, responses,
   anthropic), decoded by ``ChatStreamDecoder(protocol=name, request=body).feed`` in
   16 KiB reads: the cost of each protocol beside the compatible one. Before any timing,
   an in-process emulator (``qwen_sse.emulator.Emulator``, no pacing) is asked over
   loopback, with aiohttp, for a long plain-text answer of ``--protocol-events`` text
   pieces in every protocol (request body from the protocol's ``request_body``, headers
   from its ``headers``), and each response body is kept as raw bytes. A stream is mostly
   text deltas, plus its protocol's lifecycle events (compatible: role, finish, usage,
   ``[DONE]``; responses: ``response.created`` ... ``response.completed``; anthropic:
   ``message_start``, ``ping``, ``content_block_*``, ``message_delta``, ``message_stop``),
   so the table counts both the SSE **events** and the answer's text **pieces** (the
   same for every protocol), and gives the cost per event and per piece: per event
   compares decoders frame for frame, per piece prices the same answer. Every decoded
   result must be complete and its content equal to the emulated answer's
   (``qwen_sse.emulator.emulated_answer``). The compatible row here decodes the
   emulator's stream, not the synthetic one of section 1, so it is the protocols'
   baseline, not a repeat of ``qwen chat``.

4. **Targets** (information, never an exit status). Issue 2: the full path
   (``qwen chat``) costs <= 1.5 us per event at 16 KiB reads, and ``qwen feed`` frames at
   >= 2x the event rate of openai-python at 16 KiB reads. Issue 11: the same full path
   (the ``qwen chat`` row at 16 KiB reads of section 1) costs <= 1.2 us per event.

Method: each measurement runs ``--repeat`` times after one untimed warm-up on a short
complete stream, timed with ``time.perf_counter_ns`` around the whole stream; the median and the
minimum are reported. The garbage collector stays enabled, as in a real service (the
peers' events are gc-tracked objects, ours are not, and that difference is real), but
``gc.collect()`` runs before every timed run so that one run's garbage is not billed to
the next. Decoders are constructed inside the timed run. MB is 10**6 bytes of the raw
stream. Every run's event count is checked against the stream, and the accumulated
``qwen chat`` result (and each protocol's) against the generated text, so a broken
decoder cannot post a fast figure. The protocol streams are timed the same way, with
their whole stream as the warm-up.

How to run
----------
::

    pip install -e '.[bench]'
    python benchmarks/bench_sse.py                  # full run, about a minute
    python benchmarks/bench_sse.py --quick          # smoke test, a couple of seconds
    python benchmarks/bench_sse.py --json out.json  # JSON to a file instead of stdout
    python benchmarks/bench_sse.py --no-large       # without section 2 (large events)

Pin it to one idle core for steadier figures, e.g. ``taskset -c 1 python ...``.

How to read the output
----------------------
The human-readable table goes to **stderr**, the JSON document to **stdout** (or to
``--json FILE``), so ``python benchmarks/bench_sse.py > result.json`` shows the table
and keeps the JSON. In the table, ``us/ev`` is microseconds per event (median, then
minimum over the repeats), ``ev/s`` and ``MB/s`` are from the median, and
``x openai`` is the median event rate relative to openai-python in the same layer
(framing rows against ``openai``, ``+json`` rows and ``qwen chat`` against
``openai+json``).

The protocol table has one row per protocol: ``events`` (SSE events in the stream),
``pieces`` (text pieces of the answer), ``B/ev`` (bytes per event), ``us/ev med`` and
``us/ev min`` (microseconds per event, median and minimum over the repeats),
``us/piece`` (median time over the pieces) and ``x compat`` (the median cost per event
over the compatible protocol's; above 1 is dearer).

The JSON holds the same figures unrounded, with every run's time
(``throughput``, ``large_event``, ``linearity``, ``protocols``), the ``targets`` with
pass/fail (each naming its ``issue``), the configuration and the environment (Python,
platform, CPU model, package versions). Each ``protocols`` row holds ``protocol``,
``events``, ``pieces``, ``chunks`` (chunks the decoder returned), ``bytes``,
``bytes_per_event``, ``read_size``, ``reads``, ``repeat``, ``median_ns``, ``min_ns``,
``us_per_event_median``, ``us_per_event_min``, ``us_per_piece_median``,
``events_per_s``, ``mb_per_s``, ``runs_ns`` and ``ratio_to_compatible_per_event`` and
``..._per_piece`` (medians).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.metadata
import itertools
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import benchenv

from qwen_sse import protocols
from qwen_sse.chat import ChatStreamDecoder
from qwen_sse.emulator import EmulatedAnswer, Emulator, EmulatorConfig, emulated_answer
from qwen_sse.models import MODEL_LIMITS
from qwen_sse.protocols import WireProtocol
from qwen_sse.protocols.compatible import COMPATIBLE
from qwen_sse.sse import SSEDecoder

KIB = 1024
MIB = 1024 * KIB
READ_SIZES = (1, 64, KIB, 16 * KIB, 256 * KIB)
TARGET_READ_SIZE = 16 * KIB
TARGET_FULL_US_PER_EVENT = 1.5  # issue 2
TARGET_FRAMING_SPEEDUP = 2.0  # issue 2
TARGET_FULL_US_PER_EVENT_ISSUE_11 = 1.2
LARGE_READ_SIZE = KIB
LARGE_LINE_BYTES = KIB
PROTOCOL_READ_SIZE = TARGET_READ_SIZE
PROTOCOL_MODEL = "qwen-plus"
# English: the emulator answers in the language of the last user message; its English
# words include accented letters, so the reads still cut through multi-byte characters.
PROTOCOL_MESSAGES: tuple[dict[str, str], ...] = (
    {"role": "user", "content": "Explain how a streamed answer travels over SSE."},
)
PROTOCOL_API_KEY = "sk-test"
PROTOCOL_MAX_PIECES = MODEL_LIMITS[PROTOCOL_MODEL].max_output_tokens

FRAMING = "framing"
FULL = "full"
FRAMING_JSON = "framing+json"

# A stream is a sequence of reads; a runner consumes one and returns the events it saw.
Runner = Callable[[Iterable[bytes]], int]

# ---------------------------------------------------------------------------------------
# Workload


_CHUNK_ID = "chatcmpl-428b414f-fdd4-94c6-b179-8f576ad653a8"
_CREATED = 1726132850
_TEXT_PIECES = (
    "我是",
    "来自",
    "阿里",
    "云的超大规模语言",
    "模型，我叫通义千问",
    "。",
    "你好！",
    "有什么我可以帮您的吗？",
    "请注意，",
    "流式输出",
    "I am",
    " a",
    " large-scale",
    " language model from Alibaba",
    " Cloud, and my name is Qwen",
    ".",
    " Here",
    " is the",
    " answer:",
    "\n\n",
    " `SSEDecoder`",
    " 例如",
)


def _choice(delta: dict[str, Any], finish_reason: str | None, order: int) -> dict[str, Any]:
    # The three key orders DashScope's compatible mode is seen to send.
    if order == 0:
        return {"delta": delta, "finish_reason": finish_reason, "index": 0, "logprobs": None}
    if order == 1:
        return {"finish_reason": finish_reason, "delta": delta, "index": 0, "logprobs": None}
    return {"delta": delta, "index": 0, "logprobs": None, "finish_reason": finish_reason}


def _frame(chunk: dict[str, Any]) -> bytes:
    body = json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + body.encode() + b"\n\n"


def _chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None) -> dict[str, Any]:
    return {
        "choices": choices,
        "object": "chat.completion.chunk",
        "usage": usage,
        "created": _CREATED,
        "system_fingerprint": None,
        "model": "qwen-plus",
        "id": _CHUNK_ID,
    }


@dataclass(frozen=True, slots=True)
class Workload:
    """One synthetic stream: its bytes, SSE event count and the text it must decode to."""

    data: bytes
    events: int
    content: str
    completion_tokens: int


def build_stream(content_chunks: int, seed: int = 2) -> Workload:
    """A role chunk, ``content_chunks - 2`` text chunks, a stop chunk, usage and [DONE]."""
    rng = random.Random(seed)
    frames = [_frame(_chunk([_choice({"content": "", "role": "assistant"}, None, 2)], None))]
    texts: list[str] = []
    for _ in range(max(content_chunks - 2, 1)):
        text = rng.choice(_TEXT_PIECES)
        texts.append(text)
        frames.append(_frame(_chunk([_choice({"content": text}, None, rng.randrange(3))], None)))
    frames.append(_frame(_chunk([_choice({"content": ""}, "stop", 1)], None)))
    usage = {"prompt_tokens": 22, "completion_tokens": len(texts), "total_tokens": 22 + len(texts)}
    frames.append(_frame(_chunk([], usage)))
    frames.append(b"data: [DONE]\n\n")
    return Workload(b"".join(frames), len(frames), "".join(texts), len(texts))


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _filler(size: int) -> bytes:
    # 32 bytes: ASCII and 3-byte UTF-8 characters, so 1 KiB reads cut through characters.
    pattern = "abcdefghij0123456789通义千问".encode()
    return (pattern * (size // len(pattern) + 1))[:size]


def large_single_line(size: int) -> bytes:
    return b"data: " + _filler(size) + b"\n\n"


def large_many_lines(size: int) -> bytes:
    line = b"data: " + _filler(LARGE_LINE_BYTES) + b"\n"
    return line * (size // LARGE_LINE_BYTES) + b"\n"


@dataclass(frozen=True, slots=True)
class ProtocolStream:
    """One protocol's response to the answer request: its body, bytes and SSE events."""

    protocol: WireProtocol
    body: dict[str, Any]
    data: bytes
    events: int


def count_events(data: bytes) -> int:
    """The SSE events of a whole stream (an unterminated last event is not one)."""
    decoder = SSEDecoder(max(len(data), 1))
    return len(decoder.feed_frames(data)) + len(decoder.feed_eof())


def _answer_params(answer_tokens: int) -> dict[str, Any]:
    # Every protocol is asked for max_tokens equal to the answer's length, which ends it
    # with "stop" as without a bound: Anthropic's body needs a max_tokens, and its default
    # (4,096) would cut a longer answer there, making it a different answer.
    return {"max_tokens": answer_tokens}


async def _fetch_streams(answer_tokens: int) -> list[ProtocolStream]:
    config = EmulatorConfig(ttft_s=0, itl_s=0, answer_tokens=answer_tokens, api_key=None)
    streams: list[ProtocolStream] = []
    async with Emulator(config) as emulator, aiohttp.ClientSession() as session:
        for protocol in protocols.PROTOCOLS.values():
            body = protocol.request_body(
                PROTOCOL_MODEL,
                list(PROTOCOL_MESSAGES),
                _answer_params(answer_tokens),
                include_usage=True,
            )
            async with session.post(
                emulator.base_url_for(protocol) + protocol.path,
                headers=protocol.headers(PROTOCOL_API_KEY),
                json=body,
            ) as response:
                data = await response.read()
                if response.status != 200:
                    raise RuntimeError(
                        f"emulator answered {protocol.name} with HTTP {response.status}: "
                        f"{data[:200].decode(errors='replace')}"
                    )
            streams.append(ProtocolStream(protocol, body, data, count_events(data)))
    return streams


def capture_protocol_streams(answer_tokens: int) -> tuple[EmulatedAnswer, list[ProtocolStream]]:
    """The emulated answer of ``answer_tokens`` tokens (a text piece each, but for the few
    characters split across tokens), and its bytes in every protocol.

    The emulator reads each protocol's request as the equivalent compatible-mode body, so
    every stream carries the answer ``emulated_answer`` gives for the compatible body.
    """
    compatible = COMPATIBLE.request_body(
        PROTOCOL_MODEL, list(PROTOCOL_MESSAGES), _answer_params(answer_tokens), include_usage=True
    )
    answer = emulated_answer(compatible, answer_tokens=answer_tokens)
    return answer, asyncio.run(_fetch_streams(answer_tokens))


# ---------------------------------------------------------------------------------------
# Decoders under test


def run_qwen_feed(reads: Iterable[bytes]) -> int:
    decoder = SSEDecoder()
    feed = decoder.feed
    count = 0
    for data in reads:
        count += len(feed(data))
    decoder.feed_eof()
    return count


def run_qwen_feed_frames(reads: Iterable[bytes]) -> int:
    decoder = SSEDecoder()
    feed = decoder.feed_frames
    count = 0
    for data in reads:
        count += len(feed(data))
    decoder.feed_eof()
    return count


def run_qwen_feed_json(reads: Iterable[bytes]) -> int:
    decoder = SSEDecoder()
    feed = decoder.feed
    loads = json.loads
    count = 0
    for data in reads:
        for event in feed(data):
            count += 1
            if event.data != "[DONE]":
                loads(event.data)
    decoder.feed_eof()
    return count


def run_qwen_chat(reads: Iterable[bytes]) -> int:
    decoder = ChatStreamDecoder()
    feed = decoder.feed
    count = 0
    for data in reads:
        count += len(feed(data, 0.0))
    decoder.feed_eof()
    return count + decoder.done  # [DONE] is an event, not a chunk


def run_protocol(stream: ProtocolStream) -> Runner:
    """``ChatStreamDecoder`` in ``stream``'s protocol, told its request body; the runner
    returns the SSE events the decoder consumed."""
    name = stream.protocol.name
    body = stream.body

    def run(reads: Iterable[bytes]) -> int:
        decoder = ChatStreamDecoder(protocol=name, request=body)
        feed = decoder.feed
        for data in reads:
            feed(data, 0.0)
        decoder.feed_eof()
        return decoder.events

    run.__qualname__ = f"run_protocol[{name}]"
    return run


def _run_large(max_event_bytes: int, frames: bool) -> Runner:
    def run(reads: Iterable[bytes]) -> int:
        decoder = SSEDecoder(max_event_bytes)
        feed = decoder.feed_frames if frames else decoder.feed
        count = 0
        for data in reads:
            count += len(feed(data))
        decoder.feed_eof()
        return count

    return run


class _TextResponse:
    """What ``httpx_sse.EventSource`` uses of an ``httpx.Response``: headers, ``iter_text``.

    ``iter_text`` is ``httpx.Response.iter_text`` without the HTTP layer: httpx's own
    incremental ``TextDecoder`` (UTF-8, errors replaced) over each read, empty strings
    dropped and the decoder flushed at the end, as its ``TextChunker(None)`` does.
    """

    headers = {"content-type": "text/event-stream"}  # noqa: RUF012

    def __init__(self, text_decoder_cls: Any, reads: Iterable[bytes]) -> None:
        self._text_decoder_cls = text_decoder_cls
        self._reads = reads

    def iter_text(self) -> Iterator[str]:
        decoder = self._text_decoder_cls("utf-8")
        for data in self._reads:
            text: str = decoder.decode(data)
            if text:
                yield text
        tail: str = decoder.flush()
        if tail:
            yield tail


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    status: str  # "ok" or why not
    framing: Runner | None
    framing_json: Runner | None


def _import(module: str) -> tuple[Any, str]:
    try:
        return importlib.import_module(module), "ok"
    except ImportError as error:
        return None, f"not installed ({error})"


def load_openai() -> Peer:
    streaming, status = _import("openai._streaming")
    if streaming is None:
        return Peer("openai", status, None, None)
    decoder_cls = streaming.SSEDecoder

    def framing(reads: Iterable[bytes]) -> int:
        count = 0
        for _ in decoder_cls().iter_bytes(iter(reads)):
            count += 1
        return count

    def framing_json(reads: Iterable[bytes]) -> int:
        count = 0
        for sse in decoder_cls().iter_bytes(iter(reads)):
            count += 1
            if sse.data.startswith("[DONE]"):
                break
            sse.json()
        return count

    return Peer("openai", "ok", framing, framing_json)


def load_httpx_sse() -> Peer:
    api, status = _import("httpx_sse._api")
    decoders, httpx_status = _import("httpx._decoders")
    if api is None or decoders is None:
        return Peer("httpx-sse", status if api is None else httpx_status, None, None)
    event_source_cls = api.EventSource
    text_decoder_cls = decoders.TextDecoder

    def framing(reads: Iterable[bytes]) -> int:
        count = 0
        for _ in event_source_cls(_TextResponse(text_decoder_cls, reads)).iter_sse():
            count += 1
        return count

    def framing_json(reads: Iterable[bytes]) -> int:
        loads = json.loads
        count = 0
        for sse in event_source_cls(_TextResponse(text_decoder_cls, reads)).iter_sse():
            count += 1
            if sse.data != "[DONE]":
                loads(sse.data)
        return count

    return Peer("httpx-sse", "ok", framing, framing_json)


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    layer: str
    runner: Runner | None
    status: str


def contenders(openai: Peer, httpx_sse: Peer) -> list[Contender]:
    return [
        Contender("qwen feed", FRAMING, run_qwen_feed, "ok"),
        Contender("qwen feed_frames", FRAMING, run_qwen_feed_frames, "ok"),
        Contender("openai", FRAMING, openai.framing, openai.status),
        Contender("httpx-sse", FRAMING, httpx_sse.framing, httpx_sse.status),
        Contender("qwen chat", FULL, run_qwen_chat, "ok"),
        Contender("qwen feed+json", FRAMING_JSON, run_qwen_feed_json, "ok"),
        Contender("openai+json", FRAMING_JSON, openai.framing_json, openai.status),
        Contender("httpx-sse+json", FRAMING_JSON, httpx_sse.framing_json, httpx_sse.status),
    ]


# ---------------------------------------------------------------------------------------
# Timing


@dataclass(frozen=True, slots=True)
class Timing:
    median_ns: float
    min_ns: int
    runs_ns: list[int]


def measure(
    runner: Runner, reads: Sequence[bytes], expected: int, repeat: int, warmup: Sequence[bytes]
) -> Timing:
    """Time ``repeat`` runs of ``runner`` over ``reads``, after one untimed run on ``warmup``."""
    runner(warmup)
    runs: list[int] = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter_ns()
        seen = runner(reads)
        elapsed = time.perf_counter_ns() - start
        if seen != expected:
            raise RuntimeError(f"{runner.__qualname__} saw {seen} events, expected {expected}")
        runs.append(elapsed)
    return Timing(statistics.median(runs), min(runs), runs)


def check_chat_result(reads: Sequence[bytes], workload: Workload) -> None:
    decoder = ChatStreamDecoder()
    for data in reads:
        decoder.feed(data)
    decoder.feed_eof()
    result = decoder.result()
    usage = result.usage
    if (
        result.content != workload.content
        or usage is None
        or usage.completion_tokens != workload.completion_tokens
    ):
        raise RuntimeError("ChatStreamDecoder result does not match the generated stream")


def check_protocol_result(stream: ProtocolStream, reads: Sequence[bytes], answer: str) -> int:
    """Decode ``stream`` once, untimed; raise unless the result is complete and its content
    is ``answer``. Returns the chunks the decoder gave."""
    decoder = ChatStreamDecoder(protocol=stream.protocol.name, request=stream.body)
    chunks = 0
    for data in reads:
        chunks += len(decoder.feed(data))
    decoder.feed_eof()
    result = decoder.result()
    if not result.complete or result.content != answer:
        raise RuntimeError(
            f"ChatStreamDecoder({stream.protocol.name}) result does not match the emulated answer"
        )
    return chunks


def _rates(timing: Timing, events: int, nbytes: int) -> dict[str, float]:
    seconds = timing.median_ns / 1e9
    return {
        "median_ns": timing.median_ns,
        "min_ns": float(timing.min_ns),
        "us_per_event_median": timing.median_ns / events / 1e3,
        "us_per_event_min": timing.min_ns / events / 1e3,
        "events_per_s": events / seconds,
        "mb_per_s": nbytes / seconds / 1e6,
    }


def bench_read_sizes(
    args: argparse.Namespace, field: list[Contender], log: Callable[[str], None]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    full = build_stream(args.events)
    mean_event_bytes = len(full.data) / full.events
    for size in READ_SIZES:
        # Shorten the stream for tiny reads so one run stays within --max-reads feeds.
        budget_events = int(args.max_reads * size / mean_event_bytes)
        workload = full if budget_events >= args.events else build_stream(max(budget_events, 8))
        reads = split(workload.data, size)
        warmup = split(build_stream(8).data, size)
        check_chat_result(reads, workload)
        log(
            f"  read size {_size(size)}: {workload.events:,} events, "
            f"{len(workload.data) / 1e6:.2f} MB, {len(reads):,} reads"
        )
        for contender in field:
            row: dict[str, Any] = {
                "read_size": size,
                "decoder": contender.name,
                "layer": contender.layer,
                "status": contender.status,
                "events": workload.events,
                "bytes": len(workload.data),
                "reads": len(reads),
                "repeat": args.repeat,
            }
            if contender.runner is not None:
                expected = workload.events
                timing = measure(contender.runner, reads, expected, args.repeat, warmup)
                row.update(_rates(timing, workload.events, len(workload.data)))
                row["runs_ns"] = timing.runs_ns
            rows.append(row)
    return rows


def bench_protocols(args: argparse.Namespace, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every protocol's stream of the same answer, decoded in 16 KiB reads."""
    answer, streams = capture_protocol_streams(args.protocol_events)
    pieces = sum(1 for piece in answer.pieces if piece.kind == "content")
    rows: list[dict[str, Any]] = []
    base: dict[str, Any] | None = None
    for stream in streams:
        reads = split(stream.data, PROTOCOL_READ_SIZE)
        chunks = check_protocol_result(stream, reads, answer.content)
        log(
            f"  protocol {stream.protocol.name}: {stream.events:,} events, {pieces:,} pieces, "
            f"{len(stream.data) / 1e6:.2f} MB, {len(reads):,} reads"
        )
        timing = measure(run_protocol(stream), reads, stream.events, args.repeat, reads)
        row: dict[str, Any] = {
            "protocol": stream.protocol.name,
            "events": stream.events,
            "pieces": pieces,
            "chunks": chunks,
            "bytes": len(stream.data),
            "bytes_per_event": len(stream.data) / stream.events,
            "read_size": PROTOCOL_READ_SIZE,
            "reads": len(reads),
            "repeat": args.repeat,
        }
        row.update(_rates(timing, stream.events, len(stream.data)))
        row["us_per_piece_median"] = timing.median_ns / pieces / 1e3
        row["runs_ns"] = timing.runs_ns
        rows.append(row)
        if stream.protocol is COMPATIBLE:
            base = row
    if base is None:
        raise RuntimeError("the compatible protocol is not registered")
    for row in rows:
        row["ratio_to_compatible_per_event"] = (
            row["us_per_event_median"] / base["us_per_event_median"]
        )
        row["ratio_to_compatible_per_piece"] = (
            row["us_per_piece_median"] / base["us_per_piece_median"]
        )
    return rows


def bench_large_event(
    args: argparse.Namespace, openai: Peer, httpx_sse: Peer, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    sizes: tuple[int, ...] = (64 * KIB, 256 * KIB, MIB) if args.quick else (MIB, 4 * MIB, 16 * MIB)
    limit = 4 * max(sizes)
    decoders: list[tuple[str, Runner | None, str]] = [
        ("qwen feed", _run_large(limit, frames=False), "ok"),
        ("qwen feed_frames", _run_large(limit, frames=True), "ok"),
        ("openai", openai.framing, openai.status),
        ("httpx-sse", httpx_sse.framing, httpx_sse.status),
    ]
    rows: list[dict[str, Any]] = []
    for shape, build in (("one line", large_single_line), ("1 KiB lines", large_many_lines)):
        for size in sizes:
            data = build(size)
            reads = split(data, LARGE_READ_SIZE)
            warmup = split(build(min(sizes)), LARGE_READ_SIZE)
            log(f"  large event, {shape}, {_size(size)}: {len(reads):,} reads of 1 KiB")
            for name, runner, status in decoders:
                row: dict[str, Any] = {
                    "shape": shape,
                    "event_bytes": size,
                    "bytes": len(data),
                    "read_size": LARGE_READ_SIZE,
                    "decoder": name,
                    "status": status,
                }
                if runner is not None:
                    timing = measure(runner, reads, 1, args.repeat, warmup)
                    seconds = timing.median_ns / 1e9
                    row.update(
                        median_ns=timing.median_ns,
                        min_ns=float(timing.min_ns),
                        ms_median=timing.median_ns / 1e6,
                        mb_per_s=len(data) / seconds / 1e6,
                        runs_ns=timing.runs_ns,
                    )
                    if size == max(sizes):
                        row["read_profile"] = read_cost_profile(runner, reads)
                rows.append(row)
    return rows


class _StampedReads:
    """Yields the reads, noting the clock before each; the gaps are the per-read costs."""

    def __init__(self, reads: Sequence[bytes]) -> None:
        self.reads = reads
        self.stamps: list[int] = []

    def __iter__(self) -> Iterator[bytes]:
        clock = time.perf_counter_ns
        stamps = self.stamps
        for data in self.reads:
            stamps.append(clock())
            yield data
        stamps.append(clock())


def read_cost_profile(runner: Runner, reads: Sequence[bytes]) -> dict[str, float]:
    """Mean cost of a read early in the event against one late in it (linear: about 1).

    A decoder that re-copies or re-scans what it has buffered makes every read dearer than
    the one before, which shows here however fast the memory is; a step in cost per byte
    between event sizes (caches) does not.
    """
    trials: list[tuple[float, float]] = []
    for _ in range(3):
        stamped = _StampedReads(reads)
        gc.collect()
        runner(stamped)
        gaps = [later - earlier for earlier, later in itertools.pairwise(stamped.stamps)]
        count = len(gaps)
        early = statistics.fmean(gaps[count // 8 : 3 * count // 8])
        late = statistics.fmean(gaps[5 * count // 8 : 7 * count // 8])
        trials.append((late / early, early))
    ratio, early = sorted(trials)[1]
    return {"early_ns_per_read": early, "late_ns_per_read": early * ratio, "late_over_early": ratio}


def linearity(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per decoder and shape: time ratios between sizes, cost per MiB, late/early reads."""
    out: list[dict[str, Any]] = []
    keys = dict.fromkeys((row["shape"], row["decoder"]) for row in rows if "median_ns" in row)
    for shape, decoder in keys:
        series = [
            row
            for row in rows
            if row["shape"] == shape and row["decoder"] == decoder and "median_ns" in row
        ]
        series.sort(key=lambda row: row["event_bytes"])
        base = series[0]
        largest = series[-1]
        out.append(
            {
                "shape": shape,
                "decoder": decoder,
                "base_bytes": base["event_bytes"],
                "time_ratios": {
                    str(row["event_bytes"] // base["event_bytes"]): row["median_ns"]
                    / base["median_ns"]
                    for row in series[1:]
                },
                "ms_per_mib": {
                    str(row["event_bytes"]): row["median_ns"] / 1e6 / (row["event_bytes"] / MIB)
                    for row in series
                },
                "largest_bytes": largest["event_bytes"],
                "late_over_early_read_cost": largest.get("read_profile", {}).get("late_over_early"),
            }
        )
    return out


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def median_at(decoder: str) -> dict[str, Any] | None:
        for row in rows:
            if row["read_size"] == TARGET_READ_SIZE and row["decoder"] == decoder:
                return row if "median_ns" in row else None
        return None

    full = median_at("qwen chat")
    ours = median_at("qwen feed")
    openai = median_at("openai")
    full_us = None if full is None else full["us_per_event_median"]
    speedup = (
        None if ours is None or openai is None else ours["events_per_s"] / openai["events_per_s"]
    )
    frames = median_at("qwen feed_frames")
    return {
        "full_path_us_per_event_16k": {
            "issue": 2,
            "value": full_us,
            "target_max": TARGET_FULL_US_PER_EVENT,
            "pass": None if full_us is None else full_us <= TARGET_FULL_US_PER_EVENT,
        },
        "framing_speedup_vs_openai_16k": {
            "issue": 2,
            "value": speedup,
            "target_min": TARGET_FRAMING_SPEEDUP,
            "pass": None if speedup is None else speedup >= TARGET_FRAMING_SPEEDUP,
            "feed_frames_value": (
                None
                if frames is None or openai is None
                else frames["events_per_s"] / openai["events_per_s"]
            ),
        },
        "full_path_us_per_event_16k_issue_11": {
            "issue": 11,
            "value": full_us,
            "target_max": TARGET_FULL_US_PER_EVENT_ISSUE_11,
            "pass": None if full_us is None else full_us <= TARGET_FULL_US_PER_EVENT_ISSUE_11,
        },
    }


# ---------------------------------------------------------------------------------------
# Environment and output


def environment() -> dict[str, Any]:
    return benchenv.environment(("qwen-sse", "msgspec", "openai", "httpx-sse", "httpx", "httpx2"))


def _size(size: int) -> str:
    if size >= MIB and size % MIB == 0:
        return f"{size // MIB} MiB"
    if size >= KIB and size % KIB == 0:
        return f"{size // KIB} KiB"
    return f"{size} B"


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def _short(status: str) -> str:
    return status.partition(" (")[0]


def throughput_table(rows: list[dict[str, Any]]) -> list[str]:
    header = (
        f"{'read':>7}  {'decoder':<17} {'layer':<13} {'us/ev med':>9} {'us/ev min':>9} "
        f"{'ev/s':>11} {'MB/s':>8} {'x openai':>8}"
    )
    lines = [header, "-" * len(header)]
    for size in READ_SIZES:
        block = [row for row in rows if row["read_size"] == size]
        base = {row["decoder"]: row.get("events_per_s") for row in block}
        for row in block:
            name = row["decoder"]
            if "median_ns" not in row:
                lines.append(
                    f"{_size(size):>7}  {name:<17} {row['layer']:<13} {_short(row['status'])}"
                )
                continue
            reference = base.get("openai" if row["layer"] == FRAMING else "openai+json")
            ratio = None if reference is None else row["events_per_s"] / reference
            lines.append(
                f"{_size(size):>7}  {name:<17} {row['layer']:<13} "
                f"{row['us_per_event_median']:>9.3f} {row['us_per_event_min']:>9.3f} "
                f"{row['events_per_s']:>11,.0f} {row['mb_per_s']:>8.1f} "
                f"{_fmt(ratio, '.2f', 'x'):>8}"
            )
        lines.append("")
    return lines


def large_table(rows: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> list[str]:
    header = f"{'shape':<12} {'size':>7}  {'decoder':<17} {'ms med':>9} {'MB/s':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        start = f"{row['shape']:<12} {_size(row['event_bytes']):>7}  {row['decoder']:<17}"
        if "median_ns" not in row:
            lines.append(f"{start} {_short(row['status'])}")
        else:
            lines.append(f"{start} {row['ms_median']:>9.2f} {row['mb_per_s']:>8.1f}")
    lines.append("")
    lines.append("linearity: t(kx)/t(1x) is the median time against the smallest size (linear: k);")
    lines.append("late/early is the mean cost of a read in the last quarter of the largest event")
    lines.append("against one in the first quarter (linear: ~1; growing work per read shows here,")
    lines.append("a cache-size step in cost per byte between sizes does not)")
    for entry in ratios:
        parts = ", ".join(
            f"t({k}x)/t(1x) = {value:5.2f}" for k, value in entry["time_ratios"].items()
        )
        per_mib = " ".join(f"{value:.2f}" for value in entry["ms_per_mib"].values())
        lines.append(
            f"  {entry['shape']:<12} {entry['decoder']:<17} 1x = {_size(entry['base_bytes'])}: "
            f"{parts}; ms/MiB {per_mib}; late/early "
            f"{_fmt(entry['late_over_early_read_cost'], '.2f')}"
        )
    return lines


def protocol_table(rows: list[dict[str, Any]]) -> list[str]:
    header = (
        f"{'protocol':<18} {'events':>7} {'pieces':>7} {'B/ev':>6} {'us/ev med':>9} "
        f"{'us/ev min':>9} {'us/piece':>8} {'x compat':>8}"
    )
    lines = [
        f"protocols: the same answer in every protocol, ChatStreamDecoder.feed in "
        f"{_size(PROTOCOL_READ_SIZE)} reads",
        header,
        "-" * len(header),
    ]
    for row in rows:
        lines.append(
            f"{row['protocol']:<18} {row['events']:>7,} {row['pieces']:>7,} "
            f"{row['bytes_per_event']:>6.0f} {row['us_per_event_median']:>9.3f} "
            f"{row['us_per_event_min']:>9.3f} {row['us_per_piece_median']:>8.3f} "
            f"{row['ratio_to_compatible_per_event']:>7.2f}x"
        )
    return lines


def target_lines(result: dict[str, Any]) -> list[str]:
    full = result["full_path_us_per_event_16k"]
    speed = result["framing_speedup_vs_openai_16k"]
    full_11 = result["full_path_us_per_event_16k_issue_11"]

    def verdict(passed: bool | None) -> str:
        return "n/a" if passed is None else ("PASS" if passed else "MISS")

    return [
        "targets (information only, a miss never changes the exit status):",
        f"  issue 2: full path us/event at 16 KiB reads: {_fmt(full['value'], '.3f')} us "
        f"(target <= {TARGET_FULL_US_PER_EVENT}) {verdict(full['pass'])}",
        f"  issue 2: framing speedup vs openai-python at 16 KiB reads: "
        f"{_fmt(speed['value'], '.2f', 'x')} "
        f"(target >= {TARGET_FRAMING_SPEEDUP:g}x) {verdict(speed['pass'])}"
        f"  [feed_frames: {_fmt(speed['feed_frames_value'], '.2f', 'x')}]",
        f"  issue 11: full path us/event at 16 KiB reads: {_fmt(full_11['value'], '.3f')} us "
        f"(target <= {TARGET_FULL_US_PER_EVENT_ISSUE_11}) {verdict(full_11['pass'])}",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=50_000, help="SSE events in the stream")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per measurement")
    parser.add_argument(
        "--max-reads", type=int, default=400_000, help="cap on feed calls per run (tiny reads)"
    )
    parser.add_argument(
        "--protocol-events",
        type=int,
        default=20_000,
        help="text pieces of the answer each protocol streams (about as many events; "
        f"at most {PROTOCOL_MAX_PIECES:,}, {PROTOCOL_MODEL}'s max output tokens)",
    )
    benchenv.add_report_options(parser)
    parser.add_argument("--no-large", action="store_true", help="skip the large-event section")
    args = parser.parse_args(argv)
    if args.quick:
        args.events = min(args.events, 200)
        args.repeat = min(args.repeat, 2)
        args.max_reads = min(args.max_reads, 5_000)
        args.protocol_events = min(args.protocol_events, 200)
    if args.events < 8 or args.repeat < 1 or args.max_reads < 1:
        parser.error("--events must be >= 8, --repeat and --max-reads >= 1")
    if not 1 <= args.protocol_events <= PROTOCOL_MAX_PIECES:
        parser.error(f"--protocol-events must be in 1..{PROTOCOL_MAX_PIECES:,}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    openai = load_openai()
    httpx_sse = load_httpx_sse()
    env = environment()
    log(
        f"bench_sse: Python {platform.python_version()}, {env['cpu_model']}, "
        f"qwen-sse {env['packages']['qwen-sse']}, msgspec {env['packages']['msgspec']}, "
        f"openai {env['packages']['openai'] or '-'}, "
        f"httpx-sse {env['packages']['httpx-sse'] or '-'}"
    )
    log(
        f"events={args.events:,} repeat={args.repeat} max_reads={args.max_reads:,} "
        f"protocol_events={args.protocol_events:,}"
    )
    rows = bench_read_sizes(args, contenders(openai, httpx_sse), log)
    large = [] if args.no_large else bench_large_event(args, openai, httpx_sse, log)
    by_protocol = bench_protocols(args, log)
    ratios = linearity(large)
    goal = targets(rows)

    log("")
    log("\n".join(throughput_table(rows)))
    if large:
        log("\n".join(large_table(large, ratios)))
        log("")
    log("\n".join(protocol_table(by_protocol)))
    log("")
    log("\n".join(target_lines(goal)))

    workload = build_stream(args.events)
    document = {
        "benchmark": "bench_sse",
        "schema": 1,
        "config": {
            "events": args.events,
            "repeat": args.repeat,
            "max_reads": args.max_reads,
            "protocol_events": args.protocol_events,
            "protocol_read_size": PROTOCOL_READ_SIZE,
            "quick": args.quick,
            "read_sizes": list(READ_SIZES),
            "statistic": "median and min of repeat runs, perf_counter_ns, one warm-up",
            "gc": "enabled; gc.collect() before each timed run",
            "mb": "10**6 bytes of the raw stream",
        },
        "workload": {
            "events": workload.events,
            "bytes": len(workload.data),
            "mean_event_bytes": len(workload.data) / workload.events,
        },
        "environment": env,
        "peers": {peer.name: peer.status for peer in (openai, httpx_sse)},
        "throughput": rows,
        "large_event": large,
        "linearity": ratios,
        "protocols": by_protocol,
        "targets": goal,
    }
    benchenv.emit(document, args.json or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

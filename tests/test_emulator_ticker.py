"""Tests of the emulator's fast path: a fault-free stream rendered ahead of time
(qwen_sse.emulator.script) and written by the loop's one timer (qwen_sse.emulator.ticker).

The ticker runs on a fake clock here, so the laws (no step before its time, a late step
does not delay the next) are checked exactly; over loopback, the fast path must send the
very bytes the event-by-event path sends, in every protocol.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from qwen_sse import protocols
from qwen_sse.emulator import Emulator, EmulatorConfig, Fault, emulated_answer
from qwen_sse.emulator.accounting import answer_usage, prompt_tokens
from qwen_sse.emulator.faults import Pacer
from qwen_sse.emulator.framing import Answering
from qwen_sse.emulator.framing.compatible import COMPATIBLE_FRAMING
from qwen_sse.emulator.records import Outcome, RecordedRequest
from qwen_sse.emulator.script import Script, render
from qwen_sse.emulator.ticker import TICK_S, Playing, Ticker
from qwen_sse.sse import SSEDecoder

KEY = "sk-test"
BODY: dict[str, Any] = {
    "model": "qwen-plus",
    "messages": [{"role": "user", "content": "Tell me about streaming."}],
    "stream": True,
    "stream_options": {"include_usage": True},
}


def answering(body: dict[str, Any], *, line_ending: str = "\n") -> Answering:
    answers = tuple(emulated_answer(body, choice=c) for c in range(body.get("n") or 1))
    usage = answer_usage(body, answers, prompt_tokens(body, body["messages"]))
    return Answering("req-1", body, answers, usage, line_ending, 1_700_000_000)  # type: ignore[arg-type]


def compatible_script(
    body: dict[str, Any], config: EmulatorConfig, *, no_done: bool = False
) -> Script:
    frames, events = COMPATIBLE_FRAMING.reply_to(body, {}).stream(answering(body))
    outcome: Outcome = "no_done" if no_done else "completed"
    return render(events(no_done), frames, Pacer(config, 7, started_s=0.0), outcome=outcome)


def dechunked(chunk: bytes) -> list[bytes]:
    """The HTTP/1.1 chunks of ``chunk``, which must hold whole chunks only."""
    out = []
    while chunk:
        size_line, _, rest = chunk.partition(b"\r\n")
        size = int(size_line, 16)
        assert rest[size : size + 2] == b"\r\n"
        out.append(rest[:size])
        chunk = rest[size + 2 :]
    return out


# --- render --------------------------------------------------------------------------------


def test_a_rendered_stream_is_one_chunk_an_event_with_the_pacers_delays() -> None:
    config = EmulatorConfig(ttft_s=0.15, itl_s=0.02, jitter_s=0.01, seed=3)
    script = compatible_script(BODY, config)
    answer = emulated_answer(BODY)
    # The delays are the pacer's draws, in order: the time to first token, then one a
    # wait (a piece of several tokens waits for each; the first token is the TTFT's).
    reference = Pacer(config, 7, started_s=0.0)
    waits = [piece.tokens for piece in answer.pieces]
    waits[0] -= 1
    expected = [reference.first_delay_s()] + [reference.tokens_delay_s(n) for n in waits if n]
    assert script.delays_s == expected
    assert len(set(script.delays_s)) > 2  # jittered
    # Each step's chunks are the events, whole; together they decode to the stream.
    events = [dechunked(chunk) for chunk in script.chunks]
    assert script.events == [len(step) for step in events]
    assert script.sse_bytes == [sum(map(len, step)) for step in events]
    data = [e.data for e in SSEDecoder().feed(b"".join(b"".join(step) for step in events))]
    assert data[-1] == "[DONE]"
    frames: list[Any] = [json.loads(item) for item in data[:-1]]
    assert frames[-1]["usage"]["completion_tokens"] == answer.completion_tokens
    texts = [f["choices"][0]["delta"]["content"] for f in frames[1:-1] if f["choices"]]
    assert "".join(texts) == answer.content
    # The role chunk goes with the first piece; the finish, usage and [DONE] with the last.
    assert script.events[0] == 2
    assert script.events[-1] == 4
    assert [kind for kinds in script.kinds for kind in kinds] == [p.kind for p in answer.pieces]
    assert script.outcome == "completed"


def test_a_no_done_script_ends_without_the_marker() -> None:
    script = compatible_script(BODY, EmulatorConfig(), no_done=True)
    assert script.outcome == "no_done"
    assert b"[DONE]" not in b"".join(script.chunks)


# --- the ticker, on a fake clock --------------------------------------------------------------


class FakeTransport(asyncio.WriteTransport):
    """Keeps what is written, and when (the fake clock's time)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.writes: list[tuple[float, bytes]] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing
        self.writes.append((self.clock.now_s, bytes(data)))

    def is_closing(self) -> bool:
        return self.closing


class FakeClock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def record() -> RecordedRequest:
    return RecordedRequest("POST", "/", CIMultiDictProxy(CIMultiDict()))


def script_of(delays_s: list[float]) -> Script:
    script = Script("completed")
    script.delays_s = list(delays_s)
    script.chunks = [b"%d;" % index for index in range(len(delays_s))]
    script.events = [1] * len(delays_s)
    script.sse_bytes = [10 + index for index in range(len(delays_s))]
    script.kinds = [("content",)] * len(delays_s)
    return script


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # Not running: the ticker's timer is set on it but never fires; the tests tick.
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@settings(max_examples=60, deadline=None)
@given(
    delays_ms=st.lists(st.floats(min_value=0, max_value=40), min_size=1, max_size=30),
    ticks_ms=st.lists(st.floats(min_value=0, max_value=60), min_size=1, max_size=80),
    arrived_ago_ms=st.floats(min_value=0, max_value=100),
)
def test_no_step_before_its_time_and_a_late_step_does_not_delay_the_next(
    delays_ms: list[float], ticks_ms: list[float], arrived_ago_ms: float
) -> None:
    event_loop = asyncio.new_event_loop()
    try:
        clock = FakeClock(1000.0)
        ticker = Ticker(event_loop, clock=clock)
        transport = FakeTransport(clock)
        script = script_of([delay / 1000 for delay in delays_ms])
        kept = record()
        started_s = clock.now_s - arrived_ago_ms / 1000
        playing = ticker.play(transport, script, kept, started_s=started_s, keep_times=True)
        # Each step is due on the stream's schedule, from the request's arrival.
        due_s = list(itertools.accumulate(script.delays_s, initial=started_s))[1:]
        for gap_ms in [*ticks_ms, 10_000.0]:
            clock.now_s += gap_ms / 1000
            ticker.write_due(clock.now_s)
            written = len(transport.writes)
            # Never before its time; and once the clock is a tick past a step's time, that
            # step and all those before it are written, however late the ticks come.
            assert all(at >= due_s[index] for index, (at, _) in enumerate(transport.writes))
            assert written == len(script.chunks) or due_s[written] > clock.now_s - 2 * TICK_S
        assert [data for _, data in transport.writes] == script.chunks
        assert playing.done.result() == "completed"
        assert kept.events_sent == len(script.chunks)
        assert kept.bytes_sent == sum(script.sse_bytes)
        assert kept.written == [("content", at) for at, _ in transport.writes]
    finally:
        event_loop.close()


def test_steps_come_on_time_after_a_late_one(loop: asyncio.AbstractEventLoop) -> None:
    clock = FakeClock(50.0)
    ticker = Ticker(loop, clock=clock)
    transport = FakeTransport(clock)
    script = script_of([0.15, 0.02, 0.02, 0.02, 0.02])
    ticker.play(transport, script, record(), started_s=clock.now_s, keep_times=False)
    ticker.write_due(50.15 - 1e-6)
    assert transport.writes == []
    # 70 ms late: the first step and the three that fell due meanwhile go at once...
    clock.now_s = 50.22
    ticker.write_due(clock.now_s)
    assert [data for _, data in transport.writes] == script.chunks[:4]
    # ... and the last is due on the schedule, not 20 ms after the late writes.
    ticker.write_due(50.23 - 1e-6)
    assert len(transport.writes) == 4
    clock.now_s = 50.23 + TICK_S * 1.5
    ticker.write_due(clock.now_s)
    assert len(transport.writes) == 5


def test_the_schedule_runs_from_the_requests_arrival(loop: asyncio.AbstractEventLoop) -> None:
    # The request arrived 40 ms before its stream was handed over (read, rendered, headers
    # sent): the first step is due 150 ms after the arrival, not after the hand-over.
    clock = FakeClock(20.04)
    ticker = Ticker(loop, clock=clock)
    transport = FakeTransport(clock)
    ticker.play(transport, script_of([0.15, 0.02]), record(), started_s=20.0, keep_times=False)
    ticker.write_due(20.15 - 1e-6)
    assert transport.writes == []
    clock.now_s = 20.15 + TICK_S * 1.5
    ticker.write_due(clock.now_s)
    assert len(transport.writes) == 1
    # A stream whose first step fell due before the hand-over starts at once.
    late = FakeTransport(clock)
    ticker.play(late, script_of([0.01, 0.5]), record(), started_s=20.0, keep_times=False)
    assert [data for _, data in late.writes] == [b"0;"]


def test_without_keep_times_nothing_is_kept_per_piece(loop: asyncio.AbstractEventLoop) -> None:
    clock = FakeClock(10.0)
    kept = record()
    playing = Ticker(loop, clock=clock).play(
        FakeTransport(clock), script_of([0.0, 0.0]), kept, started_s=clock.now_s, keep_times=False
    )
    # Nothing to wait for: written at once.
    assert playing.done.result() == "completed"
    assert kept.written == []
    assert kept.events_sent == 2


class Started(NamedTuple):
    """One stream the ticker plays from 10.0 s on a fake clock, and what it writes to."""

    clock: FakeClock
    ticker: Ticker
    transport: FakeTransport
    kept: RecordedRequest
    playing: Playing

    def tick_at(self, now_s: float) -> None:
        self.clock.now_s = now_s
        self.ticker.write_due(now_s)


def started(loop: asyncio.AbstractEventLoop, delays_s: list[float]) -> Started:
    clock = FakeClock(10.0)
    ticker = Ticker(loop, clock=clock)
    transport = FakeTransport(clock)
    kept = record()
    playing = ticker.play(
        transport, script_of(delays_s), kept, started_s=clock.now_s, keep_times=False
    )
    return Started(clock, ticker, transport, kept, playing)


def test_a_closed_connection_ends_the_stream(loop: asyncio.AbstractEventLoop) -> None:
    stream = started(loop, [0.01, 0.01, 0.01])
    stream.tick_at(10.0115)
    assert len(stream.transport.writes) == 1
    stream.transport.closing = True
    stream.tick_at(11.0)
    assert stream.playing.done.result() == "client_disconnected"
    assert len(stream.transport.writes) == 1
    # The record counts what was written: the first step, its event and its bytes.
    assert (stream.kept.events_sent, stream.kept.bytes_sent) == (1, 10)


def test_a_closed_player_writes_nothing_more(loop: asyncio.AbstractEventLoop) -> None:
    stream = started(loop, [0.01, 0.01])
    stream.playing.close()
    stream.tick_at(11.0)
    assert stream.transport.writes == []
    assert stream.playing.done.cancelled()


def test_a_player_closed_mid_stream_counts_what_it_wrote(
    loop: asyncio.AbstractEventLoop,
) -> None:
    stream = started(loop, [0.0, 0.01, 0.01])
    stream.tick_at(10.0115)
    assert len(stream.transport.writes) == 2
    stream.playing.close()
    stream.playing.close()  # counted once
    assert stream.playing.done.cancelled()
    assert (stream.kept.events_sent, stream.kept.bytes_sent) == (2, 10 + 11)


# --- over loopback: the same bytes either way --------------------------------------------------


def normalized(body: bytes) -> bytes:
    """The body without its creation times (a second may tick between two requests)."""
    return re.sub(rb'("created(?:_at)?":)\d+', rb"\g<1>0", body)


async def body_of(
    session: aiohttp.ClientSession, protocol: str, extra: dict[str, Any], fault: Fault | None
) -> tuple[bytes, RecordedRequest]:
    """The body of the first request an emulator of seed 5 answers (so its request id is
    the same every time)."""
    wire = protocols.get(protocol)
    config = EmulatorConfig(ttft_s=0, itl_s=0, seed=5)
    async with Emulator(config) as emu:
        body = wire.request_body("qwen-plus", BODY["messages"], extra, include_usage=True)
        headers = wire.headers(KEY) | (fault.header() if fault is not None else {})
        url = emu.base_url_for(protocol) + wire.path
        async with session.post(url, json=body, headers=headers) as resp:
            assert resp.status == 200
            received = await resp.read()
        (kept,) = emu.requests
    return received, kept


@pytest.mark.parametrize(
    ("protocol", "extra"),
    [(name, {}) for name in protocols.NAMES] + [("compatible", {"enable_thinking": True, "n": 2})],
)
async def test_the_ticker_sends_the_bytes_the_streamer_sends(
    protocol: str, extra: dict[str, Any]
) -> None:
    # A stall of no time sends the stream event by event through the Streamer.
    through_streamer = Fault(stall_after_events=1, stall_s=0)
    async with aiohttp.ClientSession() as session:
        ticked, ticked_record = await body_of(session, protocol, extra, None)
        streamed, streamed_record = await body_of(session, protocol, extra, through_streamer)
    assert normalized(ticked) == normalized(streamed)
    assert ticked_record.outcome == streamed_record.outcome == "completed"
    assert ticked_record.events_sent == streamed_record.events_sent
    assert ticked_record.bytes_sent == streamed_record.bytes_sent == len(ticked)
    assert [kind for kind, _ in ticked_record.written] == [
        kind for kind, _ in streamed_record.written
    ]


async def test_a_client_that_leaves_mid_stream_releases_it() -> None:
    config = EmulatorConfig(ttft_s=0, itl_s=0.05, answer_tokens=200)
    async with Emulator(config) as emu, aiohttp.ClientSession() as session:
        url = f"{emu.base_url}/chat/completions"
        async with session.post(url, json=BODY, headers={"Authorization": f"Bearer {KEY}"}) as resp:
            assert await resp.content.readany()
            assert emu.active_streams == 1
            resp.close()
        for _ in range(500):
            if emu.active_streams == 0 and emu.requests[0].outcome != "pending":
                break
            await asyncio.sleep(0.01)
        assert emu.active_streams == 0
        assert emu.requests[0].outcome == "client_disconnected"
        assert emu.requests[0].events_sent < 200


@pytest.mark.parametrize(
    "fault",
    [
        Fault(drop_after_events=3),
        Fault(drop_after_bytes=100),
        Fault(stall_after_events=1, stall_s=0),
        Fault(error_after_events=2),
        Fault(malformed_after_events=1),
        Fault(write_bytes=7),
        Fault(huge_event_bytes=1000),
    ],
)
def test_a_fault_that_rewrites_the_stream_takes_the_streamer(fault: Fault) -> None:
    assert fault.rewrites_stream


def test_line_endings_no_done_and_headers_keep_the_ticker() -> None:
    fault = Fault(line_ending="\r\n", no_done=True, retry_after="3", content_type="text/plain")
    assert not fault.rewrites_stream
    assert not Fault().rewrites_stream

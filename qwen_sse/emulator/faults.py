"""Faults and pacing: what to do wrong with one response (:class:`Fault`), and the
:class:`Streamer` that writes a response's events with that fault's effects, at the pace
:class:`Pacer` sets.

A framing describes a stream without I/O (:data:`Events`): its events in order, with the
waits for the tokens between them (:func:`paced`). The :class:`Streamer` plays that for a
faulty stream, event by event; a fault-free one is rendered ahead of time and written by
the loop's ticker (:mod:`qwen_sse.emulator.script`, :mod:`qwen_sse.emulator.ticker`).

Edge layer (part of :mod:`qwen_sse.emulator`): it writes to an ``aiohttp.web`` response;
what an event looks like is the framings' business (:class:`FaultFrames`).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec
from aiohttp import web

from qwen_sse.emulator.answers import EmulatedAnswer, Piece, seed_of
from qwen_sse.emulator.rejects import IN_BAND_CODE, IN_BAND_MESSAGE
from qwen_sse.sse import encode_comment

if TYPE_CHECKING:
    from qwen_sse.emulator.config import EmulatorConfig
    from qwen_sse.emulator.records import Outcome, RecordedRequest

__all__ = [
    "FAULT_HEADER",
    "Event",
    "Events",
    "Fault",
    "FaultFrames",
    "Item",
    "LineEnding",
    "Pacer",
    "Stop",
    "Streamer",
    "check_count",
    "fault_decoder",
    "paced",
]

FAULT_HEADER = "X-Emulator-Fault"
"""Request header carrying a JSON :class:`Fault` for that request only."""

LineEnding = Literal["\n", "\r\n", "\r"]


def check_count(name: str, value: int | None, minimum: int = 0) -> None:
    """Raise ValueError unless ``value`` is None or at least ``minimum``."""
    if value is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


class Fault(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to do wrong with one response. Every field is optional; unset means normal.

    Event counts ("after N events") count ``data:`` events already written, the role chunk,
    usage chunk and ``[DONE]`` included; comments are not events. A count larger than the
    stream never triggers. Stream effects apply to streaming responses only.

    * ``status`` (400-599): answer with that HTTP status and DashScope's error body, using
      ``code`` and ``message`` or the status's usual ones (429: ``limit_requests``).
    * ``retry_after`` / ``retry_after_ms``: values of the ``Retry-After`` (seconds or an
      HTTP date) and ``retry-after-ms`` headers, sent with the response.
    * ``drop_after_events`` / ``drop_after_bytes``: abort the connection after that many
      events, or after exactly that many body bytes (mid-line, mid-character, between CR
      and LF as it falls), so the client sees a broken chunked body, not a clean end.
    * ``stall_after_events`` + ``stall_s``: pause that long, sending ``: keep-alive``
      comments every ``keepalive_every_s`` if set, then continue normally.
    * ``error_after_events``: send the in-band error frame (``data_inspection_failed``, or
      ``code``/``message``), then end the body cleanly without ``[DONE]``.
    * ``no_done``: end the body cleanly without ``data: [DONE]``.
    * ``malformed_after_events``: insert one data frame of broken JSON, then continue.
    * ``line_ending``: the SSE line ending, LF, CRLF or CR.
    * ``write_bytes``: write the body in pieces of at most this many bytes, one write each.
    * ``huge_event_bytes``: insert, after the role chunk, one chunk whose ``data`` line
      value is that many bytes (its content padded with ``x``; at least the chunk's JSON).
    * ``content_type``: the 200 response's content type; a type containing ``json`` gets
      the non-streaming ``chat.completion`` body, any other the usual event stream.

    Every protocol takes the same faults, in its own terms (see its framing in
    :mod:`qwen_sse.emulator.framing`): codes in its spelling (native ``limit_requests`` is
    ``Throttling.RateQuota``, Anthropic's ``rate_limit_error``...); an event is a whole
    SSE event, with its ``id``, ``event`` and comment lines; ``error_after_events`` sends
    the protocol's in-band error event; ``no_done`` ends just before the protocol's end
    marker (native: the frame with the finish reason; Responses: ``response.completed``;
    Anthropic: ``message_stop``); ``huge_event_bytes`` pads a text delta of the open output
    item or block (native: a frame after the first; Responses and Anthropic: before the
    first delta). A native stream keeps its frames under any ``content_type``, as DashScope
    sends error frames under ``application/json``.
    """

    status: int | None = None
    code: str | None = None
    message: str | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    drop_after_events: int | None = None
    drop_after_bytes: int | None = None
    stall_after_events: int | None = None
    stall_s: float = 0.0
    keepalive_every_s: float | None = None
    error_after_events: int | None = None
    no_done: bool = False
    malformed_after_events: int | None = None
    line_ending: LineEnding = "\n"
    write_bytes: int | None = None
    huge_event_bytes: int | None = None
    content_type: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {self.status}")
        for name in (
            "drop_after_events",
            "drop_after_bytes",
            "stall_after_events",
            "error_after_events",
            "malformed_after_events",
            "huge_event_bytes",
        ):
            check_count(name, getattr(self, name))
        check_count("write_bytes", self.write_bytes, 1)
        if self.stall_s < 0:
            raise ValueError(f"stall_s must not be negative, got {self.stall_s}")
        if self.keepalive_every_s is not None and self.keepalive_every_s <= 0:
            raise ValueError(f"keepalive_every_s must be positive, got {self.keepalive_every_s}")

    def to_json(self) -> str:
        """The JSON of the fields that are set, as the ``X-Emulator-Fault`` header wants it."""
        return json.dumps(
            {
                name: value
                for name in self.__struct_fields__
                if (value := getattr(self, name)) != getattr(_NO_FAULT, name)
            },
            separators=(",", ":"),
        )

    def header(self) -> dict[str, str]:
        """``{"X-Emulator-Fault": <json>}``, to merge into one request's headers."""
        return {FAULT_HEADER: self.to_json()}

    @property
    def rewrites_stream(self) -> bool:
        """Whether it changes a stream's events or writes (drops, stalls, errors, malformed
        or huge events, small writes), beyond its line ending and ``no_done``."""
        return (
            self.drop_after_events is not None
            or self.drop_after_bytes is not None
            or self.stall_after_events is not None
            or self.error_after_events is not None
            or self.malformed_after_events is not None
            or self.write_bytes is not None
            or self.huge_event_bytes is not None
        )


_NO_FAULT = Fault()
fault_decoder = msgspec.json.Decoder(Fault)
"""Decodes an ``X-Emulator-Fault`` header."""


class Stop(Exception):
    """Ends a stream early; ``aborted`` when the connection was cut rather than ended."""

    def __init__(self, outcome: Outcome, *, aborted: bool) -> None:
        super().__init__(outcome)
        self.outcome: Outcome = outcome
        self.aborted = aborted


class FaultFrames(Protocol):
    """What :class:`Streamer` needs of a protocol's frames to apply a fault.

    ``huge_after`` is the number of events sent before the huge event goes in: those
    before the first that carries text (1 in compatible mode: the role chunk).
    """

    huge_after: int

    def numbered(self, frame: bytes, number: int) -> bytes:
        """``frame`` as sent as the ``number``-th event (from 1)."""

    def error(self, code: str, message: str) -> bytes:
        """The in-band error frame."""

    def malformed(self) -> bytes:
        """A frame whose data is broken JSON."""

    def huge(self, size: int) -> bytes:
        """A text frame whose data line value is ``size`` bytes (at least its JSON)."""


class Streamer:
    """Writes one response's events, applying the fault's stream effects on the way, at
    ``pacer``'s pace; after a stall, the pacer counts its tokens from the stall's end."""

    __slots__ = (
        "_fault",
        "_frames",
        "_huge_sent",
        "_keepalive",
        "_malformed_sent",
        "_pacer",
        "_request",
        "_resp",
        "_stalled",
        "record",
    )

    def __init__(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        frames: FaultFrames,
        fault: Fault | None,
        record: RecordedRequest,
        *,
        pacer: Pacer,
    ) -> None:
        self._request = request
        self._resp = resp
        self._frames = frames
        self._fault = fault
        self.record = record
        self._pacer = pacer
        self._stalled = False
        self._malformed_sent = False
        self._huge_sent = False
        line_ending = fault.line_ending if fault is not None else "\n"
        self._keepalive = encode_comment(" keep-alive", line_ending)

    async def play(self, events: Iterable[Item]) -> None:
        """Write ``events`` (waiting for their tokens) after the time to first token."""
        pacer = self._pacer
        await pacer.first()
        for item in events:
            if isinstance(item, int):
                await pacer.tokens(item)
            else:
                await self.event(*item)

    async def event(self, frame: bytes, kind: str | None = None) -> None:
        """Write one event; ``kind`` names the answer piece it carries, if it carries one."""
        if self._fault is not None:
            await self._before_event(self._fault)
        if kind is not None:
            # Read before the write: a client may read the bytes before this task runs again.
            self.record.written.append((kind, time.monotonic()))
        await self._emit(frame)

    async def _emit(self, frame: bytes) -> None:
        await self._send(self._frames.numbered(frame, self.record.events_sent + 1))
        self.record.events_sent += 1

    async def _before_event(self, fault: Fault) -> None:
        while True:
            sent = self.record.events_sent
            if sent == fault.stall_after_events and not self._stalled:
                self._stalled = True
                await self._stall(fault)
            if sent == fault.drop_after_events:
                await self._drop()
            if sent == fault.error_after_events:
                await self._emit(
                    self._frames.error(fault.code or IN_BAND_CODE, fault.message or IN_BAND_MESSAGE)
                )
                raise Stop("in_band_error", aborted=False)
            if sent == fault.malformed_after_events and not self._malformed_sent:
                self._malformed_sent = True
                frame = self._frames.malformed()
            elif (
                fault.huge_event_bytes is not None
                and sent == self._frames.huge_after
                and not self._huge_sent
            ):
                self._huge_sent = True
                frame = self._frames.huge(fault.huge_event_bytes)
            else:
                return
            await self._emit(frame)

    async def _stall(self, fault: Fault) -> None:
        every = fault.keepalive_every_s
        if every is None:
            await asyncio.sleep(fault.stall_s)
        else:
            comments, rest = divmod(fault.stall_s, every)
            for _ in range(int(comments)):
                await asyncio.sleep(every)
                await self._send(self._keepalive)
            await asyncio.sleep(rest)
        # The stream continues normally: no burst of the tokens "generated" meanwhile.
        self._pacer.restart()

    async def _send(self, data: bytes) -> None:
        fault = self._fault
        if fault is None:
            await self._resp.write(data)
            self.record.bytes_sent += len(data)
            return
        limit = fault.drop_after_bytes
        if limit is not None and self.record.bytes_sent + len(data) >= limit:
            await self._write(fault, data[: limit - self.record.bytes_sent])
            await self._drop()
        await self._write(fault, data)

    async def _write(self, fault: Fault, data: bytes) -> None:
        step = fault.write_bytes
        if step is None or len(data) <= step:
            await self._resp.write(data)
        else:
            for start in range(0, len(data), step):
                await self._resp.write(data[start : start + step])
        self.record.bytes_sent += len(data)

    async def _drop(self) -> None:
        transport = self._request.transport
        if transport is not None:
            # abort() discards what the transport still buffers; let the kernel take it first
            # so the client receives exactly the bytes written.
            # No event signals an emptied transport buffer, hence the polling.
            while transport.get_write_buffer_size() and not transport.is_closing():  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            transport.abort()
        raise Stop("dropped", aborted=True)


class Pacer:
    """The delays of one stream: ``ttft_s`` first, then ``itl_s``
    per token, each delay moved by the jitter (drawn in that order, so every way of
    sending a stream gets the same delays).

    The delays add up on the stream's own schedule, as a model generates its tokens at its
    pace whatever the writes: token k is due ``ttft_s`` plus k delays after ``started_s``
    (the request's arrival, on ``time.monotonic()``), and a write that comes late does not
    delay the tokens after it. So no token is ever written before its time, and a busy
    server's lateness does not pile up into the gaps between tokens, nor does its work on
    the request before the first token (reading it, rendering the stream, the headers)
    count into the time to first token. :meth:`restart` starts the schedule again from now.
    """

    __slots__ = ("_config", "_due_s", "_number", "_rng", "started_s")

    def __init__(self, config: EmulatorConfig, number: int, *, started_s: float) -> None:
        self._config = config
        self._number = number
        # Seeded at the first draw: a stream without jitter draws nothing.
        self._rng: random.Random | None = None
        self.started_s = started_s
        self._due_s = started_s

    def first_delay_s(self) -> float:
        """The time to first token, jittered (the first draw)."""
        return self._jittered(self._config.ttft_s)

    def tokens_delay_s(self, count: int) -> float:
        """The time ``count`` more tokens take, jittered (the next draw)."""
        return self._jittered(self._config.itl_s * count)

    async def first(self) -> None:
        """Wait for the first token: the time to first token after ``started_s``."""
        self._due_s = self.started_s
        await self._wait(self.first_delay_s())

    async def tokens(self, count: int) -> None:
        """Wait while ``count`` more tokens are generated."""
        await self._wait(self.tokens_delay_s(count))

    def restart(self) -> None:
        """Count the delays to come from now (on ``time.monotonic()``)."""
        self._due_s = time.monotonic()

    def _jittered(self, base_s: float) -> float:
        jitter = self._config.jitter_s
        if not jitter:
            return base_s
        if self._rng is None:
            self._rng = random.Random(seed_of("timing", self._config.seed, self._number))
        return max(0.0, base_s + self._rng.uniform(-jitter, jitter))

    async def _wait(self, delay_s: float) -> None:
        self._due_s += delay_s
        if delay_s and (left_s := self._due_s - time.monotonic()) > 0:
            await asyncio.sleep(left_s)


Event = tuple[bytes, "str | None"]
"""One event of a stream: its frame (unnumbered: see :meth:`FaultFrames.numbered`) and the
kind of the answer piece it carries (:attr:`Piece.kind`; None when it carries none)."""

Item = Event | int
"""What a stream is made of: an event, or a wait while that many tokens are generated."""

Events = Callable[[bool], Iterator[Item]]
"""A response's stream as its framing describes it: its items in order, given whether a
``no_done`` fault holds back its end marker. The time to first token comes before the
first item; faults end a stream early by :class:`Stop`."""


def paced(answers: Sequence[EmulatedAnswer]) -> Iterator[tuple[int, int, Piece]]:
    """Every choice's pieces as a model generates them, each as ``(wait, choice, piece)``:
    ``wait`` tokens are generated before it (0: it comes at once). One token of each choice
    comes every ``itl_s`` (the first at once, the time to first token having passed), a
    piece as soon as its last token is out, the choices side by side (choice 0 first at
    each token)."""
    if len(answers) == 1:
        # The common case, without the schedule: a piece's last token, counted from 0.
        step = -1
        sent = 0
        for piece in answers[0].pieces:
            step += piece.tokens
            if step > sent:
                yield step - sent, 0, piece
                sent = step
            else:
                yield 0, 0, piece
        return
    schedule: list[tuple[int, int, Piece]] = []
    for choice, answer in enumerate(answers):
        step = -1
        for piece in answer.pieces:
            step += piece.tokens
            schedule.append((step, choice, piece))
    schedule.sort(key=lambda entry: entry[:2])
    sent = 0
    for step, choice, piece in schedule:
        if step > sent:
            yield step - sent, choice, piece
            sent = step
        else:
            yield 0, choice, piece

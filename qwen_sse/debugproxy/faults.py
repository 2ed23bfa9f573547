"""What the debugging proxy breaks, and where: :class:`ProxyFault` (the emulator's fault
vocabulary, applied to real upstream traffic, and which exchanges it takes), the seeded
choice of those exchanges (:class:`FaultPicker`) and the cut of one response body
(:class:`FaultCutter`).

Edge layer (part of :mod:`qwen_sse.debugproxy`); no I/O: the cutter turns the upstream's
reads into steps (bytes to forward, a stall, a dropped connection, a clean end) that the
server carries out.

The fields that say *what* goes wrong are the emulator's (:class:`qwen_sse.emulator.Fault`),
with the same names, meanings and checks, so that a team uses one vocabulary against the
emulator and against the real service; events are counted the same way (``data:`` events
forwarded, the role chunk, the usage chunk and the end marker included; comments are not
events). The emulator's faults that would rewrite what the upstream said (an in-band error,
a malformed or huge event, another line ending or content type, re-chunked writes) are not
offered: the proxy only withholds, delays or refuses.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from qwen_sse.emulator import Fault
from qwen_sse.errors import EventTooLargeError
from qwen_sse.protocols import FrameReader
from qwen_sse.sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder

__all__ = ["FaultCutter", "FaultPicker", "ProxyFault", "Step", "fault_headers", "parse_fault"]

# The emulator's fault fields the proxy applies, with the emulator's meaning.
_SHARED = (
    "status",
    "code",
    "message",
    "retry_after",
    "retry_after_ms",
    "drop_after_events",
    "drop_after_bytes",
    "stall_after_events",
    "stall_s",
    "keepalive_every_s",
    "no_done",
)
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


class ProxyFault(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to do wrong with the exchanges it takes; every field is optional.

    What (the emulator's :class:`~qwen_sse.emulator.Fault` fields, same meanings):

    * ``status`` (400-599): answer with that status instead of forwarding, in the
      protocol's error body (DashScope's shape and codes, as the emulator spells them:
      ``code`` and ``message``, or the status's usual ones; 429 ``limit_requests``), with
      ``retry_after`` / ``retry_after_ms`` as ``Retry-After`` and ``retry-after-ms``
      headers. The upstream never sees the request.
    * ``drop_after_events`` / ``drop_after_bytes``: forward that many events (each whole,
      cut at its event boundary) or exactly that many of the upstream's body bytes, then
      abort the application's connection (and the upstream's), so it sees a broken body.
      As in the emulator, a count the stream does not exceed never triggers.
    * ``stall_after_events`` + ``stall_s``: after that many events (0: before the first
      body byte, the response head already sent), pause for ``stall_s``, sending ``:
      keep-alive`` comments every ``keepalive_every_s`` if set (they do not count as the
      upstream's bytes), then go on.
    * ``no_done``: withhold the protocol's end marker (the event its reader ends on:
      ``data: [DONE]``, ``message_stop``, ``response.completed``, the native frame with the
      last finish reason) and end the body cleanly there.

    Which exchanges (requests to a chat endpoint of one of the five protocols):

    * ``model``: only requests for this model (the body's, as the protocol reads it);
    * ``fraction`` (0-1): of those, this share, drawn per request in arrival order from a
      generator seeded with ``seed``, so that a run can be repeated.
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
    no_done: bool = False
    model: str | None = None
    fraction: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        # The emulator's checks, with its messages: one vocabulary, one set of rules.
        Fault(**{name: getattr(self, name) for name in _SHARED})
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be between 0 and 1, got {self.fraction}")

    @property
    def cuts_at_events(self) -> bool:
        """True when the fault acts at event boundaries (so the body must be parsed)."""
        return bool(self.drop_after_events is not None or self.stall_after_events or self.no_done)

    def describe(self) -> str:
        """The fault's set fields as compact JSON (how it shows in the proxy's output)."""
        return json.dumps(
            {
                name: value
                for name in self.__struct_fields__
                if (value := getattr(self, name)) != getattr(_NO_FAULT, name)
            },
            separators=(",", ":"),
        )


_NO_FAULT = ProxyFault()


def parse_fault(text: str) -> ProxyFault:
    """The fault a ``--fault`` JSON object describes; ValueError (one line) for JSON that is
    not an object, an unknown field, an emulator fault the proxy cannot inject, or a value
    out of range."""
    try:
        raw: Any = json.loads(text)
    except ValueError as error:
        raise ValueError(f"the fault is not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError("the fault must be a JSON object")
    emulator_only = sorted(set(raw) & set(Fault.__struct_fields__) - set(_SHARED))
    if emulator_only:
        raise ValueError(
            f"the proxy cannot inject {', '.join(emulator_only)} (the emulator's faults that "
            "rewrite a stream); it takes " + ", ".join(ProxyFault.__struct_fields__)
        )
    return msgspec.convert(raw, ProxyFault)


class FaultPicker:
    """Decides which exchanges take the fault: those for its model, then its ``fraction``
    of them, drawn in arrival order from a generator seeded with its ``seed``."""

    __slots__ = ("_fault", "_random")

    def __init__(self, fault: ProxyFault | None) -> None:
        self._fault = fault
        self._random = random.Random(fault.seed if fault is not None else 0)

    def pick(self, model: str) -> ProxyFault | None:
        """The fault for the next chat exchange, whose body names ``model``, or None."""
        fault = self._fault
        if fault is None or (fault.model is not None and model != fault.model):
            return None
        if fault.fraction < 1.0 and not self._random.random() < fault.fraction:
            return None
        return fault


Step = bytes | Literal["stall", "drop", "end"]
"""What the server does next: forward these bytes, stall (the fault's ``stall_s``, with
keep-alives), drop the connection, or end the body cleanly."""


class FaultCutter:
    """Cuts one response body the way ``fault`` says: ``feed(read)`` turns each read of the
    upstream's body into steps, ``feed_eof()`` ends it. Any split of the body into reads gives
    the same forwarded bytes (bytes steps may be split differently) and the same cuts.

    Event counts come from an SSE decoder fed line by line, so an event-aware cut falls just
    after the blank line that ends the event; ``reader`` (the protocol's, for the request)
    tells which event is the end marker for ``no_done``; ``max_event_bytes`` bounds the
    decoder as the client's does. What is due after N events (and, for 0, before the first
    byte) happens just before the next byte is forwarded: as in the emulator, a count equal
    to the stream's events never triggers, and the LF of a CRLF split across two reads still
    goes with its event. Without an event-aware effect, a read is forwarded whole
    (``drop_after_bytes`` cuts inside it). With ``no_done`` an event is forwarded once it is
    whole (the bytes of an event in progress wait; comments between events do not), because
    until then nobody can tell whether it is the end marker. After ``drop`` or ``end``,
    :attr:`finished` is True and the rest of the upstream's body is discarded. A single
    event larger than ``max_event_bytes`` turns event-awareness off (every byte then goes
    through as it comes).
    """

    __slots__ = (
        "_after_cr",
        "_chunks",
        "_due",
        "_fault",
        "_fields",
        "_held",
        "_line_after_cr",
        "_line_start",
        "_reader",
        "_sse",
        "_stalled",
        "events",
        "finished",
        "forwarded_bytes",
    )

    def __init__(
        self,
        fault: ProxyFault,
        reader: FrameReader | None = None,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self._fault = fault
        self._sse = SSEDecoder(max_event_bytes) if fault.cuts_at_events else None
        self._reader = reader if fault.no_done else None
        self._chunks: list[Any] = []
        self._held = bytearray()
        self._stalled = False
        self._due = True  # the effects of "after 0 events"
        self._after_cr = False
        self._fields = False  # the block in progress has a field line (no_done)
        self._line_start = True
        self._line_after_cr = False
        self.events = 0
        self.forwarded_bytes = 0
        self.finished = False

    def feed(self, data: bytes) -> list[Step]:
        """The steps for the next read of the upstream's body."""
        steps: list[Step] = []
        if self.finished or not data:
            return steps
        sse = self._sse
        if sse is None:
            self._forward(data, steps)
            return steps
        block_start = 0
        for match in _LINE.finditer(data):
            position = match.end()
            try:
                frames = sse.feed_frames(match.group())
            except EventTooLargeError:
                self._sse = None
                rest = bytes(self._held) + data[block_start:]
                self._held.clear()
                self._forward(rest, steps)
                return steps
            if not frames:
                if self._reader is not None and self._between_events(match.group(), sse):
                    # Comments between events, a block that dispatched nothing, the LF of a
                    # CRLF: no end marker in there, nothing to withhold.
                    self._forward(bytes(self._held) + data[block_start:position], steps)
                    self._held.clear()
                    block_start = position
                continue
            block = bytes(self._held) + data[block_start:position]
            self._held.clear()
            self._fields, self._line_start = False, True
            self._line_after_cr = block.endswith(b"\r")
            block_start = position
            if self._ends(frames):
                steps.append("end")
                self.finished = True
                return steps
            self._forward(block, steps)
            if self.finished:
                return steps
            self.events += len(frames)
            self._due = True
            self._after_cr = block.endswith(b"\r")
        rest = data[block_start:]
        if self._reader is not None:
            self._held += rest
        else:
            self._forward(rest, steps)
        return steps

    def feed_eof(self) -> list[Step]:
        """The steps once the upstream's body ended: what was withheld goes out (it was no
        end marker)."""
        steps: list[Step] = []
        held = bytes(self._held)
        self._held.clear()
        self._forward(held, steps)
        return steps

    def _between_events(self, line: bytes, sse: SSEDecoder) -> bool:
        """Whether the withheld bytes, up to the end of ``line`` (a line, or the part of one
        that a read holds), hold nothing of an event, so they can go (``no_done``)."""
        starts_line, self._line_start = self._line_start, line.endswith((b"\r", b"\n"))
        after_cr, self._line_after_cr = self._line_after_cr, line.endswith(b"\r")
        if line == b"\n" and after_cr:
            return not self._fields  # the LF of a CRLF
        if starts_line and line in (b"\n", b"\r", b"\r\n"):
            self._fields = False  # a blank line ends any block
            return not sse.in_event
        if not self._fields and (line[:1] == b":" if starts_line else True):
            return True  # a comment, or the rest of one
        self._fields = True
        return False

    def _ends(self, frames: list[tuple[str, bytes]]) -> bool:
        """True when one of ``frames`` (one event's) is the protocol's end marker."""
        reader = self._reader
        if reader is None:
            return False
        self._chunks.clear()
        _, error = reader.read(frames, self._chunks)
        if error is not None:
            self._reader = None  # the reader stops at an error: no end marker will follow
            return False
        return reader.ended

    def _forward(self, data: bytes, steps: list[Step]) -> None:
        """Forward ``data``, after what is due before it."""
        if not data or self.finished:
            return
        if self._due:
            if self._after_cr and data[:1] == b"\n":
                self._emit(b"\n", steps)  # the end of the last event's CRLF
                data = data[1:]
                if not data or self.finished:
                    return
            self._due = self._after_cr = False
            self._on_boundary(steps)
            if self.finished:
                return
        self._emit(data, steps)

    def _on_boundary(self, steps: list[Step]) -> None:
        """The effects due once :attr:`events` events are forwarded."""
        fault = self._fault
        if fault.stall_after_events == self.events and not self._stalled:
            self._stalled = True
            steps.append("stall")
        if fault.drop_after_events == self.events:
            steps.append("drop")
            self.finished = True

    def _emit(self, data: bytes, steps: list[Step]) -> None:
        limit = self._fault.drop_after_bytes
        drop = limit is not None and self.forwarded_bytes + len(data) >= limit
        if limit is not None and drop:
            data = data[: limit - self.forwarded_bytes]
        if data:
            self.forwarded_bytes += len(data)
            if steps and isinstance(steps[-1], bytes):
                steps[-1] += data  # one write per read, but at a cut
            else:
                steps.append(data)
        if drop:
            steps.append("drop")
            self.finished = True


def fault_headers(fault: ProxyFault) -> Mapping[str, str]:
    """The retry headers an injected error status carries."""
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = fault.retry_after_ms
    return headers

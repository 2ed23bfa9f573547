"""A fault-free stream rendered before it is sent (:class:`Script`): every event's bytes
as they go on the wire, grouped into the steps that are written together, each with the
delay before it.

Edge layer (part of :mod:`qwen_sse.emulator`); no I/O. :func:`render` runs a framing's
:data:`~qwen_sse.emulator.faults.Send` against a recording sink and pacer, so the bytes
are exactly those the framing would write through a
:class:`~qwen_sse.emulator.faults.Streamer`, and the delays are the stream's
:class:`~qwen_sse.emulator.faults.Pacer`'s, drawn in the same order. Each event is one
HTTP/1.1 chunk (``<size in hex>\\r\\n<event>\\r\\n``), as aiohttp would frame one write, and
the events of a step are joined into one buffer: the
:class:`~qwen_sse.emulator.ticker.Ticker` writes a step with one call and no encoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwen_sse.emulator.faults import FaultFrames, Pacer, Send
    from qwen_sse.emulator.records import Outcome

__all__ = ["Script", "render"]


class Script:
    """One stream, step by step: ``delays_s[i]`` passes (on the stream's schedule) before
    ``chunks[i]`` is written, which holds ``events[i]`` events of ``sse_bytes[i]`` bytes
    of event stream (without the chunk framing) and the answer pieces ``kinds[i]``, in
    order. ``outcome`` is how the stream ends once every step is written."""

    __slots__ = ("chunks", "delays_s", "events", "kinds", "outcome", "sse_bytes")

    def __init__(self) -> None:
        self.delays_s: list[float] = []
        self.chunks: list[bytes] = []
        self.events: list[int] = []
        self.sse_bytes: list[int] = []
        self.kinds: list[tuple[str, ...]] = []
        self.outcome: Outcome = "completed"


class _Recorder:
    """The sink and the pacer a framing writes to while its stream is rendered."""

    __slots__ = ("_frames", "_kinds", "_number", "_pacer", "_parts", "_script", "_sse", "no_done")

    def __init__(self, frames: FaultFrames, pacer: Pacer, *, no_done: bool) -> None:
        self._frames = frames
        self._pacer = pacer
        self.no_done = no_done
        self._script = Script()
        self._number = 0
        self._parts: list[bytes] = []
        self._kinds: list[str] = []
        self._sse = 0
        self._step(pacer.first_delay_s())

    async def event(self, frame: bytes, kind: str | None = None) -> None:
        self._number += 1
        data = self._frames.numbered(frame, self._number)
        self._parts += (b"%x\r\n" % len(data), data, b"\r\n")
        self._sse += len(data)
        if kind is not None:
            self._kinds.append(kind)

    async def tokens(self, count: int) -> None:
        self._step(self._pacer.tokens_delay_s(count))

    def _step(self, delay_s: float) -> None:
        """End the step being recorded (if it has events) and start one ``delay_s`` later."""
        script = self._script
        if self._parts:
            script.chunks.append(b"".join(self._parts))
            script.events.append(len(self._parts) // 3)
            script.sse_bytes.append(self._sse)
            script.kinds.append(tuple(self._kinds))
            self._parts.clear()
            self._kinds.clear()
            self._sse = 0
            script.delays_s.append(delay_s)
        elif script.delays_s:
            # Waits with no event between them add up.
            script.delays_s[-1] += delay_s
        else:
            script.delays_s.append(delay_s)

    def script(self, outcome: Outcome) -> Script:
        self._step(0.0)
        script = self._script
        # A wait after the last event has nothing to delay.
        del script.delays_s[len(script.chunks) :]
        script.outcome = outcome
        return script


def render(send: Send, frames: FaultFrames, pacer: Pacer, *, no_done: bool) -> Script:
    """The stream ``send`` writes with ``frames``, at ``pacer``'s delays (the time to first
    token, then one per wait), without a fault that rewrites it (``no_done`` aside).
    Events are numbered from 1, as :meth:`FaultFrames.numbered` wants."""
    recorder = _Recorder(frames, pacer, no_done=no_done)
    coroutine = send(recorder, recorder)
    try:
        coroutine.send(None)
    except StopIteration as stop:
        outcome: Outcome = stop.value
        return recorder.script(outcome)
    coroutine.close()
    raise RuntimeError("a stream's send suspended while it was being rendered")

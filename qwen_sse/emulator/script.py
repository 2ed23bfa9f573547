"""A fault-free stream rendered before it is sent (:class:`Script`): every event's bytes
as they go on the wire, grouped into the steps that are written together, each with the
delay before it.

Edge layer (part of :mod:`qwen_sse.emulator`); no I/O. :func:`render` reads a framing's
:data:`~qwen_sse.emulator.faults.Events` in one go, so the bytes are exactly those a
:class:`~qwen_sse.emulator.faults.Streamer` would write, and the delays are the stream's
:class:`~qwen_sse.emulator.faults.Pacer`'s, drawn in the same order. Each event is one
HTTP/1.1 chunk (``<size in hex>\\r\\n<event>\\r\\n``), as aiohttp frames one write, and the
events of a step are joined into one buffer: the :class:`~qwen_sse.emulator.ticker.Ticker`
writes a step with one call and no encoding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwen_sse.emulator.faults import FaultFrames, Item, Pacer
    from qwen_sse.emulator.records import Outcome

__all__ = ["Script", "render"]


class Script:
    """One stream, step by step: ``delays_s[i]`` passes (on the stream's schedule) before
    ``chunks[i]`` is written, which holds ``events[i]`` events of ``sse_bytes[i]`` bytes
    of event stream (without the chunk framing) and the answer pieces ``kinds[i]``, in
    order. ``outcome`` is how the stream ends once every step is written."""

    __slots__ = ("chunks", "delays_s", "events", "kinds", "outcome", "sse_bytes")

    def __init__(self, outcome: Outcome) -> None:
        self.delays_s: list[float] = []
        self.chunks: list[bytes] = []
        self.events: list[int] = []
        self.sse_bytes: list[int] = []
        self.kinds: list[tuple[str, ...]] = []
        self.outcome: Outcome = outcome


def render(
    events: Iterable[Item], frames: FaultFrames, pacer: Pacer, *, outcome: Outcome
) -> Script:
    """The stream of ``events`` (a framing's items, with ``frames`` to number them), at
    ``pacer``'s delays: the time to first token before the first step, then one per wait
    (waits with no event between them add up; a wait after the last event has nothing to
    delay). ``outcome`` is how the stream ends."""
    script = Script(outcome)
    # Bound once: a stream has a step per token.
    add_chunk, add_events = script.chunks.append, script.events.append
    add_bytes, add_kinds, add_delay = (
        script.sse_bytes.append,
        script.kinds.append,
        script.delays_s.append,
    )
    numbered = frames.numbered
    number = 0
    delay_s = pacer.first_delay_s()
    step: list[bytes] = []
    kinds: list[str] = []
    for item in (*events, 0):
        if not isinstance(item, int):
            frame, kind = item
            number += 1
            step.append(numbered(frame, number))
            if kind is not None:
                kinds.append(kind)
            continue
        # A wait (the last one, 0, closes the last step).
        if step:
            if len(step) == 1:
                data = step[0]
                add_chunk(b"%x\r\n%b\r\n" % (len(data), data))
                add_bytes(len(data))
            else:
                add_chunk(b"".join([b"%x\r\n%b\r\n" % (len(d), d) for d in step]))
                add_bytes(sum(map(len, step)))
            add_events(len(step))
            add_kinds(tuple(kinds))
            add_delay(delay_s)
            step = []
            kinds = []
            delay_s = 0.0
        if item:
            delay_s += pacer.tokens_delay_s(item)
    return script

"""The one timer of a serving loop (:class:`Ticker`): it writes the due steps of every
fault-free stream (each a pre-rendered :class:`~qwen_sse.emulator.script.Script`) in one
pass per tick, instead of a sleep per token per stream.

Edge layer (part of :mod:`qwen_sse.emulator`): it writes to the connections' transports
directly, the bytes of each step ready-made, so a token costs one write call and a few
counters. Due times are on ``time.monotonic()`` (uvloop's loop clock counts coarse
milliseconds) and kept in a timing wheel of :data:`TICK_S` buckets: a step goes into the
first bucket that ends after it is due, and a bucket is written once the clock has passed
its end, so no step is written before its time, and one timer serves every stream. A
stream's steps are due on its own schedule (see :class:`~qwen_sse.emulator.faults.Pacer`):
a step written late does not delay the next.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwen_sse.emulator.records import Outcome, RecordedRequest
    from qwen_sse.emulator.script import Script

__all__ = ["TICK_S", "Playing", "Ticker"]

TICK_S = 0.001
"""The wheel's bucket width: a step is written at most this much after it is due, plus
the timer's own lateness (event loops wake on whole milliseconds)."""

_TICKS_PER_S = round(1 / TICK_S)


class Playing:
    """One stream the ticker plays: ``done`` gets its outcome once every step is written
    (the script's), or ``"client_disconnected"`` when the connection closed first.
    :meth:`close` stops it (a cancelled handler). The record's ``events_sent`` and
    ``bytes_sent`` count the steps written when the stream ends, however it ends (not
    per token: an int past 256 is a new object each time)."""

    __slots__ = (
        "_clock",
        "_counted",
        "_index",
        "_keep_times",
        "_record",
        "_script",
        "_transport",
        "done",
        "due_s",
    )

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        script: Script,
        record: RecordedRequest,
        done: asyncio.Future[Outcome],
        *,
        keep_times: bool,
        clock: Callable[[], float],
    ) -> None:
        self._clock = clock
        self._transport = transport
        self._script = script
        self._record = record
        self._keep_times = keep_times
        self._index = 0
        self._counted = 0
        self.done = done
        self.due_s = 0.0

    def close(self) -> None:
        """Write nothing more (the ticker forgets it at its next due time)."""
        if not self.done.done():
            self._count()
            self.done.cancel()

    def _end(self, outcome: Outcome) -> None:
        self._count()
        self.done.set_result(outcome)

    def _count(self) -> None:
        """Add the steps written since the last count to the record's counters."""
        written, counted = self._index, self._counted
        if written > counted:
            script = self._script
            self._record.events_sent += sum(script.events[counted:written])
            self._record.bytes_sent += sum(script.sse_bytes[counted:written])
            self._counted = written

    def write_due(self, now_s: float) -> bool:
        """Write every step due by ``now_s``; True while a step is left for later."""
        if self.done.done():
            return False
        script = self._script
        transport = self._transport
        record = self._record
        chunks = script.chunks
        while True:
            if transport.is_closing():
                self._end("client_disconnected")
                return False
            index = self._index
            if self._keep_times and (kinds := script.kinds[index]):
                # Read before the write: a client may read the bytes at once.
                written_at_s = self._clock()
                if len(kinds) == 1:
                    record.written.append((kinds[0], written_at_s))
                else:
                    record.written += [(kind, written_at_s) for kind in kinds]
            transport.write(chunks[index])
            index += 1
            self._index = index
            if index == len(chunks):
                self._end(script.outcome)
                return False
            self.due_s += script.delays_s[index]
            if self.due_s > now_s:
                return True


class Ticker:
    """The timing wheel of one event loop's paced streams (see the module docstring);
    ``clock`` tells the time, in seconds (``time.monotonic`` but in tests)."""

    __slots__ = ("_clock", "_keys", "_loop", "_timer", "_timer_key", "_wheel")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._loop = loop
        self._clock = clock
        self._wheel: dict[int, list[Playing]] = {}
        # The wheel's keys, a heap: the next bucket to write is the smallest.
        self._keys: list[int] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._timer_key = 0

    def play(
        self,
        transport: asyncio.WriteTransport,
        script: Script,
        record: RecordedRequest,
        *,
        started_s: float,
        keep_times: bool,
    ) -> Playing:
        """Start writing ``script`` to ``transport``: its first step ``delays_s[0]`` after
        ``started_s`` (the request's arrival, on the ticker's clock; a step already due is
        written now), each next one its delay after the one before on the stream's schedule.
        ``record`` counts the events and bytes sent and, with ``keep_times``, when each
        piece was written."""
        done: asyncio.Future[Outcome] = self._loop.create_future()
        playing = Playing(transport, script, record, done, keep_times=keep_times, clock=self._clock)
        if not script.chunks:
            done.set_result(script.outcome)
            return playing
        now_s = self._clock()
        playing.due_s = started_s + script.delays_s[0]
        if playing.due_s > now_s or playing.write_due(now_s):
            self._add(playing)
            self._arm()
        return playing

    def close(self) -> None:
        """Forget every stream and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wheel.clear()
        self._keys.clear()

    def _add(self, playing: Playing) -> None:
        # The first bucket that ends strictly after the due time.
        key = int(playing.due_s * _TICKS_PER_S) + 1
        bucket = self._wheel.get(key)
        if bucket is None:
            self._wheel[key] = [playing]
            heapq.heappush(self._keys, key)
        else:
            bucket.append(playing)

    def _arm(self) -> None:
        """Set the timer for the next bucket, unless it is set for it already."""
        if not self._keys:
            return
        key = self._keys[0]
        if self._timer is not None:
            if self._timer_key <= key:
                return
            self._timer.cancel()
        self._timer_key = key
        wait_s = key / _TICKS_PER_S - self._clock()
        if wait_s <= 0:
            self._timer = self._loop.call_soon(self._tick)
        else:
            # Whole milliseconds: uvloop rounds a timer's delay to the nearest one, and one
            # rounded to zero would run at once and find nothing due.
            self._timer = self._loop.call_later(math.ceil(wait_s * 1000) / 1000, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.write_due(self._clock())

    def write_due(self, now_s: float) -> None:
        """Write every step due by ``now_s`` (what the timer does when it fires)."""
        passed = int(now_s * _TICKS_PER_S)
        keys = self._keys
        wheel = self._wheel
        while keys and keys[0] <= passed:
            for playing in wheel.pop(heapq.heappop(keys)):
                if playing.write_due(now_s):
                    self._add(playing)
        self._arm()

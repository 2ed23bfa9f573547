"""The live progress line of a run on a terminal: in flight, done, rate, percentiles, errors.

Edge layer (bench). It writes to a text stream only when that stream is a terminal, and
never to stdout (where the report and JSON go). Imports
:mod:`qwen_sse.bench.metrics` only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import TextIO

from qwen_sse.bench.metrics import RequestRecord, percentile

__all__ = ["LiveProgress"]

_WINDOW = 2000


class LiveProgress:
    """A one-line status redrawn in place, at most every ``interval_s``.

    ``planned`` is the number of measured requests expected (None when the run is bounded
    by time, ``duration_s``). From the first draw it says what is going on: ``starting``
    until a request is sent, then the requests in flight and how many of them are
    streaming (their first token came), the time to first token as first tokens arrive,
    and, once requests finish, how many are done, the rate, TPOT and errors.
    Percentiles are over the latest ``2000`` requests, so the line follows the run as it
    changes. Inert unless ``stream`` is a terminal.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        planned: int | None,
        duration_s: float | None = None,
        interval_s: float = 0.5,
    ) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.planned = planned
        self.duration_s = duration_s
        self.interval_s = interval_s
        self.done = 0
        self.failed = 0
        self._ttft: deque[float] = deque(maxlen=_WINDOW)
        self._tpot: deque[float] = deque(maxlen=_WINDOW)
        # (sent, in flight, streaming) of each source: a worker, or the one shard.
        self._flights: dict[int, tuple[int, int, int]] = {}
        self._started = time.monotonic()
        # None until the first draw: the monotonic clock may read near zero (it counts from
        # boot), so no reading can stand for "long ago".
        self._drawn_at: float | None = None

    def add(self, records: Iterable[RequestRecord]) -> None:
        """Count finished requests (a cancelled one is neither done nor an error)."""
        for record in records:
            if record.cancelled:
                continue
            self.done += 1
            if not record.ok:
                self.failed += 1
            elif record.tpot_s is not None:
                self._tpot.append(record.tpot_s)

    def first_tokens(self, ttfts_s: Iterable[float]) -> None:
        """Take the times to first token of requests whose first token just came."""
        self._ttft.extend(ttfts_s)

    def flight(self, source: int, *, sent: int, in_flight: int, streaming: int) -> None:
        """Set what ``source`` (a worker number) has sent, has in flight now, and how many
        of those are streaming."""
        self._flights[source] = (sent, in_flight, streaming)

    def line(self, elapsed_s: float) -> str:
        """The status text (without control characters)."""
        span = f"/{self.duration_s:.0f}" if self.duration_s is not None else ""
        parts = [f"{elapsed_s:5.1f}{span} s"]
        sent = sum(flight[0] for flight in self._flights.values())
        if not sent and not self.done:
            parts.append("starting")
            return " · ".join(parts)
        in_flight = sum(flight[1] for flight in self._flights.values())
        streaming = sum(flight[2] for flight in self._flights.values())
        parts.append(f"{in_flight} in flight ({streaming} streaming)")
        if self.done:
            of = f"/{self.planned}" if self.planned is not None else ""
            rate = self.done / elapsed_s if elapsed_s > 0 else 0.0
            parts += [f"{self.done}{of} done", f"{rate:.1f} req/s"]
        if self._ttft:
            ordered = sorted(self._ttft)
            parts.append(
                f"TTFT p50 {percentile(ordered, 50) * 1000:.0f} ms"
                f" p99 {percentile(ordered, 99) * 1000:.0f} ms"
            )
        if self._tpot:
            parts.append(f"TPOT p50 {percentile(sorted(self._tpot), 50) * 1000:.1f} ms")
        if self.done:
            parts.append(f"{self.failed} errors")
        return " · ".join(parts)

    def refresh(self, *, force: bool = False) -> None:
        """Redraw the line if ``interval_s`` has passed since the last time (or ``force``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        drawn_at = self._drawn_at
        if not force and drawn_at is not None and now - drawn_at < self.interval_s:
            return
        self._drawn_at = now
        self.stream.write("\r\x1b[2K" + self.line(now - self._started))
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line, so later output starts on its own."""
        if self.enabled and self._drawn_at is not None:
            self.refresh(force=True)
            self.stream.write("\n")
            self.stream.flush()

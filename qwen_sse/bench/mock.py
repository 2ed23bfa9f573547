"""The DashScope emulator in a child process, as the endpoint of ``qwen-sse bench --mock``.

Edge layer (bench). In a process of its own, the emulator's work (request parsing, token
counting, pacing hundreds of streams) never runs on the event loop that timestamps the
chunks, so the figures measure the client's view of a server, not a shared loop. It uses
the emulator's public API only. The child stops when told to, or as soon as its parent
goes away (its end of the pipe closes), so it never outlives the run; it ignores SIGINT
and SIGTERM, which are its parent's to handle.

Asked to (``timings=True``), it keeps what it really did for each request (when the request
arrived, when each text piece was written: :class:`ServedTiming`), the truth a load
generator's figures are checked against: :func:`served_medians_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
from collections.abc import Iterable
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Self

import msgspec

from qwen_sse.bench.child import LinkedChild
from qwen_sse.bench.stop import leave_signals_to_parent
from qwen_sse.emulator import Emulator, EmulatorConfig
from qwen_sse.emulator import loop as emulator_loop
from qwen_sse.emulator.loop import loop_name

__all__ = ["MOCK_API_KEY", "MockServer", "ServedTiming", "served_medians_s", "served_pools_s"]

MOCK_API_KEY = "sk-mock"
_START_TIMEOUT_S = 60.0
_TIMINGS = b"timings"
_TEXT_KINDS = frozenset(("content", "reasoning_content"))


class ServedTiming(msgspec.Struct, frozen=True):
    """What the emulator really did for one request, on the host's monotonic clock: when
    it arrived, and when each text piece (content or reasoning) was written."""

    request_id: str
    arrived_at_s: float
    text_written_at_s: list[float]


def served_pools_s(timings: Iterable[ServedTiming]) -> tuple[list[float], list[float]]:
    """``(TTFTs, ITLs)`` in seconds as the server produced them, under the load generator's
    definitions (:mod:`qwen_sse.bench.metrics`): TTFT from the request's arrival to its
    first text piece; ITL every gap between consecutive text pieces, pooled."""
    ttft: list[float] = []
    itl: list[float] = []
    for timing in timings:
        written = timing.text_written_at_s
        if not written:
            continue
        ttft.append(written[0] - timing.arrived_at_s)
        itl.extend(after - before for before, after in itertools.pairwise(written))
    return ttft, itl


def served_medians_s(timings: Iterable[ServedTiming]) -> tuple[float | None, float | None]:
    """``(median TTFT, median ITL)`` in seconds as the server produced them
    (:func:`served_pools_s`); None where there is nothing to take a median of."""
    ttft, itl = served_pools_s(timings)
    return (
        statistics.median(ttft) if ttft else None,
        statistics.median(itl) if itl else None,
    )


class MockServer:
    """``with MockServer(config) as server:`` runs an emulator on a loopback port
    (``server.base_url``, the base URL of ``protocol``), on uvloop's event loop when it is
    installed (``server.event_loop`` says which: ``"uvloop"`` or ``"asyncio"``), except
    with ``timings`` unless ``uvloop_timings``: aiohttp measures a request's arrival on the
    loop's clock, and uvloop's counts whole milliseconds, so the served TTFT would be known
    to a millisecond or two either way (the kernel's coarse clock) rather than to a
    microsecond; the arrival is never dated after the handler started. ``uvloop_timings``
    trades that for uvloop's cheaper writes, to measure what the emulator serves as
    ``qwen-sse serve`` runs it.

    The emulator accepts any bearer key (``api_key`` in ``config`` is overridden). Unless
    ``timings``, it records nothing, so its memory stays flat however long the run; with
    ``timings``, it keeps one :class:`ServedTiming` per request until :meth:`timings`
    collects them.
    """

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        timings: bool = False,
        protocol: str = "compatible",
        uvloop_timings: bool = False,
    ) -> None:
        self.config = config
        self.protocol = protocol
        self.keeps_timings = timings
        self._asyncio_loop = timings and not uvloop_timings
        self.base_url = ""
        self.event_loop = ""
        self._child = LinkedChild(
            _serve, (config, timings, protocol, self._asyncio_loop), name="qwen-sse-mock"
        )

    def __enter__(self) -> Self:
        link = self._child.start()
        if not link.poll(_START_TIMEOUT_S):
            self.close()
            raise RuntimeError("the emulator did not start")
        try:
            self.base_url, self.event_loop = link.recv()
        except EOFError:
            self.close()
            raise RuntimeError("the emulator exited while starting") from None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int:
        """The emulator's process id (to pin it to a CPU, or read its CPU time)."""
        pid = self._child.pid
        if pid is None:
            raise RuntimeError("the emulator is not running")
        return pid

    def timings(self) -> list[ServedTiming]:
        """The timings of the requests that arrived since the last call, which it forgets.
        Needs ``timings=True``. A request still streaming has the pieces written so far
        (a client that has read a whole answer has all of them)."""
        link = self._child.link
        if link is None or not self.keeps_timings:
            raise RuntimeError("the emulator is not running with timings=True")
        link.send_bytes(_TIMINGS)
        if not link.poll(_START_TIMEOUT_S):
            raise RuntimeError("the emulator did not send its timings")
        return msgspec.msgpack.decode(link.recv_bytes(), type=list[ServedTiming])

    def close(self) -> None:
        """Stop the emulator and wait for its process (idempotent)."""
        self._child.close()


def _serve(
    link: Connection, config: EmulatorConfig, timings: bool, protocol: str, asyncio_loop: bool
) -> None:
    # A Ctrl-C on a terminal reaches this process too: it is the parent's to handle (a
    # stopping run still needs its server for the requests in flight).
    leave_signals_to_parent()
    emulator_loop.collect_rarely()
    serving = _serve_until_told(link, config, timings, protocol)
    if asyncio_loop:
        asyncio.run(serving)
    else:
        emulator_loop.run(serving)


async def _serve_until_told(
    link: Connection, config: EmulatorConfig, timings: bool, protocol: str
) -> None:
    config = msgspec.structs.replace(config, api_key=None, record_requests=timings)
    async with Emulator(config) as emulator:
        link.send((emulator.base_url_for(protocol), loop_name(asyncio.get_running_loop())))
        # recv_bytes() returns a command, or raises EOFError when the parent is gone: then
        # it is time to go, as at STOP. A thread waits so the loop keeps serving meanwhile.
        with contextlib.suppress(EOFError):
            while await asyncio.to_thread(link.recv_bytes) == _TIMINGS:
                link.send_bytes(msgspec.msgpack.encode(_take_timings(emulator)))


def _take_timings(emulator: Emulator) -> list[ServedTiming]:
    """The requests' timings so far; the records leave the emulator (bounded memory)."""
    timings = [
        ServedTiming(
            record.request_id,
            record.arrived_at_s,
            [at for kind, at in record.written if kind in _TEXT_KINDS],
        )
        for record in emulator.requests
        if record.arrived_at_s is not None
    ]
    emulator.requests.clear()
    return timings

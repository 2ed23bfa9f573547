"""What the emulator records of each request it answers (:class:`RecordedRequest`), for tests
and for the load generator's served-truth checks.

Edge layer (part of :mod:`qwen_sse.emulator`); no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from qwen_sse.emulator.faults import Fault

__all__ = ["Outcome", "RecordedRequest", "redacted"]

Outcome = Literal[
    "pending",
    "completed",
    "http_error",
    "dropped",
    "in_band_error",
    "no_done",
    "client_disconnected",
    "server_closed",
]


@dataclass(slots=True)
class RecordedRequest:
    """One request as the emulator saw it, and what it did with it.

    ``headers`` are case-insensitive, with the API key redacted (see :func:`redacted`);
    ``body`` is the parsed JSON (None when it was not JSON). ``outcome`` is ``"pending"``
    while the response is in flight. ``events_sent`` and ``bytes_sent`` count the SSE body
    (a fault-free stream's once it ends: its ticker counts no token one by one).

    ``arrived_at_s`` and ``written`` are what the server really did, whatever its
    configured delays (a busy machine runs every delay late), on ``time.monotonic()``, one
    clock for every process of a host (and asyncio's ``loop.time()``; uvloop's counts
    whole milliseconds). ``arrived_at_s`` is when the server took the request off its
    connection (aiohttp measures how long ago on its loop's clock), never later than the
    handler's start, which the stream's schedule runs from; while
    the response is in flight it is when the handler started, which a busy server reaches
    later, as it works through the requests that came before. ``written`` holds, for each
    piece of the answer streamed, in order, its :attr:`Piece.kind` and the time just
    before its event was handed to the connection (so no client can read it earlier): one
    pair per piece, so it is bounded by the answer's length.
    """

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: Any = None
    request_id: str = ""
    fault: Fault | None = None
    status: int = 0
    outcome: Outcome = "pending"
    events_sent: int = 0
    bytes_sent: int = 0
    arrived_at_s: float | None = None
    written: list[tuple[str, float]] = field(default_factory=list)


def redacted(headers: Mapping[str, str], key: str) -> CIMultiDictProxy[str]:
    """A copy of ``headers`` without the API key: ``Authorization`` keeps only its scheme,
    and any other header whose value is ``key`` (e.g. ``x-api-key``) reads ``REDACTED``."""
    copy: CIMultiDict[str] = CIMultiDict(headers)
    if "Authorization" in copy:
        scheme = copy["Authorization"].partition(" ")[0]
        copy["Authorization"] = f"{scheme} REDACTED" if scheme.lower() == "bearer" else "REDACTED"
    if key:
        for name, value in list(copy.items()):
            if value == key:
                copy[name] = "REDACTED"
    return CIMultiDictProxy(copy)

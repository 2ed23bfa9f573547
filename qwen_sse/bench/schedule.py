"""Load shapes and arrival schedules: when each request of a run is meant to be sent.

Edge layer (bench). Pure: no I/O and no clock; randomness comes from a ``random.Random``
seeded by the caller, so a schedule is a function of its arguments and a run can be
repeated, or split over worker processes, exactly. Imports nothing from the package.
"""

from __future__ import annotations

import math
import random
from typing import Literal

import msgspec

__all__ = [
    "ARRIVALS",
    "Arrivals",
    "ClosedLoop",
    "LoadShape",
    "OpenLoop",
    "arrival_times",
    "slot_start_s",
    "split_evenly",
]

Arrivals = Literal["poisson", "gamma", "constant"]
ARRIVALS: tuple[Arrivals, ...] = ("poisson", "gamma", "constant")


class ClosedLoop(msgspec.Struct, frozen=True, kw_only=True):
    """A fixed number of requests in flight: ``concurrency`` slots, each sending its next
    request the moment its previous one ends (GuideLLM's *concurrent*; ``concurrency=1``
    is its *synchronous*).

    Slot ``k`` sends its first request ``k * ramp_up_s / concurrency`` seconds after the
    start, so the slots do not move in lockstep against the server (with identical
    answers and no jitter they would stay in step for the whole run).
    """

    concurrency: int
    ramp_up_s: float = 0.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if not 0 <= self.ramp_up_s < math.inf:
            raise ValueError(f"ramp-up must be a finite number of seconds, got {self.ramp_up_s}")


class OpenLoop(msgspec.Struct, frozen=True, kw_only=True):
    """Requests arrive on a schedule, whatever the server does with them: ``rate`` per
    second (``inf``: all at once), with ``arrivals`` gaps (see :func:`arrival_times`).

    ``max_concurrency`` caps the requests in flight; an arrival that finds the cap reached
    waits (that wait is recorded as queue wait, not as schedule lag).
    """

    rate: float
    arrivals: Arrivals = "poisson"
    burstiness: float = 1.0
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if not 0 < self.burstiness < math.inf:
            raise ValueError(f"burstiness must be positive and finite, got {self.burstiness}")
        if self.arrivals not in ARRIVALS:
            raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max concurrency must be at least 1, got {self.max_concurrency}")


LoadShape = ClosedLoop | OpenLoop


def arrival_times(
    count: int,
    rate: float,
    *,
    arrivals: Arrivals = "poisson",
    burstiness: float = 1.0,
    seed: int = 0,
) -> list[float]:
    """Intended send times of ``count`` requests, in seconds from the start; the first is 0.

    Gaps are exponential (``poisson``), gamma-distributed with shape ``burstiness`` and
    mean ``1 / rate`` (``gamma``: below 1 burstier than Poisson, above 1 more regular;
    1 is Poisson), or exactly ``1 / rate`` (``constant``). They are drawn independently
    from ``random.Random(seed)`` and then scaled by one common factor so that they average
    exactly ``1 / rate``: the schedule's own rate, ``(count - 1) / last time``, is the
    configured rate for every seed, and the shape of the gaps (their burstiness) is kept.
    An infinite ``rate`` puts every arrival at 0.
    """
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    if count == 0:
        return []
    if math.isinf(rate):
        return [0.0] * count
    if arrivals == "constant":
        return [index / rate for index in range(count)]
    rng = random.Random(seed)
    shape = burstiness if arrivals == "gamma" else 1.0
    # Mean of a gamma(shape, scale) draw is shape * scale; this makes it 1 / rate.
    scale = 1.0 / (rate * shape)
    gaps = [rng.gammavariate(shape, scale) for _ in range(count - 1)]
    total = sum(gaps)
    target = (count - 1) / rate
    factor = target / total if total > 0 else 0.0
    times = [0.0]
    elapsed = 0.0
    for gap in gaps:
        elapsed += gap * factor
        times.append(elapsed)
    if count > 1:
        # The sum of scaled gaps equals the target up to rounding; make it exact.
        times[-1] = target
    return times


def slot_start_s(slot: int, concurrency: int, ramp_up_s: float) -> float:
    """When closed-loop slot ``slot`` of ``concurrency`` sends its first request."""
    return slot * ramp_up_s / concurrency


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` sizes that differ by at most one, larger ones first."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    base, extra = divmod(total, parts)
    return [base + (1 if part < extra else 0) for part in range(parts)]

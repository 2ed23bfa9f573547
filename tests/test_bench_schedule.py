"""Load shapes and arrival schedules: exact rates, burstiness, reproducibility, splitting."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from qwen_sse.bench.schedule import (
    ClosedLoop,
    OpenLoop,
    arrival_times,
    slot_start_s,
    split_evenly,
)


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


@pytest.mark.parametrize("arrivals", ["poisson", "gamma", "constant"])
@pytest.mark.parametrize("rate", [0.5, 7.0, 250.0])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_the_schedule_has_exactly_the_configured_rate(
    arrivals: str, rate: float, seed: int
) -> None:
    times = arrival_times(1000, rate, arrivals=arrivals, burstiness=0.5, seed=seed)  # type: ignore[arg-type]
    assert len(times) == 1000
    assert times[0] == 0.0
    assert (len(times) - 1) / times[-1] == pytest.approx(rate, rel=1e-12)
    assert all(gap >= 0 for gap in gaps(times))


def test_poisson_gaps_are_exponential() -> None:
    spread = gaps(arrival_times(20_000, 10.0, seed=3))
    # An exponential distribution has a coefficient of variation of 1.
    assert statistics.pstdev(spread) / statistics.fmean(spread) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize(("burstiness", "cv"), [(0.25, 2.0), (1.0, 1.0), (4.0, 0.5)])
def test_gamma_burstiness_sets_how_bursty_arrivals_are(burstiness: float, cv: float) -> None:
    spread = gaps(arrival_times(20_000, 10.0, arrivals="gamma", burstiness=burstiness, seed=5))
    # Gamma with shape k has a coefficient of variation of 1 / sqrt(k).
    assert statistics.pstdev(spread) / statistics.fmean(spread) == pytest.approx(cv, rel=0.05)


def test_gamma_with_burstiness_one_is_poisson() -> None:
    assert arrival_times(50, 3.0, arrivals="gamma", burstiness=1.0, seed=9) == arrival_times(
        50, 3.0, arrivals="poisson", seed=9
    )


def test_constant_arrivals_are_evenly_spaced() -> None:
    assert arrival_times(4, 2.0, arrivals="constant") == [0.0, 0.5, 1.0, 1.5]


def test_a_seed_reproduces_its_schedule_and_another_differs() -> None:
    assert arrival_times(100, 5.0, seed=1) == arrival_times(100, 5.0, seed=1)
    assert arrival_times(100, 5.0, seed=1) != arrival_times(100, 5.0, seed=2)


def test_an_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_times(3, math.inf) == [0.0, 0.0, 0.0]


def test_tiny_schedules() -> None:
    assert arrival_times(0, 1.0) == []
    assert arrival_times(1, 1.0) == [0.0]
    with pytest.raises(ValueError, match="count"):
        arrival_times(-1, 1.0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ClosedLoop(concurrency=0), "concurrency"),
        (lambda: ClosedLoop(concurrency=1, ramp_up_s=-1), "ramp-up"),
        (lambda: OpenLoop(rate=0), "rate"),
        (lambda: OpenLoop(rate=1, burstiness=0), "burstiness"),
        (lambda: OpenLoop(rate=1, arrivals="uniform"), "arrivals"),  # type: ignore[arg-type]
        (lambda: OpenLoop(rate=1, max_concurrency=0), "max concurrency"),
    ],
)
def test_invalid_shapes_are_refused(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_slots_start_evenly_over_the_ramp_up() -> None:
    assert [slot_start_s(slot, 4, 2.0) for slot in range(4)] == [0.0, 0.5, 1.0, 1.5]
    assert slot_start_s(3, 4, 0.0) == 0.0


def test_split_evenly() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(2, 4) == [1, 1, 0, 0]
    assert sum(split_evenly(1001, 7)) == 1001
    with pytest.raises(ValueError, match="parts"):
        split_evenly(1, 0)

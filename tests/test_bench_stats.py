"""The statistics of repeats and comparisons: known values from tables and textbooks, the
closed forms of Student's t for small degrees of freedom, and the laws of intervals and tests
(with seeded simulations of their coverage and false-positive rate)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_sse.bench.stats import (
    mann_whitney,
    mean_interval,
    normal_cdf,
    regularized_beta,
    t_cdf,
    t_quantile,
    t_two_sided_p,
    welch,
)

# t(0.975, df), the 95% two-sided critical values of every statistics textbook's table
# (here to 12 significant digits, as R's qt(0.975, df) prints them).
T_975 = {
    1: 12.7062047362,
    2: 4.30265272975,
    3: 3.18244630528,
    4: 2.77644510520,
    5: 2.57058183564,
    6: 2.44691185114,
    7: 2.36462425159,
    8: 2.30600413520,
    9: 2.26215716280,
    10: 2.22813885199,
    15: 2.13144954556,
    20: 2.08596344727,
    30: 2.04227245630,
    60: 2.00029782201,
    120: 1.97993040505,
    math.inf: 1.95996398454,
}

# Welch's t-test, the three examples of Wikipedia's "Welch's t-test" article, with the
# t, degrees of freedom and p-value printed there.
WELCH_EXAMPLES = [
    (
        [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4],
        [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4],
        (-2.46, 25.0, 0.021),
    ),
    (
        [17.2, 20.9, 22.6, 18.1, 21.7, 21.4, 23.5, 24.2, 14.7, 21.8],
        [
            *(21.5, 22.8, 21.0, 23.0, 21.6, 23.6, 22.5, 20.7, 23.4, 21.8),
            *(20.7, 21.7, 21.5, 22.5, 23.6, 21.5, 22.5, 23.5, 21.5, 21.8),
        ],
        (-1.57, 9.9, 0.149),
    ),
    (
        [19.8, 20.4, 19.6, 17.8, 18.5, 18.9, 18.3, 18.9, 19.5, 22.0],
        [
            *(28.2, 26.6, 20.1, 23.3, 25.2, 22.1, 17.7, 27.6, 20.6, 13.7),
            *(23.2, 17.5, 20.6, 18.0, 23.9, 21.6, 24.3, 20.4, 23.9, 13.3),
        ],
        (-2.22, 24.5, 0.036),
    ),
]

dfs = st.floats(min_value=0.5, max_value=1e4)
ts = st.floats(min_value=-1e3, max_value=1e3)
figures = st.floats(min_value=-1e6, max_value=1e6)
samples = st.lists(figures, min_size=2, max_size=12)


@pytest.mark.parametrize(("df", "expected"), sorted(T_975.items()))
def test_the_quantile_matches_the_table(df: float, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-10)
    assert t_quantile(0.025, df) == pytest.approx(-expected, rel=1e-10)


@given(t=ts)
def test_the_cdf_matches_the_closed_forms_of_small_degrees_of_freedom(t: float) -> None:
    s = t * t
    closed = {
        1: 0.5 + math.atan(t) / math.pi,  # Cauchy
        2: 0.5 + t / (2 * math.sqrt(2 + s)),
        3: 0.5 + (t / math.sqrt(3) / (1 + s / 3) + math.atan(t / math.sqrt(3))) / math.pi,
        4: 0.5 + 3 / 8 * t / math.sqrt(1 + s / 4) * (1 - s / (12 * (1 + s / 4))),
    }
    for df, value in closed.items():
        assert t_cdf(t, df) == pytest.approx(value, abs=1e-13), df


def test_known_values_of_the_cdf() -> None:
    assert t_cdf(2.0, 5) == pytest.approx(0.949030260585071, abs=1e-14)
    assert t_cdf(0.0, 3) == 0.5
    assert t_cdf(math.inf, 3) == 1.0
    assert t_cdf(-math.inf, 3) == 0.0
    assert t_two_sided_p(1.959963984540054, math.inf) == pytest.approx(0.05, abs=1e-15)
    assert normal_cdf(0.0) == 0.5
    # A million degrees of freedom is the normal distribution to six digits.
    assert t_cdf(1.5, 1e6) == pytest.approx(normal_cdf(1.5), abs=1e-6)


@given(t=ts, df=dfs)
def test_the_cdf_is_a_symmetric_distribution(t: float, df: float) -> None:
    cdf = t_cdf(t, df)
    assert 0.0 <= cdf <= 1.0
    assert cdf + t_cdf(-t, df) == pytest.approx(1.0, abs=1e-12)
    assert t_cdf(t + 0.5, df) >= cdf
    assert t_two_sided_p(t, df) == pytest.approx(2 * min(cdf, 1 - cdf), abs=1e-12)


@given(p=st.floats(min_value=1e-6, max_value=1 - 1e-6), df=dfs)
def test_the_quantile_inverts_the_cdf(p: float, df: float) -> None:
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)


@given(
    a=st.integers(min_value=1, max_value=40),
    b=st.integers(min_value=1, max_value=40),
    x=st.floats(min_value=0, max_value=1),
)
def test_the_beta_function_of_whole_numbers_is_a_binomial_tail(a: int, b: int, x: float) -> None:
    # I_x(a, b) = P(Binomial(a + b - 1, x) >= a).
    n = a + b - 1
    tail = math.fsum(math.comb(n, j) * x**j * (1 - x) ** (n - j) for j in range(a, n + 1))
    assert regularized_beta(x, a, b) == pytest.approx(tail, abs=1e-12)


@given(
    a=st.floats(min_value=0.05, max_value=500),
    b=st.floats(min_value=0.05, max_value=500),
    # Multiples of 2^-20, so that 1 - x is exact.
    x=st.integers(min_value=0, max_value=2**20).map(lambda k: k / 2**20),
)
def test_the_beta_function_is_a_distribution_with_its_symmetry(
    a: float, b: float, x: float
) -> None:
    value = regularized_beta(x, a, b)
    assert 0.0 <= value <= 1.0
    assert value + regularized_beta(1 - x, b, a) == pytest.approx(1.0, abs=1e-10)
    assert regularized_beta(min(1.0, x + 0.01), a, b) >= value - 1e-15


def test_known_values_of_the_beta_function() -> None:
    assert regularized_beta(0.4, 2, 3) == pytest.approx(0.5248, abs=1e-15)
    assert regularized_beta(0.5, 7.5, 7.5) == pytest.approx(0.5, abs=1e-15)
    assert regularized_beta(0.3, 2.5, 1) == pytest.approx(0.3**2.5, abs=1e-15)
    assert regularized_beta(0.0, 2, 3) == 0.0
    assert regularized_beta(1.0, 2, 3) == 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: regularized_beta(1.5, 1, 1), "must lie in"),
        (lambda: regularized_beta(0.5, 0, 1), "finite positive"),
        (lambda: regularized_beta(0.5, 1, 0), "finite positive"),
        (lambda: regularized_beta(0.5, 1, math.inf), "finite positive"),
        (lambda: t_cdf(1.0, 0), "degrees of freedom"),
        (lambda: t_cdf(math.nan, 3), "not a number"),
        (lambda: t_quantile(1.0, 3), "strictly in"),
        (lambda: mean_interval([]), "at least one value"),
        (lambda: mean_interval([1.0, 2.0], confidence=1.0), "a confidence must lie strictly"),
        (lambda: mean_interval([1.0, 2.0], confidence=1.5), "a confidence must lie strictly"),
    ],
)
def test_bad_arguments_are_refused(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_the_median_is_zero_and_a_fraction_that_cannot_converge_says_so() -> None:
    assert t_quantile(0.5, 3) == 0.0
    # Near a = b = 10^12 the fraction would need about 10^6 steps: an error, not a guess.
    with pytest.raises(ArithmeticError, match="did not converge"):
        regularized_beta(0.5, 1e12, 1e12)


def test_a_known_interval() -> None:
    interval = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert interval.mean == 3.0
    assert interval.std == pytest.approx(math.sqrt(2.5))
    half_width = 2.7764451052 * math.sqrt(2.5) / math.sqrt(5)
    assert interval.half_width == pytest.approx(half_width)
    assert interval.low == pytest.approx(3.0 - half_width)
    assert interval.high == pytest.approx(3.0 + half_width)


def test_one_value_has_no_interval_and_equal_values_a_zero_one() -> None:
    single = mean_interval([7.0])
    assert (single.n, single.mean, single.std, single.half_width) == (1, 7.0, None, None)
    same = mean_interval([7.0, 7.0, 7.0])
    assert (same.std, same.half_width, same.low, same.high) == (0.0, 0.0, 7.0, 7.0)


@given(values=samples)
def test_the_interval_contains_the_mean(values: list[float]) -> None:
    interval = mean_interval(values)
    assert interval.low is not None
    assert interval.high is not None
    assert interval.low <= interval.mean <= interval.high
    assert min(values) - 1e-6 <= interval.mean <= max(values) + 1e-6


@given(values=samples, shift=figures, scale=st.floats(min_value=0.01, max_value=100))
def test_the_interval_moves_and_scales_with_the_values(
    values: list[float], shift: float, scale: float
) -> None:
    base = mean_interval(values)
    moved = mean_interval([value * scale + shift for value in values])
    assert base.half_width is not None
    assert moved.half_width is not None
    assert moved.mean == pytest.approx(base.mean * scale + shift, abs=1e-6)
    assert moved.half_width == pytest.approx(base.half_width * scale, rel=1e-6, abs=1e-6)


def test_ninety_five_percent_intervals_cover_the_true_mean_ninety_five_times_in_a_hundred() -> None:
    # With five values, a normal quantile (1.96) instead of t(0.975, 4) would cover ~88%.
    rng = random.Random(14)
    trials = 4000
    covered = 0
    for _ in range(trials):
        interval = mean_interval([rng.gauss(10.0, 3.0) for _ in range(5)])
        assert interval.low is not None
        assert interval.high is not None
        covered += interval.low <= 10.0 <= interval.high
    assert 0.935 <= covered / trials <= 0.965


@pytest.mark.parametrize(("a", "b", "printed"), WELCH_EXAMPLES)
def test_welch_reproduces_the_textbook_examples(
    a: list[float], b: list[float], printed: tuple[float, float, float]
) -> None:
    result = welch(a, b)
    assert result is not None
    assert result.statistic is not None
    assert result.df is not None
    t, df, p = printed
    # To the digits printed there (the article rounds -2.2255 down to -2.22).
    assert result.statistic == pytest.approx(t, abs=0.006)
    assert result.df == pytest.approx(df, abs=0.06)
    assert result.p_value == pytest.approx(p, abs=0.0006)


@given(a=samples, b=samples)
def test_welch_is_symmetric_and_its_p_value_a_probability(a: list[float], b: list[float]) -> None:
    forward, backward = welch(a, b), welch(b, a)
    assert forward is not None
    assert backward is not None
    assert 0.0 <= forward.p_value <= 1.0
    assert forward.p_value == backward.p_value
    assert forward.df == backward.df
    if forward.statistic is None:
        assert backward.statistic is None
        assert forward.p_value == 0.0
    else:
        assert backward.statistic == -forward.statistic


@given(a=samples, shift=st.floats(min_value=-1e3, max_value=1e3))
def test_welch_sees_no_difference_between_a_sample_and_itself(a: list[float], shift: float) -> None:
    same = welch(a, a)
    assert same is not None
    assert same.p_value == 1.0
    moved = welch([value + shift for value in a], [value + shift for value in a])
    assert moved is not None
    assert moved.p_value == pytest.approx(1.0)


def test_welch_needs_two_values_a_side_and_decides_on_means_without_spread() -> None:
    assert welch([1.0], [1.0, 2.0]) is None
    assert welch([1.0, 2.0], []) is None
    equal = welch([5.0, 5.0], [5.0, 5.0, 5.0])
    assert equal is not None
    assert (equal.statistic, equal.p_value) == (0.0, 1.0)
    apart = welch([5.0, 5.0], [6.0, 6.0])
    assert apart is not None
    assert (apart.statistic, apart.p_value, apart.df) == (None, 0.0, 2.0)
    # One side without spread: the other's decides, on its own degrees of freedom.
    one_sided = welch([5.0, 5.0, 5.0], [4.0, 6.0, 5.0, 5.0])
    assert one_sided is not None
    assert one_sided.df == pytest.approx(3.0)


def test_welch_rejects_a_true_null_hypothesis_five_times_in_a_hundred() -> None:
    # Equal means, unequal variances and sizes: Welch's case. Seeded, so it is exact.
    rng = random.Random(15)
    trials = 4000
    rejected = 0
    for _ in range(trials):
        result = welch([rng.gauss(0, 1) for _ in range(4)], [rng.gauss(0, 3) for _ in range(7)])
        assert result is not None
        rejected += result.p_value < 0.05
    assert 0.035 <= rejected / trials <= 0.065


def test_mann_whitney_known_value() -> None:
    # Completely separated samples of five: U = 0, z = -12 / sqrt(275 / 12) with the
    # continuity correction, p = 0.0122 (R's wilcox.test(exact=FALSE) prints the same).
    result = mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert result is not None
    assert result.statistic is not None
    assert result.statistic == pytest.approx(-12 / math.sqrt(275 / 12))
    assert result.p_value == pytest.approx(0.01218578, abs=1e-8)


def test_mann_whitney_corrects_for_ties() -> None:
    # U of a = 3.5 of 12; the tie groups (sizes 2, 3 and 2) shrink the variance.
    a, b = [1.0, 2.0, 2.0], [2.0, 3.0, 3.0, 1.0]
    variance = 3 * 4 / 12 * (8 - ((2**3 - 2) + (3**3 - 3) + (2**3 - 2)) / (7 * 6))
    result = mann_whitney(a, b)
    assert result is not None
    assert result.statistic is not None
    assert result.statistic == pytest.approx(-(abs(3.5 - 6) - 0.5) / math.sqrt(variance))


@given(a=st.lists(figures, min_size=1, max_size=15), b=st.lists(figures, min_size=1, max_size=15))
def test_mann_whitney_is_symmetric_and_its_p_value_a_probability(
    a: list[float], b: list[float]
) -> None:
    forward, backward = mann_whitney(a, b), mann_whitney(b, a)
    assert forward is not None
    assert backward is not None
    assert 0.0 <= forward.p_value <= 1.0
    assert forward.p_value == pytest.approx(backward.p_value)
    assert forward.statistic == pytest.approx(-(backward.statistic or 0.0))


def test_mann_whitney_of_nothing_or_of_ties_only() -> None:
    assert mann_whitney([], [1.0]) is None
    ties = mann_whitney([2.0, 2.0], [2.0])
    assert ties is not None
    assert ties.p_value == 1.0

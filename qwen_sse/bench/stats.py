"""The statistics that say whether benchmark figures differ: Student-t confidence intervals,
Welch's t-test and the Mann-Whitney U test, with the distributions they need.

Edge layer (bench), but pure: numbers in, numbers out; standard library only (``math``,
``statistics``), no numpy or scipy. Student's t distribution is computed, not tabled: its
CDF through the regularized incomplete beta function (a continued fraction evaluated by
the modified Lentz method, as in Numerical Recipes, section 6.4), and its quantiles by
bisection on that CDF, so any degrees of freedom work, fractional ones (Welch) included.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import msgspec

__all__ = [
    "Interval",
    "TestResult",
    "mann_whitney",
    "mean_interval",
    "normal_cdf",
    "regularized_beta",
    "t_cdf",
    "t_quantile",
    "t_two_sided_p",
    "welch",
]

# The continued fraction stops when a step changes it by less than this (relative).
_FRACTION_EPSILON = 1e-15
# Lentz's guard against a zero denominator.
_TINY = 1e-300
# Enough for every a, b the t distribution meets up to 10^8 degrees of freedom (the
# fraction needs about sqrt(max(a, b)) steps); more means a bug, and it says so.
_FRACTION_STEPS = 20_000


class Interval(msgspec.Struct, frozen=True, kw_only=True):
    """The mean of ``n`` values and its two-sided confidence interval, Student t:
    ``mean ± t(1 - (1 - confidence)/2, n - 1) * std / sqrt(n)``, ``std`` the sample
    standard deviation (n - 1 in the denominator). ``std``, ``half_width``, ``low`` and
    ``high`` are None below two values: one value says nothing about its spread."""

    n: int
    mean: float
    std: float | None
    half_width: float | None
    low: float | None
    high: float | None


class TestResult(msgspec.Struct, frozen=True, kw_only=True):
    """A two-sided test of two samples: its ``statistic`` (t, or z for Mann-Whitney; None
    when infinite, i.e. no spread on either side and different centres), the degrees of
    freedom where the test has them, and the ``p_value`` in [0, 1]."""

    __test__ = False  # not a pytest class, whatever its name

    statistic: float | None
    df: float | None
    p_value: float


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for ``0 <= x <= 1`` and
    positive ``a``, ``b``: the CDF at ``x`` of the Beta(a, b) distribution."""
    if not (a > 0 and b > 0) or math.isinf(a) or math.isinf(b):
        raise ValueError(f"the beta function needs finite positive a and b, got {a}, {b}")
    if not 0 <= x <= 1:
        raise ValueError(f"the beta function's x must lie in [0, 1], got {x}")
    return _beta(x, 1.0 - x, a, b)


def _beta(x: float, y: float, a: float, b: float) -> float:
    """I_x(a, b) with ``y = 1 - x`` given exactly by the caller (precision near x = 1)."""
    if x <= 0:
        return 0.0
    if y <= 0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    )
    # The fraction converges fast only below the mean of the distribution; above it, use
    # the symmetry I_x(a, b) = 1 - I_(1-x)(b, a).
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(y, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b), by the modified Lentz method."""
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) >= _TINY else _TINY)
    fraction = d
    for m in range(1, _FRACTION_STEPS):
        # Even step, then odd step, of the fraction's coefficients.
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) >= _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) >= _TINY else _TINY
            step = c * d
            fraction *= step
        if abs(step - 1.0) < _FRACTION_EPSILON:
            return fraction
    raise ArithmeticError(f"the beta fraction did not converge for x={x}, a={a}, b={b}")


def normal_cdf(z: float) -> float:
    """The standard normal distribution's CDF."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _check_df(df: float) -> None:
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (``df`` may be
    fractional, or infinite for the normal distribution): a two-sided test's p-value."""
    _check_df(df)
    if math.isnan(t):
        raise ValueError("t is not a number")
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2.0))
    t2 = t * t
    if math.isinf(t2):
        return 0.0
    # P(|T| >= |t|) = I_(df/(df+t^2))(df/2, 1/2).
    return _beta(df / (df + t2), t2 / (df + t2), df / 2, 0.5)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (see :func:`t_two_sided_p`)."""
    tail = 0.5 * t_two_sided_p(t, df)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom, ``0 < p < 1``:
    the ``t`` with ``t_cdf(t, df) == p``, found by bisection to the last bit of a float
    (the CDF is monotonic, so bisection cannot fail to converge)."""
    _check_df(df)
    if not 0 < p < 1:
        raise ValueError(f"a quantile's probability must lie strictly in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    # Two-sided tail of the quantile: decreasing in t, so bracket it and halve the bracket.
    target = 2.0 * (1.0 - p)
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > target:
        low, high = high, high * 2.0
    while True:
        middle = (low + high) / 2.0
        if middle in (low, high):
            return high
        if t_two_sided_p(middle, df) > target:
            low = middle
        else:
            high = middle


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` and its Student-t confidence interval (see :class:`Interval`)."""
    if not values:
        raise ValueError("an interval needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"a confidence must lie strictly in (0, 1), got {confidence}")
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(n=n, mean=mean, std=None, half_width=None, low=None, high=None)
    std = statistics.stdev(values)
    half_width = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Interval(
        n=n,
        mean=mean,
        std=std,
        half_width=half_width,
        low=mean - half_width,
        high=mean + half_width,
    )


def welch(a: Sequence[float], b: Sequence[float]) -> TestResult | None:
    """Welch's two-sided t-test of equal means, without assuming equal variances:
    ``t = (mean_a - mean_b) / sqrt(var_a/n_a + var_b/n_b)`` with the Welch-Satterthwaite
    degrees of freedom. None when a side has fewer than two values (nothing to judge a
    difference against). With no spread on either side the means decide alone: p is 1
    when they are equal and 0 when not (``statistic`` None, ``df`` ``n_a + n_b - 2``)."""
    if len(a) < 2 or len(b) < 2:
        return None
    mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
    share_a = statistics.variance(a) / len(a)
    share_b = statistics.variance(b) / len(b)
    squared_error = share_a + share_b
    if squared_error == 0:
        pooled_df = float(len(a) + len(b) - 2)
        if mean_a == mean_b:
            return TestResult(statistic=0.0, df=pooled_df, p_value=1.0)
        return TestResult(statistic=None, df=pooled_df, p_value=0.0)
    # Each side's share of the squared error, so the degrees of freedom cannot underflow.
    weight_a, weight_b = share_a / squared_error, share_b / squared_error
    df = 1.0 / (weight_a**2 / (len(a) - 1) + weight_b**2 / (len(b) - 1))
    t = (mean_a - mean_b) / math.sqrt(squared_error)
    if math.isinf(t):
        return TestResult(statistic=None, df=df, p_value=0.0)
    return TestResult(statistic=t, df=df, p_value=t_two_sided_p(t, df))


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> TestResult | None:
    """The Mann-Whitney U test (Wilcoxon rank-sum), two-sided: do values of one sample
    tend to be larger than the other's? The normal approximation with the tie correction
    and a continuity correction of 1/2; ``statistic`` is z (U of ``a`` centred and scaled).
    None when a side is empty; p is 1 when every value ties."""
    n_a, n_b = len(a), len(b)
    if not n_a or not n_b:
        return None
    pooled = sorted([(value, 0) for value in a] + [(value, 1) for value in b])
    rank_sum_a = 0.0
    tie_term = 0
    start = 0
    while start < len(pooled):
        end = start
        while end + 1 < len(pooled) and pooled[end + 1][0] == pooled[start][0]:
            end += 1
        # Tied values share the mean of the ranks they span (ranks count from 1).
        rank = (start + end) / 2 + 1
        rank_sum_a += rank * sum(1 for _, side in pooled[start : end + 1] if side == 0)
        ties = end - start + 1
        tie_term += ties**3 - ties
        start = end + 1
    u_a = rank_sum_a - n_a * (n_a + 1) / 2
    n = n_a + n_b  # at least 2
    variance = n_a * n_b / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:  # every value ties
        return TestResult(statistic=0.0, df=None, p_value=1.0)
    centred = u_a - n_a * n_b / 2
    corrected = max(abs(centred) - 0.5, 0.0)
    z = math.copysign(corrected, centred) / math.sqrt(variance)
    return TestResult(statistic=z, df=None, p_value=math.erfc(abs(z) / math.sqrt(2.0)))

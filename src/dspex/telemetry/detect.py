"""The statistics behind live signals: robust z-scores, a two-proportion test, Welch's z, CUSUM, the
Mann-Kendall trend test and two homogeneity tests. Plain Python (``statistics``, ``math``); each is a
standard, textbook method, named so its thresholds can be read in the literature:

- :func:`robust_z`: the modified z-score of Iglewicz and Hoaglin (1993), ``(x - median) / (1.4826 *
  MAD)``; 3.5 is their recommended outlier cut-off. Medians and MADs shrug off the heavy tails of
  latencies and costs, where means and standard deviations would be dragged by one slow run.
- :func:`two_proportion_z`: the pooled two-proportion z-test for "the recent error rate is higher than
  the baseline's"; one-sided, 3.09 is p = 0.001.
- :func:`welch_z`: the difference of two means over Welch's standard error (unequal variances).
- :class:`Cusum`: Page's two-sided tabular CUSUM on standardised values with reference ``k`` and
  decision interval ``h`` (Montgomery, *Introduction to Statistical Quality Control*, ch. 9).
- :func:`mann_kendall_z`: the Mann-Kendall test statistic for a monotone trend (normal approximation
  with continuity correction; no ties correction, which only makes it conservative).
- :func:`kruskal_wallis_h` and :func:`chi2_homogeneity`: "the consecutive segments of a window come from
  one distribution" for values and for rates; :func:`chi2_z` turns either chi-square statistic into a
  normal z (Wilson-Hilferty), so every threshold here reads on one scale.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "MAD_SCALE",
    "Cusum",
    "CusumAlarm",
    "chi2_homogeneity",
    "chi2_z",
    "kruskal_wallis_h",
    "mad",
    "mann_kendall_z",
    "normal_sf",
    "robust_z",
    "siegmund_arl",
    "two_proportion_z",
    "welch_z",
]

MAD_SCALE = 1.4826  # makes the MAD a consistent estimator of the standard deviation of a normal


def mad(values: Sequence[float], center: float | None = None) -> float:
    """The median absolute deviation from ``center`` (default: the median).

    >>> mad([1.0, 2.0, 3.0, 4.0, 100.0])
    1.0
    """
    middle = statistics.median(values) if center is None else center
    return statistics.median(abs(v - middle) for v in values)


def robust_z(value: float, baseline: Sequence[float], *, floor: float = 0.0) -> float:
    """How many robust standard deviations ``value`` lies above the median of ``baseline``.

    The scale is ``max(1.4826 * MAD, floor)``: a baseline of identical values (a scripted LM, a fixed
    price) has a MAD of 0, and a floor keeps a tiny change from reading as an infinite z.

    >>> round(robust_z(30.0, [10.0, 11.0, 9.0, 10.0, 12.0, 8.0]), 1)
    13.5
    """
    center = statistics.median(baseline)
    scale = max(MAD_SCALE * mad(baseline, center), floor)
    if scale <= 0.0:
        return 0.0 if value == center else math.copysign(math.inf, value - center)
    return (value - center) / scale


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def two_proportion_z(successes_a: int, n_a: int, successes_b: int, n_b: int) -> float:
    """The pooled two-proportion z statistic for ``p_a > p_b`` (positive when a's rate is higher).

    >>> round(two_proportion_z(6, 20, 2, 100), 2)
    4.58
    """
    if n_a <= 0 or n_b <= 0:
        return 0.0
    pooled = (successes_a + successes_b) / (n_a + n_b)
    if pooled <= 0.0 or pooled >= 1.0:
        return 0.0
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    return (successes_a / n_a - successes_b / n_b) / se


def welch_z(a: Sequence[float], b: Sequence[float], *, sd_floor: float = 0.0) -> float:
    """``(mean(a) - mean(b))`` over Welch's standard error, each standard deviation at least ``sd_floor``.

    >>> round(welch_z([0.9, 0.8, 0.85, 0.95], [0.3, 0.4, 0.35, 0.2], sd_floor=0.05), 1)
    10.5
    """
    if len(a) < 2 or len(b) < 2:
        return 0.0
    sd_a = max(statistics.stdev(a), sd_floor)
    sd_b = max(statistics.stdev(b), sd_floor)
    se = math.sqrt(sd_a**2 / len(a) + sd_b**2 / len(b))
    if se <= 0.0:
        return 0.0
    return (statistics.fmean(a) - statistics.fmean(b)) / se


@dataclass(frozen=True, slots=True)
class CusumAlarm:
    """A CUSUM decision: the direction, the reference level, the estimated new level, the statistic."""

    direction: int  # +1: the level went up; -1: down
    reference: float
    estimate: float
    statistic: float
    observations: int  # since the sum last left zero


@dataclass(slots=True)
class Cusum:
    """Page's two-sided tabular CUSUM with a reference learnt from the first ``warmup`` values.

    Values are standardised by the reference mean and standard deviation (at least ``sd_floor``: a fixed
    price has none). Each value moves the upper sum by ``z - k`` and the lower by ``-z - k``, floored at
    0; a sum above ``h`` is an alarm, reported only when the estimated shift (``sd * (k + S / N)``, S the
    sum and N the values since it left zero) is at least ``min_shift``. After an alarm the reference is
    learnt again: the new level becomes normal.

    >>> cusum = Cusum(warmup=4, k=0.5, h=8.0, sd_floor=0.05)
    >>> [cusum.add(v) for v in (1.0, 1.1, 0.9, 1.0)] == [None] * 4
    True
    >>> alarms = [cusum.add(2.0) for _ in range(5)]
    >>> next(a for a in alarms if a is not None).direction
    1
    """

    warmup: int = 30
    k: float = 0.5
    h: float = 8.0
    sd_floor: float = 1e-12
    min_shift: float = 0.0
    _learning: list[float] = field(default_factory=list)
    _mean: float | None = None
    _sd: float = 0.0
    _high: float = 0.0
    _low: float = 0.0
    _n_high: int = 0
    _n_low: int = 0

    @property
    def reference(self) -> float | None:
        """The in-control mean, once learnt."""
        return self._mean

    def add(self, value: float) -> CusumAlarm | None:
        """Take one value; an alarm when the level has shifted (see the class docstring)."""
        if self._mean is None:
            self._learning.append(value)
            if len(self._learning) >= self.warmup:
                mean = statistics.fmean(self._learning)
                sd = statistics.stdev(self._learning) if len(self._learning) > 1 else 0.0
                self._mean, self._sd = mean, max(sd, self.sd_floor, 1e-12)
                self._learning = []
            return None
        z = (value - self._mean) / self._sd
        self._high = max(0.0, self._high + z - self.k)
        self._low = max(0.0, self._low - z - self.k)
        self._n_high = self._n_high + 1 if self._high > 0.0 else 0
        self._n_low = self._n_low + 1 if self._low > 0.0 else 0
        for direction, total, count in ((1, self._high, self._n_high), (-1, self._low, self._n_low)):
            if total > self.h and count:
                shift = direction * self._sd * (self.k + total / count)
                if abs(shift) >= self.min_shift:
                    alarm = CusumAlarm(direction, self._mean, self._mean + shift, total, count)
                    self.restart()
                    return alarm
        return None

    def restart(self) -> None:
        """Forget the reference and the sums; the next ``warmup`` values set a new reference."""
        self._learning, self._mean, self._sd = [], None, 0.0
        self._high = self._low = 0.0
        self._n_high = self._n_low = 0


def siegmund_arl(shift: float, k: float, h: float) -> float:
    """Siegmund's approximation of a one-sided CUSUM's average run length for a mean shift of ``shift``
    standard deviations (0: the in-control ARL, i.e. runs between false alarms).

    >>> round(siegmund_arl(0.0, 0.5, 8.0))
    19112
    """
    delta = shift - k
    b = h + 1.166
    if abs(delta) < 1e-9:
        return b * b
    return (math.exp(-2.0 * delta * b) + 2.0 * delta * b - 1.0) / (2.0 * delta * delta)


def mann_kendall_z(values: Sequence[float]) -> float:
    """The Mann-Kendall z for a monotone trend in ``values`` (positive: increasing).

    >>> round(mann_kendall_z([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), 2)
    2.63
    """
    n = len(values)
    if n < 3:
        return 0.0
    s = 0
    for i in range(n - 1):
        for j in range(i + 1, n):
            difference = values[j] - values[i]
            s += (difference > 0) - (difference < 0)
    variance = n * (n - 1) * (2 * n + 5) / 18.0
    if s == 0:
        return 0.0
    return (s - math.copysign(1.0, s)) / math.sqrt(variance)


def chi2_z(statistic: float, df: int) -> float:
    """A chi-square statistic with ``df`` degrees of freedom as a standard normal z (Wilson-Hilferty).

    >>> round(chi2_z(24.32, 7), 2)  # the 0.999 quantile of chi-square(7): z = 3.09 exactly
    3.07
    """
    if df <= 0 or statistic <= 0.0:
        return -math.inf if df > 0 else 0.0
    scale = 2.0 / (9.0 * df)
    return (math.pow(statistic / df, 1.0 / 3.0) - (1.0 - scale)) / math.sqrt(scale)


def chi2_homogeneity(failures: Sequence[int], totals: Sequence[int]) -> float:
    """Pearson's chi-square statistic for "every group has the same rate" (``len(totals) - 1`` df).

    >>> chi2_homogeneity([1, 1, 1], [10, 10, 10])
    0.0
    """
    n = sum(totals)
    failed = sum(failures)
    if n == 0 or failed in (0, n):
        return 0.0
    rate = failed / n
    statistic = 0.0
    for observed, total in zip(failures, totals, strict=True):
        if total == 0:
            continue
        expected_fail, expected_ok = total * rate, total * (1.0 - rate)
        statistic += (observed - expected_fail) ** 2 / expected_fail
        statistic += ((total - observed) - expected_ok) ** 2 / expected_ok
    return statistic


def kruskal_wallis_h(groups: Sequence[Sequence[float]]) -> float:
    """The Kruskal-Wallis H statistic for "every group comes from the same distribution" (``len(groups) -
    1`` df; average ranks for ties, no tie correction, which only makes it conservative).

    >>> round(kruskal_wallis_h([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]), 2)
    7.2
    """
    values = sorted((value, index) for index, group in enumerate(groups) for value in group)
    n = len(values)
    if n < 2:
        return 0.0
    rank_sums = [0.0] * len(groups)
    start = 0
    while start < n:
        end = start
        while end + 1 < n and values[end + 1][0] == values[start][0]:
            end += 1
        rank = (start + end) / 2.0 + 1.0
        for position in range(start, end + 1):
            rank_sums[values[position][1]] += rank
        start = end + 1
    total = sum(rank_sums[i] ** 2 / len(group) for i, group in enumerate(groups) if group)
    return 12.0 / (n * (n + 1)) * total - 3.0 * (n + 1)

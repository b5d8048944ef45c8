"""Confidence intervals of the leaderboard's accuracies: a 95 % Wilson score interval from the
number of samples an accuracy is counted over and how many of them count (correct, robust).

Every accuracy in the defenses' tables is a share of per-sample verdicts: clean accuracy over the
evaluated samples (a randomised defense's verdict on a sample is the majority of its passes), a
match's robust accuracy over the same samples, the per-example worst case likewise. Each verdict
is a 0/1 outcome, so the share is a binomial proportion and its interval is the binomial one.

Why Wilson rather than Clopper–Pearson: Wilson's coverage is close to the nominal 95 % on average
over the true accuracy (Brown, Cai & DasGupta 2001, who recommend it for small n), while
Clopper–Pearson's is never below 95 % and therefore wider than it needs to be (for 45 of 100:
Wilson [35.6, 54.8], Clopper–Pearson [35.0, 55.3]); Wilson also stays inside [0, 1], is sensible
at 0 and n (unlike the normal approximation, which gives [0, 0] at 0 of n), and needs no scipy.

What an interval covers: the sampling of the test examples (another draw of n test samples from
the same distribution), the defense's own randomness included, since it is part of each sample's
verdict. It does not cover the attack's randomness (its seed and restarts), and the intervals are
per value, not simultaneous. Two defenses are evaluated on the same samples, so overlapping
intervals do not mean that two numbers are indistinguishable (a paired test on the masks, such as
McNemar's, is the right comparison). For an incomplete worst case (an upper bound), the interval is
that of the upper bound.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCE = 0.95
METHOD = "wilson"
_Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """``successes`` of ``samples`` and the 95 % Wilson interval [``low``, ``high``] of their share."""

    successes: int
    samples: int
    low: float
    high: float

    @property
    def share(self) -> float:
        return self.successes / self.samples

    def as_dict(self) -> dict[str, object]:
        return {"samples": self.samples, "ci_low": self.low, "ci_high": self.high}


def wilson(successes: int, samples: int, z: float = _Z) -> Interval | None:
    """The Wilson score interval of ``successes`` out of ``samples`` (None for no sample)."""
    if samples <= 0 or not 0 <= successes <= samples:
        return None
    n, p = samples, successes / samples
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    if successes == 0:
        low = 0.0  # exactly: rounding must not leave a hair above the observed share
    if successes == samples:
        high = 1.0
    return Interval(successes, samples, low, high)


def of_mask(mask: Sequence[bool] | None) -> Interval | None:
    """The interval of a per-sample mask (True: correct, robust)."""
    if not mask:
        return None
    return wilson(sum(bool(v) for v in mask), len(mask))


def of_share(share: float | None, samples: int) -> Interval | None:
    """The interval of a stored share over ``samples`` samples, where no mask was stored: only if
    ``share`` is a whole count of them (a crafted or partial row gets none)."""
    if not isinstance(share, (int, float)) or isinstance(share, bool) or samples <= 0 or not math.isfinite(share):
        return None
    count = round(share * samples)
    return wilson(count, samples) if math.isclose(count / samples, share, abs_tol=1e-9) else None


def fields(interval: Interval | None, prefix: str = "") -> dict[str, object]:
    """``samples``, ``ci_low`` and ``ci_high`` (with ``prefix``) for JSON and CSV rows; None where
    there is no interval."""
    keys = (f"{prefix}samples", f"{prefix}ci_low", f"{prefix}ci_high")
    if interval is None:
        return dict.fromkeys(keys)
    return dict(zip(keys, (interval.samples, interval.low, interval.high)))

"""Statistics for the gates: the paired bootstrap, latency percentiles and ratios.

Every random draw comes from a ``random.Random`` seeded by the caller, so the same
inputs and seed give the same interval on every machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from loradeploy.domain.smoke import percentile
from loradeploy.errors import UsageError

__all__ = ["ConfidenceInterval", "bootstrap_means", "paired_bootstrap", "percentile", "ratio"]


@dataclass(frozen=True)
class ConfidenceInterval:
    mean: float  # the observed mean difference
    low: float
    high: float
    confidence: float
    samples: int


def paired_bootstrap(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    confidence: float = 0.95,
    samples: int = 2000,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile-bootstrap interval of mean(candidate - baseline) over paired items.

    Pairs are resampled together (the same question for both), so the variation
    between questions cancels and only the difference between the two systems counts.
    """
    if len(candidate) != len(baseline):
        raise UsageError(f"paired scores differ in length ({len(candidate)} and {len(baseline)})")
    if not candidate:
        raise UsageError("no paired scores to compare")
    if not 0 < confidence < 1:
        raise UsageError(f"confidence {confidence} is not between 0 and 1")
    if samples < 1:
        raise UsageError("bootstrap samples must be at least 1")
    diffs = [c - b for c, b in zip(candidate, baseline, strict=True)]
    means = bootstrap_means(diffs, samples=samples, seed=seed)
    tail = (1 - confidence) / 2 * 100
    return ConfidenceInterval(
        mean=sum(diffs) / len(diffs),
        low=percentile(means, tail),
        high=percentile(means, 100 - tail),
        confidence=confidence,
        samples=samples,
    )


def bootstrap_means(diffs: Sequence[float], *, samples: int, seed: int) -> list[float]:
    """The sorted means of ``samples`` resamples (with replacement) of ``diffs``: the
    bootstrap distribution behind ``paired_bootstrap``, drawn the same way, so a report
    can show it again from the recorded per-question differences and the gate's seed."""
    count = len(diffs)
    if not count:
        return []
    rng = random.Random(seed)
    return sorted(sum(diffs[rng.randrange(count)] for _ in range(count)) / count for _ in range(samples))


def ratio(candidate: float, baseline: float) -> float:
    """candidate / baseline; 1.0 when both are zero, infinity when only the baseline is."""
    if baseline == 0:
        return 1.0 if candidate == 0 else math.inf
    return candidate / baseline

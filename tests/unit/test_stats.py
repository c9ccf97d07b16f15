"""domain/stats.py: the paired bootstrap on data whose answer is known, and ratios."""

from __future__ import annotations

import math

import pytest

from loradeploy.domain.stats import paired_bootstrap, ratio
from loradeploy.errors import UsageError


def test_a_constant_difference_has_a_zero_width_interval() -> None:
    baseline = [0.1 * i for i in range(10)]
    interval = paired_bootstrap([b + 0.25 for b in baseline], baseline, samples=500, seed=3)
    assert interval.mean == pytest.approx(0.25)
    assert interval.low == pytest.approx(0.25)
    assert interval.high == pytest.approx(0.25)


def test_pairing_removes_the_variation_between_questions() -> None:
    # Questions differ wildly in difficulty, the candidate is always exactly as good:
    # an unpaired comparison would see noise, the paired one sees none.
    baseline = [0.0, 1.0, 0.2, 0.9, 0.5, 0.05, 0.7]
    interval = paired_bootstrap(list(baseline), baseline)
    assert (interval.low, interval.mean, interval.high) == (0.0, 0.0, 0.0)


def test_the_interval_matches_the_normal_approximation_for_a_known_spread() -> None:
    # 400 differences of +1 and -1: mean 0, standard deviation 1, so the 95% interval
    # of the mean is about +-1.96/sqrt(400) = +-0.098.
    diffs = [1.0 if i % 2 else -1.0 for i in range(400)]
    interval = paired_bootstrap(diffs, [0.0] * 400, confidence=0.95, samples=4000, seed=1)
    assert interval.mean == pytest.approx(0.0)
    assert -0.12 < interval.low < -0.08
    assert 0.08 < interval.high < 0.12


def test_a_wider_confidence_gives_a_wider_interval() -> None:
    diffs = [1.0 if i % 3 else -0.5 for i in range(60)]
    narrow = paired_bootstrap(diffs, [0.0] * 60, confidence=0.8, seed=5)
    wide = paired_bootstrap(diffs, [0.0] * 60, confidence=0.99, seed=5)
    assert wide.low < narrow.low <= narrow.mean <= narrow.high < wide.high


def test_the_same_seed_gives_the_same_interval_and_another_seed_may_not() -> None:
    diffs = [0.3, -0.2, 0.1, 0.6, -0.4, 0.0, 0.2, 0.5]
    first = paired_bootstrap(diffs, [0.0] * 8, seed=11)
    assert paired_bootstrap(diffs, [0.0] * 8, seed=11) == first
    assert paired_bootstrap(diffs, [0.0] * 8, seed=12) != first


@pytest.mark.parametrize(
    ("candidate", "baseline", "kwargs"),
    [
        ([1.0], [1.0, 2.0], {}),
        ([], [], {}),
        ([1.0], [1.0], {"confidence": 1.0}),
        ([1.0], [1.0], {"samples": 0}),
    ],
)
def test_bad_inputs_are_usage_errors(
    candidate: list[float], baseline: list[float], kwargs: dict[str, float]
) -> None:
    with pytest.raises(UsageError):
        paired_bootstrap(candidate, baseline, **kwargs)  # type: ignore[arg-type]


def test_ratio() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(0.0, 0.0) == 1.0
    assert math.isinf(ratio(1.0, 0.0))

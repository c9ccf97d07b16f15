"""domain/gates.py: every check passes at its threshold and fails just beyond it."""

from __future__ import annotations

import pytest

from loradeploy.domain.gates import (
    METRIC_F1,
    METRIC_LOSS,
    EvalThresholds,
    PerfThresholds,
    SlotLoad,
    decide_eval,
    decide_perf,
    decide_quality,
)
from loradeploy.domain.judge import Judgement, calibration_accuracy, calibration_pairs
from loradeploy.domain.scoring import QaExample


def checks(decision: object) -> dict[str, bool]:
    return {c.name: c.passed for c in decision.checks}  # type: ignore[attr-defined]


# -- quality gate ---------------------------------------------------------------------------


def test_quality_passes_at_its_thresholds() -> None:
    decision = decide_quality({METRIC_F1: 0.5, METRIC_LOSS: 1.0}, min_f1=0.5, max_eval_loss=1.0)
    assert decision.passed
    assert [(c.name, c.value, c.threshold) for c in decision.checks] == [
        (METRIC_F1, 0.5, 0.5),
        (METRIC_LOSS, 1.0, 1.0),
    ]


@pytest.mark.parametrize(
    ("metrics", "failed"),
    [
        ({METRIC_F1: 0.4999, METRIC_LOSS: 0.5}, METRIC_F1),
        ({METRIC_F1: 0.9, METRIC_LOSS: 1.0001}, METRIC_LOSS),
        ({METRIC_LOSS: 0.5}, METRIC_F1),  # a missing metric fails
    ],
)
def test_quality_fails_beyond_a_threshold(metrics: dict[str, float], failed: str) -> None:
    decision = decide_quality(metrics, min_f1=0.5, max_eval_loss=1.0)
    assert not decision.passed
    assert [name for name, ok in checks(decision).items() if not ok] == [failed]


def test_quality_checks_only_the_thresholds_given() -> None:
    decision = decide_quality({METRIC_LOSS: 9.0}, min_f1=None, max_eval_loss=None)
    assert decision.passed and decision.checks == []


# -- Gate 1 ---------------------------------------------------------------------------------


def even_judge(count: int) -> list[Judgement]:
    return [Judgement(i % 2 == 0, "A", "A") for i in range(count)]  # win rate exactly 0.5


def test_eval_passes_when_every_check_is_at_its_threshold() -> None:
    live = [0.5, 0.7, 0.9, 0.3]
    candidate = [x - 0.1 for x in live]  # constant difference -0.1: the CI is [-0.1, -0.1]
    thresholds = EvalThresholds(
        min_score=sum(candidate) / 4, margin=0.1, min_win_rate=0.5, bootstrap_samples=200
    )
    decision = decide_eval(candidate, live, even_judge(4), thresholds, **CALIBRATED)
    assert checks(decision) == {
        "quality-floor": True,
        "non-inferiority": True,
        "judge-calibration": True,
        "judge-win-rate": True,
    }
    assert decision.figures["f1_diff_ci_low"] == pytest.approx(-0.1)


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({"min_score": 0.5001}, "quality-floor"),
        ({"margin": 0.0999}, "non-inferiority"),
        ({"min_win_rate": 0.5001}, "judge-win-rate"),
    ],
)
def test_eval_fails_just_beyond_each_threshold(change: dict[str, float], failed: str) -> None:
    candidate, live = [0.5, 0.5], [0.6, 0.6]  # mean 0.5, difference -0.1
    base = {"min_score": 0.5, "margin": 0.1, "min_win_rate": 0.5, "bootstrap_samples": 100}
    decision = decide_eval(candidate, live, even_judge(2), EvalThresholds(**{**base, **change}), **CALIBRATED)
    assert [name for name, ok in checks(decision).items() if not ok] == [failed]
    assert not decision.passed


def test_eval_reports_value_and_threshold_of_every_check() -> None:
    decision = decide_eval(
        [1.0, 0.0], [0.0, 0.0], even_judge(2), EvalThresholds(bootstrap_samples=100), **CALIBRATED
    )
    for check in decision.checks:
        assert check.value is not None and check.threshold is not None and check.detail
    assert decision.figures["candidate_f1"] == 0.5 and decision.figures["live_f1"] == 0.0


# -- Gate 2 ---------------------------------------------------------------------------------


def load(
    slot: str, latencies: list[float], *, errors: int = 0, tokens: int = 100, busy: float = 10.0
) -> SlotLoad:
    return SlotLoad(slot=slot, latencies_s=latencies, errors=errors, completion_tokens=tokens, busy_s=busy)


def test_slot_load_figures() -> None:
    figures = load("c", [1.0, 2.0, 3.0, 4.0, 5.0], errors=5, tokens=50, busy=5.0)
    assert figures.requests == 10
    assert figures.error_rate == 0.5
    assert figures.tokens_per_s == 10.0
    assert figures.p(50) == 3.0
    assert figures.p(95) == pytest.approx(4.8)


def test_perf_passes_at_its_thresholds() -> None:
    live = load("live", [1.0, 1.0, 2.0], tokens=100)
    candidate = load("cand", [1.5, 1.5, 3.0], tokens=70, errors=0)
    thresholds = PerfThresholds(
        max_p50_ratio=1.5, max_p95_ratio=1.5, min_throughput_ratio=0.7, max_error_rate=0.0
    )
    decision = decide_perf(candidate, live, thresholds)
    assert decision.passed, decision.checks
    assert [c.value for c in decision.checks] == [1.5, 1.5, 0.7, 0.0]


@pytest.mark.parametrize(
    ("candidate", "failed"),
    [
        (load("c", [1.0, 1.51, 1.6]), "p50-latency-ratio"),
        (load("c", [1.0, 1.0, 3.2]), "p95-latency-ratio"),
        (load("c", [1.0, 1.0, 1.0], tokens=69), "throughput-ratio"),
        (load("c", [1.0] * 99, errors=2), "error-rate"),
    ],
)
def test_perf_fails_beyond_each_threshold(candidate: SlotLoad, failed: str) -> None:
    live = load("live", [1.0, 1.0, 2.0] if candidate.requests < 50 else [1.0] * 99)
    thresholds = PerfThresholds(
        max_p50_ratio=1.5, max_p95_ratio=1.5, min_throughput_ratio=0.7, max_error_rate=0.01
    )
    decision = decide_perf(candidate, live, thresholds)
    assert [name for name, ok in checks(decision).items() if not ok] == [failed]


def test_perf_with_a_live_slot_that_answered_nothing_reports_no_ratio() -> None:
    decision = decide_perf(load("c", [1.0]), load("l", [], errors=3, tokens=0), PerfThresholds())
    p50 = decision.checks[0]
    assert p50.value is None and not p50.passed  # infinite ratio: not representable, fails


# -- the judge's calibration -------------------------------------------------------------

CALIBRATED = {"judge_accuracy": 1.0, "calibration_asked": 16}


def test_an_uncalibrated_judge_is_inconclusive_and_never_passes_the_worst_adapter() -> None:
    """The demo's 135M judge answers "A" to everything: win rate exactly 0.5, so its check
    used to pass for an adapter whose F1 was 0.11. Uncalibrated, it no longer counts."""
    candidate, live = [0.1, 0.1, 0.1, 0.1], [0.7, 0.7, 0.7, 0.7]
    decision = decide_eval(
        candidate,
        live,
        even_judge(4),
        EvalThresholds(bootstrap_samples=100),
        judge_accuracy=0.5,
        calibration_asked=16,
    )
    assert "judge-win-rate" not in checks(decision)
    assert not decision.passed  # decided by the F1 checks
    [calibration, judge] = decision.inconclusive
    assert (calibration.name, calibration.passed, calibration.value) == ("judge-calibration", False, 0.5)
    assert judge.name == "judge-win-rate" and judge.passed is False and "inconclusive" in judge.detail
    assert decision.figures["judge_accuracy"] == 0.5


def test_an_uncalibrated_judge_does_not_block_a_good_adapter() -> None:
    candidate, live = [0.8, 0.8], [0.7, 0.7]
    always_loses = [Judgement(True, "B", "B"), Judgement(False, "A", "A")]
    decision = decide_eval(
        candidate,
        live,
        always_loses,
        EvalThresholds(bootstrap_samples=100),
        judge_accuracy=0.5,
        calibration_asked=16,
    )
    assert decision.passed
    assert checks(decision) == {"quality-floor": True, "non-inferiority": True}


def test_a_calibrated_judge_counts() -> None:
    candidate, live = [0.8, 0.8], [0.7, 0.7]
    always_loses = [Judgement(True, "B", "B"), Judgement(False, "A", "A")]
    decision = decide_eval(
        candidate,
        live,
        always_loses,
        EvalThresholds(bootstrap_samples=100),
        judge_accuracy=0.75,
        calibration_asked=16,
    )
    assert checks(decision)["judge-win-rate"] is False
    assert not decision.passed


def _examples(n: int) -> list[QaExample]:
    return [QaExample(id=str(i), context="c", question=f"q{i}", answer=f"answer {i}") for i in range(n)]


def test_calibration_pairs_ask_each_question_in_both_orders_against_another_answer() -> None:
    pairs = calibration_pairs(_examples(10), count=4, seed=3)
    assert len(pairs) == 8
    assert [p.good_first for p in pairs] == [True, False] * 4
    for pair in pairs:
        assert pair.good == pair.example.answer and pair.bad != pair.good
    assert calibration_pairs(_examples(10), count=4, seed=3) == pairs  # seeded
    assert calibration_pairs(_examples(1), count=4, seed=3) == []


@pytest.mark.parametrize(
    ("judge", "accuracy"),
    [
        (lambda pair: "A", 0.5),  # always the first position
        (lambda pair: "B", 0.5),
        (lambda pair: "TIE", 0.0),
        (lambda pair: None, 0.0),  # unreadable
        (lambda pair: pair.expected, 1.0),  # a judge that knows
    ],
)
def test_calibration_accuracy_of_position_biased_and_good_judges(judge: object, accuracy: float) -> None:
    pairs = calibration_pairs(_examples(8), count=8, seed=0)
    verdicts = [judge(pair) for pair in pairs]  # type: ignore[operator]
    assert calibration_accuracy(pairs, verdicts) == accuracy
    assert calibration_accuracy([], []) == 0.0

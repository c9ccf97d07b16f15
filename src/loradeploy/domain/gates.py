"""The gates' decisions, pure: figures in, every check's value, threshold and verdict out.

- quality gate (after training): the training run's eval metrics against thresholds;
- Gate 1, evaluation: quality floor, non-inferiority (paired bootstrap), judge win rate;
- Gate 2, performance: p50 and p95 latency ratios, throughput ratio, error rate.

A threshold is met at equality (``>=`` for floors, ``<=`` for ceilings).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, Field

from loradeploy.domain.judge import Judgement, win_rate
from loradeploy.domain.scoring import mean
from loradeploy.domain.stats import paired_bootstrap, percentile, ratio
from loradeploy.results import Check

EVAL_PASSED, EVAL_FAILED = "eval-passed", "eval-failed"
PERF_PASSED, PERF_FAILED = "perf-passed", "perf-failed"

# Metric names the training run logs and the quality gate reads.
METRIC_F1 = "eval_token_f1"
METRIC_EXACT = "eval_exact_match"
METRIC_LOSS = "eval_loss"


class GateDecision(BaseModel):
    gate: str
    checks: list[Check]
    figures: dict[str, float | int | None] = Field(default_factory=dict)
    # Checks that ran but do not count (an uncalibrated judge's win rate): reported,
    # never passed.
    inconclusive: list[Check] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)


def _round(value: float) -> float | None:
    """Four decimals; None for infinity or NaN (not representable in JSON)."""
    return round(value, 4) if math.isfinite(value) else None


def floor_check(name: str, value: float, minimum: float, detail: str = "") -> Check:
    return Check(name=name, passed=value >= minimum, value=_round(value), threshold=minimum, detail=detail)


def ceiling_check(name: str, value: float, maximum: float, detail: str = "") -> Check:
    return Check(name=name, passed=value <= maximum, value=_round(value), threshold=maximum, detail=detail)


# -- quality gate ----------------------------------------------------------------------------


def decide_quality(
    metrics: Mapping[str, float], *, min_f1: float | None, max_eval_loss: float | None
) -> GateDecision:
    """The training run's metrics against the thresholds given (None: not checked)."""
    checks = []
    for metric, limit, is_floor in ((METRIC_F1, min_f1, True), (METRIC_LOSS, max_eval_loss, False)):
        if limit is None:
            continue
        if metric not in metrics:
            checks.append(
                Check(name=metric, passed=False, threshold=limit, detail="the run has no such metric")
            )
        elif is_floor:
            checks.append(floor_check(metric, metrics[metric], limit))
        else:
            checks.append(ceiling_check(metric, metrics[metric], limit))
    return GateDecision(gate="quality", checks=checks, figures=dict(metrics))


# -- Gate 1: evaluation ----------------------------------------------------------------------


class EvalThresholds(BaseModel):
    min_score: float = 0.5  # mean token F1 the candidate must reach on its own
    margin: float = 0.05  # how much worse than live (in mean F1) is still acceptable
    confidence: float = 0.95  # of the bootstrap interval
    bootstrap_samples: int = 2000
    min_win_rate: float = 0.4  # judge: candidate wins + ties/2, over all questions
    # The judge's verdict counts only when it named the right answer on at least this
    # share of the calibration pairs (a judge naming one position always scores 0.5).
    min_judge_accuracy: float = 0.75
    calibration_questions: int = 8  # each asked in both orders
    seed: int = 0


def decide_eval(
    candidate_f1: Sequence[float],
    live_f1: Sequence[float],
    judgements: Sequence[Judgement],
    thresholds: EvalThresholds,
    *,
    judge_accuracy: float,
    calibration_asked: int,
) -> GateDecision:
    """The checks of Gate 1. The judge's win rate counts only when the judge passed its
    calibration (``judge_accuracy`` on ``calibration_asked`` known pairs); otherwise
    it is reported as inconclusive and the gate decides on the other checks."""
    candidate_mean = mean(candidate_f1)
    interval = paired_bootstrap(
        candidate_f1,
        live_f1,
        confidence=thresholds.confidence,
        samples=thresholds.bootstrap_samples,
        seed=thresholds.seed,
    )
    rate = win_rate(judgements)
    wins = sum(j.score == 1.0 for j in judgements)
    ties = sum(j.score == 0.5 for j in judgements)
    unreadable = sum(j.verdict is None for j in judgements)
    percent = round(thresholds.confidence * 100, 1)
    checks = [
        floor_check(
            "quality-floor",
            candidate_mean,
            thresholds.min_score,
            f"candidate mean token F1 {candidate_mean:.3f} over {len(candidate_f1)} questions",
        ),
        floor_check(
            "non-inferiority",
            interval.low,
            -thresholds.margin,
            f"mean F1 difference {interval.mean:+.3f}, {percent:g}% CI "
            f"[{interval.low:+.3f}, {interval.high:+.3f}] ({interval.samples} paired resamples); "
            f"lower bound must be >= -{thresholds.margin:g}",
        ),
    ]
    calibration = floor_check(
        "judge-calibration",
        judge_accuracy,
        thresholds.min_judge_accuracy,
        f"the judge named the right answer in {round(judge_accuracy * calibration_asked)} of "
        f"{calibration_asked} known pairs",
    )
    judge = floor_check(
        "judge-win-rate",
        rate,
        thresholds.min_win_rate,
        f"{wins} wins, {ties} ties ({unreadable} unreadable), "
        f"{len(judgements) - wins - ties} losses of {len(judgements)}",
    )
    inconclusive: list[Check] = []
    if calibration.passed:
        checks += [calibration, judge]
    else:
        judge = judge.model_copy(
            update={
                "passed": False,
                "detail": f"inconclusive, not counted: the judge is uncalibrated ({calibration.detail}, "
                f"below {thresholds.min_judge_accuracy:g}); {judge.detail}",
            }
        )
        inconclusive = [calibration, judge]
    figures: dict[str, float | int | None] = {
        "questions": len(candidate_f1),
        "candidate_f1": _round(candidate_mean),
        "live_f1": _round(mean(live_f1)),
        "f1_diff": _round(interval.mean),
        "f1_diff_ci_low": _round(interval.low),
        "f1_diff_ci_high": _round(interval.high),
        "win_rate": _round(rate),
        "judge_unreadable": unreadable,
        "judge_accuracy": _round(judge_accuracy),
        "judge_calibration_pairs": calibration_asked,
    }
    return GateDecision(gate="evaluation", checks=checks, figures=figures, inconclusive=inconclusive)


# -- Gate 2: performance ---------------------------------------------------------------------


class Requests(BaseModel):
    """Latencies of the successful requests and the count of failed ones: what Gate 2
    measures per slot and a canary per version."""

    latencies_s: list[float] = Field(default_factory=list)  # successful requests only
    errors: int = 0

    @property
    def requests(self) -> int:
        return len(self.latencies_s) + self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_s, q)


class SlotLoad(Requests):
    """What one slot did under the load: per-request figures and the time it was busy."""

    slot: str
    completion_tokens: int = 0
    busy_s: float = 0.0  # wall time of this slot's rounds, summed

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.busy_s if self.busy_s > 0 else 0.0


class PerfThresholds(BaseModel):
    max_p50_ratio: float = 1.5  # candidate p50 latency / live p50
    max_p95_ratio: float = 1.75  # candidate p95 latency / live p95
    min_throughput_ratio: float = 0.7  # candidate completion tokens/s / live's
    max_error_rate: float = 0.01  # share of the candidate's requests that failed


def decide_perf(candidate: SlotLoad, live: SlotLoad, thresholds: PerfThresholds) -> GateDecision:
    p50, p95 = ratio(candidate.p(50), live.p(50)), ratio(candidate.p(95), live.p(95))
    throughput = ratio(candidate.tokens_per_s, live.tokens_per_s)
    checks = [
        ceiling_check(
            "p50-latency-ratio",
            p50,
            thresholds.max_p50_ratio,
            f"p50 {candidate.p(50):.3f}s vs {live.p(50):.3f}s",
        ),
        ceiling_check(
            "p95-latency-ratio",
            p95,
            thresholds.max_p95_ratio,
            f"p95 {candidate.p(95):.3f}s vs {live.p(95):.3f}s",
        ),
        floor_check(
            "throughput-ratio",
            throughput,
            thresholds.min_throughput_ratio,
            f"{candidate.tokens_per_s:.1f} vs {live.tokens_per_s:.1f} completion tokens/s",
        ),
        ceiling_check(
            "error-rate",
            candidate.error_rate,
            thresholds.max_error_rate,
            f"{candidate.errors} of {candidate.requests} candidate requests failed "
            f"(live: {live.errors} of {live.requests})",
        ),
    ]
    figures: dict[str, float | int | None] = {}
    for name, load in (("candidate", candidate), ("live", live)):
        figures.update(
            {
                f"{name}_p50_s": _round(load.p(50)),
                f"{name}_p95_s": _round(load.p(95)),
                f"{name}_tokens_per_s": _round(load.tokens_per_s),
                f"{name}_requests": load.requests,
                f"{name}_errors": load.errors,
            }
        )
    return GateDecision(gate="performance", checks=checks, figures=figures)

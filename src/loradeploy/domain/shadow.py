"""Shadow traffic, pure: pair the live and mirrored answers of the router's request log
and decide whether the candidate is non-inferior on real traffic.

Pairing. The proxy mirrors a request to the candidate's versioned name in the background
(LiteLLM ``silent_model``); the request log has one record for the live answer (the
client's) and one, marked ``shadow``, for the candidate's. Both carry the same ``key``
(a hash of the messages or prompt). A mirrored record is paired with the live record of
the stable name with the same key that started nearest in time, each record used once;
records left over are counted, not scored.

Scoring. Live traffic has no reference answer, so Gate 1's token F1 cannot be computed.
A pair's score is the candidate's preference against the live answer to the same
request, in [0, 1] (1: the candidate is better, 0.5: as good, 0: worse):

- cheap checks decide first, without a judge: a request that failed or came back empty
  on one side only is a loss for that side; both failed or empty, or the same answer
  after Gate 1's normalisation, is a tie;
- otherwise Gate 1's judge is asked, in both orders (each order scored as Gate 1 scores
  one verdict, the two averaged), which cancels the judge's position bias per pair;
- the judge is first calibrated the way Gate 1 calibrates it, with the live answer
  standing in for the reference: an answer to the request against the live answer to
  another request, in both orders. A judge below ``min_judge_accuracy`` decides nothing,
  and pairs that needed it are undecided (so are pairs whose texts were not logged:
  the log keeps them only with ``LORADEPLOY_REQUEST_LOG_TEXT=1``).

Decision. The per-pair difference candidate - live is ``2 * score - 1``; its paired
bootstrap interval (``domain.stats``, seeded) must have a lower bound of at least
``-margin``, Gate 1's non-inferiority rule. Undecided pairs count as ties, which pull
the interval towards zero, never below it: a lower bound under ``-margin`` is evidence of
inferiority even then ("fail"), but a candidate is only called non-inferior ("pass")
when every pair was decided; otherwise, or with fewer than ``min_pairs`` pairs, the
result is "insufficient" (inconclusive).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from loradeploy.domain.canary import Analysis
from loradeploy.domain.gates import GateDecision, floor_check
from loradeploy.domain.judge import Judgement, Verdict
from loradeploy.domain.scoring import normalize
from loradeploy.domain.stats import paired_bootstrap
from loradeploy.results import Check

SHADOW_JUDGE_SYSTEM = (
    "You compare two answers to the same request. Reply with exactly one word: A if "
    "answer A is better, B if answer B is better, TIE if they are equally good."
)
PROMPT_CHARS = 4000  # of a request shown to the judge

How = Literal["candidate-failed", "live-failed", "both-failed", "same-answer", "judge", "no-text"]


class LoggedRequest(Protocol):
    """What this module reads of a request-log record (``domain.traffic.RequestRecord``)."""

    @property
    def start(self) -> float: ...
    @property
    def stable(self) -> str | None: ...
    @property
    def name(self) -> str | None: ...
    @property
    def ok(self) -> bool: ...
    @property
    def shadow(self) -> bool: ...
    @property
    def key(self) -> str | None: ...
    @property
    def prompt(self) -> str | None: ...
    @property
    def answer(self) -> str | None: ...


class ShadowThresholds(BaseModel):
    # how much worse than live the candidate may be, in preference difference (candidate
    # score - live score per pair, within -1..1): 0.1 accepts a candidate preferred in
    # 45 % of the pairs as non-inferior
    margin: float = Field(default=0.1, ge=0, le=2)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    bootstrap_samples: int = Field(default=2000, ge=1)
    min_pairs: int = Field(default=20, ge=1)
    min_judge_accuracy: float = Field(default=0.75, ge=0, le=1)
    calibration_questions: int = Field(default=8, ge=0)  # each asked in both orders
    seed: int = 0


@dataclass(frozen=True)
class Pair:
    live: LoggedRequest
    shadow: LoggedRequest


@dataclass(frozen=True)
class Pairing:
    pairs: list[Pair]
    unpaired_live: int  # live records of the stable name no mirrored record matched
    unpaired_shadow: int  # mirrored records of the candidate with no live record


def pair_records(records: Iterable[LoggedRequest], *, stable: str, candidate: str) -> Pairing:
    """Each mirrored record of ``candidate`` with the live record of ``stable`` of the
    same key that started nearest in time; every record used at most once (a record
    without a key is never paired)."""
    live = [r for r in records if not r.shadow and r.stable == stable]
    mirrored = [r for r in records if r.shadow and r.name == candidate]
    by_key: dict[str, list[int]] = {}
    for index, record in enumerate(live):
        if record.key:
            by_key.setdefault(record.key, []).append(index)
    candidates = sorted(
        (abs(s.start - live[i].start), si, i)
        for si, s in enumerate(mirrored)
        for i in (by_key.get(s.key, []) if s.key else [])
    )
    used_live: set[int] = set()
    used_shadow: set[int] = set()
    matched: list[tuple[int, int]] = []
    for _, si, i in candidates:
        if si in used_shadow or i in used_live:
            continue
        used_shadow.add(si)
        used_live.add(i)
        matched.append((si, i))
    pairs = [Pair(live[i], mirrored[si]) for si, i in sorted(matched, key=lambda m: live[m[1]].start)]
    return Pairing(pairs, len(live) - len(used_live), len(mirrored) - len(used_shadow))


def cheap_score(pair: Pair) -> tuple[How, float | None]:
    """How the pair is decided without a judge, and the candidate's score (None: the
    judge must decide, or the texts were not logged)."""
    live, shadow = pair.live, pair.shadow
    if not (live.ok and shadow.ok):
        if live.ok:
            return "candidate-failed", 0.0
        return ("live-failed", 1.0) if shadow.ok else ("both-failed", 0.5)
    if live.answer is None or shadow.answer is None:
        return "no-text", None
    live_text, shadow_text = normalize(live.answer), normalize(shadow.answer)
    if not shadow_text and live_text:
        return "candidate-failed", 0.0
    if not live_text and shadow_text:
        return "live-failed", 1.0
    if live_text == shadow_text:
        return "same-answer", 0.5
    return "judge", None


def judge_messages(prompt: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    user = (
        f"Request: {prompt[:PROMPT_CHARS]}\n\n"
        f"Answer A: {answer_a.strip() or '(empty)'}\n"
        f"Answer B: {answer_b.strip() or '(empty)'}\n\n"
        "Which answer is better: A, B or TIE?"
    )
    return [{"role": "system", "content": SHADOW_JUDGE_SYSTEM}, {"role": "user", "content": user}]


def pair_questions(pair: Pair) -> list[list[dict[str, str]]]:
    """The judge's two questions about a pair: candidate first, then live first."""
    prompt, live, candidate = pair.live.prompt or "", pair.live.answer or "", pair.shadow.answer or ""
    return [judge_messages(prompt, candidate, live), judge_messages(prompt, live, candidate)]


def judged_score(first: Verdict | None, second: Verdict | None) -> float:
    """The candidate's score from the verdicts on ``pair_questions`` (in that order)."""
    return (Judgement(True, first, "").score + Judgement(False, second, "").score) / 2


@dataclass(frozen=True)
class KnownPair:
    """A request with a known better answer: its own live answer against the live answer
    to another request."""

    prompt: str
    good: str
    bad: str
    good_first: bool

    @property
    def expected(self) -> Verdict:
        return "A" if self.good_first else "B"

    def messages(self) -> list[dict[str, str]]:
        first, second = (self.good, self.bad) if self.good_first else (self.bad, self.good)
        return judge_messages(self.prompt, first, second)


def calibration_pairs(pairs: Sequence[Pair], count: int, seed: int) -> list[KnownPair]:
    """Up to ``count`` requests (seeded choice) with a logged prompt and a non-empty live
    answer, each asked in both orders against another request's different live answer."""
    usable: dict[str, tuple[str, str]] = {}  # one per distinct prompt
    for p in pairs:
        prompt, answer = p.live.prompt, p.live.answer
        if p.live.ok and prompt and answer and normalize(answer):
            usable.setdefault(prompt, (prompt, answer))
    rows = list(usable.values())
    if len(rows) < 2 or count <= 0:
        return []
    rng = random.Random(seed)
    known: list[KnownPair] = []
    for prompt, good in rng.sample(rows, min(count, len(rows))):
        others = [
            answer for other, answer in rows if other != prompt and normalize(answer) != normalize(good)
        ]
        if not others:
            continue
        bad = others[rng.randrange(len(others))]
        known += [KnownPair(prompt, good, bad, True), KnownPair(prompt, good, bad, False)]
    return known


class PairScore(BaseModel):
    key: str
    how: How
    score: float  # the candidate's, 0..1; 0.5 for an undecided pair
    decided: bool
    judge_replies: list[str] = Field(default_factory=list)


def score_pairs(
    pairs: Sequence[Pair],
    verdicts: Sequence[tuple[Verdict | None, Verdict | None] | None],
    *,
    judge_calibrated: bool,
    replies: Sequence[Sequence[str]] | None = None,
) -> list[PairScore]:
    """Every pair's score: its cheap check's, else its two verdicts' (given for pairs
    whose check is ``judge``; a None entry or an uncalibrated judge leaves it undecided)."""
    scored = []
    for index, (pair, verdict) in enumerate(zip(pairs, verdicts, strict=True)):
        how, score = cheap_score(pair)
        said = list(replies[index]) if replies is not None else []
        if score is not None:
            scored.append(PairScore(key=pair.live.key or "", how=how, score=score, decided=True))
        elif how == "judge" and judge_calibrated and verdict is not None:
            value = judged_score(*verdict)
            scored.append(
                PairScore(key=pair.live.key or "", how=how, score=value, decided=True, judge_replies=said)
            )
        else:
            scored.append(
                PairScore(key=pair.live.key or "", how=how, score=0.5, decided=False, judge_replies=said)
            )
    return scored


def decide(
    scores: Sequence[PairScore],
    pairing: Pairing,
    thresholds: ShadowThresholds,
    *,
    judge_accuracy: float,
    calibration_asked: int,
) -> Analysis:
    """Non-inferior ("pass"), inferior ("fail") or inconclusive ("insufficient")."""
    count = len(scores)
    percent = round(thresholds.confidence * 100, 1)
    calibration = floor_check(
        "shadow-judge-calibration",
        judge_accuracy,
        thresholds.min_judge_accuracy,
        f"the judge named the right answer in {round(judge_accuracy * calibration_asked)} of "
        f"{calibration_asked} known pairs",
    )
    enough = floor_check(
        "shadow-pairs",
        count,
        thresholds.min_pairs,
        f"{count} live/shadow pairs ({pairing.unpaired_live} live and "
        f"{pairing.unpaired_shadow} mirrored records unpaired)",
    )
    undecided = sum(not s.decided for s in scores)
    figures: dict[str, float | int | None] = {
        "pairs": count,
        "unpaired_live": pairing.unpaired_live,
        "unpaired_shadow": pairing.unpaired_shadow,
        "undecided": undecided,
        "margin": thresholds.margin,
        "judge_accuracy": round(judge_accuracy, 4),
        "judge_calibration_pairs": calibration_asked,
    }
    for how in ("candidate-failed", "live-failed", "both-failed", "same-answer", "judge", "no-text"):
        figures[f"by_{how.replace('-', '_')}"] = sum(s.how == how for s in scores)
    checks: list[Check] = [enough]
    if not count:
        decision = GateDecision(gate="shadow", checks=checks, figures=figures, inconclusive=[calibration])
        return Analysis(verdict="insufficient", decision=decision, reason="no live/shadow pairs")
    candidate = [s.score for s in scores]
    interval = paired_bootstrap(
        candidate,
        [1 - s for s in candidate],
        confidence=thresholds.confidence,
        samples=thresholds.bootstrap_samples,
        seed=thresholds.seed,
    )
    figures.update(
        {
            "preference_diff": round(interval.mean, 4),
            "preference_diff_ci_low": round(interval.low, 4),
            "preference_diff_ci_high": round(interval.high, 4),
            "candidate_win_rate": round(sum(candidate) / count, 4),
        }
    )
    non_inferior = floor_check(
        "shadow-non-inferiority",
        interval.low,
        -thresholds.margin,
        f"preference difference candidate - live {interval.mean:+.3f}, {percent:g}% CI "
        f"[{interval.low:+.3f}, {interval.high:+.3f}] over {count} pairs ({undecided} undecided, "
        f"counted as ties); lower bound must be >= -{thresholds.margin:g}",
    )
    checks.append(non_inferior)
    judge_used = any(s.how == "judge" for s in scores)
    inconclusive: list[Check] = []
    if judge_used and calibration.passed:
        checks.append(calibration)
    elif judge_used:
        inconclusive.append(calibration)
    decision = GateDecision(gate="shadow", checks=checks, figures=figures, inconclusive=inconclusive)
    if enough.passed and not non_inferior.passed:
        return Analysis(verdict="fail", decision=decision, reason=f"not non-inferior: {non_inferior.detail}")
    if not enough.passed:
        return Analysis(verdict="insufficient", decision=decision, reason=enough.detail)
    if undecided:
        why = (
            "the judge is uncalibrated" if judge_used and not calibration.passed else "texts were not logged"
        )
        return Analysis(
            verdict="insufficient",
            decision=decision,
            reason=f"{undecided} of {count} pairs undecided ({why}); {non_inferior.detail}",
        )
    return Analysis(verdict="pass", decision=decision, reason=f"non-inferior: {non_inferior.detail}")

"""Shadow traffic, scored: the canary's check that a candidate is non-inferior on real
traffic before any client sees it (``domain.shadow`` says how pairs are made and scored).

The caller (``loradeploy canary --shadow-percent P``) sets the shadow on the route, waits
one interval, reads the request log and passes its records here; the judge is asked only
about pairs the cheap checks leave open, in both orders, together with the calibration
pairs, all at once (the server batches them). Nothing here changes any state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from pydantic import BaseModel, Field

from loradeploy.domain.canary import Analysis
from loradeploy.domain.judge import Verdict, parse_verdict
from loradeploy.domain.shadow import (
    LoggedRequest,
    PairScore,
    ShadowThresholds,
    calibration_pairs,
    cheap_score,
    decide,
    pair_questions,
    pair_records,
    score_pairs,
)

PARALLEL_REQUESTS = 8  # judge questions at once; the server batches them
JUDGE_MAX_TOKENS = 8


class Reply(Protocol):
    @property
    def text(self) -> str: ...


class Judge(Protocol):
    """What is asked of the judge (``clients.vllm.VllmClient`` is one)."""

    def chat_completion(
        self, model: str, messages: Sequence[dict[str, str]], *, max_tokens: int = ..., seed: int | None = ...
    ) -> Reply: ...


class ShadowScore(BaseModel):
    """The verdict ("pass": non-inferior, "fail": not, "insufficient": inconclusive), its
    checks and figures (``analysis.decision``), and how every pair was scored."""

    stable: str
    candidate: str
    judge_model: str
    analysis: Analysis
    pairs: list[PairScore] = Field(default_factory=list)
    calibration: list[dict[str, object]] = Field(default_factory=list)


def score_shadow(
    records: Iterable[LoggedRequest],
    *,
    stable: str,
    candidate: str,
    judge: Judge,
    judge_model: str,
    thresholds: ShadowThresholds,
) -> ShadowScore:
    """Pair the mirrored requests of ``candidate`` with the live requests of ``stable``
    in ``records`` (one window of the request log) and decide non-inferiority."""
    pairing = pair_records(records, stable=stable, candidate=candidate)
    needs_judge = [index for index, pair in enumerate(pairing.pairs) if cheap_score(pair)[0] == "judge"]
    known = (
        calibration_pairs(pairing.pairs, thresholds.calibration_questions, thresholds.seed)
        if needs_judge
        else []
    )
    questions = [q for index in needs_judge for q in pair_questions(pairing.pairs[index])]
    questions += [pair.messages() for pair in known]

    def ask(messages: list[dict[str, str]]) -> Callable[[], str]:
        return lambda: (
            judge.chat_completion(
                judge_model, messages, max_tokens=JUDGE_MAX_TOKENS, seed=thresholds.seed
            ).text
        )

    with ThreadPoolExecutor(max_workers=PARALLEL_REQUESTS) as pool:
        replies = list(pool.map(lambda call: call(), [ask(q) for q in questions]))
    pair_replies, known_replies = replies[: 2 * len(needs_judge)], replies[2 * len(needs_judge) :]
    right = sum(
        parse_verdict(reply) == pair.expected for pair, reply in zip(known, known_replies, strict=True)
    )
    accuracy = right / len(known) if known else 0.0
    verdicts: list[tuple[Verdict | None, Verdict | None] | None] = [None] * len(pairing.pairs)
    said: list[list[str]] = [[] for _ in pairing.pairs]
    for slot, index in enumerate(needs_judge):
        first, second = pair_replies[2 * slot], pair_replies[2 * slot + 1]
        verdicts[index] = (parse_verdict(first), parse_verdict(second))
        said[index] = [first.strip(), second.strip()]
    scores = score_pairs(
        pairing.pairs,
        verdicts,
        judge_calibrated=bool(known) and accuracy >= thresholds.min_judge_accuracy,
        replies=said,
    )
    analysis = decide(scores, pairing, thresholds, judge_accuracy=accuracy, calibration_asked=len(known))
    return ShadowScore(
        stable=stable,
        candidate=candidate,
        judge_model=judge_model,
        analysis=analysis,
        pairs=scores,
        calibration=[
            {
                "expected": pair.expected,
                "reply": reply.strip(),
                "right": parse_verdict(reply) == pair.expected,
            }
            for pair, reply in zip(known, known_replies, strict=True)
        ],
    )

"""Pairwise judging: which of two answers is better, asked of a judge model.

Judges prefer the first (or the second) answer for no good reason. To cancel that
position bias the candidate is shown first for exactly half of the questions (one more
or less when the count is odd), and which half is drawn with a seeded RNG. A judge
that always names the same position then scores a win rate of exactly one half.

A judge is trusted only once it has shown it can tell a right answer from a wrong one:
before its verdicts count, it is asked about calibration pairs whose answer is known
(the reference answer against the reference answer of another question, in both
orders). A judge that always names one position scores exactly one half there; below the
gate's ``min_judge_accuracy`` its win-rate check is inconclusive and does not count.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from loradeploy.domain.scoring import QaExample

Verdict = Literal["A", "B", "TIE"]

JUDGE_SYSTEM = (
    "You compare two answers to a question about a short context. Reply with exactly one "
    "word: A if answer A is better, B if answer B is better, TIE if they are equally good."
)

_LEADING = re.compile(r"^[\s\"'`*(\[]*(TIE|A|B)\b")
_NAMED = re.compile(r"\b(?:ANSWER|RESPONSE|OPTION)\s*:?\s*(A|B)\b")


@dataclass(frozen=True)
class Judgement:
    """One question's verdict, in the candidate's terms."""

    candidate_first: bool
    verdict: Verdict | None  # None: the judge's reply could not be read (scored a tie)
    raw: str

    @property
    def score(self) -> float:
        """1 for a candidate win, 0 for a loss, 0.5 for a tie or an unreadable reply."""
        if self.verdict is None or self.verdict == "TIE":
            return 0.5
        candidate_label = "A" if self.candidate_first else "B"
        return 1.0 if self.verdict == candidate_label else 0.0


def candidate_first_orders(count: int, seed: int) -> list[bool]:
    """For each question: is the candidate's answer shown as A? Balanced and seeded."""
    orders = [index < (count + 1) // 2 for index in range(count)]
    random.Random(seed).shuffle(orders)
    return orders


def judge_messages(example: QaExample, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    user = (
        f"Context: {example.context}\n"
        f"Question: {example.question}\n"
        f"Reference answer: {example.answer}\n\n"
        f"Answer A: {answer_a.strip() or '(empty)'}\n"
        f"Answer B: {answer_b.strip() or '(empty)'}\n\n"
        "Which answer is better: A, B or TIE?"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> Verdict | None:
    """Read A, B or TIE from the judge's reply; None when it names none of them."""
    upper = text.upper()
    found = _LEADING.match(upper) or _NAMED.search(upper)
    if found:
        return "TIE" if found[1] == "TIE" else ("A" if found[1] == "A" else "B")
    if re.search(r"\bTIE\b", upper):
        return "TIE"
    return None


@dataclass(frozen=True)
class CalibrationPair:
    """A question with a known better answer: ``good`` is right, ``bad`` is not."""

    example: QaExample
    good: str
    bad: str
    good_first: bool

    @property
    def expected(self) -> Verdict:
        return "A" if self.good_first else "B"

    def messages(self) -> list[dict[str, str]]:
        first, second = (self.good, self.bad) if self.good_first else (self.bad, self.good)
        return judge_messages(self.example, first, second)


def calibration_pairs(examples: Sequence[QaExample], count: int, seed: int) -> list[CalibrationPair]:
    """Up to ``count`` questions (seeded choice), each asked twice: the reference answer
    against another question's reference answer, once in each order."""
    usable = [e for e in examples if e.answer.strip()]
    if len(usable) < 2 or count <= 0:
        return []
    rng = random.Random(seed)
    chosen = rng.sample(usable, min(count, len(usable)))
    pairs = []
    for index, example in enumerate(chosen):
        # A different question's answer: the next distinct one in a seeded order.
        others = [e.answer for e in usable if e.answer.strip().lower() != example.answer.strip().lower()]
        if not others:
            continue
        bad = others[(index + rng.randrange(len(others))) % len(others)]
        pairs += [
            CalibrationPair(example, example.answer, bad, True),
            CalibrationPair(example, example.answer, bad, False),
        ]
    return pairs


def calibration_accuracy(pairs: Sequence[CalibrationPair], verdicts: Sequence[Verdict | None]) -> float:
    """The share of pairs where the judge named the right answer (a tie or an unreadable
    reply is wrong); 0.0 with no pairs: an unasked judge is not calibrated."""
    if not pairs:
        return 0.0
    right = sum(v == p.expected for p, v in zip(pairs, verdicts, strict=True))
    return right / len(pairs)


def win_rate(judgements: Sequence[Judgement]) -> float:
    """The candidate's wins plus half its ties, over all questions (0.5 when none)."""
    if not judgements:
        return 0.5
    return sum(j.score for j in judgements) / len(judgements)

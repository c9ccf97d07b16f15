"""Did a smoke test pass? Pure evaluation of the answers collected."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loradeploy.results import Check

# Plain completion prompts: the specification's base model has no chat template, and a
# bare question often makes a chat-tuned model stop at once. "Question/Answer" works
# for both kinds.
DEFAULT_PROMPTS = (
    "Question: What is Amazon S3 used for?\nAnswer:",
    "Question: What does an AWS Lambda function do?\nAnswer:",
    "Question: What does an IAM role grant?\nAnswer:",
)


@dataclass(frozen=True)
class Answer:
    prompt: str
    text: str
    latency_s: float


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def evaluate(answers: Sequence[Answer], max_latency_s: float) -> list[Check]:
    """The specification's checks: each answer has non-empty text, within the latency bound."""
    checks = []
    for index, answer in enumerate(answers, start=1):
        checks.append(
            Check(
                name=f"request-{index}:non-empty",
                passed=bool(answer.text.strip()),
                detail=repr(answer.text[:80]),
            )
        )
        checks.append(
            Check(
                name=f"request-{index}:latency",
                passed=answer.latency_s <= max_latency_s,
                value=round(answer.latency_s, 3),
                threshold=max_latency_s,
            )
        )
    return checks

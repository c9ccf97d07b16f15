"""Did a smoke test pass? Pure evaluation of the answers collected.

The specification's checks (non-empty text, latency bound) plus proof that the adapter
is active: a 200 from the load call is no proof (an incompatible adapter can load and
behave like the base model), so greedy answers must differ from the base model's, or
contain the substrings a probe file expects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loradeploy.errors import UsageError
from loradeploy.results import Check

# Plain completion prompts: the specification's base model has no chat template, and a
# bare question often makes a chat-tuned model stop at once. "Question/Answer" works
# for both kinds.
DEFAULT_PROMPTS = (
    "Question: What is Amazon S3 used for?\nAnswer:",
    "Question: What does an AWS Lambda function do?\nAnswer:",
    "Question: What does an IAM role grant?\nAnswer:",
)
DEFAULT_MIN_DIFFERENT = 0.5


@dataclass(frozen=True)
class Probe:
    prompt: str
    expect: tuple[str, ...] = field(default_factory=tuple)  # any one must appear


@dataclass(frozen=True)
class Answer:
    prompt: str
    text: str
    latency_s: float
    base_text: str | None = None  # the base model's greedy answer, when compared
    expect: tuple[str, ...] = ()


def default_probes() -> list[Probe]:
    return [Probe(prompt) for prompt in DEFAULT_PROMPTS]


def read_probes(path: Path) -> list[Probe]:
    """JSON lines: {"prompt": str, "expect": str | [str, ...] (optional)}."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"prompts file {path} is unreadable ({type(exc).__name__})") from exc
    probes = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"prompts file {path}, line {number}"
        try:
            row = json.loads(line)
            prompt = row["prompt"]
            expect = row.get("expect", [])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f'{where}: expected a JSON object with a "prompt"') from exc
        if isinstance(expect, str):
            expect = [expect]
        if not isinstance(prompt, str) or not prompt:
            raise UsageError(f'{where}: "prompt" must be a non-empty string')
        if not isinstance(expect, list) or not all(isinstance(e, str) and e for e in expect):
            raise UsageError(f'{where}: "expect" must be a string or a list of strings')
        probes.append(Probe(prompt, tuple(expect)))
    if not probes:
        raise UsageError(f"prompts file {path} holds no prompts")
    return probes


def read_prompts(path: Path) -> list[str]:
    """Just the prompts of a probe file."""
    return [probe.prompt for probe in read_probes(path)]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def evaluate(
    answers: Sequence[Answer],
    max_latency_s: float,
    *,
    min_different: float = DEFAULT_MIN_DIFFERENT,
) -> list[Check]:
    """Per answer: non-empty, within the latency bound, expected text present (when a
    probe says what to expect). Overall: enough answers differ from the base model."""
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
        if answer.expect:
            found = any(e.lower() in answer.text.lower() for e in answer.expect)
            checks.append(
                Check(
                    name=f"request-{index}:expected",
                    passed=found,
                    detail=f"expects one of {list(answer.expect)}",
                )
            )
    compared = [a for a in answers if a.base_text is not None]
    if compared:
        different = sum(a.text.strip() != (a.base_text or "").strip() for a in compared)
        fraction = different / len(compared)
        checks.append(
            Check(
                name="active:differs-from-base",
                passed=fraction >= min_different,
                detail=f"{different} of {len(compared)} greedy answers differ from the base model's",
                value=round(fraction, 3),
                threshold=min_different,
            )
        )
    return checks

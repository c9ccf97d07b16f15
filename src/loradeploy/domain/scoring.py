"""Scoring generated answers against references: normalisation, token F1, exact match.

SQuAD-style: lower-case, punctuation removed, the articles a/an/the dropped, whitespace
collapsed. Token F1 is the harmonic mean of token precision and recall over the bag of
normalised tokens (each token counted as often as it occurs in both).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loradeploy.errors import UsageError

# The chat the demo adapters are trained on (mlworkers/train_lora.py, SYSTEM_PROMPT):
# evaluate them on the same one.
QA_SYSTEM_PROMPT = "Answer briefly using this context: {context}"

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans(dict.fromkeys(string.punctuation, " "))


@dataclass(frozen=True)
class QaExample:
    """One evaluation question: the context the model reads, and the reference answer."""

    id: str
    context: str
    question: str
    answer: str


def qa_messages(example: QaExample) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": QA_SYSTEM_PROMPT.format(context=example.context)},
        {"role": "user", "content": example.question},
    ]


def normalize(text: str) -> str:
    lowered = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", lowered).split())


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return 1.0 if normalize(prediction) == normalize(reference) else 0.0


def token_f1(prediction: str, reference: str) -> float:
    """Token-level F1 in [0, 1]; two empty answers agree (1.0), one empty scores 0.0."""
    predicted, expected = tokens(prediction), tokens(reference)
    if not predicted or not expected:
        return 1.0 if predicted == expected else 0.0
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def read_qa(path: Path) -> list[QaExample]:
    """JSON lines of {"id"?, "context", "question", "answer"} (all strings)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"evaluation data {path} is unreadable ({type(exc).__name__})") from exc
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            fields = [row[key] for key in ("context", "question", "answer")]
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(
                f"evaluation data {path}, line {number}: expected a JSON object with "
                '"context", "question" and "answer"'
            ) from exc
        if not all(isinstance(value, str) and value.strip() for value in fields):
            raise UsageError(f"evaluation data {path}, line {number}: fields must be non-empty strings")
        examples.append(QaExample(str(row.get("id") or f"line-{number}"), *(v.strip() for v in fields)))
    if not examples:
        raise UsageError(f"evaluation data {path} holds no examples")
    return examples

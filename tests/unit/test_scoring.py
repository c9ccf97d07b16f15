"""domain/scoring.py: normalisation, token F1, exact match, reading evaluation data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loradeploy.domain.scoring import (
    QA_SYSTEM_PROMPT,
    QaExample,
    exact_match,
    normalize,
    qa_messages,
    read_qa,
    token_f1,
)
from loradeploy.errors import UsageError
from loradeploy.mlworkers import train_lora


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Answer!", "answer"),
        ("  a  presigned   URL, an S3 object. ", "presigned url s3 object"),
        ("theory", "theory"),  # articles are whole words only
        ("1,000", "1 000"),
        ("", ""),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("24 hours", "24 hours", 1.0),
        ("The 24 hours.", "24 hours", 1.0),  # article and punctuation do not count
        ("", "", 1.0),  # two empty answers agree
        ("", "24 hours", 0.0),
        ("24 hours", "", 0.0),
        ("the", "a", 1.0),  # both normalise to nothing
        ("S3 and DynamoDB", "Lambda", 0.0),
        # precision 2/3, recall 2/2 -> F1 0.8
        ("up to 20", "20 up", 0.8),
        # repeated tokens count as often as they occur in both: common 1 of 2 and 1 of 1
        ("20 20", "20", 2 * 0.5 * 1.0 / 1.5),
    ],
)
def test_token_f1(prediction: str, reference: str, expected: float) -> None:
    assert token_f1(prediction, reference) == pytest.approx(expected)


def test_token_f1_is_symmetric() -> None:
    assert token_f1("one year or three", "one year or three years") == pytest.approx(
        token_f1("one year or three years", "one year or three")
    )


def test_exact_match_ignores_case_articles_and_punctuation() -> None:
    assert exact_match("The NFS.", "nfs") == 1.0
    assert exact_match("NFS protocol", "NFS") == 0.0


def test_the_eval_prompt_is_the_training_prompt() -> None:
    assert QA_SYSTEM_PROMPT == train_lora.SYSTEM_PROMPT
    example = QaExample("q1", "ctx", "question?", "answer")
    assert qa_messages(example) == train_lora.chat_messages(train_lora.Example("ctx", "question?", "answer"))


def test_read_qa_reads_the_shipped_eval_split() -> None:
    examples = read_qa(Path(__file__).resolve().parents[2] / "data" / "aws-rag-qa" / "eval.jsonl")
    assert len(examples) == 16
    assert examples[0].id == "eval-001"


@pytest.mark.parametrize(
    "line",
    [
        '{"context": "c", "question": "q"}',
        "not json",
        '{"context": "c", "question": "q", "answer": ""}',
        "[]",
    ],
)
def test_read_qa_refuses_bad_lines(tmp_path: Path, line: str) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"context": "c", "question": "q", "answer": "a"}) + "\n" + line + "\n")
    with pytest.raises(UsageError, match="line 2"):
        read_qa(path)


def test_read_qa_refuses_an_empty_or_missing_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UsageError, match="no examples"):
        read_qa(tmp_path / "empty.jsonl")
    with pytest.raises(UsageError, match="unreadable"):
        read_qa(tmp_path / "missing.jsonl")

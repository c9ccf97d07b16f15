"""domain/smoke.py: percentiles, the smoke-test checks, the prompts file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loradeploy.domain.smoke import Answer, evaluate, percentile, read_prompts
from loradeploy.errors import UsageError


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, 0.0),
        ([3.0], 50, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([4.0, 1.0, 3.0, 2.0], 50, 2.5),  # order does not matter
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([0.0, 10.0], 90, 9.0),
    ],
)
def test_percentile_interpolates_linearly(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_evaluate_passes_non_empty_answers_within_the_latency_bound() -> None:
    checks = evaluate([Answer("p1", " S3 stores objects.", 0.4), Answer("p2", "x", 2.0)], max_latency_s=2.0)
    assert [c.name for c in checks] == [
        "request-1:non-empty",
        "request-1:latency",
        "request-2:non-empty",
        "request-2:latency",
    ]
    assert all(c.passed for c in checks)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_evaluate_fails_an_empty_answer(text: str) -> None:
    checks = {c.name: c for c in evaluate([Answer("p", text, 0.1)], max_latency_s=5.0)}
    assert not checks["request-1:non-empty"].passed
    assert checks["request-1:latency"].passed


def test_evaluate_fails_an_answer_slower_than_the_bound() -> None:
    checks = {c.name: c for c in evaluate([Answer("p", "ok", 5.01)], max_latency_s=5.0)}
    latency = checks["request-1:latency"]
    assert not latency.passed
    assert latency.value == 5.01
    assert latency.threshold == 5.0
    assert checks["request-1:non-empty"].passed


def test_evaluate_of_no_answers_has_no_checks() -> None:
    assert evaluate([], max_latency_s=1.0) == []


def test_read_prompts_reads_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    lines = [
        json.dumps({"prompt": "Question: S3?\nAnswer:", "expected": "storage"}),
        "",
        json.dumps({"prompt": "B"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_prompts(path) == ["Question: S3?\nAnswer:", "B"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"prompt": "a"}\n{not json\n', "line 2"),
        ('{"question": "a"}\n', "line 1"),
        ('["a"]\n', "line 1"),
        ('{"prompt": ""}\n', "line 1"),
        ('{"prompt": 3}\n', "line 1"),
        ("", "holds no prompts"),
        ("\n  \n", "holds no prompts"),
    ],
)
def test_read_prompts_refuses_bad_files(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError) as caught:
        read_prompts(path)
    assert str(path) in caught.value.message
    assert fragment in caught.value.message


def test_read_prompts_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        read_prompts(tmp_path / "absent.jsonl")
    assert "unreadable" in caught.value.message

"""domain/judge.py: balanced, seeded answer order; reading verdicts; the win rate."""

from __future__ import annotations

import pytest

from loradeploy.domain.judge import (
    Judgement,
    candidate_first_orders,
    judge_messages,
    parse_verdict,
    win_rate,
)
from loradeploy.domain.scoring import QaExample


@pytest.mark.parametrize("count", [0, 1, 2, 3, 16, 17, 101])
def test_orders_put_the_candidate_first_half_of_the_time(count: int) -> None:
    orders = candidate_first_orders(count, seed=7)
    assert len(orders) == count
    assert abs(sum(orders) - (count - sum(orders))) <= 1


def test_orders_are_seeded_and_shuffled() -> None:
    assert candidate_first_orders(40, seed=1) == candidate_first_orders(40, seed=1)
    assert candidate_first_orders(40, seed=1) != candidate_first_orders(40, seed=2)
    assert candidate_first_orders(40, seed=1) != [True] * 20 + [False] * 20


@pytest.mark.parametrize("always", ["A", "B"])
def test_a_judge_that_always_names_one_position_scores_one_half(always: str) -> None:
    orders = candidate_first_orders(16, seed=3)
    judgements = [Judgement(first, parse_verdict(always), always) for first in orders]
    assert win_rate(judgements) == 0.5


def test_a_judge_that_always_picks_the_candidate_scores_one() -> None:
    orders = candidate_first_orders(9, seed=0)
    judgements = [Judgement(first, "A" if first else "B", "") for first in orders]
    assert win_rate(judgements) == 1.0


def test_ties_and_unreadable_replies_count_half() -> None:
    judgements = [
        Judgement(True, "A", "A"),  # win
        Judgement(False, "A", "A"),  # loss
        Judgement(True, "TIE", "TIE"),
        Judgement(False, None, "I cannot decide"),
    ]
    assert [j.score for j in judgements] == [1.0, 0.0, 0.5, 0.5]
    assert win_rate(judgements) == 0.5
    assert win_rate([]) == 0.5


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("A", "A"),
        (" b.", "B"),
        ("TIE", "TIE"),
        ('"A" is better', "A"),
        ("**B**", "B"),
        ("Answer B is better", "B"),
        ("Both are equal, it's a tie", "TIE"),
        ("Answer: A", "A"),
        ("Neither", None),
        ("", None),
        ("Amazon", None),  # a word that starts with A is no verdict
    ],
)
def test_parse_verdict(reply: str, verdict: str | None) -> None:
    assert parse_verdict(reply) == verdict


def test_judge_messages_show_both_answers_and_the_reference() -> None:
    example = QaExample("q", "S3 stores objects.", "What does S3 store?", "Objects")
    system, user = judge_messages(example, "objects", "")
    assert "A, B or TIE" in user["content"] or "A if answer A" in system["content"]
    assert "Answer A: objects" in user["content"]
    assert "Answer B: (empty)" in user["content"]
    assert "Reference answer: Objects" in user["content"]

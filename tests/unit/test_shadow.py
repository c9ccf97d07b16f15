"""Shadow traffic's pairing and scoring (domain/shadow.py), on records built here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from hypothesis import given
from hypothesis import strategies as st

from loradeploy.domain.shadow import (
    Pair,
    Pairing,
    ShadowThresholds,
    calibration_pairs,
    cheap_score,
    decide,
    judged_score,
    pair_records,
    score_pairs,
)
from loradeploy.steps.shadow import ShadowScore, score_shadow

STABLE, LIVE, CANDIDATE = "m-live", "m@v1", "m@v2"


@dataclass(frozen=True)
class FakeRecord:
    """A request-log record as domain.traffic reads it (only the fields shadow uses)."""

    start: float
    key: str | None
    shadow: bool = False
    stable: str = STABLE
    name: str = LIVE
    ok: bool = True
    prompt: str | None = "q"
    answer: str | None = "an answer"


def live(start: float, key: str | None, **kw: object) -> FakeRecord:
    return FakeRecord(start, key, **kw)


def mirrored(start: float, key: str | None, **kw: object) -> FakeRecord:
    fields: dict[str, object] = {"shadow": True, "stable": CANDIDATE, "name": CANDIDATE, **kw}
    return FakeRecord(start, key, **fields)


def test_pairs_by_key_nearest_in_time_each_record_once() -> None:
    records = [live(0.0, "a"), live(10.0, "a"), live(5.0, "b"), mirrored(10.2, "a"), mirrored(0.1, "a")]
    pairing = pair_records(records, stable=STABLE, candidate=CANDIDATE)
    assert [(p.live.start, p.shadow.start) for p in pairing.pairs] == [(0.0, 0.1), (10.0, 10.2)]
    assert (pairing.unpaired_live, pairing.unpaired_shadow) == (1, 0)


def test_records_without_a_key_are_never_paired() -> None:
    records = [live(0.0, None), mirrored(0.1, None), live(1.0, "a"), mirrored(1.1, "a")]
    pairing = pair_records(records, stable=STABLE, candidate=CANDIDATE)
    assert [p.live.key for p in pairing.pairs] == ["a"]
    assert (pairing.unpaired_live, pairing.unpaired_shadow) == (1, 1)


def test_other_stable_names_and_versions_are_not_paired() -> None:
    records = [
        live(0.0, "a", stable="other-live"),
        mirrored(0.1, "a"),
        mirrored(0.2, "a", name="m@v3"),
        live(0.0, "b"),
    ]
    pairing = pair_records(records, stable=STABLE, candidate=CANDIDATE)
    assert pairing.pairs == []
    assert (pairing.unpaired_live, pairing.unpaired_shadow) == (1, 1)


@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from("abc"), st.floats(0, 100, allow_nan=False)), max_size=30
    )
)
def test_pairing_uses_every_record_at_most_once_and_matches_keys(rows: list[tuple[bool, str, float]]) -> None:
    records = [mirrored(t, k) if is_shadow else live(t, k) for is_shadow, k, t in rows]
    pairing = pair_records(records, stable=STABLE, candidate=CANDIDATE)
    assert all(p.live.key == p.shadow.key for p in pairing.pairs)
    assert len({id(p.live) for p in pairing.pairs}) == len(pairing.pairs)
    assert len({id(p.shadow) for p in pairing.pairs}) == len(pairing.pairs)
    shadows = sum(is_shadow for is_shadow, _, _ in rows)
    assert len(pairing.pairs) + pairing.unpaired_shadow == shadows
    assert len(pairing.pairs) + pairing.unpaired_live == len(rows) - shadows
    for key in "abc":  # as many pairs per key as the fewer side has records
        both = [r for r in rows if r[1] == key]
        assert sum(p.live.key == key for p in pairing.pairs) == min(
            sum(s for s, _, _ in both), sum(not s for s, _, _ in both)
        )


def test_cheap_checks_decide_failures_empties_and_equal_answers() -> None:
    def how(live_kw: dict[str, object], shadow_kw: dict[str, object]) -> tuple[str, float | None]:
        return cheap_score(Pair(live(0, "k", **live_kw), mirrored(0, "k", **shadow_kw)))

    assert how({}, {"ok": False}) == ("candidate-failed", 0.0)
    assert how({"ok": False}, {}) == ("live-failed", 1.0)
    assert how({"ok": False}, {"ok": False}) == ("both-failed", 0.5)
    assert how({}, {"answer": "  "}) == ("candidate-failed", 0.0)
    assert how({"answer": ""}, {}) == ("live-failed", 1.0)
    assert how({"answer": "The Answer."}, {"answer": "answer"}) == ("same-answer", 0.5)
    assert how({}, {"answer": None}) == ("no-text", None)
    assert how({"answer": "yes"}, {"answer": "no"}) == ("judge", None)


def test_a_judge_that_always_names_one_position_scores_a_tie() -> None:
    assert judged_score("A", "A") == judged_score("B", "B") == 0.5
    assert judged_score("A", "B") == 1.0  # candidate shown first, then second: won both
    assert judged_score("B", "A") == 0.0
    assert judged_score(None, "TIE") == 0.5


def test_calibration_pairs_set_a_live_answer_against_another_requests() -> None:
    pairs = [
        Pair(live(i, f"k{i}", prompt=f"q{i}", answer=f"answer {i}"), mirrored(i, f"k{i}")) for i in range(5)
    ]
    known = calibration_pairs(pairs, 3, seed=1)
    assert len(known) == 6
    assert [k.good_first for k in known] == [True, False] * 3
    for k in known:
        assert k.good == f"answer {k.prompt[1:]}" and k.bad != k.good
    assert calibration_pairs(pairs[:1], 3, seed=1) == []  # nothing to set it against


def scores_of(cheap: list[tuple[dict[str, object], dict[str, object]]], *, calibrated: bool = True) -> tuple:
    pairs = [Pair(live(i, f"k{i}", **a), mirrored(i, f"k{i}", **b)) for i, (a, b) in enumerate(cheap)]
    verdicts = [("A", "B") if cheap_score(p)[0] == "judge" else None for p in pairs]  # candidate wins
    scored = score_pairs(pairs, verdicts, judge_calibrated=calibrated)
    return scored, Pairing(pairs, 0, 0)


def test_a_candidate_that_fails_where_live_answers_is_inferior() -> None:
    scored, pairing = scores_of([({}, {"ok": False})] * 15 + [({}, {})] * 15)
    analysis = decide(scored, pairing, ShadowThresholds(), judge_accuracy=0.0, calibration_asked=0)
    assert analysis.verdict == "fail"
    assert analysis.decision.figures["by_candidate_failed"] == 15
    assert analysis.decision.figures["preference_diff"] == -0.5


def test_a_candidate_as_good_on_every_pair_is_non_inferior() -> None:
    scored, pairing = scores_of([({}, {})] * 25)  # the same answers
    analysis = decide(scored, pairing, ShadowThresholds(), judge_accuracy=0.0, calibration_asked=0)
    assert analysis.verdict == "pass", analysis.reason
    assert analysis.decision.inconclusive == []  # the judge was not needed


def test_judged_pairs_count_only_with_a_calibrated_judge() -> None:
    rows: list[tuple[dict[str, object], dict[str, object]]] = [({"answer": "x"}, {"answer": "y"})] * 25
    scored, pairing = scores_of(rows)
    passed = decide(scored, pairing, ShadowThresholds(), judge_accuracy=1.0, calibration_asked=8)
    assert passed.verdict == "pass" and passed.decision.figures["candidate_win_rate"] == 1.0
    scored, pairing = scores_of(rows, calibrated=False)
    unsure = decide(scored, pairing, ShadowThresholds(), judge_accuracy=0.5, calibration_asked=8)
    assert unsure.verdict == "insufficient"
    assert "uncalibrated" in unsure.reason
    assert [c.name for c in unsure.decision.inconclusive] == ["shadow-judge-calibration"]


def test_an_uncalibrated_judge_does_not_hide_failures() -> None:
    rows: list[tuple[dict[str, object], dict[str, object]]] = [({}, {"ok": False})] * 15
    rows += [({"answer": "x"}, {"answer": "y"})] * 15
    scored, pairing = scores_of(rows, calibrated=False)
    analysis = decide(scored, pairing, ShadowThresholds(), judge_accuracy=0.5, calibration_asked=8)
    assert analysis.verdict == "fail"


def test_too_few_pairs_or_none_are_inconclusive() -> None:
    scored, pairing = scores_of([({}, {"ok": False})] * 5)
    assert decide(scored, pairing, ShadowThresholds(), judge_accuracy=0, calibration_asked=0).verdict == (
        "insufficient"
    )
    none = decide([], Pairing([], 3, 0), ShadowThresholds(), judge_accuracy=0, calibration_asked=0)
    assert none.verdict == "insufficient" and none.reason == "no live/shadow pairs"


def test_pairs_without_logged_text_leave_the_result_inconclusive() -> None:
    scored, pairing = scores_of([({"answer": None}, {"answer": None})] * 25)
    analysis = decide(scored, pairing, ShadowThresholds(), judge_accuracy=0, calibration_asked=0)
    assert analysis.verdict == "insufficient" and "not logged" in analysis.reason


# -- the step ---------------------------------------------------------------------------------


class FakeJudge:
    """A judge that prefers an answer to the request asked (its number at the end), then
    one that contains ``good``; between equals it names A, as a position-biased judge
    does. ``attentive=False``: it always names A. Counts the questions."""

    def __init__(self, good: str, *, attentive: bool = True) -> None:
        self.good, self.attentive, self.asked = good, attentive, 0

    def chat_completion(
        self, model: str, messages: Sequence[dict[str, str]], *, max_tokens: int = 8, seed: int | None = 0
    ) -> FakeReply:
        self.asked += 1
        text = messages[-1]["content"]
        number = text.split("Request: question ", 1)[1].split("\n", 1)[0]
        a = text.split("Answer A: ", 1)[1].split("\n", 1)[0]
        b = text.split("Answer B: ", 1)[1].split("\n", 1)[0]

        def merit(answer: str) -> tuple[bool, bool]:
            return answer.endswith(f" {number}"), self.good in answer

        return FakeReply("B" if self.attentive and merit(b) > merit(a) else "A")


@dataclass(frozen=True)
class FakeReply:
    text: str


def traffic(live_answer: str, shadow_answer: str, count: int = 24) -> list[FakeRecord]:
    records = []
    for i in range(count):
        prompt = f"question {i}"
        records.append(live(i, f"k{i}", prompt=prompt, answer=f"{live_answer} {i}"))
        records.append(mirrored(i + 0.05, f"k{i}", prompt=prompt, answer=f"{shadow_answer} {i}"))
    return records


def shadow_of(records: list[FakeRecord], judge: FakeJudge) -> ShadowScore:
    return score_shadow(
        records,
        stable=STABLE,
        candidate=CANDIDATE,
        judge=judge,
        judge_model="j",
        thresholds=ShadowThresholds(),
    )


def test_a_candidate_the_calibrated_judge_prefers_is_non_inferior() -> None:
    judge = FakeJudge(good="better")
    scored = shadow_of(traffic("plain", "better"), judge)
    assert scored.analysis.verdict == "pass", scored.analysis.reason
    assert judge.asked == 2 * 24 + 16  # both orders per pair, and 8 known pairs in both orders
    assert scored.analysis.decision.figures["candidate_win_rate"] == 1.0
    assert scored.analysis.decision.figures["judge_accuracy"] == 1.0
    assert [p.how for p in scored.pairs] == ["judge"] * 24


def test_a_candidate_the_calibrated_judge_finds_worse_is_not_non_inferior() -> None:
    scored = shadow_of(traffic("better", "plain"), FakeJudge(good="better"))
    assert scored.analysis.verdict == "fail"
    assert scored.analysis.decision.figures["preference_diff_ci_high"] == -1.0


def test_an_uncalibrated_judge_leaves_judged_pairs_inconclusive() -> None:
    scored = shadow_of(traffic("better", "plain"), FakeJudge(good="better", attentive=False))
    assert scored.analysis.verdict == "insufficient"
    assert "uncalibrated" in scored.analysis.reason
    assert scored.analysis.decision.figures["judge_accuracy"] == 0.5


def test_a_candidate_that_fails_is_caught_without_asking_the_judge() -> None:
    records = [replace(r, ok=False) if r.shadow else r for r in traffic("same", "same")]
    judge = FakeJudge(good="x")
    assert shadow_of(records, judge).analysis.verdict == "fail"
    assert judge.asked == 0

"""The canary's pure decisions (domain/canary.py): versioned names, weight steps, the
analysis of one window, the next action, and recovery of an interrupted canary."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loradeploy.domain.canary import (
    Analysis,
    CanaryRecord,
    CanaryThresholds,
    LatencySummary,
    LiveAnswer,
    VersionWindow,
    analyse,
    next_action,
    parse_steps,
    parse_versioned_name,
    quality_check,
    quality_scores,
    recovery,
    split,
    versioned_name,
)
from loradeploy.domain.scoring import QaExample
from loradeploy.errors import UsageError

LIMITS = CanaryThresholds()  # 1 % errors, p50 1.5x, p95 1.75x, 20 requests, 3 waits


def window(name: str, n: int, latency: float = 0.1, errors: int = 0) -> VersionWindow:
    return VersionWindow(name=name, latencies_s=[latency] * n, errors=errors)


# -- names and steps ------------------------------------------------------------------------


def test_a_versioned_name_round_trips_and_other_names_are_not_versioned() -> None:
    assert versioned_name("aws-rag-qa", 7) == "aws-rag-qa@v7"
    assert parse_versioned_name("aws-rag-qa@v7") == ("aws-rag-qa", "7")
    for other in ("aws-rag-qa-live", "aws-rag-qa@v0", "aws-rag-qa@v07", "@v3", "a/b@v3", "x@v"):
        assert parse_versioned_name(other) is None, other


@pytest.mark.parametrize("version", ["0", "-1", "v3", "", "1" * 19, "٣"])
def test_a_versioned_name_needs_a_registry_version_number(version: str) -> None:
    with pytest.raises(UsageError, match="version"):
        versioned_name("aws-rag-qa", version)


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,30}", fullmatch=True), st.integers(1, 10**17))
def test_every_versioned_name_parses_back(model: str, version: int) -> None:
    assert parse_versioned_name(versioned_name(model, version)) == (model, str(version))


def test_steps_parse_and_end_at_the_promoting_step() -> None:
    assert parse_steps("5,25,50,100") == [5, 25, 50, 100]
    assert parse_steps(" 100 ") == [100]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("5,25,50", "end at 100"),
        ("5,5,100", "increase strictly"),
        ("50,25,100", "increase strictly"),
        ("0,100", "between 1 and 100"),
        ("5,101", "between 1 and 100"),
        ("5,,100", "whole percentages"),
        ("5.5,100", "whole percentages"),
        ("", "whole percentages"),
        ("-5,100", "whole percentages"),
    ],
)
def test_bad_steps_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why) as caught:
        parse_steps(text)
    assert "--steps=" in (caught.value.hint or "")


def test_split_weights_sum_to_100_and_leave_out_a_name_with_no_share() -> None:
    assert split("m@v1", "m@v2", 5) == {"m@v1": 95, "m@v2": 5}
    assert split("m@v1", "m@v2", 0) == {"m@v1": 100}
    assert split("m@v1", "m@v2", 100) == {"m@v2": 100}
    with pytest.raises(UsageError, match="nothing to split"):
        split("m@v1", "m@v1", 5)
    with pytest.raises(UsageError, match="percentage"):
        split("m@v1", "m@v2", 101)


# -- analysis ------------------------------------------------------------------------------


def test_a_candidate_like_the_current_version_passes() -> None:
    result = analyse(window("m@v2", 30, 0.11), window("m@v1", 300, 0.1), LIMITS)
    assert result.verdict == "pass", result.reason
    assert result.decision.figures["candidate_requests"] == 30
    assert {c.name for c in result.decision.checks} >= {
        "error-rate",
        "p50-latency-ratio",
        "p95-latency-ratio",
    }


def test_a_slow_candidate_fails_on_latency() -> None:
    result = analyse(window("m@v2", 30, 0.2), window("m@v1", 300, 0.1), LIMITS)
    assert result.verdict == "fail"
    assert "p50-latency-ratio" in result.reason and "p95-latency-ratio" in result.reason


def test_one_failed_request_in_a_short_window_already_fails_a_1_percent_ceiling() -> None:
    # 1 error can never be within 1 % of the 20 requests the window waits for
    result = analyse(window("m@v2", 4, errors=1), window("m@v1", 100), LIMITS)
    assert result.verdict == "fail"
    assert "error-rate" in result.reason


def test_too_few_requests_is_no_evidence_not_a_pass() -> None:
    result = analyse(window("m@v2", 19), window("m@v1", 300), LIMITS)
    assert result.verdict == "insufficient"
    assert "19 candidate" in result.reason
    # and the current version's side counts too
    assert analyse(window("m@v2", 40), window("m@v1", 3), LIMITS).verdict == "insufficient"


def test_errors_within_the_ceiling_of_a_full_window_pass() -> None:
    result = analyse(
        window("m@v2", 199, errors=1), window("m@v1", 200), CanaryThresholds(max_error_rate=0.01)
    )
    assert result.verdict == "pass", result.reason


@given(
    st.integers(0, 400),
    st.integers(0, 20),
    st.integers(0, 400),
    st.floats(0.01, 5),
    st.floats(0.01, 5),
)
def test_the_verdict_agrees_with_its_checks(n: int, errors: int, m: int, lat: float, cur: float) -> None:
    """pass only when every check passed; fail only when a figure (not a count) failed."""
    result = analyse(window("m@v2", n, lat, errors), window("m@v1", m, cur), LIMITS)
    checks = {c.name: c.passed for c in result.decision.checks}
    figures_failed = [name for name, ok in checks.items() if not ok and not name.endswith("-requests")]
    if result.verdict == "pass":
        assert all(checks.values())
    elif result.verdict == "fail":
        assert figures_failed
    else:
        assert not figures_failed and not all(checks.values())
    if errors == 0 and lat <= cur and n + errors >= 20 and m >= 20:
        assert result.verdict == "pass"


# -- windows summarised by a histogram (the cluster's figures) -----------------------------


def summary(
    name: str, ok: int, p50: float | None = 0.1, p95: float | None = 0.2, errors: int = 0
) -> VersionWindow:
    return VersionWindow(name=name, summary=LatencySummary(succeeded=ok, p50_s=p50, p95_s=p95), errors=errors)


def test_a_summarised_window_counts_its_requests_and_reads_its_percentiles() -> None:
    seen = summary("m@v2", 38, 0.12, 0.3, errors=2)
    assert seen.requests == 40 and seen.error_rate == 0.05
    assert (seen.p(50), seen.p(95)) == (0.12, 0.3)
    with pytest.raises(ValueError, match="p50 and p95 only"):
        seen.p(99)


def test_a_window_holds_latencies_or_a_summary_not_both() -> None:
    with pytest.raises(ValueError, match="give one of them"):
        VersionWindow(
            name="m@v2", latencies_s=[0.1], summary=LatencySummary(succeeded=1, p50_s=0.1, p95_s=0.1)
        )


def test_summarised_windows_are_analysed_as_raw_ones() -> None:
    assert analyse(summary("m@v2", 30, 0.11, 0.21), summary("m@v1", 300), LIMITS).verdict == "pass"
    slow = analyse(summary("m@v2", 30, 0.2, 0.2), summary("m@v1", 300, 0.1, 0.2), LIMITS)
    assert slow.verdict == "fail" and "p50-latency-ratio" in slow.reason
    assert "p95-latency-ratio" not in slow.reason
    assert slow.decision.figures["candidate_p50_s"] == 0.2
    assert analyse(summary("m@v2", 4, errors=1), summary("m@v1", 100), LIMITS).verdict == "fail"
    assert analyse(summary("m@v2", 19), summary("m@v1", 300), LIMITS).verdict == "insufficient"
    # the two forms compare with each other too
    assert analyse(window("m@v2", 30, 0.1), summary("m@v1", 300, 0.1, 0.1), LIMITS).verdict == "pass"


def test_requests_without_percentiles_are_no_evidence_not_a_pass() -> None:
    """A histogram that has not caught up with the counters gives no p50: never read as 0 s."""
    result = analyse(summary("m@v2", 30, None, None), summary("m@v1", 300), LIMITS)
    assert result.verdict == "insufficient"
    assert "no latency percentiles yet for m@v2" in result.reason
    assert result.decision.figures["candidate_p50_s"] is None
    # only errors: nothing to estimate, and the errors still fail the candidate
    assert analyse(summary("m@v2", 0, None, None, errors=25), summary("m@v1", 300), LIMITS).verdict == "fail"


# -- what happens next -----------------------------------------------------------------------

STEPS = [5, 25, 50, 100]


def verdict(kind: str) -> Analysis:
    slow = window("m@v2", 30, 0.5) if kind == "fail" else window("m@v2", 30 if kind == "pass" else 3)
    result = analyse(slow, window("m@v1", 300), LIMITS)
    assert result.verdict == kind
    return result


def test_a_pass_advances_and_the_step_before_100_promotes() -> None:
    assert next_action(STEPS, 0, verdict("pass"), 0, LIMITS).model_dump(
        include={"kind", "candidate_percent"}
    ) == {
        "kind": "advance",
        "candidate_percent": 25,
    }
    assert next_action(STEPS, 2, verdict("pass"), 0, LIMITS).kind == "promote"


def test_a_fail_aborts_to_nothing_at_any_step() -> None:
    for index in range(3):
        action = next_action(STEPS, index, verdict("fail"), 0, LIMITS)
        assert (action.kind, action.candidate_percent) == ("abort", 0)
        assert f"at {STEPS[index]} %" in action.reason


def test_no_evidence_waits_then_aborts() -> None:
    waited = [next_action(STEPS, 1, verdict("insufficient"), waits, LIMITS) for waits in range(4)]
    assert [a.kind for a in waited] == ["wait", "wait", "wait", "abort"]
    assert waited[0].candidate_percent == 25 and waited[-1].candidate_percent == 0
    assert "no evidence after 4 windows" in waited[-1].reason


def test_the_promoting_step_is_never_analysed() -> None:
    with pytest.raises(ValueError, match="not one that is analysed"):
        next_action(STEPS, 3, verdict("pass"), 0, LIMITS)


@given(st.lists(st.sampled_from(["pass", "fail", "insufficient"]), min_size=1, max_size=30))
def test_any_run_of_windows_ends_at_0_or_100_percent_and_never_skips_a_step(kinds: list[str]) -> None:
    """Driving the canary with any sequence of verdicts: the weight only takes the
    configured steps, and once it stops it is at 0 (abort) or 100 (promote)."""
    analyses = {kind: verdict(kind) for kind in set(kinds)}
    index, waits, percent = 0, 0, STEPS[0]
    for kind in kinds:
        action = next_action(STEPS, index, analyses[kind], waits, LIMITS)
        percent = action.candidate_percent
        if action.kind in {"abort", "promote"}:
            assert percent in {0, 100}
            return
        assert percent in STEPS
        if action.kind == "wait":
            waits += 1
        else:
            index, waits = index + 1, 0
            assert percent == STEPS[index]
    assert percent in STEPS[:-1]  # still running: at a configured step, never a half-made one


# -- interrupted canaries ------------------------------------------------------------------


def test_an_interrupted_canary_is_undone_unless_live_already_names_the_candidate() -> None:
    record = CanaryRecord(
        model="m", stable="m-live", current_version="1", candidate_version="2", candidate_percent=25
    )
    undo = recovery(record, live_version="1")
    assert (undo.kind, undo.candidate_percent) == ("abort", 0)
    assert "interrupted at 25 %" in undo.reason
    assert recovery(record, live_version=None).kind == "abort"
    finish = recovery(record, live_version="2")
    assert (finish.kind, finish.candidate_percent) == ("promote", 100)


# -- quality of live answers -------------------------------------------------------------------


EXAMPLES = [
    QaExample(id=f"q{i}", context="c", question=f"What does service {i} do?", answer=f"it stores objects {i}")
    for i in range(12)
]


def answers(name: str, text: str, questions: range) -> list[LiveAnswer]:
    return [
        LiveAnswer(
            name=name, prompt=f'[{{"role": "user", "content": "What does service {i} do?"}}]', answer=text
        )
        for i in questions
    ]


def test_live_answers_are_scored_per_question_and_unknown_prompts_are_left_out() -> None:
    live = [
        *answers("m@v2", "it stores objects", range(3)),
        LiveAnswer(name="m@v2", prompt="hello", answer="x"),
    ]
    scores = quality_scores(live, EXAMPLES)
    assert sorted(scores) == ["q0", "q1", "q2"]
    assert all(0.8 < s[0] <= 1.0 for s in scores.values())


def test_a_question_is_matched_by_its_longest_text_not_by_a_prefix_of_it() -> None:
    examples = [
        QaExample(id="a", context="", question="What is S3?", answer="x"),
        QaExample(id="b", context="", question="What is S3? Explain", answer="y"),
    ]
    scores = quality_scores([LiveAnswer(name="n", prompt="What is S3? Explain", answer="y")], examples)
    assert list(scores) == ["b"]


def test_a_clearly_worse_candidate_fails_and_an_equal_one_passes() -> None:
    good = quality_scores(answers("cur", "it stores objects", range(12)), EXAMPLES)
    bad = quality_scores(answers("cand", "a poem about the sea", range(12)), EXAMPLES)
    fail = quality_check(bad, good, LIMITS)
    assert (fail.verdict, fail.check.passed) == ("fail", False)
    same = quality_check(good, good, LIMITS)
    assert (same.verdict, same.check.passed) == ("pass", True)


def test_too_few_questions_answered_by_both_versions_is_no_evidence() -> None:
    good = quality_scores(answers("cur", "it stores objects", range(3)), EXAMPLES)
    bad = quality_scores(answers("cand", "a poem", range(3)), EXAMPLES)
    result = quality_check(bad, good, LIMITS)
    assert result.verdict == "insufficient"
    assert "3 questions" in result.check.detail


def test_the_analysis_fails_on_quality_alone_and_waits_when_quality_is_inconclusive() -> None:
    fast = window("cand", 30), window("cur", 30)
    good = quality_scores(answers("cur", "it stores objects", range(12)), EXAMPLES)
    bad = quality_scores(answers("cand", "a poem about the sea", range(12)), EXAMPLES)
    failed = analyse(*fast, LIMITS, quality=quality_check(bad, good, LIMITS))
    assert failed.verdict == "fail" and "live-quality" in failed.reason
    few = quality_scores(answers("cand", "a poem", range(2)), EXAMPLES)
    waiting = analyse(*fast, LIMITS, quality=quality_check(few, good, LIMITS))
    assert waiting.verdict == "insufficient"
    assert analyse(*fast, LIMITS, quality=quality_check(good, good, LIMITS)).verdict == "pass"

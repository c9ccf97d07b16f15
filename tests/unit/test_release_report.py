"""The release report's pure page builder and its figures: gate results shaped as the
steps write them (from the real decisions) in, HTML and SVG out."""

from __future__ import annotations

import base64
import re
import sys
import xml.dom.minidom

import pytest

from loradeploy.domain import plots
from loradeploy.domain.gates import EvalThresholds, PerfThresholds, SlotLoad, decide_eval, decide_perf
from loradeploy.domain.judge import Judgement
from loradeploy.domain.release_report import (
    NOT_RECORDED,
    FoundResult,
    ReleaseEvidence,
    TrafficRequest,
    belongs_to,
    build_page,
    version_moves,
)
from loradeploy.domain.stats import bootstrap_means, paired_bootstrap, percentile
from loradeploy.errors import UsageError
from loradeploy.results import StepResult

MODEL = "aws-rag-qa"
CANDIDATE_F1 = [1.0, 0.8, 0.5, 0.9, 0.0, 0.7]
LIVE_F1 = [0.9, 0.7, 0.6, 0.4, 0.0, 0.6]


def gate1(version: str = "2", ids: list[str] | None = None, **figures: float) -> StepResult:
    """A Gate 1 result shaped as compare-decision writes it, from the real decision."""
    thresholds = EvalThresholds(bootstrap_samples=500, min_win_rate=0.25)
    judgements = [
        Judgement(i % 2 == 0, v, v or "??") for i, v in enumerate(["A", "A", "B", None, "TIE", "B"])
    ]
    decision = decide_eval(
        CANDIDATE_F1, LIVE_F1, judgements, thresholds, judge_accuracy=0.875, calibration_asked=16
    )
    ids = ids or [f"q{i}" for i in range(len(CANDIDATE_F1))]
    return StepResult(
        step="compare-decision",
        model=MODEL,
        version=version,
        slot="aws-rag-qa-candidate",
        checks=decision.checks,
        timings_s={"candidate-answers": 10.0, "live-answers": 9.5},
        details={
            "decision": "eval-passed" if decision.passed else "eval-failed",
            "live_target": "aws-rag-qa-live",
            "judge_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "thresholds": thresholds.model_dump(),
            "figures": {**decision.figures, **figures},
            "alias_moves": ["eval-passed: - -> 2"],
            "questions": [
                {"id": i, "candidate_f1": c, "live_f1": b, "judge_score": j.score, "judge_reply": j.raw}
                for i, c, b, j in zip(ids, CANDIDATE_F1, LIVE_F1, judgements, strict=True)
            ],
        },
    )


def gate2(version: str = "2", *, rounds: bool = True) -> StepResult:
    candidate = SlotLoad(slot="c", latencies_s=[1.0, 1.1, 1.2, 1.4], completion_tokens=128, busy_s=2.6)
    live = SlotLoad(slot="l", latencies_s=[0.9, 1.0, 1.0, 1.3], completion_tokens=128, busy_s=2.4)
    thresholds = PerfThresholds()
    decision = decide_perf(candidate, live, thresholds)
    details: dict[str, object] = {
        "decision": "perf-passed",
        "live_target": "aws-rag-qa-live",
        "load": {"concurrency": 2, "requests_per_slot": 4, "max_tokens": 32, "seed": 0},
        "thresholds": thresholds.model_dump(),
        "figures": decision.figures,
        "latencies_s": {"candidate": candidate.latencies_s, "live": live.latencies_s},
    }
    if rounds:
        details["rounds"] = [
            {"round": r, "slot": s, "requests": 2, "errors": 0, "completion_tokens": 64, "busy_s": 1.3}
            for r in (0, 1)
            for s in ("candidate", "live")
        ]
    return StepResult(
        step="perf-decision", model=MODEL, version=version, checks=decision.checks, details=details
    )


HISTORY = [
    {"when": "t1", "alias": "live", "from_version": None, "to_version": "1", "step": "promote", "who": "a"},
    {"when": "t2", "alias": "staged", "from_version": None, "to_version": "2", "step": "set-staged"},
    {"when": "t3", "alias": "live", "from_version": "1", "to_version": "2", "step": "promote", "who": "b"},
]


def evidence(*steps: StepResult, **changes: object) -> ReleaseEvidence:
    values: dict[str, object] = {
        "model": MODEL,
        "version": "2",
        "generated_at": "2026-12-01T09:00:00+00:00",
        "aliases": {"live": "2", "previous": "1"},
        "version_tags": {
            "loradeploy.base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "loradeploy.rank": "8",
            "loradeploy.sha256.adapter_model.safetensors": "ab" * 32,
        },
        "steps": [FoundResult(path=f"/out/{s.step}/result.json", result=s) for s in steps],
        "history": HISTORY,
    }
    values.update(changes)
    return ReleaseEvidence.model_validate(values)


def figures_of(page: str) -> dict[str, str]:
    """data-figure name -> the SVG text of every figure on the page."""
    found = re.findall(r'<img data-figure="([^"]+)"[^>]*src="data:image/svg\+xml;base64,([^"]+)"', page)
    return {name: base64.b64decode(data).decode("utf-8") for name, data in found}


# -- the page ------------------------------------------------------------------------------


def test_a_full_release_has_every_figure_and_each_is_a_well_formed_svg() -> None:
    page = build_page(evidence(gate1(), gate2()))
    shown = figures_of(page)
    assert set(shown) == {"bootstrap", "paired", "judge", "latency", "throughput"}
    for svg in shown.values():
        xml.dom.minidom.parseString(svg)
    assert page.count("<img ") == 5
    assert "-margin -0.050" in shown["bootstrap"]
    assert re.search(r"p50 limit \d", shown["latency"]) and re.search(r"p95 limit \d", shown["latency"])
    assert "Gate 1: passed" in page and "Gate 2: passed" in page
    assert "aliases now: live" in page


def test_the_page_loads_nothing_from_outside() -> None:
    page = build_page(evidence(gate1(), gate2()))
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert "url(" not in page and "@import" not in page
    assert "default-src 'none'" in page  # and the browser is told so


def test_the_replicas_a_step_touched_are_named() -> None:
    load = StepResult(
        step="load-adapter",
        model=MODEL,
        version="2",
        details={"replicas": [{"replica": "http://r1:8000", "root": "/a/s/m-v2", "strategy": "inplace"}]},
    )
    smoke = StepResult(step="smoke-test", model=MODEL, version="2", checks=[])
    page = build_page(evidence(load, smoke))
    assert "<td>http://r1:8000 (inplace)</td>" in page and "/a/s/m-v2" not in page


def test_what_was_not_recorded_says_so() -> None:
    older = gate1()
    older.details["figures"].pop("judge_accuracy")  # written before the judge was calibrated
    page = build_page(evidence(older))
    assert '<th>judge calibration accuracy</th></tr><tr><td><span class="missing">not recorded' in page
    assert "Gate 2 did not run on this version: not recorded" in page
    assert "Requests around the swaps" in page
    assert re.search(r"signer</td><td><span class=\"missing\">" + NOT_RECORDED, page)


def test_a_recorded_calibration_and_signer_are_shown() -> None:
    from loradeploy.domain.signing import Method, signature_tags

    signed = signature_tags("cert CN=release-bot@example", Method.CERTIFICATE)
    page = build_page(evidence(gate1(judge_calibration_accuracy=0.875), version_tags=signed))
    assert "<td>0.875</td>" in page
    assert "release-bot@example" in page


def test_an_older_gate2_result_without_rounds_still_draws_latencies() -> None:
    page = build_page(evidence(gate2(rounds=False)))
    assert set(figures_of(page)) == {"latency"}
    assert "Throughput per round: not recorded" in page


def test_a_gate_that_ended_in_an_error_shows_the_error() -> None:
    failed = StepResult(
        step="compare-decision",
        model=MODEL,
        version="2",
        status="error",
        exit_code=75,
        error="vLLM at http://x unreachable",
    )
    page = build_page(evidence(failed))
    assert "Gate 1: error" in page and "vLLM at http://x unreachable" in page
    assert figures_of(page) == {}


def test_text_from_results_and_tags_is_escaped() -> None:
    hostile = '<script>alert("x")</script>'
    result = gate1(ids=[hostile, "q1", "q2", "q3", "q4", "q5"])
    result.error = hostile
    page = build_page(evidence(result, version_tags={"loradeploy.base_model": hostile}))
    assert "<script" not in page
    assert "&lt;script&gt;" in page


def test_the_bootstrap_figure_is_the_gates_own_distribution() -> None:
    diffs = [c - b for c, b in zip(CANDIDATE_F1, LIVE_F1, strict=True)]
    means = bootstrap_means(diffs, samples=500, seed=3)
    interval = paired_bootstrap(CANDIDATE_F1, LIVE_F1, samples=500, seed=3, confidence=0.9)
    assert percentile(means, 5) == interval.low and percentile(means, 95) == interval.high
    assert bootstrap_means([], samples=10, seed=0) == []


def test_belongs_to_by_fields_or_by_the_served_folder() -> None:
    assert belongs_to(gate1("2"), MODEL, "2")
    assert not belongs_to(gate1("3"), MODEL, "2")
    smoke = StepResult(step="smoke-test", details={"adapter_path": f"/a/slot/{MODEL}-v2"})
    assert belongs_to(smoke, MODEL, "2") and not belongs_to(smoke, MODEL, "20")
    assert not belongs_to(
        StepResult(step="smoke-test", details={"adapter_path": "/a/slot/other-v2"}), MODEL, "2"
    )


def test_version_moves_are_those_to_or_from_the_version() -> None:
    assert [m["when"] for m in version_moves(HISTORY, "2")] == ["t2", "t3"]
    assert [m["when"] for m in version_moves(HISTORY, "1")] == ["t1", "t3"]


def test_the_same_numbers_give_the_same_svg() -> None:
    first = plots.latency_ecdf([1.0, 2.0], [1.5], p50_limit=2.0, p95_limit=None)
    assert first == plots.latency_ecdf([1.0, 2.0], [1.5], p50_limit=2.0, p95_limit=None)
    assert first.startswith("<svg") and "p50 limit 2.000s" in first and not re.search(r"p95 limit \d", first)


def test_without_matplotlib_a_figure_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match="needs matplotlib") as raised:
        plots.judge_verdicts({"win": 1}, min_win_rate=0.4, win_rate=1.0)
    assert "loradeploy[report]" in raised.value.one_line()


def test_figures_of_a_load_where_one_slot_or_every_round_recorded_nothing() -> None:
    only_live = plots.latency_ecdf([], [1.0, 1.2], p50_limit=None, p95_limit=None)
    no_rounds = plots.throughput_rounds([{"round": 0, "slot": "live", "completion_tokens": 0, "busy_s": 0}])
    for svg in (only_live, no_rounds, plots.paired_differences([], [], [])):
        xml.dom.minidom.parseString(svg)
    assert "live (2)" in only_live and "candidate (" not in only_live
    assert 'id="legend_1"' in only_live and 'id="legend_1"' not in no_rounds


def promotion(start: str = "2026-12-01T09:00:10+00:00", end: str = "2026-12-01T09:00:13+00:00") -> StepResult:
    return StepResult(step="promote-adapter", model=MODEL, version="2", started_at=start, finished_at=end)


T0 = 1_796_115_600.0  # 2026-12-01T09:00:00Z


def test_recorded_traffic_is_drawn_around_the_swaps_and_counted() -> None:
    traffic = [TrafficRequest(start=T0 + i, latency_s=0.5, ok=i != 11) for i in range(30)]
    page = build_page(evidence(promotion(), traffic=traffic))
    shown = figures_of(page)
    assert "traffic" in shown and "failed (1)" in shown["traffic"] and "served (29)" in shown["traffic"]
    # the window is 09:00:10 to 09:00:14 (finished in second 13): requests started at 10, 11
    # (failed), 12, 13 and 14 s were in flight during it
    assert "<td>promote-adapter</td><td>4</td><td>5</td><td>1</td>" in page


def test_traffic_that_missed_every_swap_says_so() -> None:
    traffic = [TrafficRequest(start=T0 + 3600 + i, latency_s=0.5, ok=True) for i in range(5)]
    page = build_page(evidence(promotion(), traffic=traffic))
    assert "traffic" not in figures_of(page)
    assert "none of them ran while traffic was recorded" in page


def test_the_judge_calibration_accuracy_is_shown_when_recorded() -> None:
    page = build_page(evidence(gate1()))
    assert '<th>judge calibration accuracy</th></tr><tr><td><span class="missing">' not in page
    assert "0.875" in page


def test_the_signer_is_who_signed_not_the_signature_file() -> None:
    from loradeploy.domain.signing import Method, signature_tags

    tags = {
        "loradeploy.base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        **signature_tags("key sha256:0123456789abcdef", Method.KEY),
    }
    page = build_page(evidence(gate1(), version_tags=tags))
    assert "key sha256:0123456789abcdef (key)" in page
    assert "<td>model.sig</td>" not in page

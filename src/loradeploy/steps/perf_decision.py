"""Gate 2, performance: the same fixed load at the candidate slot and the live slot.

The load runs in rounds of ``concurrency`` simultaneous requests (threads sharing one
HTTP client); each round is sent to one slot and then, with the same prompts, to the
other, and which slot goes first alternates from round to round, so slow moments of
the machine fall on both. Every request asks for exactly ``max_tokens`` tokens
(``ignore_eos``), greedy, seeded. One unmeasured warm-up request per slot comes first.
Four checks (``domain.gates.decide_perf``): p50 and p95 latency ratios, the
completion-token throughput ratio (tokens from ``usage``), and the candidate's error
rate. The version the candidate slot serves gets ``perf-passed`` or ``perf-failed``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor
from loradeploy.domain.gates import PERF_FAILED, PERF_PASSED, PerfThresholds, SlotLoad, decide_perf
from loradeploy.domain.report import bar_chart_svg
from loradeploy.errors import LoraDeployError, ServerUnavailableError
from loradeploy.results import StepResult, Timer
from loradeploy.steps.gates import gate_version, set_gate_alias

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class PerfRequest:
    model: str
    candidate_slot: str
    live_slot: str
    prompts: Sequence[Messages]
    thresholds: PerfThresholds
    concurrency: int = 4
    requests: int = 32  # per slot
    max_tokens: int = 32
    seed: int = 0


def round_plan(requests: int, concurrency: int, seed: int) -> list[tuple[int, bool]]:
    """(size, candidate_first) per round: rounds of ``concurrency``, the first slot
    drawn with ``seed`` and alternating after that."""
    first = random.Random(seed).random() < 0.5
    sizes = [min(concurrency, requests - start) for start in range(0, requests, concurrency)]
    return [(size, first != (index % 2 == 1)) for index, size in enumerate(sizes)]


def _one(vllm: VllmClient, target: str, messages: Messages, request: PerfRequest) -> tuple[float, int] | None:
    try:
        done = vllm.chat_completion(
            target, messages, max_tokens=request.max_tokens, seed=request.seed, extra={"ignore_eos": True}
        )
    except LoraDeployError:
        return None  # counted as an error
    return done.latency_s, done.completion_tokens


def perf_decision(
    request: PerfRequest,
    *,
    registry: MLflowHelper,
    vllm: VllmClient,
    actor: Actor,
    clock: Callable[[], float] = time.perf_counter,
) -> StepResult:
    result = StepResult(step="perf-decision", model=request.model, slot=request.candidate_slot)
    timer = Timer(result.timings_s)
    with timer("preflight"):
        vllm.ensure_healthy()
        version, root = gate_version(registry, vllm, request.model, request.candidate_slot)
        result.version = version
        live_target = request.live_slot if request.live_slot in vllm.adapters() else vllm.base_model().id
    prompts = list(request.prompts)
    random.Random(request.seed).shuffle(prompts)
    targets = {"candidate": request.candidate_slot, "live": live_target}
    loads = {"candidate": SlotLoad(slot=request.candidate_slot), "live": SlotLoad(slot=live_target)}
    with timer("warm-up"):
        for target in targets.values():  # a transport failure here is transient: no load ran
            vllm.chat_completion(target, prompts[0], max_tokens=request.max_tokens, seed=request.seed)
    sent = 0
    rounds: list[dict[str, object]] = []  # what each slot did in each round, for the report
    with timer("load"), ThreadPoolExecutor(max_workers=request.concurrency) as pool:
        plan = round_plan(request.requests, request.concurrency, request.seed)
        for index, (size, candidate_first) in enumerate(plan):
            batch = [prompts[(sent + i) % len(prompts)] for i in range(size)]
            sent += size
            for name in ("candidate", "live") if candidate_first else ("live", "candidate"):
                started = clock()
                outcomes = list(pool.map(lambda m, t=targets[name]: _one(vllm, t, m, request), batch))
                load = loads[name]
                busy = clock() - started
                load.busy_s += busy
                done = [outcome for outcome in outcomes if outcome is not None]
                load.errors += len(outcomes) - len(done)
                load.latencies_s.extend(latency for latency, _ in done)
                load.completion_tokens += sum(tokens for _, tokens in done)
                rounds.append(
                    {
                        "round": index,
                        "slot": name,
                        "requests": size,
                        "errors": len(outcomes) - len(done),
                        "completion_tokens": sum(tokens for _, tokens in done),
                        "busy_s": round(busy, 4),
                    }
                )
    if not vllm.health_check() or not any(load.latencies_s for load in loads.values()):
        raise ServerUnavailableError(
            f"vLLM at {vllm.base_url} failed during the load test "
            "(the health check failed, or every request failed)",
            hint="check the vLLM server log, then run perf-decision again",
        )
    decision = decide_perf(loads["candidate"], loads["live"], request.thresholds)
    result.checks = decision.checks
    with timer("aliases"):
        moves = set_gate_alias(
            registry,
            vllm,
            model=request.model,
            slot=request.candidate_slot,
            version=version,
            checks=decision.checks,
            aliases=(PERF_PASSED, PERF_FAILED),
            actor=actor,
            label=f"Gate 2 against {live_target}",
        )
    result.details = {
        "decision": PERF_PASSED if decision.passed else PERF_FAILED,
        "candidate_root": root,
        "live_target": live_target,
        "load": {
            "concurrency": request.concurrency,
            "requests_per_slot": request.requests,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
        },
        "thresholds": request.thresholds.model_dump(),
        "figures": decision.figures,
        "alias_moves": [m.describe() for m in moves],
        "latencies_s": {name: [round(x, 4) for x in load.latencies_s] for name, load in loads.items()},
        "rounds": rounds,
    }
    return result


def perf_plot(result: StepResult) -> str:
    figures = result.details["figures"]
    return bar_chart_svg(
        f"latency: candidate {result.slot} vs {result.details['live_target']}",
        ["p50", "p95"],
        {
            "candidate": [float(figures["candidate_p50_s"] or 0), float(figures["candidate_p95_s"] or 0)],
            "live": [float(figures["live_p50_s"] or 0), float(figures["live_p95_s"] or 0)],
        },
        unit=" s",
    )

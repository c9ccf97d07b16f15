"""Step 2: send test prompts to the deployed adapter and check the answers.

Uses ``/v1/completions`` (the specification's base model has no chat template). Besides
the specification's checks it proves the adapter is active (answers differ from the
base model's, or contain what the probes expect) and, given the expected model and
version, that the slot's ``root`` is that version's folder.
"""

from __future__ import annotations

from collections.abc import Sequence

from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.layout import parse_root
from loradeploy.domain.smoke import Answer, Probe, evaluate, percentile
from loradeploy.errors import NotFoundError
from loradeploy.results import Check, StepResult, Timer


def smoke_test(
    vllm: VllmClient,
    *,
    adapter: str,
    num_requests: int,
    max_latency_s: float,
    probes: Sequence[Probe],
    max_tokens: int = 32,
    compare_base: bool = True,
    min_different: float = 0.5,
    expected_model: str | None = None,
    expected_version: str | None = None,
) -> StepResult:
    result = StepResult(step="smoke-test", slot=adapter, model=expected_model, version=expected_version)
    timer = Timer(result.timings_s)
    with timer("preflight"):
        vllm.ensure_healthy()
        card = vllm.adapters().get(adapter)
        if card is None:
            raise NotFoundError(
                f"vLLM at {vllm.base_url} does not serve an adapter named {adapter!r}",
                hint="run load-adapter for this slot first",
            )
        base_id = vllm.base_model().id
    if expected_version is not None:
        served = parse_root(card.root or "")
        ok = served is not None and served.version == expected_version
        if expected_model is not None:
            ok = ok and served is not None and served.model == expected_model
        result.checks.append(
            Check(
                name="served-version",
                passed=ok,
                detail=f"root={card.root}, expected {expected_model or '*'} version {expected_version}",
            )
        )
    answers = []
    with timer("requests"):
        for index in range(num_requests):
            probe = probes[index % len(probes)]
            done = vllm.completion(adapter, probe.prompt, max_tokens=max_tokens)
            answers.append(
                Answer(prompt=probe.prompt, text=done.text, latency_s=done.latency_s, expect=probe.expect)
            )
    if compare_base:
        with timer("base-comparison"):
            base_answers = {
                prompt: vllm.completion(base_id, prompt, max_tokens=max_tokens).text
                for prompt in {a.prompt for a in answers}
            }
        answers = [Answer(a.prompt, a.text, a.latency_s, base_answers[a.prompt], a.expect) for a in answers]
    result.checks.extend(evaluate(answers, max_latency_s, min_different=min_different))
    latencies = [a.latency_s for a in answers]
    result.details = {
        "adapter_path": card.root,
        "latency_s": {
            "p50": round(percentile(latencies, 50), 3),
            "max": round(max(latencies, default=0.0), 3),
            "all": [round(x, 3) for x in latencies],
        },
        "answers": [{"prompt": a.prompt, "text": a.text, "base_text": a.base_text} for a in answers],
    }
    return result

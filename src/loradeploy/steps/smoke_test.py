"""Step 2: send test prompts to the deployed adapter and check the answers.

Uses ``/v1/completions`` (the specification's base model has no chat template).
"""

from __future__ import annotations

from collections.abc import Sequence

from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.smoke import Answer, evaluate, percentile
from loradeploy.errors import NotFoundError
from loradeploy.results import StepResult, Timer


def smoke_test(
    vllm: VllmClient,
    *,
    adapter: str,
    num_requests: int,
    max_latency_s: float,
    prompts: Sequence[str],
    max_tokens: int = 32,
) -> StepResult:
    result = StepResult(step="smoke-test", slot=adapter)
    timer = Timer(result.timings_s)
    with timer("preflight"):
        vllm.ensure_healthy()
        card = vllm.adapters().get(adapter)
        if card is None:
            raise NotFoundError(
                f"vLLM at {vllm.base_url} does not serve an adapter named {adapter!r}",
                hint="run load-adapter for this slot first",
            )
    answers = []
    with timer("requests"):
        for index in range(num_requests):
            prompt = prompts[index % len(prompts)]
            done = vllm.completion(adapter, prompt, max_tokens=max_tokens)
            answers.append(Answer(prompt=prompt, text=done.text, latency_s=done.latency_s))
    result.checks = evaluate(answers, max_latency_s)
    latencies = [a.latency_s for a in answers]
    result.details = {
        "adapter_path": card.root,
        "latency_s": {
            "p50": round(percentile(latencies, 50), 3),
            "max": round(max(latencies, default=0.0), 3),
            "all": [round(x, 3) for x in latencies],
        },
        "answers": [{"prompt": a.prompt, "text": a.text} for a in answers],
    }
    return result

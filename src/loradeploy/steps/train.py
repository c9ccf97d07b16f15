"""``loradeploy train``: fine-tune a LoRA adapter, evaluate it, log an MLflow run and
register the adapter as a version linked to that run.

Training and evaluation run in the ML virtualenv (``mlworkers/train_lora.py`` and
``mlworkers/eval_lora.py``). Both results are cached in a folder named after
everything that determines them (scripts, data, base model, steps, seed), so a second
run with the same inputs trains nothing. A version with byte-identical files that came
from a training run is reused rather than registered again.

The run holds the parameters, the loss per step (metric ``train_loss``), and the eval
metrics ``eval_token_f1``, ``eval_exact_match`` (greedy answers on the eval set, scored
by ``domain.scoring``) and ``eval_loss`` (answer tokens); ``quality-gate`` reads them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradeploy.clients.mlworker import MlWorker, Progress
from loradeploy.clients.registry import MLflowHelper
from loradeploy.coordination import Actor
from loradeploy.domain.adapter import inspect_adapter
from loradeploy.domain.gates import METRIC_EXACT, METRIC_F1, METRIC_LOSS
from loradeploy.domain.scoring import exact_match, mean, read_qa, token_f1
from loradeploy.domain.smoke import probes_from_qa, read_probes
from loradeploy.errors import UsageError
from loradeploy.results import StepResult, Timer
from loradeploy.steps.register import record_probes, register
from loradeploy.steps.sign import ensure_signed

TRAIN_EXPERIMENT = "loradeploy-training"
TRAIN_SCRIPT, EVAL_SCRIPT = "train_lora.py", "eval_lora.py"
# Parameters of train_lora.py's summary logged to the run.
RUN_PARAMS = (
    "steps",
    "seed",
    "rank",
    "alpha",
    "lr",
    "batch_size",
    "targets",
    "base_name",
    "examples",
    "threads",
)


@dataclass(frozen=True)
class TrainRequest:
    model: str
    data: Path
    eval_data: Path
    base_model_dir: Path
    base_name: str  # the served base model name, written into adapter_config.json
    cache_dir: Path
    steps: int = 40
    seed: int = 0
    max_new_tokens: int = 48
    sign_key: Path | None = None  # sign the registered version with this key
    sign_cert_chain: Path | None = None
    probes_file: Path | None = None  # the smoke test's probes; default: the eval data's


def training_cache(
    cache_dir: Path,
    model: str,
    *,
    script: Path,
    data: Path,
    base_model_dir: Path,
    base_name: str,
    steps: int,
    seed: int,
) -> tuple[Path, str]:
    """The folder where the adapter trained from exactly these inputs is kept (``adapter/``
    and the worker's summary ``train.json``), and the key it is named by: the training
    script's and data's bytes, the base model, the steps and the seed. ``make setup``
    trains the demo's v2 into it, so the demo's ``train`` finds it there."""
    key = _digest(
        _read(script, "training script"),
        _read(data, "training data"),
        _read(base_model_dir / "config.json", "base model config"),
        str(base_model_dir.resolve()),
        base_name,
        str(steps),
        str(seed),
    )
    return cache_dir / f"{model}-steps{steps}-seed{seed}-{key[:12]}", key


def _digest(*parts: bytes | str) -> str:
    sha = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        sha.update(len(data).to_bytes(8, "big") + data)
    return sha.hexdigest()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{what} {path} is unreadable ({type(exc).__name__})") from exc


def _flags(**values: object) -> list[str]:
    """``--name value`` pairs, underscores in names becoming dashes."""
    return [item for key, value in values.items() for item in (f"--{key.replace('_', '-')}", str(value))]


def train(
    request: TrainRequest,
    *,
    worker: MlWorker,
    registry: MLflowHelper,
    actor: Actor,
    on_progress: Progress | None = None,
) -> StepResult:
    """Train (or take from the cache), evaluate, log the run, register the version.
    ``on_progress`` gets the workers' progress records (loading, every step, every
    evaluated question) while they run."""
    result = StepResult(step="train", model=request.model)
    timer = Timer(result.timings_s)
    probes = (
        read_probes(request.probes_file)
        if request.probes_file
        else probes_from_qa(read_qa(request.eval_data))
    )
    folder, train_key = training_cache(
        request.cache_dir,
        request.model,
        script=worker.workers_dir / TRAIN_SCRIPT,
        data=request.data,
        base_model_dir=request.base_model_dir,
        base_name=request.base_name,
        steps=request.steps,
        seed=request.seed,
    )
    adapter, summary_file = folder / "adapter", folder / "train.json"
    cached = summary_file.is_file() and (adapter / "adapter_config.json").is_file()
    with timer("train"):
        if cached:
            summary: dict[str, Any] = json.loads(summary_file.read_text(encoding="utf-8"))
        else:
            shutil.rmtree(adapter, ignore_errors=True)  # a crashed run's leftovers
            summary = worker.run(
                TRAIN_SCRIPT,
                [
                    *_flags(
                        base_model=request.base_model_dir, base_name=request.base_name, data=request.data
                    ),
                    *_flags(out=adapter, steps=request.steps, seed=request.seed),
                ],
                log=folder / "train.log",
                on_progress=on_progress,
            )
            summary_file.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    eval_key = _digest(
        train_key,
        _read(worker.workers_dir / EVAL_SCRIPT, "evaluation script"),
        _read(request.eval_data, "evaluation data"),
        str(request.max_new_tokens),
    )
    eval_file = folder / f"eval-{eval_key[:12]}.json"
    with timer("evaluate"):
        if eval_file.is_file():
            evaluation: dict[str, Any] = json.loads(eval_file.read_text(encoding="utf-8"))
        else:
            evaluation = worker.run(
                EVAL_SCRIPT,
                _flags(
                    base_model=request.base_model_dir,
                    adapter=adapter,
                    data=request.eval_data,
                    max_new_tokens=request.max_new_tokens,
                ),
                log=folder / "eval.log",
                on_progress=on_progress,
            )
            eval_file.write_text(json.dumps(evaluation, indent=2) + "\n", encoding="utf-8")
    predictions = evaluation["predictions"]
    metrics = {
        METRIC_F1: round(mean([token_f1(p["prediction"], p["reference"]) for p in predictions]), 4),
        METRIC_EXACT: round(mean([exact_match(p["prediction"], p["reference"]) for p in predictions]), 4),
        METRIC_LOSS: float(evaluation["eval_loss"]),
        "final_loss": float(summary["final_loss"]),
        "train_seconds": float(summary["train_seconds"]),
    }
    info = inspect_adapter(adapter)
    with timer("register"):
        existing = registry.find_version_with_files(request.model, info.files)
        existing_run = registry.get_version(request.model, existing).run_id if existing else None
        if existing and existing_run:
            run_id, version, reused = existing_run, existing, True
        else:
            params: dict[str, str] = {
                "data": str(request.data),
                "eval_data": str(request.eval_data),
                "cache": str(folder),
            }
            for key in RUN_PARAMS:
                if key in summary:
                    value = summary[key]
                    params[key] = value if isinstance(value, str) else json.dumps(value)
            run_id = registry.log_training_run(
                experiment=TRAIN_EXPERIMENT,
                run_name=f"{request.model} steps={request.steps} seed={request.seed}",
                params=params,
                metrics=metrics,
                curves={"train_loss": [float(x) for x in summary["loss_curve"]]},
                tags={"loradeploy.model": request.model, "loradeploy.who": actor.who},
                texts={"eval_predictions.json": json.dumps(predictions, indent=2)},
            )
            registered = register(
                registry,
                model=request.model,
                adapter_dir=adapter,
                alias=None,
                actor=actor,
                run_id=run_id,
                sign_key=request.sign_key,
                sign_cert_chain=request.sign_cert_chain,
                probes=probes,
            )
            version, reused = str(registered.version), False
            signature = str(registered.details["signature"])
    if reused:
        signature = "not signed (no signing key configured)"
    if reused and request.sign_key is not None:  # a new version was signed by register
        with timer("sign"):
            signature = ensure_signed(
                registry,
                request.model,
                version,
                adapter,
                key=request.sign_key,
                cert_chain=request.sign_cert_chain,
            ).describe()
    if reused:
        with timer("probes"):
            record_probes(registry, request.model, version, probes)
    result.version = version
    result.details = {
        "run_id": run_id,
        "reused_existing_version": reused,
        "cached_training": cached,
        "adapter_dir": str(adapter),
        "metrics": metrics,
        "train_seconds": summary.get("train_seconds"),
        "eval_seconds": evaluation.get("seconds"),
        "signature": signature,
    }
    return result

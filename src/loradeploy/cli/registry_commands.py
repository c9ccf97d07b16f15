"""Versions in the registry: register a folder, sign a version, train one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from loradeploy.cli.common import (
    _actor,
    _registry,
    _run,
    _settings,
    err,
)
from loradeploy.cli.options import (
    DEFAULT_EVAL_DATA,
    CaBundle,
    EvalData,
    ModelName,
    OutputDir,
    ProbesFile,
    SignCertChain,
    SignKey,
    TrackingUri,
)
from loradeploy.domain import names
from loradeploy.errors import UsageError

if TYPE_CHECKING:
    from loradeploy.clients.mlworker import WorkerProgress
    from loradeploy.results import StepResult


def register(
    model_name: ModelName,
    adapter_dir: Annotated[Path, typer.Option("--adapter-dir", help="PEFT LoRA adapter folder.")],
    alias: Annotated[str | None, typer.Option("--alias", help="Alias to set on the new version.")] = None,
    reuse_identical: Annotated[
        bool,
        typer.Option("--reuse-identical", help="Return an existing version with the same files."),
    ] = False,
    tracking_uri: TrackingUri = None,
    output_dir: OutputDir = None,
    sign_key: SignKey = None,
    sign_cert_chain: SignCertChain = None,
    probes_file: ProbesFile = None,
) -> None:
    """Validate a PEFT LoRA folder and register it as a new model version, tagged with
    base model, rank, target modules and a sha256 per file; with --sign-key, signed;
    with --probes-file, with the probes smoke-test sends to it."""

    def action() -> StepResult:
        from loradeploy.domain.smoke import read_probes
        from loradeploy.steps.register import register as step

        probes = read_probes(probes_file) if probes_file else None
        names.model_name(model_name)
        if alias is not None:
            names.alias_name(alias)
        settings = _settings(tracking_uri=tracking_uri, sign_key=sign_key, sign_cert_chain=sign_cert_chain)
        return step(
            _registry(settings),
            model=model_name,
            adapter_dir=adapter_dir,
            alias=alias,
            actor=_actor(settings, "register"),
            reuse_identical=reuse_identical,
            sign_key=settings.sign_key,
            sign_cert_chain=settings.sign_cert_chain,
            probes=probes,
        )

    _run("register", output_dir, action)


def sign(
    model_name: ModelName,
    version: Annotated[str, typer.Option("--version", help="Version to sign.")],
    sign_key: SignKey = None,
    sign_cert_chain: SignCertChain = None,
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
    ca_bundle: CaBundle = None,
) -> None:
    """Sign a registered version (for versions registered by other tools): download it,
    check its files against its sha256 tags, sign, upload the signature beside them."""

    def action() -> StepResult:
        from loradeploy.steps.sign import sign as step

        names.model_name(model_name)
        names.parse_source(f"version:{version}")
        settings = _settings(
            tracking_uri=tracking_uri, ca_bundle=ca_bundle, sign_key=sign_key, sign_cert_chain=sign_cert_chain
        )
        if settings.sign_key is None:
            raise UsageError("no signing key", hint="pass --sign-key or set LORADEPLOY_SIGN_KEY")
        return step(
            _registry(settings),
            model=model_name,
            version=version,
            key=settings.sign_key,
            cert_chain=settings.sign_cert_chain,
        )

    _run("sign", output_dir, action)


def train(
    model_name: ModelName,
    data: Annotated[Path, typer.Option("--data", help="Training data, JSON lines.")] = Path(
        "data/aws-rag-qa/train.jsonl"
    ),
    eval_data: EvalData = DEFAULT_EVAL_DATA,
    steps: Annotated[int, typer.Option("--steps", min=1, max=100000, help="Optimiser steps.")] = 40,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    output_dir: OutputDir = None,
    base_model_dir: Annotated[
        Path | None,
        typer.Option(
            "--base-model-dir", help="Base model folder (default: the stack's models/smollm2-135m-instruct)."
        ),
    ] = None,
    base_model_name: Annotated[
        str | None, typer.Option("--base-model-name", help="Served base model name (default: the stack's).")
    ] = None,
    ml_python: Annotated[
        Path | None, typer.Option("--ml-python", help="The ML virtualenv's python (default: the stack's).")
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="Trained adapters are kept here (default: <assets>/trained)."),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, max=1024, help="Answer length in the evaluation.")
    ] = 48,
    tracking_uri: TrackingUri = None,
    ca_bundle: CaBundle = None,
    sign_key: SignKey = None,
    sign_cert_chain: SignCertChain = None,
    probes_file: Annotated[
        Path | None,
        typer.Option("--probes-file", help="Smoke-test probes to record (default: from --eval-data)."),
    ] = None,
) -> None:
    """Fine-tune a LoRA adapter on the CPU, evaluate it, log an MLflow run, register a version
    (signed when a signing key is configured) with smoke-test probes from its eval data."""

    def action() -> StepResult:
        from loradeploy.clients.mlworker import MlWorker
        from loradeploy.steps.train import TrainRequest
        from loradeploy.steps.train import train as step

        names.model_name(model_name)
        settings = _settings(
            tracking_uri=tracking_uri, ca_bundle=ca_bundle, sign_key=sign_key, sign_cert_chain=sign_cert_chain
        )
        assets = (settings.stack.assets or settings.stack.home) if settings.stack else None
        needed = {
            "--base-model-dir": base_model_dir,
            "--ml-python": ml_python,
            "--base-model-name": base_model_name,
        }
        if assets is None and None in needed.values():
            missing = ", ".join(flag for flag, value in needed.items() if value is None)
            raise UsageError(f"no local stack to take defaults from: pass {missing}")
        request = TrainRequest(
            model=model_name,
            data=data.resolve(),
            eval_data=eval_data.resolve(),
            base_model_dir=(
                base_model_dir or Path(str(assets)) / "models" / "smollm2-135m-instruct"
            ).resolve(),
            base_name=base_model_name or (settings.stack.served_model if settings.stack else ""),
            cache_dir=(cache_dir or Path(str(assets)) / "trained").resolve(),
            steps=steps,
            seed=seed,
            max_new_tokens=max_new_tokens,
            sign_key=settings.sign_key,
            sign_cert_chain=settings.sign_cert_chain,
            probes_file=probes_file.resolve() if probes_file else None,
        )
        worker = MlWorker(ml_python or Path(str(assets)) / "envs" / "vllm" / "bin" / "python")
        with _worker_progress(f"{model_name} ({steps} steps, seed {seed})") as on_progress:
            return step(
                request,
                worker=worker,
                registry=_registry(settings),
                actor=_actor(settings, "train"),
                on_progress=on_progress,
            )

    _run("train", output_dir, action)


@contextmanager
def _worker_progress(title: str) -> Iterator[Callable[[WorkerProgress], None]]:
    """A progress bar on stderr fed by the ML workers' progress records: one bar per
    worker, with the step, the last loss and the time left at the pace so far."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    phases = {"load": "loading the base model", "train": "training", "evaluate": "evaluating"}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=err) as bar:
        tasks: list[TaskID] = []

        def show(progress: WorkerProgress) -> None:
            if progress.phase == "load" or not tasks:  # a worker starts
                tasks.append(bar.add_task(title, total=None, detail=""))
            detail = [f"loss {progress.loss:.3f}"] if progress.loss is not None else []
            left = progress.remaining_s
            if left is not None and progress.step < progress.steps:
                detail.append(f"{left // 60:.0f}m {left % 60:02.0f}s left")
            elif left is not None:
                detail.append(f"took {progress.elapsed_s:.0f}s")
            bar.update(
                tasks[-1],
                description=f"{title}: {phases.get(progress.phase, progress.phase)}",
                total=progress.steps if progress.phase != "load" else None,
                completed=progress.step,
                detail=", ".join(detail),
            )

        yield show

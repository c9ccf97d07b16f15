"""``loradeploy load-version``: routed mode's versioned name of one version on every replica."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from loradeploy.cli.common import _actor, _registry, _run, _settings, err, swap_patience
from loradeploy.cli.options import (
    AdaptersRoot,
    ApiKey,
    BaseAlias,
    CaBundle,
    MaxRank,
    ModelName,
    OutputDir,
    RequireSignature,
    TrackingUri,
    TrustedCas,
    TrustedKeys,
    VllmUrls,
)
from loradeploy.domain import names
from loradeploy.errors import UsageError

if TYPE_CHECKING:
    from loradeploy.results import StepResult


def parse_source(source_alias: str | None, source: str | None) -> names.Source:
    """Exactly one of ``--source-alias A`` and ``--source alias:A|version:N``."""
    if (source_alias is None) == (source is None):
        raise UsageError(
            "load-version needs exactly one of --source-alias and --source",
            hint="pass for example --source-alias=staged or --source=version:3",
        )
    if source_alias is not None:
        return names.Source("alias", names.alias_name(source_alias))
    return names.parse_source(source or "")


def load_version(
    model_name: ModelName,
    source_alias: Annotated[
        str | None, typer.Option("--source-alias", help="Alias naming the version, e.g. staged.")
    ] = None,
    source: Annotated[str | None, typer.Option("--source", help="'version:N' or 'alias:NAME'.")] = None,
    max_loras: Annotated[
        int | None,
        typer.Option("--max-loras", min=1, help="The servers' --max-loras (env LORADEPLOY_MAX_LORAS)."),
    ] = None,
    max_cpu_loras: Annotated[
        int | None,
        typer.Option(
            "--max-cpu-loras", min=1, help="The servers' --max-cpu-loras (env LORADEPLOY_MAX_CPU_LORAS)."
        ),
    ] = None,
    vllm_url: VllmUrls = None,
    output_dir: OutputDir = None,
    adapters_root: AdaptersRoot = None,
    max_lora_rank: MaxRank = None,
    base_model_alias: BaseAlias = None,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    trusted_key: TrustedKeys = None,
    trusted_ca: TrustedCas = None,
    require_signature: RequireSignature = None,
) -> None:
    """Routed mode: serve one version as MODEL@vN on every replica, loaded once and never
    reloaded; room is made from versions with no weight and no alias (the limits come
    from the flags or the stack file). All or nothing, under the model's lock."""

    def action() -> StepResult:
        from loradeploy.clients import wiring
        from loradeploy.domain.residency import weights_of
        from loradeploy.steps.load_version import load_version as step

        model, parsed = names.model_name(model_name), parse_source(source_alias, source)
        settings = _settings(
            tracking_uri=tracking_uri,
            vllm_url=vllm_url[0] if vllm_url else None,
            adapters_root=adapters_root,
            api_key=api_key,
            ca_bundle=ca_bundle,
            max_lora_rank=max_lora_rank,
            max_loras=max_loras,
            max_cpu_loras=max_cpu_loras,
            base_model_alias=base_model_alias,
            trusted_key=trusted_key,
            trusted_ca=trusted_ca,
            require_signature=require_signature,
        )
        limits = wiring.residency_limits(settings)
        routed = settings.stack is not None and settings.stack.router_url is not None
        weights = weights_of(wiring.router_client(settings).routes()) if routed else {}
        with (
            wiring.targets(settings, wiring.Where(vllm_url)) as (files, replicas),
            err.status(f"loading {model}@{parsed} as a versioned name on {len(replicas)} replica(s)"),
        ):
            return step(
                model,
                parsed,
                registry=_registry(settings),
                replicas=replicas,
                transport=files,
                policy=wiring.adapter_policy(settings),
                weights=weights,
                limits=limits,
                actor=_actor(settings, "load-version"),
                patience=swap_patience(settings),
            )

    _run("load-version", output_dir, action)

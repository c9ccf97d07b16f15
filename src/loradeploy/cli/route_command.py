"""``loradeploy route``: routed mode's weights for one stable name on the router."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from loradeploy.cli.common import _actor, _registry, _run, _settings
from loradeploy.cli.options import (
    ApiKey,
    CaBundle,
    Container,
    Kubectl,
    Namespace,
    OutputDir,
    Selector,
    TrackingUri,
    TransportOpt,
)
from loradeploy.errors import UsageError

if TYPE_CHECKING:
    from loradeploy.results import StepResult


def parse_weights(text: str) -> dict[str, int]:
    """``aws-rag-qa@v1=95,aws-rag-qa@v2=5`` -> names and whole-percent weights."""
    weights: dict[str, int] = {}
    hint = "pass for example --weights=aws-rag-qa@v1=95,aws-rag-qa@v2=5"
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not name or not (value.isascii() and value.isdigit()):
            raise UsageError(f"--weights part {part.strip()!r} is not NAME@vN=PERCENT", hint=hint)
        if name in weights:
            raise UsageError(f"--weights names {name!r} twice", hint=hint)
        weights[name] = int(value)
    return weights


def parse_shadow(text: str) -> tuple[str, int]:
    """``aws-rag-qa@v2=10`` -> the versioned name and the percentage mirrored to it."""
    name, sep, value = text.strip().partition("=")
    if not sep or not name or not (value.isascii() and value.isdigit()):
        raise UsageError(
            f"--shadow {text.strip()!r} is not NAME@vN=PERCENT",
            hint="pass for example --shadow=aws-rag-qa@v2=10",
        )
    return name, int(value)


def route(
    stable_name: Annotated[
        str, typer.Option("--stable-name", help="The name clients call, e.g. aws-rag-qa-live.")
    ],
    weights: Annotated[
        str,
        typer.Option("--weights", help="Versioned names and percentages summing to 100: m@v1=95,m@v2=5."),
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why; kept in the model's history.")] = "",
    shadow: Annotated[
        str | None,
        typer.Option(
            "--shadow",
            help="Mirror PERCENT of the chat requests to a version with no weight, whose answers no "
            "client sees: m@v2=10. Without it the route has no shadow.",
        ),
    ] = None,
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    transport: TransportOpt = "local",
    namespace: Namespace = "ml-models",
    selector: Selector = "app=vllm",
    container: Container = "vllm",
    kubectl: Kubectl = "kubectl",
) -> None:
    """Routed mode: set what a stable name sends to: the local stack's router ('stack up
    --router'), or with --transport=kubectl the namespace's InferenceModelRewrite (Gateway
    API Inference Extension) over the Ready vLLM pods. Every version with weight must be
    served by every replica; the change is made under the model's lock and recorded in
    its history."""

    def action() -> StepResult:
        from loradeploy.clients import wiring
        from loradeploy.domain.routes import Shadow, check_routes, check_shadows
        from loradeploy.steps.route import model_of
        from loradeploy.steps.route import route as step

        parsed = parse_weights(weights)
        mirror = Shadow(*parse_shadow(shadow)) if shadow is not None else None
        checked = check_routes({stable_name: parsed})
        model_of(stable_name, checked[stable_name])  # input first
        check_shadows({stable_name: mirror} if mirror else {}, checked)
        settings = _settings(tracking_uri=tracking_uri, api_key=api_key, ca_bundle=ca_bundle)
        where = wiring.Where(None, transport, namespace, selector, container, kubectl=kubectl)
        router = wiring.router_client(settings, where)
        with wiring.replicas(settings, router.backends) as replicas:  # where the router sends
            return step(
                _registry(settings),
                replicas,
                router,
                stable=stable_name,
                weights=parsed,
                actor=_actor(settings, "route"),
                reason=reason or "set by hand",
                shadow=mirror,
            )

    _run("route", output_dir, action)

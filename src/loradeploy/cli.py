"""The ``loradeploy`` command line: parse, build settings once, call one step, render,
map errors to exit codes (``errors.ExitCode``). Nothing else happens here."""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loradeploy import __version__
from loradeploy.domain import names
from loradeploy.domain.swap import SwapStrategy
from loradeploy.errors import CheckFailedError, ExitCode, LoraDeployError, UsageError, redact

if TYPE_CHECKING:  # imported where used: pydantic would double the start-up of --help
    from loradeploy.results import StepResult
    from loradeploy.settings import Settings

app = typer.Typer(
    name="loradeploy",
    help="Deploy LoRA adapters from the MLflow Model Registry to running vLLM servers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stack_app = typer.Typer(help="The local stack: real MLflow and vLLM servers on loopback.")
app.add_typer(stack_app, name="stack")

out = Console()
err = Console(stderr=True)

# -- shared options ------------------------------------------------------------------------

ModelName = Annotated[str, typer.Option("--model-name", help="Registered model name.")]
SourceOpt = Annotated[str, typer.Option("--source", help="Version to deploy: 'alias:NAME' or 'version:N'.")]
OutputDir = Annotated[
    Path | None,
    typer.Option("--output-dir", help="Write result.json and one file per output value here."),
]
TrackingUri = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow tracking URI (env MLFLOW_TRACKING_URI, or the stack file)."),
]
VllmUrl = Annotated[
    str | None,
    typer.Option("--vllm-url", help="vLLM base URL (env LORADEPLOY_VLLM_URL, or the stack file)."),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", help="vLLM API key (env VLLM_API_KEY).", show_default=False),
]
CaBundle = Annotated[
    Path | None,
    typer.Option("--ca-bundle", help="Extra CA bundle for TLS (env LORADEPLOY_CA_BUNDLE)."),
]
TrustedKeys = Annotated[
    list[Path] | None,
    typer.Option(
        "--trusted-key",
        help="Public key (PEM) whose signatures are accepted; repeat (env LORADEPLOY_TRUSTED_KEYS).",
    ),
]
TrustedCas = Annotated[
    list[Path] | None,
    typer.Option(
        "--trusted-ca",
        help="CA certificate (PEM) whose chains are accepted; repeat (env LORADEPLOY_TRUSTED_CAS).",
    ),
]
RequireSignature = Annotated[
    bool | None,
    typer.Option(
        "--require-signature/--no-require-signature",
        help="Refuse unsigned versions (env LORADEPLOY_REQUIRE_SIGNATURE).",
        show_default=False,
    ),
]
SignKey = Annotated[
    Path | None,
    typer.Option("--sign-key", help="Sign with this EC private key (PEM; env LORADEPLOY_SIGN_KEY)."),
]
SignCertChain = Annotated[
    Path | None,
    typer.Option(
        "--sign-cert-chain",
        help="With --sign-key: its certificate then intermediates, PEM (env LORADEPLOY_SIGN_CERT_CHAIN).",
    ),
]


# Never printed or written: error lines are scrubbed of these values (and of URL user info).
_SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "VLLM_API_KEY")
_given_secrets: set[str] = set()


def _secrets() -> list[str]:
    return [*(os.environ.get(name, "") for name in _SECRET_ENV), *_given_secrets]


def _settings(**flags: Any) -> Settings:
    if flags.get("api_key"):
        _given_secrets.add(str(flags["api_key"]))
    from loradeploy.settings import load_settings

    return load_settings(flags, os.environ, Path.cwd())


@contextmanager
def _vllm(settings: Settings, url: str | None = None) -> Iterator[Any]:
    from loradeploy.clients.vllm import VllmClient

    api_key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
    client = VllmClient(url or settings.require_vllm_url(), api_key=api_key, verify=settings.verify)
    try:
        yield client
    finally:
        client.close()


def _registry(settings: Settings) -> Any:
    from loradeploy.clients.registry import MLflowHelper

    return MLflowHelper(settings.require_tracking_uri(), ca_bundle=settings.ca_bundle)


def _trust(settings: Settings) -> Any:
    """The trust policy, its keys and certificates read once here (None: not configured)."""
    from loradeploy.clients.signing import load_policy

    policy = load_policy(
        settings.trusted_keys, settings.trusted_cas, require_signature=settings.require_signature
    )
    return policy if policy.configured else None


def _print_error(line: str) -> None:
    """One line on stderr, printed literally (messages may hold '[' from user input)."""
    err.print("[red]error:[/] " + escape(line), highlight=False, soft_wrap=True)


def _finish(result: StepResult, output_dir: Path | None, render: Callable[[StepResult], None]) -> None:
    if not result.passed:
        failed = [c.name for c in result.checks if not c.passed]
        result.status = "failed"
        result.exit_code = int(ExitCode.CHECK_FAILED)
        result.error = CheckFailedError(f"{result.step}: checks failed: {', '.join(failed)}").one_line()
    if output_dir:
        from loradeploy.results import write_outputs

        write_outputs(output_dir, result)
    render(result)
    if result.status == "failed":
        _print_error(result.error or "")
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


def _run(
    step: str,
    output_dir: Path | None,
    action: Callable[[], StepResult],
    render: Callable[[StepResult], None] | None = None,
) -> None:
    """Run one step, render its result, and turn errors into exit codes."""
    try:
        result = action()
    except LoraDeployError as exc:
        line = redact(exc.one_line(), _secrets())
        if output_dir:
            from loradeploy.results import StepResult, write_outputs

            failed = StepResult(
                step=step, status="error", exit_code=int(exc.exit_code), error=line, details=exc.details
            )
            write_outputs(output_dir, failed)
        _print_error(line)
        raise typer.Exit(int(exc.exit_code)) from None
    _finish(result, output_dir, render or _render_default)


def _render_default(result: StepResult) -> None:
    table = Table(title=f"{result.step}: {result.status}", show_header=True)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for key in ("model", "version", "slot", "source"):
        value = getattr(result, key)
        if value is not None:
            table.add_row(key, str(value))
    for check in result.checks:
        mark = "[green]pass[/]" if check.passed else "[red]FAIL[/]"
        shown = check.detail or (
            f"{check.value} (limit {check.threshold})" if check.value is not None else ""
        )
        table.add_row(f"check {check.name}", f"{mark} {shown}")
    if result.timings_s:
        table.add_row("timings (s)", ", ".join(f"{k} {v:.2f}" for k, v in result.timings_s.items()))
    out.print(table)
    for warning in result.details.get("warnings", []):
        err.print("[yellow]warning:[/] " + escape(str(warning)), highlight=False, soft_wrap=True)


# -- commands ------------------------------------------------------------------------------

VllmUrls = Annotated[
    list[str] | None,
    typer.Option(
        "--vllm-url",
        help="vLLM base URL; repeat for every replica (env LORADEPLOY_VLLM_URL, or the stack file).",
    ),
]
AdaptersRoot = Annotated[
    Path | None,
    typer.Option("--adapters-root", help="Folder the vLLM server reads adapters from (local transport)."),
]
TransportOpt = Annotated[
    str,
    typer.Option(
        "--transport",
        help="How files reach the server: 'local' (a folder it reads) or 'kubectl' (every Ready pod).",
    ),
]
Namespace = Annotated[str, typer.Option("--namespace", help="Kubernetes namespace (kubectl).")]
Selector = Annotated[str, typer.Option("--selector", help="Label selector of the vLLM pods (kubectl).")]
Container = Annotated[str, typer.Option("--container", help="vLLM container name (kubectl).")]
PodRoot = Annotated[str, typer.Option("--pod-adapters-root", help="Adapters folder inside the pods.")]
Kubectl = Annotated[str, typer.Option("--kubectl", help="kubectl binary (kubectl transport).")]
SwapOpt = Annotated[
    SwapStrategy,
    typer.Option(
        "--swap-strategy",
        help="auto = inplace (no request fails); unload-load leaves a window where the slot is missing.",
    ),
]
MaxRank = Annotated[int | None, typer.Option("--max-lora-rank", help="The server's --max-lora-rank.")]
BaseAlias = Annotated[
    list[str] | None,
    typer.Option("--base-model-alias", help="ADAPTER_BASE=SERVED_BASE, when the names differ."),
]
LiveSlot = Annotated[str, typer.Option("--live-slot", help="Slot serving production traffic.")]
CandidateSlot = Annotated[str, typer.Option("--candidate-slot", help="Slot for the staged version.")]
DEFAULT_LIVE_SLOT = "aws-rag-qa-live"
DEFAULT_CANDIDATE_SLOT = "aws-rag-qa-candidate"


def _actor(settings: Settings, step: str) -> Any:
    from loradeploy.coordination import Actor

    return Actor(who=settings.actor, step=step, run_id=uuid.uuid4().hex, run_key=settings.run_key)


@dataclass(frozen=True)
class _Where:
    """Where adapters go: the replica URLs and the transport flags of one command."""

    urls: list[str] | None
    transport: str
    namespace: str
    selector: str
    container: str
    pod_root: str
    kubectl: str


@contextmanager
def _targets(settings: Settings, where: _Where) -> Iterator[tuple[Any, list[Any]]]:
    """The adapter transport and one client per replica."""
    from loradeploy.clients.files import LocalFolderTransport

    if where.transport == "local":
        chosen: Any = LocalFolderTransport(settings.require_adapters_root(), settings.staging_dir)
        replica_urls = list(where.urls or (settings.stack.vllm_urls if settings.stack else []))
        replica_urls = replica_urls or [settings.require_vllm_url()]
    elif where.transport == "kubectl":
        from loradeploy.clients.files import KubectlTransport
        from loradeploy.clients.kube import KubectlApi

        api = KubectlApi(kubectl=where.kubectl)
        chosen = KubectlTransport(api, where.namespace, where.selector, where.container, root=where.pod_root)
        replica_urls = list(where.urls or chosen.replica_urls())
        if not replica_urls:
            raise UsageError(
                f"no Ready pod matches {where.selector!r} in namespace {where.namespace!r}",
                hint="check --selector and --namespace, and that the vLLM pods are Ready",
            )
    else:
        raise UsageError(f"--transport {where.transport!r} is not 'local' or 'kubectl'")
    with ExitStack() as stack:
        yield chosen, [stack.enter_context(_vllm(settings, url)) for url in replica_urls]


PodsOpt = Annotated[
    str | None,
    typer.Option(
        "--pods",
        help="NAMESPACE/SELECTOR: address every Ready pod directly (found with kubectl), "
        "not the --vllm-url Service.",
    ),
]


def _pod_urls(pods: str | None, container: str, kubectl: str) -> list[str]:
    """One URL per Ready pod for ``--pods NAMESPACE/SELECTOR``, found as load-adapter's
    kubectl transport finds them; empty without ``--pods``."""
    if not pods:
        return []
    namespace, sep, selector = pods.partition("/")
    if not sep or not namespace or not selector:
        raise UsageError(
            f"--pods {pods!r} is not NAMESPACE/SELECTOR", hint="pass e.g. --pods ml-models/app=vllm"
        )
    from loradeploy.clients.files import KubectlTransport
    from loradeploy.clients.kube import KubectlApi

    urls: list[str] = KubectlTransport(
        KubectlApi(kubectl=kubectl), namespace, selector, container
    ).replica_urls()
    return urls


def _on_every_pod(urls: list[str], run: Callable[[str], StepResult]) -> StepResult:
    """``run`` once per pod URL, as one result: each check named after its pod."""
    by_pod = {url: run(url) for url in urls}
    merged = by_pod[urls[0]].model_copy(deep=True)
    merged.checks = [
        c.model_copy(update={"name": f"{c.name}@{url}"}) for url, r in by_pod.items() for c in r.checks
    ]
    merged.details = {"pods": urls, "per_pod": {url: r.details for url, r in by_pod.items()}}
    merged.timings_s = {f"{k}@{url}": v for url, r in by_pod.items() for k, v in r.timings_s.items()}
    return merged


def _manifest(settings: Settings, model: str, live_slot: str, candidate_slot: str) -> Any:
    """Which slot restores which alias in lora-modules.json (as init-load-adapters writes it)."""
    from loradeploy.domain.aliases import LIVE, STAGED
    from loradeploy.steps.manifest import ManifestSpec

    return ManifestSpec(
        model=model,
        slot_for_alias={LIVE: names.slot_name(live_slot), STAGED: names.slot_name(candidate_slot)},
        base_model_name=settings.stack.served_model if settings.stack else None,
    )


def _other_replica_urls(settings: Settings, where: _Where, files: Any, given: list[Any]) -> list[str]:
    """Replicas of the deployment a command was not pointed at (``--vllm-url`` given for
    some only): the local stack's servers, or every Ready pod. Cleanup keeps what they serve."""
    if where.transport == "kubectl":
        known = list(files.replica_urls())
    else:
        known = list(settings.stack.vllm_urls) if settings.stack else []
    seen = {str(client.base_url).rstrip("/") for client in given}
    return [url for url in known if url.rstrip("/") not in seen]


ProbesFile = Annotated[
    Path | None,
    typer.Option(
        "--probes-file",
        help='Smoke-test probes to record with the version, JSON lines: {"prompt", "system"?, "reference"?}.',
    ),
]


@app.command()
def version() -> None:
    """Print the loradeploy version."""
    out.print(__version__)


@app.command()
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


@app.command("sign")
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


@app.command("load-adapter")
def load_adapter(
    model_name: ModelName,
    source: SourceOpt,
    slot_name: Annotated[str, typer.Option("--slot-name", help="Served adapter name (the slot).")],
    vllm_url: VllmUrls = None,
    output_dir: OutputDir = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    adapters_root: AdaptersRoot = None,
    swap_strategy: SwapOpt = SwapStrategy.AUTO,
    max_lora_rank: MaxRank = None,
    base_model_alias: BaseAlias = None,
    transport: TransportOpt = "local",
    namespace: Namespace = "ml-models",
    selector: Selector = "app=vllm",
    container: Container = "vllm",
    pod_adapters_root: PodRoot = "/mnt/adapters",
    kubectl: Kubectl = "kubectl",
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    trusted_key: TrustedKeys = None,
    trusted_ca: TrustedCas = None,
    require_signature: RequireSignature = None,
) -> None:
    """Step 1: download a version from MLflow and load it into every replica, no restart."""

    def action() -> StepResult:
        from loradeploy.steps.load_adapter import LoadRequest
        from loradeploy.steps.load_adapter import load_adapter as step

        model, parsed, slot = (
            names.model_name(model_name),
            names.parse_source(source),
            names.slot_name(slot_name),
        )
        settings = _settings(
            tracking_uri=tracking_uri,
            vllm_url=vllm_url[0] if vllm_url else None,
            adapters_root=adapters_root,
            api_key=api_key,
            ca_bundle=ca_bundle,
            max_lora_rank=max_lora_rank,
            base_model_alias=base_model_alias,
            trusted_key=trusted_key,
            trusted_ca=trusted_ca,
            require_signature=require_signature,
        )
        request = LoadRequest(
            model=model,
            source=parsed,
            slot=slot,
            strategy=swap_strategy,
            max_lora_rank=settings.max_lora_rank,
            max_adapter_bytes=settings.max_adapter_bytes,
            base_model_aliases=settings.base_model_aliases,
            trust=_trust(settings),
        )
        with (
            _targets(
                settings,
                _Where(vllm_url, transport, namespace, selector, container, pod_adapters_root, kubectl),
            ) as (files, replicas),
            err.status(f"loading {model_name} {source} into {slot_name} on {len(replicas)} replica(s)"),
        ):
            return step(
                request,
                registry=_registry(settings),
                replicas=replicas,
                transport=files,
                actor=_actor(settings, "load-adapter"),
                manifest=_manifest(settings, model, live_slot, candidate_slot),
            )

    _run("load-adapter", output_dir, action)


@app.command("smoke-test")
def smoke_test(
    adapter_name: Annotated[str, typer.Option("--adapter-name", help="Served adapter to test.")],
    vllm_url: VllmUrl = None,
    num_requests: Annotated[int, typer.Option("--num-requests", min=1, max=1000)] = 3,
    max_latency: Annotated[
        float, typer.Option("--max-latency", min=0.0, help="Seconds allowed per request.")
    ] = 30.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=4096)] = 32,
    prompts_file: Annotated[
        Path | None,
        typer.Option(
            "--prompts-file",
            help='JSON lines: {"prompt", "system"?, "reference"?} (default: the probes recorded '
            "with the served version, else built-in).",
        ),
    ] = None,
    min_reference_f1: Annotated[
        float,
        typer.Option("--min-reference-f1", min=0.01, max=1.0, help="Mean token F1 against the references."),
    ] = 0.5,
    tracking_uri: TrackingUri = None,
    compare_base: Annotated[
        bool,
        typer.Option("--compare-base/--no-compare-base", help="Require answers to differ from the base."),
    ] = True,
    min_different: Annotated[
        float, typer.Option("--min-different", min=0.0, max=1.0, help="Share that must differ.")
    ] = 0.5,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="Expected model of the served folder.")
    ] = None,
    expected_version: Annotated[
        str | None, typer.Option("--expected-version", help="Version the slot must serve.")
    ] = None,
    output_dir: OutputDir = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    pods: PodsOpt = None,
    container: Container = "vllm",
    kubectl: Kubectl = "kubectl",
) -> None:
    """Step 2: send test prompts to the adapter; check answers, latency, that it is active."""

    def action() -> StepResult:
        from loradeploy.domain.smoke import read_probes
        from loradeploy.steps.smoke_test import smoke_test as step

        names.slot_name(adapter_name)
        if model_name is not None:
            names.model_name(model_name)
        if expected_version is not None:
            names.parse_source(f"version:{expected_version}")
        probes = read_probes(prompts_file) if prompts_file else None
        settings = _settings(
            vllm_url=vllm_url, api_key=api_key, ca_bundle=ca_bundle, tracking_uri=tracking_uri
        )
        store = _registry(settings) if settings.tracking_uri and probes is None else None

        def run(url: str | None) -> StepResult:
            with _vllm(settings, url) as vllm, err.status(f"smoke-testing {adapter_name} at {url or 'vLLM'}"):
                return step(
                    vllm,
                    adapter=adapter_name,
                    num_requests=num_requests,
                    max_latency_s=max_latency,
                    probes=probes,
                    store=store,
                    max_tokens=max_tokens,
                    compare_base=compare_base,
                    min_different=min_different,
                    min_reference_f1=min_reference_f1,
                    expected_model=model_name,
                    expected_version=expected_version,
                )

        urls = _pod_urls(pods, container, kubectl)
        return _on_every_pod(urls, run) if urls else run(None)

    _run("smoke-test", output_dir, action)


@app.command("set-staged-alias")
def set_staged_alias(
    model_name: ModelName,
    source: SourceOpt,
    slot_name: Annotated[
        str, typer.Option("--slot-name", help="Candidate slot that must serve the version.")
    ] = DEFAULT_CANDIDATE_SLOT,
    vllm_url: VllmUrls = None,
    output_dir: OutputDir = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    adapters_root: Annotated[
        Path | None,
        typer.Option("--adapters-root", help="Rewrite lora-modules.json in this folder (local transport)."),
    ] = None,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    pods: PodsOpt = None,
    container: Container = "vllm",
    kubectl: Kubectl = "kubectl",
) -> None:
    """Step 3: set 'staged' on the deployed version (refused if the slot serves another)."""

    def action() -> StepResult:
        from loradeploy.steps.set_staged_alias import set_staged_alias as step

        parsed = names.parse_source(source)
        names.model_name(model_name)
        names.slot_name(slot_name)
        settings = _settings(
            tracking_uri=tracking_uri,
            vllm_url=vllm_url[0] if vllm_url else None,
            adapters_root=adapters_root,
            api_key=api_key,
            ca_bundle=ca_bundle,
        )
        urls = _pod_urls(pods, container, kubectl) or _replica_urls(settings, vllm_url)
        from loradeploy.clients.files import LocalFolderTransport

        files = (  # the manifest is rewritten where the adapters folder is known (local)
            LocalFolderTransport(settings.adapters_root, settings.staging_dir)
            if settings.adapters_root
            else None
        )
        with ExitStack() as stack:
            replicas = [stack.enter_context(_vllm(settings, url)) for url in urls]
            return step(
                _registry(settings),
                replicas,
                model=model_name,
                source=parsed,
                slot=slot_name,
                actor=_actor(settings, "set-staged-alias"),
                manifest=_manifest(settings, model_name, live_slot, slot_name),
                transport=files,
            )

    _run("set-staged-alias", output_dir, action)


@app.command("promote-adapter")
def promote_adapter(
    model_name: ModelName,
    source_alias: Annotated[
        str, typer.Option("--source-alias", help="Alias to promote; 'previous' rolls back.")
    ] = "staged",
    vllm_url: VllmUrls = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    output_dir: OutputDir = None,
    adapters_root: AdaptersRoot = None,
    swap_strategy: SwapOpt = SwapStrategy.AUTO,
    max_lora_rank: MaxRank = None,
    base_model_alias: BaseAlias = None,
    reason: Annotated[str, typer.Option("--reason", help="Why: kept in the audit history.")] = "",
    transport: TransportOpt = "local",
    namespace: Namespace = "ml-models",
    selector: Selector = "app=vllm",
    container: Container = "vllm",
    pod_adapters_root: PodRoot = "/mnt/adapters",
    kubectl: Kubectl = "kubectl",
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    trusted_key: TrustedKeys = None,
    trusted_ca: TrustedCas = None,
    require_signature: RequireSignature = None,
) -> None:
    """Promote a version to the live slot on every replica and move live/previous."""

    def action() -> StepResult:
        from loradeploy.steps.promote import PromoteRequest
        from loradeploy.steps.promote import promote_adapter as step

        request = PromoteRequest(
            model=names.model_name(model_name),
            source_alias=names.alias_name(source_alias),
            live_slot=names.slot_name(live_slot),
            strategy=swap_strategy,
            reason=reason,
        )
        settings = _settings(
            tracking_uri=tracking_uri,
            vllm_url=vllm_url[0] if vllm_url else None,
            adapters_root=adapters_root,
            api_key=api_key,
            ca_bundle=ca_bundle,
            max_lora_rank=max_lora_rank,
            base_model_alias=base_model_alias,
            trusted_key=trusted_key,
            trusted_ca=trusted_ca,
            require_signature=require_signature,
        )
        request = replace(
            request,
            max_lora_rank=settings.max_lora_rank,
            max_adapter_bytes=settings.max_adapter_bytes,
            base_model_aliases=settings.base_model_aliases,
            trust=_trust(settings),
        )
        where = _Where(vllm_url, transport, namespace, selector, container, pod_adapters_root, kubectl)
        with (
            _targets(settings, where) as (files, replicas),
            err.status(f"promoting {model_name}@{source_alias} to {live_slot}"),
            ExitStack() as more,
        ):
            others = [
                more.enter_context(_vllm(settings, url))
                for url in _other_replica_urls(settings, where, files, replicas)
            ]
            return step(
                request,
                registry=_registry(settings),
                replicas=replicas,
                transport=files,
                actor=_actor(settings, "promote-adapter"),
                manifest=_manifest(settings, request.model, live_slot, candidate_slot),
                others=others,
            )

    _run("promote-adapter", output_dir, action)


def _init_load(
    settings: Settings,
    *,
    model: str,
    live_slot: str,
    candidate_slot: str,
    base_model_name: str | None,
    replica_urls: list[str],
) -> StepResult:
    from loradeploy.clients.files import LocalFolderTransport
    from loradeploy.domain.aliases import LIVE, STAGED
    from loradeploy.steps.init_load import init_load_adapters

    with ExitStack() as stack:
        replicas = [stack.enter_context(_vllm(settings, url)) for url in replica_urls]
        return init_load_adapters(
            model=model,
            slot_for_alias={LIVE: live_slot, STAGED: candidate_slot},
            registry=_registry(settings),
            transport=LocalFolderTransport(settings.require_adapters_root(), settings.staging_dir),
            base_model_name=base_model_name,
            base_model_aliases=settings.base_model_aliases,
            max_lora_rank=settings.max_lora_rank,
            replicas=replicas,
            trust=_trust(settings),
        )


@app.command("init-load-adapters")
def init_load_adapters(
    model_name: ModelName,
    adapters_root: AdaptersRoot = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    base_model_name: Annotated[
        str | None,
        typer.Option("--base-model-name", help="Served base model, checked against each adapter."),
    ] = None,
    vllm_url: Annotated[
        list[str] | None,
        typer.Option("--vllm-url", help="Also load into these running servers (not in an init container)."),
    ] = None,
    max_lora_rank: MaxRank = None,
    base_model_alias: BaseAlias = None,
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    trusted_key: TrustedKeys = None,
    trusted_ca: TrustedCas = None,
    require_signature: RequireSignature = None,
) -> None:
    """Cold-start restore: live -> live slot, staged -> candidate slot, plus
    lora-modules.json for vLLM's --lora-modules; skips aliases that do not exist."""

    def action() -> StepResult:
        names.model_name(model_name)
        settings = _settings(
            tracking_uri=tracking_uri,
            adapters_root=adapters_root,
            api_key=api_key,
            ca_bundle=ca_bundle,
            max_lora_rank=max_lora_rank,
            base_model_alias=base_model_alias,
            trusted_key=trusted_key,
            trusted_ca=trusted_ca,
            require_signature=require_signature,
        )
        with err.status(f"restoring {model_name} live and staged"):
            return _init_load(
                settings,
                model=model_name,
                live_slot=names.slot_name(live_slot),
                candidate_slot=names.slot_name(candidate_slot),
                base_model_name=base_model_name,
                replica_urls=list(vllm_url or []),
            )

    _run("init-load-adapters", output_dir, action)


@app.command("restart-deployment")
def restart_deployment(
    deployment: Annotated[str, typer.Option("--deployment", help="vLLM Deployment name.")] = "vllm",
    namespace: Namespace = "ml-models",
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for the rollout.")
    ] = 900,
    kubectl: Kubectl = "kubectl",
    local_stack: Annotated[
        bool,
        typer.Option("--local-stack", help="Restart the local stack's vLLM instead (cold start)."),
    ] = False,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="Model to restore (--local-stack).")
    ] = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    output_dir: OutputDir = None,
) -> None:
    """Legacy fallback: rolling restart of the vLLM Deployment, waiting for the rollout.
    With --local-stack: stop vLLM, restore live/staged (init-load-adapters), start it."""

    def action() -> StepResult:
        if local_stack:
            return _restart_local(model_name, live_slot, candidate_slot)
        from loradeploy.clients.kube import KubectlApi
        from loradeploy.steps.restart import restart_deployment as step

        names.slot_name(deployment)
        names.slot_name(namespace)
        with err.status(f"rolling restart of deployment {namespace}/{deployment}"):
            return step(
                KubectlApi(kubectl=kubectl), namespace=namespace, deployment=deployment, timeout_s=timeout
            )

    _run("restart-deployment", output_dir, action)


def _restart_local(model_name: str | None, live_slot: str, candidate_slot: str) -> StepResult:
    if model_name is None:
        raise UsageError("--local-stack needs --model-name", hint="pass --model-name=aws-rag-qa")
    names.model_name(model_name)
    settings = _settings()
    if settings.stack is None:
        raise UsageError("no local stack found", hint="run 'loradeploy stack up' first")
    from loradeploy.results import StepResult, Timer

    stack = _local_stack(settings.stack.home, assets=settings.stack.assets)
    result = StepResult(step="restart-deployment", model=model_name)
    timer = Timer(result.timings_s)
    with err.status("restarting the local vLLM") as status:
        with timer("stop"):
            for name in stack.vllm_names():
                stack.stop(name)
        with timer("restore"):
            restored = _init_load(
                settings,
                model=model_name,
                live_slot=names.slot_name(live_slot),
                candidate_slot=names.slot_name(candidate_slot),
                base_model_name=settings.stack.served_model,
                replica_urls=[],
            )
        with timer("start"):
            for name in stack.vllm_names():
                stack.start_vllm(
                    name, on_tick=lambda n, s: status.update(f"waiting for {n} to be healthy ({s:.0f}s)")
                )
    result.checks = restored.checks
    result.details = {
        "restored": restored.details.get("restored"),
        "skipped": restored.details.get("skipped"),
    }
    return result


def _replica_urls(settings: Settings, urls: list[str] | None) -> list[str]:
    found = list(urls or (settings.stack.vllm_urls if settings.stack else []))
    return found or [settings.require_vllm_url()]


@app.command()
def status(
    model_name: ModelName,
    vllm_url: VllmUrls = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    pods: PodsOpt = None,
    container: Container = "vllm",
    kubectl: Kubectl = "kubectl",
) -> None:
    """Aliases next to what every replica serves; drift is marked and exits 1."""

    def action() -> StepResult:
        from loradeploy.steps.status import status as step

        names.model_name(model_name)
        slots = {"live": names.slot_name(live_slot), "staged": names.slot_name(candidate_slot)}
        settings = _settings(tracking_uri=tracking_uri, api_key=api_key, ca_bundle=ca_bundle)
        with ExitStack() as stack:
            urls = _pod_urls(pods, container, kubectl) or _replica_urls(settings, vllm_url)
            replicas = [stack.enter_context(_vllm(settings, url)) for url in urls]
            return step(_registry(settings), replicas, model=model_name, slot_for_alias=slots)

    _run("status", output_dir, action, _render_status)


def _render_status(result: StepResult) -> None:
    aliases = result.details.get("aliases", {})
    table = Table(title=f"{result.model}: aliases")
    table.add_column("alias")
    table.add_column("version")
    for alias, version in sorted(aliases.items()):
        table.add_row(alias, version)
    out.print(table)
    served = Table(title="what the replicas serve")
    served.add_column("alias -> slot @ replica")
    served.add_column("state", overflow="fold")
    for check in result.checks:
        mark = "[green]ok[/]" if check.passed else "[red]DRIFT[/]"
        served.add_row(check.name, f"{mark} {check.detail}")
    out.print(served)


@app.command()
def history(
    model_name: ModelName,
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Every alias move of a model: when, who, which step, from which version to which, why."""

    def action() -> StepResult:
        from loradeploy.steps.history import history as step

        names.model_name(model_name)
        return step(_registry(_settings(tracking_uri=tracking_uri)), model=model_name)

    def render(result: StepResult) -> None:
        table = Table(title=f"{result.model}: alias history")
        for column in ("when (UTC)", "alias", "from", "to", "signed by (to)", "step", "who", "reason"):
            table.add_column(column, overflow="fold")
        for row in result.details["moves"]:
            table.add_row(
                row["when"],
                row["alias"],
                row["from_version"] or "-",
                row["to_version"] or "(removed)",
                row.get("to_signer") or "-",
                row["step"],
                row["who"],
                row["reason"],
            )
        out.print(table)

    _run("history", output_dir, action, render)


@app.command()
def unlock(
    model_name: ModelName,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="The crashed run, as the lock error names it.")
    ] = None,
    abandon_plan: Annotated[
        bool,
        typer.Option("--abandon-plan", help="Drop a pending alias plan that cannot be finished."),
    ] = False,
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Remove the lock a crashed run left (only the named run's), or drop a stuck alias plan."""

    def action() -> StepResult:
        from loradeploy.steps.unlock import unlock as step

        names.model_name(model_name)
        settings = _settings(tracking_uri=tracking_uri)
        return step(
            _registry(settings),
            model=model_name,
            run_id=run_id,
            drop_plan=abandon_plan,
            actor=_actor(settings, "unlock"),
        )

    _run("unlock", output_dir, action)


class _StopOnSignal:
    """``wait(seconds)`` for the watch loop: True once SIGTERM (or Ctrl-C) arrived.

    The handler only sets a flag; the short sleeps let the loop notice it within half a
    second, and the round in progress always finishes first.
    """

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self, *_: object) -> None:
        self.stopped = True

    def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.stopped and time.monotonic() < deadline:
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))
        return self.stopped


@app.command()
def reconcile(
    model_name: ModelName,
    vllm_url: VllmUrls = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    watch: Annotated[bool, typer.Option("--watch", help="Repeat until SIGTERM.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=1.0, help="Seconds between rounds (--watch).")
    ] = 30.0,
    max_backoff: Annotated[
        float, typer.Option("--max-backoff", min=1.0, help="Longest wait after failed rounds (--watch).")
    ] = 300.0,
    output_dir: OutputDir = None,
    adapters_root: AdaptersRoot = None,
    swap_strategy: SwapOpt = SwapStrategy.AUTO,
    max_lora_rank: MaxRank = None,
    base_model_alias: BaseAlias = None,
    transport: TransportOpt = "local",
    namespace: Namespace = "ml-models",
    selector: Selector = "app=vllm",
    container: Container = "vllm",
    pod_adapters_root: PodRoot = "/mnt/adapters",
    kubectl: Kubectl = "kubectl",
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    write_manifest: Annotated[
        bool, typer.Option("--write-manifest", help="Keep lora-modules.json equal to what is served.")
    ] = False,
    base_model_name: Annotated[
        str | None, typer.Option("--base-model-name", help="Served base model, for lora-modules.json.")
    ] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option("--ready-file", help="Exists while every slot serves what its alias names (--watch)."),
    ] = None,
    trusted_key: TrustedKeys = None,
    trusted_ca: TrustedCas = None,
    require_signature: RequireSignature = None,
) -> None:
    """Serve what the aliases name: live -> live slot, staged -> candidate slot, on every
    replica. Repairs missing or wrong slots; never changes aliases, never unloads."""

    def action() -> StepResult:
        from loradeploy.domain.aliases import LIVE, STAGED
        from loradeploy.steps.reconcile import ReconcileRequest
        from loradeploy.steps.reconcile import reconcile as step
        from loradeploy.steps.reconcile import watch as watch_loop

        slots = {LIVE: names.slot_name(live_slot), STAGED: names.slot_name(candidate_slot)}
        if slots[LIVE] == slots[STAGED]:
            raise UsageError(f"--live-slot and --candidate-slot are both {live_slot!r}")
        settings = _settings(
            tracking_uri=tracking_uri,
            vllm_url=vllm_url[0] if vllm_url else None,
            adapters_root=adapters_root,
            api_key=api_key,
            ca_bundle=ca_bundle,
            max_lora_rank=max_lora_rank,
            base_model_alias=base_model_alias,
            trusted_key=trusted_key,
            trusted_ca=trusted_ca,
            require_signature=require_signature,
        )
        request = ReconcileRequest(
            model=names.model_name(model_name),
            slot_for_alias=slots,
            strategy=swap_strategy,
            max_lora_rank=settings.max_lora_rank,
            base_model_aliases=settings.base_model_aliases,
            max_adapter_bytes=settings.max_adapter_bytes,
            write_manifest=write_manifest,
            base_model_name=base_model_name,
            trust=_trust(settings),
        )
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)  # not ready until a round has said so

        def once() -> StepResult:  # pods and clients are found again every round
            with _targets(
                settings,
                _Where(vllm_url, transport, namespace, selector, container, pod_adapters_root, kubectl),
            ) as (files, replicas):
                return step(
                    request,
                    registry=_registry(settings),
                    replicas=replicas,
                    transport=files,
                    actor=_actor(settings, "reconcile"),
                    manifest=_manifest(settings, request.model, live_slot, candidate_slot),
                )

        if not watch:
            return once()
        stop = _StopOnSignal()
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            rounds = watch_loop(
                once, interval_s=interval, max_backoff_s=max_backoff, wait=stop.wait, report=report
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
        from loradeploy.results import StepResult

        return StepResult(
            step="reconcile", model=model_name, details={"rounds": rounds, "stopped": "SIGTERM"}
        )

    def report(result: StepResult | None, error: LoraDeployError | None, delay: float) -> None:
        if ready_file is not None:
            from loradeploy.steps.reconcile import ready

            answer = ready(result, error)
            if answer is True:
                ready_file.write_text(f"{time.time():.0f}\n", encoding="utf-8")
            elif answer is False:
                ready_file.unlink(missing_ok=True)
        if output_dir and result is not None:
            from loradeploy.results import write_outputs

            write_outputs(output_dir, result)
        if error is not None:
            _print_error(f"{error.one_line()} (next round in {delay:.0f}s)")
        elif result is not None:
            done = result.details.get("repaired") or []
            state = "in sync" if result.passed else "still drifting"
            err.print(f"reconcile {model_name}: {len(done)} repaired, {state}; next round in {delay:.0f}s")

    _run("reconcile", output_dir, action)


# -- gates and training ------------------------------------------------------------------

EvalData = Annotated[
    Path,
    typer.Option("--eval-data", help='Evaluation questions, JSON lines {"context","question","answer"}.'),
]
DEFAULT_EVAL_DATA = Path("data/aws-rag-qa/eval.jsonl")
GateSeed = Annotated[int, typer.Option("--seed", help="Seed for sampling, bootstrap, order and load.")]


def _gate_report(
    output_dir: Path | None, result: StepResult, title: str, plot: Callable[[StepResult], str]
) -> None:
    from loradeploy.steps.gates import write_report

    if output_dir is not None:
        notes = [
            "Greedy decoding with a fixed seed; CPU floating-point order can still change a token "
            "now and then, and thread scheduling moves latencies (see README, 'What stays random').",
        ]
        for check in result.details.get("inconclusive_checks", []):
            notes.append(f"Inconclusive, not counted: {check['name']}: {check['detail']}")
        write_report(output_dir, result, title=title, notes=notes, plot_svg=plot(result))


@app.command("quality-gate")
def quality_gate(
    model_name: ModelName,
    version: Annotated[str | None, typer.Option("--version", help="Version to judge.")] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Training run whose version to judge.")
    ] = None,
    min_f1: Annotated[float | None, typer.Option("--min-f1", help="Floor for eval_token_f1.")] = 0.5,
    max_eval_loss: Annotated[
        float | None, typer.Option("--max-eval-loss", help="Ceiling for eval_loss.")
    ] = 1.0,
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
    ca_bundle: CaBundle = None,
) -> None:
    """Training gate: read the version's training-run metrics; set 'candidate' only if all pass."""

    def action() -> StepResult:
        from loradeploy.steps.quality_gate import quality_gate as step

        names.model_name(model_name)
        if (version is None) == (run_id is None):
            raise UsageError("pass exactly one of --version and --run-id")
        if version is not None:
            names.parse_source(f"version:{version}")
        settings = _settings(tracking_uri=tracking_uri, ca_bundle=ca_bundle)
        return step(
            _registry(settings),
            model=model_name,
            version=version,
            run_id=run_id,
            min_f1=min_f1,
            max_eval_loss=max_eval_loss,
            actor=_actor(settings, "quality-gate"),
        )

    _run("quality-gate", output_dir, action)


@app.command("compare-decision")
def compare_decision(
    model_name: ModelName,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    vllm_url: VllmUrl = None,
    eval_data: EvalData = DEFAULT_EVAL_DATA,
    output_dir: OutputDir = None,
    min_score: Annotated[
        float, typer.Option("--min-score", help="Floor for the candidate's mean token F1.")
    ] = 0.5,
    margin: Annotated[
        float,
        typer.Option("--margin", min=0.0, help="Non-inferiority margin in mean F1 (CI low >= -margin)."),
    ] = 0.05,
    confidence: Annotated[float, typer.Option("--confidence", min=0.5, max=0.999)] = 0.95,
    bootstrap_samples: Annotated[int, typer.Option("--bootstrap-samples", min=100, max=100000)] = 2000,
    judge_url: Annotated[
        str | None,
        typer.Option("--judge-url", help="OpenAI-compatible judge endpoint (default: --vllm-url)."),
    ] = None,
    judge_model: Annotated[
        str | None,
        typer.Option("--judge-model", help="Judge model (default: the judge server's base model)."),
    ] = None,
    judge_api_key: Annotated[
        str | None,
        typer.Option("--judge-api-key", envvar="LORADEPLOY_JUDGE_API_KEY", show_default=False),
    ] = None,
    min_win_rate: Annotated[
        float, typer.Option("--min-win-rate", min=0.0, max=1.0, help="Judge: wins + ties/2 over questions.")
    ] = 0.4,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=1024)] = 48,
    seed: GateSeed = 0,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    pods: PodsOpt = None,
    container: Container = "vllm",
    kubectl: Kubectl = "kubectl",
) -> None:
    """Gate 1: candidate slot vs live slot on the eval set (F1 floor, non-inferiority, judge);
    sets eval-passed or eval-failed on the version the candidate slot serves."""

    def action() -> StepResult:
        from loradeploy.clients.vllm import VllmClient
        from loradeploy.domain.gates import EvalThresholds
        from loradeploy.domain.scoring import read_qa
        from loradeploy.steps.compare_decision import CompareRequest, eval_plot
        from loradeploy.steps.compare_decision import compare_decision as step

        request = CompareRequest(
            model=names.model_name(model_name),
            candidate_slot=names.slot_name(candidate_slot),
            live_slot=names.slot_name(live_slot),
            examples=read_qa(eval_data),
            thresholds=EvalThresholds(
                min_score=min_score,
                margin=margin,
                confidence=confidence,
                bootstrap_samples=bootstrap_samples,
                min_win_rate=min_win_rate,
                seed=seed,
            ),
            judge_model=judge_model,
            max_tokens=max_tokens,
        )
        measured = _pod_urls(pods, container, kubectl)[:1]  # one named pod, never a random one
        settings = _settings(
            tracking_uri=tracking_uri,
            vllm_url=measured[0] if measured else vllm_url,
            api_key=api_key,
            ca_bundle=ca_bundle,
        )
        key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
        with (
            _vllm(settings) as vllm,
            VllmClient(
                judge_url or settings.require_vllm_url(),
                api_key=judge_api_key if judge_url else (judge_api_key or key),
                verify=settings.verify,
            ) as judge,
            err.status(f"Gate 1: {len(request.examples)} questions through {candidate_slot} and {live_slot}"),
        ):
            result = step(
                request,
                registry=_registry(settings),
                vllm=vllm,
                judge=judge,
                actor=_actor(settings, "compare-decision"),
            )
        result.details["measured"] = [settings.vllm_url]
        _gate_report(
            output_dir, result, f"Gate 1 (evaluation) for {model_name} version {result.version}", eval_plot
        )
        return result

    _run("compare-decision", output_dir, action)


@app.command("perf-decision")
def perf_decision(
    model_name: ModelName,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    vllm_url: VllmUrl = None,
    eval_data: Annotated[
        Path, typer.Option("--eval-data", help="Questions used as the load's prompts.")
    ] = DEFAULT_EVAL_DATA,
    output_dir: OutputDir = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64)] = 4,
    requests: Annotated[int, typer.Option("--requests", min=1, max=10000, help="Requests per slot.")] = 32,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=1024)] = 32,
    max_p50_ratio: Annotated[float, typer.Option("--max-p50-ratio", min=0.0)] = 1.5,
    max_p95_ratio: Annotated[float, typer.Option("--max-p95-ratio", min=0.0)] = 1.75,
    min_throughput_ratio: Annotated[float, typer.Option("--min-throughput-ratio", min=0.0)] = 0.7,
    max_error_rate: Annotated[float, typer.Option("--max-error-rate", min=0.0, max=1.0)] = 0.01,
    request_timeout: Annotated[
        float, typer.Option("--request-timeout", min=1.0, help="Seconds before a request counts as an error.")
    ] = 120.0,
    seed: GateSeed = 0,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    pods: PodsOpt = None,
    container: Container = "vllm",
    kubectl: Kubectl = "kubectl",
) -> None:
    """Gate 2: the same concurrent load at both slots, interleaved; latency ratios,
    throughput ratio, error rate; sets perf-passed or perf-failed."""

    def action() -> StepResult:
        import httpx

        from loradeploy.clients.vllm import VllmClient
        from loradeploy.domain.gates import PerfThresholds
        from loradeploy.domain.scoring import qa_messages, read_qa
        from loradeploy.steps.perf_decision import PerfRequest, perf_plot
        from loradeploy.steps.perf_decision import perf_decision as step

        request = PerfRequest(
            model=names.model_name(model_name),
            candidate_slot=names.slot_name(candidate_slot),
            live_slot=names.slot_name(live_slot),
            prompts=[qa_messages(example) for example in read_qa(eval_data)],
            thresholds=PerfThresholds(
                max_p50_ratio=max_p50_ratio,
                max_p95_ratio=max_p95_ratio,
                min_throughput_ratio=min_throughput_ratio,
                max_error_rate=max_error_rate,
            ),
            concurrency=concurrency,
            requests=requests,
            max_tokens=max_tokens,
            seed=seed,
        )
        measured = _pod_urls(pods, container, kubectl)[:1]  # one named pod, never a random one
        settings = _settings(
            tracking_uri=tracking_uri,
            vllm_url=measured[0] if measured else vllm_url,
            api_key=api_key,
            ca_bundle=ca_bundle,
        )
        with (
            VllmClient(
                settings.require_vllm_url(),
                api_key=settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None,
                verify=settings.verify,
                timeout=httpx.Timeout(request_timeout, connect=5.0),
            ) as vllm,
            err.status(f"Gate 2: {requests} requests per slot, {concurrency} at a time"),
        ):
            result = step(
                request, registry=_registry(settings), vllm=vllm, actor=_actor(settings, "perf-decision")
            )
        result.details["measured"] = [settings.vllm_url]
        _gate_report(
            output_dir, result, f"Gate 2 (performance) for {model_name} version {result.version}", perf_plot
        )
        return result

    _run("perf-decision", output_dir, action)


@app.command()
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
        with err.status(f"training {model_name} ({steps} steps, seed {seed}) and evaluating it"):
            return step(request, worker=worker, registry=_registry(settings), actor=_actor(settings, "train"))

    _run("train", output_dir, action)


@app.command("report")
def release_report(
    model_name: ModelName,
    output_dir: Annotated[
        Path, typer.Option("--output-dir", help="Write <model>-v<version>.html and result.json here.")
    ],
    version: Annotated[
        str | None, typer.Option("--version", help="Version to report on (default: the one 'live' names).")
    ] = None,
    results_dir: Annotated[
        list[Path] | None,
        typer.Option("--results-dir", help="Folder searched for the steps' result.json; repeatable."),
    ] = None,
    traffic: Annotated[
        Path | None,
        typer.Option(
            "--traffic", help='Client requests, JSON lines {"start","latency_s","ok"} (the demo\'s).'
        ),
    ] = None,
    tracking_uri: TrackingUri = None,
    ca_bundle: CaBundle = None,
) -> None:
    """One self-contained HTML page for a release: provenance, every step, both gates with
    their plots, and the alias moves; built from the registry and the steps' result.json."""

    def action() -> StepResult:
        from loradeploy.steps.report import release_report as step

        names.model_name(model_name)
        if version is not None:
            names.parse_source(f"version:{version}")
        settings = _settings(tracking_uri=tracking_uri, ca_bundle=ca_bundle)
        with err.status(f"building the release report of {model_name}"):
            return step(
                _registry(settings),
                model=model_name,
                version=version,
                results_dirs=results_dir or [],
                output_dir=output_dir,
                traffic=traffic,
            )

    def render(result: StepResult) -> None:
        out.print(f"release report: {result.details['report']} ({result.details['bytes']} bytes)")

    _run("report", output_dir, action, render)


# -- stack ---------------------------------------------------------------------------------


def _local_stack(
    home: Path | None, replicas: int = 1, assets: Path | None = None, signing: bool = False
) -> Any:
    from loradeploy.settings import STACK_FILE, read_stack
    from loradeploy.stack.local import LocalStack, StackConfig

    root = (home or Path(os.environ.get("LORADEPLOY_HOME", ".loradeploy"))).resolve()
    if assets is None and (root / STACK_FILE).is_file():
        assets = read_stack(root / STACK_FILE).assets  # keep what an earlier 'up' used
    found = assets or Path(os.environ.get("LORADEPLOY_ASSETS", str(root)))
    return LocalStack(StackConfig(home=root, assets=found.resolve(), replicas=replicas, signing=signing))


StackHome = Annotated[
    Path | None,
    typer.Option("--home", help="Stack folder (env LORADEPLOY_HOME, default .loradeploy)."),
]


@stack_app.command("up")
def stack_up(
    home: StackHome = None,
    replicas: Annotated[int, typer.Option("--replicas", min=1, max=4)] = 1,
) -> None:
    """Start MLflow and vLLM (idempotent) and write the connection details, with a demo
    signing key pair (keys/ in the stack folder) that the stack trusts and requires."""
    stack = _local_stack(home, replicas, signing=True)
    try:
        with err.status("starting the local stack") as status:
            info = stack.up(
                on_tick=lambda name, s: status.update(f"waiting for {name} to be healthy ({s:.0f}s)")
            )
    except LoraDeployError as exc:
        _print_error(exc.one_line())
        raise typer.Exit(int(exc.exit_code)) from None
    _render_stack(stack)
    out.print(f"tracking URI {info.tracking_uri}  vLLM {info.vllm_url}  adapters {info.adapters_root}")
    if info.sign_key is not None:
        out.print(
            f"signing key {info.sign_key} (trusted and required: {', '.join(map(str, info.trusted_keys))})"
        )


@stack_app.command("down")
def stack_down(home: StackHome = None) -> None:
    """Stop the servers (whole process groups). Data and logs are kept."""
    stopped = _local_stack(home).down()
    out.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command("status")
def stack_status(home: StackHome = None) -> None:
    """Show what runs where."""
    stack = _local_stack(home)
    _render_stack(stack)
    if not all(row.healthy for row in stack.status()):
        raise typer.Exit(int(ExitCode.TRANSIENT))


def _render_stack(stack: Any) -> None:
    table = Table(title=f"local stack in {stack.home}")
    for column in ("service", "url", "pid", "state", "log"):
        table.add_column(column)
    for row in stack.status():
        state = "healthy" if row.healthy else ("starting/unhealthy" if row.running else "stopped")
        table.add_row(row.name, row.url or "-", str(row.pid or "-"), state, str(row.log or "-"))
    out.print(table)


def main() -> None:
    """Console-script entry point. ``kill -USR1 <pid>`` prints every thread's stack to
    stderr, for a run that seems stuck."""
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)

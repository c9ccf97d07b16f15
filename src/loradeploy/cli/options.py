"""Flags shared by several commands, as ``Annotated`` types, and their defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loradeploy.domain.swap import SwapStrategy

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
ProbesFile = Annotated[
    Path | None,
    typer.Option(
        "--probes-file",
        help='Smoke-test probes to record with the version, JSON lines: {"prompt", "system"?, "reference"?}.',
    ),
]

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

PodsOpt = Annotated[
    str | None,
    typer.Option(
        "--pods",
        help="NAMESPACE/SELECTOR: address every Ready pod directly (found with kubectl), "
        "not the --vllm-url Service.",
    ),
]

EvalData = Annotated[
    Path,
    typer.Option("--eval-data", help='Evaluation questions, JSON lines {"context","question","answer"}.'),
]
DEFAULT_EVAL_DATA = Path("data/aws-rag-qa/eval.jsonl")
GateSeed = Annotated[int, typer.Option("--seed", help="Seed for sampling, bootstrap, order and load.")]

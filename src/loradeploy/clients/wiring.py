"""What a command builds from its ``Settings``, in one place: the vLLM and MLflow
clients, the adapter transport, the replicas it addresses and the adapter policy.

Replica discovery, the same for every command (first found wins):

- ``--transport=kubectl`` (or ``--pods NAMESPACE/SELECTOR``): the given ``--vllm-url``
  list, else every Ready pod matching the selector, each addressed directly (never
  the Service); ``--pods`` always uses the pods;
- ``--transport=local``: the given ``--vllm-url`` list, else every replica in the local
  stack file, else the one vLLM URL of the settings (``LORADEPLOY_VLLM_URL``).

Steps never import this module: they receive what it builds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loradeploy.coordination import Actor
from loradeploy.domain.policy import AdapterPolicy
from loradeploy.domain.residency import Limits
from loradeploy.domain.routes import proxy_callbacks
from loradeploy.errors import UsageError
from loradeploy.settings import Settings

if TYPE_CHECKING:  # imported where used: kubectl and httpx are not needed by every command
    from loradeploy.clients.files import AdapterTransport, KubectlTransport, LocalFolderTransport
    from loradeploy.clients.prometheus import PrometheusFigures
    from loradeploy.clients.registry import MLflowHelper
    from loradeploy.clients.request_log import LogFigures
    from loradeploy.clients.router import Router
    from loradeploy.clients.vllm import VllmClient

LOCAL, KUBECTL = "local", "kubectl"


def adapter_policy(settings: Settings) -> AdapterPolicy:
    """Rank, size cap, base model aliases and trust policy: what every command that
    places adapters enforces. The trust policy's keys and certificates are read here."""
    from loradeploy.clients.signing import load_policy

    trust = load_policy(
        settings.trusted_keys, settings.trusted_cas, require_signature=settings.require_signature
    )
    return AdapterPolicy(
        max_lora_rank=settings.max_lora_rank,
        max_adapter_bytes=settings.max_adapter_bytes,
        base_model_aliases=settings.base_model_aliases,
        trust=trust if trust.configured else None,
    )


def residency_limits(settings: Settings) -> Limits | None:
    """The replicas' --max-loras and --max-cpu-loras for routed mode's capacity plan
    (flags, environment, the stack file); None when neither is known. vLLM does not
    report them (its /metrics shows max_loras only after requests ran, --max-cpu-loras
    nowhere), so they come from whoever started the servers."""
    if settings.max_loras is None and settings.max_cpu_loras is None:
        return None
    if settings.max_loras is None or settings.max_cpu_loras is None:
        missing = "--max-loras" if settings.max_loras is None else "--max-cpu-loras"
        raise UsageError(
            f"{missing} is not known while the other limit is: the capacity plan needs both",
            hint="pass both --max-loras and --max-cpu-loras as the vLLM servers were started with "
            "(or LORADEPLOY_MAX_LORAS and LORADEPLOY_MAX_CPU_LORAS)",
        )
    return Limits(max_loras=settings.max_loras, max_cpu_loras=settings.max_cpu_loras)


def actor(settings: Settings, step: str) -> Actor:
    """Who acts, for the lease and the audit history; a new run id per command."""
    return Actor(who=settings.actor, step=step, run_id=uuid.uuid4().hex, run_key=settings.run_key)


def registry_client(settings: Settings) -> MLflowHelper:
    from loradeploy.clients.registry import MLflowHelper

    return MLflowHelper(settings.require_tracking_uri(), ca_bundle=settings.ca_bundle)


@contextmanager
def vllm_client(
    settings: Settings, url: str | None = None, *, timeout_s: float | None = None
) -> Iterator[VllmClient]:
    """A client of ``url`` (default: the settings' vLLM URL), closed afterwards;
    ``timeout_s`` replaces the client's default read timeout (requests that queue)."""
    import httpx

    from loradeploy.clients.vllm import DEFAULT_TIMEOUT, VllmClient

    api_key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
    timeout = DEFAULT_TIMEOUT if timeout_s is None else httpx.Timeout(timeout_s, connect=5.0)
    client = VllmClient(
        url or settings.require_vllm_url(), api_key=api_key, verify=settings.verify, timeout=timeout
    )
    try:
        yield client
    finally:
        client.close()


@dataclass(frozen=True)
class Where:
    """Where adapters go: the replica URLs and the transport flags of one command."""

    urls: Sequence[str] | None = None
    transport: str = LOCAL
    namespace: str = "ml-models"
    selector: str = "app=vllm"
    container: str = "vllm"
    pod_root: str = "/mnt/adapters"
    kubectl: str = "kubectl"

    @classmethod
    def pods(cls, pods: str | None, urls: Sequence[str] | None, container: str, kubectl: str) -> Where:
        """``--pods NAMESPACE/SELECTOR``: every Ready pod; without it, ``urls`` as ``local``."""
        if not pods:
            return cls(urls)
        namespace, sep, selector = pods.partition("/")
        if not sep or not namespace or not selector:
            raise UsageError(
                f"--pods {pods!r} is not NAMESPACE/SELECTOR", hint="pass e.g. --pods ml-models/app=vllm"
            )
        return cls(None, KUBECTL, namespace, selector, container, kubectl=kubectl)


def _kubectl_transport(where: Where) -> KubectlTransport:
    from loradeploy.clients.files import KubectlTransport
    from loradeploy.clients.kube import KubectlApi

    api = KubectlApi(kubectl=where.kubectl)
    return KubectlTransport(api, where.namespace, where.selector, where.container, root=where.pod_root)


def _check_transport(where: Where) -> None:
    if where.transport not in (LOCAL, KUBECTL):
        raise UsageError(f"--transport {where.transport!r} is not 'local' or 'kubectl'")


def transport(settings: Settings, where: Where) -> AdapterTransport:
    """The adapter transport ``where`` names (kubectl: the Ready pods are listed here)."""
    _check_transport(where)
    if where.transport == KUBECTL:
        return _kubectl_transport(where)
    return local_transport(settings)


def local_transport(settings: Settings) -> LocalFolderTransport:
    """The adapters folder of the settings (``--adapters-root``), staging beside it."""
    from loradeploy.clients.files import LocalFolderTransport

    return LocalFolderTransport(settings.require_adapters_root(), settings.staging_dir)


def manifest_transport(settings: Settings) -> LocalFolderTransport | None:
    """The local adapters folder, when one is configured (for ``lora-modules.json``)."""
    from loradeploy.clients.files import LocalFolderTransport

    if settings.adapters_root is None:
        return None
    return LocalFolderTransport(settings.adapters_root, settings.staging_dir)


def replica_urls(settings: Settings, where: Where, files: AdapterTransport | None = None) -> list[str]:
    """One URL per replica, as the module docstring says; ``files`` is the kubectl
    transport already built for ``where`` (its pods are not listed twice)."""
    _check_transport(where)
    if where.urls:
        return list(where.urls)
    if where.transport == KUBECTL:
        from loradeploy.clients.files import KubectlTransport

        pods = files if isinstance(files, KubectlTransport) else _kubectl_transport(where)
        return pods.replica_urls()  # never empty: the transport refuses a selector without pods
    found = list(settings.stack.vllm_urls) if settings.stack else []
    return found or [settings.require_vllm_url()]


def pod_urls(pods: str | None, container: str, kubectl: str) -> list[str]:
    """One URL per Ready pod for ``--pods NAMESPACE/SELECTOR``; empty without ``--pods``."""
    if not pods:
        return []
    return _kubectl_transport(Where.pods(pods, None, container, kubectl)).replica_urls()


@contextmanager
def replicas(settings: Settings, urls: Sequence[str]) -> Iterator[list[VllmClient]]:
    """One open client per URL, all closed afterwards."""
    with ExitStack() as stack:
        yield [stack.enter_context(vllm_client(settings, url)) for url in urls]


@contextmanager
def targets(settings: Settings, where: Where) -> Iterator[tuple[AdapterTransport, list[VllmClient]]]:
    """The adapter transport and one client per replica."""
    files = transport(settings, where)
    with replicas(settings, replica_urls(settings, where, files)) as clients:
        yield files, clients


def other_replica_urls(
    settings: Settings, where: Where, files: AdapterTransport | None, given: Sequence[VllmClient]
) -> list[str]:
    """Replicas of the deployment a command was not pointed at (``--vllm-url`` given for
    some only): the local stack's servers, or every Ready pod. Cleanup keeps what they serve."""
    from loradeploy.clients.files import KubectlTransport

    if where.transport == KUBECTL and isinstance(files, KubectlTransport):
        known = list(files.replica_urls())
    else:
        known = list(settings.stack.vllm_urls) if settings.stack else []
    seen = {str(client.base_url).rstrip("/") for client in given}
    return [url for url in known if url.rstrip("/") not in seen]


def router_client(settings: Settings, where: Where | None = None) -> Router:
    """Routed mode's router: with ``--transport=kubectl``, the Gateway API Inference
    Extension's ``InferenceModelRewrite`` objects in ``where``'s namespace (pool
    ``LORADEPLOY_INFERENCE_POOL``), whose backends are the Ready vLLM pods; else the
    local stack's LiteLLM proxy, from the stack file 'stack up --router' wrote."""
    from loradeploy.clients.router import LiteLLMRouter

    if where is not None:
        _check_transport(where)
        if where.transport == KUBECTL:
            return gateway_router(settings, where)

    stack = settings.stack
    if not (
        stack and stack.router_url and stack.router_key_file and stack.router_config and stack.router_record
    ):
        raise UsageError(
            "no router: the stack file names none",
            hint="start the local stack with 'loradeploy stack up --router'",
        )
    try:
        key = stack.router_key_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(
            f"router key {stack.router_key_file} cannot be read ({exc.strerror})",
            hint="run 'loradeploy stack up --router' again",
        ) from exc
    return LiteLLMRouter(
        url=stack.router_url,
        key=key,
        config=stack.router_config,
        record=stack.router_record,
        backends=list(stack.vllm_urls) or [stack.vllm_url],
        callbacks=proxy_callbacks(request_log=stack.router_log is not None),
    )


def optional_router(
    settings: Settings, where: Where | None = None, files: AdapterTransport | None = None
) -> Router | None:
    """What 'reconcile' needs to finish or undo an interrupted canary: with
    ``--transport=kubectl`` the Gateway router of ``where``'s namespace (``files``: the
    kubectl transport already built, its pods are not listed twice); else the local
    stack's router when 'stack up --router' started one, else None (direct mode)."""
    if where is not None and where.transport == KUBECTL:
        return gateway_router(settings, where, files)
    stack = settings.stack
    return router_client(settings) if stack and stack.router_url else None


def live_figures(settings: Settings, where: Where | None = None) -> LogFigures | PrometheusFigures:
    """A canary's live figures: with ``--transport=kubectl`` the Inference Extension's
    metrics in Prometheus (``--prometheus-url``, ``LORADEPLOY_PROMETHEUS_URL``); else the
    request log of the local stack's router."""
    from loradeploy.clients.request_log import LogFigures, RequestLog

    if where is not None:
        _check_transport(where)
        if where.transport == KUBECTL:
            from loradeploy.clients.prometheus import PrometheusFigures

            return PrometheusFigures(settings.require_prometheus_url(), verify=settings.verify)
    stack = settings.stack
    if stack is None or not stack.router_url:
        raise UsageError(
            "no router: the stack file names none",
            hint="start the local stack with 'loradeploy stack up --router'",
        )
    if stack.router_log is None:
        raise UsageError(
            "no request log: the stack file names no router with one",
            hint="start the local stack with 'loradeploy stack up --router'",
        )
    return LogFigures(RequestLog(stack.router_log))


def gateway_router(settings: Settings, where: Where, files: AdapterTransport | None = None) -> Router:
    """The Kubernetes router for ``where`` (its Ready pods are listed here, unless
    ``files`` is the kubectl transport that listed them)."""
    from loradeploy.clients.gateway import GatewayRouter
    from loradeploy.clients.kube import KubectlApi

    backends = replica_urls(settings, where, files)
    return GatewayRouter(
        KubectlApi(kubectl=where.kubectl),
        namespace=where.namespace,
        pool=settings.inference_pool,
        backends=backends,
    )

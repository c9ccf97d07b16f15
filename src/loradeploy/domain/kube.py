"""Pure decisions about Kubernetes objects: which pods to address, is a rollout done.

Everything here reads JSON that ``kubectl ... -o json`` printed, or text a command
printed inside a pod; nothing talks to a cluster (that is ``clients.kube``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from loradeploy.errors import InvalidAdapterError, UsageError

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
DEFAULT_VLLM_PORT = 8000  # vLLM's own default for --port

# One path component below the adapters root: the same conservative set as
# ``domain.names`` (no separators, no leading dot or dash, never '..').
_SAFE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Pod:
    """One pod of the vLLM Deployment, as the API server reported it."""

    name: str
    ip: str
    ready: bool
    port: int | None  # first containerPort of the vLLM container; None if it declares none

    def url(self, scheme: str = "http") -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip  # IPv6 pod IPs need brackets
        return f"{scheme}://{host}:{self.port or DEFAULT_VLLM_PORT}"


def _is_ready(item: Mapping[str, Any]) -> bool:
    status = item.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    terminating = bool((item.get("metadata") or {}).get("deletionTimestamp"))
    return ready and status.get("phase") == "Running" and bool(status.get("podIP")) and not terminating


def pods_from_json(pod_list: Mapping[str, Any], container: str) -> list[Pod]:
    """Every pod of a ``PodList`` that runs ``container``, ready or not, sorted by name.

    A pod without that container is not a vLLM pod (or the container name is wrong)
    and is left out: there is nothing in it to copy to.
    """
    pods = []
    for item in pod_list.get("items") or []:
        containers = (item.get("spec") or {}).get("containers") or []
        match = next((c for c in containers if c.get("name") == container), None)
        if match is None:
            continue
        ports = match.get("ports") or []
        port = ports[0].get("containerPort") if ports else None
        pods.append(
            Pod(
                name=str(item["metadata"]["name"]),
                ip=str((item.get("status") or {}).get("podIP") or ""),
                ready=_is_ready(item),
                port=int(port) if port is not None else None,
            )
        )
    return sorted(pods, key=lambda pod: pod.name)


def ready_pods_from_json(pod_list: Mapping[str, Any], container: str) -> list[Pod]:
    """The pods to address: Ready condition True, phase Running, an IP, not terminating."""
    return [pod for pod in pods_from_json(pod_list, container) if pod.ready]


def restart_patch(timestamp: str) -> dict[str, Any]:
    """The patch ``kubectl rollout restart`` sends: a new pod-template annotation."""
    return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: timestamp}}}}}


def rollout_complete(deployment: Mapping[str, Any]) -> tuple[bool, str]:
    """Has the Deployment finished rolling out its latest template? And if not, what is left.

    Complete when the controller has seen the latest generation, every desired replica
    runs the new template and is available, and no old replica is left. "Desired" is
    ``spec.replicas`` when present (else ``status.replicas``).
    """
    metadata = deployment.get("metadata") or {}
    status = deployment.get("status") or {}
    generation = int(metadata.get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    current = int(status.get("replicas") or 0)
    desired = int((deployment.get("spec") or {}).get("replicas", current))
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    pending = []
    if observed < generation:
        pending.append(f"controller has not observed generation {generation} yet (observed {observed})")
    else:
        if updated != desired:
            pending.append(f"{updated} of {desired} replicas updated")
        if current > updated:
            pending.append(f"{current - updated} old replicas still terminating")
        if available != desired:
            pending.append(f"{available} of {desired} replicas available")
    if pending:
        return False, "; ".join(pending)
    return True, f"{desired} of {desired} replicas updated and available (generation {generation})"


def rollout_stalled(deployment: Mapping[str, Any]) -> str | None:
    """The controller's reason when it gave up on the latest generation, else None.

    Kubernetes marks ``Progressing=False, reason=ProgressDeadlineExceeded`` after
    ``spec.progressDeadlineSeconds``; a condition from an older generation is ignored.
    """
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    status = deployment.get("status") or {}
    if int(status.get("observedGeneration") or 0) < generation:
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return str(condition.get("message") or "progress deadline exceeded")
    return None


def remote_path(root: str, server_path: str, *, min_depth: int = 1) -> str:
    """``server_path`` as a normalised absolute POSIX path at least ``min_depth`` below ``root``.

    Remote commands get these paths as arguments, so anything that could leave the
    adapters folder ('..', empty or hidden components, other roots) is refused.
    """
    base = PurePosixPath(root)
    path = PurePosixPath(server_path)
    parts = path.parts[len(base.parts) :]
    if (
        ".." in server_path
        or not base.is_absolute()
        or path.parts[: len(base.parts)] != base.parts
        or len(parts) < min_depth
        or not all(_SAFE_PART.fullmatch(part) for part in parts)
    ):
        raise UsageError(
            f"adapter path {server_path!r} is not allowed: expected a folder below the adapters "
            f"root {root} made of letters, digits, '.', '_' and '-' (no '..')",
            hint="pass names that are valid slot and model names",
        )
    return str(path)


def version_folders_from_find(output: str) -> list[str]:
    """Version folders from ``find ROOT -mindepth 2 -maxdepth 2 -type d``: hidden slots left out."""
    folders = []
    for line in output.splitlines():
        path = PurePosixPath(line.strip())
        if line.strip() and not path.parent.name.startswith("."):
            folders.append(str(path))
    return sorted(folders)


def parse_sha256sum(output: str) -> dict[str, str]:
    """File name (last path component) -> sha256 hex, from ``sha256sum`` output lines."""
    digests = {}
    for line in output.splitlines():
        digest, sep, name = line.partition(" ")
        if sep and len(digest) == 64:
            digests[PurePosixPath(name.lstrip(" *")).name] = digest.lower()
    return digests


def check_safe_file_names(expected: Mapping[str, str], label: str) -> None:
    """Refuse digest keys that are not plain file names before they reach a command line."""
    for name in expected:
        if "/" in name or name in ("", ".", "..") or "\n" in name or "\\" in name:
            raise InvalidAdapterError(
                f"{label}: file name {name!r} in the registry's sha256 tags is not a plain file name",
                hint="re-register the adapter with 'loradeploy register'",
            )


def compare_listing(
    present: set[str], actual: Mapping[str, str], expected: Mapping[str, str], label: str
) -> None:
    """The remote twin of ``adapter.check_digests``: same files, same sha256, nothing else."""
    if present != set(expected):
        missing = sorted(set(expected) - present)
        extra = sorted(present - set(expected))
        raise InvalidAdapterError(
            f"{label}: files differ from the registry's record (missing {missing}, extra {extra})",
            hint="re-register the adapter with 'loradeploy register'",
        )
    for name, digest in sorted(expected.items()):
        got = actual.get(name, "")
        if got != digest:
            raise InvalidAdapterError(
                f"{label}: sha256 of {name} is {got[:12] or 'unreadable'}…, expected {digest[:12]}… "
                "from the registry tags",
                hint="the folder changed after it was written; remove it and deploy again",
            )

"""Kubernetes, through one narrow interface (``KubeApi``) implemented with ``kubectl``.

Why the command line and not the Python client: ``kubectl`` is what operators already
have configured (kubeconfig, contexts, in-cluster service accounts), ``kubectl cp``
handles the tar stream, and the whole boundary is a handful of argument lists that a
test double (``tests/support/fake_kubectl.py``) can stand in for.

Every call runs ``subprocess.run`` with an argument list (never a shell) and a deadline,
and kubectl's failures become the project's errors:

    kubectl not installed                 UsageError              install kubernetes-client
    no tar in the container (cp)          PermanentError
    CRD not installed (rewrites)          PermanentError          install the extension's CRDs
    command in the pod exited non-zero    RemoteCommandError      a PermanentError
    "(NotFound)"                          NotFoundError           names the object
    "(Forbidden)"                         PermanentError          names the RBAC verb/resource
    "Unauthorized"                        AuthenticationError     refresh credentials
    bad kubeconfig or context             UsageError
    timeout, refused, unreachable, 5xx    ServerUnavailableError  retry later
    anything else                         PermanentError

RBAC the service account needs: ``pods`` get/list, ``pods/exec`` get and create (copying
and remote commands go through exec); ``inferencemodelrewrites`` list, get, create and
patch (routed mode's router on a cluster, ``clients.gateway``); ``deployments`` get and
patch only for ``restart-deployment``, in a separate, opt-in Role (``RESTART_CALLS``).
Coordination between runs is the registry's lock (MLflow model tags): no Lease, no
other permission.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from loradeploy.domain.kube import Pod, ready_pods_from_json, restart_patch
from loradeploy.domain.rewrite import API_VERSION, KIND
from loradeploy.errors import (
    AuthenticationError,
    LoraDeployError,
    NotFoundError,
    PermanentError,
    ServerUnavailableError,
    UsageError,
    short,
)

__all__ = ["RBAC_NEEDS", "RESTART_CALLS", "KubeApi", "KubectlApi", "Pod", "RemoteCommandError", "rbac_rules"]

REWRITE_GROUP = API_VERSION.split("/", 1)[0]  # inference.networking.x-k8s.io
# Fully qualified: the same kind also exists in llm-d's group (deploy/gateway/README.md).
REWRITES = f"inferencemodelrewrites.{REWRITE_GROUP}"

# What each ``KubeApi`` call needs from RBAC: (API group, resource, verb). kubectl reads
# the pod before ``cp`` and ``exec``; exec is ``create`` on pods/exec (1.35+ checks it
# for the websocket upgrade too) and ``get`` on older clusters. The Role the workflows
# run under (deploy/k8s/base/rbac.yaml) grants exactly the union; a test keeps them equal.
RBAC_NEEDS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "ready_pods": (("", "pods", "list"),),
    "copy_to_pod": (("", "pods", "get"), ("", "pods/exec", "create"), ("", "pods/exec", "get")),
    "exec": (("", "pods", "get"), ("", "pods/exec", "create"), ("", "pods/exec", "get")),
    # kubectl apply reads the object, then creates it or patches it.
    "rewrites": ((REWRITE_GROUP, "inferencemodelrewrites", "list"),),
    "apply_rewrite": tuple(
        (REWRITE_GROUP, "inferencemodelrewrites", verb) for verb in ("get", "create", "patch")
    ),
    "patch_restart": (("apps", "deployments", "patch"),),
    "deployment_status": (("apps", "deployments", "get"),),
}


# Used only by ``restart-deployment``: their permissions are a separate Role, granted
# only where that legacy fallback is wanted (deploy/k8s/optional/restart-deployment).
RESTART_CALLS = frozenset({"patch_restart", "deployment_status"})


def rbac_rules(calls: Iterable[str] | None = None) -> set[tuple[str, str, str]]:
    """Every (API group, resource, verb) the given ``KubeApi`` calls need (default: all)."""
    names = RBAC_NEEDS if calls is None else calls
    return {need for name in names for need in RBAC_NEEDS[name]}


class KubeApi(Protocol):
    """Everything loradeploy asks of a cluster."""

    def ready_pods(self, namespace: str, selector: str, container: str) -> list[Pod]:
        """Pods matching the label ``selector`` that are Ready and run ``container``."""
        ...

    def copy_to_pod(
        self, namespace: str, pod: str, container: str, local_path: Path, remote_path: str
    ) -> None:
        """Copy a local file or folder to ``remote_path`` (which must not exist yet)."""
        ...

    def exec(self, namespace: str, pod: str, container: str, argv: list[str]) -> str:
        """Run ``argv`` in the container; returns its stdout. Non-zero exit: RemoteCommandError."""
        ...

    def rewrites(self, namespace: str) -> list[dict[str, Any]]:
        """Every ``InferenceModelRewrite`` object in the namespace, whoever manages it."""
        ...

    def apply_rewrite(self, namespace: str, rewrite: dict[str, Any]) -> dict[str, Any]:
        """Create or update the ``InferenceModelRewrite`` ``rewrite`` (``kubectl apply``);
        returns the object as the API server stored it."""
        ...

    def patch_restart(self, namespace: str, deployment: str, timestamp: str) -> None:
        """Start a rolling restart: set the pod template's ``restartedAt`` annotation."""
        ...

    def deployment_status(self, namespace: str, deployment: str) -> dict[str, Any]:
        """``metadata`` (name, generation), ``spec.replicas`` and ``status`` of the Deployment."""
        ...


class RemoteCommandError(PermanentError):
    """A command run in a pod exited non-zero (kubectl itself worked)."""

    def __init__(self, message: str, *, returncode: int, stderr: str) -> None:
        super().__init__(message, hint="read the message; the pod's files were not changed by this command")
        self.returncode = returncode
        self.stderr = stderr


_REMOTE_EXIT = re.compile(r"command terminated with exit code (\d+)")
_RBAC = re.compile(r'cannot (\w+) resource "([^"]+)"')
_UNAVAILABLE = (
    "Unable to connect to the server",
    "connection refused",
    "was refused",  # "The connection to the server HOST:PORT was refused"
    "i/o timeout",
    "TLS handshake timeout",
    "no route to host",
    "(ServiceUnavailable)",
    "(InternalError)",
    "(Timeout)",
    "(ServerTimeout)",
    "(TooManyRequests)",
    "the server is currently unable to handle the request",
    "http2: client connection lost",
)
_NO_CRD = ("doesn't have a resource type", "no matches for kind")  # get, apply
_KLOG = re.compile(r"^[EWI]\d{4} \d\d:\d\d:\d\d")  # kubectl's log lines, e.g. "E1127 05:40:53.15 ..."
INSTALL_HINT = "install kubectl (Debian/Ubuntu: apt-get install kubernetes-client) or pass its full path"


def _without_klog(stderr: str) -> str:
    """kubectl's own error message: its repeated log lines dropped (kept if nothing else)."""
    lines = [line for line in stderr.strip().splitlines() if not _KLOG.match(line)]
    return "\n".join(lines).strip() or stderr.strip()


class KubectlApi:
    """``KubeApi`` over the ``kubectl`` binary.

    ``timeout_s`` bounds every call, copies included: raise it for adapters of several
    GB. ``kubectl cp`` streams a tar archive into ``tar -xmf -`` in the container, so the
    vLLM image must ship ``tar`` (the official vLLM images do).
    """

    def __init__(self, kubectl: str = "kubectl", context: str | None = None, timeout_s: float = 120) -> None:
        self.kubectl = kubectl
        self.context = context
        self.timeout_s = timeout_s

    # -- KubeApi ---------------------------------------------------------------------------

    def ready_pods(self, namespace: str, selector: str, container: str) -> list[Pod]:
        out = self._run(
            ["get", "pods", "-n", namespace, "-l", selector, "-o", "json"],
            what=f"pods with selector {selector!r} in namespace {namespace}",
            rbac="list pods",
        )
        return ready_pods_from_json(self._json(out, "pod list"), container)

    def copy_to_pod(
        self, namespace: str, pod: str, container: str, local_path: Path, remote_path: str
    ) -> None:
        self._run(
            ["cp", str(local_path), f"{namespace}/{pod}:{remote_path}", "-c", container],
            what=f"pod {namespace}/{pod} (copy to {remote_path})",
            rbac="create pods/exec",
        )

    def exec(self, namespace: str, pod: str, container: str, argv: list[str]) -> str:
        return self._run(
            ["exec", "-n", namespace, pod, "-c", container, "--", *argv],
            what=f"pod {namespace}/{pod} (running {argv[0] if argv else '?'})",
            rbac="create pods/exec",
        )

    def rewrites(self, namespace: str) -> list[dict[str, Any]]:
        out = self._run(
            ["get", REWRITES, "-n", namespace, "-o", "json"],
            what=f"{KIND} objects in namespace {namespace}",
            rbac="list inferencemodelrewrites",
        )
        items = self._json(out, f"{KIND} list").get("items")
        return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []

    def apply_rewrite(self, namespace: str, rewrite: dict[str, Any]) -> dict[str, Any]:
        name = str((rewrite.get("metadata") or {}).get("name", "?"))
        out = self._run(
            ["apply", "-n", namespace, "-f", "-", "-o", "json"],
            what=f"{KIND} {namespace}/{name}",
            rbac="patch inferencemodelrewrites",
            stdin=json.dumps(rewrite),
        )
        return self._json(out, f"{KIND} {namespace}/{name}")

    def patch_restart(self, namespace: str, deployment: str, timestamp: str) -> None:
        self._run(
            ["patch", "deployment", deployment, "-n", namespace, "-p", json.dumps(restart_patch(timestamp))],
            what=f"deployment {namespace}/{deployment}",
            rbac="patch deployments",
        )

    def deployment_status(self, namespace: str, deployment: str) -> dict[str, Any]:
        out = self._run(
            ["get", "deployment", deployment, "-n", namespace, "-o", "json"],
            what=f"deployment {namespace}/{deployment}",
            rbac="get deployments",
        )
        data = self._json(out, f"deployment {namespace}/{deployment}")
        metadata = data.get("metadata") or {}
        return {
            "metadata": {"name": metadata.get("name"), "generation": metadata.get("generation")},
            "spec": {"replicas": (data.get("spec") or {}).get("replicas")},
            "status": data.get("status") or {},
        }

    # -- the boundary ----------------------------------------------------------------------

    def _argv(self, args: list[str]) -> list[str]:
        return [self.kubectl, *(["--context", self.context] if self.context else []), *args]

    def _run(self, args: list[str], *, what: str, rbac: str, stdin: str | None = None) -> str:
        """Run kubectl; ``stdin`` is the text it reads (``-f -``), else nothing: kubectl
        prompts for a username when credentials are missing."""
        argv = self._argv(args)
        try:
            done = subprocess.run(
                argv,
                input=stdin if stdin is not None else "",
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError as exc:
            raise UsageError(f"kubectl binary {self.kubectl!r} not found", hint=INSTALL_HINT) from exc
        except subprocess.TimeoutExpired as exc:
            raise ServerUnavailableError(
                f"kubectl {args[0]} on {what} did not finish within {self.timeout_s:g}s",
                hint="check the cluster is reachable (kubectl cluster-info) and retry; "
                "large copies need a larger timeout",
            ) from exc
        except OSError as exc:
            raise UsageError(
                f"could not run kubectl binary {self.kubectl!r} ({exc.strerror})", hint=INSTALL_HINT
            ) from exc
        if done.returncode != 0:
            raise self._error(done.returncode, done.stderr, what=what, rbac=rbac)
        return done.stdout

    def _error(self, returncode: int, stderr: str, *, what: str, rbac: str) -> LoraDeployError:
        text = _without_klog(stderr)
        if "executable file not found" in text and '"tar"' in text:
            return PermanentError(
                f"{what}: kubectl cp needs tar in the container, and it has none",
                hint="use an image with tar, or an init container that pulls from the registry",
            )
        if any(marker in text for marker in _NO_CRD):
            return PermanentError(
                f"{what}: the cluster has no {KIND} resource ({API_VERSION}): {short(text)}",
                hint="install the Gateway API Inference Extension's CRDs (deploy/gateway/README.md), "
                "or route with the local stack's router",
            )
        remote = _REMOTE_EXIT.search(text)
        if remote:
            body = text[: remote.start()].strip()
            return RemoteCommandError(
                f"{what} failed with exit code {remote.group(1)}: {short(body) or 'no output'}",
                returncode=int(remote.group(1)),
                stderr=body,
            )
        where = f" (context {self.context})" if self.context else ""
        if "(NotFound)" in text:
            return NotFoundError(
                f"{what}{where}: not found: {short(text)}",
                hint="check the namespace, the pod or deployment name and the kube context",
            )
        if "(Forbidden)" in text:
            match = _RBAC.search(text)
            needed = f"{match.group(1)} {match.group(2)}" if match else rbac
            return PermanentError(
                f"{what}{where}: forbidden: the service account needs RBAC '{needed}': {short(text)}",
                hint=f"grant '{needed}' in the namespace (a Role and RoleBinding), then retry",
            )
        if "Unauthorized" in text or "must be logged in" in text:
            return AuthenticationError(
                f"{what}{where}: the cluster refused kubectl's credentials: {short(text)}",
                hint="refresh the kubeconfig credentials or the service account token",
            )
        if "Error in configuration" in text or ("context" in text and "not found" in text):
            return UsageError(
                f"kubectl configuration{where}: {short(text)}",
                hint="fix KUBECONFIG or pass an existing context (kubectl config get-contexts)",
            )
        if any(marker in text for marker in _UNAVAILABLE):
            return ServerUnavailableError(
                f"{what}{where}: Kubernetes API unreachable: {short(text)}",
                hint="check KUBECONFIG/--context and that the cluster is up, then retry",
            )
        return PermanentError(f"kubectl failed on {what}{where} (exit {returncode}): {short(text)}")

    @staticmethod
    def _json(out: str, what: str) -> dict[str, Any]:
        try:
            data = json.loads(out)
        except json.JSONDecodeError as exc:
            raise PermanentError(f"kubectl printed no JSON for {what}: {short(out)}") from exc
        if not isinstance(data, dict):
            raise PermanentError(f"kubectl printed unexpected JSON for {what}: {short(out)}")
        return data

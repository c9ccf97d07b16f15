#!/usr/bin/env python3
"""FAKE kubectl for unit tests: a test double, never a cluster client.

Stands in for the ``kubectl`` binary behind ``loradeploy.clients.kube.KubectlApi`` and
understands exactly the calls that class makes (after an optional ``--context X``):

    get pods -n NS -l SEL -o json            pods from the state file
    get deployment NAME -n NS -o json        a deployment from the state file
    patch deployment NAME -n NS -p JSON      records the annotation, bumps generation
    cp LOCAL NS/POD:REMOTE -c C              copies on this machine
    exec -n NS POD -c C -- ARGV...           runs ARGV here (test mkdir chmod mv rm find sha256sum cat)
    get inferencemodelrewrites.GROUP -n NS -o json
                                             the rewrites of NS from the state file
    apply -n NS -f - -o json                 stores the InferenceModelRewrite read on stdin

Environment:
    FAKE_KUBECTL_STATE  JSON state file (read, and rewritten by patch/get deployment):
        {"pods": [{"name", "ip", "ready", "port", "namespace", "labels",
                   optional "container" (default "vllm"), "phase", "root_map"}],
         "deployments": {"NS/NAME": {...Deployment JSON...}},
         "root_map": {"/": "/"},          pod path prefix -> local path (longest wins)
         "rollout_gets": 1,               gets after a patch that still show the old status
         "stuck": ["NS/NAME"],            deployments whose rollout never completes
         "rewrites": {"NS/NAME": {...}},  InferenceModelRewrite objects
         "no_crd": true,                  the cluster has no InferenceModelRewrite CRD
         "stale_reads": 1,                gets after an apply that still show the old rewrites
         "reverted": true}                another writer puts every applied rewrite back
        The default identity root_map means every pod sees this machine's filesystem,
        like pods sharing one volume; a pod's own "root_map" gives it a separate one.
    FAKE_KUBECTL_LOG    every invocation's argv is appended here as one JSON line.
    FAKE_KUBECTL_FAIL   "VERB:TEXT" makes VERB (get, cp, exec, patch) fail with TEXT on
        stderr and exit 1 (VERB "apply" too). TEXT "Forbidden" or "Unauthorized" expands to
        kubectl's real message; TEXT "hang" sleeps a minute (to test timeouts).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EXEC_ALLOWED = {"test", "mkdir", "chmod", "mv", "rm", "find", "sha256sum", "cat"}
RBAC = {  # verb -> (RBAC verb, resource) the real API server would name
    "get pods": ("list", "pods"),
    "get deployment": ("get", "deployments"),
    "patch deployment": ("patch", "deployments"),
    "exec": ("create", "pods/exec"),
    "cp": ("create", "pods/exec"),
    "get rewrites": ("list", "inferencemodelrewrites"),
    "apply": ("patch", "inferencemodelrewrites"),
}
REWRITES = "inferencemodelrewrites.inference.networking.x-k8s.io"
NO_CRD = 'error: the server doesn\'t have a resource type "inferencemodelrewrites"'
NO_KIND = (
    'error: resource mapping not found for name: "{name}" namespace: "{ns}" from "STDIN": '
    'no matches for kind "InferenceModelRewrite" in version "inference.networking.x-k8s.io/v1alpha2"\n'
    "ensure CRDs are installed first"
)


class Fail(Exception):
    def __init__(self, text: str, code: int = 1) -> None:
        super().__init__(text)
        self.text, self.code = text, code


def parse(args: list[str]) -> tuple[list[str], dict[str, str], list[str]]:
    """Positionals, options (-n -l -o -c -p --context, each with a value) and ARGV after '--'."""
    split = args.index("--") if "--" in args else len(args)
    head, rest = args[:split], args[split + 1 :]
    options = {arg: head[i + 1] for i, arg in enumerate(head) if arg.startswith("-")}
    positional = [
        a for i, a in enumerate(head) if not a.startswith("-") and (i == 0 or head[i - 1][0] != "-")
    ]
    return positional, options, rest


def mapper(state: dict[str, Any], pod: dict[str, Any] | None) -> dict[str, str]:
    return (pod or {}).get("root_map") or state.get("root_map") or {"/": "/"}


def to_local(path: str, root_map: dict[str, str]) -> str:
    for prefix in sorted(root_map, key=len, reverse=True):
        base = prefix.rstrip("/")
        if path == prefix or path.startswith(base + "/"):
            rest = path[len(base) :].lstrip("/")
            return str(Path(root_map[prefix]) / rest) if rest else root_map[prefix]
    return path


def to_pod(text: str, root_map: dict[str, str]) -> str:
    for prefix, local in sorted(root_map.items(), key=lambda kv: len(kv[1]), reverse=True):
        if local.rstrip("/") and prefix.rstrip("/") != local.rstrip("/"):
            text = text.replace(local.rstrip("/"), prefix.rstrip("/"))
    return text


def pod_json(pod: dict[str, Any]) -> dict[str, Any]:
    ports = [{"containerPort": pod["port"]}] if pod.get("port") else []
    return {
        "metadata": {"name": pod["name"], "namespace": pod["namespace"], "labels": pod.get("labels", {})},
        "spec": {"containers": [{"name": pod.get("container", "vllm"), "ports": ports}]},
        "status": {
            "phase": pod.get("phase", "Running"),
            "podIP": pod.get("ip"),
            "conditions": [{"type": "Ready", "status": "True" if pod.get("ready") else "False"}],
        },
    }


def find_pod(state: dict[str, Any], namespace: str, name: str, container: str) -> dict[str, Any]:
    for pod in state["pods"]:
        if pod["namespace"] == namespace and pod["name"] == name:
            if pod.get("container", "vllm") != container:
                raise Fail(f'error: unable to upgrade connection: container not found ("{container}")')
            return pod
    raise Fail(f'Error from server (NotFound): pods "{name}" not found')


def get_pods(state: dict[str, Any], opts: dict[str, str]) -> str:
    wanted = dict(term.split("=", 1) for term in opts.get("-l", "").split(",") if term)
    items = [
        pod_json(pod)
        for pod in state["pods"]
        if pod["namespace"] == opts["-n"]
        and all(pod.get("labels", {}).get(k) == v for k, v in wanted.items())
    ]
    return json.dumps({"kind": "PodList", "items": items})


def deployment(state: dict[str, Any], opts: dict[str, str], name: str) -> tuple[str, dict[str, Any]]:
    key = f"{opts['-n']}/{name}"
    if key not in state.get("deployments", {}):
        raise Fail(f'Error from server (NotFound): deployments.apps "{name}" not found')
    return key, state["deployments"][key]


def get_deployment(state: dict[str, Any], opts: dict[str, str], name: str) -> str:
    key, dep = deployment(state, opts, name)
    pending = state.setdefault("pending", {})
    if key in pending:
        status, replicas = dep.setdefault("status", {}), dep.get("spec", {}).get("replicas", 1)
        if pending[key] > 0:
            pending[key] -= 1  # the controller has not caught up yet
        elif key in state.get("stuck", []):
            status["observedGeneration"] = dep["metadata"]["generation"]  # seen, never finished
        else:
            status.update(observedGeneration=dep["metadata"]["generation"], replicas=replicas)
            status.update(updatedReplicas=replicas, readyReplicas=replicas, availableReplicas=replicas)
            del pending[key]
    return json.dumps(dep)


def patch_deployment(state: dict[str, Any], opts: dict[str, str], name: str) -> str:
    key, dep = deployment(state, opts, name)
    patch = json.loads(opts["-p"])
    annotations = patch["spec"]["template"]["metadata"]["annotations"]
    template = dep.setdefault("spec", {}).setdefault("template", {}).setdefault("metadata", {})
    template.setdefault("annotations", {}).update(annotations)
    dep["metadata"]["generation"] = dep["metadata"].get("generation", 1) + 1
    state.setdefault("pending", {})[key] = state.get("rollout_gets", 1)
    return f"deployment.apps/{name} patched\n"


def copy(state: dict[str, Any], pos: list[str], opts: dict[str, str]) -> str:
    local, target = Path(pos[1]), pos[2]
    namespace, _, rest = target.partition("/")
    name, _, remote = rest.partition(":")
    pod = find_pod(state, namespace, name, opts["-c"])
    dest = Path(to_local(remote, mapper(state, pod)))
    if not dest.parent.is_dir():  # what tar -C says when the folder is missing
        raise Fail(
            f"tar: {Path(remote).parent}: Cannot open: No such file or directory\n"
            "command terminated with exit code 2",
            2,
        )
    if local.is_dir():
        shutil.copytree(local, dest, dirs_exist_ok=True)
    else:
        shutil.copyfile(local, dest)
    return ""


def run_in_pod(state: dict[str, Any], pos: list[str], opts: dict[str, str], argv: list[str]) -> str:
    pod = find_pod(state, opts["-n"], pos[1], opts["-c"])
    if not argv or argv[0] not in EXEC_ALLOWED:
        raise Fail(f'exec: "{argv[0] if argv else ""}": executable file not found in $PATH', 126)
    root_map = mapper(state, pod)
    local_argv = [to_local(a, root_map) if a.startswith("/") else a for a in argv]
    done = subprocess.run(local_argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Fail(
            f"{to_pod(done.stderr, root_map)}command terminated with exit code {done.returncode}",
            done.returncode,
        )
    return to_pod(done.stdout, root_map)


def get_rewrites(state: dict[str, Any], opts: dict[str, str]) -> str:
    if state.get("no_crd"):
        raise Fail(NO_CRD)
    rewrites = state.get("rewrites", {})
    if state.get("stale_reads", 0) > 0:
        state["stale_reads"] -= 1
        rewrites = state.get("before_apply", rewrites)
    items = [obj for key, obj in sorted(rewrites.items()) if key.split("/", 1)[0] == opts["-n"]]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def apply_rewrite(state: dict[str, Any], opts: dict[str, str]) -> str:
    obj = json.loads(sys.stdin.read())
    name, namespace = obj["metadata"]["name"], opts["-n"]
    if state.get("no_crd"):
        raise Fail(NO_KIND.format(name=name, ns=namespace))
    if obj.get("kind") != "InferenceModelRewrite" or obj["metadata"].get("namespace", namespace) != namespace:
        raise Fail(f"fake kubectl: unexpected object {obj}", 2)
    rewrites = state.setdefault("rewrites", {})
    key = f"{namespace}/{name}"
    state["before_apply"] = json.loads(json.dumps(rewrites))
    old = rewrites.get(key, {}).get("metadata", {})
    obj["metadata"].update(namespace=namespace, generation=old.get("generation", 0) + 1)
    if not state.get("reverted"):
        rewrites[key] = obj
    return json.dumps(obj)


def injected_failure(verb: str, text: str, namespace: str) -> str:
    if text == "hang":
        time.sleep(60)
    rbac_verb, resource = RBAC[verb]
    return {
        "Forbidden": f"Error from server (Forbidden): {resource} is forbidden: User "
        f'"system:serviceaccount:ml:deployer" cannot {rbac_verb} resource "{resource}" '
        f'in API group "" in the namespace "{namespace}"',
        "Unauthorized": "error: You must be logged in to the server (Unauthorized)",
    }.get(text, text)


def main(args: list[str]) -> int:
    if log := os.environ.get("FAKE_KUBECTL_LOG"):
        with Path(log).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(args) + "\n")
    state_file = Path(os.environ["FAKE_KUBECTL_STATE"])
    state = json.loads(state_file.read_text(encoding="utf-8"))
    pos, opts, rest = parse(args)
    verb = " ".join(pos[:2]) if pos[0] in ("get", "patch") else pos[0]
    verb = "get rewrites" if verb == f"get {REWRITES}" else verb
    fail_verb, _, text = os.environ.get("FAKE_KUBECTL_FAIL", "").partition(":")
    try:
        if fail_verb and fail_verb == pos[0]:
            raise Fail(injected_failure(verb, text, opts.get("-n", "default")))
        handlers = {
            "get pods": lambda: get_pods(state, opts),
            "get deployment": lambda: get_deployment(state, opts, pos[2]),
            "patch deployment": lambda: patch_deployment(state, opts, pos[2]),
            "cp": lambda: copy(state, pos, opts),
            "exec": lambda: run_in_pod(state, pos, opts, rest),
            "get rewrites": lambda: get_rewrites(state, opts),
            "apply": lambda: apply_rewrite(state, opts),
        }
        if verb not in handlers:
            raise Fail(f"fake kubectl: unsupported call {args}", 2)
        sys.stdout.write(handlers[verb]())
    except Fail as failure:
        sys.stderr.write(failure.text + "\n")
        return failure.code
    finally:
        state_file.write_text(json.dumps(state, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""deploy/k8s: every rendered manifest passes strict schema validation, the vLLM pod is
the specification's, and the workflow Role grants exactly what the code's kubectl calls
need (``clients.kube.RBAC_NEEDS``), nothing more.

Validated offline only: nothing here talks to a cluster.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hera.workflows import WorkflowTemplate

from loradeploy.clients import kube
from loradeploy.domain.rewrite import render_rewrite
from support.fake_cluster import CONTAINER, NS, SELECTOR, FakeCluster, fake_deployment, fake_pod
from support.kustomize import render

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
KUBERNETES_VERSIONS = ["1.37.0", "1.33.0"]  # current, and the oldest with GA native sidecars
SPEC_MODEL = "mistral-7b-lora"
SLOTS = ("--live-slot=aws-rag-qa-live", "--candidate-slot=aws-rag-qa-candidate")


def objects(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in render(folder)}


def pod_spec(folder: Path = BASE) -> dict[str, Any]:
    spec: dict[str, Any] = objects(folder)[("Deployment", "vllm")]["spec"]["template"]["spec"]
    return spec


def container(name: str, folder: Path = BASE) -> dict[str, Any]:
    spec = pod_spec(folder)
    [found] = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    return found


# -- schema --------------------------------------------------------------------------------


def is_argo(doc: dict[str, Any]) -> bool:
    return str(doc["apiVersion"]).startswith("argoproj.io/")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "overlay"])
def test_every_rendered_manifest_passes_strict_validation(folder: Path, version: str) -> None:
    """Every built-in object; Argo's custom resources have no schema here and are checked
    by the Hera round trip below instead."""
    docs = render(folder)
    assert len([d for d in docs if not is_argo(d)]) >= 7
    for doc in docs:
        if not is_argo(doc):
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "overlay"])
def test_rendered_workflow_templates_survive_a_hera_round_trip(folder: Path) -> None:
    argo = [d for d in render(folder) if is_argo(d)]
    assert sorted(d["metadata"]["name"] for d in argo) == [
        "vllm-canary",
        "vllm-deploy",
        "vllm-promote",
        "vllm-rollback",
    ]
    for doc in argo:
        assert doc["kind"] == "WorkflowTemplate"
        assert WorkflowTemplate.from_dict(doc).to_dict() == doc


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The check above can fail: a misspelled field is an error, not a warning."""
    doc = copy.deepcopy(objects(BASE)[("Deployment", "vllm")])
    doc["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)


def test_every_manifest_file_is_part_of_a_kustomization() -> None:
    listed = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
        entries = [*spec.get("resources", []), *spec.get("configurations", [])]
        listed |= {(kustomization.parent / entry).resolve() for entry in entries}
    files = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files - listed == set()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")
@pytest.mark.parametrize(
    "folder",
    [BASE, OVERLAY, K8S / "optional" / "restart-deployment"],
    ids=["base", "overlay", "restart-deployment"],
)
def test_the_python_renderer_agrees_with_kubectl_kustomize(folder: Path) -> None:
    done = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=True
    )
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(done.stdout) if d}
    assert theirs == objects(folder)


# -- the vLLM pod --------------------------------------------------------------------------


def test_vllm_serves_the_base_model_with_runtime_lora() -> None:
    vllm = container("vllm")
    args = vllm["args"]
    assert args[:3] == ["vllm", "serve", "TheBloke/Mistral-7B-v0.1-AWQ"]
    assert "--enable-lora" in args
    flags = {a.split("=", 1)[0] for a in args}
    assert {"--max-loras", "--max-lora-rank", "--max-cpu-loras"} <= flags
    # Issue 11.10: the AWQ kernel is vLLM's choice (awq_marlin where it can), never forced.
    assert [a for a in args if a.startswith("--quantization")] in ([], ["--quantization=awq_marlin"])
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert vllm["resources"]["requests"]["nvidia.com/gpu"] == "1"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert vllm["ports"][0] == {"name": "http", "containerPort": 8000, "protocol": "TCP"}


def launch(manifest: Path) -> list[str]:
    """Run the vLLM container's launcher script on ``manifest`` (execvp replaced): the argv
    vLLM would start with."""
    script = container("vllm")["command"][2]
    calls: list[list[str]] = []
    patched = script.replace("/mnt/adapters/lora-modules.json", str(manifest)).replace(
        "os.execvp(argv[0], argv)", "calls.append(argv)"
    )
    saved = sys.argv
    sys.argv = ["-c", "vllm", "serve", "base"]
    try:
        exec(compile(patched, "launcher", "exec"), {"__name__": "launcher", "calls": calls})
    finally:
        sys.argv = saved
    [argv] = calls
    return argv


def test_the_launcher_adds_the_restored_lora_modules(tmp_path: Path) -> None:
    restored = tmp_path / "slot" / "m-v1"
    restored.mkdir(parents=True)
    modules = [{"name": "aws-rag-qa-live", "path": str(restored)}, {"name": "gone", "path": "/nope"}]
    manifest = tmp_path / "lora-modules.json"
    manifest.write_text(json.dumps({"modules": modules}), encoding="utf-8")
    argv = launch(manifest)
    assert argv[:3] == ["vllm", "serve", "base"]
    assert argv[3] == "--lora-modules"
    assert [json.loads(m)["name"] for m in argv[4:]] == ["aws-rag-qa-live"]


def test_init_container_restores_both_slots_into_the_shared_volume() -> None:
    init = container("init-load-adapters")
    assert init["args"][0] == "init-load-adapters"
    assert f"--model-name={SPEC_MODEL}" in init["args"]
    assert "--adapters-root=/mnt/adapters" in init["args"]
    assert set(SLOTS) <= set(init["args"])
    assert "--base-model-name=TheBloke/Mistral-7B-v0.1-AWQ" in init["args"]


def test_the_reconcile_sidecar_watches_the_local_vllm() -> None:
    sidecar = container("reconcile")
    assert sidecar["args"][:2] == ["reconcile", "--watch"]
    assert f"--model-name={SPEC_MODEL}" in sidecar["args"]
    assert "--vllm-url=http://127.0.0.1:8000" in sidecar["args"]
    assert set(SLOTS) <= set(sidecar["args"])


def test_the_adapters_volume_is_shared_by_all_three() -> None:
    spec = pod_spec()
    [volume] = [v for v in spec["volumes"] if v["name"] == "adapters"]
    assert "emptyDir" in volume
    for name in ("init-load-adapters", "vllm", "reconcile"):
        mounts = {m["name"]: m for m in container(name)["volumeMounts"]}
        assert mounts["adapters"]["mountPath"] == "/mnt/adapters"
        assert not mounts["adapters"].get("readOnly", False)


def test_loradeploy_containers_run_as_non_root() -> None:
    for name in ("init-load-adapters", "reconcile"):
        context = container(name)["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] != 0
        assert context["allowPrivilegeEscalation"] is False


def test_the_service_selects_the_vllm_pods() -> None:
    found = objects(BASE)
    service = found[("Service", "vllm-service")]
    labels = found[("Deployment", "vllm")]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["metadata"]["namespace"] == "ml-models"


def images(node: Any) -> list[str]:
    """Every ``image`` value anywhere in an object (containers, workflow steps, ...)."""
    if isinstance(node, dict):
        own = [node["image"]] if isinstance(node.get("image"), str) else []
        return own + [i for value in node.values() for i in images(value)]
    if isinstance(node, list):
        return [i for item in node for i in images(item)]
    return []


def overlay_image(name: str) -> str:
    spec = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text(encoding="utf-8"))
    [entry] = [i for i in spec["images"] if i["name"] == name]
    if entry.get("digest"):
        return f"{entry.get('newName', name)}@{entry['digest']}"
    return f"{entry.get('newName', name)}:{entry['newTag']}"


def test_one_images_entry_sets_the_steps_image_everywhere() -> None:
    """Issue 11.1: the overlay's loradeploy image reaches the init container, the sidecar
    and every WorkflowTemplate step; no object keeps the base's unpublished name."""
    docs = render(OVERLAY)
    steps_image, vllm_image = overlay_image("loradeploy"), container("vllm", OVERLAY)["image"]
    assert set().union(*(images(doc) for doc in docs)) == {steps_image, vllm_image}
    for name in ("init-load-adapters", "reconcile"):
        assert container(name, OVERLAY)["image"] == steps_image
    templates = [t for d in docs if d["kind"] == "WorkflowTemplate" for t in d["spec"]["templates"]]
    with_container = [t for t in templates if "container" in t]
    assert len(with_container) >= 7
    assert {t["container"]["image"] for t in with_container} == {steps_image}


def test_the_image_check_sees_a_template_the_overlay_misses(tmp_path: Path) -> None:
    """The check above can fail: without the field spec, workflow steps keep the base image."""
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    config = tmp_path / "deploy" / "k8s" / "base" / "kustomizeconfig.yaml"
    config.write_text("images: []\n", encoding="utf-8")
    docs = render(tmp_path / "deploy" / "k8s" / "overlays" / "example")
    workflow_images = {
        t["container"]["image"]
        for d in docs
        if d["kind"] == "WorkflowTemplate"
        for t in d["spec"]["templates"]
        if "container" in t
    }
    assert workflow_images == {"loradeploy:0.1.0"}


def test_the_overlay_changes_image_and_replicas_only_where_told() -> None:
    base, overlay = objects(BASE), objects(OVERLAY)
    assert overlay[("Deployment", "vllm")]["spec"]["replicas"] == 2
    assert container("reconcile", OVERLAY)["image"] == overlay_image("loradeploy")
    assert set(overlay) - set(base) == {
        ("PersistentVolumeClaim", "vllm-model-cache"),
        ("ConfigMap", "loradeploy-trust"),  # the trust policy's keys (trust.yaml)
    }
    assert set(base) <= set(overlay)


def test_every_object_is_in_one_namespace() -> None:
    """Namespaced objects (workflow templates included) take the kustomization's namespace,
    and the RoleBinding names the service account there."""
    for folder in (BASE, OVERLAY):
        found = objects(folder)
        namespaces = {d["metadata"].get("namespace") for k, d in found.items() if k[0] != "Namespace"}
        assert namespaces == {found[("Namespace", "ml-models")]["metadata"]["name"]}
        [subject] = found[("RoleBinding", "loradeploy-workflow")]["subjects"]
        assert subject["namespace"] in namespaces


# -- RBAC ----------------------------------------------------------------------------------


def role_rules(name: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = objects(BASE)[("Role", name)]["rules"]
    return rules


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


RESTART = K8S / "optional" / "restart-deployment"


def test_the_workflow_role_grants_exactly_what_the_workflows_need() -> None:
    """Issue 11.7: the always-applied Role holds what every call but restart-deployment's
    needs; nothing about Deployments, no Lease (the lock lives in the registry)."""
    rules = role_rules("loradeploy-workflow")
    cluster = granted([r for r in rules if r["apiGroups"] != ["argoproj.io"]])
    assert cluster == kube.rbac_rules(set(kube.RBAC_NEEDS) - kube.RESTART_CALLS)
    argo = granted([r for r in rules if r["apiGroups"] == ["argoproj.io"]])
    assert argo == {("argoproj.io", "workflowtaskresults", v) for v in ("create", "patch")}
    assert all("*" not in str(rule) for rule in rules)
    assert not [r for r in rules if "deployments" in r["resources"] or "leases" in r["resources"]]


def test_the_opt_in_restart_role_grants_exactly_what_restart_deployment_needs() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(RESTART)}
    rules = docs[("Role", "loradeploy-restart")]["rules"]
    assert granted(rules) == kube.rbac_rules(kube.RESTART_CALLS)
    assert [r["resourceNames"] for r in rules] == [["vllm"]]
    assert docs[("RoleBinding", "loradeploy-restart")]["subjects"] == [
        {"kind": "ServiceAccount", "name": "loradeploy-workflow", "namespace": "ml-models"}
    ]
    assert {d["metadata"]["namespace"] for d in docs.values()} == {"ml-models"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
    # Together the two Roles grant exactly what the code declares.
    base = granted([r for r in role_rules("loradeploy-workflow") if r["apiGroups"] != ["argoproj.io"]])
    assert base | granted(rules) == kube.rbac_rules()


def test_the_workflows_never_run_restart_deployment() -> None:
    """The restart Role is opt-in because no WorkflowTemplate needs it."""
    for doc in render(BASE):
        if doc["kind"] == "WorkflowTemplate":
            assert "restart-deployment" not in json.dumps(doc)


def test_every_kube_api_call_has_its_rbac_needs_listed() -> None:
    calls = {name for name, _ in inspect.getmembers(kube.KubeApi) if not name.startswith("_")}
    assert calls == set(kube.RBAC_NEEDS)


def test_the_rbac_hint_of_every_kubectl_call_is_among_its_needs() -> None:
    """``KubectlApi`` names the permission in each call's ``rbac=`` (for the Forbidden
    message); it must be one the Role grants for that call."""
    tree = ast.parse(inspect.getsource(kube.KubectlApi))
    seen = set()
    for method in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        for call in (n for n in ast.walk(method) if isinstance(n, ast.Call)):
            for keyword in call.keywords:
                if keyword.arg == "rbac" and isinstance(keyword.value, ast.Constant):
                    verb, resource = str(keyword.value.value).split()
                    group = {"deployments": "apps", "inferencemodelrewrites": kube.REWRITE_GROUP}.get(
                        resource, ""
                    )
                    assert (group, resource, verb) in kube.RBAC_NEEDS[method.name], method.name
                    seen.add(method.name)
    assert seen == set(kube.RBAC_NEEDS)


def test_the_binding_gives_the_role_to_the_workflow_account_only() -> None:
    found = objects(BASE)
    binding = found[("RoleBinding", "loradeploy-workflow")]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "loradeploy-workflow",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "loradeploy-workflow", "namespace": "ml-models"}
    ]
    assert [k for k in found if k[0] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")] == [
        ("Role", "loradeploy-workflow"),
        ("RoleBinding", "loradeploy-workflow"),
    ]


def test_the_vllm_pod_has_no_api_access() -> None:
    found = objects(BASE)
    assert found[("ServiceAccount", "vllm")]["automountServiceAccountToken"] is False
    spec = pod_spec()
    assert spec["serviceAccountName"] == "vllm"
    assert spec["automountServiceAccountToken"] is False


def api_requests(argv: list[str]) -> set[tuple[str, str, str]]:
    """What the API server sees for one kubectl command line (kubectl's own behaviour:
    ``cp`` and ``exec`` read the pod, then open an exec stream on pods/exec)."""
    verb, kind = argv[0], argv[1] if len(argv) > 1 else ""
    if verb == "get" and kind == "pods":
        return {("", "pods", "list" if "-l" in argv else "get")}
    if verb in ("get", "patch") and kind == "deployment":
        return {("apps", "deployments", verb)}
    if verb in ("cp", "exec"):
        return {("", "pods", "get"), ("", "pods/exec", "create")}
    if verb == "get" and kind == kube.REWRITES:
        return {(kube.REWRITE_GROUP, "inferencemodelrewrites", "list")}
    if verb == "apply":  # client-side apply: read, then create (new) or patch (existing)
        return {(kube.REWRITE_GROUP, "inferencemodelrewrites", v) for v in ("get", "create", "patch")}
    raise AssertionError(f"a kubectl call this test does not know: {argv}")


def test_the_needs_match_the_kubectl_commands_each_call_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ``KubectlApi`` call run against the fake kubectl: the API requests its
    command lines make are what ``RBAC_NEEDS`` lists for it (plus pods/exec get, which
    clusters before 1.35 check for exec)."""
    monkeypatch.delenv("FAKE_KUBECTL_FAIL", raising=False)
    cluster = FakeCluster(tmp_path / "cluster", monkeypatch)
    cluster.folder.mkdir()
    pod_root = tmp_path / "pod"
    pod_root.mkdir()
    cluster.state["pods"] = [fake_pod("vllm-a", "10.0.0.1", root_map={"/mnt/adapters": str(pod_root)})]
    cluster.state["deployments"] = {f"{NS}/vllm": fake_deployment()}
    api = cluster.api()
    local = tmp_path / "local.txt"
    local.write_text("x", encoding="utf-8")
    rewrite = render_rewrite(
        name="m-live", namespace=NS, pool="vllm", stable_model="m-live", weights={"m@v1": 100}
    )
    calls = {
        "ready_pods": lambda: api.ready_pods(NS, SELECTOR, CONTAINER),
        "copy_to_pod": lambda: api.copy_to_pod(NS, "vllm-a", CONTAINER, local, "/mnt/adapters/f"),
        "exec": lambda: api.exec(NS, "vllm-a", CONTAINER, ["test", "-d", "/mnt/adapters"]),
        "patch_restart": lambda: api.patch_restart(NS, "vllm", "2026-01-01T00:00:00Z"),
        "deployment_status": lambda: api.deployment_status(NS, "vllm"),
        "rewrites": lambda: api.rewrites(NS),
        "apply_rewrite": lambda: api.apply_rewrite(NS, rewrite),
    }
    assert set(calls) == set(kube.RBAC_NEEDS)
    for name, call in calls.items():
        cluster.forget_calls()
        call()
        made = set().union(*(api_requests(argv) for argv in cluster.calls()))
        assert made, name
        assert made <= set(kube.RBAC_NEEDS[name]), name
        assert set(kube.RBAC_NEEDS[name]) - made <= {("", "pods/exec", "get")}, name


# -- base-model aliases (issue 11.2) -------------------------------------------------------


def loradeploy_containers(folder: Path) -> dict[str, dict[str, Any]]:
    """Every container running the steps image: init, sidecar, each workflow template."""
    found = {}
    for doc in render(folder):
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                found[f"{doc['metadata']['name']}/{c['name']}"] = c
        if doc["kind"] == "WorkflowTemplate":
            for t in doc["spec"]["templates"]:
                if "container" in t:
                    found[f"{doc['metadata']['name']}/{t['name']}"] = t["container"]
    return {k: c for k, c in found.items() if "loradeploy" in c["image"]}


@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "overlay"])
def test_every_loradeploy_container_reads_the_config_map(folder: Path) -> None:
    found = loradeploy_containers(folder)
    assert {"vllm/init-load-adapters", "vllm/reconcile", "vllm-deploy/load-adapter"} <= set(found)
    for name, c in found.items():
        sources = [e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])]
        assert "loradeploy-config" in sources, name


def test_an_fp16_mistral_adapter_is_accepted_against_the_served_awq_base(tmp_path: Path) -> None:
    """Issue 11.2: the overlay's ConfigMap, read as the environment by load_settings, maps
    the usual training base to the base vLLM serves, so check_compatible accepts it."""
    from loradeploy.domain.adapter import AdapterInfo, check_compatible
    from loradeploy.errors import IncompatibleAdapterError
    from loradeploy.settings import load_settings

    data = objects(OVERLAY)[("ConfigMap", "loradeploy-config")]["data"]
    settings = load_settings({}, {"LORADEPLOY_HOME": str(tmp_path), **data}, tmp_path)
    served = container("vllm", OVERLAY)["args"][2]
    assert f"--base-model-name={served}" in container("init-load-adapters", OVERLAY)["args"]
    assert settings.base_model_aliases == {"mistralai/Mistral-7B-v0.1": served}
    info = AdapterInfo(
        peft_type="LORA",
        base_model="mistralai/Mistral-7B-v0.1",
        rank=16,
        alpha=32,
        target_modules=["q_proj"],
        files={},
        total_bytes=0,
    )
    check = {"served_names": [served], "max_lora_rank": settings.max_lora_rank, "label": "adapter"}
    check_compatible(info, base_aliases=settings.base_model_aliases, **check)
    with pytest.raises(IncompatibleAdapterError):  # the check can fail: no alias, refused
        check_compatible(info, base_aliases={}, **check)


def test_a_flag_wins_over_the_config_map_and_bad_pairs_name_the_setting(tmp_path: Path) -> None:
    from loradeploy.errors import UsageError
    from loradeploy.settings import load_settings

    env = {"LORADEPLOY_HOME": str(tmp_path), "LORADEPLOY_BASE_MODEL_ALIASES": "a=b, c=d"}
    assert load_settings({}, env, tmp_path).base_model_aliases == {"a": "b", "c": "d"}
    flags = {"base_model_alias": ["x=y"]}
    assert load_settings(flags, env, tmp_path).base_model_aliases == {"x": "y"}
    with pytest.raises(UsageError, match="LORADEPLOY_BASE_MODEL_ALIASES"):
        load_settings({}, {**env, "LORADEPLOY_BASE_MODEL_ALIASES": "broken"}, tmp_path)


# -- after a vLLM restart inside the pod (issue 11.3) --------------------------------------


def flag(args: list[str], name: str) -> str:
    [value] = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    return value


def test_the_sidecar_keeps_the_manifest_and_answers_readiness() -> None:
    sidecar = container("reconcile")
    assert "--write-manifest" in sidecar["args"]
    assert flag(sidecar["args"], "--base-model-name") == container("vllm")["args"][2]
    assert flag(sidecar["args"], "--adapters-root") == "/mnt/adapters"
    marker = flag(sidecar["args"], "--ready-file")
    assert sidecar["readinessProbe"]["exec"]["command"] == ["test", "-f", marker]
    tmp = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert tmp[str(Path(marker).parent)] == "loradeploy-tmp"  # writable with a read-only root
    # A sidecar that waits minutes between failed rounds keeps a restarted pod out of the
    # Service that long: the backoff stays short.
    assert float(flag(sidecar["args"], "--max-backoff")) <= 120


def sidecar_round(registry: Any, vllm: Any, transport: Any) -> Any:
    from loradeploy.coordination import Actor
    from loradeploy.domain.policy import AdapterPolicy
    from loradeploy.steps.reconcile import ReconcileRequest, reconcile

    args = container("reconcile")["args"]
    request = ReconcileRequest(
        model="aws-rag-qa",
        slot_for_alias={"live": flag(args, "--live-slot"), "staged": flag(args, "--candidate-slot")},
        write_manifest="--write-manifest" in args,
        base_model_name=flag(args, "--base-model-name"),
        policy=AdapterPolicy(max_lora_rank=64),
    )
    return reconcile(
        request,
        registry=registry,
        replicas=[vllm],
        transport=transport,
        actor=Actor(who="test", step="reconcile", run_id="r"),
    )


def test_a_vllm_restart_starts_from_what_the_aliases_name_now(tmp_path: Path) -> None:
    """Issue 11.3: the pod was created with live=1; live moves to 2 (promote), then back
    to 1 (rollback). After each sidecar round the manifest names the served version, so
    vLLM restarting inside the pod (the launcher re-reads it) starts with that version,
    not with the one of pod creation."""
    from loradeploy.clients.files import LocalFolderTransport
    from loradeploy.clients.vllm import VllmClient
    from support.fake_registry import FakeRegistry
    from support.fakes import FakeClock, FakeVllmServer
    from support.synthetic import write_adapter

    clock = FakeClock()
    registry = FakeRegistry(model="aws-rag-qa")
    for version in ("1", "2"):
        registry.add_version(version, write_adapter(tmp_path / "src" / f"v{version}", fill=int(version)))
    transport = LocalFolderTransport(tmp_path / "adapters")
    manifest = tmp_path / "adapters" / "lora-modules.json"
    server = FakeVllmServer(clock=clock)
    live = flag(container("reconcile")["args"], "--live-slot")
    served_base = container("vllm")["args"][2]
    local = "http://127.0.0.1:8000"
    with VllmClient(local, transport=server.transport(), clock=clock, sleep=clock.sleep) as vllm:
        for version in ("1", "2", "1"):
            registry.aliases = {"live": version}
            result = sidecar_round(registry, vllm, transport)
            assert result.passed, result.checks
            [module] = [json.loads(m) for m in launch(manifest)[4:]]
            assert module == {
                "name": live,
                "path": server.adapters[live],
                "base_model_name": served_base,
            }
            assert module["path"].endswith(f"-v{version}")


def test_readiness_follows_the_last_round_that_could_look() -> None:
    from loradeploy.errors import ServerUnavailableError
    from loradeploy.results import Check, StepResult
    from loradeploy.steps.reconcile import ready

    in_sync = StepResult(step="reconcile", checks=[Check(name="live", passed=True)])
    drift = StepResult(step="reconcile", checks=[Check(name="live", passed=False)])
    assert ready(in_sync, None) is True
    assert ready(drift, None) is False
    assert ready(None, ServerUnavailableError("MLflow unreachable")) is None  # keep the last answer


def test_a_manifest_that_cannot_be_written_makes_the_round_fail(tmp_path: Path) -> None:
    from loradeploy.clients.vllm import VllmClient
    from loradeploy.errors import PermanentError
    from support.fake_registry import FakeRegistry
    from support.fakes import FakeClock, FakeVllmServer

    class Unwritable:
        root = "/mnt/adapters"

        def write_manifest(self, modules: list[dict[str, str]]) -> None:
            raise PermanentError("adapters folder is read-only")

    clock = FakeClock()
    registry = FakeRegistry(model="aws-rag-qa")  # no alias: nothing to repair
    server = FakeVllmServer(clock=clock)
    local = "http://127.0.0.1:8000"
    with VllmClient(local, transport=server.transport(), clock=clock, sleep=clock.sleep) as vllm:
        result = sidecar_round(registry, vllm, Unwritable())
    assert not result.passed
    assert [c.name for c in result.checks if not c.passed] == ["lora-modules.json"]


# -- Pod Security Standard "restricted" (issue 11.6) ---------------------------------------

ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir",
    "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


def restricted_violations(pod: dict[str, Any], containers: list[dict[str, Any]]) -> list[str]:
    """What the "restricted" Pod Security Standard refuses in a pod (its admission rules,
    as documented for Kubernetes 1.33+), plus a writable root filesystem, which this
    project refuses too. Empty: the pod is admitted in a restricted namespace."""
    found = []
    context = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key) is True:
            found.append(f"pod {key}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]

        def effective(key: str) -> Any:
            return sc.get(key, context.get(key))  # noqa: B023

        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation not false")
        if effective("runAsNonRoot") is not True:
            found.append(f"{name}: runAsNonRoot not true")
        if effective("runAsUser") == 0 or effective("runAsUser") is None:
            found.append(f"{name}: no numeric non-zero runAsUser")
        seccomp = (effective("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile {seccomp}")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities not dropped")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities")
        if any(port.get("hostPort") for port in c.get("ports", [])):
            found.append(f"{name}: hostPort")
        if sc.get("readOnlyRootFilesystem") is not True:
            found.append(f"{name}: writable root filesystem")
    return found


def every_pod(folder: Path) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Pod spec and containers of every pod the manifests create: the Deployment's, and
    one per WorkflowTemplate template (its own pod-level context, else the workflow's)."""
    pods = {}
    for doc in render(folder):
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            pods[doc["metadata"]["name"]] = (spec, spec.get("initContainers", []) + spec["containers"])
        if doc["kind"] == "WorkflowTemplate":
            for t in doc["spec"]["templates"]:
                if "container" in t:
                    pod = {
                        "securityContext": t.get("securityContext", doc["spec"].get("securityContext")),
                        "volumes": doc["spec"].get("volumes", []),
                    }
                    pods[f"{doc['metadata']['name']}/{t['name']}"] = (
                        pod,
                        [{"name": t["name"], **t["container"]}],
                    )
    return pods


@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "overlay"])
def test_every_pod_meets_the_restricted_pod_security_standard(folder: Path) -> None:
    pods = every_pod(folder)
    assert "vllm" in pods and len(pods) >= 8
    assert {
        pod: restricted_violations(*spec) for pod, spec in pods.items() if restricted_violations(*spec)
    } == {}


def test_the_restricted_check_can_fail() -> None:
    spec, containers = copy.deepcopy(every_pod(BASE)["vllm"])
    vllm = next(c for c in containers if c["name"] == "vllm")
    vllm["securityContext"] = {"allowPrivilegeEscalation": False}  # as it was before issue 11
    del spec["securityContext"]["runAsNonRoot"]
    found = restricted_violations(spec, containers)
    assert "vllm: capabilities not dropped" in found
    assert "vllm: runAsNonRoot not true" in found
    assert "vllm: writable root filesystem" in found


def test_vllm_writes_only_to_its_volumes() -> None:
    """A read-only root filesystem: HOME and every cache vLLM, torch, Triton and Hugging
    Face write lie on a mounted volume."""
    vllm = container("vllm")
    mounts = [m["mountPath"] for m in vllm["volumeMounts"]]
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    for key in ("HOME", "HF_HOME", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert any(env[key] == m or env[key].startswith(m.rstrip("/") + "/") for m in mounts), key
    assert env["USER"]  # getpass.getuser() without a passwd entry for uid 10001


# -- availability (issue 11.8) -------------------------------------------------------------


def gibibytes(quantity: str) -> float:
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    raise AssertionError(f"quantity {quantity!r}: use Ki, Mi, Gi or Ti")


@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "overlay"])
def test_a_disruption_takes_at_most_one_pod_and_replicas_spread_over_nodes(folder: Path) -> None:
    found = objects(folder)
    labels = found[("Deployment", "vllm")]["spec"]["template"]["metadata"]["labels"]
    pdb = found[("PodDisruptionBudget", "vllm")]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [spread] = pod_spec(folder)["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["maxSkew"] == 1
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()


def test_in_flight_requests_finish_before_vllm_stops() -> None:
    spec, vllm = pod_spec(), container("vllm")
    pause = vllm["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 5 <= pause < spec["terminationGracePeriodSeconds"] - 30  # and time left to drain


@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "overlay"])
def test_the_scheduler_accounts_for_every_emptydir(folder: Path) -> None:
    """The disk the pod's emptyDirs may fill is requested (ephemeral-storage), so the
    scheduler places the pod where that disk is."""
    spec = pod_spec(folder)
    on_disk = sum(
        gibibytes(v["emptyDir"]["sizeLimit"])
        for v in spec["volumes"]
        if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"
    )
    requested = sum(
        gibibytes(c["resources"]["requests"].get("ephemeral-storage", "0Gi"))
        for c in spec["containers"]  # init containers run before, and reuse the same disk
    )
    assert on_disk > 0 and requested >= on_disk, (requested, on_disk)


def test_the_overlay_keeps_the_model_cache_across_pods_and_schedules_on_gpu_nodes() -> None:
    found = objects(OVERLAY)
    spec = pod_spec(OVERLAY)
    [cache] = [v for v in spec["volumes"] if v["name"] == "model-cache"]
    claim = found[("PersistentVolumeClaim", cache["persistentVolumeClaim"]["claimName"])]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica mounts it
    assert {"model-cache": "/cache"}.items() <= {
        m["name"]: m["mountPath"] for m in container("vllm", OVERLAY)["volumeMounts"]
    }.items()
    assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] and spec["runtimeClassName"]


# -- hardening (issue 11.10) ---------------------------------------------------------------


def test_every_image_of_the_overlay_is_pinned_by_digest() -> None:
    pinned = re.compile(r"[a-z0-9./-]+(:[\w.-]+)?@sha256:[0-9a-f]{64}")
    found = set().union(*(images(doc) for doc in render(OVERLAY)))
    assert len(found) == 2
    for image in found:
        assert pinned.fullmatch(image), image


# -- policy scanner (issue 11, "Checks") ---------------------------------------------------

EXCEPTIONS = REPO / "deploy" / "policy-exceptions.yaml"
CANARY = "policy-canary"  # a deliberately bad Deployment, scanned alongside: the scan can fail


def checkov_binary() -> Path | None:
    """checkov lives in its own virtualenv (its pins conflict with the project's): the
    Makefile's .loradeploy/envs/checkov, or LORADEPLOY_CHECKOV, or one on PATH."""
    if os.environ.get("LORADEPLOY_CHECKOV"):
        return Path(os.environ["LORADEPLOY_CHECKOV"])
    for candidate in (REPO / ".loradeploy" / "envs" / "checkov" / "bin" / "checkov",):
        if candidate.exists():
            return candidate
    found = shutil.which("checkov")
    return Path(found) if found else None


@pytest.fixture(scope="session")
def policy_findings(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    """(check id, resource) of every failed checkov check on the rendered example overlay
    (one file per object, so the Kubernetes and Argo frameworks each see theirs), the
    opt-in restart Role, and the canary. One run per session, a few seconds."""
    binary = checkov_binary()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("checkov is not installed: 'make setup' builds .loradeploy/envs/checkov")
        pytest.skip("checkov not installed (make setup, or LORADEPLOY_CHECKOV=path)")
    folder = tmp_path_factory.mktemp("policy-scan")
    docs = render(OVERLAY) + render(K8S / "optional" / "restart-deployment")
    canary = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    canary["metadata"]["name"] = CANARY
    canary["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    for doc in [*docs, canary]:
        name = f"{doc['kind']}-{doc['metadata']['name']}.yaml"
        (folder / name).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    done = subprocess.run(
        [
            *(str(binary), "-d", str(folder), "--framework", "kubernetes", "argo_workflows"),
            *("--output", "json", "--quiet", "--skip-download", "--compact"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "argo_workflows"}
    assert all(r["summary"]["parsing_errors"] == 0 for r in reports)
    return {(f["check_id"], f["resource"]) for r in reports for f in r["results"]["failed_checks"]}


def policy_exceptions() -> dict[tuple[str, str], str]:
    entries = yaml.safe_load(EXCEPTIONS.read_text(encoding="utf-8"))["exceptions"]
    assert all(len(entry["reason"]) > 40 for entry in entries)  # a reason, not a shrug
    return {(entry["check"], entry["resource"]): entry["reason"] for entry in entries}


def test_the_scanner_sees_a_privileged_container(policy_findings: set[tuple[str, str]]) -> None:
    canary = {check for check, resource in policy_findings if CANARY in resource}
    assert "CKV_K8S_16" in canary  # privileged
    assert "CKV_K8S_20" in canary  # allowPrivilegeEscalation


def test_every_policy_finding_is_fixed_or_listed_with_its_reason(
    policy_findings: set[tuple[str, str]],
) -> None:
    found = {finding for finding in policy_findings if CANARY not in finding[1]}
    listed = policy_exceptions()
    assert found - set(listed) == set(), (
        "fix these, or list them with a reason in deploy/policy-exceptions.yaml"
    )
    assert set(listed) - found == set(), "no longer found: remove from deploy/policy-exceptions.yaml"


def test_only_this_namespace_and_labelled_clients_reach_vllm() -> None:
    found = objects(BASE)
    policy = found[("NetworkPolicy", "vllm")]["spec"]
    labels = found[("Deployment", "vllm")]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]  # egress (MLflow, Hugging Face) stays open
    [rule] = policy["ingress"]
    assert {"podSelector": {}} in rule["from"]  # the workflow steps, addressing each pod
    assert rule["ports"] == [{"port": container("vllm")["ports"][0]["name"], "protocol": "TCP"}]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")
def test_an_overlay_moves_every_object_to_its_namespace(tmp_path: Path) -> None:
    """Issue 11.9: nothing hard-codes ml-models: kubectl kustomize of an overlay with
    another namespace puts every object, the workflows and the RoleBinding's subject there."""
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    overlay = tmp_path / "deploy" / "k8s" / "overlays" / "example"
    spec = yaml.safe_load((overlay / "kustomization.yaml").read_text(encoding="utf-8"))
    spec["namespace"] = "team-llm"
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    done = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=True
    )
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {"team-llm"}
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"] == ["team-llm"]
    [binding] = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["subjects"][0]["namespace"] == "team-llm"
    assert "ml-models" not in done.stdout


# -- signed adapters: the trust policy reaches every loading path -------------------------------


def test_every_loading_container_mounts_the_trust_policy() -> None:
    """Init container, reconcile sidecar and every workflow step see the same public keys,
    read only; the overlay turns the policy on and requires a signature."""
    for name, c in loradeploy_containers(OVERLAY).items():
        mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
        assert mounts["trust"]["mountPath"] == "/etc/loradeploy/trust", name
        assert mounts["trust"].get("readOnly") is True, name
    [volume] = [v for v in pod_spec(OVERLAY)["volumes"] if v["name"] == "trust"]
    assert volume["configMap"] == {"name": "loradeploy-trust", "optional": True}
    for doc in render(OVERLAY):
        if doc["kind"] == "WorkflowTemplate":
            volumes = {v["name"]: v for v in doc["spec"].get("volumes", [])}
            assert volumes["trust"]["configMap"]["name"] == "loradeploy-trust", doc["metadata"]["name"]


def test_the_overlay_policy_loads_as_a_signature_requiring_policy(tmp_path: Path) -> None:
    """The ConfigMap values, read by load_settings as the environment, with the key file
    where the pod mounts it: the same policy the steps would enforce."""
    from loradeploy.clients.signing import load_policy
    from loradeploy.settings import load_settings

    found = objects(OVERLAY)
    data = dict(found[("ConfigMap", "loradeploy-config")]["data"])
    key_path = Path(data["LORADEPLOY_TRUSTED_KEYS"])
    assert key_path.parent == Path("/etc/loradeploy/trust")
    mounted = tmp_path / key_path.name  # the pod's mount, here a folder of this test
    mounted.write_text(found[("ConfigMap", "loradeploy-trust")]["data"][key_path.name])
    data["LORADEPLOY_TRUSTED_KEYS"] = str(mounted)
    settings = load_settings({}, {"LORADEPLOY_HOME": str(tmp_path), **data}, tmp_path)
    assert settings.require_signature is True and settings.trusted_keys == [mounted]
    policy = load_policy(settings.trusted_keys, settings.trusted_cas, require_signature=True)
    assert policy.configured and len(policy.keys) == 1


def test_staging_has_room_for_the_largest_adapter() -> None:
    """Downloads are staged in /tmp (loradeploy-tmp), outside the served volume: its limit
    must hold an adapter at the default 4 GiB cap."""
    from loradeploy.domain.adapter import DEFAULT_MAX_TOTAL_BYTES

    [tmp] = [v for v in pod_spec(OVERLAY)["volumes"] if v["name"] == "loradeploy-tmp"]
    assert gibibytes(tmp["emptyDir"]["sizeLimit"]) * (1 << 30) > DEFAULT_MAX_TOTAL_BYTES

"""deploy/argo: the committed WorkflowTemplates are what deploy/argo/workflows.py renders,
survive a Hera round trip without dropped keys (Argo's schema does not catch unknown
fields; Hera's models do), and hold the facts the design relies on: one mutex per model
(Argo v4 form), retries only on exit 75, results as output parameters, an exit handler,
the RBAC service account, and only commands and flags the CLI has.

Validated offline only: no Argo server or cluster is involved.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer
import yaml
from hera.workflows import WorkflowTemplate

from loradeploy.cli import app
from loradeploy.errors import ExitCode
from loradeploy.results import StepResult
from support.kustomize import render

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "deploy" / "argo"
NAMES = ["vllm-deploy", "vllm-promote", "vllm-rollback", "vllm-canary"]
GATES = {"compare-decision", "perf-decision"}  # written concurrently; flags per the issue


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("argo_workflows", ARGO / "workflows.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


builder = load_builder()


def committed(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ARGO / f"{name}.yaml").read_text(encoding="utf-8"))
    return data


def templates(name: str) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in committed(name)["spec"]["templates"]}


def loradeploy_templates(name: str) -> list[dict[str, Any]]:
    return [t for t in templates(name).values() if t.get("container", {}).get("command") == ["loradeploy"]]


def main_steps(name: str) -> list[list[str]]:
    return [[s["template"] for s in group] for group in templates(name)["main"]["steps"]]


# -- drift and round trip ------------------------------------------------------------------


def test_committed_yaml_is_what_the_python_renders() -> None:
    rendered = builder.rendered()
    assert sorted(path.name for path in rendered) == sorted(f"{n}.yaml" for n in NAMES)
    for path, text in rendered.items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale: run 'make workflows'"


def test_no_other_yaml_in_the_folder() -> None:
    assert sorted(p.stem for p in ARGO.glob("*.yaml") if p.name != "kustomization.yaml") == sorted(NAMES)


def test_the_kustomization_lists_exactly_the_rendered_templates() -> None:
    """deploy/k8s/base includes this folder: a template missing here is never applied."""
    spec = yaml.safe_load((ARGO / "kustomization.yaml").read_text(encoding="utf-8"))
    assert spec["resources"] == [f"{name}.yaml" for name in NAMES]


@pytest.mark.parametrize("name", NAMES)
def test_hera_round_trip_drops_no_key(name: str) -> None:
    text = (ARGO / f"{name}.yaml").read_text(encoding="utf-8")
    assert WorkflowTemplate.from_yaml(text).to_dict() == yaml.safe_load(text)


def test_the_round_trip_catches_a_misspelled_field() -> None:
    """The check above can fail: an unknown key is dropped by Hera's models."""
    data = committed("vllm-deploy")
    data["spec"]["templates"][0]["retrystrategy"] = data["spec"]["templates"][0].pop("retryStrategy")
    assert WorkflowTemplate.from_dict(data).to_dict() != data


# -- the facts -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_one_mutex_per_model_in_the_v4_form(name: str) -> None:
    spec = committed(name)["spec"]
    assert spec["synchronization"] == {"mutexes": [{"name": "loradeploy-{{workflow.parameters.model-name}}"}]}
    text = (ARGO / f"{name}.yaml").read_text(encoding="utf-8")
    assert not re.search(r"^\s*(mutex|semaphore):", text, re.MULTILINE)  # removed in Argo v4


def retried(expression: str, status: str, exit_code: str) -> bool:
    """Evaluate a retry expression of the form the templates use (``||``, ``==``,
    ``asInt``, ``lastRetry.status``/``exitCode``) for one failed attempt."""
    python = expression.replace("||", " or ").replace("&&", " and ").replace("asInt(", "int(")
    names = set(re.findall(r"[A-Za-z_.]+", re.sub(r'"[^"]*"', "", python)))
    assert names <= {"or", "and", "int", "lastRetry.status", "lastRetry.exitCode"}, names
    python = python.replace("lastRetry.status", "status").replace("lastRetry.exitCode", "exit_code")
    return bool(eval(python, {"int": int}, {"status": status, "exit_code": exit_code}))


@pytest.mark.parametrize("name", NAMES)
def test_steps_retry_transient_failures_and_infrastructure_errors(name: str) -> None:
    """Issue 11.9: exit 75 and infrastructure errors (evicted, preempted, node lost: status
    Error) are retried; a failed check (1), a usage error (2) or a permanent one (3) is not.
    Argo retries only when policy and expression agree, hence Always."""
    steps = loradeploy_templates(name)
    assert steps
    transient = str(int(ExitCode.TRANSIENT))
    for t in steps:
        strategy = t["retryStrategy"]
        assert strategy["retryPolicy"] == "Always"
        assert int(strategy["limit"]) >= 1
        expression = strategy["expression"]
        assert retried(expression, "Failed", transient)
        assert retried(expression, "Error", "-1")
        for code in ("1", "2", "3"):
            assert not retried(expression, "Failed", code), code
    assert "retryStrategy" not in templates(name)["report"]


@pytest.mark.parametrize("name", NAMES)
def test_step_results_are_output_parameters(name: str) -> None:
    files = set(StepResult(step="x", model="m", version="1", slot="s", source="alias:a").outputs())
    for t in loradeploy_templates(name):
        out_dir = next(a.split("=", 1)[1] for a in t["container"]["args"] if a.startswith("--output-dir="))
        params = {p["name"]: p["valueFrom"]["path"] for p in t["outputs"]["parameters"]}
        assert params.pop("result") == f"{out_dir}/result.json"
        assert params == {key: f"{out_dir}/{key}" for key in files}


@pytest.mark.parametrize("name", NAMES)
def test_each_step_has_a_run_key_that_survives_its_retries(name: str) -> None:
    """A retry of a step recognises the alias plan its interrupted attempt left only by
    this key (coordination/plans.py): the workflow's uid and the step, never the pod."""
    keys = []
    for t in loradeploy_templates(name):
        env = {e["name"]: e.get("value") for e in t["container"]["env"]}
        assert env["LORADEPLOY_RUN_KEY"] == "{{workflow.uid}}/" + t["name"]
        keys.append(env["LORADEPLOY_RUN_KEY"])
    assert keys and len(keys) == len(set(keys))


@pytest.mark.parametrize("name", NAMES)
def test_exit_handler_and_service_account(name: str) -> None:
    spec = committed(name)["spec"]
    assert spec["onExit"] == "report"
    assert "report" in templates(name)
    accounts = {(d["kind"], d["metadata"]["name"]) for d in render(REPO / "deploy" / "k8s" / "base")}
    assert ("ServiceAccount", spec["serviceAccountName"]) in accounts
    assert ("RoleBinding", spec["serviceAccountName"]) in accounts
    assert "namespace" not in committed(name)["metadata"]  # set by kustomize, never hard-coded
    assert "ml-models" not in (ARGO / f"{name}.yaml").read_text(encoding="utf-8")


def test_deploy_runs_the_three_steps_in_order_and_passes_the_version() -> None:
    assert main_steps("vllm-deploy") == [["load-adapter"], ["smoke-test"], ["set-staged-alias"]]
    groups = templates("vllm-deploy")["main"]["steps"]
    version = "{{steps.load-adapter.outputs.parameters.version}}"
    for group in groups[1:]:
        assert group[0]["arguments"]["parameters"] == [{"name": "version", "value": version}]
    staged = templates("vllm-deploy")["set-staged-alias"]["container"]["args"]
    assert "--source=version:{{inputs.parameters.version}}" in staged


def test_promote_gates_run_one_after_the_other_before_promoting() -> None:
    assert main_steps("vllm-promote") == [["compare-decision"], ["perf-decision"], ["promote-adapter"]]
    for gate in GATES:
        args = templates("vllm-promote")[gate]["container"]["args"]
        assert args[0] == gate
        flags = {a.split("=", 1)[0] for a in args[1:]}
        assert flags == {
            "--model-name",
            "--candidate-slot",
            "--live-slot",
            "--vllm-url",
            "--output-dir",
            "--pods",
        }


def test_rollback_promotes_previous() -> None:
    assert main_steps("vllm-rollback") == [["promote-adapter"]]
    assert "--source-alias=previous" in templates("vllm-rollback")["promote-adapter"]["container"]["args"]


def test_parameters_default_to_the_specification() -> None:
    deploy = {p["name"]: p["value"] for p in committed("vllm-deploy")["spec"]["arguments"]["parameters"]}
    assert deploy == {
        "model-name": "mistral-7b-lora",
        "source": "alias:candidate",
        "vllm-url": "http://vllm-service:8000",
        "live-slot": "aws-rag-qa-live",
        "candidate-slot": "aws-rag-qa-candidate",
        "num-requests": "3",
        "max-latency": "30",
    }


@pytest.mark.parametrize("name", NAMES)
def test_every_referenced_parameter_is_declared(name: str) -> None:
    text = (ARGO / f"{name}.yaml").read_text(encoding="utf-8")
    declared = {p["name"] for p in committed(name)["spec"]["arguments"]["parameters"]}
    assert set(re.findall(r"\{\{workflow\.parameters\.([\w-]+)\}\}", text)) <= declared


def cli_options() -> dict[str, set[str]]:
    group: Any = typer.main.get_command(app)
    return {
        name: {opt for param in command.params for opt in getattr(param, "opts", [])}
        for name, command in group.commands.items()
    }


def script_commands(script: str) -> list[tuple[str, set[str]]]:
    """Each ``loradeploy COMMAND --flag=...`` of an exit handler's shell script."""
    return [
        (command, set(re.findall(r"(--[a-z-]+)=", rest)))
        for command, rest in re.findall(r"^\s*loradeploy ([a-z-]+)([^\n|]*)", script, re.MULTILINE)
    ]


@pytest.mark.parametrize("name", NAMES)
def test_every_command_and_flag_exists_in_the_cli(name: str) -> None:
    """Catches a renamed flag; commands written in parallel are checked once in the CLI."""
    options = cli_options()
    report = templates(name)["report"]["container"]["command"][2]
    used = script_commands(report)
    assert used and used[-1][0] == "status"
    for command, flags in used:
        assert command in options, command
        assert flags <= options[command], (command, flags - options[command])
    for t in loradeploy_templates(name):
        command, *args = t["container"]["args"]
        if command in GATES and command not in options:
            continue  # being written in parallel (issue: compare-decision, perf-decision)
        assert command in options, command
        for arg in args:
            assert arg.split("=", 1)[0] in options[command], (command, arg)


def test_the_script_parser_finds_every_command_and_flag() -> None:
    """The check above can fail: it sees each command of a handler and its flags."""
    script = templates("vllm-canary")["report"]["container"]["command"][2]
    assert [c for c, _ in script_commands(script)] == ["reconcile", "status"]
    assert {"--model-name", "--transport", "--namespace"} <= script_commands(script)[0][1]


VLLM_ONLY = {"smoke-test", "set-staged-alias", *GATES}  # talk to vLLM, copy no files


@pytest.mark.parametrize("name", NAMES)
def test_steps_address_every_ready_pod_not_the_service(name: str) -> None:
    """Issue 11.4: steps that copy files use the kubectl transport; the others, and the
    exit handler's status, address every Ready pod found with kubectl in the workflow's
    own namespace."""
    pods = "--pods={{workflow.namespace}}/app=vllm"
    for t in loradeploy_templates(name):
        command, *args = t["container"]["args"]
        if command in VLLM_ONLY:
            assert pods in args, command
        else:
            assert "--transport=kubectl" in args, command
            assert "--namespace={{workflow.namespace}}" in args, command
    report = templates(name)["report"]["container"]
    assert '--pods="$PODS"' in report["command"][2]
    assert {"name": "PODS", "value": pods.split("=", 1)[1]} in report["env"]


@pytest.mark.parametrize("name", NAMES)
def test_a_hung_workflow_cannot_hold_the_mutex_forever(name: str) -> None:
    """Issue 11.9: a deadline for the workflow and for each attempt of a step, and the
    finished workflow and its pods cleaned up."""
    spec = committed(name)["spec"]
    assert 0 < int(spec["activeDeadlineSeconds"]) <= 6 * 3600
    assert spec["ttlStrategy"]["secondsAfterSuccess"] > 0
    assert spec["ttlStrategy"]["secondsAfterFailure"] >= spec["ttlStrategy"]["secondsAfterSuccess"]
    assert spec["podGC"]["strategy"] in ("OnPodSuccess", "OnPodCompletion", "OnWorkflowSuccess")
    for t in templates(name).values():
        if "container" in t:
            assert 0 < int(t["activeDeadlineSeconds"]) <= int(spec["activeDeadlineSeconds"]), t["name"]


@pytest.mark.parametrize("name", NAMES)
def test_every_template_has_a_pod_security_context_and_resources(name: str) -> None:
    """A namespace with a ResourceQuota or the restricted Pod Security Standard admits
    every pod, the exit handler's included."""
    spec = committed(name)["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    for t in templates(name).values():
        if "container" not in t:
            continue
        context = t["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, t["name"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, t["name"]
        resources = t["container"]["resources"]
        assert {"cpu", "memory", "ephemeral-storage"} <= set(resources["requests"]), t["name"]
        assert {"memory", "ephemeral-storage"} <= set(resources["limits"]), t["name"]
        # Outputs on the emptyDir (read-only root filesystem, as Argo's empty-dir docs advise).
        mounts = {m["mountPath"]: m["name"] for m in t["container"].get("volumeMounts", [])}
        assert mounts.get("/tmp") == "tmp", t["name"]
    assert [v["name"] for v in spec["volumes"]] == ["tmp", "trust"]  # trust: the signing policy's keys


# -- vllm-canary (issue 12) ----------------------------------------------------------------


def test_canary_runs_one_step_with_the_flags_of_the_interface() -> None:
    """The flags and defaults fixed for issue 12 (notes: loradeploy canary)."""
    assert main_steps("vllm-canary") == [["canary"]]
    args = templates("vllm-canary")["canary"]["container"]["args"]
    assert args[0] == "canary"
    flags = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args[1:]}
    tunable = [
        "steps",
        "interval",
        "max-error-rate",
        "max-p50-ratio",
        "max-p95-ratio",
        "min-requests",
        "max-waits",
    ]
    for name in ["model-name", "source-alias", "stable-name", *tunable]:
        assert flags.pop(f"--{name}") == builder.p(name), name
    assert flags == {
        "--transport": "kubectl",
        "--namespace": "{{workflow.namespace}}",
        "--output-dir": "/tmp/out",
    }
    defaults = {p["name"]: p["value"] for p in committed("vllm-canary")["spec"]["arguments"]["parameters"]}
    assert {k: defaults[k] for k in ["model-name", "source-alias", "stable-name", *tunable]} == {
        "model-name": "mistral-7b-lora",
        "source-alias": "staged",
        "stable-name": "aws-rag-qa-live",
        "steps": "5,25,50,100",
        "interval": "60",
        "max-error-rate": "0.01",
        "max-p50-ratio": "1.5",
        "max-p95-ratio": "1.75",
        "min-requests": "20",
        "max-waits": "3",
    }


def test_a_failed_canary_analysis_is_not_retried_a_held_lock_is() -> None:
    """Exit 1 (analysis failed, already rolled back) ends the workflow; 75 (the model's
    lock held, e.g. by the attempt a lost pod left) waits and tries again."""
    expression = templates("vllm-canary")["canary"]["retryStrategy"]["expression"]
    assert not retried(expression, "Failed", str(int(ExitCode.CHECK_FAILED)))
    assert int(ExitCode.CHECK_FAILED) == 1
    assert retried(expression, "Failed", "75")


def test_a_canary_that_did_not_succeed_is_reconciled_on_exit() -> None:
    """A canary left interrupted (retries used up, the workflow's deadline) is finished
    or undone by reconcile in the exit handler, over kubectl in the workflow's namespace;
    a succeeded one is not touched, and a reconcile failure is printed, not hidden."""
    report = templates("vllm-canary")["report"]["container"]
    script = report["command"][2]
    env = {e["name"]: e.get("value") for e in report["env"]}
    assert env["NAMESPACE"] == "{{workflow.namespace}}"
    assert env["STATUS"] == "{{workflow.status}}"
    guard = script.index('if [ "$STATUS" != "Succeeded" ]; then')
    reconcile = script.index("loradeploy reconcile")
    assert guard < reconcile < script.index("fi\n")
    line = script[reconcile:].splitlines()[0]
    assert '--model-name="$MODEL"' in line and "--transport=kubectl" in line
    assert '--namespace="$NAMESPACE"' in line
    assert "|| echo" in line and "by hand" in line
    assert "retryStrategy" not in templates("vllm-canary")["report"]

"""The Argo WorkflowTemplates that run loradeploy's steps, built with Hera.

This file is the source of truth; the YAML next to it is rendered from it with
``make workflows`` (``python deploy/argo/workflows.py``) and committed. A unit test
fails when the committed YAML and this file disagree.

    vllm-deploy    load-adapter -> smoke-test -> set-staged-alias
    vllm-promote   compare-decision -> perf-decision -> promote-adapter
                   (a failed gate exits 1: the workflow stops there, nothing promoted)
    vllm-rollback  promote-adapter --source-alias=previous
    vllm-canary    canary (routed mode: weight moves step by step to the candidate's
                   versioned name; a failed analysis rolls back and exits 1, not retried)

Every workflow: one mutex per registered model (Argo v4 ``synchronization.mutexes``),
retries only on exit code 75 (loradeploy's TRANSIENT), each step's ``result.json`` and
per-value files as output parameters, an exit handler that reports the outcome (the
canary's also runs ``reconcile`` when the workflow did not succeed), and the
``loradeploy-workflow`` service account (deploy/k8s/base/rbac.yaml).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hera.workflows import Container, Env, Parameter, RetryStrategy, Steps, WorkflowTemplate
from hera.workflows import models as m

from loradeploy.errors import ExitCode
from loradeploy.results import StepResult

HERE = Path(__file__).resolve().parent
HEADER = "# Rendered from deploy/argo/workflows.py by 'make workflows'. Do not edit by hand.\n"

SERVICE_ACCOUNT = "loradeploy-workflow"
# The steps image as the base names it. Never changed here: an overlay's `images:` entry
# rewrites it in every template (deploy/k8s/base/kustomizeconfig.yaml), as it does for
# the vLLM pod's init container and sidecar. No namespace either: kustomize sets it, and
# the steps read theirs from {{workflow.namespace}}.
IMAGE = "loradeploy:0.1.0"
NAMESPACE = "{{workflow.namespace}}"
# Steps that only talk to vLLM address every Ready pod of this selector (found with
# kubectl, like load-adapter's transport), never one random pod behind the Service.
PODS = f"--pods={NAMESPACE}/app=vllm"
OUT = "/tmp/out"  # every step's --output-dir
TRANSIENT = int(ExitCode.TRANSIENT)
# Retried: loradeploy's transient failures (exit 75), and failures of the infrastructure
# (eviction, preemption, node loss: status Error, no exit code of ours). Argo retries only
# when retryPolicy and expression both agree, so the policy is Always. Every step is
# idempotent (a retry finds the work done and verifies it).
RETRY_EXPRESSION = f'lastRetry.status == "Error" || asInt(lastRetry.exitCode) == {TRANSIENT}'
USER = 10001  # the steps image's numeric user (deploy/docker/Dockerfile)
WORKFLOW_DEADLINE_S = 3 * 3600  # a hung workflow fails, and releases the model's mutex
STEP_DEADLINE_S = 3600  # one attempt of one step
KEEP_SUCCEEDED_S = 24 * 3600
KEEP_FAILED_S = 7 * 24 * 3600
# The per-value files write_outputs() creates (StepResult.outputs), plus result.json.
OUTPUT_FILES = tuple(StepResult(step="x", model="m", version="1", slot="s", source="alias:a").outputs())

# The specification's defaults (seed: vllm-deployment-scripts.md).
MODEL = "mistral-7b-lora"
VLLM_URL = "http://vllm-service:8000"  # the Service in the workflow's namespace
LIVE_SLOT = "aws-rag-qa-live"
CANDIDATE_SLOT = "aws-rag-qa-candidate"


def p(name: str) -> str:
    return f"{{{{workflow.parameters.{name}}}}}"


def mutex() -> m.Synchronization:
    """One deployment per registered model at a time, whichever workflow runs it."""
    return m.Synchronization(mutexes=[m.Mutex(name=f"loradeploy-{p('model-name')}")])


def retry() -> RetryStrategy:
    """Retry transient failures (exit 75) and infrastructure errors, with a growing pause."""
    return RetryStrategy(
        limit="3",
        retry_policy="Always",
        expression=RETRY_EXPRESSION,
        backoff=m.Backoff(duration="30s", factor=m.IntOrString(2), max_duration="10m"),
    )


def pod_security() -> m.PodSecurityContext:
    """Pod Security Standard "restricted" for every workflow pod."""
    return m.PodSecurityContext(
        run_as_non_root=True,
        run_as_user=USER,
        run_as_group=USER,
        fs_group=USER,
        seccomp_profile=m.SeccompProfile(type="RuntimeDefault"),
    )


def container_security() -> m.SecurityContext:
    return m.SecurityContext(
        run_as_non_root=True,
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        capabilities=m.Capabilities(drop=["ALL"]),
    )


def resources(memory_limit: str) -> m.ResourceRequirements:
    return m.ResourceRequirements(
        requests={
            "cpu": m.Quantity("100m"),
            "memory": m.Quantity("256Mi"),
            "ephemeral-storage": m.Quantity("1Gi"),
        },
        limits={"memory": m.Quantity(memory_limit), "ephemeral-storage": m.Quantity("8Gi")},
    )


# The root filesystem is read-only: /tmp (downloads, the results folder, kubectl's cache
# under HOME) is an emptyDir. Adapters of several GB are staged here: raise its limit.
TMP = m.VolumeMount(name="tmp", mount_path="/tmp")
TMP_VOLUME = m.Volume(name="tmp", empty_dir=m.EmptyDirVolumeSource(size_limit=m.Quantity("8Gi")))
# The trust policy's public keys, when the ConfigMap exists (see vllm-deployment.yaml).
TRUST = m.VolumeMount(name="trust", mount_path="/etc/loradeploy/trust", read_only=True)
TRUST_VOLUME = m.Volume(
    name="trust", config_map=m.ConfigMapVolumeSource(name="loradeploy-trust", optional=True)
)


def env(step_name: str) -> list[Env | m.EnvVar]:
    """The environment of a step. ``LORADEPLOY_RUN_KEY`` is the same for every retry of
    this step in this workflow run (the workflow's uid and the step), so a retry
    recognises an alias plan its interrupted attempt left (see coordination/plans.py)."""
    secret = [
        m.EnvVar(
            name=key,
            value_from=m.EnvVarSource(
                secret_key_ref=m.SecretKeySelector(name="mlflow-credentials", key=key, optional=True)
            ),
        )
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    ]
    return [
        Env(name="LORADEPLOY_ACTOR", value="argo:{{workflow.name}}"),
        Env(name="LORADEPLOY_RUN_KEY", value=f"{{{{workflow.uid}}}}/{step_name}"),
        Env(name="HOME", value="/tmp"),
        *secret,
    ]


def outputs() -> list[Parameter]:
    files = [
        Parameter(name=name, value_from=m.ValueFrom(path=f"{OUT}/{name}", default=""))
        for name in OUTPUT_FILES
    ]
    return [Parameter(name="result", value_from=m.ValueFrom(path=f"{OUT}/result.json", default="{}")), *files]


def step(name: str, args: list[str], inputs: tuple[str, ...] = ()) -> Container:
    """One loradeploy command as a template: retried on 75, results as outputs."""
    return Container(
        name=name,
        image=IMAGE,
        command=["loradeploy"],
        args=[*args, f"--output-dir={OUT}"],
        env=env(name),
        env_from=[m.EnvFromSource(config_map_ref=m.ConfigMapEnvSource(name="loradeploy-config"))],
        inputs=[Parameter(name=i) for i in inputs] or None,
        outputs=outputs(),
        retry_strategy=retry(),
        active_deadline_seconds=STEP_DEADLINE_S,
        pod_security_context=pod_security(),
        security_context=container_security(),
        resources=resources("2Gi"),
        volume_mounts=[TMP, TRUST],
    )


def report(kind: str) -> Container:
    """The exit handler: one line with the outcome, then aliases next to what is served.

    Values reach the shell as environment variables, never pasted into the script.
    """
    script = (
        'echo "$KIND of model $MODEL: $STATUS"\n'
        'if [ "$STATUS" != "Succeeded" ]; then echo "failures: $FAILURES"; fi\n'
        'loradeploy status --model-name="$MODEL" --vllm-url="$VLLM_URL" '
        '--live-slot="$LIVE_SLOT" --candidate-slot="$CANDIDATE_SLOT" --pods="$PODS" || true\n'
    )
    return Container(
        name="report",
        image=IMAGE,
        command=["sh", "-c", script],
        env=[
            Env(name="KIND", value=kind),
            Env(name="MODEL", value=p("model-name")),
            Env(name="STATUS", value="{{workflow.status}}"),
            Env(name="FAILURES", value="{{workflow.failures}}"),
            Env(name="VLLM_URL", value=p("vllm-url")),
            Env(name="LIVE_SLOT", value=p("live-slot")),
            Env(name="CANDIDATE_SLOT", value=p("candidate-slot")),
            Env(name="PODS", value=PODS.split("=", 1)[1]),
            *env("report"),
        ],
        env_from=[m.EnvFromSource(config_map_ref=m.ConfigMapEnvSource(name="loradeploy-config"))],
        active_deadline_seconds=600,
        pod_security_context=pod_security(),
        security_context=container_security(),
        resources=resources("1Gi"),
        volume_mounts=[TMP, TRUST],
    )


def canary_report() -> Container:
    """The canary's exit handler: the outcome, then, unless the workflow succeeded,
    ``reconcile``, which finishes or undoes a canary its step left interrupted (retries
    used up, the workflow's deadline): no stable name stays at a half weight without a
    record. After a failed analysis (exit 1) the canary has already rolled back and
    reconcile finds nothing to do. Reconcile takes the model's lock in the registry
    itself; a failure is printed with the command to run by hand, never hidden."""
    script = (
        'echo "canary of model $MODEL on $STABLE_NAME: $STATUS"\n'
        'if [ "$STATUS" != "Succeeded" ]; then\n'
        '  echo "failures: $FAILURES"\n'
        '  loradeploy reconcile --model-name="$MODEL" --transport=kubectl --namespace="$NAMESPACE" '
        '--live-slot="$LIVE_SLOT" --candidate-slot="$CANDIDATE_SLOT" '
        "|| echo \"reconcile exited $?: run 'loradeploy reconcile --model-name=$MODEL' by hand\"\n"
        "fi\n"
        'loradeploy status --model-name="$MODEL" --vllm-url="$VLLM_URL" '
        '--live-slot="$LIVE_SLOT" --candidate-slot="$CANDIDATE_SLOT" --pods="$PODS" || true\n'
    )
    return Container(
        name="report",
        image=IMAGE,
        command=["sh", "-c", script],
        env=[
            Env(name="MODEL", value=p("model-name")),
            Env(name="STABLE_NAME", value=p("stable-name")),
            Env(name="STATUS", value="{{workflow.status}}"),
            Env(name="FAILURES", value="{{workflow.failures}}"),
            Env(name="NAMESPACE", value=NAMESPACE),
            Env(name="VLLM_URL", value=p("vllm-url")),
            Env(name="LIVE_SLOT", value=p("live-slot")),
            Env(name="CANDIDATE_SLOT", value=p("candidate-slot")),
            Env(name="PODS", value=PODS.split("=", 1)[1]),
            *env("report"),
        ],
        env_from=[m.EnvFromSource(config_map_ref=m.ConfigMapEnvSource(name="loradeploy-config"))],
        active_deadline_seconds=STEP_DEADLINE_S,
        pod_security_context=pod_security(),
        security_context=container_security(),
        resources=resources("2Gi"),  # reconcile may download and place an adapter
        volume_mounts=[TMP, TRUST],
    )


def template(name: str, description: str, parameters: dict[str, str]) -> WorkflowTemplate:
    return WorkflowTemplate(
        name=name,
        annotations={"workflows.argoproj.io/description": description},
        labels={"app.kubernetes.io/part-of": "loradeploy"},
        entrypoint="main",
        on_exit="report",
        service_account_name=SERVICE_ACCOUNT,
        synchronization=mutex(),
        arguments=[Parameter(name=k, value=v) for k, v in parameters.items()],
        security_context=pod_security(),
        volumes=[TMP_VOLUME, TRUST_VOLUME],
        active_deadline_seconds=WORKFLOW_DEADLINE_S,
        ttl_strategy=m.TTLStrategy(
            seconds_after_success=KEEP_SUCCEEDED_S, seconds_after_failure=KEEP_FAILED_S
        ),
        pod_gc=m.PodGC(strategy="OnPodSuccess"),
    )


SLOT_PARAMETERS = {"vllm-url": VLLM_URL, "live-slot": LIVE_SLOT, "candidate-slot": CANDIDATE_SLOT}


def deploy() -> WorkflowTemplate:
    with template(
        "vllm-deploy",
        "Load a registered version into the candidate slot of every vLLM replica, "
        "smoke-test it, and mark it staged.",
        {
            "model-name": MODEL,
            "source": "alias:candidate",
            **SLOT_PARAMETERS,
            "num-requests": "3",
            "max-latency": "30",
        },
    ) as wt:
        load = step(
            "load-adapter",
            [
                "load-adapter",
                f"--model-name={p('model-name')}",
                f"--source={p('source')}",
                f"--slot-name={p('candidate-slot')}",
                "--transport=kubectl",
                f"--namespace={NAMESPACE}",
            ],
        )
        smoke = step(
            "smoke-test",
            [
                "smoke-test",
                f"--vllm-url={p('vllm-url')}",
                f"--adapter-name={p('candidate-slot')}",
                f"--num-requests={p('num-requests')}",
                f"--max-latency={p('max-latency')}",
                f"--model-name={p('model-name')}",
                "--expected-version={{inputs.parameters.version}}",
                PODS,
            ],
            inputs=("version",),
        )
        staged = step(
            "set-staged-alias",
            [
                "set-staged-alias",
                f"--model-name={p('model-name')}",
                "--source=version:{{inputs.parameters.version}}",
                f"--slot-name={p('candidate-slot')}",
                f"--vllm-url={p('vllm-url')}",
                PODS,
            ],
            inputs=("version",),
        )
        report("deploy")
        version = "{{steps.load-adapter.outputs.parameters.version}}"
        with Steps(name="main"):
            load()
            smoke(arguments={"version": version})
            staged(arguments={"version": version})
    return wt


def gate(name: str) -> Container:
    return step(
        name,
        [
            name,
            f"--model-name={p('model-name')}",
            f"--candidate-slot={p('candidate-slot')}",
            f"--live-slot={p('live-slot')}",
            f"--vllm-url={p('vllm-url')}",
            PODS,  # measures the first Ready pod and names it in its result
        ],
    )


def promote_step(source_alias: str, reason: str) -> Container:
    return step(
        "promote-adapter",
        [
            "promote-adapter",
            f"--model-name={p('model-name')}",
            f"--source-alias={source_alias}",
            f"--live-slot={p('live-slot')}",
            "--transport=kubectl",
            f"--namespace={NAMESPACE}",
            f"--reason={reason}",
        ],
    )


def promote() -> WorkflowTemplate:
    with template(
        "vllm-promote",
        "Gate 1 (evaluation), Gate 2 (performance), then promote to the live slot; "
        "stops at the first gate that fails.",
        {"model-name": MODEL, **SLOT_PARAMETERS, "source-alias": "perf-passed"},
    ) as wt:
        compare = gate("compare-decision")
        perf = gate("perf-decision")
        promoted = promote_step(p("source-alias"), "promoted by workflow {{workflow.name}}")
        report("promote")
        with Steps(name="main"):
            compare()
            perf()
            promoted()
    return wt


def rollback() -> WorkflowTemplate:
    with template(
        "vllm-rollback",
        "Serve the version 'previous' names in the live slot again (live and previous swap).",
        {"model-name": MODEL, **SLOT_PARAMETERS, "reason": "rollback"},
    ) as wt:
        promoted = promote_step("previous", p("reason"))
        report("rollback")
        with Steps(name="main"):
            promoted()
    return wt


# The canary's flags and their defaults (issue 12). Thresholds like Gate 2's; the interval
# is seconds between steps. No shadow on a cluster: the canary reads Prometheus there, which
# holds no answers to pair (the command refuses --shadow-percent with kubectl). One attempt
# of the step may last STEP_DEADLINE_S: keep steps x interval x (max-waits + 1) well below it.
CANARY_FLAGS = {
    "steps": "5,25,50,100",
    "interval": "60",
    "max-error-rate": "0.01",
    "max-p50-ratio": "1.5",
    "max-p95-ratio": "1.75",
    "min-requests": "20",
    "max-waits": "3",
}


def canary() -> WorkflowTemplate:
    """Routed mode's canary, one step. A retry (exit 75, or the pod lost) runs the same
    command with the same run key; the command first finishes or undoes the canary an
    earlier attempt left (its record in the registry), never starting over blindly."""
    with template(
        "vllm-canary",
        "Canary (routed mode): move the stable name's weight to the version the source alias "
        "names step by step, analysing live figures between steps; promote at the end, or "
        "roll back by itself and fail (exit 1, not retried).",
        {
            "model-name": MODEL,
            "source-alias": "staged",
            "stable-name": LIVE_SLOT,
            **CANARY_FLAGS,
            **SLOT_PARAMETERS,
        },
    ) as wt:
        run = step(
            "canary",
            [
                "canary",
                f"--model-name={p('model-name')}",
                f"--source-alias={p('source-alias')}",
                f"--stable-name={p('stable-name')}",
                *(f"--{flag}={p(flag)}" for flag in CANARY_FLAGS),
                "--transport=kubectl",
                f"--namespace={NAMESPACE}",
            ],
        )
        canary_report()
        with Steps(name="main"):
            run()
    return wt


BUILDERS = {
    "vllm-deploy": deploy,
    "vllm-promote": promote,
    "vllm-rollback": rollback,
    "vllm-canary": canary,
}


def rendered() -> dict[Path, str]:
    """File -> the YAML it must hold."""
    return {HERE / f"{name}.yaml": HEADER + build().to_yaml() for name, build in BUILDERS.items()}


def main() -> int:
    for path, text in rendered().items():
        changed = not path.exists() or path.read_text(encoding="utf-8") != text
        if changed:
            path.write_text(text, encoding="utf-8")
        print(f"{'wrote' if changed else 'unchanged'} {path.relative_to(HERE.parents[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

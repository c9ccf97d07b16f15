"""The canary on Kubernetes, offline: steps/canary.py moving weights with the
GatewayRouter (InferenceModelRewrite objects, through ``support/fake_kubectl.py``, a FAKE
kubectl) and judging windows on PrometheusFigures (through FakeTrafficPrometheus, an
``httpx.MockTransport`` fake); then the command line's wiring of ``canary`` and
``reconcile`` with ``--transport=kubectl``. No cluster, Inference Extension or
Prometheus is involved: all of this is validated offline only."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from loradeploy import cli
from loradeploy.clients import wiring
from loradeploy.clients.files import KubectlTransport
from loradeploy.clients.gateway import GatewayRouter
from loradeploy.clients.prometheus import PrometheusFigures
from loradeploy.clients.registry import VersionInfo
from loradeploy.coordination import Actor
from loradeploy.domain.canary import CanaryThresholds
from loradeploy.errors import ExitCode
from loradeploy.results import StepResult
from loradeploy.steps.canary import CANARY_TAG, CanaryRequest, canary
from support.fake_cluster import NS, FakeCluster, fake_pod
from support.fake_prometheus import FakeTrafficPrometheus
from support.fake_registry import FakeAliasRegistry
from support.fakes import FakeClock
from support.synthetic import write_adapter

MODEL, STABLE = "m", "m-live"
V1, V2 = "m@v1", "m@v2"
PROMETHEUS = "http://prometheus.test:9090"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    monkeypatch.delenv("FAKE_KUBECTL_FAIL", raising=False)
    fake = FakeCluster(tmp_path / "cluster", monkeypatch)
    fake.folder.mkdir()
    fake.state["pods"] = [fake_pod("vllm-a", "10.0.0.1"), fake_pod("vllm-b", "10.0.0.2")]
    return fake


def run_canary(
    cluster: FakeCluster, tmp_path: Path, tune: Callable[[FakeTrafficPrometheus], None]
) -> tuple[StepResult, FakeAliasRegistry, GatewayRouter, FakeTrafficPrometheus]:
    registry = FakeAliasRegistry(MODEL, aliases={"live": "1", "staged": "2"})
    for version in ("1", "2"):
        registry.add_version(version, write_adapter(tmp_path / f"v{version}"))
    gateway = GatewayRouter(cluster.api(), namespace=NS, pool="vllm", backends=[])
    gateway.apply({STABLE: {V1: 100}})
    traffic = FakeTrafficPrometheus(
        weights=lambda: gateway.routes().get(STABLE, {}), latency={V1: 0.1, V2: 0.1}
    )
    tune(traffic)
    figures = PrometheusFigures(PROMETHEUS, http=httpx.Client(transport=httpx.MockTransport(traffic.handler)))
    clock = FakeClock()

    def serve(
        version: VersionInfo, keep: set[str], weights: Mapping[str, int], guard: Callable[[], None]
    ) -> dict[str, object]:
        guard()
        return {}

    result = canary(
        CanaryRequest(
            model=MODEL,
            source_alias="staged",
            stable=STABLE,
            steps=[5, 50, 100],
            interval_s=60,
            thresholds=CanaryThresholds(min_requests=10, max_waits=1),
        ),
        registry=registry,  # type: ignore[arg-type]
        router=gateway,
        figures=figures,
        serve=serve,
        actor=Actor(who="ops@test", step="canary", run_id="run-1"),
        sleep=clock.sleep,
        clock=clock,
    )
    return result, registry, gateway, traffic


def test_a_good_candidate_is_promoted_on_the_rewrites_judged_by_prometheus_figures(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    result, registry, gateway, traffic = run_canary(cluster, tmp_path, lambda t: None)
    assert result.passed and result.details["decision"] == "promoted", result.details
    assert gateway.routes() == {STABLE: {V2: 100}}
    assert registry.aliases == {"live": "2", "previous": "1"}
    assert CANARY_TAG not in registry.model_tags
    first = result.details["windows"][0]["figures"]
    assert (first["candidate_requests"], first["current_requests"]) == (30, 570)  # 10/s, 5 % of 60 s
    assert first["candidate_p95_s"] == 0.1
    assert all("[60s]" in q["query"] for q in traffic.queries)


def test_a_slow_candidate_is_rolled_back_at_its_first_step(cluster: FakeCluster, tmp_path: Path) -> None:
    def slow(traffic: FakeTrafficPrometheus) -> None:
        traffic.latency[V2] = 0.3

    result, registry, gateway, _ = run_canary(cluster, tmp_path, slow)
    assert not result.passed and result.details["decision"] == "rolled-back"
    assert "p50-latency-ratio" in result.details["reason"]
    assert gateway.routes() == {STABLE: {V1: 100}}
    assert registry.aliases["canary-failed"] == "2" and registry.aliases["live"] == "1"


def test_a_candidate_that_fails_requests_is_rolled_back(cluster: FakeCluster, tmp_path: Path) -> None:
    def failing(traffic: FakeTrafficPrometheus) -> None:
        traffic.error_share[V2] = 0.2

    result, _, gateway, _ = run_canary(cluster, tmp_path, failing)
    assert result.details["decision"] == "rolled-back" and "error-rate" in result.details["reason"]
    assert gateway.routes() == {STABLE: {V1: 100}}


# -- the command line's wiring -------------------------------------------------------------------


def kube_flags(cluster: FakeCluster) -> list[str]:
    return ["--transport=kubectl", f"--namespace={NS}", f"--kubectl={cluster.api().kubectl}"]


def test_canary_with_transport_kubectl_wires_the_gateway_prometheus_and_the_pods(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step gets the GatewayRouter over the Ready pods, Prometheus figures from
    --prometheus-url, and a serve() placing adapters with the kubectl transport."""
    import loradeploy.steps.canary as canary_step
    import loradeploy.steps.load_version as load_version

    seen: dict[str, Any] = {}

    def recorder(request: CanaryRequest, **clients: Any) -> StepResult:
        seen.update(clients, request=request)
        return StepResult(step="canary", model=MODEL)

    def placing(version: Any, **kwargs: Any) -> list[str]:
        seen["transport"] = kwargs["transport"]
        return []

    monkeypatch.setattr(canary_step, "canary", recorder)
    monkeypatch.setattr(load_version, "serve_version", placing)
    monkeypatch.setattr(wiring, "registry_client", lambda settings: FakeAliasRegistry(MODEL))
    args = ["canary", f"--model-name={MODEL}", "--tracking-uri=http://mlflow.test:5000", *kube_flags(cluster)]
    done = CliRunner().invoke(cli.app, [*args, f"--prometheus-url={PROMETHEUS}"])
    assert done.exit_code == 0, done.output
    assert isinstance(seen["router"], GatewayRouter)
    assert seen["router"].namespace == NS
    assert seen["router"].backends == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert isinstance(seen["figures"], PrometheusFigures) and seen["figures"].url == PROMETHEUS
    seen["serve"](SimpleNamespace(model=MODEL, version="2"), set(), {}, lambda: None)
    assert isinstance(seen["transport"], KubectlTransport)


def test_canary_on_kubernetes_without_a_prometheus_url_is_a_usage_error(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["canary", f"--model-name={MODEL}", "--tracking-uri=http://mlflow.test:5000", *kube_flags(cluster)]
    done = CliRunner().invoke(cli.app, args)
    assert done.exit_code == ExitCode.USAGE, done.output
    assert "no Prometheus URL" in done.output and "LORADEPLOY_PROMETHEUS_URL" in done.output
    assert cluster.calls() == []  # refused before any kubectl call
    done = CliRunner().invoke(cli.app, [*args, f"--prometheus-url={PROMETHEUS}", "--eval-data=qa.jsonl"])
    assert done.exit_code == ExitCode.USAGE and "--eval-data" in done.output, done.output
    assert cluster.calls() == []
    monkeypatch.setenv("LORADEPLOY_PROMETHEUS_URL", "http://user:pw@prometheus.test:9090")
    done = CliRunner().invoke(cli.app, args)
    assert done.exit_code == ExitCode.USAGE and "credentials" in done.output and "pw" not in done.output


def test_reconcile_with_transport_kubectl_undoes_a_canary_on_the_gateway(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vllm-canary exit handler's reconcile reaches the rewrites, not the local router."""
    import loradeploy.steps.reconcile as reconcile_step

    seen: dict[str, Any] = {}

    def recorder(request: Any, **clients: Any) -> StepResult:
        seen.update(clients)
        return StepResult(step="reconcile", model=MODEL)

    monkeypatch.setattr(reconcile_step, "reconcile", recorder)
    monkeypatch.setattr(wiring, "registry_client", lambda settings: FakeAliasRegistry(MODEL))
    args = [
        "reconcile",
        f"--model-name={MODEL}",
        "--tracking-uri=http://mlflow.test:5000",
        *kube_flags(cluster),
    ]
    done = CliRunner().invoke(cli.app, args)
    assert done.exit_code == 0, done.output
    assert isinstance(seen["router"], GatewayRouter) and seen["router"].namespace == NS
    assert seen["router"].backends == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    lists = [call for call in cluster.calls() if call[:2] == ["get", "pods"]]
    assert len(lists) == 1, cluster.calls()  # the pods are listed once for transport and router

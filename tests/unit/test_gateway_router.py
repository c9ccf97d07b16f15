"""clients/gateway.py (routed mode's router on Kubernetes) and the two KubeApi calls it
uses, through ``tests/support/fake_kubectl.py``: a FAKE kubectl binary, a test double
of the one narrow Kubernetes interface. No cluster and no Gateway API Inference
Extension are involved: what is shown here is validated offline only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loradeploy.clients import wiring
from loradeploy.clients.gateway import GatewayRouter
from loradeploy.clients.router import Router
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor
from loradeploy.domain.rewrite import is_managed, render_rewrite, rewrite_routes
from loradeploy.domain.routes import Shadow
from loradeploy.errors import DeadlineExceededError, NotFoundError, PermanentError, UsageError
from loradeploy.settings import load_settings
from loradeploy.steps.route import route
from support.fake_cluster import NS, FakeCluster, fake_pod
from support.fake_registry import FakeAliasRegistry
from support.fakes import FakeVllmServer

STABLE = "m-live"
KEY = f"{NS}/{STABLE}"


class FakeClock:
    """Time that moves only when the router sleeps."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    monkeypatch.delenv("FAKE_KUBECTL_FAIL", raising=False)
    fake = FakeCluster(tmp_path / "cluster", monkeypatch)
    fake.folder.mkdir()
    fake.state["pods"] = [fake_pod("vllm-a", "10.0.0.1"), fake_pod("vllm-b", "10.0.0.2")]
    return fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def router(cluster: FakeCluster, clock: FakeClock) -> GatewayRouter:
    return GatewayRouter(
        cluster.api(),
        namespace=NS,
        pool="vllm",
        backends=["http://10.0.0.1:8000"],
        clock=clock,
        sleep=clock.sleep,
    )


def stored(cluster: FakeCluster) -> dict[str, Any]:
    rewrites: dict[str, Any] = cluster.load().get("rewrites", {})
    return rewrites


def applies(cluster: FakeCluster) -> int:
    return sum(1 for call in cluster.calls() if call[0] == "apply")


def foreign(name: str, stable: str) -> dict[str, Any]:
    obj = render_rewrite(name=name, namespace=NS, pool="other", stable_model=stable, weights={"x@v1": 100})
    obj["metadata"]["labels"] = {"team": "b"}
    return obj


# -- pure: reading an object back as routes -------------------------------------------------


def test_a_rendered_rewrite_reads_back_as_its_routes_without_zero_weights() -> None:
    obj = render_rewrite(
        name=STABLE, namespace=NS, pool="vllm", stable_model=STABLE, weights={"m@v1": 100, "m@v2": 0}
    )
    assert rewrite_routes(obj) == (STABLE, {"m@v1": 100})
    assert is_managed(obj)
    obj["metadata"]["labels"].pop("app.kubernetes.io/managed-by")
    assert not is_managed(obj)


@pytest.mark.parametrize(
    "change",
    [
        lambda o: o.update(kind="InferenceModel"),
        lambda o: o["spec"]["rules"].append(o["spec"]["rules"][0]),
        lambda o: o["spec"]["rules"][0]["matches"][0]["model"].update(type="RegularExpression"),
        lambda o: o["spec"]["rules"][0]["targets"][0].pop("weight"),
        lambda o: o["spec"]["rules"][0]["targets"][0].update(weight="95"),
        lambda o: o["spec"]["rules"][0].update(targets=[]),
        lambda o: o["spec"]["rules"][0]["targets"].append(o["spec"]["rules"][0]["targets"][0]),
    ],
)
def test_an_object_of_any_other_shape_is_never_read_as_routes(change: Any) -> None:
    obj = render_rewrite(name=STABLE, namespace=NS, pool="vllm", stable_model=STABLE, weights={"m@v1": 100})
    change(obj)
    assert rewrite_routes(obj) is None


# -- KubectlApi: the two calls ------------------------------------------------------------------


def test_apply_rewrite_sends_the_object_on_stdin_and_rewrites_lists_it(cluster: FakeCluster) -> None:
    api = cluster.api()
    obj = render_rewrite(name=STABLE, namespace=NS, pool="vllm", stable_model=STABLE, weights={"m@v1": 100})
    back = api.apply_rewrite(NS, obj)
    assert back["spec"] == obj["spec"]
    assert api.rewrites(NS) == [back]
    assert api.rewrites("elsewhere") == []
    assert ["apply", "-n", NS, "-f", "-", "-o", "json"] in cluster.calls()


def test_a_cluster_without_the_crd_is_a_permanent_error_that_says_so(cluster: FakeCluster) -> None:
    cluster.state["no_crd"] = True
    api = cluster.api()
    obj = render_rewrite(name=STABLE, namespace=NS, pool="vllm", stable_model=STABLE, weights={"m@v1": 100})
    for call in (lambda: api.rewrites(NS), lambda: api.apply_rewrite(NS, obj)):
        with pytest.raises(PermanentError, match="no InferenceModelRewrite resource") as caught:
            call()
        assert "install the Gateway API Inference Extension's CRDs" in (caught.value.hint or "")


def test_forbidden_names_the_permission_to_grant(cluster: FakeCluster) -> None:
    cluster.fail("apply", "Forbidden")
    obj = render_rewrite(name=STABLE, namespace=NS, pool="vllm", stable_model=STABLE, weights={"m@v1": 100})
    with pytest.raises(PermanentError, match="RBAC 'patch inferencemodelrewrites'"):
        cluster.api().apply_rewrite(NS, obj)


# -- GatewayRouter -------------------------------------------------------------------------------


def test_the_kubernetes_router_is_a_router() -> None:
    assert isinstance(GatewayRouter, type)
    typed: type[Router] = GatewayRouter  # mypy checks the protocol here
    assert typed is GatewayRouter


def test_apply_writes_one_labelled_rewrite_per_stable_name_and_reads_it_back(
    cluster: FakeCluster, clock: FakeClock
) -> None:
    gateway = router(cluster, clock)
    assert gateway.routes() == {}
    gateway.apply({STABLE: {"m@v1": 95, "m@v2": 5}})
    obj = stored(cluster)[KEY]
    assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "loradeploy"
    assert obj["spec"]["poolRef"]["name"] == "vllm"
    assert gateway.routes() == {STABLE: {"m@v1": 95, "m@v2": 5}}
    gateway.apply({STABLE: {"m@v1": 0, "m@v2": 100}})
    assert gateway.routes() == {STABLE: {"m@v2": 100}}
    assert stored(cluster)[KEY]["metadata"]["generation"] == 2


def test_an_unchanged_stable_name_is_not_written_again(cluster: FakeCluster, clock: FakeClock) -> None:
    gateway = router(cluster, clock)
    gateway.apply({STABLE: {"m@v1": 100}})
    gateway.apply({STABLE: {"m@v1": 100}, "n-live": {"n@v3": 100}})
    assert applies(cluster) == 2  # m-live once, n-live once
    assert gateway.routes() == {STABLE: {"m@v1": 100}, "n-live": {"n@v3": 100}}


def test_leaving_a_routed_name_out_is_refused_and_changes_nothing(
    cluster: FakeCluster, clock: FakeClock
) -> None:
    gateway = router(cluster, clock)
    gateway.apply({STABLE: {"m@v1": 100}, "n-live": {"n@v3": 100}})
    with pytest.raises(UsageError, match="leave out n-live; loradeploy never deletes"):
        gateway.apply({STABLE: {"m@v2": 100}})
    assert gateway.routes() == {STABLE: {"m@v1": 100}, "n-live": {"n@v3": 100}}


@pytest.mark.parametrize(
    ("obj", "what"),
    [(foreign(STABLE, "something-else"), "has the name"), (foreign("team-b-rewrite", STABLE), "routes")],
)
def test_a_rewrite_loradeploy_did_not_write_is_never_overwritten(
    cluster: FakeCluster, clock: FakeClock, obj: dict[str, Any], what: str
) -> None:
    cluster.state["rewrites"] = {f"{NS}/{obj['metadata']['name']}": obj}
    gateway = router(cluster, clock)
    assert gateway.routes() == {}
    with pytest.raises(UsageError, match=what):
        gateway.apply({STABLE: {"m@v1": 100}})
    assert applies(cluster) == 0
    assert stored(cluster) == {f"{NS}/{obj['metadata']['name']}": obj}


def test_bad_input_is_refused_before_anything_is_written(cluster: FakeCluster, clock: FakeClock) -> None:
    gateway = router(cluster, clock)
    for bad in ({STABLE: {"m@v1": 90}}, {"M_Live": {"m@v1": 100}}, {STABLE: {"m-v1": 100}}):
        with pytest.raises(UsageError):
            gateway.apply(bad)
    assert applies(cluster) == 0 and stored(cluster) == {}


def test_apply_waits_for_the_read_back(cluster: FakeCluster, clock: FakeClock) -> None:
    cluster.state["stale_reads"] = 3  # the first read-backs still show the old state
    took = router(cluster, clock).apply({STABLE: {"m@v1": 100}})
    assert clock.sleeps >= 2 and took == clock.now


def test_a_rewrite_that_never_reads_back_fails_at_the_deadline(
    cluster: FakeCluster, clock: FakeClock
) -> None:
    cluster.state["reverted"] = True  # another writer keeps putting the old object back
    with pytest.raises(
        DeadlineExceededError, match=f"{NS}/{STABLE} did not read back as m@v1 100 % within 5s"
    ):
        router(cluster, clock).apply({STABLE: {"m@v1": 100}}, deadline_s=5)
    assert 5 < clock.now < 6


# -- wiring and the route step -----------------------------------------------------------------


def test_transport_kubectl_chooses_the_gateway_router_over_the_ready_pods(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    cluster.save()
    settings = load_settings({}, {"LORADEPLOY_INFERENCE_POOL": "vllm-pool"}, tmp_path)
    where = wiring.Where(None, wiring.KUBECTL, NS, "app=vllm", kubectl=str(cluster.api().kubectl))
    gateway = wiring.router_client(settings, where)
    assert isinstance(gateway, GatewayRouter)
    assert (gateway.namespace, gateway.pool) == (NS, "vllm-pool")
    assert gateway.backends == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    with pytest.raises(UsageError, match="no router"):  # local: the stack's router, none here
        wiring.router_client(settings, wiring.Where())


def test_the_route_step_moves_weights_on_the_kubernetes_router(
    cluster: FakeCluster, clock: FakeClock
) -> None:
    registry = FakeAliasRegistry("m")
    servers = [FakeVllmServer(adapters={"m@v1": "/a/1", "m@v2": "/a/2"}) for _ in range(2)]
    replicas = [VllmClient(f"http://10.0.0.{i}:8000", transport=s.transport()) for i, s in enumerate(servers)]
    gateway = router(cluster, clock)
    actor = Actor(who="ops@test", step="route", run_id="run-1")
    result = route(
        registry, replicas, gateway, stable=STABLE, weights={"m@v1": 95, "m@v2": 5}, actor=actor, reason="t"
    )
    assert result.details == {"before": {}, "after": {"m@v1": 95, "m@v2": 5}}
    assert gateway.routes() == {STABLE: {"m@v1": 95, "m@v2": 5}}
    servers[1].adapters.pop("m@v2")
    with pytest.raises(NotFoundError, match="does not serve m@v2"):
        route(registry, replicas, gateway, stable=STABLE, weights={"m@v2": 100}, actor=actor, reason="t")
    assert json.dumps(gateway.routes()) == json.dumps({STABLE: {"m@v1": 95, "m@v2": 5}})


def test_a_shadow_is_refused_before_any_write(cluster: FakeCluster, clock: FakeClock) -> None:
    servers = [FakeVllmServer(adapters={"m@v1": "/a/1", "m@v2": "/a/2"})]
    replicas = [VllmClient("http://10.0.0.1:8000", transport=servers[0].transport())]
    gateway = router(cluster, clock)
    actor = Actor(who="ops@test", step="route", run_id="run-1")
    with pytest.raises(UsageError, match="cannot mirror requests; nothing was changed"):
        route(
            FakeAliasRegistry("m"),
            replicas,
            gateway,
            stable=STABLE,
            weights={"m@v1": 100},
            actor=actor,
            reason="t",
            shadow=Shadow("m@v2", 10),
        )
    assert applies(cluster) == 0 and gateway.routes() == {} and gateway.shadows() == {}

"""steps/route.py with fakes (FakeAliasRegistry for the lock and the history,
FakeVllmServer per replica, the router client on a fake proxy): weights move only to
versions every replica serves, of one model, under the lock, and are recorded; a
refused change leaves the router's file alone. The real router: tests/integration/test_router.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from loradeploy.cli.route_command import parse_shadow, parse_weights
from loradeploy.clients import router as router_module
from loradeploy.clients.router import LiteLLMRouter
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor, model_lock
from loradeploy.domain.routes import Shadow
from loradeploy.errors import LockHeldError, NotFoundError, UsageError
from loradeploy.steps.route import route
from support.fake_registry import FakeAliasRegistry
from support.fakes import FakeVllmServer

MODEL = "m"
ACTOR = Actor(who="ops@test", step="route", run_id="run-1")
Setup = tuple[FakeAliasRegistry, list[FakeVllmServer], list[VllmClient], LiteLLMRouter, "FakeProxy"]


class FakeProxy:
    """/model/info answers whatever routes the configuration file holds (a proxy that
    settles at once); every SIGHUP is counted."""

    def __init__(self, config: Path) -> None:
        self.config, self.hups = config, 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        data = yaml.safe_load(self.config.read_text()) if self.config.exists() else {}
        return httpx.Response(200, json={"data": (data or {}).get("model_list") or []})


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_module, "POLL_S", 0.0)


@pytest.fixture
def setup(tmp_path: Path, group_leader: int) -> Iterator[Setup]:
    servers = [FakeVllmServer(adapters={"m@v1": "/a/1", "m@v2": "/a/2"}) for _ in range(2)]
    clients = [
        VllmClient(f"http://vllm-{i}.test:8000", transport=s.transport()) for i, s in enumerate(servers)
    ]
    record = tmp_path / "router.json"
    record.write_text(json.dumps({"pid": group_leader}))  # stands in for the master; never signalled
    proxy = FakeProxy(tmp_path / "config.yaml")
    client = LiteLLMRouter(
        url="http://router.test",
        key="sk-test",
        config=proxy.config,
        record=record,
        backends=["http://vllm-0.test:8000", "http://vllm-1.test:8000"],
        http=httpx.Client(transport=httpx.MockTransport(proxy.handler)),
        hangup=lambda pid: setattr(proxy, "hups", proxy.hups + 1),
    )
    client.write({"other-live": {"other@v3": 100}})
    yield FakeAliasRegistry(MODEL), servers, clients, client, proxy
    for c in clients:
        c.close()


def test_weights_move_under_the_lock_are_recorded_and_other_routes_stay(setup: Setup) -> None:
    registry, _, clients, router, proxy = setup
    result = route(
        registry,
        clients,
        router,
        stable="m-live",
        weights={"m@v1": 95, "m@v2": 5},
        actor=ACTOR,
        reason="canary by hand",
    )
    assert router.routes() == {"other-live": {"other@v3": 100}, "m-live": {"m@v1": 95, "m@v2": 5}}
    assert proxy.hups == 1
    assert result.details == {"before": {}, "after": {"m@v1": 95, "m@v2": 5}}
    assert [c.name for c in result.checks] == [
        "served:http://vllm-0.test:8000",
        "served:http://vllm-1.test:8000",
    ]
    (record,) = registry.audit
    assert "m-live: no route -> m@v1 95 %, m@v2 5 %; canary by hand" in str(record["params"])
    assert registry.leases.holder(MODEL) is None  # the lock was released


def test_a_version_one_replica_does_not_serve_gets_no_weight(setup: Setup) -> None:
    registry, servers, clients, router, proxy = setup
    del servers[1].adapters["m@v2"]
    before = router.config.read_bytes()
    with pytest.raises(
        NotFoundError, match=r"vllm-1.test:8000 does not serve m@v2; the route 'm-live' was not changed"
    ):
        route(
            registry,
            clients,
            router,
            stable="m-live",
            weights={"m@v1": 50, "m@v2": 50},
            actor=ACTOR,
            reason="",
        )
    assert router.config.read_bytes() == before and proxy.hups == 0 and registry.audit == []


def test_a_route_across_two_models_is_refused_before_anything(setup: Setup) -> None:
    registry, _, clients, router, proxy = setup
    with pytest.raises(UsageError, match="versions of 2 models"):
        route(
            registry,
            clients,
            router,
            stable="m-live",
            weights={"m@v1": 50, "n@v2": 50},
            actor=ACTOR,
            reason="",
        )
    assert proxy.hups == 0 and registry.audit == []


def test_a_held_lock_stops_the_change(setup: Setup) -> None:
    registry, _, clients, router, proxy = setup
    other = Actor(who="someone@else", step="promote-adapter", run_id="run-2")
    with model_lock(registry, MODEL, other, heartbeat_s=None), pytest.raises(LockHeldError, match="run-2"):
        route(registry, clients, router, stable="m-live", weights={"m@v1": 100}, actor=ACTOR, reason="")
    assert proxy.hups == 0 and "m-live" not in router.routes()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("m@v1=95,m@v2", "not NAME@vN=PERCENT"),
        ("m@v1=x", "not NAME@vN=PERCENT"),
        ("m@v1=50,m@v1=50", "twice"),
        ("", "not NAME"),
    ],
)
def test_bad_weights_text_is_a_usage_error(text: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        parse_weights(text)
    assert parse_weights("m@v1=95, m@v2=5") == {"m@v1": 95, "m@v2": 5}


def test_a_shadow_is_set_recorded_and_dropped_by_a_route_without_one(setup: Setup) -> None:
    registry, servers, clients, router, _ = setup
    servers[0].adapters["m@v3"] = servers[1].adapters["m@v3"] = "/a/3"
    router.write({"other-live": {"other@v3": 100}, "x-live": {"m@v2": 100}}, {"x-live": Shadow("m@v3", 5)})
    result = route(
        registry,
        clients,
        router,
        stable="m-live",
        weights={"m@v1": 100},
        actor=ACTOR,
        reason="shadow by hand",
        shadow=Shadow("m@v2", 10),
    )
    assert router.shadows() == {"m-live": Shadow("m@v2", 10), "x-live": Shadow("m@v3", 5)}  # others stay
    assert result.details["shadow_after"] == "shadow m@v2 10 %"
    assert "no route -> m@v1 100 %; shadow m@v2 10 %" in str(registry.audit[0]["params"])
    route(registry, clients, router, stable="m-live", weights={"m@v1": 100}, actor=ACTOR, reason="")
    assert router.shadows() == {"x-live": Shadow("m@v3", 5)}
    assert router.routes()["m-live"] == {"m@v1": 100}


def test_a_shadow_one_replica_does_not_serve_changes_nothing(setup: Setup) -> None:
    registry, servers, clients, router, proxy = setup
    del servers[1].adapters["m@v2"]
    before = router.config.read_bytes()
    with pytest.raises(NotFoundError, match="does not serve m@v2") as caught:
        route(
            registry,
            clients,
            router,
            stable="m-live",
            weights={"m@v1": 100},
            actor=ACTOR,
            reason="",
            shadow=Shadow("m@v2", 10),
        )
    assert caught.value.hint == "load every version that gets weight or the shadow on every replica first"
    assert router.config.read_bytes() == before and proxy.hups == 0 and registry.audit == []


@pytest.mark.parametrize("text", ["m@v2", "m@v2=", "=5", "m@v2=ten", "m@v2=-1"])
def test_bad_shadow_text_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="not NAME@vN=PERCENT"):
        parse_shadow(text)
    assert parse_shadow(" m@v2=10 ") == ("m@v2", 10)

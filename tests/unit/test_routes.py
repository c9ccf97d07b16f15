"""Routed mode's routes (domain/routes.py) and their LiteLLM configuration."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from loradeploy.domain.routes import check_routes, litellm_config, routes_of, version_of
from loradeploy.errors import UsageError

BACKENDS = ["http://127.0.0.1:8000", "http://127.0.0.1:8001/"]


def test_a_route_renders_one_entry_per_version_and_replica_under_the_stable_name() -> None:
    config = litellm_config({"m-live": {"m@v1": 95, "m@v2": 5}}, BACKENDS)
    entries = config["model_list"]
    assert isinstance(entries, list) and len(entries) == 4
    assert {e["model_name"] for e in entries} == {"m-live"}
    assert [e["model_info"]["id"] for e in entries] == ["m@v1#0", "m@v1#1", "m@v2#0", "m@v2#1"]
    first = entries[0]["litellm_params"]
    assert first == {
        "model": "hosted_vllm/m@v1",
        "api_base": "http://127.0.0.1:8000/v1",
        "api_key": "os.environ/VLLM_API_KEY",
        "weight": 95,
    }
    assert entries[3]["litellm_params"]["api_base"] == "http://127.0.0.1:8001/v1"
    # no retries and no fallback: a failed request is reported, not answered by another version
    assert config["router_settings"] == {
        "routing_strategy": "simple-shuffle",
        "num_retries": 0,
        "disable_cooldowns": True,
    }
    assert routes_of(entries) == {"m-live": {"m@v1": 95, "m@v2": 5}}


def test_one_replica_uses_the_versioned_name_as_the_id_and_zero_weights_are_left_out() -> None:
    config = litellm_config({"m-live": {"m@v1": 100, "m@v2": 0}}, BACKENDS[:1])
    assert [e["model_info"]["id"] for e in config["model_list"]] == ["m@v1"]
    assert version_of("m@v1#3") == "m@v1" and version_of("m@v1") == "m@v1"


@pytest.mark.parametrize(
    ("routes", "words"),
    [
        ({"m-live": {"m@v1": 90}}, "sum to 90"),
        ({"m-live": {}}, "sum to 0"),
        ({"m-live": {"m-v1": 100}}, "'m-v1' is not a versioned name"),
        ({"m@v3": {"m@v1": 100}}, "cannot be a versioned name"),
        ({"m live": {"m@v1": 100}}, "'m live' is not allowed"),
        ({"m-live": {"m@v1": 101, "m@v2": -1}}, "within 0..100"),
        ({"m-live": {"m@v1": 99.5, "m@v2": 0.5}}, "whole number"),
        ({"m-live": {"m@v1": True}}, "whole number"),
    ],
)
def test_bad_routes_are_refused_naming_the_route(routes: dict[str, dict[str, int]], words: str) -> None:
    with pytest.raises(UsageError, match=words) as caught:
        check_routes(routes)
    assert caught.value.hint


def test_no_backend_is_refused() -> None:
    with pytest.raises(UsageError, match="no vLLM server"):
        litellm_config({"m-live": {"m@v1": 100}}, [])


def test_routes_of_skips_entries_that_are_not_deployments() -> None:
    entries = [
        {"model_name": "m-live", "litellm_params": {"weight": 100}, "model_info": {"id": "m@v1"}},
        {"model_name": "x", "litellm_params": "nonsense"},
        {"litellm_params": {"weight": 1}, "model_info": {"id": "m@v9"}},
        "not a mapping either",
    ]
    assert routes_of([e for e in entries if isinstance(e, dict)]) == {"m-live": {"m@v1": 100}}


@st.composite
def route_sets(draw: st.DrawFn) -> dict[str, dict[str, int]]:
    routes = {}
    for stable in draw(st.lists(st.sampled_from(["a-live", "b-live", "c"]), min_size=1, unique=True)):
        versions = draw(st.lists(st.integers(1, 50), min_size=1, max_size=4, unique=True))
        cuts = sorted(
            draw(st.lists(st.integers(0, 100), min_size=len(versions) - 1, max_size=len(versions) - 1))
        )
        bounds = [0, *cuts, 100]
        routes[stable] = {f"{stable}@v{v}": bounds[i + 1] - bounds[i] for i, v in enumerate(versions)}
    return routes


@given(route_sets(), st.integers(1, 3))
def test_any_routes_survive_the_yaml_round_trip(routes: dict[str, dict[str, int]], replicas: int) -> None:
    text = yaml.safe_dump(litellm_config(routes, BACKENDS[:1] * replicas))
    assert routes_of(yaml.safe_load(text)["model_list"]) == check_routes(routes)

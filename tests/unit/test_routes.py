"""Routed mode's routes (domain/routes.py) and their LiteLLM configuration."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from loradeploy.domain.routes import (
    Shadow,
    check_routes,
    check_shadows,
    describe,
    litellm_config,
    routes_of,
    shadows_of,
    version_of,
)
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


# -- shadows ----------------------------------------------------------------------------------


def test_a_shadow_splits_every_target_into_a_plain_and_a_mirroring_entry() -> None:
    config = litellm_config({"m-live": {"m@v1": 100}}, BACKENDS[:1], shadows={"m-live": Shadow("m@v2", 10)})
    entries = config["model_list"]
    assert isinstance(entries, list)
    rows = [
        (
            e["model_name"],
            e["model_info"]["id"],
            e["litellm_params"]["weight"],
            e["litellm_params"].get("silent_model"),
        )
        for e in entries
    ]
    assert rows == [
        ("m-live", "m@v1", 9000, None),
        ("m-live", "m@v1#mirror", 1000, "m@v2"),
        ("m@v2", "m@v2#shadow", 1, None),  # the candidate's own group, under its versioned name
    ]
    assert entries[2]["litellm_params"]["model"] == "hosted_vllm/m@v2"
    assert routes_of(entries) == {"m-live": {"m@v1": 100}}
    assert shadows_of(entries) == {"m-live": Shadow("m@v2", 10)}
    assert describe({"m@v1": 100}, Shadow("m@v2", 10)) == "m@v1 100 %; shadow m@v2 10 %"


def test_a_full_shadow_has_only_mirroring_entries_and_several_replicas_tag_each() -> None:
    config = litellm_config({"m-live": {"m@v1": 100}}, BACKENDS, shadows={"m-live": Shadow("m@v2", 100)})
    ids = [e["model_info"]["id"] for e in config["model_list"]]
    assert ids == ["m@v1#0.mirror", "m@v1#1.mirror", "m@v2#0.shadow", "m@v2#1.shadow"]
    assert {version_of(i) for i in ids} == {"m@v1", "m@v2"}


@pytest.mark.parametrize(
    ("shadow", "words"),
    [
        (Shadow("m@v2", 0), "within 1..100"),
        (Shadow("m@v2", 101), "within 1..100"),
        (Shadow("m@v2", True), "within 1..100"),  # type: ignore[arg-type]
        (Shadow("m-v2", 10), "not a versioned name"),
        (Shadow("n@v2", 10), "not a version of the route's model"),
        (Shadow("m@v1", 10), "already has weight"),
    ],
)
def test_bad_shadows_are_refused_naming_the_route(shadow: Shadow, words: str) -> None:
    with pytest.raises(UsageError, match=words) as caught:
        check_shadows({"m-live": shadow}, {"m-live": {"m@v1": 100}})
    assert caught.value.hint
    with pytest.raises(UsageError, match="has no route"):
        check_shadows({"x-live": Shadow("m@v2", 5)}, {"m-live": {"m@v1": 100}})


@given(route_sets(), st.integers(1, 3), st.data())
def test_any_shadows_survive_the_yaml_round_trip_and_no_stable_name_reaches_a_candidate(
    routes: dict[str, dict[str, int]], replicas: int, data: st.DataObject
) -> None:
    shadows = {
        stable: Shadow(f"{stable}@v{data.draw(st.integers(51, 60))}", data.draw(st.integers(1, 100)))
        for stable in routes
        if data.draw(st.booleans())
    }
    entries = yaml.safe_load(
        yaml.safe_dump(litellm_config(routes, BACKENDS[:1] * replicas, shadows=shadows))
    )["model_list"]
    assert routes_of(entries) == check_routes(routes)
    assert shadows_of(entries) == shadows
    ids = [e["model_info"]["id"] for e in entries]
    assert len(ids) == len(set(ids))  # the proxy needs unique ids
    for entry in entries:  # clients calling a stable name only reach versions with weight
        if entry["model_name"] in routes:
            target = entry["litellm_params"]["model"].removeprefix("hosted_vllm/")
            assert target in check_routes(routes)[entry["model_name"]]

"""Capacity planning for routed mode (domain/residency.py): room is made by unloading
only this model's versions that nothing needs, oldest first, as few as the limit needs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loradeploy.domain.residency import Limits, needed, plan_load, unneeded, weights_of
from loradeploy.errors import PermanentError

LIMITS = Limits(max_loras=2, max_cpu_loras=4)


def test_room_is_made_by_unloading_the_oldest_version_nothing_needs() -> None:
    served = ["m@v1", "m@v2", "m@v3", "other@v9"]
    keep = needed("m", alias_versions={"3", "2"}, weights={"m@v3": 100})
    plan = plan_load("m", "4", served=served, keep=keep, weights={"m@v3": 100}, limits=LIMITS)
    assert plan.load == "m@v4"
    assert plan.unload == ["m@v1"]


def test_nothing_is_unloaded_while_there_is_room() -> None:
    plan = plan_load("m", "2", served=["m@v1"], keep=set(), weights={"m@v1": 100}, limits=LIMITS)
    assert (plan.load, plan.unload) == ("m@v2", [])


def test_a_served_version_is_never_loaded_again() -> None:
    plan = plan_load("m", "2", served=["m@v1", "m@v2"], keep=set(), weights={}, limits=LIMITS)
    assert (plan.load, plan.unload) == (None, [])


def test_versions_in_use_slots_and_other_models_are_never_dropped_for_room() -> None:
    served = ["m@v1", "m@v2", "m-live", "other@v1"]
    with pytest.raises(PermanentError, match="no room to load 'm@v3'") as caught:
        plan_load("m", "3", served=served, keep={"m@v1"}, weights={"m@v2": 100}, limits=LIMITS)
    assert "--max-cpu-loras" in (caught.value.hint or "")


def test_more_versions_with_traffic_than_one_batch_mixes_is_refused() -> None:
    with pytest.raises(PermanentError, match=r"3 versions .* --max-loras=2") as caught:
        plan_load("m", "3", served=[], keep=set(), weights={"m@v1": 50, "m@v2": 50}, limits=LIMITS)
    assert "canary" in (caught.value.hint or "")


def test_cleanup_lists_only_this_models_unneeded_versions_oldest_first() -> None:
    served = ["m@v10", "m@v9", "m-live", "mm@v1", "m@v2", "m@v11"]
    assert unneeded("m", served, keep={"m@v11"}) == ["m@v2", "m@v9", "m@v10"]


names = st.lists(st.integers(1, 12), unique=True, max_size=8).map(lambda vs: [f"m@v{v}" for v in vs])
foreign = st.lists(st.sampled_from(["m-live", "m-candidate", "other@v1", "other@v2"]), unique=True)


@given(
    ours=names,
    theirs=foreign,
    version=st.integers(1, 14),
    alias_versions=st.sets(st.integers(1, 12).map(str), max_size=3),
    weighted=st.lists(st.integers(1, 12), unique=True, max_size=2),
    capacity=st.integers(1, 10),
)
def test_a_plan_never_drops_what_is_needed_and_drops_no_more_than_the_limit_requires(
    ours: list[str],
    theirs: list[str],
    version: int,
    alias_versions: set[str],
    weighted: list[int],
    capacity: int,
) -> None:
    served = ours + theirs
    weights = {f"m@v{v}": 100 // len(weighted) for v in weighted}
    keep = needed("m", alias_versions, weights)
    limits = Limits(max_loras=2, max_cpu_loras=capacity)
    try:
        plan = plan_load("m", str(version), served=served, keep=keep, weights=weights, limits=limits)
    except PermanentError:
        return  # refused: nothing was planned, so nothing is dropped
    assert not set(plan.unload) & (keep | set(weights) | set(theirs))
    assert set(plan.unload) <= set(ours)
    if plan.load is None:
        assert f"m@v{version}" in served and plan.unload == []
    else:
        after = len(served) - len(plan.unload) + 1
        assert after <= capacity
        assert len(plan.unload) == max(0, len(served) + 1 - capacity)  # as few as needed
        dropped = sorted(int(n.split("@v")[1]) for n in plan.unload)
        spare = sorted(int(n.split("@v")[1]) for n in ours if n not in keep and n not in weights)
        assert dropped == spare[: len(dropped)]  # the oldest of what is spare


def test_a_names_weight_is_its_largest_in_any_route() -> None:
    routes = {"m-live": {"m@v1": 95, "m@v2": 5}, "m-beta": {"m@v2": 100}, "n-live": {"n@v1": 100}}
    assert weights_of(routes) == {"m@v1": 95, "m@v2": 100, "n@v1": 100}
    assert weights_of({}) == {}

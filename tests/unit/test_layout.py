"""domain/layout.py: one folder per version, read back from vLLM's ``root``."""

from __future__ import annotations

import pytest

from loradeploy.domain.layout import ServedVersion, parse_root, version_dir


def test_version_dir_is_root_slot_model_version() -> None:
    path = version_dir("/srv/adapters", "aws-rag-qa-live", "aws-rag-qa", "3")
    assert path == "/srv/adapters/aws-rag-qa-live/aws-rag-qa-v3"


def test_version_dir_ignores_a_trailing_slash_on_the_root() -> None:
    assert version_dir("/srv/adapters/", "s", "m", "1") == "/srv/adapters/s/m-v1"


@pytest.mark.parametrize(
    ("slot", "model", "version"),
    [
        ("aws-rag-qa-live", "aws-rag-qa", "3"),
        ("candidate", "m", "1"),
        ("s", "model-v2", "10"),  # a model name that itself ends like a version
        ("s.1", "a.b_c", "123456"),
    ],
)
def test_parse_root_reads_back_what_version_dir_wrote(slot: str, model: str, version: str) -> None:
    assert parse_root(version_dir("/srv/adapters", slot, model, version)) == ServedVersion(
        slot=slot, model=model, version=version
    )


def test_parse_root_accepts_a_trailing_slash() -> None:
    assert parse_root("/srv/adapters/live/m-v4/") == ServedVersion("live", "m", "4")


@pytest.mark.parametrize(
    "root",
    [
        "/models/smollm2-135m-instruct",  # a base model path
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "/srv/adapters/live/m",  # no version
        "/srv/adapters/live/m-v0",  # versions start at 1
        "/srv/adapters/live/m-v01",
        "/srv/adapters/live/m-vx",
        "/srv/adapters/live/-v3",  # no model
        "m-v3",  # no slot folder
        "/m-v3",
        "",
    ],
)
def test_parse_root_returns_none_for_foreign_paths(root: str) -> None:
    assert parse_root(root) is None


@pytest.mark.parametrize(
    "name",
    [
        "m-v1\u0663",  # ARABIC-INDIC DIGIT THREE after an ASCII 1
        "m-v1\uff10",  # FULLWIDTH DIGIT ZERO
        "m-v2\u0967",  # DEVANAGARI DIGIT ONE
        "m-v10\U0001d7ce",  # MATHEMATICAL BOLD DIGIT ZERO
        "m-v\u0663",  # a non-ASCII first digit (refused by [1-9] already)
    ],
)
def test_parse_root_reads_only_ascii_version_digits(name: str) -> None:
    # MLflow versions are ASCII integers; "1\u0663" would be a version no registry has.
    assert parse_root(f"/srv/adapters/live/{name}") is None

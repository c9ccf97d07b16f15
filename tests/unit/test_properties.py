"""Properties of everything that turns user or registry text into names, paths and URLs
(issue 6): round trips, no accepted name leads outside the adapters root, and every
refusal is a ``UsageError`` (or ``InvalidAdapterError`` for registry file names), never
another exception. Example counts stay small: the unit suite must stay fast.
"""

from __future__ import annotations

import posixpath
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loradeploy.domain.adapter import check_file_names
from loradeploy.domain.layout import ServedVersion, parse_root, version_dir
from loradeploy.domain.names import Source, alias_name, model_name, parse_source, slot_name
from loradeploy.errors import InvalidAdapterError, UsageError, redact
from loradeploy.settings import check_url

FAST = settings(max_examples=150, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that looks like what people and attackers type: separators, dots, shell and
# control characters, and unicode digits, mixed with the allowed alphabet.
_tricky = st.sampled_from([*"/\\.:;$`|&<>*?'\" \t\n\x00~é٣²-_@%[]", "..", "../", "/.."])
_allowed = st.characters(min_codepoint=48, max_codepoint=122)
hostile_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(_tricky, _allowed), max_size=30).map("".join),
)
safe_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True).filter(lambda s: ".." not in s)
aliases = st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True).filter(
    lambda s: s.lower() != "latest" and not (s[0] in "vV" and s[1:].isdigit() and len(s) > 1)
)
versions = st.integers(min_value=1, max_value=10**18 - 1).map(str)
ROOTS = ("/srv/adapters", "/mnt/adapters/", "/a b/c", "relative/root")


# -- sources ---------------------------------------------------------------------------------------


@FAST
@given(
    st.one_of(hostile_text, st.builds("{}:{}".format, st.sampled_from(["alias", "version"]), hostile_text))
)
@example("version:" + "1" * 5000)
@example("alias:" + "a" * 256)
def test_parse_source_returns_a_source_or_raises_usage_error(text: str) -> None:
    try:
        source = parse_source(text)
    except UsageError:
        return
    assert parse_source(str(source)) == source
    if source.kind == "alias":
        assert alias_name(source.value) == source.value
    else:
        assert source.value.isascii() and source.value.isdigit() and int(source.value) >= 1


@FAST
@given(aliases)
def test_every_valid_alias_round_trips(alias: str) -> None:
    source = parse_source(f"alias:{alias}")
    assert source == Source("alias", alias)
    assert str(source) == f"alias:{alias}"


@FAST
@given(versions, st.integers(min_value=0, max_value=5))
def test_every_version_round_trips_leading_zeros_dropped(version: str, zeros: int) -> None:
    if len(version) + zeros > 18:  # more digits than any MLflow version: refused, by design
        with pytest.raises(UsageError):
            parse_source(f"version:{'0' * zeros}{version}")
        return
    source = parse_source(f"version:{'0' * zeros}{version}")
    assert source == Source("version", version)
    assert parse_source(str(source)) == source


# -- names -----------------------------------------------------------------------------------------


@FAST
@given(hostile_text)
@example("../x")
@example("a/../../b")
@example(".")
@example("a\x00b")
def test_names_are_returned_unchanged_or_refused_with_usage_error(text: str) -> None:
    for check in (model_name, slot_name, alias_name):
        try:
            assert check(text) == text
        except UsageError as exc:
            assert "\n" not in exc.one_line()


@FAST
@given(hostile_text)
def test_an_accepted_slot_or_model_name_is_one_plain_path_component(text: str) -> None:
    try:
        value = slot_name(text)
    except UsageError:
        return
    assert model_name(value) == value
    assert PurePosixPath(value).name == value
    assert value not in (".", "..") and ".." not in value
    assert not value.startswith(("-", "."))
    assert all(ch.isascii() and ch.isprintable() and not ch.isspace() for ch in value)
    assert "\\" not in value and "\x00" not in value


# -- paths -----------------------------------------------------------------------------------------


@FAST
@given(st.sampled_from(ROOTS), safe_names, safe_names, versions)
def test_version_dir_stays_two_levels_below_the_root_and_parses_back(
    root: str, slot: str, model: str, version: str
) -> None:
    slot, model = slot_name(slot), model_name(model)
    path = version_dir(root, slot, model, version)
    assert posixpath.normpath(path) == path  # nothing to collapse: no '.', '..', '//'
    relative = PurePosixPath(path).relative_to(PurePosixPath(root))
    assert relative.parts == (slot, f"{model}-v{version}")
    assert parse_root(path) == ServedVersion(slot=slot, model=model, version=version)
    assert parse_root(path + "/") == ServedVersion(slot=slot, model=model, version=version)


@settings(max_examples=40, database=None, deadline=None)
@given(safe_names, safe_names, versions)
def test_version_dir_resolves_inside_a_real_root(
    tmp_path_factory: pytest.TempPathFactory, slot: str, model: str, version: str
) -> None:
    root = tmp_path_factory.getbasetemp() / "prop-root"
    path = Path(version_dir(str(root), slot_name(slot), model_name(model), version))
    assert path.resolve().is_relative_to(root.resolve())


@FAST
@given(st.one_of(hostile_text, st.builds("/srv/adapters/{}/{}".format, hostile_text, hostile_text)))
def test_parse_root_never_raises_and_reads_only_safe_parts(root: str) -> None:
    served = parse_root(root)
    if served is None:
        return
    assert "/" not in served.model
    assert served.version.isdigit() and not served.version.startswith("0")
    assert served.slot == PurePosixPath(root.rstrip("/")).parent.name


# -- registry file names ---------------------------------------------------------------------------


@FAST
@given(hostile_text)
@example("../x")
@example("/etc/passwd")
@example("a\\b")
@example("a\x00b")
def test_a_file_name_is_plain_or_refused_with_invalid_adapter_error(name: str) -> None:
    try:
        check_file_names([name], "test")
    except InvalidAdapterError:
        return
    assert PurePosixPath(name).name == name
    assert posixpath.normpath(posixpath.join("/staging", name)) == f"/staging/{name}"
    assert not name.startswith(".")
    assert "\\" not in name and "\x00" not in name and "\n" not in name


# -- URLs and redaction ----------------------------------------------------------------------------


@FAST
@given(
    st.one_of(
        hostile_text,
        st.builds("{}://{}".format, st.sampled_from(["http", "https", "ftp", "file"]), hostile_text),
    )
)
@example("HTTP://0")
@example("http://[::1")
@example("http://h:99999")
def test_check_url_accepts_only_http_urls_without_credentials(url: str) -> None:
    try:
        assert check_url(url, what="vLLM", setting="--vllm-url", credentials="VLLM_API_KEY") == url
    except UsageError as exc:
        assert "\n" not in exc.one_line()
        return
    assert url.lower().startswith(("http://", "https://"))  # schemes are case-insensitive
    assert "@" not in url.split("/")[2]


_userinfo = st.text(
    alphabet=st.characters(blacklist_characters="/?#\\", blacklist_categories=["Z", "C"]),
    min_size=1,
    max_size=30,
)


@FAST
@given(
    _userinfo,
    st.sampled_from(["http", "https", "mlflow-artifacts"]),
    st.sampled_from(["", "/api/2.0/x", ":5000/y"]),
)
def test_redact_removes_any_user_info(userinfo: str, scheme: str, rest: str) -> None:
    line = f"MLflow at {scheme}://{userinfo}@mlflow.example{rest} failed"
    assert redact(line) == f"MLflow at {scheme}://***@mlflow.example{rest} failed"


@FAST
@given(
    st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=",;'\"@"),
        min_size=8,
        max_size=40,
    )
)
def test_redact_removes_bearer_tokens_and_given_secrets(token: str) -> None:
    assert redact(f"sent Authorization: Bearer {token} to vLLM") == "sent Authorization: Bearer *** to vLLM"
    assert redact(f"key {token} leaked", [token]) == "key *** leaked"

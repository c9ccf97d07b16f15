"""Hostile command lines through the real Typer app (issue 6).

Every case must exit with the documented code (2 for bad input, 75 for an unreachable
server), print exactly one error line that names the object and a next step, and never
a traceback. Nothing here reaches a server: bad input is refused before any connection,
and "unreachable" is port 9 on loopback, where nothing listens. The case lists are the
inventory in docs/hostile-inputs.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from loradeploy.cli import app

NOTHING_LISTENS = "http://127.0.0.1:9"
SECRET = "s3cr3t-Pa55word"


@pytest.fixture(autouse=True)
def in_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_one_error_line(result: Result, code: int, *names: str) -> str:
    """The documented exit code, one 'error: ...; next: ...' line, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    [line] = lines
    assert line.startswith("error: ")
    assert "; next: " in line
    assert "Traceback" not in result.output
    for name in names:
        assert name in line, (name, line)
    return line


def load(
    *, model: str = "aws-rag-qa", source: str = "alias:candidate", slot: str = "aws-rag-qa-candidate"
) -> Result:
    return invoke(
        "load-adapter",
        f"--model-name={model}",
        f"--source={source}",
        f"--slot-name={slot}",
        f"--vllm-url={NOTHING_LISTENS}",
        f"--tracking-uri={NOTHING_LISTENS}",
    )


# -- sources -------------------------------------------------------------------------------------

BAD_SOURCES = {
    "empty": "",
    "no-kind": "candidate",
    "alias-empty": "alias:",
    "version-empty": "version:",
    "version-zero": "version:0",
    "version-negative": "version:-1",
    "version-float": "version:1.5",
    "version-hex": "version:0x10",
    "version-huge": "version:" + "9" * 30,
    "version-5000-digits": "version:" + "1" * 5000,
    "version-arabic-digit": "version:\u0663",
    "version-space": "version: 3",
    "alias-reserved-latest": "alias:latest",
    "alias-reserved-v3": "alias:v3",
    "alias-path": "alias:../live",
    "alias-slash": "alias:a/b",
    "alias-space": "alias:cand idate",
    "alias-shell": "alias:x;rm -rf /",
    "alias-subshell": "alias:$(id)",
    "alias-backtick": "alias:`id`",
    "alias-newline": "alias:candidate\n--force",
    "alias-nul": "alias:cand\x00idate",
    "alias-256": "alias:" + "a" * 256,
    "unknown-kind": "tag:candidate",
    "upper-kind": "ALIAS:candidate",
    "markup": "alias:[red]x[/]",
}


@pytest.mark.parametrize("source", BAD_SOURCES.values(), ids=BAD_SOURCES.keys())
def test_a_malformed_source_is_a_usage_error(source: str) -> None:
    assert_one_error_line(load(source=source), 2)


# -- alias names MLflow would reject --------------------------------------------------------------

BAD_ALIASES = {
    "latest": "latest",
    "Latest": "Latest",
    "v1": "v1",
    "V42": "V42",
    "dot": "a.b",
    "space": "a b",
    "slash": "a/b",
    "at": "live@2",
    "colon": "alias:x",
    "empty": "",
    "256-chars": "a" * 256,
    "unicode": "kandidát",
}


@pytest.mark.parametrize("alias", BAD_ALIASES.values(), ids=BAD_ALIASES.keys())
def test_an_alias_mlflow_would_reject_is_refused_by_register(alias: str, tmp_path: Path) -> None:
    result = invoke(
        "register",
        "--model-name=aws-rag-qa",
        f"--adapter-dir={tmp_path}",
        f"--alias={alias}",
        f"--tracking-uri={NOTHING_LISTENS}",
    )
    assert_one_error_line(result, 2, "alias")


@pytest.mark.parametrize("alias", BAD_ALIASES.values(), ids=BAD_ALIASES.keys())
def test_an_alias_mlflow_would_reject_is_refused_by_promote(alias: str) -> None:
    result = invoke(
        "promote-adapter",
        "--model-name=aws-rag-qa",
        f"--source-alias={alias}",
        f"--vllm-url={NOTHING_LISTENS}",
        f"--tracking-uri={NOTHING_LISTENS}",
    )
    assert_one_error_line(result, 2, "alias")


# -- model and slot names ---------------------------------------------------------------------------

BAD_NAMES = {
    "slash": "a/b",
    "dotdot": "../x",
    "dotdot-inside": "a..b",
    "absolute": "/etc/passwd",
    "backslash": "a\\b",
    "space": "a b",
    "leading-space": " a",
    "tab": "a\tb",
    "newline": "a\nb",
    "nul": "a\x00b",
    "semicolon": "a;rm -rf ~",
    "subshell": "$(reboot)",
    "backtick": "`id`",
    "pipe": "a|b",
    "ampersand": "a&b",
    "redirect": "a>b",
    "glob": "a*",
    "quote": "a'b",
    "leading-dot": ".hidden",
    "leading-dash": "-rf",
    "empty": "",
    "129-chars": "a" * 129,
    "10000-chars": "b" * 10_000,
    "unicode": "modèle",
    "markup": "[bold]x[/]",
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_a_hostile_slot_name_is_a_usage_error(name: str) -> None:
    assert_one_error_line(load(slot=name), 2, "slot name")


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_a_hostile_model_name_is_a_usage_error(name: str) -> None:
    assert_one_error_line(load(model=name), 2, "model name")


@pytest.mark.parametrize(
    "name", ["a/b", "../x", "a b", "$(id)", "a" * 129], ids=["slash", "dotdot", "space", "subshell", "long"]
)
def test_a_hostile_adapter_name_for_smoke_test_is_a_usage_error(name: str) -> None:
    result = invoke("smoke-test", f"--adapter-name={name}", f"--vllm-url={NOTHING_LISTENS}")
    assert_one_error_line(result, 2, "slot name")


# -- URLs ----------------------------------------------------------------------------------------

BAD_VLLM_URLS = {
    "ftp": "ftp://127.0.0.1:9",
    "file": "file:///etc/passwd",
    "javascript": "javascript:alert(1)",
    "no-scheme": "localhost:8000",
    "no-host": "http://",
    "bare-word": "vllm",
    "broken-ipv6": "http://[::1",
    "port-too-big": "http://127.0.0.1:99999",
    "port-negative": "http://127.0.0.1:-1",
    "port-words": "http://127.0.0.1:http",
    "space-in-host": "http://exa mple.com",
    "newline": "http://127.0.0.1:9\n",
}


@pytest.mark.parametrize("url", BAD_VLLM_URLS.values(), ids=BAD_VLLM_URLS.keys())
def test_a_malformed_vllm_url_is_a_usage_error(url: str) -> None:
    result = invoke("smoke-test", "--adapter-name=aws-rag-qa-candidate", f"--vllm-url={url}")
    assert_one_error_line(result, 2, "vLLM URL", "--vllm-url")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:9", "nonsense", "file:///tmp/mlruns", "sqlite:///x.db"])
def test_a_tracking_uri_that_is_not_http_is_a_usage_error(url: str, tmp_path: Path) -> None:
    result = invoke("history", "--model-name=aws-rag-qa", f"--tracking-uri={url}")
    assert_one_error_line(result, 2, "MLflow tracking URL")
    assert list(tmp_path.iterdir()) == []  # MLflow did not start a file store here


def test_a_second_replica_url_is_checked_too() -> None:
    result = invoke(
        "load-adapter",
        "--model-name=aws-rag-qa",
        "--source=version:1",
        "--slot-name=aws-rag-qa-candidate",
        f"--vllm-url={NOTHING_LISTENS}",
        "--vllm-url=file:///etc/passwd",
        f"--tracking-uri={NOTHING_LISTENS}",
        "--adapters-root=adapters",
    )
    assert_one_error_line(result, 2, "file:///etc/passwd")


def test_an_unreachable_vllm_is_transient_and_names_the_url(tmp_path: Path) -> None:
    result = invoke(
        "smoke-test",
        "--adapter-name=aws-rag-qa-candidate",
        f"--vllm-url={NOTHING_LISTENS}",
        "--output-dir=out",
    )
    assert_one_error_line(result, 75, NOTHING_LISTENS, "unreachable")
    assert json.loads((tmp_path / "out" / "result.json").read_text())["exit_code"] == 75


def test_an_unreachable_mlflow_is_transient_and_names_the_url() -> None:
    result = invoke("history", "--model-name=aws-rag-qa", f"--tracking-uri={NOTHING_LISTENS}")
    assert_one_error_line(result, 75, f"MLflow at {NOTHING_LISTENS}")


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (("smoke-test", "--adapter-name=a", f"--vllm-url=http://admin:{SECRET}@127.0.0.1:9"), "--vllm-url"),
        (("smoke-test", "--adapter-name=a", f"--vllm-url=https://{SECRET}@vllm.example:8000"), "--vllm-url"),
        (
            ("history", "--model-name=m", f"--tracking-uri=http://admin:{SECRET}@127.0.0.1:9"),
            "--tracking-uri",
        ),
        (
            ("history", "--model-name=m", f"--tracking-uri=https://token:{SECRET}@mlflow.example"),
            "--tracking-uri",
        ),
    ],
    ids=["vllm-user-password", "vllm-token", "mlflow-user-password", "mlflow-token"],
)
def test_credentials_in_a_url_are_refused_and_never_printed(
    args: tuple[str, ...], setting: str, tmp_path: Path
) -> None:
    result = invoke(*args, "--output-dir=out")
    line = assert_one_error_line(result, 2, "credentials", setting, "***@")
    assert SECRET not in result.output
    assert SECRET not in line
    for written in (tmp_path / "out").iterdir():
        assert SECRET not in written.read_text()


def test_credentials_in_the_environment_url_are_refused_and_never_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://admin:{SECRET}@127.0.0.1:9")
    result = invoke("history", "--model-name=m")
    assert_one_error_line(result, 2, "MLFLOW_TRACKING_URI")
    assert SECRET not in result.output


def test_a_missing_ca_bundle_is_a_usage_error() -> None:
    result = invoke(
        "smoke-test", "--adapter-name=a", f"--vllm-url={NOTHING_LISTENS}", "--ca-bundle=/nonexistent/ca.pem"
    )
    assert_one_error_line(result, 2, "/nonexistent/ca.pem", "--ca-bundle")


def test_a_ca_bundle_that_is_not_pem_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    result = invoke("smoke-test", "--adapter-name=a", f"--vllm-url={NOTHING_LISTENS}", "--ca-bundle=ca.pem")
    assert_one_error_line(result, 2, "ca.pem", "PEM")


@pytest.mark.parametrize("value", ["yes", "-1", "0", "1e3"], ids=["word", "negative", "zero", "float"])
def test_a_bad_max_adapter_bytes_is_a_usage_error(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORADEPLOY_MAX_ADAPTER_BYTES", value)
    result = invoke("smoke-test", "--adapter-name=a", f"--vllm-url={NOTHING_LISTENS}")
    assert_one_error_line(result, 2, "settings are invalid")

"""Credentials against real servers: MLflow with basic auth, vLLM with an API key.

Wrong or missing credentials give one clear line and the documented exit code; the
right ones work; no secret ever appears in output or result files.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from loradeploy.stack.local import LocalStack, StackConfig

from .conftest import ASSETS, DEMO_ADAPTERS, PROBES, Outcome, Stack

USAGE = 2  # AuthenticationError is a usage error: fix the credentials, do not retry
ADMIN = "admin"


def _no_secret(outcome: Outcome, secret: str, out: Path | None = None) -> None:
    assert secret not in outcome.stdout and secret not in outcome.stderr
    if out is not None and out.exists():
        for file in out.rglob("*"):
            if file.is_file():
                assert secret not in file.read_text(errors="replace"), file


@pytest.fixture(scope="module")
def auth_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A second MLflow server, with basic auth, on its own data."""
    home = tmp_path_factory.mktemp("auth-mlflow")
    (home / "mlflow").mkdir()
    password = "pw-" + secrets.token_hex(8)
    config = home / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{home / 'auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        f"admin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
        encoding="utf-8",
    )
    local = LocalStack(StackConfig(home=home, assets=ASSETS))
    record = local.start_mlflow(
        "mlflow-auth",
        extra_args=["--app-name", "basic-auth"],
        extra_env={
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        },
    )
    try:
        yield record.url, password
    finally:
        local.stop("mlflow-auth")


@pytest.fixture(scope="module")
def keyed_vllm(stack: Stack) -> Iterator[tuple[str, str]]:
    """A second vLLM server that requires an API key (empty: no restored adapters)."""
    key = "key-" + secrets.token_hex(8)
    local = LocalStack(StackConfig(home=stack.home, assets=ASSETS))
    record = local.start_vllm("vllm-keyed", restore=False, extra_env={"VLLM_API_KEY": key})
    try:
        yield record.url, key
    finally:
        local.stop("vllm-keyed")


def _register(stack: Stack, uri: str, env: dict[str, str], out: Path) -> Outcome:
    return stack.run(
        "register",
        "--model-name=it-auth",
        f"--adapter-dir={DEMO_ADAPTERS / 'aws-rag-qa-v1'}",
        "--reuse-identical",
        f"--tracking-uri={uri}",
        output_dir=out,
        env=env,
    )


def test_mlflow_basic_auth(stack: Stack, auth_mlflow: tuple[str, str], tmp_path: Path) -> None:
    uri, password = auth_mlflow
    none = _register(stack, uri, {}, tmp_path / "none")
    assert none.code == USAGE, none.stderr
    assert len(none.error_lines) == 1 and "MLflow" in none.error_lines[0], none.stderr

    bad = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": "not-" + password}
    wrong = _register(stack, uri, bad, tmp_path / "w")
    assert wrong.code == USAGE, wrong.stderr
    _no_secret(wrong, "not-" + password, tmp_path / "w")

    right = _register(
        stack, uri, {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": password}, tmp_path / "ok"
    )
    assert right.code == 0, right.stderr
    assert right.result is not None and right.result["version"]
    _no_secret(right, password, tmp_path / "ok")


def test_vllm_api_key(stack: Stack, keyed_vllm: tuple[str, str], tmp_path: Path) -> None:
    url, key = keyed_vllm
    args = ["smoke-test", "--adapter-name=missing-slot", f"--vllm-url={url}", "--num-requests=1"]

    missing = stack.run(*args, output_dir=tmp_path / "missing")
    assert missing.code == USAGE, missing.stderr
    assert len(missing.error_lines) == 1 and "--api-key" in missing.stderr, missing.stderr

    wrong = stack.run(*args, output_dir=tmp_path / "wrong", env={"VLLM_API_KEY": "not-" + key})
    assert wrong.code == USAGE, wrong.stderr
    _no_secret(wrong, "not-" + key, tmp_path / "wrong")

    # With the key the request is authorised: what fails now is the slot, which is not served.
    right = stack.run(
        *args, f"--prompts-file={PROBES}", output_dir=tmp_path / "right", env={"VLLM_API_KEY": key}
    )
    assert right.code not in (USAGE, 75), right.stderr
    assert "missing-slot" in right.stderr
    _no_secret(right, key, tmp_path / "right")

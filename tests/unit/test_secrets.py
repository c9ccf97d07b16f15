"""Secrets and TLS (issue 6): credentials never reach error lines, result files or
``--help``; the vLLM key travels only as ``Authorization: Bearer``; TLS verification is
on, a CA bundle reaches both httpx and MLflow, and nothing can turn verification off.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import certifi
import click
import httpx
import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from loradeploy.cli import app
from loradeploy.cli import common as cli
from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.vllm import VllmClient, tls_context
from loradeploy.errors import (
    AdapterRejectedError,
    AuthenticationError,
    ExitCode,
    ServerUnavailableError,
    redact,
)
from loradeploy.settings import Settings, load_settings
from loradeploy.steps.smoke_test import smoke_test
from support.fakes import FakeVllmServer, vllm_error

URL = "http://vllm.test:8000"
NOTHING_LISTENS = "http://127.0.0.1:9"
API_KEY = "sk-live-0123456789abcdef"
PASSWORD = "mlflow-Pa55-word-xyz"
TOKEN = "mlflow-token-abcdef0123"
SECRETS = (API_KEY, PASSWORD, TOKEN)
CERT_ENV = "MLFLOW_TRACKING_SERVER_CERT_PATH"


@pytest.fixture(autouse=True)
def in_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CERT_ENV, raising=False)  # restored after each test
    for name in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", API_KEY)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def all_commands() -> list[tuple[str, click.Command]]:
    """Every command of the app, sub-commands included, with its full name."""
    root = typer.main.get_command(app)
    found: list[tuple[str, click.Command]] = []

    def walk(prefix: str, command: click.Command) -> None:
        found.append((prefix, command))
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(f"{prefix} {name}".strip(), sub)

    walk("", root)
    return found


# -- the vLLM key: a bearer header, and a 401 that says what to do ----------------------------------


def test_the_key_is_sent_only_as_a_bearer_header(server: FakeVllmServer) -> None:
    server.api_key = API_KEY
    with VllmClient(URL, api_key=API_KEY, transport=server.transport()) as client:
        client.list_models()
    call = server.calls[-1]
    assert call.headers["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in str(call.path)
    assert call.body is None


def test_a_401_during_a_step_is_an_authentication_error_with_a_next_step(server: FakeVllmServer) -> None:
    server.api_key = API_KEY
    with (
        VllmClient(URL, api_key="sk-wrong-key-999", transport=server.transport()) as client,
        pytest.raises(AuthenticationError) as caught,
    ):
        smoke_test(client, adapter="aws-rag-qa-candidate", num_requests=1, max_latency_s=30, probes=[])
    error = caught.value
    assert error.exit_code == ExitCode.USAGE
    line = error.one_line()
    assert URL in line and "401" in line
    assert "next: pass the server's key with --api-key or VLLM_API_KEY" in line
    assert "sk-wrong-key-999" not in line


def test_a_remote_body_that_echoes_the_key_is_redacted() -> None:
    def echoing(request: httpx.Request) -> httpx.Response:  # a FAKE proxy that echoes headers
        message = f"bad request with headers {{'authorization': '{request.headers['authorization']}'}}"
        return httpx.Response(500, json=vllm_error(message, "InternalServerError", 500))

    with (
        VllmClient(URL, api_key=API_KEY, transport=httpx.MockTransport(echoing)) as client,
        pytest.raises(AdapterRejectedError) as caught,
    ):
        client.load_lora_adapter("slot", "/srv/adapters/slot/m-v1")
    assert API_KEY not in caught.value.one_line()
    assert "Bearer ***" in caught.value.one_line()


def test_a_transport_error_that_names_a_credentialed_url_is_redacted() -> None:
    def failing(request: httpx.Request) -> httpx.Response:  # a FAKE network failure
        raise httpx.ConnectError(f"cannot reach http://admin:{PASSWORD}@proxy.internal:3128", request=request)

    with (
        VllmClient(URL, transport=httpx.MockTransport(failing)) as client,
        pytest.raises(ServerUnavailableError) as caught,
    ):
        client.list_models()
    assert PASSWORD not in caught.value.one_line()


def test_a_long_body_is_redacted_before_it_is_cut() -> None:
    from loradeploy.errors import short

    body = "x" * 150 + f" see http://admin:{PASSWORD}@proxy.internal/"
    for limit in range(150, 200):
        assert PASSWORD[:6] not in short(body, limit)


# -- error lines and result files --------------------------------------------------------------------


@pytest.mark.usefixtures("secrets_in_env")
@pytest.mark.parametrize(
    "args",
    [
        ("smoke-test", "--adapter-name=aws-rag-qa-candidate", f"--vllm-url={NOTHING_LISTENS}"),
        (
            "smoke-test",
            "--adapter-name=aws-rag-qa-candidate",
            f"--vllm-url={NOTHING_LISTENS}",
            f"--api-key={API_KEY}",
        ),
        ("history", "--model-name=aws-rag-qa", f"--tracking-uri={NOTHING_LISTENS}"),
        ("smoke-test", "--adapter-name=a", f"--vllm-url=http://u:{PASSWORD}@127.0.0.1:9"),
        ("history", "--model-name=m", f"--tracking-uri=https://admin:{PASSWORD}@mlflow.example"),
    ],
    ids=[
        "vllm-unreachable",
        "vllm-key-flag",
        "mlflow-unreachable",
        "vllm-url-credentials",
        "mlflow-url-credentials",
    ],
)
def test_failing_commands_never_print_or_write_a_secret(args: tuple[str, ...], tmp_path: Path) -> None:
    result = invoke(*args, "--output-dir=out")
    assert result.exit_code in (ExitCode.USAGE, ExitCode.TRANSIENT), result.output
    assert_no_secret(result.output)
    written = list((tmp_path / "out").iterdir())
    assert written, "the failed step writes its result files"
    assert_no_secret(*(path.read_text() for path in written))
    assert json.loads((tmp_path / "out" / "result.json").read_text())["status"] == "error"


@pytest.mark.usefixtures("secrets_in_env")
def test_a_secret_that_ends_up_in_a_message_is_scrubbed_by_the_cli(tmp_path: Path) -> None:
    # The slot name is refused and echoed; here it happens to contain the API key.
    result = invoke(
        "smoke-test", f"--adapter-name=x/{API_KEY}", f"--vllm-url={NOTHING_LISTENS}", "--output-dir=out"
    )
    assert result.exit_code == ExitCode.USAGE
    assert "***" in result.stderr
    assert_no_secret(result.output, (tmp_path / "out" / "result.json").read_text())


@pytest.mark.usefixtures("secrets_in_env")
@pytest.mark.parametrize("name", [name for name, _ in all_commands()], ids=lambda n: n or "root")
def test_help_never_shows_a_secret(name: str) -> None:
    result = invoke(*name.split(), "--help")
    assert result.exit_code == 0, result.output
    assert_no_secret(result.output)


def test_redact_covers_urls_bearer_tokens_and_given_values() -> None:
    line = f"at https://admin:{PASSWORD}@h/x with Bearer {API_KEY} and {TOKEN}"
    assert redact(line, [TOKEN]) == "at https://***@h/x with Bearer *** and ***"
    assert redact("short values like 'ab' are left alone", ["ab"]) == "short values like 'ab' are left alone"


def test_settings_never_show_the_api_key(secrets_in_env: None, tmp_path: Path) -> None:
    import os

    settings = load_settings({}, os.environ, tmp_path)
    assert settings.vllm_api_key is not None
    assert_no_secret(repr(settings), str(settings), settings.model_dump_json())


# -- TLS ------------------------------------------------------------------------------------------------


def test_verification_is_on_by_default() -> None:
    context = tls_context(Settings().verify)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    with VllmClient(URL) as client:
        assert client.tls.verify_mode == ssl.CERT_REQUIRED


# A self-signed CA certificate (public part only), like a company's internal CA. Made
# once with the cryptography package; only its presence in a trust store is tested.
PRIVATE_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBYTCCAQegAwIBAgIURRHtuvJqwQE8/pA9Uo4lTyklz9QwCgYIKoZIzj0EAwIw
JTEjMCEGA1UEAwwabG9yYWRlcGxveSB0ZXN0IHByaXZhdGUgQ0EwIBcNMjYxMTI3
MDAwMDAwWhgPMjEyNjExMDMwMDAwMDBaMCUxIzAhBgNVBAMMGmxvcmFkZXBsb3kg
dGVzdCBwcml2YXRlIENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEKpcL8Zoa
xZQsv2uHupQ4t6LJlCAJrbe0V+y8h8KTVIPAL+VNA4yGJF3cfqI3wtrqaSNOBLZG
zhDtwjuRm6zxf6MTMBEwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBF
AiBOJRS1Jp0dpnj6MBza/ilgz/ecsO8lf7uSoy28TKUY7AIhAMThIG3/kSdNuN5n
Q77HWPRFTDlvzWpFOrJq9OMKU+xu
-----END CERTIFICATE-----
"""


def private_ca(folder: Path) -> Path:
    path = folder / "private-ca.pem"
    path.write_text(PRIVATE_CA_PEM)
    return path


def ca_names(context: ssl.SSLContext) -> list[str]:
    return [str(cert.get("subject")) for cert in context.get_ca_certs()]


def test_a_ca_bundle_is_added_to_the_vllm_client_next_to_the_default_cas(tmp_path: Path) -> None:
    settings = load_settings({"ca_bundle": private_ca(tmp_path)}, {}, tmp_path)
    default = tls_context(True)
    assert not any("loradeploy test private CA" in name for name in ca_names(default))
    with cli._vllm(settings.model_copy(update={"vllm_url": URL})) as client:
        assert client.tls.verify_mode == ssl.CERT_REQUIRED
        assert client.tls.check_hostname is True
        names = ca_names(client.tls)
        assert any("loradeploy test private CA" in name for name in names)
        assert len(names) == len(ca_names(default)) + 1  # added, public CAs kept


def test_a_ca_bundle_is_handed_to_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = Path(certifi.where())
    monkeypatch.setenv("LORADEPLOY_CA_BUNDLE", str(bundle))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example")
    registry = cli._registry(cli._settings())
    assert isinstance(registry, MLflowHelper)
    import os

    assert os.environ[CERT_ENV] == str(bundle)


def test_without_a_ca_bundle_mlflow_keeps_its_default_verification() -> None:
    import os

    MLflowHelper("https://mlflow.example")
    assert CERT_ENV not in os.environ


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_mlflows_insecure_switch_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", value)
    result = invoke("history", "--model-name=aws-rag-qa", "--tracking-uri=https://mlflow.example")
    assert result.exit_code == ExitCode.USAGE
    assert "MLFLOW_TRACKING_INSECURE_TLS" in result.stderr
    assert "never turns TLS verification off" in result.stderr


def test_verification_cannot_be_turned_off_in_code() -> None:
    from loradeploy.errors import UsageError

    with pytest.raises(UsageError):
        tls_context(False)
    with pytest.raises(UsageError):
        VllmClient(URL, verify=False)


def test_no_option_or_setting_disables_verification() -> None:
    words = ("insecure", "verify", "no-tls", "skip-tls", "tls-skip", "no-ssl", "ssl-verify", "unsafe")
    for name, command in all_commands():
        for param in command.params:
            for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
                assert not any(word in opt.lower() for word in words), (name, opt)
            assert not getattr(param, "envvar", None), (name, param.name)
    assert not any(word in field for field in Settings.model_fields for word in ("insecure", "verify"))
    # The only TLS knob adds a CA; every possible Settings value keeps verification on.
    assert Settings().verify is True
    assert Settings(ca_bundle=Path("/x.pem")).verify == "/x.pem"

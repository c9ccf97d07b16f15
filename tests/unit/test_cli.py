"""cli.py through typer's CliRunner: argument errors, exit codes, result files.

No server is needed: every command here fails before it reaches one, or reaches for
port 9 on loopback, where nothing listens. The autouse fixture in conftest.py points
LORADEPLOY_HOME to an empty folder, so a real .loradeploy/stack.json is never read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from loradeploy.cli import app

NOTHING_LISTENS = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def in_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_help_lists_the_steps() -> None:
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    for command in ("load-adapter", "smoke-test", "set-staged-alias", "status"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["load-adapter", "smoke-test", "set-staged-alias"])
def test_command_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "--output-dir" in result.stdout


def test_load_adapter_with_an_unknown_source_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(
        "load-adapter",
        "--model-name=aws-rag-qa",
        "--source=latest",
        "--slot-name=aws-rag-qa-candidate",
        f"--vllm-url={NOTHING_LISTENS}",
        f"--output-dir={tmp_path / 'out'}",
    )
    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert line.startswith("error:")
    assert "source 'latest'" in line
    assert "next:" in line
    written = json.loads((tmp_path / "out" / "result.json").read_text())
    assert (written["status"], written["exit_code"]) == ("error", 2)


def test_load_adapter_with_a_slot_name_that_is_a_path_is_a_usage_error() -> None:
    result = invoke(
        "load-adapter",
        "--model-name=aws-rag-qa",
        "--source=alias:candidate",
        "--slot-name=a/b",
        f"--vllm-url={NOTHING_LISTENS}",
    )
    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert "slot name 'a/b'" in line


def test_set_staged_alias_with_a_reserved_alias_is_a_usage_error() -> None:
    result = invoke("set-staged-alias", "--model-name=aws-rag-qa", "--source=alias:v3")
    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert "alias 'v3'" in line
    assert "reserved" in line


def test_smoke_test_against_nothing_is_transient_and_writes_the_result(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        "smoke-test",
        "--adapter-name=aws-rag-qa-candidate",
        f"--vllm-url={NOTHING_LISTENS}",
        f"--output-dir={out}",
    )
    assert result.exit_code == 75, result.output
    [line] = error_lines(result)
    assert NOTHING_LISTENS in line
    written = json.loads((out / "result.json").read_text())
    assert written["step"] == "smoke-test"
    assert written["status"] == "error"
    assert written["exit_code"] == 75
    assert NOTHING_LISTENS in written["error"]
    assert (out / "status").read_text() == "error\n"


def test_smoke_test_without_a_vllm_url_is_a_usage_error() -> None:
    # No flag, no environment, an empty LORADEPLOY_HOME: no URL from anywhere.
    result = invoke("smoke-test", "--adapter-name=aws-rag-qa-candidate")
    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert "no vLLM URL" in line
    assert "--vllm-url" in line


def test_an_error_that_contains_markup_is_printed_as_is() -> None:
    result = invoke("set-staged-alias", "--model-name=aws-rag-qa", "--source=[/]x")
    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert "source '[/]x'" in line


def test_cleanup_also_asks_the_stack_replicas_a_command_was_not_pointed_at(tmp_path: Path) -> None:
    from loradeploy.clients.vllm import VllmClient
    from loradeploy.clients.wiring import Where as _Where
    from loradeploy.clients.wiring import other_replica_urls as _other_replica_urls
    from loradeploy.settings import Settings, StackInfo

    urls = ["http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003"]
    stack = StackInfo(
        home=tmp_path,
        tracking_uri="http://127.0.0.1:5000",
        vllm_url=urls[0],
        vllm_urls=urls,
        adapters_root=tmp_path / "adapters",
        served_model="base",
        max_lora_rank=16,
    )
    where = _Where([urls[1]], "local", "ns", "app=vllm", "vllm", "/mnt/adapters", "kubectl")
    with VllmClient(urls[1] + "/") as given:
        assert _other_replica_urls(Settings(stack=stack), where, None, [given]) == [urls[0], urls[2]]
        assert _other_replica_urls(Settings(), where, None, [given]) == []  # no stack: none known


@pytest.mark.parametrize("command", ["register", "train"])
def test_a_probes_file_with_the_old_expect_key_is_refused_before_any_server(
    tmp_path: Path, command: str
) -> None:
    probes = tmp_path / "probes.jsonl"
    probes.write_text(json.dumps({"prompt": "How long?", "expect": "63"}) + "\n")
    adapter = ["--adapter-dir=adapter"] if command == "register" else ["--base-model-dir=b", "--ml-python=p"]
    extra = [] if command == "register" else ["--base-model-name=m"]
    result = invoke(
        command,
        "--model-name=aws-rag-qa",
        *adapter,
        *extra,
        f"--probes-file={probes}",
        f"--tracking-uri={NOTHING_LISTENS}",
    )
    assert result.exit_code == 2, result.output  # not 75: MLflow was never asked
    [line] = error_lines(result)
    assert str(probes) in line and 'rename "expect" to "reference"' in line


def test_smoke_test_refuses_a_reference_floor_that_cannot_fail() -> None:
    result = invoke(
        "smoke-test",
        "--adapter-name=aws-rag-qa-candidate",
        f"--vllm-url={NOTHING_LISTENS}",
        "--min-reference-f1=0",
    )
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("blocker", ["a file", "a file's child"])
def test_an_output_dir_that_cannot_be_a_folder_is_refused_before_the_step_acts(
    tmp_path: Path, blocker: str
) -> None:
    """Found by hand: 'register --output-dir=<a file>' registered the version, moved the
    alias and then died in a traceback writing result.json. The folder is checked first:
    with nothing listening at the registry, reaching it would exit 75, not 2."""
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    out = taken if blocker == "a file" else taken / "out"
    result = CliRunner().invoke(
        app,
        [
            "load-adapter",
            "--model-name=aws-rag-qa",
            "--source=alias:candidate",
            "--slot-name=aws-rag-qa-candidate",
            f"--vllm-url={NOTHING_LISTENS}",
            f"--output-dir={out}",
        ],
        env={"MLFLOW_TRACKING_URI": NOTHING_LISTENS},
    )
    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert str(out) in line and "--output-dir" in line
    assert taken.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("weights", "words"),
    [
        ("m@v1=90", "weights sum to 90, not 100"),
        ("m@v1=50,n@v1=50", "names versions of 2 models"),
        ("m-v1=100", "'m-v1' is not a versioned name"),
        ("m@v1", "is not NAME@vN=PERCENT"),
    ],
)
def test_route_checks_its_weights_before_it_looks_for_a_router(weights: str, words: str) -> None:
    result = invoke("route", "--stable-name=m-live", f"--weights={weights}")
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert words in line and line.startswith("error: ")


def test_route_without_a_router_says_how_to_start_one() -> None:
    result = invoke("route", "--stable-name=m-live", "--weights=m@v1=100")
    assert result.exit_code == 2
    assert error_lines(result) == [
        "error: no router: the stack file names none; next: start the local stack with "
        "'loradeploy stack up --router'"
    ]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ([], "needs exactly one of --source-alias and --source"),
        (["--source-alias=staged", "--source=version:2"], "needs exactly one of"),
        (["--source=latest"], "source 'latest' is not understood"),
        (["--source-alias=v3"], "alias 'v3' is not allowed"),
        (["--source=version:2", "--max-loras=2"], "--max-cpu-loras is not known while the other limit is"),
    ],
)
def test_load_version_refuses_bad_input_before_it_reaches_a_server(
    tmp_path: Path, flags: list[str], words: str
) -> None:
    result = invoke(
        "load-version",
        "--model-name=aws-rag-qa",
        *flags,
        f"--vllm-url={NOTHING_LISTENS}",
        "--tracking-uri=http://127.0.0.1:9",
        f"--output-dir={tmp_path / 'out'}",
    )
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert words in line and line.startswith("error: ") and "next: " in line
    assert json.loads((tmp_path / "out" / "result.json").read_text())["step"] == "load-version"


def test_metrics_without_a_router_says_how_to_start_one() -> None:
    result = invoke("metrics")
    assert result.exit_code == 2
    assert error_lines(result) == [
        "error: no router: the stack file names none; next: start the local stack with "
        "'loradeploy stack up --router'"
    ]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--steps=5,25,50"], "must end at 100"),
        (["--steps=50,5,100"], "must increase strictly"),
        (["--source-alias=v3"], "alias 'v3' is not allowed"),
        (["--stable-name=a/b"], "a/b"),
        (["--min-questions=1"], "--min-questions"),
        (["--max-error-rate=2"], "--max-error-rate"),
        (["--max-p95-ratio=nan"], "--max-p95-ratio"),
        (["--quality-margin=-0.1"], "--quality-margin"),
        (["--interval=inf"], "--interval"),
        (["--request-timeout=0.5"], "--request-timeout"),
        ([], "no router: the stack file names none"),
    ],
)
def test_canary_refuses_bad_input_before_it_reaches_a_server(
    tmp_path: Path, flags: list[str], words: str
) -> None:
    result = invoke(
        "canary",
        "--model-name=aws-rag-qa",
        *flags,
        "--tracking-uri=http://127.0.0.1:9",
        f"--output-dir={tmp_path / 'out'}",
    )
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert words in line and line.startswith("error: ") and "next: " in line
    assert json.loads((tmp_path / "out" / "result.json").read_text())["step"] == "canary"

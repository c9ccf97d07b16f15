"""settings.py: flag, then environment, then the stack file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loradeploy.errors import UsageError
from loradeploy.settings import Settings, load_settings


def write_stack(folder: Path, **overrides: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stack = {
        "home": str(folder),
        "tracking_uri": "http://stack-mlflow:5000",
        "vllm_url": "http://stack-vllm:8000",
        "vllm_urls": ["http://stack-vllm:8000"],
        "adapters_root": "/stack/adapters",
        "served_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "max_lora_rank": 32,
    }
    stack.update(overrides)
    path = folder / "stack.json"
    path.write_text(json.dumps(stack), encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with ``.loradeploy/stack.json``; commands run from a sub-folder."""
    write_stack(tmp_path / "project" / ".loradeploy")
    cwd = tmp_path / "project" / "src" / "deep"
    cwd.mkdir(parents=True)
    return cwd


def test_the_stack_file_in_a_parent_folder_is_found(project: Path) -> None:
    settings = load_settings({}, {}, project)
    assert settings.tracking_uri == "http://stack-mlflow:5000"
    assert settings.vllm_url == "http://stack-vllm:8000"
    assert settings.adapters_root == Path("/stack/adapters")
    assert settings.max_lora_rank == 32
    assert settings.stack is not None
    assert settings.stack.served_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_the_environment_beats_the_stack_file(project: Path) -> None:
    env = {
        "MLFLOW_TRACKING_URI": "http://env-mlflow:5000",
        "LORADEPLOY_VLLM_URL": "http://env-vllm:8000",
        "LORADEPLOY_ADAPTERS_ROOT": "/env/adapters",
        "LORADEPLOY_MAX_LORA_RANK": "64",
    }
    settings = load_settings({}, env, project)
    assert settings.tracking_uri == "http://env-mlflow:5000"
    assert settings.vllm_url == "http://env-vllm:8000"
    assert settings.adapters_root == Path("/env/adapters")
    assert settings.max_lora_rank == 64


def test_a_flag_beats_the_environment(project: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": "http://env-mlflow:5000", "LORADEPLOY_VLLM_URL": "http://env-vllm:8000"}
    flags = {"tracking_uri": "http://flag-mlflow:5000", "max_lora_rank": 8, "vllm_url": None}
    settings = load_settings(flags, env, project)
    assert settings.tracking_uri == "http://flag-mlflow:5000"
    assert settings.vllm_url == "http://env-vllm:8000"  # the flag was not given
    assert settings.max_lora_rank == 8


def test_empty_values_fall_through(project: Path) -> None:
    settings = load_settings({"vllm_url": ""}, {"LORADEPLOY_VLLM_URL": ""}, project)
    assert settings.vllm_url == "http://stack-vllm:8000"


def test_loradeploy_home_names_the_stack_folder(tmp_path: Path, project: Path) -> None:
    write_stack(tmp_path / "home", vllm_url="http://home-vllm:8000")
    settings = load_settings({}, {"LORADEPLOY_HOME": str(tmp_path / "home")}, project)
    assert settings.vllm_url == "http://home-vllm:8000"


def test_an_empty_loradeploy_home_means_no_stack_file(tmp_path: Path, project: Path) -> None:
    (tmp_path / "empty").mkdir()
    settings = load_settings({}, {"LORADEPLOY_HOME": str(tmp_path / "empty")}, project)
    assert settings.stack is None
    assert settings.vllm_url is None


def test_no_stack_file_anywhere(tmp_path: Path) -> None:
    settings = load_settings({}, {}, tmp_path)
    assert settings.stack is None
    assert settings.max_lora_rank == 16  # vLLM's default


@pytest.mark.parametrize(
    ("require", "flag", "env_name"),
    [
        (Settings.require_tracking_uri, "--tracking-uri", "MLFLOW_TRACKING_URI"),
        (Settings.require_vllm_url, "--vllm-url", "LORADEPLOY_VLLM_URL"),
        (Settings.require_adapters_root, "--adapters-root", "LORADEPLOY_ADAPTERS_ROOT"),
    ],
)
def test_a_missing_value_is_a_usage_error_with_a_hint(
    tmp_path: Path, require: Any, flag: str, env_name: str
) -> None:
    settings = load_settings({}, {}, tmp_path)
    with pytest.raises(UsageError) as caught:
        require(settings)
    assert flag in caught.value.hint
    assert env_name in caught.value.hint
    assert "loradeploy stack up" in caught.value.hint


def test_present_values_are_returned_by_require(project: Path) -> None:
    settings = load_settings({}, {}, project)
    assert settings.require_tracking_uri() == "http://stack-mlflow:5000"
    assert settings.require_vllm_url() == "http://stack-vllm:8000"
    assert settings.require_adapters_root() == Path("/stack/adapters")


def test_base_model_aliases_are_parsed(tmp_path: Path) -> None:
    flags = {"base_model_alias": ["mistralai/Mistral-7B-v0.1=mistral-awq", "a=b=c"]}
    settings = load_settings(flags, {}, tmp_path)
    assert settings.base_model_aliases == {"mistralai/Mistral-7B-v0.1": "mistral-awq", "a": "b=c"}


@pytest.mark.parametrize("pair", ["mistral", "=served", "adapter=", "="])
def test_a_bad_base_model_alias_is_a_usage_error(tmp_path: Path, pair: str) -> None:
    with pytest.raises(UsageError) as caught:
        load_settings({"base_model_alias": [pair]}, {}, tmp_path)
    assert repr(pair) in caught.value.message
    assert "ADAPTER_BASE=SERVED_BASE" in caught.value.message


def test_a_bad_rank_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        load_settings({}, {"LORADEPLOY_MAX_LORA_RANK": "sixteen"}, tmp_path)
    assert "settings are invalid" in caught.value.message


def test_an_unreadable_stack_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(UsageError) as caught:
        load_settings({}, {"LORADEPLOY_HOME": str(tmp_path)}, tmp_path)
    assert str(tmp_path / "stack.json") in caught.value.message
    assert "stack up" in caught.value.hint


def test_tls_verification_is_on_unless_a_ca_bundle_is_given(tmp_path: Path) -> None:
    assert load_settings({}, {}, tmp_path).verify is True
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")  # must exist: a missing bundle is a usage error (test_secrets.py)
    assert load_settings({"ca_bundle": bundle}, {}, tmp_path).verify == str(bundle)
    assert load_settings({}, {"LORADEPLOY_CA_BUNDLE": str(bundle)}, tmp_path).verify == str(bundle)


def test_the_api_key_is_secret(tmp_path: Path) -> None:
    settings = load_settings({}, {"VLLM_API_KEY": "sk-very-secret"}, tmp_path)
    assert settings.vllm_api_key is not None
    assert settings.vllm_api_key.get_secret_value() == "sk-very-secret"
    assert "sk-very-secret" not in repr(settings)
    assert "sk-very-secret" not in settings.model_dump_json()
    flagged = load_settings({"api_key": "sk-flag"}, {"VLLM_API_KEY": "sk-env"}, tmp_path)
    assert flagged.vllm_api_key is not None
    assert flagged.vllm_api_key.get_secret_value() == "sk-flag"


def test_staging_is_beside_the_stack_adapters_or_from_the_environment(project: Path, tmp_path: Path) -> None:
    stack_home = tmp_path / "project" / ".loradeploy"
    assert load_settings({}, {}, project).staging_dir == stack_home / "staging"
    env = {"LORADEPLOY_STAGING_DIR": "/scratch/loradeploy"}
    assert load_settings({}, env, project).staging_dir == Path("/scratch/loradeploy")
    assert load_settings({}, {}, tmp_path).staging_dir is None  # the transport's default: system temp


def test_a_swaps_patience_comes_from_the_environment(tmp_path: Path) -> None:
    assert (load_settings({}, {}, tmp_path).swap_watch_s, load_settings({}, {}, tmp_path).swap_restore_s) == (
        30.0,
        60.0,
    )
    env = {"LORADEPLOY_SWAP_WATCH_S": "5", "LORADEPLOY_SWAP_RESTORE_S": "300.5"}
    settings = load_settings({}, env, tmp_path)
    assert (settings.swap_watch_s, settings.swap_restore_s) == (5.0, 300.5)


@pytest.mark.parametrize("value", ["0", "-1", "soon", "3601", "nan"])
def test_a_bad_swap_patience_is_a_usage_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(UsageError) as caught:
        load_settings({}, {"LORADEPLOY_SWAP_RESTORE_S": value}, tmp_path)
    assert "settings are invalid" in caught.value.message


def test_the_replicas_lora_limits_come_from_flag_environment_or_stack_file(tmp_path: Path) -> None:
    from loradeploy.clients.wiring import residency_limits

    home = tmp_path / "home"
    write_stack(home, max_loras=2, max_cpu_loras=4)
    env = {"LORADEPLOY_HOME": str(home)}
    from_stack = load_settings({}, env, tmp_path)
    assert residency_limits(from_stack) is not None
    assert (from_stack.max_loras, from_stack.max_cpu_loras) == (2, 4)
    env["LORADEPLOY_MAX_CPU_LORAS"] = "6"
    from_env = load_settings({"max_loras": 3}, env, tmp_path)
    assert (from_env.max_loras, from_env.max_cpu_loras) == (3, 6)
    older = tmp_path / "older"
    write_stack(older)  # a stack file from before the limits were recorded
    assert residency_limits(load_settings({}, {"LORADEPLOY_HOME": str(older)}, tmp_path)) is None
    with pytest.raises(UsageError, match="--max-loras is not known"):
        residency_limits(load_settings({"max_cpu_loras": 4}, {"LORADEPLOY_HOME": str(older)}, tmp_path))
    with pytest.raises(UsageError, match="settings are invalid"):
        load_settings({"max_loras": 0}, {}, tmp_path)

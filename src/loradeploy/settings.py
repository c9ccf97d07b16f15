"""Settings, read once at the entry point and passed down.

Lookup order for every connection value (first found wins):
1. the command-line flag;
2. the environment (``MLFLOW_TRACKING_URI``, ``LORADEPLOY_VLLM_URL``,
   ``LORADEPLOY_ADAPTERS_ROOT``, ``VLLM_API_KEY``, ``LORADEPLOY_CA_BUNDLE``,
   ``LORADEPLOY_MAX_LORA_RANK``, ``LORADEPLOY_ACTOR``);
3. the local stack file written by ``loradeploy stack up``
   (``$LORADEPLOY_HOME/stack.json``, else ``.loradeploy/stack.json`` in the current
   folder or the nearest parent).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, ValidationError

from loradeploy.errors import UsageError

STACK_FILE = "stack.json"
HOME_DIRNAME = ".loradeploy"


class StackInfo(BaseModel):
    """What ``stack up`` wrote: where the local servers listen."""

    home: Path
    assets: Path | None = None  # where envs/ and models/ live (default: home)
    tracking_uri: str
    vllm_url: str
    vllm_urls: list[str] = Field(default_factory=list)
    adapters_root: Path
    served_model: str
    max_lora_rank: int


class Settings(BaseModel):
    """Connection settings for one command."""

    tracking_uri: str | None = None
    vllm_url: str | None = None
    adapters_root: Path | None = None
    vllm_api_key: SecretStr | None = None
    ca_bundle: Path | None = None
    max_lora_rank: int = 16  # vLLM's own default for --max-lora-rank
    base_model_aliases: dict[str, str] = Field(default_factory=dict)
    actor: str = "unknown"  # who acts, for locks and the audit history
    stack: StackInfo | None = None

    def require_tracking_uri(self) -> str:
        if not self.tracking_uri:
            raise UsageError(
                "no MLflow tracking URI",
                hint="pass --tracking-uri, set MLFLOW_TRACKING_URI, or run 'loradeploy stack up'",
            )
        return self.tracking_uri

    def require_vllm_url(self) -> str:
        if not self.vllm_url:
            raise UsageError(
                "no vLLM URL",
                hint="pass --vllm-url, set LORADEPLOY_VLLM_URL, or run 'loradeploy stack up'",
            )
        return self.vllm_url

    def require_adapters_root(self) -> Path:
        if self.adapters_root is None:
            raise UsageError(
                "no adapters folder",
                hint="pass --adapters-root (the folder the vLLM server reads adapters from), "
                "set LORADEPLOY_ADAPTERS_ROOT, or run 'loradeploy stack up'",
            )
        return self.adapters_root

    @property
    def verify(self) -> bool | str:
        """TLS verification for httpx: always on; a CA bundle may be added, never disabled."""
        return str(self.ca_bundle) if self.ca_bundle else True


def find_stack_file(env: Mapping[str, str], cwd: Path) -> Path | None:
    home = env.get("LORADEPLOY_HOME")
    if home:
        candidate = Path(home) / STACK_FILE
        return candidate if candidate.is_file() else None
    for folder in (cwd, *cwd.parents):
        candidate = folder / HOME_DIRNAME / STACK_FILE
        if candidate.is_file():
            return candidate
    return None


def read_stack(path: Path) -> StackInfo:
    try:
        return StackInfo.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as exc:
        raise UsageError(
            f"stack file {path} is unreadable ({type(exc).__name__})",
            hint="run 'loradeploy stack up' again to rewrite it",
        ) from exc


def parse_base_aliases(pairs: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        adapter_base, sep, served = pair.partition("=")
        if not sep or not adapter_base or not served:
            raise UsageError(
                f"--base-model-alias {pair!r} is not ADAPTER_BASE=SERVED_BASE",
                hint="pass for example --base-model-alias mistralai/Mistral-7B-v0.1=mistral-awq",
            )
        mapping[adapter_base] = served
    return mapping


def load_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    cwd: Path,
) -> Settings:
    """Merge flags, environment and the stack file into one ``Settings``."""
    stack_path = find_stack_file(env, cwd)
    stack = read_stack(stack_path) if stack_path else None

    def pick(flag: str, env_name: str, from_stack: Any) -> Any:
        value = flags.get(flag)
        if value not in (None, ""):
            return value
        if env.get(env_name):
            return env[env_name]
        return from_stack

    rank = pick("max_lora_rank", "LORADEPLOY_MAX_LORA_RANK", stack.max_lora_rank if stack else 16)
    try:
        return Settings(
            tracking_uri=pick("tracking_uri", "MLFLOW_TRACKING_URI", stack.tracking_uri if stack else None),
            vllm_url=pick("vllm_url", "LORADEPLOY_VLLM_URL", stack.vllm_url if stack else None),
            adapters_root=pick(
                "adapters_root", "LORADEPLOY_ADAPTERS_ROOT", stack.adapters_root if stack else None
            ),
            vllm_api_key=pick("api_key", "VLLM_API_KEY", None),
            ca_bundle=pick("ca_bundle", "LORADEPLOY_CA_BUNDLE", None),
            max_lora_rank=int(rank),
            base_model_aliases=parse_base_aliases(list(flags.get("base_model_alias") or [])),
            actor=env.get("LORADEPLOY_ACTOR") or _default_actor(env),
            stack=stack,
        )
    except (ValueError, ValidationError) as exc:
        raise UsageError(f"settings are invalid ({short_validation(exc)})") from exc


def _default_actor(env: Mapping[str, str]) -> str:
    """user@host; set LORADEPLOY_ACTOR in workflows (for example to the workflow name)."""
    user = env.get("USER") or env.get("LOGNAME") or "unknown"
    return f"{user}@{socket.gethostname()}"


def short_validation(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc)

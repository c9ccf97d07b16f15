"""Settings, read once at the entry point and passed down.

Lookup order for every connection value (first found wins):
1. the command-line flag;
2. the environment (``MLFLOW_TRACKING_URI``, ``LORADEPLOY_VLLM_URL``,
   ``LORADEPLOY_ADAPTERS_ROOT``, ``VLLM_API_KEY``, ``LORADEPLOY_CA_BUNDLE``,
   ``LORADEPLOY_MAX_LORA_RANK``, ``LORADEPLOY_MAX_ADAPTER_BYTES``, ``LORADEPLOY_ACTOR``,
   ``LORADEPLOY_BASE_MODEL_ALIASES``: ``ADAPTER_BASE=SERVED_BASE`` pairs separated by
   commas or spaces, used when no ``--base-model-alias`` flag is given;
   ``LORADEPLOY_STAGING_DIR``; ``LORADEPLOY_INFERENCE_POOL``, the InferencePool routed
   mode's rewrites name on Kubernetes (default ``vllm``); how long a swap waits on a
   server that stopped answering,
   ``LORADEPLOY_SWAP_WATCH_S`` (an unanswered load watched on ``/v1/models``, default
   30) and ``LORADEPLOY_SWAP_RESTORE_S`` (putting the old folder back, default 60);
   the trust policy ``LORADEPLOY_TRUSTED_KEYS``, ``LORADEPLOY_TRUSTED_CAS`` (PEM files,
   separated by ``os.pathsep``), ``LORADEPLOY_REQUIRE_SIGNATURE`` (true/false); signing
   ``LORADEPLOY_SIGN_KEY``, ``LORADEPLOY_SIGN_CERT_CHAIN``);
3. the local stack file written by ``loradeploy stack up``
   (``$LORADEPLOY_HOME/stack.json``, else ``.loradeploy/stack.json`` in the current
   folder or the nearest parent).
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError

from loradeploy.errors import UsageError, redact

STACK_FILE = "stack.json"
HOME_DIRNAME = ".loradeploy"
URL_SCHEMES = ("http", "https")
# MLflow's own switch that turns TLS verification off; loradeploy never allows that.
MLFLOW_INSECURE_TLS = "MLFLOW_TRACKING_INSECURE_TLS"
VLLM_CREDENTIALS = "VLLM_API_KEY or --api-key"


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
    # The vLLM servers' --max-loras and --max-cpu-loras (absent in older stack files):
    # routed mode's capacity plan (domain.residency) needs them.
    max_loras: int | None = None
    max_cpu_loras: int | None = None
    # Signed adapters: the demo key pair 'stack up' makes (absent in older stack files).
    trusted_keys: list[Path] = Field(default_factory=list)
    require_signature: bool = False
    sign_key: Path | None = None
    # Routed mode's router (absent when 'stack up' ran without it).
    router_url: str | None = None
    router_config: Path | None = None
    router_key_file: Path | None = None
    router_record: Path | None = None
    router_log: Path | None = None  # the router's per-request log (JSON lines)


class Settings(BaseModel):
    """Connection settings for one command. What a command builds from them (clients,
    transport, replicas, the adapter policy) is built in ``clients.wiring``."""

    tracking_uri: str | None = None
    vllm_url: str | None = None
    adapters_root: Path | None = None
    # Where downloads are staged before placing: never below the adapters folder vLLM
    # serves from. Env only; default ``<stack home>/staging`` for the local stack, else
    # the transport's default (the system temp folder).
    staging_dir: Path | None = None
    vllm_api_key: SecretStr | None = None
    ca_bundle: Path | None = None
    max_lora_rank: int = 16  # vLLM's own default for --max-lora-rank
    # The replicas' --max-loras and --max-cpu-loras, for routed mode's capacity plan;
    # None: not known (vLLM reports neither: /metrics has max_loras only once requests ran).
    max_loras: int | None = Field(default=None, ge=1)
    max_cpu_loras: int | None = Field(default=None, ge=1)
    # Largest adapter (all files, bytes) downloaded, validated or placed; env only. The
    # default is domain.adapter.DEFAULT_MAX_TOTAL_BYTES (settings sits below domain).
    max_adapter_bytes: int = Field(default=4 << 30, gt=0)
    base_model_aliases: dict[str, str] = Field(default_factory=dict)
    actor: str = "unknown"  # who acts, for locks and the audit history
    # The same for every retry of one request (Argo: the workflow's uid and step), so a
    # retry recognises an alias plan its own earlier attempt left; empty: none.
    run_key: str = Field(default="", max_length=256)
    # A swap's patience with a server that stopped answering (steps.swap.Patience); env
    # only. A GPU server whose restart takes minutes wants a longer restore window.
    swap_watch_s: float = Field(default=30.0, gt=0, le=3600)
    swap_restore_s: float = Field(default=60.0, gt=0, le=3600)
    # The trust policy (issue 13): public keys and CA certificates (PEM files) whose
    # signatures are accepted; with require_signature an unsigned version is refused.
    # Nothing configured: signatures are not checked (as before signing existed).
    trusted_keys: list[Path] = Field(default_factory=list)
    trusted_cas: list[Path] = Field(default_factory=list)
    require_signature: bool = False
    # What register and train sign with: an EC private key, and for PKI its chain.
    sign_key: Path | None = None
    sign_cert_chain: Path | None = None
    # Routed mode on Kubernetes: the InferencePool (Gateway API Inference Extension) whose
    # InferenceModelRewrite objects loradeploy writes; env only.
    inference_pool: str = "vllm"
    # Routed mode on Kubernetes: the Prometheus whose API the canary reads the Inference
    # Extension's request metrics from (``--prometheus-url``).
    prometheus_url: str | None = None
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

    def require_prometheus_url(self) -> str:
        if not self.prometheus_url:
            raise UsageError(
                "no Prometheus URL: the canary on Kubernetes reads its live figures from Prometheus",
                hint="pass --prometheus-url or set LORADEPLOY_PROMETHEUS_URL "
                "(e.g. http://prometheus.monitoring.svc:9090)",
            )
        return self.prometheus_url

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


def check_url(value: str, *, what: str, setting: str, credentials: str) -> str:
    """An http(s) URL with a host, a valid port and no credentials in it.

    Credentials in a URL end up in messages and result files; they belong in the
    dedicated settings (``VLLM_API_KEY``, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``).
    The URL is never echoed with its user info.
    """
    shown = redact(value)
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        parts, port_ok = None, False
    if parts is not None and (parts.username is not None or parts.password is not None):
        raise UsageError(
            f"{what} URL {shown!r} has credentials in it",
            hint=f"remove them from {setting} and pass them with {credentials}",
        )
    if parts is None or parts.scheme not in URL_SCHEMES or not parts.hostname or not port_ok:
        raise UsageError(
            f"{what} URL {shown!r} is not an http:// or https:// URL with a host",
            hint=f"fix {setting}; it must look like https://host:port",
        )
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise UsageError(f"{what} URL {shown!r} contains spaces or control characters", hint=f"fix {setting}")
    return value


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


BASE_MODEL_ALIASES_ENV = "LORADEPLOY_BASE_MODEL_ALIASES"


def base_alias_pairs(flags: Mapping[str, Any], env: Mapping[str, str]) -> tuple[list[str], str]:
    """The ``ADAPTER_BASE=SERVED_BASE`` pairs and where they came from: the flags, else
    the environment (comma- or space-separated, as a ConfigMap value holds them)."""
    given = list(flags.get("base_model_alias") or [])
    if given:
        return given, "--base-model-alias"
    text = env.get(BASE_MODEL_ALIASES_ENV, "")
    return [pair for pair in re.split(r"[\s,]+", text) if pair], BASE_MODEL_ALIASES_ENV


def parse_base_aliases(pairs: list[str], setting: str = "--base-model-alias") -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        adapter_base, sep, served = pair.partition("=")
        if not sep or not adapter_base or not served:
            raise UsageError(
                f"{setting} {pair!r} is not ADAPTER_BASE=SERVED_BASE",
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
    if env.get(MLFLOW_INSECURE_TLS, "").strip().lower() not in ("", "0", "false", "no"):
        raise UsageError(
            f"{MLFLOW_INSECURE_TLS} is set: loradeploy never turns TLS verification off",
            hint=f"unset {MLFLOW_INSECURE_TLS}; add the server's CA with --ca-bundle or LORADEPLOY_CA_BUNDLE",
        )
    try:
        settings = Settings(
            tracking_uri=pick("tracking_uri", "MLFLOW_TRACKING_URI", stack.tracking_uri if stack else None),
            vllm_url=pick("vllm_url", "LORADEPLOY_VLLM_URL", stack.vllm_url if stack else None),
            adapters_root=pick(
                "adapters_root", "LORADEPLOY_ADAPTERS_ROOT", stack.adapters_root if stack else None
            ),
            staging_dir=_staging_dir(env, stack),
            vllm_api_key=pick("api_key", "VLLM_API_KEY", None),
            ca_bundle=pick("ca_bundle", "LORADEPLOY_CA_BUNDLE", None),
            max_lora_rank=int(rank),
            max_loras=pick("max_loras", "LORADEPLOY_MAX_LORAS", stack.max_loras if stack else None),
            max_cpu_loras=pick(
                "max_cpu_loras", "LORADEPLOY_MAX_CPU_LORAS", stack.max_cpu_loras if stack else None
            ),
            max_adapter_bytes=int(env.get("LORADEPLOY_MAX_ADAPTER_BYTES") or 4 << 30),
            base_model_aliases=parse_base_aliases(*base_alias_pairs(flags, env)),
            actor=env.get("LORADEPLOY_ACTOR") or _default_actor(env),
            run_key=env.get("LORADEPLOY_RUN_KEY", ""),
            swap_watch_s=float(env.get("LORADEPLOY_SWAP_WATCH_S") or 30.0),
            swap_restore_s=float(env.get("LORADEPLOY_SWAP_RESTORE_S") or 60.0),
            trusted_keys=_paths(flags, "trusted_key", env, "LORADEPLOY_TRUSTED_KEYS", stack),
            trusted_cas=_paths(flags, "trusted_ca", env, "LORADEPLOY_TRUSTED_CAS", None),
            require_signature=_flag(
                flags.get("require_signature"),
                env.get("LORADEPLOY_REQUIRE_SIGNATURE", ""),
                stack.require_signature if stack else False,
            ),
            sign_key=pick("sign_key", "LORADEPLOY_SIGN_KEY", stack.sign_key if stack else None),
            sign_cert_chain=pick("sign_cert_chain", "LORADEPLOY_SIGN_CERT_CHAIN", None),
            inference_pool=env.get("LORADEPLOY_INFERENCE_POOL") or "vllm",
            prometheus_url=pick("prometheus_url", "LORADEPLOY_PROMETHEUS_URL", None),
            stack=stack,
        )
    except (ValueError, ValidationError) as exc:
        raise UsageError(f"settings are invalid ({short_validation(exc)})") from exc
    if settings.tracking_uri:
        check_url(
            settings.tracking_uri,
            what="MLflow tracking",
            setting="--tracking-uri or MLFLOW_TRACKING_URI",
            credentials="MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
        )
    if settings.vllm_url:
        check_url(settings.vllm_url, what="vLLM", setting="--vllm-url", credentials=VLLM_CREDENTIALS)
    if settings.prometheus_url:
        check_url(
            settings.prometheus_url,
            what="Prometheus",
            setting="--prometheus-url or LORADEPLOY_PROMETHEUS_URL",
            credentials="an authenticating proxy in front of Prometheus (loradeploy sends it no credentials)",
        )
    if settings.ca_bundle is not None and not settings.ca_bundle.is_file():
        raise UsageError(
            f"CA bundle {settings.ca_bundle} is not a readable file",
            hint="pass a PEM file with --ca-bundle or LORADEPLOY_CA_BUNDLE",
        )
    return settings


def _staging_dir(env: Mapping[str, str], stack: StackInfo | None) -> Path | None:
    if env.get("LORADEPLOY_STAGING_DIR"):
        return Path(env["LORADEPLOY_STAGING_DIR"])
    return stack.home / "staging" if stack else None


def _paths(
    flags: Mapping[str, Any], flag: str, env: Mapping[str, str], env_name: str, stack: StackInfo | None
) -> list[Path]:
    """A repeatable flag, else the variable (paths separated by os.pathsep), else the stack."""
    given = [Path(p) for p in flags.get(flag) or []]
    if given:
        return given
    listed = [Path(p) for p in env.get(env_name, "").split(os.pathsep) if p.strip()]
    if listed:
        return listed
    return list(stack.trusted_keys) if stack is not None else []


def _flag(flag: bool | None, env_value: str, from_stack: bool) -> bool:
    if flag is not None:
        return flag
    text = env_value.strip().lower()
    if not text:
        return from_stack
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise UsageError(
        f"LORADEPLOY_REQUIRE_SIGNATURE is {env_value[:20]!r}, expected true or false",
        hint="set LORADEPLOY_REQUIRE_SIGNATURE=true or false",
    )


def _default_actor(env: Mapping[str, str]) -> str:
    """user@host; set LORADEPLOY_ACTOR in workflows (for example to the workflow name)."""
    user = env.get("USER") or env.get("LOGNAME") or "unknown"
    return f"{user}@{socket.gethostname()}"


def short_validation(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc)

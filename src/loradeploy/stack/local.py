"""``loradeploy stack up | down | status``: MLflow and vLLM on loopback.

State lives under one folder (the *home*, ``.loradeploy/`` by default)::

    stack.json          where the servers listen; every command reads it
    mlflow/             SQLite database and proxied artifacts (kept by ``down``)
    adapters/           the folder vLLM reads adapters from (kept by ``down``)
    logs/, run/         server logs and process records
    router/             routed mode's router (the LiteLLM proxy): config.yaml, its key,
                        its request-log callback and requests.jsonl (one line a request)

The virtualenvs and the converted base model (``envs/``, ``models/``) are built by
``make setup`` and may live in another folder (``assets``), so tests can run a
second stack in a temporary home without building them again.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import httpx

from loradeploy.clients.router import LiteLLMRouter
from loradeploy.clients.signing import generate_key_pair
from loradeploy.domain.routes import REQUEST_LOG_MODULE, proxy_callbacks
from loradeploy.errors import DeadlineExceededError, LoraDeployError, UsageError
from loradeploy.settings import STACK_FILE, StackInfo, read_stack
from loradeploy.stack import processes
from loradeploy.stack.processes import ProcessRecord

SERVED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
BASE_MODEL_DIR = "models/smollm2-135m-instruct"
MLFLOW_START_TIMEOUT_S = 120.0
VLLM_START_TIMEOUT_S = 600.0
ROUTER_START_TIMEOUT_S = 180.0
# A server that ran before 'stack up' but does not answer at once (busy serving) is
# waited for at least this long, and never restarted by 'up'.
KEPT_WAIT_S = 60.0
# The proxy would use a database named by the caller's environment: it runs without one.
ROUTER_DB_ENV = frozenset({"DATABASE_URL", "DIRECT_URL", "STORE_MODEL_IN_DB"})
HEALTH_PATHS = {"router": "/health/liveliness"}  # the proxy's /health asks every backend

Tick = Callable[[str, float], None]


@dataclass
class StackConfig:
    home: Path
    assets: Path
    replicas: int = 1
    served_model: str = SERVED_MODEL
    model_dir: Path | None = None
    max_loras: int = 2  # the specification's two slots: live and candidate
    max_lora_rank: int = 16
    max_cpu_loras: int = 8  # two slots and routed mode's versions (live, previous, a candidate)
    max_model_len: int = 2048
    kv_cache_gib: int = 1
    api_key: str | None = None
    extra_vllm_env: dict[str, str] = field(default_factory=dict)
    # Signed adapters: a demo key pair in <home>/keys, trusted and required by the stack
    # file, used by register and train. 'loradeploy stack up' turns it on.
    signing: bool = False
    # Routed mode's router (the LiteLLM proxy from envs/router) in front of the vLLM
    # servers. 'loradeploy stack up --router' turns it on.
    router: bool = False

    @property
    def base_model_dir(self) -> Path:
        return self.model_dir or self.assets / BASE_MODEL_DIR

    @property
    def adapters_root(self) -> Path:
        return self.home / "adapters"

    def env_python(self, name: str) -> Path:
        return self.assets / "envs" / name / "bin" / "python"


@dataclass
class ServiceStatus:
    name: str
    url: str | None
    pid: int | None
    running: bool
    healthy: bool
    log: Path | None


def _healthy(name: str, url: str) -> bool:
    """Whether the server ``name`` (mlflow, vllm-N, router) at ``url`` says it is healthy."""
    try:
        return httpx.get(f"{url}{HEALTH_PATHS.get(name, '/health')}", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.home = config.home

    def _record_path(self, name: str) -> Path:
        return self.home / "run" / f"{name}.json"

    def _require_assets(self) -> None:
        missing = [
            str(p)
            for p in (
                self.config.env_python("mlflow"),
                self.config.env_python("vllm"),
                self.config.base_model_dir / "config.json",
                *([Path(self.router_command()[0])] if self.config.router else []),
            )
            if not p.exists()
        ]
        if missing:
            raise UsageError(
                f"the local stack is not built: missing {', '.join(missing)}",
                hint="run 'make setup' first (it builds the virtualenvs and the base model)",
            )

    def _running(self, name: str) -> ProcessRecord | None:
        """The recorded server ``name`` if its first process still runs, healthy or not.
        One that does not answer at once may be busy serving (or still starting): it is
        kept, since a restart would drop what it serves (the adapters loaded at run time).
        A group whose first process died (vLLM's engine outliving its API process) is a
        leftover: it is stopped and None returned, as when the pid is another process's."""
        record = processes.load(self._record_path(name))
        if record is None or not processes.runs(record):
            return None
        if processes.leader_alive(record.pid):
            return record
        processes.stop_group(record.pid, grace_s=5)
        return None

    def _spawn(self, name: str, command: list[str], env: dict[str, str], *, port: int) -> ProcessRecord:
        """Start ``name`` and record it, without waiting for it to answer."""
        url = f"http://127.0.0.1:{port}"
        record = processes.start(
            name,
            [c.replace("{port}", str(port)) for c in command],
            env=env,
            log=self.home / "logs" / f"{name}.log",
            port=port,
            url=url,
            cwd=self.home,
        )
        processes.save(record, self._record_path(name))
        return record

    def _await(
        self,
        started: list[tuple[ProcessRecord, float]],
        on_tick: Tick | None,
        kept: Sequence[ProcessRecord] = (),
    ) -> None:
        """Wait until every server of ``started`` answers, each within its own deadline
        counted from its start, and every one of ``kept`` (running before, not answering
        yet) as long as its start deadline still runs and at least ``KEPT_WAIT_S``. If
        one fails (or the wait is interrupted), every one of ``started`` is stopped (no
        half-started leftovers) and the error is raised; the ``kept`` ones are left as
        they are, unless their first process died (then the rest of the group goes)."""
        now = time.time()
        try:
            for record in kept:
                left = self._start_timeout(record.name) - (now - record.started_at)
                self._wait_kept(record, max(KEPT_WAIT_S, left), on_tick)
            for record, timeout_s in started:
                self._wait_ready(record, timeout_s - max(0.0, time.time() - record.started_at), on_tick)
        except BaseException:
            for record, _ in started:
                processes.stop_group(record.pid, grace_s=5)
            for record in kept:
                if not processes.leader_alive(record.pid):
                    processes.stop_group(record.pid, grace_s=5)
            raise

    @staticmethod
    def _start_timeout(name: str) -> float:
        """How long ``up`` gives its server ``name`` (mlflow, router or a vLLM) to start."""
        if name == "mlflow":
            return MLFLOW_START_TIMEOUT_S
        return ROUTER_START_TIMEOUT_S if name == "router" else VLLM_START_TIMEOUT_S

    def _wait_kept(self, record: ProcessRecord, timeout_s: float, on_tick: Tick | None) -> None:
        """Wait for a server that ran before this ``up`` but does not answer yet."""
        try:
            self._wait_ready(record, timeout_s, on_tick)
        except DeadlineExceededError:
            if not processes.leader_alive(record.pid):
                raise DeadlineExceededError(
                    f"{record.name} at {record.url} (pid {record.pid}) exited while 'stack up' waited for it",
                    hint=f"read its log: {record.log}; then run 'loradeploy stack up' again to start it",
                ) from None
            server = f"{record.name} at {record.url} (pid {record.pid})"
            raise DeadlineExceededError(
                f"{server} runs but did not answer within {timeout_s:.0f}s",
                hint=(
                    f"read its log: {record.log}; if it is stuck, 'loradeploy stack down' then 'stack up'"
                    " restarts it (adapters loaded at run time must then be loaded again)"
                ),
            ) from None

    @staticmethod
    def _wait_ready(record: ProcessRecord, timeout_s: float, on_tick: Tick | None) -> None:
        processes.wait_for(
            f"{record.name} at {record.url}",
            lambda: _healthy(record.name, record.url),
            timeout_s=max(1.0, timeout_s),
            alive=lambda: processes.leader_alive(record.pid),
            log=record.log,
            on_tick=(lambda elapsed: on_tick(record.name, elapsed)) if on_tick else None,
        )

    def _previous_port(self, name: str) -> int | None:
        record = processes.load(self._record_path(name))
        return record.port if record else None

    def mlflow_command(self) -> list[str]:
        data = self.home / "mlflow"
        return [
            str(self.config.env_python("mlflow")),
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{(data / 'mlflow.db').resolve()}",
            "--artifacts-destination",
            str((data / "artifacts").resolve()),
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--workers",
            "1",
        ]

    def vllm_command(self, *, restore: bool = True) -> list[str]:
        c = self.config
        command = [
            str(c.env_python("vllm")),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(c.base_model_dir.resolve()),
            "--served-model-name",
            c.served_model,
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--dtype",
            "float32",
            "--max-model-len",
            str(c.max_model_len),
            "--enable-lora",
            "--max-loras",
            str(c.max_loras),
            "--max-lora-rank",
            str(c.max_lora_rank),
            "--max-cpu-loras",
            str(c.max_cpu_loras),
        ]
        modules = self.restored_modules() if restore else []
        if modules:
            command += ["--lora-modules", *[json.dumps(m) for m in modules]]
        return command

    def restored_modules(self) -> list[dict[str, str]]:
        """Entries of ``lora-modules.json`` (written by init-load-adapters) whose folder
        exists: vLLM starts serving them under their slot names."""
        path = self.config.adapters_root / "lora-modules.json"
        try:
            modules = json.loads(path.read_text(encoding="utf-8")).get("modules", [])
        except (OSError, ValueError, AttributeError):
            return []
        return [
            m
            for m in modules
            if isinstance(m, dict) and Path(str(m.get("path", ""))).is_dir() and m.get("name")
        ]

    def vllm_env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("VLLM_", "MLFLOW_", "LORADEPLOY_"))
        }
        env.update(
            {
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
                "VLLM_CPU_KVCACHE_SPACE": str(self.config.kv_cache_gib),
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
            }
        )
        if self.config.api_key:  # vLLM reads it from here; a flag would show in ps and run records
            env["VLLM_API_KEY"] = self.config.api_key
        env.update(self.config.extra_vllm_env)
        return env

    def mlflow_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        return env

    def vllm_names(self) -> list[str]:
        return [f"vllm-{index}" for index in range(self.config.replicas)]

    def up(self, on_tick: Tick | None = None) -> StackInfo:
        """Start what is not running (idempotent) and write ``stack.json``."""
        self._require_assets()
        for folder in ("mlflow", "adapters", "logs", "run"):
            (self.home / folder).mkdir(parents=True, exist_ok=True)
        # What is not running starts at once: the servers share the CPU while they start,
        # and their start-ups overlap instead of adding up.
        started: list[tuple[ProcessRecord, float]] = []
        kept: list[ProcessRecord] = []  # running, but not answering yet

        def ensure(name: str, spawn: Callable[[], ProcessRecord]) -> ProcessRecord:
            record = self._running(name)
            if record is None:
                record = spawn()
                started.append((record, self._start_timeout(name)))
            elif not _healthy(name, record.url):
                kept.append(record)
            return record

        try:
            mlflow = ensure("mlflow", lambda: self._spawn_mlflow("mlflow"))
            urls = [ensure(name, functools.partial(self._spawn_vllm, name)).url for name in self.vllm_names()]
            router = None
            if self.config.router:
                router = ensure("router", lambda: self._spawn_router(urls))
        except BaseException:  # a later start that failed, Ctrl-C: no half-started servers
            for record, _ in started:
                processes.stop_group(record.pid, grace_s=5)
            raise
        self._await(started, on_tick, kept)  # stops the started ones itself if one fails
        info = StackInfo(
            home=self.home.resolve(),
            assets=self.config.assets.resolve(),
            tracking_uri=mlflow.url,
            vllm_url=urls[0],
            vllm_urls=urls,
            adapters_root=self.config.adapters_root.resolve(),
            served_model=self.config.served_model,
            max_lora_rank=self.config.max_lora_rank,
            max_loras=self.config.max_loras,
            max_cpu_loras=self.config.max_cpu_loras,
            router_url=router.url if router else None,
            router_config=self.router_config.resolve() if router else None,
            router_key_file=self.router_key_file.resolve() if router else None,
            router_record=self._record_path("router").resolve() if router else None,
            router_log=self.router_log.resolve() if router else None,
        )
        if self.config.signing:
            info = self.signed(info)
        (self.home / STACK_FILE).write_text(info.model_dump_json(indent=2), encoding="utf-8")
        return info

    def signed(self, info: StackInfo) -> StackInfo:
        """``info`` with the demo key pair: register and train sign with it, and every
        command that loads an adapter trusts and requires it."""
        private, public = self.demo_key_pair()
        return info.model_copy(
            update={"trusted_keys": [public], "require_signature": True, "sign_key": private}
        )

    def demo_key_pair(self) -> tuple[Path, Path]:
        """The stack's signing key pair, made once (``keys/demo-signing.key`` and ``.pub``).
        A demo key on local disk: a team's real key belongs in its secret store."""
        private = (self.home / "keys" / "demo-signing.key").resolve()
        public = private.with_suffix(".pub")
        if not (private.is_file() and public.is_file()):
            generate_key_pair(private, public)
        return private, public

    # -- routed mode's router ------------------------------------------------------------

    @property
    def router_config(self) -> Path:
        return self.home / "router" / "config.yaml"

    @property
    def router_key_file(self) -> Path:
        return self.home / "router" / "master.key"

    @property
    def router_log(self) -> Path:
        return self.home / "router" / "requests.jsonl"

    @property
    def router_callback(self) -> Path:
        """Where the proxy loads the request log's callback from (next to config.yaml)."""
        return self.router_config.parent / f"{REQUEST_LOG_MODULE}.py"

    def place_router_callback(self) -> None:
        """Copy the request log's callback (``routerworkers/request_log.py``) next to the
        configuration, written whole under another name and renamed."""
        source = resources.files("loradeploy.routerworkers").joinpath("request_log.py").read_bytes()
        target = self.router_callback
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(source)
        Path(name).replace(target)

    def router_key(self) -> str:
        """The proxy's master key, made once (``router/master.key``, owner-only): the
        proxy refuses to start without one, and clients send it."""
        path = self.router_key_file
        if path.is_file() and not path.read_text(encoding="utf-8").strip():
            path.unlink()  # left empty by a crash of an earlier version: no proxy runs with it
        if not path.is_file():
            # written whole under another name, then linked: a crash leaves no empty key,
            # and of two first 'up's one key wins for both
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, name = tempfile.mkstemp(prefix=".master.key.", dir=path.parent)  # 0600
            try:
                with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                    handle.write(f"sk-{secrets.token_hex(24)}\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(name, path)
            finally:
                Path(name).unlink()
        return path.read_text(encoding="utf-8").strip()

    def router_client(self, backends: list[str], url: str = "") -> LiteLLMRouter:
        return LiteLLMRouter(
            url=url,
            key=self.router_key(),
            config=self.router_config,
            record=self._record_path("router"),
            backends=backends,
            callbacks=proxy_callbacks(request_log=True),
        )

    def router_command(self) -> list[str]:
        return [
            str(self.config.assets / "envs" / "router" / "bin" / "litellm"),
            "--config",
            str(self.router_config.resolve()),
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--run_gunicorn",
            "--num_workers",
            "1",
        ]

    def router_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LITELLM_", "MLFLOW_", "LORADEPLOY_")) and k not in ROUTER_DB_ENV
        }
        env.update(
            {
                "LITELLM_MASTER_KEY": self.router_key(),
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price list
                "LITELLM_TELEMETRY": "False",
                "VLLM_API_KEY": self.config.api_key or "none",  # the config points here
                # the request log's callback writes here, with prompts and answers: the
                # local stack is a test bench (shadow answers are compared from the log)
                "LORADEPLOY_REQUEST_LOG": str(self.router_log.resolve()),
                "LORADEPLOY_REQUEST_LOG_TEXT": "1",
            }
        )
        return env

    def start_router(self, backends: list[str], on_tick: Tick | None = None) -> ProcessRecord:
        """Start the proxy on the routes (and shadows) its configuration file holds (none
        the first time), rendered again for the vLLM servers running now."""
        record = self._spawn_router(backends)
        self._await([(record, ROUTER_START_TIMEOUT_S)], on_tick)
        return record

    def _spawn_router(self, backends: list[str]) -> ProcessRecord:
        router = self.router_client(backends)
        self.place_router_callback()
        router.write(router.routes(), router.shadows())
        port = processes.free_port(self._previous_port("router"))
        return self._spawn("router", self.router_command(), self.router_env(), port=port)

    def start_mlflow(
        self,
        name: str,
        on_tick: Tick | None = None,
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> ProcessRecord:
        """Start one MLflow server on this home's data; ``extra_args`` are added last."""
        record = self._spawn_mlflow(name, extra_args, extra_env)
        self._await([(record, MLFLOW_START_TIMEOUT_S)], on_tick)
        return record

    def _spawn_mlflow(
        self, name: str, extra_args: list[str] | None = None, extra_env: dict[str, str] | None = None
    ) -> ProcessRecord:
        return self._spawn(
            name,
            self.mlflow_command() + list(extra_args or []),
            {**self.mlflow_env(), **(extra_env or {})},
            port=processes.free_port(self._previous_port(name)),
        )

    def start_vllm(
        self,
        name: str,
        on_tick: Tick | None = None,
        extra_args: list[str] | None = None,
        *,
        restore: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> ProcessRecord:
        """Start one vLLM server; ``extra_args`` override the defaults (last flag wins).
        ``restore=False`` starts it empty, without the restored ``--lora-modules``."""
        record = self._spawn_vllm(name, extra_args, restore=restore, extra_env=extra_env)
        self._await([(record, VLLM_START_TIMEOUT_S)], on_tick)
        return record

    def _spawn_vllm(
        self,
        name: str,
        extra_args: list[str] | None = None,
        *,
        restore: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> ProcessRecord:
        return self._spawn(
            name,
            self.vllm_command(restore=restore) + list(extra_args or []),
            {**self.vllm_env(), **(extra_env or {})},
            port=processes.free_port(self._previous_port(name)),
        )

    def stop(self, name: str) -> None:
        record = processes.load(self._record_path(name))
        if record and processes.runs(record):
            processes.stop_group(record.pid)

    def down(self) -> list[str]:
        """Stop every server (whole process groups); keep data, logs and records."""
        stopped = []
        for name in ["router", *self.vllm_names(), "mlflow", *self._extra_records()]:
            record = processes.load(self._record_path(name))
            if record and processes.runs(record):
                processes.stop_group(record.pid)
                stopped.append(name)
        return stopped

    def _extra_records(self) -> list[str]:
        """Servers from an earlier ``up`` with more replicas."""
        known = {*self.vllm_names(), "mlflow", "router"}
        run = self.home / "run"
        found = sorted(p.stem for p in run.glob("*.json")) if run.is_dir() else []
        extra = []
        for name in found:
            record = processes.load(run / f"{name}.json")
            if name not in known and record and processes.runs(record):
                extra.append(name)
        return extra

    def _router_in_stack_file(self) -> bool:
        """Whether the last ``up`` started the router (so ``status`` reports it)."""
        try:
            return read_stack(self.home / STACK_FILE).router_url is not None
        except (OSError, ValueError, LoraDeployError):
            return False

    def _router_runs(self) -> bool:
        """A router from an earlier ``up --router`` still runs (a later ``up`` left it)."""
        record = processes.load(self._record_path("router"))
        return record is not None and processes.runs(record)

    def status(self) -> list[ServiceStatus]:
        rows = []
        optional = (
            ["router"] if self.config.router or self._router_in_stack_file() or self._router_runs() else []
        )
        for name in ["mlflow", *self.vllm_names(), *optional, *self._extra_records()]:
            record = processes.load(self._record_path(name))
            if record is None:
                rows.append(ServiceStatus(name, None, None, False, False, None))
                continue
            running = processes.runs(record)
            rows.append(
                ServiceStatus(
                    name,
                    record.url,
                    record.pid,
                    running,
                    running and _healthy(name, record.url),
                    record.log,
                )
            )
        return rows

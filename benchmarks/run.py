"""loradeploy benchmarks: the deployer against the physical floor, on the real local stack.

Run with ``make bench`` (or ``make bench ONLY=swap`` for one section). Every figure is
printed under the command that reproduces it, and the whole run is written to
``benchmarks/results/latest.json``. The machine is noisy: the result of a section is a
ratio or a median over repeats, never one absolute time. Targets are checked here, never
in ``make test``; a missed target makes the exit code 1 after everything has run.

Sections:
  startup  ``loradeploy --help`` and ``loradeploy version``: wall time and peak memory.
  swap     8 clients on one slot while it is swapped 10 times, per strategy.
  deploy   ``load-adapter`` end to end for ~7, ~100 and ~400 MB adapters vs the floor
           (a plain fetch of the same bytes from MLflow, a copy into place, vLLM's load).
  serving  decoding speed of a slot swapped in place vs the same files loaded plainly.
  restore  ``init-load-adapters`` (live + staged) against the same kind of floor.
  mixed    base-model answers sent in one batch with a LoRA's, against the base alone.
  replicas rolling one version to 1, 2 and 4 vLLM replicas of the tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.swap import SwapStrategy
from loradeploy.stack.local import LocalStack, StackConfig
from loradeploy.steps.swap import swap_adapter

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / ".loradeploy"
ADAPTERS_SRC = ASSETS / "adapters-src"
HOME = ASSETS / "bench"
RESULTS = REPO / "benchmarks" / "results"
LORADEPLOY = str(Path(sys.executable).parent / "loradeploy")
PROMPT = "<|im_start|>user\nWhat does Amazon S3 store?<|im_end|>\n<|im_start|>assistant\n"

# SmolLM2-135M: (in, out) features of every projection a LoRA may target.
SMOLLM2_LAYERS = 30
SMOLLM2_PROJ = {
    "self_attn.q_proj": (576, 576),
    "self_attn.k_proj": (576, 192),
    "self_attn.v_proj": (576, 192),
    "self_attn.o_proj": (576, 576),
    "mlp.gate_proj": (576, 1536),
    "mlp.up_proj": (576, 1536),
    "mlp.down_proj": (1536, 576),
}


def _cmd(section: str) -> str:
    """The command that reproduces one section (``make bench`` waits for other runs that
    start vLLM, as integration tests do)."""
    return f"make bench ONLY={section}"


def section(title: str, name: str) -> None:
    """A section's heading, with the command that reproduces every figure below it."""
    print(f"\n== {name}: {title}\n   reproduce: {_cmd(name)}")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Report:
    sections: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def target(self, name: str, value: float, limit: float, unit: str, command: str) -> None:
        met = value <= limit
        self.targets.append(
            {
                "target": name,
                "value": round(value, 3),
                "limit": limit,
                "unit": unit,
                "met": met,
                "reproduce": command,
            }
        )
        print(f"  target {name}: {value:.3f} {unit} (limit {limit}) -> {'met' if met else 'MISSED'}")
        print(f"    reproduce: {command}")


# -- the stack -----------------------------------------------------------------------------


BENCH_STACKS = ("r16", "r320", "tiny")


def bench_stack(kind: str) -> LocalStack:
    """One bench stack per kind, in its own home: ``r16`` (the demo's server flags),
    ``r320`` (room for the 400 MB adapter), ``tiny`` (four replicas of the tiny model)."""
    config = StackConfig(home=HOME / kind, assets=ASSETS)
    if kind == "r320":
        config.max_lora_rank = 320
    if kind == "tiny":
        config.replicas = 4
        config.model_dir = ASSETS / "models" / "tiny-llama"
        config.served_model = "loradeploy/tiny-llama"
    return LocalStack(config)


def only_stack(kind: str) -> tuple[LocalStack, Any]:
    """Bring up ``kind`` after stopping the other bench stacks (two cores do not hold two
    busy vLLM servers without distorting every figure)."""
    for other in BENCH_STACKS:
        if other != kind and (HOME / other / "run").exists():
            bench_stack(other).down()
    stack = bench_stack(kind)
    return stack, stack.up()


def run_cli(*args: str, env: dict[str, str]) -> tuple[int, float, dict[str, Any] | None, str]:
    out = HOME / "out" / f"{time.time_ns()}"
    started = time.perf_counter()
    done = subprocess.run(
        [LORADEPLOY, *args, f"--output-dir={out}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    elapsed = time.perf_counter() - started
    result_file = out / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else None
    return done.returncode, elapsed, result, done.stderr.strip()


def stack_env(stack: LocalStack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LORADEPLOY_"))}
    env["LORADEPLOY_HOME"] = str(stack.home)
    return env


def register(stack: LocalStack, model: str, folder: Path) -> str:
    code, _, result, err = run_cli(
        "register",
        f"--model-name={model}",
        f"--adapter-dir={folder}",
        "--reuse-identical",
        env=stack_env(stack),
    )
    if code != 0 or result is None:
        raise RuntimeError(f"register {folder} failed ({code}): {err}")
    return str(result["version"])


# -- synthetic adapters --------------------------------------------------------------------


def write_synthetic_adapter(folder: Path, rank: int) -> int:
    """A valid PEFT LoRA for SmolLM2 on all seven projections, all-zero weights (a no-op
    adapter, like PEFT's own initialisation of B). Returns the size in bytes."""
    marker = folder.with_name(folder.name + ".bytes")  # outside: an adapter is a flat folder
    if marker.exists():
        return int(marker.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for layer in range(SMOLLM2_LAYERS):
        for proj, (fan_in, fan_out) in SMOLLM2_PROJ.items():
            prefix = f"base_model.model.model.layers.{layer}.{proj}"
            for part, shape in (("lora_A", [rank, fan_in]), ("lora_B", [fan_out, rank])):
                size = shape[0] * shape[1] * 4
                header[f"{prefix}.{part}.weight"] = {
                    "dtype": "F32",
                    "shape": shape,
                    "data_offsets": [offset, offset + size],
                }
                offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with (folder / "adapter_model.safetensors").open("wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        chunk = bytes(1 << 20)
        left = offset
        while left:
            handle.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
    config = {
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": sorted(p.split(".")[1] for p in SMOLLM2_PROJ),
        "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    total = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    marker.write_text(str(total))
    return total


# -- sections ------------------------------------------------------------------------------


def bench_startup(report: Report, repeats: int = 5) -> None:
    section("command start-up, wall time and peak memory", "startup")
    figures: dict[str, Any] = {}
    for label, args in (("--help", ["--help"]), ("version", ["version"])):
        walls, peaks = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            process = subprocess.Popen([LORADEPLOY, *args], stdout=subprocess.DEVNULL)
            _, status, usage = os.wait4(process.pid, 0)
            walls.append(time.perf_counter() - started)
            peaks.append(usage.ru_maxrss / 1024)
            process.returncode = os.waitstatus_to_exitcode(status)
        figures[label] = {"wall_s_median": median(walls), "peak_rss_mb_median": median(peaks)}
        print(
            f"  loradeploy {label}: {median(walls):.3f} s, peak {median(peaks):.0f} MB (median of {repeats})"
        )
    report.sections["startup"] = figures
    report.target("--help wall time", figures["--help"]["wall_s_median"], 0.5, "s", _cmd("startup"))


@dataclass
class Traffic:
    """Clients that send short completions to one slot until told to stop."""

    url: str
    slot: str
    clients: int = 8
    records: list[tuple[float, float, bool, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    response = http.post(
                        "/v1/completions",
                        json={"model": self.slot, "prompt": PROMPT, "max_tokens": 8, "temperature": 0},
                    )
                    ok, why = response.status_code == 200, str(response.status_code)
                except httpx.HTTPError as exc:
                    ok, why = False, type(exc).__name__
                with self._lock:
                    self.records.append((started, time.perf_counter(), ok, why))

    @contextmanager
    def running(self) -> Iterator[None]:
        threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=90)

    def window(self, start: float, end: float) -> list[tuple[float, float, bool, str]]:
        return [r for r in self.records if start <= r[0] < end]


def _latency_summary(rows: list[tuple[float, float, bool, str]]) -> dict[str, Any]:
    ok = [end - start for start, end, good, _ in rows if good]
    failed = [why for *_, good, why in rows if not good]
    return {
        "requests": len(rows),
        "failed": len(failed),
        "refused": sum(1 for why in failed if why == "ConnectError"),  # after an engine death
        "failure_kinds": sorted(set(failed)),
        "p50_s": percentile(ok, 0.5),
        "p99_s": percentile(ok, 0.99),
    }


def bench_swap(report: Report, swaps: int = 10, quiet_s: float = 15.0) -> None:
    section("8 clients on one slot, 10 swaps, per strategy", "swap")
    stack, info = only_stack("r16")
    roots = []
    for name in ("aws-rag-qa-v1", "aws-rag-qa-v2"):
        target = stack.config.adapters_root / "bench-swap" / name
        if not target.exists():
            shutil.copytree(ADAPTERS_SRC / name, target)
        roots.append(str(target))
    figures: dict[str, Any] = {}
    with VllmClient(info.vllm_url, timeout=httpx.Timeout(60.0)) as vllm:
        base = vllm.base_model().id
        for strategy in (SwapStrategy.UNLOAD_LOAD, SwapStrategy.INPLACE):
            slot = f"bench-swap-{strategy.value}"
            current = vllm.adapters().get(slot)
            current_root = current.root if current else None
            swap_adapter(vllm, slot, roots[0], current_root=current_root, strategy=strategy, base_id=base)
            current_root = roots[0]
            traffic = Traffic(info.vllm_url, slot)
            durations = []
            died_at: int | None = None
            with traffic.running():
                time.sleep(2)  # warm-up, not counted
                quiet_start = time.perf_counter()
                time.sleep(quiet_s)
                swap_start = time.perf_counter()
                for index in range(swaps):
                    new_root = roots[(index + 1) % 2]
                    started = time.perf_counter()
                    try:
                        swap_adapter(
                            vllm, slot, new_root, current_root=current_root, strategy=strategy, base_id=base
                        )
                        current_root = new_root
                    except Exception as exc:  # noqa: BLE001 - a benchmark records every outcome
                        print(f"  swap {index + 1} failed: {exc}")
                        if not vllm.health_check():
                            died_at = index + 1
                            break
                    durations.append(time.perf_counter() - started)
                    time.sleep(1.0)
                # After a dead engine every request fails at once: count up to the death.
                swap_end = time.perf_counter()
            quiet = _latency_summary(traffic.window(quiet_start, swap_start))
            during = _latency_summary(traffic.window(swap_start, swap_end))
            figures[strategy.value] = {
                "quiet": quiet,
                "during_swaps": during,
                "swap_s_median": median(durations),
                "swaps_done": len(durations),
                "engine_died_at_swap": died_at,
            }
            died = f"; ENGINE DIED at swap {died_at}" if died_at else ""
            print(
                f"  {strategy.value:12s} failed {during['failed'] - during['refused']}/"
                f"{during['requests'] - during['refused']} during swaps "
                f"({quiet['failed']}/{quiet['requests']} quiet){died}; p50 {during['p50_s']:.3f}s vs "
                f"{quiet['p50_s']:.3f}s quiet; p99 {during['p99_s']:.3f}s vs {quiet['p99_s']:.3f}s; "
                f"swap {median(durations):.3f}s median"
            )
            if died_at:
                print("  restarting the bench stack")
                stack.down()
                info = stack.up()
                vllm = VllmClient(info.vllm_url, timeout=httpx.Timeout(60.0))
    report.sections["swap"] = figures
    inplace = figures.get("inplace", {}).get("during_swaps", {})
    if inplace:
        report.target("in-place swap failed requests", float(inplace["failed"]), 0, "requests", _cmd("swap"))


def _unload(vllm: VllmClient, *slots: str) -> None:
    """Make sure none of ``slots`` is served (a fresh start for the next repeat)."""
    served = vllm.adapters()
    for slot in slots:
        if slot in served:
            vllm.unload_lora_adapter(slot)


def _copy_floor(vllm: VllmClient, source: Path, scratch: Path, name: str) -> tuple[float, float]:
    """Raw copy of the adapter's bytes next to the served folders, then vLLM's own load."""
    target = scratch / name
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    shutil.copytree(source, target)
    copied = time.perf_counter() - started
    started = time.perf_counter()
    vllm.load_lora_adapter(name, str(target))
    loaded = time.perf_counter() - started
    vllm.unload_lora_adapter(name)
    shutil.rmtree(target, ignore_errors=True)
    return copied, loaded


def _artifact_base(http: httpx.Client, model: str, version: str) -> tuple[str, list[str]]:
    """The artifact proxy path of a version's files and their names (plain REST)."""
    got = http.get(
        "/api/2.0/mlflow/model-versions/get-download-uri", params={"name": model, "version": version}
    )
    got.raise_for_status()
    uri = str(got.json()["artifact_uri"])
    if uri.startswith("models:/"):
        logged = http.get(f"/api/2.0/mlflow/logged-models/{uri.removeprefix('models:/')}")
        logged.raise_for_status()
        uri = str(logged.json()["model"]["info"]["artifact_uri"])
    rel = uri.removeprefix("mlflow-artifacts:/").lstrip("/")
    listing = http.get("/api/2.0/mlflow-artifacts/artifacts", params={"path": rel})
    listing.raise_for_status()
    names = [f["path"].rsplit("/", 1)[-1] for f in listing.json().get("files", []) if not f.get("is_dir")]
    if not names:
        raise RuntimeError(f"no files listed under {uri}")
    return f"/api/2.0/mlflow-artifacts/artifacts/{rel}", names


def _floor(
    vllm: VllmClient, tracking_uri: str, model: str, version: str, staging: Path, scratch: Path, name: str
) -> dict[str, float]:
    """The physical floor of a registry deploy, in this process: fetch the version's bytes
    from MLflow with plain streaming GETs (no MLflow client, no hashing, no checks) into a
    staging folder, copy them next to the served folders, and one bare vLLM load call."""
    source, target = staging / name, scratch / name
    for folder in (source, target):
        shutil.rmtree(folder, ignore_errors=True)
    source.mkdir(parents=True)
    with httpx.Client(base_url=tracking_uri, timeout=httpx.Timeout(300.0)) as http:
        base, names = _artifact_base(http, model, version)  # what to fetch: not timed
        started = time.perf_counter()
        for file_name in names:
            with (
                http.stream("GET", f"{base}/{file_name}") as response,
                (source / file_name).open("wb") as handle,
            ):
                response.raise_for_status()
                for chunk in response.iter_bytes(1 << 20):
                    handle.write(chunk)
        fetched = time.perf_counter() - started
    started = time.perf_counter()
    shutil.copytree(source, target)
    placed = time.perf_counter() - started
    started = time.perf_counter()
    vllm.load_lora_adapter(name, str(target))
    loaded = time.perf_counter() - started
    vllm.unload_lora_adapter(name)
    for folder in (source, target):
        shutil.rmtree(folder, ignore_errors=True)
    return {"fetch": fetched, "place": placed, "load": loaded}


def bench_deploy(report: Report, repeats: int = 3, sizes: tuple[int, ...] = (16, 82, 320)) -> None:
    section("load-adapter end to end against the floor (fetch from MLflow + place + vLLM load)", "deploy")
    stack, info = only_stack("r320")
    env = stack_env(stack)
    scratch = stack.config.adapters_root / "bench-floor"
    staging = stack.home / "bench-floor-staging"  # outside the adapters folder, as a deploy stages
    scratch.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}
    with VllmClient(info.vllm_url, timeout=httpx.Timeout(300.0)) as vllm:
        for rank in sizes:
            source = ADAPTERS_SRC / "aws-rag-qa-v1" if rank == 16 else HOME / "synthetic" / f"smollm2-r{rank}"
            size = write_synthetic_adapter(source, rank) if rank != 16 else _folder_bytes(source)
            model = f"bench-deploy-r{rank}"
            version = register(stack, model, source)
            slot = f"bench-slot-r{rank}"
            end_to_end, phases, floors = [], [], []
            for _ in range(repeats):  # interleaved: the machine's noise hits both alike
                _unload(vllm, slot)
                shutil.rmtree(stack.config.adapters_root / slot, ignore_errors=True)
                code, elapsed, result, err = run_cli(
                    "load-adapter",
                    f"--model-name={model}",
                    f"--source=version:{version}",
                    f"--slot-name={slot}",
                    "--max-lora-rank=320",
                    env=env,
                )
                if code != 0 or result is None:
                    raise RuntimeError(f"load-adapter r={rank} failed ({code}): {err}")
                end_to_end.append(elapsed)
                phases.append(result.get("timings_s", {}))
                floors.append(
                    _floor(vllm, info.tracking_uri, model, version, staging, scratch, f"floor-r{rank}")
                )
            e2e = median(end_to_end)
            floor_parts = {key: median([f[key] for f in floors]) for key in ("fetch", "place", "load")}
            floor = median([sum(f.values()) for f in floors])
            phase_medians = {
                key: median([p.get(key, 0.0) for p in phases])
                for key in sorted({k for p in phases for k in p})
            }
            figures[f"r{rank}"] = {
                "bytes": size,
                "end_to_end_s": e2e,
                "floor_s": floor,
                "floor_parts_s": floor_parts,
                "ratio": e2e / floor,
                "overhead_s": e2e - floor,
                "phases_s": phase_medians,
            }
            print(
                f"  r={rank:<3d} {size / 1e6:6.1f} MB: end to end {e2e:.2f}s, floor {floor:.2f}s ("
                + ", ".join(f"{k} {v:.2f}" for k, v in floor_parts.items())
                + f"), ratio {e2e / floor:.2f}, overhead {e2e - floor:.2f}s; phases "
                + ", ".join(f"{k} {v:.2f}" for k, v in phase_medians.items())
            )
            _unload(vllm, slot)
    # The fixed cost (process start, imports, lock, round trips) is what the smallest
    # adapter adds to its floor; the size-dependent part is the rest, against the floor.
    smallest = min(figures.values(), key=lambda item: item["bytes"])
    fixed = max(smallest["overhead_s"], 0.0)
    for key, item in figures.items():
        item["size_dependent_ratio"] = (item["end_to_end_s"] - fixed) / item["floor_s"]
        if item["bytes"] >= 90e6:
            print(
                f"  r={key[1:]}: (end to end - fixed {fixed:.2f}s) / floor = "
                f"{item['size_dependent_ratio']:.2f}"
            )
    report.sections["deploy"] = figures
    report.target("deploy fixed overhead (7 MB: end to end - floor)", fixed, 1.0, "s", _cmd("deploy"))
    for key, item in figures.items():
        if item["bytes"] >= 90e6:
            report.target(
                f"deploy {key}: (end to end - fixed) / floor",
                item["size_dependent_ratio"],
                1.3,
                "x",
                _cmd("deploy"),
            )


def _decode_s(http: httpx.Client, slot: str, tokens: int) -> float:
    """Seconds for one greedy completion of exactly ``tokens`` tokens from ``slot``."""
    started = time.perf_counter()
    response = http.post(
        "/v1/completions",
        json={"model": slot, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "ignore_eos": True},
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    got = response.json()["usage"]["completion_tokens"]
    if got != tokens:
        raise RuntimeError(f"{slot} generated {got} tokens, asked for {tokens}")
    return elapsed


def _interleaved(
    http: httpx.Client, first: str, second: str, repeats: int, tokens: int
) -> dict[str, list[float]]:
    """``repeats`` completions from each slot, alternating which goes first, after one
    unmeasured warm-up each."""
    times: dict[str, list[float]] = {first: [], second: []}
    for slot in (first, second):
        _decode_s(http, slot, tokens)
    for index in range(repeats):
        for slot in (first, second) if index % 2 == 0 else (second, first):
            times[slot].append(_decode_s(http, slot, tokens))
    return times


def bench_serving(
    report: Report, repeats: int = 8, sizes: tuple[int, ...] = (16, 82, 320), tokens: int = 48
) -> None:
    """A slot swapped in place against the same bytes loaded plainly under another name.

    On vLLM before 0.33 the in-place flag stays on the request vLLM keeps for the name, so
    every engine step loads the adapter from disk again (vLLM issue 33791). Then the only
    call that clears it, unloading the name and loading it again, is measured too."""
    section(f"{tokens}-token greedy completions from a slot swapped in place vs loaded plainly", "serving")
    stack, info = only_stack("r320")
    root = stack.config.adapters_root / "bench-serving"
    figures: dict[str, Any] = {}
    with (
        VllmClient(info.vllm_url, timeout=httpx.Timeout(600.0)) as vllm,
        httpx.Client(base_url=info.vllm_url, timeout=httpx.Timeout(600.0)) as http,
    ):
        figures["vllm_version"] = vllm.server_version()
        for rank in sizes:
            source = ADAPTERS_SRC / "aws-rag-qa-v1" if rank == 16 else HOME / "synthetic" / f"smollm2-r{rank}"
            size = write_synthetic_adapter(source, rank) if rank != 16 else _folder_bytes(source)
            # Three folders with the same bytes: the plain slot's, the swapped slot's first
            # version, and the one it is swapped to in place (every version has its folder).
            plain_dir, first_dir, swapped_dir = (root / f"r{rank}-{n}" for n in ("plain", "first", "swapped"))
            for folder in (plain_dir, first_dir, swapped_dir):
                if not folder.exists():
                    shutil.copytree(source, folder)
            plain, swapped = f"bench-plain-r{rank}", f"bench-swapped-r{rank}"
            _unload(vllm, plain, swapped)
            vllm.load_lora_adapter(plain, str(plain_dir))
            vllm.load_lora_adapter(swapped, str(first_dir))
            vllm.load_lora_adapter(swapped, str(swapped_dir), load_inplace=True)
            inplace = _interleaved(http, plain, swapped, repeats, tokens)
            vllm.unload_lora_adapter(swapped)  # the name is missing until the next call returns
            vllm.load_lora_adapter(swapped, str(swapped_dir))
            reloaded = _interleaved(http, plain, swapped, repeats, tokens)
            _unload(vllm, plain, swapped)
            shutil.rmtree(root, ignore_errors=True)
            item = {
                "bytes": size,
                "plain_s_median": median(inplace[plain]),
                "swapped_inplace_s_median": median(inplace[swapped]),
                "ratio_inplace": median(inplace[swapped]) / median(inplace[plain]),
                "after_unload_load_s_median": median(reloaded[swapped]),
                "ratio_after_unload_load": median(reloaded[swapped]) / median(reloaded[plain]),
                "repeats": repeats,
                "tokens": tokens,
            }
            figures[f"r{rank}"] = item
            print(
                f"  r={rank:<3d} {size / 1e6:6.1f} MB: plain {item['plain_s_median']:.2f}s, swapped in place "
                f"{item['swapped_inplace_s_median']:.2f}s ({item['ratio_inplace']:.2f}x); after unload+load "
                f"{item['after_unload_load_s_median']:.2f}s ({item['ratio_after_unload_load']:.2f}x) "
                f"(median of {repeats}, interleaved)"
            )
    report.sections["serving"] = figures


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def bench_restore(report: Report, repeats: int = 3) -> None:
    section("init-load-adapters (live + staged) against the floor", "restore")
    stack, info = only_stack("r16")
    env = stack_env(stack)
    model = "bench-restore"
    v1 = register(stack, model, ADAPTERS_SRC / "aws-rag-qa-v1")
    v2 = register(stack, model, ADAPTERS_SRC / "aws-rag-qa-v2")
    _set_alias(info.tracking_uri, model, "live", v1)
    _set_alias(info.tracking_uri, model, "staged", v2)
    root = stack.home / "restore-root"
    live_slot, candidate_slot = "bench-restore-live", "bench-restore-candidate"
    times, floors = [], []
    with VllmClient(info.vllm_url, timeout=httpx.Timeout(120.0)) as vllm:
        for _ in range(repeats):
            _unload(vllm, live_slot, candidate_slot)
            shutil.rmtree(root, ignore_errors=True)
            code, elapsed, _, err = run_cli(
                "init-load-adapters",
                f"--model-name={model}",
                f"--adapters-root={root}",
                f"--live-slot={live_slot}",
                f"--candidate-slot={candidate_slot}",
                f"--vllm-url={info.vllm_url}",
                env=env,
            )
            if code != 0:
                raise RuntimeError(f"init-load-adapters failed ({code}): {err}")
            times.append(elapsed)
            scratch = stack.home / "restore-floor"
            scratch.mkdir(exist_ok=True)
            floors.append(
                sum(_copy_floor(vllm, ADAPTERS_SRC / "aws-rag-qa-v1", scratch, "floor-live"))
                + sum(_copy_floor(vllm, ADAPTERS_SRC / "aws-rag-qa-v2", scratch, "floor-candidate"))
            )
        # reconcile: what the sidecar does when vLLM lost both slots (a restart of the
        # vLLM container; here the slots are unloaded, the folders stay, as on the volume).
        repairs = []
        for _ in range(repeats):
            _unload(vllm, live_slot, candidate_slot)
            code, elapsed, _, err = run_cli(
                "reconcile",
                f"--model-name={model}",
                f"--adapters-root={root}",
                f"--live-slot={live_slot}",
                f"--candidate-slot={candidate_slot}",
                f"--vllm-url={info.vllm_url}",
                env=env,
            )
            if code != 0 or not {live_slot, candidate_slot} <= vllm.adapters().keys():
                raise RuntimeError(f"reconcile failed ({code}): {err}")
            repairs.append(elapsed)
        _unload(vllm, live_slot, candidate_slot)
    print(f"  reconcile of two lost slots: {median(repairs):.2f}s (median of {repeats})")
    figures = {
        "reconcile_two_slots_s": median(repairs),
        "end_to_end_s": median(times),
        "floor_s": median(floors),
        "ratio": median(times) / median(floors),
        "overhead_s": median(times) - median(floors),
    }
    print(
        f"  init-load-adapters: {figures['end_to_end_s']:.2f}s, floor {figures['floor_s']:.2f}s, "
        f"ratio {figures['ratio']:.2f}, overhead {figures['overhead_s']:.2f}s"
    )
    report.sections["restore"] = figures


MIXED_QUESTIONS = (
    "How long can an S3 bucket name be?",
    "What is a presigned URL?",
    "What is a Savings Plan?",
    "What does Amazon S3 store?",
)


def bench_mixed(report: Report, rounds: int = 3) -> None:
    """Base-model requests sent together with LoRA requests: does the server answer them
    as the base model does alone? With the adapter loaded plainly, after it was swapped in
    place (``load_inplace``, as a promotion does), and with a second adapter resident
    (as many as ``--max-loras``, 2). smoke-test and Gate 1 never send the base model's
    requests beside an adapter's."""
    section("base-model answers batched with a LoRA's (greedy chat, 24 tokens)", "mixed")
    _, info = only_stack("r16")
    slot, other = "bench-mixed", "bench-mixed-other"

    def ask(vllm: VllmClient, model: str, question: str) -> str:
        messages = [{"role": "user", "content": question}]
        return vllm.chat_completion(model, messages, max_tokens=24).text

    def batched(vllm: VllmClient, base_id: str, alone_base: list[str]) -> dict[str, int]:
        alone_lora = [ask(vllm, slot, q) for q in MIXED_QUESTIONS]
        counts = {"asked": 0, "changed": 0, "as_lora": 0, "changed_among_base": 0}
        for _ in range(rounds):
            with ThreadPoolExecutor(max_workers=2 * len(MIXED_QUESTIONS)) as pool:
                lora = [pool.submit(ask, vllm, slot, q) for q in MIXED_QUESTIONS]
                base = [pool.submit(ask, vllm, base_id, q) for q in MIXED_QUESTIONS]
                together = [f.result() for f in base]
                for f in lora:
                    f.result()
                only_base = list(pool.map(lambda q: ask(vllm, base_id, q), MIXED_QUESTIONS))
            for text, alone, as_lora in zip(together, alone_base, alone_lora, strict=True):
                counts["asked"] += 1
                counts["changed"] += text != alone
                counts["as_lora"] += text == as_lora != alone
            counts["changed_among_base"] += sum(t != b for t, b in zip(only_base, alone_base, strict=True))
        return counts

    figures: dict[str, Any] = {}
    with VllmClient(info.vllm_url, timeout=httpx.Timeout(120.0)) as vllm:
        _unload(vllm, slot, other)
        base_id = vllm.base_model().id
        figures["vllm_version"] = vllm.server_version()
        alone_base = [ask(vllm, base_id, q) for q in MIXED_QUESTIONS]
        try:
            vllm.load_lora_adapter(slot, str(ADAPTERS_SRC / "aws-rag-qa-v1"))
            figures["plain_load"] = batched(vllm, base_id, alone_base)
            vllm.load_lora_adapter(slot, str(ADAPTERS_SRC / "aws-rag-qa-v2"), load_inplace=True)
            figures["after_inplace_swap"] = batched(vllm, base_id, alone_base)
            # a second adapter resident: as many as --max-loras (2, the live and candidate
            # slots of the specification)
            vllm.load_lora_adapter(other, str(ADAPTERS_SRC / "aws-rag-qa-v1"))
            ask(vllm, other, MIXED_QUESTIONS[0])
            figures["max_loras_resident"] = batched(vllm, base_id, alone_base)
        finally:
            _unload(vllm, slot, other)
    for label in ("plain_load", "after_inplace_swap", "max_loras_resident"):
        c = figures[label]
        print(
            f"  {label}: {c['asked']} base answers sent with LoRA requests: {c['changed']} differ from "
            f"the base alone ({c['as_lora']} are the LoRA's answer); sent among base requests only: "
            f"{c['changed_among_base']} differ"
        )
    report.sections["mixed"] = figures


def _set_alias(tracking_uri: str, model: str, alias: str, version: str) -> None:
    response = httpx.post(
        f"{tracking_uri}/api/2.0/mlflow/registered-models/alias",
        json={"name": model, "alias": alias, "version": version},
        timeout=30,
    )
    response.raise_for_status()


def bench_replicas(report: Report, counts: tuple[int, ...] = (1, 2, 4), repeats: int = 3) -> None:
    section(f"roll one version to {', '.join(map(str, counts))} tiny-model replicas", "replicas")
    figures: dict[str, Any] = {}
    stack, info = only_stack("tiny")
    env = stack_env(stack)
    model = "bench-replicas"
    versions = [register(stack, model, ADAPTERS_SRC / "tiny-llama-qa")]
    slot = "bench-replica-slot"
    for count in counts:
        urls = info.vllm_urls[:count]
        times = []
        for _ in range(repeats):
            for url in urls:
                with VllmClient(url, timeout=httpx.Timeout(60.0)) as vllm:
                    _unload(vllm, slot)
            shutil.rmtree(stack.config.adapters_root / slot, ignore_errors=True)
            code, elapsed, _, err = run_cli(
                "load-adapter",
                f"--model-name={model}",
                f"--source=version:{versions[0]}",
                f"--slot-name={slot}",
                *[f"--vllm-url={url}" for url in urls],
                env=env,
            )
            if code != 0:
                raise RuntimeError(f"load-adapter to {count} replicas failed ({code}): {err}")
            times.append(elapsed)
        figures[str(count)] = {"end_to_end_s": median(times)}
        print(f"  {count} replica(s): {median(times):.2f}s (median of {repeats})")
    report.sections["replicas"] = figures
    first, last = figures[str(counts[0])], figures[str(counts[-1])]
    report.target(
        f"{counts[-1]} replicas vs 1",
        last["end_to_end_s"] / first["end_to_end_s"],
        1.5,
        "x",
        _cmd("replicas"),
    )


def bench_signing(report: Report, repeats: int = 3, sizes: tuple[int, ...] = (16, 320)) -> None:
    """What a signed adapter costs, without servers: signing, the library's verification
    (signature, certificate-free key check, every file hashed again) and the whole check
    the deploy path runs (``steps.sign.check_signature``), next to one sha256 pass over
    the same files (what validation already spends on the registry's digests)."""
    import tempfile

    from loradeploy.clients.registry import VersionInfo
    from loradeploy.clients.signing import (
        generate_key_pair,
        identity_of,
        load_policy,
        sign_folder,
        verify_folder,
    )
    from loradeploy.domain.adapter import inspect_adapter, registry_tags, sha256_file
    from loradeploy.domain.signing import SIGNATURE_FILE, parse_signature, signature_tags, subject_for
    from loradeploy.steps.sign import check_signature

    section("sign and verify the 7 MB demo adapter and the 391 MB synthetic one", "signing")
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-signing-", dir=ASSETS) as scratch:
        root = Path(scratch)
        key, pub = root / "bench.key", root / "bench.pub"
        generate_key_pair(key, pub)
        policy = load_policy([pub], [], require_signature=True)
        for rank in sizes:
            source = ADAPTERS_SRC / "aws-rag-qa-v1" if rank == 16 else HOME / "synthetic" / f"smollm2-r{rank}"
            size = write_synthetic_adapter(source, rank) if rank != 16 else _folder_bytes(source)
            tags = registry_tags(inspect_adapter(source))
            signature = root / f"r{rank}.sig"
            signs, verifies, checks, hashes = [], [], [], []
            for _ in range(repeats):
                started = time.perf_counter()
                statement = sign_folder(
                    source, subject=subject_for("bench", "1"), signature=signature, key=key
                )
                signs.append(time.perf_counter() - started)
                started = time.perf_counter()
                verify_folder(
                    source,
                    signature,
                    statement=parse_signature(signature.read_bytes(), "bench"),
                    key=policy.keys[0],
                    ca_certificates=(),
                    where="bench",
                )
                verifies.append(time.perf_counter() - started)
                download = root / f"download-r{rank}"
                shutil.copytree(source, download)
                shutil.copyfile(signature, download / SIGNATURE_FILE)
                version = VersionInfo(
                    model="bench",
                    version="1",
                    aliases=[],
                    tags={**tags, **signature_tags(identity_of(statement), statement.method)},
                    via="version:1",
                )
                started = time.perf_counter()
                check_signature(version, download, policy)
                checks.append(time.perf_counter() - started)
                shutil.rmtree(download)
                started = time.perf_counter()
                for entry in sorted(source.iterdir()):
                    sha256_file(entry)
                hashes.append(time.perf_counter() - started)
            figures[f"r{rank}"] = {
                "bytes": size,
                "sign_s": median(signs),
                "verify_s": median(verifies),
                "check_signature_s": median(checks),
                "sha256_pass_s": median(hashes),
            }
            print(
                f"  r={rank:<3d} {size / 1e6:6.1f} MB: sign {median(signs):.2f}s, "
                f"verify {median(verifies):.2f}s, whole deploy-path check {median(checks):.2f}s; "
                f"one sha256 pass {median(hashes):.2f}s"
            )
    report.sections["signing"] = figures
    largest = figures[f"r{max(sizes)}"]
    report.target(
        "signature check / one sha256 pass (391 MB)",
        largest["check_signature_s"] / largest["sha256_pass_s"],
        2.0,
        "x",
        _cmd("signing"),
    )


SECTIONS: dict[str, Callable[[Report], None]] = {  # ordered so each bench stack starts once
    "startup": bench_startup,
    "swap": bench_swap,
    "restore": bench_restore,
    "mixed": bench_mixed,
    "deploy": bench_deploy,
    "serving": bench_serving,
    "replicas": bench_replicas,
    "signing": bench_signing,
}


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0] if Path("/proc/meminfo").exists() else ""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "memory": meminfo.split(":", 1)[-1].strip(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--keep-stack", action="store_true", help="leave the bench servers running")
    args = parser.parse_args()
    report = Report()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    started = time.time()
    try:
        for name in chosen:
            SECTIONS[name](report)
    finally:
        if not args.keep_stack:
            for kind in BENCH_STACKS:
                if (HOME / kind / "run").exists():
                    bench_stack(kind).down()
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    sections = {**previous.get("sections", {}), **report.sections}
    rerun = {_cmd(name) for name in chosen}  # a section run again replaces all its targets
    targets = [
        t
        for t in previous.get("targets", [])
        if t["target"] not in {x["target"] for x in report.targets}
        and t.get("reproduce") not in rerun
        # results written before targets named their command: kept only while their
        # section is not run again
        and not (t.get("reproduce") is None and t["target"].split()[0] in chosen)
    ]
    payload = {
        "machine": machine(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 1),
        "sections": sections,
        "targets": targets + report.targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    print("\n| target | value | limit | met | reproduce |\n|---|---|---|---|---|")
    for item in report.targets:
        print(
            f"| {item['target']} | {item['value']} {item['unit']} | {item['limit']} | {item['met']} "
            f"| `{item['reproduce']}` |"
        )
    return 0 if all(t["met"] for t in report.targets) else 1


if __name__ == "__main__":
    sys.exit(main())

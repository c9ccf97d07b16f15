"""The main job on the local stack, step by step, with the real commands.

1. bring up the local stack (MLflow + vLLM serving SmolLM2-135M-Instruct);
2. release v1 (a real LoRA fine-tune of aws-rag-qa): register as candidate with its
   smoke probes -> load-adapter -> smoke-test (the specification's flags only: it sends
   the probes recorded with the served version) -> set-staged-alias -> promote (first
   release, no gates);
3. v2: trained by 'loradeploy train' (logged to MLflow, registered with probes from its
   eval data; the training itself is cached, and 'make setup' already put it in that cache
   when it built the demo adapters, so the first run only evaluates it), the quality
   gate sets candidate, the same deployment steps, then Gate 1 (compare-decision
   against live v1) and Gate 2 (perf-decision); promoted from perf-passed when both pass;
4. the regressed adapter (trained on shuffled answers): deployed to the candidate slot,
   stopped by the smoke test (its answers are far from the probes' references) and never
   staged; Gate 1 agrees (eval-failed); live is untouched;
5. provenance: the stack signs every version it registers with its demo key and refuses
   unsigned or altered ones; a signed version whose weights were then swapped in the
   registry (sha256 tag rewritten to match) is refused by load-adapter while live serves;
6. roll back with 'previous' and show status (with who signed what each slot serves);
   then history; summarise versions, gate figures and the aliases;
7. routed mode: every version served under its own name (aws-rag-qa@v1), the stable name
   aws-rag-qa-live on the router (the LiteLLM proxy 'stack up --router' starts) sends
   to them with weights. While clients keep asking it, v2 goes out again as a canary
   (20 % -> 50 % -> 100 %, each step judged on live figures against v1, then promoted),
   and the regressed adapter's canary is caught by the live quality check at its first
   step and rolled back by itself;
8. write the release reports of v2 and of the regressed adapter (one HTML page each,
   with the plots behind the gates' decisions) and print where they are.

A second run reuses everything the first built (registry versions with identical files,
adapters already served from the same folders) and is much faster.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
HOME = REPO / ".loradeploy"
OUT = HOME / "demo-out"
ADAPTERS = HOME / "adapters-src"
PROBES = REPO / "data" / "aws-rag-qa" / "probes.jsonl"
EVAL = REPO / "data" / "aws-rag-qa" / "eval.jsonl"
MODEL = "aws-rag-qa"
LIVE_SLOT = "aws-rag-qa-live"
CANDIDATE_SLOT = "aws-rag-qa-candidate"
LORADEPLOY = str(Path(sys.executable).parent / "loradeploy")

console = Console()


def run(*args: str, expect: tuple[int, ...] = (0,)) -> dict[str, object]:
    """Run one loradeploy command as a user would; stop the demo on an unexpected exit."""
    console.print(f"\n[bold cyan]$ loradeploy {shlex.join(args)}[/]")
    done = subprocess.run([LORADEPLOY, *args], cwd=REPO, check=False)
    if done.returncode not in expect:
        console.print(f"[red]demo stopped: the command above exited {done.returncode}[/]")
        sys.exit(done.returncode)
    output = next((a.split("=", 1)[1] for a in args if a.startswith("--output-dir=")), None)
    result = dict(json.loads((Path(output) / "result.json").read_text())) if output else {}
    result["exit_code"] = done.returncode
    return result


class LiveTraffic:
    """Clients that keep asking the live slot while the release steps run, counting what
    fails: a release is only boring if serving never notices it. Each client asks again
    ``pause_s`` after its answer: steady traffic across every swap, without taking the
    2-core machine from the steps themselves."""

    def __init__(self, clients: int = 2, pause_s: float = 0.25) -> None:
        self.clients = clients
        self.pause_s = pause_s
        self.ok = 0
        self.failed: list[str] = []
        self.requests: list[dict[str, float | bool]] = []  # start (epoch s), latency_s, ok: for reports
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _client(self, url: str) -> None:
        body = {"model": LIVE_SLOT, "prompt": "What does Amazon S3 store?", "max_tokens": 8, "temperature": 0}
        with httpx.Client(base_url=url, timeout=120) as http:
            while not self._stop.is_set():
                started, clock = time.time(), time.perf_counter()
                try:
                    response = http.post("/v1/completions", json=body)
                    why = "" if response.status_code == 200 else f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    why = type(exc).__name__
                record = {"start": started, "latency_s": round(time.perf_counter() - clock, 4), "ok": not why}
                with self._lock:
                    self.requests.append(record)
                    if why:
                        self.failed.append(why)
                    else:
                        self.ok += 1
                self._stop.wait(self.pause_s)

    @contextmanager
    def running(self) -> Iterator[None]:
        url = json.loads((HOME / "stack.json").read_text())["vllm_url"]
        threads = [
            threading.Thread(target=self._client, args=(url,), daemon=True) for _ in range(self.clients)
        ]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=150)

    def save(self, path: Path) -> Path:
        """Every request as a JSON line, the format 'loradeploy report --traffic' reads."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "".join(json.dumps(r) + "\n" for r in sorted(self.requests, key=lambda r: r["start"]))
        )
        return path

    def describe(self) -> str:
        kinds = ", ".join(sorted(set(self.failed))) or "none"
        return f"{self.ok + len(self.failed)} requests, {len(self.failed)} failed ({kinds})"


class RoutedTraffic:
    """Clients of routed mode: they ask the stable name on the router with the evaluation
    questions (chat), and count per version that answered (the router's
    ``x-litellm-model-id`` header) and what failed. Connection errors are retried twice,
    as the OpenAI SDK does: a router that starts new workers on a weight change closes
    idle keep-alive connections, which never reached vLLM."""

    def __init__(self, clients: int = 8) -> None:
        self.clients = clients
        self.answered: dict[str, int] = {}
        self.failed: list[str] = []
        self.retried = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._questions = [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()][:8]

    def _client(self, url: str, key: str, number: int) -> None:
        from loradeploy.domain.scoring import QaExample, qa_messages

        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            while not self._stop.is_set():
                row = self._questions[number % len(self._questions)]
                number += 1
                example = QaExample(id=row["id"], context=row["context"], question=row["question"], answer="")
                body = {
                    "model": LIVE_SLOT,
                    "messages": qa_messages(example),
                    "max_tokens": 16,
                    "temperature": 0,
                }
                why = "connection"
                for _ in range(3):
                    try:
                        response = http.post("/v1/chat/completions", json=body)
                    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                        with self._lock:
                            self.retried += 1
                        time.sleep(0.1)
                        continue
                    why = "" if response.status_code == 200 else f"HTTP {response.status_code}"
                    version = response.headers.get("x-litellm-model-id", "?").split("#")[0]
                    break
                with self._lock:
                    if why:
                        self.failed.append(why)
                    else:
                        self.answered[version] = self.answered.get(version, 0) + 1

    @contextmanager
    def running(self) -> Iterator[None]:
        stack = json.loads((HOME / "stack.json").read_text())
        key = Path(stack["router_key_file"]).read_text().strip()
        threads = [
            threading.Thread(target=self._client, args=(stack["router_url"], key, i * 3), daemon=True)
            for i in range(self.clients)
        ]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=150)

    def describe(self) -> str:
        kinds = ", ".join(sorted(set(self.failed))) or "none"
        total = sum(self.answered.values()) + len(self.failed)
        return (
            f"{total} requests, {len(self.failed)} failed ({kinds}); answered by "
            + ", ".join(f"{name} {count}" for name, count in sorted(self.answered.items()))
            + f"; {self.retried} connection errors retried"
        )


def gate1(adapter: str, expect: tuple[int, ...] = (0,)) -> dict[str, object]:
    # The local judge is the 135M base model, barely better than chance (its position
    # bias is cancelled by balanced answer order); the F1 checks carry the decision.
    return run(
        "compare-decision",
        f"--model-name={MODEL}",
        f"--candidate-slot={CANDIDATE_SLOT}",
        f"--live-slot={LIVE_SLOT}",
        f"--output-dir={OUT / adapter / 'gate1'}",
        expect=expect,
    )


def gate2(adapter: str) -> dict[str, object]:
    return run(
        "perf-decision",
        f"--model-name={MODEL}",
        f"--candidate-slot={CANDIDATE_SLOT}",
        f"--live-slot={LIVE_SLOT}",
        "--requests=16",
        "--concurrency=8",  # two rounds of 8 per slot: vLLM batches them
        "--max-tokens=32",
        f"--output-dir={OUT / adapter / 'gate2'}",
        expect=(0, 1),  # latency on a shared CPU is noisy: a failure is reported, not fatal
    )


def promote(adapter: str, source_alias: str, reason: str = "") -> None:
    run(
        "promote-adapter",
        f"--model-name={MODEL}",
        f"--source-alias={source_alias}",
        f"--live-slot={LIVE_SLOT}",
        f"--reason={reason or f'demo release of {adapter}'}",
        f"--output-dir={OUT / adapter / 'promote'}",
    )


def train(adapter: str) -> dict[str, object]:
    """The training side: fine-tune, evaluate, log the run, register; the quality gate
    then sets 'candidate' from the run's metrics."""
    console.rule(f"train {adapter} and its quality gate")
    out = OUT / adapter
    trained = run("train", f"--model-name={MODEL}", "--steps=45", "--seed=2", f"--output-dir={out / 'train'}")
    run(
        "quality-gate",
        f"--model-name={MODEL}",
        f"--version={trained['version']}",
        f"--output-dir={out / 'quality-gate'}",
    )
    return trained


def deploy(adapter: str, *, trained: bool = False, smoke_exit: int = 0) -> dict[str, object]:
    """Steps 1-3 of the specification for one adapter: it ends staged in the candidate slot,
    unless the smoke test stops it (``smoke_exit`` 1: the demo expects that)."""
    out = OUT / adapter
    if trained:
        train(adapter)
    else:
        console.rule(f"register {adapter}")
        run(
            "register",
            f"--model-name={MODEL}",
            f"--adapter-dir={ADAPTERS / adapter}",
            "--reuse-identical",
            "--alias=candidate",
            f"--probes-file={PROBES}",
            f"--output-dir={out / 'register'}",
        )
    console.rule(f"deploy {adapter} to {CANDIDATE_SLOT}")
    load = run(
        "load-adapter",
        f"--model-name={MODEL}",
        "--source=alias:candidate",
        f"--slot-name={CANDIDATE_SLOT}",
        f"--output-dir={out / 'load'}",
    )
    smoke = run(
        "smoke-test",
        f"--adapter-name={CANDIDATE_SLOT}",
        "--num-requests=3",
        "--max-latency=30",
        f"--output-dir={out / 'smoke'}",
        expect=(smoke_exit,),
    )
    if smoke_exit != 0:
        console.print(f"[yellow]{adapter} failed its smoke test as expected: it is not staged[/]")
        return {"version": load["version"], "smoke": smoke["details"]}
    run(
        "set-staged-alias",
        f"--model-name={MODEL}",
        "--source=alias:candidate",
        f"--slot-name={CANDIDATE_SLOT}",
        f"--output-dir={out / 'staged'}",
    )
    return {"version": load["version"], "smoke": smoke["details"]}


def swap_weights(version: str, weights: Path) -> None:
    """What anyone with write access to the registry can do: replace a version's weights
    after it was signed, and rewrite its sha256 tag so the digests still match."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    uri = json.loads((HOME / "stack.json").read_text())["tracking_uri"]
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    get_artifact_repository(client.get_model_version_download_uri(MODEL, version)).log_artifact(str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    client.set_model_version_tag(MODEL, version, "loradeploy.sha256.adapter_model.safetensors", digest)


def tampered() -> dict[str, object]:
    """Provenance: a signed version altered in the registry is refused before it loads."""
    console.rule("provenance: a signed version altered afterwards is refused; live keeps serving")
    out = OUT / "tampered"
    registered = run(
        "register",
        f"--model-name={MODEL}",
        f"--adapter-dir={ADAPTERS / 'aws-rag-qa-v2'}",
        f"--output-dir={out / 'register'}",
    )
    version = str(registered["version"])
    console.print(f"[yellow]swapping the weights of version {version} in MLflow for the regressed ones[/]")
    swap_weights(version, ADAPTERS / "aws-rag-qa-regressed" / "adapter_model.safetensors")
    refused = run(
        "load-adapter",
        f"--model-name={MODEL}",
        f"--source=version:{version}",
        f"--slot-name={CANDIDATE_SLOT}",
        f"--output-dir={out / 'load'}",
        expect=(3,),
    )
    return {"version": version, "error": refused.get("error")}


def canary(label: str, source_alias: str, expect: int) -> dict[str, object]:
    """One canary of routed mode on the stable name aws-rag-qa-live. The windows are short
    and the latency limits wide: on a shared 2-core CPU one request's latency depends on
    the batch it shares; the live quality check (reference answers of the evaluation
    questions the clients ask) carries the decision."""
    return run(
        "canary",
        f"--model-name={MODEL}",
        f"--source-alias={source_alias}",
        f"--stable-name={LIVE_SLOT}",
        "--steps=20,50,100",
        "--interval=10",
        "--min-requests=5",
        "--max-waits=6",
        "--max-p50-ratio=2",
        "--max-p95-ratio=2.5",
        f"--eval-data={EVAL}",
        "--min-questions=4",
        "--quality-margin=0.15",
        f"--reason=demo canary of {label}",
        f"--output-dir={OUT / 'canary' / label}",
        expect=(expect,),
    )


def decided_by(result: dict[str, object]) -> str:
    """The last window of a canary: its decision and the per-version figures behind it."""
    details = result.get("details")
    if not isinstance(details, dict) or not details.get("windows"):
        return "-"
    last = details["windows"][-1]
    figures = last["figures"]
    quality = next((c["detail"] for c in last["checks"] if c["name"] == "live-quality"), "no quality check")
    return (
        f"{details.get('decision')} at {last['candidate_percent']} %: candidate "
        f"{figures['candidate_requests']} requests p50 {figures['candidate_p50_s']} s, live "
        f"{figures['current_requests']} requests p50 {figures['current_p50_s']} s; {quality}"
        + (f"; back on live in {details['abort_to_current_s']} s" if "abort_to_current_s" in details else "")
    )


def routed_mode(v2_source: str) -> tuple[dict[str, dict[str, object]], RoutedTraffic]:
    """Routed mode's chapter: live's versioned name and the stable name's route, then a
    good canary and a regressed one while clients keep asking the router."""
    console.rule("routed mode: versioned names behind the stable name aws-rag-qa-live on the router")
    live = run(
        "load-version", f"--model-name={MODEL}", "--source-alias=live", f"--output-dir={OUT / 'routed'}"
    )
    run(
        "route",
        f"--stable-name={LIVE_SLOT}",
        f"--weights={MODEL}@v{live['version']}=100",
        "--reason=routed mode starts on the live version",
    )
    traffic = RoutedTraffic()
    canaries = {}
    with traffic.running():
        console.rule("canary: v2 goes out again, 20 % -> 50 % -> 100 %, judged on live traffic")
        canaries["v2"] = canary("v2", v2_source, expect=0)
        console.rule("canary: the regressed adapter, caught at its first step and rolled back by itself")
        canaries["regressed"] = canary("regressed", "candidate", expect=1)
    return canaries, traffic


def figures(result: dict[str, object]) -> str:
    details = result.get("details")
    if not isinstance(details, dict):
        return "-"
    verdict = details.get("decision")
    shown = ", ".join(
        f"{k} {v}" for k, v in details.get("figures", {}).items() if not k.endswith("_requests")
    )
    return f"{verdict}: {shown}"


def release_reports(releases: dict[str, dict[str, object]], traffic: Path) -> dict[str, str]:
    """One self-contained HTML page per release that went through the gates, built from
    the registry, every result.json the demo wrote and the live-slot clients' requests;
    open it in any browser."""
    console.rule("release reports: the evidence behind each gate decision")
    pages = {}
    for adapter in ("aws-rag-qa-v2", "aws-rag-qa-regressed"):
        result = run(
            "report",
            f"--model-name={MODEL}",
            f"--version={releases[adapter]['version']}",
            f"--results-dir={OUT}",
            f"--traffic={traffic}",
            f"--output-dir={OUT / 'reports'}",
        )
        details = result["details"]
        assert isinstance(details, dict)
        pages[adapter] = f"{details['report']} ({details['bytes'] / 1024:.0f} KiB)"
    return pages


def main() -> int:
    started = time.monotonic()
    console.rule("loradeploy demo")
    run("stack", "up", "--router")
    releases = {"aws-rag-qa-v1": deploy("aws-rag-qa-v1")}
    promote("aws-rag-qa-v1", "staged")  # the first release: nothing live to compare with

    releases["aws-rag-qa-v2"] = deploy("aws-rag-qa-v2", trained=True)
    console.rule("aws-rag-qa-v2: Gate 1 (evaluation) and Gate 2 (performance)")
    gates = {"aws-rag-qa-v2 Gate 1": gate1("aws-rag-qa-v2")}
    gates["aws-rag-qa-v2 Gate 2"] = gate2("aws-rag-qa-v2")
    # From here on, clients keep using the live slot while it is promoted, while the
    # regressed adapter is deployed beside it, and while it is rolled back.
    traffic = LiveTraffic()
    with traffic.running():
        if gates["aws-rag-qa-v2 Gate 2"]["exit_code"] == 0:
            promote("aws-rag-qa-v2", "perf-passed")
        else:
            console.print("[yellow]Gate 2 failed on this machine: v2 stays staged, v1 stays live[/]")

        releases["aws-rag-qa-regressed"] = deploy("aws-rag-qa-regressed", smoke_exit=1)
        if gates["aws-rag-qa-v2 Gate 2"]["exit_code"] == 0:  # promoted: no 'staged' alias now
            console.rule("aws-rag-qa-regressed: Gate 1 agrees")
            gates["aws-rag-qa-regressed Gate 1"] = gate1("aws-rag-qa-regressed", expect=(1,))
        else:  # Gate 2 failed: v2 is still staged, and Gate 1 would compare v2
            console.print("[yellow]v2 is still staged: Gate 1 of the regressed adapter skipped[/]")
        altered = tampered()

        console.rule("roll back to the previous live version, then status and history")
        promote("rollback", "previous", reason="demo rollback")
    promoted_v2 = gates["aws-rag-qa-v2 Gate 2"]["exit_code"] == 0  # else v2 is still staged
    canaries, routed = routed_mode("previous" if promoted_v2 else "staged")
    console.rule("direct mode's live slot follows alias live again (reconcile)")
    run(
        "reconcile",
        f"--model-name={MODEL}",
        f"--live-slot={LIVE_SLOT}",
        f"--candidate-slot={CANDIDATE_SLOT}",
        f"--output-dir={OUT / 'reconcile'}",
    )
    status = run("status", f"--model-name={MODEL}", f"--output-dir={OUT / 'status'}")
    run("history", f"--model-name={MODEL}")
    reports = release_reports(releases, traffic.save(OUT / "live-traffic.jsonl"))

    summary = Table(title="demo summary")
    summary.add_column("what")
    summary.add_column("value", overflow="fold")
    for name, info in releases.items():
        smoke = info["smoke"]
        assert isinstance(smoke, dict)
        summary.add_row(name, f"version {info['version']}; smoke latencies (s) {smoke['latency_s']}")
    for name, result in gates.items():
        summary.add_row(name, figures(result))
    details = status.get("details")
    summary.add_row("aliases now", str(details.get("aliases") if isinstance(details, dict) else "-"))
    signers = details.get("signers") if isinstance(details, dict) else None
    summary.add_row("signed by (served versions)", str(signers or "-"))
    summary.add_row(f"altered version {altered['version']}", f"refused (exit 3): {altered['error']}")
    summary.add_row("live-slot traffic during promote, deploy, rollback", traffic.describe())
    for name, result in canaries.items():
        summary.add_row(f"canary of {name}", decided_by(result))
    summary.add_row("router traffic during both canaries", routed.describe())
    undo = f"loradeploy canary --model-name={MODEL} --source-alias=previous --steps=100"
    summary.add_row("roll back (routed: previous is still loaded)", undo)
    for name, page in reports.items():
        summary.add_row(f"release report {name}", page)
    summary.add_row("results", str(OUT))
    summary.add_row("wall time", f"{time.monotonic() - started:.1f} s")
    console.print(summary)
    console.print("The stack keeps running: 'loradeploy stack status'; 'make down' stops it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

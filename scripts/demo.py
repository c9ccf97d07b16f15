"""The main job on the local stack, step by step, with the real commands.

1. bring up the local stack (MLflow + vLLM serving SmolLM2-135M-Instruct);
2. register two adapter versions (v1 and v2 of aws-rag-qa, real LoRA fine-tunes);
3. release v1: candidate -> load-adapter -> smoke-test -> set-staged-alias -> promote;
4. release v2 the same way: v2 is live, v1 is previous;
5. show status, roll back with --source-alias=previous, show status and history;
6. summarise: which version serves in which slot, the aliases, the smoke latencies.

A second run reuses everything the first built (registry versions with identical files,
adapters already served from the same folders) and is much faster.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
HOME = REPO / ".loradeploy"
OUT = HOME / "demo-out"
ADAPTERS = HOME / "adapters-src"
PROBES = REPO / "data" / "aws-rag-qa" / "probes.jsonl"
MODEL = "aws-rag-qa"
LIVE_SLOT = "aws-rag-qa-live"
CANDIDATE_SLOT = "aws-rag-qa-candidate"
LORADEPLOY = str(Path(sys.executable).parent / "loradeploy")

console = Console()


def run(*args: str) -> dict[str, object]:
    """Run one loradeploy command as a user would; stop the demo if it fails."""
    console.print(f"\n[bold cyan]$ loradeploy {shlex.join(args)}[/]")
    done = subprocess.run([LORADEPLOY, *args], cwd=REPO, check=False)
    if done.returncode != 0:
        console.print(f"[red]demo stopped: the command above exited {done.returncode}[/]")
        sys.exit(done.returncode)
    output = next((a.split("=", 1)[1] for a in args if a.startswith("--output-dir=")), None)
    if output:
        return dict(json.loads((Path(output) / "result.json").read_text()))
    return {}


def release(adapter: str) -> dict[str, object]:
    """Steps 1-3 of the specification for one adapter, then promotion to live."""
    console.rule(f"release {adapter}")
    out = OUT / adapter
    run(
        "register",
        f"--model-name={MODEL}",
        f"--adapter-dir={ADAPTERS / adapter}",
        "--reuse-identical",
        "--alias=candidate",
        f"--output-dir={out / 'register'}",
    )
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
        "--num-requests=4",
        "--max-latency=30",
        f"--prompts-file={PROBES}",
        f"--model-name={MODEL}",
        f"--expected-version={load['version']}",
        f"--output-dir={out / 'smoke'}",
    )
    run(
        "set-staged-alias",
        f"--model-name={MODEL}",
        "--source=alias:candidate",
        f"--slot-name={CANDIDATE_SLOT}",
        f"--output-dir={out / 'staged'}",
    )
    run(
        "promote-adapter",
        f"--model-name={MODEL}",
        "--source-alias=staged",
        f"--live-slot={LIVE_SLOT}",
        f"--reason=demo release of {adapter}",
        f"--output-dir={out / 'promote'}",
    )
    return {"version": load["version"], "smoke": smoke["details"]}


def main() -> int:
    started = time.monotonic()
    console.rule("loradeploy demo")
    run("stack", "up")
    releases = {name: release(name) for name in ("aws-rag-qa-v1", "aws-rag-qa-v2")}
    console.rule("status, rollback, history")
    run("status", f"--model-name={MODEL}")
    rollback = run(
        "promote-adapter",
        f"--model-name={MODEL}",
        "--source-alias=previous",
        "--reason=demo rollback",
        f"--output-dir={OUT / 'rollback'}",
    )
    run("status", f"--model-name={MODEL}")
    run("history", f"--model-name={MODEL}")

    summary = Table(title="demo summary")
    summary.add_column("what")
    summary.add_column("value", overflow="fold")
    for name, info in releases.items():
        smoke = info["smoke"]
        assert isinstance(smoke, dict)
        summary.add_row(f"{name}", f"version {info['version']}; smoke latencies (s) {smoke['latency_s']}")
    details = rollback["details"]
    assert isinstance(details, dict)
    summary.add_row("after rollback", f"aliases {details['aliases_after']}")
    summary.add_row(f"slot {LIVE_SLOT}", str(details["adapter_path"]))
    summary.add_row("results", str(OUT))
    summary.add_row("wall time", f"{time.monotonic() - started:.1f} s")
    console.print(summary)
    console.print("The stack keeps running: 'loradeploy stack status'; 'make down' stops it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

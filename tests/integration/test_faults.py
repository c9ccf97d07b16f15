"""Faults injected at step boundaries of load, promote and rollback, on the real servers.

A loopback proxy (tests/support/fault_proxy.py) stands between the step and the real
MLflow or vLLM server. A clean run through it counts the requests the step makes; then,
for several boundaries N, the step runs again with requests N and later failing (MLflow:
HTTP 503; vLLM: the connection dropped, as a server that died). After every faulty run:

- the exit code is the documented transient one (75), so the step is safe to retry;
- aliases are fully before or fully after, or an alias plan is pending that the next run
  completes;
- the slot serves the before or after version, never nothing; where it is not what the
  aliases say, ``status`` reports the drift and ``reconcile`` repairs it;
- rerunning the step with the fault cleared completes it.

Then the deployer itself is SIGKILLed in the middle of a promotion's alias moves, and a
rerun finishes the job. Set LORADEPLOY_FAULT_MATRIX=<file> to append every outcome as a
JSON line (docs/faults.md was written from such a run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support.fault_proxy import Fault, FaultProxy

from .conftest import LORADEPLOY, Stack

MODEL = "it-faults"
LIVE_SLOT = "it-f-live"
CAND_SLOT = "it-f-candidate"
TRANSIENT = 75
# Where in the step's request sequence the fault starts, as fractions of its requests.
# CI samples two boundaries per case; LORADEPLOY_FAULT_BOUNDARIES=0.1,0.2,... runs more
# (docs/faults.md was written from a run with three).
BOUNDARIES = tuple(float(f) for f in os.environ.get("LORADEPLOY_FAULT_BOUNDARIES", "0.4,0.95").split(","))
# A dropped vLLM connection makes the swap watch an unanswered load and then retry the
# put-back until their deadlines (30 s and 60 s by default): shorter windows keep each
# faulty run short and still run both waits to their end.
SHORT_PATIENCE = {"LORADEPLOY_SWAP_WATCH_S": "4", "LORADEPLOY_SWAP_RESTORE_S": "6"}


@dataclass
class Fleet:
    stack: Stack
    v1: str
    v2: str
    mlflow: FaultProxy
    vllm: FaultProxy

    def root(self, slot: str, version: str) -> str:
        return str(self.stack.info.adapters_root / slot / f"{MODEL}-v{version}")

    def set_aliases(self, wanted: dict[str, str]) -> None:
        uri = self.stack.info.tracking_uri
        current = self.stack.aliases(MODEL)
        for alias in current.keys() - wanted.keys():
            httpx.request(
                "DELETE",
                f"{uri}/api/2.0/mlflow/registered-models/alias",
                json={"name": MODEL, "alias": alias},
                timeout=10,
            ).raise_for_status()
        for alias, version in wanted.items():
            httpx.post(
                f"{uri}/api/2.0/mlflow/registered-models/alias",
                json={"name": MODEL, "alias": alias, "version": version},
                timeout=10,
            ).raise_for_status()

    def model_tags(self) -> dict[str, str]:
        response = httpx.get(
            f"{self.stack.info.tracking_uri}/api/2.0/mlflow/registered-models/get",
            params={"name": MODEL},
            timeout=10,
        )
        response.raise_for_status()
        return {t["key"]: t["value"] for t in response.json()["registered_model"].get("tags", [])}


@pytest.fixture(scope="module")
def fleet(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    out = tmp_path_factory.mktemp("faults")
    v1 = stack.register(MODEL, "aws-rag-qa-v1", out / "v1")
    v2 = stack.register(MODEL, "aws-rag-qa-v2", out / "v2")
    mlflow, vllm = FaultProxy(stack.info.tracking_uri), FaultProxy(stack.info.vllm_url)
    with mlflow.running(), vllm.running():
        yield Fleet(stack, v1, v2, mlflow, vllm)


# -- the three steps: how to put the world in the "before" state, run, and check -------------


@dataclass
class Case:
    name: str
    args: Callable[[Fleet], list[str]]
    before: Callable[[Fleet], None]
    aliases_before: Callable[[Fleet], dict[str, str]]
    aliases_after: Callable[[Fleet], dict[str, str]]
    slot: str
    served_before: Callable[[Fleet], str]
    served_after: Callable[[Fleet], str]


def _serve(fleet: Fleet, slot: str, version: str) -> None:
    done = fleet.stack.run(
        "load-adapter", f"--model-name={MODEL}", f"--source=version:{version}", f"--slot-name={slot}"
    )
    assert done.code == 0, done.stderr


def _before_load(fleet: Fleet) -> None:
    fleet.set_aliases({})
    _serve(fleet, CAND_SLOT, fleet.v1)


def _before_promote(fleet: Fleet) -> None:
    fleet.set_aliases({"live": fleet.v1, "staged": fleet.v2})
    _serve(fleet, LIVE_SLOT, fleet.v1)


def _before_rollback(fleet: Fleet) -> None:
    fleet.set_aliases({"live": fleet.v2, "previous": fleet.v1})
    _serve(fleet, LIVE_SLOT, fleet.v2)


CASES = {
    "load": Case(
        "load",
        lambda f: [
            "load-adapter",
            f"--model-name={MODEL}",
            f"--source=version:{f.v2}",
            f"--slot-name={CAND_SLOT}",
        ],
        _before_load,
        lambda f: {},
        lambda f: {},
        CAND_SLOT,
        lambda f: f.root(CAND_SLOT, f.v1),
        lambda f: f.root(CAND_SLOT, f.v2),
    ),
    "promote": Case(
        "promote",
        lambda f: ["promote-adapter", f"--model-name={MODEL}", f"--live-slot={LIVE_SLOT}"],
        _before_promote,
        lambda f: {"live": f.v1, "staged": f.v2},
        lambda f: {"live": f.v2, "previous": f.v1},
        LIVE_SLOT,
        lambda f: f.root(LIVE_SLOT, f.v1),
        lambda f: f.root(LIVE_SLOT, f.v2),
    ),
    "rollback": Case(
        "rollback",
        lambda f: [
            "promote-adapter",
            f"--model-name={MODEL}",
            "--source-alias=previous",
            f"--live-slot={LIVE_SLOT}",
        ],
        _before_rollback,
        lambda f: {"live": f.v2, "previous": f.v1},
        lambda f: {"live": f.v1, "previous": f.v2},
        LIVE_SLOT,
        lambda f: f.root(LIVE_SLOT, f.v2),
        lambda f: f.root(LIVE_SLOT, f.v1),
    ),
}


def _record(row: dict[str, object]) -> None:
    target = os.environ.get("LORADEPLOY_FAULT_MATRIX")
    if target:
        with Path(target).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def _through(fleet: Fleet, server: str) -> list[str]:
    proxy = fleet.mlflow if server == "mlflow" else fleet.vllm
    return [f"--tracking-uri={proxy.url}"] if server == "mlflow" else [f"--vllm-url={proxy.url}"]


@pytest.mark.parametrize("server", ["mlflow", "vllm"])
@pytest.mark.parametrize("case_name", list(CASES))
def test_fault_at_every_boundary_leaves_a_recoverable_state(
    fleet: Fleet, case_name: str, server: str
) -> None:
    case = CASES[case_name]
    proxy = fleet.mlflow if server == "mlflow" else fleet.vllm
    fault: Fault = "503" if server == "mlflow" else "drop"
    stack = fleet.stack

    # A clean run through the proxy counts the requests this step makes to that server.
    case.before(fleet)
    proxy.arm(after=10**9, fault=fault)
    clean = stack.run(*case.args(fleet), *_through(fleet, server))
    assert clean.code == 0, clean.stderr
    total = proxy.count()
    assert total > 0
    boundaries = sorted({min(total - 1, int(total * f)) for f in BOUNDARIES})

    for boundary in boundaries:
        case.before(fleet)
        proxy.arm(after=boundary, fault=fault)
        # Argo's retry of the same step carries the same run key (the workflow's uid).
        retry = {"LORADEPLOY_RUN_KEY": f"{case.name}-{server}-{fault}-{boundary}"}
        faulty = stack.run(*case.args(fleet), *_through(fleet, server), env={**retry, **SHORT_PATIENCE})
        proxy.disarm()
        aliases = stack.aliases(MODEL)
        served = stack.served().get(case.slot)
        pending = "loradeploy.pending" in fleet.model_tags()
        state = (
            "before"
            if aliases == case.aliases_before(fleet)
            else "after"
            if aliases == case.aliases_after(fleet)
            else "pending-plan"
        )
        row = {
            "step": case.name,
            "server": server,
            "fault": fault,
            "boundary": f"{boundary + 1}/{total}",
            "request": proxy.requests[boundary] if boundary < len(proxy.requests) else "",
            "exit": faulty.code,
            "aliases": state,
            "served": "after"
            if served == case.served_after(fleet)
            else "before"
            if served == case.served_before(fleet)
            else str(served),
        }
        where = f"{case.name} with {server} failing from request {boundary + 1}/{total}"
        # A fault after the step's last needed request may still let it finish.
        assert faulty.code in (0, TRANSIENT), (where, faulty.code, faulty.stderr)
        if faulty.code != 0:
            assert faulty.error_lines and len(faulty.stderr.strip().splitlines()) == 1, (where, faulty.stderr)
        assert state != "pending-plan" or pending, (where, aliases)
        assert served in (case.served_before(fleet), case.served_after(fleet)), (where, served)

        drift = stack.run(
            "status", f"--model-name={MODEL}", f"--live-slot={LIVE_SLOT}", f"--candidate-slot={CAND_SLOT}"
        )
        row["status"] = (
            "drift" if drift.code == 1 else "consistent" if drift.code == 0 else f"exit {drift.code}"
        )

        if faulty.code == 0:  # the step's work was done when the fault came: no retry
            row["rerun"] = "-"
            row["warnings"] = len([line for line in faulty.stderr.splitlines() if "warning:" in line])
        else:  # what Argo's retry on exit 75 does
            rerun = stack.run(*case.args(fleet), env=retry)
            row["rerun"] = rerun.code
            assert rerun.code == 0, (where, "rerun", rerun.stderr)
            assert stack.lock_holder(MODEL) is None, where
        assert stack.aliases(MODEL) == case.aliases_after(fleet), where
        assert stack.served()[case.slot] == case.served_after(fleet), where
        assert "loradeploy.pending" not in fleet.model_tags(), where
        _record(row)


def test_deployer_killed_mid_promotion_is_finished_by_the_next_run(fleet: Fleet) -> None:
    """SIGKILL while the promotion's alias moves are half done; the rerun completes them
    (taking over the dead process's lock) and does not promote a second time."""
    stack = fleet.stack
    case = CASES["rollback"]  # a rollback promoted twice would return to the start: the worst case
    case.before(fleet)
    # Hang the second alias write: the first move is done, the plan is pending.
    fleet.mlflow.arm(after=1, fault="slow", delay_s=120, match="POST /api/2.0/mlflow/registered-models/alias")
    retry = {"LORADEPLOY_RUN_KEY": "workflow-uid-1/rollback"}  # the same for Argo's retry
    process = subprocess.Popen(
        [LORADEPLOY, *case.args(fleet), f"--tracking-uri={fleet.mlflow.url}"],
        env={**stack.env, **retry},
        cwd=stack.home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while fleet.mlflow.faults_served == 0 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert fleet.mlflow.faults_served > 0, "the promotion never reached its alias moves"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    fleet.mlflow.disarm()

    tags = fleet.model_tags()
    assert "loradeploy.pending" in tags and stack.lock_holder(MODEL) is not None
    half_done = stack.aliases(MODEL)
    assert half_done not in (case.aliases_before(fleet), case.aliases_after(fleet))

    # The retry takes over the dead process's lease (same host, boot and PID namespace).
    rerun = stack.run(*case.args(fleet), env=retry)
    assert rerun.code == 0, rerun.stderr
    assert stack.aliases(MODEL) == case.aliases_after(fleet)
    assert stack.served()[LIVE_SLOT] == case.served_after(fleet)
    assert "loradeploy.pending" not in fleet.model_tags() and stack.lock_holder(MODEL) is None
    _record(
        {
            "step": "rollback",
            "server": "deployer",
            "fault": "SIGKILL",
            "boundary": "after the first alias move",
            "exit": -9,
            "aliases": "pending-plan",
            "served": "after",
            "status": "-",
            "rerun": rerun.code,
        }
    )

"""Routed mode's canary on the real stack: the LiteLLM proxy ('stack up --router') in
front of the real vLLM, real PEFT adapters registered in the real MLflow, clients asking
the stable name with the evaluation questions the whole time.

- a good version (v2 after v1) moves step by step to 100 % and is promoted through the
  alias moves of promote-adapter, with no failed client request;
- a regressed version (trained on shuffled answers) is caught by the live quality check
  at its first step: all weight back on live in one change, alias canary-failed, exit 1,
  no failed client request, and afterwards only the live version answers;
- a canary killed at a half weight is undone by 'reconcile' (all weight back on live,
  the canary record removed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from loradeploy.clients.router import LiteLLMRouter
from loradeploy.domain.scoring import qa_messages, read_qa
from loradeploy.settings import STACK_FILE, read_stack
from loradeploy.stack.local import LocalStack, StackConfig

from .conftest import ASSETS, LORADEPLOY, REPO, Stack

# Counts failed and slow requests under live traffic through the router: it runs with no
# other test module beside it (see the Makefile's test target).
pytestmark = pytest.mark.exclusive

MODEL = "it-canary"
STABLE = "it-canary-live"
DIRECT_SLOT = "it-canary-direct"  # direct mode's live slot, which promote-adapter fills
EVAL = REPO / "data" / "aws-rag-qa" / "eval.jsonl"
QUESTIONS = read_qa(EVAL)[:8]
RETRIES = 2  # the OpenAI SDK's default max_retries, for connection errors
QUICK = [  # short windows: the stack's vLLM answers a few requests a second on 2 cores, and
    # one request's latency depends on the batch it shares, hence the wider latency ratios
    "--interval=8",
    "--min-requests=5",
    "--max-waits=5",
    "--max-p50-ratio=2",
    "--max-p95-ratio=2.5",
    f"--eval-data={EVAL}",
    "--min-questions=4",
    "--quality-margin=0.15",
]


@dataclass
class Routed:
    stack: Stack
    router: LiteLLMRouter
    url: str
    key: str
    versions: dict[str, str] = field(default_factory=dict)  # adapter -> version

    def name(self, adapter: str) -> str:
        return f"{MODEL}@v{self.versions[adapter]}"

    def routes(self) -> dict[str, int]:
        return self.router.serving().get(STABLE, {})

    def canary_tag(self) -> str | None:
        response = httpx.get(
            f"{self.stack.info.tracking_uri}/api/2.0/mlflow/registered-models/get",
            params={"name": MODEL},
            timeout=30,
        )
        tags = {t["key"]: t["value"] for t in response.json()["registered_model"].get("tags", [])}
        return tags.get("loradeploy.canary")


@pytest.fixture(scope="module")
def routed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routed]:
    """The router started as a user starts it; v1 promoted (direct mode's live slot, which
    also sets alias live), v2 and the regressed adapter registered. The stack file is put
    back afterwards."""
    out = tmp_path_factory.mktemp("canary")
    stack_file = stack.home / STACK_FILE
    saved = stack_file.read_bytes()
    local = LocalStack(StackConfig(home=stack.home, assets=ASSETS, router=True))
    try:
        stack.up_router()
        info = read_stack(stack_file)
        assert info.router_url and info.router_key_file and info.router_config and info.router_record
        key = info.router_key_file.read_text(encoding="utf-8").strip()
        router = LiteLLMRouter(
            url=info.router_url,
            key=key,
            config=info.router_config,
            record=info.router_record,
            backends=[stack.info.vllm_url],
        )
        routed = Routed(stack, router, info.router_url, key)
        for adapter in ("aws-rag-qa-v1", "aws-rag-qa-v2", "aws-rag-qa-regressed"):
            routed.versions[adapter] = stack.register(MODEL, adapter, out / adapter)
        set_candidate(routed, "aws-rag-qa-v1")
        promoted = stack.run(
            "promote-adapter",
            f"--model-name={MODEL}",
            "--source-alias=candidate",
            f"--live-slot={DIRECT_SLOT}",
            output_dir=out / "promote-v1",
        )
        assert promoted.code == 0, promoted.stderr
        # Routed mode from here: live's versioned name, and the stable name routed to it.
        loaded = stack.run(
            "load-version", f"--model-name={MODEL}", "--source-alias=live", output_dir=out / "lv"
        )
        assert loaded.code == 0, loaded.stderr
        v1 = routed.name("aws-rag-qa-v1")
        route = stack.run("route", f"--stable-name={STABLE}", f"--weights={v1}=100", output_dir=out / "route")
        assert route.code == 0, route.stderr
        yield routed
    finally:
        local.stop("router")
        stack_file.write_bytes(saved)


@dataclass
class Clients:
    """Clients asking the stable name through the router with the evaluation questions;
    connection errors are retried (never a request the router answered). Each answer is
    kept with the version that gave it (the proxy's ``x-litellm-model-id`` header)."""

    routed: Routed
    answered: list[tuple[float, str]] = field(default_factory=list)  # (when it started, version)
    failures: list[str] = field(default_factory=list)
    retried: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def ask(self, number: int) -> None:
        with httpx.Client(
            base_url=self.routed.url, headers={"Authorization": f"Bearer {self.routed.key}"}, timeout=120
        ) as http:
            while not self.stop.is_set():
                example = QUESTIONS[number % len(QUESTIONS)]
                number += 1
                body = {"model": STABLE, "messages": qa_messages(example), "max_tokens": 16, "temperature": 0}
                started = time.time()
                for attempt in range(RETRIES + 1):
                    try:
                        response = http.post("/v1/chat/completions", json=body)
                    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
                        if attempt == RETRIES:
                            self.failures.append(type(exc).__name__)
                        else:
                            self.retried += 1
                            time.sleep(0.1)
                        continue
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        version = response.headers.get("x-litellm-model-id", "?").split("#")[0]
                        self.answered.append((started, version))
                    break

    @contextmanager
    def running(self, count: int = 6) -> Iterator[Clients]:
        threads = [threading.Thread(target=self.ask, args=(i * 3,), daemon=True) for i in range(count)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=150)

    def since(self, moment: float) -> Counter[str]:
        return Counter(version for started, version in self.answered if started >= moment)


def canary(routed: Routed, out: Path, *flags: str, steps: str = "25,50,100") -> tuple[int, dict]:  # type: ignore[type-arg]
    done = routed.stack.run(
        "canary",
        f"--model-name={MODEL}",
        "--source-alias=candidate",
        f"--stable-name={STABLE}",
        f"--steps={steps}",
        *QUICK,
        *flags,
        output_dir=out,
        # a canary waits out its windows, and a shadow's judge may wait up to 120 s for an
        # answer queued behind the clients: together they can pass the harness's usual 300 s
        timeout_s=600,
    )
    assert done.result is not None, done.stderr
    return done.code, done.result


def set_candidate(routed: Routed, adapter: str) -> None:
    response = httpx.post(
        f"{routed.stack.info.tracking_uri}/api/2.0/mlflow/registered-models/alias",
        json={"name": MODEL, "alias": "candidate", "version": routed.versions[adapter]},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def test_a_good_version_goes_to_100_percent_with_no_failed_request(routed: Routed, tmp_path: Path) -> None:
    set_candidate(routed, "aws-rag-qa-v2")
    with Clients(routed).running() as clients:
        code, result = canary(routed, tmp_path / "good")
        finished = time.time()
        time.sleep(8)  # long enough for requests that start after the change (one takes seconds)
    steps = [(w["candidate_percent"], w["action"]) for w in result["details"]["windows"]]
    print(
        f"canary of v2: exit {code}; windows {steps}; "
        f"timings {result['timings_s']}; client answers {Counter(v for _, v in clients.answered)}, "
        f"failures {clients.failures}, retried {clients.retried}"
    )
    assert code == 0, result.get("error")
    assert result["details"]["decision"] == "promoted"
    assert clients.failures == []
    aliases = routed.stack.aliases(MODEL)
    assert (aliases["live"], aliases["previous"]) == (
        routed.versions["aws-rag-qa-v2"],
        routed.versions["aws-rag-qa-v1"],
    )
    assert routed.routes() == {routed.name("aws-rag-qa-v2"): 100}
    assert set(clients.since(finished + 1.5)) == {routed.name("aws-rag-qa-v2")}
    assert routed.canary_tag() is None
    served = routed.stack.served()
    assert routed.name("aws-rag-qa-v1") in served  # the previous version stays: rollback is one change


def test_a_regressed_version_is_rolled_back_at_its_first_step(routed: Routed, tmp_path: Path) -> None:
    live = routed.name("aws-rag-qa-v2")
    routed.router.apply({**routed.router.routes(), STABLE: {live: 100}})  # where the good canary left it
    set_candidate(routed, "aws-rag-qa-regressed")
    with Clients(routed).running() as clients:
        # The regressed adapter also answers more slowly (its p50 1.4-1.5x live's in the
        # demo, past 2x once here under the clients): latency limits out of reach, so what
        # rolls it back is the check this test is about, live quality.
        code, result = canary(routed, tmp_path / "regressed", "--max-p50-ratio=10", "--max-p95-ratio=10")
        finished = time.time()
        time.sleep(8)  # long enough for requests that start after the change (one takes seconds)
    details = result["details"]
    print(
        f"canary of the regressed version: exit {code}; reason {details.get('reason')}; abort to live "
        f"{details.get('abort_to_current_s')} s; answers {Counter(v for _, v in clients.answered)}, "
        f"failures {clients.failures}, retried {clients.retried}"
    )
    assert code == 1
    assert details["decision"] == "rolled-back"
    assert "live-quality" in details["reason"] and details["reason"].startswith("at 25 %")
    assert [w["candidate_percent"] for w in details["windows"]] == [25] * len(details["windows"])
    assert clients.failures == []
    assert routed.routes() == {live: 100}
    assert set(clients.since(finished + 1.5)) == {live}
    aliases = routed.stack.aliases(MODEL)
    assert aliases["canary-failed"] == routed.versions["aws-rag-qa-regressed"]
    assert aliases["live"] == routed.versions["aws-rag-qa-v2"]
    assert routed.canary_tag() is None


def test_a_killed_canary_is_undone_by_reconcile(routed: Routed, tmp_path: Path) -> None:
    live = routed.name("aws-rag-qa-v2")
    routed.router.apply({**routed.router.routes(), STABLE: {live: 100}})
    set_candidate(routed, "aws-rag-qa-regressed")
    process = subprocess.Popen(
        [
            LORADEPLOY,
            "canary",
            f"--model-name={MODEL}",
            "--source-alias=candidate",
            f"--stable-name={STABLE}",
            "--steps=10,100",
            "--interval=600",
        ],
        cwd=routed.stack.home,
        env=routed.stack.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while routed.routes().get(live) != 90:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the canary never moved weight"
            time.sleep(0.5)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert json.loads(routed.canary_tag() or "{}")["candidate_percent"] == 10
    done = routed.stack.run(
        "reconcile",
        f"--model-name={MODEL}",
        f"--live-slot={DIRECT_SLOT}",
        "--candidate-slot=it-canary-candidate",
        output_dir=tmp_path / "reconcile",
    )
    assert done.code == 0, done.stderr
    assert done.result is not None
    assert "interrupted at 10 %" in done.result["details"]["canary_recovered"]
    assert routed.routes() == {live: 100}
    assert routed.canary_tag() is None


def test_a_shadow_phase_mirrors_without_any_client_seeing_the_candidate(
    routed: Routed, tmp_path: Path
) -> None:
    """The regressed adapter in shadow at 50 %: the pairs are scored (the local 135M judge
    may well be uncalibrated, which is inconclusive, never a pass), the canary stops in
    its shadow, and no client ever got the candidate's answer."""
    live = routed.name("aws-rag-qa-v2")
    routed.router.apply({**routed.router.routes(), STABLE: {live: 100}})
    set_candidate(routed, "aws-rag-qa-regressed")
    with Clients(routed).running() as clients:
        # up to four windows: with another test module busy on the same 2 cores (make test
        # runs two at once), no mirrored answer had come back within the first two
        code, result = canary(
            routed, tmp_path / "shadow", "--shadow-percent=50", "--shadow-min-pairs=6", "--max-waits=3"
        )
    details = result["details"]
    print(
        f"shadow of the regressed version: exit {code}; reason {details.get('reason')}; windows "
        f"{[(w.get('shadow_percent'), w['verdict'], w['figures']) for w in details['windows']]}; "
        f"answers {Counter(v for _, v in clients.answered)}, failures {clients.failures}"
    )
    assert code == 1
    assert details["reason"].startswith("in shadow at 50 %")
    assert all(w["candidate_percent"] == 0 for w in details["windows"])
    assert details["windows"][-1]["figures"]["pairs"] > 0  # mirrored requests were paired
    assert set(v for _, v in clients.answered) == {live}
    assert clients.failures == []
    assert routed.routes() == {live: 100}
    assert routed.router.serving_shadows().get(STABLE) is None
    assert routed.canary_tag() is None


def test_a_routed_rollback_is_one_weight_change_with_no_failed_request(
    routed: Routed, tmp_path: Path
) -> None:
    """After v2's promotion v1 is still loaded as 'previous': a canary of it with the one
    step 100 moves the aliases back and all weight in one change, while clients ask."""
    v1, v2 = routed.name("aws-rag-qa-v1"), routed.name("aws-rag-qa-v2")
    routed.router.apply({**routed.router.routes(), STABLE: {v2: 100}})
    with Clients(routed).running() as clients:
        time.sleep(2)
        done = routed.stack.run(
            "canary",
            f"--model-name={MODEL}",
            "--source-alias=previous",
            f"--stable-name={STABLE}",
            "--steps=100",
            output_dir=tmp_path / "rollback",
        )
        finished = time.time()
        time.sleep(8)  # long enough for requests that start after the change (one takes seconds)
    assert done.result is not None, done.stderr
    print(
        f"routed rollback: exit {done.code}; timings {done.result['timings_s']}; answers "
        f"{Counter(v for _, v in clients.answered)}, failures {clients.failures}, retried {clients.retried}"
    )
    assert done.code == 0, done.stderr
    assert done.result["details"]["served"][v1]["already_served"]  # nothing was loaded again
    aliases = routed.stack.aliases(MODEL)
    assert (aliases["live"], aliases["previous"]) == (
        routed.versions["aws-rag-qa-v1"],
        routed.versions["aws-rag-qa-v2"],
    )
    assert routed.routes() == {v1: 100}
    assert clients.failures == []
    assert set(clients.since(finished + 1.5)) == {v1}

"""Routed mode's router on the real stack: the LiteLLM proxy (envs/router, as
'stack up --router' starts it) in front of the real vLLM, which serves two versions of a
real PEFT adapter under immutable versioned names.

- weights split real traffic: the share each version answered (the proxy's
  ``x-litellm-model-id`` header) is within 4.5 standard errors of its weight;
- weight changes, an abort to the current version among them, fail no request of a
  client that retries connection errors as the OpenAI SDK does, and once a change is
  applied only versions with weight answer;
- 'stack status' shows the router and its routes; a router started again by
  'stack up --router' serves the routes it had, on the same port;
- the router's request log has one record per request naming the version that answered
  (the same entry as the ``x-litellm-model-id`` header), failures included, and
  'loradeploy metrics' counts them per version.

The versioned names are loaded with vLLM's own API here: no step loads them yet.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest

from loradeploy.clients.request_log import RequestLog
from loradeploy.clients.router import LiteLLMRouter
from loradeploy.domain.traffic import RequestRecord
from loradeploy.settings import STACK_FILE, read_stack
from loradeploy.stack.local import LocalStack, StackConfig

from .conftest import ASSETS, DEMO_ADAPTERS, Stack

# Counts failed and slow requests under live traffic through the router: it runs with no
# other test module beside it (see the Makefile's test target).
pytestmark = pytest.mark.exclusive

STABLE = "it-router-live"
V1, V2 = "it-router@v1", "it-router@v2"
RETRIES = 2  # the OpenAI SDK's default max_retries, for connection errors


@dataclass
class Routed:
    local: LocalStack
    client: LiteLLMRouter
    url: str
    key: str


@pytest.fixture(scope="module")
def routed(stack: Stack) -> Iterator[Routed]:
    """The session stack's vLLM with two versioned names, and the router started as a
    user starts it ('stack up --router'); the stack file is put back afterwards (that
    'stack up' also turns on the demo signing key, which later modules do not expect)."""
    for name, adapter in ((V1, "aws-rag-qa-v1"), (V2, "aws-rag-qa-v2")):
        response = httpx.post(
            f"{stack.info.vllm_url}/v1/load_lora_adapter",
            json={"lora_name": name, "lora_path": str(DEMO_ADAPTERS / adapter)},
            timeout=120,
        )
        assert response.status_code == 200, response.text
    stack_file = stack.home / STACK_FILE
    saved = stack_file.read_bytes()
    local = LocalStack(StackConfig(home=stack.home, assets=ASSETS, router=True))
    try:
        up = stack.up_router()
        info = read_stack(stack_file)
        assert info.router_url and info.router_key_file and info.router_config and info.router_record
        assert f"router {info.router_url}" in up.stdout
        assert info.router_key_file.stat().st_mode & 0o077 == 0  # the key is the owner's only
        key = info.router_key_file.read_text(encoding="utf-8").strip()
        # the client 'stack up' builds: its renderings keep the request log's callback
        client = local.router_client([stack.info.vllm_url], url=info.router_url)
        assert (client.config, client.record) == (info.router_config, info.router_record)
        yield Routed(local, client, info.router_url, key)
    finally:
        local.stop("router")
        stack_file.write_bytes(saved)
        for name in (V1, V2):
            httpx.post(f"{stack.info.vllm_url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


@dataclass
class Caller:
    """Asks the stable name through the router; retries connection errors (never a
    request the router answered), and records which version answered each request."""

    url: str
    key: str
    answered: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    retried: int = 0

    def __post_init__(self) -> None:
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60
        )

    def ask(self) -> str | None:
        body = {"model": STABLE, "prompt": "What does Amazon S3 store?", "max_tokens": 1, "temperature": 0}
        for attempt in range(RETRIES + 1):
            try:
                response = self.http.post("/v1/completions", json=body)
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
                if attempt == RETRIES:
                    self.failures.append(type(exc).__name__)
                    return None
                self.retried += 1
                time.sleep(0.1)
                continue
            if response.status_code != 200:
                self.failures.append(f"{response.status_code} {response.text[:200]}")
                return None
            version = response.headers.get("x-litellm-model-id", "?").split("#")[0]
            self.answered.append(version)
            return version
        return None


def test_weights_split_real_traffic(routed: Routed) -> None:
    took = routed.client.apply({STABLE: {V1: 75, V2: 25}})
    caller = Caller(routed.url, routed.key)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: caller.ask(), range(400)))
    counts = Counter(caller.answered)
    n = len(caller.answered)
    print(f"applied in {took:.1f}s; split over {n} requests: {dict(counts)}; failures {caller.failures}")
    assert caller.failures == []
    assert set(counts) == {V1, V2}
    for version, weight in ((V1, 0.75), (V2, 0.25)):
        share = counts[version] / n
        allowed = 4.5 * math.sqrt(weight * (1 - weight) / n)  # false alarm about 1 in 150,000
        assert abs(share - weight) <= allowed, (version, share, weight, allowed)


def test_the_request_log_names_the_version_that_answered_and_metrics_count_it(
    routed: Routed, stack: Stack
) -> None:
    broken, missing = "it-router-broken", "it-router@v9"  # routed to a name vLLM does not serve
    routed.client.apply({STABLE: {V1: 50, V2: 50}, broken: {missing: 100}})
    info = read_stack(stack.home / STACK_FILE)
    assert info.router_log is not None
    log = RequestLog(info.router_log)
    since = time.time()
    headers: list[str] = []
    with httpx.Client(
        base_url=routed.url, headers={"Authorization": f"Bearer {routed.key}"}, timeout=60
    ) as http:
        for index in range(30):
            body = {
                "model": STABLE,
                "prompt": f"Question {index}: what is S3?",
                "max_tokens": 2,
                "temperature": 0,
            }
            response = http.post("/v1/completions", json=body)
            assert response.status_code == 200, response.text
            headers.append(response.headers["x-litellm-model-id"])
        failed = [
            http.post("/v1/completions", json={"model": broken, "prompt": "x", "max_tokens": 1})
            for _ in range(3)
        ]
    assert [response.status_code >= 400 for response in failed] == [True] * 3
    records: list[RequestRecord] = []
    for _ in range(50):  # the callback writes after the answer went out
        records = log.read(since=since - 1)
        if len(records) >= 33:
            break
        time.sleep(0.1)
    live = [r for r in records if r.stable == STABLE]
    assert Counter(r.entry for r in live) == Counter(headers)
    assert {r.name for r in live} == {V1, V2}
    assert all(
        r.ok and r.status == 200 and r.completion_tokens and r.prompt and r.answer is not None for r in live
    )
    assert all(not r.shadow for r in records) and log.skipped == 0
    bad = [r for r in records if r.stable == broken]
    assert len(bad) == 3, records
    shown = [r.model_dump(include={"ok", "name", "status", "error"}) for r in bad]
    assert all(not r.ok and r.name == missing and (r.status or 0) >= 400 and r.error for r in bad), shown

    metrics = stack.run("metrics")
    assert metrics.code == 0, metrics.stderr
    total = Counter(r.name for r in log.read(since=0))
    for name in (V1, V2):
        labels = f'name="{name}",shadow="false",stable="{STABLE}"'
        line = f"loradeploy_requests_total{{{labels}}} {float(total[name])}"
        assert line in metrics.stdout, (line, metrics.stdout)
    assert (
        f'loradeploy_request_errors_total{{name="{missing}",shadow="false",stable="{broken}"}} 3.0'
        in metrics.stdout
    )
    assert f'loradeploy_served{{name="{V1}",replica="{stack.info.vllm_url}"}} 1.0' in metrics.stdout
    assert f'loradeploy_route_unserved_replicas{{name="{missing}",stable="{broken}"}} 1.0' in metrics.stdout
    print(f"request log: {len(live)} live records {Counter(headers)}, {len(bad)} failures")


def test_weight_changes_and_an_abort_fail_no_request(routed: Routed) -> None:
    routed.client.apply({STABLE: {V1: 95, V2: 5}})
    caller, stop = Caller(routed.url, routed.key), threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            caller.ask()

    threads = [threading.Thread(target=keep_asking) for _ in range(2)]
    for thread in threads:
        thread.start()
    after: dict[str, Counter[str]] = {}
    try:
        time.sleep(2)
        for label, weights in (
            ("75/25", {V1: 75, V2: 25}),
            ("abort", {V1: 100}),
            ("promote", {V2: 100}),
            ("rollback", {V1: 100}),
        ):
            routed.client.apply({STABLE: weights})
            probe = Caller(routed.url, routed.key)
            for _ in range(20):
                probe.ask()
            after[label] = Counter(probe.answered)
            assert probe.failures == [], (label, probe.failures)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    print(f"{len(caller.answered)} requests during 4 changes, {caller.retried} retried; after each: {after}")
    assert caller.failures == []
    assert len(caller.answered) > 20
    # once a change is applied, only versions with weight answer
    assert set(after["abort"]) == {V1}
    assert set(after["promote"]) == {V2}
    assert set(after["rollback"]) == {V1}


def test_status_shows_the_router_and_its_routes(routed: Routed, stack: Stack) -> None:
    routed.client.apply({STABLE: {V1: 90, V2: 10}})
    status = stack.run("stack", "status")
    assert status.code == 0, status.stderr
    assert "router" in status.stdout and routed.url in status.stdout
    assert f"route {STABLE} -> {V1} 90 %, {V2} 10 %" in status.stdout


def test_a_restarted_router_serves_the_routes_it_had(routed: Routed, stack: Stack) -> None:
    routed.client.apply({STABLE: {V1: 40, V2: 60}})
    routed.local.stop("router")
    down = stack.run("stack", "status")
    assert down.code == 75 and "stopped" in down.stdout  # a router that stopped is reported
    up = stack.up_router()
    assert f"router {routed.url}" in up.stdout  # the same port again
    assert routed.client.routes() == {STABLE: {V1: 40, V2: 60}}
    assert routed.client.serving() == {STABLE: {V1: 40, V2: 60}}
    caller = Caller(routed.url, routed.key)
    for _ in range(10):
        caller.ask()
    assert caller.failures == [] and set(caller.answered) <= {V1, V2}


def test_the_route_command_moves_weights_only_to_served_versions(
    routed: Routed, stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.mktemp("route")
    stack.register("it-router", "aws-rag-qa-v1", out / "register")  # the lock is the model's
    routed.client.apply({STABLE: {V1: 100}})
    done = stack.run(
        "route",
        f"--stable-name={STABLE}",
        f"--weights={V1}=60,{V2}=40",
        "--reason=by hand",
        output_dir=out / "ok",
    )
    assert done.code == 0, done.stderr
    assert done.result is not None and done.result["details"] == {
        "before": {V1: 100},
        "after": {V1: 60, V2: 40},
    }
    assert routed.client.serving() == {STABLE: {V1: 60, V2: 40}}
    history = stack.run("history", "--model-name=it-router", output_dir=out / "history")
    assert history.result is not None
    reasons = [move["reason"] for move in history.result["details"]["moves"] if move["step"] == "route"]
    assert reasons == [f"{STABLE}: {V1} 100 % -> {V1} 60 %, {V2} 40 %; by hand"], history.result

    missing = stack.run("route", f"--stable-name={STABLE}", f"--weights={V1}=50,it-router@v9=50")
    assert missing.code == 3, missing.stderr
    (line,) = missing.error_lines
    assert "does not serve it-router@v9" in line
    assert "was not changed; next: load every version that gets weight on every replica first" in line
    assert routed.client.serving() == {STABLE: {V1: 60, V2: 40}}

"""Shadow traffic on the real stack: the LiteLLM proxy mirrors a share of a stable name's
chat requests to the candidate's versioned name (``silent_model``); clients only ever get
the live version's answers, and the candidate's mirrored requests reach vLLM under its
own name.

Evidence that vLLM ran the candidate comes from vLLM itself: its ``/metrics`` keeps one
``vllm:lora_requests_info`` series per set of running or waiting adapters, set to the
time of the last engine step that saw that set, so a series naming the candidate with a
time after the requests started shows that vLLM scheduled a request for it.

Uses the router module's stack (two versioned names of the demo adapter, and the router
as 'stack up --router' starts it).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from loradeploy.clients.request_log import RequestLog
from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.routes import Shadow
from loradeploy.domain.scoring import qa_messages, read_qa
from loradeploy.domain.shadow import ShadowThresholds
from loradeploy.settings import STACK_FILE, read_stack
from loradeploy.steps.shadow import score_shadow

from .conftest import REPO, Stack
from .test_router import STABLE, V1, V2, Routed, routed  # noqa: F401 (the module's stack)

# Counts failed and slow requests under live traffic through the router: it runs with no
# other test module beside it (see the Makefile's test target).
pytestmark = pytest.mark.exclusive

PROMPTS = [f"In one word: what colour is item number {n}?" for n in range(40)]
_LORA_INFO = re.compile(r"^vllm:lora_requests_info\{([^}]*)\}\s+(\S+)$", re.MULTILINE)


def lora_last_seen(vllm_url: str, name: str) -> float:
    """The latest time vLLM's engine had ``name`` running or waiting (0: never)."""
    text = httpx.get(f"{vllm_url}/metrics", timeout=10).text
    seen = 0.0
    for labels, value in _LORA_INFO.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        names = fields.get("running_lora_adapters", "").split(",") + fields.get(
            "waiting_lora_adapters", ""
        ).split(",")
        if name in names:
            seen = max(seen, float(value))
    return seen


def ask(http: httpx.Client, path: str, prompt: str) -> httpx.Response:
    if path == "/v1/chat/completions":
        body: dict[str, object] = {"messages": [{"role": "user", "content": prompt}]}
    else:
        body = {"prompt": prompt}
    return http.post(path, json={"model": STABLE, "max_tokens": 4, "temperature": 0, **body})


def test_a_shadow_is_rendered_read_back_and_served(routed: Routed) -> None:  # noqa: F811
    routed.client.apply({STABLE: {V1: 100}}, {STABLE: Shadow(V2, 50)})
    assert routed.client.routes() == {STABLE: {V1: 100}}
    assert routed.client.shadows() == {STABLE: Shadow(V2, 50)}
    assert routed.client.serving() == {STABLE: {V1: 100}}  # the candidate's group is no route
    assert routed.client.serving_shadows() == {STABLE: Shadow(V2, 50)}


def test_clients_get_only_the_live_answer_while_the_candidate_gets_mirrored_chats(
    routed: Routed,  # noqa: F811
    stack: Stack,
) -> None:
    """Text completions first (LiteLLM 1.106.2 does not mirror them), then chats."""
    routed.client.apply({STABLE: {V1: 100}}, {STABLE: Shadow(V2, 100)})
    answered: dict[str, Counter[str]] = {}
    seen: dict[str, float] = {}
    with httpx.Client(
        base_url=routed.url, headers={"Authorization": f"Bearer {routed.key}"}, timeout=120
    ) as http:
        for path in ("/v1/completions", "/v1/chat/completions"):
            started = time.time()
            counts: Counter[str] = Counter()
            for prompt in PROMPTS[:10]:
                response = ask(http, path, prompt)
                assert response.status_code == 200, (path, response.text[:300])
                counts[response.headers.get("x-litellm-model-id", "?").split("#")[0]] += 1
            answered[path] = counts
            # mirrored requests run in the background: wait (bounded) for vLLM to show one
            deadline = time.monotonic() + (60 if path == "/v1/chat/completions" else 10)
            while lora_last_seen(stack.info.vllm_url, V2) < started and time.monotonic() < deadline:
                time.sleep(0.5)
            seen[path] = lora_last_seen(stack.info.vllm_url, V2) - started
    print(f"answered by: {answered}; vLLM last ran {V2} this many s after each phase began: {seen}")
    assert answered == {"/v1/chat/completions": Counter({V1: 10}), "/v1/completions": Counter({V1: 10})}
    assert seen["/v1/completions"] < 0  # not mirrored
    assert seen["/v1/chat/completions"] >= 0  # vLLM ran the candidate, which answered no client


def test_a_shadow_share_mirrors_part_of_the_chat_traffic_only(routed: Routed) -> None:  # noqa: F811
    routed.client.apply({STABLE: {V1: 100}}, {STABLE: Shadow(V2, 25)})
    entries: Counter[str] = Counter()
    with httpx.Client(
        base_url=routed.url, headers={"Authorization": f"Bearer {routed.key}"}, timeout=120
    ) as http:
        for prompt in PROMPTS:
            response = ask(http, "/v1/chat/completions", prompt)
            assert response.status_code == 200, response.text[:300]
            entries[response.headers.get("x-litellm-model-id", "?")] += 1
    print(f"entries that answered 40 chat requests with a 25 % shadow: {dict(entries)}")
    assert {entry.split("#")[0] for entry in entries} == {V1}
    assert len(entries) == 2  # both the plain and the mirroring entry of v1 answered


def test_removing_the_shadow_leaves_the_route(routed: Routed) -> None:  # noqa: F811
    routed.client.apply({STABLE: {V1: 100}}, {STABLE: Shadow(V2, 10)})
    routed.client.apply({STABLE: {V1: 100}})
    assert routed.client.shadows() == {}
    assert routed.client.serving_shadows() == {}
    assert routed.client.serving() == {STABLE: {V1: 100}}


def test_mirrored_answers_are_logged_paired_with_the_live_ones_and_scored(
    routed: Routed,  # noqa: F811
    stack: Stack,
) -> None:
    """The whole path the canary takes: a shadow, real chats, the router's request log,
    pairing and scoring with the stack's base model as Gate 1's judge."""
    info = read_stack(stack.home / STACK_FILE)
    assert info.router_log is not None
    log = RequestLog(info.router_log)
    examples = read_qa(REPO / "data" / "aws-rag-qa" / "eval.jsonl")
    routed.client.apply({STABLE: {V1: 100}}, {STABLE: Shadow(V2, 100)})
    started = time.time()
    with httpx.Client(
        base_url=routed.url, headers={"Authorization": f"Bearer {routed.key}"}, timeout=120
    ) as http:

        def chat(messages: list[dict[str, str]]) -> httpx.Response:
            body = {"model": STABLE, "messages": messages, "max_tokens": 32, "temperature": 0}
            return http.post("/v1/chat/completions", json=body)

        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(chat, [qa_messages(e) for e in examples]))
    assert [r.status_code for r in responses] == [200] * len(examples)
    assert {r.headers["x-litellm-model-id"].split("#")[0] for r in responses} == {V1}
    deadline = time.monotonic() + 120  # mirrored requests finish in the background
    while sum(r.shadow for r in log.read(started)) < len(examples) and time.monotonic() < deadline:
        time.sleep(1)
    records = log.read(started)
    routed.client.apply({STABLE: {V1: 100}})
    shadows = [r for r in records if r.shadow]
    lives = [r for r in records if not r.shadow and r.stable == STABLE]
    assert {(r.name, r.stable, (r.entry or "").split("#")[1]) for r in shadows} == {(V2, V2, "shadow")}
    assert {r.name for r in lives} == {V1}
    judge = VllmClient(stack.info.vllm_url)
    took = time.monotonic()
    score = score_shadow(
        records,
        stable=STABLE,
        candidate=V2,
        judge=judge,
        judge_model=judge.base_model().id,
        thresholds=ShadowThresholds(min_pairs=10),
    )
    took = time.monotonic() - took
    figures = score.analysis.decision.figures
    print(f"shadow score over {len(examples)} chats in {took:.1f}s: {score.analysis.verdict}; {figures}")
    print(f"reason: {score.analysis.reason}")
    assert figures["pairs"] == len(examples) and figures["unpaired_shadow"] == 0
    assert all(p.how != "no-text" for p in score.pairs)  # the stack logs texts
    assert score.analysis.verdict in {"pass", "fail", "insufficient"}


def test_status_shows_the_shadow_and_a_restarted_router_keeps_it(routed: Routed, stack: Stack) -> None:  # noqa: F811
    routed.client.apply({STABLE: {V1: 100}}, {STABLE: Shadow(V2, 10)})
    status = stack.run("stack", "status")
    assert status.code == 0, status.stderr
    assert f"route {STABLE} -> {V1} 100 %; shadow {V2} 10 %" in status.stdout
    routed.local.stop("router")
    stack.up_router()
    assert routed.client.serving_shadows() == {STABLE: Shadow(V2, 10)}
    # the candidate's own group answers a client that names it (the README says so)
    direct = httpx.post(
        f"{routed.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {routed.key}"},
        json={"model": V2, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=120,
    )
    assert direct.status_code == 200 and direct.headers["x-litellm-model-id"] == f"{V2}#shadow"
    routed.client.apply({STABLE: {V1: 100}})

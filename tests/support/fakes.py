"""In-process fakes for unit tests: a vLLM server and a clock.

``FakeVllmServer`` answers like vLLM's OpenAI server with runtime LoRA updating on. Its
status codes and bodies are the ones recorded in the guide's "Endpoints" table
(/work/shared/guide/vllm-runtime-lora.md); it keeps a dict of loaded adapters, so a
test asserts on what the server serves afterwards, not on which methods were called.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BASE_ROOT = "/models/smollm2-135m-instruct"

NOT_FOUND_ROUTE = {"detail": "Not Found"}  # the web framework's 404 for a missing route


def vllm_error(message: str, kind: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


@dataclass
class Call:
    method: str
    path: str
    body: dict[str, Any] | None
    headers: Mapping[str, str]


@dataclass
class FakeVllmServer:
    """A vLLM server in memory, reached through ``httpx.MockTransport``.

        Knobs a test may turn: ``missing_paths`` (load answers 404, no adapter there),
        ``rejected_paths`` (load answers 500, the worker refused it), ``runtime_lora``
        (False: the LoRA routes do not exist), ``api_key`` (the /v1 routes want it),
        ``unhealthy_polls`` (that many /health requests answer 503 first), ``die_on_load``
        (/health answers 503 once one of these paths was loaded), ``completion_delay_s``
        (how far a completion moves ``clock``), ``chat_reply`` (model, messages -> the text of
        a chat completion; default ``completion_text``), ``failing_models`` (completions for
        these names answer 500), ``model_delay_s`` (how far a chat completion for a name
        moves ``clock``), ``chat_template`` (False: chat completions answer 400 as vLLM does for
        a tokenizer without a chat template), ``completion_reply`` (model, prompt -> the text of a
    completion; default ``completion_text``).
    """

    base_id: str = BASE_ID
    base_root: str = BASE_ROOT
    version: str = "0.33.0"
    adapters: dict[str, str] = field(default_factory=dict)  # served name -> root
    runtime_lora: bool = True
    api_key: str | None = None
    missing_paths: set[str] = field(default_factory=set)
    rejected_paths: set[str] = field(default_factory=set)
    die_on_load: set[str] = field(default_factory=set)
    unhealthy_polls: int = 0
    healthy: bool = True
    completion_text: str = " Amazon S3 stores objects."
    completion_tokens: int = 6
    completion_delay_s: float = 0.0
    clock: FakeClock | None = None
    chat_reply: Callable[[str, list[dict[str, str]]], str] | None = None
    failing_models: set[str] = field(default_factory=set)
    model_delay_s: dict[str, float] = field(default_factory=dict)
    chat_template: bool = True
    completion_reply: Callable[[str, str], str] | None = None  # (model, prompt) -> text
    calls: list[Call] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- what tests read -------------------------------------------------------------------

    def lora_calls(self) -> list[tuple[str, dict[str, Any] | None]]:
        """The load/unload requests received, in order: (path, body)."""
        return [(c.path, c.body) for c in self.calls if "lora_adapter" in c.path]

    # -- the server ------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        self.calls.append(Call(request.method, path, body, dict(request.headers)))
        route: dict[tuple[str, str], Callable[[dict[str, Any] | None], httpx.Response]] = {
            ("GET", "/health"): self._health,
            ("GET", "/version"): lambda _: httpx.Response(200, json={"version": self.version}),
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/completions"): self._completion,
            ("POST", "/v1/chat/completions"): self._chat,
        }
        if self.runtime_lora:
            route[("POST", "/v1/load_lora_adapter")] = self._load
            route[("POST", "/v1/unload_lora_adapter")] = self._unload
        handler = route.get((request.method, path))
        if handler is None:
            return httpx.Response(404, json=NOT_FOUND_ROUTE)
        wants_key = path.startswith("/v1/") and self.api_key is not None
        if wants_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return httpx.Response(401, json={"error": "Unauthorized"})
        return handler(body)

    def _health(self, _: dict[str, Any] | None) -> httpx.Response:
        if self.unhealthy_polls > 0:
            self.unhealthy_polls -= 1
            return httpx.Response(503)
        return httpx.Response(200 if self.healthy else 503)

    def _models(self, _: dict[str, Any] | None) -> httpx.Response:
        cards = [{"id": self.base_id, "object": "model", "root": self.base_root, "parent": None}]
        cards += [
            {"id": name, "object": "model", "root": root, "parent": self.base_id}
            for name, root in self.adapters.items()
        ]
        return httpx.Response(200, json={"object": "list", "data": cards})

    def _load(self, body: dict[str, Any] | None) -> httpx.Response:
        assert body is not None, "vLLM wants a JSON body"
        name, path = body["lora_name"], body["lora_path"]
        if name == self.base_id:
            message = f"The lora adapter '{name}' conflicts with a served base model."
            return httpx.Response(400, json=vllm_error(message, "InvalidUserInput", 400))
        if name in self.adapters and not body.get("load_inplace", False):
            message = (
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True."
            )
            return httpx.Response(400, json=vllm_error(message, "InvalidUserInput", 400))
        if path in self.missing_paths:
            message = f"Loading lora {name} failed: No adapter found for <path>"
            return httpx.Response(404, json=vllm_error(message, "NotFoundError", 404))
        if path in self.rejected_paths:
            message = "Call to add_lora method failed: Worker failed with error 'LoRA rank 64 is greater'"
            return httpx.Response(500, json=vllm_error(message, "InternalServerError", 500))
        self.adapters[name] = path
        if path in self.die_on_load:
            self.healthy = False
        # vLLM answers a plain text body without a Content-Type.
        return httpx.Response(200, content=f"Success: LoRA adapter '{name}' added successfully.".encode())

    def _unload(self, body: dict[str, Any] | None) -> httpx.Response:
        assert body is not None, "vLLM wants a JSON body"
        name = body["lora_name"]
        if name not in self.adapters:
            message = f"The lora adapter '{name}' cannot be found."
            return httpx.Response(404, json=vllm_error(message, "NotFoundError", 404))
        del self.adapters[name]
        return httpx.Response(200, content=f"Success: LoRA adapter '{name}' removed successfully.".encode())

    def _completion(self, body: dict[str, Any] | None) -> httpx.Response:
        assert body is not None, "vLLM wants a JSON body"
        model = body["model"]
        if model != self.base_id and model not in self.adapters:
            message = f"The model `{model}` does not exist. Valid aliases: {self.base_id}"
            return httpx.Response(404, json=vllm_error(message, "NotFoundError", 404))
        if self.clock is not None:
            self.clock.now += self.completion_delay_s
        reply = self.completion_reply
        text = reply(model, body["prompt"]) if reply else self.completion_text
        return httpx.Response(
            200,
            json={
                "id": "cmpl-1",
                "object": "text_completion",
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                "usage": {
                    "prompt_tokens": 12,
                    "completion_tokens": self.completion_tokens,
                    "total_tokens": 12 + self.completion_tokens,
                },
            },
        )

    def _chat(self, body: dict[str, Any] | None) -> httpx.Response:
        assert body is not None, "vLLM wants a JSON body"
        model = body["model"]
        if model != self.base_id and model not in self.adapters:
            message = f"The model `{model}` does not exist. Valid aliases: {self.base_id}"
            return httpx.Response(404, json=vllm_error(message, "NotFoundError", 404))
        if model in self.failing_models:
            return httpx.Response(500, json=vllm_error("engine error", "InternalServerError", 500))
        if not self.chat_template:  # vLLM 0.32's words (renderers/hf.py)
            message = (
                "As of transformers v4.44, default chat template is no longer allowed, so you must "
                "provide a chat template if the tokenizer does not define one."
            )
            return httpx.Response(400, json=vllm_error(message, "BadRequestError", 400))
        if self.clock is not None:
            self.clock.now += self.model_delay_s.get(model, 0.0)
        text = self.chat_reply(model, body["messages"]) if self.chat_reply else self.completion_text
        tokens = body["max_tokens"] if body.get("ignore_eos") else self.completion_tokens
        return httpx.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 30, "completion_tokens": tokens, "total_tokens": 30 + tokens},
            },
        )


@dataclass
class FakeClock:
    """A monotonic clock that only moves when told to: ``sleep`` advances it at once."""

    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

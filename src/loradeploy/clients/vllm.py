"""Client for vLLM's OpenAI-compatible API, including the runtime LoRA routes.

All I/O goes through one ``httpx.Client``; tests pass ``httpx.MockTransport``.
Every failure leaves this module as one of the project's errors naming the server:
httpx's exceptions through ``_NO_ANSWER`` (``_request``), vLLM's error bodies through
``_raise_for``, and a success whose body is not what vLLM sends (a login page with 200,
JSON cut short, a field missing) through ``_parse``.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, Field, ValidationError

from loradeploy.errors import (
    AdapterAlreadyLoadedError,
    AdapterRejectedError,
    AuthenticationError,
    DeadlineExceededError,
    LoraDeployError,
    NoChatTemplateError,
    NotFoundError,
    PermanentError,
    ServerUnavailableError,
    UsageError,
    short,
)
from loradeploy.settings import VLLM_CREDENTIALS, check_url

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``: the base model (parent None) or an adapter."""

    id: str
    root: str | None = None
    parent: str | None = None


class Completion(BaseModel):
    model: str
    text: str
    latency_s: float
    completion_tokens: int


# The parts of vLLM's answers this client reads; anything else in them is ignored.


class _ModelList(BaseModel):
    data: list[ModelCard] = []


class _Version(BaseModel):
    version: str = "unknown"


class _Usage(BaseModel):
    completion_tokens: int = 0


class _TextChoice(BaseModel):
    text: str | None = None


class _CompletionAnswer(BaseModel):
    choices: list[_TextChoice] = Field(min_length=1)
    usage: _Usage | None = None


class _Message(BaseModel):
    content: str | None = None


class _ChatChoice(BaseModel):
    message: _Message


class _ChatAnswer(BaseModel):
    choices: list[_ChatChoice] = Field(min_length=1)
    usage: _Usage | None = None


_Answer = TypeVar("_Answer", bound=BaseModel)

# httpx's exceptions when no usable answer arrived, most specific first: (class, what
# the message says, the error it becomes, the hint). Timeouts and dropped connections
# leave the request's effect unknown: a load may still complete on the server.
_NO_ANSWER: tuple[tuple[type[httpx.HTTPError], str, type[LoraDeployError], str], ...] = (
    (
        httpx.TimeoutException,
        "did not answer {request} in time",
        ServerUnavailableError,
        "check that the server is up and not overloaded, then retry",
    ),
    (
        httpx.TransportError,
        "is unreachable",
        ServerUnavailableError,
        "start the server (loradeploy stack up) or fix --vllm-url",
    ),
    (
        httpx.DecodingError,
        "sent an answer to {request} that cannot be decoded",
        ServerUnavailableError,
        "check that --vllm-url reaches vLLM itself, not a proxy that rewrites answers; retry",
    ),
    (
        httpx.TooManyRedirects,
        "redirected {request} too many times",
        PermanentError,
        "fix --vllm-url: it should be the server's base URL, without redirects",
    ),
)


class VllmClient:
    """Talks to one vLLM server (one replica)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # Every replica URL comes through here (flags, stack file, pod discovery).
        self.base_url = check_url(
            base_url, what="vLLM", setting="--vllm-url", credentials=VLLM_CREDENTIALS
        ).rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.tls = tls_context(verify)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            verify=self.tls,
            transport=transport,
        )
        self._clock = clock
        self._sleep = sleep

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VllmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.RequestError as exc:
            for kind, says, error, hint in _NO_ANSWER:
                if isinstance(exc, kind):
                    what = says.format(request=f"{method} {path}")
                    raise error(
                        f"vLLM at {self.base_url} {what} ({type(exc).__name__}: {short(str(exc), 80)})",
                        hint=hint,
                    ) from exc
            raise ServerUnavailableError(  # an httpx error newer than the table
                f"vLLM at {self.base_url}: {method} {path} failed ({type(exc).__name__})",
                hint="check the server and --vllm-url, then retry",
            ) from exc

    def _parse(self, response: httpx.Response, shape: type[_Answer], what: str) -> _Answer:
        """The answer's body as ``shape``; anything else (HTML, JSON cut short, fields
        missing or of the wrong type) is the server's fault, named with its URL."""
        try:
            return shape.model_validate_json(response.content)
        except ValidationError as exc:
            kind = response.headers.get("content-type") or "no content type"
            raise ServerUnavailableError(
                f"vLLM at {self.base_url} answered {what} with a body that is not vLLM's "
                f"(HTTP {response.status_code}, {short(kind, 60)}: {short(response.text, 80)})",
                hint="check that --vllm-url reaches vLLM itself, not a proxy or login page; retry",
            ) from exc

    def _raise_for(self, response: httpx.Response, what: str) -> None:
        if response.is_success:
            return
        status = response.status_code
        message = _error_message(response)
        where = f"vLLM at {self.base_url}"
        if status in (401, 403):
            raise AuthenticationError(
                f"{where} refused {what}: HTTP {status} (API key missing or wrong)",
                hint="pass the server's key with --api-key or VLLM_API_KEY",
            )
        if "has already been loaded" in message:
            raise AdapterAlreadyLoadedError(f"{where}: {what}: {short(message)}")
        if "conflicts with a served base model" in message:
            raise UsageError(
                f"{where}: {what}: the name is the served base model's",
                hint="choose a slot name different from the base model name",
            )
        if status == 400 and "chat template" in message.lower():
            # vLLM: "... you must provide a chat template if the tokenizer does not define one."
            raise NoChatTemplateError(f"{where}: {what}: the served model has no chat template")
        if status == 404 and message == "Not Found":
            raise PermanentError(
                f"{where} has no route for {what}: runtime LoRA updating is off",
                hint="start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora",
            )
        if status == 404:
            raise NotFoundError(f"{where}: {what}: {short(message)}")
        if what.startswith("load adapter"):
            # Any 4xx/5xx on load means "not loaded"; do not depend on 400 vs 500.
            raise AdapterRejectedError(f"{where} refused {what}: HTTP {status}: {short(message)}")
        if status >= 500:
            raise ServerUnavailableError(f"{where}: {what} failed: HTTP {status}: {short(message)}")
        raise PermanentError(f"{where}: {what} failed: HTTP {status}: {short(message)}")

    # -- health and discovery ----------------------------------------------------------

    def health_check(self) -> bool:
        """``GET /health``: True when the engine is up (503 once the engine died)."""
        try:
            return self._request("GET", "/health").status_code == 200
        except ServerUnavailableError:
            return False

    def ensure_healthy(self) -> None:
        response = self._request("GET", "/health")
        if response.status_code != 200:
            raise ServerUnavailableError(
                f"vLLM at {self.base_url} is not healthy: /health answered {response.status_code}",
                hint="check the vLLM server log; the engine may have died",
            )

    def server_version(self) -> str:
        response = self._request("GET", "/version")
        self._raise_for(response, "version")
        return self._parse(response, _Version, "GET /version").version

    def list_models(self) -> list[ModelCard]:
        response = self._request("GET", "/v1/models")
        self._raise_for(response, "list models")
        return self._parse(response, _ModelList, "GET /v1/models").data

    def base_model(self) -> ModelCard:
        """The served base model (the card without a parent)."""
        bases = [card for card in self.list_models() if card.parent is None]
        if not bases:
            raise PermanentError(f"vLLM at {self.base_url} lists no base model in /v1/models")
        return bases[0]

    def adapters(self) -> dict[str, ModelCard]:
        """Served adapters by name."""
        return {card.id: card for card in self.list_models() if card.parent is not None}

    # -- inference -----------------------------------------------------------------------

    def completion(
        self,
        model: str,
        prompt: str,
        *,
        max_tokens: int = 32,
        temperature: float = 0.0,
        seed: int | None = 0,
    ) -> Completion:
        """``POST /v1/completions``. Greedy and seeded by default, so results repeat."""
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if seed is not None:
            body["seed"] = seed
        started = self._clock()
        response = self._request("POST", "/v1/completions", json=body)
        latency = self._clock() - started
        self._raise_for(response, f"completion for {model!r}")
        answer = self._parse(response, _CompletionAnswer, f"POST /v1/completions for {model!r}")
        return Completion(
            model=model,
            text=answer.choices[0].text or "",
            latency_s=latency,
            completion_tokens=answer.usage.completion_tokens if answer.usage else 0,
        )

    def chat_completion(
        self,
        model: str,
        messages: Sequence[dict[str, str]],
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        seed: int | None = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> Completion:
        """``POST /v1/chat/completions`` (instruct models, e.g. an evaluation judge).

        ``extra`` adds vLLM sampling fields, e.g. ``{"ignore_eos": True}`` for a fixed length.
        """
        body: dict[str, Any] = {
            **(extra or {}),
            "model": model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if seed is not None:
            body["seed"] = seed
        started = self._clock()
        response = self._request("POST", "/v1/chat/completions", json=body)
        latency = self._clock() - started
        self._raise_for(response, f"chat completion for {model!r}")
        answer = self._parse(response, _ChatAnswer, f"POST /v1/chat/completions for {model!r}")
        return Completion(
            model=model,
            text=answer.choices[0].message.content or "",
            latency_s=latency,
            completion_tokens=answer.usage.completion_tokens if answer.usage else 0,
        )

    # -- runtime LoRA --------------------------------------------------------------------

    def load_lora_adapter(self, name: str, path: str, *, load_inplace: bool = False) -> None:
        """``POST /v1/load_lora_adapter``. With ``load_inplace`` the weights under ``name``
        are replaced without a window where the name is missing.

        ``ServerUnavailableError`` here means no usable answer came back (timeout, dropped
        connection): the server may still complete the load. Every answer vLLM gives to a
        load, 5xx included, is another error (the adapter was not loaded).
        """
        body = {"lora_name": name, "lora_path": path, "load_inplace": load_inplace}
        response = self._request("POST", "/v1/load_lora_adapter", json=body)
        self._raise_for(response, f"load adapter {name!r} from {path}")

    def unload_lora_adapter(self, name: str) -> None:
        """``POST /v1/unload_lora_adapter``; NotFoundError if the name is not served."""
        response = self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        self._raise_for(response, f"unload adapter {name!r}")

    # -- waits -----------------------------------------------------------------------------

    def wait_until_healthy(self, timeout: float, interval: float = 1.0) -> None:
        deadline = self._clock() + timeout
        while not self.health_check():
            if self._clock() >= deadline:
                raise DeadlineExceededError(
                    f"vLLM at {self.base_url} was not healthy within {timeout:.0f}s",
                    hint="check the vLLM server log, or raise the timeout",
                )
            self._sleep(interval)

    def wait_until_model_available(
        self, name: str, timeout: float, *, root: str | None = None, interval: float = 0.5
    ) -> ModelCard:
        """Wait until ``name`` is listed (and serves ``root``, when given)."""
        deadline = self._clock() + timeout
        while True:
            card = next((c for c in self.list_models() if c.id == name), None)
            if card is not None and (root is None or card.root == root):
                return card
            if self._clock() >= deadline:
                seen = card.root if card else "nothing"
                raise DeadlineExceededError(
                    f"vLLM at {self.base_url} did not list {name!r}"
                    + (f" serving {root}" if root else "")
                    + f" within {timeout:.0f}s (it serves {seen})",
                    hint="check the vLLM server log",
                )
            self._sleep(interval)


def tls_context(verify: bool | str) -> ssl.SSLContext:
    """Certificate and host-name checks always on; a CA bundle path adds its CAs to the
    default ones (a private CA for the vLLM endpoint, public CAs for everything else).

    ``verify=False`` is refused: loradeploy has no way to turn verification off.
    """
    if verify is False:
        raise UsageError(
            "TLS verification cannot be turned off", hint="pass the server's CA with --ca-bundle"
        )
    context = httpx.create_ssl_context()  # httpx's own default: certifi (or SSL_CERT_FILE/DIR)
    if isinstance(verify, str):
        try:
            context.load_verify_locations(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"CA bundle {verify} cannot be read as PEM certificates ({type(exc).__name__})",
                hint="pass a PEM file with --ca-bundle or LORADEPLOY_CA_BUNDLE",
            ) from exc
    return context


def _error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return short(response.text)
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if "detail" in data:
            return str(data["detail"])
        if "message" in data:
            return str(data["message"])
    return short(response.text)

"""clients/vllm.py against FakeVllmServer (recorded vLLM answers, see support/fakes.py)."""

from __future__ import annotations

import httpx
import pytest

from loradeploy.clients.vllm import VllmClient
from loradeploy.errors import (
    AdapterAlreadyLoadedError,
    AdapterRejectedError,
    AuthenticationError,
    DeadlineExceededError,
    NoChatTemplateError,
    NotFoundError,
    PermanentError,
    ServerUnavailableError,
    UsageError,
)
from support.fakes import BASE_ID, BASE_ROOT, FakeClock, FakeVllmServer

URL = "http://vllm.test:8000"
V1 = "/srv/adapters/live/aws-rag-qa-v1"
V2 = "/srv/adapters/live/aws-rag-qa-v2"


# -- discovery --------------------------------------------------------------------------------


def test_list_models_base_model_and_adapters(server: FakeVllmServer, vllm: VllmClient) -> None:
    server.adapters = {"live": V1, "candidate": V2}

    cards = vllm.list_models()
    base = vllm.base_model()
    adapters = vllm.adapters()

    assert [c.id for c in cards] == [BASE_ID, "live", "candidate"]
    assert (base.id, base.root, base.parent) == (BASE_ID, BASE_ROOT, None)
    assert {name: card.root for name, card in adapters.items()} == {"live": V1, "candidate": V2}
    assert all(card.parent == BASE_ID for card in adapters.values())


def test_base_model_is_required() -> None:
    def no_base(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"object": "list", "data": [{"id": "x", "root": V1, "parent": "b"}]})

    with (
        VllmClient(URL, transport=httpx.MockTransport(no_base)) as client,
        pytest.raises(PermanentError) as caught,
    ):
        client.base_model()
    assert URL in caught.value.message


def test_server_version(vllm: VllmClient, server: FakeVllmServer) -> None:
    server.version = "0.32.0"
    assert vllm.server_version() == "0.32.0"


def test_health(vllm: VllmClient, server: FakeVllmServer) -> None:
    assert vllm.health_check()
    vllm.ensure_healthy()
    server.healthy = False
    assert not vllm.health_check()
    with pytest.raises(ServerUnavailableError) as caught:
        vllm.ensure_healthy()
    assert "503" in caught.value.message
    assert URL in caught.value.message


# -- runtime LoRA -----------------------------------------------------------------------------


def test_load_serves_the_adapter(vllm: VllmClient, server: FakeVllmServer) -> None:
    vllm.load_lora_adapter("live", V1)
    assert server.adapters == {"live": V1}
    assert vllm.adapters()["live"].root == V1
    assert server.lora_calls() == [
        ("/v1/load_lora_adapter", {"lora_name": "live", "lora_path": V1, "load_inplace": False})
    ]


def test_loading_a_name_twice_is_refused(vllm: VllmClient, server: FakeVllmServer) -> None:
    vllm.load_lora_adapter("live", V1)
    with pytest.raises(AdapterAlreadyLoadedError) as caught:
        vllm.load_lora_adapter("live", V2)
    assert "'live'" in caught.value.message
    assert URL in caught.value.message
    assert server.adapters == {"live": V1}


def test_load_inplace_replaces_the_root(vllm: VllmClient, server: FakeVllmServer) -> None:
    vllm.load_lora_adapter("live", V1)
    vllm.load_lora_adapter("live", V2, load_inplace=True)
    assert vllm.adapters()["live"].root == V2
    assert server.lora_calls()[-1][1] == {"lora_name": "live", "lora_path": V2, "load_inplace": True}


def test_loading_a_missing_path_is_not_found(vllm: VllmClient, server: FakeVllmServer) -> None:
    server.missing_paths.add(V1)
    with pytest.raises(NotFoundError) as caught:
        vllm.load_lora_adapter("live", V1)
    assert "No adapter found" in caught.value.message
    assert V1 in caught.value.message
    assert server.adapters == {}


def test_a_server_error_on_load_is_a_rejection(vllm: VllmClient, server: FakeVllmServer) -> None:
    server.rejected_paths.add(V1)
    with pytest.raises(AdapterRejectedError) as caught:
        vllm.load_lora_adapter("live", V1)
    assert "HTTP 500" in caught.value.message
    assert "add_lora" in caught.value.message
    assert server.adapters == {}


def test_an_older_servers_400_on_load_is_a_rejection_too() -> None:
    def older(request: httpx.Request) -> httpx.Response:
        message = "Call to add_lora method failed: Worker failed with error 'bad config'"
        return httpx.Response(
            400, json={"error": {"message": message, "type": "BadRequestError", "code": 400}}
        )

    with (
        VllmClient(URL, transport=httpx.MockTransport(older)) as client,
        pytest.raises(AdapterRejectedError) as caught,
    ):
        client.load_lora_adapter("live", V1)
    assert "HTTP 400" in caught.value.message


def test_the_base_models_name_cannot_be_a_slot(vllm: VllmClient) -> None:
    with pytest.raises(UsageError) as caught:
        vllm.load_lora_adapter(BASE_ID, V1)
    assert "served base model" in caught.value.message


def test_unload_removes_the_name(vllm: VllmClient, server: FakeVllmServer) -> None:
    server.adapters = {"live": V1}
    vllm.unload_lora_adapter("live")
    assert vllm.adapters() == {}


def test_unloading_an_unknown_name_is_not_found(vllm: VllmClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        vllm.unload_lora_adapter("ghost")
    assert "'ghost'" in caught.value.message
    assert "cannot be found" in caught.value.message


@pytest.mark.parametrize("call", ["load", "unload"])
def test_missing_lora_routes_mean_runtime_updating_is_off(server: FakeVllmServer, call: str) -> None:
    server.runtime_lora = False
    with VllmClient(URL, transport=server.transport()) as client, pytest.raises(PermanentError) as caught:
        if call == "load":
            client.load_lora_adapter("live", V1)
        else:
            client.unload_lora_adapter("live")
    assert not isinstance(caught.value, NotFoundError)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in caught.value.one_line()
    assert "runtime LoRA updating is off" in caught.value.message


# -- authentication and transport errors -------------------------------------------------------


def test_the_api_key_is_sent_as_a_bearer_token(server: FakeVllmServer) -> None:
    server.api_key = "sk-right"
    with VllmClient(URL, api_key="sk-right", transport=server.transport()) as client:
        client.load_lora_adapter("live", V1)
    assert server.adapters == {"live": V1}
    assert server.calls[-1].headers["authorization"] == "Bearer sk-right"


def test_no_authorization_header_without_an_api_key(vllm: VllmClient, server: FakeVllmServer) -> None:
    vllm.list_models()
    assert "authorization" not in server.calls[-1].headers


@pytest.mark.parametrize("key", [None, "sk-wrong-key-123"])
def test_a_refused_key_is_an_authentication_error_without_the_key(
    server: FakeVllmServer, key: str | None
) -> None:
    server.api_key = "sk-right"
    with (
        VllmClient(URL, api_key=key, transport=server.transport()) as client,
        pytest.raises(AuthenticationError) as caught,
    ):
        client.load_lora_adapter("live", V1)
    error = caught.value
    assert "401" in error.message
    assert URL in error.message
    assert "--api-key" in error.hint
    if key is not None:
        for text in (str(error), error.one_line(), repr(error), error.hint):
            assert key not in text


def test_connection_refused_is_server_unavailable_naming_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with VllmClient(URL, transport=httpx.MockTransport(refuse)) as client:
        assert not client.health_check()
        with pytest.raises(ServerUnavailableError) as caught:
            client.list_models()
    assert URL in caught.value.message
    assert "unreachable" in caught.value.message
    assert caught.value.exit_code == 75


def test_a_timeout_is_server_unavailable() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with (
        VllmClient(URL, transport=httpx.MockTransport(slow)) as client,
        pytest.raises(ServerUnavailableError) as caught,
    ):
        client.load_lora_adapter("live", V1)
    assert "in time" in caught.value.message
    assert "/v1/load_lora_adapter" in caught.value.message


def test_a_5xx_outside_load_is_transient() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>Bad gateway</html>")

    with (
        VllmClient(URL, transport=httpx.MockTransport(broken)) as client,
        pytest.raises(ServerUnavailableError) as caught,
    ):
        client.list_models()
    assert "HTTP 502" in caught.value.message


def test_long_error_bodies_are_cut_short() -> None:
    def verbose(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="trace " * 1000)

    with (
        VllmClient(URL, transport=httpx.MockTransport(verbose)) as client,
        pytest.raises(AdapterRejectedError) as caught,
    ):
        client.load_lora_adapter("live", V1)
    assert len(caught.value.message) < 400


# -- inference ----------------------------------------------------------------------------------


def test_completion_parses_text_usage_and_latency(server: FakeVllmServer, vllm: VllmClient) -> None:
    server.adapters = {"live": V1}
    server.completion_text = " S3 is object storage."
    server.completion_tokens = 5
    server.completion_delay_s = 0.25

    done = vllm.completion("live", "Question: S3?\nAnswer:", max_tokens=8)

    assert done.model == "live"
    assert done.text == " S3 is object storage."
    assert done.completion_tokens == 5
    assert done.latency_s == pytest.approx(0.25)
    sent = server.calls[-1].body
    assert sent == {
        "model": "live",
        "prompt": "Question: S3?\nAnswer:",
        "max_tokens": 8,
        "temperature": 0.0,
        "seed": 0,
    }


def test_completion_for_an_unknown_model_is_not_found(vllm: VllmClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        vllm.completion("ghost", "hi")
    assert "does not exist" in caught.value.message


# -- waits ----------------------------------------------------------------------------------------


def test_wait_until_healthy_returns_once_healthy(
    server: FakeVllmServer, vllm: VllmClient, clock: FakeClock
) -> None:
    server.unhealthy_polls = 3
    vllm.wait_until_healthy(timeout=10, interval=1.0)
    assert clock.slept == [1.0, 1.0, 1.0]


def test_wait_until_healthy_has_a_deadline(
    server: FakeVllmServer, vllm: VllmClient, clock: FakeClock
) -> None:
    server.healthy = False
    start = clock.now
    with pytest.raises(DeadlineExceededError) as caught:
        vllm.wait_until_healthy(timeout=5, interval=1.0)
    assert "not healthy within 5s" in caught.value.message
    assert URL in caught.value.message
    assert clock.now - start == pytest.approx(5.0)


def test_wait_until_healthy_keeps_waiting_while_unreachable(clock: FakeClock) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with (
        VllmClient(URL, transport=httpx.MockTransport(refuse), clock=clock, sleep=clock.sleep) as client,
        pytest.raises(DeadlineExceededError),
    ):
        client.wait_until_healthy(timeout=3, interval=0.5)
    assert sum(clock.slept) == pytest.approx(3.0)


def test_wait_until_model_available_returns_the_card(server: FakeVllmServer, vllm: VllmClient) -> None:
    server.adapters = {"live": V2}
    card = vllm.wait_until_model_available("live", timeout=5, root=V2)
    assert card.root == V2


def test_wait_until_model_available_has_a_deadline(
    server: FakeVllmServer, vllm: VllmClient, clock: FakeClock
) -> None:
    server.adapters = {"live": V1}
    with pytest.raises(DeadlineExceededError) as caught:
        vllm.wait_until_model_available("live", timeout=4, root=V2, interval=0.5)
    message = caught.value.message
    assert "'live'" in message
    assert f"serving {V2}" in message
    assert f"it serves {V1}" in message
    assert clock.slept and sum(clock.slept) == pytest.approx(4.0)


def test_wait_until_model_available_reports_nothing_served(vllm: VllmClient) -> None:
    with pytest.raises(DeadlineExceededError) as caught:
        vllm.wait_until_model_available("live", timeout=1)
    assert "it serves nothing" in caught.value.message


# -- answers that are not vLLM's (a proxy, a login page, a broken body) -------------------------

HTML = b"<html><body>Please sign in</body></html>"


def _answering(content: bytes, headers: dict[str, str] | None = None) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(200, content=content, headers=headers))


@pytest.mark.parametrize(
    "body",
    [
        HTML,  # a login page or an ingress's error page, with 200
        b'{"object": "list", "data": [{"id": "live", "root": ',  # cut short
        b'["not", "an", "object"]',
        b'{"data": "nothing"}',
        b'{"data": [{"root": "/srv/adapters/live/aws-rag-qa-v1"}]}',  # a card without an id
        b"\xff\xfe\x00garbage",
    ],
)
@pytest.mark.parametrize("call", ["list_models", "adapters", "base_model"])
def test_a_body_that_is_not_vllms_is_a_translated_error(body: bytes, call: str) -> None:
    with (
        VllmClient(URL, transport=_answering(body)) as client,
        pytest.raises(ServerUnavailableError) as caught,
    ):
        getattr(client, call)()
    error = caught.value
    assert URL in error.message
    assert "not vLLM's" in error.message
    assert error.exit_code == 75
    assert len(error.one_line()) < 500


@pytest.mark.parametrize("body", [HTML, b'["0.32.0"]', b'{"version": ["0.32.0"]}'])
def test_a_version_answer_that_is_not_vllms_is_a_translated_error(body: bytes) -> None:
    with (
        VllmClient(URL, transport=_answering(body)) as client,
        pytest.raises(ServerUnavailableError) as caught,
    ):
        client.server_version()
    assert URL in caught.value.message
    assert "/version" in caught.value.message


@pytest.mark.parametrize(
    "body",
    [HTML, b'{"choices": []}', b'{"choices": [{"index": 0}], "usage": {"completion_tokens": "many"}}', b"{}"],
)
@pytest.mark.parametrize("call", ["completion", "chat_completion"])
def test_an_inference_answer_that_is_not_vllms_is_a_translated_error(body: bytes, call: str) -> None:
    with (
        VllmClient(URL, transport=_answering(body)) as client,
        pytest.raises(ServerUnavailableError) as caught,
    ):
        if call == "completion":
            client.completion("live", "hi")
        else:
            client.chat_completion("live", [{"role": "user", "content": "hi"}])
    assert URL in caught.value.message


def test_completion_accepts_a_null_usage_and_text() -> None:
    body = b'{"choices": [{"index": 0, "text": null}], "usage": null}'
    with VllmClient(URL, transport=_answering(body)) as client:
        done = client.completion("live", "hi")
    assert (done.text, done.completion_tokens) == ("", 0)


def test_a_body_that_cannot_be_decoded_is_a_translated_error() -> None:
    transport = _answering(b"this is not gzip", headers={"Content-Encoding": "gzip"})
    with (
        VllmClient(URL, transport=transport) as client,
        pytest.raises(ServerUnavailableError) as caught,
    ):
        client.list_models()
    assert URL in caught.value.message
    assert "decoded" in caught.value.message


def test_a_redirect_loop_is_a_translated_error() -> None:
    def loop(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": str(request.url)})

    with VllmClient(URL, transport=httpx.MockTransport(loop)) as client:
        client._http.follow_redirects = True  # a client configured to follow them
        with pytest.raises(PermanentError) as caught:
            client.list_models()
    assert URL in caught.value.message
    assert "redirect" in caught.value.message


def test_a_load_answer_without_a_body_is_still_a_success(vllm: VllmClient, server: FakeVllmServer) -> None:
    # vLLM answers a load with plain text; nothing parses it, so no "not vLLM's" error.
    vllm.load_lora_adapter("live", V1)
    assert server.adapters == {"live": V1}


def test_chat_without_a_chat_template_is_its_own_error_naming_the_server(
    server: FakeVllmServer, vllm: VllmClient
) -> None:
    server.chat_template = False
    with pytest.raises(NoChatTemplateError) as caught:
        vllm.chat_completion(BASE_ID, [{"role": "user", "content": "hi"}])
    line = caught.value.one_line()
    assert "http://vllm.test:8000" in line and "no chat template" in line and "next:" in line
    assert vllm.completion(BASE_ID, "hi").text  # plain completions still work


def test_another_bad_chat_request_is_not_taken_for_a_missing_template(server: FakeVllmServer) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "max_tokens is too large", "code": 400}})

    with (
        VllmClient("http://vllm.test:8000", transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(PermanentError) as caught,
    ):
        client.chat_completion(BASE_ID, [{"role": "user", "content": "hi"}])
    assert not isinstance(caught.value, NoChatTemplateError)

"""clients/router.py against an in-process fake of the proxy's /model/info (httpx
MockTransport) and a fake SIGHUP: what is written, when a change counts as applied, and
that refused changes leave the file and the proxy alone. The real proxy is exercised in
tests/integration/test_router.py."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loradeploy.clients import router as router_module
from loradeploy.clients.router import LiteLLMRouter
from loradeploy.domain.routes import Shadow, litellm_config
from loradeploy.errors import DeadlineExceededError, PermanentError, ServerUnavailableError, UsageError

OLD = {"m-live": {"m@v1": 100}}
NEW = {"m-live": {"m@v1": 75, "m@v2": 25}}
BACKENDS = ["http://127.0.0.1:9"]


class FakeProxy:
    """Answers /model/info with the entries of ``answers`` in turn (the last repeats)."""

    def __init__(self, *answers: dict[str, dict[str, int]] | list[object] | int) -> None:
        self.answers = list(answers)
        self.hups: list[int] = []
        self.calls = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer sk-test"
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, int):
            return httpx.Response(answer, text="no")
        if isinstance(answer, list):  # entries as given (a configuration with shadows)
            return httpx.Response(200, json={"data": answer})
        return httpx.Response(200, json={"data": litellm_config(answer, BACKENDS)["model_list"]})


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(router_module, "POLL_S", 0.01)
    yield


MASTER = {"pid": 0}  # the stand-in gunicorn master's pid, set for every test below


@pytest.fixture(autouse=True)
def master(group_leader: int) -> None:
    MASTER["pid"] = group_leader


def make(tmp_path: Path, proxy: FakeProxy, *, alive: bool = True) -> LiteLLMRouter:
    record = tmp_path / "run" / "router.json"
    record.parent.mkdir()
    # a live process group leader stands in for the gunicorn master (the signal is faked)
    record.write_text(json.dumps({"pid": MASTER["pid"] if alive else 2**22 + 7}))
    client = LiteLLMRouter(
        url="http://router.test",
        key="sk-test",
        config=tmp_path / "router" / "config.yaml",
        record=record,
        backends=BACKENDS,
        http=httpx.Client(transport=httpx.MockTransport(proxy.handler)),
        hangup=proxy.hups.append,
    )
    client.write(OLD)
    return client


def test_apply_writes_signals_the_master_and_waits_for_answers_in_a_row(tmp_path: Path) -> None:
    # old worker, new, old again (both answer for a while), then new for good
    proxy = FakeProxy(OLD, NEW, OLD, NEW)
    client = make(tmp_path, proxy)
    client.apply(NEW, deadline_s=10)
    assert proxy.hups == [MASTER["pid"]]
    assert client.routes() == NEW
    assert proxy.calls == 3 + router_module.CONFIRMATIONS  # the run of 3 had to start again
    assert not list(client.config.parent.glob(".*tmp"))  # no temporary file left


def test_a_change_the_proxy_never_shows_fails_after_the_deadline(tmp_path: Path) -> None:
    proxy = FakeProxy(OLD, 503)
    client = make(tmp_path, proxy)
    with pytest.raises(DeadlineExceededError, match="did not serve the new routes within") as caught:
        client.apply(NEW, deadline_s=0.2)
    assert "file holds the new routes" in (caught.value.hint or "")
    assert client.routes() == NEW


def test_bad_routes_change_nothing(tmp_path: Path) -> None:
    proxy = FakeProxy(OLD)
    client = make(tmp_path, proxy)
    before = client.config.read_bytes()
    with pytest.raises(UsageError, match="sum to 80"):
        client.apply({"m-live": {"m@v1": 40, "m@v2": 40}})
    assert client.config.read_bytes() == before and proxy.hups == [] and proxy.calls == 0


def test_a_router_that_is_not_running_changes_nothing(tmp_path: Path) -> None:
    proxy = FakeProxy(OLD)
    client = make(tmp_path, proxy, alive=False)
    before = client.config.read_bytes()
    with pytest.raises(ServerUnavailableError, match="router is not running") as caught:
        client.apply(NEW)
    assert "stack up" in (caught.value.hint or "")
    assert client.config.read_bytes() == before and proxy.hups == []


def test_a_refused_key_is_a_usage_error(tmp_path: Path) -> None:
    client = make(tmp_path, FakeProxy(401))
    with pytest.raises(UsageError, match="refused the key"):
        client.serving()


def test_an_unreadable_configuration_names_the_file(tmp_path: Path) -> None:
    client = make(tmp_path, FakeProxy(OLD))
    client.config.write_text("model_list: [unclosed\n")
    with pytest.raises(Exception, match="cannot be read") as caught:
        client.routes()
    assert str(client.config) in str(caught.value)


def test_a_failed_write_leaves_the_file_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make(tmp_path, FakeProxy(OLD))
    before = client.config.read_bytes()

    def full_disk(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(router_module.os, "fsync", full_disk)
    with pytest.raises(PermanentError, match="cannot be written") as caught:
        client.write(NEW)
    assert str(client.config) in str(caught.value) and caught.value.hint
    assert client.config.read_bytes() == before
    assert sorted(p.name for p in client.config.parent.iterdir()) == ["config.yaml"]


def test_two_writers_never_share_a_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a second write that runs while the first one is between writing and renaming (two
    # processes changing routes) must not truncate or rename the first one's file
    client = make(tmp_path, FakeProxy(OLD))
    real_fsync, inner = os.fsync, []

    def second_writer(descriptor: int) -> None:
        if not inner:
            inner.append(True)
            client.write(OLD)
        real_fsync(descriptor)

    monkeypatch.setattr(router_module.os, "fsync", second_writer)
    client.write(NEW)
    assert client.routes() == NEW  # the last rename wins, whole
    assert sorted(p.name for p in client.config.parent.iterdir()) == ["config.yaml"]


def test_a_live_pid_that_is_not_the_router_group_gets_no_signal(tmp_path: Path) -> None:
    # the router dies and its pid is reused by a process of another group: a SIGHUP
    # would end that process (its default action)
    proxy = FakeProxy(OLD)
    client = make(tmp_path, proxy)
    other = subprocess.Popen(["sleep", "30"])  # same process group as this test: not a leader
    try:
        client.record.write_text(json.dumps({"pid": other.pid}))
        with pytest.raises(ServerUnavailableError, match="router is not running"):
            client.apply(NEW)
    finally:
        other.kill()
        other.wait()
    assert proxy.hups == [] and client.routes() == OLD


def test_a_router_that_exits_before_the_signal_is_a_project_error(tmp_path: Path) -> None:
    def gone(pid: int) -> None:
        raise ProcessLookupError(3, "No such process")

    client = make(tmp_path, FakeProxy(OLD))
    client.hangup = gone
    with pytest.raises(ServerUnavailableError, match="exited before") as caught:
        client.apply(NEW)
    assert "stack up" in (caught.value.hint or "")


def test_a_model_info_answer_with_odd_entries_is_read_without_a_crash(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": ["odd", *litellm_config(OLD, BACKENDS)["model_list"]]})

    client = make(tmp_path, FakeProxy(OLD))
    client.http = httpx.Client(transport=httpx.MockTransport(handler))
    assert client.serving() == OLD


def test_an_unreadable_configuration_says_how_to_get_past_it(tmp_path: Path) -> None:
    # 'stack up --router' reads this file first, so sending the user there loops
    client = make(tmp_path, FakeProxy(OLD))
    client.config.write_text("model_list: [unclosed\n")
    with pytest.raises(PermanentError) as caught:
        client.routes()
    assert "delete" in (caught.value.hint or "")


def test_a_folder_the_configuration_cannot_be_written_to_is_a_project_error(tmp_path: Path) -> None:
    client = make(tmp_path, FakeProxy(OLD))
    client.config = tmp_path / "a-file" / "config.yaml"
    client.config.parent.write_text("not a folder")
    with pytest.raises(PermanentError, match="cannot be written") as caught:
        client.write(NEW)
    assert str(client.config) in str(caught.value)


def test_a_client_built_without_callbacks_keeps_those_the_file_lists(tmp_path: Path) -> None:
    """The request log's callback, written by 'stack up', survives a change made by a
    client that was not told about it; a client that names callbacks writes those."""
    import yaml

    from loradeploy.domain.routes import REQUEST_LOG_CALLBACK, proxy_callbacks

    config = tmp_path / "config.yaml"
    shipped = LiteLLMRouter(
        url="http://router.test",
        key="k",
        config=config,
        record=tmp_path / "r.json",
        backends=BACKENDS,
        callbacks=proxy_callbacks(request_log=True),
    )
    shipped.write(OLD)
    plain = LiteLLMRouter(
        url="http://router.test", key="k", config=config, record=tmp_path / "r.json", backends=BACKENDS
    )
    plain.write(NEW)
    written = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert written["litellm_settings"]["callbacks"] == ["prometheus", REQUEST_LOG_CALLBACK]
    assert plain.routes() == NEW
    config.unlink()
    plain.write(NEW)  # no file yet: the proxy's metrics only
    assert yaml.safe_load(config.read_text(encoding="utf-8"))["litellm_settings"]["callbacks"] == [
        "prometheus"
    ]


def test_a_shadow_is_written_and_confirmed_with_the_routes(tmp_path: Path) -> None:
    shadow = {"m-live": Shadow("m@v2", 20)}
    served = litellm_config(OLD, BACKENDS, shadows=shadow)["model_list"]
    proxy = FakeProxy(OLD, served)
    client = make(tmp_path, proxy)
    client.apply(OLD, shadow, deadline_s=10)
    assert client.routes() == OLD and client.shadows() == shadow
    assert client.serving_shadows() == shadow
    client.write(OLD)  # no shadow given: none kept
    assert client.shadows() == {}


def test_a_shadow_the_proxy_never_shows_is_not_confirmed(tmp_path: Path) -> None:
    proxy = FakeProxy(OLD)  # serves the route without the shadow
    client = make(tmp_path, proxy)
    with pytest.raises(DeadlineExceededError):
        client.apply(OLD, {"m-live": Shadow("m@v2", 20)}, deadline_s=0.2)

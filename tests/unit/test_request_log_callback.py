"""routerworkers/request_log.py, the proxy's request-log callback, loaded by file path as
the proxy loads it, fed the arguments LiteLLM hands its callbacks (shapes taken from
litellm 1.106.2: ``standard_logging_object``, ``litellm_params.metadata``). The real proxy
runs it in tests/integration/test_router.py. Every record it writes reads back as a
``domain.traffic.RequestRecord``."""

from __future__ import annotations

import asyncio
import datetime
import importlib.util
import json
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import loradeploy.routerworkers
from loradeploy.domain.traffic import parse_line

SOURCE = Path(loradeploy.routerworkers.__file__).parent / "request_log.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("loradeploy_request_log", SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MESSAGES = [{"role": "system", "content": "ctx"}, {"role": "user", "content": "What is S3?"}]
RESPONSE = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Storage."}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 2},
}


def kwargs(
    *, shadow: bool = False, group: str = "m-live", entry: str | None = "m@v2#1", **extra: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"model_group": group, "model_info": {"id": entry}}
    if shadow:
        metadata["is_silent_experiment"] = True
    payload = {
        "model_id": entry,
        "model_group": group,
        "startTime": 1000.0,
        "endTime": 1000.25,
        "prompt_tokens": 11,
        "completion_tokens": 2,
        "error_str": extra.pop("error_str", None),
        "metadata": {},
    }
    return {
        "messages": MESSAGES,
        "litellm_params": {"metadata": metadata, "model_info": {"id": entry}},
        "standard_logging_object": payload,
        **extra,
    }


def finish(module: ModuleType, call: dict[str, Any], *, ok: bool = True) -> None:
    logger = module.request_logger
    start = datetime.datetime.fromtimestamp(1000.0)
    end = datetime.datetime.fromtimestamp(1000.25)
    hook = logger.async_log_success_event if ok else logger.async_log_failure_event
    asyncio.run(hook(call, RESPONSE if ok else None, start, end))


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "requests.jsonl"
    monkeypatch.setenv("LORADEPLOY_REQUEST_LOG", str(path))
    monkeypatch.delenv("LORADEPLOY_REQUEST_LOG_TEXT", raising=False)
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]


def test_a_success_is_one_record_naming_the_version_without_text(log: Path) -> None:
    finish(load(), kwargs())
    [written] = lines(log)
    assert written == {
        "v": 1,
        "start": 1000.0,
        "end": 1000.25,
        "stable": "m-live",
        "entry": "m@v2#1",
        "name": "m@v2",
        "ok": True,
        "status": 200,
        "error": None,
        "prompt_tokens": 11,
        "completion_tokens": 2,
        "shadow": False,
        "key": written["key"],
        "prompt": None,
        "answer": None,
    }
    assert len(written["key"]) == 64
    assert parse_line(log.read_text(encoding="utf-8").splitlines()[0]) is not None


def test_text_only_when_asked(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORADEPLOY_REQUEST_LOG_TEXT", "1")
    finish(load(), kwargs())
    [written] = lines(log)
    assert (written["prompt"], written["answer"]) == ("What is S3?", "Storage.")


def test_a_mirrored_request_is_shadow_and_pairs_with_its_live_request(log: Path) -> None:
    module = load()
    finish(module, kwargs())
    finish(module, kwargs(shadow=True, group="m-cand", entry="m@v3"))
    live, mirrored = lines(log)
    assert (live["shadow"], mirrored["shadow"]) == (False, True)
    assert (mirrored["stable"], mirrored["name"]) == ("m-cand", "m@v3")
    assert live["key"] == mirrored["key"]


class FakeUpstreamError(Exception):
    status_code = 503


def test_a_failure_is_recorded_with_its_status_and_a_short_error(log: Path) -> None:
    error = FakeUpstreamError("upstream " + "very long " * 100)
    finish(load(), kwargs(exception=error, error_str="Hosted_vllmException - " + "x " * 400), ok=False)
    [written] = lines(log)
    assert (written["ok"], written["status"], written["prompt_tokens"], written["answer"]) == (
        False,
        503,
        None,
        None,
    )
    assert written["error"].startswith("Hosted_vllmException") and len(written["error"]) <= 300
    assert parse_line(json.dumps(written)) is not None


def test_a_request_no_entry_took_has_no_name(log: Path) -> None:
    call = kwargs(entry=None, group="", exception=ValueError("Invalid model name passed in model=x"))
    call["standard_logging_object"]["model_id"] = None
    finish(load(), call, ok=False)
    [written] = lines(log)
    assert (written["entry"], written["name"], written["stable"], written["status"]) == (
        None,
        None,
        None,
        None,
    )
    assert parse_line(json.dumps(written)) is not None


def test_no_file_named_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORADEPLOY_REQUEST_LOG", raising=False)
    monkeypatch.chdir(tmp_path)
    finish(load(), kwargs())
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_log_never_fails_the_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORADEPLOY_REQUEST_LOG", str(tmp_path / "missing-folder" / "requests.jsonl"))
    finish(load(), kwargs())  # no exception


def test_concurrent_writers_append_whole_lines(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORADEPLOY_REQUEST_LOG_TEXT", "1")
    module = load()
    big = [{"role": "user", "content": "y" * 20000}]

    def write_many() -> None:
        for _ in range(50):
            module.append_line(
                str(log),
                module.build_record(kwargs(messages=big), RESPONSE, 1.0, 2.0, ok=True, with_text=True),
            )

    threads = [threading.Thread(target=write_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    texts = log.read_text(encoding="utf-8").splitlines()
    assert len(texts) == 200
    assert all(parse_line(text) is not None for text in texts)


def test_the_callback_imports_nothing_from_loradeploy() -> None:
    text = SOURCE.read_text(encoding="utf-8")
    imports = [row for row in text.splitlines() if row.startswith(("import", "from"))]
    assert not [row for row in imports if "loradeploy" in row]

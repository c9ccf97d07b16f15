"""The router's per-request log: a LiteLLM proxy callback that appends one JSON line per
finished request (success or failure) to the file named by ``LORADEPLOY_REQUEST_LOG``.

Runs inside the router's virtualenv and imports nothing from loradeploy. The local stack
copies this file next to the proxy's ``config.yaml`` as ``loradeploy_request_log.py``;
the configuration names it ``loradeploy_request_log.request_logger`` and the proxy loads
custom callbacks named ``module.instance`` from the configuration's folder.

One record (version 1), read back by ``loradeploy.clients.request_log``::

    {"v": 1, "start": 1.0, "end": 1.2, "stable": "m-live", "entry": "m@v2#1",
     "name": "m@v2", "ok": true, "status": 200, "error": null,
     "prompt_tokens": 31, "completion_tokens": 12, "shadow": false,
     "key": "<sha256 of the messages or prompt as JSON>", "prompt": null, "answer": null}

``stable`` is the model group the client called (for a mirrored request, the silent
target group), ``entry`` the id of the proxy entry that answered (the same value as the
``x-litellm-model-id`` header), ``name`` the versioned name (``entry`` without
``#<replica>``). ``shadow`` marks a request LiteLLM mirrored to a ``silent_model``, whose
answer no client saw. ``prompt`` (the prompt, or for a chat the last message's text, else
the messages as JSON) and ``answer`` are written only when
``LORADEPLOY_REQUEST_LOG_TEXT=1``. Each record is one ``os.write`` to a file opened with
``O_APPEND``, so lines of concurrent workers never interleave. A record that cannot be
written is reported on stderr and dropped: the log never fails a request.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

try:
    from litellm.integrations.custom_logger import CustomLogger
except ImportError:  # the project's own virtualenv, where its unit tests read this file
    CustomLogger = object

RECORD_VERSION = 1
LOG_ENV = "LORADEPLOY_REQUEST_LOG"
TEXT_ENV = "LORADEPLOY_REQUEST_LOG_TEXT"
REPLICA_MARK = "#"
ERROR_CHARS = 300

logger = logging.getLogger("loradeploy_request_log")


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _get(value: object, name: str) -> Any:
    """``value[name]`` or ``value.name`` (LiteLLM hands over both dicts and objects)."""
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def _seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _short(text: object) -> str | None:
    if text is None:
        return None
    flat = " ".join(str(text).split())
    return flat[:ERROR_CHARS] if flat else None


def _asked(kwargs: Mapping[str, Any]) -> object:
    """What the client asked: the chat messages, else the prompt (text completions)."""
    messages = kwargs.get("messages")
    return messages if messages is not None else kwargs.get("prompt", kwargs.get("input"))


def request_key(asked: object) -> str:
    """sha256 of the request's messages or prompt as canonical JSON: the same for a live
    request and its mirrored copy, which pairs their answers."""
    text = json.dumps(asked, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_text(asked: object) -> str | None:
    if asked is None:
        return None
    if isinstance(asked, str):
        return asked
    if isinstance(asked, list) and asked and isinstance(_get(asked[-1], "content"), str):
        return str(_get(asked[-1], "content"))
    return json.dumps(asked, ensure_ascii=False, default=str)


def answer_text(response: object) -> str | None:
    choices = _get(response, "choices")
    if not isinstance(choices, list) or not choices:
        return None
    first = choices[0]
    content = _get(_get(first, "message"), "content")
    if isinstance(content, str):
        return content
    text = _get(first, "text")
    return text if isinstance(text, str) else None


def _metadata(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    params = _mapping(kwargs.get("litellm_params"))
    return _mapping(params.get("metadata")) or _mapping(params.get("litellm_metadata"))


def build_record(
    kwargs: Mapping[str, Any],
    response: object,
    start: object,
    end: object,
    *,
    ok: bool,
    with_text: bool,
) -> dict[str, Any]:
    """The log record of one finished request, from what LiteLLM hands its callbacks."""
    payload = _mapping(kwargs.get("standard_logging_object"))
    metadata = _metadata(kwargs)
    params = _mapping(kwargs.get("litellm_params"))
    entry = (
        payload.get("model_id")
        or _get(params.get("model_info"), "id")
        or _get(metadata.get("model_info"), "id")
    )
    entry = entry if isinstance(entry, str) and entry else None
    stable = metadata.get("model_group") or payload.get("model_group")
    shadow = bool(metadata.get("is_silent_experiment")) or bool(
        _mapping(payload.get("metadata")).get("is_silent_experiment")
    )
    exception = kwargs.get("exception")
    status = _get(exception, "status_code") if not ok else 200
    error = None
    if not ok:
        error = _short(payload.get("error_str")) or _short(
            f"{type(exception).__name__}: {exception}" if exception is not None else "failed"
        )
    asked = _asked(kwargs)
    record: dict[str, Any] = {
        "v": RECORD_VERSION,
        "start": _seconds(payload.get("startTime")) or _seconds(start),
        "end": _seconds(payload.get("endTime")) or _seconds(end),
        "stable": stable if isinstance(stable, str) and stable else None,
        "entry": entry,
        "name": entry.split(REPLICA_MARK, 1)[0] if entry else None,
        "ok": ok,
        "status": status if isinstance(status, int) and not isinstance(status, bool) else None,
        "error": error,
        "prompt_tokens": _count(payload.get("prompt_tokens")) if ok else None,
        "completion_tokens": _count(payload.get("completion_tokens")) if ok else None,
        "shadow": shadow,
        "key": request_key(asked) if asked is not None else None,
        "prompt": prompt_text(asked) if with_text else None,
        "answer": answer_text(response) if with_text and ok else None,
    }
    if ok and record["prompt_tokens"] is None:
        usage = _get(response, "usage")
        record["prompt_tokens"] = _count(_get(usage, "prompt_tokens"))
        record["completion_tokens"] = _count(_get(usage, "completion_tokens"))
    return record


def append_line(path: str, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one line with one ``os.write`` (``O_APPEND``)."""
    line = (json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        written = os.write(descriptor, line)
        if written != len(line):
            raise OSError(f"short write ({written} of {len(line)} bytes)")
    finally:
        os.close(descriptor)


class RequestLogger(CustomLogger):  # type: ignore[misc]
    """Writes one record per finished request; reads its environment per event (the
    constructor does no I/O)."""

    def _log(self, kwargs: Any, response: object, start: object, end: object, *, ok: bool) -> None:
        path = os.environ.get(LOG_ENV)
        if not path or not isinstance(kwargs, Mapping):
            return
        try:
            record = build_record(
                kwargs, response, start, end, ok=ok, with_text=os.environ.get(TEXT_ENV) == "1"
            )
            append_line(path, record)
        except (OSError, TypeError, ValueError) as exc:
            logger.warning("request log %s: record not written: %s", path, exc)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._log(kwargs, response_obj, start_time, end_time, ok=True)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._log(kwargs, response_obj, start_time, end_time, ok=False)


request_logger = RequestLogger()

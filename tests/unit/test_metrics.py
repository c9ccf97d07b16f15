"""domain/metrics.py and steps/metrics.py: routed mode's figures in Prometheus's text
format, from request records, named fake replicas (FakeReplica) and routes; the parser of
prometheus-client reads every rendering back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loradeploy.clients.request_log import RequestLog
from loradeploy.domain.metrics import Snapshot, render
from loradeploy.domain.traffic import RequestRecord
from loradeploy.errors import ServerUnavailableError
from loradeploy.steps.metrics import served_versions, snapshot


def rec(
    name: str | None, *, ok: bool = True, took: float = 0.3, shadow: bool = False, stable: str = "m-live"
) -> RequestRecord:
    return RequestRecord(
        v=1,
        start=100.0,
        end=100.0 + took,
        stable=stable,
        entry=name,
        name=name,
        ok=ok,
        status=200 if ok else 500,
        prompt_tokens=10 if ok else None,
        completion_tokens=4 if ok else None,
        shadow=shadow,
    )


class FakeReplica:
    """A replica's /v1/models: the adapters it serves, or no answer."""

    def __init__(self, base_url: str, names: list[str] | None) -> None:
        self.base_url, self.names = base_url, names

    def adapters(self) -> dict[str, object]:
        if self.names is None:
            raise ServerUnavailableError(f"vLLM at {self.base_url} did not answer")
        return dict.fromkeys(self.names)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def key(metric: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return metric, tuple(sorted(labels.items()))


def test_requests_errors_latency_and_tokens_per_version() -> None:
    records = [rec("m@v1", took=0.3), rec("m@v1", took=2.0), rec("m@v1", ok=False), rec("m@v2", took=0.04)]
    records.append(rec("m@v2", shadow=True, stable="m-cand"))
    got = samples(render(Snapshot(records=records, skipped_lines=2)))
    v1 = {"name": "m@v1", "shadow": "false", "stable": "m-live"}
    assert got[key("loradeploy_requests_total", **v1)] == 3
    assert got[key("loradeploy_request_errors_total", **v1)] == 1
    assert got[key("loradeploy_prompt_tokens_total", **v1)] == 20
    assert got[key("loradeploy_completion_tokens_total", **v1)] == 8
    assert got[key("loradeploy_request_latency_seconds_count", **v1)] == 2  # successful only
    assert got[key("loradeploy_request_latency_seconds_sum", **v1)] == pytest.approx(2.3)
    assert got[key("loradeploy_request_latency_seconds_bucket", **v1, le="0.5")] == 1
    assert got[key("loradeploy_request_latency_seconds_bucket", **v1, le="2.5")] == 2
    assert got[key("loradeploy_request_latency_seconds_bucket", **v1, le="+Inf")] == 2
    v2 = {"name": "m@v2", "shadow": "false", "stable": "m-live"}
    assert got[key("loradeploy_request_latency_seconds_bucket", **v2, le="0.05")] == 1
    assert got[key("loradeploy_requests_total", name="m@v2", shadow="true", stable="m-cand")] == 1
    assert got[key("loradeploy_request_log_skipped_lines")] == 2


def test_a_request_that_reached_no_version_counts_under_an_empty_name() -> None:
    got = samples(render(Snapshot(records=[rec(None, ok=False, stable="")])))
    assert got[key("loradeploy_request_errors_total", name="", shadow="false", stable="")] == 1


def test_residency_routes_and_unserved_routed_versions() -> None:
    replicas = [
        FakeReplica("http://a", ["m@v1", "m@v2", "live", "other-adapter"]),
        FakeReplica("http://b", ["m@v1"]),
        FakeReplica("http://c", None),
    ]
    routes = {"m-live": {"m@v1": 90, "m@v2": 10}}
    got = samples(render(Snapshot(served=served_versions(replicas), routes=routes)))
    assert got[key("loradeploy_served", name="m@v2", replica="http://a")] == 1
    assert got[key("loradeploy_served", name="m@v2", replica="http://b")] == 0
    assert key("loradeploy_served", name="live", replica="http://a") not in got  # not a versioned name
    assert key("loradeploy_served", name="m@v1", replica="http://c") not in got  # did not answer
    assert got[key("loradeploy_replica_up", replica="http://c")] == 0
    assert got[key("loradeploy_replica_up", replica="http://a")] == 1
    assert got[key("loradeploy_route_weight", name="m@v2", stable="m-live")] == 10
    assert got[key("loradeploy_route_unserved_replicas", name="m@v2", stable="m-live")] == 1
    assert got[key("loradeploy_route_unserved_replicas", name="m@v1", stable="m-live")] == 0


def test_hostile_label_values_are_escaped() -> None:
    text = render(Snapshot(records=[rec('m@v1"}\nfake_metric 1', stable="a\\b")]))
    assert "\nfake_metric 1" not in text
    got = samples(text)
    assert (
        got[key("loradeploy_requests_total", name='m@v1"}\nfake_metric 1', shadow="false", stable="a\\b")]
        == 1
    )


def test_the_step_reads_the_log_the_replicas_and_the_routes(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    line = rec("m@v1").model_dump_json()
    path.write_text(f"{line}\nnot json\n{line}\n", encoding="utf-8")
    taken = snapshot(RequestLog(path), [FakeReplica("http://a", ["m@v1"])], lambda: {"m-live": {"m@v1": 100}})
    assert (len(taken.records), taken.skipped_lines) == (2, 1)
    assert taken.served == {"http://a": frozenset({"m@v1"})}
    got = samples(render(taken))
    assert got[key("loradeploy_requests_total", name="m@v1", shadow="false", stable="m-live")] == 2
    assert json.loads(line)["v"] == 1


def test_listen_serves_a_fresh_reading_for_every_scrape() -> None:
    import socket
    import threading

    import httpx

    from loradeploy.cli.metrics_command import serve
    from loradeploy.domain.metrics import registry_of

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    records: list[RequestRecord] = []
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(port, registry_of(lambda: Snapshot(records=records)), stop))
    thread.start()
    try:
        counted = []
        for _ in range(2):
            records.append(rec("m@v1"))
            for _attempt in range(100):
                try:
                    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                    break
                except httpx.ConnectError:
                    stop.wait(0.05)
            counted.append(
                samples(text)[key("loradeploy_requests_total", name="m@v1", shadow="false", stable="m-live")]
            )
        assert counted == [1, 2]
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


class FakeAudit:
    """The audit history's search: runs as MLflow returns them (tags, params, start time)."""

    def __init__(self, runs: list[tuple[str, str, str, str, str]]) -> None:
        self.runs = [
            {
                "tags": {"loradeploy.model": model, "loradeploy.alias": alias, "loradeploy.step": step},
                "params": {"from_version": old, "to_version": new, "reason": "r"},
                "start_time": "1796000000000",
            }
            for model, alias, step, old, new in runs
        ]

    def record_action(self, **_: object) -> str:
        raise AssertionError("metrics never writes the history")

    def search_actions(self, *, experiment: str, filter_string: str) -> list[dict[str, object]]:
        return [run for run in self.runs if f"= '{run['tags']['loradeploy.model']}'" in filter_string]


def test_alias_moves_are_counted_per_model_alias_and_step(tmp_path: Path) -> None:
    audit = FakeAudit(
        [
            ("m", "live", "promote-adapter", "1", "2"),
            ("m", "live", "promote-adapter", "2", "3"),
            ("m", "live", "rollback", "3", "2"),
            ("m", "(abandon)", "unlock", "", ""),  # a decision, not a move
            ("other", "live", "promote-adapter", "1", "2"),  # not asked for
        ]
    )
    taken = snapshot(RequestLog(tmp_path / "none.jsonl"), [], dict, audit=audit, models=["m"])
    got = samples(render(taken))
    assert got[key("loradeploy_alias_moves_total", model="m", alias="live", step="promote-adapter")] == 2
    assert got[key("loradeploy_alias_moves_total", model="m", alias="live", step="rollback")] == 1
    assert not [name for name, labels in got if dict(labels).get("model") == "other"]
    assert not [name for name, labels in got if dict(labels).get("alias") == "(abandon)"]
    assert "loradeploy_alias_moves" not in render(Snapshot())  # no model asked for: no family

"""clients/prometheus.py against ``support.fake_prometheus.FakePrometheus``, an
``httpx.MockTransport`` handler that answers the instant queries the client sends from a
table of figures (no Prometheus runs here: the queries were never evaluated by a real one)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from loradeploy.clients.prometheus import (
    ERRORS,
    REQUESTS,
    PrometheusFigures,
    count_query,
    quantile_query,
    window_seconds,
)
from loradeploy.errors import ExitCode, PermanentError, ServerUnavailableError
from support.fake_prometheus import FakePrometheus

URL = "http://prometheus.test:9090"


def figures_of(handler: Any) -> PrometheusFigures:
    return PrometheusFigures(URL + "/", http=httpx.Client(transport=httpx.MockTransport(handler)))


def test_a_window_is_read_as_counts_and_percentiles_per_versioned_name() -> None:
    fake = FakePrometheus(
        counts={(REQUESTS, "m@v1"): 200.0, (ERRORS, "m@v1"): 1.0, (REQUESTS, "m@v2"): 10.6},
        quantiles={
            (0.5, "m@v1"): "0.12",
            (0.95, "m@v1"): "0.4",
            (0.5, "m@v2"): "0.2",
            (0.95, "m@v2"): "+Inf",
        },
    )
    seen = figures_of(fake.handler).window(["m@v2", "m@v1"], 1000.0, 1059.5)
    assert seen["m@v1"].requests == 200 and seen["m@v1"].errors == 1
    assert (seen["m@v1"].p(50), seen["m@v1"].p(95)) == (0.12, 0.4)
    assert seen["m@v2"].requests == 11 and seen["m@v2"].errors == 0  # extrapolated increase, rounded
    assert seen["m@v2"].p(95) == float("inf")  # beyond the last bucket: slower than any bound
    assert {q["time"] for q in fake.queries} == {"1059.500"}
    assert all("[60s]" in q["query"] for q in fake.queries)
    assert len(fake.queries) == 8


def test_a_name_without_series_is_an_empty_window_without_percentiles() -> None:
    seen = figures_of(FakePrometheus().handler).window(["m@v3"], 0.0, 30.0)["m@v3"]
    assert seen.requests == 0 and not seen.has_latencies and not seen.latency_missing


def test_the_queries_name_the_extensions_metrics_and_target_label() -> None:
    assert count_query(REQUESTS, "m@v2", 60) == (
        'sum(increase(inference_objective_request_total{target_model_name="m@v2"}[60s]))'
    )
    assert quantile_query(0.95, "m@v2", 60) == (
        "histogram_quantile(0.95, sum by (le) "
        '(increase(inference_objective_request_duration_seconds_bucket{target_model_name="m@v2"}[60s])))'
    )
    assert window_seconds(10.0, 10.2) == 1 and window_seconds(0.0, 60.0) == 60


def test_answers_are_never_in_the_metrics() -> None:
    assert figures_of(FakePrometheus().handler).answers(["m@v1"], 0.0, 60.0) == []


def _raise_connect(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    ("handler", "error", "text"),
    [
        (_raise_connect, ServerUnavailableError, "unreachable (ConnectError)"),
        (lambda r: httpx.Response(503, text="too many queries"), ServerUnavailableError, "answered 503"),
        (
            lambda r: httpx.Response(
                400, json={"status": "error", "errorType": "bad_data", "error": "parse"}
            ),
            PermanentError,
            "HTTP 400: parse",
        ),
        (lambda r: httpx.Response(200, text="<html>login</html>"), PermanentError, "HTTP 200"),
        (
            lambda r: httpx.Response(
                200, json={"status": "success", "data": {"resultType": "matrix", "result": []}}
            ),
            PermanentError,
            "not a vector",
        ),
        (
            lambda r: httpx.Response(
                200,
                json={
                    "status": "success",
                    "data": {"resultType": "vector", "result": [{"value": [1, "1"]}, {"value": [1, "2"]}]},
                },
            ),
            PermanentError,
            "2 series",
        ),
        (
            lambda r: httpx.Response(
                200,
                json={"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "x"]}]}},
            ),
            PermanentError,
            "sample",
        ),
        (
            lambda r: httpx.Response(
                200,
                json={
                    "status": "success",
                    "data": {"resultType": "vector", "result": [{"value": [1, "-3"]}]},
                },
            ),
            PermanentError,
            "value -3",
        ),
    ],
)
def test_prometheus_errors_become_the_projects_errors(
    handler: Any, error: type[Exception], text: str
) -> None:
    with pytest.raises(error) as raised:
        figures_of(handler).window(["m@v2"], 0.0, 60.0)
    message = str(raised.value)
    assert text in message and URL in message and "\n" not in message
    assert raised.value.hint  # type: ignore[attr-defined]
    expected = ExitCode.TRANSIENT if error is ServerUnavailableError else ExitCode.PERMANENT
    assert raised.value.exit_code == expected  # type: ignore[attr-defined]

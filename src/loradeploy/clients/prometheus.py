"""A canary's live figures on Kubernetes: the Gateway API Inference Extension's own
metrics, read from Prometheus's HTTP API (``GET /api/v1/query`` at ``time=end``).

The endpoint picker counts every request by the name the client called (``model_name``)
and the name it was rewritten to (``target_model_name``: the versioned name, e.g.
``aws-rag-qa@v7``). Per versioned name and window ``[start, end)`` (``W`` = its length
in whole seconds, rounded up), summed over the other labels:

- requests: ``increase(inference_objective_request_total[Ws])``
- errors: ``increase(inference_objective_request_error_total[Ws])``
- p50, p95: ``histogram_quantile(q, increase(inference_objective_request_duration_seconds_bucket[Ws]))``

Names and labels as the extension's release v1.5.0 defines them (``pkg/epp/metrics``),
the release whose ``InferenceModelRewrite`` this project writes. The histogram holds
every response that finished, so its percentiles include failed ones; the successful
count is requests minus errors. No answer text is there, so ``answers`` is always empty
(live quality needs the local router's request log).

Errors: Prometheus unreachable, timing out or answering 5xx is a
``ServerUnavailableError`` (exit 75, retry); a 4xx, an ``"error"`` status or an answer
that is not a vector of numbers is a ``PermanentError``. Validated offline only: the
tests answer with ``httpx.MockTransport`` (a fake Prometheus), never a real server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import httpx

from loradeploy.domain.canary import LatencySummary, LiveAnswer, VersionWindow
from loradeploy.errors import PermanentError, ServerUnavailableError, short

REQUESTS = "inference_objective_request_total"
ERRORS = "inference_objective_request_error_total"
DURATION = "inference_objective_request_duration_seconds_bucket"
TARGET = "target_model_name"
QUERY_PATH = "/api/v1/query"


def window_seconds(start: float, end: float) -> int:
    """The range selector's length: the window in whole seconds, at least 1."""
    return max(1, math.ceil(end - start))


def _selector(metric: str, name: str, seconds: int) -> str:
    return f"{metric}{{{TARGET}={json.dumps(name)}}}[{seconds}s]"


def count_query(metric: str, name: str, seconds: int) -> str:
    return f"sum(increase({_selector(metric, name, seconds)}))"


def quantile_query(q: float, name: str, seconds: int) -> str:
    return f"histogram_quantile({q:g}, sum by (le) (increase({_selector(DURATION, name, seconds)})))"


class PrometheusFigures:
    """Per-version windows from the Inference Extension's metrics (the ``Figures`` the
    canary step reads). The constructor does no I/O."""

    def __init__(self, url: str, *, http: httpx.Client | None = None, verify: bool | str = True) -> None:
        self.url = url.rstrip("/")
        self.http = http or httpx.Client(timeout=httpx.Timeout(10.0, connect=3.0), verify=verify)

    def close(self) -> None:
        self.http.close()

    def query(self, promql: str, at: float) -> float | None:
        """The one value of an instant query at ``at``; None for an empty vector or NaN
        (no series in the window, or a histogram with nothing in it)."""
        endpoint = f"{self.url}{QUERY_PATH}"
        hint = "check --prometheus-url (LORADEPLOY_PROMETHEUS_URL) and that Prometheus is up, then rerun"
        try:
            response = self.http.get(endpoint, params={"query": promql, "time": f"{at:.3f}"})
        except httpx.HTTPError as exc:
            raise ServerUnavailableError(
                f"Prometheus at {self.url} is unreachable ({type(exc).__name__})", hint=hint
            ) from exc
        if response.status_code >= 500:
            raise ServerUnavailableError(
                f"Prometheus at {self.url} answered {response.status_code}: {short(response.text)}", hint=hint
            )
        bad = f"Prometheus at {self.url} did not answer the query {promql!r} with a number"
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            said = body.get("error") if isinstance(body, dict) else None
            raise PermanentError(
                f"{bad} (HTTP {response.status_code}: {short(str(said or response.text))})",
                hint="check that the URL is Prometheus's and that it scrapes the Inference Extension",
            )
        return _value(body.get("data"), bad)

    def window(self, names: Sequence[str], start: float, end: float) -> dict[str, VersionWindow]:
        seconds = window_seconds(start, end)
        result: dict[str, VersionWindow] = {}
        for name in names:
            requests = _count(self.query(count_query(REQUESTS, name, seconds), end))
            errors = _count(self.query(count_query(ERRORS, name, seconds), end))
            p50 = self.query(quantile_query(0.5, name, seconds), end)
            p95 = self.query(quantile_query(0.95, name, seconds), end)
            summary = LatencySummary(succeeded=max(requests - errors, 0), p50_s=p50, p95_s=p95)
            result[name] = VersionWindow(name=name, summary=summary, errors=errors)
        return result

    def answers(self, names: Sequence[str], start: float, end: float) -> list[LiveAnswer]:
        """No answer text is in the metrics: live quality cannot be scored from them."""
        return []


def _count(value: float | None) -> int:
    """A counter's increase over the window as a whole number of requests (Prometheus
    extrapolates to the window's edges, so the increase need not be whole)."""
    if value is not None and math.isinf(value):
        raise PermanentError(
            "Prometheus answered an infinite request count",
            hint="check the Inference Extension's inference_objective_* counters",
        )
    return 0 if value is None else round(value)


def _value(data: Any, bad: str) -> float | None:
    hint = "check that the URL is Prometheus's HTTP API (it answers /api/v1/query)"
    if (
        not isinstance(data, dict)
        or data.get("resultType") != "vector"
        or not isinstance(data.get("result"), list)
    ):
        raise PermanentError(f"{bad} (not a vector)", hint=hint)
    result = data["result"]
    if not result:
        return None
    if len(result) != 1:
        raise PermanentError(f"{bad} ({len(result)} series, expected one)", hint=hint)
    sample = result[0].get("value") if isinstance(result[0], dict) else None
    try:
        value = float(sample[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError, KeyError):
        raise PermanentError(f"{bad} (sample {short(str(sample), 60)})", hint=hint) from None
    if math.isnan(value):
        return None
    if value < 0:  # +Inf is a quantile beyond the histogram's last bucket: slower than any bound
        raise PermanentError(f"{bad} (value {value})", hint=hint)
    return value

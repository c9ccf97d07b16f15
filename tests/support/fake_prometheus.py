"""FakePrometheus: an ``httpx.MockTransport`` handler answering the instant queries
``clients/prometheus.py`` sends (``/api/v1/query``), from a table of figures or from
simulated traffic. A test double: no Prometheus evaluates these queries here, so what
the tests show about them is validated offline only."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from loradeploy.clients.prometheus import DURATION, ERRORS, REQUESTS

_SELECTOR = r'(\w+)\{target_model_name="([^"]+)"\}\[(\d+)s\]'
_COUNT = re.compile(rf"sum\(increase\({_SELECTOR}\)\)")
_QUANTILE = re.compile(rf"histogram_quantile\(([0-9.]+), sum by \(le\) \(increase\({_SELECTOR}\)\)\)")


@dataclass
class FakePrometheus:
    """Figures per (metric, versioned name) and (quantile, name); every query is kept."""

    counts: dict[tuple[str, str], float] = field(default_factory=dict)
    quantiles: dict[tuple[float, str], str] = field(default_factory=dict)
    queries: list[dict[str, str]] = field(default_factory=list)

    def count(self, metric: str, name: str, seconds: int, at: float) -> float | None:
        return self.counts.get((metric, name))

    def quantile(self, q: float, name: str, seconds: int, at: float) -> str:
        return self.quantiles.get((q, name), "NaN")

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query"
        params = dict(request.url.params)
        self.queries.append(params)
        query, at = params["query"], float(params["time"])
        if match := _COUNT.fullmatch(query):
            value = self.count(match[1], match[2], int(match[3]), at)
            result = [] if value is None else [{"metric": {}, "value": [at, str(value)]}]
        elif (match := _QUANTILE.fullmatch(query)) and match[2] == DURATION:
            text = self.quantile(float(match[1]), match[3], int(match[4]), at)
            result = [{"metric": {}, "value": [at, text]}]
        else:
            body = {"status": "error", "errorType": "bad_data", "error": "parse error"}
            return httpx.Response(400, json=body)
        data = {"resultType": "vector", "result": result}
        return httpx.Response(200, json={"status": "success", "data": data})


@dataclass
class FakeTrafficPrometheus(FakePrometheus):
    """``rate`` requests per second of one stable name, split by the weights ``weights()``
    returns now; each versioned name answers in ``latency[name]`` seconds and fails a
    ``error_share[name]`` of its requests."""

    weights: Callable[[], Mapping[str, int]] = dict
    rate: float = 10.0
    latency: dict[str, float] = field(default_factory=dict)
    error_share: dict[str, float] = field(default_factory=dict)

    def _requests(self, name: str, seconds: int) -> float:
        return self.rate * seconds * self.weights().get(name, 0) / 100

    def count(self, metric: str, name: str, seconds: int, at: float) -> float | None:
        requests = self._requests(name, seconds)
        if not requests:
            return None
        return requests if metric == REQUESTS else requests * self.error_share.get(name, 0.0)

    def quantile(self, q: float, name: str, seconds: int, at: float) -> str:
        return str(self.latency[name]) if self._requests(name, seconds) else "NaN"


__all__ = ["ERRORS", "REQUESTS", "FakePrometheus", "FakeTrafficPrometheus"]

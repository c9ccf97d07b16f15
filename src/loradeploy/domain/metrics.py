"""Routed mode's live figures in Prometheus's text format, pure: what the router's
request log says each versioned name did, which replica serves which versioned name,
and the routes with the replicas that do not serve a routed version (routed mode's drift).

Counters count the records of the log (or of the part read), so they only grow while the
log does; a new log starts them again, which Prometheus reads as a counter reset. Labels:
``name`` the versioned name that answered (empty when the request reached no version),
``stable`` the name the client called, ``shadow`` whether it was a mirrored request.
Latencies are of successful requests only, as a canary's analysis counts them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from loradeploy.domain.traffic import RequestRecord

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PREFIX = "loradeploy"


@dataclass(frozen=True)
class Snapshot:
    """What the metrics are made of, read at one moment."""

    records: Sequence[RequestRecord] = ()
    skipped_lines: int = 0  # lines of the log that were not records
    # replica URL -> versioned names it serves; None: the replica did not answer
    served: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    routes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # stable -> {name: weight}
    # (model, alias, step) of every alias move the audit history records, for the models
    # asked for (it records moves, not how long a swap took)
    moves: Sequence[tuple[str, str, str]] = ()


def _labels(record: RequestRecord) -> tuple[str, str, str]:
    return record.name or "", "true" if record.shadow else "false", record.stable or ""


def _buckets(latencies: Sequence[float]) -> list[tuple[str, float]]:
    bounds = [*(str(bound) for bound in LATENCY_BUCKETS_S), "+Inf"]
    counts = [sum(1 for value in latencies if value <= bound) for bound in LATENCY_BUCKETS_S]
    return [*zip(bounds, [*counts, len(latencies)], strict=True)]


def request_families(records: Sequence[RequestRecord], skipped_lines: int) -> list[Metric]:
    labels = ["name", "shadow", "stable"]
    requests = CounterMetricFamily(f"{PREFIX}_requests", "Requests the router finished.", labels=labels)
    errors = CounterMetricFamily(f"{PREFIX}_request_errors", "Requests that failed.", labels=labels)
    latency = HistogramMetricFamily(
        f"{PREFIX}_request_latency_seconds",
        "Seconds from the router receiving a request to its answer (successful requests).",
        labels=labels,
    )
    prompt = CounterMetricFamily(
        f"{PREFIX}_prompt_tokens", "Prompt tokens of successful requests.", labels=labels
    )
    completion = CounterMetricFamily(
        f"{PREFIX}_completion_tokens", "Completion tokens of successful requests.", labels=labels
    )
    counts: Counter[tuple[str, str, str]] = Counter()
    failed: Counter[tuple[str, str, str]] = Counter()
    tokens_in: Counter[tuple[str, str, str]] = Counter()
    tokens_out: Counter[tuple[str, str, str]] = Counter()
    latencies: defaultdict[tuple[str, str, str], list[float]] = defaultdict(list)
    for record in records:
        key = _labels(record)
        counts[key] += 1
        if record.ok:
            latencies[key].append(record.latency_s)
            tokens_in[key] += record.prompt_tokens or 0
            tokens_out[key] += record.completion_tokens or 0
        else:
            failed[key] += 1
    for key in sorted(counts):
        requests.add_metric(list(key), counts[key])
        errors.add_metric(list(key), failed[key])
        prompt.add_metric(list(key), tokens_in[key])
        completion.add_metric(list(key), tokens_out[key])
        latency.add_metric(list(key), _buckets(latencies[key]), sum(latencies[key]))
    skipped = GaugeMetricFamily(
        f"{PREFIX}_request_log_skipped_lines", "Lines of the request log that were not records."
    )
    skipped.add_metric([], skipped_lines)
    return [requests, errors, latency, prompt, completion, skipped]


def serving_families(
    served: Mapping[str, frozenset[str] | None], routes: Mapping[str, Mapping[str, int]]
) -> list[Metric]:
    up = GaugeMetricFamily(
        f"{PREFIX}_replica_up", "1 if the replica answered its list of models.", labels=["replica"]
    )
    resident = GaugeMetricFamily(
        f"{PREFIX}_served",
        "1 if the replica serves the versioned name, 0 if not (replicas that answered).",
        labels=["name", "replica"],
    )
    weight = GaugeMetricFamily(
        f"{PREFIX}_route_weight",
        "Percent of a stable name's requests routed to a version.",
        labels=["name", "stable"],
    )
    unserved = GaugeMetricFamily(
        f"{PREFIX}_route_unserved_replicas",
        "Replicas (of those that answered) that do not serve a version the route sends to.",
        labels=["name", "stable"],
    )
    names = {name for found in served.values() if found for name in found}
    names |= {name for weights in routes.values() for name in weights}
    for replica, found in sorted(served.items()):
        up.add_metric([replica], 0 if found is None else 1)
        if found is not None:
            for name in sorted(names):
                resident.add_metric([name, replica], 1 if name in found else 0)
    answering = [found for found in served.values() if found is not None]
    for stable, weights in sorted(routes.items()):
        for name, percent in sorted(weights.items()):
            weight.add_metric([name, stable], percent)
            unserved.add_metric([name, stable], sum(1 for found in answering if name not in found))
    return [up, resident, weight, unserved]


def move_families(moves: Sequence[tuple[str, str, str]]) -> list[Metric]:
    counted = CounterMetricFamily(
        f"{PREFIX}_alias_moves",
        "Alias moves the audit history records (promotions, rollbacks, route changes).",
        labels=["model", "alias", "step"],
    )
    for (model, alias, step), count in sorted(Counter(moves).items()):
        counted.add_metric([model, alias, step], count)
    return [counted] if moves else []


def families(snapshot: Snapshot) -> list[Metric]:
    return [
        *request_families(snapshot.records, snapshot.skipped_lines),
        *serving_families(snapshot.served, snapshot.routes),
        *move_families(snapshot.moves),
    ]


class SnapshotCollector(Collector):
    """A collector that takes a fresh snapshot on every scrape."""

    def __init__(self, take: Callable[[], Snapshot]) -> None:
        self.take = take

    def collect(self) -> Iterator[Metric]:
        yield from families(self.take())


def registry_of(take: Callable[[], Snapshot]) -> CollectorRegistry:
    """A registry of its own (never the library's global one) holding one collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(take))
    return registry


def render(snapshot: Snapshot) -> str:
    """The Prometheus text format of ``snapshot``."""
    return generate_latest(registry_of(lambda: snapshot)).decode("utf-8")

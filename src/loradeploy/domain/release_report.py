"""One release's evidence as a self-contained HTML page, pure: evidence in, HTML text out.

The evidence is what the registry and the steps' ``result.json`` files already hold
(``ReleaseEvidence``; ``steps.report`` gathers it). The page adds nothing it cannot
point to: a figure nobody recorded is shown as "not recorded", never estimated. The
page loads nothing at view time: CSS is inline, every figure is an SVG in a
``data:`` URI (an ``<img>``, so no figure can run script or clash with another's ids),
and every text from the evidence is HTML-escaped.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any

from pydantic import BaseModel, Field

from loradeploy.domain import plots
from loradeploy.domain.adapter import SHA_TAG_PREFIX, TAG_PREFIX
from loradeploy.domain.layout import parse_root
from loradeploy.domain.signing import SIGNATURE_TAG, recorded_signer
from loradeploy.domain.stats import bootstrap_means
from loradeploy.results import StepResult

NOT_RECORDED = "not recorded"
GATE1_STEP, GATE2_STEP = "compare-decision", "perf-decision"
# Where a judge calibration would be recorded (another issue adds it): the first found wins.
CALIBRATION_KEYS = ("judge_calibration_accuracy", "judge_accuracy")


class FoundResult(BaseModel):
    """A step's ``result.json`` and where it was read from."""

    path: str
    result: StepResult


class TrainingRun(BaseModel):
    run_id: str
    params: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)


class TrafficRequest(BaseModel):
    """One request a client sent while the release ran (the demo's live-slot clients)."""

    start: float  # seconds since the epoch
    latency_s: float
    ok: bool


class ReleaseEvidence(BaseModel):
    model: str
    version: str
    generated_at: str
    generator: str = "loradeploy"
    aliases: dict[str, str] = Field(default_factory=dict)  # the model's aliases now
    version_tags: dict[str, str] = Field(default_factory=dict)
    run_id: str | None = None
    training: TrainingRun | None = None
    steps: list[FoundResult] = Field(default_factory=list)  # this version's, oldest first
    history: list[dict[str, Any]] = Field(default_factory=list)  # the model's audit rows
    traffic: list[TrafficRequest] = Field(default_factory=list)  # recorded client requests
    notes: list[str] = Field(default_factory=list)  # what could not be read, and why


def belongs_to(result: StepResult, model: str, version: str) -> bool:
    """Did this step act on ``model`` ``version``? Its own fields say so, or (a smoke
    test run without ``--model-name``) the served folder it tested does."""
    if result.model == model and result.version == version:
        return True
    if result.version is not None:
        return False
    for key in ("adapter_path", "candidate_root"):
        root = result.details.get(key)
        served = parse_root(root) if isinstance(root, str) else None
        if served is not None and (served.model, served.version) == (model, version):
            return True
    return False


def version_moves(history: Iterable[Mapping[str, Any]], version: str) -> list[Mapping[str, Any]]:
    """The audit rows that moved an alias to or away from ``version``."""
    return [row for row in history if version in (row.get("from_version"), row.get("to_version"))]


# -- HTML pieces ---------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1040px; padding: 16px 24px;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 2px;
     margin-top: 1.6em; } h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 10px; margin-right: 6px;
         font-weight: 600; font-size: 0.9em; white-space: nowrap; }
.pass { background: #dff0d8; color: #2d6a2d; } .fail { background: #f8d7da; color: #8a1f28; }
.none { background: #eee; color: #555; }
.missing { color: #777; font-style: italic; }
figure { margin: 8px 0 16px; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
code { font-size: 0.9em; word-break: break-all; }
footer { margin-top: 2em; font-size: 0.8em; color: #666; }
"""


def _text(value: object) -> str:
    if value is None or value == "":
        return f'<span class="missing">{NOT_RECORDED}</span>'
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return escape(", ".join(str(v) for v in value)) or "-"
    if isinstance(value, dict):
        return escape(", ".join(f"{k}: {v}" for k, v in value.items())) or "-"
    return escape(str(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], *, raw: bool = False) -> str:
    """A table; cells are escaped unless ``raw`` (then they are HTML built here)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell if raw else _text(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _badge(label: str, state: str | None) -> str:
    kind = {"pass": "pass", "fail": "fail"}.get(state or "", "none")
    shown = {"pass": "passed", "fail": "failed"}.get(state or "", state or "not run")
    return f'<span class="badge {kind}">{escape(label)}: {escape(shown)}</span>'


def _figure(svg: str, caption: str, name: str) -> str:
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return (
        f'<figure><img data-figure="{escape(name)}" alt="{escape(caption)}" '
        f'src="data:image/svg+xml;base64,{data}"><figcaption>{escape(caption)}</figcaption></figure>'
    )


def _missing(what: str) -> str:
    return f'<p class="missing">{escape(what)}: {NOT_RECORDED}.</p>'


def _checks(result: StepResult) -> str:
    rows = [
        (
            check.name,
            '<span class="badge pass">pass</span>'
            if check.passed
            else '<span class="badge fail">FAIL</span>',
            _text(check.value),
            _text(check.threshold),
            _text(check.detail or "-"),
        )
        for check in result.checks
    ]
    return _table(["check", "result", "value", "threshold", "detail"], rows, raw=True)


def _latest(steps: Sequence[FoundResult], name: str) -> FoundResult | None:
    found = [s for s in steps if s.result.step == name]
    return found[-1] if found else None


def _gate_state(found: FoundResult | None) -> str | None:
    if found is None:
        return None
    if found.result.status == "error":
        return "error"
    return "pass" if found.result.passed else "fail"


# -- sections ------------------------------------------------------------------------------


def _provenance(evidence: ReleaseEvidence) -> str:
    tags = evidence.version_tags
    described = [
        ("base model", tags.get(f"{TAG_PREFIX}base_model")),
        (
            "LoRA rank / alpha",
            " / ".join(filter(None, (tags.get(f"{TAG_PREFIX}rank"), tags.get(f"{TAG_PREFIX}alpha")))),
        ),
        ("target modules", tags.get(f"{TAG_PREFIX}target_modules")),
        ("adapter bytes", tags.get(f"{TAG_PREFIX}bytes")),
        ("training run", evidence.run_id),
        ("training data", evidence.training.params.get("data") if evidence.training else None),
        ("evaluation data", evidence.training.params.get("eval_data") if evidence.training else None),
        ("signer", recorded_signer(tags) if SIGNATURE_TAG in tags else None),
    ]
    parts = ["<h2>Provenance</h2>", _table(["what", "value"], described)]
    digests = sorted(
        (k.removeprefix(SHA_TAG_PREFIX), v) for k, v in tags.items() if k.startswith(SHA_TAG_PREFIX)
    )
    if digests:
        rows = [(escape(name), f"<code>{escape(digest)}</code>") for name, digest in digests]
        parts += ["<h3>Files (sha256, as registered)</h3>", _table(["file", "sha256"], rows, raw=True)]
    else:
        parts.append(_missing("File digests"))
    if evidence.training and evidence.training.metrics:
        metrics = sorted(evidence.training.metrics.items())
        parts += ["<h3>Training run metrics</h3>", _table(["metric", "value"], metrics)]
    elif evidence.run_id:
        parts.append(_missing("Training run metrics"))
    return "\n".join(parts)


def _replica(entry: object) -> str:
    """A replica as a step records it: its URL, or a swap record naming URL and strategy."""
    if isinstance(entry, dict) and "replica" in entry:
        strategy = entry.get("strategy")
        return f"{entry['replica']} ({strategy})" if strategy else str(entry["replica"])
    return str(entry)


def _replicas(result: StepResult) -> str:
    replicas = result.details.get("replicas")
    if isinstance(replicas, dict | list) and replicas:
        return _text([_replica(entry) for entry in replicas])
    served = [c.name.removeprefix("served:") for c in result.checks if c.name.startswith("served:")]
    return _text(served) if served else "-"


def _steps(evidence: ReleaseEvidence) -> str:
    if not evidence.steps:
        return "<h2>Steps</h2>" + _missing("No step result (result.json) names this version")
    rows = []
    for found in evidence.steps:
        result = found.result
        state = {"ok": "pass", "failed": "fail"}.get(result.status, "fail")
        outcome = f'<span class="badge {state}">{escape(result.status)} (exit {result.exit_code})</span>'
        seconds = sum(result.timings_s.values())
        moves = result.details.get("alias_moves")
        rows.append(
            (
                escape(result.step),
                outcome,
                _text(result.started_at),
                f"{seconds:.1f}" if result.timings_s else _text(None),
                _text(result.slot or "-"),
                _replicas(result),
                _text(moves) if moves else "-",
                _text(result.error or "-"),
            )
        )
    header = ["step", "outcome", "started (UTC)", "seconds", "slot", "replicas", "alias moves", "error"]
    return "<h2>Steps</h2>" + _table(header, rows, raw=True)


def _gate1(found: FoundResult | None) -> str:
    parts = ["<h2>Gate 1: evaluation</h2>"]
    if found is None:
        return "\n".join([*parts, _missing("Gate 1 did not run on this version")])
    result = found.result
    parts.append(_checks(result))
    if result.status == "error" or "questions" not in result.details:
        return "\n".join([*parts, f"<p>Gate 1 ended with an error: {_text(result.error)}</p>"])
    details = result.details
    thresholds, figures = details.get("thresholds", {}), details.get("figures", {})
    questions = details["questions"]
    candidate = [float(q["candidate_f1"]) for q in questions]
    live = [float(q["live_f1"]) for q in questions]
    diffs = [c - b for c, b in zip(candidate, live, strict=True)]
    margin, confidence = float(thresholds.get("margin", 0.0)), float(thresholds.get("confidence", 0.95))
    samples, seed = int(thresholds.get("bootstrap_samples", 2000)), int(thresholds.get("seed", 0))
    low, high = figures.get("f1_diff_ci_low"), figures.get("f1_diff_ci_high")
    parts.append(
        f"<p>Candidate <code>{_text(result.slot)}</code> against <code>{_text(details.get('live_target'))}"
        f"</code> on {len(questions)} questions; judge <code>{_text(details.get('judge_model'))}</code>.</p>"
    )
    if low is not None and high is not None:
        parts.append(
            _figure(
                plots.bootstrap_distribution(
                    bootstrap_means(diffs, samples=samples, seed=seed),
                    observed=sum(diffs) / len(diffs) if diffs else 0.0,
                    low=float(low),
                    high=float(high),
                    margin=margin,
                    confidence=confidence,
                ),
                f"Bootstrap distribution of the mean paired F1 difference ({samples} resamples, seed "
                f"{seed}), drawn again from the recorded per-question F1; the interval is the gate's.",
                "bootstrap",
            )
        )
    else:
        parts.append(_missing("Bootstrap interval"))
    labels = [str(q.get("id", i + 1)) for i, q in enumerate(questions)]
    parts.append(
        _figure(
            plots.paired_differences(labels, candidate, live), "Token F1 difference per question.", "paired"
        )
    )
    parts.append(_judge(questions, figures, thresholds))
    return "\n".join(parts)


def _judge(
    questions: Sequence[Mapping[str, Any]], figures: Mapping[str, Any], thresholds: Mapping[str, Any]
) -> str:
    parts = ["<h3>Judge</h3>"]
    accuracy = next((figures[k] for k in CALIBRATION_KEYS if figures.get(k) is not None), None)
    parts.append(_table(["judge calibration accuracy"], [[accuracy]]))
    scores = [q.get("judge_score") for q in questions]
    if any(score is None for score in scores):
        return "\n".join([*parts, _missing("Judge verdicts")])
    unreadable = int(figures.get("judge_unreadable") or 0)
    counts = {
        "win": sum(s == 1.0 for s in scores),
        "tie": sum(s == 0.5 for s in scores) - unreadable,
        "loss": sum(s == 0.0 for s in scores),
        "unreadable": unreadable,
    }
    win_rate = float(figures.get("win_rate") or 0.0)
    svg = plots.judge_verdicts(
        counts, min_win_rate=float(thresholds.get("min_win_rate", 0.0)), win_rate=win_rate
    )
    parts.append(
        _figure(svg, "Judge verdicts, from the candidate's side (order balanced and seeded).", "judge")
    )
    return "\n".join(parts)


def _gate2(found: FoundResult | None) -> str:
    parts = ["<h2>Gate 2: performance</h2>"]
    if found is None:
        return "\n".join([*parts, _missing("Gate 2 did not run on this version")])
    result = found.result
    parts.append(_checks(result))
    latencies = result.details.get("latencies_s")
    if result.status == "error" or not isinstance(latencies, dict):
        return "\n".join([*parts, f"<p>Gate 2 ended with an error: {_text(result.error)}</p>"])
    thresholds, figures = result.details.get("thresholds", {}), result.details.get("figures", {})
    load = result.details.get("load", {})
    parts.append(
        f"<p>{_text(load.get('requests_per_slot'))} requests per slot, {_text(load.get('concurrency'))} at a "
        f"time, {_text(load.get('max_tokens'))} tokens each; live target "
        f"<code>{_text(result.details.get('live_target'))}</code>.</p>"
    )

    def limit(percentile: str, ratio_key: str) -> float | None:
        live_value, ratio = figures.get(f"live_{percentile}_s"), thresholds.get(ratio_key)
        return None if live_value is None or ratio is None else float(live_value) * float(ratio)

    svg = plots.latency_ecdf(
        [float(x) for x in latencies.get("candidate", [])],
        [float(x) for x in latencies.get("live", [])],
        p50_limit=limit("p50", "max_p50_ratio"),
        p95_limit=limit("p95", "max_p95_ratio"),
    )
    parts.append(
        _figure(
            svg,
            "Empirical CDFs of request latency; a limit is live's percentile times the allowed ratio.",
            "latency",
        )
    )
    rounds = result.details.get("rounds")
    if isinstance(rounds, list) and rounds:
        parts.append(_figure(plots.throughput_rounds(rounds), "Completion tokens/s per round.", "throughput"))
    else:
        parts.append(_missing("Throughput per round"))
    return "\n".join(parts)


SWAP_STEPS = ("load-adapter", "promote-adapter")
TRAFFIC_MARGIN_S = 20.0  # shown before the first and after the last swap window


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def swap_windows(steps: Sequence[FoundResult]) -> list[tuple[str, float, float]]:
    """(step, start, end) in epoch seconds of the steps that swapped this version in. A
    step records whole seconds, cut down; the window ends a second after its finish, so
    that it holds the whole step."""
    windows = []
    for found in steps:
        start, end = _epoch(found.result.started_at), _epoch(found.result.finished_at)
        if found.result.step in SWAP_STEPS and start is not None and end is not None:
            windows.append((found.result.step, start, end + 1.0))
    return windows


def _swaps(evidence: ReleaseEvidence) -> str:
    title = "<h2>Swaps under traffic</h2>"
    if not evidence.traffic:
        return title + _missing("Requests around the swaps (no client traffic was given to the report)")
    first = min(r.start for r in evidence.traffic)
    last = max(r.start + r.latency_s for r in evidence.traffic)
    windows = [w for w in swap_windows(evidence.steps) if w[2] >= first and w[1] <= last]
    if not windows:
        return title + _missing(
            "Requests around this version's swaps (none of them ran while traffic was recorded)"
        )
    low = min(w[1] for w in windows) - TRAFFIC_MARGIN_S
    high = max(w[2] for w in windows) + TRAFFIC_MARGIN_S
    shown = [r for r in evidence.traffic if low <= r.start <= high]
    rows = []
    for name, start, end in windows:
        during = [r for r in evidence.traffic if r.start <= end and r.start + r.latency_s >= start]
        rows.append((name, f"{end - start:.0f}", len(during), sum(not r.ok for r in during)))
    svg = plots.traffic_timeline(
        [(r.start - low, r.latency_s, r.ok) for r in shown],
        [(name, start - low, end - low) for name, start, end in windows],
    )
    caption = (
        f"{len(shown)} requests from {TRAFFIC_MARGIN_S:g} s before to {TRAFFIC_MARGIN_S:g} s after "
        "the swaps; a window runs from the step's start to a second after its finish (both "
        "recorded in whole seconds)."
    )
    table = _table(["swap step", "window (s)", "requests in flight during it", "failed"], rows)
    return title + table + _figure(svg, caption, "traffic")


def _moves(evidence: ReleaseEvidence) -> str:
    moves = version_moves(evidence.history, evidence.version)
    if not moves:
        return "<h2>Alias moves</h2>" + _missing("Alias moves of this version in the audit history")
    rows = [
        (
            m.get("when"),
            m.get("alias"),
            m.get("from_version") or "-",
            m.get("to_version") or "-",
            m.get("step"),
            m.get("who"),
            m.get("reason"),
        )
        for m in moves
    ]
    return "<h2>Alias moves</h2>" + _table(
        ["when (UTC)", "alias", "from", "to", "step", "who", "reason"], rows
    )


def build_page(evidence: ReleaseEvidence) -> str:
    """The whole page for one release."""
    gate1, gate2 = _latest(evidence.steps, GATE1_STEP), _latest(evidence.steps, GATE2_STEP)
    naming = sorted(alias for alias, version in evidence.aliases.items() if version == evidence.version)
    title = f"Release report: {evidence.model} version {evidence.version}"
    header = (
        f"<h1>{escape(title)}</h1>"
        f"<p>{_badge('Gate 1', _gate_state(gate1))}{_badge('Gate 2', _gate_state(gate2))}"
        f'<span class="badge none">aliases now: {escape(", ".join(naming) or "none")}</span></p>'
    )
    notes = "".join(f"<li>{escape(note)}</li>" for note in evidence.notes)
    sources = "".join(f"<li><code>{escape(found.path)}</code></li>" for found in evidence.steps)
    body = "\n".join(
        [
            header,
            _provenance(evidence),
            _steps(evidence),
            _gate1(gate1),
            _gate2(gate2),
            _swaps(evidence),
            _moves(evidence),
            f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "",
            f"<footer>Built {escape(evidence.generated_at)} by {escape(evidence.generator)} from the "
            f"registry and these step results:<ul>{sources}</ul></footer>",
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )

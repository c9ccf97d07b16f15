"""Progressive delivery's decisions, pure: the immutable names a routed release serves,
the weight steps of a canary, the analysis of one window of live figures, what the
canary does next, and what the next run does with a canary that was interrupted.

In routed mode every version is served under its own name (``aws-rag-qa@v7``), loaded
once and never reloaded in place; a router maps the stable name clients call to those
names with weights. A canary moves the candidate's weight up step by step; between two
steps it compares the candidate's figures with the current version's over the same
window, with thresholds like Gate 2's. No evidence is no pass: a window with too few
requests waits, and after ``max_waits`` such windows the canary aborts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from loradeploy.domain.gates import GateDecision, Requests, ceiling_check, floor_check
from loradeploy.domain.names import is_version_number, model_name, slot_name
from loradeploy.domain.scoring import QaExample, token_f1
from loradeploy.domain.stats import paired_bootstrap, ratio
from loradeploy.errors import UsageError
from loradeploy.results import Check

VERSION_MARK = "@v"
_VERSIONED = re.compile(r"(?P<model>.+)@v(?P<version>[1-9][0-9]{0,17})")


def versioned_name(model: str, version: str | int) -> str:
    """The name one version is served under in routed mode, e.g. ``aws-rag-qa@v7``."""
    text = str(version)
    if not is_version_number(text):
        raise UsageError(
            f"version {text!r} of model {model!r} is not a registry version number",
            hint="pass a version such as 7",
        )
    return f"{model_name(model)}{VERSION_MARK}{int(text)}"


def parse_versioned_name(name: str) -> tuple[str, str] | None:
    """``(model, version)`` for a versioned name, None for any other served name (a slot
    of direct mode, another team's adapter), which routed mode never touches."""
    match = _VERSIONED.fullmatch(name)
    if match is None:
        return None
    try:
        model_name(match["model"])
    except UsageError:
        return None
    return match["model"], match["version"]


def parse_steps(text: str) -> list[int]:
    """``--steps`` such as ``5,25,50,100``: whole percentages, strictly increasing, from
    1 to 100, ending at 100 (the step that promotes)."""
    hint = "pass for example --steps=5,25,50,100"
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise UsageError(f"canary steps {text!r} are not whole percentages separated by commas", hint=hint)
    steps = [int(part) for part in parts]
    if any(not 1 <= step <= 100 for step in steps):
        raise UsageError(f"canary steps {text!r} must each be between 1 and 100", hint=hint)
    if any(later <= earlier for earlier, later in pairwise(steps)):
        raise UsageError(f"canary steps {text!r} must increase strictly", hint=hint)
    if steps[-1] != 100:
        raise UsageError(f"canary steps {text!r} must end at 100, the step that promotes", hint=hint)
    return steps


def split(current: str, candidate: str, candidate_percent: int) -> dict[str, int]:
    """Router weights for one step: whole percentages that sum to 100; a name with no
    share is left out (the router sends it nothing)."""
    if current == candidate:
        raise UsageError(
            f"candidate {candidate!r} is the current version: there is nothing to split",
            hint="stage a different version as the candidate",
        )
    if not 0 <= candidate_percent <= 100:
        raise UsageError(f"candidate weight {candidate_percent} is not a percentage", hint="use 0 to 100")
    weights = {current: 100 - candidate_percent, candidate: candidate_percent}
    return {name: weight for name, weight in weights.items() if weight > 0}


class LatencySummary(BaseModel):
    """A window's latencies known only as a distribution (a Prometheus histogram, not
    single requests): how many requests succeeded, and the p50 and p95 estimated from
    the buckets; None when there is no estimate (no finished request in the window)."""

    succeeded: int = Field(default=0, ge=0)
    p50_s: float | None = Field(default=None, ge=0)
    p95_s: float | None = Field(default=None, ge=0)


class VersionWindow(Requests):
    """What one versioned name did during one analysis window: either each successful
    request's latency (``latencies_s``, from the router's request log) or, on a cluster,
    a ``summary`` of counts and percentiles (from the Inference Extension's metrics),
    never both. ``requests``, ``error_rate`` and ``p(50)``/``p(95)`` read either form."""

    name: str
    summary: LatencySummary | None = None

    @model_validator(mode="after")
    def _one_form(self) -> VersionWindow:
        if self.summary is not None and self.latencies_s:
            raise ValueError(f"window of {self.name}: latencies and a summary, give one of them")
        return self

    @property
    def requests(self) -> int:
        return super().requests if self.summary is None else self.summary.succeeded + self.errors

    @property
    def has_latencies(self) -> bool:
        """Latency figures are known (some request succeeded and, for a summary, the
        histogram gave both percentiles)."""
        if self.summary is None:
            return bool(self.latencies_s)
        return self.summary.p50_s is not None and self.summary.p95_s is not None

    @property
    def latency_missing(self) -> bool:
        """Requests succeeded but the histogram gave no percentiles for them (yet)."""
        return self.summary is not None and self.summary.succeeded > 0 and not self.has_latencies

    def p(self, q: float) -> float:
        if self.summary is None:
            return super().p(q)
        known: dict[float, float | None] = {50: self.summary.p50_s, 95: self.summary.p95_s}
        if q not in known:
            raise ValueError(f"window of {self.name}: a summary holds p50 and p95 only, not p{q:g}")
        return known[q] or 0.0


class CanaryThresholds(BaseModel):
    max_error_rate: float = Field(default=0.01, ge=0, le=1)  # share of the candidate's requests
    max_p50_ratio: float = Field(default=1.5, gt=0)  # candidate p50 latency / current p50
    max_p95_ratio: float = Field(default=1.75, gt=0)  # candidate p95 latency / current p95
    min_requests: int = Field(default=20, ge=1)  # per version and window before figures count
    max_waits: int = Field(default=3, ge=0)  # windows one step may wait for min_requests
    # Live quality (when the router keeps answers and reference answers are given): the
    # candidate's mean token F1 minus the current version's, over questions both answered.
    quality_margin: float = Field(default=0.05, ge=0, le=1)  # as Gate 1's non-inferiority margin
    min_questions: int = Field(default=6, ge=2)  # answered by both before quality counts
    confidence: float = Field(default=0.9, gt=0, lt=1)
    seed: int = 0


Verdict = Literal["pass", "fail", "insufficient"]


class LiveAnswer(BaseModel):
    """One answer a versioned name gave to a client, as the router logged it."""

    name: str
    prompt: str  # the request as the router logged it (the messages, as text)
    answer: str


class QualityResult(BaseModel):
    verdict: Verdict
    check: Check


def _question_of(prompt: str, by_length: Sequence[QaExample]) -> QaExample | None:
    """The reference question a logged prompt asks: its text (or its JSON-escaped text)
    appears in the prompt; the longest such question wins."""
    for example in by_length:
        escaped = json.dumps(example.question)[1:-1]
        if example.question in prompt or escaped in prompt:
            return example
    return None


def quality_scores(answers: Sequence[LiveAnswer], references: Sequence[QaExample]) -> dict[str, list[float]]:
    """Token F1 of each live answer against the reference answer of the question it
    asks, per question id; answers to prompts with no reference are left out."""
    by_length = sorted((e for e in references if e.question), key=lambda e: len(e.question), reverse=True)
    scores: dict[str, list[float]] = {}
    for answer in answers:
        example = _question_of(answer.prompt, by_length)
        if example is not None:
            scores.setdefault(example.id, []).append(token_f1(answer.answer, example.answer))
    return scores


def quality_check(
    candidate: Mapping[str, Sequence[float]],
    current: Mapping[str, Sequence[float]],
    thresholds: CanaryThresholds,
) -> QualityResult:
    """Gate 1's non-inferiority test on live answers: per question both versions
    answered, the mean F1 of each; a paired bootstrap interval of the difference. The
    candidate passes when the interval's low end is above ``-quality_margin``, fails
    when even its high end is below it, and otherwise the window is no evidence yet."""
    shared = sorted(set(candidate) & set(current))
    margin = thresholds.quality_margin
    if len(shared) < thresholds.min_questions:
        detail = f"{len(shared)} questions answered by both versions, fewer than {thresholds.min_questions}"
        return QualityResult(
            verdict="insufficient", check=Check(name="live-quality", passed=False, detail=detail)
        )
    cand = [sum(candidate[q]) / len(candidate[q]) for q in shared]
    cur = [sum(current[q]) / len(current[q]) for q in shared]
    interval = paired_bootstrap(cand, cur, confidence=thresholds.confidence, seed=thresholds.seed)
    detail = (
        f"mean token F1 {sum(cand) / len(cand):.3f} vs {sum(cur) / len(cur):.3f} on {len(shared)} questions; "
        f"difference {interval.mean:+.3f}, {thresholds.confidence:.0%} interval "
        f"[{interval.low:+.3f}, {interval.high:+.3f}], margin -{margin}"
    )
    if interval.low >= -margin:
        verdict: Verdict = "pass"
    elif interval.high < -margin:
        verdict = "fail"
    else:
        verdict = "insufficient"
    check = Check(
        name="live-quality",
        passed=verdict == "pass",
        detail=detail,
        value=round(interval.low, 4),
        threshold=-margin,
    )
    return QualityResult(verdict=verdict, check=check)


class Analysis(BaseModel):
    verdict: Verdict
    decision: GateDecision
    reason: str


def analyse(
    candidate: VersionWindow,
    current: VersionWindow,
    thresholds: CanaryThresholds,
    *,
    quality: QualityResult | None = None,
) -> Analysis:
    """Compare the candidate with the current version over the same window.

    Errors count as soon as they happen: a candidate whose failed requests already
    exceed the ceiling fails even in a window too short for latency figures (a share of
    ``min_requests`` is the least that can be exceeded before the window is full). A
    live quality check (``quality``), when there is one, fails the window on its own;
    when it is inconclusive the window is no evidence yet."""
    least = thresholds.min_requests
    errors_over = candidate.errors > thresholds.max_error_rate * max(candidate.requests, least)
    errors = ceiling_check(
        "error-rate",
        candidate.error_rate,
        thresholds.max_error_rate,
        f"{candidate.errors} of {candidate.requests} candidate requests failed "
        f"(current: {current.errors} of {current.requests})",
    )
    checks = [
        errors.model_copy(update={"passed": not errors_over}),
        floor_check("candidate-requests", candidate.requests, least, f"{candidate.name} in this window"),
        floor_check("current-requests", current.requests, least, f"{current.name} in this window"),
    ]
    missing = [w.name for w in (candidate, current) if w.latency_missing]
    enough = candidate.requests >= least and current.requests >= least and not missing
    if enough:
        p50, p95 = ratio(candidate.p(50), current.p(50)), ratio(candidate.p(95), current.p(95))
        checks += [
            ceiling_check(
                "p50-latency-ratio",
                p50,
                thresholds.max_p50_ratio,
                f"p50 {candidate.p(50):.3f}s vs {current.p(50):.3f}s",
            ),
            ceiling_check(
                "p95-latency-ratio",
                p95,
                thresholds.max_p95_ratio,
                f"p95 {candidate.p(95):.3f}s vs {current.p(95):.3f}s",
            ),
        ]
    if quality is not None:
        checks.append(quality.check)
    figures: dict[str, float | int | None] = {}
    for role, window in (("candidate", candidate), ("current", current)):
        figures.update(
            {
                f"{role}_requests": window.requests,
                f"{role}_errors": window.errors,
                f"{role}_p50_s": round(window.p(50), 4) if window.has_latencies else None,
                f"{role}_p95_s": round(window.p(95), 4) if window.has_latencies else None,
            }
        )
    decision = GateDecision(gate="canary", checks=checks, figures=figures)
    waiting = {"candidate-requests", "current-requests"}
    if quality is not None and quality.verdict == "insufficient":
        waiting.add("live-quality")
    failed = [c.name for c in checks if not c.passed and c.name not in waiting]
    if errors_over or (quality is not None and quality.verdict == "fail") or (enough and failed):
        return Analysis(verdict="fail", decision=decision, reason=f"failed: {', '.join(failed)}")
    if missing:
        return Analysis(
            verdict="insufficient",
            decision=decision,
            reason=f"no latency percentiles yet for {', '.join(missing)} (its histogram is empty)",
        )
    if not enough:
        return Analysis(
            verdict="insufficient",
            decision=decision,
            reason=f"{candidate.requests} candidate and {current.requests} current requests, "
            f"fewer than {least} each",
        )
    if quality is not None and quality.verdict == "insufficient":
        return Analysis(
            verdict="insufficient", decision=decision, reason=f"live quality: {quality.check.detail}"
        )
    return Analysis(verdict="pass", decision=decision, reason="every check passed")


class Action(BaseModel):
    """What the canary does after one window."""

    kind: Literal["advance", "wait", "promote", "abort"]
    candidate_percent: int  # the candidate's weight once the action is done
    reason: str


def next_action(
    steps: Sequence[int], index: int, analysis: Analysis, waits: int, thresholds: CanaryThresholds
) -> Action:
    """After the window at ``steps[index]`` (never the last step, 100, which promotes):
    fail aborts to 0 %; too little traffic waits another window at the same weight, up
    to ``max_waits`` times, then aborts; a pass moves to the next step, or promotes when
    the next step is 100."""
    if not 0 <= index < len(steps) - 1:
        raise ValueError(f"step {index} of {list(steps)} is not one that is analysed")
    here = steps[index]
    if analysis.verdict == "fail":
        return Action(kind="abort", candidate_percent=0, reason=f"at {here} %: {analysis.reason}")
    if analysis.verdict == "insufficient":
        if waits < thresholds.max_waits:
            return Action(kind="wait", candidate_percent=here, reason=f"at {here} %: {analysis.reason}")
        return Action(
            kind="abort",
            candidate_percent=0,
            reason=f"at {here} %: no evidence after {waits + 1} windows ({analysis.reason})",
        )
    following = steps[index + 1]
    if following == 100:
        return Action(kind="promote", candidate_percent=100, reason=f"passed at {here} %")
    return Action(kind="advance", candidate_percent=following, reason=f"passed at {here} %")


class CanaryRecord(BaseModel):
    """What a running canary writes before every weight change, so that the next run or
    ``reconcile`` can finish or undo it."""

    model: str
    stable: str  # the stable name whose weights the canary moves
    current_version: str
    candidate_version: str
    candidate_percent: int = Field(ge=0, le=100)
    run_id: str = ""
    # Set once the analysis failed, before the abort's changes: recovery then finishes
    # the abort (alias canary-failed, the reason in the history), not only the weights.
    failed: str = Field(default="", max_length=2000)

    @model_validator(mode="after")
    def _names(self) -> CanaryRecord:
        """What a canary writes: a model name, a stable name that is a served name but
        not a versioned one, and two registry version numbers."""
        try:
            model_name(self.model)
            slot_name(self.stable)
        except UsageError as exc:
            raise ValueError(exc.message) from None
        if parse_versioned_name(self.stable) is not None:
            raise ValueError(f"stable name {self.stable!r} is a versioned name")
        for version in (self.current_version, self.candidate_version):
            if not is_version_number(version):
                raise ValueError(f"version {version!r} is not a registry version number")
        return self


def recovery(record: CanaryRecord, live_version: str | None) -> Action:
    """An interrupted canary is never left at a half weight: when ``live`` already names
    the candidate the promotion's alias moves were done, so all weight goes to it;
    otherwise all weight goes back to the current version (the candidate is not marked
    failed: it was never judged)."""
    if live_version == record.candidate_version:
        return Action(kind="promote", candidate_percent=100, reason="live names the candidate: finish")
    return Action(
        kind="abort",
        candidate_percent=0,
        reason=f"interrupted at {record.candidate_percent} %: all weight back to v{record.current_version}",
    )

"""Routed mode's canary (``loradeploy canary``): the candidate gets a small share of the
stable name's live traffic, judged on live figures against the current version over the
same window, and either promoted or rolled back by itself.

Under the model's lock, for the whole run:

1. finish or undo a canary an earlier run left (``recover``): never a half weight left;
2. resolve the current version (alias ``live``) and the candidate (``--source-alias``);
   the stable name must route 100 % to the current version, or not exist yet;
3. serve both versions under their versioned names on every replica (``serve``);
4. for each step but the last: write the canary record (a model tag), move the weight,
   wait ``interval``, analyse the window since the weight moved (``domain.canary``:
   errors, p50/p95 ratios and, where the router keeps answers and reference answers are
   given, live quality). Too little evidence waits another interval at the same weight;
5. a failed analysis aborts: all weight back to the current version in one change, the
   candidate gets alias ``canary-failed``, the history says why, exit 1;
6. the last step promotes: the alias moves of ``promote-adapter`` (live, previous,
   staged and gate aliases cleared), then all weight to the candidate. The previous
   version stays loaded, so a rollback is one weight change.

Any failure after the first weight change puts all weight back on the current version
before the error is reported (on the candidate, when the promotion's alias moves all
took effect); if even that fails, if the lock was lost, or if the alias moves were left
half done, the canary record stays for the next run or ``reconcile`` (``recover``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import ValidationError

from loradeploy.clients.registry import MLflowHelper, VersionInfo
from loradeploy.clients.router import Router
from loradeploy.coordination import Actor, Lease, model_lock, move_aliases
from loradeploy.coordination.audit import record_event
from loradeploy.coordination.plans import read_plan
from loradeploy.domain.aliases import CANARY_FAILED, LIVE, AliasMove, plan_promotion
from loradeploy.domain.canary import (
    Action,
    Analysis,
    CanaryRecord,
    CanaryThresholds,
    LiveAnswer,
    VersionWindow,
    analyse,
    next_action,
    parse_versioned_name,
    quality_check,
    quality_scores,
    recovery,
    split,
    versioned_name,
)
from loradeploy.domain.names import Source
from loradeploy.domain.residency import needed, weights_of
from loradeploy.domain.routes import Shadow, describe
from loradeploy.domain.scoring import QaExample
from loradeploy.errors import LoraDeployError, NotFoundError, PermanentError, UsageError
from loradeploy.results import Check, StepResult, Timer
from loradeploy.steps.shadow import ShadowScore

CANARY_TAG = "loradeploy.canary"  # the model tag a running canary keeps its record in
TICK_S = 1.0  # how often a waiting canary checks it still holds the lock


class Figures(Protocol):
    """Where one window's live figures come from (the router's request log; Prometheus
    on a cluster)."""

    def window(self, names: Sequence[str], start: float, end: float) -> dict[str, VersionWindow]: ...

    def answers(self, names: Sequence[str], start: float, end: float) -> list[LiveAnswer]: ...


class ShadowScorer(Protocol):
    """Scores one shadow window (``steps.shadow.score_shadow`` over the request log's
    records, with the judge the command chose)."""

    def __call__(self, stable: str, candidate: str, start: float, end: float) -> ShadowScore: ...


# serve(version, keep, weights, guard): every replica serves the version's versioned name
# (``steps.load_version.serve_version``), checking the lock with ``guard``; returns what
# it did, for the result.
Serve = Callable[[VersionInfo, set[str], Mapping[str, int], Callable[[], None]], Mapping[str, object]]


@dataclass(frozen=True)
class CanaryRequest:
    model: str
    source_alias: str
    stable: str
    steps: Sequence[int]
    interval_s: float
    thresholds: CanaryThresholds = field(default_factory=lambda: CanaryThresholds())
    references: Sequence[QaExample] = ()  # reference answers for live quality, if any
    shadow_percent: int = 0  # mirror this share to the candidate for one phase first
    reason: str = ""


def read_record(registry: MLflowHelper, model: str) -> CanaryRecord | None:
    raw = registry.get_model_tags(model).get(CANARY_TAG)
    if raw is None:
        return None
    hint = f"route the stable name by hand ('loradeploy route'), then delete the tag {CANARY_TAG}"
    try:
        record = CanaryRecord.model_validate_json(raw)
    except ValidationError:
        raise PermanentError(
            f"model {model!r}: the canary record (tag {CANARY_TAG}) cannot be read", hint=hint
        ) from None
    if record.model != model:
        raise PermanentError(
            f"model {model!r}: the canary record (tag {CANARY_TAG}) is one of model {record.model!r}",
            hint=hint,
        )
    return record


def _check_route_is_ours(router: Router, model: str, record: CanaryRecord) -> None:
    """A canary of ``model`` only ever routes its stable name to ``model``'s versions:
    a record naming a stable name that routes anything else is not this model's."""
    route = router.routes().get(record.stable, {})
    if any((parse_versioned_name(name) or ("",))[0] != model for name in route):
        raise PermanentError(
            f"model {model!r}: the canary record (tag {CANARY_TAG}) names stable name "
            f"{record.stable!r}, which routes {describe(route)}, not versions of {model!r}; "
            "nothing was changed",
            hint=f"if no canary of {model!r} runs on {record.stable!r}, delete the tag {CANARY_TAG}; "
            "else route the stable name by hand ('loradeploy route')",
        )


def recover(registry: MLflowHelper, router: Router, model: str, actor: Actor, lease: Lease) -> Action | None:
    """Finish or undo a canary an interrupted run left (the caller holds the lock):
    all weight to the candidate when ``live`` already names it, else back to the
    current version; recorded in the history, then the record is removed."""
    record = read_record(registry, model)
    if record is None:
        return None
    _check_route_is_ours(router, model, record)
    action = recovery(record, registry.get_aliases(model).get(LIVE))
    keep = record.candidate_version if action.kind == "promote" else record.current_version
    lease.ensure_held()
    _route(router, record.stable, {versioned_name(model, keep): 100})
    record_event(registry, model, "canary-recovered", actor, reason=f"{record.stable}: {action.reason}")
    if record.failed and action.kind == "abort":  # the analysis had failed: finish the abort
        _mark_failed(registry, model, record, actor, lease, reason=f"{record.failed} (finished by recovery)")
    lease.ensure_held()
    registry.delete_model_tag(model, CANARY_TAG)
    return action


def _mark_failed(
    registry: MLflowHelper, model: str, record: CanaryRecord, actor: Actor, lease: Lease, *, reason: str
) -> list[AliasMove]:
    """Point alias canary-failed at the candidate, with the reason in the history."""
    failed = registry.get_aliases(model).get(CANARY_FAILED)
    moves = (
        [AliasMove(CANARY_FAILED, failed, record.candidate_version)]
        if failed != record.candidate_version
        else []
    )
    move_aliases(registry, model, moves, actor, lease, reason=reason)
    if not moves:
        record_event(registry, model, "canary-aborted", actor, reason=reason)
    return moves


def _route(router: Router, stable: str, weights: Mapping[str, int], shadow: Shadow | None = None) -> float:
    """Route ``stable`` to ``weights`` (with ``shadow``, else none) in one change; every
    other stable name keeps its route and its shadow. Returns the seconds to confirm."""
    shadows = {name: kept for name, kept in router.shadows().items() if name != stable}
    if shadow is not None:
        shadows[stable] = shadow
    return router.apply({**router.routes(), stable: dict(weights)}, shadows)


def canary(
    request: CanaryRequest,
    *,
    registry: MLflowHelper,
    router: Router,
    figures: Figures,
    serve: Serve,
    actor: Actor,
    shadow: ShadowScorer | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> StepResult:
    model, stable = request.model, request.stable
    result = StepResult(step="canary", model=model, source=f"alias:{request.source_alias}", slot=stable)
    timer = Timer(result.timings_s)
    windows: list[dict[str, object]] = []
    result.details.update(
        {
            "steps": list(request.steps),
            "interval_s": request.interval_s,
            "shadow_percent": request.shadow_percent,
            "thresholds": request.thresholds.model_dump(),
            "windows": windows,
        }
    )
    with model_lock(registry, model, actor) as held:
        with timer("recover"):
            recovered = recover(registry, router, model, actor, held.lease)
        if recovered is not None:
            result.details["recovered"] = recovered.reason
        aliases = registry.get_aliases(model)
        if LIVE not in aliases:
            raise NotFoundError(
                f"model {model!r} has no live version to compare a canary with",
                hint="promote a first version with 'loradeploy promote-adapter', then run the canary",
            )
        current = registry.get_version(model, aliases[LIVE], via=LIVE)
        candidate = registry.resolve(model, Source("alias", request.source_alias))
        if candidate.version == current.version:
            raise UsageError(
                f"alias {request.source_alias!r} of model {model!r} names version {candidate.version}, "
                "which is live already",
                hint="stage a new version first (set-staged-alias), then run the canary",
            )
        result.version = candidate.version
        current_name = versioned_name(model, current.version)
        candidate_name = versioned_name(model, candidate.version)
        routes = router.routes()
        others = sorted(
            name for name in routes.get(stable, {}) if (parse_versioned_name(name) or ("",))[0] != model
        )
        if others:
            raise PermanentError(
                f"stable name {stable!r} routes {', '.join(others)}, not versions of model {model!r}; "
                "the canary did not start",
                hint=f"pass the stable name of {model!r} with --stable-name (default: {model}-live)",
            )
        if routes.get(stable, {current_name: 100}) != {current_name: 100}:
            raise PermanentError(
                f"stable name {stable!r} routes {describe(routes.get(stable))}, not {current_name} 100 % "
                "(the live version); the canary did not start",
                hint=f"route it to the live version first: loradeploy route --stable-name={stable} "
                f"--weights={current_name}=100",
            )
        if request.shadow_percent and shadow is None:
            raise UsageError(
                "--shadow-percent needs the router's request log, which this router has not",
                hint="run the shadow on the local stack's router, or leave --shadow-percent out",
            )
        weights = weights_of(routes)
        keep = needed(model, aliases.values(), weights) | {candidate_name}
        with timer("serve"):
            result.details["served"] = {
                name: dict(serve(version, keep, weights, held.lease.ensure_held))
                for name, version in ((current_name, current), (candidate_name, candidate))
            }
        if stable not in routes:  # the first routed release: clients start on the live version
            with timer("route"):
                _route(router, stable, {current_name: 100})
            routes = router.routes()
        record = CanaryRecord(
            model=model,
            stable=stable,
            current_version=current.version,
            candidate_version=candidate.version,
            candidate_percent=0,
            run_id=actor.run_id,
        )
        run = _Run(request, registry, router, figures, held.lease, result, timer, sleep, clock)
        try:
            outcome = None
            if request.shadow_percent and shadow is not None:
                outcome = run.shadow_phase(record, current_name, candidate_name, shadow)
            if outcome is None:
                outcome = run.steps(record, current_name, candidate_name)
            if outcome.kind == "promote":
                _promote(run, record, aliases, candidate_name, actor, outcome)
            else:
                _abort(run, record, current_name, actor, outcome)
        except BaseException as exc:
            run.back_to_current(record, current_name, exc)
            raise
    if held.release_error:
        result.details.setdefault("warnings", []).append(f"lock not released: {held.release_error}")
    return result


@dataclass
class _Run:
    request: CanaryRequest
    registry: MLflowHelper
    router: Router
    figures: Figures
    lease: Lease
    result: StepResult
    timer: Timer
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    moved: bool = False  # a weight change was made (and is not yet undone)
    promoting: bool = False  # the promotion's alias moves have started

    def set_weight(self, record: CanaryRecord, current: str, candidate: str, percent: int) -> float:
        """Record first, then move: the record always covers the weight being served."""
        self.lease.ensure_held()
        saved = record.model_copy(update={"candidate_percent": percent})
        self.registry.set_model_tag(record.model, CANARY_TAG, saved.model_dump_json())
        self.moved = True
        self.lease.ensure_held()
        return _route(self.router, record.stable, split(current, candidate, percent))

    def shadow_phase(
        self, record: CanaryRecord, current: str, candidate: str, score: ShadowScorer
    ) -> Action | None:
        """Mirror ``shadow_percent`` % of the stable name's requests to the candidate
        (clients only ever see live's answers) and score the pairs; the shadow is
        removed before anything else happens. None: non-inferior, go on to the steps;
        else the abort (not non-inferior, or no evidence after ``max_waits`` windows)."""
        percent, thresholds = self.request.shadow_percent, self.request.thresholds
        self.lease.ensure_held()
        saved = record.model_copy(update={"candidate_percent": 0})
        self.registry.set_model_tag(record.model, CANARY_TAG, saved.model_dump_json())
        self.moved = True  # a shadow is a change too: undone on failure, recovered if killed
        with self.timer("shadow"):
            _route(self.router, record.stable, {current: 100}, Shadow(candidate, percent))
            start, waits = self.clock(), 0
            while True:
                self.wait(self.request.interval_s)
                scored = score(record.stable, candidate, start, self.clock())
                verdict = scored.analysis.verdict
                self.result.details["windows"].append(
                    {
                        "candidate_percent": 0,
                        "shadow_percent": percent,
                        "verdict": verdict,
                        "action": "wait"
                        if verdict == "insufficient" and waits < thresholds.max_waits
                        else ("advance" if verdict == "pass" else "abort"),
                        "reason": scored.analysis.reason,
                        "figures": scored.analysis.decision.figures,
                        "checks": [c.model_dump() for c in scored.analysis.decision.checks],
                    }
                )
                if verdict != "insufficient" or waits >= thresholds.max_waits:
                    break
                waits += 1
            _route(self.router, record.stable, {current: 100})
        self.result.details["shadow"] = scored.model_dump(mode="json", exclude={"pairs"})
        if verdict == "pass":
            return None
        self.result.checks = [
            c.model_copy(update={"name": f"canary-{c.name}"}) for c in scored.analysis.decision.checks
        ]
        why = scored.analysis.reason if verdict == "fail" else f"no evidence after {waits + 1} windows"
        return Action(kind="abort", candidate_percent=0, reason=f"in shadow at {percent} %: {why}")

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, checking the lock every tick (a lost lock stops the canary)."""
        until = self.clock() + seconds
        while (left := until - self.clock()) > 0:
            self.sleep(min(TICK_S, left))
            self.lease.ensure_held()

    def analyse(self, current: str, candidate: str, start: float) -> Analysis:
        end = self.clock()
        names = [candidate, current]
        seen = self.figures.window(names, start, end)
        cand = seen.get(candidate) or VersionWindow(name=candidate)
        cur = seen.get(current) or VersionWindow(name=current)
        quality = None
        if self.request.references:
            answers = self.figures.answers(names, start, end)
            by_name = {n: [a for a in answers if a.name == n] for n in names}
            quality = quality_check(
                quality_scores(by_name[candidate], self.request.references),
                quality_scores(by_name[current], self.request.references),
                self.request.thresholds,
            )
        return analyse(cand, cur, self.request.thresholds, quality=quality)

    def steps(self, record: CanaryRecord, current: str, candidate: str) -> Action:
        """Move through the steps until the canary promotes or aborts."""
        steps, thresholds = list(self.request.steps), self.request.thresholds
        if steps == [100]:
            return Action(kind="promote", candidate_percent=100, reason="a single step of 100 %")
        for index, percent in enumerate(steps[:-1]):
            with self.timer(f"step-{percent}"):
                self.set_weight(record, current, candidate, percent)
                start, waits = self.clock(), 0
                while True:
                    self.wait(self.request.interval_s)
                    analysis = self.analyse(current, candidate, start)
                    action = next_action(steps, index, analysis, waits, thresholds)
                    self.result.details["windows"].append(
                        {
                            "candidate_percent": percent,
                            "verdict": analysis.verdict,
                            "action": action.kind,
                            "reason": action.reason,
                            "figures": analysis.decision.figures,
                            "checks": [c.model_dump() for c in analysis.decision.checks],
                        }
                    )
                    if action.kind != "wait":
                        self.result.checks = [
                            c.model_copy(update={"name": f"canary-{c.name}"})
                            for c in analysis.decision.checks
                        ]
                        break
                    waits += 1
            if action.kind in ("abort", "promote"):
                return action
        raise AssertionError("the last step is 100 and promotes")  # parse_steps guarantees it

    def back_to_current(self, record: CanaryRecord, current: str, cause: BaseException) -> None:
        """After a failure: all weight back on the current version, record removed; when
        that fails too the record stays for the next run or reconcile. A run that lost
        the lock changes nothing more (the record stays for whoever holds it now). A
        failure during the promotion's alias moves: when they all took effect the
        canary is finished (all weight on the candidate, which ``live`` names); when a
        plan of them is left, the record stays for recovery, which finishes the plan
        first."""
        if not self.moved:
            return
        try:
            self.lease.ensure_held()
            keep, done = current, "rolled_back_after"
            if self.promoting:
                if read_plan(self.registry, record.model) is not None:
                    return  # the next lock holder finishes the alias moves, then the record
                if self.registry.get_aliases(record.model).get(LIVE) == record.candidate_version:
                    keep, done = versioned_name(record.model, record.candidate_version), "promoted_after"
            _route(self.router, record.stable, {keep: 100})
            self.registry.delete_model_tag(record.model, CANARY_TAG)
            self.moved = False
            self.result.details[done] = type(cause).__name__
        except LoraDeployError:
            pass  # the record stays: 'loradeploy reconcile' or the next canary finishes it


def _limits(request: CanaryRequest) -> str:
    """The thresholds a decision was made with, for the audit history."""
    t = request.thresholds
    quality = f", live quality margin {t.quality_margin}" if request.references else ""
    return (
        f"steps {','.join(map(str, request.steps))} every {request.interval_s:g}s; errors <= "
        f"{t.max_error_rate:.2%}, p50 x{t.max_p50_ratio}, p95 x{t.max_p95_ratio}, "
        f">= {t.min_requests} requests{quality}"
    )


def _abort(run: _Run, record: CanaryRecord, current: str, actor: Actor, action: Action) -> None:
    decided = run.clock()
    reason = f"canary of v{record.candidate_version} aborted {action.reason} ({_limits(run.request)})"
    with run.timer("abort"):
        run.lease.ensure_held()
        # The verdict is recorded first: if anything below fails, recovery finishes the
        # abort (weights, alias, history) instead of only undoing the weights.
        judged = run.registry.get_model_tags(record.model).get(CANARY_TAG)
        current_record = CanaryRecord.model_validate_json(judged) if judged else record
        run.registry.set_model_tag(
            record.model, CANARY_TAG, current_record.model_copy(update={"failed": reason}).model_dump_json()
        )
        run.moved = False  # from here a failure leaves the judged record for recovery
        _route(run.router, record.stable, {current: 100})
        run.result.details["abort_to_current_s"] = round(run.clock() - decided, 3)
        moves = _mark_failed(run.registry, record.model, record, actor, run.lease, reason=reason)
        run.registry.delete_model_tag(record.model, CANARY_TAG)
    run.result.details.update(
        {"decision": "rolled-back", "reason": action.reason, "alias_moves": [m.describe() for m in moves]}
    )
    if run.result.passed:  # the abort came from waiting too long: say so as a failed check
        run.result.checks.append(Check(name="canary-evidence", passed=False, detail=action.reason))


def _promote(
    run: _Run,
    record: CanaryRecord,
    aliases: Mapping[str, str],
    candidate: str,
    actor: Actor,
    action: Action,
) -> None:
    with run.timer("promote"):
        run.lease.ensure_held()
        run.registry.set_model_tag(
            record.model, CANARY_TAG, record.model_copy(update={"candidate_percent": 100}).model_dump_json()
        )
        run.moved = True
        moves = plan_promotion(aliases, record.candidate_version)
        run.promoting = True
        move_aliases(
            run.registry,
            record.model,
            moves,
            actor,
            run.lease,
            reason=f"{run.request.reason or 'canary passed'} ({action.reason}; {_limits(run.request)})",
            intent=f"canary alias:{run.request.source_alias}",
        )
        # Aliases moved: from here a failure is finished by recovery as a promotion.
        run.moved = False
        _route(run.router, record.stable, {candidate: 100})
        run.registry.delete_model_tag(record.model, CANARY_TAG)
    run.result.details.update(
        {"decision": "promoted", "reason": action.reason, "alias_moves": [m.describe() for m in moves]}
    )

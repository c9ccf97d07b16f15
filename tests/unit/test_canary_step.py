"""steps/canary.py with fakes: FakeAliasRegistry (aliases, tags, lock, history),
FakeRouter (routes in memory, every change kept), FakeFigures (per-version requests in
proportion to the weights being served, with scripted latency, errors and answers) and
FakeClock (sleeps advance it at once). The real router and vLLM:
tests/integration/test_canary.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loradeploy.clients.registry import VersionInfo
from loradeploy.coordination import Actor, model_lock
from loradeploy.coordination.lease import LeaseRecord
from loradeploy.domain.canary import Analysis, CanaryRecord, CanaryThresholds, LiveAnswer, VersionWindow
from loradeploy.domain.gates import GateDecision
from loradeploy.domain.routes import Shadow
from loradeploy.domain.scoring import QaExample
from loradeploy.errors import LockHeldError, LockLostError, PermanentError, ServerUnavailableError, UsageError
from loradeploy.results import Check
from loradeploy.steps.canary import CANARY_TAG, CanaryRequest, canary
from loradeploy.steps.shadow import ShadowScore
from support.fake_registry import FakeAliasRegistry
from support.fakes import FakeClock
from support.synthetic import write_adapter

MODEL, STABLE = "m", "m-live"
V1, V2 = "m@v1", "m@v2"
ACTOR = Actor(who="ops@test", step="canary", run_id="run-1")
QUICK = CanaryThresholds(min_requests=10, max_waits=2)


@dataclass
class FakeRouter:
    """Routes in memory; ``fail_at``: the change with that number (1-based) raises."""

    served: dict[str, dict[str, int]] = field(default_factory=dict)
    mirrored: dict[str, Shadow] = field(default_factory=dict)
    changes: list[dict[str, int]] = field(default_factory=list)
    shadow_changes: list[Shadow | None] = field(default_factory=list)  # STABLE's, per change
    fail_at: set[int] = field(default_factory=set)
    backends: list[str] = field(default_factory=list)

    def routes(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.served.items()}

    def shadows(self) -> dict[str, Shadow]:
        return dict(self.mirrored)

    def apply(
        self,
        routes: Mapping[str, Mapping[str, int]],
        shadows: Mapping[str, Shadow] | None = None,
        *,
        deadline_s: float = 60.0,
    ) -> float:
        if len(self.changes) + 1 in self.fail_at:
            self.fail_at.discard(len(self.changes) + 1)
            raise ServerUnavailableError("router at http://router.test is unreachable (fake)")
        self.served = {k: dict(v) for k, v in routes.items()}
        self.mirrored = dict(shadows or {})
        self.changes.append(dict(self.served.get(STABLE, {})))
        self.shadow_changes.append(self.mirrored.get(STABLE))
        return 0.0


@dataclass
class FakeFigures:
    """``rate`` requests per second of the stable name, split by the weights served."""

    router: FakeRouter
    rate: float = 10.0
    latency: dict[str, float] = field(default_factory=lambda: {V1: 0.1, V2: 0.1})
    error_share: dict[str, float] = field(default_factory=dict)
    answer: dict[str, str] = field(default_factory=lambda: {V1: "it stores objects", V2: "it stores objects"})
    raise_on_call: BaseException | None = None
    before_window: Callable[[], None] | None = None  # runs as each window is read

    def window(self, names: Sequence[str], start: float, end: float) -> dict[str, VersionWindow]:
        if self.before_window is not None:
            self.before_window()
        if self.raise_on_call is not None:
            raise self.raise_on_call
        weights = self.router.served.get(STABLE, {})
        out = {}
        for name in names:
            count = int(self.rate * (end - start) * weights.get(name, 0) / 100)
            errors = int(count * self.error_share.get(name, 0.0))
            out[name] = VersionWindow(
                name=name, latencies_s=[self.latency[name]] * (count - errors), errors=errors
            )
        return out

    def answers(self, names: Sequence[str], start: float, end: float) -> list[LiveAnswer]:
        counts = self.window(names, start, end)
        return [
            LiveAnswer(name=name, prompt=f"question {i % 12}?", answer=self.answer[name])
            for name in names
            for i in range(counts[name].requests)
        ]


@dataclass
class Setup:
    registry: FakeAliasRegistry
    router: FakeRouter
    figures: FakeFigures
    clock: FakeClock
    served: list[str] = field(default_factory=list)

    def serve(
        self, version: VersionInfo, keep: set[str], weights: Mapping[str, int], guard: Callable[[], None]
    ) -> dict[str, object]:
        guard()
        self.served.append(version.version)
        return {"loaded_on": []}

    def run(self, steps: Sequence[int] = (5, 25, 50, 100), shadow=None, **request: object):  # type: ignore[no-untyped-def]
        fields = {"thresholds": QUICK, **request}
        fields.setdefault("stable", STABLE)
        return canary(
            CanaryRequest(model=MODEL, source_alias="staged", steps=steps, interval_s=60, **fields),  # type: ignore[arg-type]
            registry=self.registry,  # type: ignore[arg-type]
            router=self.router,
            figures=self.figures,
            serve=self.serve,
            actor=ACTOR,
            shadow=shadow,
            sleep=self.clock.sleep,
            clock=self.clock,
        )


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    registry = FakeAliasRegistry(MODEL, aliases={"live": "1", "staged": "2"})
    for version in ("1", "2"):
        registry.add_version(version, write_adapter(tmp_path / f"v{version}"))
    router = FakeRouter(
        served={STABLE: {V1: 100}, "other-live": {"other@v3": 100}},
        mirrored={"other-live": Shadow("other@v4", 10)},
    )
    return Setup(registry, router, FakeFigures(router), FakeClock())


def test_a_good_candidate_moves_step_by_step_and_is_promoted(setup: Setup) -> None:
    result = setup.run()
    assert result.passed and result.details["decision"] == "promoted"
    assert setup.router.changes == [{V1: 95, V2: 5}, {V1: 75, V2: 25}, {V1: 50, V2: 50}, {V2: 100}]
    assert setup.router.served["other-live"] == {"other@v3": 100}
    assert setup.router.mirrored == {"other-live": Shadow("other@v4", 10)}  # another name's shadow stays
    assert setup.registry.aliases == {"live": "2", "previous": "1"}
    assert CANARY_TAG not in setup.registry.model_tags
    assert setup.served == ["1", "2"]
    assert [w["action"] for w in result.details["windows"]] == ["advance", "advance", "promote"]


def test_a_candidate_that_fails_requests_is_rolled_back_at_its_first_step(setup: Setup) -> None:
    setup.figures.error_share = {V2: 0.5}
    result = setup.run()
    assert not result.passed and result.details["decision"] == "rolled-back"
    assert setup.router.changes == [{V1: 95, V2: 5}, {V1: 100}]
    assert setup.registry.aliases == {"live": "1", "staged": "2", "canary-failed": "2"}
    assert CANARY_TAG not in setup.registry.model_tags
    assert "error-rate" in result.details["reason"]
    assert result.details["abort_to_current_s"] == 0.0
    assert any("v2 aborted at 5 %" in str(a["params"]) for a in setup.registry.audit)


def test_a_slower_candidate_is_rolled_back(setup: Setup) -> None:
    setup.figures.latency = {V1: 0.1, V2: 0.3}
    result = setup.run()
    assert result.details["decision"] == "rolled-back"
    assert "p50-latency-ratio" in result.details["reason"]


def test_worse_live_answers_roll_back_when_references_are_given(setup: Setup) -> None:
    setup.figures.answer = {V1: "it stores objects", V2: "a poem about the sea"}
    references = [
        QaExample(id=f"q{i}", context="", question=f"question {i}?", answer="it stores objects")
        for i in range(12)
    ]
    result = setup.run(references=references)
    assert result.details["decision"] == "rolled-back"
    assert "live-quality" in result.details["reason"]
    assert setup.router.changes[-1] == {V1: 100}


def test_no_traffic_waits_then_aborts_for_lack_of_evidence(setup: Setup) -> None:
    setup.figures.rate = 0.0
    result = setup.run()
    assert result.details["decision"] == "rolled-back"
    assert [w["action"] for w in result.details["windows"]] == ["wait", "wait", "abort"]
    assert "no evidence" in result.details["reason"]
    assert not result.passed


@pytest.mark.parametrize("interruption", [KeyboardInterrupt(), ServerUnavailableError("log gone (fake)")])
def test_an_interrupted_canary_puts_all_weight_back_before_it_stops(
    setup: Setup, interruption: BaseException
) -> None:
    setup.figures.raise_on_call = interruption
    with pytest.raises(type(interruption)):
        setup.run()
    assert setup.router.served[STABLE] == {V1: 100}
    assert CANARY_TAG not in setup.registry.model_tags
    assert setup.registry.aliases == {"live": "1", "staged": "2"}


def test_a_canary_killed_at_half_weight_is_undone_by_the_next_run(setup: Setup) -> None:
    setup.figures.raise_on_call = ServerUnavailableError("log gone (fake)")
    setup.router.fail_at = {2}  # the rollback itself fails: the record must stay
    with pytest.raises(ServerUnavailableError):
        setup.run()
    assert setup.router.served[STABLE] == {V1: 95, V2: 5}
    record = CanaryRecord.model_validate_json(setup.registry.model_tags[CANARY_TAG])
    assert (record.candidate_percent, record.stable) == (5, STABLE)
    setup.figures.raise_on_call = None
    result = setup.run()
    assert "all weight back to v1" in result.details["recovered"]
    assert result.details["decision"] == "promoted"
    assert any("canary-recovered" in str(a["run_name"]) for a in setup.registry.audit)


def test_a_canary_killed_after_its_alias_moves_is_finished_as_a_promotion(setup: Setup) -> None:
    setup.router.fail_at = {4}  # the last change, after live moved to v2
    with pytest.raises(ServerUnavailableError):
        setup.run()
    assert setup.registry.aliases["live"] == "2"
    assert setup.router.served[STABLE] == {V1: 50, V2: 50}  # never put back on v1: live is v2
    setup.registry.aliases["staged"] = "2"  # nothing else to run: the next canary finds v2 live
    with pytest.raises(UsageError, match="live already"):
        setup.run()
    assert setup.router.served[STABLE] == {V2: 100}
    assert CANARY_TAG not in setup.registry.model_tags


def test_a_route_not_on_the_live_version_stops_the_canary_before_any_change(setup: Setup) -> None:
    setup.router.served[STABLE] = {V1: 50, V2: 50}
    with pytest.raises(PermanentError, match="not m@v1 100 %") as caught:
        setup.run()
    assert "loradeploy route" in (caught.value.hint or "")
    assert setup.router.changes == [] and setup.served == []


def test_the_first_routed_release_starts_clients_on_the_live_version(setup: Setup) -> None:
    del setup.router.served[STABLE]
    setup.run()
    assert setup.router.changes[0] == {V1: 100}
    assert setup.router.changes[-1] == {V2: 100}


def test_a_held_lock_changes_nothing(setup: Setup) -> None:
    other = Actor(who="other@test", step="promote-adapter", run_id="run-2")
    with model_lock(setup.registry, MODEL, other), pytest.raises(LockHeldError):  # type: ignore[arg-type]
        setup.run()
    assert setup.router.changes == [] and setup.registry.aliases == {"live": "1", "staged": "2"}


def test_a_candidate_that_is_live_already_is_refused(setup: Setup) -> None:
    setup.registry.aliases["staged"] = "1"
    with pytest.raises(UsageError, match="live already"):
        setup.run()
    assert setup.router.changes == []


def test_reconcile_undoes_a_canary_an_interrupted_run_left(setup: Setup, tmp_path: Path) -> None:
    from loradeploy.clients.files import LocalFolderTransport
    from loradeploy.steps.reconcile import ReconcileRequest, reconcile

    setup.figures.raise_on_call = ServerUnavailableError("log gone (fake)")
    setup.router.fail_at = {2}
    with pytest.raises(ServerUnavailableError):
        setup.run()
    result = reconcile(
        ReconcileRequest(model=MODEL, slot_for_alias={}),
        registry=setup.registry,  # type: ignore[arg-type]
        replicas=[],
        transport=LocalFolderTransport(tmp_path / "adapters"),
        actor=ACTOR,
        router=setup.router,
    )
    assert setup.router.served[STABLE] == {V1: 100}
    assert CANARY_TAG not in setup.registry.model_tags
    assert "interrupted at 5 %" in result.details["canary_recovered"]


@dataclass
class FakeShadowScorer:
    """Answers each shadow window with the next scripted verdict, and notes what the
    router served while it was asked."""

    router: FakeRouter
    verdicts: list[str]
    seen: list[Shadow | None] = field(default_factory=list)

    def __call__(self, stable: str, candidate: str, start: float, end: float) -> ShadowScore:
        self.seen.append(self.router.mirrored.get(stable))
        verdict = self.verdicts.pop(0)
        check = Check(name="shadow-non-inferiority", passed=verdict == "pass", detail=f"{verdict} (fake)")
        analysis = Analysis(
            verdict=verdict,  # type: ignore[arg-type]
            decision=GateDecision(gate="shadow", checks=[check], figures={"pairs": 30}),
            reason=f"{verdict} (fake)",
        )
        return ShadowScore(stable=stable, candidate=candidate, judge_model="judge", analysis=analysis)


def test_a_shadow_phase_mirrors_then_the_weights_move_once_it_passes(setup: Setup) -> None:
    scorer = FakeShadowScorer(setup.router, ["insufficient", "pass"])
    result = setup.run(shadow=scorer, shadow_percent=25)
    assert scorer.seen == [Shadow(V2, 25), Shadow(V2, 25)]
    assert setup.router.changes[:2] == [{V1: 100}, {V1: 100}]  # mirrored, then the shadow removed
    assert setup.router.shadow_changes[:2] == [Shadow(V2, 25), None]
    assert setup.router.changes[2] == {V1: 95, V2: 5}
    assert result.details["decision"] == "promoted"
    assert [w["action"] for w in result.details["windows"]][:2] == ["wait", "advance"]
    assert setup.router.mirrored == {"other-live": Shadow("other@v4", 10)}


def test_a_candidate_worse_in_shadow_never_gets_a_client_request(setup: Setup) -> None:
    scorer = FakeShadowScorer(setup.router, ["fail"])
    result = setup.run(shadow=scorer, shadow_percent=25)
    assert all(change == {V1: 100} for change in setup.router.changes)
    assert setup.router.shadow_changes[-1] is None
    assert result.details["decision"] == "rolled-back" and not result.passed
    assert result.details["reason"].startswith("in shadow at 25 %")
    assert setup.registry.aliases["canary-failed"] == "2"
    assert CANARY_TAG not in setup.registry.model_tags


def test_a_shadow_without_evidence_aborts_after_its_waits(setup: Setup) -> None:
    scorer = FakeShadowScorer(setup.router, ["insufficient"] * 3)
    result = setup.run(shadow=scorer, shadow_percent=10)
    assert "no evidence after 3 windows" in result.details["reason"]
    assert setup.router.mirrored.get(STABLE) is None


def test_a_shadow_asked_of_a_router_without_a_request_log_changes_nothing(setup: Setup) -> None:
    with pytest.raises(UsageError, match="--shadow-percent"):
        setup.run(shadow_percent=10)
    assert setup.router.changes == [] and setup.served == []


def test_a_canary_killed_during_its_shadow_loses_the_shadow_on_recovery(setup: Setup) -> None:
    scorer = FakeShadowScorer(setup.router, [])  # popping from nothing: the scorer fails
    setup.router.fail_at = {2}  # and so does the change that would remove the shadow
    with pytest.raises(IndexError):
        setup.run(shadow=scorer, shadow_percent=10)
    assert setup.router.mirrored.get(STABLE) == Shadow(V2, 10)
    setup.run()
    assert setup.router.mirrored.get(STABLE) is None


def test_the_thresholds_are_in_the_result_and_the_history(setup: Setup) -> None:
    setup.figures.error_share = {V2: 0.5}
    result = setup.run()
    assert result.details["thresholds"]["max_error_rate"] == QUICK.max_error_rate
    reasons = [str(a["params"]) for a in setup.registry.audit]
    assert any("errors <= 1.00%, p50 x1.5, p95 x1.75, >= 10 requests" in r for r in reasons)


@dataclass
class FakeThief:
    """Another run that takes the model's lock over while the canary waits (its lease
    ran out): a higher lease record, then a canary record and weights of its own."""

    setup: Setup
    at_window: int = 1  # the window (1-based) during which the lock is taken over
    windows: int = 0

    def __call__(self) -> None:
        self.windows += 1
        if self.windows != self.at_window:
            return
        leases = self.setup.registry.leases
        mine = leases.read(MODEL)
        top = max(mine)
        theirs = LeaseRecord.model_validate_json(mine[top]).model_copy(update={"run_id": "run-2"})
        assert leases.create(MODEL, top + 1, theirs.dump())
        theirs_record = CanaryRecord(
            model=MODEL, stable=STABLE, current_version="1", candidate_version="2", candidate_percent=25
        )
        self.setup.registry.model_tags[CANARY_TAG] = theirs_record.model_dump_json()
        self.setup.router.served[STABLE] = {V1: 75, V2: 25}


def test_a_canary_that_lost_its_lock_changes_nothing_more(setup: Setup) -> None:
    setup.figures.before_window = FakeThief(setup)
    with pytest.raises(LockLostError):
        setup.run()
    assert setup.router.changes == [{V1: 95, V2: 5}]  # no change after the lock was lost
    assert setup.router.served[STABLE] == {V1: 75, V2: 25}  # the new holder's weights stay
    record = CanaryRecord.model_validate_json(setup.registry.model_tags[CANARY_TAG])
    assert record.candidate_percent == 25  # and so does its record


@dataclass
class FakeFailingAudit:
    """The audit history's writes fail once, for the run whose name holds ``during``."""

    registry: FakeAliasRegistry
    during: str
    failed: bool = False

    def __call__(self, **record: object) -> str:
        if not self.failed and self.during in str(record.get("run_name", "")) + str(record.get("params", "")):
            self.failed = True
            raise ServerUnavailableError("MLflow at http://mlflow.test:5000 is unreachable (fake)")
        self.registry.audit.append(record)
        return f"audit-{len(self.registry.audit)}"


def test_a_promotion_interrupted_after_its_alias_moves_is_never_routed_against_live(
    setup: Setup, tmp_path: Path
) -> None:
    from loradeploy.clients.files import LocalFolderTransport
    from loradeploy.steps.reconcile import ReconcileRequest, reconcile

    setup.registry.record_action = FakeFailingAudit(setup.registry, "live")  # type: ignore[method-assign]
    with pytest.raises(ServerUnavailableError):
        setup.run()
    assert setup.registry.aliases["live"] == "2"  # the moves were applied, their audit was not
    # Either the stable name already routes to live, or the record is there for recovery.
    assert setup.router.served[STABLE] == {V2: 100} or CANARY_TAG in setup.registry.model_tags
    reconcile(
        ReconcileRequest(model=MODEL, slot_for_alias={}),
        registry=setup.registry,  # type: ignore[arg-type]
        replicas=[],
        transport=LocalFolderTransport(tmp_path / "adapters"),
        actor=ACTOR,
        router=setup.router,
    )
    assert setup.registry.aliases == {"live": "2", "previous": "1"}
    assert setup.router.served[STABLE] == {V2: 100}
    assert CANARY_TAG not in setup.registry.model_tags


@pytest.mark.parametrize(
    "hostile",
    [
        {"stable": "other-live"},  # another model's stable name
        {"stable": "../../etc"},
        {"candidate_version": "../v2"},
        {"model": "other"},
    ],
)
def test_a_hostile_canary_record_is_refused_and_changes_no_route(
    setup: Setup, hostile: dict[str, str]
) -> None:
    fields = {"model": MODEL, "stable": STABLE, "current_version": "1", "candidate_version": "2"}
    setup.registry.model_tags[CANARY_TAG] = json.dumps({**fields, **hostile, "candidate_percent": 5})
    setup.router.served[STABLE] = {V1: 95, V2: 5}
    routes_before = setup.router.routes()
    with pytest.raises(PermanentError, match=CANARY_TAG) as caught:
        setup.run()
    assert "loradeploy route" in (caught.value.hint or "")
    assert setup.router.changes == [] and setup.router.routes() == routes_before
    assert setup.router.mirrored == {"other-live": Shadow("other@v4", 10)}


def test_a_stable_name_of_another_model_is_refused_without_a_hint_to_take_it_over(setup: Setup) -> None:
    with pytest.raises(PermanentError, match="other@v3") as caught:
        setup.run(stable="other-live")
    assert "--stable-name" in (caught.value.hint or "")
    assert "--weights" not in (caught.value.hint or "")  # never: route other-live to m@v1
    assert setup.router.changes == [] and setup.served == []


def test_an_abort_whose_alias_move_fails_still_leaves_a_trace(setup: Setup) -> None:
    setup.figures.error_share = {V2: 0.5}
    read = setup.registry.get_aliases
    calls: list[str] = []

    def fake_flaky_aliases(name: str) -> dict[str, str]:
        """MLflow stops answering right after the abort's weight change (its 2nd read)."""
        calls.append(name)
        if len(calls) == 2:
            raise ServerUnavailableError("MLflow at http://mlflow.test:5000 is unreachable (fake)")
        return read(name)

    setup.registry.get_aliases = fake_flaky_aliases  # type: ignore[method-assign]
    with pytest.raises(ServerUnavailableError):
        setup.run()
    assert setup.router.served[STABLE] == {V1: 100}
    judged = setup.registry.aliases.get("canary-failed") == "2" or CANARY_TAG in setup.registry.model_tags
    assert judged  # either the candidate is marked, or the record is there to say it was judged
    setup.registry.get_aliases = read  # type: ignore[method-assign]  # MLflow is back: recovery finishes it
    setup.registry.aliases["staged"] = "1"  # nothing new to release: the next canary stops after recovering
    with pytest.raises(UsageError, match="live already"):
        setup.run()
    assert setup.registry.aliases["canary-failed"] == "2"
    assert CANARY_TAG not in setup.registry.model_tags
    assert any("finished by recovery" in str(a["params"]) for a in setup.registry.audit)

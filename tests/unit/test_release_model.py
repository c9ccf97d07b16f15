"""A model-based test of release integrity (issue 10): three deployers (two hosts; two
containers sharing a host name) interleave load-adapter, set-staged-alias,
promote-adapter (``staged``), rollbacks (``previous``), Argo retries of a failed
promotion (same run key), reconcile and ``unlock --abandon-plan`` on one model served by
two replicas. Between commands: lease time passes, a replica restarts (serving its startup
list), an operator moves an alias in the MLflow UI, or one deployer holds the lock while
another tries a command. Each command may have one fault at any call to the registry,
the lease store or vLLM (``support.fake_deployment.Faults``): the call fails, its answer
is lost after the server applied it, the process is killed there (``Killed``: no
``finally`` reaches a server, the lease stays held), or another deployer's whole command
runs right before it, possibly 400 s of lease time later (never between a lease renewal
and the registry write it guards: see ``guarded``).

Checked after every step, and inside a command where another one interleaves:

1. mutual exclusion: every alias or plan write is made by the process holding the
   highest unexpired, unreleased lease; no two running processes hold live leases; a
   command refused with ``LockHeldError`` changed nothing (aliases, tags, leases, what
   replicas serve); a process that ended without being killed holds no live lease
   (unless the fault hit a lease call);
2. the aliases, once a pending plan (``loradeploy.pending``) is applied, are what some
   order of the commands explains: each command leaves them fully before or fully after
   its own change, never a third state; a pending plan can always be finished, unless an
   alias was moved by hand under it, and then nothing moves until it is abandoned;
3. after a successful reconcile every replica serves, for ``live`` and ``staged``, the
   version the alias names;
4. a successful promotion made live what its source alias named, and every replica
   serves it; a request whose change is made (pending or applied) never moves aliases
   again when retried (a rollback never rolls back twice); a successful load serves its
   version on every replica; a failed command (not killed) leaves every slot it found
   whole on one folder.

The reference model (``promoted``, ``intended``, ``effective``) is written here from the
README's rules, not from ``domain.aliases``. Deterministic (``derandomize``); 500 examples
of 25 steps by default, more by hand: ``LORADEPLOY_MODEL_EXAMPLES=4000``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from loradeploy.clients.files import LocalFolderTransport
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import PENDING_TAG, Actor, Held, model_lock
from loradeploy.coordination.lease import CLOCK_SKEW_S, Identity, LeaseRecord
from loradeploy.domain.layout import version_dir
from loradeploy.domain.names import Source
from loradeploy.errors import LockHeldError, LockLostError, LoraDeployError, ServerUnavailableError
from loradeploy.results import StepResult
from loradeploy.steps import load_adapter as load_step
from loradeploy.steps import promote as promote_step
from loradeploy.steps import reconcile as reconcile_step
from loradeploy.steps import rollout as rollout_step
from loradeploy.steps import set_staged_alias as stage_step
from loradeploy.steps import swap as swap_step
from loradeploy.steps import unlock as unlock_step
from support.fake_deployment import (
    CAND_SLOT,
    LIVE_SLOT,
    MODEL,
    FakeReleaseRegistry,
    Faults,
    FaultyRegistry,
    Killed,
    SerialExecutor,
    actor,
    deployment,
    faulty_transport,
)
from support.fakes import FakeClock, FakeVllmServer
from support.synthetic import write_adapter

# Failures the model found, each shown by an xfail test at the end of this file. Set the
# flag to True when that test passes (the lead's fix), so the model checks it too.
RETRY_OF_A_FINISHED_REQUEST = True  # test_a_retry_after_another_run_finished_its_plan_...
SWAPS_FENCED = True  # test_a_promotion_that_lost_its_lease_swaps_no_replica

EXAMPLES = int(os.environ.get("LORADEPLOY_MODEL_EXAMPLES", "500"))
STEPS = 25
MAX_CALLS = 60  # a command makes up to about 60 calls; a fault numbered beyond them never fires
VERSIONS = ("1", "2", "3")
SLOTS = {"live": LIVE_SLOT, "staged": CAND_SLOT}
REPLICAS = ("http://vllm-1.test:8000", "http://vllm-2.test:8000")
STEP_NAMES = {
    "load": "load-adapter",
    "stage": "set-staged-alias",
    "promote": "promote-adapter",
    "reconcile": "reconcile",
    "abandon": "unlock",
}
WRITES = frozenset(
    {
        "mlflow.set_alias",
        "mlflow.delete_alias",
        "mlflow.set_model_tag",
        "mlflow.delete_model_tag",
    }
)


@dataclass(frozen=True)
class Deployer:
    """Where a deployer's processes run: ``cy`` shares ``ana``'s host name but not her
    PID namespace (two containers), so a PID says nothing about ``cy``'s processes there."""

    name: str
    host: str
    pid_ns: str


DEPLOYERS = (
    Deployer("ana", "ci-1", "pid:[4026531836]"),
    Deployer("bo", "ci-2", "pid:[4026531836]"),
    Deployer("cy", "ci-1", "pid:[4026532999]"),
)


# -- the reference model ----------------------------------------------------------------------


@dataclass
class Request:
    """One request (an Argo step, or a command typed once); its retries share ``run_key``.
    ``done``: its alias change has been made (pending or applied)."""

    kind: str  # load | stage | promote | reconcile | abandon (unlock --abandon-plan)
    arg: str  # the version (load, stage) or the source alias (promote)
    run_key: str
    done: bool = False

    def describe(self) -> str:
        return f"{self.kind} {self.arg}".strip()


def promoted(aliases: Mapping[str, str], version: str) -> dict[str, str]:
    """README: the version becomes live, the old live becomes previous, and staged is
    removed when it named the version."""
    after = dict(aliases)
    old = aliases.get("live")
    if old != version:
        after["live"] = version
        if old is not None:
            after["previous"] = old
    if aliases.get("staged") == version:
        del after["staged"]
    return after


def intended(request: Request, aliases: Mapping[str, str]) -> dict[str, str]:
    """The aliases once ``request`` has made its change, starting from ``aliases``."""
    if request.done or request.kind in ("load", "reconcile", "abandon"):
        return dict(aliases)
    if request.kind == "stage":
        return {**aliases, "staged": request.arg}
    source = aliases.get(request.arg)
    return promoted(aliases, source) if source else dict(aliases)


def effective(aliases: Mapping[str, str], tags: Mapping[str, str]) -> dict[str, str] | None:
    """The aliases once the pending plan is finished (each move applies only while the
    alias names the version it expects); None when the plan cannot be finished."""
    after = dict(aliases)
    raw = tags.get(PENDING_TAG)
    if not raw:
        return after
    for move in json.loads(raw)["moves"]:
        alias, now = move["alias"], after.get(move["alias"])
        if now == move["to_version"]:
            continue
        if now != move["from_version"]:
            return None
        if move["to_version"] is None:
            after.pop(alias, None)
        else:
            after[alias] = move["to_version"]
    return after


def guarded(calls: list[str]) -> bool:
    """The current call (the last) lies between a lease renewal and the registry write it
    guards. The lease is sound only if that stretch takes less than the lease has left
    (coordination/lease.py: every registry call finishes within MOVE_BUDGET_S), so the
    model lets no time pass there."""
    for what in reversed(calls[:-1]):
        if what == "lease.write":
            return True
        if what in WRITES:
            return False
    return False


# -- processes -----------------------------------------------------------------------------------


@dataclass
class Process:
    deployer: Deployer
    pid: int
    faults: Faults

    @property
    def run_id(self) -> str:
        return f"{self.deployer.name}-{self.pid}"

    def identity(self) -> Identity:
        return Identity(
            host=self.deployer.host,
            boot_id="boot-1",
            pid_ns=self.deployer.pid_ns,
            pid=self.pid,
            pid_start="1",
        )

    def actor(self, step: str, run_key: str = "") -> Actor:
        return Actor(
            who=f"{self.deployer.name}@{self.deployer.host}", step=step, run_id=self.run_id, run_key=run_key
        )


@dataclass
class Running:
    """A command in flight: ``before`` is the reference state it started from, moved on
    when another command ran inside it."""

    process: Process
    request: Request
    before: dict[str, str]
    served: dict[str, dict[str, str]]  # what each replica served when it started
    nested: bool = False
    # Its change was nothing when a command ran inside it: it may count as done before
    # that command (a promotion of what was live already), as well as after it.
    maybe_first: bool = False


@dataclass
class Rig:
    """What outlives one example: the adapters to register, and every deployer's vLLM
    clients (connected to whichever servers the running example has)."""

    sources: dict[str, Path]
    servers: dict[str, FakeVllmServer] = field(default_factory=dict)
    faults: dict[str, list[Faults]] = field(default_factory=dict)
    clients: dict[str, list[VllmClient]] = field(default_factory=dict)

    def current(self, name: str) -> Faults:
        return self.faults[name][-1]


@contextmanager
def rig(tmp: Path) -> Iterator[Rig]:
    the_rig = Rig({v: write_adapter(tmp / f"v{v}", fill=int(v)) for v in VERSIONS})
    clock = FakeClock()
    with ExitStack() as stack:
        for deployer in DEPLOYERS:
            the_rig.faults[deployer.name] = [Faults()]
            the_rig.clients[deployer.name] = [
                stack.enter_context(
                    VllmClient(
                        url,
                        transport=faulty_transport(
                            lambda url=url: the_rig.servers[url],  # type: ignore[misc]
                            lambda name=deployer.name: the_rig.current(name),  # type: ignore[misc]
                        ),
                        clock=clock,
                        sleep=clock.sleep,
                    )
                )
                for url in REPLICAS
            ]
        yield the_rig


# -- the state machine -------------------------------------------------------------------------------

deployers = st.sampled_from(DEPLOYERS)
commands = st.one_of(
    st.tuples(st.just("load"), st.sampled_from(VERSIONS)),
    # "loaded": the version the candidate slot serves now (the usual smoke-tested case)
    st.tuples(st.just("stage"), st.sampled_from(("loaded", "loaded", *VERSIONS))),
    st.just(("promote", "staged")),
    st.just(("promote", "previous")),
    st.just(("reconcile", "")),
)
# A fault's place: a call number, or the n-th call of a kind (so alias moves, plan writes
# and swaps are hit as often as the many reads around them).
places = st.one_of(
    st.integers(1, MAX_CALLS),
    st.tuples(
        st.sampled_from(
            (
                "mlflow.set_alias",
                "mlflow.delete_alias",
                "mlflow.set_model_tag",
                "mlflow.delete_model_tag",
                "mlflow.download_adapter",
                "mlflow.record_action",
                "lease.",
                "load_lora_adapter",
            )
        ),
        st.integers(1, 3),
    ),
)
faults = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(("fail", "lost", "kill")), places),
    # another deployer's whole command runs right before that call, ``seconds`` later
    st.tuples(st.just("hook"), places, deployers, commands, st.sampled_from((0.0, 400.0))),
)
STARTS = (
    {},
    {"live": "1", "staged": "2"},
    {"live": "2", "previous": "1"},
    {"live": "2", "previous": "1", "staged": "3"},
    {"live": "2", "previous": "1", "staged": "3"},
)


class ReleaseModel(RuleBasedStateMachine):
    rig: Rig  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="release-model-"))
        self.registry = FakeReleaseRegistry(model=MODEL)
        for version, folder in self.rig.sources.items():
            self.registry.add_version(version, folder)
        self.rig.servers.clear()
        self.rig.servers.update({url: FakeVllmServer() for url in REPLICAS})
        self.transport = LocalFolderTransport(self.tmp / "adapters")
        self.lease_clock = FakeClock(now=1_800_000_000.0)
        self.ref: dict[str, str] = {}
        self.startup: dict[str, str] = {}  # what a restarted replica serves (its startup list)
        # An alias moved by hand under a pending plan: the plan cannot be finished, and
        # nothing may move until an operator abandons it. (aliases, plan) then.
        self.stuck: tuple[dict[str, str], str] | None = None
        self.pids = 100
        self.keys = 0
        self.running: dict[str, Running] = {}  # run_id -> command in flight
        self.last_failed: dict[str, Request] = {}  # deployer -> its last failed request
        self.violations: list[str] = []
        self.unfenced: list[str] = []  # vLLM swaps without the lease, until SWAPS_FENCED
        self.patches = ExitStack()
        for module in (load_step, stage_step, promote_step, reconcile_step, unlock_step):
            self.patches.enter_context(mock.patch.object(module, "model_lock", self.model_lock))
        self.patches.enter_context(mock.patch.object(rollout_step, "ThreadPoolExecutor", SerialExecutor))

    def teardown(self) -> None:
        self.patches.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- wiring -----------------------------------------------------------------------------------

    def model_lock(
        self, registry: Any, model: str, actor: Actor, **kwargs: Any
    ) -> AbstractContextManager[Held]:
        """The real lock, on the model's lease clock, with each process's identity."""
        return model_lock(
            registry,
            model,
            actor,
            heartbeat_s=None,
            clock=self.lease_clock,
            here=self.running[actor.run_id].process.identity(),
            alive=lambda pid, _start: any(r.process.pid == pid for r in self.running.values()),
            **kwargs,
        )

    def records(self) -> dict[int, LeaseRecord]:
        raw = self.registry.leases.records.get(MODEL, {})
        return {n: LeaseRecord.model_validate_json(text) for n, text in raw.items()}

    def live(self, record: LeaseRecord) -> bool:
        return not record.released and self.lease_clock() <= record.expires_at + CLOCK_SKEW_S

    def holds(self, process: Process) -> bool:
        """``process`` holds the highest lease, unreleased and not expired."""
        records = self.records()
        if not records:
            return False
        top = records[max(records)]
        return top.run_id == process.run_id and not top.released and self.lease_clock() <= top.expires_at

    def observe(self, process: Process, what: str) -> None:
        """Runs before every call a process makes: the mutual-exclusion checks."""
        swap = what.startswith("vllm ") and ("load_lora" in what or "unload_lora" in what)
        if what in WRITES and not self.holds(process):
            self.violations.append(f"{process.run_id} made {what} without holding the lease")
        if swap and not self.holds(process):
            found = self.violations if SWAPS_FENCED else self.unfenced
            found.append(f"{process.run_id} made {what} without holding the lease")
        holders = {r.run_id for r in self.records().values() if self.live(r) and r.run_id in self.running}
        if len(holders) > 1:
            self.violations.append(f"{sorted(holders)} hold live leases at once (at {what})")

    def effective(self) -> dict[str, str]:
        after = effective(self.registry.aliases, self.registry.model_tags)
        assert after is not None, (
            f"the pending plan {self.registry.model_tags.get(PENDING_TAG)} cannot be finished "
            f"on aliases {self.registry.aliases}"
        )
        return after

    def served(self) -> dict[str, dict[str, str]]:
        return {url: dict(server.adapters) for url, server in self.rig.servers.items()}

    def root(self, slot: str, version: str) -> str:
        return version_dir(self.transport.root, slot, MODEL, version)

    def snapshot(self) -> tuple[object, ...]:
        return (
            dict(self.registry.aliases),
            dict(self.registry.model_tags),
            dict(self.registry.leases.records.get(MODEL, {})),
            self.served(),
        )

    # -- running commands -------------------------------------------------------------------------

    def start(self, deployer: Deployer, request: Request, faults: Faults) -> Running:
        self.pids += 1
        process = Process(deployer, self.pids, faults)
        faults.observe = lambda what: self.observe(process, what)
        running = Running(process, request, dict(self.ref), self.served())
        self.running[process.run_id] = running
        self.rig.faults[deployer.name].append(faults)
        return running

    def end(self, running: Running) -> None:
        del self.running[running.process.run_id]
        self.rig.faults[running.process.deployer.name].pop()

    def step(self, running: Running) -> StepResult:
        process, request = running.process, running.request
        registry: Any = FaultyRegistry(self.registry, process.faults)
        replicas = self.rig.clients[process.deployer.name]
        actor = process.actor(STEP_NAMES[request.kind], request.run_key)
        if request.kind == "load":
            return load_step.load_adapter(
                load_step.LoadRequest(model=MODEL, source=Source("version", request.arg), slot=CAND_SLOT),
                registry=registry,
                replicas=replicas,
                transport=self.transport,
                actor=actor,
            )
        if request.kind == "stage":
            return stage_step.set_staged_alias(
                registry,
                replicas,
                model=MODEL,
                source=Source("version", request.arg),
                slot=CAND_SLOT,
                actor=actor,
            )
        if request.kind == "promote":
            return promote_step.promote_adapter(
                promote_step.PromoteRequest(model=MODEL, source_alias=request.arg, live_slot=LIVE_SLOT),
                registry=registry,
                replicas=replicas,
                transport=self.transport,
                actor=actor,
            )
        if request.kind == "abandon":
            return unlock_step.unlock(registry, model=MODEL, run_id=None, drop_plan=True, actor=actor)
        return reconcile_step.reconcile(
            reconcile_step.ReconcileRequest(model=MODEL, slot_for_alias=SLOTS),
            registry=registry,
            replicas=replicas,
            transport=self.transport,
            actor=actor,
        )

    def run(self, deployer: Deployer, request: Request, fault: tuple[Any, ...] | None) -> None:
        """Run one command to its end (success, error, or killed) and check its outcome."""
        if request.arg == "loaded":
            served = self.rig.servers[REPLICAS[0]].adapters.get(CAND_SLOT, "")
            request.arg = served.rpartition("-v")[2] if served else VERSIONS[0]
        faults = Faults()
        running = self.start(deployer, request, faults)
        if fault is not None:
            faults.kind, faults.at = fault[0], fault[1]
            if fault[0] == "hook":
                faults.hook = lambda: self.interleave(running, *fault[2:])
        before_all = self.snapshot()
        result: StepResult | None = None
        error: BaseException | None = None
        try:
            result = self.step(running)
        except (LoraDeployError, Killed) as exc:
            error = exc
        finally:
            self.end(running)
        self.settle(running, result, error)
        if isinstance(error, LockHeldError) and not running.nested:
            assert self.snapshot() == before_all, f"{request.describe()} was refused but changed something"
        if not faults.killed:
            held = [r for r in self.records().values() if r.run_id == running.process.run_id and self.live(r)]
            lease_fault = (faults.fired_at or "").startswith("lease.")
            assert lease_fault or not held, (
                f"{running.process.run_id} ({request.describe()}) kept its lease: {error!r}"
            )
        if error is not None and request.kind == "promote":
            self.last_failed[deployer.name] = request

    def interleave(self, outer: Running, other: Deployer, command: tuple[str, str], seconds: float) -> None:
        """Another deployer's command runs to its end inside ``outer``, ``seconds`` later."""
        if other == outer.process.deployer:
            other = DEPLOYERS[(DEPLOYERS.index(other) + 1) % len(DEPLOYERS)]
        if self.progress(outer) == outer.before:
            outer.maybe_first = True
        outer.nested = True
        if not guarded(outer.process.faults.calls):
            self.lease_clock.now += seconds
        self.keys += 1
        self.run(other, Request(command[0], command[1], f"wf-{self.keys}"), None)
        outer.before = dict(self.ref)

    def progress(self, running: Running) -> dict[str, str]:
        """Check a command's progress so far: fully before or fully after its change."""
        if self.stuck is not None:
            aliases, plan = self.stuck
            assert self.registry.aliases == aliases, (
                f"{running.request.describe()} moved aliases under a stuck plan"
            )
            if self.registry.model_tags.get(PENDING_TAG) != plan:
                assert running.request.kind == "abandon", f"{running.request.describe()} dropped a stuck plan"
                assert PENDING_TAG not in self.registry.model_tags
                self.stuck = None
                self.ref = dict(aliases)
                key = json.loads(plan).get("run_key")
                for request in self.last_failed.values():
                    request.done = request.done and request.run_key != key
            self.ref = dict(self.registry.aliases)  # (what the model compares once unstuck)
            return self.ref
        now = self.effective()
        want = intended(running.request, running.before)
        assert now in (running.before, want), (
            f"{running.request.describe()} left a third state: {now}; before {running.before}, after {want}"
        )
        if now == want != running.before:
            running.request.done = True
        self.ref = now
        return want

    def settle(self, running: Running, result: StepResult | None, error: BaseException | None) -> None:
        request = running.request
        want = self.progress(running)
        if error is not None and not running.process.faults.killed and not running.nested:
            for slot in SLOTS.values():  # all or nothing: a slot one replica changed is restored
                roots = {server.get(slot) for server in self.served().values()}
                was = {server.get(slot) for server in running.served.values()}
                assert len(roots) == 1 or len(was) > 1, f"{request.describe()} ({error!r}) split {slot}"
        if error is not None or request.kind == "abandon":
            return
        assert result is not None
        allowed = [want, running.before] if running.maybe_first else [want]
        assert self.ref in allowed, f"{request.describe()} succeeded but left {self.ref}, not {want}"
        if running.nested:
            return  # another command ran inside it: what it served may have changed since
        served = self.served()
        if request.kind == "load":
            assert {s.get(CAND_SLOT) for s in served.values()} == {self.root(CAND_SLOT, request.arg)}
        if request.kind == "promote":
            live = self.ref["live"]
            assert {s.get(LIVE_SLOT) for s in served.values()} == {self.root(LIVE_SLOT, live)}, (
                f"promote {request.arg} succeeded with live={live} but replicas serve {served}"
            )
        if request.kind == "reconcile":
            assert result.passed or running.process.faults.fired, f"reconcile did not pass: {result.checks}"
            if result.passed:
                for alias, slot in SLOTS.items():
                    version = self.registry.aliases.get(alias)
                    if version:
                        assert {s.get(slot) for s in served.values()} == {self.root(slot, version)}, (
                            f"reconcile passed but {slot} is not {alias}={version} everywhere: {served}"
                        )

    # -- rules ---------------------------------------------------------------------------------

    @initialize(start=st.sampled_from(STARTS))
    def released_before(self, start: dict[str, str]) -> None:
        """Some releases happened before: the aliases, and replicas serving them."""
        self.registry.aliases.update(start)
        self.ref = dict(start)
        self.startup = {alias: start[alias] for alias in SLOTS if alias in start}
        for server in self.rig.servers.values():
            for alias, slot in SLOTS.items():
                if alias in start:
                    server.adapters[slot] = self.root(slot, start[alias])

    @rule(who=deployers, command=commands, fault=faults)
    def command(self, who: Deployer, command: tuple[str, str], fault: tuple[Any, ...] | None) -> None:
        self.keys += 1
        self.run(who, Request(command[0], command[1], f"wf-{self.keys}"), fault)

    @rule(who=deployers, command=commands, fault=faults)
    def another_command(self, who: Deployer, command: tuple[str, str], fault: tuple[Any, ...] | None) -> None:
        """The same as ``command``: commands are twice as frequent as each other event."""
        self.command(who, command, fault)

    def retriable(self) -> list[str]:
        """Deployers with a failed request to retry. Until RETRY_OF_A_FINISHED_REQUEST, not
        one whose change is made but whose plan is gone (finished by another run, or
        removed before a kill): promote-adapter cannot recognise those yet."""
        plan = self.registry.model_tags.get(PENDING_TAG)
        pending_key = json.loads(plan).get("run_key") if plan else None
        return sorted(
            name
            for name, request in self.last_failed.items()
            if RETRY_OF_A_FINISHED_REQUEST or not request.done or request.run_key == pending_key
        )

    @precondition(lambda self: bool(self.retriable()))
    @rule(data=st.data(), fault=faults)
    def retry(self, data: st.DataObject, fault: tuple[Any, ...] | None) -> None:
        """Argo retries a failed promotion or rollback: same request, same run key."""
        name = data.draw(st.sampled_from(self.retriable()))
        request = self.last_failed.pop(name)
        who = next(d for d in DEPLOYERS if d.name == name)
        self.run(who, request, fault)

    @rule(holder=deployers, who=deployers, command=commands)
    def refused_while_held(self, holder: Deployer, who: Deployer, command: tuple[str, str]) -> None:
        """Another deployer holds the model's lock right now: the command is refused
        with LockHeldError (or is a reconcile with nothing to do) and changes nothing."""
        self.keys += 1
        running = self.start(holder, Request("load", "", f"hold-{self.keys}"), Faults())
        registry: Any = FaultyRegistry(self.registry, running.process.faults)
        lock = self.model_lock(registry, MODEL, running.process.actor("hold"))
        try:
            lock.__enter__()
        except LoraDeployError:
            self.end(running)  # held by a crashed run: that case is the commands' own
            self.progress(running)
            return
        try:
            self.progress(running)  # taking the lock may have finished a pending plan
            before = self.snapshot()
            self.keys += 1
            request = Request(command[0], command[1], f"wf-{self.keys}")
            inner = self.start(who, request, Faults())
            try:
                self.step(inner)
                refused = None
            except LoraDeployError as exc:
                refused = exc
            finally:
                self.end(inner)
            assert isinstance(refused, LockHeldError) or (refused is None and request.kind == "reconcile"), (
                f"{request.describe()} by {who.name} while {holder.name} holds the lock: {refused!r}"
            )
            assert self.snapshot() == before, f"{request.describe()} was refused but changed something"
        finally:
            lock.__exit__(None, None, None)
            self.end(running)
        assert all(r.released for r in self.records().values() if r.run_id == running.process.run_id)

    @rule(data=st.data(), version=st.sampled_from((*VERSIONS, None)))
    def moved_by_hand(self, data: st.DataObject, version: str | None) -> None:
        """An operator moves an alias in the MLflow UI (no lock, no plan): one that a
        pending plan moves, when there is one."""
        plan = self.registry.model_tags.get(PENDING_TAG)
        planned = sorted({m["alias"] for m in json.loads(plan)["moves"]}) if plan else []
        alias = data.draw(st.sampled_from(planned or ["live", "previous", "staged"]))
        if version is None:
            self.registry.aliases.pop(alias, None)
        else:
            self.registry.aliases[alias] = version
        now = effective(self.registry.aliases, self.registry.model_tags)
        if now is None:
            self.stuck = (dict(self.registry.aliases), self.registry.model_tags[PENDING_TAG])
        else:
            self.stuck = None  # (moved back: the plan can be finished again)
            self.ref = now

    @precondition(lambda self: self.stuck is not None)
    @rule(who=deployers, fault=faults)
    def abandon_plan(self, who: Deployer, fault: tuple[Any, ...] | None) -> None:
        """``loradeploy unlock --abandon-plan``, as the stuck commands' error says."""
        self.keys += 1
        self.run(who, Request("abandon", "", f"wf-{self.keys}"), fault)

    @rule(index=st.sampled_from(range(len(REPLICAS))))
    def replica_restarts(self, index: int) -> None:
        """vLLM restarts and serves its startup list, written at the first deployment."""
        server = self.rig.servers[REPLICAS[index]]
        server.adapters = {SLOTS[alias]: self.root(SLOTS[alias], v) for alias, v in self.startup.items()}

    @rule(seconds=st.sampled_from((30.0, 200.0, 400.0)))
    def time_passes(self, seconds: float) -> None:
        self.lease_clock.now += seconds

    # -- invariants ----------------------------------------------------------------------------------

    @invariant()
    def only_the_holder_wrote(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def aliases_are_what_the_commands_said(self) -> None:
        if self.stuck is not None:
            assert (self.registry.aliases, self.registry.model_tags.get(PENDING_TAG)) == self.stuck
        else:
            assert self.effective() == self.ref, (
                f"aliases {self.effective()} moved; the model says {self.ref}"
            )

    @invariant()
    def nothing_runs_between_steps(self) -> None:
        assert not self.running


@contextmanager
def waits_on_a_fake_clock() -> Iterator[None]:
    """The rollout's waits (a load without an answer watched, put-backs retried) use
    steps.swap.DEFAULT_PATIENCE, a frozen value the steps take by default: here its clock
    and sleep are a FakeClock's, so the model spends no real time waiting."""
    clock = FakeClock()
    saved = (swap_step.DEFAULT_PATIENCE.clock, swap_step.DEFAULT_PATIENCE.sleep)
    object.__setattr__(swap_step.DEFAULT_PATIENCE, "clock", clock)
    object.__setattr__(swap_step.DEFAULT_PATIENCE, "sleep", clock.sleep)
    try:
        yield
    finally:
        object.__setattr__(swap_step.DEFAULT_PATIENCE, "clock", saved[0])
        object.__setattr__(swap_step.DEFAULT_PATIENCE, "sleep", saved[1])


def test_release_integrity_under_faults_and_a_second_deployer(tmp_path: Path) -> None:
    with rig(tmp_path) as the_rig, waits_on_a_fake_clock():
        ReleaseModel.rig = the_rig
        run_state_machine_as_test(
            ReleaseModel,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )


# -- what the model found -----------------------------------------------------------------------
# Each is the smallest example of a failure the model reached; while its flag (at the top)
# is False the model does not generate or does not assert that case, so it stays green.


@pytest.mark.parametrize("finisher", ["load-adapter", "reconcile", "killed-after-commit"])
def test_a_retry_after_another_run_finished_its_plan_rolls_back_once(tmp_path: Path, finisher: str) -> None:
    with deployment(tmp_path, replicas=2) as world:
        for version in ("1", "2"):
            world.load(f"version:{version}")
            world.stage(f"version:{version}")
            world.promote("staged")
        if finisher == "killed-after-commit":
            # The first attempt commits (plan applied and removed), then is killed while
            # removing unused folders, so it exits without a result: Argo retries it.
            with (
                mock.patch.object(promote_step, "remove_unused_folders", side_effect=Killed("SIGKILL")),
                pytest.raises(Killed),
            ):
                world.promote("previous", run_key="wf-7/rollback")
            world.registry.leases.records.clear()  # (its lease expired meanwhile)
            assert world.registry.aliases == {"live": "1", "previous": "2"}
            world.promote("previous", run_key="wf-7/rollback")  # Argo's retry of the same request
            assert world.registry.aliases == {"live": "1", "previous": "2"}, "rolled back twice"
            return
        world.registry.fail_alias_writes = {world.registry.alias_writes + 2}  # after live moved
        with pytest.raises(ServerUnavailableError):
            world.promote("previous", run_key="wf-7/rollback")  # Argo will retry it
        assert world.registry.aliases == {"live": "1", "previous": "1"}
        if finisher == "load-adapter":
            world.load("version:3")  # another deployer's step takes the lock: finishes the plan
        else:
            # A replica restarted and serves its startup list (version 2): the reconcile
            # sidecar has something to repair, so it takes the lock, which finishes the plan.
            list(world.servers.values())[1].adapters[LIVE_SLOT] = world.root(LIVE_SLOT, "2")
            reconcile_step.reconcile(
                reconcile_step.ReconcileRequest(model=MODEL, slot_for_alias=SLOTS),
                registry=world.registry,  # type: ignore[arg-type]
                replicas=world.clients,
                transport=world.transport,
                actor=actor("sidecar", "reconcile"),
            )
        assert world.registry.aliases == {"live": "1", "previous": "2"}  # rolled back, once
        world.promote("previous", run_key="wf-7/rollback")  # Argo's retry of the same request
        assert world.registry.aliases == {"live": "1", "previous": "2"}, "rolled back twice"


def test_a_promotion_that_lost_its_lease_swaps_no_replica(tmp_path: Path) -> None:
    clock = FakeClock(now=1_800_000_000.0)
    with (
        deployment(tmp_path, replicas=2) as world,
        mock.patch.object(
            promote_step,
            "model_lock",
            lambda *args, **kwargs: model_lock(*args, clock=clock, heartbeat_s=None, **kwargs),
        ),
    ):
        for version in ("1", "2", "3"):
            world.load(f"version:{version}")
            world.stage(f"version:{version}")
            if version != "3":
                world.promote("staged")
        download = world.registry.download_adapter

        def paused(name: str, version: str, output_dir: Path, **sizes: Any) -> Path:
            if version == "3":
                clock.now += 400.0  # ana's process is paused past her lease's expiry
                world.registry.download_adapter = download  # type: ignore[method-assign]
                world.promote("previous", who="bo")  # bo takes the lock over and rolls back
            return download(name, version, output_dir, **sizes)

        world.registry.download_adapter = paused  # type: ignore[method-assign]
        with pytest.raises(LockLostError):
            world.promote("staged", who="ana")
        assert world.registry.aliases["live"] == "1"
        assert world.served(LIVE_SLOT) == [world.root(LIVE_SLOT, "1")] * 2, "ana swapped without the lease"

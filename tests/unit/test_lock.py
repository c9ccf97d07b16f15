"""coordination.lease and coordination.lock: the per-model lease on an atomic create.

Every test here runs against ``FakeLeaseStore`` (tests/support/fake_leases.py), which keeps
the store's one promise: ``create`` of an existing record fails. The same races against
the real MLflow server are in tests/integration/test_lock_race.py.
"""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

from loradeploy.coordination import Actor, model_lock, unlock
from loradeploy.coordination.lease import (
    CLOCK_SKEW_S,
    DEFAULT_LOCK_TTL_S,
    MOVE_BUDGET_S,
    Heartbeat,
    Identity,
    LeaseRecord,
    MalformedLeaseError,
    acquire,
    holder_is_gone,
)
from loradeploy.errors import ExitCode, LockHeldError, LockLostError, NotFoundError
from support.fake_leases import FakeLeaseStore, failing
from support.fake_registry import FakeRegistry

MODEL = "m"
HERE = Identity(host="node-1", boot_id="boot-a", pid_ns="pid:[4026531836]", pid=100, pid_start="555")


def actor(name: str = "me") -> Actor:
    return Actor(who=f"{name}@here", step="promote-adapter", run_id=f"run-{name}")


def record(run_id: str, *, expires_at: float = 2000.0, released: bool = False, **where: object) -> str:
    fields: dict[str, object] = {
        "run_id": run_id,
        "holder": "other@there",
        "step": "load-adapter",
        "host": HERE.host,
        "boot_id": HERE.boot_id,
        "pid_ns": HERE.pid_ns,
        "pid": 4242,
        "pid_start": "777",
        "expires_at": expires_at,
        "released": released,
    }
    fields.update(where)
    return json.dumps(fields)


def take(store: FakeLeaseStore, *, now: float = 1000.0, alive: bool = True, who: str = "me") -> int:
    lease = acquire(store, MODEL, actor(who), clock=lambda: now, here=HERE, alive=lambda _p, _s: alive)
    return lease.number


# -- taking and releasing ----------------------------------------------------------------


def test_a_free_model_is_taken_then_released() -> None:
    registry = FakeRegistry(MODEL)
    with model_lock(registry, MODEL, actor(), heartbeat_s=None) as held:
        holder = registry.leases.holder(MODEL)
        assert holder is not None and holder.run_id == "run-me"
        assert held.lease.number == 1
    assert registry.leases.is_free(MODEL)
    with model_lock(registry, MODEL, actor("next"), heartbeat_s=None) as held:
        assert held.lease.number == 2
    assert set(registry.leases.records[MODEL]) == {2}  # older records are removed by the next taker


def test_a_live_holder_blocks_and_is_named_with_the_unlock_command() -> None:
    store = FakeLeaseStore(records={MODEL: {3: record("run-other")}})
    with pytest.raises(LockHeldError, match="run-other") as caught:
        take(store)
    assert caught.value.exit_code == ExitCode.TRANSIENT
    assert "loradeploy unlock --model-name m --run-id run-other" in caught.value.one_line()
    assert set(store.records[MODEL]) == {3}  # nothing written


def test_an_unknown_model_takes_no_lock() -> None:
    registry = FakeRegistry("another")
    with pytest.raises(NotFoundError), model_lock(registry, MODEL, actor(), heartbeat_s=None):
        pass
    assert registry.leases.records == {}


def test_an_expired_lease_is_taken_over_only_after_the_skew_allowance() -> None:
    store = FakeLeaseStore(records={MODEL: {3: record("run-far", host="elsewhere", expires_at=2000.0)}})
    with pytest.raises(LockHeldError):
        take(store, now=2000.0 + CLOCK_SKEW_S - 1, alive=False)
    assert take(store, now=2000.0 + CLOCK_SKEW_S + 1) == 4


def test_a_released_lease_is_free() -> None:
    store = FakeLeaseStore(records={MODEL: {3: record("run-done", released=True)}})
    assert take(store) == 4


@pytest.mark.parametrize(
    ("where", "gone"),
    [
        ({}, True),  # same host, boot and PID namespace, process gone
        ({"host": "node-2"}, False),
        ({"boot_id": "boot-b"}, False),  # the machine rebooted: PIDs mean nothing
        ({"pid_ns": "pid:[4026532000]"}, False),  # another container with the same host name
        ({"boot_id": ""}, False),  # an older record without the identity: wait for expiry
        ({"pid": 0}, False),
    ],
)
def test_a_dead_holder_is_recognised_only_in_the_same_pid_namespace(
    where: dict[str, object], gone: bool
) -> None:
    held = LeaseRecord.model_validate_json(record("run-x", **where))
    assert holder_is_gone(held, HERE, lambda _pid, _start: False) is gone
    assert holder_is_gone(held, HERE, lambda _pid, _start: True) is False


def test_a_dead_holder_on_this_machine_is_taken_over_at_once() -> None:
    store = FakeLeaseStore(records={MODEL: {3: record("run-killed")}})
    assert take(store, alive=False) == 4


def test_a_taken_number_means_someone_else_won() -> None:
    store = FakeLeaseStore(records={MODEL: {3: record("run-done", released=True)}})
    real_create = store.create

    def lose_the_race(model: str, number: int, text: str) -> bool:
        real_create(model, number, record("run-winner"))  # another deployer got there first
        return real_create(model, number, text)

    store.create = lose_the_race  # type: ignore[method-assign]
    with pytest.raises(LockHeldError, match="run-winner"):
        take(store)


def test_our_own_create_seen_through_a_client_retry_is_ours() -> None:
    store = FakeLeaseStore()
    real_create = store.create

    def retried(model: str, number: int, text: str) -> bool:
        real_create(model, number, text)  # the first attempt reached the server...
        return real_create(model, number, text)  # ...and the retry found it taken

    store.create = retried  # type: ignore[method-assign]
    assert take(store) == 1


def test_a_stale_number_backs_off_when_a_higher_lease_exists() -> None:
    # The process read the records while 3 was the highest and released; meanwhile leases
    # 4 and 5 came and went and cleanup removed 4. Re-creating 4 succeeds, but 5 is higher.
    store = FakeLeaseStore(records={MODEL: {3: record("run-old", released=True)}})
    real_read = store.read
    reads = [0]

    def read(model: str) -> dict[int, str]:
        reads[0] += 1
        if reads[0] == 2:  # after our create of 4
            store.records[MODEL].pop(3, None)
            store.records[MODEL][5] = record("run-newer")
        return real_read(model)

    store.read = read  # type: ignore[method-assign]
    with pytest.raises(LockHeldError, match="run-newer"):
        take(store)
    assert LeaseRecord.model_validate_json(store.records[MODEL][4]).released


# -- holding: renewal, loss ---------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_renewal_keeps_a_long_phase_held_past_the_ttl() -> None:
    store = FakeLeaseStore()
    clock = Clock()
    lease = acquire(store, MODEL, actor(), clock=clock, here=HERE)
    for _ in range(10):  # ten heartbeats, 60 s apart: 600 s, twice the TTL
        clock.now += 60
        lease.renew()
    with pytest.raises(LockHeldError):
        take(store, now=clock.now + 1)
    lease.ensure_held()


def test_a_holder_whose_lease_was_taken_over_stops_before_its_next_move() -> None:
    store = FakeLeaseStore()
    clock = Clock()
    lease = acquire(store, MODEL, actor(), clock=clock, here=HERE)
    clock.now += DEFAULT_LOCK_TTL_S + CLOCK_SKEW_S + 1  # a long download, no heartbeat
    with pytest.raises(LockLostError, match="expired"):
        lease.ensure_held()
    take(store, now=clock.now, who="taker")
    with pytest.raises(LockLostError) as caught:
        lease.ensure_held()
    assert caught.value.exit_code == ExitCode.TRANSIENT
    holder = store.holder(MODEL)
    assert holder is not None and holder.run_id == "run-taker"


def test_a_lease_taken_over_while_renewals_failed_is_noticed() -> None:
    store = FakeLeaseStore()
    clock = Clock()
    lease = acquire(store, MODEL, actor(), clock=clock, here=HERE)
    # A taker that (wrongly) judged it expired: the holder must still notice.
    store.records[MODEL][lease.number + 1] = record("run-taker")
    with pytest.raises(LockLostError, match="took it over"):
        lease.ensure_held()


def test_too_little_lease_left_for_a_move_stops_the_holder() -> None:
    store = FakeLeaseStore()
    clock = Clock()
    lease = acquire(store, MODEL, actor(), clock=clock, here=HERE, ttl_s=MOVE_BUDGET_S - 1)
    with pytest.raises(LockLostError, match="too little"):
        lease.ensure_held()


def test_the_heartbeat_renews_in_the_background() -> None:
    store = FakeLeaseStore()
    lease = acquire(store, MODEL, actor(), here=HERE)
    first = lease.record.expires_at
    with Heartbeat(lease, 0.01):
        deadline = time.monotonic() + 5
        while lease.record.expires_at == first and time.monotonic() < deadline:
            time.sleep(0.01)
    assert lease.record.expires_at > first
    assert store.calls.count("write") >= 1


def test_a_registry_outage_during_a_heartbeat_is_survived() -> None:
    store = FakeLeaseStore()
    lease = acquire(store, MODEL, actor(), here=HERE)
    store.before = failing({"read"}, times=2)
    with Heartbeat(lease, 0.01):
        deadline = time.monotonic() + 5
        while store.calls.count("write") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert lease.lost is None
    lease.ensure_held()


def test_release_failure_is_reported_not_raised() -> None:
    registry = FakeRegistry(MODEL)
    with model_lock(registry, MODEL, actor(), heartbeat_s=None) as held:
        registry.leases.before = failing({"read"}, times=5)
    assert held.release_error is not None and "unreachable" in held.release_error


# -- many deployers at once ----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_of_many_racing_deployers_with_a_slow_store_exactly_one_holds(seed: int) -> None:
    rng = random.Random(seed)
    lock = threading.Lock()

    def slow_writes(call: str) -> None:
        if call in ("create", "write"):
            with lock:
                delay = rng.uniform(0, 0.05)
            time.sleep(delay)

    store = FakeLeaseStore(records={MODEL: {1: record("run-done", released=True)}}, before=slow_writes)
    start = threading.Barrier(8)
    inside = [0]
    most = [0]
    outcomes: list[str] = []

    def deployer(n: int) -> None:
        start.wait()
        try:
            # Every thread shares HERE's identity: its holder must count as alive.
            lease = acquire(store, MODEL, actor(f"d{n}"), here=HERE, alive=lambda _p, _s: True)
        except LockHeldError:
            outcomes.append("refused")
            return
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.1)
        with lock:
            inside[0] -= 1
        outcomes.append("acted")
        lease.release()

    threads = [threading.Thread(target=deployer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1
    assert outcomes.count("acted") == 1 and outcomes.count("refused") == 7


# -- hostile or broken records -------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        record("run-x", expires_at="soon"),  # type: ignore[arg-type]
        record("run-x", expires_at="nan"),  # type: ignore[arg-type]
        record("run-x", expires_at=float("inf")),
        record("run-x", expires_at=-1),
        record("", expires_at=2000.0),
        "not json",
        "[1, 2]",
        json.dumps({"run_id": "run-x"}),
        record("run-x", pid=True) + " " * 5000,
    ],
)
def test_a_malformed_lease_is_a_one_line_error_naming_it_and_how_to_clear_it(raw: str) -> None:
    store = FakeLeaseStore(records={MODEL: {7: raw}})
    with pytest.raises(MalformedLeaseError) as caught:
        take(store, now=10_000_000.0)
    line = caught.value.one_line()
    assert "fake lock object m.7" in line
    assert "loradeploy unlock --model-name m --run-id lease-7" in line
    assert "\n" not in line
    assert caught.value.exit_code == ExitCode.PERMANENT
    assert store.records[MODEL] == {7: raw}  # nothing written
    assert unlock(store, MODEL, "lease-7") is True
    assert take(store) == 8


def test_nan_expiry_does_not_disable_the_lock() -> None:
    store = FakeLeaseStore(records={MODEL: {7: record("run-x").replace("2000.0", "NaN")}})
    with pytest.raises(MalformedLeaseError):
        take(store)


# -- unlock ---------------------------------------------------------------------------------


def test_unlock_releases_only_the_named_run() -> None:
    store = FakeLeaseStore(records={MODEL: {3: record("run-killed")}})
    assert unlock(store, MODEL, "run-other") is False
    assert unlock(store, MODEL, "lease-3") is False  # a well-formed lease is named by its run
    assert store.holder(MODEL) is not None
    assert unlock(store, MODEL, "run-killed") is True
    assert store.is_free(MODEL)
    assert unlock(store, MODEL, "run-killed") is False  # already released

"""steps/restart.py: a rolling restart through the fake kubectl, with a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from loradeploy.domain.kube import RESTARTED_AT
from loradeploy.errors import DeadlineExceededError, ExitCode, NotFoundError, PermanentError
from loradeploy.results import StepResult
from loradeploy.steps.restart import restart_deployment
from support.fake_cluster import NS, FakeCluster, fake_deployment
from support.fakes import FakeClock

STAMP = "2025-06-01T12:00:00+00:00"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    monkeypatch.delenv("FAKE_KUBECTL_FAIL", raising=False)
    fake = FakeCluster(tmp_path / "cluster", monkeypatch)
    fake.folder.mkdir()
    fake.state["deployments"] = {f"{NS}/vllm": fake_deployment(replicas=2, generation=3)}
    return fake


def restart(cluster: FakeCluster, clock: FakeClock, timeout_s: float = 60.0) -> StepResult:
    return restart_deployment(
        cluster.api(),
        namespace=NS,
        deployment="vllm",
        timeout_s=timeout_s,
        clock=clock,
        sleep=clock.sleep,
        now_iso=lambda: STAMP,
    )


def test_restart_patches_the_annotation_and_waits_for_the_rollout(
    cluster: FakeCluster, clock: FakeClock
) -> None:
    cluster.state["rollout_gets"] = 2  # two polls still show the old generation
    result = restart_deployment(
        cluster.api(),
        namespace=NS,
        deployment="vllm",
        timeout_s=60,
        clock=clock,
        sleep=clock.sleep,
        now_iso=lambda: STAMP,
        poll_s=2.0,
    )

    after = cluster.load()["deployments"][f"{NS}/vllm"]
    assert after["spec"]["template"]["metadata"]["annotations"] == {RESTARTED_AT: STAMP}
    assert after["metadata"]["generation"] == 4
    assert result.step == "restart-deployment"
    assert result.details["annotation"] == {RESTARTED_AT: STAMP}
    assert result.details["polls"] == 3
    assert result.details["status"]["status"]["observedGeneration"] == 4
    assert "2 of 2 replicas" in result.details["rollout"]
    assert clock.slept == [2.0, 2.0]
    assert result.timings_s["rollout"] == 4.0
    patches = [call for call in cluster.calls() if call[0] == "patch"]
    assert patches == [
        [
            "patch",
            "deployment",
            "vllm",
            "-n",
            NS,
            "-p",
            f'{{"spec": {{"template": {{"metadata": {{"annotations": {{"{RESTARTED_AT}": "{STAMP}"}}}}}}}}}}',
        ]
    ]


def test_a_rollout_that_never_completes_hits_the_deadline(cluster: FakeCluster, clock: FakeClock) -> None:
    cluster.state["stuck"] = [f"{NS}/vllm"]
    cluster.state["deployments"][f"{NS}/vllm"]["status"]["updatedReplicas"] = 1

    with pytest.raises(DeadlineExceededError) as caught:
        restart_deployment(
            cluster.api(),
            namespace=NS,
            deployment="vllm",
            timeout_s=5,
            clock=clock,
            sleep=clock.sleep,
            now_iso=lambda: STAMP,
            poll_s=2.0,
        )

    error = caught.value
    assert f"deployment {NS}/vllm" in error.message
    assert "1 of 2 replicas updated" in error.message
    assert error.exit_code == ExitCode.TRANSIENT
    assert clock.slept == [2.0, 2.0, 1.0]  # never sleeps past the deadline
    assert sum(call[:2] == ["get", "deployment"] for call in cluster.calls()) == 4


def test_a_stalled_rollout_stops_at_once(cluster: FakeCluster, clock: FakeClock) -> None:
    cluster.state["stuck"] = [f"{NS}/vllm"]
    status = cluster.state["deployments"][f"{NS}/vllm"]["status"]
    status["updatedReplicas"] = 1
    status["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "vllm-7c9" has timed out progressing.',
        }
    ]
    with pytest.raises(PermanentError, match=r"stalled.*timed out progressing"):
        restart(cluster, clock, timeout_s=600)
    assert clock.slept == [2.0]  # the first poll still shows the old generation


def test_restarting_a_missing_deployment_is_not_found(cluster: FakeCluster, clock: FakeClock) -> None:
    cluster.state["deployments"] = {}
    with pytest.raises(NotFoundError, match=f"deployment {NS}/vllm"):
        restart(cluster, clock)
    assert clock.slept == []

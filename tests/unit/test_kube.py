"""domain/kube.py (pure) and clients/kube.py through the fake kubectl binary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loradeploy.clients.kube import KubectlApi, RemoteCommandError
from loradeploy.domain.kube import (
    Pod,
    parse_sha256sum,
    pods_from_json,
    ready_pods_from_json,
    remote_path,
    rollout_complete,
    rollout_stalled,
    version_folders_from_find,
)
from loradeploy.errors import (
    AuthenticationError,
    ExitCode,
    NotFoundError,
    PermanentError,
    ServerUnavailableError,
    UsageError,
)
from support.fake_cluster import CONTAINER, NS, SELECTOR, FakeCluster, fake_deployment, fake_pod


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    monkeypatch.delenv("FAKE_KUBECTL_FAIL", raising=False)
    fake = FakeCluster(tmp_path / "cluster", monkeypatch)
    fake.folder.mkdir()
    fake.state["pods"] = [
        fake_pod("vllm-a", "10.0.0.1"),
        fake_pod("vllm-b", "10.0.0.2", ready=False),
        fake_pod("vllm-c", "10.0.0.3", port=None),
        fake_pod("other", "10.0.0.9", labels={"app": "mlflow"}),
    ]
    fake.state["deployments"] = {f"{NS}/vllm": fake_deployment()}
    return fake


# -- pure: which pods ------------------------------------------------------------------


def pod_item(
    name: str,
    *,
    ready: str = "True",
    phase: str = "Running",
    ip: str | None = "10.1.0.5",
    containers: list[dict[str, Any]] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if deleting:
        metadata["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]}
    if ip:
        status["podIP"] = ip
    default = [{"name": "vllm", "ports": [{"containerPort": 8080}, {"containerPort": 9090}]}]
    return {"metadata": metadata, "spec": {"containers": containers or default}, "status": status}


def test_ready_pods_keeps_only_ready_running_addressable_pods() -> None:
    pod_list = {
        "items": [
            pod_item("ok"),
            pod_item("not-ready", ready="False"),
            pod_item("pending", phase="Pending"),
            pod_item("no-ip", ip=None),
            pod_item("terminating", deleting=True),
            pod_item("no-vllm", containers=[{"name": "sidecar"}]),
        ]
    }
    assert ready_pods_from_json(pod_list, "vllm") == [Pod("ok", "10.1.0.5", True, 8080)]
    assert {pod.name for pod in pods_from_json(pod_list, "vllm")} == {
        "ok",
        "not-ready",
        "pending",
        "no-ip",
        "terminating",
    }


def test_port_comes_from_the_named_container_first_port() -> None:
    containers = [
        {"name": "proxy", "ports": [{"containerPort": 443}]},
        {"name": "vllm", "ports": [{"containerPort": 8001}, {"containerPort": 9000}]},
    ]
    [pod] = ready_pods_from_json({"items": [pod_item("p", containers=containers)]}, "vllm")
    assert pod.port == 8001
    [bare] = ready_pods_from_json({"items": [pod_item("p", containers=[{"name": "vllm"}])]}, "vllm")
    assert bare.port is None


def test_pod_url_defaults_to_port_8000_and_brackets_ipv6() -> None:
    assert Pod("p", "10.1.0.5", True, None).url() == "http://10.1.0.5:8000"
    assert Pod("p", "fd00::5", True, 8443).url("https") == "https://[fd00::5]:8443"


def test_empty_pod_list_gives_no_pods() -> None:
    assert ready_pods_from_json({"items": []}, "vllm") == []
    assert ready_pods_from_json({}, "vllm") == []


# -- pure: is the rollout complete -------------------------------------------------------


def deployment(
    *,
    generation: int = 4,
    observed: int = 4,
    replicas: int = 3,
    current: int = 3,
    updated: int = 3,
    available: int = 3,
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": current,
            "updatedReplicas": updated,
            "availableReplicas": available,
        },
    }


def test_rollout_complete_when_every_replica_is_new_and_available() -> None:
    done, detail = rollout_complete(deployment())
    assert done
    assert "3 of 3" in detail


@pytest.mark.parametrize(
    ("fields", "pending"),
    [
        ({"observed": 3}, "has not observed generation 4"),
        ({"updated": 1, "current": 4, "available": 3}, "1 of 3 replicas updated"),
        ({"current": 4, "available": 4}, "1 old replicas still terminating"),
        ({"available": 2}, "2 of 3 replicas available"),
    ],
)
def test_rollout_pending_says_what_is_left(fields: dict[str, int], pending: str) -> None:
    done, detail = rollout_complete(deployment(**fields))
    assert not done
    assert pending in detail


def test_rollout_of_zero_replicas_is_complete_and_missing_status_is_not() -> None:
    assert rollout_complete(deployment(replicas=0, current=0, updated=0, available=0))[0]
    done, detail = rollout_complete({"metadata": {"generation": 2}, "spec": {"replicas": 1}})
    assert not done
    assert "generation 2" in detail


def test_rollout_without_spec_uses_status_replicas() -> None:
    dep = deployment(current=2, updated=2, available=2)
    del dep["spec"]
    assert rollout_complete(dep)[0]


def test_rollout_stalled_only_for_the_current_generation() -> None:
    dep = deployment(updated=1)
    dep["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "too slow",
        }
    ]
    assert rollout_stalled(dep) == "too slow"
    dep["metadata"]["generation"] = 5  # a new patch the controller has not seen yet
    assert rollout_stalled(dep) is None
    assert rollout_stalled(deployment()) is None


# -- pure: remote paths and command output ----------------------------------------------


def test_remote_path_accepts_folders_below_root() -> None:
    assert remote_path("/mnt/adapters", "/mnt/adapters/live/qa-v3", min_depth=2) == "/mnt/adapters/live/qa-v3"
    assert (
        remote_path("/mnt/adapters/", "/mnt/adapters/lora-modules.json") == "/mnt/adapters/lora-modules.json"
    )


@pytest.mark.parametrize(
    "path",
    [
        "/mnt/adapters/live/../../etc",
        "/mnt/adapters/live/qa..v3",
        "/mnt/other/live/qa-v3",
        "/mnt/adapters",
        "/mnt/adapters/live",
        "/mnt/adapters/.staging/x",
        "/mnt/adapters/live/-rf",
        "mnt/adapters/live/qa-v3",
        "/mnt/adapters/live/qa v3",
    ],
)
def test_remote_path_refuses_anything_else(path: str) -> None:
    with pytest.raises(UsageError, match="not allowed"):
        remote_path("/mnt/adapters", path, min_depth=2)


def test_parse_sha256sum_reads_names_and_digests() -> None:
    a, b = "a" * 64, "B" * 64
    out = f"{a}  /mnt/adapters/s/m-v1/adapter_config.json\n{b} */mnt/adapters/s/m-v1/w.safetensors\n"
    assert parse_sha256sum(out) == {"adapter_config.json": a, "w.safetensors": b.lower()}


def test_version_folders_from_find_leaves_out_hidden_slots() -> None:
    out = "/r/live/m-v2\n/r/.staging/abc\n/r/cand/m-v1\n\n"
    assert version_folders_from_find(out) == ["/r/cand/m-v1", "/r/live/m-v2"]


# -- KubectlApi through the fake kubectl ---------------------------------------------------


def test_ready_pods_asks_for_the_selector_and_drops_pods_that_are_not_ready(cluster: FakeCluster) -> None:
    pods = cluster.api().ready_pods(NS, SELECTOR, CONTAINER)
    assert pods == [Pod("vllm-a", "10.0.0.1", True, 8000), Pod("vllm-c", "10.0.0.3", True, None)]
    assert cluster.calls() == [["get", "pods", "-n", NS, "-l", SELECTOR, "-o", "json"]]


def test_context_is_passed_before_the_command(cluster: FakeCluster) -> None:
    cluster.api(context="prod-eu").ready_pods(NS, SELECTOR, CONTAINER)
    assert cluster.calls()[0][:3] == ["--context", "prod-eu", "get"]


def test_exec_returns_stdout_and_remote_failure_keeps_the_exit_code(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    api = cluster.api()
    (tmp_path / "hello.txt").write_text("hi\n")
    assert api.exec(NS, "vllm-a", CONTAINER, ["cat", str(tmp_path / "hello.txt")]) == "hi\n"
    with pytest.raises(RemoteCommandError) as caught:
        api.exec(NS, "vllm-a", CONTAINER, ["test", "-d", str(tmp_path / "missing")])
    assert caught.value.returncode == 1
    assert "vllm-a" in caught.value.message


def test_deployment_status_keeps_generation_replicas_and_status(cluster: FakeCluster) -> None:
    status = cluster.api().deployment_status(NS, "vllm")
    assert status["metadata"]["generation"] == 3
    assert status["spec"] == {"replicas": 2}
    assert status["status"]["availableReplicas"] == 2
    assert "template" not in status["spec"]


def test_missing_kubectl_is_a_usage_error_saying_how_to_install(tmp_path: Path) -> None:
    api = KubectlApi(kubectl=str(tmp_path / "no-such-kubectl"))
    with pytest.raises(UsageError) as caught:
        api.ready_pods(NS, SELECTOR, CONTAINER)
    assert "no-such-kubectl" in caught.value.message
    assert "kubernetes-client" in caught.value.hint
    assert caught.value.exit_code == ExitCode.USAGE


def test_forbidden_names_the_rbac_permission(cluster: FakeCluster) -> None:
    cluster.fail("exec", "Forbidden")
    with pytest.raises(PermanentError) as caught:
        cluster.api().exec(NS, "vllm-a", CONTAINER, ["test", "-d", "/"])
    assert not isinstance(caught.value, RemoteCommandError)
    assert "create pods/exec" in caught.value.message
    assert "create pods/exec" in caught.value.hint
    assert caught.value.exit_code == ExitCode.PERMANENT


def test_forbidden_without_details_falls_back_to_the_known_permission(cluster: FakeCluster) -> None:
    cluster.fail("patch", "Error from server (Forbidden): access denied")
    with pytest.raises(PermanentError, match="patch deployments"):
        cluster.api().patch_restart(NS, "vllm", "2025-01-01T00:00:00+00:00")


@pytest.mark.parametrize(
    "stderr",
    [
        "Unable to connect to the server: dial tcp 10.96.0.1:443: connect: connection refused",
        'E1127 05:40:53.153336   15034 memcache.go:265] "Unhandled Error" err="couldn\'t get current server '
        'API group list: Get \\"http://localhost:8080/api?timeout=32s\\": dial tcp 127.0.0.1:8080"\n'
        "The connection to the server localhost:8080 was refused - did you specify the right host or port?",
        "Error from server (ServiceUnavailable): the server is currently unable to handle the request",
    ],
)
def test_connection_failures_are_transient(cluster: FakeCluster, stderr: str) -> None:
    cluster.fail("get", stderr)
    with pytest.raises(ServerUnavailableError) as caught:
        cluster.api().ready_pods(NS, SELECTOR, CONTAINER)
    assert caught.value.exit_code == ExitCode.TRANSIENT
    assert SELECTOR in caught.value.message
    assert "memcache" not in caught.value.message  # kubectl's log lines are dropped


def test_unknown_context_is_a_usage_error(cluster: FakeCluster) -> None:
    cluster.fail("get", "Error in configuration: context was not found for specified context: nope")
    with pytest.raises(UsageError, match="context was not found"):
        cluster.api(context="nope").ready_pods(NS, SELECTOR, CONTAINER)


def test_a_call_that_hangs_hits_the_timeout(cluster: FakeCluster) -> None:
    cluster.fail("get", "hang")
    with pytest.raises(ServerUnavailableError, match=r"did not finish within 0\.5s"):
        cluster.api(timeout_s=0.5).deployment_status(NS, "vllm")


def test_missing_deployment_is_not_found_and_named(cluster: FakeCluster) -> None:
    with pytest.raises(NotFoundError, match=f"deployment {NS}/nope"):
        cluster.api().deployment_status(NS, "nope")


def test_unauthorized_is_an_authentication_error(cluster: FakeCluster) -> None:
    cluster.fail("get", "Unauthorized")
    with pytest.raises(AuthenticationError, match="credentials"):
        cluster.api().ready_pods(NS, SELECTOR, CONTAINER)


def test_long_stderr_is_cut_short(cluster: FakeCluster) -> None:
    cluster.fail("get", "boom " * 500)
    with pytest.raises(PermanentError) as caught:
        cluster.api().ready_pods(NS, SELECTOR, CONTAINER)
    assert len(caught.value.message) < 400

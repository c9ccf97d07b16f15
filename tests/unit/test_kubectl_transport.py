"""KubectlTransport: adapter folders on every Ready pod, through the fake kubectl binary.

Two set-ups: pods with separate filesystems (each pod's own ``root_map``), and pods
sharing one volume (the fake's default identity mapping onto ``tmp_path``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loradeploy.clients.files import MANIFEST, KubectlTransport, LocalFolderTransport
from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.adapter import inspect_adapter
from loradeploy.errors import InvalidAdapterError, NotFoundError, PermanentError, UsageError
from support.fake_cluster import CONTAINER, FAKE_KUBECTL, NS, SELECTOR, FakeCluster, exec_argvs, fake_pod
from support.fakes import FakeVllmServer
from support.synthetic import write_adapter

ROOT = "/mnt/adapters"
DEST = f"{ROOT}/aws-rag-qa-live/aws-rag-qa-v3"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    """Two Ready pods with separate filesystems under tmp_path/pod-a and pod-b, one not Ready."""
    monkeypatch.delenv("FAKE_KUBECTL_FAIL", raising=False)
    fake = FakeCluster(tmp_path / "cluster", monkeypatch)
    fake.folder.mkdir()
    fake.state["pods"] = [
        fake_pod(name, ip, ready=ready, port=port, root_map={ROOT: str(tmp_path / name)})
        for name, ip, ready, port in [
            ("pod-a", "10.0.0.1", True, 8000),
            ("pod-b", "10.0.0.2", True, None),
            ("pod-c", "10.0.0.3", False, 8000),
        ]
    ]
    return fake


def on_pod(tmp_path: Path, pod: str, server_path: str) -> Path:
    """Where a pod path lands on this machine in the separate-filesystems set-up."""
    return tmp_path / pod / Path(server_path).relative_to(ROOT)


def transport(cluster: FakeCluster, root: str = ROOT) -> KubectlTransport:
    return KubectlTransport(cluster.api(), NS, SELECTOR, CONTAINER, root=root)


def staged_adapter(tmp_path: Path, name: str = "adapter", fill: int = 7) -> tuple[Path, dict[str, str]]:
    folder = write_adapter(tmp_path / "staging" / name, fill=fill)
    return folder, inspect_adapter(folder).files


def test_discovers_ready_pods_once_and_addresses_each_directly(cluster: FakeCluster) -> None:
    kube = transport(cluster)
    assert [pod.name for pod in kube.pods] == ["pod-a", "pod-b"]
    assert kube.replica_urls() == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert kube.replica_urls("https")[0] == "https://10.0.0.1:8000"
    kube.list_version_folders()
    assert sum(call[:2] == ["get", "pods"] for call in cluster.calls()) == 1


def test_no_ready_pod_is_not_found_naming_the_selector(cluster: FakeCluster) -> None:
    cluster.state["pods"] = [p for p in cluster.state["pods"] if not p["ready"]]
    with pytest.raises(NotFoundError, match=f"selector '{SELECTOR}' in namespace {NS}"):
        transport(cluster)


def test_relative_root_is_refused(cluster: FakeCluster) -> None:
    with pytest.raises(UsageError, match="absolute"):
        transport(cluster, root="mnt/adapters")


def test_place_copies_to_a_temporary_name_then_moves_it_on_every_pod(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    kube = transport(cluster)
    local, digests = staged_adapter(tmp_path)
    cluster.forget_calls()

    assert kube.place(local, DEST, digests) is True

    for pod in ("pod-a", "pod-b"):
        placed = on_pod(tmp_path, pod, DEST)
        assert inspect_adapter(placed).files == digests
        assert [p.name for p in placed.parent.iterdir()] == ["aws-rag-qa-v3"]  # no temporary left
    assert not on_pod(tmp_path, "pod-c", DEST).exists()  # not Ready: not addressed
    copies = [call for call in cluster.calls() if call[0] == "cp"]
    assert len(copies) == 2
    for call in copies:
        remote = call[2].split(":", 1)[1]
        assert remote.startswith(f"{ROOT}/aws-rag-qa-live/.aws-rag-qa-v3.tmp-")
        assert ["mv", "-T", remote, DEST] in exec_argvs(cluster.calls())
    assert ["sha256sum", f"{DEST}/adapter_config.json", f"{DEST}/adapter_model.safetensors"] in exec_argvs(
        cluster.calls()
    )


def test_place_reuses_a_verified_folder_and_writes_nothing(cluster: FakeCluster, tmp_path: Path) -> None:
    kube = transport(cluster)
    local, digests = staged_adapter(tmp_path)
    assert kube.place(local, DEST, digests) is True
    cluster.forget_calls()

    assert kube.place(local, DEST, digests) is False

    argvs = exec_argvs(cluster.calls())
    assert not [call for call in cluster.calls() if call[0] == "cp"]
    assert not [argv for argv in argvs if argv[0] in ("mv", "rm", "mkdir")]
    assert sum(argv[0] == "sha256sum" for argv in argvs) == 2  # verified on both pods


def test_place_refuses_a_tampered_existing_folder_and_leaves_it(cluster: FakeCluster, tmp_path: Path) -> None:
    kube = transport(cluster)
    local, digests = staged_adapter(tmp_path)
    existing = on_pod(tmp_path, "pod-b", DEST)
    shutil.copytree(local, existing)
    (existing / "adapter_model.safetensors").write_bytes(b"tampered")

    cluster.forget_calls()

    with pytest.raises(InvalidAdapterError, match=r"pod-b: sha256 of adapter_model\.safetensors"):
        kube.place(local, DEST, digests)

    assert (existing / "adapter_model.safetensors").read_bytes() == b"tampered"  # not overwritten
    assert not on_pod(tmp_path, "pod-a", DEST).exists()  # checked before any pod was written
    assert not [call for call in cluster.calls() if call[0] == "cp"]


def test_place_refuses_an_existing_folder_with_extra_files(cluster: FakeCluster, tmp_path: Path) -> None:
    kube = transport(cluster)
    local, digests = staged_adapter(tmp_path)
    existing = on_pod(tmp_path, "pod-a", DEST)
    shutil.copytree(local, existing)
    (existing / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(InvalidAdapterError, match=r"extra \['adapter_model.bin'\]"):
        kube.place(local, DEST, digests)


def test_a_copy_that_does_not_match_the_digests_is_removed(cluster: FakeCluster, tmp_path: Path) -> None:
    kube = transport(cluster)
    local, _ = staged_adapter(tmp_path)
    _, other_digests = staged_adapter(tmp_path, name="other", fill=3)  # what the registry recorded

    with pytest.raises(InvalidAdapterError, match="placed folder"):
        kube.place(local, DEST, other_digests)

    assert not on_pod(tmp_path, "pod-a", DEST).exists()


def test_a_failed_copy_leaves_neither_the_final_path_nor_the_temporary(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    kube = transport(cluster)
    local, digests = staged_adapter(tmp_path)
    cluster.fail("cp", 'error: exec: "tar": executable file not found in $PATH')

    with pytest.raises(PermanentError, match="needs tar"):
        kube.place(local, DEST, digests)

    slot = on_pod(tmp_path, "pod-a", DEST).parent
    assert list(slot.iterdir()) == []


@pytest.mark.parametrize(
    "bad",
    [
        f"{ROOT}/aws-rag-qa-live/../../../etc",
        "/etc/aws-rag-qa-live/aws-rag-qa-v3",
        f"{ROOT}/aws-rag-qa-v3",
        f"{ROOT}/../adapters/live/m-v1",
    ],
)
def test_place_refuses_paths_outside_the_root_before_any_command(
    cluster: FakeCluster, tmp_path: Path, bad: str
) -> None:
    kube = transport(cluster)
    local, digests = staged_adapter(tmp_path)
    cluster.forget_calls()
    with pytest.raises(UsageError, match="not allowed"):
        kube.place(local, bad, digests)
    assert cluster.calls() == []


def test_digest_names_that_are_paths_are_refused(cluster: FakeCluster, tmp_path: Path) -> None:
    kube = transport(cluster)
    local, digests = staged_adapter(tmp_path)
    with pytest.raises(InvalidAdapterError, match="not a plain file name"):
        kube.place(local, DEST, {**digests, "../../etc/passwd": "0" * 64})


def test_pods_sharing_a_volume_get_one_copy(cluster: FakeCluster, tmp_path: Path) -> None:
    for pod in cluster.state["pods"]:
        del pod["root_map"]  # identity mapping: both pods see tmp_path/shared
    root = str(tmp_path / "shared")
    kube = transport(cluster, root=root)
    local, digests = staged_adapter(tmp_path)
    dest = f"{root}/aws-rag-qa-live/aws-rag-qa-v3"

    assert kube.place(local, dest, digests) is True

    assert inspect_adapter(Path(dest)).files == digests
    assert sum(call[0] == "cp" for call in cluster.calls()) == 1
    assert kube.list_version_folders() == [dest]


def test_list_version_folders_is_the_union_over_pods(cluster: FakeCluster, tmp_path: Path) -> None:
    kube = transport(cluster)
    for pod, rel in [
        ("pod-a", "live/m-v1"),
        ("pod-a", "cand/m-v2"),
        ("pod-b", "live/m-v1"),
        ("pod-b", "live/m-v4"),
    ]:
        (tmp_path / pod / rel).mkdir(parents=True)
    (tmp_path / "pod-a" / ".staging" / "scratch").mkdir(parents=True)
    (tmp_path / "pod-b" / MANIFEST).write_text("{}")

    assert kube.list_version_folders() == [f"{ROOT}/cand/m-v2", f"{ROOT}/live/m-v1", f"{ROOT}/live/m-v4"]


def test_list_version_folders_without_a_root_folder_is_empty(cluster: FakeCluster) -> None:
    assert transport(cluster).list_version_folders() == []


def test_remove_deletes_on_every_pod_and_only_below_the_root(cluster: FakeCluster, tmp_path: Path) -> None:
    kube = transport(cluster)
    for pod in ("pod-a", "pod-b"):
        (tmp_path / pod / "live" / "m-v1").mkdir(parents=True)
        (tmp_path / pod / "live" / "m-v2").mkdir(parents=True)

    kube.remove(f"{ROOT}/live/m-v1")

    assert kube.list_version_folders() == [f"{ROOT}/live/m-v2"]
    for bad in (ROOT, f"{ROOT}/live", f"{ROOT}/live/../../..", "/"):
        with pytest.raises(UsageError):
            kube.remove(bad)
    assert (tmp_path / "pod-a" / "live" / "m-v2").is_dir()


def test_write_manifest_matches_the_local_transport_on_every_pod(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    modules = [{"name": "aws-rag-qa-live", "path": f"{ROOT}/aws-rag-qa-live/aws-rag-qa-v3"}]
    kube = transport(cluster)
    kube.write_manifest(modules)
    kube.write_manifest(modules)  # replacing an existing manifest works too
    local = LocalFolderTransport(tmp_path / "local")
    local.write_manifest(modules)

    expected = (tmp_path / "local" / MANIFEST).read_text()
    for pod in ("pod-a", "pod-b"):
        written = tmp_path / pod / MANIFEST
        assert written.read_text() == expected
        assert json.loads(written.read_text()) == {"modules": modules}
        assert [p.name for p in written.parent.iterdir()] == [MANIFEST]  # no temporary left
    assert any(
        argv[:2] == ["mv", "-T"] and argv[-1] == f"{ROOT}/{MANIFEST}" for argv in exec_argvs(cluster.calls())
    )


def test_staging_is_a_fresh_local_path_removed_afterwards(cluster: FakeCluster) -> None:
    kube = transport(cluster)
    with kube.staging() as area:
        assert not area.exists()
        assert area.parent.is_dir()
        write_adapter(area)
    assert not area.parent.exists()


def test_placed_folders_and_files_are_managed_by_the_pods_group(cluster: FakeCluster, tmp_path: Path) -> None:
    """Issue 11.5: whatever user kubectl exec runs as in the vLLM container, what it
    writes is group-writable (slot folders setgid), so the reconcile sidecar, in the pod's
    fsGroup, can replace and delete it. The fake runs the commands here under the usual
    umask 022, as a container does."""
    old_umask = os.umask(0o022)
    try:
        kube = transport(cluster)
        local, digests = staged_adapter(tmp_path)
        assert kube.place(local, DEST, digests) is True
        kube.write_manifest([{"name": "aws-rag-qa-live", "path": DEST}])
    finally:
        os.umask(old_umask)
    for pod in ("pod-a", "pod-b"):
        version = on_pod(tmp_path, pod, DEST)
        slot = version.parent
        assert stat.S_IMODE(slot.stat().st_mode) & 0o2070 == 0o2070, oct(slot.stat().st_mode)
        for path in [version, *version.rglob("*"), on_pod(tmp_path, pod, f"{ROOT}/{MANIFEST}")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            wanted = 0o070 if path.is_dir() else 0o060
            assert mode & wanted == wanted, (path, oct(mode))
            assert mode & 0o002 == 0, (path, oct(mode))


# -- every Ready pod, for the commands that only talk to vLLM (issue 11.4) -----------------


@pytest.fixture
def pod_servers(cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """In-memory vLLM servers at the Ready pods' URLs; the CLI's clients reach them, and
    nothing else (no traffic leaves the test)."""
    from loradeploy.clients import wiring

    cluster.save()
    servers = {url: FakeVllmServer() for url in ("http://10.0.0.1:8000", "http://10.0.0.2:8000")}

    @contextmanager
    def fake_vllm(
        settings: Any, url: str | None = None, *, timeout_s: float | None = None
    ) -> Iterator[VllmClient]:
        assert url in servers, f"addressed {url}, not a Ready pod"
        with VllmClient(url, transport=servers[url].transport()) as client:
            yield client

    monkeypatch.setattr(wiring, "vllm_client", fake_vllm)
    return servers


def pods_flags() -> list[str]:
    return [f"--pods={NS}/{SELECTOR}", f"--kubectl={FAKE_KUBECTL}"]


def test_smoke_test_checks_every_ready_pod_and_names_them(
    pod_servers: dict[str, Any], tmp_path: Path
) -> None:
    from loradeploy.cli import app

    slot = "aws-rag-qa-candidate"
    for server in pod_servers.values():
        server.adapters = {slot: "/mnt/adapters/aws-rag-qa-candidate/aws-rag-qa-v3"}
    args = ["smoke-test", f"--adapter-name={slot}", "--no-compare-base", f"--output-dir={tmp_path / 'out'}"]
    done = CliRunner().invoke(app, [*args, *pods_flags()])
    assert done.exit_code == 0, done.output
    written = json.loads((tmp_path / "out" / "result.json").read_text())
    assert written["details"]["pods"] == list(pod_servers)
    for url in pod_servers:
        assert any(check["name"].endswith(f"@{url}") for check in written["checks"])
        assert pod_servers[url].calls, url
    # One pod does not serve the slot: the smoke test stops, naming that pod.
    pod_servers["http://10.0.0.2:8000"].adapters = {}
    done = CliRunner().invoke(app, [*args, *pods_flags()])
    assert done.exit_code != 0, done.output
    error = json.loads((tmp_path / "out" / "result.json").read_text())["error"]
    assert "http://10.0.0.2:8000" in error and slot in error


def test_status_and_set_staged_alias_address_every_ready_pod(
    pod_servers: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loradeploy import cli
    from loradeploy.clients import wiring
    from support.fake_registry import FakeRegistry

    registry = FakeRegistry(model="aws-rag-qa")  # set_alias would fail the test: never reached
    registry.add_version("3", write_adapter(tmp_path / "v3", fill=3))
    monkeypatch.setattr(wiring, "registry_client", lambda settings: registry)
    slot = "aws-rag-qa-candidate"
    served = "/mnt/adapters/aws-rag-qa-candidate/aws-rag-qa-v3"
    pod_servers["http://10.0.0.1:8000"].adapters = {slot: served}  # pod b does not serve it
    staged = ["set-staged-alias", "--model-name=aws-rag-qa", "--source=version:3", f"--slot-name={slot}"]
    done = CliRunner().invoke(cli.app, [*staged, *pods_flags()])
    assert done.exit_code != 0, done.output  # refused: pod b does not serve version 3
    assert "10.0.0.2:8000" in done.output
    assert "staged" not in registry.aliases
    assert all(server.calls for server in pod_servers.values())
    out = tmp_path / "status"
    done = CliRunner().invoke(
        cli.app, ["status", "--model-name=aws-rag-qa", f"--output-dir={out}", *pods_flags()]
    )
    written = json.loads((out / "result.json").read_text())
    names = " ".join(check["name"] for check in written["checks"])
    assert all(url in names for url in pod_servers), names


def test_a_gate_measures_the_first_ready_pod_not_the_service(cluster: FakeCluster, tmp_path: Path) -> None:
    """The gate's vLLM is a discovered pod (here one where nothing listens, so the gate
    stops transient and its error names the pod), never the --vllm-url Service."""
    from loradeploy.cli import app

    cluster.state["pods"] = [fake_pod("pod-a", "127.0.0.1", port=9), fake_pod("pod-b", "127.0.0.1", port=10)]
    cluster.save()
    eval_data = Path(__file__).resolve().parents[2] / "data" / "aws-rag-qa" / "eval.jsonl"
    out = tmp_path / "out"
    done = CliRunner().invoke(
        app,
        [
            "perf-decision",
            "--model-name=aws-rag-qa",
            "--vllm-url=http://127.0.0.1:11",
            "--tracking-uri=http://127.0.0.1:12",
            f"--eval-data={eval_data}",
            f"--output-dir={out}",
            *pods_flags(),
        ],
    )
    assert done.exit_code == 75, done.output
    error = json.loads((out / "result.json").read_text())["error"]
    assert "127.0.0.1:9" in error and "127.0.0.1:11" not in error, error

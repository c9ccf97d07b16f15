"""clients/files.py: LocalFolderTransport places verified folders, never rewrites one."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from loradeploy.clients.files import MANIFEST, LocalFolderTransport
from loradeploy.domain.adapter import inspect_adapter
from loradeploy.domain.layout import version_dir
from loradeploy.errors import InvalidAdapterError, PermanentError, UsageError
from support.synthetic import write_adapter


@pytest.fixture
def transport(tmp_path: Path) -> LocalFolderTransport:
    return LocalFolderTransport(tmp_path / "adapters", tmp_path / "staging")


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}


def test_place_renames_a_verified_folder_into_place(transport: LocalFolderTransport) -> None:
    dest = version_dir(transport.root, "live", "aws-rag-qa", "1")
    with transport.staging() as scratch:
        write_adapter(scratch)
        digests = inspect_adapter(scratch).files

        assert transport.place(scratch, dest, digests) is True

    assert sorted(p.name for p in Path(dest).iterdir()) == sorted(digests)
    assert inspect_adapter(Path(dest)).files == digests
    assert [p.name for p in Path(dest).parent.iterdir()] == ["aws-rag-qa-v1"]  # no temporary left


def test_staging_is_off_the_served_root_and_removed_afterwards(
    transport: LocalFolderTransport, tmp_path: Path
) -> None:
    with transport.staging() as scratch:
        assert not scratch.resolve().is_relative_to(transport.root_path.resolve())
        assert scratch.is_relative_to(tmp_path / "staging")
        write_adapter(scratch)
    assert not scratch.exists()
    assert not transport.root_path.exists()  # staging wrote nothing on the served volume


def test_staging_defaults_to_the_system_temp_folder(tmp_path: Path) -> None:
    with LocalFolderTransport(tmp_path / "adapters").staging() as scratch:
        assert scratch.is_relative_to(Path(tempfile.gettempdir()))
        assert not scratch.is_relative_to(tmp_path / "adapters")


@pytest.mark.parametrize("inside", [".staging", "live/.scratch", "."])
def test_a_staging_folder_below_the_served_root_is_refused(tmp_path: Path, inside: str) -> None:
    transport = LocalFolderTransport(tmp_path / "adapters", tmp_path / "adapters" / inside)
    with pytest.raises(UsageError) as caught, transport.staging():
        pass
    assert "LORADEPLOY_STAGING_DIR" in caught.value.one_line()


def test_placing_copies_into_a_hidden_name_then_renames(
    transport: LocalFolderTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = Path(version_dir(transport.root, "live", "aws-rag-qa", "1"))
    seen: list[tuple[str, bool]] = []
    real_rename = os.rename

    def watching_rename(src: str, dst: str) -> None:
        seen.append((Path(src).name, Path(dst).exists()))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", watching_rename)
    with transport.staging() as scratch:
        digests = inspect_adapter(write_adapter(scratch)).files
        assert transport.place(scratch, str(dest), digests) is True
        assert scratch.is_dir()  # copied, the staging copy stays until the step ends
    assert len(seen) == 1
    name, existed = seen[0]
    assert name.startswith(".aws-rag-qa-v1.tmp-") and not existed


def test_a_full_disk_while_placing_leaves_nothing_and_names_the_folder(
    transport: LocalFolderTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = Path(version_dir(transport.root, "live", "aws-rag-qa", "1"))

    def full_disk(src: str, dst: str, **_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() reports it

    with transport.staging() as scratch:
        digests = inspect_adapter(write_adapter(scratch)).files
        monkeypatch.setattr(shutil, "copyfile", full_disk)
        with pytest.raises(PermanentError) as caught:
            transport.place(scratch, str(dest), digests)
    assert type(caught.value) is PermanentError
    assert str(dest.parent) in caught.value.message and "MiB free" in caught.value.message
    assert list(dest.parent.iterdir()) == []  # no half copy, no hidden temporary


def age(path: Path, seconds: float) -> Path:
    """Make ``path`` and its entries look untouched for ``seconds``."""
    then = time.time() - seconds
    for entry in [*path.iterdir(), path] if path.is_dir() else [path]:
        os.utime(entry, (then, then))
    return path


def test_leftovers_of_killed_runs_are_removed_when_staging_starts(
    transport: LocalFolderTransport, tmp_path: Path
) -> None:
    slot = transport.root_path / "live"
    served = slot / "aws-rag-qa-v1"
    write_adapter(served)
    age(served, 7200)  # a served version folder, however old, is not a leftover
    old_scratch = age(write_adapter(tmp_path / "staging" / "loradeploy-scratch-0123abcd"), 1000)
    young_scratch = tmp_path / "staging" / "loradeploy-scratch-4567cdef"
    young_scratch.mkdir()
    not_ours = age(write_adapter(tmp_path / "staging" / "someone-elses"), 1000)  # a shared /tmp
    old_tmp = age(write_adapter(slot / ".aws-rag-qa-v2.tmp-0a1b2c3d4e5f"), 1000)
    young_tmp = slot / ".aws-rag-qa-v3.tmp-abcdefabcdef"
    young_tmp.mkdir()
    legacy = transport.root_path / ".staging" / "89ab"
    legacy.mkdir(parents=True)
    age(legacy, 1000)

    with transport.staging():
        pass

    assert not old_scratch.exists() and not old_tmp.exists() and not legacy.exists()
    assert young_scratch.is_dir() and young_tmp.is_dir()  # a live run may still be writing them
    assert not_ours.is_dir()
    assert inspect_adapter(served).rank == 16


def test_write_manifest_on_a_read_only_disk_is_a_permanent_error(
    transport: LocalFolderTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_text", read_only)
    with pytest.raises(PermanentError) as caught:
        transport.write_manifest([{"name": "live", "path": "/x/live/m-v1"}])
    assert transport.root in caught.value.message and "free" in caught.value.message
    assert caught.value.exit_code == 3


def test_write_manifest_where_a_folder_has_its_name_is_a_permanent_error(
    transport: LocalFolderTransport,
) -> None:
    (transport.root_path / MANIFEST).mkdir(parents=True)  # e.g. a slot named lora-modules.json
    with pytest.raises(PermanentError) as caught:
        transport.write_manifest([{"name": "live", "path": "/x/live/m-v1"}])
    assert MANIFEST in caught.value.message
    assert [p.name for p in transport.root_path.iterdir()] == [MANIFEST]  # no temporary left


def test_an_existing_verified_folder_is_reused_not_rewritten(
    transport: LocalFolderTransport, tmp_path: Path
) -> None:
    dest = version_dir(transport.root, "live", "aws-rag-qa", "1")
    digests = inspect_adapter(write_adapter(Path(dest))).files
    before = snapshot(Path(dest))

    with transport.staging() as scratch:
        write_adapter(scratch)
        assert transport.place(scratch, dest, digests) is False

    assert snapshot(Path(dest)) == before


def test_an_existing_folder_with_other_files_is_refused_and_kept(transport: LocalFolderTransport) -> None:
    dest = version_dir(transport.root, "live", "aws-rag-qa", "1")
    write_adapter(Path(dest), fill=3)
    before = snapshot(Path(dest))

    with transport.staging() as scratch:
        digests = inspect_adapter(write_adapter(scratch, fill=5)).files
        with pytest.raises(InvalidAdapterError) as caught:
            transport.place(scratch, dest, digests)

    assert "existing folder" in caught.value.message
    assert snapshot(Path(dest)) == before  # a served name may still point to it


@pytest.mark.parametrize("where", ["../elsewhere/m-v1", "live/../../m-v1"])
def test_a_path_outside_the_root_is_a_usage_error(transport: LocalFolderTransport, where: str) -> None:
    dest = f"{transport.root}/{where}"
    with transport.staging() as scratch:
        digests = inspect_adapter(write_adapter(scratch)).files
        with pytest.raises(UsageError) as caught:
            transport.place(scratch, dest, digests)
        assert scratch.exists()
    assert "outside the adapters folder" in caught.value.message
    assert not Path(dest).exists()


def test_a_symlink_out_of_the_root_is_outside(transport: LocalFolderTransport, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    transport.root_path.mkdir(parents=True)
    (transport.root_path / "live").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with transport.staging() as scratch:
        digests = inspect_adapter(write_adapter(scratch)).files
        with pytest.raises(UsageError):
            transport.place(scratch, f"{transport.root}/live/m-v1", digests)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_digest_mismatch_leaves_nothing_at_the_destination(transport: LocalFolderTransport) -> None:
    dest = version_dir(transport.root, "live", "aws-rag-qa", "2")
    with transport.staging() as scratch:
        digests = inspect_adapter(write_adapter(scratch)).files
        digests["adapter_model.safetensors"] = "0" * 64
        with pytest.raises(InvalidAdapterError) as caught:
            transport.place(scratch, dest, digests)
    assert "sha256 of adapter_model.safetensors" in caught.value.message
    assert not Path(dest).exists()


def test_the_root_the_server_sees_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # vLLM resolves a relative lora_path against its own working folder, not ours.
    monkeypatch.chdir(tmp_path)
    transport = LocalFolderTransport(Path("adapters"))
    assert Path(transport.root).is_absolute()
    assert Path(transport.root) == tmp_path / "adapters"
    dest = version_dir(transport.root, "live", "m", "1")
    with transport.staging() as scratch:
        digests = inspect_adapter(write_adapter(scratch)).files
        assert transport.place(scratch, dest, digests) is True
    assert (tmp_path / "adapters" / "live" / "m-v1" / "adapter_config.json").is_file()


def test_a_staging_folder_that_cannot_be_created_is_a_permanent_error(
    transport: LocalFolderTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", forbidden)
    with pytest.raises(PermanentError) as caught, transport.staging():
        pass
    assert type(caught.value) is PermanentError
    assert str(transport.staging_root) in caught.value.message and "free" in caught.value.message

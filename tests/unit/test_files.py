"""clients/files.py: LocalFolderTransport places verified folders, never rewrites one."""

from __future__ import annotations

from pathlib import Path

import pytest

from loradeploy.clients.files import LocalFolderTransport
from loradeploy.domain.adapter import inspect_adapter
from loradeploy.domain.layout import version_dir
from loradeploy.errors import InvalidAdapterError, UsageError
from support.synthetic import write_adapter


@pytest.fixture
def transport(tmp_path: Path) -> LocalFolderTransport:
    return LocalFolderTransport(tmp_path / "adapters")


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}


def test_place_renames_a_verified_folder_into_place(transport: LocalFolderTransport) -> None:
    dest = version_dir(transport.root, "live", "aws-rag-qa", "1")
    with transport.staging() as scratch:
        write_adapter(scratch)
        digests = inspect_adapter(scratch).files

        assert transport.place(scratch, dest, digests) is True

        assert not scratch.exists()  # moved, not copied
    assert sorted(p.name for p in Path(dest).iterdir()) == sorted(digests)
    assert inspect_adapter(Path(dest)).files == digests


def test_staging_is_inside_the_root_and_removed_afterwards(transport: LocalFolderTransport) -> None:
    with transport.staging() as scratch:
        assert scratch.is_relative_to(transport.root_path)
        write_adapter(scratch)
    assert not scratch.exists()


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

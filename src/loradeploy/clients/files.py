"""How adapter files reach the server: the transport interface and the local folder.

A transport places a validated folder at its final path on the server side, never
rewriting a folder that exists (a served name may still point to it).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from loradeploy.domain.adapter import check_digests
from loradeploy.errors import PermanentError, TransientError, UsageError


class AdapterTransport(Protocol):
    """Moves adapter folders to where the vLLM server reads them."""

    root: str  # the adapters folder as the server sees it

    def staging(self) -> AbstractContextManager[Path]:
        """A fresh local scratch folder, removed afterwards."""
        ...

    def place(self, local_dir: Path, server_path: str, digests: Mapping[str, str]) -> bool:
        """Put ``local_dir`` at ``server_path`` and verify digests there.

        Returns False when a verified copy was already there (nothing written).
        """
        ...


class LocalFolderTransport:
    """The server reads a folder on this machine (local stack, single VM, shared volume)."""

    def __init__(self, root: Path) -> None:
        self.root_path = root
        self.root = str(root)

    def _inside(self, server_path: str) -> Path:
        path = Path(server_path)
        resolved_root = self.root_path.resolve()
        if not path.resolve().is_relative_to(resolved_root):
            raise UsageError(f"adapter path {server_path} is outside the adapters folder {self.root}")
        return path

    @contextmanager
    def staging(self) -> Iterator[Path]:
        # On the same filesystem as the destination, so placing is a rename, not a copy.
        area = self.root_path / ".staging"
        try:
            area.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PermanentError(
                f"adapters folder {self.root} is not writable ({exc.strerror})",
                hint="fix the folder's permissions or pass another --adapters-root",
            ) from exc
        scratch = area / uuid.uuid4().hex
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def place(self, local_dir: Path, server_path: str, digests: Mapping[str, str]) -> bool:
        dest = self._inside(server_path)
        if dest.exists():
            check_digests(dest, digests, f"existing folder {dest}")
            return False
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            local_dir.rename(dest)
        except OSError as exc:
            if dest.exists():  # a concurrent writer placed it first; verify theirs
                check_digests(dest, digests, f"existing folder {dest}")
                return False
            raise TransientError(
                f"could not place adapter at {dest} ({exc.strerror})",
                hint="check free space and permissions of the adapters folder, then retry",
            ) from exc
        try:
            check_digests(dest, digests, f"placed folder {dest}")
        except PermanentError:
            shutil.rmtree(dest, ignore_errors=True)  # ours, and no name points to it yet
            raise
        return True

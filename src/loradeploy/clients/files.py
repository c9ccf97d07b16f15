"""How adapter files reach the server: the transport interface, a local folder, kubectl.

A transport places a validated folder at its final path on the server side, never
rewriting a folder that exists (a served name may still point to it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import Protocol

from loradeploy.clients.disk import local_writes
from loradeploy.clients.kube import KubeApi, Pod, RemoteCommandError
from loradeploy.domain.adapter import check_digests
from loradeploy.domain.kube import (
    check_safe_file_names,
    compare_listing,
    parse_sha256sum,
    remote_path,
    version_folders_from_find,
)
from loradeploy.errors import (
    InvalidAdapterError,
    LoraDeployError,
    NotFoundError,
    PermanentError,
    TransientError,
    UsageError,
)


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

    def list_version_folders(self) -> list[str]:
        """Every ``<root>/<slot>/<model>-v<N>`` folder (server paths)."""
        ...

    def remove(self, server_path: str) -> None:
        """Delete one version folder (only ever one that nothing points to)."""
        ...

    def write_manifest(self, modules: list[dict[str, str]]) -> None:
        """Write ``lora-modules.json``: the static adapters vLLM starts with."""
        ...

    def read_manifest(self) -> list[dict[str, str]]:
        """The entries ``lora-modules.json`` holds now (none when absent or unreadable)."""
        ...


MANIFEST = "lora-modules.json"
# A scratch folder or hidden temporary untouched for this long was left by a killed run: a
# download in progress keeps writing (see _last_change), and the deployment lock's lease
# (coordination.lease.DEFAULT_LOCK_TTL_S, 300 s) has long expired by then.
LEFTOVER_AGE_S = 900.0
# Scratch folders are named so; only such names are ever removed from the staging
# folder, which may be shared (LORADEPLOY_STAGING_DIR=/tmp).
SCRATCH_PREFIX = "loradeploy-scratch-"


class LocalFolderTransport:
    """The server reads a folder on this machine (local stack, single VM, shared volume).

    Downloads are staged in ``staging_root``, never below the adapters folder vLLM serves
    from (a download that fills the disk must not fill the served volume): by default a
    per-user folder in the system temp folder. Placing copies the staged files to a
    hidden name inside the slot folder, then renames it to the version folder, so the
    final path never holds half a copy. Entering ``staging`` first removes what killed
    runs left (scratch folders and hidden temporaries older than ``leftover_age_s``).
    """

    def __init__(
        self,
        root: Path,
        staging_root: Path | None = None,
        *,
        leftover_age_s: float = LEFTOVER_AGE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Absolute: vLLM resolves a relative lora_path against its own working folder.
        self.root_path = root.absolute()
        self.root = str(self.root_path)
        default = Path(tempfile.gettempdir()) / f"loradeploy-staging-{os.getuid()}"
        self.staging_root = (staging_root or default).absolute()
        self.leftover_age_s = leftover_age_s
        self._clock = clock

    def _inside(self, server_path: str) -> Path:
        path = Path(server_path)
        resolved_root = self.root_path.resolve()
        if not path.resolve().is_relative_to(resolved_root):
            raise UsageError(f"adapter path {server_path} is outside the adapters folder {self.root}")
        return path

    @contextmanager
    def staging(self) -> Iterator[Path]:
        area = self.staging_root
        if area.resolve().is_relative_to(self.root_path.resolve()):
            raise UsageError(
                f"staging folder {area} is inside the adapters folder {self.root} that vLLM serves from",
                hint="set LORADEPLOY_STAGING_DIR to a folder outside the adapters folder "
                "(ideally on another volume)",
            )
        with local_writes(area, "creating the staging folder"):
            area.mkdir(parents=True, exist_ok=True)
        self.remove_leftovers()
        scratch = area / f"{SCRATCH_PREFIX}{uuid.uuid4().hex}"
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def remove_leftovers(self) -> list[Path]:
        """Remove what killed runs left: ``loradeploy-scratch-*`` folders in the staging
        folder (and the ``.staging`` folder older versions kept below the root), hidden
        ``.<name>.tmp-*`` folders in slot folders and manifest temporaries, once older
        than the lease. Best effort: what cannot be read or removed stays."""
        legacy = self.root_path / ".staging"  # below the root: everything in it was ours
        candidates = [e for e in _entries(self.staging_root) if e.name.startswith(SCRATCH_PREFIX)]
        candidates += _entries(legacy)
        for entry in _entries(self.root_path):
            if entry.name.startswith(f".{MANIFEST}.tmp"):
                candidates.append(entry)
            elif entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
                candidates += [f for f in _entries(entry) if _is_hidden_temporary(f.name)]
        cutoff = self._clock() - self.leftover_age_s
        removed = [path for path in candidates if _last_change(path) < cutoff]
        for path in removed:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with suppress(OSError):
                    path.unlink(missing_ok=True)
        with suppress(OSError):
            legacy.rmdir()  # only when empty
        return removed

    def place(self, local_dir: Path, server_path: str, digests: Mapping[str, str]) -> bool:
        dest = self._inside(server_path)
        if dest.exists():
            check_digests(dest, digests, f"existing folder {dest}")
            return False
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with local_writes(dest.parent, f"placing {dest}"):
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp.mkdir()
                # A flat folder of plain files (validated). File by file, not copytree:
                # copytree folds a full disk into shutil.Error, which has no errno.
                for entry in sorted(local_dir.iterdir()):
                    shutil.copyfile(entry, tmp / entry.name)
                tmp.rename(dest)
        except PermanentError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if dest.exists():  # a concurrent writer placed it first; verify theirs
                check_digests(dest, digests, f"existing folder {dest}")
                return False
            raise TransientError(
                f"could not place adapter at {dest} ({exc.strerror})",
                hint="check free space and permissions of the adapters folder, then retry",
            ) from exc
        try:
            check_digests(dest, digests, f"placed folder {dest}")  # sha256 after the copy
        except PermanentError:
            shutil.rmtree(dest, ignore_errors=True)  # ours, and no name points to it yet
            raise
        return True

    def list_version_folders(self) -> list[str]:
        if not self.root_path.is_dir():
            return []
        return sorted(
            str(folder)
            for slot in self.root_path.iterdir()
            if slot.is_dir() and not slot.name.startswith(".")
            for folder in slot.iterdir()
            if folder.is_dir() and not folder.name.startswith(".")
        )

    def remove(self, server_path: str) -> None:
        shutil.rmtree(self._inside(server_path), ignore_errors=True)

    def read_manifest(self) -> list[dict[str, str]]:
        try:
            data = json.loads((self.root_path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        modules = data.get("modules") if isinstance(data, dict) else None
        if not isinstance(modules, list):
            return []
        return [
            {str(k): str(v) for k, v in entry.items()}
            for entry in modules
            if isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("path"), str)
        ]

    def write_manifest(self, modules: list[dict[str, str]]) -> None:
        target = self.root_path / MANIFEST
        what = f"writing {target}"
        tmp = self.root_path / f".{MANIFEST}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with local_writes(self.root_path, what):
                self.root_path.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps({"modules": modules}, indent=2) + "\n", encoding="utf-8")
                tmp.replace(target)
        except OSError as exc:  # not the disk: e.g. a folder where the file belongs
            raise PermanentError(
                f"{what}: {exc.strerror or type(exc).__name__}",
                hint=f"make {target} a writable file (a slot must not be named {MANIFEST})",
            ) from exc
        finally:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)


def _entries(folder: Path) -> list[Path]:
    """The entries of ``folder``; none when it is missing or unreadable."""
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _is_hidden_temporary(name: str) -> bool:
    """``.<version folder>.tmp-<hex>``: a copy placing had not renamed yet."""
    return name.startswith(".") and ".tmp-" in name


def _last_change(path: Path) -> float:
    """The newest modification time of ``path`` and its direct entries (a download in
    progress keeps touching its file), or +inf when it cannot be read."""
    try:
        times = [path.lstat().st_mtime]
        if path.is_dir() and not path.is_symlink():
            times += [entry.lstat().st_mtime for entry in path.iterdir()]
    except OSError:
        return float("inf")
    return max(times)


SHARED_DIR_MODE = "2775"  # new folders keep the group (setgid) and let it write
SHARED_TREE_MODE = "u+rwX,g+rwX,o-w"  # copied files and folders: the group may manage them


class KubectlTransport:
    """Adapter folders on every Ready pod of a selector, copied with ``kubectl cp``.

    Pods are discovered once, at construction (``pods``); a pod that becomes Ready later
    gets its adapters from the init container, not from here. Each pod is treated as
    having its own filesystem; when they share a volume, the first pod's copy is found
    and verified on the others, and nothing is written twice.

    Remote commands used in the vLLM container: ``test``, ``mkdir``, ``chmod``, ``mv``,
    ``rm``, ``find``, ``sha256sum`` (coreutils/findutils) and ``tar`` (for ``kubectl cp``).

    Everything written is group-writable, slot folders setgid (``2775``): whichever user
    the vLLM container runs as, the reconcile sidecar, in the pod's ``fsGroup``, can
    replace and delete what the workflows placed.
    """

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        selector: str,
        container: str,
        root: str = "/mnt/adapters",
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.selector = selector
        self.container = container
        if not PurePosixPath(root).is_absolute() or ".." in root:
            raise UsageError(
                f"adapters root {root!r} must be an absolute path in the pod, without '..'",
                hint="pass the adapters folder as the vLLM container mounts it, e.g. /mnt/adapters",
            )
        self.root = str(PurePosixPath(root))
        self.pods: list[Pod] = api.ready_pods(namespace, selector, container)
        if not self.pods:
            raise NotFoundError(
                f"no Ready pod with container {container!r} matches selector {selector!r} "
                f"in namespace {namespace}",
                hint="check the namespace, selector and container name; if the pods are "
                "starting, retry when they are Ready",
            )

    def replica_urls(self, scheme: str = "http") -> list[str]:
        """One URL per pod (pod IP, the container's first port or 8000), never the Service."""
        return [pod.url(scheme) for pod in self.pods]

    # -- remote helpers ----------------------------------------------------------------

    def _exec(self, pod: Pod, argv: list[str]) -> str:
        return self.api.exec(self.namespace, pod.name, self.container, argv)

    def _is_dir(self, pod: Pod, path: str) -> bool:
        try:
            self._exec(pod, ["test", "-d", path])
        except RemoteCommandError as exc:
            if exc.returncode == 1:
                return False
            raise
        return True

    def _copy_into_place(self, pod: Pod, local: Path, dest: str) -> None:
        """``kubectl cp`` to a hidden sibling, then rename: the final path never holds half a copy."""
        target = PurePosixPath(dest)
        tmp = str(target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
        self._exec(pod, ["mkdir", "-p", "-m", SHARED_DIR_MODE, str(target.parent)])
        try:
            self.api.copy_to_pod(self.namespace, pod.name, self.container, local, tmp)
            self._exec(pod, ["chmod", "-R", SHARED_TREE_MODE, tmp])
            self._exec(pod, ["mv", "-T", tmp, dest])
        except LoraDeployError:
            with suppress(LoraDeployError):  # best effort; the copy's error is the one to report
                self._exec(pod, ["rm", "-rf", tmp])
            raise

    def _where(self, pod: Pod, path: str) -> str:
        return f"{path} on pod {self.namespace}/{pod.name}"

    def _verify(self, pod: Pod, dest: str, digests: Mapping[str, str], label: str) -> None:
        listing = self._exec(pod, ["find", dest, "-mindepth", "1", "-maxdepth", "1"])
        present = {PurePosixPath(line).name for line in listing.splitlines() if line.strip()}
        actual: dict[str, str] = {}
        if present == set(digests) and digests:
            files = [str(PurePosixPath(dest) / name) for name in sorted(digests)]
            actual = parse_sha256sum(self._exec(pod, ["sha256sum", *files]))
        compare_listing(present, actual, digests, label)

    # -- AdapterTransport ----------------------------------------------------------------

    @contextmanager
    def staging(self) -> Iterator[Path]:
        # Local: the download lands here, then kubectl cp sends it to every pod.
        with tempfile.TemporaryDirectory(prefix="loradeploy-staging-") as area:
            yield Path(area) / "adapter"

    def place(self, local_dir: Path, server_path: str, digests: Mapping[str, str]) -> bool:
        dest = remote_path(self.root, server_path, min_depth=2)
        check_safe_file_names(digests, f"adapter for {dest}")
        # Every existing copy is verified before anything is written, so a tampered
        # folder on one pod stops the placement before the other pods change.
        missing = []
        for pod in self.pods:
            if self._is_dir(pod, dest):
                self._verify(pod, dest, digests, f"existing folder {self._where(pod, dest)}")
            else:
                missing.append(pod)
        wrote = False
        for pod in missing:
            where = self._where(pod, dest)
            if self._is_dir(pod, dest):  # another pod's copy landed on a shared volume
                self._verify(pod, dest, digests, f"existing folder {where}")
                continue
            try:
                self._copy_into_place(pod, local_dir, dest)
            except RemoteCommandError:
                if not self._is_dir(pod, dest):
                    raise
                # A concurrent writer placed it first; verify theirs.
                self._verify(pod, dest, digests, f"existing folder {where}")
                continue
            try:
                self._verify(pod, dest, digests, f"placed folder {where}")  # sha256 after the copy
            except InvalidAdapterError:
                self._exec(pod, ["rm", "-rf", dest])  # ours, and no name points to it yet
                raise
            wrote = True
        return wrote

    def list_version_folders(self) -> list[str]:
        folders: set[str] = set()
        for pod in self.pods:
            if self._is_dir(pod, self.root):
                found = self._exec(pod, ["find", self.root, "-mindepth", "2", "-maxdepth", "2", "-type", "d"])
                folders.update(version_folders_from_find(found))
        return sorted(folders)

    def remove(self, server_path: str) -> None:
        path = remote_path(self.root, server_path, min_depth=2)
        for pod in self.pods:
            self._exec(pod, ["rm", "-rf", path])

    def read_manifest(self) -> list[dict[str, str]]:
        # On pods the reconcile sidecar rewrites the file from what every slot serves
        # (steps/reconcile.py), so a step's rewrite keeps only its own model's slots.
        return []

    def write_manifest(self, modules: list[dict[str, str]]) -> None:
        dest = remote_path(self.root, f"{self.root}/{MANIFEST}")
        with tempfile.TemporaryDirectory(prefix="loradeploy-manifest-") as area:
            local = Path(area) / MANIFEST
            local.write_text(json.dumps({"modules": modules}, indent=2) + "\n", encoding="utf-8")
            for pod in self.pods:
                self._copy_into_place(pod, local, dest)

"""Local disk errors, translated: a full, read-only or forbidden folder is not a server
being unreachable.

Writing a download, a staging folder, a placed adapter or ``lora-modules.json`` can fail
because of the local disk. Retrying does not help (it fills the disk again), so these
become a ``PermanentError`` (exit 3) naming the folder and its free space.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loradeploy.errors import PermanentError

# No space, over quota, read-only filesystem, permission refused.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def free_bytes(folder: Path) -> int | None:
    """Free bytes on the filesystem of ``folder`` (or its nearest existing parent)."""
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def describe_free(folder: Path) -> str:
    free = free_bytes(folder)
    return "free space unknown" if free is None else f"{free / (1 << 20):.1f} MiB free"


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def disk_error(exc: OSError, folder: Path, what: str) -> PermanentError:
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return PermanentError(
        f"{what}: cannot write to {folder} ({reason}; {describe_free(folder)})",
        hint=f"free space in {folder} or fix its permissions (or configure another folder), "
        "then run the step again",
    )


@contextmanager
def local_writes(folder: Path, what: str) -> Iterator[None]:
    """Turn a disk error while writing below ``folder`` into a ``PermanentError``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            raise disk_error(exc, folder, what) from exc
        raise


def require_free(folder: Path, needed: int, what: str) -> None:
    """Refuse before writing when ``folder``'s filesystem has less than ``needed`` bytes free."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise PermanentError(
            f"{what}: needs {needed} bytes in {folder}, which has {free / (1 << 20):.1f} MiB free",
            hint=f"free space in {folder} (or configure another folder), then run the step again",
        )

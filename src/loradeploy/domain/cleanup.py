"""Which version folders on the server can go: pure selection, no I/O."""

from __future__ import annotations

from collections.abc import Iterable

from loradeploy.domain.layout import parse_root


def removable_folders(
    folders: Iterable[str],
    *,
    model: str,
    keep_versions: set[str],
    served_roots: set[str],
) -> list[str]:
    """Folders of ``model`` that no alias needs and no served name points to.

    A folder a name still points to is never removed: vLLM re-reads adapters lazily and
    crashes when the folder is gone.
    """
    removable = []
    for folder in folders:
        parsed = parse_root(folder)
        if parsed is None or parsed.model != model:
            continue
        if parsed.version in keep_versions or folder.rstrip("/") in served_roots:
            continue
        removable.append(folder)
    return sorted(removable)

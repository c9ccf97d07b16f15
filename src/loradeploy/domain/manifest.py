"""What ``lora-modules.json`` should say: pure, from the aliases and the placed folders.

vLLM reads the file only when it starts (one ``--lora-modules`` entry per slot). Each
slot gets the folder of the version its alias names, if that folder is placed; a slot
whose alias is missing, or whose folder is not there, gets no entry (vLLM would refuse
to start with a missing path).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from loradeploy.domain.layout import version_dir


@dataclass(frozen=True)
class ManifestPlan:
    modules: list[dict[str, str]]  # the file's "modules": name, path, base_model_name
    skipped: dict[str, str] = field(default_factory=dict)  # slot -> why it has no entry


def plan_manifest(
    *,
    model: str,
    slot_for_alias: Mapping[str, str],
    aliases: Mapping[str, str],
    placed: Iterable[str],
    root: str,
    base_model_name: str | None,
    existing: Iterable[Mapping[str, str]] = (),
) -> ManifestPlan:
    """One entry per slot whose alias names a version that is placed in that slot. Entries
    of ``existing`` (the file as it is) for other slots, such as another model's on the
    same server, are kept while their folder is still placed."""
    on_disk = {folder.rstrip("/") for folder in placed}
    mine = set(slot_for_alias.values())
    modules: list[dict[str, str]] = [
        dict(entry)
        for entry in existing
        if entry.get("name") not in mine and str(entry.get("path", "")).rstrip("/") in on_disk
    ]
    skipped: dict[str, str] = {}
    for alias, slot in slot_for_alias.items():
        version = aliases.get(alias)
        if version is None:
            skipped[slot] = f"no alias {alias!r}"
            continue
        path = version_dir(root, slot, model, version)
        if path not in on_disk:
            skipped[slot] = f"{alias} names version {version}, not placed at {path}"
            continue
        entry = {"name": slot, "path": path}
        if base_model_name:
            entry["base_model_name"] = base_model_name
        modules.append(entry)
    return ManifestPlan(modules, skipped)

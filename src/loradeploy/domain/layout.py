"""Where adapter versions live on the server's filesystem.

Every version gets its own folder, ``<adapters_root>/<slot>/<model>-v<version>``, which
is never rewritten. vLLM's ``/v1/models`` reports the folder a name serves as ``root``,
so the folder name is also the server-side record of which version a slot serves.

Routed mode serves each version under its own name (``aws-rag-qa@v7``). '@' is no part
of a slot or a path here, so those folders go under one folder per model,
``<adapters_root>/<model>.versions/<model>-v<version>``: the same ``<slot>/<model>-v<N>``
shape, so ``parse_root`` and cleanup read them like any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

# ASCII only: \d would also match other scripts' digits ("1\u0663").
_VERSION_DIR = re.compile(r"(?P<model>[A-Za-z0-9][A-Za-z0-9._-]*)-v(?P<version>[1-9][0-9]*)")


@dataclass(frozen=True)
class ServedVersion:
    """What a served ``root`` path says about the slot."""

    slot: str
    model: str
    version: str


def version_dir(adapters_root: str, slot: str, model: str, version: str) -> str:
    """The folder (a POSIX path on the server) for one version in one slot."""
    return str(PurePosixPath(adapters_root) / slot / f"{model}-v{version}")


VERSIONS_SUFFIX = ".versions"


def versioned_dir(adapters_root: str, model: str, version: str) -> str:
    """The folder of one version served under its versioned name (routed mode)."""
    return version_dir(adapters_root, versions_folder(model), model, version)


def versions_folder(model: str) -> str:
    """The folder, directly in the adapters root, that holds routed mode's versions of ``model``."""
    return f"{model}{VERSIONS_SUFFIX}"


def parse_root(root: str) -> ServedVersion | None:
    """Read slot, model and version back from a served ``root``; None if not ours."""
    path = PurePosixPath(root.rstrip("/"))
    match = _VERSION_DIR.fullmatch(path.name)
    if match is None or not path.parent.name:
        return None
    return ServedVersion(path.parent.name, match["model"], match["version"])

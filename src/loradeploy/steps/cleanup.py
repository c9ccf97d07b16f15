"""Remove version folders that no alias needs and no served name points to."""

from __future__ import annotations

from collections.abc import Sequence

from loradeploy.clients.files import AdapterTransport
from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.aliases import versions_to_keep
from loradeploy.domain.cleanup import removable_folders


def remove_unused_folders(
    registry: MLflowHelper,
    transport: AdapterTransport,
    model: str,
    replicas: Sequence[VllmClient],
) -> list[str]:
    keep = versions_to_keep(registry.get_aliases(model))
    served: set[str] = set()
    for vllm in replicas:
        served |= {card.root.rstrip("/") for card in vllm.adapters().values() if card.root}
    doomed = removable_folders(
        transport.list_version_folders(), model=model, keep_versions=keep, served_roots=served
    )
    for folder in doomed:
        transport.remove(folder)
    return doomed

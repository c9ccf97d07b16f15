"""Remove version folders that no alias needs and no replica of the deployment serves."""

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
    others: Sequence[VllmClient] = (),
) -> list[str]:
    """``replicas``: those the command worked on; ``others``: the rest of the deployment's
    replicas (the local stack's servers, every pod) that the command was not pointed at.

    A folder any of them serves stays (vLLM re-reads adapters lazily and crashes when
    the folder is gone). A replica that cannot say what it serves raises, and nothing
    is removed.
    """
    keep = versions_to_keep(registry.get_aliases(model))
    served: set[str] = set()
    for vllm in [*replicas, *others]:
        served |= {card.root.rstrip("/") for card in vllm.adapters().values() if card.root}
    doomed = removable_folders(
        transport.list_version_folders(), model=model, keep_versions=keep, served_roots=served
    )
    for folder in doomed:
        transport.remove(folder)
    return doomed

"""What every version must satisfy before it is placed or served, as one value.

Built once per command from its settings (``clients.wiring.adapter_policy``) and handed
to every step that places adapters, so no step or command can leave a limit out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from loradeploy.domain.adapter import DEFAULT_MAX_TOTAL_BYTES
from loradeploy.domain.signing import TrustPolicy


@dataclass(frozen=True)
class AdapterPolicy:
    """The limits of one deployment.

    ``max_lora_rank``: the server's ``--max-lora-rank`` (vLLM's default 16).
    ``max_adapter_bytes``: all files of one adapter, checked against the listing before
    any byte is downloaded and again before hashing.
    ``base_model_aliases``: ``ADAPTER_BASE -> SERVED_BASE`` where the names differ.
    ``trust``: whose signatures are accepted (None: signatures are not checked).
    """

    max_lora_rank: int = 16
    max_adapter_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    base_model_aliases: Mapping[str, str] = field(default_factory=dict)
    trust: TrustPolicy | None = None

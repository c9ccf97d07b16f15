"""Compare what the registry's aliases say with what each replica serves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from loradeploy.domain.layout import parse_root


@dataclass(frozen=True)
class SlotState:
    replica: str
    alias: str
    slot: str
    expected_version: str | None  # what the alias names
    served_version: str | None  # what the slot's root says, None when not served
    served_root: str | None

    @property
    def drift(self) -> bool:
        """The alias names a version the slot does not serve."""
        return self.expected_version is not None and self.served_version != self.expected_version

    @property
    def unnamed(self) -> bool:
        """The slot serves a version no alias names (normal between load and staging)."""
        return self.expected_version is None and self.served_root is not None


def compare(
    *,
    model: str,
    aliases: Mapping[str, str],
    slot_for_alias: Mapping[str, str],
    served: Mapping[str, Mapping[str, str | None]],
) -> list[SlotState]:
    """``served`` maps replica URL -> slot name -> served root (None: not served)."""
    rows = []
    for replica, slots in served.items():
        for alias, slot in slot_for_alias.items():
            root = slots.get(slot)
            parsed = parse_root(root) if root else None
            version = parsed.version if parsed and parsed.model == model else None
            rows.append(
                SlotState(
                    replica=replica,
                    alias=alias,
                    slot=slot,
                    expected_version=aliases.get(alias),
                    served_version=version if root else None,
                    served_root=root,
                )
            )
    return rows

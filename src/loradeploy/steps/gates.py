"""What the gates share: which version the candidate slot serves, setting the gate's
pass/fail alias on it, and writing the report.

Which version a gate judges: the one the candidate slot serves, read from the slot's
``root`` in ``/v1/models`` (the folder name holds model and version, see
``domain.layout``): that is what the measurements were taken on. It must also be the
version ``staged`` names (when no ``staged`` alias exists, the version ``candidate``
names); otherwise the gate refuses with exit 3, because the alias would then mark
something other than what was measured. The slot is read again, under the model's
lock, right before the alias moves: if it changed during the measurements, nothing is
set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor, model_lock, move_aliases
from loradeploy.domain.aliases import CANDIDATE, STAGED, AliasMove
from loradeploy.domain.layout import parse_root
from loradeploy.domain.report import markdown_report
from loradeploy.errors import AliasMovedError, NotFoundError
from loradeploy.results import Check, StepResult

REPORT_FILE = "report.md"
PLOT_FILE = "plot.svg"


def served_version(vllm: VllmClient, model: str, slot: str) -> tuple[str, str]:
    """(version, root) the slot serves for ``model``; NotFoundError when it serves none."""
    card = vllm.adapters().get(slot)
    if card is None or card.root is None:
        raise NotFoundError(
            f"vLLM at {vllm.base_url} does not serve {slot!r}; there is nothing to evaluate",
            hint=f"deploy a version first: load-adapter --slot-name={slot}, smoke-test, set-staged-alias",
        )
    served = parse_root(card.root)
    if served is None or served.model != model:
        raise NotFoundError(
            f"{slot!r} on {vllm.base_url} serves {card.root}, not a version of model {model!r}",
            hint=f"load a version of {model!r} into {slot!r} with load-adapter",
        )
    return served.version, card.root


def gate_version(registry: MLflowHelper, vllm: VllmClient, model: str, slot: str) -> tuple[str, str]:
    """The served version, cross-checked against ``staged`` (else ``candidate``)."""
    version, root = served_version(vllm, model, slot)
    aliases = registry.get_aliases(model)
    alias = STAGED if STAGED in aliases else CANDIDATE
    named = aliases.get(alias)
    if named != version:
        raise AliasMovedError(
            f"{slot!r} on {vllm.base_url} serves model {model!r} version {version} ({root}), but "
            + (
                f"alias {alias!r} names version {named}"
                if named
                else "neither 'staged' nor 'candidate' exists"
            ),
            hint="stage the version in the candidate slot first (load-adapter, smoke-test, set-staged-alias)",
        )
    return version, root


def set_gate_alias(
    registry: MLflowHelper,
    vllm: VllmClient,
    *,
    model: str,
    slot: str,
    version: str,
    checks: Sequence[Check],
    aliases: tuple[str, str],
    actor: Actor,
    label: str,
) -> list[AliasMove]:
    """Point the pass alias (every check passed) or the fail alias at ``version`` and
    remove the opposite alias if it names the same version; under the model's lock,
    after checking the slot again. The audit reason is ``label`` and each check's outcome."""
    passed = all(check.passed for check in checks)
    reason = f"{label}: " + ", ".join(f"{c.name} {'pass' if c.passed else 'FAIL'}" for c in checks)
    passed_alias, failed_alias = aliases
    chosen, opposite = (passed_alias, failed_alias) if passed else (failed_alias, passed_alias)
    with model_lock(registry, model, actor) as held:
        now, root = served_version(vllm, model, slot)
        if now != version:
            raise AliasMovedError(
                f"{slot!r} on {vllm.base_url} changed to {root} while version {version} was measured; "
                f"{chosen!r} was not set"
            )
        current = registry.get_aliases(model)
        moves = []
        if current.get(chosen) != version:
            moves.append(AliasMove(chosen, current.get(chosen), version))
        if current.get(opposite) == version:
            moves.append(AliasMove(opposite, version, None))
        move_aliases(registry, model, moves, actor, held.lease, reason=reason)
    return moves


def write_report(
    output_dir: Path, result: StepResult, *, title: str, notes: list[str], plot_svg: str | None
) -> None:
    """``report.md`` (and ``plot.svg``) beside the ``result.json`` the CLI writes."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if plot_svg is not None:
        (output_dir / PLOT_FILE).write_text(plot_svg, encoding="utf-8")
    summary = {
        "model": result.model,
        "version": result.version,
        "slot": result.slot,
        "decision": result.details.get("decision"),
        "alias moves": ", ".join(result.details.get("alias_moves", [])) or "none",
    }
    text = markdown_report(
        title,
        passed=result.passed,
        summary=summary,
        checks=result.checks,
        figures=result.details.get("figures", {}),
        notes=notes,
        plot=PLOT_FILE if plot_svg is not None else None,
    )
    (output_dir / REPORT_FILE).write_text(text, encoding="utf-8")

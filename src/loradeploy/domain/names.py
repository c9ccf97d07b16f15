"""Validation of names and sources before they reach a path, a URL or a command line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from loradeploy.errors import UsageError

# Model and slot names become folder names and Kubernetes-side paths: keep them to a
# conservative set (no separators, no shell characters, no leading dot or dash).
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A slot is a folder directly in the adapters root, next to loradeploy's own files: the
# manifest vLLM starts from (``clients.files.MANIFEST``) and hidden staging and temporary
# names (``.staging``, ``.lora-modules.json.tmp``, ``.<name>.tmp-<hex>``, all refused by
# the leading-dot rule). Compared case-insensitively, as the volume may be.
MANIFEST_FILE = "lora-modules.json"
_RESERVED_SLOTS = frozenset({MANIFEST_FILE})
# MLflow's own alias rule: letters, digits, '_' and '-', up to 255 characters;
# 'latest' and 'v<digits>' are reserved by MLflow.
_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
_RESERVED_ALIAS = re.compile(r"(?i)latest|v\d+")
# MLflow version numbers are integers; a longer run of digits is no version (and int()
# refuses more than 4300 digits with ValueError).
_MAX_VERSION_DIGITS = 18


def _check_safe(kind: str, value: str) -> str:
    if not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise UsageError(
            f"{kind} {value!r} is not allowed: use letters, digits, '.', '_' or '-' "
            "(at most 128, starting with a letter or digit, no '..')",
            hint=f"choose a {kind} such as 'aws-rag-qa-candidate'",
        )
    return value


def model_name(value: str) -> str:
    """A registered model name that is safe to use in paths."""
    return _check_safe("model name", value)


def slot_name(value: str) -> str:
    """A served adapter name (the slot), safe for paths and the vLLM API, and not the
    name of a file loradeploy keeps in the adapters root."""
    _check_safe("slot name", value)
    if value.lower() in _RESERVED_SLOTS:
        raise UsageError(
            f"slot name {value!r} is reserved: the adapters folder keeps {MANIFEST_FILE} "
            "(the adapters vLLM starts with) under that name",
            hint="choose a slot name such as 'aws-rag-qa-candidate'",
        )
    return value


def alias_name(value: str) -> str:
    """An MLflow alias that the registry will accept."""
    if not _ALIAS.fullmatch(value) or _RESERVED_ALIAS.fullmatch(value):
        raise UsageError(
            f"alias {value!r} is not allowed: MLflow aliases use letters, digits, '_' and '-', "
            "and 'latest' and 'v<digits>' are reserved",
            hint="use an alias such as 'candidate'",
        )
    return value


@dataclass(frozen=True)
class Source:
    """Where a model version comes from: an alias, or a fixed version number."""

    kind: Literal["alias", "version"]
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def is_version_number(text: str) -> bool:
    """A registry version number: ASCII digits, at most 18 of them, above 0."""
    return text.isascii() and text.isdigit() and len(text) <= _MAX_VERSION_DIGITS and int(text) > 0


def parse_source(text: str) -> Source:
    """Parse ``alias:NAME`` or ``version:N``; anything else is a usage error."""
    kind, sep, value = text.partition(":")
    if sep and kind == "alias":
        return Source("alias", alias_name(value))
    if sep and kind == "version" and is_version_number(value):
        return Source("version", str(int(value)))
    raise UsageError(
        f"source {text!r} is not understood: expected 'alias:NAME' or 'version:N' (N >= 1)",
        hint="pass for example --source=alias:candidate or --source=version:3",
    )

"""What a version's artifact listing must say before any byte of it is downloaded.

The listing (names and sizes, from the artifact store) is compared with what
``loradeploy register`` recorded in the version's tags: a sha256 per file and the total
size (``loradeploy.bytes``). A version passes only when the two agree and the total is
within the cap, so a size tag that lies, a missing size record or an oversized file is
refused while nothing is on the local disk yet. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from loradeploy.domain.adapter import TAG_PREFIX, check_file_names
from loradeploy.errors import InvalidAdapterError

BYTES_TAG = f"{TAG_PREFIX}bytes"
_NOTHING = "nothing was downloaded"
_REREGISTER = "register the adapter again with 'loradeploy register' (it records sizes and digests)"


@dataclass(frozen=True)
class ListedFile:
    """One entry of a version's artifact listing."""

    path: str  # relative to the version's root, as the store lists it
    size: int | None  # bytes; None when the store does not say


def check_listing(
    listing: Iterable[ListedFile],
    *,
    digests: Mapping[str, str],
    recorded: str | None,
    max_bytes: int,
    label: str,
    beside: Mapping[str, int] | None = None,
    ignored: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """File name -> size of a version that may be downloaded, or an ``InvalidAdapterError``.

    ``recorded`` is the version's ``loradeploy.bytes`` tag (None if absent); ``digests``
    its sha256 tags; ``label`` names the version in messages. ``beside`` names files that
    may be listed next to the adapter's (the signature artifact) with the most bytes each;
    they are downloaded too, but are neither tagged nor counted in ``loradeploy.bytes``.
    ``ignored`` names files that may be listed there too (the recorded smoke probes) with
    the most bytes each, and are not returned: they are never downloaded with the adapter,
    so neither a signature check nor the server sees them.
    """
    ignored = {name: limit for name, limit in (ignored or {}).items() if name not in digests}
    beside = {**dict(beside or {}), **ignored}
    recorded_bytes = _recorded_size(recorded, max_bytes, label)
    entries = list(listing)
    names = [entry.path for entry in entries]
    check_file_names(names, f"{label}: the artifact listing")
    unsized = sorted(entry.path for entry in entries if entry.size is None or entry.size < 0)
    if unsized:
        raise InvalidAdapterError(
            f"{label}: the artifact listing gives no size for {unsized}; {_NOTHING}",
            hint="check the artifact store behind MLflow, or " + _REREGISTER,
        )
    adapter_names = [name for name in names if name not in beside or name in digests]
    if set(adapter_names) != set(digests) or len(names) != len(set(names)):
        missing = sorted(set(digests) - set(adapter_names))
        extra = sorted(set(adapter_names) - set(digests))
        raise InvalidAdapterError(
            f"{label}: files differ from the registry's record (missing {missing}, extra {extra}); "
            + _NOTHING,
            hint=_REREGISTER,
        )
    sizes = {entry.path: int(entry.size or 0) for entry in entries}
    for name, size in sizes.items():
        if name in beside and name not in digests and size > beside[name]:
            raise InvalidAdapterError(
                f"{label}: {name} is {size} bytes, above its {beside[name]}-byte limit; {_NOTHING}",
                hint="register the version's probes again"
                if name in ignored
                else "sign the version again with 'loradeploy sign'",
            )
    total = sum(size for name, size in sizes.items() if name in digests)
    if total > max_bytes:
        raise _above_cap(label, f"its files add up to {total} bytes", max_bytes)
    if total != recorded_bytes:
        raise InvalidAdapterError(
            f"{label}: its files add up to {total} bytes but the {BYTES_TAG} tag says "
            f"{recorded_bytes}; {_NOTHING}",
            hint="the artifacts or the tags changed after registration; " + _REREGISTER,
        )
    return {name: size for name, size in sizes.items() if name not in ignored}


def _recorded_size(recorded: str | None, max_bytes: int, label: str) -> int:
    if recorded is None or not (recorded.isascii() and recorded.isdigit()):
        shown = "missing" if recorded is None else f"{recorded[:20]!r}"
        raise InvalidAdapterError(
            f"{label} has no size record (the {BYTES_TAG} tag is {shown}); {_NOTHING}",
            hint=_REREGISTER,
        )
    if len(recorded) > 18 or int(recorded) > max_bytes:
        raise _above_cap(label, f"is {recorded[:24]} bytes by its {BYTES_TAG} tag", max_bytes)
    return int(recorded)


def _above_cap(label: str, what: str, max_bytes: int) -> InvalidAdapterError:
    return InvalidAdapterError(
        f"{label} {what}, above the {max_bytes}-byte limit for an adapter; {_NOTHING}",
        hint="register a smaller adapter, or raise the limit with LORADEPLOY_MAX_ADAPTER_BYTES",
    )

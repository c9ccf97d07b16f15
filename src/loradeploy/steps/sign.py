"""Signed adapters, at the step level: verify what was downloaded before anything is
placed or loaded (every deploy path calls ``check_signature``), and sign a version
(``register --sign-key``, ``train`` with a key, ``loradeploy sign``).

A signature is bound to one version of one model: the statement names the signed folder
``<model>-v<version>``, so a version is signed once it has its number, right after it is
registered and before any alias is set on it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from loradeploy.clients.registry import MLflowHelper, VersionInfo
from loradeploy.clients.signing import check_signing_key, identity_of, sign_folder, verify_folder

__all__ = ["check_signature", "check_signing_key", "ensure_signed", "sign", "sign_version"]
from loradeploy.domain.adapter import DEFAULT_MAX_TOTAL_BYTES, check_digests, inspect_adapter
from loradeploy.domain.listing import BYTES_TAG, check_listing
from loradeploy.domain.signing import (
    MAX_SIGNATURE_BYTES,
    SIGNATURE_FILE,
    SIGNATURE_TAG,
    Method,
    TrustPolicy,
    Verdict,
    check_recorded_signer,
    check_statement,
    label,
    parse_signature,
    recorded_signer,
    require_cas,
    require_or_skip,
    signature_file,
    signature_tags,
    subject_for,
    trusted_key,
)
from loradeploy.domain.smoke import RECORDED_BESIDE
from loradeploy.errors import NotFoundError, SignatureError
from loradeploy.results import Check, StepResult, Timer


def _take(path: Path, where: str) -> bytes | None:
    """Read the signature artifact and remove it from the download folder (it is never
    placed or served); None when the version has no such artifact."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    if path.is_symlink() or not path.is_file():
        raise SignatureError(f"{where}: the signature artifact {path.name!r} is not a regular file")
    if info.st_size > MAX_SIGNATURE_BYTES:
        raise SignatureError(
            f"{where}: the signature artifact is {info.st_size} bytes, above the "
            f"{MAX_SIGNATURE_BYTES}-byte limit; nothing was loaded",
            hint="sign the version again with 'loradeploy sign'",
        )
    with path.open("rb") as handle:
        raw = handle.read(MAX_SIGNATURE_BYTES + 1)
    path.unlink()
    return raw


def signature_artifacts(version: VersionInfo) -> dict[str, int]:
    """The signature artifacts a version's listing may hold beside its adapter files, with
    their size limit: the one its tag names, and ``model.sig`` (a signature whose tags were
    removed still counts). A malformed tag is refused here, before any download."""
    names = {SIGNATURE_FILE}
    named = signature_file(version.tags, version.file_digests(), label(version.model, version.version))
    if named is not None:
        names.add(named)
    return {name: MAX_SIGNATURE_BYTES for name in names if name not in version.file_digests()}


def check_signature(version: VersionInfo, folder: Path, policy: TrustPolicy | None) -> Verdict:
    """Verify the downloaded ``folder`` of ``version`` against ``policy``, or refuse.

    Always takes the signature artifact out of ``folder``, so the folder holds exactly the
    adapter's files afterwards (with or without a policy).
    """
    where = label(version.model, version.version)
    policy = policy or TrustPolicy()
    digests = version.file_digests()
    name = signature_file(version.tags, digests, where)
    if name is None and SIGNATURE_FILE not in digests and (folder / SIGNATURE_FILE).exists():
        name = SIGNATURE_FILE  # the tags were removed, the signature was not: it still counts
    raw = _take(folder / name, where) if name is not None else None
    if name is not None and raw is None and policy.configured:
        raise SignatureError(
            f"{where}: tag {SIGNATURE_TAG} names {name!r}, but the version has no such artifact; "
            "nothing was loaded",
            hint="sign the version again with 'loradeploy sign'",
        )
    skipped = require_or_skip(policy, raw is not None, where)
    if skipped is not None:
        return skipped
    assert raw is not None
    statement = parse_signature(raw, where)
    check_statement(
        statement,
        model=version.model,
        version=version.version,
        present={entry.name for entry in folder.iterdir()},
        digests=digests,
    )
    key = trusted_key(policy, statement, where) if statement.method is Method.KEY else None
    cas = require_cas(policy, where) if statement.method is Method.CERTIFICATE else ()
    with tempfile.TemporaryDirectory(prefix="loradeploy-verify-") as scratch:
        copy = Path(scratch) / SIGNATURE_FILE  # outside the folder it verifies
        copy.write_bytes(raw)
        verify_folder(folder, copy, statement=statement, key=key, ca_certificates=cas, where=where)
    verdict = Verdict(checked=True, signer=identity_of(statement), method=str(statement.method))
    check_recorded_signer(version.tags, verdict, where)
    return verdict


def sign_version(
    registry: MLflowHelper,
    version: VersionInfo,
    folder: Path,
    *,
    key: Path,
    cert_chain: Path | None = None,
) -> Verdict:
    """Sign ``folder`` (the version's files, already checked against its sha256 tags) as
    this version, upload the signature beside the files and tag the version with it."""
    where = label(version.model, version.version)
    digests = version.file_digests()
    with tempfile.TemporaryDirectory(prefix="loradeploy-signature-") as scratch:
        signature = Path(scratch) / SIGNATURE_FILE
        statement = sign_folder(
            folder,
            subject=subject_for(version.model, version.version),
            signature=signature,
            key=key,
            cert_chain=cert_chain,
        )
        # What was signed must be what is registered: the folder may have changed since.
        check_statement(
            statement, model=version.model, version=version.version, present=set(digests), digests=digests
        )
        if set(digests) != {entry.name for entry in folder.iterdir()}:
            raise SignatureError(f"{where}: the folder signed is not the version's files; nothing uploaded")
        signer = identity_of(statement)
        registry.attach_signature(
            version.model, version.version, signature, signature_tags(signer, statement.method)
        )
    return Verdict(checked=True, signer=signer, method=str(statement.method))


def ensure_signed(
    registry: MLflowHelper,
    model: str,
    version: str,
    folder: Path,
    *,
    key: Path,
    cert_chain: Path | None = None,
) -> Verdict:
    """Sign a version just registered (or reused) from ``folder`` unless it is signed already."""
    info = registry.get_version(model, version)
    if SIGNATURE_TAG in info.tags:
        return Verdict(checked=False, note=f"already signed: {recorded_signer(info.tags)}")
    return sign_version(registry, info, folder, key=key, cert_chain=cert_chain)


def sign(
    registry: MLflowHelper,
    *,
    model: str,
    version: str,
    key: Path,
    cert_chain: Path | None = None,
    scratch_root: Path | None = None,
    max_adapter_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> StepResult:
    """``loradeploy sign``: download a version registered by any tool, check its files
    against its sha256 tags, sign it, upload the signature. The listing is checked before
    any byte is downloaded, as on the deploy path."""
    result = StepResult(step="sign", model=model, version=version)
    timer = Timer(result.timings_s)
    check_signing_key(key, cert_chain)
    info = registry.get_version(model, version)
    digests = info.file_digests()
    if not digests:
        raise NotFoundError(
            f"{label(model, version)} has no loradeploy.sha256.* tags: its files cannot be checked",
            hint="register the adapter with 'loradeploy register --sign-key KEY'",
        )
    with tempfile.TemporaryDirectory(prefix="loradeploy-sign-", dir=scratch_root) as scratch:
        folder = Path(scratch) / "files"
        with timer("download"):
            beside = signature_artifacts(info)
            files = check_listing(
                registry.list_adapter_files(model, version),
                digests=digests,
                recorded=info.tags.get(BYTES_TAG),
                max_bytes=max_adapter_bytes,
                label=label(model, version),
                beside=beside,
                ignored=RECORDED_BESIDE,
            )
            registry.download_adapter(
                model, version, folder, files=files, max_bytes=max_adapter_bytes + sum(beside.values())
            )
        with timer("validate"):
            check_signature(info, folder, None)  # drops an earlier signature artifact
            inspect_adapter(folder)
            check_digests(folder, digests, label(model, version))
        with timer("sign"):
            verdict = sign_version(registry, info, folder, key=key, cert_chain=cert_chain)
    result.checks.append(Check(name="signed", passed=True, detail=verdict.describe()))
    result.details = {"signer": verdict.signer, "method": verdict.method, "files": sorted(digests)}
    return result

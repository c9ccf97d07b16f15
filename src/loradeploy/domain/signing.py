"""Signed adapters: the trust policy and every decision about a version's signature.

A signature is an OpenSSF ``model-signing`` bundle (a Sigstore bundle holding a DSSE
envelope around an in-toto statement) stored as one more artifact of the version, named
by the tag ``loradeploy.signature``. The statement lists every file with its sha256 and
names the signed folder ``<model>-v<version>``, which ties it to one version of one model.

Everything here is pure: the bytes of the signature come in, decisions come out. The
cryptography (is the envelope signed by that key, does the chain end at a trusted CA,
do the files hash to the statement) is ``clients.signing``'s.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from loradeploy.errors import SignatureError

SIGNATURE_TAG = "loradeploy.signature"  # the signature artifact's file name
SIGNER_TAG = "loradeploy.signature.signer"  # who signed, as the signer's key or certificate says
METHOD_TAG = "loradeploy.signature.method"  # "key" or "certificate"
SIGNATURE_FILE = "model.sig"  # the name loradeploy gives it
# A bundle for an adapter of a few files is 2-6 KB (a certificate chain adds about 1 KB per
# certificate); 1 MiB leaves room for thousands of files and stops a hostile blob before
# it is parsed.
MAX_SIGNATURE_BYTES = 1 << 20
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
_SIGNATURE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,123}\.sig")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Method(StrEnum):
    KEY = "key"  # an elliptic-curve private key; trusted by its public key
    CERTIFICATE = "certificate"  # a key with an X.509 chain; trusted by a CA certificate


@dataclass(frozen=True)
class TrustedKey:
    """A public key the policy trusts: where it was read from and its fingerprint (sha256 of
    its PEM SubjectPublicKeyInfo, the ``hint`` model-signing puts in every bundle)."""

    path: Path
    fingerprint: str


@dataclass(frozen=True)
class TrustPolicy:
    """Which signers are trusted, and whether an unsigned version may be served."""

    keys: tuple[TrustedKey, ...] = ()
    ca_certificates: tuple[Path, ...] = ()
    require_signature: bool = False

    @property
    def configured(self) -> bool:
        return bool(self.keys or self.ca_certificates or self.require_signature)

    def key_for(self, fingerprint: str) -> TrustedKey | None:
        return next((key for key in self.keys if key.fingerprint == fingerprint), None)


@dataclass(frozen=True)
class SignedStatement:
    """What a signature claims, read from its bytes (before any cryptography)."""

    method: Method
    key_fingerprint: str | None  # Method.KEY
    certificates: tuple[bytes, ...]  # Method.CERTIFICATE: DER, signing certificate first
    subject: str  # the signed folder's name: <model>-v<version>
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256 hex


@dataclass(frozen=True)
class Verdict:
    """The outcome for one version: verified by whom, or why it was not checked."""

    checked: bool
    signer: str | None = None
    method: str | None = None
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "checked": self.checked,
            "signer": self.signer,
            "method": self.method,
            "note": self.describe(),
        }

    def describe(self) -> str:
        if self.checked:
            return f"verified: signed by {self.signer} ({self.method})"
        return self.note


def label(model: str, version: str) -> str:
    return f"model {model!r} version {version}"


def subject_for(model: str, version: str) -> str:
    """The signed folder's name, as the layout names version folders. Versions are digits,
    so no two (model, version) pairs share one."""
    return f"{model}-v{version}"


def key_identity(fingerprint: str) -> str:
    return f"key sha256:{fingerprint[:16]}"


def signature_file(tags: Mapping[str, str], digests: Mapping[str, str], where: str) -> str | None:
    """The signature artifact's name from the version's tags; None for an unsigned version.

    The name must be one plain ``*.sig`` file name that is not one of the adapter's files:
    it is joined to the download folder and the file is removed from there.
    """
    name = tags.get(SIGNATURE_TAG)
    if name is None:
        return None
    if not _SIGNATURE_NAME.fullmatch(name) or ".." in name or name in digests:
        shown = name if len(name) <= 60 else name[:59] + "…"
        raise SignatureError(
            f"{where}: tag {SIGNATURE_TAG} names {shown!r}, not a plain *.sig file name beside "
            "the adapter's files; nothing was loaded",
            hint="the tag was not written by loradeploy; sign the version again with 'loradeploy sign'",
        )
    return name


def require_or_skip(policy: TrustPolicy, has_signature: bool, where: str) -> Verdict | None:
    """None when the signature must be verified; otherwise the verdict (or a refusal)."""
    if not policy.configured:
        return Verdict(checked=False, note="not checked: no trust policy configured")
    if has_signature:
        return None
    if policy.require_signature:
        raise SignatureError(
            f"{where} has no signature, and the trust policy requires one; nothing was loaded",
            hint="sign it with 'loradeploy sign --model-name M --version N --sign-key KEY'",
        )
    return Verdict(checked=False, note="unsigned: accepted, the trust policy does not require a signature")


def _malformed(where: str, what: str) -> SignatureError:
    return SignatureError(
        f"{where}: the signature artifact is malformed ({what}); nothing was loaded",
        hint="sign the version again with 'loradeploy sign'",
    )


def _get(obj: Any, key: str, kind: type, where: str, path: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise _malformed(where, f"{path}.{key} missing or not a {kind.__name__}")
    return value


def _b64(text: str, where: str, path: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed(where, f"{path} is not base64") from exc


def _json(raw: bytes, where: str, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _malformed(where, f"{what} is not UTF-8") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _malformed(where, f"{what} is not JSON") from exc


def parse_signature(raw: bytes, where: str) -> SignedStatement:
    """Read a model-signing bundle strictly; refuse anything else before cryptography sees it."""
    if len(raw) > MAX_SIGNATURE_BYTES:
        raise SignatureError(
            f"{where}: the signature artifact is {len(raw)} bytes, above the {MAX_SIGNATURE_BYTES}-byte "
            "limit; nothing was loaded",
            hint="sign the version again with 'loradeploy sign'",
        )
    bundle = _json(raw, where, "the bundle")
    if _get(bundle, "mediaType", str, where, "bundle") != BUNDLE_MEDIA_TYPE:
        raise _malformed(where, f"media type is not {BUNDLE_MEDIA_TYPE}")
    material = _get(bundle, "verificationMaterial", dict, where, "bundle")
    envelope = _get(bundle, "dsseEnvelope", dict, where, "bundle")
    signatures = _get(envelope, "signatures", list, where, "dsseEnvelope")
    if len(signatures) != 1:
        raise _malformed(where, f"{len(signatures)} signatures in the envelope, expected 1")
    _b64(_get(signatures[0], "sig", str, where, "signatures[0]"), where, "signatures[0].sig")
    if _get(envelope, "payloadType", str, where, "dsseEnvelope") != PAYLOAD_TYPE:
        raise _malformed(where, f"payload type is not {PAYLOAD_TYPE}")
    payload = _b64(_get(envelope, "payload", str, where, "dsseEnvelope"), where, "dsseEnvelope.payload")

    fingerprint: str | None = None
    certificates: tuple[bytes, ...] = ()
    if "publicKey" in material and "x509CertificateChain" not in material:
        method = Method.KEY
        fingerprint = _get(material["publicKey"], "hint", str, where, "publicKey")
        if not _HEX64.fullmatch(fingerprint):
            raise _malformed(where, "publicKey.hint is not a sha256 fingerprint")
    elif "x509CertificateChain" in material and "publicKey" not in material:
        method = Method.CERTIFICATE
        chain = _get(material["x509CertificateChain"], "certificates", list, where, "x509CertificateChain")
        if not chain:
            raise _malformed(where, "the certificate chain is empty")
        certificates = tuple(
            _b64(_get(c, "rawBytes", str, where, "certificates[]"), where, "certificates[].rawBytes")
            for c in chain
        )
    else:
        raise _malformed(where, "it names neither one public key nor one certificate chain")

    statement = _json(payload, where, "the signed statement")
    if _get(statement, "_type", str, where, "statement") != STATEMENT_TYPE:
        raise _malformed(where, f"the statement is not an in-toto {STATEMENT_TYPE}")
    if _get(statement, "predicateType", str, where, "statement") != PREDICATE_TYPE:
        raise _malformed(where, f"the predicate type is not {PREDICATE_TYPE}")
    subjects = _get(statement, "subject", list, where, "statement")
    if len(subjects) != 1:
        raise _malformed(where, f"{len(subjects)} subjects, expected 1")
    subject = _get(subjects[0], "name", str, where, "subject[0]")
    predicate = _get(statement, "predicate", dict, where, "statement")
    files: dict[str, str] = {}
    for resource in _get(predicate, "resources", list, where, "predicate"):
        name = _get(resource, "name", str, where, "resources[]")
        digest = _get(resource, "digest", str, where, "resources[]")
        if _get(resource, "algorithm", str, where, "resources[]") != "sha256" or not _HEX64.fullmatch(digest):
            raise _malformed(where, f"file {name[:60]!r} is not signed with a sha256 digest")
        if name in files:
            raise _malformed(where, f"file {name[:60]!r} is listed twice")
        files[name] = digest
    return SignedStatement(method, fingerprint, certificates, subject, files)


def check_statement(
    statement: SignedStatement,
    *,
    model: str,
    version: str,
    present: Set[str],
    digests: Mapping[str, str],
) -> None:
    """The signature is for this version, and covers exactly the files that will be served.

    ``present`` are the downloaded files (the signature itself removed), ``digests`` the
    registry's sha256 tags. A file whose bytes changed while its tag did not is found by
    the cryptographic check, which hashes the files again.
    """
    where = label(model, version)
    expected = subject_for(model, version)
    if statement.subject != expected:
        raise SignatureError(
            f"{where}: the signature was made for {statement.subject[:80]!r}, not {expected!r} "
            "(a signature copied from another version or model); nothing was loaded",
            hint=f"sign version {version} itself with 'loradeploy sign'",
        )
    added = sorted(present - statement.files.keys())
    removed = sorted(statement.files.keys() - present)
    if added or removed:
        raise SignatureError(
            f"{where}: files differ from what was signed (added after signing {added}, "
            f"removed after signing {removed}); nothing was loaded",
            hint="register the signed folder again, or sign this version again if the change is wanted",
        )
    changed = sorted(name for name, digest in statement.files.items() if digests.get(name) != digest)
    if changed:
        raise SignatureError(
            f"{where}: {changed} changed after signing (the registry's sha256 differs from the "
            "signed one); nothing was loaded",
            hint="register the signed folder again, or sign this version again if the change is wanted",
        )


def trusted_key(policy: TrustPolicy, statement: SignedStatement, where: str) -> TrustedKey:
    """The policy's key that must have made this signature."""
    assert statement.key_fingerprint is not None
    found = policy.key_for(statement.key_fingerprint)
    if found is None:
        raise SignatureError(
            f"{where}: signed by {key_identity(statement.key_fingerprint)}, a key outside the trust "
            f"policy ({len(policy.keys)} trusted key(s)); nothing was loaded",
            hint="sign with a trusted key, or add its public key to LORADEPLOY_TRUSTED_KEYS",
        )
    return found


def require_cas(policy: TrustPolicy, where: str) -> tuple[Path, ...]:
    if not policy.ca_certificates:
        raise SignatureError(
            f"{where}: signed with a certificate, but the trust policy holds no CA certificates; "
            "nothing was loaded",
            hint="add the signing CA to LORADEPLOY_TRUSTED_CAS, or sign with a trusted key",
        )
    return policy.ca_certificates


def check_recorded_signer(tags: Mapping[str, str], verdict: Verdict, where: str) -> None:
    """The signer and method tags (shown by ``status``) must say what the signature says."""
    for tag, verified in ((SIGNER_TAG, verdict.signer), (METHOD_TAG, verdict.method)):
        recorded = tags.get(tag)
        if recorded is not None and recorded != verified:
            raise SignatureError(
                f"{where}: tag {tag} says {recorded[:80]!r}, but the signature is by {verified!r}; "
                "nothing was loaded",
                hint="sign the version again with 'loradeploy sign' (it rewrites the tags)",
            )


def signature_tags(signer: str, method: Method, file_name: str = SIGNATURE_FILE) -> dict[str, str]:
    return {SIGNATURE_TAG: file_name, SIGNER_TAG: signer, METHOD_TAG: str(method)}


def recorded_signer(tags: Mapping[str, str]) -> str:
    """What ``status`` and ``history`` show for a version."""
    if SIGNATURE_TAG not in tags:
        return "unsigned"
    return f"{tags.get(SIGNER_TAG, '?')} ({tags.get(METHOD_TAG, '?')})"

"""OpenSSF ``model-signing``: sign an adapter folder, verify one against a trusted signer.

The library is imported inside the functions (about 0.5 s of imports): ``--help`` and
commands that never sign or verify do not pay for it. Its errors become
``SignatureError`` (verification) or ``UsageError`` (a key or certificate we were given
cannot be used) here, with the version named.

Supported, all offline: elliptic-curve key pairs (P-256/384/521, the curves the library
signs with) and certificate chains ending at a trusted CA. Sigstore keyless signing needs
an OIDC login and the public Sigstore services, so it is not offered.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from loradeploy.domain.signing import (
    Method,
    SignedStatement,
    TrustedKey,
    TrustPolicy,
    key_identity,
    parse_signature,
)
from loradeploy.errors import SignatureError, UsageError, short

_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def _read_pem(path: Path, what: str, setting: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{what} {path} is not a readable file", hint=f"fix {setting}") from exc
    if b"-----BEGIN " not in data:
        raise UsageError(f"{what} {path} is not a PEM file", hint=f"fix {setting}")
    return data


def public_key_fingerprint(pem: bytes) -> str:
    """sha256 of the key's PEM SubjectPublicKeyInfo: model-signing's key ``hint``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve public key")
    canonical = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(canonical).hexdigest()


def load_policy(
    keys: Sequence[Path], ca_certificates: Sequence[Path], *, require_signature: bool
) -> TrustPolicy:
    """Read the trusted public keys and CA certificates once, at the entry point (without
    any, nothing is imported: cryptography's x509 costs about 0.1 s of every step)."""
    trusted: list[TrustedKey] = []
    for path in keys:
        pem = _read_pem(path, "trusted public key", "--trusted-key or LORADEPLOY_TRUSTED_KEYS")
        try:
            trusted.append(TrustedKey(path=path, fingerprint=public_key_fingerprint(pem)))
        except ValueError as exc:
            raise UsageError(
                f"trusted public key {path} is not an elliptic-curve public key in PEM "
                f"({short(str(exc), 80)})",
                hint="pass the .pub file written next to the signing key",
            ) from exc
    for path in ca_certificates:
        from cryptography import x509

        pem = _read_pem(path, "trusted CA certificate", "--trusted-ca or LORADEPLOY_TRUSTED_CAS")
        try:
            x509.load_pem_x509_certificates(pem)
        except ValueError as exc:
            raise UsageError(f"trusted CA certificate {path} is not a PEM certificate") from exc
    if require_signature and not (trusted or ca_certificates):
        raise UsageError(
            "a signature is required, but the trust policy holds no public key and no CA certificate",
            hint="set LORADEPLOY_TRUSTED_KEYS (or --trusted-key) to the signers' public keys",
        )
    return TrustPolicy(
        keys=tuple(trusted), ca_certificates=tuple(ca_certificates), require_signature=require_signature
    )


def certificate_identity(der: bytes) -> str:
    """``cert <subject>``: who a signing certificate names."""
    from cryptography import x509

    try:
        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        subject = "(unreadable certificate)"
    return f"cert {subject}"


def identity_of(statement: SignedStatement) -> str:
    if statement.method is Method.KEY:
        assert statement.key_fingerprint is not None
        return key_identity(statement.key_fingerprint)
    return certificate_identity(statement.certificates[0])


def _library_failures() -> tuple[type[Exception], ...]:
    """What model-signing raises for a signature that does not verify (no broad except)."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from OpenSSL.crypto import Error as OpenSSLError
    from OpenSSL.crypto import X509StoreContextError

    return (
        ValueError,  # digests differ, key mismatch, bad bundle (pydantic's errors included)
        TypeError,
        KeyError,
        IndexError,
        InvalidSignature,
        UnsupportedAlgorithm,
        X509StoreContextError,  # the chain does not end at a trusted CA
        OpenSSLError,
    )


def verify_folder(
    folder: Path,
    signature: Path,
    *,
    statement: SignedStatement,
    key: TrustedKey | None,
    ca_certificates: Sequence[Path],
    where: str,
) -> None:
    """Check the signature cryptographically and hash every file in ``folder`` against it."""
    import model_signing

    config = model_signing.verifying.Config()
    if statement.method is Method.KEY:
        assert key is not None
        config = config.use_elliptic_key_verifier(public_key=key.path)
        trusted = f"trusted key {key.path.name}"
    else:
        config = config.use_certificate_verifier(certificate_chain=list(ca_certificates))
        trusted = f"{len(ca_certificates)} trusted CA certificate file(s)"
    try:
        config.verify(folder, signature)
    except _library_failures() as exc:
        raise SignatureError(
            f"{where}: the signature does not verify against {trusted}: the files or the signature "
            f"changed after signing, or it was made by another signer ({short(str(exc), 160)}); "
            "nothing was loaded",
        ) from exc


def check_signing_key(key: Path, cert_chain: Path | None = None) -> None:
    """Refuse a key (or chain) the library cannot sign with, before anything is registered."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = _read_pem(key, "signing key", "--sign-key")
    try:
        private = serialization.load_pem_private_key(pem, None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UsageError(
            f"signing key {key} is not an unencrypted PEM private key ({short(str(exc), 80)})",
            hint="pass an unencrypted PEM elliptic-curve key (openssl ecparam -name prime256v1 -genkey)",
        ) from exc
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name not in _CURVES:
        raise UsageError(
            f"signing key {key} is not an elliptic-curve key on P-256, P-384 or P-521",
            hint="model-signing signs with those curves only",
        )
    if cert_chain is not None:
        chain = _read_pem(cert_chain, "certificate chain", "--sign-cert-chain")
        try:
            leaf = x509.load_pem_x509_certificates(chain)[0]
        except ValueError as exc:
            raise UsageError(f"certificate chain {cert_chain} holds no PEM certificate") from exc
        if leaf.public_key() != private.public_key():
            raise UsageError(
                f"the first certificate of {cert_chain} is not for the key {key}",
                hint="put the signing certificate first in the chain file, then its intermediates",
            )


def sign_folder(
    folder: Path,
    *,
    subject: str,
    signature: Path,
    key: Path,
    cert_chain: Path | None = None,
) -> SignedStatement:
    """Sign every file in ``folder`` as ``subject`` (the name the statement gives the folder)
    and write the bundle to ``signature``; returns what the bundle says (method, signer).

    With ``cert_chain`` (PEM: the signing certificate first, then intermediates) the bundle
    carries the chain; otherwise it names the public key of ``key``.
    """
    import model_signing
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import Encoding

    with tempfile.TemporaryDirectory(prefix="loradeploy-sign-") as scratch:
        named = Path(scratch) / subject
        named.mkdir()
        for entry in sorted(folder.iterdir()):
            if entry.is_symlink() or not entry.is_file():
                raise UsageError(f"cannot sign {folder}: {entry.name} is not a regular file")
            try:
                os.link(entry, named / entry.name)  # no copy when on the same filesystem
            except OSError:
                shutil.copyfile(entry, named / entry.name)
        hashing = model_signing.hashing.Config().set_ignored_paths(paths=[], ignore_git_paths=False)
        config = model_signing.signing.Config().set_hashing_config(hashing)
        try:
            if cert_chain is None:
                config = config.use_elliptic_key_signer(private_key=key)
            else:
                pem = _read_pem(cert_chain, "certificate chain", "--sign-cert-chain")
                certificates = x509.load_pem_x509_certificates(pem)
                leaf, rest = Path(scratch) / "leaf.pem", Path(scratch) / "chain.pem"
                leaf.write_bytes(certificates[0].public_bytes(Encoding.PEM))
                rest.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certificates[1:]))
                config = config.use_certificate_signer(
                    private_key=key, signing_certificate=leaf, certificate_chain=[rest]
                )
            config.sign(named, signature)
        except (ValueError, TypeError, UnsupportedAlgorithm, OSError) as exc:
            used = key.name + (f" and {cert_chain.name}" if cert_chain else "")
            raise UsageError(
                f"cannot sign with {used}: {short(str(exc), 160)}",
                hint="pass an unencrypted PEM elliptic-curve private key (P-256, P-384 or P-521) "
                "and, with --sign-cert-chain, its certificate first",
            ) from exc
    return parse_signature(signature.read_bytes(), f"the signature just written for {subject}")


def generate_key_pair(private_path: Path, public_path: Path) -> str:
    """Write a new P-256 key pair (private key mode 0600); returns the public fingerprint.
    For demos and tests: a team's real key belongs in its secret store."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path.write_bytes(public)
    return public_key_fingerprint(public)

"""Keys and certificates for signing tests, made on the spot with ``cryptography``.

``Pki`` writes an EC P-256 key pair per signer and a two-level chain (a CA, and a leaf
certificate for code signing issued by it) into a folder. Nothing here is a real key.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from loradeploy.clients.signing import generate_key_pair


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    fingerprint: str


def key_pair(folder: Path, name: str) -> KeyPair:
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    return KeyPair(private, public, generate_key_pair(private, public))


@dataclass(frozen=True)
class CertSigner:
    key: Path  # the leaf's private key
    chain: Path  # PEM: the leaf certificate, then the CA certificate
    ca: Path  # PEM: the CA certificate alone (what a verifier trusts)
    subject: str  # the leaf's subject, RFC 4514


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "loradeploy tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def cert_signer(folder: Path, name: str, *, ca_name: str = "test CA") -> CertSigner:
    """A CA and a code-signing leaf certificate ``name`` issued by it."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_path, chain_path = folder / f"{name}.key", folder / f"{name}-chain.pem"
    ca_path = folder / f"{name}-ca.pem"
    key_path.write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    chain_path.write_bytes(leaf_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    return CertSigner(key_path, chain_path, ca_path, leaf_cert.subject.rfc4514_string())

"""Signed adapters (issue 13): every refusal of the trust policy, through the real deploy
code (``steps.deploy.deploy_version``: download, signature, validation, placement, swap)
with the real ``model-signing`` library, ``LocalFolderTransport`` and ``FakeVllmServer``.

A refusal must be a ``SignatureError`` (exit 3) whose one line names the version and what
failed, with nothing placed in the adapters folder and no load call reaching vLLM. The
signatures are real: made by ``steps.sign.sign_version`` with keys and certificates that
``support.pki`` creates for each test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loradeploy.clients.files import KubectlTransport, LocalFolderTransport
from loradeploy.clients.registry import VersionInfo
from loradeploy.clients.signing import load_policy, sign_folder
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor
from loradeploy.domain.adapter import digests_from_tags, inspect_adapter, registry_tags
from loradeploy.domain.layout import version_dir
from loradeploy.domain.listing import ListedFile
from loradeploy.domain.names import Source
from loradeploy.domain.policy import AdapterPolicy
from loradeploy.domain.signing import (
    MAX_SIGNATURE_BYTES,
    METHOD_TAG,
    SIGNATURE_FILE,
    SIGNATURE_TAG,
    SIGNER_TAG,
    TrustPolicy,
    key_identity,
    parse_signature,
    signature_file,
    signature_tags,
    subject_for,
)
from loradeploy.domain.smoke import MAX_PROBES_BYTES, PROBES_FILE, Probe
from loradeploy.domain.swap import SwapStrategy
from loradeploy.errors import ExitCode, InvalidAdapterError, SignatureError, UsageError
from loradeploy.results import StepResult, Timer
from loradeploy.settings import load_settings
from loradeploy.stack.local import LocalStack, StackConfig
from loradeploy.steps.deploy import deploy_version, fetch_and_place
from loradeploy.steps.init_load import init_load_adapters
from loradeploy.steps.load_adapter import LoadRequest, load_adapter
from loradeploy.steps.promote import PromoteRequest, promote_adapter
from loradeploy.steps.reconcile import ReconcileRequest, reconcile
from loradeploy.steps.register import record_probes, register
from loradeploy.steps.rollout import inspect_replicas
from loradeploy.steps.sign import sign, sign_version
from loradeploy.steps.status import status
from support.fake_cluster import CONTAINER, NS, SELECTOR, FakeCluster, fake_pod
from support.fake_registry import FakeRegistry
from support.fakes import FakeVllmServer
from support.pki import CertSigner, KeyPair, cert_signer, key_pair
from support.synthetic import SMOLLM2, write_adapter

MODEL = "aws-rag-qa"
SLOT = "aws-rag-qa-candidate"
OLD_ROOT = f"/srv/adapters/{SLOT}/{MODEL}-v6"  # what the slot serves before each case


@dataclass
class FakeSignedRegistry(FakeRegistry):
    """FAKE registry holding each version's artifacts (bytes) and tags as an attacker with
    write access could leave them; ``attach_signature`` stores what ``sign_version`` uploads."""

    files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)

    def publish(self, version: str, folder: Path) -> None:
        self.versions[version] = folder
        self.files[version] = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
        self.tags[version] = registry_tags(inspect_adapter(folder))

    def get_version(self, name: str, version: str, via: str | None = None) -> VersionInfo:
        self._check(name)
        return VersionInfo(
            model=name, version=version, aliases=[], tags=dict(self.tags[version]), via=via or version
        )

    def list_adapter_files(self, name: str, version: str) -> list[ListedFile]:
        self._check(name)
        return [ListedFile(file_name, len(data)) for file_name, data in sorted(self.files[version].items())]

    def download_adapter(
        self, name: str, version: str, output_dir: Path, *, files: Mapping[str, int], max_bytes: int
    ) -> Path:
        self._check(name)
        output_dir.mkdir(parents=True)
        for file_name in sorted(files):
            (output_dir / file_name).write_bytes(self.files[version][file_name])
        self.downloads.append(version)
        return output_dir

    def reseal_size(self, version: str) -> None:
        """What an attacker with registry write access also does: make the size record
        match the changed files, so only the signature can catch the change."""
        adapter_files = {n: d for n, d in self.files[version].items() if not n.endswith(".sig")}
        self.tags[version]["loradeploy.bytes"] = str(sum(len(d) for d in adapter_files.values()))

    def attach_signature(self, name: str, version: str, signature: Path, tags: dict[str, str]) -> None:
        self._check(name)
        self.files[version][signature.name] = signature.read_bytes()
        self.tags[version].update(tags)

    def attach_file(
        self, name: str, version: str, file_name: str, text: str, tags: Mapping[str, str]
    ) -> None:
        self._check(name)
        self.files[version][file_name] = text.encode("utf-8")
        self.tags[version].update(tags)


@dataclass
class World:
    tmp: Path
    registry: FakeSignedRegistry
    server: FakeVllmServer
    vllm: VllmClient
    team: KeyPair  # the trusted key
    stranger: KeyPair  # a key outside the policy
    adapters: Path

    def register(self, version: str, fill: int = 7) -> Path:
        folder = write_adapter(self.tmp / "src" / f"v{version}", layers=1, fill=fill)
        self.registry.publish(version, folder)
        return folder

    def sign(self, version: str, key: Path | None = None, chain: Path | None = None) -> None:
        sign_version(
            self.registry,  # type: ignore[arg-type]
            self.registry.get_version(MODEL, version),
            self.registry.versions[version],
            key=key or self.team.private,
            cert_chain=chain,
        )

    def policy(
        self, *, keys: tuple[Path, ...] | None = None, cas: tuple[Path, ...] = (), require: bool = True
    ) -> TrustPolicy:
        return load_policy(
            list(keys if keys is not None else (self.team.public,)), list(cas), require_signature=require
        )

    def deploy(self, version: str, policy: TrustPolicy | None) -> StepResult:
        result = StepResult(step="load-adapter", model=MODEL)
        deploy_version(
            self.registry.get_version(MODEL, version),
            slot=SLOT,
            replicas=inspect_replicas([self.vllm], SLOT, SwapStrategy.AUTO),
            registry=self.registry,  # type: ignore[arg-type]
            transport=LocalFolderTransport(self.adapters, self.tmp / "staging"),
            policy=AdapterPolicy(trust=policy),
            result=result,
        )
        return result

    def refuses(self, version: str, policy: TrustPolicy | None, *fragments: str) -> SignatureError:
        self.server.adapters = {SLOT: OLD_ROOT}
        with pytest.raises(SignatureError) as caught:
            self.deploy(version, policy)
        error = caught.value
        line = error.one_line()
        assert error.exit_code == ExitCode.PERMANENT
        assert "\n" not in line and "next:" in line
        assert f"model {MODEL!r} version {version}" in error.message, line
        for fragment in fragments:
            assert fragment in error.message, line
        assert self.server.lora_calls() == []
        assert self.server.adapters == {SLOT: OLD_ROOT}
        placed = list(self.adapters.rglob("*"))
        assert placed == [], placed
        staging = self.tmp / "staging"  # not even made when the listing was refused
        assert not staging.exists() or list(staging.iterdir()) == []  # the scratch folder is gone
        return error

    def statement(self, version: str) -> dict[str, Any]:
        bundle = json.loads(self.registry.files[version][SIGNATURE_FILE])
        return dict(json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"])))

    def rewrite_bundle(self, version: str, change: Any) -> None:
        bundle = json.loads(self.registry.files[version][SIGNATURE_FILE])
        change(bundle)
        self.registry.files[version][SIGNATURE_FILE] = json.dumps(bundle).encode()


@pytest.fixture
def world(tmp_path: Path, server: FakeVllmServer, vllm: VllmClient) -> Iterator[World]:
    keys = tmp_path / "keys"
    keys.mkdir()
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    yield World(
        tmp=tmp_path,
        registry=FakeSignedRegistry(model=MODEL),
        server=server,
        vllm=vllm,
        team=key_pair(keys, "team"),
        stranger=key_pair(keys, "stranger"),
        adapters=adapters,
    )


@pytest.fixture
def signed(world: World) -> World:
    """Version 7, signed with the team's key."""
    world.register("7")
    world.sign("7")
    return world


def _served_files(world: World, version: str) -> list[str]:
    return sorted(p.name for p in Path(version_dir(str(world.adapters), SLOT, MODEL, version)).iterdir())


# -- accepted --------------------------------------------------------------------------------------


def test_a_version_signed_with_a_trusted_key_is_served_without_its_signature_file(signed: World) -> None:
    result = signed.deploy("7", signed.policy())
    root = version_dir(str(signed.adapters), SLOT, MODEL, "7")
    assert signed.server.adapters == {SLOT: root}
    assert _served_files(signed, "7") == ["adapter_config.json", "adapter_model.safetensors"]
    signature = result.details["signature"]
    assert signature["checked"] is True
    assert signature["signer"] == key_identity(signed.team.fingerprint)
    assert signature["method"] == "key"


def test_a_version_signed_with_a_certificate_from_a_trusted_ca_is_served(world: World) -> None:
    bot: CertSigner = cert_signer(world.tmp / "pki", "release-bot")
    world.register("7")
    world.sign("7", key=bot.key, chain=bot.chain)
    assert world.registry.tags["7"][METHOD_TAG] == "certificate"
    result = world.deploy("7", world.policy(keys=(), cas=(bot.ca,)))
    assert result.details["signature"]["signer"] == f"cert {bot.subject}"
    assert "release-bot" in bot.subject


def test_an_unsigned_version_is_served_when_the_policy_does_not_require_a_signature(world: World) -> None:
    world.register("7")
    result = world.deploy("7", world.policy(require=False))
    assert result.details["signature"]["checked"] is False
    assert "unsigned" in result.details["signature"]["note"]


def test_without_a_policy_nothing_is_checked_and_the_signature_is_still_not_served(signed: World) -> None:
    result = signed.deploy("7", None)
    assert result.details["signature"]["checked"] is False
    assert _served_files(signed, "7") == ["adapter_config.json", "adapter_model.safetensors"]


def test_without_a_policy_a_tag_naming_a_missing_artifact_is_ignored(world: World) -> None:
    world.register("7")
    world.registry.tags["7"][SIGNATURE_TAG] = SIGNATURE_FILE
    world.deploy("7", None)


# -- refused: missing, tampered, untrusted ------------------------------------------------------------


def test_no_signature_when_one_is_required(world: World) -> None:
    world.register("7")
    world.refuses("7", world.policy(), "has no signature", "requires one")


def test_a_tag_naming_a_signature_artifact_that_is_not_there(signed: World) -> None:
    del signed.registry.files["7"][SIGNATURE_FILE]
    signed.refuses("7", signed.policy(), "no such artifact")


def test_a_file_changed_after_signing_with_its_tag_updated(signed: World) -> None:
    forged = b'{"peft_type": "LORA"}'
    signed.registry.files["7"]["adapter_config.json"] = forged
    signed.registry.tags["7"]["loradeploy.sha256.adapter_config.json"] = hashlib.sha256(forged).hexdigest()
    signed.registry.reseal_size("7")
    signed.refuses("7", signed.policy(), "['adapter_config.json'] changed after signing")


def test_a_file_changed_after_signing_with_its_tag_left_alone(signed: World) -> None:
    weights = bytearray(signed.registry.files["7"]["adapter_model.safetensors"])
    weights[-1] ^= 0xFF
    signed.registry.files["7"]["adapter_model.safetensors"] = bytes(weights)
    error = signed.refuses("7", signed.policy(), "does not verify")
    assert "adapter_model.safetensors" in error.message  # the library's diff, cut short


def test_a_file_added_after_signing(signed: World) -> None:
    signed.registry.files["7"]["tokenizer.json"] = b"{}"
    signed.registry.tags["7"]["loradeploy.sha256.tokenizer.json"] = "0" * 64
    signed.registry.reseal_size("7")
    signed.refuses("7", signed.policy(), "added after signing ['tokenizer.json']")


def test_a_file_removed_after_signing(world: World) -> None:
    folder = world.register("7")
    (folder / "README.md").write_text("model card")
    world.registry.publish("7", folder)
    world.sign("7")
    del world.registry.files["7"]["README.md"]
    del world.registry.tags["7"]["loradeploy.sha256.README.md"]
    world.registry.reseal_size("7")
    world.refuses("7", world.policy(), "removed after signing ['README.md']")


def test_a_signature_by_a_key_outside_the_policy(world: World) -> None:
    world.register("7")
    world.sign("7", key=world.stranger.private)
    world.refuses("7", world.policy(), f"signed by {key_identity(world.stranger.fingerprint)}", "outside")


def test_a_key_signature_when_the_policy_trusts_only_certificates(signed: World) -> None:
    bot = cert_signer(signed.tmp / "pki", "release-bot")
    signed.refuses("7", signed.policy(keys=(), cas=(bot.ca,)), "outside the trust policy")


def test_a_certificate_from_a_ca_outside_the_policy(world: World) -> None:
    trusted = cert_signer(world.tmp / "pki", "release-bot")
    mallory = cert_signer(world.tmp / "pki-other", "mallory", ca_name="another CA")
    world.register("7")
    world.sign("7", key=mallory.key, chain=mallory.chain)
    world.refuses("7", world.policy(keys=(), cas=(trusted.ca,)), "does not verify")


def test_a_certificate_signature_when_the_policy_trusts_only_keys(world: World) -> None:
    bot = cert_signer(world.tmp / "pki", "release-bot")
    world.register("7")
    world.sign("7", key=bot.key, chain=bot.chain)
    world.refuses("7", world.policy(), "holds no CA certificates")


def test_the_signature_of_another_version_copied_onto_this_one(world: World) -> None:
    world.register("6")
    world.register("7")  # the same files: only the binding to the version tells them apart
    world.sign("6")
    world.registry.files["7"][SIGNATURE_FILE] = world.registry.files["6"][SIGNATURE_FILE]
    world.registry.tags["7"].update({k: v for k, v in world.registry.tags["6"].items() if "signature" in k})
    world.refuses("7", world.policy(), "made for 'aws-rag-qa-v6', not 'aws-rag-qa-v7'")


def test_the_signature_of_another_model_copied_onto_this_one(world: World) -> None:
    folder = world.register("7")
    signature = world.tmp / SIGNATURE_FILE
    statement = sign_folder(folder, subject="other-model-v7", signature=signature, key=world.team.private)
    world.registry.attach_signature(
        MODEL, "7", signature, signature_tags(key_identity(world.team.fingerprint), statement.method)
    )
    world.refuses("7", world.policy(), "made for 'other-model-v7'")


def test_removing_the_signature_tags_does_not_remove_the_signature(world: World) -> None:
    world.register("7")
    world.sign("7", key=world.stranger.private)
    for tag in (SIGNATURE_TAG, SIGNER_TAG, METHOD_TAG):
        del world.registry.tags["7"][tag]
    world.refuses("7", world.policy(require=False), "outside the trust policy")
    world.deploy("7", None)  # no policy: nothing checked, and the signature is still not served
    assert _served_files(world, "7") == ["adapter_config.json", "adapter_model.safetensors"]


def test_a_signer_tag_that_lies_about_who_signed(signed: World) -> None:
    signed.registry.tags["7"][SIGNER_TAG] = "cert CN=release-manager"
    signed.refuses("7", signed.policy(), "says 'cert CN=release-manager'")


def test_a_statement_changed_after_signing(signed: World) -> None:
    def add_claim(bundle: dict[str, Any]) -> None:
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        statement["predicate"]["approved_by"] = "security team"  # same files, same subject
        bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()

    signed.rewrite_bundle("7", add_claim)
    signed.refuses("7", signed.policy(), "does not verify")


def test_a_signature_value_taken_from_another_signature(world: World) -> None:
    world.register("6", fill=3)
    world.register("7")
    world.sign("6")
    world.sign("7")
    other = json.loads(world.registry.files["6"][SIGNATURE_FILE])
    world.rewrite_bundle(
        "7", lambda b: b["dsseEnvelope"]["signatures"][0].update(other["dsseEnvelope"]["signatures"][0])
    )
    world.refuses("7", world.policy(), "does not verify")


# -- refused: malformed or oversized signature artifacts ----------------------------------------------


def _bundle_change(path: str, value: Any) -> Any:
    def change(bundle: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = bundle
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return change


MALFORMED_BYTES = {
    "empty": b"",
    "not-json": b"this is not a signature",
    "not-utf8": b'{"mediaType": "\xff\xfe"}',
    "json-list": b"[]",
    "json-string": b'"bundle"',
    "nesting-bomb": b"[" * 200_000,
    "truncated": None,  # the first half of a real bundle
}
MALFORMED_FIELDS = {
    "media-type": ("mediaType", "application/json"),
    "no-envelope": ("dsseEnvelope", KeyError),
    "two-signatures": ("dsseEnvelope.signatures", [{"sig": "AAAA"}, {"sig": "AAAA"}]),
    "no-signature": ("dsseEnvelope.signatures", []),
    "sig-not-base64": ("dsseEnvelope.signatures.0.sig", "%%%"),
    "payload-not-base64": ("dsseEnvelope.payload", "not base64!"),
    "payload-not-json": ("dsseEnvelope.payload", base64.b64encode(b"nope").decode()),
    "payload-type": ("dsseEnvelope.payloadType", "text/plain"),
    "no-material": ("verificationMaterial", {}),
    "hint-not-sha256": ("verificationMaterial.publicKey.hint", "../../etc/passwd"),
    "key-and-chain": ("verificationMaterial.x509CertificateChain", {"certificates": []}),
}


@pytest.mark.parametrize("raw", MALFORMED_BYTES.values(), ids=MALFORMED_BYTES.keys())
def test_a_malformed_signature_artifact(signed: World, raw: bytes | None) -> None:
    real = signed.registry.files["7"][SIGNATURE_FILE]
    signed.registry.files["7"][SIGNATURE_FILE] = raw if raw is not None else real[: len(real) // 2]
    signed.refuses("7", signed.policy(), "signature artifact is malformed")


@pytest.mark.parametrize("change", MALFORMED_FIELDS.values(), ids=MALFORMED_FIELDS.keys())
def test_a_signature_artifact_with_a_malformed_field(signed: World, change: tuple[str, Any]) -> None:
    signed.rewrite_bundle("7", _bundle_change(*change))
    signed.refuses("7", signed.policy(), "signature artifact is malformed")


STATEMENT_CHANGES = {
    "two-subjects": lambda s: s.__setitem__("subject", s["subject"] * 2),
    "predicate-type": lambda s: s.__setitem__("predicateType", "https://example.com/other"),
    "sha512-resource": lambda s: s["predicate"]["resources"][0].__setitem__("algorithm", "sha512"),
    "duplicate-resource": lambda s: s["predicate"]["resources"].append(s["predicate"]["resources"][0]),
    "statement-type": lambda s: s.__setitem__("_type", "https://example.com/Statement"),
}


@pytest.mark.parametrize("change", STATEMENT_CHANGES.values(), ids=STATEMENT_CHANGES.keys())
def test_a_signed_statement_of_the_wrong_shape(signed: World, change: Any) -> None:
    statement = signed.statement("7")
    change(statement)
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    signed.rewrite_bundle("7", _bundle_change("dsseEnvelope.payload", payload))
    signed.refuses("7", signed.policy(), "signature artifact is malformed")


def test_an_oversized_signature_artifact(signed: World) -> None:
    """Refused from the artifact listing, before any byte of it is downloaded."""
    signed.registry.files["7"][SIGNATURE_FILE] = b" " * (MAX_SIGNATURE_BYTES + 1)
    signed.server.adapters = {SLOT: OLD_ROOT}
    refused = r"model\.sig is 1048577 bytes, above its 1048576-byte limit"
    with pytest.raises(InvalidAdapterError, match=refused):
        signed.deploy("7", signed.policy())
    assert signed.registry.downloads == []
    assert signed.server.lora_calls() == [] and signed.server.adapters == {SLOT: OLD_ROOT}


HOSTILE_SIGNATURE_NAMES = {
    "dotdot": "../model.sig",
    "deep": "../../../../tmp/loradeploy-escape.sig",
    "absolute": "/tmp/loradeploy-escape.sig",
    "subfolder": "sub/model.sig",
    "backslash": "..\\model.sig",
    "nul": "model\x00.sig",
    "newline": "model.sig\nx",
    "hidden": ".model.sig",
    "not-sig": "model.json",
    "an-adapter-file": "adapter_config.json",
    "long": "m" * 200 + ".sig",
}


@pytest.mark.parametrize("name", HOSTILE_SIGNATURE_NAMES.values(), ids=HOSTILE_SIGNATURE_NAMES.keys())
def test_a_signature_artifact_whose_name_tries_to_leave_the_adapter_folder(signed: World, name: str) -> None:
    signed.registry.tags["7"][SIGNATURE_TAG] = name
    before = sorted(p.name for p in signed.tmp.parent.iterdir())
    signed.refuses("7", signed.policy(), "not a plain *.sig file name")
    assert signed.registry.versions["7"].joinpath("adapter_config.json").is_file()  # not removed
    assert not Path("/tmp/loradeploy-escape.sig").exists()
    assert sorted(p.name for p in signed.tmp.parent.iterdir()) == before


def test_a_hostile_signature_name_is_refused_even_without_a_policy(signed: World) -> None:
    signed.registry.tags["7"][SIGNATURE_TAG] = "adapter_model.safetensors"
    signed.refuses("7", None, "not a plain *.sig file name")


# -- the trust policy itself -----------------------------------------------------------------------


def test_required_signature_without_any_trusted_key_or_ca_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="holds no public key and no CA certificate"):
        load_policy([], [], require_signature=True)


def test_a_missing_or_non_pem_trusted_key_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a readable file"):
        load_policy([tmp_path / "nope.pub"], [], require_signature=False)
    (tmp_path / "junk.pub").write_text("hello")
    with pytest.raises(UsageError, match="not a PEM file"):
        load_policy([tmp_path / "junk.pub"], [], require_signature=False)


def test_a_private_key_given_as_trusted_key_is_a_usage_error(world: World) -> None:
    with pytest.raises(UsageError, match="not an elliptic-curve public key"):
        load_policy([world.team.private], [], require_signature=False)


def test_an_empty_policy_is_not_configured() -> None:
    assert not TrustPolicy().configured
    assert TrustPolicy(require_signature=True).configured


# -- every path that loads an adapter goes through the check -------------------------------------

LIVE_SLOT = "aws-rag-qa-live"


def _actor(step: str) -> Actor:
    return Actor(who="tester@host", step=step, run_id="run-1")


def _load(world: World, policy: TrustPolicy | None) -> StepResult:
    request = LoadRequest(
        model=MODEL, source=Source("version", "7"), slot=SLOT, policy=AdapterPolicy(trust=policy)
    )
    return load_adapter(
        request,
        registry=world.registry,  # type: ignore[arg-type]
        replicas=[world.vllm],
        transport=LocalFolderTransport(world.adapters, world.tmp / "staging"),
        actor=_actor("load-adapter"),
    )


def _promote(world: World, policy: TrustPolicy | None) -> StepResult:
    world.registry.aliases = {"staged": "7"}
    request = PromoteRequest(
        model=MODEL, source_alias="staged", live_slot=LIVE_SLOT, policy=AdapterPolicy(trust=policy)
    )
    return promote_adapter(
        request,
        registry=world.registry,  # type: ignore[arg-type]
        replicas=[world.vllm],
        transport=LocalFolderTransport(world.adapters, world.tmp / "staging"),
        actor=_actor("promote-adapter"),
    )


def _reconcile(world: World, policy: TrustPolicy | None) -> StepResult:
    world.registry.aliases = {"live": "7"}
    request = ReconcileRequest(
        model=MODEL, slot_for_alias={"live": LIVE_SLOT}, policy=AdapterPolicy(trust=policy)
    )
    return reconcile(
        request,
        registry=world.registry,  # type: ignore[arg-type]
        replicas=[world.vllm],
        transport=LocalFolderTransport(world.adapters, world.tmp / "staging"),
        actor=_actor("reconcile"),
    )


def _init_load(world: World, policy: TrustPolicy | None) -> StepResult:
    world.registry.aliases = {"live": "7"}
    return init_load_adapters(
        model=MODEL,
        slot_for_alias={"live": LIVE_SLOT},
        registry=world.registry,  # type: ignore[arg-type]
        transport=LocalFolderTransport(world.adapters, world.tmp / "staging"),
        base_model_name=SMOLLM2,
        policy=AdapterPolicy(trust=policy),
    )


PATHS = {"load-adapter": _load, "promote-adapter": _promote, "reconcile": _reconcile, "init-load": _init_load}


@pytest.mark.parametrize("run", PATHS.values(), ids=PATHS.keys())
def test_every_loading_path_refuses_an_unsigned_version_when_a_signature_is_required(
    world: World, run: Any
) -> None:
    world.register("7")
    with pytest.raises(SignatureError, match="has no signature"):
        run(world, world.policy())  # FakeRegistry fails the test if an alias is written
    assert world.server.lora_calls() == []
    assert list(world.adapters.rglob("*")) == []
    assert world.registry.model_tags.get("loradeploy.pending") is None


@pytest.mark.parametrize("run", PATHS.values(), ids=PATHS.keys())
def test_every_loading_path_serves_a_version_signed_with_a_trusted_key(signed: World, run: Any) -> None:
    try:
        run(signed, signed.policy())
    except AssertionError as exc:  # promote reaches its alias moves: the fake refuses them
        assert "must not" in str(exc)
    served = list(signed.adapters.glob(f"*/{MODEL}-v7"))
    assert len(served) == 1
    assert sorted(p.name for p in served[0].iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


# -- signing: register --sign-key, train's reuse, loradeploy sign --------------------------------


class FakeRegisteringRegistry(FakeSignedRegistry):
    """FAKE registry that also registers: ``register_adapter`` publishes the next version."""

    def ping(self) -> None:
        self._check(self.model)

    def register_adapter(
        self, name: str, adapter_dir: Path, *, version_tags: dict[str, str], run_id: str | None = None
    ) -> str:
        self._check(name)
        version = str(len(self.files) + 1)
        self.publish(version, adapter_dir)
        assert self.tags[version] == dict(version_tags)
        return version

    def find_version_with_files(self, name: str, digests: dict[str, str]) -> str | None:
        found = [v for v, tags in self.tags.items() if digests_from_tags(tags) == dict(digests)]
        return max(found, key=int) if found else None


@pytest.fixture
def registering(world: World) -> World:
    world.registry = FakeRegisteringRegistry(model=MODEL)
    return world


def test_register_with_a_key_signs_the_new_version_before_setting_an_alias(registering: World) -> None:
    folder = write_adapter(registering.tmp / "adapter", layers=1)
    registering.registry.aliases = {}
    result = register(
        registering.registry,  # type: ignore[arg-type]
        model=MODEL,
        adapter_dir=folder,
        alias=None,
        actor=_actor("register"),
        sign_key=registering.team.private,
    )
    assert result.version == "1"
    tags = registering.registry.tags["1"]
    assert tags[SIGNATURE_TAG] == SIGNATURE_FILE
    assert tags[SIGNER_TAG] == key_identity(registering.team.fingerprint)
    assert "verified: signed by key sha256:" in str(result.details["signature"])
    registering.deploy("1", registering.policy())  # and it verifies


def test_register_with_a_key_that_cannot_sign_registers_nothing(registering: World) -> None:
    folder = write_adapter(registering.tmp / "adapter", layers=1)
    with pytest.raises(UsageError, match="not an unencrypted PEM private key"):
        register(
            registering.registry,  # type: ignore[arg-type]
            model=MODEL,
            adapter_dir=folder,
            alias=None,
            actor=_actor("register"),
            sign_key=registering.team.public,  # a public key is not a signing key
        )
    assert registering.registry.files == {}


def test_register_with_a_certificate_chain_whose_first_certificate_is_another_key(registering: World) -> None:
    bot = cert_signer(registering.tmp / "pki", "release-bot")
    folder = write_adapter(registering.tmp / "adapter", layers=1)
    with pytest.raises(UsageError, match="is not for the key"):
        register(
            registering.registry,  # type: ignore[arg-type]
            model=MODEL,
            adapter_dir=folder,
            alias=None,
            actor=_actor("register"),
            sign_key=registering.team.private,
            sign_cert_chain=bot.chain,
        )
    assert registering.registry.files == {}


def test_reusing_an_identical_unsigned_version_signs_it_once(registering: World) -> None:
    folder = write_adapter(registering.tmp / "adapter", layers=1)
    registering.registry.publish("1", folder)  # registered earlier, unsigned
    for _ in range(2):
        result = register(
            registering.registry,  # type: ignore[arg-type]
            model=MODEL,
            adapter_dir=folder,
            alias=None,
            actor=_actor("register"),
            reuse_identical=True,
            sign_key=registering.team.private,
        )
        assert result.version == "1"
    assert "already signed" in str(result.details["signature"])
    registering.deploy("1", registering.policy())


def test_sign_a_version_registered_by_another_tool(world: World) -> None:
    world.register("7")
    result = sign(world.registry, model=MODEL, version="7", key=world.team.private)  # type: ignore[arg-type]
    assert result.details["signer"] == key_identity(world.team.fingerprint)
    world.deploy("7", world.policy())


def test_sign_refuses_a_version_whose_files_differ_from_its_tags(world: World) -> None:
    world.register("7")
    world.registry.files["7"]["adapter_config.json"] = b'{"peft_type": "LORA"}'
    with pytest.raises(InvalidAdapterError):
        sign(world.registry, model=MODEL, version="7", key=world.team.private)  # type: ignore[arg-type]
    assert SIGNATURE_TAG not in world.registry.tags["7"]


def test_signing_again_replaces_the_signature_with_the_new_signer(signed: World) -> None:
    sign(signed.registry, model=MODEL, version="7", key=signed.stranger.private)  # type: ignore[arg-type]
    signed.refuses("7", signed.policy(), "outside the trust policy")
    signed.deploy("7", signed.policy(keys=(signed.stranger.public,)))


# -- the smoke probes recorded beside the files: listed, never downloaded, never signed ---------------


def _record_probes(world: World, version: str) -> None:
    record_probes(world.registry, MODEL, version, [Probe("How long?", reference="3 to 63")])  # type: ignore[arg-type]


def test_recorded_probes_beside_a_signed_version_are_neither_served_nor_signed(signed: World) -> None:
    _record_probes(signed, "7")
    assert PROBES_FILE in signed.registry.files["7"]
    result = signed.deploy("7", signed.policy())
    assert result.details["signature"]["checked"] is True
    assert _served_files(signed, "7") == ["adapter_config.json", "adapter_model.safetensors"]


def test_signing_a_version_with_recorded_probes_signs_only_its_files(world: World) -> None:
    world.register("7")
    _record_probes(world, "7")
    sign(world.registry, model=MODEL, version="7", key=world.team.private)  # type: ignore[arg-type]
    world.deploy("7", world.policy())
    assert _served_files(world, "7") == ["adapter_config.json", "adapter_model.safetensors"]


def test_an_oversized_probes_artifact_is_refused_before_the_download(world: World) -> None:
    world.register("7")
    world.registry.files["7"][PROBES_FILE] = b"x" * (MAX_PROBES_BYTES + 1)
    with pytest.raises(InvalidAdapterError) as caught:
        world.deploy("7", None)
    assert PROBES_FILE in caught.value.message and "nothing was downloaded" in caught.value.message
    assert world.registry.downloads == []


# -- settings: flags, environment, stack file ------------------------------------------------------


def _settings(
    tmp_path: Path, flags: dict[str, Any], env: dict[str, str], stack: dict[str, Any] | None = None
) -> Any:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    if stack is not None:
        base = {
            "home": str(home),
            "tracking_uri": "http://mlflow.test:5000",
            "vllm_url": "http://vllm.test:8000",
            "adapters_root": str(tmp_path / "adapters"),
            "served_model": SMOLLM2,
            "max_lora_rank": 16,
        }
        (home / "stack.json").write_text(json.dumps(base | stack))
    return load_settings(flags, {"LORADEPLOY_HOME": str(home), **env}, tmp_path)


def test_the_trust_policy_comes_from_the_flag_then_the_environment_then_the_stack(tmp_path: Path) -> None:
    stack = {"trusted_keys": ["/stack/demo.pub"], "require_signature": True, "sign_key": "/stack/demo.key"}
    from_stack = _settings(tmp_path, {}, {}, stack)
    assert from_stack.trusted_keys == [Path("/stack/demo.pub")]
    assert from_stack.require_signature is True
    assert from_stack.sign_key == Path("/stack/demo.key")
    env = {
        "LORADEPLOY_TRUSTED_KEYS": f"/a.pub{os.pathsep}/b.pub",
        "LORADEPLOY_REQUIRE_SIGNATURE": "false",
        "LORADEPLOY_SIGN_KEY": "/env.key",
    }
    from_env = _settings(tmp_path, {}, env, stack)
    assert from_env.trusted_keys == [Path("/a.pub"), Path("/b.pub")]
    assert from_env.require_signature is False
    assert from_env.sign_key == Path("/env.key")
    flags = {"trusted_key": [Path("/flag.pub")], "require_signature": True, "sign_key": Path("/flag.key")}
    from_flags = _settings(tmp_path, flags, env, stack)
    assert from_flags.trusted_keys == [Path("/flag.pub")]
    assert from_flags.require_signature is True
    assert from_flags.sign_key == Path("/flag.key")


def test_nothing_configured_means_no_policy(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {}, {})
    assert (settings.trusted_keys, settings.trusted_cas, settings.require_signature) == ([], [], False)


@pytest.mark.parametrize("value", ["maybe", "2", "on"])
def test_an_unreadable_require_signature_variable_is_a_usage_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(UsageError, match="LORADEPLOY_REQUIRE_SIGNATURE"):
        _settings(tmp_path, {}, {"LORADEPLOY_REQUIRE_SIGNATURE": value})


def test_the_command_line_does_not_import_the_signing_library() -> None:
    code = "import sys, loradeploy.cli; print('model_signing' in sys.modules, 'cryptography' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_the_local_stack_makes_its_demo_key_pair_once_and_keeps_it_private(tmp_path: Path) -> None:
    stack = LocalStack(StackConfig(home=tmp_path, assets=tmp_path, signing=True))
    private, public = stack.demo_key_pair()
    assert private == tmp_path.resolve() / "keys" / "demo-signing.key"
    assert private.stat().st_mode & 0o777 == 0o600
    first = private.read_bytes()
    assert stack.demo_key_pair() == (private, public)
    assert private.read_bytes() == first  # not replaced: versions signed with it stay trusted
    policy = load_policy([public], [], require_signature=True)
    assert policy.configured and len(policy.keys) == 1


# -- the command line ------------------------------------------------------------------------


def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from loradeploy.cli import app

    return CliRunner().invoke(app, list(args))


def test_sign_without_a_key_is_a_usage_error() -> None:
    done = _cli("sign", "--model-name=aws-rag-qa", "--version=3", "--tracking-uri=http://mlflow.test:5000")
    assert done.exit_code == ExitCode.USAGE
    assert "no signing key" in done.output


def test_requiring_signatures_without_a_trusted_key_is_a_usage_error(tmp_path: Path) -> None:
    done = _cli(
        "load-adapter",
        "--model-name=aws-rag-qa",
        "--source=version:3",
        f"--slot-name={SLOT}",
        "--tracking-uri=http://127.0.0.1:9",
        "--vllm-url=http://127.0.0.1:9",
        f"--adapters-root={tmp_path}",
        "--require-signature",
        f"--output-dir={tmp_path / 'out'}",
    )
    assert done.exit_code == ExitCode.USAGE
    assert "holds no public key and no CA certificate" in done.output
    assert json.loads((tmp_path / "out" / "result.json").read_text())["exit_code"] == ExitCode.USAGE


@pytest.mark.parametrize(
    "command", ["register", "sign", "load-adapter", "promote-adapter", "reconcile", "train"]
)
def test_signing_and_trust_options_are_in_the_help(command: str) -> None:
    done = _cli(command, "--help")
    assert done.exit_code == 0
    wanted = "--sign-key" if command in ("register", "sign", "train") else "--trusted-key"
    assert wanted in done.output


# -- the kubectl transport: what the deployer verified is what it copies ---------------------------

POD_ROOT = "/mnt/adapters"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    """Two Ready pods with separate filesystems, reached through the fake kubectl."""
    monkeypatch.delenv("FAKE_KUBECTL_FAIL", raising=False)
    fake = FakeCluster(tmp_path / "cluster", monkeypatch)
    fake.folder.mkdir()
    fake.state["pods"] = [
        fake_pod(name, ip, ready=True, port=8000, root_map={POD_ROOT: str(tmp_path / name)})
        for name, ip in [("pod-a", "10.0.0.1"), ("pod-b", "10.0.0.2")]
    ]
    return fake


def _fetch_to_pods(world: World, cluster: FakeCluster, policy: TrustPolicy) -> str:
    root, _, _, verdict = fetch_and_place(
        world.registry.get_version(MODEL, "7"),
        slot=LIVE_SLOT,
        registry=world.registry,  # type: ignore[arg-type]
        transport=KubectlTransport(cluster.api(), NS, SELECTOR, CONTAINER, root=POD_ROOT),
        served_names=[(SMOLLM2,)],
        policy=AdapterPolicy(trust=policy),
        timer=Timer({}),
    )
    assert verdict.checked
    return root


def test_kubectl_copies_the_verified_folder_without_its_signature(
    signed: World, cluster: FakeCluster
) -> None:
    root = _fetch_to_pods(signed, cluster, signed.policy())
    for pod in ("pod-a", "pod-b"):
        placed = signed.tmp / pod / Path(root).relative_to(POD_ROOT)
        assert sorted(p.name for p in placed.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
    assert sum(call[0] == "cp" for call in cluster.calls()) == 2


def test_kubectl_copies_nothing_when_the_signature_fails(signed: World, cluster: FakeCluster) -> None:
    weights = bytearray(signed.registry.files["7"]["adapter_model.safetensors"])
    weights[-1] ^= 0xFF  # same size: only the signature can tell
    signed.registry.files["7"]["adapter_model.safetensors"] = bytes(weights)
    cluster.forget_calls()
    with pytest.raises(SignatureError, match="does not verify"):
        _fetch_to_pods(signed, cluster, signed.policy())
    assert [call for call in cluster.calls() if call[0] in ("cp", "exec")] == []
    assert not (signed.tmp / "pod-a" / LIVE_SLOT).exists()


# -- who signed what is served ---------------------------------------------------------------------


def test_status_names_the_signer_of_every_served_version(signed: World) -> None:
    signed.register("6", fill=3)  # unsigned
    signed.registry.aliases = {"live": "7", "staged": "6"}
    signed.server.adapters = {
        LIVE_SLOT: f"/srv/adapters/{LIVE_SLOT}/{MODEL}-v7",
        SLOT: f"/srv/adapters/{SLOT}/{MODEL}-v6",
    }
    result = status(
        signed.registry,  # type: ignore[arg-type]
        [signed.vllm],
        model=MODEL,
        slot_for_alias={"live": LIVE_SLOT, "staged": SLOT},
    )
    signer = f"{key_identity(signed.team.fingerprint)} (key)"
    assert result.details["signers"] == {"7": signer, "6": "unsigned"}
    details = {check.name.split("@")[0]: check.detail for check in result.checks}
    assert details[f"live->{LIVE_SLOT}"].endswith(f"signed by {signer}")
    assert details[f"staged->{SLOT}"].endswith("serves 6, unsigned")


# -- properties of the pure decisions ----------------------------------------------------------------

FAST = settings(max_examples=150, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@FAST
@given(st.binary(max_size=4096) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_parse_or_raise_a_signature_error(raw: bytes) -> None:
    try:
        parse_signature(raw, "model 'm' version 1")
    except SignatureError as exc:
        assert "\n" not in exc.one_line()


@FAST
@given(st.text(max_size=300))
def test_a_signature_name_from_the_tags_is_one_plain_file_name_or_refused(name: str) -> None:
    try:
        found = signature_file({SIGNATURE_TAG: name}, {"adapter_config.json": "0" * 64}, "v")
    except SignatureError:
        return
    assert found is not None
    assert Path(found).name == found and found not in (".", "..") and "/" not in found and "\\" not in found
    assert found.endswith(".sig") and found != "adapter_config.json"


@FAST
@given(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    st.integers(1, 10**6),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    st.integers(1, 10**6),
)
def test_two_versions_never_share_a_signed_subject(model_a: str, v_a: int, model_b: str, v_b: int) -> None:
    if (model_a, v_a) != (model_b, v_b):
        assert subject_for(model_a, str(v_a)) != subject_for(model_b, str(v_b))

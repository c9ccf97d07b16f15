"""Signed adapters against the real servers (issue 13): a signed release end to end, a
tampered version refused, an unsigned version refused when a signature is required and
served when not, ``loradeploy sign`` for a version registered without a key, and a
certificate-chain signature. Every refusal exits 3 with one error line and leaves
aliases, registered versions and served adapters as they were."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loradeploy.stack.local import LocalStack, StackConfig
from support.pki import KeyPair, cert_signer, key_pair

from .conftest import ASSETS, DEMO_ADAPTERS, Outcome, Stack

MODEL = "it-signed"
CANDIDATE = "it-signed-candidate"
LIVE = "it-signed-live"
FILES = ["adapter_config.json", "adapter_model.safetensors"]


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return key_pair(tmp_path_factory.mktemp("keys"), "team")


def policy(team: KeyPair, *, require: bool = True) -> dict[str, str]:
    return {"LORADEPLOY_TRUSTED_KEYS": str(team.public), "LORADEPLOY_REQUIRE_SIGNATURE": str(require).lower()}


def register(stack: Stack, out: Path, adapter: str, *extra: str) -> str:
    done = stack.run(
        "register",
        f"--model-name={MODEL}",
        f"--adapter-dir={DEMO_ADAPTERS / adapter}",
        *extra,
        output_dir=out,
    )
    assert done.code == 0, done.stderr
    assert done.result is not None
    return str(done.result["version"])


def load(stack: Stack, out: Path, version: str, env: dict[str, str]) -> Outcome:
    return stack.run(
        "load-adapter",
        f"--model-name={MODEL}",
        f"--source=version:{version}",
        f"--slot-name={CANDIDATE}",
        output_dir=out,
        env=env,
    )


def assert_refused(done: Outcome, *fragments: str) -> None:
    assert done.code == 3, done.stderr
    assert len(done.error_lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in done.error_lines[0], done.error_lines[0]


def served_files(stack: Stack, slot: str) -> list[str]:
    return sorted(p.name for p in Path(stack.served()[slot]).iterdir())


def test_a_signed_release_end_to_end(stack: Stack, team: KeyPair, tmp_path: Path) -> None:
    version = register(stack, tmp_path / "register", "aws-rag-qa-v1", f"--sign-key={team.private}")
    tags = version_tags(stack, version)
    assert tags["loradeploy.signature"] == "model.sig"
    assert tags["loradeploy.signature.signer"] == f"key sha256:{team.fingerprint[:16]}"
    assert tags["loradeploy.signature.method"] == "key"
    again = register(
        stack,
        tmp_path / "reuse",
        "aws-rag-qa-v1",
        "--reuse-identical",
        "--alias=candidate",
        f"--sign-key={team.private}",
    )
    assert again == version  # reused, already signed: not signed twice

    loaded = stack.run(
        "load-adapter",
        f"--model-name={MODEL}",
        "--source=alias:candidate",
        f"--slot-name={CANDIDATE}",
        output_dir=tmp_path / "load",
        env=policy(team),
    )
    assert loaded.code == 0, loaded.stderr
    assert loaded.result is not None
    signature = loaded.result["details"]["signature"]  # type: ignore[index]
    assert signature["checked"] is True and signature["signer"] == tags["loradeploy.signature.signer"]
    assert served_files(stack, CANDIDATE) == FILES  # the signature file is never served

    staged = stack.run(
        "set-staged-alias", f"--model-name={MODEL}", "--source=alias:candidate", f"--slot-name={CANDIDATE}"
    )
    assert staged.code == 0, staged.stderr
    promoted = stack.run(
        "promote-adapter",
        f"--model-name={MODEL}",
        "--source-alias=staged",
        f"--live-slot={LIVE}",
        "--reason=signed release",
        output_dir=tmp_path / "promote",
        env=policy(team),
    )
    assert promoted.code == 0, promoted.stderr
    assert stack.aliases(MODEL)["live"] == version
    assert served_files(stack, LIVE) == FILES

    status = stack.run(
        "status",
        f"--model-name={MODEL}",
        f"--live-slot={LIVE}",
        f"--candidate-slot={CANDIDATE}",
        output_dir=tmp_path / "status",
    )
    assert status.result is not None
    assert status.result["details"]["signers"][version] == (  # type: ignore[index]
        f"{tags['loradeploy.signature.signer']} (key)"
    )
    history = stack.run("history", f"--model-name={MODEL}", output_dir=tmp_path / "history")
    assert history.code == 0, history.stderr
    assert history.result is not None
    live_moves = [m for m in history.result["details"]["moves"] if m["alias"] == "live"]  # type: ignore[index]
    assert live_moves[-1]["to_signer"] == f"{tags['loradeploy.signature.signer']} (key)"


def version_tags(stack: Stack, version: str) -> dict[str, str]:
    import httpx

    response = httpx.get(
        f"{stack.info.tracking_uri}/api/2.0/mlflow/model-versions/get",
        params={"name": MODEL, "version": version},
        timeout=10,
    )
    response.raise_for_status()
    return {t["key"]: t["value"] for t in response.json()["model_version"].get("tags", [])}


def tamper(stack: Stack, version: str, replacement: Path, *, retag: bool) -> None:
    """What someone with write access to the registry can do: replace the weights of a
    signed version (and, with ``retag``, its sha256 tag to match)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from loradeploy.domain.adapter import sha256_file

    mlflow.set_tracking_uri(stack.info.tracking_uri)  # proxied artifact URIs resolve against it
    client = MlflowClient(tracking_uri=stack.info.tracking_uri, registry_uri=stack.info.tracking_uri)
    uri = client.get_model_version_download_uri(MODEL, version)
    get_artifact_repository(uri).log_artifact(str(replacement))
    if retag:
        client.set_model_version_tag(
            MODEL, version, "loradeploy.sha256.adapter_model.safetensors", sha256_file(replacement)
        )


@pytest.mark.parametrize("retag", [True, False], ids=["sha256-tag-updated", "sha256-tag-left"])
def test_a_tampered_version_is_refused_and_live_keeps_serving(
    stack: Stack, team: KeyPair, tmp_path: Path, retag: bool
) -> None:
    version = register(stack, tmp_path / "register", "aws-rag-qa-v1", f"--sign-key={team.private}")
    weights = tmp_path / "forged" / "adapter_model.safetensors"
    weights.parent.mkdir()
    shutil.copyfile(DEMO_ADAPTERS / "aws-rag-qa-v2" / "adapter_model.safetensors", weights)
    tamper(stack, version, weights, retag=retag)
    before = stack.snapshot(MODEL)

    assert_refused(
        load(stack, tmp_path / "load", version, policy(team)), f"version {version}", "after signing"
    )
    assert stack.snapshot(MODEL) == before

    from mlflow import MlflowClient

    MlflowClient(
        tracking_uri=stack.info.tracking_uri, registry_uri=stack.info.tracking_uri
    ).set_registered_model_alias(MODEL, "staged", version)  # not the global registry a unit test left
    before = stack.snapshot(MODEL)
    promoted = stack.run(
        "promote-adapter",
        f"--model-name={MODEL}",
        "--source-alias=staged",
        f"--live-slot={LIVE}",
        env=policy(team),
    )
    assert_refused(promoted, f"version {version}", "after signing")
    assert stack.snapshot(MODEL) == before


def test_an_unsigned_version_is_refused_when_required_and_served_when_not(
    stack: Stack, team: KeyPair, tmp_path: Path
) -> None:
    version = register(stack, tmp_path / "register", "aws-rag-qa-v2")
    before = stack.snapshot(MODEL)
    assert_refused(load(stack, tmp_path / "required", version, policy(team)), "has no signature")
    assert stack.snapshot(MODEL) == before

    done = load(stack, tmp_path / "optional", version, policy(team, require=False))
    assert done.code == 0, done.stderr
    assert done.result is not None
    assert "unsigned: accepted" in done.result["details"]["signature"]["note"]  # type: ignore[index]

    signed = stack.run("sign", f"--model-name={MODEL}", f"--version={version}", f"--sign-key={team.private}")
    assert signed.code == 0, signed.stderr
    done = load(stack, tmp_path / "signed", version, policy(team))
    assert done.code == 0, done.stderr


def test_a_certificate_chain_signature_verifies_against_the_trusted_ca(stack: Stack, tmp_path: Path) -> None:
    bot = cert_signer(tmp_path / "pki", "release-bot")
    version = register(
        stack,
        tmp_path / "register",
        "aws-rag-qa-v1",
        f"--sign-key={bot.key}",
        f"--sign-cert-chain={bot.chain}",
    )
    trusted = {"LORADEPLOY_TRUSTED_CAS": str(bot.ca), "LORADEPLOY_REQUIRE_SIGNATURE": "true"}
    done = load(stack, tmp_path / "load", version, trusted)
    assert done.code == 0, done.stderr
    assert done.result is not None
    assert done.result["details"]["signature"]["signer"] == f"cert {bot.subject}"  # type: ignore[index]

    other = cert_signer(tmp_path / "other-pki", "release-bot", ca_name="another CA")
    before = stack.snapshot(MODEL)
    refused = load(stack, tmp_path / "refused", version, {**trusted, "LORADEPLOY_TRUSTED_CAS": str(other.ca)})
    assert_refused(refused, "does not verify")
    assert stack.snapshot(MODEL) == before


def test_a_stack_file_with_the_demo_key_signs_and_requires_signatures(stack: Stack, tmp_path: Path) -> None:
    """What 'loradeploy stack up' writes: no signing flag, no policy flag, yet register signs
    and load-adapter refuses what its key did not sign."""
    home = tmp_path / "signed-stack"
    home.mkdir()
    local = LocalStack(StackConfig(home=home, assets=ASSETS, signing=True))
    info = local.signed(stack.info.model_copy(update={"home": home}))
    (home / "stack.json").write_text(info.model_dump_json())
    env = {"LORADEPLOY_HOME": str(home)}
    registered = stack.run(
        "register",
        f"--model-name={MODEL}",
        f"--adapter-dir={DEMO_ADAPTERS / 'aws-rag-qa-v2'}",
        output_dir=tmp_path / "register",
        env=env,
    )
    assert registered.code == 0, registered.stderr
    assert registered.result is not None
    assert str(registered.result["details"]["signature"]).startswith("verified: signed by key sha256:")  # type: ignore[index]
    version = str(registered.result["version"])
    done = load(stack, tmp_path / "load", version, env)
    assert done.code == 0, done.stderr

    unsigned = register(stack, tmp_path / "unsigned", "aws-rag-qa-v2")  # the session stack: no key
    assert_refused(load(stack, tmp_path / "refused", unsigned, env), "has no signature")

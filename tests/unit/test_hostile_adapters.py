"""Hostile registry artefacts, through the real download, validation, placement and
deploy code (issue 6).

A registered version is whatever an attacker with write access to the registry put
there: file names, file contents and the ``loradeploy.*`` tags. Each case below builds
such a version, serves it through MLflow's own artifact repository lookup (the
``models`` scheme resolves to ``FakeModelsArtifactRepository``, standing in for the
tracking server's artifact store; ``MLflowHelper`` lists and downloads through it), and
runs ``steps.deploy.deploy_version`` with ``LocalFolderTransport`` and
``FakeVllmServer``. Every case must end in the right
typed error, leave the tree around ``tmp_path`` exactly as it was (downloads are
staged outside it), and send nothing to the vLLM server.

The case lists (``NAME_CASES``, ``CONTENT_CASES``, ``FOLDER_CASES``) are the inventory in
docs/hostile-inputs.md; ``pytest --collect-only -q tests/unit/test_hostile_adapters.py``
counts them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from mlflow.entities import FileInfo
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry

from loradeploy.clients.files import LocalFolderTransport
from loradeploy.clients.registry import MLflowHelper, VersionInfo
from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.adapter import (
    CONFIG_FILE,
    DEFAULT_MAX_TOTAL_BYTES,
    SHA_TAG_PREFIX,
    TAG_PREFIX,
    WEIGHTS_FILE,
    inspect_adapter,
)
from loradeploy.domain.layout import version_dir
from loradeploy.domain.swap import SwapStrategy
from loradeploy.errors import (
    IncompatibleAdapterError,
    InvalidAdapterError,
    LoraDeployError,
    PermanentError,
    UsageError,
)
from loradeploy.results import StepResult
from loradeploy.steps.aliases import Actor
from loradeploy.steps.deploy import deploy_version
from loradeploy.steps.register import register
from loradeploy.steps.rollout import inspect_replicas
from support.fakes import FakeVllmServer
from support.synthetic import adapter_config, lora_tensors, safetensors_bytes

MODEL = "aws-rag-qa"
SLOT = "aws-rag-qa-candidate"
OLD_ROOT = f"/srv/adapters/{SLOT}/{MODEL}-v6"  # what the slot serves before each case
SERVER_MAX_RANK = 16
GIB = 1 << 30


# -- the registered version, as an attacker left it ---------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Artefacts:
    """One registered version's files and tags.

    ``sparse`` files are written by the fake store as sparse files of that size (no data
    blocks), so a multi-gigabyte file costs nothing. ``tags`` is None until ``seal`` writes
    the tags ``loradeploy register`` would have written for exactly these files: a hostile
    version with consistent tags, so a case is caught by the check it targets and not by
    the digest comparison.
    """

    files: dict[str, bytes]
    sparse: dict[str, int] = field(default_factory=dict)
    tags: dict[str, str] | None = None

    @classmethod
    def valid(cls, rank: int = 16, base: str | None = None) -> Artefacts:
        config = adapter_config(rank=rank) if base is None else adapter_config(base=base, rank=rank)
        return cls(
            {
                CONFIG_FILE: json.dumps(config).encode(),
                WEIGHTS_FILE: safetensors_bytes(lora_tensors(rank=rank, layers=1)),
            }
        )

    def config(self, **changes: Any) -> None:
        config = json.loads(self.files[CONFIG_FILE])
        config.update(changes)
        self.files[CONFIG_FILE] = json.dumps(config).encode()

    def seal(self) -> dict[str, str]:
        tags = {f"{SHA_TAG_PREFIX}{name}": sha(data) for name, data in self.files.items()}
        tags.update({f"{SHA_TAG_PREFIX}{name}": "0" * 64 for name in self.sparse})
        size = sum(len(d) for d in self.files.values()) + sum(self.sparse.values())
        tags[f"{TAG_PREFIX}bytes"] = str(size)
        self.tags = tags
        return tags


class FakeModelsArtifactRepository(ArtifactRepository):
    """FAKE artifact store for ``models:/`` URIs: lists and serves ``Artefacts``.

    Registered under the ``models`` scheme, so MLflow's real repository lookup returns
    it for ``models:/NAME/VERSION`` and ``MLflowHelper`` lists and downloads through it
    (its ``list_artifacts`` and ``_download_file``), no server.
    """

    served: ClassVar[Artefacts | None] = None
    downloads: ClassVar[list[str]] = []
    unsized: ClassVar[set[str]] = set()  # listed without a size
    served_extra: ClassVar[dict[str, bytes]] = {}  # served after the listed bytes
    write_error: ClassVar[OSError | None] = None  # raised by every file download

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        assert self.served is not None
        if path:
            return []  # a flat version: nothing below the root
        listing = [FileInfo(name, False, len(data)) for name, data in self.served.files.items()]
        listing += [FileInfo(name, False, size) for name, size in self.served.sparse.items()]
        return [FileInfo(f.path, False, None) if f.path in self.unsized else f for f in listing]

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        assert self.served is not None
        type(self).downloads.append(remote_file_path)
        if self.write_error is not None:
            raise self.write_error
        if remote_file_path in self.served.sparse:
            with Path(local_path).open("wb") as handle:
                handle.truncate(self.served.sparse[remote_file_path])
            return
        extra = self.served_extra.get(remote_file_path, b"")
        Path(local_path).write_bytes(self.served.files[remote_file_path] + extra)

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        raise NotImplementedError("read-only fake")

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        raise NotImplementedError("read-only fake")


class FakeMlflowClient:
    """FAKE registry client: the download path must not need it for anything."""


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeModelsArtifactRepository]]:
    monkeypatch.setitem(_artifact_repository_registry._registry, "models", FakeModelsArtifactRepository)
    monkeypatch.setattr(FakeModelsArtifactRepository, "downloads", [])
    monkeypatch.setattr(FakeModelsArtifactRepository, "unsized", set())
    monkeypatch.setattr(FakeModelsArtifactRepository, "served_extra", {})
    monkeypatch.setattr(FakeModelsArtifactRepository, "write_error", None)
    # MLflowHelper sets MLflow's HTTP settings in the environment; put them back afterwards.
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    yield FakeModelsArtifactRepository
    FakeModelsArtifactRepository.served = None


# -- what must not change ----------------------------------------------------------------------


def tree(folder: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every path under ``folder``: kind, size and (for small files) content."""
    found: dict[str, tuple[str, int, bytes]] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            found[rel] = ("link", 0, str(path.readlink()).encode())
        elif path.is_dir():
            found[rel] = ("dir", 0, b"")
        elif not path.is_file():
            found[rel] = ("other", 0, b"")  # a named pipe: never read it
        else:
            size = path.stat().st_size
            found[rel] = ("file", size, path.read_bytes() if size < 1 << 20 else b"")
    return found


@dataclass
class Surroundings:
    """The tree around ``tmp_path`` (and its parent's names) before a case ran."""

    tmp_path: Path
    adapters: Path
    before: dict[str, tuple[str, int, bytes]] = field(default_factory=dict)
    parent_names: list[str] = field(default_factory=list)

    def take(self) -> None:
        self.before = tree(self.tmp_path)
        self.parent_names = sorted(p.name for p in self.tmp_path.parent.iterdir())

    def assert_unchanged(self) -> None:
        after = tree(self.tmp_path)  # staging is outside the adapters folder, and removed
        assert after == self.before
        assert sorted(p.name for p in self.tmp_path.parent.iterdir()) == self.parent_names


@dataclass
class Deployer:
    """Runs one version through ``deploy_version`` against the fakes."""

    store: type[FakeModelsArtifactRepository]
    server: FakeVllmServer
    vllm: VllmClient
    around: Surroundings

    def run(self, artefacts: Artefacts, *, max_adapter_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> StepResult:
        tags = artefacts.tags if artefacts.tags is not None else artefacts.seal()
        self.store.served = artefacts
        version = VersionInfo(model=MODEL, version="7", aliases=[], tags=tags, via="version:7")
        registry = MLflowHelper("http://registry.test:5000", client=FakeMlflowClient())  # type: ignore[arg-type]
        replicas = inspect_replicas([self.vllm], SLOT, SwapStrategy.AUTO)
        result = StepResult(step="load-adapter", model=MODEL)
        deploy_version(
            version,
            slot=SLOT,
            replicas=replicas,
            registry=registry,
            transport=LocalFolderTransport(self.around.adapters),
            base_model_aliases={},
            max_lora_rank=SERVER_MAX_RANK,
            result=result,
            max_adapter_bytes=max_adapter_bytes,
        )
        return result

    def refuses(self, artefacts: Artefacts, error: type[LoraDeployError], **kwargs: Any) -> LoraDeployError:
        self.server.adapters = {SLOT: OLD_ROOT}
        self.around.take()
        with pytest.raises(error) as caught:
            self.run(artefacts, **kwargs)
        assert type(caught.value) is error, caught.value.one_line()
        self.around.assert_unchanged()
        assert self.server.lora_calls() == []
        assert self.server.adapters == {SLOT: OLD_ROOT}
        line = caught.value.one_line()
        assert "\n" not in line
        assert "next:" in line
        return caught.value


@pytest.fixture
def deployer(
    store: type[FakeModelsArtifactRepository], server: FakeVllmServer, vllm: VllmClient, tmp_path: Path
) -> Deployer:
    (tmp_path / "bystander.txt").write_text("must survive")  # something to notice changes on
    adapters = tmp_path / "srv" / "adapters"  # the volume the server reads
    adapters.mkdir(parents=True)
    return Deployer(store, server, vllm, Surroundings(tmp_path, adapters))


# -- the harness itself works --------------------------------------------------------------------


def test_a_valid_version_is_deployed_by_the_same_harness(deployer: Deployer, tmp_path: Path) -> None:
    result = deployer.run(Artefacts.valid())
    root = version_dir(str(deployer.around.adapters), SLOT, MODEL, "7")
    assert deployer.server.adapters == {SLOT: root}
    assert inspect_adapter(Path(root)).rank == 16
    assert result.details["adapter_path"] == root
    assert sorted(deployer.store.downloads) == [CONFIG_FILE, WEIGHTS_FILE]


# -- hostile file names ----------------------------------------------------------------------------

HOSTILE_NAMES = {
    "dotdot": "../x",
    "dotdot-deep": "../../../../escape.txt",
    "dotdot-inside": "sub/../../escape.txt",
    "absolute": "/tmp/loradeploy-hostile-absolute.txt",
    "nul": "adapter\x00config.json",
    "backslash": "..\\..\\escape.txt",
    "subfolder": "nested/adapter_model.safetensors",
    "newline": "adapter_config.json\nextra",
    "hidden": ".env",
    "leading-dash": "-rf",
}


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_a_hostile_name_in_the_artifact_listing(deployer: Deployer, name: str) -> None:
    artefacts = Artefacts.valid()
    artefacts.seal()  # the tags name only the good files: the listing alone is hostile
    artefacts.files[name] = b"owned"
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert not Path("/tmp/loradeploy-hostile-absolute.txt").exists()
    assert "model 'aws-rag-qa' version 7" in error.message or "adapter " in error.message


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_a_hostile_name_in_the_sha256_tags_is_refused_before_the_download(
    deployer: Deployer, name: str
) -> None:
    artefacts = Artefacts.valid()
    artefacts.files[name] = b"owned"
    artefacts.seal()  # listing and tags agree: both name the hostile file
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert "not a plain file name" in error.message
    assert deployer.store.downloads == []


# -- hostile contents (names are fine, tags match the files) --------------------------------------


def _weights(header: Any, data: bytes = b"", *, raw: bytes | None = None) -> Callable[[Artefacts], None]:
    def build(a: Artefacts) -> None:
        body = raw if raw is not None else json.dumps(header).encode()
        a.files[WEIGHTS_FILE] = struct.pack("<Q", len(body)) + body + data

    return build


def _f32(shape: list[int], start: int, end: int) -> dict[str, Any]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [start, end]}


A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def _set(name: str, data: bytes) -> Callable[[Artefacts], None]:
    return lambda a: a.files.__setitem__(name, data)


def _drop(*keys: str) -> Callable[[Artefacts], None]:
    def build(a: Artefacts) -> None:
        config = json.loads(a.files[CONFIG_FILE])
        for key in keys:
            config.pop(key)
        a.files[CONFIG_FILE] = json.dumps(config).encode()

    return build


def _config(**changes: Any) -> Callable[[Artefacts], None]:
    return lambda a: a.config(**changes)


def _remove(name: str) -> Callable[[Artefacts], None]:
    return lambda a: a.files.pop(name)


def _json_bomb(a: Artefacts) -> None:
    _weights(None, raw=b"[" * 200_000 + b"]" * 200_000)(a)


def _utf16_header(a: Artefacts) -> None:
    header = json.dumps({A: _f32([16, 576], 0, 36864), B: _f32([576, 16], 36864, 73728)})
    _weights(None, b"\0" * 73728, raw=header.encode("utf-16-le"))(a)


INVALID, INCOMPATIBLE = InvalidAdapterError, IncompatibleAdapterError

# (id, how the version is made hostile, the error it must end in)
CONTENT_CASES: list[tuple[str, Callable[[Artefacts], None], type[LoraDeployError]]] = [
    # adapter_config.json
    ("config-missing", _remove(CONFIG_FILE), INVALID),
    ("config-not-json", _set(CONFIG_FILE, b"{peft_type: LORA"), INVALID),
    ("config-empty", _set(CONFIG_FILE, b""), INVALID),
    ("config-not-utf8", _set(CONFIG_FILE, b'{"peft_type": "\xff\xfe"}'), INVALID),
    ("config-json-list", _set(CONFIG_FILE, b'[{"peft_type": "LORA"}]'), INVALID),
    ("config-json-string", _set(CONFIG_FILE, b'"LORA"'), INVALID),
    ("config-over-1mib", _set(CONFIG_FILE, b'{"pad": "' + b"x" * (1 << 20) + b'"}'), INVALID),
    ("config-nesting-bomb", _set(CONFIG_FILE, b"[" * 200_000 + b"]" * 200_000), INVALID),
    ("missing-r", _drop("r"), INVALID),
    ("missing-base", _drop("base_model_name_or_path"), INVALID),
    ("missing-target-modules", _drop("target_modules"), INVALID),
    ("missing-peft-type", _drop("peft_type"), INVALID),
    ("r-string", _config(r="16"), INVALID),
    ("r-float", _config(r=16.0), INVALID),
    ("r-bool", _config(r=True), INVALID),
    ("r-zero", _config(r=0), INVALID),
    ("r-negative", _config(r=-16), INVALID),
    ("r-absurd", _config(r=10**30), INVALID),
    ("r-list", _config(r=[16]), INVALID),
    ("alpha-string", _config(lora_alpha="32"), INVALID),
    ("alpha-nan", _set(CONFIG_FILE, json.dumps(adapter_config(lora_alpha=float("nan"))).encode()), INVALID),
    (
        "alpha-infinity",
        _set(CONFIG_FILE, json.dumps(adapter_config(lora_alpha=float("inf"))).encode()),
        INVALID,
    ),
    ("target-modules-int", _config(target_modules=5), INVALID),
    ("target-modules-empty", _config(target_modules=[]), INVALID),
    ("base-not-a-string", _config(base_model_name_or_path=42), INVALID),
    ("peft-type-prefix", _config(peft_type="PREFIX_TUNING"), INVALID),
    ("dora", _config(use_dora=True), INVALID),
    ("bias-all", _config(bias="all"), INVALID),
    ("modules-to-save", _config(modules_to_save=["lm_head"]), INVALID),
    # adapter_model.safetensors
    ("weights-missing", _remove(WEIGHTS_FILE), INVALID),
    ("weights-shorter-than-prefix", _set(WEIGHTS_FILE, b"\x01\x02"), INVALID),
    ("header-length-beyond-file", _set(WEIGHTS_FILE, struct.pack("<Q", 1 << 40) + b"{}"), INVALID),
    ("header-length-max-u64", _set(WEIGHTS_FILE, b"\xff" * 8 + b"{}"), INVALID),
    ("header-not-json", _weights(None, raw=b"{not json}"), INVALID),
    ("header-not-utf8", _weights(None, raw=b'{"\xff\xfe": 1}'), INVALID),
    ("header-utf16", _utf16_header, INVALID),
    ("header-json-list", _weights([1, 2, 3]), INVALID),
    ("header-nesting-bomb", _json_bomb, INVALID),
    (
        "offsets-beyond-file",
        _weights({A: _f32([16, 4], 0, 256), B: _f32([4, 16], 256, 1 << 40)}, b"\0" * 512),
        INVALID,
    ),
    (
        "offsets-negative",
        _weights({A: _f32([16, 4], -256, 0), B: _f32([4, 16], 0, 256)}, b"\0" * 256),
        INVALID,
    ),
    (
        "offsets-not-integers",
        _weights({A: {"dtype": "F32", "shape": [16, 4], "data_offsets": ["0", "256"]}}, b"\0" * 256),
        INVALID,
    ),
    (
        "tensors-overlap",
        _weights({A: _f32([16, 4], 0, 256), B: _f32([4, 16], 128, 384)}, b"\0" * 384),
        INVALID,
    ),
    (
        "tensors-leave-a-gap",
        _weights({A: _f32([16, 4], 0, 256), B: _f32([4, 16], 512, 768)}, b"\0" * 768),
        INVALID,
    ),
    (
        "trailing-bytes",
        _weights({A: _f32([16, 4], 0, 256), B: _f32([4, 16], 256, 512)}, b"\0" * 600),
        INVALID,
    ),
    (
        "shape-not-matching-bytes",
        _weights({A: _f32([16, 8], 0, 256), B: _f32([4, 16], 256, 512)}, b"\0" * 512),
        INVALID,
    ),
    (
        "dtype-not-matching-bytes",
        _weights(
            {A: {"dtype": "F64", "shape": [16, 4], "data_offsets": [0, 256]}, B: _f32([4, 16], 256, 512)},
            b"\0" * 512,
        ),
        INVALID,
    ),
    (
        "dtype-unknown",
        _weights({A: {"dtype": "F4X", "shape": [16, 4], "data_offsets": [0, 256]}}, b"\0" * 256),
        INVALID,
    ),
    ("shape-negative", _weights({A: _f32([-16, -4], 0, 256)}, b"\0" * 256), INVALID),
    ("tensor-entry-a-list", _weights({A: ["F32", [16, 4], [0, 256]]}, b"\0" * 256), INVALID),
    (
        "rank-in-weights-not-r",
        _weights({A: _f32([8, 8], 0, 256), B: _f32([8, 8], 256, 512)}, b"\0" * 512),
        INVALID,
    ),
    ("no-lora-tensors", _weights({"embed.weight": _f32([16, 4], 0, 256)}, b"\0" * 256), INVALID),
    # pickle weights
    (
        "pickle-bin-alone",
        lambda a: (a.files.pop(WEIGHTS_FILE), a.files.__setitem__("adapter_model.bin", b"\x80\x04\x95evil")),
        INVALID,
    ),
    ("pickle-bin-beside", _set("adapter_model.bin", b"\x80\x04cos\nsystem\n"), INVALID),
    ("pickle-pt-beside", _set("adapter_model.pt", b"\x80\x04\x95evil"), INVALID),
    # does not fit the served server
    ("other-base-model", _config(base_model_name_or_path="mistralai/Mistral-7B-v0.1"), INCOMPATIBLE),
    (
        "base-model-path-traversal",
        _config(base_model_name_or_path="../../models/smollm2-135m-instruct"),
        INCOMPATIBLE,
    ),
    ("rank-above-server-limit", lambda a: a.files.update(Artefacts.valid(rank=32).files), INCOMPATIBLE),
]


@pytest.mark.parametrize(
    ("build", "error"), [c[1:] for c in CONTENT_CASES], ids=[c[0] for c in CONTENT_CASES]
)
def test_hostile_contents_are_refused_before_the_server_sees_them(
    deployer: Deployer, build: Callable[[Artefacts], None], error: type[LoraDeployError]
) -> None:
    artefacts = Artefacts.valid()
    build(artefacts)
    deployer.refuses(artefacts, error)


# -- tags that do not match the files ---------------------------------------------------------------


def test_a_digest_that_does_not_match_the_tags(deployer: Deployer) -> None:
    artefacts = Artefacts.valid()
    artefacts.seal()
    # Swapped after registration for other, equally well-formed weights.
    artefacts.files[WEIGHTS_FILE] = safetensors_bytes(lora_tensors(rank=16, layers=1), fill=3)
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert f"sha256 of {WEIGHTS_FILE}" in error.message


def test_a_file_the_tags_do_not_know(deployer: Deployer) -> None:
    artefacts = Artefacts.valid()
    artefacts.seal()
    artefacts.files["README.md"] = b"# hello"
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert "extra ['README.md']" in error.message


def test_a_file_the_tags_name_but_the_listing_lacks(deployer: Deployer) -> None:
    artefacts = Artefacts.valid()
    artefacts.files["tokenizer.json"] = b"{}"
    artefacts.seal()
    del artefacts.files["tokenizer.json"]
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert "missing ['tokenizer.json']" in error.message


def test_a_version_without_sha256_tags(deployer: Deployer) -> None:
    artefacts = Artefacts.valid()
    artefacts.tags = {f"{TAG_PREFIX}bytes": "100"}
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert "no loradeploy.sha256" in error.message
    assert deployer.store.downloads == []


# -- size: a cap on every adapter, checked before anything is hashed or placed ------------------------


def test_a_recorded_size_above_the_cap_is_refused_before_the_download(deployer: Deployer) -> None:
    artefacts = Artefacts.valid()
    artefacts.sparse["adapter_model-00002.safetensors"] = 5 * GIB
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert "nothing was downloaded" in error.message
    assert "LORADEPLOY_MAX_ADAPTER_BYTES" in error.one_line()
    assert deployer.store.downloads == []


def test_a_size_tag_that_lies_is_caught_by_the_listing_before_the_download(deployer: Deployer) -> None:
    artefacts = Artefacts.valid()
    artefacts.sparse["shard.bin.safetensors"] = 5 * GIB  # default cap is 4 GiB
    artefacts.seal()
    assert artefacts.tags is not None
    artefacts.tags[f"{TAG_PREFIX}bytes"] = "1024"  # the tag says 1 KiB
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert "add up to" in error.message and str(DEFAULT_MAX_TOTAL_BYTES) in error.message
    assert deployer.store.downloads == []


def real_bytes(size: int) -> bytes:
    """Incompressible, non-sparse content: every byte costs disk space when written."""
    return hashlib.shake_256(b"loradeploy").digest(size)


def test_an_oversized_real_file_under_a_lying_tag_is_never_downloaded(deployer: Deployer) -> None:
    artefacts = Artefacts.valid()
    artefacts.files["adapter_model-00002.safetensors"] = real_bytes(256 << 10)
    artefacts.seal()
    assert artefacts.tags is not None
    artefacts.tags[f"{TAG_PREFIX}bytes"] = "1024"  # the tag says 1 KiB
    error = deployer.refuses(artefacts, InvalidAdapterError, max_adapter_bytes=64 << 10)
    assert "nothing was downloaded" in error.message
    assert "LORADEPLOY_MAX_ADAPTER_BYTES" in error.one_line()
    assert deployer.store.downloads == []


def test_a_version_without_a_size_record_is_refused_before_the_download(deployer: Deployer) -> None:
    artefacts = Artefacts.valid()
    tags = artefacts.seal()
    del tags[f"{TAG_PREFIX}bytes"]
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert "model 'aws-rag-qa' version 7 has no size record" in error.message
    assert "loradeploy register" in error.one_line()
    assert deployer.store.downloads == []


@pytest.mark.parametrize("recorded", ["1", "-5", "12 KiB", "١٢٣"])
def test_a_size_tag_that_disagrees_with_the_listing_is_refused(deployer: Deployer, recorded: str) -> None:
    artefacts = Artefacts.valid()
    tags = artefacts.seal()
    tags[f"{TAG_PREFIX}bytes"] = recorded
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert "nothing was downloaded" in error.message
    assert deployer.store.downloads == []


def test_a_listing_without_sizes_is_refused_before_the_download(deployer: Deployer) -> None:
    artefacts = Artefacts.valid()
    deployer.store.unsized = {WEIGHTS_FILE}
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert f"gives no size for ['{WEIGHTS_FILE}']" in error.message
    assert deployer.store.downloads == []


def test_a_store_serving_more_than_it_lists_is_stopped_at_that_file(deployer: Deployer) -> None:
    artefacts = Artefacts.valid()
    artefacts.seal()
    deployer.store.served_extra = {CONFIG_FILE: real_bytes(1 << 20)}  # the first file, sorted
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert "the download was stopped" in error.message
    assert deployer.store.downloads == [CONFIG_FILE]  # the weights were never fetched


@pytest.mark.parametrize(
    "code",
    [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES],
    ids=["ENOSPC", "EDQUOT", "EROFS", "EACCES"],
)
def test_a_disk_error_during_the_download_is_permanent_and_names_the_folder(
    deployer: Deployer, code: int
) -> None:
    deployer.store.write_error = OSError(code, os.strerror(code))
    error = deployer.refuses(Artefacts.valid(), PermanentError)
    assert error.exit_code == 3
    assert "cannot write to" in error.message and "MiB free" in error.message
    assert "MLflow" not in error.message


def test_a_lower_configured_cap_applies(deployer: Deployer) -> None:
    artefacts = Artefacts.valid()
    size = sum(len(d) for d in artefacts.files.values())
    deployer.refuses(artefacts, InvalidAdapterError, max_adapter_bytes=size - 1)
    deployer.server.adapters = {}
    deployer.run(Artefacts.valid(), max_adapter_bytes=size)  # exactly at the cap is fine


def test_an_absurd_size_tag_is_above_any_cap(deployer: Deployer) -> None:
    artefacts = Artefacts.valid()
    artefacts.seal()
    assert artefacts.tags is not None
    artefacts.tags[f"{TAG_PREFIX}bytes"] = "9" * 40
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert "nothing was downloaded" in error.message


# -- local folders: register, and folders already on the server's volume ---------------------------


class FakeRegistryThatMustNotBeCalled:
    """FAKE registry for ``register``: validation must fail before any call."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the registry was called ({name}) for a hostile folder")


def _write(folder: Path, artefacts: Artefacts) -> Path:
    folder.mkdir(parents=True)
    for name, data in artefacts.files.items():
        (folder / name).write_bytes(data)
    return folder


def _link_out(folder: Path, outside: Path) -> None:
    (outside / "weights.safetensors").write_bytes((folder / WEIGHTS_FILE).read_bytes())
    (folder / WEIGHTS_FILE).unlink()
    (folder / WEIGHTS_FILE).symlink_to(outside / "weights.safetensors")


def _link_secret(folder: Path, outside: Path) -> None:
    (outside / "id_rsa").write_text("PRIVATE KEY")
    (folder / "README.md").symlink_to(outside / "id_rsa")


def _link_folder(folder: Path, outside: Path) -> None:
    (folder / "checkpoint").symlink_to(outside, target_is_directory=True)


def _dangling(folder: Path, outside: Path) -> None:
    (folder / "README.md").symlink_to(outside / "does-not-exist")


def _sparse(folder: Path, outside: Path) -> None:
    with (folder / "adapter_model-00002.safetensors").open("wb") as handle:
        handle.truncate(DEFAULT_MAX_TOTAL_BYTES + 1)


def _fifo(folder: Path, outside: Path) -> None:
    os.mkfifo(folder / "README.md")  # reading it would block forever


def _backslash_file(folder: Path, outside: Path) -> None:
    (folder / "..\\..\\escape.txt").write_text("x")


def _newline_file(folder: Path, outside: Path) -> None:
    (folder / "a\nb").write_text("x")


FOLDER_CASES: list[tuple[str, Callable[[Path, Path], None]]] = [
    ("weights-symlink-outside", _link_out),
    ("extra-symlink-to-a-secret", _link_secret),
    ("symlink-to-a-folder", _link_folder),
    ("dangling-symlink", _dangling),
    ("sparse-file-over-the-cap", _sparse),
    ("named-pipe", _fifo),
    ("backslash-file-name", _backslash_file),
    ("newline-file-name", _newline_file),
]


@pytest.mark.parametrize("make", [c[1] for c in FOLDER_CASES], ids=[c[0] for c in FOLDER_CASES])
def test_register_refuses_a_hostile_folder_before_calling_the_registry(
    tmp_path: Path, make: Callable[[Path, Path], None]
) -> None:
    folder = _write(tmp_path / "adapter", Artefacts.valid())
    outside = tmp_path / "outside"
    outside.mkdir()
    make(folder, outside)
    before = tree(tmp_path)
    with pytest.raises(InvalidAdapterError) as caught:
        register(
            FakeRegistryThatMustNotBeCalled(),  # type: ignore[arg-type]
            model=MODEL,
            adapter_dir=folder,
            alias="candidate",
            actor=Actor(who="test", step="register", run_id="r1"),
        )
    assert tree(tmp_path) == before
    assert "PRIVATE KEY" not in caught.value.one_line()


def test_register_refuses_a_symlinked_adapter_folder(tmp_path: Path) -> None:
    real = _write(tmp_path / "real", Artefacts.valid())
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    with pytest.raises(InvalidAdapterError):
        register(
            FakeRegistryThatMustNotBeCalled(),  # type: ignore[arg-type]
            model=MODEL,
            adapter_dir=tmp_path / "link",
            alias=None,
            actor=Actor(who="test", step="register", run_id="r1"),
        )


@pytest.mark.parametrize(
    ("label", "make"), [FOLDER_CASES[0], FOLDER_CASES[2]], ids=["link-file", "link-folder"]
)
def test_an_existing_version_folder_with_links_is_not_reused(
    tmp_path: Path, label: str, make: Callable[[Path, Path], None]
) -> None:
    # Someone with write access to the volume replaced a file of an existing version
    # folder with a link (same bytes, so the sha256 still matches through the link).
    transport = LocalFolderTransport(tmp_path / "adapters")
    dest = version_dir(transport.root, SLOT, MODEL, "7")
    artefacts = Artefacts.valid()
    digests = {name: sha(data) for name, data in artefacts.files.items()}
    outside = tmp_path / "outside"
    outside.mkdir()
    make(_write(Path(dest), artefacts), outside)
    before = tree(tmp_path)
    with transport.staging() as scratch:
        _write(scratch, artefacts)
        with pytest.raises(InvalidAdapterError) as caught:
            transport.place(scratch, dest, digests)
    assert "not regular files" in caught.value.message
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "where",
    ["../outside/m-v1", f"{SLOT}/../../outside/m-v1", "/etc/loradeploy-m-v1"],
    ids=["up", "up-twice", "absolute"],
)
def test_a_placement_outside_the_adapters_folder_is_a_usage_error(tmp_path: Path, where: str) -> None:
    transport = LocalFolderTransport(tmp_path / "adapters")
    (tmp_path / "outside").mkdir()
    artefacts = Artefacts.valid()
    digests = {name: sha(data) for name, data in artefacts.files.items()}
    target = where if where.startswith("/") else f"{transport.root}/{where}"
    before = tree(tmp_path)
    with transport.staging() as scratch:
        _write(scratch, artefacts)
        with pytest.raises(UsageError):
            transport.place(scratch, target, digests)
    after = tree(tmp_path)
    after.pop("adapters", None)
    before.pop("adapters", None)
    assert after == before
    assert not Path("/etc/loradeploy-m-v1").exists()


def test_the_cap_is_configured_from_the_environment(tmp_path: Path) -> None:
    from loradeploy.settings import Settings, load_settings

    assert Settings().max_adapter_bytes == DEFAULT_MAX_TOTAL_BYTES
    assert load_settings({}, {}, tmp_path).max_adapter_bytes == DEFAULT_MAX_TOTAL_BYTES
    configured = load_settings({}, {"LORADEPLOY_MAX_ADAPTER_BYTES": "1048576"}, tmp_path)
    assert configured.max_adapter_bytes == 1 << 20

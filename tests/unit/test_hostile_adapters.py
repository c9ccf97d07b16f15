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
from loradeploy.coordination import Actor
from loradeploy.domain.adapter import (
    CONFIG_FILE,
    DEFAULT_MAX_TOTAL_BYTES,
    SHA_TAG_PREFIX,
    TAG_PREFIX,
    WEIGHTS_FILE,
    inspect_adapter,
)
from loradeploy.domain.layout import version_dir
from loradeploy.domain.policy import AdapterPolicy
from loradeploy.domain.swap import SwapStrategy
from loradeploy.errors import (
    IncompatibleAdapterError,
    InvalidAdapterError,
    LoraDeployError,
    PermanentError,
    UsageError,
)
from loradeploy.results import StepResult
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
            policy=AdapterPolicy(max_lora_rank=SERVER_MAX_RANK, max_adapter_bytes=max_adapter_bytes),
            result=result,
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


def test_a_deploy_hashes_each_downloaded_file_once_and_the_placed_copy_once(
    deployer: Deployer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loradeploy.domain import adapter

    hashed: list[Path] = []
    real = adapter.sha256_file

    def counting(path: Path, chunk: int = 1 << 20) -> str:
        hashed.append(Path(path))
        return real(path, chunk)

    monkeypatch.setattr(adapter, "sha256_file", counting)
    deployer.run(Artefacts.valid())
    root = Path(version_dir(str(deployer.around.adapters), SLOT, MODEL, "7"))
    placed = sorted(p.name for p in hashed if p.parent == root)
    staged = sorted(p.name for p in hashed if p.parent != root)
    assert placed == [CONFIG_FILE, WEIGHTS_FILE]  # what vLLM reads is verified
    assert staged == [CONFIG_FILE, WEIGHTS_FILE]  # validation: one pass, compared with the tags once


# -- hostile file names ----------------------------------------------------------------------------

# (name, what the listing-only case must be refused for). In the tags, every one of them
# is refused as "not a plain file name" before anything is downloaded.
NOT_PLAIN = "is not a plain file name"
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
    # Refused from the listing, before any byte is downloaded (no MLflow download runs).
    assert f"the artifact listing: file name {name!r} {NOT_PLAIN}" in error.message


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_a_hostile_name_in_the_sha256_tags_is_refused_before_the_download(
    deployer: Deployer, name: str
) -> None:
    artefacts = Artefacts.valid()
    artefacts.files[name] = b"owned"
    artefacts.seal()  # listing and tags agree: both name the hostile file
    error = deployer.refuses(artefacts, InvalidAdapterError)
    assert f"the sha256 tags: file name {name!r} {NOT_PLAIN}" in error.message
    assert deployer.store.downloads == []


# -- hostile contents (names are fine, tags match the files) --------------------------------------


def _weights(header: Any, data: bytes = b"", *, raw: bytes | None = None) -> Callable[[Artefacts], None]:
    def build(a: Artefacts) -> None:
        body = raw if raw is not None else json.dumps(header).encode()
        a.files[WEIGHTS_FILE] = struct.pack("<Q", len(body)) + body + data

    return build


def _f32(shape: Any, start: Any, end: Any) -> dict[str, Any]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [start, end]}


A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
EMBED = "base_model.model.model.embed_tokens.weight"


def _pair(data: int = 8192, **changes: Any) -> Callable[[Artefacts], None]:
    """A well-formed rank-16 pair (lora_A [16, 64], lora_B [64, 16], 8 KiB of data) with
    entries replaced or added: ``a=``, ``b=``, ``embed=``, ``metadata=``. Each case changes
    one thing, so only the check it names can refuse it."""
    header: dict[str, Any] = {A: _f32([16, 64], 0, 4096), B: _f32([64, 16], 4096, 8192)}
    keys = {"a": A, "b": B, "embed": EMBED, "metadata": "__metadata__"}
    header.update({keys[key]: value for key, value in changes.items()})
    return _weights(header, b"\0" * data)


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


def _duplicate_tensor(a: Artefacts) -> None:
    # json.loads keeps the last of two equal keys; another reader may keep the first.
    a_entry, b_entry = json.dumps(_f32([16, 64], 0, 4096)), json.dumps(_f32([64, 16], 4096, 8192))
    raw = f'{{"{A}": {a_entry}, "{B}": {b_entry}, "{A}": {json.dumps(_f32([16, 64], 4096, 8192))}}}'
    _weights(None, b"\0" * 8192, raw=raw.encode())(a)


def _long_number_in_header(a: Artefacts) -> None:
    raw = json.dumps({A: _f32([16, 64], 0, 4096), B: _f32([64, 16], 4096, 8192)})
    _weights(None, b"\0" * 8192, raw=raw.replace("[64, 16]", "[" + "6" * 5000 + ", 16]").encode())(a)


INVALID, INCOMPATIBLE = InvalidAdapterError, IncompatibleAdapterError
NOT_AN_INTEGER = "has a dimension that is not an integer"
NEGATIVE = "has a negative dimension"
OFFSETS_NOT_INTEGERS = "are not integers"

# (id, how the version is made hostile, the error it must end in, the message fragment
# that says why: the reason the id names, so a case refused by another check fails)
CONTENT_CASES: list[tuple[str, Callable[[Artefacts], None], type[LoraDeployError], str]] = [
    # adapter_config.json
    ("config-missing", _remove(CONFIG_FILE), INVALID, f"{CONFIG_FILE} missing"),
    ("config-not-json", _set(CONFIG_FILE, b"{peft_type: LORA"), INVALID, "is not valid JSON"),
    ("config-empty", _set(CONFIG_FILE, b""), INVALID, "is not valid JSON"),
    ("config-not-utf8", _set(CONFIG_FILE, b'{"peft_type": "\xff\xfe"}'), INVALID, "is not valid JSON"),
    ("config-json-list", _set(CONFIG_FILE, b'[{"peft_type": "LORA"}]'), INVALID, "must hold a JSON object"),
    ("config-json-string", _set(CONFIG_FILE, b'"LORA"'), INVALID, "must hold a JSON object"),
    (
        "config-over-1mib",
        _set(CONFIG_FILE, b'{"pad": "' + b"x" * (1 << 20) + b'"}'),
        INVALID,
        "above 1048576",
    ),
    ("config-nesting-bomb", _set(CONFIG_FILE, b"[" * 200_000 + b"]" * 200_000), INVALID, "nested too deeply"),
    (
        "config-number-of-5000-digits",
        _set(CONFIG_FILE, b'{"peft_type": "LORA", "r": ' + b"1" * 5000 + b"}"),
        INVALID,
        "holds a number too long to read",
    ),
    (
        "config-key-twice",
        _set(CONFIG_FILE, b'{"peft_type": "LORA", "r": 16, "r": 8}'),
        INVALID,
        "names 'r' twice",
    ),
    ("missing-r", _drop("r"), INVALID, "r is None, expected an integer"),
    ("missing-base", _drop("base_model_name_or_path"), INVALID, "base_model_name_or_path is None"),
    ("missing-target-modules", _drop("target_modules"), INVALID, "target_modules is None"),
    ("missing-peft-type", _drop("peft_type"), INVALID, "peft_type is None, expected 'LORA'"),
    ("r-string", _config(r="16"), INVALID, "r is '16', expected an integer"),
    ("r-float", _config(r=16.0), INVALID, "r is 16.0, expected an integer"),
    ("r-bool", _config(r=True), INVALID, "r is True, expected an integer"),
    ("r-zero", _config(r=0), INVALID, "r is 0, expected an integer from 1"),
    ("r-negative", _config(r=-16), INVALID, "r is -16, expected an integer from 1"),
    ("r-absurd", _config(r=10**30), INVALID, f"r is {10**30}, expected an integer from 1 to 4096"),
    ("r-list", _config(r=[16]), INVALID, "r is [16], expected an integer"),
    ("rank-pattern", _config(rank_pattern={"q_proj": 8}), INVALID, "rank_pattern is {'q_proj': 8}, expected"),
    ("alpha-string", _config(lora_alpha="32"), INVALID, "lora_alpha is '32', expected a finite number"),
    (
        "alpha-nan",
        _set(CONFIG_FILE, json.dumps(adapter_config(lora_alpha=float("nan"))).encode()),
        INVALID,
        "lora_alpha is nan, expected a finite number",
    ),
    (
        "alpha-infinity",
        _set(CONFIG_FILE, json.dumps(adapter_config(lora_alpha=float("inf"))).encode()),
        INVALID,
        "lora_alpha is inf, expected a finite number",
    ),
    ("target-modules-int", _config(target_modules=5), INVALID, "target_modules is 5"),
    ("target-modules-empty", _config(target_modules=[]), INVALID, "target_modules is []"),
    ("base-not-a-string", _config(base_model_name_or_path=42), INVALID, "base_model_name_or_path is 42"),
    ("peft-type-prefix", _config(peft_type="PREFIX_TUNING"), INVALID, "peft_type is 'PREFIX_TUNING'"),
    ("dora", _config(use_dora=True), INVALID, "use_dora is true"),
    ("bias-all", _config(bias="all"), INVALID, "bias is 'all', expected 'none'"),
    ("modules-to-save", _config(modules_to_save=["lm_head"]), INVALID, "modules_to_save is set"),
    # adapter_model.safetensors: the file and its header
    ("weights-missing", _remove(WEIGHTS_FILE), INVALID, f"{WEIGHTS_FILE} is missing"),
    (
        "weights-shorter-than-prefix",
        _set(WEIGHTS_FILE, b"\x01\x02"),
        INVALID,
        "shorter than a safetensors header",
    ),
    (
        "header-length-beyond-file",
        _set(WEIGHTS_FILE, struct.pack("<Q", 1 << 40) + b"{}"),
        INVALID,
        f"header claims {1 << 40} bytes",
    ),
    (
        "header-length-max-u64",
        _set(WEIGHTS_FILE, b"\xff" * 8 + b"{}"),
        INVALID,
        f"header claims {2**64 - 1} bytes",
    ),
    ("header-not-json", _weights(None, raw=b"{not json}"), INVALID, "header is not valid JSON"),
    (
        "header-not-utf8",
        _weights(None, raw=b'{"\xff\xfe": 1}'),
        INVALID,
        "header is not valid JSON (not UTF-8)",
    ),
    ("header-utf16", _utf16_header, INVALID, "header is not valid JSON (Expecting"),
    ("header-json-list", _weights([1, 2, 3]), INVALID, "header must be a JSON object"),
    ("header-nesting-bomb", _json_bomb, INVALID, "header is nested too deeply"),
    (
        "header-number-of-5000-digits",
        _long_number_in_header,
        INVALID,
        "header holds a number too long to read",
    ),
    ("header-tensor-twice", _duplicate_tensor, INVALID, f"header names {A!r} twice"),
    # ... a tensor's entry
    ("tensor-entry-a-list", _pair(a=["F32", [16, 64], [0, 4096]]), INVALID, "entry is not an object"),
    (
        "tensor-entry-without-shape",
        _pair(a={"dtype": "F32", "data_offsets": [0, 4096]}),
        INVALID,
        "has no shape",
    ),
    ("dtype-unknown", _pair(a={**_f32([16, 64], 0, 4096), "dtype": "F4X"}), INVALID, "dtype 'F4X' is not"),
    # ... its shape: a list of non-negative, non-boolean integers
    ("shape-negative", _weights({A: _f32([-16, -4], 0, 256)}, b"\0" * 256), INVALID, NEGATIVE),
    ("shape-negative-lora-b", _pair(b=_f32([-64, -16], 4096, 8192)), INVALID, NEGATIVE),
    ("shape-negative-other-tensor", _pair(8448, embed=_f32([-16, -4], 8192, 8448)), INVALID, NEGATIVE),
    ("shape-float", _pair(a=_f32([16.9, 64.9], 0, 4096)), INVALID, NOT_AN_INTEGER),
    ("shape-float-whole", _pair(a=_f32([16.0, 64.0], 0, 4096)), INVALID, NOT_AN_INTEGER),
    ("shape-string-digits", _pair(a=_f32(["16", "64"], 0, 4096)), INVALID, NOT_AN_INTEGER),
    (
        "shape-arabic-indic-digits",
        _pair(a=_f32(["\u0661\u0666", "\u0666\u0664"], 0, 4096)),
        INVALID,
        NOT_AN_INTEGER,
    ),
    (
        "shape-bool",
        _pair(4160, a=_f32([16, True], 0, 64), b=_f32([64, 16], 64, 4160)),
        INVALID,
        NOT_AN_INTEGER,
    ),
    ("shape-nested-list", _pair(a=_f32([[16], 64], 0, 4096)), INVALID, NOT_AN_INTEGER),
    ("shape-a-string", _pair(4192, b=_f32("164", 4096, 4192)), INVALID, "shape '164' is not a list"),
    # ... its data_offsets: two non-boolean integers, begin <= end, inside the data section
    ("offsets-bool", _pair(a=_f32([16, 64], False, 4096)), INVALID, OFFSETS_NOT_INTEGERS),
    ("offsets-not-integers", _pair(a=_f32([16, 64], "0", "4096")), INVALID, OFFSETS_NOT_INTEGERS),
    ("offsets-float", _pair(a=_f32([16, 64], 0.0, 4096.0)), INVALID, OFFSETS_NOT_INTEGERS),
    (
        "offsets-three-numbers",
        _pair(a={**_f32([16, 64], 0, 4096), "data_offsets": [0, 4096, 8192]}),
        INVALID,
        "is not a pair [begin, end]",
    ),
    ("offsets-negative", _pair(a=_f32([16, 64], -4096, 0)), INVALID, "data_offsets [-4096, 0] are negative"),
    ("offsets-end-before-begin", _pair(a=_f32([16, 64], 4096, 0)), INVALID, "end before they begin"),
    (
        "offsets-beyond-file",
        _pair(b=_f32([64, 16], 4096, 1 << 40)),
        INVALID,
        "beyond the 8192 bytes of tensor data",
    ),
    (
        "shape-not-matching-bytes",
        _pair(a=_f32([16, 128], 0, 4096)),
        INVALID,
        "needs 8192 bytes (F32 [16, 128])",
    ),
    (
        "dtype-not-matching-bytes",
        _pair(a={**_f32([16, 64], 0, 4096), "dtype": "F64"}),
        INVALID,
        "needs 8192 bytes (F64 [16, 64])",
    ),
    # ... the data section as a whole
    ("tensors-overlap", _pair(a=_f32([16, 64], 0, 4096), b=_f32([64, 16], 2048, 6144)), INVALID, "overlaps"),
    (
        "tensors-leave-a-gap",
        _pair(12288, b=_f32([64, 16], 8192, 12288)),
        INVALID,
        "belong to no tensor (a gap",
    ),
    ("trailing-bytes", _pair(8200), INVALID, "8 bytes after the last tensor"),
    # ... __metadata__: a map of strings to strings
    (
        "metadata-nested",
        _pair(metadata={"a": {"b": [1, 2]}}),
        INVALID,
        "__metadata__ value for 'a' is {'b': [1, 2]}",
    ),
    ("metadata-number-value", _pair(metadata={"format": 1}), INVALID, "__metadata__ value for 'format' is 1"),
    ("metadata-a-list", _pair(metadata=["pt"]), INVALID, "__metadata__ is ['pt'], expected"),
    # ... the LoRA tensors: two-dimensional, lora_A [r, in_features], lora_B [out_features, r]
    (
        "rank-in-weights-not-r",
        _pair(a=_f32([8, 128], 0, 4096), b=_f32([128, 8], 4096, 8192)),
        INVALID,
        "8 on its rank axis, config r=16",
    ),
    ("lora-b-rank-not-r", _pair(b=_f32([1024, 1], 4096, 8192)), INVALID, "1 on its rank axis, config r=16"),
    ("lora-b-transposed", _pair(b=_f32([16, 64], 4096, 8192)), INVALID, "64 on its rank axis, config r=16"),
    ("lora-a-three-dimensional", _pair(a=_f32([16, 8, 8], 0, 4096)), INVALID, "is 3-dimensional"),
    ("lora-b-one-dimensional", _pair(b=_f32([1024], 4096, 8192)), INVALID, "is 1-dimensional"),
    (
        "lora-a-empty",
        _pair(4096, a=_f32([16, 0], 0, 0), b=_f32([64, 16], 0, 4096)),
        INVALID,
        "has an empty axis",
    ),
    (
        "lora-a-without-lora-b",
        _weights({A: _f32([16, 64], 0, 4096)}, b"\0" * 4096),
        INVALID,
        "has no matching lora_B",
    ),
    (
        "lora-b-without-lora-a",
        _weights(
            {B.replace("q_proj", "k_proj"): _f32([64, 16], 0, 4096), B: _f32([64, 16], 4096, 8192)},
            b"\0" * 8192,
        ),
        INVALID,
        "has no matching lora_A",
    ),
    (
        "no-lora-tensors",
        _weights({EMBED: _f32([16, 4], 0, 256)}, b"\0" * 256),
        INVALID,
        "holds no lora_A/lora_B",
    ),
    # pickle weights
    (
        "pickle-bin-alone",
        lambda a: (a.files.pop(WEIGHTS_FILE), a.files.__setitem__("adapter_model.bin", b"\x80\x04\x95evil")),
        INVALID,
        "adapter_model.bin is a pickle file",
    ),
    (
        "pickle-bin-beside",
        _set("adapter_model.bin", b"\x80\x04cos\nsystem\n"),
        INVALID,
        "adapter_model.bin is a pickle",
    ),
    (
        "pickle-pt-beside",
        _set("adapter_model.pt", b"\x80\x04\x95evil"),
        INVALID,
        "adapter_model.pt is a pickle",
    ),
    # does not fit the served server
    (
        "other-base-model",
        _config(base_model_name_or_path="mistralai/Mistral-7B-v0.1"),
        INCOMPATIBLE,
        "base_model_name_or_path is 'mistralai/Mistral-7B-v0.1', expected the served base",
    ),
    (
        "base-model-path-traversal",
        _config(base_model_name_or_path="../../models/smollm2-135m-instruct"),
        INCOMPATIBLE,
        "base_model_name_or_path is '../../models/smollm2-135m-instruct', expected the served base",
    ),
    (
        "rank-above-server-limit",
        lambda a: a.files.update(Artefacts.valid(rank=32).files),
        INCOMPATIBLE,
        "r is 32, expected at most the server's --max-lora-rank 16",
    ),
]


@pytest.mark.parametrize(
    ("build", "error", "reason"), [c[1:] for c in CONTENT_CASES], ids=[c[0] for c in CONTENT_CASES]
)
def test_hostile_contents_are_refused_before_the_server_sees_them(
    deployer: Deployer, build: Callable[[Artefacts], None], error: type[LoraDeployError], reason: str
) -> None:
    artefacts = Artefacts.valid()
    build(artefacts)
    refused = deployer.refuses(artefacts, error)
    assert reason in refused.message


def test_every_content_case_has_its_own_id() -> None:
    ids = [case[0] for case in CONTENT_CASES]
    assert len(ids) == len(set(ids))


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
    error = deployer.refuses(artefacts, InvalidAdapterError, max_adapter_bytes=size - 1)
    assert f"is {size} bytes by its loradeploy.bytes tag, above the {size - 1}-byte limit" in error.message
    assert "nothing was downloaded" in error.message
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


NOT_REGULAR = "is not a regular file (links and sub-folders refused)"
# (id, how the folder is made hostile, the message fragment that says why)
FOLDER_CASES: list[tuple[str, Callable[[Path, Path], None], str]] = [
    ("weights-symlink-outside", _link_out, f"{WEIGHTS_FILE} {NOT_REGULAR}"),
    ("extra-symlink-to-a-secret", _link_secret, f"README.md {NOT_REGULAR}"),
    ("symlink-to-a-folder", _link_folder, f"checkpoint {NOT_REGULAR}"),
    ("dangling-symlink", _dangling, f"README.md {NOT_REGULAR}"),
    ("sparse-file-over-the-cap", _sparse, f"above the {DEFAULT_MAX_TOTAL_BYTES} limit"),
    ("named-pipe", _fifo, f"README.md {NOT_REGULAR}"),
    ("backslash-file-name", _backslash_file, "file name '..\\\\..\\\\escape.txt' is not a plain file name"),
    ("newline-file-name", _newline_file, "file name 'a\\nb' is not a plain file name"),
]


@pytest.mark.parametrize(("make", "reason"), [c[1:] for c in FOLDER_CASES], ids=[c[0] for c in FOLDER_CASES])
def test_register_refuses_a_hostile_folder_before_calling_the_registry(
    tmp_path: Path, make: Callable[[Path, Path], None], reason: str
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
    assert reason in caught.value.message
    assert "PRIVATE KEY" not in caught.value.one_line()


def test_register_refuses_a_symlinked_adapter_folder(tmp_path: Path) -> None:
    real = _write(tmp_path / "real", Artefacts.valid())
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    with pytest.raises(InvalidAdapterError) as caught:
        register(
            FakeRegistryThatMustNotBeCalled(),  # type: ignore[arg-type]
            model=MODEL,
            adapter_dir=tmp_path / "link",
            alias=None,
            actor=Actor(who="test", step="register", run_id="r1"),
        )
    assert f"adapter {tmp_path / 'link'}: not a folder" in caught.value.message


@pytest.mark.parametrize("make", [FOLDER_CASES[0][1], FOLDER_CASES[2][1]], ids=["link-file", "link-folder"])
def test_an_existing_version_folder_with_links_is_not_reused(
    tmp_path: Path, make: Callable[[Path, Path], None]
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
        with pytest.raises(UsageError) as caught:
            transport.place(scratch, target, digests)
    assert "is outside the adapters folder" in caught.value.message
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

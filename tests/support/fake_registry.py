"""An in-memory model registry for unit tests of steps that read it.

``FakeRegistry`` answers the ``MLflowHelper`` methods the reconcile step uses (aliases,
versions, downloads, model tags for the lock) from dicts and adapter folders on disk.
Alias writes are refused: a test that reaches them has found a step changing aliases.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from loradeploy.clients.registry import VersionInfo
from loradeploy.domain.adapter import inspect_adapter, registry_tags
from loradeploy.domain.listing import ListedFile
from loradeploy.domain.names import Source
from loradeploy.errors import NotFoundError, ServerUnavailableError
from support.fake_leases import FakeLeaseStore


@dataclass
class FakeRegistry:
    """One registered model: ``versions`` (version -> adapter folder), ``aliases``, tags.

    ``unavailable`` > 0: that many calls fail with ``ServerUnavailableError`` first.
    """

    model: str
    versions: dict[str, Path] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    model_tags: dict[str, str] = field(default_factory=dict)
    tracking_uri: str = "http://mlflow.test:5000"
    unavailable: int = 0
    downloads: list[str] = field(default_factory=list)
    leases: FakeLeaseStore = field(default_factory=FakeLeaseStore)

    def add_version(self, version: str, folder: Path) -> None:
        self.versions[version] = folder

    def _check(self, name: str) -> None:
        if self.unavailable > 0:
            self.unavailable -= 1
            raise ServerUnavailableError(f"MLflow at {self.tracking_uri} is unreachable (fake)")
        if name != self.model:
            raise NotFoundError(f"model {name!r}: not found in MLflow at {self.tracking_uri}")

    def get_aliases(self, name: str) -> dict[str, str]:
        self._check(name)
        return dict(self.aliases)

    def get_version(self, name: str, version: str, via: str | None = None) -> VersionInfo:
        self._check(name)
        if version not in self.versions:
            raise NotFoundError(f"model {name!r} version {version}: not found")
        tags = registry_tags(inspect_adapter(self.versions[version]))
        aliases = [alias for alias, v in self.aliases.items() if v == version]
        return VersionInfo(model=name, version=version, aliases=aliases, tags=tags, via=via or version)

    def resolve(self, name: str, source: Source) -> VersionInfo:
        if source.kind == "version":
            return self.get_version(name, source.value)
        self._check(name)
        if source.value not in self.aliases:
            raise NotFoundError(f"alias {source.value!r} of model {name!r}: not found")
        return self.get_version(name, self.aliases[source.value], via=str(source))

    def list_adapter_files(self, name: str, version: str) -> list[ListedFile]:
        self._check(name)
        folder = self.versions[version]
        return [ListedFile(p.name, p.stat().st_size) for p in sorted(folder.iterdir())]

    def download_adapter(
        self, name: str, version: str, output_dir: Path, *, files: Mapping[str, int], max_bytes: int
    ) -> Path:
        self._check(name)
        output_dir.mkdir(parents=True)
        for file_name in sorted(files):
            shutil.copyfile(self.versions[version] / file_name, output_dir / file_name)
        self.downloads.append(version)
        return output_dir

    def get_model_tags(self, name: str) -> dict[str, str]:
        self._check(name)
        return dict(self.model_tags)

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self._check(name)
        self.model_tags[key] = value

    def delete_model_tag(self, name: str, key: str) -> None:
        self._check(name)
        self.model_tags.pop(key, None)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        raise AssertionError(f"alias {alias!r} of {name!r} set to {version}: this step must not")

    def delete_alias(self, name: str, alias: str) -> None:
        raise AssertionError(f"alias {alias!r} of {name!r} deleted: this step must not")


@dataclass
class FakeAliasRegistry(FakeRegistry):
    """A ``FakeRegistry`` whose aliases move, with audit records kept in a list."""

    audit: list[dict[str, object]] = field(default_factory=list)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._check(name)
        self.aliases[alias] = version

    def delete_alias(self, name: str, alias: str) -> None:
        self._check(name)
        self.aliases.pop(alias, None)

    def record_action(self, **record: object) -> str:
        self.audit.append(record)
        return f"audit-{len(self.audit)}"

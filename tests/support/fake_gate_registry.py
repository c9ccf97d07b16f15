"""An in-memory registry for unit tests of the gates, the quality gate and training.

``FakeGateRegistry`` answers the ``MLflowHelper`` methods those steps use: aliases
(moves really happen, and are recorded as audit actions), model tags (the lock),
versions with their training run, run metrics, registration and training runs, and
files attached beside a version's (the recorded smoke probes) with their tags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from loradeploy.clients.registry import VersionInfo
from loradeploy.domain.adapter import inspect_adapter, registry_tags
from loradeploy.errors import NotFoundError, ServerUnavailableError
from support.fake_leases import FakeLeaseStore


@dataclass
class FakeGateRegistry:
    model: str
    aliases: dict[str, str] = field(default_factory=dict)
    model_tags: dict[str, str] = field(default_factory=dict)
    version_runs: dict[str, str | None] = field(default_factory=dict)  # version -> run id
    version_files: dict[str, dict[str, str]] = field(default_factory=dict)  # version -> sha256s
    version_tags: dict[str, dict[str, str]] = field(default_factory=dict)  # beyond the sha256s
    attached: dict[str, dict[str, str]] = field(default_factory=dict)  # version -> name -> text
    run_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    logged_runs: list[dict[str, object]] = field(default_factory=list)
    audit: list[dict[str, str]] = field(default_factory=list)
    unavailable: bool = False
    tracking_uri: str = "http://mlflow.test:5000"
    leases: FakeLeaseStore = field(default_factory=FakeLeaseStore)

    def _check(self, name: str) -> None:
        if self.unavailable:
            raise ServerUnavailableError(f"MLflow at {self.tracking_uri} is unreachable (fake)")
        if name != self.model:
            raise NotFoundError(f"model {name!r}: not found in MLflow at {self.tracking_uri}")

    # -- aliases and tags ----------------------------------------------------------------

    def get_aliases(self, name: str) -> dict[str, str]:
        self._check(name)
        return dict(self.aliases)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._check(name)
        self.aliases[alias] = version

    def delete_alias(self, name: str, alias: str) -> None:
        self._check(name)
        self.aliases.pop(alias, None)

    def get_model_tags(self, name: str) -> dict[str, str]:
        self._check(name)
        return dict(self.model_tags)

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self._check(name)
        self.model_tags[key] = value

    def delete_model_tag(self, name: str, key: str) -> None:
        self._check(name)
        self.model_tags.pop(key, None)

    def record_action(
        self, *, experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, str]
    ) -> str:
        self.audit.append({"experiment": experiment, "run_name": run_name, **tags, **params})
        return f"audit-{len(self.audit)}"

    # -- versions and runs ---------------------------------------------------------------

    def ping(self) -> None:
        self._check(self.model)

    def get_version(self, name: str, version: str, via: str | None = None) -> VersionInfo:
        self._check(name)
        if version not in self.version_runs:
            raise NotFoundError(f"model {name!r} version {version}: not found")
        aliases = [alias for alias, v in self.aliases.items() if v == version]
        return VersionInfo(
            model=name,
            version=version,
            aliases=aliases,
            tags=dict(self.version_tags.get(version, {})),
            via=via or f"version:{version}",
            run_id=self.version_runs[version],
        )

    def get_run_metrics(self, run_id: str) -> dict[str, float]:
        if run_id not in self.run_metrics:
            raise NotFoundError(f"run {run_id!r}: not found")
        return dict(self.run_metrics[run_id])

    def versions_of_run(self, name: str, run_id: str) -> list[str]:
        self._check(name)
        return sorted((v for v, run in self.version_runs.items() if run == run_id), key=int)

    def find_version_with_files(self, name: str, digests: Mapping[str, str]) -> str | None:
        matches = [int(v) for v, files in self.version_files.items() if files == dict(digests)]
        return str(max(matches)) if matches else None

    def register_adapter(
        self, name: str, adapter_dir: Path, *, version_tags: Mapping[str, str], run_id: str | None = None
    ) -> str:
        self._check(name)
        assert dict(version_tags) == registry_tags(inspect_adapter(adapter_dir))
        version = str(len(self.version_runs) + 1)
        self.version_runs[version] = run_id
        self.version_files[version] = inspect_adapter(adapter_dir).files
        return version

    def attach_file(
        self, name: str, version: str, file_name: str, text: str, tags: Mapping[str, str]
    ) -> None:
        self._check(name)
        self.attached.setdefault(version, {})[file_name] = text
        self.version_tags.setdefault(version, {}).update(tags)

    def read_version_file(self, name: str, version: str, file_name: str, *, max_bytes: int) -> bytes | None:
        self._check(name)
        text = self.attached.get(version, {}).get(file_name)
        return None if text is None else text.encode("utf-8")[: max_bytes + 1]

    def log_training_run(self, **run: object) -> str:
        run_id = f"run-{len(self.logged_runs) + 1}"
        self.logged_runs.append(run)
        metrics = run["metrics"]
        assert isinstance(metrics, dict)
        self.run_metrics[run_id] = dict(metrics)
        return run_id

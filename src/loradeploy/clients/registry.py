"""MLflow Model Registry client (``MLflowHelper`` of the specification).

``mlflow`` is imported lazily: it costs about 1.5 s of CPU, and ``--help`` and quick
commands must stay fast. MLflow's exceptions become the project's (``translate``).
An alias is resolved to a concrete version once; everything after goes by version.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from loradeploy.clients.disk import disk_error, is_disk_error, local_writes
from loradeploy.domain.adapter import check_file_names, digests_from_tags
from loradeploy.domain.listing import ListedFile
from loradeploy.domain.names import Source, alias_name, parse_source
from loradeploy.errors import (
    AuthenticationError,
    InvalidAdapterError,
    LoraDeployError,
    NotFoundError,
    PermanentError,
    ServerUnavailableError,
    UsageError,
    redact,
    short,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from loradeploy.clients.mlflow_leases import MlflowLeaseStore


class VersionInfo(BaseModel):
    """One registered model version, as far as deployment cares."""

    model: str
    version: str
    aliases: list[str]
    tags: dict[str, str]
    via: str  # how it was found: "alias:candidate" or "version:3"
    run_id: str | None = None  # the MLflow run that produced it (``loradeploy train``)

    @property
    def uri(self) -> str:
        return f"models:/{self.model}/{self.version}"

    def file_digests(self) -> dict[str, str]:
        """sha256 per file, from the tags ``loradeploy register`` wrote."""
        return digests_from_tags(self.tags)


# MLflow's message for a refusal without a JSON body ("failed with error code 401 != 200");
# a bare "401" in the text can be part of a port or a path.
_AUTH_REFUSED = re.compile(r"error code 40[13]\b")

# An adapter is a few files; a listing this long is hostile (or not an adapter).
MAX_LISTED_ENTRIES = 1000


class MLflowHelper:
    """Registry operations against one tracking server."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        request_timeout_s: int = 30,
        max_retries: int = 2,
        ca_bundle: Path | None = None,
        client: MlflowClient | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.where = f"MLflow at {redact(tracking_uri)}"  # for messages: never credentials
        # MLflow reads these from the environment at call time. The defaults retry a
        # dead server for minutes; ours give up quickly and report a transient error.
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
        os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(request_timeout_s)
        # MLflow prints "View run ... at: <url>" on stdout when a run ends; the audit
        # records and training runs would litter every command's output with it.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        if ca_bundle is not None:  # MLflow's requests session verifies against this CA bundle
            os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(ca_bundle)
        self._client = client
        self._leases: MlflowLeaseStore | None = None

    @property
    def leases(self) -> MlflowLeaseStore:
        """The deployment lock's store, in this same registry (``clients.mlflow_leases``)."""
        if self._leases is None:
            from loradeploy.clients.mlflow_leases import MlflowLeaseStore

            self._leases = MlflowLeaseStore(self)
        return self._leases

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            import mlflow
            from mlflow import MlflowClient

            # Downloads of models:/ URIs consult the global registry URI, not the client's.
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    @contextmanager
    def translate(self, what: str) -> Iterator[None]:
        """Turn MLflow and HTTP-library errors into the project's, with context."""
        from mlflow.exceptions import MlflowException, RestException

        where = self.where
        try:
            yield
        except LoraDeployError:
            raise
        except RestException as exc:
            code, status = exc.error_code, exc.get_http_status_code()
            text = short(exc.message)
            if status in (401, 403) or code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                raise AuthenticationError(f"{where} refused {what}: HTTP {status}") from exc
            if code == "RESOURCE_DOES_NOT_EXIST" or (
                code == "INVALID_PARAMETER_VALUE" and "not found" in text
            ):
                raise NotFoundError(
                    f"{what}: not found in {where} ({text})",
                    hint="check the model name and alias with 'loradeploy status', "
                    "or register a version first",
                ) from exc
            if code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST"):
                raise UsageError(f"{where} refused {what}: {text}") from exc
            if status >= 500 or code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR"):
                raise ServerUnavailableError(f"{where} failed {what}: HTTP {status}: {text}") from exc
            raise PermanentError(f"{where} refused {what}: {code}: {text}") from exc
        except MlflowException as exc:
            text = short(exc.message, 160)
            if exc.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or _AUTH_REFUSED.search(
                exc.message
            ):
                raise AuthenticationError(f"{where} refused {what}: {text}") from exc
            raise ServerUnavailableError(
                f"{where} is unreachable or failing during {what} ({text})",
                hint="start the tracking server (loradeploy stack up) or fix MLFLOW_TRACKING_URI, then retry",
            ) from exc
        except OSError as exc:  # requests' ConnectionError is an OSError
            if is_disk_error(exc):  # a local file, not the server (requests' errors carry no errno)
                # Without a file name: MLflow's own scratch files, in the temp folder.
                folder = Path(exc.filename).parent if exc.filename else Path(tempfile.gettempdir())
                raise disk_error(exc, folder, what) from exc
            raise ServerUnavailableError(
                f"{where} is unreachable during {what} ({type(exc).__name__})",
                hint="start the tracking server (loradeploy stack up) or fix MLFLOW_TRACKING_URI",
            ) from exc

    # -- reading -------------------------------------------------------------------------

    def get_aliases(self, name: str) -> dict[str, str]:
        """Alias -> version for one registered model."""
        with self.translate(f"model {name!r}"):
            model = self.client.get_registered_model(name)
        return {alias: str(version) for alias, version in (model.aliases or {}).items()}

    def get_version(self, name: str, version: str, via: str | None = None) -> VersionInfo:
        with self.translate(f"model {name!r} version {version}"):
            mv = self.client.get_model_version(name, version)
        return VersionInfo(
            model=name,
            version=str(mv.version),
            aliases=list(mv.aliases or []),
            tags=dict(mv.tags or {}),
            via=via or f"version:{version}",
            run_id=mv.run_id or None,
        )

    def resolve(self, name: str, source: Source) -> VersionInfo:
        """Resolve a source to one concrete version, once."""
        if source.kind == "version":
            return self.get_version(name, source.value)
        with self.translate(f"alias {source.value!r} of model {name!r}"):
            mv = self.client.get_model_version_by_alias(name, source.value)
        return self.get_version(name, str(mv.version), via=str(source))

    def parse_source(self, name: str, source: str) -> VersionInfo:
        """``alias:candidate`` or ``version:N`` -> the version it names now."""
        return self.resolve(name, parse_source(source))

    def _artifact_repo(self, uri: str) -> Any:
        """The artifact repository ``mlflow.artifacts.download_artifacts`` uses for ``uri``.

        For ``models:/NAME/VERSION`` (MLflow 3.17.2) that is ``ModelsArtifactRepository``: it
        asks the registry for the version's download URI (``get_model_version_download_uri``;
        for a version registered from a logged model, that model's artifact location) and
        wraps the repository of that URI. Listing and downloading through it see exactly
        the files a plain download would write.
        """
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        self.client  # noqa: B018 (sets the registry URI the models:/ repository consults)
        return get_artifact_repository(uri, tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def list_adapter_files(self, name: str, version: str) -> list[ListedFile]:
        """Every file of one version with its size, listed recursively; nothing is downloaded."""
        uri = f"models:/{name}/{version}"
        found: list[ListedFile] = []
        seen = 0
        with self.translate(f"listing of {uri}"):
            repo = self._artifact_repo(uri)
            folders: list[str | None] = [None]
            while folders:
                for info in repo.list_artifacts(folders.pop()):
                    seen += 1
                    if seen > MAX_LISTED_ENTRIES:
                        raise InvalidAdapterError(
                            f"model {name!r} version {version}: the artifact listing of {uri} has more "
                            f"than {MAX_LISTED_ENTRIES} entries; nothing was downloaded",
                            hint="an adapter is a few files; register it again from a clean folder",
                        )
                    if info.is_dir:
                        folders.append(info.path)
                    else:
                        size = info.file_size
                        found.append(ListedFile(str(info.path), None if size is None else int(size)))
        return found

    def download_adapter(
        self, name: str, version: str, output_dir: Path, *, files: Mapping[str, int], max_bytes: int
    ) -> Path:
        """Download exactly ``files`` (name -> listed size) of one version into ``output_dir``
        (which must not exist), one file after another.

        Stops at the first file whose written size is not its listed size, or as soon as
        the bytes written exceed ``max_bytes``: a store that serves more than it listed
        gets at most that one file onto the disk. Disk errors name the folder and its free
        space (``PermanentError``), not MLflow.
        """
        uri = f"models:/{name}/{version}"
        label = f"model {name!r} version {version}"
        check_file_names(files, f"{label}: the artifact listing")
        what = f"download of {uri}"
        with local_writes(output_dir, what):
            output_dir.mkdir(parents=True)
        written_total = 0
        with self.translate(what):
            repo = self._artifact_repo(uri)
            for file_name, listed in sorted(files.items()):
                local = output_dir / file_name
                with local_writes(output_dir, what):
                    # The per-file download every MLflow artifact repository implements;
                    # ``download_artifacts`` runs it for each listed file in a thread pool.
                    repo._download_file(file_name, str(local))
                    written = local.lstat().st_size if local.exists() else 0
                written_total += written
                if written != listed or written_total > max_bytes:
                    raise InvalidAdapterError(
                        f"{label}: {file_name} arrived with {written} bytes where the listing said "
                        f"{listed} ({written_total} bytes written, limit {max_bytes}); the download "
                        "was stopped",
                        hint="the artifact store serves other files than it lists; check it, or "
                        "register the adapter again",
                    )
        return output_dir

    # -- writing -------------------------------------------------------------------------

    def read_version_file(self, name: str, version: str, file_name: str, *, max_bytes: int) -> bytes | None:
        """One small file beside a version's files (its recorded probes), or None when the
        version has none; refused before downloading when the listing says it is larger
        than ``max_bytes``."""
        uri = f"models:/{name}/{version}"
        label = f"model {name!r} version {version}"
        with self.translate(f"read of {file_name} of {uri}"):
            repo = self._artifact_repo(uri)
            listed = {str(info.path): info.file_size for info in repo.list_artifacts(None) if not info.is_dir}
            if file_name not in listed:
                return None
            size = listed[file_name]
            if size is None or int(size) > max_bytes:
                raise InvalidAdapterError(
                    f"{label}: {file_name} is {size} bytes by the listing, above its {max_bytes}-byte "
                    "limit; nothing was downloaded",
                    hint="register the version's probes again",
                )
            with tempfile.TemporaryDirectory(prefix="loradeploy-read-") as scratch:
                local = Path(scratch) / file_name
                repo._download_file(file_name, str(local))
                with local.open("rb") as handle:
                    return handle.read(max_bytes + 1)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        alias_name(alias)
        with self.translate(f"set alias {alias!r} on model {name!r} version {version}"):
            self.client.set_registered_model_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias; removing a missing one is a no-op."""
        with self.translate(f"delete alias {alias!r} of model {name!r}"):
            self.client.delete_registered_model_alias(name, alias)

    def register_adapter(
        self,
        name: str,
        adapter_dir: Path,
        *,
        version_tags: Mapping[str, str],
        experiment: str = "loradeploy-adapters",
        run_id: str | None = None,
    ) -> str:
        """Register ``adapter_dir`` as a new version (MLflow 3 logged-model route).

        The version's artifacts are exactly the folder's files. With ``run_id`` the
        logged model and the version are linked to that (training) run.
        """
        import mlflow

        with self.translate(f"registration of {adapter_dir} as model {name!r}"):
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            logged = mlflow.initialize_logged_model(
                name=name,
                tags={"loradeploy.kind": "lora-adapter"},
                experiment_id=experiment_id,
                source_run_id=run_id,
            )
            try:
                self.client.log_model_artifacts(logged.model_id, str(adapter_dir))
            except Exception:
                self.client.finalize_logged_model(logged.model_id, "FAILED")
                raise
            self.client.finalize_logged_model(logged.model_id, "READY")
            if run_id is None:
                mv = mlflow.register_model(f"models:/{logged.model_id}", name, tags=dict(version_tags))
            else:  # register_model would drop the run id for a models:/ URI
                if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
                    self.client.create_registered_model(name)
                mv = self.client.create_model_version(
                    name,
                    source=f"models:/{logged.model_id}",
                    run_id=run_id,
                    tags=dict(version_tags),
                    model_id=logged.model_id,
                )
        return str(mv.version)

    def find_version_with_files(self, name: str, digests: Mapping[str, str]) -> str | None:
        """The newest version whose sha256 tags equal ``digests``, if any."""
        with self.translate(f"search of model {name!r}"):
            if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
                return None
            found = self.client.search_model_versions(filter_string=f"name = '{name}'")
        matches = [int(mv.version) for mv in found if digests_from_tags(mv.tags or {}) == dict(digests)]
        return str(max(matches)) if matches else None

    # -- registered-model tags: the pending alias plan -----------------------------------

    def get_model_tags(self, name: str) -> dict[str, str]:
        with self.translate(f"model {name!r}"):
            model = self.client.get_registered_model(name)
        return dict(model.tags or {})

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        with self.translate(f"set tag {key!r} on model {name!r}"):
            self.client.set_registered_model_tag(name, key, value)

    def delete_model_tag(self, name: str, key: str) -> None:
        from mlflow.exceptions import RestException

        with self.translate(f"delete tag {key!r} of model {name!r}"):
            try:
                self.client.delete_registered_model_tag(name, key)
            except RestException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # already gone is fine
                    raise

    # -- audit: one MLflow run per action, in a dedicated experiment -----------------------

    def record_action(
        self,
        *,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        params: Mapping[str, str],
    ) -> str:
        """Write one finished run holding an audit record; returns its run id."""
        with self.translate(f"audit record in experiment {experiment!r}"):
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run = self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
            for key, value in params.items():
                self.client.log_param(run.info.run_id, key, value[:6000])
            self.client.set_terminated(run.info.run_id, "FINISHED")
        return str(run.info.run_id)

    def search_actions(self, *, experiment: str, filter_string: str) -> list[dict[str, object]]:
        """Audit runs, oldest first: their tags, params and start time (ms)."""
        with self.translate(f"audit history in experiment {experiment!r}"):
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                return []
            runs = self.client.search_runs(
                [found.experiment_id],
                filter_string=filter_string,
                order_by=["attributes.start_time ASC"],
                max_results=5000,
            )
        return [
            {"start_time": r.info.start_time, "tags": dict(r.data.tags), "params": dict(r.data.params)}
            for r in runs
        ]

    def ping(self) -> None:
        """Fail fast with a transient error when the server is down."""
        with self.translate("a health check"):
            self.client.search_registered_models(max_results=1)

    # -- training runs: parameters, metrics, and the versions they produced ---------------

    def log_training_run(
        self,
        *,
        experiment: str,
        run_name: str,
        params: Mapping[str, str],
        metrics: Mapping[str, float],
        curves: Mapping[str, list[float]],
        tags: Mapping[str, str],
        texts: Mapping[str, str],
    ) -> str:
        """One finished run: params, final metrics, step metrics (a value per step,
        steps from 1) and text artifacts; returns its run id."""
        from mlflow.entities import Metric, Param

        with self.translate(f"training run in experiment {experiment!r}"):
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run = self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
            run_id = str(run.info.run_id)
            stamp = int(run.info.start_time)
            points = [Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
            for key, values in curves.items():
                points += [Metric(key, float(v), stamp, step) for step, v in enumerate(values, 1)]
            param_list = [Param(k, v[:6000]) for k, v in params.items()]
            for start in range(0, len(param_list), 100):  # MLflow's batch limits
                self.client.log_batch(run_id, params=param_list[start : start + 100])
            for start in range(0, len(points), 900):
                self.client.log_batch(run_id, metrics=points[start : start + 900])
            for artifact, text in texts.items():
                self.client.log_text(run_id, text, artifact)
            self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def get_run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of every metric of a run."""
        with self.translate(f"run {run_id!r}"):
            run = self.client.get_run(run_id)
        return {key: float(value) for key, value in run.data.metrics.items()}

    def get_run_params(self, run_id: str) -> dict[str, str]:
        """Every parameter of a run (the training data, steps, seed of ``loradeploy train``)."""
        with self.translate(f"run {run_id!r}"):
            run = self.client.get_run(run_id)
        return {key: str(value) for key, value in run.data.params.items()}

    def versions_of_run(self, name: str, run_id: str) -> list[str]:
        """Versions of model ``name`` registered from run ``run_id``, oldest first."""
        with self.translate(f"versions of model {name!r} from run {run_id!r}"):
            found = self.client.search_model_versions(
                filter_string=f"name = '{name}' and run_id = '{run_id}'"
            )
        return sorted((str(mv.version) for mv in found), key=int)

    # -- signatures and probes: one more artifact beside the version's files, and tags ------

    def attach_file(
        self, name: str, version: str, file_name: str, text: str, tags: Mapping[str, str]
    ) -> None:
        """Upload ``text`` as ``file_name`` into the version's artifact folder, then set
        ``tags`` on the version (last: the tags say the file is complete)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        with (
            self.translate(f"upload of {file_name} of model {name!r} version {version}"),
            tempfile.TemporaryDirectory(prefix="loradeploy-attach-") as scratch,
        ):
            local = Path(scratch) / file_name
            local.write_text(text, encoding="utf-8")
            uri = self.client.get_model_version_download_uri(name, version)
            get_artifact_repository(uri).log_artifact(str(local))
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, value)

    def attach_signature(self, name: str, version: str, signature: Path, tags: Mapping[str, str]) -> None:
        """Upload ``signature`` into the version's artifact folder, then set ``tags`` on the
        version (the tags come last: a version is signed only once they name the file)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        with self.translate(f"upload of the signature of model {name!r} version {version}"):
            uri = self.client.get_model_version_download_uri(name, version)
            get_artifact_repository(uri).log_artifact(str(signature))
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, value)

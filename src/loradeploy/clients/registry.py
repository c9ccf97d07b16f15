"""MLflow Model Registry client (``MLflowHelper`` of the specification).

``mlflow`` is imported lazily: it costs about 1.5 s of CPU, and ``--help`` and quick
commands must stay fast. MLflow's exceptions become the project's (``_translate``).
An alias is resolved to a concrete version once; everything after goes by version.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from loradeploy.domain.adapter import digests_from_tags
from loradeploy.domain.names import Source, alias_name, parse_source
from loradeploy.errors import (
    AuthenticationError,
    LoraDeployError,
    NotFoundError,
    PermanentError,
    ServerUnavailableError,
    UsageError,
    short,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


class VersionInfo(BaseModel):
    """One registered model version, as far as deployment cares."""

    model: str
    version: str
    aliases: list[str]
    tags: dict[str, str]
    via: str  # how it was found: "alias:candidate" or "version:3"

    @property
    def uri(self) -> str:
        return f"models:/{self.model}/{self.version}"

    def file_digests(self) -> dict[str, str]:
        """sha256 per file, from the tags ``loradeploy register`` wrote."""
        return digests_from_tags(self.tags)


class MLflowHelper:
    """Registry operations against one tracking server."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        request_timeout_s: int = 30,
        max_retries: int = 2,
        client: MlflowClient | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        # MLflow reads these from the environment at call time. The defaults retry a
        # dead server for minutes; ours give up quickly and report a transient error.
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
        os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(request_timeout_s)
        self._client = client

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
    def _translate(self, what: str) -> Iterator[None]:
        """Turn MLflow and HTTP-library errors into the project's, with context."""
        from mlflow.exceptions import MlflowException, RestException

        where = f"MLflow at {self.tracking_uri}"
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
            if "401" in text or "403" in text:
                raise AuthenticationError(f"{where} refused {what}: {text}") from exc
            raise ServerUnavailableError(
                f"{where} is unreachable or failing during {what} ({text})",
                hint="start the tracking server (loradeploy stack up) or fix MLFLOW_TRACKING_URI, then retry",
            ) from exc
        except OSError as exc:  # requests' ConnectionError is an OSError
            raise ServerUnavailableError(
                f"{where} is unreachable during {what} ({type(exc).__name__})",
                hint="start the tracking server (loradeploy stack up) or fix MLFLOW_TRACKING_URI",
            ) from exc

    # -- reading -------------------------------------------------------------------------

    def get_aliases(self, name: str) -> dict[str, str]:
        """Alias -> version for one registered model."""
        with self._translate(f"model {name!r}"):
            model = self.client.get_registered_model(name)
        return {alias: str(version) for alias, version in (model.aliases or {}).items()}

    def get_version(self, name: str, version: str, via: str | None = None) -> VersionInfo:
        with self._translate(f"model {name!r} version {version}"):
            mv = self.client.get_model_version(name, version)
        return VersionInfo(
            model=name,
            version=str(mv.version),
            aliases=list(mv.aliases or []),
            tags=dict(mv.tags or {}),
            via=via or f"version:{version}",
        )

    def resolve(self, name: str, source: Source) -> VersionInfo:
        """Resolve a source to one concrete version, once."""
        if source.kind == "version":
            return self.get_version(name, source.value)
        with self._translate(f"alias {source.value!r} of model {name!r}"):
            mv = self.client.get_model_version_by_alias(name, source.value)
        return self.get_version(name, str(mv.version), via=str(source))

    def parse_source(self, name: str, source: str) -> VersionInfo:
        """``alias:candidate`` or ``version:N`` -> the version it names now."""
        return self.resolve(name, parse_source(source))

    def download_adapter(self, name: str, version: str, output_dir: Path) -> Path:
        """Download one version's files into ``output_dir`` (which must not exist)."""
        from mlflow.artifacts import download_artifacts

        output_dir.mkdir(parents=True)
        uri = f"models:/{name}/{version}"
        with self._translate(f"download of {uri}"):
            self.client  # noqa: B018 (sets the registry URI the download consults)
            download_artifacts(
                artifact_uri=uri,
                dst_path=str(output_dir),
                tracking_uri=self.tracking_uri,
                registry_uri=self.tracking_uri,
            )
        return output_dir

    # -- writing -------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: str) -> None:
        alias_name(alias)
        with self._translate(f"set alias {alias!r} on model {name!r} version {version}"):
            self.client.set_registered_model_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias; removing a missing one is a no-op."""
        with self._translate(f"delete alias {alias!r} of model {name!r}"):
            self.client.delete_registered_model_alias(name, alias)

    def update_deployment_aliases(self, name: str, version: str) -> dict[str, str | None]:
        """Point ``live`` at ``version`` and the old live at ``previous``.

        Returns the moves made, alias -> new version (None = removed).
        """
        aliases = self.get_aliases(name)
        old_live = aliases.get("live")
        moves: dict[str, str | None] = {}
        if old_live == version:
            return moves
        if old_live is not None:
            self.set_alias(name, "previous", old_live)
            moves["previous"] = old_live
        self.set_alias(name, "live", version)
        moves["live"] = version
        return moves

    def register_adapter(
        self,
        name: str,
        adapter_dir: Path,
        *,
        version_tags: Mapping[str, str],
        experiment: str = "loradeploy-adapters",
    ) -> str:
        """Register ``adapter_dir`` as a new version (MLflow 3 logged-model route).

        The version's artifacts are exactly the folder's files.
        """
        import mlflow

        with self._translate(f"registration of {adapter_dir} as model {name!r}"):
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            logged = mlflow.initialize_logged_model(
                name=name, tags={"loradeploy.kind": "lora-adapter"}, experiment_id=experiment_id
            )
            try:
                self.client.log_model_artifacts(logged.model_id, str(adapter_dir))
            except Exception:
                self.client.finalize_logged_model(logged.model_id, "FAILED")
                raise
            self.client.finalize_logged_model(logged.model_id, "READY")
            mv = mlflow.register_model(f"models:/{logged.model_id}", name, tags=dict(version_tags))
        return str(mv.version)

    def find_version_with_files(self, name: str, digests: Mapping[str, str]) -> str | None:
        """The newest version whose sha256 tags equal ``digests``, if any."""
        with self._translate(f"search of model {name!r}"):
            if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
                return None
            found = self.client.search_model_versions(filter_string=f"name = '{name}'")
        matches = [int(mv.version) for mv in found if digests_from_tags(mv.tags or {}) == dict(digests)]
        return str(max(matches)) if matches else None

    # -- registered-model tags: the deployment lock and the pending alias plan ------------

    def get_model_tags(self, name: str) -> dict[str, str]:
        with self._translate(f"model {name!r}"):
            model = self.client.get_registered_model(name)
        return dict(model.tags or {})

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        with self._translate(f"set tag {key!r} on model {name!r}"):
            self.client.set_registered_model_tag(name, key, value)

    def delete_model_tag(self, name: str, key: str) -> None:
        from mlflow.exceptions import RestException

        with self._translate(f"delete tag {key!r} of model {name!r}"):
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
        with self._translate(f"audit record in experiment {experiment!r}"):
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run = self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
            for key, value in params.items():
                self.client.log_param(run.info.run_id, key, value[:6000])
            self.client.set_terminated(run.info.run_id, "FINISHED")
        return str(run.info.run_id)

    def search_actions(self, *, experiment: str, filter_string: str) -> list[dict[str, object]]:
        """Audit runs, oldest first: their tags, params and start time (ms)."""
        with self._translate(f"audit history in experiment {experiment!r}"):
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
        with self._translate("a health check"):
            self.client.search_registered_models(max_results=1)

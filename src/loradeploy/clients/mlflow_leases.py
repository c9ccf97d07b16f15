"""The lease store in the MLflow registry: one registered model per lease record.

MLflow has no compare-and-set on tags or aliases, but creating a registered model whose
name exists fails on the server (``RESOURCE_ALREADY_EXISTS``, a unique key in its
database): that create is the atomic step the lock is built on. Lease ``N`` of model
``M`` is the registered model ``loradeploy-lock.M.N`` (``N`` zero-padded), and its record
is that object's ``loradeploy.lease`` tag. At rest one such object per model remains (the
released highest); older ones are removed by the next taker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loradeploy.clients.registry import MLflowHelper

LOCK_PREFIX = "loradeploy-lock."
LEASE_TAG = "loradeploy.lease"
_DIGITS = 6


class MlflowLeaseStore:
    def __init__(self, registry: MLflowHelper) -> None:
        self._registry = registry
        self.where = registry.where

    def _name(self, model: str, number: int) -> str:
        return f"{LOCK_PREFIX}{model}.{number:0{_DIGITS}d}"

    def describe(self, model: str, number: int) -> str:
        return f"registered model {self._name(model, number)!r} in {self.where}"

    def create(self, model: str, number: int, record: str) -> bool:
        from mlflow.exceptions import RestException

        name = self._name(model, number)
        with self._registry.translate(f"create lock object {name!r}"):
            try:
                self._registry.client.create_registered_model(
                    name,
                    tags={LEASE_TAG: record},
                    description=f"loradeploy deployment lock of model {model!r}; do not edit",
                )
            except RestException as exc:
                if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                    return False
                raise
        return True

    def read(self, model: str) -> dict[int, str]:
        prefix = f"{LOCK_PREFIX}{model}."
        # LIKE treats '_' and '%' as wildcards: the listing may hold other names, which
        # the exact prefix and digit checks below drop.
        pattern = prefix.replace("'", "")
        found: dict[int, str] = {}
        with self._registry.translate(f"lock objects of model {model!r}"):
            token: str | None = None
            while True:
                page = self._registry.client.search_registered_models(
                    filter_string=f"name LIKE '{pattern}%'", max_results=100, page_token=token
                )
                for entry in page:
                    suffix = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
                    if len(suffix) == _DIGITS and suffix.isascii() and suffix.isdigit():
                        found[int(suffix)] = (entry.tags or {}).get(LEASE_TAG, "")
                token = page.token
                if not token:
                    break
        return found

    def write(self, model: str, number: int, record: str) -> None:
        name = self._name(model, number)
        with self._registry.translate(f"update lock object {name!r}"):
            self._registry.client.set_registered_model_tag(name, LEASE_TAG, record)

    def remove(self, model: str, number: int) -> None:
        from mlflow.exceptions import RestException

        name = self._name(model, number)
        with self._registry.translate(f"remove lock object {name!r}"):
            try:
                self._registry.client.delete_registered_model(name)
            except RestException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise

"""How ``MLflowHelper.translate`` classifies the MLflow client's exceptions: what the
caller does next depends on it (exit 2 for credentials, 75 for a server to retry)."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from loradeploy.clients.registry import MLflowHelper
from loradeploy.errors import AuthenticationError, ServerUnavailableError

UNREACHABLE = (
    "API request to http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/get failed with "
    "exception HTTPConnectionPool(host='127.0.0.1', port={port}): Max retries exceeded with url"
)


@pytest.mark.parametrize("port", [44035, 54013, 4031, 40100, 5000])
def test_a_port_with_401_or_403_in_it_is_not_a_credentials_error(port: int) -> None:
    helper = MLflowHelper(f"http://127.0.0.1:{port}")
    with pytest.raises(ServerUnavailableError), helper.translate("model 'm'"):
        raise MlflowException(UNREACHABLE.format(port=port))


@pytest.mark.parametrize(("status", "code"), [(401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED")])
def test_a_refusal_without_a_json_body_is_a_credentials_error(status: int, code: str) -> None:
    helper = MLflowHelper("http://127.0.0.1:44035")
    message = (
        f"API request to endpoint /api/2.0/mlflow/x failed with error code {status} != 200. Response body: ''"
    )
    with pytest.raises(AuthenticationError, match=str(status)), helper.translate("model 'm'"):
        raise MlflowException(message, error_code=code)

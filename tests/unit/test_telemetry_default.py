"""loradeploy turns MLflow's usage reporting off in its own processes unless the user set
``MLFLOW_DISABLE_TELEMETRY`` (cli.main; README, Configuration). MLflow then skips its
look-up of an outside host, which clusters without egress may answer only by timing out."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent(
    """
    import os, sys
    from loradeploy.cli import main
    sys.argv = ["loradeploy", "version"]
    try:
        main()
    except SystemExit:
        pass
    from mlflow.telemetry.utils import is_telemetry_disabled
    print(os.environ.get("MLFLOW_DISABLE_TELEMETRY"), is_telemetry_disabled())
    """
)

# MLflow also stays quiet under CI or pytest: without these, only loradeploy's default acts
QUIETING = ("CI", "PYTEST_CURRENT_TEST", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")


@pytest.mark.parametrize(("given", "expected"), [(None, "true True"), ("false", "false False")])
def test_mlflow_telemetry_is_off_unless_the_user_chose(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in QUIETING and not k.startswith("GITHUB")}
    if given is not None:
        env["MLFLOW_DISABLE_TELEMETRY"] = given
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == expected

"""errors.py: exit codes are the contract with Argo; messages are one line."""

from __future__ import annotations

import pytest

from loradeploy import errors
from loradeploy.errors import ExitCode, LoraDeployError, short


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.CheckFailedError, 1),
        (errors.UsageError, 2),
        (errors.AuthenticationError, 2),
        (errors.PermanentError, 3),
        (errors.NotFoundError, 3),
        (errors.InvalidAdapterError, 3),
        (errors.IncompatibleAdapterError, 3),
        (errors.AdapterRejectedError, 3),
        (errors.AdapterAlreadyLoadedError, 3),
        (errors.AliasMovedError, 3),
        (errors.TransientError, 75),
        (errors.ServerUnavailableError, 75),
        (errors.DeadlineExceededError, 75),
        (errors.LockHeldError, 75),
    ],
)
def test_exit_codes(error: type[LoraDeployError], code: int) -> None:
    assert error("x").exit_code == code
    assert issubclass(error, LoraDeployError)


def test_exit_code_values() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 75]


def test_one_line_is_a_single_line_with_the_hint() -> None:
    exc = errors.ServerUnavailableError("vLLM at http://h:8000\nis down\t(503)", hint="start it\n  again")
    line = exc.one_line()
    assert "\n" not in line
    assert "\t" not in line
    assert line == "vLLM at http://h:8000 is down (503); next: start it again"


def test_one_line_uses_the_class_default_hint() -> None:
    line = errors.InvalidAdapterError("adapter /x: r is 0").one_line()
    assert line.endswith("next: fix the adapter files and register a new version")


def test_the_message_is_the_exception_text() -> None:
    exc = errors.NotFoundError("model 'm' version 9 not found")
    assert str(exc) == exc.message == "model 'm' version 9 not found"


def test_short_flattens_and_cuts_remote_bodies() -> None:
    assert short("a\n  b") == "a b"
    cut = short("x" * 500, limit=50)
    assert len(cut) == 50
    assert cut.endswith("…")
    assert short("y" * 50, limit=50) == "y" * 50

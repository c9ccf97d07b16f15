"""Build a tiny, randomly initialised Llama model as a Hugging Face folder.

Runs inside the ML virtualenv. The model is for API-level tests only: its outputs are
noise, but deterministic at temperature 0, and LoRA weights visibly change them. It is
also "a model of another base" when checking that adapters for the wrong base are
refused.

- Tokenizer: a byte-level BPE (vocabulary 512) trained with ``tokenizers`` on a few
  built-in lines, with ChatML special tokens and a ChatML chat template.
- Model: ``LlamaConfig`` with hidden 128, 2 heads of head_dim 64 (vLLM's CPU attention
  rejects head_dim 16), 2 layers; float32 safetensors.
- Deterministic: a fixed seed, so two builds give identical files.

The output is written to a temporary folder beside ``--out`` and renamed at the end,
after a ``.complete`` marker (JSON) has been written into it. A folder that already
holds the marker is left alone.

Stdout carries one line of JSON (the summary); logs go to stderr. Exit status: 0 ok,
2 bad input, 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

DEFAULT_SERVED_NAME = "loradeploy/tiny-llama"
MARKER = ".complete"
SEED = 1234
VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TRAINING_TEXT = [
    "Amazon S3 stores data as objects inside buckets.",
    "AWS Lambda runs code without provisioning or managing servers.",
    "Amazon EC2 provides resizable virtual servers called instances.",
    "IAM policies are JSON documents that allow or deny actions on resources.",
    "DynamoDB is a serverless NoSQL key-value and document database.",
    "SQS is a managed message queue; SNS is a publish/subscribe service.",
    "CloudWatch collects metrics and logs; alarms watch a single metric.",
    "A VPC is an isolated virtual network divided into subnets.",
    "What is the answer? The answer is short and taken from the context.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } , . ; : ? !",
    "<|im_start|>system\nAnswer the question.<|im_end|>\n<|im_start|>user\nWhat?<|im_end|>\n"
    "<|im_start|>assistant\nThis.<|im_end|>\n",
]

log = logging.getLogger("build_tiny_llama")


class InputError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="build_tiny_llama.py",
        description="Build a tiny random Llama model (for fast API-level tests).",
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
    """Send everything written to fd 1 to stderr; yield a duplicate of the real stdout."""
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


def make_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(vocab_size: int, bos_id: int, eos_id: int) -> Any:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        initializer_range=0.02,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    return model


def weights_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


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
    out.parent.mkdir(parents=True, exist_ok=True)

    remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = make_tokenizer()
        bos_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
        eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        model = make_model(len(tokenizer), bos_id, eos_id)
        log.info("saving to %s", tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for path in tmp.iterdir():
            path.chmod(0o644)
        record: dict[str, Any] = {
            "kind": "tiny-llama",
            "served_name": served_name,
            "seed": SEED,
            "architecture": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "layers": model.config.num_hidden_layers,
            "hidden_size": model.config.hidden_size,
            "head_dim": model.config.head_dim,
            "vocab_size": model.config.vocab_size,
            "dtype": "float32",
            "weights_sha256": weights_digest(tmp),
        }
        (tmp / MARKER).write_text(json.dumps(record, sort_keys=True, indent=1) + "\n")
        try:
            os.rename(tmp, out)
        except OSError:
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
        sys.stderr.write("build_tiny_llama.py: error: --served-name must not be empty\n")
        return 2
    with stdout_to_stderr() as real_stdout:
        try:
            summary = build(args.out, args.served_name)
        except InputError as exc:
            sys.stderr.write(f"build_tiny_llama.py: error: {exc}\n")
            return 2
        except Exception as exc:
            log.exception("build failed")
            sys.stderr.write(f"build_tiny_llama.py: error: {type(exc).__name__}: {exc}\n")
            return 1
        emit(real_stdout, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

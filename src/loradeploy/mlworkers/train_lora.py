"""Fine-tune a PEFT LoRA adapter on the CPU for context question answering.

Runs inside the ML virtualenv (torch, transformers, peft). Imports nothing from
loradeploy.

Data: a JSON-lines file of objects with string fields ``context``, ``question`` and
``answer`` (other fields are ignored). Each example becomes a chat, rendered with the
base model's chat template::

    system:    "Answer briefly using this context: <context>"
    user:      "<question>"
    assistant: "<answer>"

The loss is computed on the answer tokens and the end-of-turn token only. Use the same
system/user messages at inference time (``/v1/chat/completions``), or the rendered
prompt with ``/v1/completions``.

``--corrupt`` trains on answers shuffled between questions (every question gets another
question's answer): a deliberately regressed adapter for testing quality gates.

The adapter is saved with PEFT ``save_pretrained`` (``adapter_config.json`` and
``adapter_model.safetensors``) into a temporary folder beside ``--out``, then
``base_model_name_or_path`` is set to ``--base-name`` (the served base model name)
and the folder is renamed to ``--out``. ``--out`` must not exist: every adapter
version lives in a new folder.

Training is deterministic for a given seed, data, base model and thread count.

Stdout carries JSON lines: progress while it runs (``{"progress": {"phase": "load" or
"train", "step", "steps", "elapsed_s", "loss"}}``, one when the model starts loading and
one per optimiser step), then the summary as the last line; logs go to stderr. Exit
status: 0 ok, 2 bad input, 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

SYSTEM_PROMPT = "Answer briefly using this context: {context}"
REQUIRED_FIELDS = ("context", "question", "answer")
IGNORE_INDEX = -100

log = logging.getLogger("train_lora")


class InputError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


@dataclass(frozen=True)
class Example:
    context: str
    question: str
    answer: str


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="train_lora.py", description="Train a PEFT LoRA adapter on the CPU.")
    parser.add_argument("--base-model", required=True, type=Path, help="Hugging Face model folder")
    parser.add_argument(
        "--base-name",
        required=True,
        help="served name of the base model, written to base_model_name_or_path "
        "(e.g. HuggingFaceTB/SmolLM2-135M-Instruct)",
    )
    parser.add_argument("--data", required=True, type=Path, help="training data, JSON lines")
    parser.add_argument("--out", required=True, type=Path, help="adapter folder to create (must not exist)")
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank r (default 16)")
    parser.add_argument("--alpha", type=float, default=32.0, help="LoRA alpha (default 32)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    parser.add_argument(
        "--targets",
        default="q_proj,k_proj,v_proj,o_proj",
        help="comma-separated module names to adapt (default q_proj,k_proj,v_proj,o_proj)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="examples per step (default 4)")
    parser.add_argument(
        "--max-length",
        type=int,
        default=256,
        help="longest tokenised example allowed (default 256)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: all available cores)"
    )
    parser.add_argument(
        "--corrupt",
        action="store_true",
        help="shuffle answers between questions (a regressed adapter)",
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
    os.write(fd, (json.dumps(summary) + "\n").encode())


Report = Callable[[dict[str, Any]], None]


def no_report(_: dict[str, Any]) -> None:
    return None


def validate_args(args: argparse.Namespace) -> list[str]:
    if not (args.base_model / "config.json").is_file():
        raise InputError(f"--base-model {args.base_model}: no config.json (not a model folder)")
    if not args.base_name.strip():
        raise InputError("--base-name must not be empty")
    if not args.data.is_file():
        raise InputError(f"--data {args.data}: no such file")
    if args.out.exists():
        raise InputError(f"--out {args.out} already exists; every adapter needs a new folder")
    for name in ("steps", "rank", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads < 0:
        raise InputError("--threads must not be negative")
    if not (args.alpha > 0 and math.isfinite(args.alpha)):
        raise InputError("--alpha must be a positive number")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise InputError("--lr must be a positive number")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets:
        raise InputError("--targets must name at least one module")
    return targets


def load_examples(path: Path) -> list[Example]:
    examples: list[Example] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{path}:{number}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{number}: expected a JSON object")
            for field in REQUIRED_FIELDS:
                value = row.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise InputError(f"{path}:{number}: field {field!r} must be a non-empty string")
            examples.append(Example(row["context"].strip(), row["question"].strip(), row["answer"].strip()))
    if not examples:
        raise InputError(f"{path}: no examples")
    return examples


def corrupt_answers(examples: list[Example], seed: int) -> list[Example]:
    """Give every question the answer of another question (a seeded derangement)."""
    if len(examples) < 2:
        raise InputError("--corrupt needs at least two examples")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    # Rotating a shuffled cycle by one moves every answer to a different question.
    source = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
    return [Example(ex.context, ex.question, examples[source[i]].answer) for i, ex in enumerate(examples)]


def chat_messages(example: Example) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT.format(context=example.context)},
        {"role": "user", "content": example.question},
    ]


def encode(tokenizer: Any, example: Example, max_length: int) -> Encoded:
    prompt = tokenizer.apply_chat_template(chat_messages(example), tokenize=False, add_generation_prompt=True)
    prompt_ids: list[int] = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids: list[int] = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    answer_ids = [*answer_ids, int(tokenizer.eos_token_id)]
    ids = prompt_ids + answer_ids
    if len(ids) > max_length:
        raise InputError(
            f"example {example.question[:40]!r} has {len(ids)} tokens, more than --max-length {max_length}"
        )
    return Encoded(ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids)


def check_targets(model: Any, targets: list[str]) -> None:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise InputError(f"--targets: the base model has no module named {', '.join(missing)}")


def batches(count: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless seeded epochs of example indices, cut into batches."""
    rng = random.Random(seed)
    pending: list[int] = []
    while True:
        while len(pending) < batch_size:
            epoch = list(range(count))
            rng.shuffle(epoch)
            pending.extend(epoch)
        yield pending[:batch_size]
        pending = pending[batch_size:]


def collate(items: list[Encoded], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(item.input_ids) for item in items)
    ids, labels, mask = [], [], []
    for item in items:
        pad = width - len(item.input_ids)
        ids.append(item.input_ids + [pad_id] * pad)
        labels.append(item.labels + [IGNORE_INDEX] * pad)
        mask.append([1] * len(item.input_ids) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
    }


def train(args: argparse.Namespace, targets: list[str], report: Report = no_report) -> dict[str, Any]:
    """Train and save the adapter; ``report`` gets a progress record when the model starts
    loading and after every step."""
    started = time.monotonic()
    report({"phase": "load", "step": 0, "steps": args.steps, "elapsed_s": 0.0})
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    examples = load_examples(args.data)
    if args.corrupt:
        examples = corrupt_answers(examples, args.seed)

    log.info("loading base model %s", args.base_model)
    tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"--base-model {args.base_model}: the tokenizer has no chat template")
    if tokenizer.eos_token_id is None:
        raise InputError(f"--base-model {args.base_model}: the tokenizer has no end-of-sequence token")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode(tokenizer, ex, args.max_length) for ex in examples]

    model = AutoModelForCausalLM.from_pretrained(args.base_model, dtype=torch.float32)
    check_targets(model, targets)
    model.config.use_cache = False
    lora_config = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(args.seed)
    peft_model = get_peft_model(model, lora_config)
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    # Cosine decay from lr to lr/10 over the run.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, args.steps) / args.steps)),
    )

    tokens = [len(e.input_ids) for e in encoded]
    log.info(
        "%d examples (%s), %.0f tokens each on average (max %d), %d trainable parameters, %d threads",
        len(encoded),
        "corrupted answers" if args.corrupt else "clean",
        sum(tokens) / len(tokens),
        max(tokens),
        n_trainable,
        threads,
    )
    losses: list[float] = []
    train_started = time.monotonic()
    batch_iter = batches(len(encoded), min(args.batch_size, len(encoded)), args.seed)
    for step in range(1, args.steps + 1):
        batch = collate([encoded[i] for i in next(batch_iter)], pad_id)
        loss = peft_model(**batch).loss
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is {loss.item()} at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss.item()), 4))
        elapsed = round(time.monotonic() - train_started, 2)
        report(
            {"phase": "train", "step": step, "steps": args.steps, "elapsed_s": elapsed, "loss": losses[-1]}
        )
        if step == 1 or step % 10 == 0 or step == args.steps:
            log.info(
                "step %d/%d loss %.4f (%.1f s)",
                step,
                args.steps,
                losses[-1],
                time.monotonic() - train_started,
            )
    train_seconds = time.monotonic() - train_started

    out = args.out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's model card names the local path
        config_path = tmp / "adapter_config.json"
        if not config_path.is_file() or not (tmp / "adapter_model.safetensors").is_file():
            raise RuntimeError(
                "save_pretrained did not write adapter_config.json and adapter_model.safetensors"
            )
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = args.base_name
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for path in tmp.iterdir():
            path.chmod(0o644)
        adapter_bytes = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
        os.rename(tmp, out)  # fails if --out appeared meanwhile; never overwrites
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    tail = losses[-5:]
    return {
        "out": str(out),
        "base_model": str(args.base_model.absolute()),
        "base_name": args.base_name,
        "data": str(args.data.absolute()),
        "examples": len(encoded),
        "corrupt": bool(args.corrupt),
        "steps": args.steps,
        "batch_size": min(args.batch_size, len(encoded)),
        "seed": args.seed,
        "rank": args.rank,
        "alpha": args.alpha,
        "lr": args.lr,
        "targets": targets,
        "threads": threads,
        "trainable_parameters": n_trainable,
        "mean_tokens": round(sum(tokens) / len(tokens), 1),
        "final_loss": losses[-1],
        "final_loss_mean5": round(sum(tail) / len(tail), 4),
        "loss_curve": losses,
        "train_seconds": round(train_seconds, 2),
        "seconds_per_step": round(train_seconds / args.steps, 3),
        "seconds": round(time.monotonic() - started, 2),
        "adapter_bytes": adapter_bytes,
        "system_prompt": SYSTEM_PROMPT,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    with stdout_to_stderr() as real_stdout:
        try:
            targets = validate_args(args)
            summary = train(args, targets, lambda p: emit(real_stdout, {"progress": p}))
        except InputError as exc:
            sys.stderr.write(f"train_lora.py: error: {exc}\n")
            return 2
        except Exception as exc:
            log.exception("training failed")
            sys.stderr.write(f"train_lora.py: error: {type(exc).__name__}: {exc}\n")
            return 1
        emit(real_stdout, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a PEFT LoRA adapter (or the bare base model) on question-answering data.

Runs inside the ML virtualenv (torch, transformers, peft). Imports nothing from
loradeploy; it shares the prompt format with ``train_lora.py`` (same folder), so an
adapter is evaluated on exactly the chat it was trained on.

For every example of ``--data`` (JSON lines with ``context``, ``question``,
``answer``, optional ``id``):

- the greedy answer, up to ``--max-new-tokens`` tokens, generated from the rendered
  chat (system: the context, user: the question);
- the cross-entropy on the reference answer tokens (teacher forcing), as in training.

Stdout carries progress lines while it runs (``{"progress": {"phase": "load" or
"evaluate", "step", "steps", "elapsed_s"}}``, one per answered example), then one line
of JSON, the summary: ``predictions`` (id, question, reference, prediction),
``eval_loss`` (mean over answer tokens of all examples) and timings. Scoring (token F1,
exact match) is left to the caller, so there is one implementation of it. Logs go to
stderr. Exit status: 0 ok, 2 bad input, 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from train_lora import (  # the script's own folder is sys.path[0]
    IGNORE_INDEX,
    InputError,
    Report,
    chat_messages,
    emit,
    encode,
    load_examples,
    no_report,
    stdout_to_stderr,
)

log = logging.getLogger("eval_lora")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="eval_lora.py", description="Evaluate a LoRA adapter on QA data.")
    parser.add_argument("--base-model", required=True, type=Path, help="Hugging Face model folder")
    parser.add_argument("--adapter", type=Path, default=None, help="PEFT adapter folder (omit: base)")
    parser.add_argument("--data", required=True, type=Path, help="evaluation data, JSON lines")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="answer length limit (default 48)")
    parser.add_argument("--max-length", type=int, default=256, help="longest example allowed (default 256)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    return parser.parse_args(argv)


def read_ids(path: Path) -> list[str]:
    ids = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            ids.append(str(row.get("id") or f"line-{number}"))
    return ids


def evaluate(args: argparse.Namespace, report: Report = no_report) -> dict[str, Any]:
    """Answer and score every example; ``report`` gets a progress record when the model
    starts loading and after every example."""
    started = time.monotonic()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (args.base_model / "config.json").is_file():
        raise InputError(f"--base-model {args.base_model}: no config.json (not a model folder)")
    if args.adapter is not None and not (args.adapter / "adapter_config.json").is_file():
        raise InputError(f"--adapter {args.adapter}: no adapter_config.json")
    if not args.data.is_file():
        raise InputError(f"--data {args.data}: no such file")
    if args.max_new_tokens < 1:
        raise InputError("--max-new-tokens must be at least 1")
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    examples = load_examples(args.data)
    ids = read_ids(args.data)
    report({"phase": "load", "step": 0, "steps": len(examples), "elapsed_s": 0.0})
    tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    model = AutoModelForCausalLM.from_pretrained(args.base_model, dtype=torch.float32)
    if args.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(args.adapter))
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    predictions = []
    loss_sum, loss_tokens = 0.0, 0
    eval_started = time.monotonic()
    with torch.no_grad():
        for example, example_id in zip(examples, ids, strict=True):
            item = encode(tokenizer, example, args.max_length)
            input_ids = torch.tensor([item.input_ids])
            labels = torch.tensor([item.labels])
            logits = model(input_ids=input_ids).logits[:, :-1, :]
            targets = labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            loss_sum += float(losses.item())
            loss_tokens += int((targets != IGNORE_INDEX).sum().item())

            prompt = tokenizer.apply_chat_template(
                chat_messages(example), tokenize=False, add_generation_prompt=True
            )
            prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            generated = model.generate(
                input_ids=prompt_ids,
                attention_mask=torch.ones_like(prompt_ids),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
            text = tokenizer.decode(generated[0, prompt_ids.shape[1] :], skip_special_tokens=True)
            predictions.append(
                {
                    "id": example_id,
                    "question": example.question,
                    "reference": example.answer,
                    "prediction": text.strip(),
                }
            )
            elapsed = round(time.monotonic() - eval_started, 2)
            report(
                {"phase": "evaluate", "step": len(predictions), "steps": len(examples), "elapsed_s": elapsed}
            )
    return {
        "adapter": str(args.adapter.absolute()) if args.adapter else None,
        "base_model": str(args.base_model.absolute()),
        "data": str(args.data.absolute()),
        "examples": len(predictions),
        "max_new_tokens": args.max_new_tokens,
        "eval_loss": round(loss_sum / max(loss_tokens, 1), 5),
        "predictions": predictions,
        "threads": threads,
        "seconds": round(time.monotonic() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    with stdout_to_stderr() as real_stdout:
        try:
            summary = evaluate(args, lambda p: emit(real_stdout, {"progress": p}))
        except InputError as exc:
            sys.stderr.write(f"eval_lora.py: error: {exc}\n")
            return 2
        except Exception as exc:
            log.exception("evaluation failed")
            sys.stderr.write(f"eval_lora.py: error: {type(exc).__name__}: {exc}\n")
            return 1
        emit(real_stdout, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

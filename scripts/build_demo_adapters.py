"""Build the adapters the demo and the tests deploy: real PEFT LoRA fine-tunes.

Each is trained by ``src/loradeploy/mlworkers/train_lora.py`` inside the ML virtualenv
and cached: a folder that already exists is kept.

    aws-rag-qa-v1     SmolLM2-135M-Instruct, trained on data/aws-rag-qa (seed 1)
    aws-rag-qa-v2     the same data, more steps and another seed: a second version
    aws-rag-qa-regressed  trained on answers shuffled between questions: a bad release
    tiny-llama-qa     an adapter for the tiny Llama: a real adapter for another base
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "src" / "loradeploy" / "mlworkers" / "train_lora.py"
DATA = REPO / "data" / "aws-rag-qa" / "train.jsonl"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"

ADAPTERS = {
    "aws-rag-qa-v1": ("smollm2-135m-instruct", SMOLLM2, ["--steps", "30", "--seed", "1"]),
    "aws-rag-qa-v2": ("smollm2-135m-instruct", SMOLLM2, ["--steps", "45", "--seed", "2"]),
    "aws-rag-qa-regressed": (
        "smollm2-135m-instruct",
        SMOLLM2,
        ["--steps", "30", "--seed", "4", "--corrupt"],
    ),
    "tiny-llama-qa": ("tiny-llama", "loradeploy/tiny-llama", ["--steps", "5", "--seed", "3"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ml-python", required=True, type=Path)
    parser.add_argument("--models", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (model, base_name, extra) in ADAPTERS.items():
        target = args.out / name
        if (target / "adapter_config.json").exists():
            print(f"{name}: cached in {target}")
            continue
        started = time.monotonic()
        command = [
            str(args.ml_python), str(TRAIN),
            "--base-model", str(args.models / model),
            "--base-name", base_name,
            "--data", str(DATA),
            "--out", str(target),
            *extra,
        ]  # fmt: skip
        print(f"{name}: training ({' '.join(extra)})", flush=True)
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            print(f"{name}: training failed (exit {done.returncode})", file=sys.stderr)
            return done.returncode
        print(f"{name}: {time.monotonic() - started:.0f}s {done.stdout.strip()[-200:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

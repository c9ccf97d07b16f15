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
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from loradeploy.clients.mlworker import parse_progress
from loradeploy.steps.train import training_cache

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "src" / "loradeploy" / "mlworkers" / "train_lora.py"
DATA = REPO / "data" / "aws-rag-qa" / "train.jsonl"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The demo trains v2 with 'loradeploy train --model-name=aws-rag-qa --steps=45 --seed=2':
# the same inputs as aws-rag-qa-v2 below, so that training is also kept where the train
# step looks for it (<assets>/trained) and a first demo does not train it a second time.
DEMO_TRAINED = {"aws-rag-qa-v2": "aws-rag-qa"}

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
        if name in DEMO_TRAINED:
            summary = [line for line in done.stdout.splitlines() if line.strip() and not parse_progress(line)]
            steps, seed = (int(extra[extra.index(flag) + 1]) for flag in ("--steps", "--seed"))
            folder, _ = training_cache(
                args.models.parent / "trained",
                DEMO_TRAINED[name],
                script=TRAIN,
                data=DATA,
                base_model_dir=(args.models / model).resolve(),
                base_name=base_name,
                steps=steps,
                seed=seed,
            )
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(target, folder / "adapter")
            (folder / "train.json").write_text(json.dumps(json.loads(summary[-1]), indent=2) + "\n")
            print(f"{name}: also kept for 'loradeploy train' in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

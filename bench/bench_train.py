"""Benchmark: training throughput of the finetune stage's defaults against two baselines, side by side.

Run: make bench   (or: python bench/bench_train.py [--steps N] [--repeats K])
Same tiny Llama (CPU), same data (the smoke set's train split), same number of optimizer steps, batch 4:
- naive: plain TRL SFT with every sample padded to 1024 tokens (the literal reading of the seed paper's
  max_seq_length 1024, batch 4);
- trl: plain TRL SFT with its default dynamic padding, no packing (what the seed most likely ran);
- stage: ``bakeoff.train.finetune`` with the spec's defaults (its evaluation and checkpoint at the end
  included), and with each batching option.
Figures are real (non-padding) tokens per second, the median of the repeats.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def smoke_spec(steps: int, **training):
    from bakeoff.spec import parse_spec

    data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    data["data"]["sources"] = [{"uri": str(ROOT / "experiments" / "data" / "smoke.jsonl")}]
    data["training"].update({"max_steps": steps, "batch_size": 4, "eval_steps": steps, "logging_steps": steps,
                             **training})
    return parse_spec(data)


def plain_trl(data_dir: Path, steps: int, pad_to: int | None, model: str = "tiny://llama", batch_size: int = 4,
              learning_rate: float | None = None, max_length: int | None = None, gpu: bool = False) -> float:
    """Real tokens/s of a plain TRL SFT run (LoRA, the spec's settings), optionally padding every batch to
    ``pad_to``; on a GPU in bf16 with gradient checkpointing, as the stage runs there."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from bakeoff.artifacts import read_split
    from bakeoff.models import load_model, load_tokenizer
    from bakeoff.train.methods import peft_config

    spec = smoke_spec(steps)
    rows = read_split(data_dir, "train")
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch_size,
                         learning_rate=learning_rate or spec.training.learning_rate,
                         max_length=pad_to or max_length or spec.training.max_seq_length, pad_to_multiple_of=pad_to,
                         bf16=gpu, fp16=False, use_cpu=not gpu, gradient_checkpointing=gpu, logging_steps=steps,
                         save_strategy="no", report_to=[], disable_tqdm=True, seed=spec.seed, dataloader_num_workers=0)
        dtype = torch.bfloat16 if gpu else torch.float32
        base = load_model(model, dtype=dtype, device="cuda" if gpu else None)
        trainer = SFTTrainer(model=base, args=args, train_dataset=ds, processing_class=load_tokenizer(model),
                             peft_config=peft_config(spec.peft, base))
        trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        tokens = [float(e["num_tokens"]) for e in trainer.state.log_history if "num_tokens" in e][-1]
    return tokens / seconds


def stage(data_dir: Path, steps: int, **training) -> float:
    from bakeoff.train import finetune

    spec = smoke_spec(steps, **training)
    with tempfile.TemporaryDirectory() as tmp:
        result = finetune(spec.arm("tiny-llama"), spec.training, spec.peft, data_dir, tmp, spec.seed)
    return result.train_tokens / result.seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/train.json")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    os.environ.setdefault("BAKEOFF_CACHE", tempfile.mkdtemp(prefix="bakeoff-bench-"))
    import torch

    from bakeoff.data.prepare import prepare_data

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        spec = smoke_spec(args.steps)
        prepare_data(spec.data, spec.seed, data_dir)
        runs = {
            "naive_padded_1024": lambda: plain_trl(data_dir, args.steps, 1024),
            "trl_dynamic_padding": lambda: plain_trl(data_dir, args.steps, None),
            "stage_defaults": lambda: stage(data_dir, args.steps),
            "stage_group_by_length": lambda: stage(data_dir, args.steps, group_by_length=True),
            "stage_padding_free": lambda: stage(data_dir, args.steps, batching="padding-free"),
            "stage_packing": lambda: stage(data_dir, args.steps, batching="packing"),
        }
        # interleave the repeats so a noisy moment on a shared machine spreads over every condition
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                samples[name].append(run())
    tps = {name: round(statistics.median(v), 1) for name, v in samples.items()}
    base = tps["stage_defaults"]
    results = {
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "tokens_per_second": tps,
        "train_speedup_vs_naive": round(base / tps["naive_padded_1024"], 2),
        "train_speedup_vs_trl": round(base / tps["trl_dynamic_padding"], 2),
        "options_vs_trl": {k: round(v / tps["trl_dynamic_padding"], 2)
                           for k, v in tps.items() if k.startswith("stage_")},
        "machine": {"python": platform.python_version(), "cpu": platform.machine(), "torch": torch.__version__,
                    "transformers": metadata.version("transformers"), "trl": metadata.version("trl"),
                    "peft": metadata.version("peft"), "bakeoff": metadata.version("bakeoff")},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for name, value in tps.items():
        print(f"{name:<24} {value:>10.1f} real tokens/s")
    print(f"train_speedup_vs_naive={results['train_speedup_vs_naive']} "
          f"train_speedup_vs_trl={results['train_speedup_vs_trl']}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

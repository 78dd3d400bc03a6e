"""``make bench-gpu``: the same comparisons on a ~1B-parameter model, on a CUDA GPU, in one script.

Run: make bench-gpu   (needs CUDA; about 5-10 minutes on one A100/H100-class GPU)
- a Llama of about 1.1B parameters (TinyLlama's shape) built from a config with random weights and a
  tokenizer trained here: nothing is downloaded;
- training throughput (real tokens/s) of the finetune stage's defaults against every row padded to
  1024 and against plain TRL SFT with dynamic padding, for LoRA; then tokens/s, model FLOPs
  utilisation and peak memory for LoRA, QLoRA and full fine-tuning;
- generation: batched against one-at-a-time with transformers, and vLLM when it is installed.
MFU counts 6 x parameters FLOPs per token for full fine-tuning and 4 x parameters for LoRA/QLoRA (no
weight gradients for the frozen base), against the GPU's dense bf16 peak. Writes bench/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 peak FLOP/s by GPU name fragment (vendor data sheets).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A40": 150e12, "L4": 121e12,
             "A10": 125e12}
CONFIG_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, max_position_embeddings=2048, vocab_size=32000, tie_word_embeddings=False)


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def build_model_dir(out: Path) -> Path:
    """The 1B Llama with the tiny tokenizer (ids stay below its vocabulary; the embedding is full size)."""
    import torch
    import transformers

    from bakeoff.models.tiny import build_tokenizer

    tok = build_tokenizer()
    config = transformers.LlamaConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id, **CONFIG_1B)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def spec_for(model_dir: Path, steps: int, **training):
    from bakeoff.spec import parse_spec

    data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    data["data"]["sources"] = [{"uri": str(ROOT / "experiments" / "data" / "smoke.jsonl")}]
    data["arms"] = [{"name": "llama-1b", "model": str(model_dir)}]
    data["training"].update({"max_steps": steps, "batch_size": 8, "eval_steps": steps, "logging_steps": steps,
                             "max_seq_length": 1024, "learning_rate": 2e-4, "precision": "auto", **training})
    return parse_spec(data)


def stage_run(model_dir: Path, data_dir: Path, steps: int, method: str, **training) -> dict:
    import torch

    from bakeoff.train import finetune

    spec = spec_for(model_dir, steps, **training)
    torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        r = finetune(spec.arm("llama-1b"), spec.training, spec.peft.model_copy(update={"method": method}),
                     data_dir, tmp, spec.seed)
    return {"tokens_per_second": r.train_tokens / r.seconds, "peak_memory_gb": r.peak_memory_gb,
            "total_params": r.total_params, "trainable_params": r.trainable_params}


def plain_trl(model_dir: Path, data_dir: Path, steps: int, pad_to: int | None) -> float:
    """The CPU benchmark's plain TRL baseline, on the GPU with the 1B model."""
    from bench_train import plain_trl as baseline

    return baseline(data_dir, steps, pad_to, model=str(model_dir), batch_size=8, learning_rate=2e-4,
                    max_length=1024, gpu=True)


def generation(model_dir: Path, prompts: list[str]) -> dict:
    import torch

    from bakeoff.generate.backends import vllm_available
    from bakeoff.generate.generate import batched_greedy
    from bakeoff.models import load_model, load_tokenizer

    model = load_model(str(model_dir), dtype=torch.bfloat16, device="cuda").eval()
    tok = load_tokenizer(str(model_dir))
    out = {}
    for name, batch in (("batched_64", 64), ("sequential", 1)):
        torch.cuda.synchronize()
        started = time.perf_counter()
        batched_greedy(model, tok, prompts, max_new_tokens=64, batch_size=batch)
        torch.cuda.synchronize()
        out[f"{name}_seconds"] = round(time.perf_counter() - started, 3)
    del model
    torch.cuda.empty_cache()
    if vllm_available():
        from vllm import LLM

        from bakeoff.generate.backends import vllm_answers

        llm = LLM(model=str(model_dir), dtype="bfloat16", gpu_memory_utilization=0.5)
        started = time.perf_counter()
        vllm_answers(llm, prompts, 64)
        out["vllm_seconds"] = round(time.perf_counter() - started, 3)
    else:
        out["vllm_seconds"] = None
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train's baseline
    parser.add_argument("--out", default="bench/results/gpu.json")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench-gpu needs a CUDA GPU; none is visible", file=sys.stderr)
        return {}
    logging.disable(logging.WARNING)
    os.environ.setdefault("BAKEOFF_CACHE", tempfile.mkdtemp(prefix="bakeoff-bench-"))
    from bakeoff.artifacts import read_split
    from bakeoff.data.prepare import prepare_data

    gpu = torch.cuda.get_device_name(0)
    results: dict = {"gpu": gpu, "steps": args.steps, "config": CONFIG_1B}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_model_dir(tmp / "llama-1b")
        spec = spec_for(model_dir, args.steps)
        prepare_data(spec.data, spec.seed, tmp / "data")
        naive = plain_trl(model_dir, tmp / "data", args.steps, 1024)
        trl = plain_trl(model_dir, tmp / "data", args.steps, None)
        methods = {m: stage_run(model_dir, tmp / "data", args.steps, m) for m in ("lora", "qlora", "full")}
        packed = stage_run(model_dir, tmp / "data", args.steps, "lora", batching="packing")
        peak = peak_flops(gpu)
        for name, r in methods.items():
            flops_per_token = (6 if name == "full" else 4) * r["total_params"]
            r["mfu"] = round(r["tokens_per_second"] * flops_per_token / peak, 4) if peak else None
        prompts = [r["prompt"] for r in read_split(tmp / "data", "test")][:64]
        gen = generation(model_dir, prompts)
    results.update({
        "tokens_per_second": {"naive_padded_1024": round(naive, 1), "trl_dynamic_padding": round(trl, 1),
                              "stage_defaults_lora": round(methods["lora"]["tokens_per_second"], 1),
                              "stage_packing_lora": round(packed["tokens_per_second"], 1)},
        "methods": methods,
        "generation": gen,
        "train_speedup_vs_naive": round(methods["lora"]["tokens_per_second"] / naive, 2),
        "train_speedup_vs_trl": round(methods["lora"]["tokens_per_second"] / trl, 2),
        "packing_speedup_vs_trl": round(packed["tokens_per_second"] / trl, 2),
        "generation_speedup_batched_vs_sequential": round(gen["sequential_seconds"] / gen["batched_64_seconds"], 2),
        "generation_speedup_vllm_vs_batched": (round(gen["batched_64_seconds"] / gen["vllm_seconds"], 2)
                                               if gen["vllm_seconds"] else None),
    })
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    for key in ("train_speedup_vs_naive", "train_speedup_vs_trl", "packing_speedup_vs_trl",
                "generation_speedup_batched_vs_sequential", "generation_speedup_vllm_vs_batched"):
        print(f"{key}={results[key]}")
    for name, r in methods.items():
        print(f"{name}: {r['tokens_per_second']:.0f} tokens/s, mfu={r['mfu']}, peak_memory_gb={r['peak_memory_gb']}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""``make bench-gpu``: the same comparisons on a ~1B-parameter model, on a CUDA GPU, in one script.

Run: make bench-gpu   (needs CUDA; about 5-10 minutes on one A100/H100-class GPU)
- a Llama of about 1.1B parameters (TinyLlama's shape) built from a config with random weights and a
  tokenizer trained here: nothing is downloaded;
- training throughput (real tokens/s) of the finetune stage's defaults against every row padded to
  1024 and against plain TRL SFT with dynamic padding, for LoRA; then tokens/s, model FLOPs
  utilisation and peak memory for LoRA, QLoRA and full fine-tuning;
- generation: batched against one-at-a-time with transformers, and vLLM when it is installed.
Tokens/s and MFU of a method are measured over its training steps only, after --warmup-steps warm-up
steps (a TrainerCallback timing on_step_begin to on_step_end, so evaluation, saving and logging fall
outside), with the real (non-pad) tokens of the same steps; the stage's whole-run figure
(``stage_tokens_per_second``, evaluation included) is reported beside it and used for the speed-ups
against the plain-TRL baselines, which are whole-run too. MFU follows ``bakeoff.train.flops``: 6 N + 12 L H Q T
FLOPs per token for full fine-tuning (N: non-embedding parameters, output head included, 4-bit weights
counted whole), 4 N + 6 x adapter parameters + the attention term for LoRA/QLoRA (no weight gradients for
the frozen base), T the token-weighted mean row length of the training set, against the GPU's dense bf16
peak (``peak_tflops``, longest name first). Writes bench/results/gpu.json.
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
WARMUP_STEPS = 5  # steps left out of the timing window (CUDA kernels, allocator and autotuning settle)
CONFIG_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, max_position_embeddings=2048, vocab_size=32000, tie_word_embeddings=False)


def peak_flops(name: str) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s (``bakeoff.train.flops.peak_tflops``); None if unknown."""
    from bakeoff.train.flops import peak_tflops

    tflops = peak_tflops(name)
    return tflops * 1e12 if tflops is not None else None


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step_window(warmup_steps: int = WARMUP_STEPS):
    """A TrainerCallback that times the training steps after ``warmup_steps``, each from on_step_begin to
    on_step_end (forward, backward, optimizer step: evaluation, saving and logging run after on_step_end,
    outside), and counts the real (non-pad) tokens of the same steps. Its ``figures()``: steps, seconds,
    tokens, tokens_per_second and wall_seconds (the first measured step's start to the last one's end)."""
    from transformers import TrainerCallback

    class StepWindow(TrainerCallback):
        def __init__(self):
            self.steps, self.seconds, self.tokens = 0, 0.0, 0
            self.first = self.last = self.began = None
            self.tokens_before = 0

        def on_train_begin(self, args, state, control, **kwargs):
            # the Trainer then counts attention-mask (or non-pad) tokens per micro-batch into the state
            args.include_num_input_tokens_seen = "non_padding"

        def on_step_begin(self, args, state, control, **kwargs):
            self.began = None
            if state.global_step >= warmup_steps:  # global_step: steps finished before this one
                _sync()
                self.began, self.tokens_before = time.perf_counter(), state.num_input_tokens_seen
                self.first = self.began if self.first is None else self.first

        def on_step_end(self, args, state, control, **kwargs):
            if self.began is None:
                return
            _sync()
            self.last = time.perf_counter()
            self.steps += 1
            self.seconds += self.last - self.began
            self.tokens += int(state.num_input_tokens_seen - self.tokens_before)

        def figures(self) -> dict:
            return {"steps": self.steps, "seconds": round(self.seconds, 4), "tokens": self.tokens,
                    "tokens_per_second": self.tokens / self.seconds if self.seconds > 0 else None,
                    "wall_seconds": round(self.last - self.first, 4) if self.steps else None}

    return StepWindow()


def row_lengths(dataset, max_length: int | None) -> list[int]:
    """Token lengths of the sequences the model attends within: each training row (cut at max_length when
    there is one), or each document of a packed row (TRL's ``seq_lengths``: bfd packing restarts the
    position ids per document, so attention stays inside it)."""
    if "seq_lengths" in dataset.column_names:
        return [int(n) for row in dataset["seq_lengths"] for n in row]
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return [min(n, max_length) for n in lengths] if max_length else lengths


def method_figures(method: str, window: dict, counts: dict, config, seq_len: float, peak: float | None) -> dict:
    """Tokens/s and MFU of one method from its timing window (the pure part of ``stage_run``)."""
    from bakeoff.train.flops import mfu, train_flops_per_token

    frozen = method != "full"
    flops_per_token = train_flops_per_token(config, seq_len, frozen_base=frozen,
                                            adapter_params=counts["trainable"] if frozen else 0)
    tps = window["tokens_per_second"]
    value = mfu(tps, flops_per_token, peak) if tps is not None else None
    return {"tokens_per_second": tps, "flops_per_token": flops_per_token, "seq_len_effective": round(seq_len, 1),
            "mfu": round(value, 4) if value is not None else None, "window": window,
            "total_params": counts["total"], "trainable_params": counts["trainable"],
            "non_embedding_params": counts["non_embedding"]}


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


def stage_run(model_dir: Path | str, data_dir: Path, steps: int, method: str, warmup_steps: int = WARMUP_STEPS,
              peak: float | None = None, callbacks: tuple = (), **training) -> dict:
    """The finetune stage (setup, train, record) with a ``step_window`` (and ``callbacks``) on its trainer;
    ``peak`` in TFLOP/s."""
    import torch

    from bakeoff.train.finetune import record, setup, train
    from bakeoff.train.flops import count_parameters, effective_seq_len

    spec = spec_for(model_dir, steps, **training)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        run = setup(spec.arm("llama-1b"), spec.training, spec.peft.model_copy(update={"method": method}),
                    data_dir, tmp, spec.seed)
        window = step_window(warmup_steps)
        for callback in (window, *callbacks):
            run.trainer.add_callback(callback)
        seq_len = effective_seq_len(row_lengths(run.trainer.train_dataset, run.trainer.args.max_length))
        r = record(run, train(run))
        counts = count_parameters(run.trainer.model)
        figures = method_figures(method, window.figures(), counts, run.trainer.model.config, seq_len, peak)
    return {**figures, "stage_tokens_per_second": r.train_tokens / r.seconds, "peak_memory_gb": r.peak_memory_gb}


def plain_trl(model_dir: Path, data_dir: Path, steps: int, pad_to: int | None) -> float:
    """The CPU benchmark's plain TRL baseline, on the GPU with the 1B model."""
    from bench_train import plain_trl as baseline

    return baseline(data_dir, steps, pad_to, model=str(model_dir), batch_size=8, learning_rate=2e-4,
                    max_length=1024, gpu=True)


def generation(model_dir: Path, prompts: list[str]) -> dict:
    import torch

    from bakeoff.generate.backends import vllm_available
    from bakeoff.generate.generate import batched_greedy, prompt_ids
    from bakeoff.models import load_model, load_tokenizer

    model = load_model(str(model_dir), dtype=torch.bfloat16, device="cuda").eval()
    tok = load_tokenizer(str(model_dir))
    ids = [prompt_ids(tok, p) for p in prompts]  # the generate stage's input (one BOS, from the tokenizer)
    out = {}
    for name, batch in (("batched_64", 64), ("sequential", 1)):
        torch.cuda.synchronize()
        started = time.perf_counter()
        batched_greedy(model, tok, ids, max_new_tokens=64, batch_size=batch)
        torch.cuda.synchronize()
        out[f"{name}_seconds"] = round(time.perf_counter() - started, 3)
    del model
    torch.cuda.empty_cache()
    if vllm_available():
        from vllm import LLM

        from bakeoff.generate.backends import vllm_answers

        llm = LLM(model=str(model_dir), dtype="bfloat16", gpu_memory_utilization=0.5)
        started = time.perf_counter()
        vllm_answers(llm, ids, 64)
        out["vllm_seconds"] = round(time.perf_counter() - started, 3)
    else:
        out["vllm_seconds"] = None
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train's baseline
    parser.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS,
                        help="steps left out of the tokens/s and MFU window")
    parser.add_argument("--out", default="bench/results/gpu.json")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup_steps:
        parser.error(f"--steps ({args.steps}) must exceed --warmup-steps ({args.warmup_steps})")
    import torch

    if not torch.cuda.is_available():
        print("bench-gpu needs a CUDA GPU; none is visible", file=sys.stderr)
        return {}
    logging.disable(logging.WARNING)
    os.environ.setdefault("BAKEOFF_CACHE", tempfile.mkdtemp(prefix="bakeoff-bench-"))
    from bakeoff.artifacts import read_split
    from bakeoff.data.prepare import prepare_data
    from bakeoff.train.flops import peak_tflops

    gpu = torch.cuda.get_device_name(0)
    results: dict = {"gpu": gpu, "steps": args.steps, "config": CONFIG_1B}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_model_dir(tmp / "llama-1b")
        spec = spec_for(model_dir, args.steps)
        prepare_data(spec.data, spec.seed, tmp / "data")
        naive = plain_trl(model_dir, tmp / "data", args.steps, 1024)
        trl = plain_trl(model_dir, tmp / "data", args.steps, None)
        peak = peak_tflops(gpu)
        results["peak_bf16_tflops"] = peak
        methods = {m: stage_run(model_dir, tmp / "data", args.steps, m, args.warmup_steps, peak)
                   for m in ("lora", "qlora", "full")}
        packed = stage_run(model_dir, tmp / "data", args.steps, "lora", args.warmup_steps, peak, batching="packing")
        prompts = [r["prompt"] for r in read_split(tmp / "data", "test")][:64]
        gen = generation(model_dir, prompts)
    results.update({
        # whole runs, as the plain-TRL baselines are timed; the methods' window figures are beside them
        "tokens_per_second": {"naive_padded_1024": round(naive, 1), "trl_dynamic_padding": round(trl, 1),
                              "stage_defaults_lora": round(methods["lora"]["stage_tokens_per_second"], 1),
                              "stage_packing_lora": round(packed["stage_tokens_per_second"], 1),
                              "window_defaults_lora": round(methods["lora"]["tokens_per_second"], 1),
                              "window_packing_lora": round(packed["tokens_per_second"], 1)},
        "methods": methods,
        "packing_lora": packed,
        "generation": gen,
        "train_speedup_vs_naive": round(methods["lora"]["stage_tokens_per_second"] / naive, 2),
        "train_speedup_vs_trl": round(methods["lora"]["stage_tokens_per_second"] / trl, 2),
        "packing_speedup_vs_trl": round(packed["stage_tokens_per_second"] / trl, 2),
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
        print(f"{name}: {r['tokens_per_second']:.0f} tokens/s (window of {r['window']['steps']} steps), "
              f"{r['flops_per_token'] / 1e9:.2f} GFLOP/token, mfu={r['mfu']}, peak_memory_gb={r['peak_memory_gb']}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""``make bench-gpu``: the same comparisons on a ~1B-parameter model, on a CUDA GPU, in one script.

Run: make bench-gpu   (needs CUDA; ``make gpu-check`` runs it part by part, with a time budget each)
- a Llama of about 1.1B parameters (TinyLlama's shape) built from a config with random weights and a
  tokenizer trained here: nothing is downloaded;
- part ``throughput``, at the seed's sequence length 1024, LoRA, same model, data and batch, side by side:
  plain TRL SFT with every row padded to 1024, plain TRL SFT with its dynamic padding, the finetune stage's
  defaults, and the stage with ``batching: padding-free`` and ``packing``; each with real (non-pad) tokens/s,
  MFU, peak memory beside the capacity planner's estimate (``bakeoff.capacity.estimate.finetune_memory`` at
  the planner's settings: batch x max_seq_length) and its train-loss curve (the same data and batches: the
  curves should agree); the speed-up of the defaults over plain TRL is the ratio of the two windows;
- part ``methods``: QLoRA (NF4, double quantization, bf16 compute: trained, saved, reloaded by the generate
  stage and generating on CUDA) and full fine-tuning (fp32 master weights under bf16 autocast) through the
  stage, with the same figures (LoRA's are the throughput part's ``defaults``);
- part ``generation``: transformers batched bf16 against one prompt at a time (answers compared), and, when
  vllm imports, vLLM serving two LoRA adapters (one with a ``rank_pattern``) against transformers batched
  with the same adapters, greedy answers compared for equality; without vllm: ``"status": "not installed"``.

The training rows of the throughput and methods parts are synthetic, seed-like lengths (``--data long``: a
log-normal of median 160 response tokens, capped below the sequence length; the smoke set's rows are 20-40
tokens, which no GPU batch fills); ``--data smoke`` uses the smoke rows instead.
Tokens/s and MFU of a run are measured over its training steps only, after --warmup-steps warm-up steps (a
TrainerCallback timing on_step_begin to on_step_end, so evaluation, saving and logging fall outside), with
the real (non-pad) tokens of the same steps; the stage's whole-run figure (``stage_tokens_per_second``,
evaluation apart) is beside it. MFU follows ``bakeoff.train.flops``: 6 N + 12 L H Q T FLOPs per token for
full fine-tuning (N: non-embedding parameters, output head included, 4-bit weights counted whole), 4 N + 6 x
adapter parameters + the attention term for LoRA/QLoRA (no weight gradients for the frozen base), T the
token-weighted mean row length of the training set, against the GPU's dense bf16 peak (``peak_tflops``).
Peak memory is ``torch.cuda.max_memory_allocated``, reset before each run.

Each part writes its figures to ``--out`` as it goes (a part stopped by its time budget keeps what it
measured). ``--work DIR`` keeps the model and the prepared data between parts. Writes bench/results/gpu.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 5  # steps left out of the timing window (CUDA kernels, allocator and autotuning settle)
CONFIG_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, max_position_embeddings=2048, vocab_size=32000, tie_word_embeddings=False)
PARTS = ("throughput", "methods", "generation")
ARM = "llama-1b"
LONG_MEDIAN_TOKENS = 160  # response tokens; the log-normal's sigma is 0.9 (p90 about 500), capped below seq len
SPLIT = {"train": 800, "validation": 32, "test": 32}
VLLM_WAITS = ("vllm is not installed on this machine (its wheel is far larger than the 64 MiB a device call "
              "carries): the vLLM comparison waits for a machine that has it")


def peak_flops(name: str) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s (``bakeoff.train.flops.peak_tflops``); None if unknown."""
    from bakeoff.train.flops import peak_tflops

    tflops = peak_tflops(name)
    return tflops * 1e12 if tflops is not None else None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def fresh_memory() -> None:
    """Free what the last run left and restart the peak-memory count."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 1e9, 3) if torch.cuda.is_available() else None


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


def length_summary(lengths: list[int]) -> dict:
    """Rows, mean, median, p90 and max of row lengths (tokens)."""
    ordered = sorted(lengths)
    if not ordered:
        return {}

    def pick(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"rows": len(ordered), "mean": round(sum(ordered) / len(ordered), 1), "p50": pick(0.5),
            "p90": pick(0.9), "max": ordered[-1]}


def method_figures(method: str, window: dict, counts: dict, config, seq_len: float, peak: float | None) -> dict:
    """Tokens/s and MFU of one method from its timing window (the pure part of ``stage_run``)."""
    from bakeoff.train.flops import mfu, train_flops_per_token

    frozen = method != "full"
    flops_per_token = train_flops_per_token(config, seq_len, frozen_base=frozen,
                                            adapter_params=counts["trainable"] if frozen else 0)
    tps = window["tokens_per_second"]
    value = mfu(tps, flops_per_token, peak) if tps is not None else None
    return {"tokens_per_second": tps, "flops_per_token": flops_per_token,
            "seq_len_effective": round(seq_len, 1), "mfu": round(value, 4) if value is not None else None,
            "window": window, "total_params": counts["total"], "trainable_params": counts["trainable"],
            "non_embedding_params": counts["non_embedding"]}


def planned_memory(config, method: str, training, peft, checkpointing: bool) -> dict:
    """The capacity planner's peak-memory estimate for this run, at the planner's own settings (batch x
    max_seq_length tokens, bf16, the spec's optimizer)."""
    from bakeoff.capacity.estimate import finetune_memory

    est = finetune_memory(config.to_dict() if hasattr(config, "to_dict") else config, method=method, r=peft.r,
                          targets=peft.target_modules, use_dora=peft.use_dora, precision="bf16",
                          batch_size=training.batch_size, seq_len=training.max_seq_length,
                          checkpointing=checkpointing, optimizer=training.optimizer, cuda=_cuda())
    return {"planned_memory_gb": est.total_gb, "planned_parts": est.parts}


def loss_curve(log_history: list[dict]) -> list[list[float]]:
    """[step, train loss] at each logging step."""
    return [[int(e["step"]), round(float(e["loss"]), 5)] for e in log_history if "loss" in e and "step" in e]


def curves_differ(a: list[list[float]], b: list[list[float]]) -> float | None:
    """The largest relative difference of two loss curves at the steps both logged (None if none shared)."""
    other = {int(s): v for s, v in b}
    diffs = [abs(v - other[int(s)]) / max(abs(other[int(s)]), 1e-9) for s, v in a if int(s) in other]
    return round(max(diffs), 4) if diffs else None


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a and b else None


# --------------------------------------------------------------------------------------------------------------
# The model, the data and the spec


def build_model_dir(out: Path) -> Path:
    """The 1B Llama with the tiny tokenizer (ids stay below its vocabulary; the embedding is full size),
    initialised on the GPU when there is one; kept in ``out`` for the next part."""
    import torch
    import transformers

    from bakeoff.models.tiny import build_tokenizer

    if (out / "config.json").exists():
        return out
    tok = build_tokenizer()
    config = transformers.LlamaConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id, **CONFIG_1B)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    tmp = out.with_name(out.name + ".partial")  # a part stopped while saving leaves no half model behind
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    del model
    fresh_memory()
    return out


def write_long_rows(model: str, out: Path, rows: int, seq_len: int, seed: int = 0) -> Path:
    """Alpaca rows with the smoke set's instructions and random responses of seed-like token lengths (a
    log-normal of median ``LONG_MEDIAN_TOKENS``, at most ``seq_len`` - 96, so the prompt fits)."""
    from bakeoff.jsonl import read_jsonl
    from bakeoff.models import load_tokenizer

    smoke = list(read_jsonl(ROOT / "experiments" / "data" / "smoke.jsonl"))[:rows]
    words = sorted({w for r in smoke for w in f"{r['instruction']} {r['output']}".split()})
    rng = random.Random(seed)
    tok = load_tokenizer(model)
    cap = max(8, seq_len - 96)
    pool = tok(" ".join(rng.choice(words) for _ in range(3 * cap)), add_special_tokens=False)["input_ids"]
    lines = []
    for r in smoke:
        n = int(min(cap, max(8, rng.lognormvariate(math.log(LONG_MEDIAN_TOKENS), 0.9))))
        start = rng.randrange(max(1, len(pool) - n))
        lines.append({"instruction": r["instruction"], "input": "", "output": tok.decode(pool[start:start + n])})
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


def spec_for(model_dir: Path | str, steps: int, source: Path | None = None, split: dict | None = None, **training):
    """The smoke spec with one arm (the 1B Llama), LoRA, batch 8 at sequence length 1024; no checkpoint
    during the run (it would only cost wall time: the timing window leaves saving out)."""
    from bakeoff.spec import parse_spec

    data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    data["data"]["sources"] = [{"uri": str(source or ROOT / "experiments" / "data" / "smoke.jsonl"),
                                "format": "alpaca"}]
    if split:
        data["data"]["split"] = split
    data["arms"] = [{"name": ARM, "model": str(model_dir)}]
    data["training"].update({"max_steps": steps, "batch_size": 8, "eval_steps": steps, "logging_steps": 5,
                             "max_seq_length": 1024, "learning_rate": 2e-4, "precision": "auto",
                             "keep_best": False, "checkpoint_steps": 1_000_000, **training})
    return parse_spec(data)


def prepare(args) -> dict:
    """The model (built once into --work) and the prepared data sets: ``smoke`` and ``long``."""
    from bakeoff.data.prepare import prepare_data

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or str(build_model_dir(work / ARM))
    data = {}
    for name in ("smoke", "long"):
        folder = work / f"data-{name}-{args.seq_len}"
        if not folder.is_dir():
            source = None
            if name == "long":
                source = write_long_rows(model, work / f"long-{args.seq_len}.jsonl", sum(SPLIT.values()),
                                         args.seq_len)
            spec = spec_for(model, args.steps, source=source, split=SPLIT, max_seq_length=args.seq_len)
            tmp = folder.with_name(folder.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            prepare_data(spec.data, spec.seed, tmp)
            os.replace(tmp, folder)
        data[name] = folder
    return {"model": model, "data": data, "train_data": data[args.data], "peak": _peak_tflops()}


def _peak_tflops() -> float | None:
    import torch

    from bakeoff.train.flops import peak_tflops

    return peak_tflops(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None


# --------------------------------------------------------------------------------------------------------------
# One training run: the stage, or plain TRL


def stage_run(model_dir: Path | str, data_dir: Path, steps: int, method: str, warmup_steps: int = WARMUP_STEPS,
              peak: float | None = None, callbacks: tuple = (), out_dir: Path | None = None, **training) -> dict:
    """The finetune stage (setup, train, record) with a ``step_window`` (and ``callbacks``) on its trainer;
    ``peak`` in TFLOP/s; the outputs go to ``out_dir`` (a temporary folder when None)."""
    from bakeoff.train.finetune import record, setup, train
    from bakeoff.train.flops import count_parameters, effective_seq_len

    spec = spec_for(model_dir, steps, **training)
    fresh_memory()
    with tempfile.TemporaryDirectory() as tmp:
        peft = spec.peft.model_copy(update={"method": method})
        run = setup(spec.arm(ARM), spec.training, peft, data_dir, out_dir or tmp, spec.seed)
        window = step_window(warmup_steps)
        for callback in (window, *callbacks):
            run.trainer.add_callback(callback)
        seq_len = effective_seq_len(row_lengths(run.trainer.train_dataset, run.trainer.args.max_length))
        r = record(run, train(run))
        model = run.trainer.model
        counts = count_parameters(model)
        figures = method_figures(method, window.figures(), counts, model.config, seq_len, peak)
        trainable = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad})
        figures.update(planned_memory(model.config, method, spec.training, peft, run.grad_ckpt))
        figures.update({
            "stage_tokens_per_second": round(r.train_tokens / r.seconds, 1) if r.seconds else None,
            "peak_memory_gb": r.peak_memory_gb if run.device == "cuda" else None,
            "loss": [[p["step"], round(p["loss"], 5)] for p in r.loss_history["train"]],
            "final_train_loss": r.final_train_loss, "final_validation_loss": r.final_validation_loss,
            "precision": run.precision, "device": r.device, "quantization": r.quantization,
            "artifact": r.artifact, "gradient_checkpointing": run.grad_ckpt, "batching": spec.training.batching,
            "trainable_dtypes": trainable,
            "lengths": length_summary(row_lengths(run.trainer.train_dataset, run.trainer.args.max_length)),
        })
        del run, model, trainable
    fresh_memory()
    return figures


def plain_trl_run(model: str, data_dir: Path, steps: int, pad_to: int | None, warmup_steps: int = WARMUP_STEPS,
                  peak: float | None = None, batch_size: int = 8, seq_len: int = 1024) -> dict:
    """Plain TRL SFT (LoRA with the spec's peft settings, no stage code in the loop), every batch padded to
    ``pad_to`` or TRL's dynamic padding; on a GPU in bf16 with gradient checkpointing, as the stage runs there."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from bakeoff.artifacts import read_split
    from bakeoff.models import load_model, load_tokenizer
    from bakeoff.train.flops import count_parameters, effective_seq_len
    from bakeoff.train.methods import peft_config

    spec = spec_for(model, steps, batch_size=batch_size, max_seq_length=seq_len)
    gpu = torch.cuda.is_available()
    rows = read_split(data_dir, "train")
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    fresh_memory()
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch_size,
                         learning_rate=spec.training.learning_rate, max_length=pad_to or seq_len,
                         pad_to_multiple_of=pad_to, bf16=gpu, fp16=False, use_cpu=not gpu,
                         gradient_checkpointing=gpu, logging_steps=spec.training.logging_steps, save_strategy="no",
                         report_to=[], disable_tqdm=True, seed=spec.seed, dataloader_num_workers=0)
        base = load_model(model, dtype=torch.bfloat16 if gpu else torch.float32, device="cuda" if gpu else None)
        trainer = SFTTrainer(model=base, args=args, train_dataset=ds, processing_class=load_tokenizer(model),
                             peft_config=peft_config(spec.peft, base))
        trainer.remove_callback(PrinterCallback)
        window = step_window(warmup_steps)
        trainer.add_callback(window)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        lengths = row_lengths(trainer.train_dataset, None)  # real tokens: padding is added per batch
        figures = method_figures("lora", window.figures(), count_parameters(trainer.model), trainer.model.config,
                                 effective_seq_len([min(n, pad_to or seq_len) for n in lengths]), peak)
        figures.update(planned_memory(trainer.model.config, "lora", spec.training, spec.peft, gpu))
        tokens = [float(e["num_tokens"]) for e in trainer.state.log_history if "num_tokens" in e]
        figures.update({"whole_run_tokens_per_second": round(tokens[-1] / seconds, 1) if tokens else None,
                        "peak_memory_gb": peak_memory_gb(), "loss": loss_curve(trainer.state.log_history),
                        "padded_to": pad_to, "lengths": length_summary(lengths)})
        figures["final_train_loss"] = figures["loss"][-1][1] if figures["loss"] else None
        del trainer, base
    fresh_memory()
    return figures


# --------------------------------------------------------------------------------------------------------------
# The parts


class Results:
    """A part's figures, written to ``path`` after each measurement (a part stopped by its budget keeps them)."""

    def __init__(self, path: Path | None, **head):
        self.path, self.data = path, dict(head)
        self.flush()

    def set(self, key: str, value) -> None:
        self.data[key] = value
        self.flush()
        if isinstance(value, dict) and "tokens_per_second" in value:
            tps = value["tokens_per_second"]
            print(f"bench-gpu: {key}: {tps and round(tps)} real tokens/s, mfu {value['mfu']}, peak "
                  f"{value['peak_memory_gb']} GB (plan {value['planned_memory_gb']} GB), final train loss "
                  f"{value['final_train_loss']}", flush=True)
        elif isinstance(value, dict):
            print(f"bench-gpu: {key}: {json.dumps(value)[:400]}", flush=True)

    def flush(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)


def throughput_part(ctx: dict, args, out: Results) -> dict:
    """Plain TRL (padded to the sequence length, dynamic padding) and the stage (defaults, padding-free,
    packing), one after the other on the same model, data and batch; --repeats interleaves them."""
    common = dict(warmup_steps=args.warmup_steps, peak=ctx["peak"])
    training = dict(batch_size=args.batch_size, max_seq_length=args.seq_len)
    runs = {
        "trl_dynamic_padding": lambda: plain_trl_run(ctx["model"], ctx["train_data"], args.steps, None,
                                                     batch_size=args.batch_size, seq_len=args.seq_len, **common),
        "defaults": lambda: stage_run(ctx["model"], ctx["train_data"], args.steps, "lora", **common, **training),
        "naive_padded": lambda: plain_trl_run(ctx["model"], ctx["train_data"], args.steps, args.seq_len,
                                              batch_size=args.batch_size, seq_len=args.seq_len, **common),
        "padding_free": lambda: stage_run(ctx["model"], ctx["train_data"], args.steps, "lora", **common,
                                          batching="padding-free", **training),
        "packing": lambda: stage_run(ctx["model"], ctx["train_data"], args.steps, "lora", **common,
                                     batching="packing", **training),
    }
    figures: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            result = run()
            if repeat == 0 or (result["tokens_per_second"] or 0) > (figures[name]["tokens_per_second"] or 0):
                figures[name] = {**result, "repeats": repeat + 1}  # the best of the repeats
            else:
                figures[name]["repeats"] = repeat + 1
            out.set(name, figures[name])
            _speedups(out, figures)
    return out.data


def _speedups(out: Results, figures: dict) -> None:
    tps = {name: f.get("tokens_per_second") for name, f in figures.items()}
    trl = tps.get("trl_dynamic_padding")
    out.set("speedup_defaults_vs_trl", ratio(tps.get("defaults"), trl))
    out.set("speedup_defaults_vs_naive", ratio(tps.get("defaults"), tps.get("naive_padded")))
    out.set("speedup_vs_trl", {name: ratio(v, trl) for name, v in tps.items()})
    if "defaults" in figures and "trl_dynamic_padding" in figures:
        out.set("loss_max_relative_difference_defaults_vs_trl",
                curves_differ(figures["defaults"]["loss"], figures["trl_dynamic_padding"]["loss"]))


def methods_part(ctx: dict, args, out: Results) -> dict:
    """QLoRA and full fine-tuning through the stage; the QLoRA adapter is then reloaded on its 4-bit base by
    the generate stage and answers the test split on the GPU."""
    from bakeoff.generate import generate

    common = dict(warmup_steps=args.warmup_steps, peak=ctx["peak"], batch_size=args.batch_size,
                  max_seq_length=args.seq_len)
    qlora_dir = Path(args.work) / "qlora-out"
    out.set("qlora", stage_run(ctx["model"], ctx["train_data"], args.steps, "qlora", out_dir=qlora_dir, **common))
    spec = spec_for(ctx["model"], args.steps)
    started = time.perf_counter()
    summary = generate(spec.arm(ARM), spec.generation, ["fine-tuned"], ctx["train_data"], qlora_dir,
                       Path(args.work) / "qlora-gen", template=spec.data.template, method="qlora")
    out.set("qlora_round_trip", {
        "saved": sorted(p.name for p in (qlora_dir / "adapter").glob("*")) if (qlora_dir / "adapter").is_dir()
        else [], "answers": summary["samples"], "backend": summary["backend"],
        "backend_reason": summary.get("backend_reason"), "precision": summary.get("precision"),
        "device": summary.get("device"), "seconds": round(time.perf_counter() - started, 2)})
    fresh_memory()
    out.set("full", stage_run(ctx["model"], ctx["train_data"], args.steps, "full", **common))
    return out.data


def timed_answers(model, tok, ids: list[list[int]], new_tokens: int, batch_size: int) -> tuple[list[str], float]:
    from bakeoff.generate.generate import batched_greedy

    _sync()
    started = time.perf_counter()
    answers = batched_greedy(model, tok, ids, max_new_tokens=new_tokens, batch_size=batch_size)
    _sync()
    return [a["answer"] for a in answers], round(time.perf_counter() - started, 3)


def same_share(a: list[str], b: list[str]) -> float:
    return round(sum(x == y for x, y in zip(a, b, strict=True)) / len(a), 3) if a else 0.0


def generation_part(ctx: dict, args, out: Results) -> dict:
    """transformers batched (all prompts in one batch) against one prompt at a time, then vLLM."""
    import torch

    from bakeoff.artifacts import read_split
    from bakeoff.generate.backends import vllm_available
    from bakeoff.generate.generate import prompt_ids
    from bakeoff.models import load_model, load_tokenizer

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    tok = load_tokenizer(ctx["model"])
    prompts = [r["prompt"] for r in read_split(ctx["data"]["smoke"], "test")][:args.prompts]
    ids = [prompt_ids(tok, p) for p in prompts]  # the generate stage's input (one BOS, from the tokenizer)
    model = load_model(ctx["model"], dtype=dtype, device="cuda" if cuda else None).eval()
    batched, batched_s = timed_answers(model, tok, ids, args.new_tokens, len(ids))
    sequential, sequential_s = timed_answers(model, tok, ids, args.new_tokens, 1)
    out.set("transformers", {"dtype": str(dtype).removeprefix("torch."), "prompts": len(ids),
                             "new_tokens": args.new_tokens, "batched_seconds": batched_s,
                             "sequential_seconds": sequential_s, "speedup_batched_vs_sequential":
                             ratio(sequential_s, batched_s), "answers_equal": same_share(batched, sequential)})
    if not vllm_available():
        del model
        fresh_memory()
        out.set("vllm", {"status": "not installed", "note": VLLM_WAITS} if cuda else
                {"status": "needs CUDA", "note": "vLLM runs on a CUDA GPU only"})
        return out.data
    adapters = make_adapters(model, Path(args.work) / "adapters")
    out.set("vllm", vllm_vs_transformers(ctx["model"], model, tok, ids, args.new_tokens, adapters))
    return out.data


def make_adapters(model, folder: Path) -> dict[str, Path]:
    """Two LoRA adapters on the base, with non-zero (small random) B weights so they change the answers:
    ``lora-r16`` (all linear layers) and ``lora-rank-pattern`` (r 8, q_proj 32, down_proj 16)."""
    import torch
    from peft import LoraConfig, get_peft_model

    configs = {"lora-r16": LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
               "lora-rank-pattern": LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                               rank_pattern={"q_proj": 32, "down_proj": 16}, task_type="CAUSAL_LM")}
    out = {}
    for name, config in configs.items():
        peft_model = get_peft_model(model, config)
        torch.manual_seed(1)
        for pname, param in peft_model.named_parameters():
            if "lora_B" in pname:
                torch.nn.init.normal_(param, std=0.02)
        peft_model.save_pretrained(folder / name)
        model = peft_model.unload()  # the base again, without the adapter's layers
        out[name] = folder / name
    return out


def vllm_vs_transformers(model_dir: str, base, tok, ids: list[list[int]], new_tokens: int,
                         adapters: dict[str, Path]) -> dict:
    """Each adapter: transformers batched (peft on the bf16 base) against vLLM (a LoRA request), greedy."""
    import torch
    from peft import PeftModel
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    from bakeoff.generate.backends import vllm_answers, vllm_max_lora_rank

    tf = {}
    for name, path in adapters.items():
        peft_model = PeftModel.from_pretrained(base, str(path)).eval()
        tf[name] = timed_answers(peft_model, tok, ids, new_tokens, len(ids))
        base = peft_model.unload()
    del base
    fresh_memory()
    rank = max(vllm_max_lora_rank(json.loads((p / "adapter_config.json").read_text())) for p in adapters.values())
    started = time.perf_counter()
    llm = LLM(model=str(model_dir), dtype="bfloat16", enable_lora=True, max_lora_rank=rank,
              max_loras=len(adapters), gpu_memory_utilization=0.4)
    result = {"status": "ran", "startup_seconds": round(time.perf_counter() - started, 2), "adapters": {}}
    for i, (name, path) in enumerate(adapters.items(), start=1):
        started = time.perf_counter()
        answers = [a["answer"] for a in vllm_answers(llm, ids, new_tokens, LoRARequest(name, i, str(path)))]
        seconds = round(time.perf_counter() - started, 3)
        result["adapters"][name] = {"vllm_seconds": seconds, "transformers_batched_seconds": tf[name][1],
                                    "speedup_vllm_vs_transformers": ratio(tf[name][1], seconds),
                                    "answers_equal": same_share(answers, tf[name][0])}
    del llm
    torch.cuda.empty_cache()
    return result


PART_FUNCTIONS = {"throughput": throughput_part, "methods": methods_part, "generation": generation_part}


def run_part(name: str, args, out_path: Path | None) -> dict:
    import torch

    ctx = prepare(args)
    out = Results(out_path, part=name, gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  peak_bf16_tflops=ctx["peak"], steps=args.steps, warmup_steps=args.warmup_steps,
                  batch_size=args.batch_size, seq_len=args.seq_len, data=args.data,
                  model=args.model or f"{ARM} (config {CONFIG_1B}, random weights)")
    return PART_FUNCTIONS[name](ctx, args, out)


def quiet() -> None:
    """No progress bars in the parts' logs (gpu-check keeps their ends)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=(*PARTS, "all"), default="all")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS,
                        help="steps left out of the tokens/s and MFU window")
    parser.add_argument("--repeats", type=int, default=1, help="throughput runs, interleaved; the best is kept")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--data", choices=("long", "smoke"), default="long")
    parser.add_argument("--prompts", type=int, default=32, help="generation part: prompts (smoke test split)")
    parser.add_argument("--new-tokens", type=int, default=32, help="generation part: new tokens per answer")
    parser.add_argument("--work", default=None, help="keeps the model and data between parts (default: a temp dir)")
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)  # tests: tiny://llama instead of 1B
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # tests: the parts on CPU
    parser.add_argument("--out", default=None, help="default: bench/results/gpu.json, or PART.json in --work")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup_steps:
        parser.error(f"--steps ({args.steps}) must exceed --warmup-steps ({args.warmup_steps})")
    return args


def main(argv: list[str] | None = None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("bench-gpu needs a CUDA GPU; none is visible", file=sys.stderr)
        return {}
    logging.disable(logging.WARNING)
    quiet()
    os.environ.setdefault("BAKEOFF_CACHE", tempfile.mkdtemp(prefix="bakeoff-bench-"))
    args.work = args.work or tempfile.mkdtemp(prefix="bakeoff-gpu-")
    if args.part != "all":
        out = Path(args.out) if args.out else Path(args.work) / f"{args.part}.json"
        return run_part(args.part, args, out)
    results = {name: run_part(name, args, None) for name in PARTS}
    out = Path(args.out or ROOT / "bench" / "results" / "gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

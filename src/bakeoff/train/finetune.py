"""The finetune stage: LoRA through peft + TRL's SFTTrainer, on CPU or GPU.

Output folder: ``adapter/`` (the PEFT adapter and the tokenizer), ``loss_history.json`` and
``training.json`` (the arm,
wall time, steps, trained tokens, device, GPU-hours, cost and the loss history: train loss at every
logging step, validation loss at every evaluation).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bakeoff.data.prepare import read_split
from bakeoff.errors import Preempted, SpecError, TrainingError
from bakeoff.models.loading import load_model, load_tokenizer, pick_device
from bakeoff.spec import ArmSpec, CostSpec, PeftSpec, TrainingSpec
from bakeoff.train.checkpoints import CheckpointStore
from bakeoff.train.methods import check_method, peft_config, quantization_config

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What one fine-tuning run did and cost; written as ``training.json``."""

    arm: str
    model: str
    method: str
    seconds: float
    steps: int
    epochs: float
    train_tokens: int
    tokens_per_second: float
    device: str
    gpu_type: str | None
    gpu_count: int
    gpu_hours: float
    cost_usd: float | None
    trainable_params: int
    total_params: int
    final_train_loss: float | None
    final_validation_loss: float | None
    loss_history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    best_step: int | None = None
    best_validation_loss: float | None = None
    peak_memory_gb: float | None = None
    resumed_from_step: int | None = None
    artifact: str = "adapter"  # "adapter" (PEFT methods) or "model" (full fine-tuning)
    quantization: str | None = None
    world_size: int = 1  # processes (one per GPU) that trained together
    distributed: str | None = None  # "ddp" or "fsdp" when world_size > 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Scalar figures for KFP Metrics (no None values), the validation curve as one scalar per evaluation."""
        keys = ("seconds", "steps", "train_tokens", "tokens_per_second", "gpu_hours", "cost_usd",
                "trainable_params", "final_train_loss", "final_validation_loss", "best_step",
                "best_validation_loss", "peak_memory_gb")
        out = {k: float(getattr(self, k)) for k in keys if getattr(self, k) is not None}
        for point in self.loss_history.get("validation", []):
            out[f"validation_loss/step_{point['step']:06d}"] = float(point["loss"])
        return out


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on CPU."""
    import torch

    if precision != "auto":
        if device == "cpu" and precision == "fp16":
            raise SpecError("training.precision: fp16 needs a CUDA device; use fp32 or auto on CPU")
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _progress_callback():
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One log line per logging step: step / total, loss, tokens/s since the last line, ETA."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = self.last_time = time.perf_counter()
            self.start_step, self.last_tokens = state.global_step, None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            now = time.perf_counter()
            tokens = float(logs.get("num_tokens", 0))
            rate = (tokens - self.last_tokens) / (now - self.last_time) if self.last_tokens is not None else None
            self.last_time, self.last_tokens = now, tokens
            done = state.global_step - self.start_step
            eta = (now - self.started) / done * (state.max_steps - state.global_step) if done else 0.0
            log.info("step %d/%d (%d%%) loss %.4f, %s tokens/s, ETA %s", state.global_step, state.max_steps,
                     100 * state.global_step // max(state.max_steps, 1), float(logs["loss"]),
                     f"{rate:.0f}" if rate is not None else "-", time.strftime("%H:%M:%S", time.gmtime(eta)))

    return Progress()


def _checkpoint_callback(store: CheckpointStore, stop: dict[str, bool]):
    from transformers import TrainerCallback

    class Checkpoints(TrainerCallback):
        """Mark each saved checkpoint complete (and mirror it); on SIGTERM save once more and stop."""

        def on_save(self, args, state, control, **kwargs):
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # every rank has written its part of the checkpoint
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and path.is_dir():
                store.mark_complete(path)

        def on_step_end(self, args, state, control, **kwargs):
            if stop["requested"]:
                control.should_save = True
                control.should_training_stop = True

    return Checkpoints()


def history_from(log_history: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Train loss per logging step and validation loss per evaluation, from the Trainer's log history.

    It survives a resume (the Trainer keeps it in every checkpoint).
    """
    history: dict[str, list[dict[str, float]]] = {"train": [], "validation": []}
    for entry in log_history:
        point = {"step": int(entry.get("step", 0)), "epoch": float(entry.get("epoch", 0))}
        if "loss" in entry:
            history["train"].append({**point, "loss": float(entry["loss"])})
        if "eval_loss" in entry:
            history["validation"].append({**point, "loss": float(entry["eval_loss"])})
    return history


def _peak_memory_gb(device: str) -> float:
    """Peak GPU memory allocated (CUDA), or the process's peak resident memory (CPU), in GB."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KB on Linux


def _model_card(result: TrainResult, peft: PeftSpec) -> str:
    best = f", best validation loss {result.best_validation_loss:.4f} at step {result.best_step}" \
        if result.best_validation_loss is not None else ""
    return (
        f"# {result.arm}\n\nFine-tuned by bakeoff from `{result.model}` with {peft.method}"
        f" (r={peft.r}, alpha={peft.alpha:g}, dropout={peft.dropout:g}, targets={peft.target_modules})"
        if peft.method in ("lora", "qlora") else f"# {result.arm}\n\nFine-tuned by bakeoff from "
        f"`{result.model}` with {peft.method}"
    ) + (
        f".\n\n{result.steps} optimizer steps ({result.epochs:.2f} epochs), {result.train_tokens} trained tokens, "
        f"{result.seconds:.0f} s on {result.gpu_count or 'no'} GPU ({result.gpu_type or result.device}){best}.\n\n"
        "`training_config.json` holds the resolved settings; `training.json` the loss history and accounting.\n"
    )


def finetune(
    arm: ArmSpec,
    training: TrainingSpec,
    peft: PeftSpec,
    data_dir: str | Path,
    out_dir: str | Path,
    seed: int = 42,
    cost: CostSpec | None = None,
    checkpoint_uri: str | None = None,
) -> TrainResult:
    """Fine-tune ``arm.model`` on ``data_dir``'s train split, evaluating on its validation split.

    Checkpoints go to ``checkpoint_uri`` (a path or ``s3://``; default a folder inside ``out_dir``) and a
    rerun resumes from the newest complete one. On SIGTERM a checkpoint is saved and ``Preempted`` raised.
    """
    import torch
    from datasets import Dataset
    from peft import prepare_model_for_kbit_training
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    check_method(peft, device)
    precision = resolve_precision(training.precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)

    def split(name: str) -> Dataset:
        rows = read_split(data_dir, name)
        if rows and "messages" in rows[0]:  # the chat template: TRL applies the tokenizer's own
            return Dataset.from_list([{"prompt": r["messages"], "completion": [
                {"role": "assistant", "content": r["reference"]}]} for r in rows])
        return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])

    train_ds, val_ds = split("train"), split("validation")
    tokenizer = load_tokenizer(arm.model, trust_remote_code=arm.trust_remote_code)
    grad_ckpt = device == "cuda" if training.gradient_checkpointing == "auto" else training.gradient_checkpointing
    quant = quantization_config(dtype) if peft.method == "qlora" else None
    # fp16 training needs fp32 master weights; bf16 trains in bf16 directly.
    model = load_model(arm.model, dtype=torch.float32 if precision == "fp16" else dtype,
                       trust_remote_code=arm.trust_remote_code, device=device if quant else None,
                       quantization_config=quant)
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_ckpt)
    method_config = peft_config(peft, model.config.model_type)

    local_ckpt = Path(checkpoint_uri) if checkpoint_uri and "://" not in checkpoint_uri else out / "checkpoints"
    store = CheckpointStore(local_ckpt, checkpoint_uri)
    discarded = store.discard_incomplete()
    if discarded:
        log.warning("discarded incomplete checkpoints %s (cut short before they were marked complete)", discarded)
    resume = store.latest()
    save_steps = training.checkpoint_steps or training.eval_steps
    fsdp = _fsdp_args(training, grad_ckpt)
    args = SFTConfig(
        output_dir=str(local_ckpt),
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        warmup_steps=training.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=training.lr_scheduler,
        weight_decay=training.weight_decay,
        # TRL does not truncate padding-free batches; rows are bounded by data.max_instruction_tokens instead
        max_length=None if training.batching == "padding-free" else training.max_seq_length,
        padding_free=training.batching == "padding-free",
        packing=training.batching == "packing",
        train_sampling_strategy="group_by_length" if training.group_by_length else "random",
        **fsdp,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        gradient_checkpointing=grad_ckpt and not fsdp,
        logging_steps=training.logging_steps,
        eval_strategy="steps",
        eval_steps=training.eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,  # with keep_best the Trainer never deletes the best one
        load_best_model_at_end=training.keep_best,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        report_to=[],
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    stop = {"requested": False}
    callbacks = [_progress_callback(), _checkpoint_callback(store, stop)]
    if training.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training.early_stopping_patience))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                         processing_class=tokenizer, peft_config=method_config, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # our progress lines replace its raw dict prints
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def on_sigterm(signum, frame):
        log.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")
        stop["requested"] = True

    previous = signal.signal(signal.SIGTERM, on_sigterm) if threading.current_thread() is threading.main_thread() \
        else None
    started = time.perf_counter()
    try:
        if resume is not None:
            log.info("resuming from %s", resume)
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    except torch.OutOfMemoryError as exc:
        raise TrainingError(
            f"arm {arm.name}: out of {device} memory during training ({exc}); lower training.batch_size "
            "(raise gradient_accumulation_steps to keep the effective batch), lower max_seq_length, turn "
            "gradient_checkpointing on, or use peft.method qlora"
        ) from exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    seconds = time.perf_counter() - started
    if stop["requested"]:
        raise Preempted(f"arm {arm.name}: stopped by SIGTERM at step {trainer.state.global_step}; "
                        "the checkpoint is saved and a rerun resumes from it")

    steps = int(trainer.state.global_step)
    world_size = int(trainer.args.world_size)
    main_process = trainer.is_world_process_zero()
    history = history_from(trainer.state.log_history)
    resumed_from = _step_of(resume)
    if resumed_from is not None:
        history["resumed_at"] = [{"step": resumed_from}]
    best = min(history["validation"], key=lambda p: p["loss"]) if history["validation"] else None

    artifact = "adapter" if method_config is not None else "model"
    saved = out / artifact
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    gpu_count = world_size if device == "cuda" else 0  # one GPU per process
    gpu_type = torch.cuda.get_device_name(0) if gpu_count else None
    gpu_hours = seconds / 3600 * gpu_count
    price = cost.gpu_hour_usd if cost else None
    train_tokens = int(trainer.state.num_input_tokens_seen or 0) or _logged_tokens(trainer.state.log_history)
    result = TrainResult(
        arm=arm.name,
        model=arm.model,
        method=peft.method,
        seconds=round(seconds, 3),
        steps=steps,
        epochs=float(trainer.state.epoch or 0),
        train_tokens=train_tokens,
        tokens_per_second=round(train_tokens / seconds, 2) if seconds > 0 else 0.0,
        device=device,
        gpu_type=gpu_type,
        gpu_count=gpu_count,
        gpu_hours=round(gpu_hours, 6),
        # On CPU there are no GPU-hours to price: the cost is 0 only when a price is given.
        cost_usd=round(gpu_hours * price, 6) if price is not None else None,
        trainable_params=trainable,
        total_params=total,
        final_train_loss=history["train"][-1]["loss"] if history["train"] else None,
        final_validation_loss=history["validation"][-1]["loss"] if history["validation"] else None,
        loss_history=history,
        hyperparameters={"training": training.model_dump(mode="json"), "peft": peft.model_dump(mode="json"),
                         "precision": precision, "gradient_checkpointing": grad_ckpt,
                         "warmup_steps": math.ceil(training.warmup_ratio * steps)},
        best_step=int(best["step"]) if best and training.keep_best else steps,
        best_validation_loss=best["loss"] if best else None,
        peak_memory_gb=round(_peak_memory_gb(device), 3),
        resumed_from_step=resumed_from,
        artifact=artifact,
        quantization="nf4-double-quant" if quant is not None else None,
        world_size=world_size,
        distributed=("fsdp" if trainer.is_fsdp_enabled else "ddp") if world_size > 1 else None,
    )
    if not main_process:
        return result  # rank 0 writes the outputs
    trainer.model.save_pretrained(saved, safe_serialization=True)
    tokenizer.save_pretrained(saved)
    if training.save_merged and method_config is not None:
        _save_merged(arm, saved, out / "merged", dtype)
    (out / "training.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    (out / "loss_history.json").write_text(json.dumps(history, indent=2) + "\n")
    config = {"sft_config": {k: v for k, v in args.to_dict().items() if _jsonable(v)},
              "peft_config": method_config.to_dict() if method_config is not None else None}
    (saved / "training_config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    (saved / "README.md").write_text(_model_card(result, peft))
    if checkpoint_uri is None or store.remote:
        # the result is saved (and remote checkpoints are on S3): don't ship local copies in the artifact
        shutil.rmtree(local_ckpt, ignore_errors=True)
    log.info("arm %s: %d steps in %.1f s, best validation loss %s at step %s", arm.name, steps, seconds,
             result.best_validation_loss, result.best_step)
    return result


def _fsdp_args(training: TrainingSpec, grad_ckpt: bool) -> dict[str, Any]:
    """FSDP settings when the spec asks for sharding and several processes run (torchrun); else none."""
    import os

    if training.distributed != "fsdp" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return {}
    # activation checkpointing belongs to FSDP here; the Trainer's own would checkpoint twice
    # FSDP2, fully sharded, wrapping each transformer block (the Trainer's default policy)
    return {"fsdp": True, "fsdp_config": {"reshard_after_forward": True, "activation_checkpointing": bool(grad_ckpt)}}


def _save_merged(arm: ArmSpec, adapter_dir: Path, merged_dir: Path, dtype) -> None:
    """The adapter merged into a freshly loaded 16-bit base (never into a 4-bit one)."""
    import torch
    from peft import PeftModel

    base = load_model(arm.model, dtype=dtype if dtype != torch.float32 else torch.bfloat16,
                      trust_remote_code=arm.trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(merged_dir, safe_serialization=True)
    load_tokenizer(arm.model, trust_remote_code=arm.trust_remote_code).save_pretrained(merged_dir)


def _step_of(checkpoint: Path | None) -> int | None:
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint is not None else None


def _logged_tokens(log_history: list[dict[str, Any]]) -> int:
    counts = [float(e["num_tokens"]) for e in log_history if "num_tokens" in e]
    return int(counts[-1]) if counts else 0


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def read_training(model_dir: str | Path) -> dict[str, Any]:
    """The ``training.json`` a finetune run wrote into ``model_dir``."""
    return json.loads((Path(model_dir) / "training.json").read_text())

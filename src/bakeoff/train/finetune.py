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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bakeoff.data.prepare import read_split
from bakeoff.errors import SpecError
from bakeoff.models.loading import load_model, load_tokenizer, pick_device
from bakeoff.spec import ArmSpec, CostSpec, PeftSpec, TrainingSpec

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Scalar figures for KFP Metrics (no None values)."""
        keys = ("seconds", "steps", "train_tokens", "tokens_per_second", "gpu_hours", "cost_usd",
                "trainable_params", "final_train_loss", "final_validation_loss")
        return {k: float(getattr(self, k)) for k in keys if getattr(self, k) is not None}


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


def lora_config(peft: PeftSpec):
    """The peft ``LoraConfig`` for the spec's settings."""
    from peft import LoraConfig

    return LoraConfig(
        r=peft.r,
        lora_alpha=peft.alpha,
        lora_dropout=peft.dropout,
        target_modules=peft.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _loss_callback(history: dict[str, list[dict[str, float]]], tokens: list[int]):
    from transformers import TrainerCallback

    class LossHistory(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            step = int(state.global_step)
            if "loss" in logs:
                history["train"].append(
                    {"step": step, "loss": float(logs["loss"]), "epoch": float(logs.get("epoch", 0))}
                )
            if "eval_loss" in logs:
                history["validation"].append({"step": step, "loss": float(logs["eval_loss"]),
                                              "epoch": float(logs.get("epoch", 0))})
            if "num_tokens" in logs:
                tokens.append(int(float(logs["num_tokens"])))

    return LossHistory()


def finetune(
    arm: ArmSpec,
    training: TrainingSpec,
    peft: PeftSpec,
    data_dir: str | Path,
    out_dir: str | Path,
    seed: int = 42,
    cost: CostSpec | None = None,
) -> TrainResult:
    """Fine-tune ``arm.model`` on ``data_dir``'s train split, evaluating on its validation split."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device()
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
    # fp16 training needs fp32 master weights; bf16 trains in bf16 directly.
    model = load_model(arm.model, dtype=torch.float32 if precision == "fp16" else dtype,
                       trust_remote_code=arm.trust_remote_code)
    grad_ckpt = device == "cuda" if training.gradient_checkpointing == "auto" else training.gradient_checkpointing
    args = SFTConfig(
        output_dir=str(out / "trainer"),
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        warmup_steps=training.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=training.lr_scheduler,
        weight_decay=training.weight_decay,
        max_length=training.max_seq_length,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        gradient_checkpointing=grad_ckpt,
        logging_steps=training.logging_steps,
        eval_strategy="steps",
        eval_steps=training.eval_steps,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    history: dict[str, list[dict[str, float]]] = {"train": [], "validation": []}
    tokens: list[int] = []
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=lora_config(peft),
        callbacks=[_loss_callback(history, tokens)],
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    steps = int(trainer.state.global_step)
    if not history["validation"] or history["validation"][-1]["step"] != steps:
        trainer.evaluate()  # the curve always ends with the final model's validation loss
    seconds = time.perf_counter() - started

    adapter_dir = out / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    gpu_count = torch.cuda.device_count() if device == "cuda" else 0
    gpu_type = torch.cuda.get_device_name(0) if gpu_count else None
    gpu_hours = seconds / 3600 * gpu_count
    price = cost.gpu_hour_usd if cost else None
    train_tokens = tokens[-1] if tokens else 0
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
    )
    (out / "training.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    (out / "loss_history.json").write_text(json.dumps(history, indent=2) + "\n")
    log.info("arm %s: %d steps in %.1f s, final validation loss %s", arm.name, steps, seconds,
             result.final_validation_loss)
    return result


def read_training(model_dir: str | Path) -> dict[str, Any]:
    """The ``training.json`` a finetune run wrote into ``model_dir``."""
    return json.loads((Path(model_dir) / "training.json").read_text())

"""The finetune stage in this process: LoRA, QLoRA, IA3 or full fine-tuning through peft and TRL's
SFTTrainer, on CPU or GPU, in three steps as the best training recipes have them:

- ``setup``: the splits, the tokenizer, the model (4-bit for QLoRA), the method's peft config, the
  training's fingerprint, the checkpoint store (and the checkpoint of the same fingerprint to resume
  from) and the trainer;
- ``train``: the training loop, with a checkpoint saved and ``Preempted`` raised on SIGTERM or SIGINT;
- ``record``: what the run did and cost (``bakeoff.artifacts.TrainResult``) and, on rank 0, the
  outputs in the model layout of ``bakeoff.artifacts`` (``adapter/`` or ``model/``, ``training.json``,
  ``loss_history.json``, a model card and the resolved settings).

Several processes (torchrun, through ``bakeoff.train.worker``) each run the three steps; rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakeoff.artifacts import ADAPTER_DIR, FULL_MODEL_DIR, MERGED_DIR, TrainResult, read_split, write_training
from bakeoff.errors import Preempted, TrainingError
from bakeoff.models.loading import (
    load_model,
    load_tokenizer,
    pick_device,
    quantization_config,
    resolve_precision,
    torch_dtype,
)
from bakeoff.spec import ArmSpec, CostSpec, PeftSpec, TrainingSpec
from bakeoff.train.checkpoints import CheckpointStore, complete_local
from bakeoff.train.flops import count_parameters
from bakeoff.train.methods import check_method, peft_config
from bakeoff.train.tokens import check_one_bos, sft_row, training_view

log = logging.getLogger(__name__)


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


def _checkpoint_callback(store: CheckpointStore, stop: dict[str, Any], accounting):
    from transformers import TrainerCallback

    class Checkpoints(TrainerCallback):
        """Mark each saved checkpoint complete (and mirror it); on SIGTERM or SIGINT save once more and stop."""

        def on_save(self, args, state, control, **kwargs):
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # every rank has written its part of the checkpoint
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and path.is_dir():
                # what the run has spent so far travels with the checkpoint, so a resumed run adds to it
                (path / ACCOUNTING).write_text(json.dumps(accounting.totals()))
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
    """Peak GPU memory allocated (CUDA), or the process's peak resident memory (CPU), in GB.

    On Linux the CPU figure is ``VmHWM`` of /proc/self/status, the high-water mark of this program's own
    memory: ``ru_maxrss`` also counts the parent's pages a forked child held before it exec'd this program (a
    stage started from a large process, such as a test run, would report the parent's size)."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9  # kB
    except (OSError, ValueError, IndexError):
        pass
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


@dataclass
class Run:
    """What ``setup`` prepared for ``train`` and ``record``."""

    arm: ArmSpec
    training: TrainingSpec
    peft: PeftSpec
    out: Path
    device: str
    precision: str
    dtype: Any
    grad_ckpt: bool
    quantized: bool
    method_config: Any  # the peft config, None for full fine-tuning
    tokenizer: Any
    trainer: Any
    store: CheckpointStore
    local_ckpt: Path
    checkpoint_uri: str | None
    resume: Path | None
    stop: dict[str, Any]
    accounting: Accounting
    rows: dict[str, int]
    resume_status: str = "fresh"  # "resumed from step N", "fresh", or "fresh: <why not the earlier checkpoint>"
    fingerprint_changed: list[str] | None = None  # what differs from the earlier checkpoint's fingerprint


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

    Checkpoints go to ``checkpoint_uri`` (a path or ``s3://``; default a folder inside ``out_dir``), under
    the training's fingerprint, and a rerun of the same training resumes from the newest complete one. On
    SIGTERM or SIGINT a checkpoint is saved and ``Preempted`` raised.
    """
    run = setup(arm, training, peft, data_dir, out_dir, seed, checkpoint_uri)
    seconds = train(run)
    return record(run, seconds, cost)


def _datasets(data_dir: str | Path):
    """The train and validation splits as prompt/completion datasets (completion-only loss), the prepared
    train rows, and the hash of both splits' content (for the fingerprint)."""
    from datasets import Dataset

    rows = {name: read_split(data_dir, name) for name in ("train", "validation")}
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return (*(Dataset.from_list([sft_row(r) for r in rows[name]]) for name in ("train", "validation")),
            rows["train"], digest)


# Training settings that change where and how often checkpoints and log lines are written, not the training.
_NOT_IN_FINGERPRINT = frozenset({"checkpoint_uri", "checkpoint_steps", "logging_steps", "save_merged"})


def fingerprint_parts(arm: ArmSpec, training: TrainingSpec, peft: PeftSpec, seed: int, data_digest: str,
                      precision: str, grad_ckpt: bool, model=None) -> dict[str, Any]:
    """What determines a training, part by part: the model (and the Hub commit or tiny build it loaded), the
    training and PEFT settings as resolved, the splits' content, the seed, the number of processes and the
    versions of the libraries that change the numerics. A checkpoint is resumed only by an equal one."""
    import peft as peft_lib
    import torch
    import transformers
    import trl

    if arm.model.startswith("tiny://"):
        from bakeoff.models.tiny import BUILD_VERSION

        revision = f"tiny-build-{BUILD_VERSION}"
    else:
        revision = getattr(getattr(model, "config", None), "_commit_hash", None)
    parts: dict[str, Any] = {"model": arm.model, "model_revision": revision, "trust_remote_code": arm.trust_remote_code}
    parts.update({k: v for k, v in training.model_dump(mode="json").items() if k not in _NOT_IN_FINGERPRINT})
    parts.update({"precision": precision, "gradient_checkpointing": grad_ckpt})  # resolved, not "auto"
    parts.update({f"peft.{k}": v for k, v in peft.model_dump(mode="json").items()})
    parts.update({"data": data_digest, "seed": seed, "world_size": int(os.environ.get("WORLD_SIZE", "1"))})
    parts.update({f"version.{lib.__name__}": lib.__version__ for lib in (torch, transformers, peft_lib, trl)})
    return parts


def _checkpoints(arm: ArmSpec, out: Path, checkpoint_uri: str | None, parts: dict[str, Any]):
    """The arm's checkpoint store for this fingerprint, the checkpoint to resume from (or None), and what
    to report: "resumed from step N", or why the training starts fresh (with what changed)."""
    root = Path(checkpoint_uri) if checkpoint_uri and "://" not in checkpoint_uri else out / "checkpoints"
    store = CheckpointStore(root, checkpoint_uri, parts)
    discarded = store.discard_incomplete()
    if discarded:
        log.warning("discarded incomplete checkpoints %s (cut short before they were marked complete)", discarded)
    resume = store.latest()
    if resume is not None:
        return store, resume, f"resumed from step {_step_of(resume)}", None
    earlier = store.earlier()
    if earlier is None:
        return store, None, "fresh", None
    status = f"fresh: {earlier.reason(parts)}"
    log.warning("arm %s: training from the start, not from the %s; that one is kept, this training's "
                "checkpoints go to %s", arm.name, earlier.reason(parts), store.uri or store.local_dir)
    return store, None, status, earlier.changed(parts) if earlier.parts is not None else None


def rank_device(device: str) -> str:
    """This process's device: with several processes (torchrun) each rank's own GPU, ``cuda:LOCAL_RANK``,
    so a 4-bit model (placed as it loads) is not put on ``cuda:0`` by every rank."""
    import os

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if device == "cuda" else device


def _load_model(arm: ArmSpec, peft: PeftSpec, device: str, precision: str, dtype, grad_ckpt: bool,
                fsdp: bool = False):
    """The base model as the method trains it (4-bit NF4 for QLoRA) and the method's peft config.

    Full fine-tuning keeps fp32 master weights: the model loads in fp32 and trains under the Trainer's bf16
    (or fp16) autocast, since in bf16 weights most AdamW updates at a 2.5e-5 learning rate round away. LoRA,
    QLoRA and IA3 keep a bf16 base (peft keeps the adapter weights in fp32); fp16 training needs fp32 weights.
    """
    import torch
    from peft import prepare_model_for_kbit_training

    from bakeoff.train.methods import check_model_config

    if peft.method == "ia3":
        check_model_config(peft, _model_config(arm))  # refused before the weights load
    # FSDP shards the 4-bit weights only when they are stored in the compute dtype (bnb_4bit_quant_storage)
    quant = quantization_config(dtype, quant_storage=dtype if fsdp else None) if peft.method == "qlora" else None
    master = torch.float32 if precision == "fp16" or peft.method == "full" else dtype
    model = load_model(arm.model, dtype=master, trust_remote_code=arm.trust_remote_code,
                       device=rank_device(device) if quant else None, quantization_config=quant)
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_ckpt)
    return model, peft_config(peft, model)


def _sft_config(training: TrainingSpec, out_dir: Path, seed: int, device: str, precision: str, grad_ckpt: bool,
                peft: PeftSpec):
    """TRL's SFTConfig for the spec's training settings, at the method's learning rate
    (``bakeoff.spec.training.method_learning_rate``) and with the spec's optimizer."""
    from trl import SFTConfig

    from bakeoff.spec.training import method_learning_rate
    from bakeoff.train.methods import check_optimizer

    optim = check_optimizer(training, device)
    fsdp = _fsdp_args(training, grad_ckpt)
    return SFTConfig(
        output_dir=str(out_dir),
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=method_learning_rate(training, peft),
        optim=optim,
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
        save_steps=training.checkpoint_steps or training.eval_steps,
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


def setup(arm: ArmSpec, training: TrainingSpec, peft: PeftSpec, data_dir: str | Path, out_dir: str | Path,
          seed: int = 42, checkpoint_uri: str | None = None) -> Run:
    """Everything training needs, loaded and checked: fails (with what to change) before the first step."""
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTTrainer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    check_method(peft, device)
    precision = resolve_precision(training.precision, device)
    dtype = torch_dtype(precision)
    train_ds, val_ds, train_rows, data_digest = _datasets(data_dir)
    tokenizer = load_tokenizer(arm.model, trust_remote_code=arm.trust_remote_code)
    if train_rows:  # one BOS, added one way: refuse a template that writes the tokenizer's own again
        check_one_bos(tokenizer, training_view(tokenizer, train_rows[0], None)["input_ids"], f"arm {arm.name}")
    grad_ckpt = device == "cuda" if training.gradient_checkpointing == "auto" else training.gradient_checkpointing
    model, method_config = _load_model(arm, peft, device, precision, dtype, grad_ckpt,
                                       fsdp=bool(_fsdp_args(training, grad_ckpt)))

    parts = fingerprint_parts(arm, training, peft, seed, data_digest, precision, grad_ckpt, model)
    store, resume, resume_status, changed = _checkpoints(arm, out, checkpoint_uri, parts)
    local_ckpt = store.local_dir
    stop = {"requested": False, "signal": None}
    accounting = Accounting(prior=read_accounting(resume))
    callbacks = [_progress_callback(), _checkpoint_callback(store, stop, accounting)]
    if training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training.early_stopping_patience))
    trainer = SFTTrainer(model=model, args=_sft_config(training, local_ckpt, seed, device, precision, grad_ckpt, peft),
                         train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
                         peft_config=method_config, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # our progress lines replace its raw dict prints
    accounting.trainer = trainer
    return Run(arm=arm, training=training, peft=peft, out=out, device=device, precision=precision, dtype=dtype,
               grad_ckpt=grad_ckpt, quantized=peft.method == "qlora", method_config=method_config,
               tokenizer=tokenizer, trainer=trainer, store=store, local_ckpt=local_ckpt,
               checkpoint_uri=checkpoint_uri, resume=resume, stop=stop, accounting=accounting,
               rows=row_counts(train_rows, trainer.train_dataset, training), resume_status=resume_status,
               fingerprint_changed=changed)


def _on_stop_signal(run: Run):
    """The SIGTERM and SIGINT handler while training: ask for a checkpoint at the end of this step and a stop.
    A second SIGINT (Ctrl-C again) interrupts at once; a second SIGTERM changes nothing."""

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if run.stop["requested"]:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        log.warning("%s: saving a checkpoint at the end of this step, then stopping", name)
        run.stop.update(requested=True, signal=name)

    return handler


def train(run: Run) -> float:
    """Train (resuming from ``run.resume``); the seconds it took. On SIGTERM or SIGINT: save a checkpoint and
    raise ``Preempted``; out of memory: a TrainingError saying what to lower."""
    import torch

    if run.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _on_stop_signal(run)) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = time.perf_counter()
    run.accounting.start()
    try:
        if run.resume is not None:
            log.info("resuming from %s", run.resume)
        run.trainer.train(resume_from_checkpoint=str(run.resume) if run.resume is not None else None)
    except torch.OutOfMemoryError as exc:
        raise TrainingError(
            f"arm {run.arm.name}: out of {run.device} memory during training ({exc}); lower training.batch_size "
            "(raise gradient_accumulation_steps to keep the effective batch), lower max_seq_length, turn "
            "gradient_checkpointing on, or use peft.method qlora"
        ) from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    state = run.trainer.state
    if run.stop["requested"] and state.global_step < state.max_steps:
        raise _stopped(run)  # (a stop asked for after the last step lets the finished training be recorded)
    return time.perf_counter() - started


def _stopped(run: Run) -> Preempted:
    """What a stopped training says: the step, where its checkpoint is, and whether a rerun can resume from it
    (``saved``, for the local runner's last line)."""
    step = int(run.trainer.state.global_step)
    complete = complete_local(run.store.local_dir)
    where = run.store.location(complete[-1][0] if complete else step)
    kept = run.checkpoint_uri is not None
    how = "a rerun resumes from it" if kept else \
        "a rerun of this stage into the same output resumes from it (set training.checkpoint_uri to keep it apart)"
    exc = Preempted(f"arm {run.arm.name}: stopped by {run.stop['signal']} at step {step}; the checkpoint is saved "
                    f"({where}) and {how}")
    exc.saved = {"arm": run.arm.name, "step": step, "checkpoint": where, "kept": kept}
    return exc


ACCOUNTING = "bakeoff_accounting.json"  # in each checkpoint: what the run had spent when it was saved


@dataclass
class Accounting:
    """Training time apart from evaluation time, and trained tokens, summed over the segments of a run that
    was resumed (TRL's token counter and the wall clock start again at zero in each segment)."""

    prior: dict[str, float]
    trainer: Any = None
    started: float = 0.0
    eval_seconds: float = 0.0

    def start(self) -> None:
        """Start the clock, and time every evaluation the trainer runs (outside the training time)."""
        self.started = time.perf_counter()
        evaluate = self.trainer.evaluate

        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return evaluate(*args, **kwargs)
            finally:
                self.eval_seconds += time.perf_counter() - began

        self.trainer.evaluate = timed

    def totals(self) -> dict[str, float]:
        segment = time.perf_counter() - self.started
        tokens = getattr(self.trainer, "_total_train_tokens", None)  # TRL's count of non-pad tokens this segment
        if tokens is None:
            tokens = int(self.trainer.state.num_input_tokens_seen or 0) or _logged_tokens(
                self.trainer.state.log_history)
        return {"train_seconds": self.prior.get("train_seconds", 0.0) + segment - self.eval_seconds,
                "eval_seconds": self.prior.get("eval_seconds", 0.0) + self.eval_seconds,
                "tokens": int(self.prior.get("tokens", 0) + tokens),
                "segments": int(self.prior.get("segments", 0)) + 1}


def read_accounting(checkpoint: Path | None) -> dict[str, float]:
    """What the run had spent when ``checkpoint`` was saved (nothing for a fresh run)."""
    path = checkpoint / ACCOUNTING if checkpoint is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def row_counts(rows: list[dict], dataset, training: TrainingSpec) -> dict[str, int]:
    """What TRL did with the train split's rows: kept, dropped (truncation left no completion token to
    learn from) and cut at max_seq_length (rows exactly that long are counted too)."""
    if training.batching == "packing":  # packing chunks rows into windows: nothing is dropped or cut
        return {"train": len(rows), "trained": len(rows), "dropped_no_completion": 0, "at_max_length": 0}
    lengths = [len(ids) for ids in dataset["input_ids"]]
    limit = None if training.batching == "padding-free" else training.max_seq_length
    return {"train": len(rows), "trained": len(lengths), "dropped_no_completion": len(rows) - len(lengths),
            "at_max_length": sum(1 for n in lengths if limit and n >= limit)}


def record(run: Run, seconds: float, cost: CostSpec | None = None) -> TrainResult:
    """What the run did and cost; rank 0 also writes the outputs (the other ranks only return it)."""
    result = _result(run, seconds, cost)
    if run.trainer.is_world_process_zero():
        _save(run, result)
        log.info("arm %s: %d steps in %.1f s, best validation loss %s at step %s", run.arm.name, result.steps,
                 seconds, result.best_validation_loss, result.best_step)
    return result


def _result(run: Run, seconds: float, cost: CostSpec | None) -> TrainResult:
    import torch

    trainer, training = run.trainer, run.training
    steps = int(trainer.state.global_step)
    world_size = int(trainer.args.world_size)
    history = history_from(trainer.state.log_history)
    resumed_from = _step_of(run.resume)
    if resumed_from is not None:
        history["resumed_at"] = [{"step": resumed_from}]
    best = min(history["validation"], key=lambda p: p["loss"]) if history["validation"] else None
    gpu_count = world_size if run.device == "cuda" else 0  # one GPU per process
    spent = run.accounting.totals()  # every segment of a resumed run; evaluation apart
    seconds = spent["train_seconds"]
    gpu_hours = seconds / 3600 * gpu_count
    price = cost.gpu_hour_usd if cost else None
    train_tokens = spent["tokens"]
    return TrainResult(
        arm=run.arm.name, model=run.arm.model, method=run.peft.method, seconds=round(seconds, 3), steps=steps,
        evaluation_seconds=round(spent["eval_seconds"], 3), segments=spent["segments"], rows=run.rows,
        epochs=float(trainer.state.epoch or 0), train_tokens=train_tokens,
        tokens_per_second=round(train_tokens / seconds, 2) if seconds > 0 else 0.0,
        device=run.device, gpu_type=torch.cuda.get_device_name(0) if gpu_count else None, gpu_count=gpu_count,
        gpu_hours=round(gpu_hours, 6),
        # On CPU there are no GPU-hours to price: the cost is 0 only when a price is given.
        cost_usd=round(gpu_hours * price, 6) if price is not None else None,
        trainable_params=count_parameters(trainer.model)["trainable"],
        total_params=count_parameters(trainer.model)["total"],  # 4-bit weights counted whole
        final_train_loss=history["train"][-1]["loss"] if history["train"] else None,
        final_validation_loss=history["validation"][-1]["loss"] if history["validation"] else None,
        loss_history=history,
        hyperparameters={"training": training.model_dump(mode="json"), "peft": run.peft.model_dump(mode="json"),
                         "precision": run.precision, "gradient_checkpointing": run.grad_ckpt,
                         "warmup_steps": math.ceil(training.warmup_ratio * steps)},
        best_step=int(best["step"]) if best and training.keep_best else steps,
        best_validation_loss=best["loss"] if best else None,
        peak_memory_gb=round(_peak_memory_gb(run.device), 3), resumed_from_step=resumed_from,
        fingerprint=run.store.digest, resume_status=run.resume_status, fingerprint_changed=run.fingerprint_changed,
        artifact=ADAPTER_DIR if run.method_config is not None else FULL_MODEL_DIR,
        quantization="nf4-double-quant" if run.quantized else None, world_size=world_size,
        distributed=("fsdp" if trainer.is_fsdp_enabled else "ddp") if world_size > 1 else None,
    )


def _save(run: Run, result: TrainResult) -> None:
    """The weights, the tokenizer, training.json and loss_history.json, the model card and the settings."""
    saved = run.out / result.artifact
    if run.method_config is None and run.dtype != run.trainer.model.dtype:
        # full fine-tuning trained on fp32 master weights; it is kept (and generates) in the training precision
        run.trainer.model.to(run.dtype)
    run.trainer.model.save_pretrained(saved, safe_serialization=True)
    run.tokenizer.save_pretrained(saved)
    if run.training.save_merged and run.method_config is not None:
        _save_merged(run.arm, saved, run.out / MERGED_DIR, run.dtype)
    write_training(run.out, result.to_dict())
    config = {"sft_config": {k: v for k, v in run.trainer.args.to_dict().items() if _jsonable(v)},
              "peft_config": run.method_config.to_dict() if run.method_config is not None else None}
    (saved / "training_config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    (saved / "README.md").write_text(_model_card(result, run.peft))
    if run.checkpoint_uri is None or run.store.remote:
        # the result is saved (and remote checkpoints are on S3): don't ship local copies in the artifact
        shutil.rmtree(run.store.root_local, ignore_errors=True)


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


def _model_config(arm: ArmSpec):
    """The arm's model config (``config.json`` alone, no weights), resolved as ``load_model`` resolves it."""
    from transformers import AutoConfig

    from bakeoff.errors import ModelError
    from bakeoff.models.loading import resolve_model

    resolved = resolve_model(arm.model)
    try:
        return AutoConfig.from_pretrained(resolved.path, trust_remote_code=arm.trust_remote_code, **resolved.kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors...
        raise ModelError(f"model {arm.model}: cannot read its config: {exc}") from exc

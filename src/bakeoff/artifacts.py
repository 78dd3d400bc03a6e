"""Stage contracts: the files that pass between stages, and the one place that reads and writes them.

No stage imports another; each reads what the stage before it wrote through these functions.

    prepare  -> data/         train.jsonl, validation.jsonl, test.jsonl (one example a line: id, prompt,
                              completion, instruction, input, reference, source [, task, meta, messages])
                              and stats.json
    finetune -> model/        training.json (a TrainResult, plus ``hosted`` for a hosted arm),
                              loss_history.json, and the weights: adapter/ (PEFT methods) or model/ (full
                              fine-tuning) [, merged/]; hosted/ for a hosted arm (no weights)
    generate -> generations/  generations.jsonl (one row per test example and variant), generation.json
    evaluate -> scores/       samples.jsonl (per example: answers and scores per variant), evaluation.json
    report   -> report.html, report.md, results.json (docs/results-schema.md)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bakeoff.errors import DataError, ModelError
from bakeoff.jsonl import atomic_path, read_jsonl, write_jsonl

SPLITS = ("train", "validation", "test")
STATS = "stats.json"
TRAINING = "training.json"
LOSS_HISTORY = "loss_history.json"
ADAPTER_DIR = "adapter"
FULL_MODEL_DIR = "model"
MERGED_DIR = "merged"
HOSTED_DIR = "hosted"
GENERATIONS = "generations.jsonl"
GENERATION_SUMMARY = "generation.json"
SAMPLES = "samples.jsonl"
EVALUATION = "evaluation.json"
PAIRWISE = "pairwise.json"


def _write_json(path: Path, doc: Any, sort_keys: bool = False) -> Path:
    path.write_text(json.dumps(doc, indent=2, sort_keys=sort_keys) + "\n")
    return path


# --- prepare -> every stage -----------------------------------------------------------------------------


def split_path(data_dir: str | Path, split: str) -> Path:
    """Where one split's examples are: ``<data_dir>/<split>.jsonl``."""
    return Path(data_dir) / f"{split}.jsonl"


def write_split(data_dir: str | Path, split: str, rows: Iterable[dict]) -> Path:
    """Write one split's examples (all or nothing: ``write_jsonl`` renames the file into place at the end)."""
    return write_jsonl(split_path(data_dir, split), rows)


def write_prepared(data_dir: str | Path, parts: dict[str, list[dict]], stats: dict[str, Any]) -> None:
    """The prepare stage's splits and ``stats.json``, all or none: each is written under a temporary name, and
    they are renamed into place only once every one is written (a failure leaves what was there before)."""
    with ExitStack() as stack:
        for split, rows in parts.items():
            write_jsonl(stack.enter_context(atomic_path(split_path(data_dir, split))), rows)
        _write_json(stack.enter_context(atomic_path(Path(data_dir) / STATS)), stats, sort_keys=True)


def read_split(data_dir: str | Path, split: str) -> list[dict]:
    """The examples of one split the prepare stage wrote."""
    path = split_path(data_dir, split)
    if not path.is_file():
        raise DataError(f"{path}: missing; was the prepare stage run into {data_dir}?")
    return read_jsonl(path)


def write_stats(data_dir: str | Path, stats: dict[str, Any]) -> Path:
    """The prepare stage's ``stats.json`` (sorted keys: the same bytes wherever it is written), renamed into
    place once written."""
    path = Path(data_dir) / STATS
    with atomic_path(path) as tmp:
        _write_json(tmp, stats, sort_keys=True)
    return path


def read_stats(data_dir: str | Path) -> dict[str, Any]:
    """What the prepare stage read, dropped and wrote."""
    return json.loads((Path(data_dir) / STATS).read_text())


# --- finetune -> generate, report ------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What one fine-tuning run did and cost; written as ``training.json``."""

    arm: str
    model: str
    method: str
    seconds: float  # training time (every segment of a resumed run), evaluation excluded
    steps: int
    epochs: float
    train_tokens: int
    tokens_per_second: float
    device: str
    gpu_type: str | None
    gpu_count: int
    gpu_hours: float | None
    cost_usd: float | None
    trainable_params: int | None
    total_params: int | None
    final_train_loss: float | None
    final_validation_loss: float | None
    loss_history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    best_step: int | None = None
    best_validation_loss: float | None = None
    peak_memory_gb: float | None = None
    resumed_from_step: int | None = None
    artifact: str = ADAPTER_DIR  # "adapter" (PEFT methods), "model" (full fine-tuning) or "hosted-model"
    quantization: str | None = None
    world_size: int = 1  # processes (one per GPU) that trained together
    distributed: str | None = None  # "ddp" or "fsdp" when world_size > 1
    evaluation_seconds: float | None = None  # validation passes, not in seconds, gpu_hours or cost_usd
    segments: int = 1  # runs that trained it (more than 1 after a resume; seconds and tokens are their sums)
    rows: dict[str, int] = field(default_factory=dict)  # train rows: kept, dropped, cut at max_seq_length
    fingerprint: str | None = None  # hash of what determined the training (bakeoff.train.checkpoints)
    resume_status: str | None = None  # "resumed from step N", "fresh", or "fresh: <why not the earlier checkpoint>"
    fingerprint_changed: list[str] | None = None  # what differs from the earlier checkpoint's fingerprint

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Scalar figures for KFP Metrics (no None values), the validation curve as one scalar per evaluation."""
        keys = ("seconds", "evaluation_seconds", "steps", "train_tokens", "tokens_per_second", "gpu_hours", "cost_usd",
                "trainable_params", "final_train_loss", "final_validation_loss", "best_step",
                "best_validation_loss", "peak_memory_gb")
        out = {k: float(getattr(self, k)) for k in keys if getattr(self, k) is not None}
        for point in self.loss_history.get("validation", []):
            out[f"validation_loss/step_{point['step']:06d}"] = float(point["loss"])
        return out


def write_training(model_dir: str | Path, record: dict[str, Any]) -> None:
    """``training.json`` (a TrainResult's fields, and any extra a stage adds) and ``loss_history.json``."""
    out = Path(model_dir)
    _write_json(out / TRAINING, record)
    _write_json(out / LOSS_HISTORY, record.get("loss_history") or {})


def read_training(model_dir: str | Path) -> dict[str, Any]:
    """The ``training.json`` a finetune run wrote into ``model_dir``."""
    return json.loads((Path(model_dir) / TRAINING).read_text())


def read_train_result(model_dir: str | Path) -> TrainResult:
    """``training.json`` as a TrainResult (extra keys, such as a hosted arm's ``hosted``, left out)."""
    record = read_training(model_dir)
    fields = set(TrainResult.__dataclass_fields__)
    return TrainResult(**{k: v for k, v in record.items() if k in fields})


def hosted_model_id(model_dir: str | Path) -> str | None:
    """The fine-tuned model id a hosted finetune recorded in ``model_dir`` (or its parent), or None."""
    for path in (Path(model_dir) / TRAINING, Path(model_dir).parent / TRAINING):
        if path.is_file():
            return (json.loads(path.read_text()).get("hosted") or {}).get("fine_tuned_model")
    return None


def finetuned_weights(model_dir: str | Path, method: str) -> Path:
    """Where the weights of a finetune output are for ``method`` (the spec's): the adapter folder for a
    PEFT method, the complete model for ``full``. ``model_dir`` may also be that folder itself."""
    root = Path(model_dir)
    if method == "full":
        candidates, marker = (root / FULL_MODEL_DIR, root), "config.json"
    else:
        candidates, marker = (root / ADAPTER_DIR, root), "adapter_config.json"
    for folder in candidates:
        if (folder / marker).is_file():
            return folder
    what = "fine-tuned model (model/config.json)" if method == "full" else "adapter (adapter/adapter_config.json)"
    raise ModelError(f"{root}: no {what} for method {method}; was the finetune stage run into it?")


# --- generate -> evaluate --------------------------------------------------------------------------------


def write_generations(gen_dir: str | Path, rows: list[dict], summary: dict[str, Any]) -> None:
    """``generations.jsonl`` (one row per test example and variant) and the ``generation.json`` summary."""
    out = Path(gen_dir)
    write_jsonl(out / GENERATIONS, rows)
    _write_json(out / GENERATION_SUMMARY, summary)


def read_generations(gen_dir: str | Path) -> list[dict]:
    """The rows the generate stage wrote."""
    path = Path(gen_dir) / GENERATIONS
    if not path.is_file():
        raise DataError(f"{path}: missing; was the generate stage run into {gen_dir}?")
    return read_jsonl(path)


def read_generation_summary(gen_dir: str | Path) -> dict[str, Any]:
    """The ``generation.json`` summary (backend, why it was chosen, precision, timing), {} when absent."""
    path = Path(gen_dir) / GENERATION_SUMMARY
    return json.loads(path.read_text()) if path.is_file() else {}


# --- evaluate -> report ----------------------------------------------------------------------------------


def write_evaluation(eval_dir: str | Path, summary: dict[str, Any], samples: list[dict]) -> None:
    """``samples.jsonl`` and the ``evaluation.json`` summary."""
    out = Path(eval_dir)
    write_jsonl(out / SAMPLES, samples)
    _write_json(out / EVALUATION, summary, sort_keys=True)


def write_pairwise(out_dir: str | Path, doc: dict[str, Any]) -> Path:
    """The pairwise judge's ``pairwise.json``: ``{"configured": false}``, or its pairs, verdicts and stats."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _write_json(out / PAIRWISE, doc)


def read_pairwise(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / PAIRWISE).read_text())


def read_evaluation(eval_dir: str | Path) -> tuple[dict, list[dict]]:
    """The ``evaluation.json`` summary and the samples an evaluate run wrote."""
    eval_dir = Path(eval_dir)
    summary = json.loads((eval_dir / EVALUATION).read_text())
    return summary, read_jsonl(eval_dir / SAMPLES)

"""The capacity plan of a spec: per arm and GPU stage, will it fit, how long, what will it cost, before a GPU is paid.

``plan_spec(spec, data_dir=None)`` returns one ``StagePlan`` per arm and stage (``finetune``, ``generate``;
a hosted arm: its ``finetune`` cost only); ``fit_errors(spec, plans)`` the arms that would not fit, each with
the keys that would make it fit and the estimate for each; ``render(plans)`` the table ``bakeoff plan``
and ``bakeoff validate`` print. The memory model is bakeoff.capacity.estimate's.

Time and cost: tokens per epoch from the prepared data's stats.json (train rows x the median prompt and
response lengths) when ``data_dir`` is given, else an upper bound (train rows x ``max_seq_length``), else
unknown with the reason; training FLOPs per token from ``train_flops_per_token`` (the MFU benchmark's
formula); an assumed MFU (``ASSUMED_MFU``, or the figure ``make gpu-check`` recorded in
bench/results/gpu-latest.json); GPU hours x ``cost.gpu_hour_usd``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bakeoff.capacity.architecture import config_parameters, train_flops_per_token
from bakeoff.capacity.estimate import Estimate, finetune_memory, generate_memory
from bakeoff.capacity.facts import MODEL_CONFIGS
from bakeoff.capacity.hardware import gpu as gpu_facts
from bakeoff.errors import BakeoffError
from bakeoff.spec import ArmSpec, ExperimentSpec

log = logging.getLogger(__name__)

ASSUMED_MFU = 0.30  # a LoRA run on one A100 with the stage's defaults; replaced by a measured figure when recorded
GPU_RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results" / "gpu-latest.json"


@dataclass
class StagePlan:
    arm: str
    stage: str
    model: str
    method: str
    gpu: str | None = None
    gpu_count: int = 0
    gpu_memory_gb: float | None = None
    estimated_memory_gb: float | None = None
    fits: bool | None = None
    breakdown: dict[str, float] = field(default_factory=dict)
    parameters: int | None = None
    architecture: str | None = None
    trainable_parameters: int | None = None
    tokens: int | None = None
    tokens_bound: bool = False  # tokens is an upper bound (no prepared data)
    mfu: float | None = None
    gpu_hours: float | None = None
    cost_usd: float | None = None
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ConfigUnknown(BakeoffError):
    """The model's config could not be read (offline, no cache): its plan is unknown, not refused."""


def model_config(uri: str) -> dict[str, Any]:
    """The model's config: the package's facts for the shipped models, ``tiny://``, a local folder, ``s3://``
    (its config.json only) or the Hub (the local cache first)."""
    if uri.startswith("hf://") and uri[len("hf://"):].split("@", 1)[0].lower() not in MODEL_CONFIGS:
        return _hub_config(uri)
    if uri.startswith("s3://"):
        return _s3_config(uri)
    return known_config(uri)


def known_config(uri: str) -> dict[str, Any]:
    """The config of a model this process knows without asking a server: the package's facts, ``tiny://`` or
    a local folder (what the report stage plans with: its image has neither the Hub client nor S3's)."""
    if uri.startswith("hf://"):
        repo = uri[len("hf://"):].split("@", 1)[0]
        if repo.lower() in MODEL_CONFIGS:
            return dict(MODEL_CONFIGS[repo.lower()])
        raise ConfigUnknown(f"{uri}: its config is not in the package's facts (bakeoff plan reads it from the Hub)")
    if uri.startswith("tiny://"):
        from bakeoff.models.tiny import FAMILIES, VOCAB_SIZE

        family = FAMILIES.get(uri[len("tiny://"):])
        if family is None:
            raise ConfigUnknown(f"{uri}: unknown tiny family")
        return {**family["kwargs"], "vocab_size": VOCAB_SIZE, "model_type": family["config"][:-6].lower()}
    if "://" in uri:
        raise ConfigUnknown(f"{uri}: its config is read from its store (bakeoff plan does), not here")
    path = Path(uri) / "config.json"
    if not path.is_file():
        raise ConfigUnknown(f"{uri}: no config.json there")
    return json.loads(path.read_text())


def _hub_config(uri: str) -> dict[str, Any]:
    from bakeoff.storage import parse_hf_uri

    try:
        from transformers import AutoConfig

        ref = parse_hf_uri(uri)
        try:  # the local Hub cache first: no request when the model was downloaded before
            return AutoConfig.from_pretrained(ref.repo_id, revision=ref.revision, local_files_only=True).to_dict()
        except OSError:
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or not _hub_reachable():
                raise ConfigUnknown(f"{uri}: its config is not in the package's facts nor in the local Hub cache, "
                                    "and the Hub is not reachable from here") from None
        return AutoConfig.from_pretrained(ref.repo_id, revision=ref.revision).to_dict()
    except ConfigUnknown:
        raise
    except Exception as exc:  # offline, gated, not a model: the plan says so
        raise ConfigUnknown(f"{uri}: its config is not in the package's facts and could not be read from the Hub "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from exc


def _hub_reachable(timeout_s: float = 2.0) -> bool:
    """Whether the Hub's host (``HF_ENDPOINT``, else huggingface.co) accepts a connection within ``timeout_s``:
    huggingface_hub itself retries an unreachable host for about half a minute."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s):
            return True
    except OSError:
        return False


def _s3_config(uri: str) -> dict[str, Any]:
    from bakeoff.storage import read_s3_json

    try:
        return read_s3_json(f"{uri.rstrip('/')}/config.json")
    except Exception as exc:
        raise ConfigUnknown(f"{uri}: could not read its config.json ({exc})") from exc


def assumed_mfu(path: Path = GPU_RESULTS) -> tuple[float, str]:
    """The MFU the time estimate assumes, and where it comes from."""
    try:
        measured = json.loads(path.read_text())["throughput"]["defaults"]["mfu"]
        if measured and 0 < float(measured) < 1:
            return float(measured), f"measured by make gpu-check ({path.name})"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return ASSUMED_MFU, "assumed (no GPU benchmark recorded)"


def tokens_from_stats(spec: ExperimentSpec, stats: dict) -> int:
    """Tokens per epoch from a prepared data set's stats: train rows x (median prompt + median response)."""
    rows = int(stats["rows"]["train"])
    lengths = stats["token_lengths"]["train"]
    per_row = int(lengths["prompt"]["p50"]) + int(lengths["response"]["p50"])
    return rows * min(per_row, spec.training.max_seq_length)


def tokens_per_epoch(spec: ExperimentSpec, data_dir: str | Path | None) -> tuple[int | None, bool, str | None]:
    """(tokens, is_upper_bound, reason when unknown)."""
    if data_dir is not None:
        try:
            return tokens_from_stats(spec, json.loads((Path(data_dir) / "stats.json").read_text())), False, None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, False, f"no readable stats.json in {data_dir} ({exc})"
    train = spec.data.split.train
    if isinstance(train, int):
        return train * spec.training.max_seq_length, True, None
    return None, False, "data.split.train is a fraction and no prepared data was given (bakeoff plan SPEC --data DIR)"


def _finetune_estimate(spec: ExperimentSpec, arm: ArmSpec, config: dict, **override) -> Estimate:
    peft, training = spec.arm_peft(arm), spec.training
    res = spec.resources.finetune
    count = res.gpu.count if res.gpu else 1
    settings = dict(method=peft.method, r=peft.r, targets=peft.target_modules, target_experts=peft.target_experts,
                    use_dora=peft.use_dora, precision="bf16" if training.precision == "auto" else training.precision,
                    batch_size=training.batch_size, seq_len=training.max_seq_length,
                    checkpointing=training.gradient_checkpointing is not False, optimizer=training.optimizer,
                    world_size=count * arm.nodes, fsdp=training.distributed == "fsdp", cuda=res.gpu is not None)
    settings.update(override)
    return finetune_memory(config, **settings)


def _fill_gpu(plan: StagePlan, res, estimate: Estimate) -> None:
    plan.breakdown, plan.estimated_memory_gb = estimate.parts, estimate.total_gb
    plan.notes += estimate.notes
    if res.gpu is None:
        plan.reason = "no GPU requested for this stage: memory is host memory, not checked"
        return
    facts = gpu_facts(res.gpu.product)
    plan.gpu, plan.gpu_count, plan.gpu_memory_gb = res.gpu.product, res.gpu.count, facts.memory_gb
    if facts.memory_gb is None:
        plan.notes.append(f"unknown GPU product {res.gpu.product!r} (resources.{plan.stage}.gpu.product): "
                          "memory not checked")
    else:
        plan.fits = estimate.total_gb <= facts.memory_gb


def training_seconds(spec: ExperimentSpec, arm: ArmSpec, config: dict, estimate: Estimate, tokens: int,
                     peak_tflops: float, gpus: int) -> tuple[float, float]:
    """(seconds, FLOPs per token) of training ``tokens`` tokens on ``gpus`` GPUs of ``peak_tflops`` at the
    assumed MFU: the MFU benchmark's formula, run backwards."""
    flops = train_flops_per_token(config, spec.training.max_seq_length, frozen_base=spec.arm_peft(arm).method != "full",
                                  adapter_params=estimate.trainable_parameters)
    return tokens * flops / (assumed_mfu()[0] * peak_tflops * 1e12 * gpus), flops


def hosted_cost(arm: ArmSpec, tokens_per_epoch: int) -> tuple[int, float, bool]:
    """(trained tokens, USD, whether the epochs were assumed) of a hosted arm: tokens x epochs (``auto``: the
    provider picks; 3 assumed) x its price per trained token."""
    hosted = arm.hosted
    epochs = hosted.epochs if isinstance(hosted.epochs, int) else 3
    trained = tokens_per_epoch * epochs
    return trained, trained * hosted.usd_per_1m_training_tokens / 1e6, hosted.epochs == "auto"


def _finetune_plan(spec: ExperimentSpec, arm: ArmSpec, config: dict, data_dir) -> StagePlan:
    peft, training, res = spec.arm_peft(arm), spec.training, spec.resources.finetune
    plan = StagePlan(arm.name, "finetune", arm.model, peft.method)
    estimate = _finetune_estimate(spec, arm, config)
    plan.trainable_parameters = estimate.trainable_parameters
    _fill_gpu(plan, res, estimate)
    tokens, bound, reason = tokens_per_epoch(spec, data_dir)
    world = (res.gpu.count if res.gpu else 1) * arm.nodes
    if training.max_steps:
        tokens = training.max_steps * training.batch_size * training.gradient_accumulation_steps * world * \
            training.max_seq_length
        bound, reason = True, None
    elif tokens is not None:
        tokens = int(math.ceil(tokens * training.epochs))
    plan.tokens, plan.tokens_bound = tokens, bound
    peak = gpu_facts(res.gpu.product).peak_tflops if res.gpu else None
    if tokens is None:
        plan.reason = plan.reason or f"time unknown: {reason}"
        return plan
    if peak is None:
        plan.reason = plan.reason or "time unknown: no bf16 peak for this GPU product"
        return plan
    seconds, flops = training_seconds(spec, arm, config, estimate, tokens, peak, world)
    plan.mfu, source = assumed_mfu()
    plan.notes.append(f"MFU {plan.mfu:.2f} {source}; {flops / 1e9:.1f} GFLOPs per token")
    plan.gpu_hours = round(seconds / 3600 * world, 2)
    if spec.cost.gpu_hour_usd is not None:
        plan.cost_usd = round(plan.gpu_hours * spec.cost.gpu_hour_usd, 2)
    else:
        plan.notes.append("no cost.gpu_hour_usd: cost unknown")
    if bound:
        plan.notes.append("tokens, hours and cost are upper bounds (every row at max_seq_length); "
                          "bakeoff plan SPEC --data DIR reads the prepared data's lengths")
    return plan


def _generate_plan(spec: ExperimentSpec, arm: ArmSpec, config: dict) -> StagePlan:
    peft, res, gen = spec.arm_peft(arm), spec.resources.generate, spec.generation
    plan = StagePlan(arm.name, "generate", arm.model, peft.method)
    estimate = generate_memory(config, method=peft.method, batch_size=gen.batch_size,
                               prompt_tokens=spec.training.max_seq_length, new_tokens=gen.max_new_tokens,
                               precision="bf16" if spec.training.precision == "auto" else spec.training.precision,
                               cuda=res.gpu is not None)
    _fill_gpu(plan, res, estimate)
    plan.reason = plan.reason or "generation time is not estimated"
    return plan


def _hosted_plan(spec: ExperimentSpec, arm: ArmSpec, data_dir) -> StagePlan:
    hosted = arm.hosted
    plan = StagePlan(arm.name, "finetune", arm.model, "hosted")
    tokens, bound, reason = tokens_per_epoch(spec, data_dir)
    if hosted.epochs == "auto":
        plan.notes.append("epochs auto: the provider picks; 3 assumed")
    if tokens is None:
        plan.reason = f"cost unknown: {reason}"
        return plan
    plan.tokens, cost, _ = hosted_cost(arm, tokens)
    plan.tokens_bound = bound
    plan.cost_usd = round(cost, 2)
    plan.notes.append(f"${hosted.usd_per_1m_training_tokens:g} per 1M trained tokens; the run stops at "
                      f"${hosted.max_cost_usd:g} (hosted.max_cost_usd)")
    return plan


def plan_spec(spec: ExperimentSpec, data_dir: str | Path | None = None) -> list[StagePlan]:
    plans = []
    for arm in spec.arms:
        if arm.is_hosted:
            plans.append(_hosted_plan(spec, arm, data_dir))
            continue
        try:
            config = model_config(arm.model)
        except ConfigUnknown as exc:
            for stage in ("finetune", "generate"):
                plans.append(StagePlan(arm.name, stage, arm.model, spec.arm_peft(arm).method,
                                       reason=f"not planned: {exc}"))
            continue
        counts = config_parameters(config)
        for plan in (_finetune_plan(spec, arm, config, data_dir), _generate_plan(spec, arm, config)):
            plan.parameters = counts["total"]
            plan.architecture = str(config.get("model_type") or "unknown")
            plans.append(plan)
    return plans


def predicted_beside_measured(spec: ExperimentSpec, stats: dict, training: dict) -> dict[str, Any]:
    """The plan of one trained arm for the device it trained on, beside what its training measured, and the
    ratio measured / predicted (the planner's own accuracy): peak memory, training time, cost."""
    arm = spec.arm(training["arm"])
    out: dict[str, Any] = {"memory_gb": None, "seconds": None, "cost_usd": None, "reason": None}
    if arm.is_hosted:
        try:
            tokens = tokens_from_stats(spec, stats)
        except (KeyError, TypeError, ValueError):
            tokens = None
        if tokens is not None:
            out["cost_usd"] = round(hosted_cost(arm, tokens)[1], 4)
    else:
        try:
            config = known_config(arm.model)
        except ConfigUnknown as exc:
            return {**out, "reason": str(exc)}
        cuda = training.get("device") == "cuda"
        precision = ((training.get("hyperparameters") or {}).get("precision")) or "bf16"
        estimate = _finetune_estimate(spec, arm, config, cuda=cuda, precision=precision,
                                      world_size=max(int(training.get("gpu_count") or 1), 1))
        out["memory_gb"] = estimate.total_gb
        peak = gpu_facts(training.get("gpu_type")).peak_tflops if cuda else None
        try:
            tokens = tokens_from_stats(spec, stats) * (spec.training.epochs if not spec.training.max_steps else 1)
        except (KeyError, TypeError, ValueError):
            tokens = None
        if training.get("train_tokens") and spec.training.max_steps:
            tokens = None  # a step budget: the prepared data's lengths do not say how many tokens it trains
        if peak and tokens:
            gpus = max(int(training.get("gpu_count") or 1), 1)
            out["seconds"] = round(training_seconds(spec, arm, config, estimate, tokens, peak, gpus)[0], 1)
            if spec.cost.gpu_hour_usd is not None:
                out["cost_usd"] = round(out["seconds"] / 3600 * gpus * spec.cost.gpu_hour_usd, 4)
        elif not cuda:
            out["reason"] = "trained on CPU: only memory is predicted (time needs a GPU's peak)"
    measured = {"memory_gb": training.get("peak_memory_gb"), "seconds": training.get("seconds"),
                "cost_usd": training.get("cost_usd")}
    out["measured"] = measured
    out["ratio"] = {k: (round(measured[k] / out[k], 2) if measured[k] and out[k] else None) for k in measured}
    return out


def suggestions(spec: ExperimentSpec, arm: ArmSpec, memory_gb: float) -> list[str]:
    """Changes to the finetune settings that would make ``arm`` fit ``memory_gb``, each with its estimate."""
    config = model_config(arm.model)
    peft, training, res = spec.arm_peft(arm), spec.training, spec.resources.finetune
    count = res.gpu.count if res.gpu else 1
    out = []

    def offer(key: str, **override) -> bool:
        total = _finetune_estimate(spec, arm, config, **override).total_gb
        if total <= memory_gb:
            out.append(f"{key} ({total:g} GB)")
            return True
        return False

    if peft.method in ("lora", "full"):
        offer("peft.method: qlora", method="qlora")
    if training.gradient_checkpointing is False:
        offer("training.gradient_checkpointing: true", checkpointing=True)
    for batch in (training.batch_size // 2, training.batch_size // 4, 1):
        if 0 < batch < training.batch_size and offer(f"training.batch_size: {batch}", batch_size=batch):
            break
    for gpus in (2, 4, 8):
        if gpus > count and offer(f"resources.finetune.gpu.count: {gpus} with training.distributed: fsdp",
                                  world_size=gpus * arm.nodes, fsdp=True):
            break
    return out


def fit_errors(spec: ExperimentSpec, plans: list[StagePlan]) -> list[str]:
    """One line per arm and stage whose estimate exceeds its GPU's memory, with what would make it fit."""
    errors = []
    for plan in plans:
        if plan.fits is not False:
            continue
        arm = spec.arm(plan.arm)
        index = spec.arms.index(arm)
        head = (f"arms[{index}] ({plan.arm}): {plan.stage} needs about {plan.estimated_memory_gb:g} GB per GPU, "
                f"more than one {plan.gpu} has ({plan.gpu_memory_gb:g} GB; {_parts(plan.breakdown)})")
        if plan.stage == "finetune":
            fixes = suggestions(spec, arm, plan.gpu_memory_gb)
            tail = f"; it fits with {' or '.join(fixes)}" if fixes else "; no single change makes it fit: use a " \
                "GPU with more memory (resources.finetune.gpu.product)"
        else:
            tail = "; lower generation.batch_size, use peft.method: qlora, or a GPU with more memory " \
                "(resources.generate.gpu.product)"
        errors.append(head + tail)
    return errors


def _parts(breakdown: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in breakdown.items() if v)


def render(plans: list[StagePlan], notes: bool = True) -> str:
    """The plan as a table, then (with ``notes``) each plan's breakdown and notes; without them only the
    warnings (an unknown GPU, a model not planned)."""
    header = ("arm", "stage", "method", "params", "gpu", "est. GB", "GPU GB", "fits", "tokens", "GPU h", "USD")
    rows = [header]
    for p in plans:
        rows.append((p.arm, p.stage, p.method, f"{p.parameters / 1e9:.2f}B" if p.parameters else "-",
                     f"{p.gpu_count}x {p.gpu}" if p.gpu else "-",
                     f"{p.estimated_memory_gb:g}" if p.estimated_memory_gb is not None else "-",
                     f"{p.gpu_memory_gb:g}" if p.gpu_memory_gb else "-",
                     {True: "yes", False: "NO", None: "-"}[p.fits],
                     (("<=" if p.tokens_bound else "") + f"{p.tokens:,}") if p.tokens else "-",
                     f"{p.gpu_hours:g}" if p.gpu_hours is not None else "-",
                     f"{p.cost_usd:g}" if p.cost_usd is not None else "-"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for p in plans:
        if notes:
            detail = [f"memory: {_parts(p.breakdown)}"] if p.breakdown else []
            detail += p.notes + ([p.reason] if p.reason else [])
        else:
            detail = [n for n in p.notes if n.startswith("unknown GPU")]
            detail += [p.reason] if p.reason and p.reason.startswith("not planned") else []
        if detail:
            lines.append(f"{p.arm} / {p.stage}: " + "; ".join(detail))
    return "\n".join(lines)


__all__ = ["ASSUMED_MFU", "ConfigUnknown", "StagePlan", "fit_errors", "known_config", "model_config", "plan_spec",
           "predicted_beside_measured", "render", "suggestions", "tokens_from_stats", "tokens_per_epoch"]

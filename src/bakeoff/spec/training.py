"""The ``training`` and ``peft`` sections: hyperparameters shared by every arm, and how weights train."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, create_model, model_validator
from pydantic.fields import FieldInfo

from bakeoff.spec.base import MAX_BATCH_SIZE, Strict

# IA3's learning rate when the arm sets none: the IA3 paper's (Liu et al. 2022, "Few-Shot
# Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning"), about a hundred times
# LoRA's: IA3 trains scaling vectors that start at one, which move little at LoRA's rate.
IA3_LEARNING_RATE = 3e-3
# training.optimizer -> the Trainer's ``optim``.
# Replicates per arm: each is a full training, generation and scoring; beyond this a bake-off wants more test
# samples, not more seeds (the report's power estimate says how many of each would separate the arms).
MAX_REPLICATES = 32
OPTIMIZERS = {"adamw": "adamw_torch", "adamw-8bit": "adamw_bnb_8bit", "paged-adamw-8bit": "paged_adamw_8bit",
              "paged-adamw-32bit": "paged_adamw_32bit"}


class TrainingSpec(Strict):
    """Hyperparameters shared by every arm (the seed paper's Table 2 names)."""

    epochs: float = Field(default=2, gt=0, description="passes over the train split")
    replicates: int = Field(default=1, ge=1, le=MAX_REPLICATES, description="times each arm is trained, with "
                            "distinct training seeds (seed, seed + 1, ...) on the same splits, each generated and "
                            "scored; the report's intervals then cover training-seed variance too")
    max_steps: int | None = Field(default=None, gt=0, description="optimizer steps; overrides epochs when set")
    batch_size: int = Field(default=4, gt=0, le=MAX_BATCH_SIZE, description="rows per device per step (at most "
                            "the train split's rows when it is a count)")
    gradient_accumulation_steps: int = Field(default=1, gt=0, description="steps accumulated before each update "
                                             "(effective batch = batch_size x this x devices)")
    learning_rate: float = Field(default=2.5e-5, gt=0, description="peak learning rate (AdamW) of lora, qlora and "
                                 "full; ia3 uses its own (peft.learning_rate)")
    optimizer: Literal["adamw", "adamw-8bit", "paged-adamw-8bit", "paged-adamw-32bit"] = Field(
        default="adamw", description="adamw: torch AdamW (fp32 states, 8 bytes per trained weight); adamw-8bit: "
        "bitsandbytes 8-bit states (2 bytes per weight, for full fine-tuning of large models); paged-adamw-8bit / "
        "paged-adamw-32bit: states in CUDA unified memory, paged to the host under memory pressure (CUDA only); "
        "the bitsandbytes ones need bitsandbytes")
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1, description="share of the steps spent warming up")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="linear", description="the learning-rate schedule after warmup")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay")
    max_seq_length: int = Field(default=1024, gt=0, description="tokens per row; longer rows are truncated")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto", description="auto: bf16 on a GPU that has it, fp16 on older GPUs, fp32 on CPU")
    logging_steps: int = Field(default=10, gt=0, description="steps between train-loss points")
    eval_steps: int = Field(default=100, gt=0, description="steps between validation-loss evaluations")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        default="auto", description="recompute activations to save memory; auto: on with a GPU")
    batching: Literal["dynamic", "padding-free", "packing"] = Field(
        default="dynamic", description="dynamic: pad each batch to its longest row; padding-free: concatenate "
        "the batch's rows without padding (rows are not truncated to max_seq_length: bound them with "
        "data.max_instruction_tokens); packing: fill max_seq_length windows with several rows"
    )
    distributed: Literal["ddp", "fsdp"] = Field(
        default="ddp", description="with several GPUs: ddp replicates the model on each; fsdp shards it "
        "(for models that do not fit one GPU)"
    )
    group_by_length: bool = Field(default=False, description="batch rows of similar length together (less padding)")
    keep_best: bool = Field(default=True, description="the result is the checkpoint with the lowest validation loss")
    early_stopping_patience: int | None = Field(
        default=None, gt=0, description="stop after this many evaluations without a lower validation loss"
    )
    checkpoint_steps: int | None = Field(
        default=None, gt=0, description="save a checkpoint every N steps (default: at every evaluation)"
    )
    checkpoint_uri: str | None = Field(
        default=None, description="where checkpoints go (a path or s3://bucket/prefix; <name>/<arm> is added); "
        "a rerun resumes from the newest complete one"
    )
    save_merged: bool = Field(default=False, description="also save the adapter merged into the 16-bit base")

    @model_validator(mode="after")
    def _checkpoint_cadence(self) -> TrainingSpec:
        if self.keep_best and self.checkpoint_steps and self.checkpoint_steps % self.eval_steps:
            raise ValueError(f"checkpoint_steps ({self.checkpoint_steps}) must be a multiple of eval_steps "
                             f"({self.eval_steps}) with keep_best, so each checkpoint has a validation loss")
        return self


class PeftSpec(Strict):
    """Parameter-efficient fine-tuning settings (the seed paper's Table 1 names)."""

    method: Literal["lora", "qlora", "ia3", "full"] = Field(
        default="lora", description="lora: low-rank adapters; qlora: LoRA on a 4-bit NF4 base (bitsandbytes); "
        "ia3: learned scaling vectors; full: every weight trains")
    r: int = Field(default=64, gt=0, description="LoRA rank")
    alpha: float = Field(default=16, gt=0, description="LoRA scaling (the update is scaled by alpha / r)")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] | Literal["all-linear", "attention"] = Field(
        default="all-linear", description="attention = q/k/v/o projections; all-linear = every linear layer of "
        "the decoder but the output head and, on mixture-of-experts models, the router and the experts (on "
        "Mixtral: the attention projections; experts with target_experts); or module names, each of which must "
        "match a module of the model (a router only when listed here)"
    )
    use_dora: bool = Field(default=False, description="weight-decomposed LoRA (lora, qlora)")
    loftq: bool = Field(default=False, description="LoftQ initialisation of the LoRA weights (lora)")
    target_experts: bool = Field(default=False, description="Mixtral: LoRA on the fused experts too (dropout 0)")
    learning_rate: float | None = Field(
        default=None, gt=0, description="this method's peak learning rate; default: training.learning_rate for "
        f"lora, qlora and full, {IA3_LEARNING_RATE:g} for ia3 (the IA3 paper's)")


# The same keys and constraints as PeftSpec, all optional: what an arm may override.
PeftOverride = create_model(
    "PeftOverride",
    __base__=Strict,
    __doc__="Keys of the shared peft section an arm sets for itself; the rest come from peft.",
    **{
        n: (f.annotation | None, FieldInfo.merge_field_infos(f, default=None))
        for n, f in PeftSpec.model_fields.items()
    },
)

LORA_FAMILY = ("lora", "qlora")


def peft_conflicts(peft: PeftSpec) -> list[tuple[str, str]]:
    """Settings that cannot go together, as (key, message): found when the spec is validated instead of
    after the model is loaded on a GPU."""
    out = []
    for option in ("use_dora", "loftq", "target_experts"):
        if getattr(peft, option) and peft.method not in LORA_FAMILY:
            out.append((option, f"only for method lora or qlora (LoRA options); method is {peft.method}"))
    if peft.loftq and peft.method == "qlora":
        out.append(("loftq", "LoftQ initialises LoRA from a full-precision base and quantizes it itself; use "
                             "method lora with loftq, not qlora"))
    if peft.target_experts and peft.dropout:
        out.append(("dropout", f"LoRA on fused experts (target_experts) needs dropout 0 in peft (it is "
                               f"{peft.dropout:g}); set dropout: 0 or target_experts: false"))
    return out


def method_learning_rate(training: TrainingSpec, peft: PeftSpec) -> float:
    """The peak learning rate an arm trains at: its ``peft.learning_rate``, else IA3's own default for ia3 and
    ``training.learning_rate`` for the other methods."""
    if peft.learning_rate is not None:
        return peft.learning_rate
    return IA3_LEARNING_RATE if peft.method == "ia3" else training.learning_rate


def merge_peft(shared: PeftSpec, override: Any) -> PeftSpec:
    """The shared PEFT settings with an arm's overrides applied, validated as a whole."""
    values = {**shared.model_dump(), **override.model_dump(exclude_none=True)}
    try:
        return PeftSpec.model_validate(values)
    except ValidationError as exc:  # each part was valid on its own, so this cannot happen today
        raise ValueError(f"peft: the arm's overrides do not combine with peft: {exc}") from exc


__all__ = ["IA3_LEARNING_RATE", "LORA_FAMILY", "OPTIMIZERS", "PeftOverride", "PeftSpec", "TrainingSpec",
           "merge_peft", "method_learning_rate", "peft_conflicts"]

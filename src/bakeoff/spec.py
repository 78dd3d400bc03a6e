"""The experiment spec: one pydantic model, loaded from YAML, the single source of truth of a run.

Every section is strict (unknown keys are errors) so a misspelt key is reported instead of silently
ignored. Errors are collected and reported one per line with the key path
(``arms[1].peft.r: Input should be greater than 0``).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from bakeoff.errors import SpecError

SLUG = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
VARIANTS = ("fine-tuned", "base-zero-shot", "base-few-shot")
METRICS = ("exact_match", "judge")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSource(_Strict):
    """One input: a local file or a URI, in a known record format, with optional column names.

    Local files and ``s3://`` objects are read by suffix: ``.jsonl`` (one object per line), ``.json``
    (an array of objects), ``.csv`` (a header row) and ``.parquet``; ``hf://`` goes through ``datasets``.
    ``fields`` maps the format's canonical names (``FORMAT_FIELDS``) to the file's column names, e.g.
    ``{format: prompt-response, fields: {prompt: question, response: answer}}``.
    """

    FORMAT_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "alpaca": ("instruction", "input", "output"),
        "prompt-response": ("prompt", "response"),
        "sql-create-context": ("question", "context", "answer"),
        "viggo": ("target", "meaning_representation"),
        "chat": ("messages",),
    }

    uri: str = Field(min_length=1)
    format: Literal["alpaca", "prompt-response", "sql-create-context", "viggo", "chat"] = "alpaca"
    fields: dict[str, str] | None = Field(default=None, description="canonical field name -> column name in the file")
    keep: list[str] = Field(default_factory=list, description="columns copied into each example's meta (e.g. db_id)")

    @model_validator(mode="after")
    def _known_fields(self) -> DataSource:
        known = self.FORMAT_FIELDS[self.format]
        unknown = sorted(set(self.fields or {}) - set(known))
        if unknown:
            raise ValueError(f"fields: {', '.join(map(repr, unknown))} not a field of the {self.format} format "
                             f"(its fields: {', '.join(known)})")
        return self


class SplitSpec(_Strict):
    """Split sizes: all absolute counts (ints) or all fractions of the usable rows (floats in (0, 1]).

    Fractions are rounded down and must sum to at most 1. Rows left over after the three are not used.
    """

    # typed float so a bad value gets one error; the wrap validator below keeps an int an int
    train: float
    validation: float
    test: float

    @field_validator("train", "validation", "test", mode="wrap")
    @classmethod
    def _positive(cls, v: Any, handler: Any) -> int | float:
        # an int stays a count; anything else is validated as a number (one error, no union branches)
        v = v if isinstance(v, int) and not isinstance(v, bool) else float(handler(v))
        if v <= 0:
            raise ValueError("Input should be greater than 0")
        return v

    @field_serializer("train", "validation", "test")
    def _keep_kind(self, v: int | float) -> int | float:
        return v  # a count dumps as an int, not as the float the annotation says

    @model_validator(mode="after")
    def _same_kind(self) -> SplitSpec:
        values = (self.train, self.validation, self.test)
        kinds = {isinstance(v, float) for v in values}
        if len(kinds) > 1:
            raise ValueError("train, validation and test must all be counts (integers) or all fractions "
                             f"(floats in (0, 1]); got {self.train!r}/{self.validation!r}/{self.test!r}")
        if self.is_fraction:
            if any(v > 1 for v in values):
                raise ValueError("a fraction must be in (0, 1]")
            if sum(values) > 1 + 1e-9:
                raise ValueError(f"fractions sum to {sum(values):g}, more than 1")
        return self

    @property
    def is_fraction(self) -> bool:
        """Whether the sizes are fractions of the usable rows rather than counts."""
        return isinstance(self.train, float)

    def sizes(self, usable: int) -> dict[str, int]:
        """Rows per split for ``usable`` rows: the counts, or each fraction of ``usable`` rounded down."""
        values = {"train": self.train, "validation": self.validation, "test": self.test}
        if not self.is_fraction:
            return dict(values)
        return {k: math.floor(v * usable + 1e-9) for k, v in values.items()}


class UserTemplate(_Strict):
    """A prompt template of the spec's own: placeholders {instruction}, {input}, {body}; {response}."""

    prompt: str = Field(min_length=1)
    completion: str = "{response}"
    bos: str = ""
    eos: str = "</s>"

    @field_validator("prompt")
    @classmethod
    def _prompt_placeholders(cls, v: str) -> str:
        from bakeoff.data.templates import PLACEHOLDERS

        if not any(p in v for p in PLACEHOLDERS):
            raise ValueError(f"needs at least one of {', '.join(PLACEHOLDERS)}")
        return v

    @field_validator("completion")
    @classmethod
    def _completion_placeholder(cls, v: str) -> str:
        if "{response}" not in v:
            raise ValueError("needs {response}")
        return v

    @model_validator(mode="after")
    def _formats(self) -> UserTemplate:
        from bakeoff.data.templates import user_template

        try:
            user_template(self.prompt, self.completion, self.bos, self.eos)
        except SpecError as exc:
            raise ValueError(exc.messages[0].split(": ", 1)[1]) from None
        return self


# A template is a built-in name or a mapping of the spec's own; the tags keep pydantic from reporting
# the branch that does not apply (and, bracketed, stay out of error key paths).
TemplateChoice = Annotated[
    Annotated[Literal["llama2-inst", "alpaca", "text-to-sql", "viggo", "chat"], Tag("[name]")]
    | Annotated[UserTemplate, Tag("[own]")],
    Discriminator(lambda v: "[name]" if isinstance(v, str) else "[own]"),
]


class DataSpec(_Strict):
    """Where the examples come from, how they are checked and filtered, and how they are split."""

    sources: list[DataSource] = Field(min_length=1)
    template: TemplateChoice = "llama2-inst"
    split: SplitSpec
    on_error: Literal["fail", "skip"] = Field(
        default="fail", description="skip: malformed rows are counted (dropped.malformed) and logged, not fatal"
    )
    dedupe: bool = Field(default=True, description="drop exact and normalised duplicate records")
    max_instruction_tokens: int | None = Field(
        default=None, gt=0, description="drop records whose templated prompt is longer (tokens, else words)"
    )
    remove_leakage: bool = Field(default=True, description="remove test examples whose prompt occurs in train")


class TrainingSpec(_Strict):
    """Hyperparameters shared by every arm (the seed paper's Table 2 names)."""

    epochs: float = Field(default=2, gt=0)
    max_steps: int | None = Field(default=None, gt=0, description="overrides epochs when set")
    batch_size: int = Field(default=4, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=2.5e-5, gt=0)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    weight_decay: float = Field(default=0.0, ge=0)
    max_seq_length: int = Field(default=1024, gt=0)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    logging_steps: int = Field(default=10, gt=0)
    eval_steps: int = Field(default=100, gt=0)
    gradient_checkpointing: bool | Literal["auto"] = "auto"
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


class PeftSpec(_Strict):
    """Parameter-efficient fine-tuning settings (the seed paper's Table 1 names)."""

    method: Literal["lora", "qlora", "ia3", "full"] = "lora"
    r: int = Field(default=64, gt=0)
    alpha: float = Field(default=16, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear", "attention"] = Field(
        default="all-linear", description="attention = q/k/v/o projections; all-linear = every linear layer"
    )
    use_dora: bool = Field(default=False, description="weight-decomposed LoRA (lora, qlora)")
    loftq: bool = Field(default=False, description="LoftQ initialisation of the LoRA weights (lora)")
    target_experts: bool = Field(default=False, description="Mixtral: LoRA on the fused experts too (dropout 0)")


# The same keys and constraints as PeftSpec, all optional: what an arm may override.
PeftOverride = create_model(
    "PeftOverride",
    __config__=ConfigDict(extra="forbid", frozen=True),
    **{
        n: (f.annotation | None, FieldInfo.merge_field_infos(f, default=None))
        for n, f in PeftSpec.model_fields.items()
    },
)


def _slug(value: str) -> str:
    if not re.match(SLUG, value):
        raise ValueError("must be a lowercase name of letters, digits and '-' (at most 63, no leading or trailing '-')")
    return value


class SecretRef(_Strict):
    """One key of a Kubernetes Secret (only its name and key are in the spec, never a value)."""

    name: str = Field(min_length=1)
    key: str = Field(min_length=1)


def _positive_or_auto(v: Any, integer: bool) -> int | float | str:
    """``auto``, or a number > 0 (an integer where ``integer``); one plain error otherwise."""
    if v == "auto":
        return v
    kind = "integer" if integer else "number"
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or not v > 0:
        raise ValueError(f"must be a positive {kind} or 'auto'; got {v!r}")
    return v


class HostedFineTune(_Strict):
    """A hosted fine-tuning job on the OpenAI fine-tuning API (or a server that speaks it): the arm's
    ``model`` is the provider's base model id (``gpt-4o-mini-2024-07-18``, ``gpt-3.5-turbo-0125``).

    The finetune stage uploads the train and validation splits as chat JSONL, estimates the trained
    tokens and their cost, refuses to start above ``max_cost_usd``, creates the job (its id is kept
    so a rerun attaches to it instead of paying twice) and follows it to the end; the generate stage
    asks the fine-tuned model (fine-tuned variant) and ``model`` (base variants) through chat completions.
    """

    usd_per_1m_training_tokens: float = Field(
        ge=0, description="the provider's training price (gpt-4o-mini: 3.00, gpt-3.5-turbo: 8.00 at the time "
        "of writing); cost = trained tokens (epochs included) x price"
    )
    max_cost_usd: float = Field(
        default=20.0, ge=0, description="refuse to create a job whose estimated cost is above this; raise it "
        "to allow more"
    )
    epochs: int | Literal["auto"] = Field(default="auto", description="n_epochs, or auto (the provider picks)")
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    suffix: str | None = Field(default=None, max_length=64, description="in the fine-tuned model's name")
    system_prompt: str | None = Field(
        default=None, description="a system message before each example's user message (training and generation)"
    )
    base_url: str = Field(default="https://api.openai.com/v1", min_length=1)
    api_key_env: str = Field(default="OPENAI_API_KEY", min_length=1)
    api_key_secret: SecretRef | None = Field(
        default=None, description="a Kubernetes Secret key -> api_key_env in the finetune and generate pods"
    )
    poll_s: float = Field(default=30, gt=0, description="seconds between status checks at first")
    poll_max_s: float = Field(default=300, gt=0, description="the wait grows to this while nothing changes")
    concurrency: int = Field(default=8, gt=0, description="chat completion requests at a time when generating")
    timeout_s: float = Field(default=120, gt=0, description="per API request")
    max_retries: int = Field(default=3, ge=0, description="per API request (429, 5xx, timeouts), with backoff")

    @field_validator("epochs", "batch_size", mode="wrap")
    @classmethod
    def _int_or_auto(cls, v: Any, handler: Any) -> int | str:
        return _positive_or_auto(v, integer=True)  # the handler's union errors would name its branches

    @field_validator("learning_rate_multiplier", mode="wrap")
    @classmethod
    def _float_or_auto(cls, v: Any, handler: Any) -> float | str:
        return _positive_or_auto(v, integer=False)


class ArmSpec(_Strict):
    """One contestant: a base model, optionally with its own PEFT settings over the shared ones; or, with
    ``kind: openai``, a hosted fine-tuning job (``hosted``) on the same data."""

    name: str
    kind: Literal["local", "openai"] = Field(
        default="local", description="local: trained by bakeoff (peft/TRL); openai: a hosted fine-tuning job"
    )
    model: str = Field(min_length=1, description="hf://org/name[@rev], tiny://FAMILY, s3://bucket/key or a path; "
                       "kind openai: the provider's base model id")
    peft: PeftOverride = Field(default_factory=PeftOverride, description="keys of `peft` to override for this arm")
    trust_remote_code: bool = False
    nodes: int = Field(
        default=1, ge=1, description="training nodes, each with resources.finetune.gpu; more than 1 runs a "
        "Kubeflow Trainer job (resources.trainer) from the finetune component"
    )
    hosted: HostedFineTune | None = Field(default=None, description="the hosted job's settings (kind openai)")

    _check_name = field_validator("name")(classmethod(lambda cls, v: _slug(v)))

    @property
    def is_hosted(self) -> bool:
        """Whether a provider trains this arm (no local weights, no PEFT settings)."""
        return self.kind != "local"


def _hosted_arm_errors(arm: ArmSpec) -> list[str]:
    """What is wrong with an arm's kind-specific settings, each as ``key: message`` under the arm."""
    if not arm.is_hosted:
        return ["hosted: only for kind openai (this arm is trained locally)"] if arm.hosted is not None else []
    errors = []
    if arm.hosted is None:
        errors.append("hosted: required for kind openai (at least usd_per_1m_training_tokens, the price)")
    overridden = sorted(k for k, v in arm.peft.model_dump().items() if v is not None)
    if overridden:
        errors.append(f"peft: a hosted arm has no PEFT settings (the provider trains it); remove "
                      f"{', '.join(overridden)}")
    if arm.nodes != 1:
        errors.append("nodes: a hosted arm trains on the provider's machines; remove nodes")
    if arm.trust_remote_code:
        errors.append("trust_remote_code: a hosted arm loads no model code; remove it")
    if "://" in arm.model:
        errors.append(f"model: a hosted arm's model is the provider's model id (e.g. gpt-4o-mini-2024-07-18), "
                      f"not a URI; got {arm.model!r}")
    return errors


class GenerationEndpoint(_Strict):
    """An OpenAI-compatible server that generates (a vLLM server with the adapters as LoRA modules, or a
    hosted model). The base variants ask for ``base_model`` (default: the arm's Hub id), the fine-tuned
    variant for ``finetuned_model`` (default: the arm's name, as a LoRA module is served)."""

    base_url: str = Field(min_length=1)
    api_key_env: str = "OPENAI_API_KEY"
    api: Literal["completions", "chat"] = Field(
        default="completions", description="completions sends the templated prompt as is; chat sends it as "
        "the user's message"
    )
    base_model: str | None = None
    finetuned_model: str | None = None
    concurrency: int = Field(default=8, gt=0)
    timeout_s: float = Field(default=120, gt=0)
    max_retries: int = Field(default=3, ge=0)


class GenerationSpec(_Strict):
    """Decoding settings, the same for every arm and variant, and the backend that generates."""

    max_new_tokens: int = Field(default=256, gt=0)
    batch_size: int = Field(default=16, gt=0)
    few_shot_k: int = Field(default=3, ge=1)
    backend: Literal["auto", "transformers", "vllm", "openai"] = Field(
        default="auto", description="auto: vLLM when CUDA and vllm are present, else transformers"
    )
    endpoint: GenerationEndpoint | None = None

    @model_validator(mode="after")
    def _endpoint_for_openai(self) -> GenerationSpec:
        if self.backend == "openai" and self.endpoint is None:
            raise ValueError("backend openai needs generation.endpoint (base_url of an OpenAI-compatible server)")
        return self


class JudgeSpec(_Strict):
    """An OpenAI-compatible chat endpoint that grades answers 1-10 against the reference."""

    base_url: str = Field(min_length=1)
    model: str = Field(min_length=1)
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(default=8, gt=0)
    max_retries: int = Field(default=3, ge=0)
    timeout_s: float = Field(default=60, gt=0)
    max_tokens: int = Field(default=512, gt=0)
    logprobs: bool = Field(
        default=False, description="also the logprob-weighted rating (for endpoints that return logprobs)"
    )
    usd_per_1m_input_tokens: float | None = Field(default=None, ge=0, description="price, for the cost shown")
    usd_per_1m_output_tokens: float | None = Field(default=None, ge=0)


class ExactMatchSpec(_Strict):
    """Exact match after NFKC, whitespace collapsing and trailing punctuation and quote removal."""

    case_sensitive: bool = False


class SqlEvalSpec(_Strict):
    """SQL execution accuracy: on the example's own database (``meta.db_id`` in ``databases``), else on
    databases filled with seeded synthetic rows from the example's CREATE TABLE context."""

    databases: str | None = Field(default=None, description="a folder of <db_id>.sqlite files (relative to the spec)")
    timeout_s: float = Field(default=5.0, gt=0)
    synthetic_databases: int = Field(default=3, gt=0)


class RagasSpec(_Strict):
    """RAGAS answer correctness and semantic similarity: an OpenAI-compatible LLM (the judge's by default)
    and an OpenAI-compatible embeddings endpoint (the LLM's by default)."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    embeddings_base_url: str | None = None
    embeddings_model: str = "text-embedding-3-small"
    embeddings_api_key_env: str | None = None
    concurrency: int = Field(default=4, gt=0)
    timeout_s: float = Field(default=60, gt=0)
    max_retries: int = Field(default=3, ge=0)
    usd_per_1m_input_tokens: float | None = Field(default=None, ge=0, description="default: the judge's price")
    usd_per_1m_output_tokens: float | None = Field(default=None, ge=0)


class EvaluationSpec(_Strict):
    metrics: list[Literal["exact_match", "judge", "answer_correctness", "answer_similarity", "sql_execution",
                          "mr_match"]] = Field(default_factory=lambda: list(METRICS), min_length=1)
    judge: JudgeSpec | None = None
    ragas: RagasSpec | None = Field(default=None, description="settings for the RAGAS metrics (default: the judge's)")
    exact_match: ExactMatchSpec = ExactMatchSpec()
    sql: SqlEvalSpec = SqlEvalSpec()

    @field_validator("metrics")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("metrics must be unique")
        return v


class GpuSpec(_Strict):
    # The accelerator resource types KFP's compiler accepts for set_accelerator_type.
    type: Literal["nvidia.com/gpu", "amd.com/gpu"] = "nvidia.com/gpu"
    count: int = Field(default=1, gt=0)
    product: str = "NVIDIA-A100-SXM4-80GB"


class Toleration(_Strict):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


class StageResources(_Strict):
    """Where and with what one stage runs on the cluster (ignored by the local runner)."""

    gpu: GpuSpec | None = None
    node_selector: dict[str, str] | None = Field(
        default=None, description="default with a GPU: nvidia.com/gpu.product = gpu.product"
    )
    tolerations: list[Toleration] | None = Field(
        default=None, description="default with a GPU: the nvidia.com/gpu NoSchedule taint"
    )
    cpu: str | None = None
    memory: str | None = None
    shm_size: str | None = Field(
        default="auto", description="a memory-backed /dev/shm of this size (data loaders, NCCL); auto: 16Gi with a "
        "GPU, none without; null: none"
    )
    timeout_s: int | None = Field(default=None, gt=0, description="the pod's time limit")
    retries: int = Field(default=2, ge=0, description="retries with exponential backoff when the task fails (a "
                         "preempted finetune resumes from its checkpoint)")
    retry_backoff: str = Field(default="60s", description="the first retry's wait; it doubles each time")
    caching: bool = Field(default=True, description="reuse a previous run's outputs for the same inputs")

    def effective_shm_size(self) -> str | None:
        if self.shm_size == "auto":
            return "16Gi" if self.gpu else None
        return self.shm_size

    def effective_node_selector(self) -> dict[str, str]:
        if self.node_selector is not None:
            return dict(self.node_selector)
        return {"nvidia.com/gpu.product": self.gpu.product} if self.gpu else {}

    def effective_tolerations(self) -> list[Toleration]:
        if self.tolerations is not None:
            return list(self.tolerations)
        return [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")] if self.gpu else []


class TrainerJobSpec(_Strict):
    """How an arm with several nodes trains: a Kubeflow Trainer job the finetune component creates and follows."""

    api: Literal["trainjob", "pytorchjob"] = Field(
        default="trainjob", description="trainjob: Kubeflow Trainer v2 (trainer.kubeflow.org); pytorchjob: the "
        "older Training Operator (kubeflow.org/v1)"
    )
    runtime: str = Field(default="torch-distributed", description="the TrainJob's ClusterTrainingRuntime")
    pod_overrides: Literal["podTemplateOverrides", "runtimePatches"] = Field(
        default="podTemplateOverrides", description="the TrainJob field that carries node selector, tolerations "
        "and volumes to the training pods (runtimePatches on Trainer releases that replaced podTemplateOverrides)"
    )
    namespace: str | None = Field(default=None, description="default: the namespace of the finetune pod")
    service_account: str | None = None
    poll_s: float = Field(default=15, gt=0, description="seconds between status checks")
    timeout_s: int | None = Field(default=None, gt=0, description="give up (and delete the job) after this long")


class ResourcesSpec(_Strict):
    """Per-stage placement on the cluster, and an optional PVC that caches models across runs."""

    prepare: StageResources = StageResources()
    finetune: StageResources = StageResources(gpu=GpuSpec())
    generate: StageResources = StageResources(gpu=GpuSpec())
    evaluate: StageResources = StageResources()
    report: StageResources = StageResources()
    model_cache_pvc: str | None = Field(
        default=None, description="a PVC mounted at /cache in finetune and generate (BAKEOFF_CACHE, HF_HOME)"
    )
    trainer: TrainerJobSpec = TrainerJobSpec()


class S3SecretRef(_Strict):
    """The Secret that holds the S3 (MinIO) credentials, and optionally the endpoint."""

    name: str = Field(min_length=1)
    access_key_key: str = "AWS_ACCESS_KEY_ID"
    secret_key_key: str = "AWS_SECRET_ACCESS_KEY"
    endpoint_key: str | None = Field(default=None, description="a key holding S3_ENDPOINT, if the Secret has one")
    endpoint_config_map: str | None = Field(
        default=None, description="a ConfigMap whose S3_ENDPOINT, S3_SECURE and AWS_REGION keys become env vars "
        "(the Helm chart publishes <release>-s3); the endpoint is not a secret"
    )


class SecretsSpec(_Strict):
    """Kubernetes Secrets whose keys reach the pods as environment variables."""

    hf_token: SecretRef | None = Field(default=None, description="-> HF_TOKEN (prepare, finetune, generate)")
    judge_api_key: SecretRef | None = Field(
        default=None, description="-> the judge's api_key_env (prepare, generate, evaluate)"
    )
    s3: S3SecretRef | None = Field(
        default=None, description="-> AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (every stage)"
    )


class CostSpec(_Strict):
    gpu_hour_usd: float | None = Field(default=None, ge=0)


class ExperimentSpec(_Strict):
    """A whole bake-off: data, shared hyperparameters, arms, variants, evaluation, resources, cost."""

    name: str
    description: str = ""
    seed: int = 42
    data: DataSpec
    training: TrainingSpec = TrainingSpec()
    peft: PeftSpec = PeftSpec()
    arms: list[ArmSpec] = Field(min_length=1)
    variants: list[Literal["fine-tuned", "base-zero-shot", "base-few-shot"]] = Field(
        default_factory=lambda: ["fine-tuned", "base-zero-shot"], min_length=1
    )
    generation: GenerationSpec = GenerationSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    resources: ResourcesSpec = ResourcesSpec()
    cost: CostSpec = CostSpec()
    secrets: SecretsSpec = SecretsSpec()

    _check_name = field_validator("name")(classmethod(lambda cls, v: _slug(v)))

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentSpec:
        errors: list[str] = []
        seen: set[str] = set()
        for i, arm in enumerate(self.arms):
            if arm.name in seen:
                errors.append(f"arms[{i}].name: duplicate arm name {arm.name!r}")
            seen.add(arm.name)
            errors += [f"arms[{i}].{e}" for e in _hosted_arm_errors(arm)]
            if arm.nodes > 1 and not arm.is_hosted and not (self.training.checkpoint_uri or "").startswith("s3://"):
                errors.append(f"arms[{i}].nodes: {arm.nodes} nodes need training.checkpoint_uri on s3:// (the "
                              "training pods read the data and write the adapter there)")
        if len(set(self.variants)) != len(self.variants):
            errors.append("variants: must be unique")
        if not errors:
            for stage in ("finetune", "generate"):
                sources: dict[str, set[tuple[str, str]]] = {}
                for name, key, env in self.secret_env(stage):
                    sources.setdefault(env, set()).add((name, key))
                for env, refs in sources.items():
                    if len(refs) > 1:
                        errors.append(f"secrets: {env} would come from {len(refs)} Secret keys in the {stage} stage "
                                      f"({', '.join(f'{n}/{k}' for n, k in sorted(refs))}); use the same Secret key "
                                      "or another api_key_env")
        if errors:
            raise SpecError(errors)
        return self

    def arm(self, name: str) -> ArmSpec:
        """The arm called ``name``; a spec error listing the arms otherwise."""
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise SpecError(f"arms: no arm named {name!r}; arms are {', '.join(a.name for a in self.arms)}")

    def arm_peft(self, arm: ArmSpec | str) -> PeftSpec:
        """The shared PEFT settings with the arm's overrides applied."""
        arm = self.arm(arm) if isinstance(arm, str) else arm
        return self.peft.model_copy(update=arm.peft.model_dump(exclude_none=True))

    def checkpoint_uri(self, arm: ArmSpec | str) -> str | None:
        """Where ``arm``'s checkpoints go: ``training.checkpoint_uri/<experiment>/<arm>``, or None."""
        if not self.training.checkpoint_uri:
            return None
        name = arm if isinstance(arm, str) else arm.name
        return f"{self.training.checkpoint_uri.rstrip('/')}/{self.name}/{name}"

    def secret_env(self, stage: str) -> list[tuple[str, str, str]]:
        """(Secret name, key, environment variable) for each Secret key ``stage`` needs; names only, no values.

        HF token: prepare, finetune, generate. Judge key: prepare and generate (the preflight), evaluate.
        S3 credentials (and endpoint, if the Secret holds it): every stage. A hosted arm's
        ``hosted.api_key_secret``: finetune and generate (as its ``hosted.api_key_env``).
        """
        needs_hf = stage in ("prepare", "finetune", "generate")
        needs_judge = stage in ("prepare", "generate", "evaluate")
        out = []
        if needs_hf and self.secrets.hf_token:
            out.append((self.secrets.hf_token.name, self.secrets.hf_token.key, "HF_TOKEN"))
        if needs_judge and self.secrets.judge_api_key:
            env = self.evaluation.judge.api_key_env if self.evaluation.judge else "OPENAI_API_KEY"
            out.append((self.secrets.judge_api_key.name, self.secrets.judge_api_key.key, env))
        s3 = self.secrets.s3
        if s3:
            out.append((s3.name, s3.access_key_key, "AWS_ACCESS_KEY_ID"))
            out.append((s3.name, s3.secret_key_key, "AWS_SECRET_ACCESS_KEY"))
            if s3.endpoint_key:
                out.append((s3.name, s3.endpoint_key, "S3_ENDPOINT"))
        if stage in ("finetune", "generate"):
            for arm in self.arms:
                ref = arm.hosted.api_key_secret if arm.hosted else None
                if ref and (ref.name, ref.key, arm.hosted.api_key_env) not in out:
                    out.append((ref.name, ref.key, arm.hosted.api_key_env))
        return out

    def to_json(self) -> str:
        """Canonical JSON (what the pipeline carries between components)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def plan(self) -> str:
        """A human-readable plan: arms x variants x metrics, data and training in one screen."""
        lines = [f"experiment {self.name} (seed {self.seed})"]
        src = ", ".join(s.uri for s in self.data.sources)
        sp = self.data.split
        template = self.data.template if isinstance(self.data.template, str) else "user"
        lines.append(f"data: {src} | template {template} | split {sp.train}/{sp.validation}/{sp.test}")
        t = self.training
        steps = f"max_steps {t.max_steps}" if t.max_steps else f"epochs {t.epochs:g}"
        lines.append(
            f"training: {steps}, batch {t.batch_size}x{t.gradient_accumulation_steps}, lr {t.learning_rate:g}, "
            f"warmup {t.warmup_ratio:g}, max_seq_length {t.max_seq_length}, precision {t.precision}"
        )
        lines.append(f"arms ({len(self.arms)}):")
        for arm in self.arms:
            if arm.is_hosted:
                h = arm.hosted
                lines.append(f"  - {arm.name}: {arm.model} | hosted fine-tuning ({arm.kind} at {h.base_url}), epochs "
                             f"{h.epochs}, ${h.usd_per_1m_training_tokens:g}/1M trained tokens, at most "
                             f"${h.max_cost_usd:g}")
                continue
            p = self.arm_peft(arm)
            lines.append(f"  - {arm.name}: {arm.model} | {p.method} r={p.r} alpha={p.alpha:g} dropout={p.dropout:g}")
        lines.append(f"variants: {', '.join(self.variants)}")
        metric_notes = []
        for m in self.evaluation.metrics:
            if m == "judge" and self.evaluation.judge is None:
                metric_notes.append("judge (not configured: no evaluation.judge)")
            elif m == "judge":
                metric_notes.append(f"judge ({self.evaluation.judge.model} at {self.evaluation.judge.base_url})")
            else:
                metric_notes.append(m)
        lines.append(f"metrics: {', '.join(metric_notes)}")
        n = len(self.arms) * len(self.variants)
        lines.append(
            f"plan: {len(self.arms)} fine-tuning runs, {n} generation runs of {sp.test} test samples, "
            f"{n * len(self.evaluation.metrics)} arm x variant x metric cells"
        )
        return "\n".join(lines)


def _key_path(loc: tuple[Any, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) or "(" in str(part):
            continue  # a union branch pydantic names (``list[str]``, ``literal['all-linear']``)
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def format_validation_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``key.path: message`` line per pydantic error."""
    lines = []
    for err in exc.errors():
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, SpecError):
            lines += ctx_err.messages
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the spec)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{_key_path(tuple(err['loc']), prefix)}: {msg}")
    return lines


def parse_spec(data: Any, source: str | None = None) -> ExperimentSpec:
    """Validate a mapping as an ExperimentSpec; a SpecError lists every problem with its key path."""
    if not isinstance(data, dict):
        raise SpecError(f"(root): expected a mapping of keys, got {type(data).__name__}", source)
    try:
        return ExperimentSpec.model_validate(data)
    except SpecError as exc:
        raise SpecError(exc.messages, source) from None
    except ValidationError as exc:
        raise SpecError(format_validation_errors(exc), source) from None


def load_spec(path: str | Path) -> ExperimentSpec:
    """Load and validate a spec YAML file. Relative local data paths are resolved against its folder.

    ``env:NAME`` reads the spec (JSON or YAML) from the environment variable NAME instead: the training
    pods of a multi-node job get it that way.
    """
    if str(path).startswith("env:"):
        var = str(path)[4:]
        if var not in os.environ:
            raise SpecError(f"cannot read spec: environment variable {var} is not set", str(path))
        try:
            data = yaml.safe_load(os.environ[var])
        except yaml.YAMLError as exc:
            raise SpecError(f"(root): not valid YAML: {exc}", str(path)) from exc
        return parse_spec(data, str(path))
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc}", str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"(root): not valid YAML: {exc}", str(path)) from exc
    if isinstance(data, dict):
        data = _resolve_relative_sources(data, path.parent)
    return parse_spec(data, str(path))


def _resolve_relative_sources(data: dict, base: Path) -> dict:
    evaluation = data.get("evaluation")
    sql = evaluation.get("sql") if isinstance(evaluation, dict) else None
    if isinstance(sql, dict) and isinstance(sql.get("databases"), str) and "://" not in sql["databases"]:
        if not Path(sql["databases"]).is_absolute():
            sql = {**sql, "databases": str((base / sql["databases"]).resolve())}
            data = {**data, "evaluation": {**evaluation, "sql": sql}}
    sources = (data.get("data") or {}).get("sources") if isinstance(data.get("data"), dict) else None
    if not isinstance(sources, list):
        return data
    fixed = []
    for src in sources:
        if isinstance(src, dict) and isinstance(src.get("uri"), str) and "://" not in src["uri"]:
            p = Path(src["uri"])
            if not p.is_absolute():
                src = {**src, "uri": str((base / p).resolve())}
        fixed.append(src)
    return {**data, "data": {**data["data"], "sources": fixed}}


def spec_from_json(text: str) -> ExperimentSpec:
    """The inverse of ``ExperimentSpec.to_json`` (what components receive)."""
    return parse_spec(json.loads(text), "spec_json")


def apply_resource_defaults(spec: ExperimentSpec, defaults: Any, source: str = "resource defaults") -> ExperimentSpec:
    """Fill the stages' resources the spec leaves unset from ``defaults`` (``{stage: {key: value}}``, e.g.
    the Helm chart's GPU pool ConfigMap, ``resources.yaml``); what the spec sets itself wins, key by key."""
    stages = ("prepare", "finetune", "generate", "evaluate", "report")
    if not isinstance(defaults, dict):
        raise SpecError(f"{source}: expected a mapping of stage to resources", source)
    data = spec.model_dump(mode="json")
    errors = []
    for stage, values in defaults.items():
        if stage not in stages or not isinstance(values, dict):
            errors.append(f"{stage}: expected one of {', '.join(stages)} with a mapping of resources")
            continue
        explicit = getattr(spec.resources, stage).model_fields_set if stage in spec.resources.model_fields_set \
            else set()
        for key, value in values.items():
            if key not in explicit:
                data["resources"][stage][key] = value
    if errors:
        raise SpecError(errors, source)
    return parse_spec(data, source)

"""The ``generation`` and ``evaluation`` sections: how answers are produced and how they are scored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bakeoff.spec.base import MAX_BATCH_SIZE, SecretRef, Strict
from bakeoff.spec.endpoint import Endpoint, ModelEndpoint

VARIANTS = ("fine-tuned", "base-zero-shot", "base-few-shot")
METRICS = ("exact_match", "judge")
RAGAS_METRICS = ("answer_correctness", "answer_similarity")
SLOT_METRICS = ("mr_slot_precision", "mr_slot_recall", "mr_slot_f1")


class GenerationEndpoint(Endpoint):
    """An OpenAI-compatible server that generates (a vLLM server with the adapters as LoRA modules, or a
    hosted model). The base variants ask for ``base_model`` (default: the arm's Hub id), the fine-tuned
    variant for ``finetuned_model`` (default: the arm's name, as a LoRA module is served)."""

    api: Literal["completions", "chat"] = Field(
        default="completions", description="completions sends the templated prompt as is; chat sends it as "
        "the user's message"
    )
    base_model: str | None = Field(default=None, description="the served name of the base model (default: the "
                                   "arm's Hub id, else its model)")
    finetuned_model: str | None = Field(default=None, description="the served name of the fine-tuned model "
                                        "(default: the arm's name)")
    timeout_s: float = Field(default=120, gt=0, description="per request, in seconds")


class GenerationSpec(Strict):
    """Decoding settings, the same for every arm and variant, and the backend that generates."""

    max_new_tokens: int = Field(default=256, gt=0, description="the longest answer, in tokens (greedy decoding)")
    batch_size: int = Field(default=16, gt=0, le=MAX_BATCH_SIZE, description="prompts per batch (transformers "
                            "backend)")
    few_shot_k: int = Field(default=3, ge=1, description="train examples before each question (base-few-shot)")
    backend: Literal["auto", "transformers", "vllm", "openai"] = Field(
        default="auto", description="auto: vLLM when CUDA and vllm are present, else transformers; openai: "
        "generation.endpoint"
    )
    endpoint: GenerationEndpoint | None = Field(default=None, description="the server for backend openai")

    @model_validator(mode="after")
    def _endpoint_for_openai(self) -> GenerationSpec:
        if self.backend == "openai" and self.endpoint is None:
            raise ValueError("backend openai needs generation.endpoint (base_url of an OpenAI-compatible server)")
        return self


class JudgeSpec(ModelEndpoint):
    """An OpenAI-compatible chat endpoint that grades answers 1-10 against the reference."""

    rubric: Literal["reference", "open-ended"] = Field(
        default="reference", description="reference: compare with the reference answer first and correct its "
        "mistakes (FastChat's reference-guided grading; tasks with one right answer); open-ended: helpfulness, "
        "correctness and instruction following, the reference one good answer among many, its style and length "
        "not rewarded (instruction data such as alpaca or instruct-v3)")
    max_tokens: int = Field(default=512, gt=0, description="the longest judge reply, in tokens")
    logprobs: bool = Field(
        default=False, description="also the logprob-weighted rating (for endpoints that return logprobs)"
    )
    usd_per_1m_input_tokens: float | None = Field(default=None, ge=0, description="price, for the cost shown")
    usd_per_1m_output_tokens: float | None = Field(default=None, ge=0, description="price, for the cost shown")


class ExactMatchSpec(Strict):
    """Exact match after NFKC, whitespace collapsing and trailing punctuation and quote removal."""

    case_sensitive: bool = Field(default=False, description="compare case too")


class SqlEvalSpec(Strict):
    """SQL execution accuracy: on the example's own database (``meta.db_id`` in ``databases``), else on
    databases filled with seeded synthetic rows from the example's CREATE TABLE context."""

    databases: str | None = Field(default=None, description="a folder of <db_id>.sqlite files (relative to the spec)")
    timeout_s: float = Field(default=5.0, gt=0, description="per query, in seconds")
    synthetic_databases: int = Field(default=3, gt=0, description="seeded databases built from a CREATE TABLE "
                                     "context; a prediction must match the gold result on all of them")


class RagasSpec(Strict):
    """RAGAS answer correctness and semantic similarity: an OpenAI-compatible LLM (the judge's by default)
    and an OpenAI-compatible embeddings endpoint (the LLM's by default)."""

    base_url: str | None = Field(default=None, description="the LLM endpoint (default: the judge's)")
    model: str | None = Field(default=None, description="the LLM (default: the judge's)")
    api_key_env: str | None = Field(default=None, description="the LLM key's variable (default: the judge's)")
    api_key_secret: SecretRef | None = Field(default=None, description="on Kubernetes: the Secret key that "
                                             "becomes the LLM's api_key_env in the evaluate pod")
    embeddings_base_url: str | None = Field(default=None, description="the embeddings endpoint (default: the "
                                            "LLM's)")
    embeddings_model: str = Field(default="text-embedding-3-small", description="the embeddings model")
    embeddings_api_key_env: str | None = Field(default=None, description="the embeddings key's variable "
                                               "(default: the LLM's)")
    embeddings_api_key_secret: SecretRef | None = Field(
        default=None, description="on Kubernetes: the Secret key that becomes embeddings_api_key_env")
    concurrency: int = Field(default=4, gt=0, description="samples scored at a time")
    timeout_s: float = Field(default=60, gt=0, description="per request, in seconds")
    max_retries: int = Field(default=3, ge=0, description="per sample and metric, on 429, 5xx, timeouts and "
                             "connection errors, with exponential backoff")
    usd_per_1m_input_tokens: float | None = Field(default=None, ge=0, description="default: the judge's price")
    usd_per_1m_output_tokens: float | None = Field(default=None, ge=0, description="default: the judge's price")


PAIRS = ("all", "reference", "base")


class PairwiseSpec(Strict):
    """The pairwise judge (MT-Bench's pairwise comparison with position swapping): for each chosen pair of
    contestants the judge sees both answers to a test question, in both orders. Every endpoint key left out
    is the judge's (``evaluation.judge``)."""

    pairs: Literal["all", "reference", "base"] = Field(
        default="all", description="all: every pair of arms (their fine-tuned variants); reference: each arm "
        "against the arm named in reference; base: each arm's fine-tuned variant against its own base-zero-shot")
    reference: str | None = Field(default=None, description="the arm every other arm is compared with (pairs "
                                  "reference)")
    rubric: Literal["reference", "open-ended"] | None = Field(
        default=None, description="as the judge's rubric: reference (the reference answer is known to be correct) "
        "or open-ended (the reference one good answer among many); default: the judge's, else reference")
    max_tokens: int = Field(default=1024, gt=0, description="the longest reply, in tokens (it compares two "
                            "answers before its verdict, so more than the judge's)")
    base_url: str | None = Field(default=None, min_length=1, description="the endpoint (default: the judge's)")
    model: str | None = Field(default=None, min_length=1, description="the judge model (default: the judge's)")
    api_key_env: str | None = Field(default=None, min_length=1, description="the key's variable (default: the "
                                    "judge's)")
    api_key_secret: SecretRef | None = Field(default=None, description="on Kubernetes: the Secret key that "
                                             "becomes api_key_env in the evaluate pods")
    concurrency: int | None = Field(default=None, gt=0, description="requests in flight at a time (default: "
                                    "the judge's)")
    timeout_s: float | None = Field(default=None, gt=0, description="per request, in seconds (default: the "
                                    "judge's)")
    max_retries: int | None = Field(default=None, ge=0, description="per request, on 429, 5xx, timeouts and "
                                    "connection errors, with exponential backoff (default: the judge's)")
    usd_per_1m_input_tokens: float | None = Field(default=None, ge=0, description="default: the judge's price")
    usd_per_1m_output_tokens: float | None = Field(default=None, ge=0, description="default: the judge's price")


class PairwiseEndpoint(ModelEndpoint):
    """The pairwise judge with every key resolved (``pairwise_endpoint``): what ``run_pairwise`` is given."""

    rubric: Literal["reference", "open-ended"] = Field(default="reference", description="as PairwiseSpec.rubric")
    max_tokens: int = Field(default=1024, gt=0, description="the longest reply, in tokens")
    usd_per_1m_input_tokens: float | None = Field(default=None, ge=0, description="price, for the cost shown")
    usd_per_1m_output_tokens: float | None = Field(default=None, ge=0, description="price, for the cost shown")


class EvaluationSpec(Strict):
    """Which metrics score the answers, and the endpoints and settings they need."""

    metrics: list[Literal["exact_match", "judge", "answer_correctness", "answer_similarity", "sql_execution",
                          "mr_match"]] = Field(default_factory=lambda: list(METRICS), min_length=1,
                                               description="the metrics, in the report's order")
    judge: JudgeSpec | None = Field(default=None, description="the LLM judge's endpoint (metric judge)")
    ragas: RagasSpec | None = Field(default=None, description="settings for the RAGAS metrics (default: the judge's)")
    exact_match: ExactMatchSpec = Field(default=ExactMatchSpec(), description="exact-match normalisation")
    sql: SqlEvalSpec = Field(default=SqlEvalSpec(), description="SQL execution accuracy (metric sql_execution)")
    pairwise: PairwiseSpec | None = Field(
        default=None, description="the pairwise judge: chosen pairs of arms compared answer by answer, in both "
        "orders (its endpoint: the judge's by default)")
    primary: str | None = Field(
        default=None, description="the metric the report's decision names the best arm on: one of metrics, or "
        "pairwise; default: pairwise when configured (pairs all or reference), else judge (when configured), "
        "else exact_match, else the first metric")

    def primary_metric(self) -> str:
        """``primary``, or the default it describes."""
        if self.primary:
            return self.primary
        if self.pairwise is not None and self.pairwise.pairs != "base":
            return "pairwise"
        if "judge" in self.metrics and self.judge is not None:
            return "judge"
        return "exact_match" if "exact_match" in self.metrics else self.metrics[0]

    @field_validator("metrics")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("metrics must be unique")
        return v

    def ragas_llm(self) -> ModelEndpoint | None:
        """The RAGAS LLM endpoint, filled from the judge's where the ragas section leaves keys out; None
        when neither names a base_url and a model."""
        r, j = self.ragas, self.judge
        base_url = (r and r.base_url) or (j and j.base_url)
        model = (r and r.model) or (j and j.model)
        if not base_url or not model:
            return None
        return ModelEndpoint(
            base_url=base_url, model=model,
            api_key_env=(r and r.api_key_env) or (j and j.api_key_env) or "OPENAI_API_KEY",
            api_key_secret=(r and r.api_key_secret) or None,
            concurrency=r.concurrency if r else 4, timeout_s=r.timeout_s if r else 60,
            max_retries=r.max_retries if r else 3,
        )

    def ragas_embeddings(self) -> ModelEndpoint | None:
        """The RAGAS embeddings endpoint (the LLM's address and key unless the ragas section names others)."""
        llm, r = self.ragas_llm(), self.ragas
        if llm is None:
            return None
        return llm.model_copy(update={
            "base_url": (r and r.embeddings_base_url) or llm.base_url,
            "model": r.embeddings_model if r else RagasSpec().embeddings_model,
            "api_key_env": (r and r.embeddings_api_key_env) or llm.api_key_env,
            "api_key_secret": (r and r.embeddings_api_key_secret) or llm.api_key_secret,
        })

    def ragas_prices(self) -> tuple[float | None, float | None]:
        """RAGAS's prices per 1M input and output tokens: the ragas section's, else the judge's."""
        return tuple(next((getattr(s, key) for s in (self.ragas, self.judge)
                           if s is not None and getattr(s, key) is not None), None)
                     for key in ("usd_per_1m_input_tokens", "usd_per_1m_output_tokens"))


def pairwise_endpoint(evaluation: EvaluationSpec) -> PairwiseEndpoint | None:
    """The pairwise judge's endpoint: each key the pairwise section leaves out filled from the judge's; None
    without a pairwise section, or when neither names a base_url and a model."""
    p, j = evaluation.pairwise, evaluation.judge
    if p is None:
        return None
    base_url, model = p.base_url or (j and j.base_url), p.model or (j and j.model)
    if not base_url or not model:
        return None
    inherited = {key: getattr(p, key) if getattr(p, key) is not None else getattr(j, key, None)
                 for key in ("api_key_env", "concurrency", "timeout_s", "max_retries", "usd_per_1m_input_tokens",
                             "usd_per_1m_output_tokens")}
    given = {key: value for key, value in inherited.items() if value is not None}
    return PairwiseEndpoint(base_url=base_url, model=model, api_key_secret=p.api_key_secret,
                            rubric=p.rubric or (j.rubric if j else "reference"), max_tokens=p.max_tokens, **given)


def contestant(arm: str, variant: str = "fine-tuned") -> str:
    """A pairwise contestant's name: ``ARM/VARIANT`` (the variant names of ``variants``)."""
    return f"{arm}/{variant}"


def pairwise_pairs(evaluation: EvaluationSpec, arms: Sequence[str]) -> list[tuple[str, str]]:
    """The (a, b) contestant pairs the pairwise judge compares, a the arm in question and b what it is compared
    with: every pair of arms in the spec's order (all), each arm against the reference arm (reference), or each
    arm's fine-tuned variant against its own base-zero-shot (base); [] without a pairwise section."""
    p = evaluation.pairwise
    if p is None:
        return []
    if p.pairs == "base":
        return [(contestant(arm), contestant(arm, "base-zero-shot")) for arm in arms]
    if p.pairs == "reference":
        return [(contestant(arm), contestant(p.reference)) for arm in arms if arm != p.reference]
    return [(contestant(a), contestant(b)) for i, a in enumerate(arms) for b in arms[i + 1:]]


def pairwise_errors(evaluation: EvaluationSpec, arms: Sequence[str], variants: Sequence[str]) -> list[str]:
    """What is wrong with ``evaluation.pairwise`` (and ``evaluation.primary``) given the spec's arms and
    variants, each ``key: message``."""
    p, where = evaluation.pairwise, "evaluation.pairwise"
    errors = []
    primary = evaluation.primary
    if primary is not None and primary not in evaluation.metrics and primary != "pairwise":
        errors.append(f"evaluation.primary: {primary!r} is not one of evaluation.metrics "
                      f"({', '.join(evaluation.metrics)}) nor pairwise")
    elif primary == "pairwise" and (p is None or p.pairs == "base"):
        errors.append("evaluation.primary: pairwise needs evaluation.pairwise with pairs all or reference (pairs "
                      "base compares each arm with its own base model, which ranks no arms)")
    if p is None:
        return errors
    if pairwise_endpoint(evaluation) is None:
        errors.append(f"{where}: needs an endpoint: its own base_url and model, or an evaluation.judge to use")
    if p.pairs == "reference" and p.reference is None:
        errors.append(f"{where}.reference: required for pairs reference (the name of the arm to compare with)")
    elif p.pairs != "reference" and p.reference is not None:
        errors.append(f"{where}.reference: only for pairs reference (pairs is {p.pairs}); remove it")
    elif p.reference is not None and p.reference not in arms:
        errors.append(f"{where}.reference: unknown arm {p.reference!r}; arms are {', '.join(arms)}")
    if "fine-tuned" not in variants:
        errors.append(f"{where}.pairs: compares fine-tuned answers, but variants has no fine-tuned")
    if p.pairs == "base" and "base-zero-shot" not in variants:
        errors.append(f"{where}.pairs: base compares with base-zero-shot answers, but variants has no "
                      "base-zero-shot; add it, or use pairs all or reference")
    if p.pairs in ("all", "reference") and len(arms) < 2:
        errors.append(f"{where}.pairs: {p.pairs} needs at least two arms (there is one); use pairs base to "
                      "compare the arm with its base model")
    return errors


def metric_names(evaluation: EvaluationSpec) -> list[str]:
    """The metrics an evaluation reports: the spec's, with mr_match's slot scores and the judge's
    logprob-weighted rating beside them."""
    names = []
    for name in evaluation.metrics:
        names.append(name)
        if name == "mr_match":
            names += SLOT_METRICS
        if name == "judge" and evaluation.judge is not None and evaluation.judge.logprobs:
            names.append("judge_weighted")
    return names


__all__ = ["METRICS", "PAIRS", "RAGAS_METRICS", "SLOT_METRICS", "VARIANTS", "EvaluationSpec", "ExactMatchSpec",
           "GenerationEndpoint", "GenerationSpec", "JudgeSpec", "PairwiseEndpoint", "PairwiseSpec", "RagasSpec",
           "SqlEvalSpec", "contestant", "metric_names", "pairwise_endpoint", "pairwise_errors", "pairwise_pairs"]

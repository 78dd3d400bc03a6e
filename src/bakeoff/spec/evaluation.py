"""The ``generation`` and ``evaluation`` sections: how answers are produced and how they are scored."""

from __future__ import annotations

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


class EvaluationSpec(Strict):
    """Which metrics score the answers, and the endpoints and settings they need."""

    metrics: list[Literal["exact_match", "judge", "answer_correctness", "answer_similarity", "sql_execution",
                          "mr_match"]] = Field(default_factory=lambda: list(METRICS), min_length=1,
                                               description="the metrics, in the report's order")
    judge: JudgeSpec | None = Field(default=None, description="the LLM judge's endpoint (metric judge)")
    ragas: RagasSpec | None = Field(default=None, description="settings for the RAGAS metrics (default: the judge's)")
    exact_match: ExactMatchSpec = Field(default=ExactMatchSpec(), description="exact-match normalisation")
    sql: SqlEvalSpec = Field(default=SqlEvalSpec(), description="SQL execution accuracy (metric sql_execution)")

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


__all__ = ["METRICS", "RAGAS_METRICS", "SLOT_METRICS", "VARIANTS", "EvaluationSpec", "ExactMatchSpec",
           "GenerationEndpoint", "GenerationSpec", "JudgeSpec", "RagasSpec", "SqlEvalSpec", "metric_names"]

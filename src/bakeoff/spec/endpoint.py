"""One model of an OpenAI-compatible endpoint, shared by the judge, RAGAS, the generation endpoint and the
hosted arm: where it is, which environment variable holds its key (and the Secret that fills it on
Kubernetes), and how hard to push it."""

from __future__ import annotations

from pydantic import Field

from bakeoff.spec.base import SecretRef, Strict


class Endpoint(Strict):
    """An OpenAI-compatible API (OpenAI itself, vLLM, a proxy): its address, key and limits."""

    base_url: str = Field(min_length=1, description="the API's base URL, e.g. https://api.openai.com/v1")
    api_key_env: str = Field(default="OPENAI_API_KEY", min_length=1, description="the environment variable that "
                             "holds the API key (not needed for endpoints on loopback or in the cluster)")
    api_key_secret: SecretRef | None = Field(
        default=None, description="on Kubernetes: the Secret key that becomes api_key_env in the pods that call "
        "this endpoint")
    concurrency: int = Field(default=8, gt=0, description="requests in flight at a time")
    timeout_s: float = Field(default=60, gt=0, description="per request, in seconds")
    max_retries: int = Field(default=3, ge=0, description="per request, on 429, 5xx, timeouts and connection "
                             "errors, with exponential backoff")


class ModelEndpoint(Endpoint):
    """An endpoint and the model asked there."""

    model: str = Field(min_length=1, description="the model name the endpoint serves")


__all__ = ["Endpoint", "ModelEndpoint"]

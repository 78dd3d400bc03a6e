"""Generation backends besides transformers: an OpenAI-compatible endpoint and vLLM.

All return, per prompt, ``{"answer", "new_tokens", "stopped"}`` like ``batched_greedy``; decoding is
greedy (temperature 0) with the same ``max_new_tokens`` for every variant.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from bakeoff import endpoints
from bakeoff.errors import EvaluationError
from bakeoff.spec import Endpoint

log = logging.getLogger(__name__)


def vllm_available() -> bool:
    """True when a CUDA GPU is visible and vllm imports."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``vllm`` when it can run here, else ``transformers``; other values as given."""
    if backend == "auto":
        return "vllm" if vllm_available() else "transformers"
    if backend == "vllm" and not vllm_available():
        raise EvaluationError("generation.backend: vllm needs a CUDA GPU and the vllm package; use auto or "
                              "transformers")
    return backend


def endpoint_answers(endpoint: Endpoint, where: str, api: str, model: str, prompts: Sequence[str | list[dict]],
                     max_new_tokens: int) -> list[dict]:
    """Greedy answers from an OpenAI-compatible server, ``endpoint.concurrency`` requests at a time.

    ``api`` is ``completions`` or ``chat``. A prompt is a text (with ``chat``, sent as the user's message)
    or, for ``chat``, a list of chat messages sent as they are (a hosted arm's system message and few-shot
    turns). ``where`` is the endpoint's spec key, for the errors.

    The client retries 429, 5xx and timeouts ``max_retries`` times with backoff; a request that still
    fails ends the stage with the server's message (generation is not scored, so nothing is half-done).
    """
    import openai

    client = endpoints.client(endpoint, where, error=EvaluationError)

    def one(prompt: str) -> dict:
        try:
            if api == "completions" and isinstance(prompt, list):
                raise EvaluationError(f"{where}: chat messages need api: chat")
            if api == "completions":
                resp = client.completions.create(model=model, prompt=prompt, max_tokens=max_new_tokens, temperature=0)
                choice = resp.choices[0]
                text = choice.text or ""
            else:
                messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
                resp = client.chat.completions.create(model=model, messages=messages, max_tokens=max_new_tokens,
                                                      temperature=0)
                choice = resp.choices[0]
                text = choice.message.content or ""
        except openai.APIError as exc:
            raise EvaluationError(f"generation endpoint {endpoint.base_url} (model {model!r}) failed: {exc}") from exc
        tokens = int(getattr(resp.usage, "completion_tokens", 0) or 0) if resp.usage else 0
        return {"answer": text.strip(), "new_tokens": tokens,
                "stopped": "max_new_tokens" if choice.finish_reason == "length" else "eos"}

    with ThreadPoolExecutor(max_workers=endpoint.concurrency) as pool:
        return list(pool.map(one, prompts))


def vllm_answers(llm, prompts: Sequence[str], max_new_tokens: int, lora_request=None) -> list[dict]:
    """Greedy answers from a ``vllm.LLM`` (the adapter, if any, served as a LoRA request)."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_new_tokens)
    outputs = llm.generate(list(prompts), params, lora_request=lora_request, use_tqdm=False)
    answers = []
    for out in outputs:
        c = out.outputs[0]
        answers.append({"answer": c.text.strip(), "new_tokens": len(c.token_ids),
                        "stopped": "max_new_tokens" if c.finish_reason == "length" else "eos"})
    return answers

"""Generation backends besides transformers: an OpenAI-compatible endpoint and vLLM.

All return, per prompt, ``{"answer", "new_tokens", "stopped"}`` like ``batched_greedy``; decoding is
greedy (temperature 0) with the same ``max_new_tokens`` for every variant.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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

    ``api`` is ``completions`` (a prompt is a text; the server adds its BOS, as the tokenizer does in
    training) or ``chat`` (a prompt is a list of chat messages, few-shot examples as earlier turns; the
    server applies the chat template once). ``where`` is the endpoint's spec key, for the errors.

    The client retries 429, 5xx and timeouts ``max_retries`` times with backoff, and so does a malformed 200
    reply (no ``choices``: a proxy's page); a request that still fails ends the stage with the server's
    message (generation is not scored, so nothing is half-done).
    """
    import openai

    client = endpoints.client(endpoint, where, error=EvaluationError)
    if any((api == "chat") != isinstance(prompt, list) for prompt in prompts):
        raise EvaluationError(f"{where}: api {api} takes {'chat messages' if api == 'chat' else 'a text'}; "
                              "use api chat with template chat, api completions otherwise")

    def ask(prompt):
        if api == "completions":
            resp = client.completions.create(model=model, prompt=prompt, max_tokens=max_new_tokens, temperature=0)
            choice = endpoints.reply_choices(resp, where)[0]
            return resp, choice, choice.text or ""
        resp = client.chat.completions.create(model=model, messages=prompt, max_tokens=max_new_tokens, temperature=0)
        choice = endpoints.reply_choices(resp, where)[0]
        return resp, choice, choice.message.content or ""

    def one(prompt) -> dict:
        try:
            resp, choice, text = endpoints.retrying(endpoint.max_retries,
                                                    retry_if=lambda e: endpoints.malformed(e) is not None)(ask, prompt)
        except (openai.APIError, endpoints.MalformedReply) as exc:
            raise EvaluationError(f"generation endpoint {endpoint.base_url} (model {model!r}) failed: {exc}") from exc
        tokens = int(getattr(resp.usage, "completion_tokens", 0) or 0) if resp.usage else 0
        return {"answer": text.strip(), "new_tokens": tokens,
                "stopped": "max_new_tokens" if choice.finish_reason == "length" else "eos"}

    with ThreadPoolExecutor(max_workers=endpoint.concurrency) as pool:
        return list(pool.map(one, prompts))


# The ranks vLLM sizes its LoRA slots for (vllm/config/lora.py, MaxLoRARanks, vllm-project/vllm at 01230b40).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_max_rank(config: dict) -> int:
    """The largest rank in a peft LoRA adapter config: ``r`` and every ``rank_pattern`` value."""
    return max([int(config.get("r") or 0), *(int(v) for v in (config.get("rank_pattern") or {}).values())])


def vllm_max_lora_rank(config: dict) -> int:
    """The adapter's largest rank rounded up to a rank vLLM accepts."""
    rank = adapter_max_rank(config)
    return next(r for r in VLLM_LORA_RANKS if r >= rank)


def vllm_cannot_serve(method: str, weights: Path | None) -> str | None:
    """Why vLLM cannot generate with this fine-tune (it then goes to transformers), or None when it can."""
    if method == "qlora":
        return "a QLoRA adapter runs on the 4-bit base it was trained on"
    if method == "full":
        return "a full fine-tune is a second complete model; transformers serves it and the base in turn"
    if weights is None:
        return None
    config = json.loads((Path(weights) / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        return f"vLLM serves LoRA adapters only (this one is {config['peft_type']})"
    if config.get("use_dora"):
        return "vLLM does not serve DoRA adapters"
    if config.get("init_lora_weights") == "loftq" or config.get("loftq_config"):
        return "a LoftQ adapter belongs to the base LoftQ rewrote, not to the published base vLLM would load"
    if config.get("target_parameters"):
        return "vLLM does not serve LoRA on fused expert parameters (target_experts)"
    if config.get("modules_to_save"):
        return "vLLM serves adapters without modules_to_save only"
    if adapter_max_rank(config) > VLLM_LORA_RANKS[-1]:
        return f"rank {adapter_max_rank(config)} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})"
    return None


def vllm_answers(llm, prompts: Sequence[list[int]], max_new_tokens: int, lora_request=None) -> list[dict]:
    """Greedy answers from a ``vllm.LLM`` fed token ids (the same transformers gets), the adapter, if any,
    served as a LoRA request."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_new_tokens)
    outputs = llm.generate([{"prompt_token_ids": list(ids)} for ids in prompts], params, lora_request=lora_request,
                           use_tqdm=False)
    answers = []
    for out in outputs:
        c = out.outputs[0]
        answers.append({"answer": c.text.strip(), "new_tokens": len(c.token_ids),
                        "stopped": "max_new_tokens" if c.finish_reason == "length" else "eos"})
    return answers

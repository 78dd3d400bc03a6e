"""The generate stage: batched greedy decoding on the test split, per variant.

Variants: ``fine-tuned`` (base + adapter), ``base-zero-shot`` (the same model with the adapter
disabled) and ``base-few-shot`` (adapter disabled, ``few_shot_k`` train examples before the
question, drawn with the run's seed). The decoding settings are the same for all. A hosted arm
(``kind: openai``) asks its provider through chat completions: the fine-tuned model for ``fine-tuned``,
the arm's base model for the base variants.
Which weights the fine-tuned variant loads follows the spec's PEFT method (``method``): an adapter on
the base (on the 4-bit base for QLoRA), or the complete model of a full fine-tune.
Output (``bakeoff.artifacts``): ``generations.jsonl`` (one row per test example and variant) and
``generation.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bakeoff.artifacts import finetuned_weights, hosted_model_id, read_split, write_generations
from bakeoff.errors import ModelError
from bakeoff.generate.backends import (
    endpoint_answers,
    resolve_backend,
    vllm_answers,
    vllm_cannot_serve,
    vllm_max_lora_rank,
)
from bakeoff.models.loading import (
    load_model,
    load_tokenizer,
    pick_device,
    quantization_config,
    resolve_model,
    resolve_precision,
    torch_dtype,
)
from bakeoff.spec import ArmSpec, GenerationSpec
from bakeoff.storage import parse_hf_uri
from bakeoff.templates import chat_messages, get_template

log = logging.getLogger(__name__)


def few_shots(variants, data_dir, generation, seed: int) -> list[dict]:
    """The base-few-shot variant's examples: ``few_shot_k`` train rows drawn with the spec's seed (the same
    for every arm and backend); none without that variant."""
    if "base-few-shot" not in variants:
        return []
    train = read_split(data_dir, "train")
    return random.Random(seed).sample(train, min(generation.few_shot_k, len(train)))


def batched_greedy(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int, batch_size: int) -> list[dict]:
    """Greedy answers for ``prompts`` (token ids, from ``prompt_ids``): left padding, batches of similar
    length, stop at end of sequence."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[dict | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer.pad({"input_ids": [list(prompts[i]) for i in idx]}, padding=True, return_tensors="pt",
                            padding_side="left")
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        new = out[:, enc["input_ids"].shape[1]:]
        for row, i in enumerate(idx):
            answers[i] = _decoded(tokenizer, new[row].tolist())
    return answers  # type: ignore[return-value]


def _decoded(tokenizer, ids: list[int]) -> dict:
    finished = tokenizer.eos_token_id in ids
    if finished:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    ids = [t for t in ids if t != tokenizer.pad_token_id]
    return {"answer": tokenizer.decode(ids, skip_special_tokens=True).strip(), "new_tokens": len(ids),
            "stopped": "eos" if finished else "max_new_tokens"}


Prompt = str | list[dict[str, str]]  # a text, or chat messages (the chat template)


def few_shot_prompt(template: Any, examples: Sequence[dict], example: dict) -> Prompt:
    """The test prompt preceded by worked examples, each a full turn in the same template: one text, or,
    for ``chat``, the examples as earlier user / assistant turns."""
    template = get_template(template)
    if template.chat:
        messages = []
        for e in examples:
            messages += template.messages(e["instruction"], e["input"])
            messages.append({"role": "assistant", "content": e["reference"]})
        return messages + template.messages(example["instruction"], example["input"])
    shots = "".join(template.prompt(e["instruction"], e["input"]) + template.completion(e["reference"])
                    for e in examples)
    return shots + template.prompt(example["instruction"], example["input"])


def variant_prompts(template: Any, variant: str, test: Sequence[dict], shots: Sequence[dict]) -> list[Prompt]:
    """What each test example asks in ``variant``: the prepared prompt (text, or the chat messages), or
    the few-shot prompt."""
    if variant == "base-few-shot":
        return [few_shot_prompt(template, shots, ex) for ex in test]
    if get_template(template).chat:
        return [ex["messages"] for ex in test]
    return [ex["prompt"] for ex in test]


def prompt_ids(tokenizer, prompt: Prompt) -> list[int]:
    """The token ids a model is fed for ``prompt``: the text encoded with the tokenizer's special tokens
    (its BOS, as TRL encodes the training text), or the messages through the chat template (which writes
    its own). transformers and vLLM get these ids; a completions server computes the same from the text."""
    if isinstance(prompt, list):
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ModelError("data.template: chat needs a tokenizer with a chat template; this arm's has none "
                             "(use llama2-inst, alpaca or a template of your own)")
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False))
    return list(tokenizer(prompt)["input_ids"])


def generate(
    arm: ArmSpec,
    generation: GenerationSpec,
    variants: Sequence[str],
    data_dir: str | Path,
    finetuned_dir: str | Path | None,
    out_dir: str | Path,
    template: Any = "llama2-inst",
    seed: int = 42,
    *,
    method: str,
    precision: str = "auto",
) -> dict:
    """Answer the test split with each variant; writes ``generations.jsonl`` and returns a summary.

    ``finetuned_dir`` is the finetune stage's output (or the weights' folder itself); ``method`` is the
    arm's PEFT method from the spec (``hosted`` for a hosted arm); ``precision`` the training's (``auto``:
    bf16 where the GPU has it, fp32 on CPU). A QLoRA adapter runs on the 4-bit base it was trained on, and
    that quantized base is then also the base variants' model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = read_split(data_dir, "test")
    if arm.is_hosted:
        return _generate_hosted(arm, generation, variants, test, data_dir, finetuned_dir, out, template, seed)
    backend = resolve_backend(generation.backend)
    weights = finetuned_weights(finetuned_dir, method) if "fine-tuned" in variants and backend != "openai" else None
    backend, reason = _route(backend, generation.backend, method, weights)
    if reason:
        log.info("arm %s: generating with %s: %s", arm.name, backend, reason)
    tokenizer = load_tokenizer(arm.model, trust_remote_code=arm.trust_remote_code) if backend != "openai" else None
    device = pick_device() if backend != "openai" else "endpoint"
    resolved = resolve_precision(precision, device) if backend != "openai" else None
    if backend == "transformers":
        answer = _transformers_answerer(arm, generation, weights, method, device, torch_dtype(resolved), tokenizer)
    elif backend == "vllm":
        answer = _vllm_answerer(arm, generation, weights, tokenizer, resolved)
    else:
        answer = _endpoint_answerer(arm, generation)
    shots = few_shots(variants, data_dir, generation, seed)
    rows, timing = [], {}
    for variant in variants:
        prompts = variant_prompts(template, variant, test, shots)
        started = time.perf_counter()
        answers = answer(variant, prompts)
        timing[variant] = round(time.perf_counter() - started, 3)
        rows += [_answer_rows(ex, variant, ans) for ex, ans in zip(test, answers, strict=True)]
        log.info("arm %s, %s: %d answers in %.1f s", arm.name, variant, len(answers), timing[variant])
    return _write(out, arm, generation, variants, test, rows, timing, shots, device=device, backend=backend,
                  backend_reason=reason, precision=resolved)


def _route(backend: str, asked: str, method: str, weights: Path | None) -> tuple[str, str | None]:
    """The backend that generates, and why when it is not the one asked for (vLLM cannot serve every
    fine-tune: it goes to transformers then)."""
    if backend == "transformers" and asked == "auto":
        return backend, "auto: vLLM needs a CUDA GPU and the vllm package, which this machine does not have"
    if backend != "vllm":
        return backend, None
    why = vllm_cannot_serve(method, weights)
    return ("transformers", f"vLLM cannot serve this fine-tune: {why}") if why else (backend, None)


def _write(out: Path, arm: ArmSpec, generation: GenerationSpec, variants: Sequence[str], test: list[dict],
           rows: list[dict], timing: dict, shots: list[dict], **extra) -> dict:
    """Write ``generations.jsonl`` and ``generation.json``; return the summary."""
    summary = {"arm": arm.name, "model": arm.model, "variants": list(variants), "samples": len(test), **extra,
               "seconds": timing, "few_shot_ids": [s["id"] for s in shots],
               "decoding": {"greedy": True, **generation.model_dump(mode="json", exclude={"endpoint"})}}
    write_generations(out, rows, summary)
    return summary


def _answer_rows(ex: dict, variant: str, ans: dict) -> dict:
    return {"id": ex["id"], "variant": variant, "instruction": ex["instruction"], "input": ex["input"],
            "reference": ex["reference"], **{k: ex[k] for k in ("task", "meta") if k in ex}, **ans}


def _generate_hosted(arm: ArmSpec, generation: GenerationSpec, variants: Sequence[str], test: list[dict],
                     data_dir: str | Path, finetuned_dir: str | Path | None, out: Path, template: Any,
                     seed: int) -> dict:
    """A hosted arm: chat completions from the provider, the fine-tuned model (its id from the finetune
    stage's ``training.json``) for the fine-tuned variant and the arm's base model for the others, with
    the same messages it was trained on (few-shot examples as earlier user/assistant turns)."""
    hosted = arm.hosted
    tuned = hosted_model_id(finetuned_dir) if finetuned_dir is not None and "fine-tuned" in variants else None
    if "fine-tuned" in variants and tuned is None:
        raise ModelError(f"arm {arm.name}: no fine-tuned model id in {finetuned_dir}/training.json (hosted.fine_tuned"
                         "_model); was the finetune stage run for this hosted arm?")
    shots = few_shots(variants, data_dir, generation, seed)
    rows, timing = [], {}
    for variant in variants:
        conversations = [chat_messages(ex, template, hosted.system_prompt,
                                       shots if variant == "base-few-shot" else ()) for ex in test]
        model = tuned if variant == "fine-tuned" else arm.model
        started = time.perf_counter()
        answers = endpoint_answers(hosted, f"arms[{arm.name}].hosted", "chat", model, conversations,
                                   generation.max_new_tokens)
        timing[variant] = round(time.perf_counter() - started, 3)
        rows += [_answer_rows(ex, variant, ans) for ex, ans in zip(test, answers, strict=True)]
        log.info("arm %s, %s (%s): %d answers in %.1f s", arm.name, variant, model, len(answers), timing[variant])
    return _write(out, arm, generation, variants, test, rows, timing, shots, device="hosted", backend="openai",
                  finetuned_model=tuned, base_url=hosted.base_url)


def _transformers_answerer(arm, generation, weights, method, device, dtype, tokenizer):
    """Batched greedy decoding in this process, in the training precision, the model spread over every
    visible GPU when there are several. Base variants run the same model with the adapter off; a full
    fine-tune is a complete model of its own, loaded only for the fine-tuned variant (after the base
    model is freed), so two copies never share the GPU."""
    from peft import PeftModel

    placement = _placement(device)
    quant = quantization_config(dtype) if method == "qlora" else None
    loaded: dict[str, Any] = {}

    def model_for(which: str):
        if which not in loaded:
            loaded.clear()  # free the other model first (full fine-tuning)
            _free_cuda()
            uri = str(weights) if which == "tuned" else arm.model
            model = load_model(uri, dtype=dtype, trust_remote_code=arm.trust_remote_code, quantization_config=quant,
                               **placement)
            if which == "base" and weights is not None and method != "full":
                model = PeftModel.from_pretrained(model, str(weights))
            model.eval()
            model.generation_config.output_router_logits = False
            if hasattr(model.config, "output_router_logits"):
                model.config.output_router_logits = False
            loaded[which] = model
        return loaded[which]

    def answer(variant: str, prompts: list[Prompt]) -> list[dict]:
        ids = [prompt_ids(tokenizer, p) for p in prompts]
        model = model_for("tuned" if variant == "fine-tuned" and method == "full" else "base")
        base_variant = variant != "fine-tuned" and isinstance(model, PeftModel)
        with model.disable_adapter() if base_variant else contextlib.nullcontext():
            return batched_greedy(model, tokenizer, ids, generation.max_new_tokens, generation.batch_size)

    return answer


def _placement(device: str) -> dict[str, Any]:
    """Where a model goes: the one device, or (several GPUs) its layers spread over all of them."""
    import torch

    if device == "cuda" and torch.cuda.device_count() > 1:
        return {"device_map": "auto"}
    return {"device": device}


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _vllm_answerer(arm, generation, adapter, tokenizer, precision):
    """vLLM fed the same token ids as transformers, the adapter served as a LoRA request for the
    fine-tuned variant (CUDA only)."""
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    resolved = resolve_model(arm.model)
    extra = {"revision": resolved.kwargs["revision"]} if "revision" in resolved.kwargs else {}
    if adapter is not None:
        config = json.loads((Path(adapter) / "adapter_config.json").read_text())
        extra.update(enable_lora=True, max_lora_rank=vllm_max_lora_rank(config))
    llm = LLM(model=resolved.path, trust_remote_code=arm.trust_remote_code,
              dtype={"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32"), **extra)
    lora = LoRARequest(arm.name, 1, str(adapter)) if adapter is not None else None

    def answer(variant: str, prompts: list[Prompt]) -> list[dict]:
        ids = [prompt_ids(tokenizer, p) for p in prompts]
        return vllm_answers(llm, ids, generation.max_new_tokens, lora if variant == "fine-tuned" else None)

    return answer


def _endpoint_answerer(arm, generation):
    """An OpenAI-compatible server: the base model's served name for base variants, the fine-tuned one's
    (a LoRA module named after the arm, or a hosted fine-tuned model) for the fine-tuned variant."""
    endpoint = generation.endpoint
    base = endpoint.base_model or (parse_hf_uri(arm.model).repo_id if arm.model.startswith("hf://") else arm.model)
    tuned = endpoint.finetuned_model or arm.name

    def answer(variant: str, prompts: list[str]) -> list[dict]:
        model = tuned if variant == "fine-tuned" else base
        return endpoint_answers(endpoint, "generation.endpoint", endpoint.api, model, prompts,
                                generation.max_new_tokens)

    return answer

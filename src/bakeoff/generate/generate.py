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
from bakeoff.generate.backends import endpoint_answers, resolve_backend, vllm_answers
from bakeoff.models.loading import load_model, load_tokenizer, pick_device, quantization_config, resolve_model
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


def batched_greedy(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[dict]:
    """Greedy answers for ``prompts``: left padding, batches of similar length, stop at end of sequence.

    Prompts already carry their special tokens (the template writes ``<s>``), so none are added.
    """
    import torch

    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[dict | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        new = out[:, enc["input_ids"].shape[1]:]
        for row, i in enumerate(idx):
            ids = new[row].tolist()
            finished = tokenizer.eos_token_id in ids
            if finished:
                ids = ids[: ids.index(tokenizer.eos_token_id)]
            ids = [t for t in ids if t != tokenizer.pad_token_id]
            answers[i] = {
                "answer": tokenizer.decode(ids, skip_special_tokens=True).strip(),
                "new_tokens": len(ids),
                "stopped": "eos" if finished else "max_new_tokens",
            }
    return answers  # type: ignore[return-value]


def few_shot_prompt(template: Any, examples: Sequence[dict], example: dict, tokenizer=None) -> str:
    """The test prompt preceded by worked examples, each a full turn in the same template.

    ``template`` is a template name or the spec's own; ``chat`` needs the tokenizer (its chat template).
    """
    template = get_template(template)
    if template.chat:
        messages = []
        for e in examples:
            messages += template.messages(e["instruction"], e["input"])
            messages.append({"role": "assistant", "content": e["reference"]})
        return chat_prompt(tokenizer, messages + template.messages(example["instruction"], example["input"]))
    shots = "".join(template.prompt(e["instruction"], e["input"]) + template.completion(e["reference"])
                    for e in examples)
    return shots + template.prompt(example["instruction"], example["input"])


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """``messages`` rendered by the tokenizer's chat template, ready for the assistant's turn."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ModelError("data.template: chat needs a tokenizer with a chat template; this arm's has none "
                         "(use llama2-inst, alpaca or a template of your own)")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


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
) -> dict:
    """Answer the test split with each variant; writes ``generations.jsonl`` and returns a summary.

    ``finetuned_dir`` is the finetune stage's output (or the weights' folder itself); ``method`` is the
    arm's PEFT method from the spec (``hosted`` for a hosted arm). A QLoRA adapter runs on the 4-bit base
    it was trained on, and that quantized base is then also the base variants' model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = read_split(data_dir, "test")
    if arm.is_hosted:
        return _generate_hosted(arm, generation, variants, test, data_dir, finetuned_dir, out, template, seed)
    backend = resolve_backend(generation.backend)
    weights = finetuned_weights(finetuned_dir, method) if "fine-tuned" in variants and backend != "openai" else None
    if backend == "vllm" and method in ("qlora", "full"):
        log.info("arm %s: vLLM serves plain adapters here; a %s result generates with transformers", arm.name,
                 "QLoRA" if method == "qlora" else "full fine-tuning")
        backend = "transformers"
    chat = get_template(template).chat
    tokenizer = load_tokenizer(arm.model, trust_remote_code=arm.trust_remote_code) \
        if backend != "openai" or chat else None
    device = pick_device() if backend != "openai" else "endpoint"
    if backend == "transformers":
        answer = _transformers_answerer(arm, generation, weights, method, device, tokenizer)
    elif backend == "vllm":
        answer = _vllm_answerer(arm, generation, weights)
    else:
        answer = _endpoint_answerer(arm, generation)
    shots = few_shots(variants, data_dir, generation, seed)
    rows, timing = [], {}
    for variant in variants:
        if variant == "base-few-shot":
            prompts = [few_shot_prompt(template, shots, ex, tokenizer) for ex in test]
        elif chat:
            prompts = [chat_prompt(tokenizer, ex["messages"]) for ex in test]
        else:
            prompts = [ex["prompt"] for ex in test]
        started = time.perf_counter()
        answers = answer(variant, prompts)
        timing[variant] = round(time.perf_counter() - started, 3)
        rows += [_answer_rows(ex, variant, ans) for ex, ans in zip(test, answers, strict=True)]
        log.info("arm %s, %s: %d answers in %.1f s", arm.name, variant, len(answers), timing[variant])
    return _write(out, arm, generation, variants, test, rows, timing, shots, device=device, backend=backend)


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


def _transformers_answerer(arm, generation, weights, method, device, tokenizer):
    """Batched greedy decoding in this process; base variants run the same model with the adapter off
    (a full fine-tune is a second, complete model)."""
    from peft import PeftModel

    quant = None
    if method == "qlora":
        import torch

        quant = quantization_config(torch.bfloat16 if device == "cuda" else torch.float32)
    model = load_model(arm.model, trust_remote_code=arm.trust_remote_code, device=device, quantization_config=quant)
    tuned = None
    if weights is not None and method == "full":
        tuned = load_model(str(weights), device=device)
    elif weights is not None:
        model = PeftModel.from_pretrained(model, str(weights))
    for m in filter(None, (model, tuned)):
        m.eval()
        m.generation_config.output_router_logits = False
        if hasattr(m.config, "output_router_logits"):
            m.config.output_router_logits = False

    def answer(variant: str, prompts: list[str]) -> list[dict]:
        base_variant = variant != "fine-tuned" and isinstance(model, PeftModel)
        runner = tuned if (variant == "fine-tuned" and tuned is not None) else model
        with model.disable_adapter() if base_variant else contextlib.nullcontext():
            return batched_greedy(runner, tokenizer, prompts, generation.max_new_tokens, generation.batch_size)

    return answer


def _vllm_answerer(arm, generation, adapter):
    """vLLM with the adapter served as a LoRA request for the fine-tuned variant (CUDA only)."""
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    resolved = resolve_model(arm.model)
    extra = {"revision": resolved.kwargs["revision"]} if "revision" in resolved.kwargs else {}
    if adapter is not None:
        # vLLM sizes its LoRA slots for a maximum rank, one of 8, 16, 32, 64, 128, 256
        rank = int(json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r") or 16)
        extra.update(enable_lora=True, max_lora_rank=next(r for r in (8, 16, 32, 64, 128, 256, rank) if r >= rank))
    llm = LLM(model=resolved.path, trust_remote_code=arm.trust_remote_code, **extra)
    lora = LoRARequest(arm.name, 1, str(adapter)) if adapter is not None else None

    def answer(variant: str, prompts: list[str]) -> list[dict]:
        return vllm_answers(llm, prompts, generation.max_new_tokens, lora if variant == "fine-tuned" else None)

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

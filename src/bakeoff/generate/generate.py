"""The generate stage: batched greedy decoding on the test split, per variant.

Variants: ``fine-tuned`` (base + adapter), ``base-zero-shot`` (the same model with the adapter
disabled) and ``base-few-shot`` (adapter disabled, ``few_shot_k`` train examples before the
question, drawn with the run's seed). The decoding settings are the same for all.
Output: ``generations.jsonl`` (one row per test example and variant) and ``generation.json``.
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

from bakeoff.data.prepare import read_split
from bakeoff.data.templates import get_template
from bakeoff.errors import ModelError
from bakeoff.jsonl import read_jsonl, write_jsonl
from bakeoff.models.loading import load_model, load_tokenizer, pick_device
from bakeoff.spec import ArmSpec, GenerationSpec

log = logging.getLogger(__name__)


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
) -> dict:
    """Answer the test split with each variant; writes ``generations.jsonl`` and returns a summary.

    ``finetuned_dir`` is the finetune stage's output (``adapter/`` for PEFT methods, ``model/`` for full
    fine-tuning) or an adapter folder itself. A QLoRA adapter runs on the 4-bit base it was trained on,
    and that quantized base is then also the base variants' model.
    """
    from peft import PeftModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = read_split(data_dir, "test")
    device = pick_device()
    tokenizer = load_tokenizer(arm.model, trust_remote_code=arm.trust_remote_code)
    adapter, full, quantized = _finetuned_artifact(finetuned_dir) if "fine-tuned" in variants else (None, None, False)
    if "fine-tuned" in variants and adapter is None and full is None:
        raise ModelError(f"arm {arm.name}: no fine-tuned adapter or model in {finetuned_dir}")
    quant = None
    if quantized:
        import torch

        from bakeoff.train.methods import quantization_config

        quant = quantization_config(torch.bfloat16 if device == "cuda" else torch.float32)
    model = load_model(arm.model, trust_remote_code=arm.trust_remote_code, device=device, quantization_config=quant)
    tuned = None
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    elif full is not None:  # full fine-tuning: a second, complete model
        tuned = load_model(str(full), device=device)
    for m in filter(None, (model, tuned)):
        m.eval()
        m.generation_config.output_router_logits = False
        if hasattr(m.config, "output_router_logits"):
            m.config.output_router_logits = False

    shots: list[dict] = []
    if "base-few-shot" in variants:
        train = read_split(data_dir, "train")
        shots = random.Random(seed).sample(train, min(generation.few_shot_k, len(train)))

    rows, timing = [], {}
    for variant in variants:
        if variant == "base-few-shot":
            prompts = [few_shot_prompt(template, shots, ex, tokenizer) for ex in test]
        elif get_template(template).chat:
            prompts = [chat_prompt(tokenizer, ex["messages"]) for ex in test]
        else:
            prompts = [ex["prompt"] for ex in test]
        base_variant = variant != "fine-tuned" and isinstance(model, PeftModel)
        ctx = model.disable_adapter() if base_variant else contextlib.nullcontext()
        runner = tuned if (variant == "fine-tuned" and tuned is not None) else model
        started = time.perf_counter()
        with ctx:
            answers = batched_greedy(runner, tokenizer, prompts, generation.max_new_tokens, generation.batch_size)
        timing[variant] = round(time.perf_counter() - started, 3)
        for ex, ans in zip(test, answers, strict=True):
            rows.append({"id": ex["id"], "variant": variant, "instruction": ex["instruction"], "input": ex["input"],
                         "reference": ex["reference"], **{k: ex[k] for k in ("task", "meta") if k in ex}, **ans})
        log.info("arm %s, %s: %d answers in %.1f s", arm.name, variant, len(answers), timing[variant])
    write_jsonl(out / "generations.jsonl", rows)
    summary = {"arm": arm.name, "model": arm.model, "variants": list(variants), "samples": len(test),
               "device": device, "seconds": timing, "few_shot_ids": [s["id"] for s in shots],
               "decoding": {"greedy": True, **generation.model_dump(mode="json")}}
    (out / "generation.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _finetuned_artifact(finetuned_dir: str | Path | None) -> tuple[Path | None, Path | None, bool]:
    """(adapter folder, full model folder, trained on a 4-bit base) of a finetune output."""
    if finetuned_dir is None:
        return None, None, False
    root = Path(finetuned_dir)
    quantized = False
    for training in (root / "training.json", root.parent / "training.json"):
        if training.is_file():
            quantized = bool(json.loads(training.read_text()).get("quantization"))
            break
    if (root / "adapter_config.json").is_file():
        return root, None, quantized
    if (root / "adapter" / "adapter_config.json").is_file():
        return root / "adapter", None, quantized
    if (root / "model" / "config.json").is_file():
        return None, root / "model", False
    return None, None, False


def read_generations(gen_dir: str | Path) -> list[dict]:
    """The rows ``generate`` wrote."""
    return read_jsonl(Path(gen_dir) / "generations.jsonl")

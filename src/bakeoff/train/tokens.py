"""What the model trains on, token by token: the exact ids TRL builds from a prepared row and which of them
carry loss, computed with TRL's own tokenization (``trl.data_utils``) so the view cannot drift from it.

``bakeoff tokens`` shows this beside what each generation backend feeds (axolotl's preprocess debug view
does the same), and the finetune stage refuses a training input that starts with two BOS tokens.
"""

from __future__ import annotations

from typing import Any

from bakeoff.errors import TrainingError

IGNORE = -100  # the label of a token that carries no loss


def sft_row(row: dict) -> dict:
    """A prepared example as TRL's prompt / completion row: text, or chat messages (the chat template)."""
    if "messages" in row:
        return {"prompt": row["messages"], "completion": [{"role": "assistant", "content": row["reference"]}]}
    return {"prompt": row["prompt"], "completion": row["completion"]}


def training_view(tokenizer, row: dict, max_length: int | None) -> dict[str, Any]:
    """The ids TRL trains on for ``row`` and their labels (``IGNORE`` on the prompt: completion-only loss),
    as TRL 1.x builds them: EOS appended to a text completion that lacks it, the prompt and prompt +
    completion encoded with the tokenizer's special tokens (or the chat template), the completion starting
    where the two diverge, then truncated to ``max_length``."""
    from trl.data_utils import _tokenize, common_prefix_length

    example = sft_row(row)
    prompt, completion = example["prompt"], example["completion"]
    if isinstance(prompt, list):
        prompt_ids = _tokenize(tokenizer, prompt, add_generation_prompt=True)["input_ids"]
        ids = _tokenize(tokenizer, prompt + completion)["input_ids"]
    else:
        if not completion.endswith(tokenizer.eos_token):
            completion += tokenizer.eos_token
        prompt_ids = _tokenize(tokenizer, prompt)["input_ids"]
        ids = _tokenize(tokenizer, prompt + completion)["input_ids"]
    start = common_prefix_length(list(prompt_ids), list(ids))
    labels = [IGNORE] * start + list(ids[start:])
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": list(ids), "labels": labels, "prompt_length": start, "truncated": truncated,
            "completion_tokens": sum(1 for t in labels if t != IGNORE)}


def leading_bos(tokenizer, ids: list[int]) -> int:
    """How many BOS tokens ``ids`` starts with."""
    bos = tokenizer.bos_token_id
    count = 0
    while bos is not None and count < len(ids) and ids[count] == bos:
        count += 1
    return count


def check_one_bos(tokenizer, ids: list[int], where: str) -> None:
    """A TrainingError when ``ids`` start with two BOS tokens (a template's ``bos`` text on a tokenizer that
    adds its own): the model would train on a context it never sees at inference."""
    if leading_bos(tokenizer, ids) > 1:
        raise TrainingError(f"{where}: the training input starts with {leading_bos(tokenizer, ids)} BOS tokens "
                            f"({tokenizer.bos_token!r}): the tokenizer adds its own, so data.template.bos must be "
                            "empty (see `bakeoff tokens`)")

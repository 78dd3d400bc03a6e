"""Parameter counts, training FLOPs per token, GPU peaks and model FLOPs utilisation (MFU).

Pure functions: torch and bitsandbytes are never imported here (a model's parameters are read through their
own attributes), so the counts and the formula can be checked on CPU and the peak table used anywhere.

- ``count_parameters(model)``: total (4-bit weights counted whole, by their unquantized shape), trainable,
  embedding and non-embedding parameters of a loaded model (a peft model too).
- ``config_parameters(config)`` and ``train_flops_per_token(config, seq_len)``: the same counts from a
  Llama-style config alone (Llama, CodeLlama, Mistral, Mixtral), and the training FLOPs per token
  of the PaLM appendix B formula, 6 N + 12 L H Q T.
- ``GPU_PEAK_BF16_TFLOPS``, ``peak_tflops(name)`` and ``mfu(...)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

# The config arithmetic and the GPU table live in bakeoff.capacity (the planner reads them too).
from bakeoff.capacity.architecture import attention_context, config_parameters, train_flops_per_token
from bakeoff.capacity.hardware import GPU_PEAK_BF16_TFLOPS, peak_tflops


def mfu(tokens_per_second: float, flops_per_token: float, peak_tflops: float | None, n_gpus: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of ``n_gpus`` GPUs (None without a peak).

    ``tokens_per_second`` is the throughput of all ``n_gpus`` together; ``peak_tflops`` is one GPU's peak.
    """
    if peak_tflops is None:
        return None
    if peak_tflops <= 0 or n_gpus < 1:
        raise ValueError(f"mfu needs a positive peak and at least one GPU (got {peak_tflops}, {n_gpus})")
    return tokens_per_second * flops_per_token / (peak_tflops * 1e12 * n_gpus)


# --------------------------------------------------------------------------------------------------------------
# Parameters of a loaded model


def parameter_numel(param: Any) -> int:
    """Elements of a parameter as the model uses it: a bitsandbytes 4-bit weight (``Params4bit``) stores two
    values per uint8 element, so its ``numel()`` is half; its ``quant_state.shape`` is the real shape."""
    quant_state = getattr(param, "quant_state", None)
    shape = getattr(quant_state, "shape", None)
    if shape is not None:
        return math.prod(int(d) for d in shape)
    return int(param.numel())


def _embedding_ids(model: Any) -> set[int]:
    """ids of the embedding parameters: the input embeddings and every other embedding table (positions),
    which includes the output head when it is tied (the same tensor)."""
    ids: set[int] = set()
    try:
        inputs = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # transformers' base class raises for a model without one
        inputs = None
    if inputs is not None:
        ids.update(id(p) for p in inputs.parameters())
    for module in model.modules():
        if type(module).__name__ == "Embedding" and type(module).__module__.startswith("torch.nn"):
            ids.update(id(p) for p in module.parameters(recurse=False))
    return ids


def count_parameters(model: Any) -> dict[str, int]:
    """total, trainable, embedding and non_embedding parameters of a model (tied tensors counted once).

    4-bit weights are counted whole (by their unquantized shape); ``embedding`` is the input embeddings (and
    the output head when it is tied to them); an untied output head is in ``non_embedding``. A peft model's
    adapter weights are in total and trainable.
    """
    embedding_ids = _embedding_ids(model)
    counts = {"total": 0, "trainable": 0, "embedding": 0}
    for param in model.parameters():  # parameters() yields a shared (tied) tensor once
        n = parameter_numel(param)
        counts["total"] += n
        counts["trainable"] += n if param.requires_grad else 0
        counts["embedding"] += n if id(param) in embedding_ids else 0
    counts["non_embedding"] = counts["total"] - counts["embedding"]
    return counts


def effective_seq_len(lengths: Iterable[int]) -> float:
    """The token-weighted mean sequence length, sum(n^2) / sum(n): per-token attention FLOPs grow with the
    length of the row a token is in, so this is the ``seq_len`` that gives a batch of rows of these
    lengths its total attention FLOPs."""
    lengths = [int(n) for n in lengths if n]
    total = sum(lengths)
    return sum(n * n for n in lengths) / total if total else 0.0


__all__ = ["GPU_PEAK_BF16_TFLOPS", "attention_context", "config_parameters", "count_parameters",
           "effective_seq_len", "mfu", "parameter_numel", "peak_tflops", "train_flops_per_token"]

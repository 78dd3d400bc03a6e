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
from collections.abc import Iterable, Mapping
from typing import Any

# Dense BF16 tensor-core peaks in TFLOP/s, without structured sparsity (NVIDIA's datasheets print the sparse
# figure, twice these, with a footnote). Sources, NVIDIA product datasheets:
#   H100 (SXM 989, PCIe 756, NVL 835): "NVIDIA H100 Tensor Core GPU Datasheet" (BF16 1,979 / 1,513 / 1,671*)
#   H200 (SXM 989, NVL 835): "NVIDIA H200 Tensor Core GPU Datasheet" (BF16 1,979 / 1,671*)
#   GH200 989: "NVIDIA GH200 Grace Hopper Superchip Datasheet" (its GPU is an H100 SXM-class die)
#   H800 (SXM 989, PCIe 756): the H100 figures (the export variant differs in NVLink bandwidth, not in math)
#   A100 312 (SXM and PCIe alike): "NVIDIA A100 Tensor Core GPU Datasheet" (BF16 312 / 624*)
#   A30 165: "NVIDIA A30 Tensor Core GPU Datasheet" (BF16 165 / 330*)
#   L40S 362: "NVIDIA L40S Datasheet" (BF16 362.05 / 733*)
#   L40 181: "NVIDIA L40 Datasheet" (BF16 181.05 / 362.1*)
#   L4 121: "NVIDIA L4 Tensor Core GPU Datasheet" (BF16 121 / 242*)
#   A40 150: "NVIDIA A40 Datasheet" (BF16 149.7 / 299.4*)
#   A10 125: "NVIDIA A10 Tensor Core GPU Datasheet" (BF16 125 / 250*)
#   B200 2250: "NVIDIA HGX B200" datasheet, per GPU (FP16/BF16 4.5 PFLOPS*)
# (* with sparsity.) torch.cuda.get_device_name reports the H100 SXM part as "NVIDIA H100 80GB HBM3" and the
# H200 SXM part as "NVIDIA H200": a name that says neither SXM nor PCIe/NVL is taken as the SXM part.
GPU_PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # "NVIDIA H100 80GB HBM3" is the SXM part's name
    "H200 SXM": 989.0,
    "H200 NVL": 835.0,
    "H200": 989.0,  # "NVIDIA H200" is the SXM part's name
    "GH200": 989.0,
    "H800 PCIe": 756.0,
    "H800": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A30": 165.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A40": 150.0,
    "A10": 125.0,
}


def _normal(text: str) -> str:
    return " ".join(text.replace("-", " ").replace("_", " ").casefold().split())


def peak_tflops(device_name: str | None, table: Mapping[str, float] = GPU_PEAK_BF16_TFLOPS) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a GPU by its name (``torch.cuda.get_device_name``); None if unknown.

    Keys are matched case-insensitively as fragments of the name, the longest key first, so "NVIDIA L40S"
    is an L40S (not an L40 or an L4), "NVIDIA A100-SXM4-80GB" an A100 (not an A10), "NVIDIA H100 PCIe" the
    PCIe part and "NVIDIA GH200 480GB" a GH200 (not an H200). Hyphens count as spaces.
    """
    if not device_name:
        return None
    name = _normal(device_name)
    for key in sorted(table, key=lambda k: (-len(_normal(k)), k)):
        if _normal(key) in name:
            return float(table[key])
    return None


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
    except (AttributeError, NotImplementedError):
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


# --------------------------------------------------------------------------------------------------------------
# Parameters and FLOPs from a config


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        value = config.get(name, default)
    else:
        value = getattr(config, name, default)
    return default if value is None else value


def config_parameters(config: Any) -> dict[str, int]:
    """Parameter counts of a Llama-style decoder from its config (a transformers config or a dict).

    The shape assumed: per layer q/k/v/o projections (grouped-query attention through
    ``num_key_value_heads``, biases when ``attention_bias``), a gated MLP of three matrices (``mlp_bias``)
    or, for a mixture of experts (Mixtral: ``num_local_experts``), a router and that many gated MLPs, and two
    RMSNorm weights; a final norm; the input embedding; the output head (``lm_head``, tied or not).

    Returns embedding (the input embedding), lm_head, non_embedding (everything else, the output head
    included, every expert counted), active_non_embedding (the same with only ``num_experts_per_tok``
    experts per layer: what one token passes through) and total (each tensor once: a tied head is the
    embedding).
    """
    d, n_layers, vocab = int(_get(config, "hidden_size")), int(_get(config, "num_hidden_layers")), int(
        _get(config, "vocab_size"))
    heads = int(_get(config, "num_attention_heads"))
    kv_heads = int(_get(config, "num_key_value_heads", heads))
    head_dim = int(_get(config, "head_dim", d // heads))
    ff = int(_get(config, "intermediate_size"))
    attention = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2  # q, o; k, v
    if _get(config, "attention_bias", False):
        attention += heads * head_dim * 2 + kv_heads * head_dim + d  # q, k, v, o biases
    expert = 3 * d * ff + (2 * ff + d if _get(config, "mlp_bias", False) else 0)
    experts = int(_get(config, "num_local_experts", 1))
    active = int(_get(config, "num_experts_per_tok", 1)) if experts > 1 else 1
    router = d * experts if experts > 1 else 0
    norms = 2 * d
    lm_head = vocab * d
    layer_all = attention + router + experts * expert + norms
    layer_active = attention + router + active * expert + norms
    tied = bool(_get(config, "tie_word_embeddings", False))
    non_embedding = n_layers * layer_all + d + lm_head
    return {
        "embedding": vocab * d,
        "lm_head": lm_head,
        "non_embedding": non_embedding,
        "active_non_embedding": n_layers * layer_active + d + lm_head,
        "total": vocab * d + non_embedding - (lm_head if tied else 0),
    }


def attention_context(config: Any, seq_len: float) -> float:
    """The context each token attends over: the sequence length, capped by a sliding window (Mistral)."""
    window = _get(config, "sliding_window")
    return float(min(seq_len, window)) if window else float(seq_len)


def train_flops_per_token(config: Any, seq_len: float, *, frozen_base: bool = False, adapter_params: int = 0) -> float:
    """Training FLOPs (forward and backward) per token: ``6 N + 12 L H Q T``.

    The convention of PaLM (Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with Pathways",
    appendix B, where MFU is defined) with the output head counted as Chinchilla does (Hoffmann et al. 2022,
    "Training Compute-Optimal Large Language Models", appendix F: the "final logits" matmul). Kaplan et al.
    2020 ("Scaling Laws for Neural Language Models", section 2.1) leave the head out of N and count half
    the attention term (2 n_layer n_ctx d_attn forward); the difference is a few per cent at 7B.

    - N is the non-embedding parameters a token passes through, the output head (``lm_head``, vocab x
      hidden) included because its matmul is done for every token (Chinchilla counts the "final logits"
      matmul; PaLM's N includes its shared embedding for the same reason) and the input embedding excluded
      (a lookup, no matmul). For a mixture of experts (Mixtral) only the ``num_experts_per_tok`` active
      experts of ``num_local_experts`` count in N (the router counts whole).
    - 6 = 2 (forward) + 2 (gradient of the activations) + 2 (gradient of the weights) FLOPs per
      multiply-accumulate weight. With ``frozen_base`` (LoRA, QLoRA, IA3) the base weights get no weight
      gradients: 4 N, plus 6 per ``adapter_params`` (the trainable adapter weights).
    - 12 L H Q T: attention scores and the weighted sum (2 matmuls of 2 H Q T FLOPs each per token per layer,
      forward, times 3 for the backward), with H Q = heads x head_dim (the hidden size for Llama) and T the
      context (``seq_len``, capped by a sliding window). Not halved for the causal mask, as PaLM does not.

    Recomputation (gradient checkpointing) is not counted: this is model FLOPs, not hardware FLOPs. A
    4-bit base computes in 16 bits after dequantizing: the same FLOPs.
    """
    params = config_parameters(config)
    n = params["active_non_embedding"]
    layers = int(_get(config, "num_hidden_layers"))
    heads = int(_get(config, "num_attention_heads"))
    head_dim = int(_get(config, "head_dim", int(_get(config, "hidden_size")) // heads))
    attention = 12 * layers * heads * head_dim * attention_context(config, seq_len)
    dense = (4 * n + 6 * adapter_params) if frozen_base else 6 * n
    return float(dense + attention)


def effective_seq_len(lengths: Iterable[int]) -> float:
    """The token-weighted mean sequence length, sum(n^2) / sum(n): per-token attention FLOPs grow with the
    length of the row a token is in, so this is the ``seq_len`` that gives a batch of rows of these
    lengths its total attention FLOPs."""
    lengths = [int(n) for n in lengths if n]
    total = sum(lengths)
    return sum(n * n for n in lengths) / total if total else 0.0


__all__ = ["GPU_PEAK_BF16_TFLOPS", "attention_context", "config_parameters", "count_parameters",
           "effective_seq_len", "mfu", "parameter_numel", "peak_tflops", "train_flops_per_token"]

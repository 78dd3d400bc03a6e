"""Model arithmetic from a config alone: parameter counts and training FLOPs per token (Llama-style decoders).

Pure functions over a transformers config or a plain dict (stdlib only), shared by the capacity planner
and the MFU figures of ``bakeoff.train.flops``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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

"""Peak GPU memory of one fine-tuning or generation pod, part by part, from the model's config and the spec.

All figures are GB (1e9 bytes, as the measured ``peak_memory_gb``), per device. The parts:

- ``weights``: the base model. bf16/fp16: 2 bytes a parameter; fp32 (and full fine-tuning, which keeps fp32
  master weights, see bakeoff.train.finetune): 4; QLoRA: the decoder's linear weights in 4-bit NF4 with
  double quantization (0.5 byte + 0.127 bit of quantization constants a parameter: one 8-bit absmax per
  64 weights, one fp32 constant per 256 of those), embeddings, head and norms in 16 bits.
- ``trainable``: the adapter's weights, fp32 (peft keeps them so); none for full (they are the weights).
- ``gradients``: fp32, one per trainable parameter.
- ``optimizer``: AdamW's two fp32 moments (8 bytes a trainable parameter); 8-bit variants 2 bytes.
  ``paged-*`` variants can spill to CPU memory under pressure; the estimate counts them on the GPU.
- ``activations``: what the backward pass keeps, at the worst case of ``batch_size x max_seq_length``
  tokens (dynamic padding makes most batches shorter). Per token and layer, 16-bit: the two RMSNorm
  inputs (2 h each), the attention's q/k/v input and output (2 h, 2 (h + 2 kv)), the o_proj input (2 h),
  the MLP input (2 h), gate and up outputs, the activation and the product (2 ff each, x the active
  experts for a mixture of experts): 14 h + 4 kv + 8 ff bytes; no score matrix (SDPA / flash attention
  keep none). With gradient checkpointing only each layer's input (2 h) is kept, plus one layer's full set
  while it is recomputed. The logits: 16-bit and their fp32 upcast with its gradient for the loss
  (10 bytes a vocabulary entry a token).
- ``kv_cache`` (generation): 2 (k, v) x layers x kv heads x head dim x 2 bytes a token, for
  ``generation.batch_size`` sequences of the longest prompt the training allows plus ``max_new_tokens``.
- ``overhead``: the CUDA context and cuBLAS workspaces (0.8 GB, which the allocator's peak does not count)
  plus 10% of the rest for the caching allocator's fragmentation.
- ``runtime`` (CPU only, where the measured peak is the process's resident high-water mark, VmHWM): the
  libraries a training process imports, 0.55 GB (``python -c "import torch, transformers, peft, trl, datasets;
  print(open('/proc/self/status').read())"``, VmHWM, here: 0.54).

Sharding: with ``training.distributed: fsdp`` over ``gpu.count`` GPUs (x ``nodes``) weights, gradients and
optimizer states divide by the world size; activations do not (each rank keeps its own batch's). DDP
divides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bakeoff.capacity.architecture import _get, config_parameters

GB = 1e9
CUDA_CONTEXT_GB = 0.8
CPU_RUNTIME_GB = 0.55
FRAGMENTATION = 0.10
NF4_BYTES = 0.5 + (8 / 64 + 32 / (64 * 256)) / 8  # 4-bit weights, double-quantized absmax constants
OPTIMIZER_BYTES = {"adamw": 8, "paged-adamw-32bit": 8, "adamw-8bit": 2, "paged-adamw-8bit": 2}


@dataclass(frozen=True)
class Shape:
    """The dimensions the estimate needs, read from a config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    experts: int
    active_experts: int

    @classmethod
    def of(cls, config: Any) -> Shape:
        hidden, heads = int(_get(config, "hidden_size")), int(_get(config, "num_attention_heads"))
        experts = int(_get(config, "num_local_experts", 1))
        return cls(hidden=hidden, intermediate=int(_get(config, "intermediate_size")),
                   layers=int(_get(config, "num_hidden_layers")), heads=heads,
                   kv_heads=int(_get(config, "num_key_value_heads", heads)),
                   head_dim=int(_get(config, "head_dim", hidden // heads)), vocab=int(_get(config, "vocab_size")),
                   experts=experts, active_experts=int(_get(config, "num_experts_per_tok", 1)) if experts > 1 else 1)

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each Linear a decoder layer has, by leaf name (one expert's MLP for an MoE)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (q, self.hidden), "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden)}


ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def adapter_parameters(shape: Shape, method: str, r: int, targets: Any, target_experts: bool = False,
                       use_dora: bool = False) -> int:
    """Trainable parameters of the method (all of them for full, the adapter's otherwise).

    LoRA: r x (in + out) per targeted Linear (``attention``: q/k/v/o; ``all-linear``: those and the MLP's
    three, which on a mixture of experts are the fused experts, targeted only with ``target_experts``), plus
    ``out`` per module with DoRA. IA3: the out features of k and v, the in features of down_proj.
    """
    linears = shape.linears()
    if method == "ia3":
        per_layer = linears["k_proj"][1] + linears["v_proj"][1] + linears["down_proj"][0] * shape.experts
        return shape.layers * per_layer
    if targets == "attention":
        names = list(ATTENTION)
    elif targets == "all-linear":
        names = list(ATTENTION) + ([] if shape.experts > 1 else list(MLP))
    else:
        names = [str(t).rsplit(".", 1)[-1] for t in targets]
    per_layer = sum(r * sum(linears[n]) + (linears[n][1] if use_dora else 0) for n in names if n in linears)
    if target_experts and shape.experts > 1:
        per_layer += shape.experts * sum(r * sum(linears[n]) for n in MLP)
    return shape.layers * per_layer


@dataclass
class Estimate:
    """Peak GB per device, by part."""

    parts: dict[str, float] = field(default_factory=dict)
    trainable_parameters: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total_gb(self) -> float:
        return round(sum(self.parts.values()), 2)


def _weights_bytes(config: Any, shape: Shape, method: str, precision_bytes: int) -> float:
    counts = config_parameters(config)
    if method == "full":
        return counts["total"] * 4.0  # fp32 master weights
    if method == "qlora":
        linear = counts["non_embedding"] - counts["lm_head"] - shape.layers * 2 * shape.hidden - shape.hidden
        router = shape.layers * shape.hidden * shape.experts if shape.experts > 1 else 0
        return (linear - router) * NF4_BYTES + (counts["total"] - linear + router) * 2.0
    return counts["total"] * float(precision_bytes)


def activations_bytes(shape: Shape, tokens: int, checkpointing: bool) -> float:
    """Bytes the backward pass keeps for ``tokens`` tokens (16-bit activations), logits included."""
    kv = shape.kv_heads * shape.head_dim
    per_layer = 14 * shape.hidden + 4 * kv + 8 * shape.intermediate * shape.active_experts
    logits = 10 * shape.vocab
    if checkpointing:
        kept = shape.layers * 2 * shape.hidden + per_layer
    else:
        kept = shape.layers * per_layer
    return float(tokens) * (kept + logits)


def finetune_memory(config: Any, *, method: str, r: int = 64, targets: Any = "all-linear",
                    target_experts: bool = False, use_dora: bool = False, precision: str = "bf16",
                    batch_size: int = 1, seq_len: int = 512, checkpointing: bool = True, optimizer: str = "adamw",
                    world_size: int = 1, fsdp: bool = False, cuda: bool = True) -> Estimate:
    """Peak memory of one training rank."""
    shape = Shape.of(config)
    precision_bytes = 4 if precision == "fp32" else 2
    trainable = config_parameters(config)["total"] if method == "full" else adapter_parameters(
        shape, method, r, targets, target_experts, use_dora)
    shard = world_size if fsdp and world_size > 1 else 1
    est = Estimate(trainable_parameters=trainable)
    est.parts["weights"] = _weights_bytes(config, shape, method, precision_bytes) / shard / GB
    est.parts["trainable"] = 0.0 if method == "full" else trainable * 4.0 / shard / GB
    est.parts["gradients"] = trainable * 4.0 / shard / GB
    est.parts["optimizer"] = trainable * float(OPTIMIZER_BYTES.get(optimizer, 8)) / shard / GB
    est.parts["activations"] = activations_bytes(shape, batch_size * seq_len, checkpointing) / GB
    base = sum(est.parts.values())
    est.parts["overhead"] = (CUDA_CONTEXT_GB if cuda else 0.0) + FRAGMENTATION * base
    if not cuda:
        est.parts["runtime"] = CPU_RUNTIME_GB
    est.parts = {k: round(v, 2) for k, v in est.parts.items()}
    if optimizer.startswith("paged"):
        est.notes.append(f"{optimizer} can page its states to CPU memory: counted here on the GPU")
    if shard > 1:
        est.notes.append(f"FSDP over {shard} GPUs divides weights, gradients and optimizer states")
    return est


def generate_memory(config: Any, *, method: str, precision: str = "bf16", batch_size: int = 16,
                    prompt_tokens: int = 512, new_tokens: int = 128, cuda: bool = True) -> Estimate:
    """Peak memory of generating with the fine-tuned model (a 4-bit base for QLoRA, 16-bit otherwise)."""
    shape = Shape.of(config)
    precision_bytes = 4 if precision == "fp32" else 2
    est = Estimate()
    est.parts["weights"] = _weights_bytes(config, shape, "qlora" if method == "qlora" else "lora",
                                          precision_bytes) / GB
    tokens = batch_size * (prompt_tokens + new_tokens)
    est.parts["kv_cache"] = tokens * 2 * shape.layers * shape.kv_heads * shape.head_dim * precision_bytes / GB
    # the last position's logits per sequence (fp32) and one layer's activations for the prompt's prefill
    est.parts["activations"] = (batch_size * shape.vocab * 4 + batch_size * prompt_tokens *
                                (4 * shape.hidden + 4 * shape.intermediate * shape.active_experts)) / GB
    base = sum(est.parts.values())
    est.parts["overhead"] = (CUDA_CONTEXT_GB if cuda else 0.0) + FRAGMENTATION * base
    if not cuda:
        est.parts["runtime"] = CPU_RUNTIME_GB
    est.parts = {k: round(v, 2) for k, v in est.parts.items()}
    return est


__all__ = ["CUDA_CONTEXT_GB", "Estimate", "Shape", "activations_bytes", "adapter_parameters", "finetune_memory",
           "generate_memory"]

"""Fine-tuning methods: how the base model is loaded and which parameters train.

- ``lora``: low-rank adapters on the target modules (optionally DoRA, LoftQ initialisation);
- ``qlora``: the base loaded in 4-bit NF4 with double quantization (bitsandbytes), compute in bf16 on a
  GPU that has it and fp32 otherwise, LoRA on top;
- ``ia3``: learned scaling vectors on keys, values and the feed-forward down projection;
- ``full``: every weight trains (no adapter).

Targets: ``attention`` (q/k/v/o projections, the seed blog's choice), ``all-linear`` (peft's every
linear layer but the output head) or a list of module names. Mixtral's experts are fused 3-D
parameters, not Linear modules: ``target_experts`` reaches them through peft ``target_parameters``,
which peft only supports with ``dropout: 0``. Settings that cannot go together are spec errors
(``bakeoff.spec.peft_conflicts``, found by ``bakeoff validate``); what is checked here needs the device,
the installed libraries or the loaded model's type.
"""

from __future__ import annotations

from bakeoff.errors import SpecError
from bakeoff.spec import PeftSpec

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
# Fused expert weights per model type (transformers 5 names).
EXPERT_PARAMETERS = {"mixtral": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}
# IA3: scaled modules and which of them are feed-forward (their input is scaled, not their output).
IA3_TARGETS = {"default": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
               "mixtral": (["k_proj", "v_proj"], [])}


def check_method(peft: PeftSpec, device: str) -> None:
    """Fail early, with what to change, when the device or the installed libraries cannot run the method."""
    if peft.method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise SpecError("peft.method: qlora needs bitsandbytes (pip install 'bakeoff[finetune]'), "
                            "or use method lora") from exc
    if peft.loftq and device != "cuda":
        raise SpecError("peft.loftq: LoftQ initialisation runs on a CUDA GPU (peft computes it there); "
                        "turn loftq off for CPU runs")


def target_modules(peft: PeftSpec) -> list[str] | str:
    """The spec's targets as peft takes them."""
    if peft.target_modules == "attention":
        return list(ATTENTION)
    return peft.target_modules


def peft_config(peft: PeftSpec, model_type: str):
    """The peft config for ``peft`` on a model of ``model_type`` (``None`` for full fine-tuning)."""
    from peft import IA3Config, LoftQConfig, LoraConfig

    if peft.method == "full":
        return None
    if peft.method == "ia3":
        targets, feedforward = IA3_TARGETS.get(model_type, IA3_TARGETS["default"])
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM")
    extra = {}
    if peft.target_experts:
        if model_type not in EXPERT_PARAMETERS:
            raise SpecError(f"peft.target_experts: {model_type} models have no fused experts to target")
        extra["target_parameters"] = list(EXPERT_PARAMETERS[model_type])
    if peft.loftq:
        extra["init_lora_weights"] = "loftq"
        extra["loftq_config"] = LoftQConfig(loftq_bits=4)
    return LoraConfig(
        r=peft.r, lora_alpha=peft.alpha, lora_dropout=peft.dropout, target_modules=target_modules(peft),
        use_dora=peft.use_dora, bias="none", task_type="CAUSAL_LM", **extra,
    )

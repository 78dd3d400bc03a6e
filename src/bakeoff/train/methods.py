"""Fine-tuning methods: how the base model is loaded and which parameters train.

- ``lora``: low-rank adapters on the target modules (optionally DoRA, LoftQ initialisation);
- ``qlora``: the base loaded in 4-bit NF4 with double quantization (bitsandbytes), compute in bf16 on a
  GPU that has it and fp32 otherwise, LoRA on top;
- ``ia3``: learned scaling vectors on keys, values and the feed-forward down projection's input;
- ``full``: every weight trains (no adapter), with fp32 master weights (see ``bakeoff.train.finetune``).

Targets are resolved here, from the loaded model's module names, never by peft's own ``all-linear``
(which on Mixtral in peft 0.21 also takes the fused experts and the router through ``target_parameters``,
and then refuses any ``dropout`` but 0):

- ``attention``: the q/k/v/o projections (the seed blog's choice);
- ``all-linear``: every Linear module of the decoder but the output head, the MoE router (Mixtral's
  ``mlp.gate``, ``block_sparse_moe.gate`` in older transformers) and the experts. On Llama-like models:
  q/k/v/o and gate/up/down; on Mixtral: the attention projections only, since its experts are fused 3-D
  parameters, not Linear modules;
- a list of module names: each must match a module (exactly or as the end of its dotted name), else a
  TrainingError; a router is targeted only when listed (peft then wraps its weight, which needs dropout 0).

``target_experts`` adds the fused experts (peft ``target_parameters``), which peft only supports with
``dropout: 0`` (a spec error otherwise).

IA3 on a mixture-of-experts model (Mixtral) is refused, not run as a different method: IA3's
feed-forward vector scales the input of the down projection, and Mixtral's down projections are the fused
experts, which peft's IA3 cannot reach (it has no ``target_parameters``). What would train is keys and
values only, a smaller method than IA3 on Llama under the same name, which would mislead a bake-off that
compares arms. Use lora (or full) on Mixtral. The check reads the model's config before the weights load.

Settings that cannot go together are spec errors (``bakeoff.spec.peft_conflicts``, found by ``bakeoff
validate``); what is checked here needs the device, the installed libraries or the model.
"""

from __future__ import annotations

from bakeoff.errors import SpecError, TrainingError
from bakeoff.spec import PeftSpec, TrainingSpec
from bakeoff.spec.training import OPTIMIZERS

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
# Leaf names of mixture-of-experts routers (Mixtral's mlp.gate / block_sparse_moe.gate, others' router,
# Qwen-MoE's shared_expert_gate).
ROUTERS = ("gate", "router", "shared_expert_gate")
# IA3: the scaled modules and which of them are feed-forward (their input is scaled, not their output).
IA3_TARGETS = (["k_proj", "v_proj", "down_proj"], ["down_proj"])
# Config attributes that count a model's experts (Mixtral and most MoE configs in transformers).
EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


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


def check_optimizer(training: TrainingSpec, device: str) -> str:
    """The Trainer's ``optim`` for ``training.optimizer``; fails when bitsandbytes or CUDA is missing."""
    if training.optimizer != "adamw":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise SpecError(f"training.optimizer: {training.optimizer} needs bitsandbytes (pip install "
                            "'bakeoff[finetune]'), or use optimizer adamw") from exc
    if training.optimizer.startswith("paged-") and device != "cuda":
        raise TrainingError(f"training.optimizer: {training.optimizer} pages optimizer states through CUDA "
                            f"unified memory and this run is on {device}; use adamw or adamw-8bit here")
    return OPTIMIZERS[training.optimizer]


def is_moe(config) -> bool:
    """Whether a transformers config describes a mixture-of-experts model."""
    return any(isinstance(getattr(config, key, None), int) and getattr(config, key) > 1 for key in EXPERT_COUNTS)


def check_model_config(peft: PeftSpec, config) -> None:
    """What the model's config alone rules out, before its weights load: IA3 on a mixture of experts."""
    if peft.method == "ia3" and is_moe(config):
        raise TrainingError(
            f"peft.method: ia3 on {config.model_type} (a mixture of experts) is refused: IA3 scales the "
            "feed-forward down projection's input, and here the down projections are fused expert weights "
            "that peft's IA3 cannot reach, so only keys and values would train, a different method than ia3 "
            "on a dense model; use method lora (or full) for this arm")


def _linear_types():
    import torch
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)  # bitsandbytes' 4-bit and 8-bit Linear subclass torch.nn.Linear


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _matches(name: str, key: str) -> bool:
    """peft's rule for a target name: the whole dotted module name, or its end after a dot."""
    return name == key or name.endswith("." + key)


def decoder_linears(model) -> list[str]:
    """The full names of the Linear modules ``all-linear`` trains: all but the output head, routers, experts."""
    head = model.get_output_embeddings()
    return [name for name, module in model.named_modules()
            if isinstance(module, _linear_types()) and module is not head and _leaf(name) not in ROUTERS
            and "experts" not in name.split(".")]


def _as_targets(model, chosen: list[str]) -> list[str]:
    """``chosen`` module names as peft takes them: their leaf names when those select exactly ``chosen``
    (the usual, readable form), else the full names."""
    leaves = sorted({_leaf(n) for n in chosen})
    selected = [n for n, _ in model.named_modules() if n and any(_matches(n, leaf) for leaf in leaves)]
    return leaves if sorted(selected) == sorted(chosen) else sorted(chosen)


def _listed(model, names: list[str], peft: PeftSpec, what: str) -> list[str]:
    """The modules each of ``names`` matches; a TrainingError naming ``what`` for a name that matches none, or
    for a non-Linear module (a router) that peft would wrap by its weight while dropout is not 0."""
    modules = dict(model.named_modules())
    linear_leaves = sorted({_leaf(n) for n in decoder_linears(model)})
    chosen = []
    for key in names:
        found = [n for n in modules if n and _matches(n, key)]
        if not found:
            raise TrainingError(f"{what}: {key} matches no module of this {model.config.model_type} model; its "
                                f"linear layers are {', '.join(linear_leaves)}")
        wrapped = [n for n in found if not isinstance(modules[n], _linear_types() + _other_lora_types())]
        if wrapped and peft.dropout:
            raise TrainingError(f"{what}: {key} ({type(modules[wrapped[0]]).__name__}) is not a Linear module; "
                                f"peft trains it through its weight (target_parameters), which needs "
                                f"peft.dropout 0 (it is {peft.dropout:g})")
        chosen += found
    return sorted(set(chosen))


def _other_lora_types():
    import torch

    return (torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def target_modules(peft: PeftSpec, model) -> list[str]:
    """The spec's targets resolved on ``model``, as peft takes them (never peft's own ``all-linear``)."""
    if peft.target_modules == "all-linear":
        chosen = decoder_linears(model)
        if not chosen:
            raise TrainingError(f"peft.target_modules: all-linear found no Linear module in this "
                                f"{model.config.model_type} model; list the modules to train")
    elif peft.target_modules == "attention":
        chosen = _listed(model, ATTENTION, peft, "peft.target_modules (attention)")
    else:
        chosen = _listed(model, list(peft.target_modules), peft, "peft.target_modules")
    return _as_targets(model, chosen)


def expert_parameters(model) -> list[str]:
    """The fused expert weights (3-D parameters of an ``experts`` module), as ``mlp.experts.gate_up_proj``."""
    names = []
    for name, param in model.named_parameters():
        parts = name.split(".")
        if param.ndim == 3 and len(parts) >= 3 and parts[-2] == "experts":
            suffix = ".".join(parts[-3:])
            if suffix not in names:
                names.append(suffix)
    return names


def ia3_targets(model) -> tuple[list[str], list[str]]:
    """IA3's scaled modules on ``model`` (keys, values, the dense down projections) and its feed-forward ones."""
    targets, feedforward = IA3_TARGETS
    linears = decoder_linears(model)
    for key in targets:
        if not any(_matches(n, key) for n in linears):
            raise TrainingError(f"peft.method: ia3 scales {', '.join(targets)}; this {model.config.model_type} "
                                f"model has no Linear {key} (a mixture of experts, or other names); use lora")
    return list(targets), list(feedforward)


def peft_config(peft: PeftSpec, model):
    """The peft config for ``peft`` on the loaded ``model`` (``None`` for full fine-tuning)."""
    from peft import IA3Config, LoftQConfig, LoraConfig

    if peft.method == "full":
        return None
    if peft.method == "ia3":
        check_model_config(peft, model.config)
        targets, feedforward = ia3_targets(model)
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM")
    extra = {}
    if peft.target_experts:
        experts = expert_parameters(model)
        if not experts:
            raise SpecError(f"peft.target_experts: {model.config.model_type} models have no fused experts to target")
        extra["target_parameters"] = experts
    if peft.loftq:
        extra["init_lora_weights"] = "loftq"
        extra["loftq_config"] = LoftQConfig(loftq_bits=4)
    return LoraConfig(
        r=peft.r, lora_alpha=peft.alpha, lora_dropout=peft.dropout, target_modules=target_modules(peft, model),
        use_dora=peft.use_dora, bias="none", task_type="CAUSAL_LM", **extra,
    )

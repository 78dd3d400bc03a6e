"""Fine-tuning methods on CPU with the tiny models: each trains, saves, reloads and generates."""

from __future__ import annotations

import importlib
import json

import pytest
import yaml
from conftest import ROOT

from bakeoff.artifacts import read_generations
from bakeoff.data.prepare import prepare_data
from bakeoff.errors import SpecError
from bakeoff.generate import generate
from bakeoff.spec import PeftSpec, parse_spec
from bakeoff.train import finetune
from bakeoff.train.methods import peft_config


def small_spec(**training):
    data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    data["data"]["sources"] = [{"uri": str(ROOT / "experiments" / "data" / "smoke.jsonl")}]
    data["data"]["split"] = {"train": 48, "validation": 16, "test": 8}
    data["training"].update({"max_steps": 6, "logging_steps": 2, "eval_steps": 3, "batch_size": 4, **training})
    data["generation"].update(max_new_tokens=4, batch_size=8)
    return parse_spec(data)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    spec = small_spec()
    prepare_data(spec.data, spec.seed, out)
    return out


@pytest.mark.parametrize(("arm_name", "peft", "artifact", "trainable_share"), [
    ("tiny-llama", {"method": "lora"}, "adapter", (0.001, 0.5)),
    ("tiny-llama", {"method": "lora", "use_dora": True, "target_modules": "attention"}, "adapter", (0.001, 0.5)),
    ("tiny-llama", {"method": "qlora"}, "adapter", (0.001, 0.9)),
    ("tiny-llama", {"method": "ia3"}, "adapter", (1e-5, 0.01)),
    ("tiny-llama", {"method": "full"}, "model", (0.999, 1.0)),
    ("tiny-mixtral", {"method": "lora", "target_experts": True, "dropout": 0.0}, "adapter", (0.001, 0.8)),
])
def test_method_trains_saves_reloads_and_generates(arm_name, peft, artifact, trainable_share, data_dir, tmp_path,
                                                   cache_env):
    spec = small_spec()
    arm = spec.arm(arm_name)
    settings = spec.peft.model_copy(update=peft)
    result = finetune(arm, spec.training, settings, data_dir, tmp_path / "model", spec.seed)
    assert result.steps == 6 and result.method == peft["method"] and result.artifact == artifact
    assert [p["step"] for p in result.loss_history["validation"]] == [3, 6]
    assert trainable_share[0] <= result.trainable_params / result.total_params <= trainable_share[1]
    saved = tmp_path / "model" / artifact
    assert (saved / ("adapter_model.safetensors" if artifact == "adapter" else "model.safetensors")).is_file()
    assert (saved / "training_config.json").is_file() and (saved / "README.md").is_file()
    assert (result.quantization is not None) == (peft["method"] == "qlora")
    # ia3 trains at its own default learning rate, not LoRA's
    used = json.loads((saved / "training_config.json").read_text())["sft_config"]["learning_rate"]
    assert used == (3e-3 if peft["method"] == "ia3" else spec.training.learning_rate)
    generate(arm, spec.generation, ["fine-tuned", "base-zero-shot"], data_dir, tmp_path / "model", tmp_path / "gen",
             method=peft["method"])
    rows = read_generations(tmp_path / "gen")
    assert len(rows) == 16 and {r["variant"] for r in rows} == {"fine-tuned", "base-zero-shot"}


def test_loftq_on_cpu_says_it_needs_a_gpu(data_dir, tmp_path, cache_env):
    spec = small_spec()
    with pytest.raises(SpecError, match="peft.loftq: LoftQ initialisation runs on a CUDA GPU"):
        finetune(spec.arm("tiny-llama"), spec.training, spec.peft.model_copy(update={"loftq": True}), data_dir,
                 tmp_path / "m")


def test_expert_lora_really_targets_the_fused_experts(cache_env):
    from bakeoff.models import load_model

    config = peft_config(PeftSpec(target_experts=True, dropout=0.0), load_model("tiny://mixtral"))
    assert config.target_parameters == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def test_experts_on_a_model_without_them_name_the_key(cache_env):
    from bakeoff.models import load_model

    # the model's type is known only once it is loaded; conflicts between settings are spec errors
    # (tests/test_spec.py::test_peft_conflicts_are_spec_errors_with_the_arm_key_path)
    with pytest.raises(SpecError, match="peft.target_experts: llama models have no fused experts"):
        peft_config(PeftSpec(target_experts=True, dropout=0.0), load_model("tiny://llama"))


def test_keep_best_records_the_best_step(data_dir, tmp_path, cache_env):
    # A learning rate this high makes the validation loss rise again: the best step is not the last.
    spec = small_spec(max_steps=12, eval_steps=3, learning_rate=0.05, warmup_ratio=0.0)
    arm = spec.arm("tiny-llama")
    result = finetune(arm, spec.training, spec.peft, data_dir, tmp_path / "m", spec.seed)
    val = result.loss_history["validation"]
    best = min(val, key=lambda p: p["loss"])
    assert result.best_step == best["step"] and result.best_validation_loss == best["loss"]
    assert not (tmp_path / "m" / "checkpoints").exists()  # in-run checkpoints are not kept without a uri
    saved = json.loads((tmp_path / "m" / "training.json").read_text())
    assert saved["best_step"] == result.best_step and saved["peak_memory_gb"] > 0


def test_early_stopping_stops_before_max_steps(data_dir, tmp_path, cache_env):
    spec = small_spec(max_steps=60, eval_steps=3, learning_rate=0.2, warmup_ratio=0.0, early_stopping_patience=1)
    arm = spec.arm("tiny-llama")
    result = finetune(arm, spec.training, spec.peft, data_dir, tmp_path / "m", spec.seed)
    assert result.steps < 60
    val = [p["loss"] for p in result.loss_history["validation"]]
    assert val[-1] >= min(val[:-1])  # it stopped because the last evaluation did not improve


def test_kfp_metrics_carry_the_validation_curve(data_dir, tmp_path, cache_env):
    spec = small_spec()
    result = finetune(spec.arm("tiny-llama"), spec.training, spec.peft, data_dir, tmp_path / "m", spec.seed)
    metrics = result.metrics()
    assert metrics["validation_loss/step_000003"] == result.loss_history["validation"][0]["loss"]
    assert metrics["validation_loss/step_000006"] == result.loss_history["validation"][1]["loss"]
    assert metrics["best_step"] == result.best_step and "peak_memory_gb" in metrics


def test_save_merged_writes_a_full_16_bit_model(data_dir, tmp_path, cache_env):
    import torch
    from safetensors.torch import load_file

    from bakeoff.models import load_model

    spec = small_spec(save_merged=True)
    arm = spec.arm("tiny-llama")
    finetune(arm, spec.training, spec.peft.model_copy(update={"method": "qlora"}), data_dir, tmp_path / "m")
    merged = load_model(str(tmp_path / "m" / "merged"))
    assert merged.dtype == torch.float32  # loaded as asked; stored in 16-bit
    stored = load_file(str(tmp_path / "m" / "merged" / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in stored.values())


def test_out_of_memory_says_what_to_change(data_dir, tmp_path, cache_env, monkeypatch):
    import torch
    from trl import SFTTrainer

    from bakeoff.errors import TrainingError

    def boom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SFTTrainer, "train", boom)
    spec = small_spec()
    with pytest.raises(TrainingError, match="lower training.batch_size.*qlora"):
        finetune(spec.arm("tiny-llama"), spec.training, spec.peft, data_dir, tmp_path / "m")


@pytest.mark.parametrize(("distributed", "world", "expected"), [
    ("fsdp", "2", {"fsdp": True, "fsdp_config": {"reshard_after_forward": True, "activation_checkpointing": True}}),
    ("fsdp", "1", {}),
    ("ddp", "2", {}),
])
def test_fsdp_settings_only_with_several_processes(distributed, world, expected, monkeypatch):
    from bakeoff.spec import TrainingSpec
    from bakeoff.train.finetune import _fsdp_args

    monkeypatch.setenv("WORLD_SIZE", world)
    assert _fsdp_args(TrainingSpec(distributed=distributed), grad_ckpt=True) == expected


def test_expert_lora_weights_train(cache_env):
    from peft import get_peft_model

    from bakeoff.models import load_model

    base = load_model("tiny://mixtral")
    model = get_peft_model(base, peft_config(PeftSpec(target_experts=True, dropout=0.0, r=4), base))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("mlp.experts" in n and "lora_A" in n for n in trained)
    assert any("self_attn.q_proj.lora_A" in n for n in trained)


# --- targets, resolved by bakeoff from the model's modules (issue 15) --------------------------------------


def _lora_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _seed_mixtral_peft() -> PeftSpec:
    from bakeoff.spec import load_spec

    seed = load_spec(ROOT / "experiments" / "llama2-vs-mixtral-instruct.yaml")
    return seed.arm_peft("mixtral-8x7b")


def test_the_seed_mixtral_arm_trains_as_written_on_attention_only(data_dir, tmp_path, cache_env):
    from safetensors import safe_open

    peft = _seed_mixtral_peft()
    assert (peft.target_modules, peft.dropout, peft.target_experts) == ("all-linear", 0.1, False)
    spec = small_spec(max_steps=2, eval_steps=2, logging_steps=1)
    result = finetune(spec.arm("tiny-mixtral"), spec.training, peft, data_dir, tmp_path / "m", spec.seed)
    assert result.steps == 2
    with safe_open(str(tmp_path / "m" / "adapter" / "adapter_model.safetensors"), "pt") as f:
        modules = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in f.keys()}
    assert modules == {"q_proj", "k_proj", "v_proj", "o_proj"}  # no router, no experts
    config = json.loads((tmp_path / "m" / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert not config.get("target_parameters")


def test_all_linear_is_every_decoder_linear_on_llama_and_attention_on_mixtral(cache_env):
    from bakeoff.models import load_model
    from bakeoff.train.methods import target_modules

    assert target_modules(PeftSpec(), load_model("tiny://llama")) == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert target_modules(PeftSpec(), load_model("tiny://mixtral")) == ["k_proj", "o_proj", "q_proj", "v_proj"]


def test_the_router_gets_lora_only_when_listed(cache_env):
    from peft import get_peft_model

    from bakeoff.models import load_model
    from bakeoff.train.methods import ROUTERS

    base = load_model("tiny://mixtral")
    routers = [n for n, _ in base.named_modules() if n.rsplit(".", 1)[-1] in ROUTERS]
    assert routers == ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]
    for settings in (PeftSpec(dropout=0.1), PeftSpec(dropout=0.0, target_experts=True),
                     PeftSpec(target_modules="attention")):
        model = get_peft_model(load_model("tiny://mixtral"), peft_config(settings, load_model("tiny://mixtral")))
        assert not any(".mlp.gate." in n for n in _lora_names(model)), settings
    listed = PeftSpec(dropout=0.0, target_modules=["q_proj", "gate"])
    model = get_peft_model(base, peft_config(listed, base))
    assert any(".mlp.gate.lora_A" in n for n in _lora_names(model))


def test_a_listed_router_with_dropout_or_an_unknown_module_is_a_training_error(cache_env):
    from bakeoff.errors import TrainingError
    from bakeoff.models import load_model

    base = load_model("tiny://mixtral")
    with pytest.raises(TrainingError, match="peft.target_modules: gate .* needs peft.dropout 0"):
        peft_config(PeftSpec(dropout=0.1, target_modules=["q_proj", "gate"]), base)
    with pytest.raises(TrainingError, match="peft.target_modules: w1 matches no module of this mixtral model; "
                                            "its linear layers are k_proj, o_proj, q_proj, v_proj"):
        peft_config(PeftSpec(target_modules=["q_proj", "w1"]), base)


def test_target_experts_adds_trainable_parameters(cache_env):
    from peft import get_peft_model

    from bakeoff.models import load_model

    counts = {}
    for experts in (False, True):
        base = load_model("tiny://mixtral")
        model = get_peft_model(base, peft_config(PeftSpec(r=8, dropout=0.0, target_experts=experts), base))
        counts[experts] = _trainable(model)
        assert any("mlp.experts" in n for n in _lora_names(model)) == experts
    attention = 2 * 8 * (2 * (128 + 128) + 2 * (128 + 64))  # 2 layers x r x (q, o + k, v in and out)
    assert counts[False] == attention and counts[True] > counts[False]


# --- IA3 on Mixtral and the per-method learning rate ---------------------------------------------------------


def test_ia3_on_mixtral_is_refused_before_the_weights_load(data_dir, tmp_path, cache_env, monkeypatch):
    from bakeoff.errors import TrainingError
    finetune_module = importlib.import_module("bakeoff.train.finetune")

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(finetune_module, "load_model", no_weights)
    spec = small_spec()
    with pytest.raises(TrainingError, match="peft.method: ia3 on mixtral .* is refused.*use method lora"):
        finetune(spec.arm("tiny-mixtral"), spec.training, PeftSpec(method="ia3"), data_dir, tmp_path / "m")


def test_ia3_has_its_own_default_learning_rate_and_an_arms_own_wins(tmp_path):
    from bakeoff.spec import TrainingSpec
    from bakeoff.spec.training import IA3_LEARNING_RATE, method_learning_rate
    from bakeoff.train.finetune import _sft_config

    training = TrainingSpec(learning_rate=2.5e-5)
    assert IA3_LEARNING_RATE == 3e-3
    assert method_learning_rate(training, PeftSpec(method="ia3")) == 3e-3
    for method in ("lora", "qlora", "full"):
        assert method_learning_rate(training, PeftSpec(method=method)) == 2.5e-5
    data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    data["arms"][1]["peft"] = {"method": "ia3", "learning_rate": 1e-2}
    data["arms"][0]["peft"] = {"method": "ia3"}
    spec = parse_spec(data)
    rates = [_sft_config(spec.training, tmp_path, 0, "cpu", "fp32", False, spec.arm_peft(arm)).learning_rate
             for arm in spec.arms]
    assert rates == [3e-3, 1e-2]


# --- full fine-tuning with fp32 master weights; the optimizer ----------------------------------------------------


def _changed_shares(saved, base) -> dict[str, float]:
    """Per decoder Linear weight and lm_head: the share of elements that differ from the base."""
    import torch

    params = dict(saved.named_parameters())
    out = {}
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.Linear):
            before = module.weight.detach().to(params[f"{name}.weight"].dtype)
            out[name] = (params[f"{name}.weight"].detach() != before).float().mean().item()
    return out


def test_full_fine_tuning_in_bf16_keeps_fp32_master_weights(data_dir, tmp_path, cache_env, monkeypatch):
    import torch

    from bakeoff.models import load_model
    finetune_module = importlib.import_module("bakeoff.train.finetune")

    with torch.autocast("cpu", dtype=torch.bfloat16):  # this torch build autocasts on CPU
        assert torch.nn.Linear(4, 4)(torch.ones(1, 4)).dtype == torch.bfloat16
    spec = small_spec(precision="bf16", learning_rate=2.5e-5, max_steps=5, eval_steps=5, warmup_ratio=0.0,
                      keep_best=False)
    arm, full = spec.arm("tiny-llama"), PeftSpec(method="full")
    result = finetune(arm, spec.training, full, data_dir, tmp_path / "fp32", spec.seed)
    assert result.hyperparameters["precision"] == "bf16" and result.steps == 5
    saved = load_model(str(tmp_path / "fp32" / "model"))
    shares = _changed_shares(saved, load_model("tiny://llama"))
    assert len(shares) == 15 and "lm_head" in shares  # 2 layers x 7 + the head
    assert min(shares.values()) > 0.99, shares
    # The old behaviour, the model loaded in bf16: most updates at 2.5e-5 round away.
    loaded = finetune_module.load_model
    monkeypatch.setattr(finetune_module, "load_model", lambda uri, **kw: loaded(uri, **{**kw, "dtype": torch.bfloat16}))
    finetune(arm, spec.training, full, data_dir, tmp_path / "bf16", spec.seed)
    old = _changed_shares(load_model(str(tmp_path / "bf16" / "model"), dtype=torch.bfloat16), load_model("tiny://llama"))
    assert max(old.values()) < 0.5, old  # about 4% of each weight changed in bf16 (about 100% above)


@pytest.mark.parametrize(("optimizer", "optim"), [
    ("adamw", "adamw_torch"), ("adamw-8bit", "adamw_bnb_8bit"),
])
def test_the_optimizer_maps_to_the_trainers_optim(optimizer, optim, tmp_path):
    from bakeoff.spec import TrainingSpec
    from bakeoff.train.finetune import _sft_config

    config = _sft_config(TrainingSpec(optimizer=optimizer), tmp_path, 0, "cpu", "fp32", False, PeftSpec())
    assert config.optim == optim


@pytest.mark.parametrize(("optimizer", "optim"), [
    ("paged-adamw-8bit", "paged_adamw_8bit"), ("paged-adamw-32bit", "paged_adamw_32bit"),
])
def test_paged_optimizers_need_cuda(optimizer, optim, tmp_path):
    from bakeoff.errors import TrainingError
    from bakeoff.spec import TrainingSpec
    from bakeoff.train.finetune import _sft_config
    from bakeoff.train.methods import check_optimizer

    assert check_optimizer(TrainingSpec(optimizer=optimizer), "cuda") == optim
    with pytest.raises(TrainingError, match=f"training.optimizer: {optimizer} pages optimizer states .* on cpu"):
        _sft_config(TrainingSpec(optimizer=optimizer), tmp_path, 0, "cpu", "fp32", False, PeftSpec())


def test_bitsandbytes_optimizers_without_bitsandbytes_say_what_to_install(monkeypatch):
    import sys

    from bakeoff.spec import TrainingSpec
    from bakeoff.train.methods import check_optimizer

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes now fails
    with pytest.raises(SpecError, match="training.optimizer: adamw-8bit needs bitsandbytes"):
        check_optimizer(TrainingSpec(optimizer="adamw-8bit"), "cuda")
    assert check_optimizer(TrainingSpec(), "cpu") == "adamw_torch"

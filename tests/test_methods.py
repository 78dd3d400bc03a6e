"""Fine-tuning methods on CPU with the tiny models: each trains, saves, reloads and generates."""

from __future__ import annotations

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
    generate(arm, spec.generation, ["fine-tuned", "base-zero-shot"], data_dir, tmp_path / "model", tmp_path / "gen",
             method=peft["method"])
    rows = read_generations(tmp_path / "gen")
    assert len(rows) == 16 and {r["variant"] for r in rows} == {"fine-tuned", "base-zero-shot"}


def test_loftq_on_cpu_says_it_needs_a_gpu(data_dir, tmp_path, cache_env):
    spec = small_spec()
    with pytest.raises(SpecError, match="peft.loftq: LoftQ initialisation runs on a CUDA GPU"):
        finetune(spec.arm("tiny-llama"), spec.training, spec.peft.model_copy(update={"loftq": True}), data_dir,
                 tmp_path / "m")


def test_expert_lora_really_targets_the_fused_experts():
    config = peft_config(PeftSpec(target_experts=True, dropout=0.0), "mixtral")
    assert config.target_parameters == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def test_experts_on_a_model_without_them_name_the_key():
    # the model's type is known only once it is loaded; conflicts between settings are spec errors
    # (tests/test_spec.py::test_peft_conflicts_are_spec_errors_with_the_arm_key_path)
    with pytest.raises(SpecError, match="peft.target_experts: llama models have no fused experts"):
        peft_config(PeftSpec(target_experts=True, dropout=0.0), "llama")


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

    model = get_peft_model(load_model("tiny://mixtral"), peft_config(PeftSpec(target_experts=True, dropout=0.0, r=4),
                                                                      "mixtral"))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("mlp.experts" in n and "lora_A" in n for n in trained)
    assert any("self_attn.q_proj.lora_A" in n for n in trained)

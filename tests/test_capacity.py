"""The capacity planner: per arm and GPU stage, memory part by part, fit, tokens, time and cost.

The arithmetic is checked by hand for the seed's LLaMA 2 7B LoRA arm, the adapter counts against peft's
own on models built from a config, the model facts against the published sizes, and the fit check through
``bakeoff validate`` on the seeds' own oversized arms.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from bakeoff.capacity.architecture import config_parameters
from bakeoff.capacity.estimate import Shape, adapter_parameters, finetune_memory
from bakeoff.capacity.facts import MODEL_CONFIGS, PUBLISHED_BILLIONS
from bakeoff.capacity.hardware import gpu
from bakeoff.capacity.plan import fit_errors, plan_spec, render
from bakeoff.cli import main
from bakeoff.spec import load_spec, parse_spec

EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
LLAMA2_7B = MODEL_CONFIGS["meta-llama/llama-2-7b-hf"]


@pytest.mark.parametrize("model", sorted(MODEL_CONFIGS))
def test_the_kept_configs_give_the_published_sizes(model):
    total = config_parameters(MODEL_CONFIGS[model])["total"] / 1e9
    assert total == pytest.approx(PUBLISHED_BILLIONS[model], rel=0.015)


def test_llama2_7b_lora_by_hand():
    """The seed's arm: r 64 on all linear layers, batch 4 x 1024 tokens, bf16, checkpointing, AdamW."""
    est = finetune_memory(LLAMA2_7B, method="lora", r=64, targets="all-linear", batch_size=4, seq_len=1024,
                          checkpointing=True)
    assert config_parameters(LLAMA2_7B)["total"] == 6_738_415_616
    assert est.parts["weights"] == round(6_738_415_616 * 2 / 1e9, 2) == 13.48
    # per layer: q k v o 4 x 64 x (4096 + 4096); gate, up 2 x 64 x (4096 + 11008); down 64 x (11008 + 4096)
    assert est.trainable_parameters == 32 * (4 * 64 * 8192 + 3 * 64 * 15104) == 159_907_840
    assert est.parts["trainable"] == est.parts["gradients"] == 0.64 and est.parts["optimizer"] == 1.28
    # checkpointed: each layer's input (2 x 4096 bytes) for 32 layers, one layer's full set
    # (14 x 4096 + 4 x 4096 + 8 x 11008 bytes), the logits (10 x 32000 bytes), for 4 x 1024 tokens
    per_token = 32 * 2 * 4096 + (14 * 4096 + 4 * 4096 + 8 * 11008) + 10 * 32000
    assert est.parts["activations"] == round(4096 * per_token / 1e9, 2) == 3.05
    assert est.parts["overhead"] == round(0.8 + 0.1 * (13.48 + 0.64 + 0.64 + 1.28 + 3.05), 2)
    assert est.total_gb == 21.8
    without = finetune_memory(LLAMA2_7B, method="lora", r=64, targets="all-linear", batch_size=4, seq_len=1024,
                              checkpointing=False)
    assert without.parts["activations"] == round(4096 * (32 * (14 * 4096 + 4 * 4096 + 8 * 11008) + 320000) / 1e9, 2)


def test_fsdp_divides_weights_gradients_and_optimizer_not_activations():
    one = finetune_memory(LLAMA2_7B, method="full", batch_size=1, seq_len=1024)
    four = finetune_memory(LLAMA2_7B, method="full", batch_size=1, seq_len=1024, world_size=4, fsdp=True)
    ddp = finetune_memory(LLAMA2_7B, method="full", batch_size=1, seq_len=1024, world_size=4, fsdp=False)
    for part in ("weights", "gradients", "optimizer"):
        assert four.parts[part] == pytest.approx(one.parts[part] / 4, abs=0.01)
    assert four.parts["activations"] == one.parts["activations"] and ddp.parts == one.parts
    assert one.parts["weights"] == round(6_738_415_616 * 4 / 1e9, 2)  # fp32 master weights for full


def test_qlora_keeps_the_decoder_in_4_bit_and_the_rest_in_16():
    mixtral = MODEL_CONFIGS["mistralai/mixtral-8x7b-v0.1"]
    lora = finetune_memory(mixtral, method="lora", r=64, batch_size=1, seq_len=512)
    qlora = finetune_memory(mixtral, method="qlora", r=64, batch_size=1, seq_len=512)
    assert lora.parts["weights"] == pytest.approx(46.7 * 2, rel=0.01)
    assert 0.25 < qlora.parts["weights"] / lora.parts["weights"] < 0.27  # ~4.13 bits of 16, plus 16-bit embeddings
    optim = finetune_memory(LLAMA2_7B, method="full", batch_size=1, seq_len=512, optimizer="adamw-8bit")
    assert optim.parts["optimizer"] == pytest.approx(6.738 * 2, rel=0.01)


def _peft_trainable(family: str, config_kw: dict, peft_config) -> tuple[int, Shape]:
    import transformers
    from peft import get_peft_model

    from bakeoff.models.tiny import FAMILIES

    spec = FAMILIES[family]
    config = getattr(transformers, spec["config"])(vocab_size=300, **{**spec["kwargs"], **config_kw})
    model = getattr(transformers, spec["class"])(config)
    shape = Shape.of(config.to_dict())
    peft_model = get_peft_model(model, peft_config)
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad), shape


@pytest.mark.parametrize("targets", [["q_proj", "k_proj", "v_proj", "o_proj"],
                                     ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]])
def test_lora_counts_match_peft_on_a_llama_built_from_a_config(targets):
    from peft import LoraConfig

    real, shape = _peft_trainable("llama", {}, LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))
    assert adapter_parameters(shape, "lora", 8, targets) == real


def test_ia3_counts_match_peft():
    from peft import IA3Config

    config = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"],
                       task_type="CAUSAL_LM")
    real, shape = _peft_trainable("llama", {}, config)
    assert adapter_parameters(shape, "ia3", 0, None) == real


def test_mixtral_all_linear_is_the_attention_unless_the_experts_are_targeted():
    from peft import LoraConfig

    real, shape = _peft_trainable("mixtral", {}, LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                  "o_proj"], task_type="CAUSAL_LM"))
    assert adapter_parameters(shape, "lora", 8, "all-linear") == real
    assert adapter_parameters(shape, "lora", 8, "all-linear", target_experts=True) > real


@pytest.mark.parametrize("product", ["NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3",
                                     "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL", "NVIDIA-H200", "NVIDIA-A40",
                                     "NVIDIA-L40S", "NVIDIA-L4", "AMD_Instinct_MI250X_MI250", "AMD_Instinct_MI300X"])
def test_every_gpu_product_has_its_memory_and_peak(product):
    facts = gpu(product)
    assert facts.memory_gb and facts.peak_tflops


def test_gpu_memory_tells_the_40_and_80_gb_a100_apart():
    assert gpu("NVIDIA-A100-SXM4-40GB").memory_gb == 42.9 and gpu("NVIDIA-A100-SXM4-80GB").memory_gb == 85.9
    assert gpu("NVIDIA-L40S").peak_tflops == 362 and gpu("NVIDIA-L4").peak_tflops == 121


def seed(name: str) -> dict:
    return yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_shipped_experiment_fits_as_written(path):
    spec = load_spec(path)
    plans = plan_spec(spec)
    assert fit_errors(spec, plans) == []
    local = [p for p in plans if p.method != "hosted"]
    assert local and all(p.estimated_memory_gb and p.fits for p in local), render(plans)


def test_the_seeds_oversized_arms_are_refused_by_validate_naming_the_arm(tmp_path, capsys):
    mixtral = seed("llama2-vs-mixtral-instruct")
    mixtral["arms"][1].pop("peft")  # the seed's bf16 LoRA
    codellama = seed("sql-create-context")
    codellama["arms"][0].pop("peft")
    for name, data, arm in (("mixtral", mixtral, "arms[1] (mixtral-8x7b)"),
                            ("codellama", codellama, "arms[0] (codellama-34b)")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{arm}: finetune needs about" in err and "peft.method: qlora (" in err, err
    for name in ("llama2-vs-mixtral-instruct", "sql-create-context", "viggo"):
        assert main(["validate", str(ROOT / "experiments" / f"{name}.yaml")]) == 0
        assert "fits" in capsys.readouterr().out


def test_plan_json_has_one_object_per_arm_and_stage(capsys):
    assert main(["plan", str(ROOT / "experiments" / "sql-create-context.yaml"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["arm"], r["stage"]) for r in rows] == [("codellama-34b", "finetune"), ("codellama-34b", "generate"),
                                                     ("gpt-35-turbo", "finetune")]
    keys = {"arm", "stage", "gpu", "gpu_count", "gpu_memory_gb", "estimated_memory_gb", "fits", "breakdown",
            "tokens", "gpu_hours", "cost_usd", "reason"}
    assert all(keys <= set(r) for r in rows)
    finetune = rows[0]
    assert finetune["fits"] is True and finetune["gpu"] == "NVIDIA-A40" and finetune["gpu_hours"] > 0
    assert finetune["cost_usd"] == pytest.approx(finetune["gpu_hours"] * 0.475, abs=0.01)
    hosted = rows[2]
    assert hosted["gpu"] is None and hosted["cost_usd"] == pytest.approx(hosted["tokens"] * 8 / 1e6, abs=0.01)


def test_an_unknown_gpu_product_is_a_warning_naming_the_key():
    data = copy.deepcopy(seed("viggo"))
    data["resources"]["finetune"]["gpu"]["product"] = "NVIDIA-X9000"
    plans = plan_spec(parse_spec(data))
    assert plans[0].fits is None
    assert any("resources.finetune.gpu.product" in n and "NVIDIA-X9000" in n for n in plans[0].notes)


def test_prepared_data_gives_the_token_count(tmp_path):
    from bakeoff.capacity.plan import tokens_per_epoch

    (tmp_path / "stats.json").write_text(json.dumps({"rows": {"train": 1000}, "token_lengths": {"train": {
        "prompt": {"p50": 120}, "response": {"p50": 30}}}}))
    spec = load_spec(ROOT / "experiments" / "smoke.yaml")
    assert tokens_per_epoch(spec, tmp_path) == (150_000, False, None)
    assert tokens_per_epoch(spec, None) == (800 * 256, True, None)


def test_the_tiny_arms_measured_cpu_peak_is_within_2x_of_the_plan(tmp_path, monkeypatch):
    """A real finetune of tiny-llama on CPU, in its own process (its max RSS is the measured peak), with a cache
    of its own. The model is built beforehand in another process: building it (training its tokenizer) is not
    part of training."""
    monkeypatch.setenv("BAKEOFF_CACHE", str(tmp_path / "cache"))
    from bakeoff.capacity.plan import _finetune_estimate, model_config

    data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    data["data"]["sources"] = [{"uri": str(ROOT / "experiments" / "data" / "smoke.jsonl")}]
    data["data"]["split"] = {"train": 64, "validation": 8, "test": 8}
    data["training"].update(max_steps=4, eval_steps=2, logging_steps=2)
    data["arms"] = data["arms"][:1]
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    run = [sys.executable, "-m", "bakeoff.cli"]
    subprocess.run([sys.executable, "-c", "from bakeoff.models import resolve_model; resolve_model('tiny://llama')"],
                   check=True, capture_output=True, timeout=300)
    subprocess.run(run + ["prepare", str(spec_path), "--out", str(tmp_path / "data")], check=True,
                   capture_output=True, timeout=300)
    subprocess.run(run + ["finetune", str(spec_path), "--arm", "tiny-llama", "--data", str(tmp_path / "data"),
                          "--out", str(tmp_path / "model")], check=True, capture_output=True, timeout=600)
    measured = json.loads((tmp_path / "model" / "training.json").read_text())["peak_memory_gb"]
    spec = parse_spec(data)
    planned = _finetune_estimate(spec, spec.arms[0], model_config("tiny://llama"), cuda=False,
                                 precision="fp32").total_gb
    print(f"tiny-llama on CPU: measured peak {measured} GB, planned {planned} GB")
    assert 0.5 <= measured / planned <= 2.0, (measured, planned)


STATS = {"rows": {"train": 800}, "token_lengths": {"train": {"prompt": {"p50": 40}, "response": {"p50": 8}}}}


def test_planned_beside_measured_on_cpu_predicts_memory_only():
    from bakeoff.capacity.plan import predicted_beside_measured
    from bakeoff.report.render import _planned

    spec = load_spec(ROOT / "experiments" / "smoke.yaml")
    record = {"arm": "tiny-llama", "device": "cpu", "gpu_type": None, "gpu_count": 0, "peak_memory_gb": 0.64,
              "seconds": 30.0, "cost_usd": None, "hyperparameters": {"precision": "fp32"}}
    planned = predicted_beside_measured(spec, STATS, record)
    assert planned["memory_gb"] == 0.58 and planned["ratio"]["memory_gb"] == round(0.64 / 0.58, 2)
    assert planned["seconds"] is None and "CPU" in planned["reason"]
    cells = _planned(planned)
    assert cells["planned_memory"] == "0.58 (1.10x)" and cells["planned_time"].startswith("n/a (trained on CPU")


def test_planned_beside_measured_on_a_gpu_predicts_time_and_cost():
    from bakeoff.capacity.plan import ASSUMED_MFU, predicted_beside_measured

    data = seed("llama2-vs-mixtral-instruct")
    spec = parse_spec(data)
    record = {"arm": "llama2-7b", "device": "cuda", "gpu_type": "NVIDIA A100-SXM4-80GB", "gpu_count": 1,
              "peak_memory_gb": 20.0, "seconds": 12000.0, "cost_usd": 6.0, "hyperparameters": {"precision": "bf16"}}
    stats = {"rows": {"train": 83000}, "token_lengths": {"train": {"prompt": {"p50": 200}, "response": {"p50": 150}}}}
    planned = predicted_beside_measured(spec, stats, record)
    tokens = 83000 * 350 * 2
    from bakeoff.capacity.architecture import train_flops_per_token

    flops = train_flops_per_token(LLAMA2_7B, 1024, frozen_base=True, adapter_params=159_907_840)
    assert planned["seconds"] == pytest.approx(tokens * flops / (ASSUMED_MFU * 312e12), rel=1e-3)
    assert planned["cost_usd"] == pytest.approx(planned["seconds"] / 3600 * 1.8, rel=1e-3)
    assert planned["ratio"]["seconds"] == round(12000 / planned["seconds"], 2)

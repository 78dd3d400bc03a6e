"""The CUDA paths of training and generation (issue 15): they skip without a GPU; `make gpu-check` runs
them on a lent one. Each asserts behaviour on the real libraries, not that it ran."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT

from bakeoff.artifacts import read_generation_summary, read_generations
from bakeoff.data.prepare import prepare_data
from bakeoff.spec import parse_spec

pytestmark = pytest.mark.gpu


def spec_for(tmp_path, method: str, *, peft: dict | None = None, **generation):
    data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    data["data"]["sources"] = [{"uri": str(ROOT / "experiments" / "data" / "smoke.jsonl")}]
    data["data"]["split"] = {"train": 64, "validation": 8, "test": 8}
    data["training"].update(max_steps=8, eval_steps=4, logging_steps=2, batch_size=8, precision="auto")
    data["peft"] = {"method": method, "r": 8, "alpha": 16, "dropout": 0.0, **(peft or {})}
    data["arms"] = [{"name": "tiny", "model": "tiny://llama"}]
    data["generation"] = {"max_new_tokens": 8, **generation}
    spec = parse_spec(data)
    prepare_data(spec.data, spec.seed, tmp_path / "data")
    return spec


def run_arm(spec, tmp_path):
    from bakeoff.generate import generate
    from bakeoff.train import finetune

    arm = spec.arm("tiny")
    result = finetune(arm, spec.training, spec.arm_peft(arm), tmp_path / "data", tmp_path / "model", spec.seed)
    summary = generate(arm, spec.generation, ["fine-tuned", "base-zero-shot"], tmp_path / "data",
                       tmp_path / "model", tmp_path / "gen", template=spec.data.template,
                       method=spec.arm_method(arm), precision=spec.training.precision)
    return result, summary


def test_qlora_trains_saves_reloads_and_generates_on_cuda_in_bf16(tmp_path, cache_env):
    import torch

    result, summary = run_arm(spec_for(tmp_path, "qlora", backend="auto"), tmp_path)
    assert result.quantization == "nf4-double-quant" and result.device == "cuda"
    assert summary["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert summary["backend"] == "transformers" and "4-bit" in (summary["backend_reason"] or "")
    assert len(read_generations(tmp_path / "gen")) == 16


def test_full_fine_tuning_generates_from_the_saved_bf16_model(tmp_path, cache_env):
    result, summary = run_arm(spec_for(tmp_path, "full", backend="transformers"), tmp_path)
    config = json.loads((tmp_path / "model" / "model" / "config.json").read_text())
    assert result.artifact == "model" and config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert read_generation_summary(tmp_path / "gen")["precision"] == "bf16"


def test_vllm_serves_a_lora_adapter_with_the_same_ids_as_transformers(tmp_path, cache_env):
    pytest.importorskip("vllm")
    spec = spec_for(tmp_path, "lora", backend="vllm")
    _, summary = run_arm(spec, tmp_path)
    assert summary["backend"] == "vllm" and summary["backend_reason"] is None
    vllm_rows = read_generations(tmp_path / "gen")
    data = spec.model_dump(mode="json")
    data["generation"]["backend"] = "transformers"
    from bakeoff.generate import generate

    generate(spec.arm("tiny"), parse_spec(data).generation, ["fine-tuned", "base-zero-shot"], tmp_path / "data",
             tmp_path / "model", tmp_path / "gen-tf", template=spec.data.template, method="lora")
    tf_rows = read_generations(tmp_path / "gen-tf")
    same = sum(a["answer"] == b["answer"] for a, b in zip(vllm_rows, tf_rows, strict=True))
    assert same >= 0.9 * len(tf_rows)  # greedy decoding on the same ids; bf16 kernels may differ on a tie


def vllm_imports() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def test_lora_trains_in_bf16_on_cuda_and_generates_batched(tmp_path, cache_env):
    result, summary = run_arm(spec_for(tmp_path, "lora", backend="transformers"), tmp_path)
    assert result.device == "cuda" and result.artifact == "adapter"
    assert result.hyperparameters["precision"] == "bf16" and result.hyperparameters["gradient_checkpointing"]
    assert result.peak_memory_gb > 0 and result.final_train_loss is not None
    assert summary["precision"] == "bf16" and summary["device"] == "cuda"
    assert len(read_generations(tmp_path / "gen")) == 16


def test_loftq_initialises_lora_on_cuda_and_generation_keeps_to_transformers(tmp_path, cache_env):
    spec = spec_for(tmp_path, "lora", peft={"loftq": True}, backend="auto")
    result, summary = run_arm(spec, tmp_path)
    config = json.loads((tmp_path / "model" / "adapter" / "adapter_config.json").read_text())
    assert result.device == "cuda" and config["init_lora_weights"] == "loftq"
    assert summary["backend"] == "transformers"
    if vllm_imports():  # auto picked vLLM, which cannot serve a LoftQ adapter: routed back, saying why
        assert "LoftQ" in summary["backend_reason"]


@pytest.mark.parametrize(("method", "peft", "why"), [("ia3", {}, "IA3"), ("lora", {"use_dora": True}, "DoRA")],
                         ids=["ia3", "dora"])
def test_ia3_and_dora_adapters_train_on_cuda_and_are_routed_to_transformers(tmp_path, cache_env, method, peft, why):
    result, summary = run_arm(spec_for(tmp_path, method, peft=peft, backend="auto"), tmp_path)
    assert result.device == "cuda" and result.artifact == "adapter"
    assert summary["backend"] == "transformers" and summary["precision"] == "bf16"
    if vllm_imports():
        assert "vLLM cannot serve this fine-tune" in summary["backend_reason"] and why in summary["backend_reason"]
    assert len(read_generations(tmp_path / "gen")) == 16


def test_vllm_serves_an_adapter_with_a_rank_pattern_like_transformers(tmp_path, cache_env):
    pytest.importorskip("vllm")
    import torch
    from peft import LoraConfig, get_peft_model

    from bakeoff.generate import generate
    from bakeoff.generate.backends import vllm_max_lora_rank
    from bakeoff.models import load_model

    spec = spec_for(tmp_path, "lora", backend="vllm")
    base = load_model("tiny://llama", dtype=torch.bfloat16)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", rank_pattern={"q_proj": 16, "down_proj": 4},
                        task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero, so the adapter changes the answers
            torch.nn.init.normal_(param, std=0.05)
    model.save_pretrained(tmp_path / "model" / "adapter")
    saved = json.loads((tmp_path / "model" / "adapter" / "adapter_config.json").read_text())
    assert saved["rank_pattern"] and vllm_max_lora_rank(saved) == 16
    rows = {}
    for backend in ("vllm", "transformers"):
        data = spec.model_dump(mode="json")
        data["generation"]["backend"] = backend
        summary = generate(spec.arm("tiny"), parse_spec(data).generation, ["fine-tuned"], tmp_path / "data",
                           tmp_path / "model", tmp_path / f"gen-{backend}", template=spec.data.template, method="lora")
        assert summary["backend"] == backend and summary["backend_reason"] is None
        rows[backend] = read_generations(tmp_path / f"gen-{backend}")
    same = sum(a["answer"] == b["answer"] for a, b in zip(rows["vllm"], rows["transformers"], strict=True))
    assert same >= 0.9 * len(rows["transformers"])  # greedy on the same ids; bf16 kernels may differ on a tie

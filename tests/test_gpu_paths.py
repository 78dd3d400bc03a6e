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


def spec_for(tmp_path, method: str, **generation):
    data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    data["data"]["sources"] = [{"uri": str(ROOT / "experiments" / "data" / "smoke.jsonl")}]
    data["data"]["split"] = {"train": 64, "validation": 8, "test": 8}
    data["training"].update(max_steps=8, eval_steps=4, logging_steps=2, batch_size=8, precision="auto")
    data["peft"] = {"method": method, "r": 8, "alpha": 16, "dropout": 0.0}
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

"""The finetune and generate stages on a tiny model: a few real steps, a saved adapter, real answers."""

from __future__ import annotations

import json

import pytest
import yaml

from bakeoff.artifacts import read_generations
from bakeoff.data.prepare import prepare_data
from bakeoff.errors import SpecError
from bakeoff.generate import generate
from bakeoff.generate.generate import few_shot_prompt
from bakeoff.models.loading import resolve_precision
from bakeoff.spec import GenerationSpec, parse_spec
from bakeoff.train import finetune


@pytest.fixture(scope="module")
def trained(tmp_path_factory, session_cache):
    mp = pytest.MonkeyPatch()
    mp.setenv("BAKEOFF_CACHE", str(session_cache))
    from conftest import ROOT

    root = tmp_path_factory.mktemp("stage")
    data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    data["data"]["sources"] = [{"uri": str(ROOT / "experiments" / "data" / "smoke.jsonl")}]
    data["data"]["split"] = {"train": 64, "validation": 16, "test": 12}
    data["training"].update(max_steps=12, logging_steps=3, eval_steps=5, batch_size=4)
    data["generation"].update(max_new_tokens=6, batch_size=5, few_shot_k=2)
    spec = parse_spec(data)
    prepare_data(spec.data, spec.seed, root / "data")
    arm = spec.arm("tiny-llama")
    result = finetune(arm, spec.training, spec.arm_peft(arm), root / "data", root / "model", spec.seed, spec.cost)
    yield spec, root, result
    mp.undo()


def test_finetune_records_losses_time_and_adapter(trained):
    spec, root, result = trained
    assert result.steps == 12
    assert [p["step"] for p in result.loss_history["train"]] == [3, 6, 9, 12]
    # evaluations at 5 and 10, plus the final model's at 12
    assert [p["step"] for p in result.loss_history["validation"]] == [5, 10, 12]
    assert result.seconds > 0 and result.train_tokens > 0 and result.tokens_per_second > 0
    assert 0 < result.trainable_params < result.total_params
    assert result.device == "cpu" and result.gpu_hours == 0
    assert (root / "model" / "adapter" / "adapter_config.json").is_file()
    assert (root / "model" / "adapter" / "adapter_model.safetensors").is_file()
    saved = json.loads((root / "model" / "training.json").read_text())
    assert saved["loss_history"] == result.loss_history and saved["arm"] == "tiny-llama"
    assert json.loads((root / "model" / "loss_history.json").read_text()) == result.loss_history
    assert set(result.metrics()) >= {"seconds", "steps", "final_validation_loss"}


def test_generate_every_variant_from_the_saved_adapter(trained):
    spec, root, _ = trained
    summary = generate(spec.arm("tiny-llama"), spec.generation, spec.variants, root / "data",
                       root / "model" / "adapter", root / "gen", template=spec.data.template, seed=spec.seed,
                       method="lora")
    rows = read_generations(root / "gen")
    assert len(rows) == 12 * 3 and summary["samples"] == 12
    assert {r["variant"] for r in rows} == set(spec.variants)
    assert all(r["new_tokens"] <= 6 and r["stopped"] in ("eos", "max_new_tokens") for r in rows)
    assert len(summary["few_shot_ids"]) == 2
    by = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r["answer"])
    # The adapter really changes the model: its answers differ from the base model's.
    assert by["fine-tuned"] != by["base-zero-shot"]


def test_batched_generation_matches_one_at_a_time(trained, tmp_path):
    spec, root, _ = trained
    arm = spec.arm("tiny-llama")
    one = spec.generation.model_copy(update={"batch_size": 1})
    generate(arm, one, ["base-zero-shot"], root / "data", None, tmp_path / "one", seed=spec.seed, method="lora")
    generate(arm, spec.generation, ["base-zero-shot"], root / "data", None, tmp_path / "many", seed=spec.seed,
             method="lora")
    assert [r["answer"] for r in read_generations(tmp_path / "one")] == \
        [r["answer"] for r in read_generations(tmp_path / "many")]


def test_few_shot_prompt_puts_examples_before_the_question():
    shots = [{"instruction": "Is 4 even or odd?", "input": "", "reference": "even"}]
    prompt = few_shot_prompt("llama2-inst", shots, {"instruction": "Is 3 even or odd?", "input": ""})
    assert prompt.count("[INST]") == 2
    assert prompt.index("even</s>") < prompt.index("Is 3 even or odd?")
    assert prompt.endswith("[/INST]\n\n")


def test_precision_follows_the_device():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cuda") == "bf16"
    with pytest.raises(SpecError, match="training.precision"):
        resolve_precision("fp16", "cpu")


def test_generate_through_an_openai_compatible_endpoint(trained, tmp_path):
    from judge_stub import serve

    spec, root, _ = trained
    with serve() as server:
        server.completions = {"tiny-llama": "even", "org/base-model": "no idea"}  # as vLLM serves a LoRA module
        generation = GenerationSpec.model_validate({
            **spec.generation.model_dump(), "backend": "openai",
            "endpoint": {"base_url": server.base_url, "base_model": "org/base-model"}})
        summary = generate(spec.arm("tiny-llama"), generation, ["fine-tuned", "base-zero-shot"], root / "data",
                           None, tmp_path / "gen", method="lora")
        sent = server.requests
    rows = read_generations(tmp_path / "gen")
    assert summary["backend"] == "openai" and sent == 24
    assert {r["answer"] for r in rows if r["variant"] == "fine-tuned"} == {"even"}
    assert {r["answer"] for r in rows if r["variant"] == "base-zero-shot"} == {"no idea"}


def test_backend_openai_needs_an_endpoint():
    with pytest.raises(Exception, match="backend openai needs generation.endpoint"):
        parse_spec({"name": "x", "data": {"sources": [{"uri": "a.jsonl"}], "split": {"train": 1, "validation": 1,
                                                                                     "test": 1}},
                    "arms": [{"name": "a", "model": "tiny://llama"}], "generation": {"backend": "openai"}})

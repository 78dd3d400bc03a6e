"""One BOS, added one way: what the model trains on and what each generation backend feeds are the same
ids up to the completion, with the tiny tokenizers configured like the real Llama 2 ones (add_bos_token)."""

from __future__ import annotations

import importlib
import json

import pytest
import yaml
from conftest import ROOT

from bakeoff.artifacts import read_split
from bakeoff.cli import main
from bakeoff.data.prepare import prepare_data
from bakeoff.errors import EvaluationError, SpecError, TrainingError
from bakeoff.generate.backends import vllm_answers, vllm_cannot_serve, vllm_max_lora_rank
from bakeoff.generate.generate import prompt_ids, variant_prompts
from bakeoff.models import load_tokenizer
from bakeoff.spec import parse_spec
from bakeoff.train.tokens import IGNORE, leading_bos, training_view

SHIPPED = sorted(ROOT.glob("experiments/*.yaml"))


def local_copy(path, tmp_path, model="tiny://llama") -> dict:
    """A shipped experiment with its arms on a tiny model and its data from the project's own fixtures in
    the same record format (the Hub is not reachable here); template, training and generation as shipped."""
    data = yaml.safe_load(path.read_text())
    fixture = {"text-to-sql": ("sql/sql.jsonl", "sql-create-context"),
               "viggo": ("viggo.jsonl", "viggo")}.get(data["data"].get("template"), ("smoke.jsonl", "alpaca"))
    data["data"]["sources"] = [{"uri": str(ROOT / "experiments" / "data" / fixture[0]), "format": fixture[1]}]
    data["data"]["split"] = {"train": 20, "validation": 5, "test": 5}
    data["data"].pop("max_instruction_tokens", None)
    data["arms"] = [{"name": "tiny", "model": model}]
    data.pop("evaluation", None)
    data["training"].pop("checkpoint_uri", None)
    return data


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
@pytest.mark.parametrize("model", ["tiny://llama", "tiny://mixtral"])
def test_every_shipped_experiment_trains_and_generates_on_one_bos(path, model, tmp_path, cache_env, capsys):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(local_copy(path, tmp_path, model)))
    assert main(["tokens", str(spec_path), "--arm", "tiny", "--n", "3", "--json"]) == 0
    views = json.loads(capsys.readouterr().out)
    tokenizer = load_tokenizer(model)
    assert len(views) == 3
    for v in views:
        assert v["train_input_ids"][0] == tokenizer.bos_token_id and v["checks"]["train_bos"] == 1
        assert v["checks"]["generate_bos"] == 1 and v["checks"]["generate_is_train_prompt"]
        prompt_length = v["train_labels"].index(next(t for t in v["train_labels"] if t != IGNORE))
        assert v["generate_input_ids"] == v["train_input_ids"][:prompt_length]
        assert v["train_input_ids"][-1] == tokenizer.eos_token_id  # the completion ends the sequence, once
        assert v["train_input_ids"].count(tokenizer.eos_token_id) == 1


def smoke_spec(tmp_path, **template):
    data = local_copy(ROOT / "experiments" / "smoke.yaml", tmp_path)
    data["training"].update(max_steps=2, eval_steps=2, logging_steps=1, batch_size=2)
    if template:
        data["data"]["template"] = template
    spec = parse_spec(data)
    prepare_data(spec.data, spec.seed, tmp_path / "data")
    return spec


@pytest.mark.parametrize("chat", [False, True])
def test_the_view_is_what_trl_really_builds(tmp_path, cache_env, chat):
    from bakeoff.models.tiny import build_tiny_model
    from bakeoff.train.finetune import setup

    uri = "tiny://llama"
    if chat:  # a tokenizer with a chat template that writes its BOS, as Llama 2 chat's does
        from transformers import AutoTokenizer

        uri = str(build_tiny_model("llama", tmp_path / "chatty"))
        tok = AutoTokenizer.from_pretrained(uri)
        tok.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}"
                             "{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
                             "{% if add_generation_prompt %}[assistant] {% endif %}")
        tok.save_pretrained(uri)
    spec = smoke_spec(tmp_path)
    data = spec.model_dump(mode="json")
    data["arms"] = [{"name": "tiny", "model": uri}]
    if chat:
        data["data"]["template"] = "chat"
    spec = parse_spec(data)
    prepare_data(spec.data, spec.seed, tmp_path / "data2")
    arm = spec.arm("tiny")
    run = setup(arm, spec.training, spec.arm_peft(arm), tmp_path / "data2", tmp_path / "out")
    rows = read_split(tmp_path / "data2", "train")
    tokenizer = load_tokenizer(uri)
    for row, built in zip(rows[:5], run.trainer.train_dataset.select(range(5)), strict=True):
        view = training_view(tokenizer, row, spec.training.max_seq_length)
        assert view["input_ids"] == built["input_ids"] and view["labels"] == built["labels"]
        assert leading_bos(tokenizer, view["input_ids"]) == 1


def test_a_template_that_writes_the_bos_again_is_refused_before_training(tmp_path, cache_env, capsys):
    from bakeoff.train.finetune import finetune

    spec = smoke_spec(tmp_path, prompt="<s>[INST] {body} [/INST]", bos="")
    arm = spec.arm("tiny")
    with pytest.raises(TrainingError, match="starts with 2 BOS tokens"):
        finetune(arm, spec.training, spec.arm_peft(arm), tmp_path / "data", tmp_path / "out")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    assert main(["tokens", str(path), "--arm", "tiny", "--n", "1", "--data", str(tmp_path / "data")]) == 1
    assert "BOS at the start of training: 2" in capsys.readouterr().out


def test_every_backend_is_fed_the_same_ids(tmp_path, cache_env, monkeypatch):
    import sys
    import types

    if "vllm" not in sys.modules:  # no vllm on CPU: SamplingParams is all vllm_answers takes from it here
        monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **kw: kw))
    spec = smoke_spec(tmp_path)
    tokenizer = load_tokenizer("tiny://llama")
    test = read_split(tmp_path / "data", "test")
    shots = read_split(tmp_path / "data", "train")[:2]
    for variant in ("fine-tuned", "base-few-shot"):
        prompts = variant_prompts(spec.data.template, variant, test, shots)
        ids = [prompt_ids(tokenizer, p) for p in prompts]
        # a completions server (vLLM's default) encodes the text with the tokenizer's special tokens: the same
        assert ids == [tokenizer(p)["input_ids"] for p in prompts]
        assert all(leading_bos(tokenizer, i) == 1 for i in ids)

        class RecordingLLM:  # what vLLM's LLM.generate is given (the GPU check runs the real one)
            def generate(self, inputs, params, lora_request=None, use_tqdm=False):
                self.inputs = inputs
                return []

        llm = RecordingLLM()
        vllm_answers(llm, ids, 4)
        assert llm.inputs == [{"prompt_token_ids": i} for i in ids]


@pytest.mark.parametrize(("config", "rank", "reason"), [
    ({"peft_type": "LORA", "r": 16}, 16, None),
    ({"peft_type": "LORA", "r": 48}, 64, None),
    ({"peft_type": "LORA", "r": 16, "rank_pattern": {"experts": 128}}, 128, None),
    ({"peft_type": "LORA", "r": 300}, 320, None),
    ({"peft_type": "LORA", "r": 600}, None, "above vLLM's largest"),
    ({"peft_type": "IA3"}, None, "LoRA adapters only"),
    ({"peft_type": "LORA", "r": 8, "use_dora": True}, None, "DoRA"),
    ({"peft_type": "LORA", "r": 8, "init_lora_weights": "loftq"}, None, "LoftQ"),
    ({"peft_type": "LORA", "r": 8, "target_parameters": ["mlp.experts.down_proj"]}, None, "fused expert"),
])
def test_vllm_gets_only_what_it_serves_with_its_rank_rounded_up(tmp_path, config, rank, reason):
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    why = vllm_cannot_serve("lora", tmp_path)
    assert (why is None) == (reason is None) and (reason is None or reason in why)
    if rank is not None:
        assert vllm_max_lora_rank(config) == rank
    assert "4-bit" in vllm_cannot_serve("qlora", tmp_path) and "complete model" in vllm_cannot_serve("full", None)


@pytest.mark.parametrize(("api", "template", "error"), [
    ("chat", "llama2-inst", "generation.endpoint.api: chat applies the model's chat template"),
    ("completions", "chat", "generation.endpoint.api: completions sends a text"),
    ("chat", "chat", None),
    ("completions", "alpaca", None),
])
def test_the_endpoint_api_must_match_the_template(tmp_path, api, template, error):
    data = local_copy(ROOT / "experiments" / "smoke.yaml", tmp_path)
    data["data"]["template"] = template
    data["generation"] = {"backend": "openai", "endpoint": {"base_url": "http://127.0.0.1:1/v1", "api": api}}
    if error is None:
        parse_spec(data)
        return
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert any(m.startswith(error) for m in info.value.messages)


def test_a_chat_server_gets_messages_and_a_completions_server_gets_text():
    from bakeoff.generate.backends import endpoint_answers
    from bakeoff.spec import Endpoint

    endpoint = Endpoint(base_url="http://127.0.0.1:1/v1", max_retries=0, timeout_s=1)
    with pytest.raises(EvaluationError, match="api chat takes chat messages"):
        endpoint_answers(endpoint, "generation.endpoint", "chat", "m", ["a rendered prompt"], 4)
    with pytest.raises(EvaluationError, match="api completions takes a text"):
        endpoint_answers(endpoint, "generation.endpoint", "completions", "m", [[{"role": "user", "content": "x"}]], 4)


def test_generation_runs_in_the_training_precision_and_says_which_backend_and_why(tmp_path, cache_env):
    import torch

    from bakeoff.artifacts import read_generation_summary
    from bakeoff.evaluate import evaluate
    from bakeoff.generate import generate
    from bakeoff.models import loading

    spec = smoke_spec(tmp_path)
    arm = spec.arm("tiny")
    seen = []
    real = loading.load_model

    def recording(uri, dtype=None, **kwargs):
        seen.append(dtype)
        return real(uri, dtype=dtype, **kwargs)

    gen_module = importlib.import_module("bakeoff.generate.generate")  # the package exports a function so named
    gen_module.load_model, saved = recording, gen_module.load_model
    try:
        summary = generate(arm, spec.generation, ["base-zero-shot"], tmp_path / "data", None, tmp_path / "gen",
                           template=spec.data.template, method="lora", precision="bf16")
    finally:
        gen_module.load_model = saved
    assert seen == [torch.bfloat16] and summary["precision"] == "bf16"
    assert summary["backend"] == "transformers" and "vLLM needs a CUDA GPU" in summary["backend_reason"]
    assert read_generation_summary(tmp_path / "gen")["precision"] == "bf16"
    result = evaluate("tiny", spec.evaluation, tmp_path / "gen", tmp_path / "scores")
    assert result["health"]["generation"]["backend"] == "transformers"


def test_a_full_fine_tune_and_its_base_never_share_memory(tmp_path, cache_env, monkeypatch):
    import gc
    import weakref

    from bakeoff.generate import generate

    gen_module = importlib.import_module("bakeoff.generate.generate")
    from bakeoff.models.tiny import build_tiny_model

    spec = smoke_spec(tmp_path)
    tuned = build_tiny_model("llama", tmp_path / "out" / "model", seed=3)  # stands in for a full fine-tune
    alive: list[weakref.ref] = []
    real = gen_module.load_model

    def tracking(uri, **kwargs):
        gc.collect()
        assert [r for r in alive if r() is not None] == [], "a second model was loaded beside the first"
        model = real(uri, **kwargs)
        alive.append(weakref.ref(model))
        return model

    monkeypatch.setattr(gen_module, "load_model", tracking)
    generate(spec.arm("tiny"), spec.generation, ["fine-tuned", "base-zero-shot"], tmp_path / "data",
             tmp_path / "out", tmp_path / "gen", template=spec.data.template, method="full")
    assert len(alive) == 2 and tuned.is_dir()

"""Prompt templates: the built-in ones render exactly, a spec's own is checked, chat uses the tokenizer's."""

from __future__ import annotations

import json

import pytest

from bakeoff.artifacts import read_split
from bakeoff.data.prepare import prepare_data
from bakeoff.errors import ModelError, SpecError
from bakeoff.generate.generate import few_shot_prompt, prompt_ids
from bakeoff.spec import DataSource, DataSpec, SplitSpec, parse_spec
from bakeoff.templates import TEMPLATES, get_template

# the seed paper writes <s> before [INST]: that is the BOS token the tokenizer adds, not text
LLAMA2 = ("[INST] Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n{body} [/INST]\n\n")


@pytest.mark.parametrize(("name", "instruction", "input_text", "prompt_has", "prompt_lacks"), [
    ("llama2-inst", "Add 2 and 3.", "", ["[INST] Below is an instruction", "\n\nAdd 2 and 3. [/INST]\n\n"], ["<s>"]),
    ("llama2-inst", "Sum these.", "2, 3", ["Sum these.\n\n2, 3 [/INST]\n\n"], []),
    ("alpaca", "Sum these.", "2, 3", ["### Instruction:\nSum these.\n\n### Input:\n2, 3\n\n### Response:\n"], ["<s>"]),
    ("alpaca", "Add 2 and 3.", "", ["### Instruction:\nAdd 2 and 3.\n\n### Response:\n"], ["### Input:"]),
    ("text-to-sql", "How many heads are older than 56?", "CREATE TABLE head (age INTEGER)",
     ["### Tables:\nCREATE TABLE head (age INTEGER)\n\n### Question:\nHow many heads are older than 56?\n\n### SQL:\n"],
     []),
    ("viggo", "ignored by the template", "I loved Portal 2.", ["### Sentence:\nI loved Portal 2.\n\n"], ["ignored"]),
])
def test_builtin_templates(name, instruction, input_text, prompt_has, prompt_lacks):
    template = get_template(name)
    prompt = template.prompt(instruction, input_text)
    for text in prompt_has:
        assert text in prompt
    for text in prompt_lacks:
        assert text not in prompt
    assert template.completion(" 5 ") == "5</s>"


def test_llama2_inst_is_the_seed_papers_template_verbatim():
    assert get_template("llama2-inst").prompt("Do it.") == LLAMA2.format(body="Do it.")


def test_user_template_from_the_spec(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(6)))
    data = DataSpec(sources=[DataSource(uri=str(src))], split=SplitSpec(train=2, validation=2, test=2),
                    template={"prompt": "Q: {instruction}\nA:", "completion": " {response}", "eos": "<|end|>"})
    prepare_data(data, 0, tmp_path / "out")
    row = read_split(tmp_path / "out", "train")[0]
    assert row["prompt"] == f"Q: {row['instruction']}\nA:"
    assert row["completion"] == f" {row['reference']}<|end|>"


@pytest.mark.parametrize(("template", "key"), [
    ({"prompt": "no placeholder here"}, "data.template.prompt"),
    ({"prompt": "{instruction}", "completion": "no response"}, "data.template.completion"),
    ({"prompt": "{instruction} {oops}"}, "data.template"),
    ("llama3", "data.template"),
])
def test_bad_templates_name_the_key(template, key):
    spec = {"name": "t", "data": {"sources": [{"uri": "x.jsonl"}], "split": {"train": 1, "validation": 1, "test": 1},
                                  "template": template}, "arms": [{"name": "a", "model": "tiny://llama"}]}
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert any(m.startswith(key) for m in info.value.messages), info.value.messages


def test_chat_template_rows_carry_messages(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"q{i}", "input": "ctx", "output": f"a{i}"}) + "\n"
                           for i in range(6)))
    data = DataSpec(sources=[DataSource(uri=str(src))], split=SplitSpec(train=2, validation=2, test=2),
                    template="chat")
    prepare_data(data, 0, tmp_path / "out")
    row = read_split(tmp_path / "out", "test")[0]
    assert row["messages"] == [{"role": "user", "content": f"{row['instruction']}\n\nctx"}]
    assert row["completion"] == row["reference"]  # no literal end-of-sequence text: the chat template adds it


def test_chat_few_shot_prompts_are_turns_rendered_by_the_tokenizers_template():
    from bakeoff.models import load_tokenizer

    shots = [{"instruction": "1+1?", "input": "", "reference": "2"}]
    prompt = few_shot_prompt("chat", shots, {"instruction": "2+2?", "input": ""})
    assert prompt == [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
                      {"role": "user", "content": "2+2?"}]
    tok = load_tokenizer("tiny://llama")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    ids = prompt_ids(tok, prompt)
    assert ids[0] == tok.bos_token_id != ids[1]  # the chat template's BOS, once
    assert tok.decode(ids) == "<s><user>1+1?<assistant>2<user>2+2?<assistant>"
    with pytest.raises(ModelError, match="chat template"):
        prompt_ids(object(), [{"role": "user", "content": "x"}])


def test_every_builtin_template_is_tested():
    assert set(TEMPLATES) == {"llama2-inst", "alpaca", "text-to-sql", "viggo", "chat"}


def test_chat_template_trains_and_generates_end_to_end(tmp_path, cache_env):
    from transformers import AutoTokenizer

    from bakeoff.artifacts import read_generations
    from bakeoff.generate import generate
    from bakeoff.models.tiny import build_tiny_model
    from bakeoff.train import finetune

    model_dir = build_tiny_model("llama", tmp_path / "chatty")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}"
                         "{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}")
    tok.save_pretrained(model_dir)
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Is {i} even or odd?", "output": "even odd".split()[i % 2]})
                           + "\n" for i in range(20)))
    spec = parse_spec({
        "name": "chat", "data": {"sources": [{"uri": str(src)}], "template": "chat",
                                 "split": {"train": 12, "validation": 4, "test": 4}},
        "training": {"max_steps": 4, "batch_size": 4, "logging_steps": 2, "eval_steps": 2, "learning_rate": 1e-3},
        "generation": {"max_new_tokens": 4, "few_shot_k": 2},
        "arms": [{"name": "chatty", "model": str(model_dir)}],
        "variants": ["fine-tuned", "base-zero-shot", "base-few-shot"],
    })
    prepare_data(spec.data, spec.seed, tmp_path / "data")
    arm = spec.arm("chatty")
    result = finetune(arm, spec.training, spec.arm_peft(arm), tmp_path / "data", tmp_path / "model")
    assert result.steps == 4 and result.loss_history["validation"]
    generate(arm, spec.generation, spec.variants, tmp_path / "data", tmp_path / "model" / "adapter",
             tmp_path / "gen", template=spec.data.template, method=spec.arm_method(arm))
    rows = read_generations(tmp_path / "gen")
    assert len(rows) == 12 and {r["variant"] for r in rows} == set(spec.variants)

"""What a training run reports it spent and did: training time apart from evaluation, sums over resumed
segments, the rows TRL dropped or cut, the seed's length rule, the instruct-v3 wrapper, and where a
4-bit model goes on several GPUs."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from conftest import ROOT

from bakeoff.artifacts import read_split
from bakeoff.data.prepare import prepare_data, unwrap_alpaca
from bakeoff.spec import DataSource, DataSpec, SplitSpec, parse_spec
from bakeoff.train.finetune import finetune, rank_device


def tiny_spec(tmp_path, rows=None, **training):
    src = tmp_path / "rows.jsonl"
    rows = rows or [{"instruction": f"What is {i} plus {i}?", "output": str(2 * i)} for i in range(40)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = parse_spec({
        "name": "acct", "seed": 3,
        "data": {"sources": [{"uri": str(src)}],
                 "template": {"prompt": "Q: {instruction}\nA:", "completion": " {response}"},
                 "split": {"train": len(rows) - 8, "validation": 4, "test": 4}},
        "training": {"max_steps": 4, "batch_size": 4, "logging_steps": 1, "eval_steps": 2, "learning_rate": 1e-3,
                     "max_seq_length": 64, **training},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "arms": [{"name": "tiny", "model": "tiny://llama"}],
    })
    prepare_data(spec.data, spec.seed, tmp_path / "data")
    return spec


def train(spec, tmp_path, out="model", checkpoint_uri=None):
    arm = spec.arm("tiny")
    return finetune(arm, spec.training, spec.arm_peft(arm), tmp_path / "data", tmp_path / out, spec.seed,
                    checkpoint_uri=checkpoint_uri)


def test_training_time_leaves_the_validation_passes_out(tmp_path, cache_env, monkeypatch):
    from trl import SFTTrainer

    real = SFTTrainer.evaluate

    def slow(self, *args, **kwargs):  # an evaluation that takes a known 0.4 s
        time.sleep(0.4)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "evaluate", slow)
    spec = tiny_spec(tmp_path)
    started = time.perf_counter()
    result = train(spec, tmp_path)
    wall = time.perf_counter() - started
    evaluations = len(result.loss_history["validation"])
    assert evaluations == 2 and result.evaluation_seconds >= 0.8
    assert result.seconds + result.evaluation_seconds < wall  # the two are apart, and the stage has other work
    assert result.seconds < wall - 0.8
    assert result.tokens_per_second == pytest.approx(result.train_tokens / result.seconds, rel=0.01)


def test_a_resumed_run_reports_the_sum_of_its_segments(tmp_path, cache_env):
    spec = tiny_spec(tmp_path)
    whole = train(spec, tmp_path, "whole", checkpoint_uri=str(tmp_path / "ckpt-whole"))
    assert whole.segments == 1
    first = train(spec, tmp_path, "first", checkpoint_uri=str(tmp_path / "ckpt"))
    ckpt = next((tmp_path / "ckpt").glob("fp-*"))  # the training's checkpoints, under its fingerprint
    shutil.rmtree(ckpt / "checkpoint-4")  # as if the pod died after step 2's checkpoint
    resumed = train(spec, tmp_path, "resumed", checkpoint_uri=str(tmp_path / "ckpt"))
    assert resumed.resumed_from_step == 2 and resumed.segments == 2
    assert resumed.train_tokens == whole.train_tokens == first.train_tokens  # not the last segment's alone
    saved = json.loads((ckpt / "checkpoint-2" / "bakeoff_accounting.json").read_text())
    assert 0 < saved["tokens"] < whole.train_tokens and saved["segments"] == 1
    assert resumed.seconds > saved["train_seconds"]


def test_rows_trl_drops_or_cuts_are_counted(tmp_path, cache_env):
    rows = [{"instruction": f"What is {i} plus {i}?", "output": str(2 * i)} for i in range(36)]
    rows[0] = {"instruction": "long " * 80, "output": "dropped: the prompt alone fills max_seq_length"}
    rows[1] = {"instruction": "Say it.", "output": "cut " * 80}
    spec = tiny_spec(tmp_path, rows=rows)
    train_ids = {r["instruction"].strip() for r in read_split(tmp_path / "data", "train")}
    expected_dropped = int(rows[0]["instruction"].strip() in train_ids)
    expected_cut = int("Say it." in train_ids)
    result = train(spec, tmp_path)
    assert result.rows == {"train": 28, "trained": 28 - expected_dropped, "dropped_no_completion": expected_dropped,
                           "at_max_length": expected_cut}
    assert json.loads((tmp_path / "model" / "training.json").read_text())["rows"] == result.rows


def test_the_seeds_length_rule_counts_the_instruction_strictly_below_the_limit(tmp_path):
    src = tmp_path / "d.jsonl"
    rows = [{"instruction": "w " * 10, "output": "exactly ten words: dropped"},
            {"instruction": "w " * 9, "output": "nine: kept"}] + [
        {"instruction": f"q{i}", "output": f"a{i}"} for i in range(6)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataSpec(sources=[DataSource(uri=str(src))], split=SplitSpec(train=4, validation=1, test=1),
                    max_instruction_tokens=10, template="llama2-inst")  # the template's own words do not count
    result = prepare_data(data, 0, tmp_path / "out")
    assert result.dropped["too_long"] == 1


def test_the_instruct_v3_wrapper_is_removed_once_and_counted(tmp_path):
    wrapped = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n### Instruction\n{q}\n\n### Response\n")
    src = tmp_path / "v3.jsonl"
    src.write_text("".join(json.dumps({"prompt": wrapped.format(q=f"Name {i} birds."), "response": f"{i} birds"})
                           + "\n" for i in range(8)) + json.dumps({"prompt": "Plain?", "response": "yes"}) + "\n")
    data = DataSpec(sources=[DataSource(uri=str(src), format="prompt-response", unwrap="alpaca")],
                    split=SplitSpec(train=5, validation=2, test=2))
    result = prepare_data(data, 0, tmp_path / "out")
    assert result.unwrapped == 8
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["unwrapped"] == 8
    rows = [r for s in ("train", "validation", "test") for r in read_split(tmp_path / "out", s)]
    assert all("### Instruction" not in r["prompt"] and r["prompt"].count("[INST]") == 1 for r in rows)
    assert {r["instruction"] for r in rows} >= {"Name 3 birds.", "Plain?"}
    assert unwrap_alpaca("### Instruction:\nSum.\n\n### Input:\n2, 3\n\n### Response:\n") == ("Sum.", "2, 3", 1)


def test_each_rank_loads_its_4bit_model_on_its_own_gpu(monkeypatch):
    import torch

    from bakeoff.models.loading import quantization_config

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert rank_device("cuda") == "cuda:3" and rank_device("cpu") == "cpu"
    monkeypatch.delenv("LOCAL_RANK")
    assert rank_device("cuda") == "cuda:0"
    assert quantization_config(torch.bfloat16, quant_storage=torch.bfloat16).bnb_4bit_quant_storage == torch.bfloat16
    assert quantization_config(torch.bfloat16).bnb_4bit_quant_storage == torch.uint8  # the default, one GPU


def test_the_seed_experiment_states_how_it_counts_and_unwraps():
    from bakeoff.spec import load_spec

    spec = load_spec(ROOT / "experiments" / "llama2-vs-mixtral-instruct.yaml")
    v3 = next(s for s in spec.data.sources if "instruct-v3" in s.uri)
    assert v3.unwrap == "alpaca" and spec.data.max_instruction_tokens == 2048

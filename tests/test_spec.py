"""Tests for the experiment spec: shipped specs load, invalid ones name the key path, the CLI validates."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from bakeoff import cluster
from bakeoff.cli import main
from bakeoff.cli import plan as cli_plan
from bakeoff.errors import SpecError
from bakeoff.spec import (
    ExperimentSpec,
    PeftSpec,
    ResourcesSpec,
    StageResources,
    Toleration,
    load_spec,
    parse_spec,
    spec_from_json,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC_FILES = sorted((ROOT / "experiments").rglob("*.yaml")) + sorted((ROOT / "experiments").rglob("*.yml"))

MINIMAL = {
    "name": "unit",
    "data": {"sources": [{"uri": "data.jsonl"}], "split": {"train": 8, "validation": 2, "test": 2}},
    "arms": [{"name": "tiny-llama", "model": "tiny://llama"}],
}


def _spec(**changes) -> dict:
    data = copy.deepcopy(MINIMAL)
    data.update(copy.deepcopy(changes))
    return data


def test_there_are_specs_to_check():
    assert SPEC_FILES, "experiments/ holds no spec YAML"


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shipped_spec_loads(path):
    spec = load_spec(path)
    assert isinstance(spec, ExperimentSpec)
    assert spec.arms
    for source in spec.data.sources:
        if "://" not in source.uri:  # relative local paths are resolved against the spec's folder
            assert Path(source.uri).is_absolute()
            assert Path(source.uri).is_file(), f"{path}: data source {source.uri} does not exist"


def test_smoke_spec_content():
    spec = load_spec(ROOT / "experiments" / "smoke.yaml")
    assert [a.name for a in spec.arms] == ["tiny-llama", "tiny-mixtral"]
    assert spec.data.sources[0].uri == str((ROOT / "experiments" / "data" / "smoke.jsonl").resolve())
    assert spec.evaluation.judge is None
    assert "judge" in spec.evaluation.metrics


def test_minimal_spec_gets_defaults():
    spec = parse_spec(_spec())
    assert spec.seed == 42
    assert spec.variants == ["fine-tuned", "base-zero-shot"]
    assert spec.evaluation.metrics == ["exact_match", "judge"]
    assert spec.training.batch_size == 4
    assert spec.peft == PeftSpec()
    assert spec.data.template == "llama2-inst"
    assert spec.data.sources[0].format == "alpaca"


def _add_arm(**arm):
    return {"arms": [MINIMAL["arms"][0], {"name": "other", "model": "tiny://mixtral", **arm}]}


INVALID = [
    pytest.param(_spec(**_add_arm(peft={"r": 0})), "arms[1].peft.r: Input should be greater than 0", id="peft-r"),
    pytest.param(_spec(training={"batch_size": "four"}), "training.batch_size: Input should be a valid integer",
                 id="batch-size-type"),
    pytest.param(_spec(training={"batch_size": 0}), "training.batch_size: Input should be greater than 0",
                 id="batch-size-zero"),
    pytest.param(_spec(trainng={"epochs": 1}), "trainng: unknown key (not part of the spec)", id="unknown-key"),
    pytest.param(_spec(**_add_arm(peft={"lora_r": 8})), "arms[1].peft.lora_r: unknown key (not part of the spec)",
                 id="unknown-peft-key"),
    pytest.param({k: v for k, v in MINIMAL.items() if k != "data"}, "data: required key is missing",
                 id="missing-data"),
    pytest.param(_spec(data={"sources": [{"uri": "x.jsonl"}]}), "data.split: required key is missing",
                 id="missing-split"),
    pytest.param(_spec(arms=[{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]),
                 "arms[1].name: duplicate arm name 'a'", id="duplicate-arm"),
    pytest.param(_spec(arms=[{"name": "Tiny_Llama", "model": "m"}]),
                 "arms[0].name: must be a lowercase name", id="arm-slug"),
    pytest.param(_spec(arms=[{"name": "-x", "model": "m"}]), "arms[0].name: must be a lowercase name",
                 id="arm-slug-leading-dash"),
    pytest.param(_spec(name="My Experiment"), "name: must be a lowercase name", id="experiment-slug"),
    pytest.param(_spec(arms=[]), "arms: List should have at least 1 item", id="no-arms"),
    pytest.param(_spec(arms=[{"name": "a", "model": ""}]), "arms[0].model: String should have at least 1 character",
                 id="empty-model"),
    pytest.param(_spec(variants=["fine-tuned", "fine-tuned"]), "variants: must be unique", id="dup-variants"),
    pytest.param(_spec(variants=["finetuned"]), "variants[0]: Input should be 'fine-tuned'", id="bad-variant"),
    pytest.param(_spec(evaluation={"metrics": ["bleu"]}), "evaluation.metrics[0]: Input should be 'exact_match'",
                 id="bad-metric"),
    pytest.param(_spec(evaluation={"metrics": ["judge", "judge"]}), "evaluation.metrics: metrics must be unique",
                 id="dup-metric"),
    pytest.param(_spec(evaluation={"judge": {"base_url": "http://x/v1"}}), "evaluation.judge.model: required key",
                 id="judge-missing-model"),
    pytest.param(_spec(data={"sources": [{"uri": "x.jsonl"}], "split": {"train": 0, "validation": 1, "test": 1}}),
                 "data.split.train: Input should be greater than 0", id="split-zero"),
    pytest.param(_spec(data={"sources": [{"uri": "x.jsonl", "format": "sharegpt"}],
                             "split": {"train": 1, "validation": 1, "test": 1}}),
                 "data.sources[0].format: Input should be 'alpaca'", id="source-format"),
    pytest.param(_spec(data={"sources": [], "split": {"train": 1, "validation": 1, "test": 1}}),
                 "data.sources: List should have at least 1 item", id="no-sources"),
    pytest.param(_spec(seed="abc"), "seed: Input should be a valid integer", id="seed-type"),
    pytest.param(_spec(training={"warmup_ratio": 1}), "training.warmup_ratio: Input should be less than 1",
                 id="warmup"),
    pytest.param(_spec(training={"lr_scheduler": "step"}), "training.lr_scheduler: Input should be", id="sched"),
    pytest.param(_spec(resources={"finetune": {"gpu": {"count": 0}}}),
                 "resources.finetune.gpu.count: Input should be greater than 0", id="gpu-count"),
    pytest.param(_spec(peft={"target_modules": 5}), "peft.target_modules: Input should be a valid list",
                 id="target-modules-type"),
    pytest.param(_spec(cost={"gpu_hour_usd": -1}), "cost.gpu_hour_usd: Input should be greater than or equal to 0",
                 id="negative-cost"),
]


@pytest.mark.parametrize(("data", "expected"), INVALID)
def test_invalid_spec_names_the_key_path(data, expected):
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    messages = info.value.messages
    assert any(m.startswith(expected) for m in messages), messages


def test_all_errors_are_reported_at_once():
    with pytest.raises(SpecError) as info:
        parse_spec(_spec(trainng={}, training={"batch_size": "four"}, **_add_arm(peft={"r": -1})))
    messages = info.value.messages
    assert "trainng: unknown key (not part of the spec)" in messages
    assert any(m.startswith("training.batch_size: ") for m in messages)
    assert any(m.startswith("arms[1].peft.r: ") for m in messages)
    assert len(messages) == 3


@pytest.mark.parametrize("data", [None, [], "name: x", 3])
def test_non_mapping_root(data):
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert info.value.messages[0].startswith("(root): expected a mapping")


def test_spec_error_message_carries_source():
    with pytest.raises(SpecError) as info:
        parse_spec(_spec(trainng={}), source="my.yaml")
    assert info.value.source == "my.yaml"
    assert str(info.value) == "my.yaml: trainng: unknown key (not part of the spec)"


def test_spec_is_frozen():
    spec = parse_spec(_spec())
    with pytest.raises(ValidationError):
        spec.seed = 1


def test_arm_peft_merges_overrides():
    spec = parse_spec(_spec(
        peft={"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
        arms=[
            {"name": "plain", "model": "tiny://llama"},
            {"name": "custom", "model": "tiny://mixtral", "peft": {"r": 8, "target_modules": "all-linear"}},
        ],
    ))
    plain = spec.arm_peft("plain")
    assert plain == spec.peft
    custom = spec.arm_peft(spec.arm("custom"))
    assert custom.r == 8
    assert custom.target_modules == "all-linear"
    assert custom.alpha == 32  # not overridden: the shared value
    assert custom.dropout == 0.05
    assert isinstance(custom, PeftSpec)
    assert spec.peft.r == 16  # the shared settings are untouched


def test_unknown_arm_lists_the_arms():
    spec = parse_spec(_spec())
    with pytest.raises(SpecError) as info:
        spec.arm("nope")
    assert info.value.messages == ["arms: no arm named 'nope'; arms are tiny-llama"]


def test_json_round_trip():
    spec = load_spec(ROOT / "experiments" / "smoke.yaml")
    text = spec.to_json()
    assert json.loads(text) == spec.model_dump(mode="json")
    again = spec_from_json(text)
    assert again == spec
    assert again.to_json() == text


def test_spec_from_json_reports_errors_with_source():
    data = _spec(training={"batch_size": 0})
    with pytest.raises(SpecError) as info:
        spec_from_json(json.dumps(data))
    assert info.value.source == "spec_json"
    assert info.value.messages[0].startswith("training.batch_size: ")


def test_load_spec_resolves_relative_sources(tmp_path):
    (tmp_path / "d").mkdir()
    path = tmp_path / "e.yaml"
    data = _spec(data={"sources": [{"uri": "d/x.jsonl"}, {"uri": "s3://b/k.jsonl"}, {"uri": "/abs/y.jsonl"}],
                       "split": {"train": 4, "validation": 1, "test": 1}})
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    assert [s.uri for s in spec.data.sources] == [
        str((tmp_path / "d" / "x.jsonl").resolve()), "s3://b/k.jsonl", "/abs/y.jsonl",
    ]


def test_load_spec_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert info.value.messages[0].startswith("(root): not valid YAML")
    assert info.value.source == str(bad)
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "missing.yaml")
    assert "cannot read spec" in info.value.messages[0]


def test_plan_mentions_metrics_and_counts():
    spec = load_spec(ROOT / "experiments" / "smoke.yaml")
    plan = cli_plan(spec)
    assert "judge (not configured: no evaluation.judge)" in plan
    assert "plan: 2 fine-tuning runs, 6 generation runs of 100 test samples, 12 run x variant x metric cells" in plan
    assert "tiny-mixtral: tiny://mixtral | lora r=16 alpha=32 dropout=0" in plan


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_validate_prints_plan(capsys):
    path = ROOT / "experiments" / "smoke.yaml"
    spec = load_spec(path)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("experiment smoke")
    for arm in spec.arms:
        assert arm.name in out
        assert arm.model in out
    for variant in spec.variants:
        assert variant in out
    assert f"variants: {', '.join(spec.variants)}" in out


def test_cli_validate_invalid_spec_exits_2_one_line_per_error(tmp_path, capsys):
    data = _spec(training={"batch_size": "four"}, trainng={"epochs": 1})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2
    assert any(line.startswith(f"{path}: training.batch_size: ") for line in lines), lines
    assert f"{path}: trainng: unknown key (not part of the spec)" in lines


def test_cli_validate_wrong_type_single_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_spec(training={"batch_size": "four"})))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{path}: training.batch_size: Input should be a valid integer, unable to parse string as an "
                   f"integer"]


def test_cli_validate_missing_file_exits_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read spec" in capsys.readouterr().err


# --- resources -------------------------------------------------------------------------------------


def test_stage_resource_defaults():
    res = ResourcesSpec()
    finetune = res.finetune
    assert finetune.gpu is not None
    assert finetune.gpu.type == "nvidia.com/gpu"
    assert finetune.gpu.count == 1
    assert cluster.node_selector(finetune) == {"nvidia.com/gpu.product": finetune.gpu.product}
    tolerations = cluster.tolerations(finetune)
    assert tolerations == [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    assert res.generate.gpu is not None
    for cpu_stage in (res.prepare, res.evaluate, res.report):
        assert cpu_stage.gpu is None
        assert cluster.node_selector(cpu_stage) == {}
        assert cluster.tolerations(cpu_stage) == []


def test_stage_resource_overrides():
    stage = StageResources.model_validate({
        "gpu": {"product": "NVIDIA-H100-80GB-HBM3"},
        "node_selector": {"pool": "gpu"},
        "tolerations": [],
    })
    assert cluster.node_selector(stage) == {"pool": "gpu"}
    assert cluster.tolerations(stage) == []
    only_gpu = StageResources.model_validate({"gpu": {"product": "NVIDIA-H100-80GB-HBM3"}})
    assert cluster.node_selector(only_gpu) == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_smoke_spec_resources():
    spec = load_spec(ROOT / "experiments" / "smoke.yaml")
    assert spec.resources.finetune.memory == "32Gi"
    assert cluster.node_selector(spec.resources.finetune) == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert spec.resources.prepare.gpu is None

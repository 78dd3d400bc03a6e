"""No silent success: a malformed HTTP 200 from a generation endpoint, an empty test split, and a run whose
every score of a metric failed each end with a clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT
from judge_stub import serve

from bakeoff import endpoints
from bakeoff.cli import main
from bakeoff.errors import DataError, EvaluationError
from bakeoff.generate.backends import endpoint_answers
from bakeoff.spec import DataSource, DataSpec, Endpoint, SplitSpec


@pytest.mark.parametrize("mode", ["html-200", "no-choices"])
def test_a_generation_endpoints_malformed_200_is_retried_then_a_clear_error(mode, monkeypatch):
    monkeypatch.setattr(endpoints, "sleep", lambda s: None)
    with serve(mode) as server:
        endpoint = Endpoint(base_url=server.base_url, max_retries=2)
        with pytest.raises(EvaluationError, match="answered HTTP 200 without a reply"):
            endpoint_answers(endpoint, "generation.endpoint", "chat", "m", [[{"role": "user", "content": "x"}]], 4)
        assert server.requests == 3  # the first try and two retries


def test_a_generation_endpoints_malformed_200_then_a_reply_is_an_answer(monkeypatch):
    monkeypatch.setattr(endpoints, "sleep", lambda s: None)
    with serve("no-choices-then-ok", fail_first=1, reply="seventeen") as server:
        endpoint = Endpoint(base_url=server.base_url, max_retries=2)
        (answer,) = endpoint_answers(endpoint, "generation.endpoint", "chat", "m",
                                     [[{"role": "user", "content": "8 plus 9?"}]], 4)
    assert answer["answer"] == "seventeen"


def test_an_empty_test_split_is_an_error_not_an_empty_report(tmp_path):
    src = tmp_path / "d.jsonl"
    # every row's prompt is also a train row's (duplicates kept): after the leakage removal no test row is left
    rows = [{"instruction": "Same question?", "output": f"answer {i}"} for i in range(6)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataSpec(sources=[DataSource(uri=str(src))], split=SplitSpec(train=4, validation=1, test=1),
                    dedupe=False)
    from bakeoff.data.prepare import prepare_data

    with pytest.raises(DataError, match="the test split is empty: all 1 test rows also occur in train"):
        prepare_data(data, 0, tmp_path / "out")


def test_a_run_whose_judge_fails_every_score_exits_non_zero(tmp_path, cache_env, capsys):
    data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    data["data"]["sources"] = [{"uri": str(ROOT / "experiments" / "data" / "smoke.jsonl")}]
    data["data"]["split"] = {"train": 16, "validation": 4, "test": 4}
    data["training"].update(max_steps=2, eval_steps=2, logging_steps=1, batch_size=4)
    data["generation"] = {"max_new_tokens": 4}
    data["variants"] = ["fine-tuned"]
    with serve("always-500") as server:
        data["evaluation"] = {"metrics": ["exact_match", "judge"],
                              "judge": {"base_url": server.base_url, "model": "j", "max_retries": 0}}
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(data))
        from bakeoff.generate import generate
        from bakeoff.spec import load_spec

        spec = load_spec(path)
        assert main(["prepare", str(path), "--out", str(tmp_path / "data")]) == 0  # it answers: reachable
        generate(spec.arm("tiny-llama"), spec.generation, ["base-zero-shot"], tmp_path / "data", None,
                 tmp_path / "gen", template=spec.data.template, method="lora")
        code = main(["evaluate", str(path), "--arm", "tiny-llama", "--generations", str(tmp_path / "gen"),
                     "--out", str(tmp_path / "scores")])
    err = capsys.readouterr().err
    assert code == 1 and "every score of judge (4 of 4 failed" in err and "Traceback" not in err
    assert (tmp_path / "scores" / "samples.jsonl").is_file()  # what was counted is written first

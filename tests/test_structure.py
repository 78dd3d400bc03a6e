"""The contracts the library's structure promises: one typed spec with every field documented and every
PEFT conflict found by ``bakeoff validate``; one endpoint model with one missing-key policy and a Secret
route for every key; one place that runs a stage (CLI and components alike, preflight included); one
worker entry for the processes the library starts itself."""

from __future__ import annotations

import inspect
import json

import pydantic
import pytest
import yaml
from conftest import ROOT
from judge_stub import serve

from bakeoff import cluster, endpoints, stages
from bakeoff import spec as spec_module
from bakeoff.cli import main
from bakeoff.errors import EvaluationError, SpecError
from bakeoff.spec import Endpoint, ModelEndpoint, parse_spec


def smoke_data() -> dict:
    return yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text()) | {
        "data": {"sources": [{"uri": str(ROOT / "experiments" / "data" / "smoke.jsonl")}],
                 "split": {"train": 40, "validation": 5, "test": 5}}}


def spec_models() -> list[type[pydantic.BaseModel]]:
    found: dict[str, type] = {}

    def walk(model: type[pydantic.BaseModel]) -> None:
        if model.__name__ in found:
            return
        found[model.__name__] = model
        for field in model.model_fields.values():
            for arg in _types(field.annotation):
                walk(arg)

    for _, obj in inspect.getmembers(spec_module, inspect.isclass):
        if issubclass(obj, pydantic.BaseModel) and obj.__module__.startswith("bakeoff.spec"):
            walk(obj)
    return list(found.values())


def _types(annotation) -> list[type]:
    import typing

    if inspect.isclass(annotation) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return [t for arg in typing.get_args(annotation) for t in _types(arg)]


# --- the spec -----------------------------------------------------------------------------------------------


def test_every_spec_field_and_section_is_documented():
    models = spec_models()
    assert len(models) > 25  # every section, found by walking the annotations
    undocumented = [f"{m.__name__}.{name}" for m in models for name, f in m.model_fields.items()
                    if not (f.description or "").strip()]
    assert undocumented == []
    assert [m.__name__ for m in models if not (m.__doc__ or "").strip()] == []


@pytest.mark.parametrize(("arm_peft", "shared", "line"), [
    ({"method": "qlora", "loftq": True}, {}, "arms[1].peft.loftq: LoftQ initialises LoRA from a full-precision base"),
    ({"target_experts": True}, {"dropout": 0.1},
     "arms[1].peft.dropout: LoRA on fused experts (target_experts) needs dropout 0 in peft (it is 0.1); set "
     "dropout: 0 or target_experts: false (dropout comes from the shared peft)"),
    ({"method": "ia3", "use_dora": True}, {}, "arms[1].peft.use_dora: only for method lora or qlora"),
    ({"method": "full"}, {"target_experts": True, "dropout": 0.0}, "arms[1].peft.target_experts: only for method"),
])
def test_peft_conflicts_are_spec_errors_with_the_arm_key_path(tmp_path, capsys, arm_peft, shared, line):
    data = smoke_data()
    data["peft"] = {**data["peft"], **shared}
    data["arms"][1]["peft"] = arm_peft
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert any(m.startswith(line) for m in info.value.messages), info.value.messages
    assert not any(m.startswith("arms[0]") for m in info.value.messages)  # the other arm is fine
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2  # found by bakeoff validate, not on the GPU
    assert line in capsys.readouterr().err


def test_the_arms_peft_is_the_shared_one_with_its_overrides_validated_together():
    data = smoke_data()
    data["arms"][1]["peft"] = {"r": 4, "dropout": 0.0, "target_experts": True}
    spec = parse_spec(data)
    merged = spec.arm_peft("tiny-mixtral")
    assert (merged.r, merged.alpha, merged.target_experts) == (4, spec.peft.alpha, True)
    assert spec.arm_method("tiny-mixtral") == "lora"


# --- one endpoint model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://localhost/v1",
                                 "http://judge.bakeoff.svc.cluster.local:8000/v1", "http://vllm.ns.svc/v1"])
def test_a_local_endpoint_needs_no_key(url, monkeypatch):
    monkeypatch.delenv("SOME_KEY", raising=False)
    assert endpoints.api_key(Endpoint(base_url=url, api_key_env="SOME_KEY"), "evaluation.judge") == "EMPTY"


def test_a_remote_endpoint_without_its_key_names_the_variable_and_the_secret_route(monkeypatch):
    monkeypatch.delenv("SOME_KEY", raising=False)
    endpoint = Endpoint(base_url="https://api.example.com/v1", api_key_env="SOME_KEY")
    for where in ("evaluation.judge", "evaluation.ragas", "generation.endpoint", "arms[2].hosted"):
        with pytest.raises(EvaluationError) as info:
            endpoints.client(endpoint, where, error=EvaluationError)
        assert str(info.value) == (f"{where} at https://api.example.com/v1 needs an API key: set SOME_KEY "
                                   f"(on Kubernetes: {where}.api_key_secret)")
    monkeypatch.setenv("SOME_KEY", "sk-1")
    assert endpoints.api_key(endpoint, "x") == "sk-1"


def test_every_endpoint_key_has_a_secret_route_into_the_pods_that_call_it(tmp_path):
    data = smoke_data()
    ref = {"name": "keys"}
    data["evaluation"] = {"metrics": ["judge", "answer_correctness"],
                          "judge": {"base_url": "https://judge.example/v1", "model": "j", "api_key_env": "JUDGE_KEY",
                                    "api_key_secret": {**ref, "key": "judge"}},
                          "ragas": {"api_key_env": "RAGAS_KEY", "api_key_secret": {**ref, "key": "ragas"},
                                    "embeddings_base_url": "https://emb.example/v1", "embeddings_api_key_env": "EMB",
                                    "embeddings_api_key_secret": {**ref, "key": "emb"}}}
    data["generation"] = {"backend": "openai", "endpoint": {"base_url": "https://gen.example/v1", "api_key_env": "GEN",
                                                           "api_key_secret": {**ref, "key": "gen"}}}
    spec = parse_spec(data)
    judge, ragas, emb, gen = (("keys", k, e) for k, e in (("judge", "JUDGE_KEY"), ("ragas", "RAGAS_KEY"),
                                                          ("emb", "EMB"), ("gen", "GEN")))
    expected = {"prepare": {judge}, "finetune": set(), "generate": {judge, gen}, "evaluate": {judge, ragas, emb},
                "report": set()}
    assert {stage: set(cluster.secret_env(spec, stage)) for stage in expected} == expected
    from bakeoff_pipelines import compile_pipeline

    compile_pipeline(spec, tmp_path / "p.yaml")
    _, platform = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    compiled = {(s["secretName"], k["secretKey"], k["envVar"]) for s in k8s["exec-evaluate"]["secretAsEnv"]
                for k in s["keyToEnv"]}
    assert compiled == expected["evaluate"]


def test_two_secrets_for_one_variable_in_a_stage_are_a_spec_error():
    data = smoke_data()
    data["evaluation"] = {"metrics": ["judge"], "judge": {"base_url": "https://j.example/v1", "model": "j",
                                                         "api_key_secret": {"name": "a", "key": "k"}}}
    data["secrets"] = {"judge_api_key": {"name": "b", "key": "k"}}
    with pytest.raises(SpecError, match="secrets: OPENAI_API_KEY would come from 2 Secret keys in the prepare stage"):
        parse_spec(data)


def test_ragas_endpoints_fall_back_to_the_judges():
    data = smoke_data()
    data["evaluation"] = {"metrics": ["answer_similarity"],
                          "judge": {"base_url": "https://j.example/v1", "model": "j", "api_key_env": "JK"},
                          "ragas": {"embeddings_model": "e5", "concurrency": 2}}
    evaluation = parse_spec(data).evaluation
    llm, emb = evaluation.ragas_llm(), evaluation.ragas_embeddings()
    assert isinstance(llm, ModelEndpoint) and (llm.base_url, llm.model, llm.api_key_env, llm.concurrency) == \
        ("https://j.example/v1", "j", "JK", 2)
    assert (emb.base_url, emb.model, emb.api_key_env) == ("https://j.example/v1", "e5", "JK")


def test_call_stats_cost_and_the_reply_cache(tmp_path):
    stats = endpoints.CallStats("calls", "retries", groups=("failures_by_metric",))
    stats.add(calls=2)
    stats.add_to("failures_by_metric", "judge")
    assert stats.calls == 2 and stats["retries"] == 0
    assert stats.to_dict() == {"calls": 2, "retries": 0, "failures_by_metric": {"judge": 1}}
    with pytest.raises(KeyError):
        stats.add(unknown=1)  # a misspelt counter is a bug, not a silent new key
    assert endpoints.cost_usd(1_000_000, 500_000, 2.0, 8.0) == 6.0
    assert endpoints.cost_usd(10, 10, None, None) is None
    cache = endpoints.ReplyCache(tmp_path)
    key = cache.key("model", "v1", "question")
    assert key != cache.key("model", "v2", "question") and cache.get(key) is None
    cache.put(key, {"reply": "[[7]]"})
    assert cache.get(key) == {"reply": "[[7]]"} and list(tmp_path.rglob("*.tmp")) == []


def test_retrying_counts_transient_failures_and_gives_up_after_max_retries(monkeypatch):
    import httpx
    import openai

    monkeypatch.setattr(endpoints, "sleep", lambda s: None)
    stats = endpoints.CallStats("retries")
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise openai.APIConnectionError(request=request)
        return "ok"

    assert endpoints.retrying(2, stats)(flaky) == "ok" and stats.retries == 2
    calls.clear()
    with pytest.raises(openai.APIConnectionError):
        endpoints.retrying(1, stats)(flaky)
    refused = openai.BadRequestError("no", response=httpx.Response(400, request=request), body=None)
    assert not endpoints.is_transient(refused)
    wrapped = RuntimeError("instructor gave up")
    wrapped.__cause__ = openai.InternalServerError("busy", response=httpx.Response(503, request=request), body=None)
    assert endpoints.is_transient(wrapped)  # found inside the chain (instructor wraps what it retried)


# --- one place that runs a stage ------------------------------------------------------------------------------


def test_the_cli_prepare_runs_the_preflight_like_the_component(tmp_path, monkeypatch, capsys):
    data = smoke_data()
    data["evaluation"] = {"metrics": ["judge"], "judge": {"base_url": "https://judge.example/v1", "model": "j",
                                                         "api_key_env": "MISSING_JUDGE_KEY"}}
    monkeypatch.delenv("MISSING_JUDGE_KEY", raising=False)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["prepare", str(path), "--out", str(tmp_path / "data")]) == 1
    assert "evaluation.judge at https://judge.example/v1 needs an API key: set MISSING_JUDGE_KEY" in \
        capsys.readouterr().err
    assert not (tmp_path / "data" / "train.jsonl").exists()  # nothing was prepared for a judge that cannot run


def test_components_and_cli_call_the_same_stage_functions():
    import bakeoff_components.stages as components

    from bakeoff import cli

    calls = {name: set() for name in ("run_prepare", "run_finetune", "run_generate", "run_evaluate", "run_report")}
    for source, who in ((inspect.getsource(components), "components"), (inspect.getsource(cli), "cli")):
        for name in calls:
            if f"{name}(" in source:
                calls[name].add(who)
    assert all(who == {"components", "cli"} or name == "run_report" for name, who in calls.items()), calls
    assert "preflight" not in inspect.getsource(components)  # it lives in bakeoff.stages, once
    assert {"preflight(spec.evaluation)"} <= {line.strip().split("  #")[0] for line in
                                              inspect.getsource(stages).splitlines()}


def test_a_judge_that_answers_passes_the_preflight(monkeypatch):
    with serve() as server:
        data = smoke_data()
        data["evaluation"] = {"metrics": ["judge"], "judge": {"base_url": server.base_url, "model": "j"}}
        stages.preflight(parse_spec(data).evaluation)


# --- one worker entry -----------------------------------------------------------------------------------------


def test_the_worker_reports_user_errors_without_a_traceback(tmp_path, capsys):
    from bakeoff.train import worker

    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**smoke_data(), "seed": "x"}))
    assert worker.main(["--spec", str(bad), "--arm", "tiny-llama", "--data", str(tmp_path), "--out",
                        str(tmp_path / "o")]) == 2
    assert "seed:" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps(smoke_data()))
    assert worker.main(["--spec", str(good), "--arm", "nope", "--data", str(tmp_path), "--out",
                        str(tmp_path / "o")]) == 2
    assert "no arm named 'nope'" in capsys.readouterr().err
    assert worker.main(["--spec", str(good), "--arm", "tiny-llama", "--data", str(tmp_path / "none"), "--out",
                        str(tmp_path / "o")]) == 1
    assert "train.jsonl: missing" in capsys.readouterr().err


def test_a_torchrun_rank_is_pointed_at_the_worker(tmp_path, monkeypatch):
    from bakeoff.errors import TrainingError
    from bakeoff.train.launch import finetune_arm

    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(TrainingError, match="-m bakeoff.train.worker"):
        finetune_arm(parse_spec(smoke_data()), "tiny-llama", tmp_path, tmp_path / "out")


def test_every_package_is_installed_by_a_non_editable_install():
    """The images install the wheel, which holds only the packages pyproject.toml lists."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    src = ROOT / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in (src / "bakeoff").rglob("__init__.py")}
    assert found - listed == set()

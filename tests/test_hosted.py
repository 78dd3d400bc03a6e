"""A hosted arm (kind openai) against a stand-in fine-tuning API on loopback: the job, its loss
history and cost, generation and scoring, failures with the API's message, the cost limit, and a
rerun that attaches to the job instead of paying for a second one."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT
from judge_stub import serve as serve_judge
from openai_stub import serve

from bakeoff import cluster
from bakeoff.artifacts import read_generations, read_split
from bakeoff.cli import plan
from bakeoff.data.prepare import prepare_data
from bakeoff.errors import SpecError, TrainingError
from bakeoff.evaluate import evaluate
from bakeoff.generate import generate
from bakeoff.report import report
from bakeoff.spec import load_spec, parse_spec
from bakeoff.templates import chat_messages
from bakeoff.train.hosted import (
    auto_epochs,
    chat_example,
    estimate_cost,
    parse_result_csv,
    state_location,
)
from bakeoff.train.launch import finetune_arm

MODEL = "gpt-4o-mini-2024-07-18"
KEY_ENV = "FAKE_OPENAI_KEY"


def hosted_spec(base_url: str, arms: list[dict] | None = None, **hosted):
    """smoke-sql (text-to-SQL on the shipped SQLite fixture, 300/50/50 rows) with one hosted arm."""
    data = load_spec(ROOT / "experiments" / "smoke-sql.yaml").model_dump(mode="json")
    settings = {"base_url": base_url, "api_key_env": KEY_ENV, "usd_per_1m_training_tokens": 3.0, "epochs": 2,
                "batch_size": 8, "suffix": "sql", "poll_s": 0.01, "poll_max_s": 0.02, **hosted}
    data["arms"] = (arms or []) + [{"name": "gpt-4o-mini", "kind": "openai", "model": MODEL, "hosted": settings}]
    data["evaluation"]["metrics"] = ["exact_match", "sql_execution"]
    data["variants"] = ["fine-tuned", "base-zero-shot", "base-few-shot"]
    return parse_spec(data)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    spec = hosted_spec("http://unused/v1")
    out = tmp_path_factory.mktemp("hosted-data")
    prepare_data(spec.data, spec.seed, out)
    return out


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    monkeypatch.setenv("BAKEOFF_CACHE", str(tmp_path / "cache"))
    return tmp_path


def no_sleep(_seconds: float) -> None:
    pass


def run(spec, prepared, out):
    from bakeoff.train.hosted import finetune_hosted

    return finetune_hosted(spec, "gpt-4o-mini", prepared, out, sleep=no_sleep)


def test_a_hosted_job_trains_generates_is_scored_and_reported(prepared, env):
    with serve() as api, serve_judge("grade") as judge:
        spec = hosted_spec(api.base_url)
        result = run(spec, prepared, env / "model")

        # one job on the base model with the spec's hyperparameters, seed and suffix; both splits uploaded
        assert api.creates == 1
        assert api.idempotency_keys[0].startswith("bakeoff-")  # one key per job: a retried create is the same
        job = next(iter(api.jobs.values()))
        assert job["model"] == MODEL and job["seed"] == spec.seed and job["user_provided_suffix"] == "sql"
        assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2
        uploaded = [json.loads(line) for line in api.contents[job["training_file"]].decode().splitlines()]
        assert len(uploaded) == 300 and api.files[job["validation_file"]]["purpose"] == "fine-tune"
        assert [m["role"] for m in uploaded[0]["messages"]] == ["user", "assistant"]
        assert uploaded[0]["messages"][0]["content"].startswith("You translate questions about a database into SQL")

        # training.json in the format every arm writes: loss history, tokens, cost from the price, wall time
        record = json.loads((env / "model" / "training.json").read_text())
        steps = 2 * 38  # ceil(300 / 8) = 38 steps per epoch
        assert result.steps == record["steps"] == steps and record["epochs"] == 2
        assert [p["step"] for p in record["loss_history"]["train"]] == list(range(1, steps + 1))
        assert [p["step"] for p in record["loss_history"]["validation"]] == [38, 76]  # full validation per epoch
        assert record["loss_history"]["validation_batch"][0]["step"] == 5
        assert record["loss_history"]["train"][-1]["epoch"] == 2.0
        assert record["best_validation_loss"] == record["loss_history"]["validation"][-1]["loss"]
        assert record["train_tokens"] == job["trained_tokens"] > 0
        assert record["cost_usd"] == pytest.approx(job["trained_tokens"] * 3.0 / 1e6)
        assert record["seconds"] == 600 and record["device"] == "hosted" and record["method"] == "hosted"
        hosted = record["hosted"]
        assert hosted["job_id"] == job["id"] and hosted["fine_tuned_model"] == job["fine_tuned_model"]
        assert hosted["estimate"]["epochs"] == 2 and hosted["estimate"]["trained_tokens"] > 0
        assert [c["step"] for c in hosted["checkpoints"]] == [38, 76]
        events = [json.loads(line)["message"] for line in (env / "model" / "hosted" / "events.jsonl").open()]
        assert events[0].startswith("Created fine-tuning job") and events[-1] == "The job has successfully completed"
        assert set(result.metrics()) >= {"cost_usd", "train_tokens", "final_validation_loss"}

        # generation: the fine-tuned model for the fine-tuned variant, the base model for the others
        test = read_split(prepared, "test")
        api.answers = {chat_messages(ex, spec.data.template)[-1]["content"]: ex["reference"] for ex in test[:30]}
        arm = spec.arm("gpt-4o-mini")
        summary = generate(arm, spec.generation, spec.variants, prepared, env / "model", env / "gen",
                           template=spec.data.template, seed=spec.seed, method="hosted")
        assert summary["finetuned_model"] == job["fine_tuned_model"] and summary["backend"] == "openai"
        assert set(api.chat_models) == {job["fine_tuned_model"], MODEL}
        rows = read_generations(env / "gen")
        assert len(rows) == 3 * len(test)

        # scored like any arm, by the same judge
        data = spec.model_dump(mode="json")
        data["evaluation"].update(metrics=["exact_match", "sql_execution", "judge"],
                                  judge={"base_url": judge.base_url, "model": "grader", "api_key_env": KEY_ENV})
        spec = parse_spec(data)
        scored = evaluate("gpt-4o-mini", spec.evaluation, env / "gen", env / "eval", seed=spec.seed)
        tuned, base = scored["metrics"]["fine-tuned"], scored["metrics"]["base-zero-shot"]
        assert tuned["exact_match"]["mean"] == pytest.approx(30 / len(test))
        assert base["exact_match"]["mean"] == 0
        assert tuned["judge"]["mean"] > base["judge"]["mean"]

        results, paths = report(spec, prepared, [env / "model"], [env / "eval"], env / "report")
    assert results["training"]["gpt-4o-mini"]["hosted"]["fine_tuned_model"] == job["fine_tuned_model"]
    assert results["costs"]["gpt-4o-mini"]["training_usd"] == pytest.approx(record["cost_usd"])
    assert {r["method"] for r in results["rows"]} == {"hosted"}
    html, md = paths["html"].read_text(), paths["md"].read_text()
    for page in (html, md):
        assert "gpt-4o-mini (hosted: openai)" in page and f"${record['cost_usd']:,.2f}" in page
        assert f"fine-tuning job {job['id']}, model {job['fine_tuned_model']}" in page
    assert "<svg" in html


def test_a_failed_job_ends_with_the_apis_message(prepared, env):
    with serve(fail_job="Training file contains 3 examples without an assistant message") as api:
        with pytest.raises(TrainingError) as info:
            run(hosted_spec(api.base_url), prepared, env / "model")
    message = str(info.value)
    assert "failed: Training file contains 3 examples without an assistant message (invalid_training_file)" in message
    assert next(iter(api.jobs)) in message
    assert not (env / "model" / "training.json").exists()


def test_a_rejected_file_and_a_quota_error_end_with_the_apis_message(prepared, env):
    with serve(reject_file="line 12: messages must be a list") as api:
        with pytest.raises(TrainingError, match="rejected .*train.jsonl .*line 12: messages must be a list"):
            run(hosted_spec(api.base_url), prepared, env / "a")
        assert api.creates == 0
    with serve(create_status=429) as api:
        with pytest.raises(TrainingError, match=r"HTTP 429\): You exceeded your current quota.*insufficient_quota"):
            run(hosted_spec(api.base_url), prepared, env / "b")


def test_a_cost_above_the_limit_is_refused_before_any_upload(prepared, env, caplog):
    caplog.set_level("INFO", logger="bakeoff.train.hosted")
    with serve() as api:
        spec = hosted_spec(api.base_url, max_cost_usd=0.01, usd_per_1m_training_tokens=100.0)
        with pytest.raises(TrainingError, match=r"estimated cost \$[\d.]+ .* above arms\[0\]\.hosted\.max_cost_usd"):
            run(spec, prepared, env / "model")
        assert not [r for r in api.requests if r[0] == "POST"]  # nothing uploaded, no job
        assert "trained tokens" in caplog.text and "limit $0.01" in caplog.text
        raised = hosted_spec(api.base_url, max_cost_usd=100.0, usd_per_1m_training_tokens=100.0)
        assert run(raised, prepared, env / "model").cost_usd > 0.01


def test_a_rerun_attaches_to_the_job_instead_of_creating_another(prepared, env):
    class Killed(Exception):
        pass

    def killed_while_waiting(_seconds):
        raise Killed  # the pod dies after the job was created, while following it

    from bakeoff.train.hosted import finetune_hosted

    with serve() as api:
        spec = hosted_spec(api.base_url)
        with pytest.raises(Killed):
            finetune_hosted(spec, "gpt-4o-mini", prepared, env / "first", sleep=killed_while_waiting)
        assert api.creates == 1 and next(iter(api.jobs.values()))["status"] == "validating_files"
        state = [p for p in (env / "cache" / "hosted").rglob("hosted-job-*.json")]
        assert len(state) == 1 and json.loads(state[0].read_text())["job_id"] == next(iter(api.jobs))

        result = finetune_arm(spec, "gpt-4o-mini", prepared, env / "second")  # through the stage's entry
        assert api.creates == 1 and result.train_tokens > 0
        uploads = [r for r in api.requests if r == ("POST", "/v1/files")]
        assert len(uploads) == 2  # the rerun did not upload again either

        # the state file gone (a fresh pod, no cache volume): the job is found by its metadata key
        state[0].unlink()
        again = run(spec, prepared, env / "third")
        assert api.creates == 1 and again.train_tokens == result.train_tokens

        # a different spec (another epoch count) is another job
        run(hosted_spec(api.base_url, epochs=3), prepared, env / "fourth")
        assert api.creates == 2


def test_the_job_state_lives_under_the_checkpoint_uri_when_set(prepared, env):
    with serve() as api:
        data = hosted_spec(api.base_url).model_dump(mode="json")
        data["training"]["checkpoint_uri"] = str(env / "ckpt")
        spec = parse_spec(data)
        run(spec, prepared, env / "model")
        location = state_location(spec, spec.arm("gpt-4o-mini"), "KEY")
        assert location == f"{env}/ckpt/smoke-sql/gpt-4o-mini/hosted-job-KEY.json"
        assert len(list((env / "ckpt" / "smoke-sql" / "gpt-4o-mini").glob("hosted-job-*.json"))) == 1


def test_status_checks_that_fail_for_a_while_are_retried(prepared, env):
    with serve(poll_errors=3) as api:
        spec = hosted_spec(api.base_url, max_retries=0)
        assert run(spec, prepared, env / "model").train_tokens > 0
    assert api.creates == 1


def test_a_missing_api_key_says_which_variable(prepared, env, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(TrainingError, match=f"arms\\[0\\].hosted at .* needs an API key: set {KEY_ENV}"):
        finetune_arm(hosted_spec("https://api.example.invalid/v1"), "gpt-4o-mini", prepared, env / "model")


def test_generate_without_the_fine_tuned_model_id_is_an_error(prepared, env):
    from bakeoff.errors import ModelError

    spec = hosted_spec("http://127.0.0.1:9/v1")
    (env / "model").mkdir()
    with pytest.raises(ModelError, match="no fine-tuned model id"):
        generate(spec.arm("gpt-4o-mini"), spec.generation, ["fine-tuned"], prepared, env / "model", env / "gen",
                 template=spec.data.template, method="hosted")


# --- the pieces -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "epochs"), [(10, 10), (20, 5), (34, 3), (300, 3), (8333, 3), (8334, 2), (30000, 1),
                                           (1, 25)])
def test_auto_epochs_follow_openais_default(n, epochs):
    assert auto_epochs(n) == epochs


def test_chat_examples_and_the_estimate():
    example = {"prompt": "[INST] Say hi [/INST]\n\n", "reference": " hi "}  # as prepared: no BOS text
    line = chat_example(example, "llama2-inst", system_prompt="Be brief.")
    assert line == {"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "[INST] Say hi [/INST]"},
                                 {"role": "assistant", "content": "hi"}]}
    shots = chat_messages(example, "llama2-inst", shots=[{"prompt": "[INST] a [/INST]", "reference": "b"}])
    assert [m["role"] for m in shots] == ["user", "assistant", "user"]
    spec = hosted_spec("http://x/v1", epochs=4, usd_per_1m_training_tokens=10.0).arm("gpt-4o-mini").hosted
    # 3 per example; per message 4 + ceil(chars / 3): 9/3=3, 21/3=7, 2/3->1
    estimate = estimate_cost([line], spec)
    assert estimate["tokens_per_epoch"] == 3 + (4 + 3) + (4 + 7) + (4 + 1)
    assert estimate["trained_tokens"] == 4 * estimate["tokens_per_epoch"]
    assert estimate["cost_usd"] == pytest.approx(estimate["trained_tokens"] * 10 / 1e6)


def test_the_result_file_is_read_plain_or_base64():
    import base64

    text = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,2.5,0.4,,\n2,2.0,0.5,2.2,0.45\n"
    for content in (text, base64.b64encode(text.encode()).decode()):
        assert parse_result_csv(content) == [
            {"step": 1, "train_loss": 2.5, "train_accuracy": 0.4},
            {"step": 2, "train_loss": 2.0, "train_accuracy": 0.5, "valid_loss": 2.2, "valid_mean_token_accuracy": 0.45}]


# --- the spec ---------------------------------------------------------------------------------------------


def _spec_with(arm: dict, **top):
    data = {"name": "x", "data": {"sources": [{"uri": "d.jsonl"}], "split": {"train": 4, "validation": 1, "test": 1}},
            "arms": [{"name": "local", "model": "tiny://llama"}, {"name": "gpt", **arm}], **top}
    return data


HOSTED = {"kind": "openai", "model": MODEL, "hosted": {"usd_per_1m_training_tokens": 3}}


@pytest.mark.parametrize(("arm", "message"), [
    pytest.param({"kind": "openai", "model": MODEL}, "arms[1].hosted: required for kind openai", id="no-hosted"),
    pytest.param({**HOSTED, "peft": {"r": 8}}, "arms[1].peft: a hosted arm has no PEFT settings (the provider "
                 "trains it); remove r", id="peft"),
    pytest.param({**HOSTED, "nodes": 2}, "arms[1].nodes: a hosted arm trains on the provider's machines", id="nodes"),
    pytest.param({**HOSTED, "model": "hf://openai/gpt"}, "arms[1].model: a hosted arm's model is the provider's",
                 id="uri"),
    pytest.param({"model": "tiny://llama", "hosted": {"usd_per_1m_training_tokens": 3}},
                 "arms[1].hosted: only for kind openai", id="hosted-on-local"),
    pytest.param({**HOSTED, "kind": "anthropic"}, "arms[1].kind: Input should be 'local' or 'openai'", id="kind"),
    pytest.param({**HOSTED, "hosted": {}}, "arms[1].hosted.usd_per_1m_training_tokens: required key is missing",
                 id="price"),
    pytest.param({**HOSTED, "hosted": {"usd_per_1m_training_tokens": 3, "epochs": 0}},
                 "arms[1].hosted.epochs: must be a positive integer or 'auto'; got 0", id="epochs"),
    pytest.param({**HOSTED, "hosted": {"usd_per_1m_training_tokens": 3, "batch_size": "big"}},
                 "arms[1].hosted.batch_size: must be a positive integer or 'auto'; got 'big'", id="batch"),
    pytest.param({**HOSTED, "hosted": {"usd_per_1m_training_tokens": 3, "learning_rate_multiplier": -1}},
                 "arms[1].hosted.learning_rate_multiplier: must be a positive number or 'auto'; got -1", id="lr"),
    pytest.param({**HOSTED, "hosted": {"usd_per_1m_training_tokens": 3, "max_cost": 5}},
                 "arms[1].hosted.max_cost: unknown key (not part of the spec)", id="unknown-key"),
])
def test_hosted_arm_errors_name_the_key(arm, message):
    with pytest.raises(SpecError) as info:
        parse_spec(_spec_with(arm))
    assert any(m.startswith(message) for m in info.value.messages), info.value.messages


def test_hosted_defaults_and_plan():
    spec = parse_spec(_spec_with({**HOSTED, "hosted": {"usd_per_1m_training_tokens": 3, "epochs": 3,
                                                        "learning_rate_multiplier": 1.5}}))
    arm = spec.arm("gpt")
    assert arm.is_hosted and not spec.arm("local").is_hosted and spec.arm("local").kind == "local"
    assert arm.hosted.batch_size == "auto" and arm.hosted.max_cost_usd == 20 and arm.hosted.api_key_env == \
        "OPENAI_API_KEY"
    assert "gpt: gpt-4o-mini-2024-07-18 | hosted fine-tuning (openai at https://api.openai.com/v1), epochs 3" in \
        plan(spec)
    assert parse_spec(json.loads(spec.to_json())) == spec


def test_the_hosted_key_secret_reaches_finetune_and_generate():
    secret = {"name": "openai", "key": "api-key"}
    spec = parse_spec(_spec_with({**HOSTED, "hosted": {"usd_per_1m_training_tokens": 3, "api_key_secret": secret}},
                                 secrets={"judge_api_key": {"name": "judge", "key": "k"}},
                                 evaluation={"judge": {"base_url": "http://j/v1", "model": "m",
                                                       "api_key_env": "JUDGE_KEY"}}))
    assert ("openai", "api-key", "OPENAI_API_KEY") in cluster.secret_env(spec, "finetune")
    assert ("openai", "api-key", "OPENAI_API_KEY") in cluster.secret_env(spec, "generate")
    assert ("judge", "k", "JUDGE_KEY") in cluster.secret_env(spec, "generate")
    elsewhere = cluster.secret_env(spec, "evaluate") + cluster.secret_env(spec, "prepare")
    assert all(env != "OPENAI_API_KEY" for _, _, env in elsewhere)
    # the judge's Secret and the hosted arm's on the same variable in one pod: an error, not a silent pick
    with pytest.raises(SpecError, match="secrets: OPENAI_API_KEY would come from 2 Secret keys in the generate"):
        parse_spec(_spec_with({**HOSTED, "hosted": {"usd_per_1m_training_tokens": 3, "api_key_secret": secret}},
                              secrets={"judge_api_key": {"name": "judge", "key": "k"}},
                              evaluation={"judge": {"base_url": "http://j/v1", "model": "m"}}))


# --- through the pipeline ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_local_pipeline_runs_a_hosted_arm_beside_a_local_one(env):
    """KFP's local runner: a tiny local arm and the hosted arm, one report with both and the hosted cost."""
    from bakeoff_pipelines import run_local

    with serve() as api:
        data = hosted_spec(api.base_url, arms=[{"name": "tiny-llama", "model": "tiny://llama"}]).model_dump(
            mode="json")
        data["data"]["split"] = {"train": 24, "validation": 8, "test": 8}
        data["training"].update(max_steps=2, logging_steps=1, eval_steps=2, batch_size=4)
        data["generation"].update(max_new_tokens=4, batch_size=8)
        data["variants"] = ["fine-tuned", "base-zero-shot"]
        spec = parse_spec(data)
        paths = run_local(spec, env / "run")
    results = json.loads(paths["results"].read_text())
    assert api.creates == 1
    assert set(results["training"]) == {"tiny-llama", "gpt-4o-mini"}
    assert {(r["arm"], r["method"]) for r in results["rows"]} == {("tiny-llama", "lora"), ("gpt-4o-mini", "hosted")}
    cost = results["costs"]["gpt-4o-mini"]["training_usd"]
    assert cost == pytest.approx(results["training"]["gpt-4o-mini"]["train_tokens"] * 3.0 / 1e6) and cost > 0
    html = paths["html"].read_text()
    assert "tiny-llama" in html and "gpt-4o-mini (hosted: openai)" in html and f"${cost:,.2f}" in html
    assert [d["setting"] for d in results["arm_differences"]][:2] == ["kind", "model"]

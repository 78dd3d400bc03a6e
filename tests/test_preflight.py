"""The judge endpoint is checked before any paid work: a missing key or a dead endpoint fails at once."""

from __future__ import annotations

import pytest
from judge_stub import serve
from s3_fixture import free_port

from bakeoff.endpoints import check_reachable
from bakeoff.errors import EvaluationError
from bakeoff.evaluate.judge import Judge
from bakeoff.spec import EvaluationSpec, JudgeSpec
from bakeoff.stages import preflight


def test_a_live_local_endpoint_passes_without_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with serve() as server:
        check_reachable(JudgeSpec(base_url=server.base_url, model="j", max_retries=0), "evaluation.judge",
                        error=EvaluationError)


def test_a_remote_endpoint_without_its_key_fails_before_calling(monkeypatch):
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    with pytest.raises(EvaluationError, match="needs an API key: set JUDGE_KEY"):
        check_reachable(JudgeSpec(base_url="https://judge.example.com/v1", model="j", api_key_env="JUDGE_KEY"),
                        "evaluation.judge", error=EvaluationError)


def test_a_dead_endpoint_fails_after_bounded_retries():
    spec = JudgeSpec(base_url=f"http://127.0.0.1:{free_port()}/v1", model="j", max_retries=1, timeout_s=2)
    with pytest.raises(EvaluationError, match="unreachable"):
        preflight(EvaluationSpec(metrics=["exact_match", "judge"], judge=spec))
    preflight(EvaluationSpec(metrics=["exact_match"], judge=spec))  # a judge not asked for is not checked


def test_judge_cost_from_the_specs_prices(tmp_path):
    with serve() as server:
        spec = JudgeSpec(base_url=server.base_url, model="j", usd_per_1m_input_tokens=2.5,
                         usd_per_1m_output_tokens=10.0)
        judge = Judge(spec, cache_dir=tmp_path)
        judge.judge_many([("q", "r", f"a{i}") for i in range(4)])
        summary = judge.summary()
    assert summary["calls"] == 4
    expected = (summary["prompt_tokens"] * 2.5 + summary["completion_tokens"] * 10.0) / 1e6
    assert summary["cost_usd"] == pytest.approx(expected) and summary["cost_usd"] > 0
    assert Judge(JudgeSpec(base_url=server.base_url, model="j"), cache_dir=tmp_path).summary()["cost_usd"] is None


def test_an_endpoint_that_dies_mid_run_fails_and_keeps_what_was_judged(tmp_path):
    with serve() as server:
        spec = JudgeSpec(base_url=server.base_url, model="j", max_retries=1, timeout_s=2, concurrency=1)
        port = server.httpd.server_address[1]
        items = [("q", "r", f"a{i}") for i in range(6)]
        Judge(spec, cache_dir=tmp_path).judge_many(items[:3])  # three judged, then the server goes away
    with pytest.raises(EvaluationError, match="stopped answering mid-run: 3 of 6 .* the 3 made are cached"):
        Judge(spec, cache_dir=tmp_path).judge_many(items)
    with serve(port=port) as again:  # back at the same URL (the base URL is part of a verdict's cache key)
        judge = Judge(spec, cache_dir=tmp_path)
        judge.judge_many(items)
        assert again.requests == 3 and judge.stats.cached == 3  # the rerun pays only for the rest


def test_logprob_weighted_rating(tmp_path):
    with serve("logprobs", reply="Close to the reference. Rating: [[8]]") as server:
        spec = JudgeSpec(base_url=server.base_url, model="j", logprobs=True)
        judgment = Judge(spec, cache_dir=tmp_path).judge_many([("q", "r", "a")])[0]
        assert judgment.rating == 8.0
        assert judgment.weighted == pytest.approx(8 * 0.6 + 7 * 0.3 + 9 * 0.1)
        again = Judge(spec, cache_dir=tmp_path).judge_many([("q", "r", "a")])[0]
        assert again.cached and again.weighted == judgment.weighted  # the logprobs are cached too


@pytest.mark.parametrize(("alternatives", "expected"), [
    ({"8": 0.0}, 8.0),
    ({"3": -0.6931471805599453, "5": -0.6931471805599453}, 4.0),
    ({"7": -0.1, "seven": -2.0}, 7.0),
    ({"1": -0.2, "0": -1.0}, 1.0),  # 0 is no rating
    ({"ten": 0.0}, None),
    (None, None),
])
def test_weighted_rating_table(alternatives, expected):
    from bakeoff.evaluate.judge import weighted_rating

    assert weighted_rating(alternatives) == (pytest.approx(expected) if expected is not None else None)

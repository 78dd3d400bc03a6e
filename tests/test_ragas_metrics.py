"""RAGAS answer correctness and semantic similarity against a real loopback OpenAI-compatible server."""

from __future__ import annotations

import pytest
from judge_stub import EMBED_DIM, embed, serve
from s3_fixture import free_port

pytest.importorskip("ragas")

from bakeoff.errors import EvaluationError  # noqa: E402
from bakeoff.evaluate.ragas_metrics import RagasScorer  # noqa: E402
from bakeoff.spec import ModelEndpoint  # noqa: E402

Q = "What is the capital of France?"
REF = "Paris is the capital of France."
RIGHT = "Paris is the capital of France."
WRONG = "Berlin is a large city. It rains there often."


def scorer(base_url: str, tmp_path, embed_fn=None, llm_model="judge-llm", embeddings_model="bow-64",
           embeddings_base_url=None, **settings) -> RagasScorer:
    settings = {"max_retries": 0, "timeout_s": 10, **settings}
    llm = ModelEndpoint(base_url=base_url, model=llm_model, **settings)
    embeddings = llm.model_copy(update={"base_url": embeddings_base_url or base_url, "model": embeddings_model})
    return RagasScorer(llm, embeddings, embed_fn=embed_fn, cache_dir=tmp_path / "ragas")


def embedding_requests(server) -> int:
    return sum(1 for body in server.bodies if "input" in body)


def test_semantic_similarity_is_one_for_identical_texts_and_lower_otherwise(tmp_path):
    with serve("ragas") as server:
        s = scorer(server.base_url, tmp_path)
        scores = s.score_many([(Q, REF, RIGHT), (Q, REF, WRONG)], metrics=("answer_similarity",))
        assert embedding_requests(server) > 0 and server.requests == embedding_requests(server)
    assert scores[0]["answer_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert scores[1]["answer_similarity"] < 0.5
    assert s.stats.failures_by_metric == {} and s.stats.calls == 2
    assert s.version.startswith("0.4")


def test_answer_correctness_ranks_the_right_answer_above_the_wrong_one(tmp_path):
    with serve("ragas") as server:
        s = scorer(server.base_url, tmp_path, concurrency=3)
        scores, reasons = s.score_many_with_reasons([(Q, REF, RIGHT), (Q, REF, WRONG), (Q, REF, RIGHT.upper())])
        chats = [b for b in server.bodies if "messages" in b]
    right, wrong, shouting = (row["answer_correctness"] for row in scores)
    assert right == pytest.approx(1.0, abs=1e-6)  # every statement a TP, similarity 1
    assert wrong is not None and wrong < 0.3 < right
    assert shouting == pytest.approx(1.0, abs=1e-6)
    assert all(row["answer_similarity"] is not None for row in scores)
    assert reasons == [{}, {}, {}]
    # ragas's own prompts went out: statement generation and TP/FP/FN classification, JSON mode.
    prompts = [b["messages"][-1]["content"] for b in chats]
    assert any("Break down each sentence" in p for p in prompts)
    assert any("TP (true positive)" in p for p in prompts)
    assert all(b.get("response_format") == {"type": "json_object"} and b["model"] == "judge-llm" for b in chats)


def test_garbage_llm_replies_are_counted_failures_and_similarity_still_computes(tmp_path):
    with serve("garbage") as server:
        s = scorer(server.base_url, tmp_path)
        scores, reasons = s.score_many_with_reasons([(Q, REF, RIGHT), (Q, REF, WRONG)])
    assert [row["answer_correctness"] for row in scores] == [None, None]
    assert scores[0]["answer_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert scores[1]["answer_similarity"] is not None
    assert s.stats.failures_by_metric == {"answer_correctness": 2}
    assert all("answer_correctness" in r and "answer_similarity" not in r for r in reasons)
    assert "InstructorRetryException" in reasons[0]["answer_correctness"]
    assert "no idea" in reasons[0]["answer_correctness"]  # the unparseable reply is named
    # failures are not cached: a rerun tries them again
    with serve("ragas") as server:
        again = scorer(server.base_url, tmp_path).score_many([(Q, REF, RIGHT), (Q, REF, WRONG)])
    assert again[0]["answer_correctness"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_is_a_counted_failure_never_a_zero(tmp_path):
    with serve("ragas") as server:
        s = scorer(server.base_url, tmp_path)
        # "..." has no words: an all-zero vector, and a cosine of 0/0
        scores, reasons = s.score_many_with_reasons([(Q, REF, "..."), (Q, REF, RIGHT)],
                                                    metrics=("answer_similarity",))
    assert scores[0]["answer_similarity"] is None
    assert scores[1]["answer_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert s.stats.nan == 1 and s.stats.failures_by_metric == {"answer_similarity": 1}
    assert reasons[0] == {"answer_similarity": "metric returned NaN"}
    assert s.stats["nan"] == 1 and s.stats.to_dict()["failures_by_metric"] == {"answer_similarity": 1}


def test_unreachable_endpoint_raises_evaluation_error_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EvaluationError, match="127.0.0.1") as info:
        scorer(url, tmp_path).score_many([(Q, REF, RIGHT), (Q, REF, WRONG)])
    assert url in str(info.value) and "server is up" in str(info.value)
    # an unreachable embeddings endpoint is named as such
    with serve("ragas") as server:
        with pytest.raises(EvaluationError, match="embeddings_base_url") as info:
            scorer(server.base_url, tmp_path, embeddings_base_url=url).score_many(
                [(Q, REF, RIGHT)], metrics=("answer_similarity",))
    assert url in str(info.value)


def test_warm_cache_rerun_makes_no_requests(tmp_path):
    items = [(Q, REF, RIGHT), (Q, REF, WRONG)]
    with serve("ragas") as server:
        first = scorer(server.base_url, tmp_path).score_many(items)
        before = server.requests
        assert before > 0
        warm = scorer(server.base_url, tmp_path)
        second = warm.score_many(items)
        assert server.requests == before
    assert second == first
    assert warm.stats.calls == 0 and warm.stats.cached == 4
    # another LLM model is another cache entry
    with serve("ragas") as server:
        scorer(server.base_url, tmp_path, llm_model="other").score_many(items[:1], metrics=("answer_correctness",))
        assert server.requests > 0


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_custom_embed_fn_needs_no_embeddings_endpoint(tmp_path):
    calls = []

    def local_model(text: str) -> list[float]:
        calls.append(text)
        return embed(text)

    dead = f"http://127.0.0.1:{free_port()}/v1"
    s = scorer(dead, tmp_path, embed_fn=local_model)
    scores = s.score_many([(Q, REF, RIGHT), (Q, REF, WRONG)], metrics=("answer_similarity",))
    assert scores[0]["answer_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert 0 <= scores[1]["answer_similarity"] < 0.5 and calls
    with serve("ragas") as server:
        s = scorer(server.base_url, tmp_path, embed_fn=local_model, embeddings_base_url=dead)
        scores = s.score_many([(Q, REF, RIGHT), (Q, REF, WRONG)], metrics=("answer_correctness",))
        assert embedding_requests(server) == 0
    assert scores[0]["answer_correctness"] > scores[1]["answer_correctness"]
    zeros = scorer(dead, tmp_path / "z", embed_fn=lambda text: [0.0] * EMBED_DIM)
    assert zeros.score_many([(Q, REF, RIGHT)], metrics=("answer_similarity",)) == [{"answer_similarity": None}]
    assert zeros.stats.nan == 1


def test_unknown_metric_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown RAGAS metrics"):
        scorer("http://127.0.0.1:1/v1", tmp_path).score_many([(Q, REF, RIGHT)], metrics=("faithfulness",))


def test_an_empty_answer_scores_zero_without_a_call(tmp_path):
    with serve("ragas") as server:
        s = scorer(server.base_url, tmp_path)
        scores = s.score_many([(Q, REF, "   "), (Q, REF, "")])
        assert server.requests == 0  # RAGAS would score an empty answer's factuality 1.0 (about 0.75 overall)
    assert scores == [{"answer_correctness": 0.0, "answer_similarity": 0.0}] * 2
    assert s.stats.empty_answers == 2 and s.stats.failures_by_metric == {}


def test_a_malformed_200_is_a_counted_failure_never_a_traceback(tmp_path):
    with serve("html-200") as server:
        s = scorer(server.base_url, tmp_path, max_retries=1)
        scores, reasons = s.score_many_with_reasons([(Q, REF, RIGHT), (Q, REF, WRONG)],
                                                    metrics=("answer_correctness",))
    assert [row["answer_correctness"] for row in scores] == [None, None]
    assert all("MalformedReply" in r["answer_correctness"] and "without a reply" in r["answer_correctness"]
               for r in reasons)
    assert s.stats.retries == 2 and s.stats.failures_by_metric == {"answer_correctness": 2}

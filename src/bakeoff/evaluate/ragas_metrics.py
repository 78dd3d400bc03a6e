"""RAGAS answer correctness and semantic similarity, through ragas's own metrics (ragas 0.4.x).

The LLM is any OpenAI-compatible chat endpoint (ragas drives it through instructor's JSON mode);
the embeddings come from an OpenAI-compatible ``/embeddings`` endpoint or from a local callable
(``embed_fn``: text -> vector). Samples are scored with bounded concurrency. A metric that raises
or returns NaN for one sample is that sample's failure for that metric: the value is None, the
failure is counted and its reason kept; it is never a 0 and never dropped. A transient failure (429,
5xx, timeout, lost connection) of one sample's metric is retried ``max_retries`` times with backoff.
Every successful score is cached on disk (metric, ragas version, LLM model, embeddings model, question,
reference, answer), so a rerun makes no calls. An endpoint that cannot be reached at all fails the
whole evaluation with :class:`~bakeoff.errors.EvaluationError`. The clients, retries, counters, token
accounting and cache are ``bakeoff.endpoints``'s, shared with the judge.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from bakeoff import endpoints
from bakeoff.errors import EvaluationError
from bakeoff.spec import ModelEndpoint
from bakeoff.storage import cache_root

log = logging.getLogger(__name__)

# ragas posts usage analytics to the internet unless told not to; evaluation runs offline.
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")

METRICS = ("answer_correctness", "answer_similarity")
CACHE_VERSION = "ragas-metrics-v1"
STATS = ("calls", "cached", "nan", "retries", "empty_answers", "prompt_tokens", "completion_tokens")
# RAGAS 0.4.3 scores factuality 1.0 when it extracts no statements, so an empty answer would get about 0.75
# answer correctness: an empty or whitespace-only answer scores 0 on both metrics, without a call.
EMPTY_ANSWER_SCORE = 0.0
WHERE = "evaluation.ragas"

EmbedFn = Callable[[str], Sequence[float]]


def _ragas_version() -> str:
    import ragas

    return str(getattr(ragas, "__version__", "unknown"))


def _make_callable_embeddings(embed_fn: EmbedFn):
    """A ragas ``BaseRagasEmbedding`` over a local callable (for example a sentence-transformers model)."""
    from ragas.embeddings.base import BaseRagasEmbedding

    class CallableEmbeddings(BaseRagasEmbedding):
        def __init__(self, fn: EmbedFn):
            super().__init__()
            self.fn = fn

        def embed_text(self, text: str, **kwargs) -> list[float]:
            return [float(x) for x in self.fn(text)]

        async def aembed_text(self, text: str, **kwargs) -> list[float]:
            return await asyncio.to_thread(self.embed_text, text)

    return CallableEmbeddings(embed_fn)


def _make_openai_embeddings(async_client, sync_client, model: str):
    """ragas's OpenAI embeddings; the sync path (SemanticSimilarity calls ``embed_text``) uses a sync client.

    ragas's own sync path with an async client runs a second event loop in a new thread, which
    an httpx async connection pool bound to the first loop does not survive.
    """
    from ragas.embeddings.openai_provider import OpenAIEmbeddings

    class DualOpenAIEmbeddings(OpenAIEmbeddings):
        def embed_text(self, text: str, **kwargs) -> list[float]:
            return sync_client.embeddings.create(input=text, model=self.model, **kwargs).data[0].embedding

    return DualOpenAIEmbeddings(client=async_client, model=model)


def _describe(exc: BaseException) -> str:
    """One line: the exception's type and message (instructor's own ``str`` is a multi-line report)."""
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    attempts = getattr(exc, "n_attempts", None)
    tail = f" (after {attempts} attempts)" if isinstance(attempts, int) and attempts > 1 else ""
    return f"{type(exc).__name__}: {' '.join(text.split())}"[:480] + tail


class RagasScorer:
    """Scores (question, reference, answer) triples with RAGAS metrics: the LLM at ``llm`` (its concurrency,
    timeout and retries apply), the embeddings at ``embeddings``.

    ``embed_fn`` (text -> vector) replaces the embeddings endpoint with a local model; name that
    model in ``embeddings.model`` so the cache keeps its scores apart.
    """

    def __init__(self, llm: ModelEndpoint, embeddings: ModelEndpoint, embed_fn: EmbedFn | None = None,
                 cache_dir: str | Path | None = None):
        self.llm, self.embeddings = llm, embeddings
        self.embed_fn = embed_fn
        self.cache = endpoints.ReplyCache(cache_dir or cache_root() / "ragas")
        self.stats = endpoints.CallStats(*STATS, groups=("failures_by_metric",))
        self.version = _ragas_version()

    # ---- cache -------------------------------------------------------------------------------
    def cache_key(self, metric: str, question: str, reference: str, answer: str) -> str:
        return endpoints.ReplyCache.key(CACHE_VERSION, metric, self.version, self.llm.model, self.embeddings.model,
                                        question, reference, answer)

    def _read_cache(self, key: str) -> float | None:
        entry = self.cache.get(key)
        value = entry.get("value") if isinstance(entry, dict) else None
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    # ---- public API --------------------------------------------------------------------------
    def score_many(self, items: Sequence[tuple[str, str, str]],
                   metrics: Sequence[str] = METRICS) -> list[dict[str, float | None]]:
        """One dict per item, ``{metric: score or None}``; None is a counted failure."""
        return self.score_many_with_reasons(items, metrics)[0]

    def score_many_with_reasons(
        self, items: Sequence[tuple[str, str, str]], metrics: Sequence[str] = METRICS,
    ) -> tuple[list[dict[str, float | None]], list[dict[str, str]]]:
        """Scores as in :meth:`score_many`, plus per item ``{metric: why it failed}`` for each None."""
        metrics = tuple(dict.fromkeys(metrics))
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown RAGAS metrics {unknown}; choose from {list(METRICS)}")
        scores: list[dict[str, float | None]] = [{m: None for m in metrics} for _ in items]
        reasons: list[dict[str, str]] = [{} for _ in items]
        todo: list[tuple[int, str, str]] = []  # (item index, metric, cache key)
        for i, (question, reference, answer) in enumerate(items):
            if not answer.strip():
                scores[i] = dict.fromkeys(metrics, EMPTY_ANSWER_SCORE)
                self.stats.add(empty_answers=1)
                continue
            for metric in metrics:
                key = self.cache_key(metric, question, reference, answer)
                cached = self._read_cache(key)
                if cached is None:
                    todo.append((i, metric, key))
                else:
                    scores[i][metric] = cached
                    self.stats.add(cached=1)
        if todo:
            asyncio.run(self._run(items, todo, scores, reasons))
        return scores, reasons

    # ---- scoring -----------------------------------------------------------------------------
    def _metrics(self, needed: set[str], opened: list) -> dict:
        """The ragas metric objects, as ``(question, reference, answer) -> awaitable result``."""
        import httpx
        from ragas.metrics.collections import AnswerCorrectness, SemanticSimilarity

        on_response, on_async_response = endpoints.usage_hooks(self.stats)
        check, check_async = endpoints.malformed_hooks(WHERE)

        def client(endpoint: ModelEndpoint, asynchronous: bool):
            # httpx response hooks see every reply: the tokens ragas spends are counted (and priced), and a
            # 200 that is not the API's reply is a MalformedReply (retried, then this sample's failure);
            # retries are ours (per sample and metric, counted), so the client's own are off.
            http = (httpx.AsyncClient(event_hooks={"response": [check_async, on_async_response]},
                                      timeout=endpoint.timeout_s) if asynchronous else
                    httpx.Client(event_hooks={"response": [check, on_response]}, timeout=endpoint.timeout_s))
            c = endpoints.client(endpoint, WHERE, asynchronous=asynchronous, max_retries=0, http_client=http,
                                 error=EvaluationError)
            opened.append(c)
            return c

        if self.embed_fn is not None:
            embeddings = _make_callable_embeddings(self.embed_fn)
        else:
            embeddings = _make_openai_embeddings(client(self.embeddings, True), client(self.embeddings, False),
                                                 self.embeddings.model)
        scorers = {}
        if "answer_correctness" in needed:
            from ragas.llms import llm_factory

            llm = llm_factory(self.llm.model, client=client(self.llm, True))
            metric = AnswerCorrectness(llm=llm, embeddings=embeddings)
            scorers["answer_correctness"] = lambda q, r, a: metric.ascore(user_input=q, response=a, reference=r)
        if "answer_similarity" in needed:
            similarity = SemanticSimilarity(embeddings=embeddings)
            # ascore embeds synchronously; a worker thread keeps the event loop free meanwhile.
            scorers["answer_similarity"] = lambda q, r, a: asyncio.to_thread(similarity.score, reference=r, response=a)
        return scorers

    async def _run(self, items, todo, scores, reasons) -> None:
        opened: list = []
        try:
            scorers = self._metrics({metric for _, metric, _ in todo}, opened)
            semaphore = asyncio.Semaphore(self.llm.concurrency)

            async def one(i: int, metric: str, key: str) -> BaseException | None:
                async with semaphore:
                    self.stats.add(calls=1)
                    try:
                        async for attempt in endpoints.retrying(self.llm.max_retries, self.stats, asynchronous=True):
                            with attempt:
                                value = (await scorers[metric](*items[i])).value
                    except Exception as exc:  # noqa: BLE001 - any failure is this sample's failure
                        bad = endpoints.malformed(exc)
                        self._failed(reasons, i, metric, f"MalformedReply: {bad}" if bad else _describe(exc))
                        return exc
                self._store(scores, reasons, i, metric, key, value)
                return None

            # The first sample runs alone: an endpoint that cannot be reached fails everything at once.
            first = todo[0][0]
            for exc in await asyncio.gather(*(one(*t) for t in todo if t[0] == first)):
                if exc is not None:
                    self._raise_if_fatal(exc)
            await asyncio.gather(*(one(*t) for t in todo if t[0] != first))
        finally:
            for c in opened:
                try:
                    result = c.close()
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass

    def _store(self, scores, reasons, i: int, metric: str, key: str, value) -> None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            self._failed(reasons, i, metric, f"metric returned a non-number: {value!r}")
            return
        if math.isnan(value):
            self.stats.add(nan=1)
            self._failed(reasons, i, metric, "metric returned NaN")
            return
        scores[i][metric] = value
        self.cache.put(key, {"value": value})

    def _failed(self, reasons, i: int, metric: str, why: str) -> None:
        self.stats.add_to("failures_by_metric", metric)
        reasons[i][metric] = why
        log.warning("ragas %s failed for sample %d: %s", metric, i, why)

    def _raise_if_fatal(self, exc: BaseException) -> None:
        import openai

        err = endpoints.openai_error(exc)
        if err is None or endpoints.malformed(exc) is not None:  # a malformed reply is this sample's failure
            return
        url = str(getattr(getattr(err, "request", None), "url", "") or "")
        is_embed = "/embeddings" in url and self.embed_fn is None
        endpoint = self.embeddings if is_embed else self.llm
        where, model_key = ("embeddings_base_url", "embeddings_model") if is_embed else ("llm_base_url", "llm_model")
        if isinstance(err, (openai.APIConnectionError, openai.APITimeoutError)):
            raise EvaluationError(
                f"RAGAS endpoint {endpoint.base_url} did not answer after {endpoint.max_retries} retries ({err}); "
                f"check the RAGAS {where}, that the server is up, and network access") from exc
        if isinstance(err, openai.AuthenticationError):
            raise EvaluationError(f"RAGAS endpoint {endpoint.base_url} rejected the API key ({err}); set "
                                  f"{endpoint.api_key_env}") from exc
        if isinstance(err, openai.APIStatusError) and err.status_code < 500 and err.status_code != 429:
            raise EvaluationError(
                f"RAGAS endpoint {endpoint.base_url} refused the request ({err.status_code}: {err.message}); "
                f"check the RAGAS {model_key} ({endpoint.model!r}) and that the server serves it") from exc

"""RAGAS answer correctness and semantic similarity, through ragas's own metrics (ragas 0.4.x).

The LLM is any OpenAI-compatible chat endpoint (ragas drives it through instructor's JSON mode);
the embeddings come from an OpenAI-compatible ``/embeddings`` endpoint or from a local callable
(``embed_fn``: text -> vector). Samples are scored with bounded concurrency. A metric that raises
or returns NaN for one sample is that sample's failure for that metric: the value is None, the
failure is counted and its reason kept; it is never a 0 and never dropped. Every successful score
is cached on disk (metric, ragas version, LLM model, embeddings model, question, reference,
answer), so a rerun makes no calls. An endpoint that cannot be reached at all fails the whole
evaluation with :class:`~bakeoff.errors.EvaluationError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from bakeoff.errors import EvaluationError
from bakeoff.storage import cache_root

log = logging.getLogger(__name__)

# ragas posts usage analytics to the internet unless told not to; evaluation runs offline.
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")

METRICS = ("answer_correctness", "answer_similarity")
CACHE_VERSION = "ragas-metrics-v1"

EmbedFn = Callable[[str], Sequence[float]]


@dataclass
class RagasSettings:
    """Where the RAGAS LLM and embeddings live. ``None`` embeddings settings fall back to the LLM's."""

    llm_base_url: str
    llm_model: str
    llm_api_key_env: str = "OPENAI_API_KEY"
    embeddings_base_url: str | None = None
    embeddings_model: str = "text-embedding-3-small"
    embeddings_api_key_env: str | None = None
    concurrency: int = 4
    timeout_s: float = 60
    max_retries: int = 3

    @property
    def embeddings_url(self) -> str:
        return self.embeddings_base_url or self.llm_base_url

    @property
    def embeddings_key_env(self) -> str:
        return self.embeddings_api_key_env or self.llm_api_key_env


@dataclass
class RagasStats:
    """Counters for the report's evaluation health section (``calls`` = metric computations run)."""

    calls: int = 0
    cached: int = 0
    nan: int = 0
    prompt_tokens: int = 0  # as the endpoints report them (chat and embeddings)
    completion_tokens: int = 0
    failures_by_metric: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def fail(self, metric: str) -> None:
        with self._lock:
            self.failures_by_metric[metric] = self.failures_by_metric.get(metric, 0) + 1

    def to_dict(self) -> dict:
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), dict) else v)
                for f in fields(self) if not f.name.startswith("_")}

    def __getitem__(self, key: str):
        return self.to_dict()[key]


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


def _chain(exc: BaseException):
    """``exc`` and the exceptions it wraps (instructor wraps the OpenAI error it retried)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _describe(exc: BaseException) -> str:
    """One line: the exception's type and message (instructor's own ``str`` is a multi-line report)."""
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    attempts = getattr(exc, "n_attempts", None)
    tail = f" (after {attempts} attempts)" if isinstance(attempts, int) and attempts > 1 else ""
    return f"{type(exc).__name__}: {' '.join(text.split())}"[:480] + tail


class RagasScorer:
    """Scores (question, reference, answer) triples with RAGAS metrics.

    ``embed_fn`` (text -> vector) replaces the embeddings endpoint with a local model; name that
    model in ``settings.embeddings_model`` so the cache keeps its scores apart.
    """

    def __init__(self, settings: RagasSettings, embed_fn: EmbedFn | None = None,
                 cache_dir: str | Path | None = None):
        if settings.concurrency < 1:
            raise ValueError("RagasSettings.concurrency must be at least 1")
        self.settings = settings
        self.embed_fn = embed_fn
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "ragas"
        self.stats = RagasStats()
        self.version = _ragas_version()
        self._warned: set[tuple[str, str]] = set()

    # ---- cache -------------------------------------------------------------------------------
    def cache_key(self, metric: str, question: str, reference: str, answer: str) -> str:
        payload = json.dumps([CACHE_VERSION, metric, self.version, self.settings.llm_model,
                              self.settings.embeddings_model, question, reference, answer], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _read_cache(self, key: str) -> float | None:
        try:
            value = json.loads(self._cache_path(key).read_text(encoding="utf-8"))["value"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def _write_cache(self, key: str, value: float) -> None:
        path = self._cache_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"value": value}, fh)
        os.replace(tmp, path)

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
    def _api_key(self, env: str, url: str) -> str:
        key = os.environ.get(env)
        if not key and (env, url) not in self._warned:
            self._warned.add((env, url))
            log.warning("ragas: %s is not set; calling %s without an API key", env, url)
        return key or "EMPTY"

    async def _run(self, items, todo, scores, reasons) -> None:
        import openai
        from ragas.metrics.collections import AnswerCorrectness, SemanticSimilarity

        s = self.settings
        needed = {metric for _, metric, _ in todo}
        opened: list = []

        def count_usage(body: bytes) -> None:
            try:
                usage = json.loads(body).get("usage") or {}
            except (ValueError, AttributeError):
                return
            self.stats.add(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                           completion_tokens=int(usage.get("completion_tokens") or 0))

        async def on_async_response(response) -> None:
            count_usage(await response.aread())

        def on_response(response) -> None:
            count_usage(response.read())

        def client(cls, url: str, env: str):
            import httpx

            # httpx response hooks see every reply, so the tokens ragas spends are counted (and priced).
            http = (httpx.AsyncClient(event_hooks={"response": [on_async_response]}, timeout=s.timeout_s)
                    if cls is openai.AsyncOpenAI else
                    httpx.Client(event_hooks={"response": [on_response]}, timeout=s.timeout_s))
            c = cls(base_url=url, api_key=self._api_key(env, url), timeout=s.timeout_s, max_retries=s.max_retries,
                    http_client=http)
            opened.append(c)
            return c

        try:
            if self.embed_fn is not None:
                embeddings = _make_callable_embeddings(self.embed_fn)
            else:
                embeddings = _make_openai_embeddings(
                    client(openai.AsyncOpenAI, s.embeddings_url, s.embeddings_key_env),
                    client(openai.OpenAI, s.embeddings_url, s.embeddings_key_env), s.embeddings_model)
            scorers = {}
            if "answer_correctness" in needed:
                from ragas.llms import llm_factory

                llm = llm_factory(s.llm_model, client=client(openai.AsyncOpenAI, s.llm_base_url, s.llm_api_key_env))
                metric = AnswerCorrectness(llm=llm, embeddings=embeddings)
                scorers["answer_correctness"] = lambda q, r, a: metric.ascore(user_input=q, response=a, reference=r)
            if "answer_similarity" in needed:
                similarity = SemanticSimilarity(embeddings=embeddings)
                # ascore embeds synchronously; a worker thread keeps the event loop free meanwhile.
                scorers["answer_similarity"] = lambda q, r, a: asyncio.to_thread(
                    similarity.score, reference=r, response=a)

            semaphore = asyncio.Semaphore(s.concurrency)

            async def one(i: int, metric: str, key: str) -> BaseException | None:
                question, reference, answer = items[i]
                async with semaphore:
                    self.stats.add(calls=1)
                    try:
                        value = (await scorers[metric](question, reference, answer)).value
                    except Exception as exc:  # noqa: BLE001 - any failure is this sample's failure
                        self._failed(reasons, i, metric, _describe(exc))
                        return exc
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    self._failed(reasons, i, metric, f"metric returned a non-number: {value!r}")
                    return None
                if math.isnan(value):
                    self.stats.add(nan=1)
                    self._failed(reasons, i, metric, "metric returned NaN")
                    return None
                scores[i][metric] = value
                self._write_cache(key, value)
                return None

            # The first sample runs alone: an endpoint that cannot be reached fails everything at once.
            first = todo[0][0]
            head = [t for t in todo if t[0] == first]
            errors = await asyncio.gather(*(one(*t) for t in head))
            for exc in errors:
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

    def _failed(self, reasons, i: int, metric: str, why: str) -> None:
        self.stats.fail(metric)
        reasons[i][metric] = why
        log.warning("ragas %s failed for sample %d: %s", metric, i, why)

    def _raise_if_fatal(self, exc: BaseException) -> None:
        import openai

        s = self.settings
        for err in _chain(exc):
            if not isinstance(err, openai.APIError):
                continue
            url = str(getattr(getattr(err, "request", None), "url", "") or "")
            is_embed = "/embeddings" in url and self.embed_fn is None
            base = s.embeddings_url if is_embed else s.llm_base_url
            env = s.embeddings_key_env if is_embed else s.llm_api_key_env
            model_key, model = (("embeddings_model", s.embeddings_model) if is_embed else ("llm_model", s.llm_model))
            where = "embeddings_base_url" if is_embed else "llm_base_url"
            if isinstance(err, (openai.APIConnectionError, openai.APITimeoutError)):
                raise EvaluationError(
                    f"RAGAS endpoint {base} did not answer after {s.max_retries} retries ({err}); check the "
                    f"RAGAS {where}, that the server is up, and network access") from exc
            if isinstance(err, openai.AuthenticationError):
                raise EvaluationError(f"RAGAS endpoint {base} rejected the API key ({err}); set {env}") from exc
            if isinstance(err, openai.APIStatusError) and err.status_code < 500 and err.status_code != 429:
                raise EvaluationError(
                    f"RAGAS endpoint {base} refused the request ({err.status_code}: {err.message}); "
                    f"check the RAGAS {model_key} ({model!r}) and that the server serves it") from exc
            return

"""Talking to an OpenAI-compatible endpoint (``bakeoff.spec.Endpoint``): the judge, RAGAS, the generation
endpoint and the hosted arm all go through here.

- ``api_key``: one policy for a missing key. An endpoint on loopback or inside the cluster (``*.svc``)
  may have none; any other fails before a request is made, naming the variable and the Secret route.
- ``client``: the one place an ``openai`` client is built.
- ``check_reachable``: the preflight (an answer of any kind counts as reachable).
- ``retrying`` / ``is_transient``: bounded retries with exponential backoff and jitter on 429, 5xx,
  timeouts and connection errors, counted (tenacity: maintained, sync and async, and it keeps the
  counting in one callback instead of a hand-written loop per caller).
- ``reply_choices`` / ``malformed_hooks``: an HTTP 200 whose body is not the API's reply (a proxy's HTML
  page, JSON without ``choices``) is a ``MalformedReply``: retried like a 5xx, then a counted failure.
- ``CallStats``: thread-safe counters; ``cost_usd``: the one price formula.
- ``ReplyCache``: paid replies on disk, one JSON file per key (written atomically), so a rerun pays
  nothing. Plain files rather than diskcache's SQLite: the cache may sit on a shared volume (the model
  cache PVC), where SQLite locking is unreliable, and a reply can be read with ``cat``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bakeoff.errors import BakeoffError
from bakeoff.spec import Endpoint


def is_local(base_url: str) -> bool:
    """Whether ``base_url`` is on loopback or a cluster-internal service (no API key needed there)."""
    host = urlparse(base_url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.") or host.endswith(".svc") or \
        host.endswith(".svc.cluster.local")


def api_key(endpoint: Endpoint, where: str, error: type[BakeoffError] = BakeoffError) -> str:
    """The endpoint's API key from ``api_key_env``; ``EMPTY`` for a local endpoint without one; otherwise
    ``error`` saying what to set (``where`` is the spec key of the endpoint, e.g. ``evaluation.judge``)."""
    key = os.environ.get(endpoint.api_key_env)
    if key:
        return key
    if is_local(endpoint.base_url):
        return "EMPTY"
    raise error(f"{where} at {endpoint.base_url} needs an API key: set {endpoint.api_key_env} (on Kubernetes: "
                f"{where}.api_key_secret)")


def client(endpoint: Endpoint, where: str, *, asynchronous: bool = False, max_retries: int | None = None,
           timeout: float | None = None, http_client: Any = None, error: type[BakeoffError] = BakeoffError):
    """An ``openai.OpenAI`` (or ``AsyncOpenAI``) client for ``endpoint``; ``max_retries=0`` when the caller
    retries itself (``retrying``)."""
    import openai

    cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    extra = {"http_client": http_client} if http_client is not None else {}
    return cls(base_url=endpoint.base_url, api_key=api_key(endpoint, where, error),
               timeout=endpoint.timeout_s if timeout is None else timeout,
               max_retries=endpoint.max_retries if max_retries is None else max_retries, **extra)


def check_reachable(endpoint: Endpoint, where: str, error: type[BakeoffError] = BakeoffError, api=None) -> None:
    """Fail before any paid work when ``endpoint`` cannot be used: no API key for a remote endpoint, or no
    answer after its retries. Any HTTP answer counts as reachable (some servers have no /models)."""
    import openai

    api = api or client(endpoint, where, timeout=min(endpoint.timeout_s, 30), error=error)
    try:
        api.models.list()
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise error(f"{where} at {endpoint.base_url} is unreachable ({exc}); check {where}.base_url and that "
                    "the server is up") from exc
    except openai.AuthenticationError as exc:
        raise error(f"{where} at {endpoint.base_url} rejected the API key; check {endpoint.api_key_env}") from exc
    except openai.APIStatusError:
        pass


class MalformedReply(BakeoffError):
    """An endpoint answered HTTP 200 with a body that is not the API's reply."""


def _describe_body(body: Any) -> str:
    text = body if isinstance(body, str) else repr(body)
    text = " ".join(text.split())
    return text[:120] + ("..." if len(text) > 120 else "")


def reply_choices(resp: Any, where: str) -> list:
    """The ``choices`` of a chat or completions reply; ``MalformedReply`` when the body had none (the SDK
    returns the raw text for a non-JSON body, and an object with ``choices=None`` for JSON without them)."""
    choices = getattr(resp, "choices", None)
    if isinstance(resp, str) or not choices:
        raise MalformedReply(f"{where} answered HTTP 200 without a reply (no choices): {_describe_body(resp)}; is "
                             "base_url an OpenAI-compatible API (not a proxy or login page)?")
    return choices


def malformed_hooks(where: str) -> tuple[Callable, Callable]:
    """httpx response hooks (sync, async) that turn an HTTP 200 without the API's reply into
    ``MalformedReply``, for clients whose replies a library reads itself (RAGAS through instructor)."""

    def check(response, body: bytes) -> None:
        if response.status_code != 200:
            return
        path = response.request.url.path
        key = "data" if path.endswith("/embeddings") else "choices" if path.endswith("completions") else None
        if key is None:
            return
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not doc.get(key):
            raise MalformedReply(f"{where} answered HTTP 200 without a reply (no {key}) at {path}: "
                                 f"{_describe_body(body.decode(errors='replace'))}")

    def on_response(response) -> None:
        check(response, response.read())

    async def on_async_response(response) -> None:
        check(response, await response.aread())

    return on_response, on_async_response


def _chain(exc: BaseException | None):
    """``exc`` and the exceptions it wraps (instructor wraps the OpenAI error it retried)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def openai_error(exc: BaseException):
    """The first ``openai.APIError`` in ``exc``'s chain, or None."""
    import openai

    return next((e for e in _chain(exc) if isinstance(e, openai.APIError)), None)


def malformed(exc: BaseException) -> MalformedReply | None:
    """The ``MalformedReply`` in ``exc``'s chain (the SDK wraps one raised by a response hook), or None."""
    return next((e for e in _chain(exc) if isinstance(e, MalformedReply)), None)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is worth retrying: 429, 5xx, a timeout, a lost connection or a
    malformed 200 reply."""
    import openai

    if malformed(exc) is not None:
        return True
    err = openai_error(exc)
    if isinstance(err, (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError,
                        openai.InternalServerError)):
        return True
    return isinstance(err, openai.APIStatusError) and err.status_code >= 500


sleep = time.sleep  # the synchronous retries' wait (tests replace it to record the backoff)


def retrying(max_retries: int, stats: CallStats | None = None, *, asynchronous: bool = False,
             retry_if: Callable[[BaseException], bool] = is_transient):
    """A tenacity policy: at most ``max_retries`` retries of a transient failure, backoff 0.25 s doubling to
    8 s plus up to 0.25 s of jitter, each retry counted in ``stats.retries``; the last failure is raised
    as it is."""
    import tenacity

    extra = {} if asynchronous else {"sleep": lambda seconds: sleep(seconds)}
    cls = tenacity.AsyncRetrying if asynchronous else tenacity.Retrying
    return cls(stop=tenacity.stop_after_attempt(max_retries + 1),
               wait=tenacity.wait_exponential(multiplier=0.125, max=8) + tenacity.wait_random(0, 0.25),
               retry=tenacity.retry_if_exception(retry_if), reraise=True,
               before_sleep=(lambda _: stats.add(retries=1)) if stats is not None else None, **extra)


class CallStats:
    """Thread-safe counters of the calls to an endpoint (shown in the report's evaluation health).

    ``names`` are the counters (read as attributes or items); ``groups`` are counters by key, such as
    failures by metric.
    """

    def __init__(self, *names: str, groups: tuple[str, ...] = ()):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(names, 0)
        self._groups: dict[str, dict[str, int]] = {g: {} for g in groups}

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                self._counts[key] += value

    def add_to(self, group: str, key: str, value: int = 1) -> None:
        with self._lock:
            self._groups[group][key] = self._groups[group].get(key, 0) + value

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {**self._counts, **{g: dict(v) for g, v in self._groups.items()}}

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.to_dict()[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str):
        return self.to_dict()[key]


def cost_usd(prompt_tokens: int, completion_tokens: int, usd_per_1m_input: float | None,
             usd_per_1m_output: float | None) -> float | None:
    """What the tokens cost; None when no price is given."""
    if usd_per_1m_input is None and usd_per_1m_output is None:
        return None
    return round((prompt_tokens * (usd_per_1m_input or 0) + completion_tokens * (usd_per_1m_output or 0)) / 1e6, 6)


def usage_hooks(stats: CallStats) -> tuple[Callable, Callable]:
    """httpx response hooks (sync, async) that add every reply's ``usage`` to ``stats.prompt_tokens`` and
    ``completion_tokens``: the tokens a library spends through its own requests are counted too."""

    def count(body: bytes) -> None:
        try:
            usage = json.loads(body).get("usage") or {}
        except (ValueError, AttributeError):
            return
        stats.add(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                  completion_tokens=int(usage.get("completion_tokens") or 0))

    def on_response(response) -> None:
        count(response.read())

    async def on_async_response(response) -> None:
        count(await response.aread())

    return on_response, on_async_response


class ReplyCache:
    """Paid replies on disk under ``root``: ``root/<k[:2]>/<k>.json``, each written atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(*parts: Any) -> str:
        """A digest of everything the reply depends on."""
        return hashlib.sha256(json.dumps(list(parts), ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        """The cached value, or None (missing or unreadable)."""
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, key: str, value: Any) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(value, fh, ensure_ascii=False)
        os.replace(tmp, path)


__all__ = ["CallStats", "MalformedReply", "ReplyCache", "api_key", "check_reachable", "client", "cost_usd", "is_local",
           "is_transient", "malformed", "malformed_hooks", "openai_error", "reply_choices", "retrying", "usage_hooks"]

"""An OpenAI-compatible chat completions server on loopback, for the judge tests and the end-to-end run."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loopback import running

NORMAL_REPLY = "Good. Rating: [[8]]"
PROMPT_TOKENS, COMPLETION_TOKENS = 50, 7
_PAIR = re.compile(r"\[The Start of Reference Answer\]\n(.*?)\n\[The End of Reference Answer\].*?"
                   r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", re.S)


EMBED_DIM = 64
_WORD = re.compile(r"\w+")
_RAGAS_INPUT = re.compile(r"Now perform the same with the following input\ninput: (.*)\nOutput: ?$", re.S)


def embed(text: str) -> list[float]:
    """A deterministic hashed bag-of-words vector: equal texts have cosine 1, texts without words are all zeros."""
    vector = [0.0] * EMBED_DIM
    for word in _WORD.findall(text.lower()):
        vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % EMBED_DIM] += 1.0
    return vector


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _ragas_reply(prompt: str) -> str:
    """A JSON reply to ragas's answer-correctness prompts, computed from the prompt's own input.

    Statement generation: one statement per sentence of the answer. Classification: an answer
    statement is TP when some ground-truth statement has the same words (case and punctuation
    aside), else FP; unmatched ground-truth statements are FN.
    """
    match = _RAGAS_INPUT.search(prompt)
    if not match:
        return "not a ragas prompt"
    data = json.loads(match.group(1))
    if "ground_truth" in data:
        truth = {_norm(s): s for s in data["ground_truth"]}
        tp = [s for s in data["answer"] if _norm(s) in truth]
        fp = [s for s in data["answer"] if _norm(s) not in truth]
        matched = {_norm(s) for s in tp}
        fn = [s for key, s in truth.items() if key not in matched]
        item = lambda s, why: {"statement": s, "reason": why}  # noqa: E731
        return json.dumps({"TP": [item(s, "in the ground truth") for s in tp],
                           "FP": [item(s, "not in the ground truth") for s in fp],
                           "FN": [item(s, "missing from the answer") for s in fn]})
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", data.get("answer", "")) if s.strip()]
    return json.dumps({"statements": sentences})


def _rating_logprobs(content: str, odds: dict[str, float]) -> list[dict]:
    """Per-token logprobs of ``content`` as OpenAI sends them, the alternatives at the rating from ``odds``."""
    import math

    at = content.rfind("[[") + 2
    tokens = [content[:at], content[at:at + 1], content[at + 1:]]
    out = []
    for i, tok in enumerate(tokens):
        tops = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in odds.items()] if i == 1 else \
            [{"token": tok, "logprob": 0.0, "bytes": None}]
        out.append({"token": tok, "logprob": tops[0]["logprob"], "bytes": None, "top_logprobs": tops})
    return out


def _grade(prompt: str) -> str:
    match = _PAIR.search(prompt)
    same = bool(match) and match.group(1).strip().lower() == match.group(2).strip().lower()
    return "Matches the reference. Rating: [[9]]" if same else "Does not match. Rating: [[2]]"


_PAIRWISE = re.compile(r"(?:\[The Start of Reference Answer\]\n(?P<reference>.*?)\n\[The End of Reference Answer\].*?)?"
                       r"\[The Start of Assistant 1's Answer\]\n(?P<first>.*?)\n\[The End of Assistant 1's Answer\].*?"
                       r"\[The Start of Assistant 2's Answer\]\n(?P<second>.*?)\n\[The End of Assistant 2's Answer\]",
                       re.S)
NO_PAIRWISE_MODES = ("garbage", "ragas", "logprobs")  # modes whose replies stay what they were for every prompt
PAIRWISE_GARBAGE = "Both have merits. Verdict: [[A]]"  # not [[1]], [[2]] or [[tie]]: a parse failure


def pairwise_blocks(prompt: str) -> tuple[str | None, str, str] | None:
    """(reference or None, first answer, second answer) read back out of bakeoff's pairwise prompt; None
    for any other prompt (a single-judge prompt has no numbered assistants)."""
    match = _PAIRWISE.search(prompt)
    return (match.group("reference"), match.group("first"), match.group("second")) if match else None


def _prefer(reference: str | None, first: str, second: str) -> str:
    """The pairwise verdict the stand-in gives: the answer equal to the reference (case and spaces aside)
    wins; otherwise the longer one; otherwise a tie."""
    same = [reference is not None and _norm(x) == _norm(reference) for x in (first, second)]
    if same[0] != same[1]:
        return "1" if same[0] else "2"
    if same[0] or len(first.strip()) == len(second.strip()):
        return "tie"
    return "1" if len(first.strip()) > len(second.strip()) else "2"


def _pairwise_reply(mode: str, prompt: str) -> str | None:
    """The reply to a pairwise prompt in ``mode``, or None for a single-judge prompt (answered as before)."""
    blocks = pairwise_blocks(prompt)
    if blocks is None:
        return None
    if mode == "position-biased":
        return "The first answer is better. [[1]]"
    if mode == "pairwise-garbage":
        return PAIRWISE_GARBAGE
    return f"Compared both. Verdict: [[{_prefer(*blocks)}]]"


class FakeJudgeServer:
    """An OpenAI-compatible ``POST /v1/chat/completions`` server with failure modes.

    Modes: ``normal`` (replies ``reply``), ``garbage`` ("no idea"), ``429-then-ok`` (the first
    ``fail_first`` requests get 429), ``always-500``, ``slow`` (waits ``delay`` seconds first) and
    ``status`` (every request gets ``status_code``), and ``grade``: [[9]] when the answer equals the
    reference (case and spaces aside) and [[2]] otherwise, read back out of bakeoff's judge prompt.
    ``ragas`` answers ragas's answer-correctness prompts with valid JSON (see ``_ragas_reply``).
    Pairwise prompts (bakeoff's pairwise judge) get a verdict wherever ``reply`` would be sent (``normal``,
    ``grade``, after the failures of the ``...-then-ok`` modes: ``_prefer``, the answer equal to the reference,
    else the longer one, else [[tie]]; not in ``garbage``, ``ragas`` or ``logprobs``), and in two modes of
    their own: ``position-biased`` ([[1]] whatever the answers, so the swapped order flips it) and
    ``pairwise-garbage`` (no valid verdict); single-judge prompts get ``reply`` in those two.
    Malformed HTTP 200 replies: ``html-200`` (a proxy's HTML page), ``no-choices`` (JSON without
    ``choices``), and ``html-then-ok``, ``no-choices-then-ok``, ``garbage-then-ok`` (only the first
    ``fail_first`` requests malformed or unparseable, then ``reply``).

    ``POST /v1/embeddings`` answers in every mode with ``embed`` vectors (float lists, or base64
    when the client asks for it), for the RAGAS tests.
    """

    def __init__(self):
        self.mode = "normal"
        self.reply = NORMAL_REPLY
        self.fail_first = 0
        self.delay = 5.0
        self.completions: dict[str, str] = {}  # served model name -> its answer, for POST /v1/completions
        self.rating_odds: dict[str, float] = {"8": 0.6, "7": 0.3, "9": 0.1}  # for mode "logprobs"
        self.status_code = 404
        self.requests = 0
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def set(self, mode: str, **settings) -> FakeJudgeServer:
        self.mode = mode
        for key, value in settings.items():
            setattr(self, key, value)
        return self

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _raw(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str, kind: str) -> None:
                self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

            def _embeddings(self, body: dict, n: int) -> None:
                texts = body.get("input", [])
                texts = [texts] if isinstance(texts, str) else list(texts)
                data = []
                for i, text in enumerate(texts):
                    vector = embed(text)
                    if body.get("encoding_format") == "base64":
                        vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                    data.append({"object": "embedding", "index": i, "embedding": vector})
                self._send(200, {"object": "list", "data": data, "model": body.get("model", "embed"),
                                 "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)}})

            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.requests += 1
                    n = server.requests
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                if self.path == "/v1/embeddings":
                    return self._embeddings(body, n)
                if self.path == "/v1/completions":  # a text-completion server: answers by served model name
                    text = server.completions.get(body.get("model"), "unknown model")
                    return self._send(200, {
                        "id": f"cmpl-{n}", "object": "text_completion", "created": int(time.time()),
                        "model": body.get("model"), "choices": [{"index": 0, "text": f" {text}", "logprobs": None,
                                                                 "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 1,
                                  "total_tokens": PROMPT_TOKENS + 1}})
                if self.path != "/v1/chat/completions":
                    return self._error(404, f"no route {self.path}", "invalid_request_error")
                mode = server.mode
                early = n <= server.fail_first
                # a proxy's login page, or JSON without choices, with HTTP 200 ("...-then-ok": the first
                # fail_first requests only)
                if mode == "html-200" or (mode == "html-then-ok" and early):
                    return self._raw(b"<html><body>Please sign in to the proxy</body></html>", "text/html")
                if mode == "no-choices" or (mode == "no-choices-then-ok" and early):
                    return self._send(200, {"object": "chat.completion", "id": f"x-{n}"})
                if mode == "garbage-then-ok" and early:
                    content = "no idea"
                    choice = {"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": "stop"}
                    return self._send(200, {"id": f"c-{n}", "object": "chat.completion", "created": 0,
                                            "model": "judge", "choices": [choice]})
                if mode == "429-then-ok" and n <= server.fail_first:
                    return self._error(429, "rate limited, slow down", "rate_limit_error")
                if mode == "always-500":
                    return self._error(500, "internal error", "server_error")
                if mode == "status":
                    return self._error(server.status_code, f"status {server.status_code}", "invalid_request_error")
                if mode == "slow" and server.stopping.wait(server.delay):
                    return None
                content = "no idea" if mode == "garbage" else server.reply
                pairwise = _pairwise_reply(mode, str(body["messages"][-1].get("content") or "")) \
                    if mode not in NO_PAIRWISE_MODES and body.get("messages") else None
                if pairwise is not None:
                    content = pairwise
                elif mode == "grade":
                    content = _grade(body["messages"][-1]["content"])
                if mode == "ragas":
                    content = _ragas_reply("\n".join(str(m.get("content") or "") for m in body["messages"]))
                choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                if mode == "logprobs" and body.get("logprobs"):
                    choice["logprobs"] = {"content": _rating_logprobs(content, server.rating_odds)}
                self._send(200, {
                    "id": f"chatcmpl-{n}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "judge"),
                    "choices": [choice],
                    "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                              "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
                })

        return Handler


@contextmanager
def serve(mode: str = "normal", port: int = 0, **settings) -> Iterator[FakeJudgeServer]:
    """A FakeJudgeServer on 127.0.0.1 (``port``, else one the OS picks) in a daemon thread, for the block."""
    server = FakeJudgeServer().set(mode, **settings)
    with running(server, before_stop=server.stopping.set, port=port):
        yield server

"""A stand-in for the OpenAI fine-tuning API on loopback: files, fine-tuning jobs (create, retrieve,
list, events, checkpoints, cancel), result file content and chat completions.

A job moves one state per status check: ``validating_files`` -> ``queued`` -> ``running`` -> ``succeeded``
(or ``failed`` with ``fail_job``'s message), with an event at each step. On success it has a result
file (``step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy``, base64-encoded as
OpenAI sends it), one checkpoint per epoch with ``full_valid_loss``, ``trained_tokens`` (the training
file's characters / 4 per epoch) and a fine-tuned model ``ft:<base>:bakeoff:<suffix>:<job id>``.

Chat completions: a fine-tuned model answers with the reference of a known prompt (``answers``: the
user's message -> answer, which tests fill from the test split); a base model says ``I don't know``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from loopback import running

STEPS = ("validating_files", "queued", "running")


class FakeOpenAI:
    """State and failure modes of the stand-in server.

    ``fail_job``: a job fails at the end with this message; ``reject_file``: uploads come back with
    status ``error`` and this detail; ``create_status``: job creation answers this HTTP status
    (429 with an ``insufficient_quota`` error); ``poll_errors``: this many status checks get 503 first.
    """

    def __init__(self):
        self.files: dict[str, dict] = {}
        self.contents: dict[str, bytes] = {}
        self.jobs: dict[str, dict] = {}
        self.events: dict[str, list[dict]] = {}
        self.answers: dict[str, str] = {}
        self.fail_job: str | None = None
        self.reject_file: str | None = None
        self.create_status: int | None = None
        self.poll_errors = 0
        self.creates = 0
        self.idempotency_keys: list[str | None] = []
        self.chat_models: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.counter = 0
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:04d}"

    # --- the job's life ---

    def _event(self, job_id: str, message: str, kind: str = "message", data: dict | None = None) -> None:
        self.events[job_id].append({"object": "fine_tuning.job.event", "id": self._id("ftevent"),
                                    "created_at": int(time.time()), "level": "info", "message": message,
                                    "type": kind, "data": data or {}})

    def _advance(self, job: dict) -> None:
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return
        i = STEPS.index(job["status"])
        if i + 1 < len(STEPS):
            job["status"] = STEPS[i + 1]
            self._event(job["id"], f"Job status: {job['status']}")
            return
        self._finish(job)

    def _finish(self, job: dict) -> None:
        now = int(time.time())
        if self.fail_job:
            job.update(status="failed", finished_at=now,
                       error={"code": "invalid_training_file", "message": self.fail_job, "param": "training_file"})
            self._event(job["id"], f"Job failed: {self.fail_job}", data={})
            return
        hp = job["method"]["supervised"]["hyperparameters"]
        epochs = 3 if hp["n_epochs"] == "auto" else int(hp["n_epochs"])
        batch = 1 if hp["batch_size"] == "auto" else int(hp["batch_size"])
        train = self.contents[job["training_file"]].decode().splitlines()
        per_epoch = -(-len(train) // batch)
        steps = per_epoch * epochs
        rows = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
        for step in range(1, steps + 1):
            loss = 2.0 / (1 + 0.1 * step)
            valid = f"{loss * 1.1:.4f}" if step % 5 == 0 else ""
            rows.append(f"{step},{loss:.4f},{0.5 + 0.01 * step:.3f},{valid},")
        result_id = self._id("file")
        self.contents[result_id] = base64.b64encode(("\n".join(rows) + "\n").encode())
        self.files[result_id] = self._file_obj(result_id, "step_metrics.csv", "fine-tune-results",
                                               len(self.contents[result_id]))
        model = f"ft:{job['model']}:bakeoff:{job['user_provided_suffix'] or 'tuned'}:{job['id']}"
        job["checkpoints"] = [{
            "object": "fine_tuning.job.checkpoint", "id": self._id("ftckpt"), "created_at": now,
            "fine_tuning_job_id": job["id"], "step_number": per_epoch * e,
            "fine_tuned_model_checkpoint": f"{model}:ckpt-step-{per_epoch * e}",
            "metrics": {"step": float(per_epoch * e), "train_loss": 2.0 / (1 + 0.1 * per_epoch * e),
                        "full_valid_loss": 2.2 / (1 + 0.08 * per_epoch * e), "full_valid_mean_token_accuracy": 0.7},
        } for e in range(1, epochs + 1)]
        chars = len(self.contents[job["training_file"]])
        job.update(status="succeeded", finished_at=job["created_at"] + 600, fine_tuned_model=model,
                   result_files=[result_id], trained_tokens=chars // 4 * epochs,
                   hyperparameters={"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": 1.8})
        job["method"]["supervised"]["hyperparameters"] = dict(job["hyperparameters"])
        self._event(job["id"], f"Step {steps}/{steps}: training loss={2.0 / (1 + 0.1 * steps):.4f}", "metrics",
                    {"step": steps})
        self._event(job["id"], "The job has successfully completed")

    @staticmethod
    def _file_obj(file_id: str, name: str, purpose: str, size: int, status: str = "processed",
                  details: str | None = None) -> dict:
        return {"object": "file", "id": file_id, "bytes": size, "created_at": int(time.time()), "filename": name,
                "purpose": purpose, "status": status, "status_details": details}

    # --- HTTP ---

    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: dict | bytes, content_type: str = "application/json") -> None:
                body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str, code: str | None = None, kind: str = "invalid_request_error"):
                self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _route(self, method: str):
                url = urlparse(self.path)
                with fake.lock:
                    fake.requests.append((method, url.path))
                    return self._handle(method, url.path, parse_qs(url.query))

            def do_GET(self):  # noqa: N802
                self._route("GET")

            def do_POST(self):  # noqa: N802
                self._route("POST")

            def _handle(self, method: str, path: str, query: dict):
                if method == "POST" and path == "/v1/files":
                    return self._upload()
                m = re.fullmatch(r"/v1/files/([\w-]+)(/content)?", path)
                if m and method == "GET":
                    if m.group(1) not in fake.files:
                        return self._error(404, f"No such File object: {m.group(1)}")
                    if m.group(2):
                        return self._send(200, fake.contents[m.group(1)], "application/octet-stream")
                    return self._send(200, fake.files[m.group(1)])
                if path == "/v1/fine_tuning/jobs":
                    return self._create() if method == "POST" else self._list(query)
                m = re.fullmatch(r"/v1/fine_tuning/jobs/([\w-]+)(?:/(events|checkpoints|cancel))?", path)
                if m:
                    job = fake.jobs.get(m.group(1))
                    if job is None:
                        return self._error(404, f"Could not find fine tune: {m.group(1)}")
                    return self._job(job, m.group(2), method, query)
                if method == "POST" and path == "/v1/chat/completions":
                    return self._chat(json.loads(self._body() or b"{}"))
                return self._error(404, f"no route {method} {path}")

            def _upload(self):
                raw = self._body()
                header = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                parts = BytesParser(policy=HTTP).parsebytes(header + raw)
                fields = {p.get_param("name", header="content-disposition"): p for p in parts.iter_parts()}
                purpose = fields["purpose"].get_content().strip()
                file_part = fields["file"]
                data = file_part.get_payload(decode=True)
                file_id = fake._id("file")
                status, details = ("error", fake.reject_file) if fake.reject_file else ("processed", None)
                fake.files[file_id] = fake._file_obj(file_id, file_part.get_filename(), purpose, len(data), status,
                                                     details)
                fake.contents[file_id] = data
                return self._send(200, fake.files[file_id])

            def _create(self):
                body = json.loads(self._body())
                if fake.create_status:
                    return self._error(fake.create_status, "You exceeded your current quota, please check your plan "
                                       "and billing details.", "insufficient_quota", "insufficient_quota")
                for key in ("training_file", "validation_file"):
                    if body.get(key) and body[key] not in fake.files:
                        return self._error(400, f"invalid {key}: {body[key]}")
                fake.creates += 1
                fake.idempotency_keys.append(self.headers.get("Idempotency-Key"))
                job_id = fake._id("ftjob")
                method = body.get("method") or {"type": "supervised", "supervised": {"hyperparameters": {}}}
                hp = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto",
                      **method["supervised"].get("hyperparameters", {})}
                method["supervised"]["hyperparameters"] = hp
                job = {"object": "fine_tuning.job", "id": job_id, "created_at": int(time.time()), "error": None,
                       "fine_tuned_model": None, "finished_at": None, "hyperparameters": dict(hp),
                       "model": body["model"], "organization_id": "org-bakeoff", "result_files": [],
                       "seed": body.get("seed") or 0, "status": "validating_files", "trained_tokens": None,
                       "training_file": body["training_file"], "validation_file": body.get("validation_file"),
                       "method": method, "metadata": body.get("metadata"),
                       "user_provided_suffix": body.get("suffix"), "checkpoints": []}
                fake.jobs[job_id] = job
                fake.events[job_id] = []
                fake._event(job_id, f"Created fine-tuning job: {job_id}")
                return self._send(200, _public(job))

            def _list(self, query: dict):
                jobs = [_public(j) for j in reversed(fake.jobs.values())]
                return self._send(200, {"object": "list", "data": jobs, "has_more": False})

            def _job(self, job: dict, sub: str | None, method: str, query: dict):
                if sub is None:
                    if fake.poll_errors:
                        fake.poll_errors -= 1
                        return self._error(503, "The server is overloaded", kind="server_error")
                    fake._advance(job)
                    return self._send(200, _public(job))
                if sub == "cancel" and method == "POST":
                    if job["status"] not in ("succeeded", "failed", "cancelled"):
                        job.update(status="cancelled", finished_at=int(time.time()))
                        fake._event(job["id"], "Job cancelled")
                    return self._send(200, _public(job))
                items = list(reversed(fake.events[job["id"]] if sub == "events" else job["checkpoints"]))
                after = (query.get("after") or [None])[0]
                if after is not None:
                    ids = [x["id"] for x in items]
                    items = items[ids.index(after) + 1:] if after in ids else []
                limit = int((query.get("limit") or [20])[0])
                page = items[:limit]
                return self._send(200, {"object": "list", "data": page, "has_more": len(items) > limit,
                                        **({"first_id": page[0]["id"], "last_id": page[-1]["id"]} if page else {})})

            def _chat(self, body: dict):
                model = body.get("model", "")
                fake.chat_models.append(model)
                if model.startswith("ft:") and model.split(":")[-1] not in fake.jobs:
                    return self._error(404, f"The model `{model}` does not exist", "model_not_found")
                question = body["messages"][-1]["content"]
                answer = fake.answers.get(question, "I don't know") if model.startswith("ft:") else "I don't know"
                return self._send(200, {
                    "id": fake._id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
                    "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}})

        return Handler


def _public(job: dict) -> dict:
    return {k: v for k, v in job.items() if k != "checkpoints"}


@contextmanager
def serve(**settings) -> Iterator[FakeOpenAI]:
    """A FakeOpenAI on 127.0.0.1 (port chosen by the OS) in a daemon thread, for the block's duration."""
    fake = FakeOpenAI()
    for key, value in settings.items():
        setattr(fake, key, value)
    with running(fake):
        yield fake

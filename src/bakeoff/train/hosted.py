"""A hosted arm's finetune stage: an OpenAI fine-tuning job on the same train and validation splits.

Steps: the prepared splits become chat JSONL (``{"messages": [system?, user, assistant]}``: the user
message is the same templated prompt the open arms see, without the template's BOS text; the
assistant message is the reference answer). The trained tokens and their cost are estimated and the
stage refuses to go on above ``hosted.max_cost_usd``. The files are uploaded (purpose ``fine-tune``),
the job is created and its id persisted at once, then the job is followed, with a growing wait, to
``succeeded``, ``failed`` or ``cancelled``; its events are logged as they come.

Never billed twice: the job's state file lives under ``training.checkpoint_uri`` (a path or ``s3://``)
when set, else in the bakeoff cache, and is named after a key of everything that shapes the job (base
model, hyperparameters, suffix, system prompt, endpoint, seed and the uploaded bytes). A rerun with the
same key attaches to that job; one whose state file is gone (a fresh pod without a cache volume) finds
it through the job's ``metadata.bakeoff_key`` in the provider's job list.

Token estimate: no tokenizer of the hosted model is available offline (tiktoken fetches its tables at
run time), so a token is taken as ``CHARS_PER_TOKEN`` = 3 characters (English prose runs near 4,
code and SQL near 3: the estimate errs high) plus OpenAI's per-message and per-example formatting
overhead. Epochs ``auto`` are estimated as OpenAI documents its default (3, raised for small data
sets and lowered for large ones). The job reports the tokens it really trained; the cost in
``training.json`` is computed from those.

Output folder: ``training.json`` (the format every arm writes; ``device`` is ``hosted``, GPU figures
are null, ``hosted`` holds the job id, the fine-tuned model id, the estimate, the resolved
hyperparameters and the checkpoints), ``loss_history.json``, and ``hosted/``: the uploaded
``train.jsonl`` and ``validation.jsonl``, ``events.jsonl`` and the job's ``result.csv``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bakeoff import endpoints
from bakeoff.artifacts import HOSTED_DIR, TrainResult, read_split, write_training
from bakeoff.errors import StorageError, TrainingError
from bakeoff.jsonl import write_jsonl
from bakeoff.spec import ArmSpec, ExperimentSpec, HostedFineTune
from bakeoff.templates import chat_messages

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3.0
TOKENS_PER_MESSAGE = 4  # role and separators around each message in OpenAI's chat format
TOKENS_PER_EXAMPLE = 3  # the reply priming at the end of each conversation
TERMINAL = ("succeeded", "failed", "cancelled")
MAX_POLL_FAILURES = 10  # consecutive failed status checks (each after the client's own retries)


# --- the data -------------------------------------------------------------------------------------------


def chat_example(example: dict, template: Any, system_prompt: str | None = None) -> dict:
    """One line of the fine-tuning file: the prompt's messages and the reference as the assistant's reply."""
    return {"messages": chat_messages(example, template, system_prompt)
            + [{"role": "assistant", "content": example["reference"].strip()}]}


def estimate_tokens(lines: Sequence[dict]) -> int:
    """Approximate tokens of chat examples for one epoch (see the module docstring for the rule)."""
    total = 0
    for line in lines:
        total += TOKENS_PER_EXAMPLE
        for message in line["messages"]:
            total += TOKENS_PER_MESSAGE + math.ceil(len(message["content"]) / CHARS_PER_TOKEN)
    return total


def auto_epochs(n_examples: int) -> int:
    """OpenAI's documented default for ``n_epochs: auto``: 3, raised so that at least 100 examples are
    seen (at most 25 epochs) and lowered so that at most 25,000 are (at least 1 epoch)."""
    target, min_examples, max_examples = 3, 100, 25_000
    if n_examples * target < min_examples:
        return min(25, math.ceil(min_examples / max(n_examples, 1)))
    if n_examples * target > max_examples:
        return max(1, max_examples // n_examples)
    return target


def estimate_cost(lines: Sequence[dict], hosted: HostedFineTune) -> dict[str, Any]:
    """Estimated trained tokens (epochs included) and their cost, with how they were reckoned."""
    per_epoch = estimate_tokens(lines)
    epochs = auto_epochs(len(lines)) if hosted.epochs == "auto" else int(hosted.epochs)
    tokens = per_epoch * epochs
    return {"tokens_per_epoch": per_epoch, "epochs": epochs, "epochs_from": str(hosted.epochs),
            "trained_tokens": tokens, "cost_usd": round(tokens / 1e6 * hosted.usd_per_1m_training_tokens, 6),
            "method": f"{CHARS_PER_TOKEN:g} characters per token + {TOKENS_PER_MESSAGE} per message + "
                      f"{TOKENS_PER_EXAMPLE} per example"}


# --- the job's state: created once, found again by a rerun -----------------------------------------------


def job_key(spec: ExperimentSpec, arm: ArmSpec, files: dict[str, bytes]) -> str:
    """A digest of everything that shapes the job: the same key means the same job."""
    h = arm.hosted
    shape = {
        "experiment": spec.name, "arm": arm.name, "model": arm.model, "seed": spec.training_seed(arm),
        "base_url": h.base_url,
        "hyperparameters": {k: str(getattr(h, k)) for k in ("epochs", "batch_size", "learning_rate_multiplier")},
        "suffix": h.suffix, "system_prompt": h.system_prompt,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:20]


def state_location(spec: ExperimentSpec, arm: ArmSpec, key: str) -> str:
    """Where the job's state file is kept: under the arm's checkpoint URI, else in the bakeoff cache."""
    from bakeoff.storage import cache_root

    base = spec.checkpoint_uri(arm)
    if base is None:
        base = str(cache_root() / "hosted" / spec.name / arm.name)
    return f"{base.rstrip('/')}/hosted-job-{key}.json"


def read_state(location: str) -> dict[str, Any]:
    """The state saved at ``location`` (a path or ``s3://``), or {} when there is none."""
    if location.startswith("s3://"):
        from minio.error import S3Error

        from bakeoff.storage import read_s3_json

        try:
            return read_s3_json(location)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return {}
            raise StorageError(f"{location}: {exc.code}: {exc.message}") from exc
        except OSError as exc:
            raise StorageError(f"{location}: cannot reach the S3 endpoint ({exc}); check S3_ENDPOINT") from exc
    path = Path(location)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_state(location: str, state: dict[str, Any]) -> None:
    """Save ``state`` at ``location`` (atomically for a path)."""
    data = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
    if location.startswith("s3://"):
        from minio.error import S3Error

        from bakeoff.storage import parse_s3_uri, s3_client

        bucket, key = parse_s3_uri(location)
        try:
            s3_client().put_object(bucket, key, io.BytesIO(data), len(data), content_type="application/json")
        except S3Error as exc:
            raise StorageError(f"{location}: {exc.code}: {exc.message}") from exc
        except OSError as exc:
            raise StorageError(f"{location}: cannot reach the S3 endpoint ({exc}); check S3_ENDPOINT") from exc
        return
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# --- talking to the API ----------------------------------------------------------------------------------


def api_client(spec: ExperimentSpec, arm: ArmSpec):
    """An ``openai.OpenAI`` client for the arm's endpoint (the one endpoint client, its key policy)."""
    return endpoints.client(arm.hosted, f"arms[{spec.arms.index(arm)}].hosted", error=TrainingError)


def api_message(exc: Exception) -> str:
    """The API's own message of an ``openai`` error (with its code), else the exception's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and body.get("message"):
        code = body.get("code") or body.get("type")
        return f"{body['message']}" + (f" ({code})" if code else "")
    return str(exc)


class _Api:
    """The calls the stage makes, each turning an API error into a TrainingError with the API's message."""

    def __init__(self, client, arm: str, base_url: str):
        self.client, self.arm, self.base_url = client, arm, base_url

    def call(self, what: str, fn: Callable, *args, **kwargs):
        import openai

        try:
            return fn(*args, **kwargs)
        except openai.APIStatusError as exc:
            raise TrainingError(f"arm {self.arm}: {what} was refused by {self.base_url} (HTTP {exc.status_code}): "
                                f"{api_message(exc)}") from exc
        except openai.APIError as exc:
            raise TrainingError(f"arm {self.arm}: {what} failed at {self.base_url}: {api_message(exc)}") from exc


def _upload(api: _Api, name: str, data: bytes, hosted: HostedFineTune, sleep: Callable[[float], None]) -> str:
    """Upload one JSONL file for fine-tuning and wait until the provider has checked it; its id."""
    uploaded = api.call(f"uploading {name}", api.client.files.create, file=(name, data, "application/jsonl"),
                        purpose="fine-tune")
    wait = 1.0
    for _ in range(30):
        status = getattr(uploaded, "status", None) or "processed"
        if status == "error":
            raise TrainingError(f"arm {api.arm}: the provider rejected {name} ({uploaded.id}): "
                                f"{getattr(uploaded, 'status_details', None) or 'no details given'}")
        if status == "processed":
            break
        sleep(wait)
        wait = min(wait * 2, hosted.poll_max_s)
        uploaded = api.call(f"checking {name}", api.client.files.retrieve, uploaded.id)
    log.info("uploaded %s as %s (%d bytes)", name, uploaded.id, len(data))
    return uploaded.id


def _find_job(api: _Api, key: str):
    """A job this arm created before under the same key (found by its metadata), or None."""
    try:
        for job in api.call("listing fine-tuning jobs", api.client.fine_tuning.jobs.list, limit=100,
                            metadata={"bakeoff_key": key}).data:
            if (getattr(job, "metadata", None) or {}).get("bakeoff_key") == key:
                return job
    except TrainingError as exc:
        log.warning("cannot look for an earlier job (%s); creating one", exc)
    return None


def _hyperparameters(hosted: HostedFineTune) -> dict[str, Any]:
    return {"n_epochs": hosted.epochs, "batch_size": hosted.batch_size,
            "learning_rate_multiplier": hosted.learning_rate_multiplier}


def _resolved(job) -> dict[str, Any]:
    """The hyperparameters the provider settled on (``auto`` replaced by numbers once it has)."""
    out: dict[str, Any] = {}
    for source in (getattr(job, "hyperparameters", None),
                   getattr(getattr(getattr(job, "method", None), "supervised", None), "hyperparameters", None)):
        if source is None:
            continue
        for k in ("n_epochs", "batch_size", "learning_rate_multiplier"):
            v = getattr(source, k, None)
            if v is not None and (k not in out or out[k] == "auto"):
                out[k] = v
    return out


def _events(api: _Api, job_id: str, limit: int = 50) -> list:
    """The job's newest events (newest first, as the API lists them)."""
    return list(api.call("listing the job's events", api.client.fine_tuning.jobs.list_events, job_id,
                         limit=limit).data)


def follow_job(api: _Api, job, hosted: HostedFineTune, sleep: Callable[[float], None] = time.sleep):
    """Poll ``job`` until it ends, logging new events; the wait starts at ``poll_s`` and grows by half
    while nothing new happens, up to ``poll_max_s``. A failing status check is retried with the same
    growing wait, up to ``MAX_POLL_FAILURES`` in a row. Returns the ended job."""
    seen: set[str] = set()
    wait, failures = hosted.poll_s, 0
    while True:
        news = False
        try:
            for event in reversed(_events(api, job.id)):
                if event.id not in seen:
                    seen.add(event.id)
                    news = True
                    log.info("job %s: %s", job.id, event.message)
            if job.status in TERMINAL:
                return job
            sleep(wait)
            job = api.call("checking the job", api.client.fine_tuning.jobs.retrieve, job.id)
            failures = 0
        except TrainingError as exc:
            cause = exc.__cause__
            status = getattr(cause, "status_code", None)
            transient = status is None or status == 429 or status >= 500
            failures += 1
            if not transient or failures >= MAX_POLL_FAILURES:
                raise TrainingError(f"{exc}; the job {job.id} may still be running: a rerun attaches to it") \
                    from cause
            log.warning("%s; trying again in %.0f s", exc, wait)
            sleep(wait)
        wait = hosted.poll_s if news else min(wait * 1.5, hosted.poll_max_s)


# --- the loss history ------------------------------------------------------------------------------------


def parse_result_csv(text: str) -> list[dict[str, float]]:
    """The job's result file (``step,train_loss,train_accuracy,valid_loss,...``; some providers send it
    base64-encoded) as one dict per row, empty cells left out."""
    if not text.lstrip().startswith("step"):
        try:
            text = base64.b64decode(text, validate=False).decode()
        except (ValueError, UnicodeDecodeError):
            pass
    rows = []
    for row in csv.DictReader(io.StringIO(text.strip())):
        parsed = {}
        for k, v in row.items():
            if k and v not in (None, ""):
                try:
                    parsed[k.strip()] = float(v)
                except ValueError:
                    continue
        if "step" in parsed:
            rows.append(parsed)
    return rows


def loss_history(rows: Sequence[dict[str, float]], checkpoints: Sequence[dict[str, Any]],
                 n_epochs: float | None) -> tuple[dict[str, list[dict[str, float]]], str]:
    """Train loss per step; validation loss on the whole validation set at each checkpoint (epoch end)
    when the provider reports it, else the per-step validation-batch loss. Returns it and which it is."""
    last = max((int(r["step"]) for r in rows), default=0) or max((c["step"] for c in checkpoints), default=0)
    per_epoch = last / n_epochs if n_epochs and last else None

    def point(step: float, loss: float) -> dict[str, float]:
        return {"step": int(step), "epoch": round(step / per_epoch, 4) if per_epoch else 0.0, "loss": float(loss)}

    history: dict[str, list[dict[str, float]]] = {
        "train": [point(r["step"], r["train_loss"]) for r in rows if "train_loss" in r],
        "validation": [],
    }
    full = {int(r["step"]): r["full_valid_loss"] for r in rows if "full_valid_loss" in r}
    full.update({c["step"]: c["metrics"]["full_valid_loss"] for c in checkpoints
                 if (c.get("metrics") or {}).get("full_valid_loss") is not None})
    batch = [point(r["step"], r["valid_loss"]) for r in rows if "valid_loss" in r]
    if full:
        history["validation"] = [point(s, v) for s, v in sorted(full.items())]
        history["validation_batch"] = batch
        return history, "the whole validation set at each checkpoint"
    history["validation"] = batch
    return history, "one validation batch per logged step"


def _checkpoints(api: _Api, job_id: str) -> list[dict[str, Any]]:
    try:
        page = api.call("listing the job's checkpoints", api.client.fine_tuning.jobs.checkpoints.list, job_id,
                        limit=100)
    except TrainingError as exc:  # older servers have no checkpoints endpoint: the result file suffices
        log.warning("%s; the loss history comes from the result file alone", exc)
        return []
    out = []
    for c in page.data:
        metrics = c.metrics.model_dump(exclude_none=True) if getattr(c, "metrics", None) is not None else {}
        out.append({"id": c.id, "step": int(c.step_number), "model": c.fine_tuned_model_checkpoint,
                    "metrics": metrics})
    return sorted(out, key=lambda c: c["step"])


def _result_csv(api: _Api, job) -> str:
    files = list(getattr(job, "result_files", None) or [])
    if not files:
        log.warning("job %s has no result file: no per-step loss history", job.id)
        return ""
    response = api.call("downloading the result file", api.client.files.content, files[0])
    return response.text


# --- the stage ----------------------------------------------------------------------------------------------


def finetune_hosted(spec: ExperimentSpec, arm: ArmSpec | str, data_dir: str | Path, out_dir: str | Path, *,
                    client=None, sleep: Callable[[float], None] = time.sleep) -> TrainResult:
    """Fine-tune hosted ``arm`` on ``data_dir``'s train split (validation split for validation loss) and
    write ``training.json``; a TrainingError with the API's message if the job cannot run or does not
    succeed. ``client`` (an ``openai.OpenAI``) and ``sleep`` are for tests."""
    arm = spec.arm(arm) if isinstance(arm, str) else arm
    if arm.hosted is None:
        raise TrainingError(f"arm {arm.name}: not a hosted arm (kind {arm.kind})")
    out = Path(out_dir)
    (out / HOSTED_DIR).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    files, estimate = _training_files(spec, arm, data_dir, out)
    key = job_key(spec, arm, files)
    location = state_location(spec, arm, key)
    api = _Api(client or api_client(spec, arm), arm.name, arm.hosted.base_url)
    job = _start_or_attach(spec, arm, api, files, estimate, key, location, sleep)
    job = follow_job(api, job, arm.hosted, sleep)
    events = [e.model_dump(mode="json") for e in api.call(  # every page, oldest last
        "listing the job's events", lambda: list(api.client.fine_tuning.jobs.list_events(job.id, limit=100)))]
    write_jsonl(out / HOSTED_DIR / "events.jsonl", list(reversed(events)))
    _check_succeeded(arm, job, location)
    return _record(arm, api, job, estimate, len(events), out, started)


def _training_files(spec: ExperimentSpec, arm: ArmSpec, data_dir: str | Path, out: Path) -> tuple[dict, dict]:
    """The train and validation splits as chat JSONL (kept in ``hosted/``), and the cost estimate."""
    hosted = arm.hosted
    lines = {split: [chat_example(r, spec.data.template, hosted.system_prompt) for r in read_split(data_dir, split)]
             for split in ("train", "validation")}
    files = {}
    for split, rows in lines.items():
        files[split] = write_jsonl(out / HOSTED_DIR / f"{split}.jsonl", rows).read_bytes()
    estimate = estimate_cost(lines["train"], hosted)
    log.info("arm %s: about %s trained tokens (%s per epoch x %s epochs%s) at $%g per 1M: about $%.2f "
             "(limit $%.2f)", arm.name, f"{estimate['trained_tokens']:,}", f"{estimate['tokens_per_epoch']:,}",
             estimate["epochs"], ", auto estimated" if hosted.epochs == "auto" else "",
             hosted.usd_per_1m_training_tokens, estimate["cost_usd"], hosted.max_cost_usd)
    return files, estimate


def _start_or_attach(spec: ExperimentSpec, arm: ArmSpec, api: _Api, files: dict, estimate: dict, key: str,
                     location: str, sleep: Callable[[float], None]):
    """The job this key created before (its saved id, else found by its metadata), or a new one: the files
    uploaded and the job created within ``max_cost_usd``, its id saved before anything else can fail."""
    hosted = arm.hosted
    state = read_state(location)
    if state.get("job_id"):
        job = api.call("checking the job", api.client.fine_tuning.jobs.retrieve, state["job_id"])
        log.info("arm %s: attaching to job %s (%s), created before (%s)", arm.name, job.id, job.status, location)
        return job
    job = _find_job(api, key)
    if job is not None:
        log.info("arm %s: attaching to job %s (%s), found by its key", arm.name, job.id, job.status)
        write_state(location, {**state, "key": key, "job_id": job.id})
        return job
    if estimate["cost_usd"] > hosted.max_cost_usd:
        raise TrainingError(
            f"arm {arm.name}: the estimated cost ${estimate['cost_usd']:.2f} ({estimate['trained_tokens']:,} "
            f"trained tokens) is above arms[{spec.arms.index(arm)}].hosted.max_cost_usd (${hosted.max_cost_usd:.2f}); "
            "raise it to start this job, or train on fewer rows or epochs"
        )
    state = {"key": key, "experiment": spec.name, "arm": arm.name, "estimate": estimate}
    for split in ("train", "validation"):
        state[f"{split}_file"] = _upload(api, f"{spec.name}-{arm.name}-{split}.jsonl", files[split], hosted, sleep)
        write_state(location, state)
    extra = {"suffix": hosted.suffix} if hosted.suffix else {}
    job = api.call(
        "creating the fine-tuning job", api.client.fine_tuning.jobs.create, model=arm.model,
        training_file=state["train_file"], validation_file=state["validation_file"], seed=spec.training_seed(arm),
        method={"type": "supervised", "supervised": {"hyperparameters": _hyperparameters(hosted)}},
        metadata={"bakeoff_key": key, "bakeoff_experiment": spec.name, "bakeoff_arm": arm.name}, **extra,
        # the same key on every attempt: a server that honours it never creates a second job when a
        # create whose reply was lost is retried
        extra_headers={"Idempotency-Key": f"bakeoff-{key}"},
    )
    state["job_id"] = job.id
    write_state(location, state)  # before anything else can fail: a rerun attaches to this job
    log.info("arm %s: created job %s on %s (state in %s)", arm.name, job.id, arm.model, location)
    return job


def _check_succeeded(arm: ArmSpec, job, location: str) -> None:
    if job.status != "succeeded":
        error = getattr(job, "error", None)
        message = getattr(error, "message", None) or "no message given"
        code = getattr(error, "code", None)
        raise TrainingError(f"arm {arm.name}: fine-tuning job {job.id} {job.status}: {message}"
                            + (f" ({code})" if code else "")
                            + ("; to start a new job, change the spec or remove " + location
                               if job.status in ("failed", "cancelled") else ""))
    if not job.fine_tuned_model:
        raise TrainingError(f"arm {arm.name}: job {job.id} succeeded without a fine-tuned model id")


def _record(arm: ArmSpec, api: _Api, job, estimate: dict, events: int, out: Path, started: float) -> TrainResult:
    """The job's loss history, tokens, cost and time as ``training.json`` (with a ``hosted`` section)."""
    hosted = arm.hosted
    csv_text = _result_csv(api, job)
    (out / HOSTED_DIR / "result.csv").write_text(csv_text)
    checkpoints = _checkpoints(api, job.id)
    resolved = _resolved(job)
    epochs = resolved.get("n_epochs")
    epochs = float(epochs) if isinstance(epochs, int | float) else float(estimate["epochs"])
    history, validation_is = loss_history(parse_result_csv(csv_text), checkpoints, epochs)
    steps = max([p["step"] for p in history["train"]] + [c["step"] for c in checkpoints] + [0])
    best = min(history["validation"], key=lambda p: p["loss"]) if history["validation"] else None
    tokens = int(job.trained_tokens or 0)
    seconds = float(job.finished_at - job.created_at) if job.finished_at and job.created_at \
        else time.perf_counter() - started
    price = hosted.usd_per_1m_training_tokens
    result = TrainResult(
        arm=arm.name, model=arm.model, method="hosted", seconds=round(seconds, 3), steps=int(steps), epochs=epochs,
        train_tokens=tokens, tokens_per_second=round(tokens / seconds, 2) if seconds > 0 else 0.0,
        device="hosted", gpu_type=None, gpu_count=0, gpu_hours=None, cost_usd=round(tokens / 1e6 * price, 6),
        trainable_params=None, total_params=None,
        final_train_loss=history["train"][-1]["loss"] if history["train"] else None,
        final_validation_loss=history["validation"][-1]["loss"] if history["validation"] else None,
        loss_history=history,
        hyperparameters={"hosted": hosted.model_dump(mode="json", exclude={"api_key_secret"}), "resolved": resolved},
        best_step=int(best["step"]) if best else None, best_validation_loss=best["loss"] if best else None,
        artifact="hosted-model",
    )
    write_training(out, {**result.to_dict(), "hosted": {
        "provider": arm.kind, "base_url": hosted.base_url, "job_id": job.id, "fine_tuned_model": job.fine_tuned_model,
        "status": job.status, "trained_tokens": tokens, "usd_per_1m_training_tokens": price,
        "estimate": estimate, "validation_loss": validation_is, "checkpoints": checkpoints, "events": events,
        "training_file": job.training_file, "validation_file": job.validation_file,
        "stage_seconds": round(time.perf_counter() - started, 3),
    }})
    log.info("arm %s: job %s succeeded: %s, %s trained tokens, $%.2f, %.0f s", arm.name, job.id,
             job.fine_tuned_model, f"{tokens:,}", result.cost_usd, seconds)
    return result


__all__ = ["auto_epochs", "chat_example", "estimate_cost", "estimate_tokens", "finetune_hosted", "follow_job",
           "job_key", "loss_history", "parse_result_csv", "state_location"]

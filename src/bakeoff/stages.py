"""One place that runs a stage from a spec: the KFP components (``components/``) and the CLI's stage
commands both call these, so a stage is unpacked from the spec the same way wherever it runs, and the
preflight (the judge's endpoint, checked before paid work) happens here once.

Each stage package is imported inside its function: the prepare and report images load this module
without the training libraries.

Under the local runner (``bakeoff run``, which sets ``ERROR_FILE_ENV`` for each task) a typed error ends
the stage with its one line and exit status instead of a traceback, and is written to that file as JSON
(``type``, ``message``, and ``saved`` for a training stopped with its checkpoint), for the runner's last line.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bakeoff import endpoints
from bakeoff.artifacts import TrainResult
from bakeoff.errors import BakeoffError, EvaluationError, Preempted, SpecError, exit_code
from bakeoff.spec import EvaluationSpec, ExperimentSpec

log = logging.getLogger(__name__)

Paths = Sequence[str | Path]
ERROR_FILE_ENV = "BAKEOFF_ERROR_FILE"
Stage = TypeVar("Stage", bound=Callable[..., Any])


def reported(stage: Stage) -> Stage:
    """``stage`` as the local runner's tasks run it: with ``ERROR_FILE_ENV`` set, a typed error is written
    there and ends the process with its exit status (1, or 2 for an invalid spec) and one line, no traceback."""

    @functools.wraps(stage)
    def run(*args, **kwargs):
        error_file = os.environ.get(ERROR_FILE_ENV)
        if not error_file:
            return stage(*args, **kwargs)
        try:
            return stage(*args, **kwargs)
        except BakeoffError as exc:
            record = {"type": type(exc).__name__, "message": str(exc)}
            if getattr(exc, "saved", None):
                record["saved"] = exc.saved
            Path(error_file).write_text(json.dumps(record))
            if isinstance(exc, Preempted):  # stopped as asked, with what it saved: not an error of the stage
                print(f"stopped: {exc}", file=sys.stderr)
                raise SystemExit(1) from None
            raise SystemExit(exit_code(exc)) from None

    return run  # type: ignore[return-value]


def preflight(evaluation: EvaluationSpec) -> None:
    """Fail before any paid work (training, generation) when the judge cannot be used: no API key for a
    remote endpoint, or an endpoint that does not answer after its retries."""
    judge = evaluation.judge
    if "judge" in evaluation.metrics and judge is not None:
        endpoints.check_reachable(judge, "evaluation.judge", error=EvaluationError)


@reported
def run_prepare(spec: ExperimentSpec, out: str | Path):
    """The prepare stage into ``out``: the splits and stats.json (a ``PrepareResult``)."""
    from bakeoff.data.prepare import prepare_for_arms

    preflight(spec.evaluation)  # a judge that cannot be reached fails now, before any GPU-hour is spent
    # hosted arms have no tokenizer here: max_instruction_tokens counts with the local arms' (else words)
    return prepare_for_arms(spec.data, [arm.model for arm in spec.arms if not arm.is_hosted], spec.seed, out)


@reported
def run_finetune(spec: ExperimentSpec, arm: str, data: str | Path, out: str | Path,
                 processes: int | None = None) -> TrainResult:
    """One arm's finetune stage (``data`` and ``out`` may be ``s3://`` prefixes): hosted, on a Trainer job,
    under torchrun or in this process, as the arm and the machine say."""
    from bakeoff.train.launch import finetune_arm

    return finetune_arm(spec.for_run(arm), arm, data, out, processes=processes)


@reported
def run_generate(spec: ExperimentSpec, arm: str, data: str | Path, model: str | Path | None,
                 out: str | Path) -> dict[str, Any]:
    """One arm's generate stage: every variant of the spec (only the base variants without ``model``)."""
    from bakeoff.generate import generate

    preflight(spec.evaluation)  # and again before generating: the endpoint may have gone since
    spec = spec.for_run(arm)  # a replicate: its own arm and seed, the fine-tuned variant only
    arm_spec = spec.arm(arm)
    variants = spec.variants if model is not None else [v for v in spec.variants if v != "fine-tuned"]
    return generate(arm_spec, spec.generation, variants, data, model, out, template=spec.data.template,
                    seed=spec.seed, method=spec.arm_method(arm_spec), precision=spec.training.precision)


@reported
def run_evaluate(spec: ExperimentSpec, arm: str, generations: str | Path, out: str | Path) -> dict[str, Any]:
    """One arm's evaluate stage: every metric of the spec on its generations."""
    from bakeoff.evaluate import evaluate

    spec.run_of(arm)  # a spec error naming the arms and replicates, for a misspelt one
    return evaluate(arm, spec.evaluation, generations, out, seed=spec.seed)


@reported
def run_pairwise(spec: ExperimentSpec, scores: Paths, out: str | Path) -> dict[str, Any]:
    """The pairwise judge (``evaluation.pairwise``): each chosen pair's answers side by side, in both orders,
    on every test sample both answered; the arms' first replicates (their own names) are compared. Writes
    ``pairwise.json`` in ``out`` (``{"configured": false}`` when the spec has no pairwise judge)."""
    from bakeoff.artifacts import read_evaluation, write_pairwise
    from bakeoff.evaluate.pairwise import run_pairwise as judge_pairs
    from bakeoff.spec import contestant, pairwise_endpoint, pairwise_pairs

    settings = pairwise_endpoint(spec.evaluation)
    if settings is None:
        write_pairwise(out, {"configured": False})
        return {"configured": False}
    arms = {arm.name for arm in spec.arms}
    answers: dict[str, dict[str, dict]] = {}
    for folder in scores:
        for sample in read_evaluation(folder)[1]:
            if sample["arm"] not in arms:  # a replicate's answers: the pairwise judge compares first replicates
                continue
            question = "\n\n".join(part for part in (sample.get("instruction"), sample.get("input")) if part)
            for variant, answer in (sample.get("answers") or {}).items():
                answers.setdefault(contestant(sample["arm"], variant), {})[sample["id"]] = {
                    "prompt": question, "answer": answer, "reference": sample.get("reference")}
    pairs = pairwise_pairs(spec.evaluation, [arm.name for arm in spec.arms])
    result = judge_pairs(pairs, answers, settings)
    doc = {"configured": True, "pairs": [list(p) for p in pairs], **result}
    write_pairwise(out, doc)
    return doc


@reported
def run_report(spec: ExperimentSpec, data: str | Path, models: Paths, scores: Paths,
               out: str | Path, pairwise: str | Path | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """The report stage: results.json, report.html and report.md in ``out`` from every arm's artifacts (and
    the pairwise judge's, when given)."""
    from bakeoff.report import report

    return report(spec, data, list(models), list(scores), out, pairwise=pairwise)


def run_tokens(spec: ExperimentSpec, arm: str, data: str | Path, n: int = 3) -> list[dict[str, Any]]:
    """For the first ``n`` test examples of ``data`` (a prepare output): the ids ``arm`` trains on with
    their labels, the ids every generation backend feeds (transformers and vLLM get these; a completions
    server derives the same from the text with its BOS; a chat server from the messages), and the checks:
    one BOS in each, and the generation input equal to the training input up to the completion."""
    from bakeoff.artifacts import read_split
    from bakeoff.generate.generate import prompt_ids, variant_prompts
    from bakeoff.models import load_tokenizer
    from bakeoff.train.tokens import leading_bos, training_view

    arm_spec = spec.arm(arm)
    if arm_spec.is_hosted:
        raise SpecError(f"arms: {arm} is a hosted arm: its provider tokenizes; pick a local arm")
    tokenizer = load_tokenizer(arm_spec.model, trust_remote_code=arm_spec.trust_remote_code)
    # TRL truncates rows to max_length, except padding-free (no max_length) and packing (it chunks instead)
    max_length = None if spec.training.batching in ("padding-free", "packing") else spec.training.max_seq_length
    test = read_split(data, "test")[:n]
    out = []
    for ex, prompt in zip(test, variant_prompts(spec.data.template, "fine-tuned", test, ()), strict=True):
        train = training_view(tokenizer, ex, max_length)
        generate = prompt_ids(tokenizer, prompt)
        start = train["prompt_length"]
        out.append({
            "id": ex["id"], "train_input_ids": train["input_ids"], "train_labels": train["labels"],
            "generate_input_ids": generate, "truncated": train["truncated"],
            "train_prompt_text": tokenizer.decode(train["input_ids"][:start]),
            "train_completion_text": tokenizer.decode(train["input_ids"][start:]),
            "checks": {"train_bos": leading_bos(tokenizer, train["input_ids"]),
                       "generate_bos": leading_bos(tokenizer, generate),
                       "generate_is_train_prompt": generate == train["input_ids"][:start]},
        })
    return out


def run_report_from_results(results_file: str | Path, out: str | Path) -> dict[str, Path]:
    """The pages again from a ``results.json`` alone (any schema version up to the current one: the pages
    leave out the parts an older file lacks). An unreadable, foreign or malformed file is a BakeoffError."""
    import json

    from bakeoff.errors import BakeoffError
    from bakeoff.report import write_report
    from bakeoff.report.results import SCHEMA_VERSION

    try:
        results = json.loads(Path(results_file).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        why = getattr(exc, "strerror", None) or exc
        raise BakeoffError(f"{results_file}: cannot read results JSON: {why}") from exc
    version = results.get("schema_version") if isinstance(results, dict) else None
    if version not in range(1, SCHEMA_VERSION + 1):
        found = (f"a JSON {type(results).__name__}" if not isinstance(results, dict) else
                 f"schema_version {version!r}" if "schema_version" in results else "no schema_version")
        raise BakeoffError(f"{results_file}: not a bakeoff results.json of schema version 1 to {SCHEMA_VERSION} "
                           f"(found {found}); it is the report stage's results.json (runs/NAME/results.json)")
    try:
        return write_report(results, out)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:  # a key missing or of another type
        raise BakeoffError(f"{results_file}: malformed results.json ({type(exc).__name__}: {exc}); see "
                           "docs/results-schema.md") from exc


__all__ = ["ERROR_FILE_ENV", "preflight", "reported", "run_evaluate", "run_finetune", "run_generate",
           "run_pairwise", "run_prepare", "run_report", "run_report_from_results", "run_tokens"]

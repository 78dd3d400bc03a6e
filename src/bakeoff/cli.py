"""The ``bakeoff`` command: validate, run and compile a spec, or run one stage outside KFP.

Exit status: 0 on success, 2 on an invalid spec (one line per error, naming the key path),
1 on any other error bakeoff reports (bad data, unloadable model, unreachable endpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from bakeoff import __version__
from bakeoff.errors import SpecError, exit_code, log_to_stderr
from bakeoff.spec import ExperimentSpec, load_spec

log = logging.getLogger("bakeoff")
# Loggers quiet below WARNING unless -v: httpx (openai < 3), httpx2 (openai 3), httpcore, openai itself.
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "openai")


def _cmd_validate(args) -> int:
    from bakeoff.capacity.plan import fit_errors, plan_spec, render

    spec = load_spec(args.spec)
    print(plan(spec))
    plans = plan_spec(spec, getattr(args, "data", None))
    print("capacity (bakeoff plan SPEC for the notes; GB = 1e9 bytes per GPU):")
    print(render(plans, notes=False))
    errors = fit_errors(spec, plans)
    if errors:
        raise SpecError(errors, source=args.spec)
    return 0


def _cmd_plan(args) -> int:
    from bakeoff.capacity.plan import plan_spec, render

    plans = plan_spec(load_spec(args.spec), args.data)
    print(json.dumps([p.to_dict() for p in plans], indent=2) if args.json else render(plans))
    return 0


def plan(spec: ExperimentSpec) -> str:
    """A human-readable plan: arms x variants x metrics, data and training in one screen."""
    lines = [f"experiment {spec.name} (seed {spec.seed})"]
    sp = spec.data.split
    template = spec.data.template if isinstance(spec.data.template, str) else "user"
    lines.append(f"data: {', '.join(s.uri for s in spec.data.sources)} | template {template} | split "
                 f"{sp.train}/{sp.validation}/{sp.test}")
    t = spec.training
    steps = f"max_steps {t.max_steps}" if t.max_steps else f"epochs {t.epochs:g}"
    lines.append(
        f"training: {steps}, batch {t.batch_size}x{t.gradient_accumulation_steps}, lr {t.learning_rate:g}, "
        f"warmup {t.warmup_ratio:g}, max_seq_length {t.max_seq_length}, precision {t.precision}"
    )
    lines.append(f"arms ({len(spec.arms)}):")
    for arm in spec.arms:
        if arm.is_hosted:
            h = arm.hosted
            lines.append(f"  - {arm.name}: {arm.model} | hosted fine-tuning ({arm.kind} at {h.base_url}), epochs "
                         f"{h.epochs}, ${h.usd_per_1m_training_tokens:g}/1M trained tokens, at most "
                         f"${h.max_cost_usd:g}")
            continue
        p = spec.arm_peft(arm)
        lines.append(f"  - {arm.name}: {arm.model} | {p.method} r={p.r} alpha={p.alpha:g} dropout={p.dropout:g}")
    lines.append(f"variants: {', '.join(spec.variants)}")
    judge = spec.evaluation.judge
    notes = [("judge (not configured: no evaluation.judge)" if judge is None else
              f"judge ({judge.model} at {judge.base_url})") if m == "judge" else m for m in spec.evaluation.metrics]
    lines.append(f"metrics: {', '.join(notes)}")
    runs = spec.runs()
    n = len(spec.arms) * len(spec.variants) + (len(runs) - len(spec.arms))  # replicates: fine-tuned only
    replicates = f" ({len(runs) - len(spec.arms)} of them replicates with other training seeds)" \
        if len(runs) > len(spec.arms) else ""
    lines.append(
        f"plan: {len(runs)} fine-tuning runs{replicates}, {n} generation runs of {sp.test} test samples, "
        f"{n * len(spec.evaluation.metrics)} run x variant x metric cells"
    )
    return "\n".join(lines)


def _cluster_spec(path: str) -> ExperimentSpec:
    """The spec, with the GPU pool defaults of the cluster it is submitted to (``BAKEOFF_GPU_POOL``)."""
    from bakeoff.cluster import with_gpu_pool

    return with_gpu_pool(load_spec(path), os.environ.get("BAKEOFF_GPU_POOL"))


def _cmd_compile(args) -> int:
    from bakeoff_pipelines import compile_pipeline

    spec = _cluster_spec(args.spec)
    path = compile_pipeline(spec, args.output)
    print(f"wrote {path}")
    return 0


def _cmd_run(args) -> int:
    host = args.host or os.environ.get("KFP_HOST")
    if host:
        return _submit(_cluster_spec(args.spec), host, args)
    spec = load_spec(args.spec)
    from bakeoff_pipelines import run_local
    from bakeoff_pipelines.bakeoff_pipeline import RunInterrupted

    out = Path(args.out or Path("runs") / spec.name)
    try:
        paths = run_local(spec, out)  # a failed task raises a BakeoffError naming it and its error
    except RunInterrupted as exc:  # SIGINT or SIGTERM: every task stopped, trainings saved a checkpoint
        rerun = " ".join(["bakeoff", "run", args.spec, *(["--out", args.out] if args.out else [])])
        print(exc.summary(rerun), file=sys.stderr)
        return 130
    print(f"report: {paths['html']}")
    print(f"markdown: {paths['markdown']}")
    print(f"results: {paths['results']}")
    return 0


def _submit(spec, host: str, args) -> int:
    from bakeoff_pipelines.submit import fetch_report, make_client, submit, wait

    namespace = args.namespace or os.environ.get("KFP_NAMESPACE")
    client = make_client(host, namespace=namespace)
    run = submit(spec, host, args.experiment, namespace=namespace, client=client,
                 service_account=args.service_account or os.environ.get("KFP_SERVICE_ACCOUNT"),
                 run_name=args.run_name, pipeline_root=args.pipeline_root)
    print(f"submitted run {run.run_id} to {host} (experiment {run.experiment}, run {run.run_name})")
    print(f"run: {run.url}")
    if not (args.wait or args.fetch_report):
        return 0
    state = wait(client, run, timeout_s=args.timeout)
    print(f"run {run.run_id}: {state}")
    if args.fetch_report:
        paths = fetch_report(run, args.fetch_report, pipeline_root=args.pipeline_root)
        print(f"report: {paths['html']}")
        print(f"markdown: {paths['markdown']}")
        print(f"results: {paths['results']}")
    return 0


def _cmd_prepare(args) -> int:
    from bakeoff.stages import run_prepare

    result = run_prepare(load_spec(args.spec), args.out)
    print(json.dumps(result.rows))
    return 0


def _cmd_finetune(args) -> int:
    from bakeoff.stages import run_finetune

    result = run_finetune(load_spec(args.spec), args.arm, args.data, args.out, processes=args.processes)
    print(json.dumps(result.metrics()))
    return 0


def _cmd_generate(args) -> int:
    from bakeoff.stages import run_generate

    summary = run_generate(load_spec(args.spec), args.arm, args.data, args.model, args.out)
    print(json.dumps(summary["seconds"]))
    return 0


def _cmd_evaluate(args) -> int:
    from bakeoff.stages import run_evaluate

    result = run_evaluate(load_spec(args.spec), args.arm, args.generations, args.out)
    print(json.dumps(result["metrics"], indent=2))
    return 0


def _cmd_report(args) -> int:
    from bakeoff.stages import run_report_from_results

    paths = run_report_from_results(args.results, args.out)
    print(f"report: {paths['html']}")
    return 0


def _cmd_tokens(args) -> int:
    import tempfile

    from bakeoff.stages import run_tokens

    spec = load_spec(args.spec)
    with tempfile.TemporaryDirectory(prefix="bakeoff-tokens-") as tmp:
        data = args.data
        if data is None:  # prepare the spec's data here (no judge preflight: nothing is paid for)
            from bakeoff.data.prepare import prepare_for_arms

            prepare_for_arms(spec.data, [a.model for a in spec.arms if not a.is_hosted], spec.seed, tmp)
            data = tmp
        views = run_tokens(spec, args.arm, data, n=args.n)
    if args.json:
        print(json.dumps(views, indent=2))
    else:
        print(_tokens_text(views))
    ok = all(v["checks"]["train_bos"] <= 1 and v["checks"]["generate_bos"] == v["checks"]["train_bos"]
             and v["checks"]["generate_is_train_prompt"] for v in views)
    return 0 if ok else 1


def _tokens_text(views: list[dict]) -> str:
    lines = []
    for i, v in enumerate(views, 1):
        trained = sum(1 for t in v["train_labels"] if t != -100)
        c = v["checks"]
        lines += [
            f"example {i} of {len(views)}: {v['id']} ({len(v['train_input_ids'])} training tokens, {trained} with "
            f"loss{', truncated' if v['truncated'] else ''})",
            f"  train ids      {v['train_input_ids']}",
            f"  train labels   {v['train_labels']}",
            f"  prompt (no loss)   {v['train_prompt_text']!r}",
            f"  completion (loss)  {v['train_completion_text']!r}",
            f"  generate ids   {v['generate_input_ids']}",
            "                 (transformers and vLLM are fed these; a completions server derives them from the text, "
            "a chat server from the messages)",
            f"  checks         BOS at the start of training: {c['train_bos']}, of generation: {c['generate_bos']}; "
            "generation input = training input up to the completion: "
            f"{'yes' if c['generate_is_train_prompt'] else 'NO'}",
        ]
    return "\n".join(lines)


def _cmd_render_job(args) -> int:
    import yaml

    from bakeoff.train.trainer_job import build_manifest

    spec = _cluster_spec(args.spec)
    arm = spec.arm(args.arm)
    if arm.is_hosted or arm.nodes <= 1:
        raise SpecError(f"arms[{spec.arms.index(arm)}].nodes: arm {arm.name} trains "
                        f"{'on the provider' if arm.is_hosted else 'in its finetune pod'}: only an arm with "
                        "nodes > 1 gets a Kubeflow Trainer job")
    namespace = args.namespace or spec.resources.trainer.namespace or "default"
    text = yaml.safe_dump(build_manifest(spec, arm, namespace), sort_keys=False)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def _cmd_synth_data(args) -> int:
    from bakeoff.errors import StorageError
    from bakeoff.fixtures.smoke import write_smoke_dataset
    from bakeoff.fixtures.sql import write_sql_fixture
    from bakeoff.fixtures.viggo import write_viggo_fixture

    write = {"smoke": write_smoke_dataset, "sql": write_sql_fixture, "viggo": write_viggo_fixture}[args.kind]
    n = args.n or {"smoke": 1000, "sql": 400, "viggo": 400}[args.kind]
    target = Path(args.output) / "sql.jsonl" if args.kind == "sql" else Path(args.output)
    if target.is_dir() or (args.kind == "sql" and Path(args.output).is_file()):
        raise StorageError(f"{args.output}: is a {'file' if args.kind == 'sql' else 'folder'}; synth-data --kind "
                           f"{args.kind} writes {'a folder' if args.kind == 'sql' else 'a .jsonl file'}")
    if target.exists() and not args.force:
        raise StorageError(f"{target}: exists; pass --force to overwrite it")
    existed = target.exists()
    path = write(args.output, n=n, seed=args.seed)
    print(f"overwrote {path} with {n} {args.kind} records" if existed else f"wrote {n} {args.kind} records to {path}")
    return 0


def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _folder(text: str) -> str:
    """An argparse type: an output folder (created if missing) or an s3:// prefix; an existing file is refused."""
    if "://" not in text and Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder (it is created if missing)")
    return text


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error in one line (the usage itself is one --help away); exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bakeoff", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"bakeoff {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (with each HTTP request)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("validate", help="check a spec, print the plan and refuse an arm that would not fit its GPU")
    s.add_argument("spec")
    s.add_argument("--data", help="a prepared data folder (bakeoff prepare --out): its token counts for the plan")
    s.set_defaults(func=_cmd_validate)

    s = sub.add_parser("plan", help="per arm and GPU stage: parameters, peak memory by part, fit, tokens, GPU "
                       "hours and cost")
    s.add_argument("spec")
    s.add_argument("--data", help="a prepared data folder (bakeoff prepare --out): its token counts")
    s.add_argument("--json", action="store_true", help="one JSON object per arm and stage")
    s.set_defaults(func=_cmd_plan)

    s = sub.add_parser("run", help="run the pipeline locally (KFP local runner) or submit it with --host")
    s.add_argument("spec")
    s.add_argument("--out", type=_folder, help="output folder (default runs/<experiment name>)")
    s.add_argument("--host", help="Kubeflow Pipelines endpoint to submit to (default $KFP_HOST); auth: $KFP_TOKEN "
                   "(a bearer token) or, in a cluster, the mounted pipelines service account token")
    s.add_argument("--experiment", help="KFP experiment (default bakeoff-<name>)")
    s.add_argument("--run-name", help="KFP run name (default <name>-<timestamp>)")
    s.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs; default $KFP_NAMESPACE)")
    s.add_argument("--service-account", help="the run's pods' service account (default $KFP_SERVICE_ACCOUNT; the "
                   "Helm chart's can create Trainer jobs)")
    s.add_argument("--pipeline-root", help="artifact root of the run (default: the KFP installation's)")
    s.add_argument("--wait", action="store_true", help="wait for the run to end; exit 1 unless it succeeded")
    s.add_argument("--fetch-report", metavar="DIR", help="wait, then download report.html, report.md and "
                   "results.json from the artifact store (S3_ENDPOINT and credentials) into DIR")
    s.add_argument("--timeout", type=int, default=86400, help="seconds to wait (default a day)")
    s.set_defaults(func=_cmd_run)
    _stage_commands(sub)
    for s in sub.choices.values():  # also after the command (bakeoff validate x.yaml --debug); unset keeps the above
        s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
        s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    return p


def _stage_commands(sub) -> None:
    """The commands that run one stage (or show one stage's view) outside KFP."""
    s = sub.add_parser("compile", help="write the KFP pipeline YAML for a spec")
    s.add_argument("spec")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_cmd_compile)

    s = sub.add_parser("prepare", help="run the prepare stage")
    s.add_argument("spec")
    s.add_argument("--out", required=True, type=_folder)
    s.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("finetune", help="fine-tune one arm")
    s.add_argument("spec", help="a spec file, or env:NAME to read it from an environment variable")
    s.add_argument("--arm", required=True)
    s.add_argument("--data", required=True, help="the prepare stage's output folder (or an s3:// prefix)")
    s.add_argument("--out", required=True, type=_folder, help="a folder, or an s3:// prefix (rank 0 uploads, "
                   "COMPLETE last)")
    s.add_argument("--processes", type=_positive_int, help="data-parallel processes (default: one per GPU the spec "
                   "asks for, when visible); more than 1 relaunches under torchrun")
    s.set_defaults(func=_cmd_finetune)

    s = sub.add_parser("generate", help="generate answers on the test split for one arm")
    s.add_argument("spec")
    s.add_argument("--arm", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--model", help="the finetune stage's output folder (omit for base variants only)")
    s.add_argument("--out", required=True, type=_folder)
    s.set_defaults(func=_cmd_generate)

    s = sub.add_parser("evaluate", help="score one arm's generations")
    s.add_argument("spec")
    s.add_argument("--arm", required=True)
    s.add_argument("--generations", required=True)
    s.add_argument("--out", required=True, type=_folder)
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("report", help="render report.html and report.md from a results.json")
    s.add_argument("results")
    s.add_argument("--out", required=True, type=_folder)
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("render-job", help="print the Kubeflow Trainer job (TrainJob or PyTorchJob) the finetune "
                       "launcher would create for an arm with several nodes, for review or kubectl --dry-run=server")
    s.add_argument("spec")
    s.add_argument("--arm", required=True)
    s.add_argument("--namespace", help="default: resources.trainer.namespace, else default")
    s.add_argument("-o", "--output", help="a file (default: standard output)")
    s.set_defaults(func=_cmd_render_job)

    s = sub.add_parser("tokens", help="show the exact token ids an arm trains on (with the loss mask) and "
                       "each generation backend feeds, for the first test examples")
    s.add_argument("spec")
    s.add_argument("--arm", required=True)
    s.add_argument("--n", type=_positive_int, default=3, help="test examples (default 3)")
    s.add_argument("--data", help="a prepare output folder (default: prepare the spec's data here)")
    s.add_argument("--json", action="store_true", help="one object per example: train_input_ids, train_labels, "
                   "generate_input_ids, checks")
    s.set_defaults(func=_cmd_tokens)

    s = sub.add_parser("synth-data", help="write the project's own offline data sets (smoke, sql, viggo)")
    s.add_argument("output", help="a .jsonl file (smoke, viggo) or a folder (sql: sql.jsonl + databases/)")
    s.add_argument("--kind", choices=("smoke", "sql", "viggo"), default="smoke")
    s.add_argument("--n", type=_positive_int, help="records (default 1000 for smoke, 400 otherwise)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="overwrite an existing file")
    s.set_defaults(func=_cmd_synth_data)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bakeoff`` console script."""
    args = build_parser().parse_args(argv)
    log_to_stderr(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:  # the HTTP clients of openai log a line per request (judge, RAGAS, hosted arms) otherwise
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except BrokenPipeError:  # `bakeoff plan x.yaml | head`: the reader left; nothing to report
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # the interpreter flushes stdout once more at exit
        return 141
    except (Exception, KeyboardInterrupt) as exc:  # one line, no traceback (--debug shows it): errors.exit_code
        return exit_code(exc, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())

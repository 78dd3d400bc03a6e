"""The ``bakeoff`` command: validate, run and compile a spec, or run one stage outside KFP.

Exit status: 0 on success, 2 on an invalid spec (one line per error, naming the key path),
1 on any other error bakeoff reports (bad data, unloadable model, unreachable endpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from bakeoff import __version__
from bakeoff.errors import BakeoffError, SpecError
from bakeoff.spec import load_spec

log = logging.getLogger("bakeoff")


def _cmd_validate(args) -> int:
    spec = load_spec(args.spec)
    print(spec.plan())
    return 0


def _cluster_spec(path: str):
    """The spec, with the GPU pool defaults of the cluster it is submitted to (``BAKEOFF_GPU_POOL``: a
    ``{stage: resources}`` YAML such as the Helm chart's ``bakeoff-gpu-pool`` ConfigMap) where it sets none."""
    import yaml

    from bakeoff.spec import apply_resource_defaults

    spec = load_spec(path)
    pool = os.environ.get("BAKEOFF_GPU_POOL")
    if not pool:
        return spec
    try:
        defaults = yaml.safe_load(Path(pool).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read the GPU pool defaults: {exc}", pool) from exc
    log.info("resources the spec leaves unset come from %s", pool)
    return apply_resource_defaults(spec, defaults, pool)


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

    out = Path(args.out or Path("runs") / spec.name)
    try:
        paths = run_local(spec, out)
    except RuntimeError as exc:  # kfp.local: a task failed; its own log above says why
        raise BakeoffError(f"pipeline failed: {exc} (the failing task's log is printed above)") from exc
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
    from bakeoff.data.prepare import prepare_for_arms

    spec = load_spec(args.spec)
    result = prepare_for_arms(spec.data, [arm.model for arm in spec.arms if not arm.is_hosted], spec.seed, args.out)
    print(json.dumps(result.rows))
    return 0


def _cmd_finetune(args) -> int:
    from bakeoff.train.launch import finetune_arm, finetune_remote

    spec = load_spec(args.spec)
    if args.data.startswith("s3://") or args.out.startswith("s3://"):
        result = finetune_remote(spec, args.arm, args.data, args.out, processes=args.processes)
    else:
        result = finetune_arm(spec, args.arm, args.data, args.out, processes=args.processes)
    # one report: the launcher's (its ranks stay quiet), or rank 0's under a torchrun started by hand
    if not os.environ.get("BAKEOFF_LAUNCHED") and os.environ.get("RANK", "0") == "0":
        print(json.dumps(result.metrics()))
    return 0


def _cmd_generate(args) -> int:
    from bakeoff.generate import generate

    spec = load_spec(args.spec)
    variants = spec.variants if args.model else [v for v in spec.variants if v != "fine-tuned"]
    summary = generate(spec.arm(args.arm), spec.generation, variants, args.data, args.model, args.out,
                       template=spec.data.template, seed=spec.seed)
    print(json.dumps(summary["seconds"]))
    return 0


def _cmd_evaluate(args) -> int:
    from bakeoff.evaluate import evaluate

    spec = load_spec(args.spec)
    result = evaluate(args.arm, spec.evaluation, args.generations, args.out, seed=spec.seed)
    print(json.dumps(result["metrics"], indent=2))
    return 0


def _cmd_report(args) -> int:
    from bakeoff.report import write_report

    try:
        results = json.loads(Path(args.results).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BakeoffError(f"{args.results}: cannot read results JSON: {exc}") from exc
    paths = write_report(results, args.out)
    print(f"report: {paths['html']}")
    return 0


def _cmd_synth_data(args) -> int:
    from bakeoff.data.fixtures import write_sql_fixture, write_viggo_fixture
    from bakeoff.data.synthetic import write_smoke_dataset

    write = {"smoke": write_smoke_dataset, "sql": write_sql_fixture, "viggo": write_viggo_fixture}[args.kind]
    n = args.n or {"smoke": 1000, "sql": 400, "viggo": 400}[args.kind]
    path = write(args.output, n=n, seed=args.seed)
    print(f"wrote {n} {args.kind} records to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bakeoff", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"bakeoff {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("validate", help="check a spec and print the plan")
    s.add_argument("spec")
    s.set_defaults(func=_cmd_validate)

    s = sub.add_parser("run", help="run the pipeline locally (KFP local runner) or submit it with --host")
    s.add_argument("spec")
    s.add_argument("--out", help="output folder (default runs/<experiment name>)")
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

    s = sub.add_parser("compile", help="write the KFP pipeline YAML for a spec")
    s.add_argument("spec")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_cmd_compile)

    s = sub.add_parser("prepare", help="run the prepare stage")
    s.add_argument("spec")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("finetune", help="fine-tune one arm")
    s.add_argument("spec", help="a spec file, or env:NAME to read it from an environment variable")
    s.add_argument("--arm", required=True)
    s.add_argument("--data", required=True, help="the prepare stage's output folder (or an s3:// prefix)")
    s.add_argument("--out", required=True, help="a folder, or an s3:// prefix (rank 0 uploads, COMPLETE last)")
    s.add_argument("--processes", type=int, help="data-parallel processes (default: one per GPU the spec asks "
                   "for, when visible); more than 1 relaunches under torchrun")
    s.set_defaults(func=_cmd_finetune)

    s = sub.add_parser("generate", help="generate answers on the test split for one arm")
    s.add_argument("spec")
    s.add_argument("--arm", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--model", help="the finetune stage's output folder (omit for base variants only)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_generate)

    s = sub.add_parser("evaluate", help="score one arm's generations")
    s.add_argument("spec")
    s.add_argument("--arm", required=True)
    s.add_argument("--generations", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("report", help="render report.html and report.md from a results.json")
    s.add_argument("results")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("synth-data", help="write the project's own offline data sets (smoke, sql, viggo)")
    s.add_argument("output", help="a .jsonl file (smoke, viggo) or a folder (sql: sql.jsonl + databases/)")
    s.add_argument("--kind", choices=("smoke", "sql", "viggo"), default="smoke")
    s.add_argument("--n", type=int, help="records (default 1000 for smoke, 400 otherwise)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_synth_data)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bakeoff`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per judge request otherwise
    try:
        return args.func(args)
    except SpecError as exc:
        where = f"{exc.source}: " if exc.source else ""
        for message in exc.messages:
            print(f"{where}{message}", file=sys.stderr)
        return 2
    except BakeoffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

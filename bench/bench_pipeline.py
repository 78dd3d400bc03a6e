# No `from __future__ import annotations`: KFP reads the component annotations at runtime.
"""Benchmark: the per-task overhead of a local pipeline run (KFP's subprocess runner).

Run: make bench   (or: python bench/bench_pipeline.py [--tasks N] [--repeats K])
A chain of N lightweight components that do no work runs through ``kfp.local`` as ``bakeoff run``
runs a spec; the wall time divided by N is what each stage pays before doing anything (a Python
process, the executor, artifact bookkeeping). The median of the repeats.
"""


import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kfp import dsl, local


@dsl.component(base_image="python:3.11")
def noop(x: int) -> int:
    """Does nothing but hand its input on."""
    return x + 1


def chain(tasks: int):
    @dsl.pipeline(name="bench-overhead")
    def overhead() -> int:
        task = noop(x=0)
        for _ in range(tasks - 1):
            task = noop(x=task.output)
        return task.output

    return overhead


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/pipeline.json")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    seconds = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as root:
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root, raise_on_error=True)
            started = time.perf_counter()
            result = chain(args.tasks)()
            seconds.append(time.perf_counter() - started)
        assert result.output == args.tasks
    median = statistics.median(seconds)
    results = {"tasks": args.tasks, "repeats": args.repeats, "pipeline_seconds": round(median, 3),
               "per_task_overhead_seconds": round(median / args.tasks, 3)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"pipeline_per_task_overhead_s={results['per_task_overhead_seconds']}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""Benchmark: the prepare stage on 100,000 generated rows (time, rows/s, peak memory vs one copy of the data).

Run: make bench   (or: python bench/bench_prepare.py [--rows N] [--repeats K])
Each figure is the median of the repeats. Memory is traced with tracemalloc in separate runs (it slows
Python down, so timed runs do without it). "One copy" is the memory of the prepared examples themselves;
"naive" is the same work with every source row read into a list first, as the first version did.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from importlib import metadata
from pathlib import Path

from bakeoff.data.prepare import extract_record, iter_source, prepare_data
from bakeoff.spec import DataSource, DataSpec, SplitSpec
from bakeoff.templates import get_template

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def write_rows(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` distinct alpaca rows of 10-60 words each (with some duplicates and empty outputs to drop)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            instruction = f"Task {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(10, 40)))
            output = "" if i % 97 == 0 else " ".join(rng.choices(WORDS, k=rng.randint(5, 20)))
            if i % 53 == 0 and i:
                instruction, output = f"Task {i - 1}: repeated", "same"
            fh.write(json.dumps({"instruction": instruction, "input": "", "output": output}) + "\n")
    return path


def spec_for(path: Path, n: int) -> DataSpec:
    return DataSpec(sources=[DataSource(uri=str(path))],
                    split=SplitSpec(train=int(n * 0.8), validation=int(n * 0.05), test=int(n * 0.05)))


def naive_examples(data: DataSpec) -> list[dict]:
    """The read path of the first version: every raw row in a list, then every example built from it."""
    template = get_template(data.template)
    rows = list(iter_source(data.sources[0]))
    examples = []
    for label, record in rows:
        instruction, input_text, output = extract_record(label, record)
        examples.append({"prompt": template.prompt(instruction, input_text), "completion": template.completion(output),
                         "instruction": instruction, "input": input_text, "reference": output, "source": label})
    return examples


def streamed_examples(data: DataSpec) -> list[dict]:
    template = get_template(data.template)
    examples = []
    for label, record in iter_source(data.sources[0]):
        instruction, input_text, output = extract_record(label, record)
        examples.append({"prompt": template.prompt(instruction, input_text), "completion": template.completion(output),
                         "instruction": instruction, "input": input_text, "reference": output, "source": label})
    return examples


def traced_peak(fn) -> tuple[int, object]:
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result


def retained(fn) -> int:
    """Bytes still allocated after ``fn`` returns, while its result is alive: one copy of the examples."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        current, _ = tracemalloc.get_traced_memory()
        del result
    finally:
        tracemalloc.stop()
    return current


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/prepare.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = write_rows(tmp / "rows.jsonl", args.rows)
        data = spec_for(src, args.rows)
        seconds = []
        for r in range(args.repeats):
            started = time.perf_counter()
            prepare_data(data, 0, tmp / f"out{r}")
            seconds.append(time.perf_counter() - started)
        one_copy = retained(lambda: streamed_examples(data))
        prepare_peak = statistics.median(traced_peak(lambda: prepare_data(data, 0, tmp / "traced"))[0]
                                         for _ in range(args.repeats))
        naive_peak = statistics.median(traced_peak(lambda: naive_examples(data))[0] for _ in range(args.repeats))
        read_peak = statistics.median(traced_peak(lambda: streamed_examples(data))[0] for _ in range(args.repeats))
    median = statistics.median(seconds)
    results = {
        "rows": args.rows,
        "repeats": args.repeats,
        "prepare_seconds": round(median, 3),
        "prepare_rows_per_second": round(args.rows / median),
        "one_copy_mb": round(one_copy / 2**20, 1),
        "prepare_peak_mb": round(prepare_peak / 2**20, 1),
        "prepare_peak_vs_one_copy": round(prepare_peak / one_copy, 2),
        "read_naive_peak_vs_streamed": round(naive_peak / read_peak, 2),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "bakeoff": metadata.version("bakeoff")},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    width = max(map(len, results))
    for key, value in results.items():
        if key != "machine":
            print(f"{key:<{width}}  {value}")
    print(f"prepare_rows_per_second={results['prepare_rows_per_second']} "
          f"prepare_peak_vs_one_copy={results['prepare_peak_vs_one_copy']} "
          f"read_naive_peak_vs_streamed={results['read_naive_peak_vs_streamed']}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""``make bench``: every CPU benchmark side by side, one JSON, one summary line per comparison.

Run: make bench   (about 7 minutes on 2 cores). Writes each benchmark's own JSON under bench/results/
and bench/results/latest.json with all of them, the machine and the library versions.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "kfp", "openai", "ragas", "bakeoff")


def machine() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": platform.machine(),
            "cores": os.cpu_count(), "libraries": versions}


def main() -> int:
    import datasets
    import transformers

    datasets.disable_progress_bars()  # the figures, not a progress bar per tokenisation, are the output
    transformers.utils.logging.disable_progress_bar()
    sys.path.insert(0, str(HERE))
    import bench_eval
    import bench_pipeline
    import bench_prepare
    import bench_train

    started = time.perf_counter()
    results = {
        "prepare": bench_prepare.main([]),
        "train": bench_train.main([]),
        "eval": bench_eval.main([]),
        "pipeline": bench_pipeline.main([]),
    }
    summary = {
        "train_speedup_vs_naive": results["train"]["train_speedup_vs_naive"],
        "train_speedup_vs_trl": results["train"]["train_speedup_vs_trl"],
        "generation_speedup_batched_vs_sequential": results["eval"]["generation_speedup_batched_vs_sequential"],
        "judge_speedup_concurrency8_vs_serial": results["eval"]["judge_speedup_concurrency8_vs_serial"],
        "prepare_rows_per_second": results["prepare"]["prepare_rows_per_second"],
        "prepare_peak_vs_one_copy": results["prepare"]["prepare_peak_vs_one_copy"],
        "pipeline_per_task_overhead_s": results["pipeline"]["per_task_overhead_seconds"],
    }
    latest = {"machine": machine(), "seconds": round(time.perf_counter() - started, 1), "summary": summary,
              **results}
    out = HERE / "results" / "latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(latest, indent=2) + "\n")
    width = max(map(len, summary))
    print("\n" + "-" * 60)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    print("-" * 60)
    for key, value in summary.items():
        print(f"{key}={value}")
    print(f"wrote {out} ({latest['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

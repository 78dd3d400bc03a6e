"""Benchmark: batched against one-at-a-time generation, and concurrent against serial judge calls.

Run: make bench   (or: python bench/bench_eval.py [--repeats K])
- generation: the tiny Llama (CPU) answers the same prompts greedily, max 16 new tokens, in batches of
  32 with left padding against one prompt at a time (``batched_greedy`` both ways);
- judge: the same 32 gradings through ``Judge.judge_many`` with concurrency 8 against concurrency 1,
  on a loopback OpenAI-compatible server that takes 200 ms per answer, with an empty cache each time.
Each figure is the median of the repeats; the ratios compare runs made side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generation_seconds(prompts: list[str], batch_size: int) -> float:
    from bakeoff.generate.generate import batched_greedy, prompt_ids
    from bakeoff.models import load_model, load_tokenizer

    model, tok = load_model("tiny://llama"), load_tokenizer("tiny://llama")
    model.eval()
    ids = [prompt_ids(tok, p) for p in prompts]  # what the generate stage feeds (one BOS, from the tokenizer)
    started = time.perf_counter()
    batched_greedy(model, tok, ids, max_new_tokens=16, batch_size=batch_size)
    return time.perf_counter() - started


def judge_seconds(base_url: str, items: list[tuple[str, str, str]], concurrency: int) -> float:
    from bakeoff.evaluate.judge import Judge
    from bakeoff.spec import JudgeSpec

    spec = JudgeSpec(base_url=base_url, model="judge", concurrency=concurrency, max_retries=0, timeout_s=30)
    with tempfile.TemporaryDirectory() as cache:
        judge = Judge(spec, cache_dir=cache)
        started = time.perf_counter()
        judgments = judge.judge_many(items)
        seconds = time.perf_counter() - started
    assert all(j.rating is not None for j in judgments), "the bench server should always give a rating"
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--judgments", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--out", default="bench/results/eval.json")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    os.environ.setdefault("BAKEOFF_CACHE", tempfile.mkdtemp(prefix="bakeoff-bench-"))
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    sys.path.insert(0, str(ROOT / "tests"))
    from judge_stub import serve  # the loopback OpenAI-compatible server the tests use

    from bakeoff.fixtures.smoke import iter_smoke_records
    from bakeoff.templates import get_template

    template = get_template("llama2-inst")
    records = list(iter_smoke_records(max(args.prompts, args.judgments), seed=1))
    prompts = [template.prompt(r["instruction"]) for r in records[:args.prompts]]
    items = [(r["instruction"], r["output"], f"answer {i}") for i, r in enumerate(records[:args.judgments])]
    gen = {"batched": [], "sequential": []}
    jud = {"concurrent_8": [], "serial": []}
    with serve("slow", delay=args.latency) as server:
        for _ in range(args.repeats):
            gen["batched"].append(generation_seconds(prompts, 32))
            gen["sequential"].append(generation_seconds(prompts, 1))
            jud["concurrent_8"].append(judge_seconds(server.base_url, items, 8))
            jud["serial"].append(judge_seconds(server.base_url, items, 1))
    med = {k: statistics.median(v) for k, v in {**gen, **jud}.items()}
    results = {
        "repeats": args.repeats,
        "generation": {"prompts": args.prompts, "max_new_tokens": 16,
                       "batched_seconds": round(med["batched"], 3), "sequential_seconds": round(med["sequential"], 3)},
        "judge": {"judgments": args.judgments, "latency_s": args.latency,
                  "concurrent_8_seconds": round(med["concurrent_8"], 3), "serial_seconds": round(med["serial"], 3)},
        "generation_speedup_batched_vs_sequential": round(med["sequential"] / med["batched"], 2),
        "judge_speedup_concurrency8_vs_serial": round(med["serial"] / med["concurrent_8"], 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if isinstance(v, dict)}, indent=2))
    print(f"generation_speedup_batched_vs_sequential={results['generation_speedup_batched_vs_sequential']} "
          f"judge_speedup_concurrency8_vs_serial={results['judge_speedup_concurrency8_vs_serial']}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

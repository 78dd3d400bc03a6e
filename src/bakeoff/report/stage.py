"""The report stage: collect the artifacts into results.json and render the pages from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bakeoff.report.render import write_report
from bakeoff.report.results import collect_results
from bakeoff.spec import ExperimentSpec


def report(
    spec: ExperimentSpec,
    data_dir: str | Path,
    model_dirs: list[str | Path],
    eval_dirs: list[str | Path],
    out_dir: str | Path,
    pairwise: str | Path | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write ``report.html``, ``report.md`` and ``results.json`` into ``out_dir``; return them."""
    results = collect_results(spec, data_dir, model_dirs, eval_dirs, pairwise)
    return results, write_report(results, out_dir)

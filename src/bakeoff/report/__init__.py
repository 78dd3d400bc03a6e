"""The report stage: render ``results.json`` as a self-contained HTML page and a Markdown summary."""

from bakeoff.report.render import render_html, render_markdown, write_report

__all__ = ["render_html", "render_markdown", "write_report"]

from bakeoff.report.results import build_results, collect_results, headline_metrics  # noqa: E402
from bakeoff.report.stage import report  # noqa: E402

__all__ += ["build_results", "collect_results", "headline_metrics", "report"]

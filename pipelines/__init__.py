"""The KFP pipeline: the DAG, GPU placement, retries and caching; compiled to YAML per spec; submitted to a cluster."""

from bakeoff_pipelines.bakeoff_pipeline import build_pipeline, compile_pipeline, run_local
from bakeoff_pipelines.submit import SubmittedRun, fetch_report, submit

__all__ = ["SubmittedRun", "build_pipeline", "compile_pipeline", "fetch_report", "run_local", "submit"]

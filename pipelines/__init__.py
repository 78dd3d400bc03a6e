"""The KFP pipeline: the DAG, GPU placement, retries and caching; compiled to YAML per spec."""

from bakeoff_pipelines.bakeoff_pipeline import build_pipeline, compile_pipeline, run_local, submit

__all__ = ["build_pipeline", "compile_pipeline", "run_local", "submit"]

"""Shared fixtures: an isolated bakeoff cache per test session, the smoke spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from bakeoff.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """``gpu``-marked tests skip, saying so, where no CUDA GPU is visible."""
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make gpu-check runs the gpu-marked tests on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One model/judge cache for the whole session (tiny models are built once)."""
    return tmp_path_factory.mktemp("bakeoff-cache")


@pytest.fixture
def cache_env(monkeypatch, session_cache) -> Path:
    monkeypatch.setenv("BAKEOFF_CACHE", str(session_cache))
    return session_cache


@pytest.fixture
def smoke_spec():
    return load_spec(ROOT / "experiments" / "smoke.yaml")

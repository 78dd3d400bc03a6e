"""pipelines/compiled/ (for the Kubeflow UI and GitOps) matches what the code compiles from experiments/."""

from __future__ import annotations

import yaml
from bakeoff_pipelines import compiled


def test_every_experiment_has_an_up_to_date_compiled_pipeline(monkeypatch):
    monkeypatch.delenv("BAKEOFF_REGISTRY", raising=False)
    monkeypatch.delenv("BAKEOFF_IMAGE_TAG", raising=False)
    assert compiled.experiments(), "no experiments found"
    assert compiled.stale() == [], "pipelines/compiled/ is out of date: run `make compiled` and commit the result"


def test_compiled_files_carry_no_machine_paths():
    for path in compiled.COMPILED.glob("*.yaml"):
        text = path.read_text()
        assert str(compiled.REPO) not in text, f"{path.name} embeds this checkout's path"
        pipeline = next(yaml.safe_load_all(text))
        assert pipeline["pipelineInfo"]["name"] == f"bakeoff-{path.stem}"

"""The compiled KFP YAML carries the spec's GPU scheduling on the finetune task."""

from __future__ import annotations

import yaml

from bakeoff.cli import main
from bakeoff.spec import parse_spec


def _compile(tmp_path, spec_path_or_spec):
    out = tmp_path / "pipeline.yaml"
    if isinstance(spec_path_or_spec, str):
        assert main(["compile", spec_path_or_spec, "-o", str(out)]) == 0
    else:
        from bakeoff_pipelines import compile_pipeline

        compile_pipeline(spec_path_or_spec, out)
    pipeline, platform = list(yaml.safe_load_all(out.read_text()))
    return pipeline, platform


def _executor(pipeline, name):
    return pipeline["deploymentSpec"]["executors"][f"exec-{name}"]["container"]


def test_finetune_asks_for_gpu_node_selector_and_toleration(tmp_path):
    pipeline, platform = _compile(tmp_path, "experiments/smoke.yaml")
    resources = _executor(pipeline, "finetune")["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert resources["memoryLimit"] == 34.359738368  # 32Gi in GB, as KFP writes it
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-finetune"]
    assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
    # CPU-only stages ask for no GPU and land on no GPU pool.
    assert "accelerator" not in _executor(pipeline, "report").get("resources", {})
    assert "exec-report" not in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_scheduling_follows_the_spec(tmp_path, smoke_spec):
    data = smoke_spec.model_dump(mode="json")
    data["resources"]["finetune"] = {
        "gpu": {"count": 4, "product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    }
    pipeline, platform = _compile(tmp_path, parse_spec(data))
    assert _executor(pipeline, "finetune")["resources"]["accelerator"]["resourceCount"] == "4"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-finetune"]
    assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert k8s["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]


def test_pipeline_shape(tmp_path, smoke_spec):
    pipeline, _ = _compile(tmp_path, smoke_spec)
    root = pipeline["root"]["dag"]["tasks"]
    assert set(root) == {"prepare-data", "for-loop-2", "report"}
    loop = root["for-loop-2"]
    assert loop["parameterIterator"]["items"]["raw"] == '["tiny-llama", "tiny-mixtral"]'
    inner = pipeline["components"]["comp-for-loop-2"]["dag"]["tasks"]
    assert set(inner) == {"finetune", "generate", "evaluate"}
    # The spec travels as a parameter whose default is the validated spec.
    default = pipeline["root"]["inputDefinitions"]["parameters"]["spec_json"]["defaultValue"]
    assert parse_spec(yaml.safe_load(default)).name == "smoke"
    # Images come from one place and follow the package version.
    assert _executor(pipeline, "finetune")["image"].endswith("/bakeoff-finetune:0.1.0")


def test_run_with_host_submits_the_compiled_pipeline(monkeypatch, capsys):
    import kfp

    seen = {}

    class FakeClient:
        def __init__(self, host):
            seen["host"] = host

        def create_run_from_pipeline_package(self, package, arguments, run_name, experiment_name):
            seen["pipeline"] = list(yaml.safe_load_all(open(package).read()))[0]["pipelineInfo"]["name"]
            seen["experiment"] = experiment_name

            class Run:
                run_id = "run-123"

            return Run()

    monkeypatch.setattr(kfp, "Client", FakeClient)
    assert main(["run", "experiments/smoke.yaml", "--host", "http://kfp.example:8888"]) == 0
    assert seen == {"host": "http://kfp.example:8888", "pipeline": "bakeoff-smoke", "experiment": "bakeoff-smoke"}
    assert "submitted run run-123" in capsys.readouterr().out

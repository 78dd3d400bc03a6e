"""The compiled KFP YAML carries the spec's GPU scheduling on the finetune task."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT

from bakeoff import cluster
from bakeoff.cli import main
from bakeoff.spec import parse_spec

# Tasks that run as another stage's pods.
STAGE_OF = {"exec-pairwise-judge": "evaluate"}

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
    report = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-report"]
    assert "nodeSelector" not in report and "tolerations" not in report
    # Every stage runs as the images' non-root user, labelled with its stage.
    for name, executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        assert executor["securityContext"] == {"runAsUser": "10001", "runAsGroup": "10001", "runAsNonRoot": True}
        # the pairwise judge is an evaluate-stage pod (its image, Secrets and NetworkPolicy egress to the judge)
        stage = STAGE_OF.get(name, name.removeprefix("exec-").replace("-data", ""))
        assert executor["podMetadata"]["labels"]["bakeoff/stage"] == stage


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
    assert set(root) == {"prepare-data", "for-loop-2", "pairwise-judge", "report"}
    loop = root["for-loop-2"]
    assert loop["parameterIterator"]["items"]["raw"] == '["tiny-llama", "tiny-mixtral"]'
    inner = pipeline["components"]["comp-for-loop-2"]["dag"]["tasks"]
    assert set(inner) == {"finetune", "generate", "evaluate"}
    # The spec travels as a parameter whose default is the validated spec.
    default = pipeline["root"]["inputDefinitions"]["parameters"]["spec_json"]["defaultValue"]
    assert parse_spec(yaml.safe_load(default)).name == "smoke"
    # Images come from one place and follow the package version.
    assert _executor(pipeline, "finetune")["image"].endswith("/bakeoff-finetune:0.1.0")


def _with_secrets(spec):
    data = spec.model_dump(mode="json")
    data["secrets"] = {"hf_token": {"name": "hf", "key": "token"}, "judge_api_key": {"name": "judge", "key": "api-key"},
                       "s3": {"name": "minio-creds", "endpoint_key": "endpoint"}}
    data["resources"]["model_cache_pvc"] = "model-cache"
    data["resources"]["finetune"]["timeout_s"] = 86400
    return parse_spec(data)


def test_shm_timeout_retries_caching_pvc_and_secrets_land_where_they_belong(tmp_path, smoke_spec, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SECRET_VALUE_1")  # values in the environment must never be compiled
    monkeypatch.setenv("OPENAI_API_KEY", "sk-SECRET_VALUE_2")
    pipeline, platform = _compile(tmp_path, _with_secrets(smoke_spec))
    text = (tmp_path / "pipeline.yaml").read_text()
    assert "SECRET_VALUE" not in text
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    ft = k8s["exec-finetune"]
    assert ft["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "16Gi",
                                     "volumeName": "dshm"}]
    assert ft["activeDeadlineSeconds"] == "86400"
    assert ft["pvcMount"][0]["mountPath"] == "/cache" and ft["pvcMount"][0]["constant"] == "model-cache"
    env = {e["name"]: e["value"] for e in _executor(pipeline, "finetune")["env"]}
    assert env == {"BAKEOFF_CACHE": "/cache/bakeoff", "HF_HOME": "/cache/huggingface"}

    def secret_env(executor):
        return {(s["secretName"], k["secretKey"], k["envVar"]) for s in k8s[executor].get("secretAsEnv", [])
                for k in s["keyToEnv"]}

    s3 = {("minio-creds", "AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
          ("minio-creds", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"), ("minio-creds", "endpoint", "S3_ENDPOINT")}
    hf, judge = {("hf", "token", "HF_TOKEN")}, {("judge", "api-key", "OPENAI_API_KEY")}
    assert secret_env("exec-prepare-data") == s3 | hf | judge
    assert secret_env("exec-finetune") == s3 | hf
    assert secret_env("exec-generate") == s3 | hf | judge
    assert secret_env("exec-evaluate") == s3 | judge
    assert secret_env("exec-report") == s3
    inner = pipeline["components"]["comp-for-loop-2"]["dag"]["tasks"]
    for name in ("finetune", "generate", "evaluate"):
        assert inner[name]["retryPolicy"]["maxRetryCount"] == 2 and inner[name]["retryPolicy"]["backoffFactor"] == 2
    assert pipeline["root"]["dag"]["tasks"]["prepare-data"]["cachingOptions"] == {"enableCache": True}
    assert "emptyDirMounts" not in k8s["exec-evaluate"]  # no GPU, no /dev/shm by default


@pytest.mark.parametrize("path", sorted(str(p) for p in (ROOT / "experiments").glob("*.yaml")))
def test_every_shipped_experiment_compiles_with_its_scheduling_and_images(path, tmp_path, monkeypatch):
    from bakeoff.spec import load_spec

    for var in ("HF_TOKEN", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        monkeypatch.setenv(var, f"NEVER-COMPILED-{var}")  # values in the environment must not leak
    spec = load_spec(path)
    pipeline, platform = _compile(tmp_path, spec)
    assert "NEVER-COMPILED" not in (tmp_path / "pipeline.yaml").read_text()
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # every stage's pods get exactly the Secret keys the spec gives that stage, as env vars
    for executor, config in k8s.items():
        stage = STAGE_OF.get(executor, executor.removeprefix("exec-").removesuffix("-data").rsplit("-2", 1)[0])
        refs = {(s["secretName"], k["secretKey"], k["envVar"]) for s in config.get("secretAsEnv", [])
                for k in s["keyToEnv"]}
        assert refs == set(cluster.secret_env(spec, stage)), executor
        assert config["securityContext"]["runAsNonRoot"] is True
    for stage, executor in (("finetune", "finetune"), ("generate", "generate"), ("evaluate", "evaluate"),
                            ("prepare", "prepare-data"), ("report", "report")):
        res = getattr(spec.resources, stage)
        container = _executor(pipeline, executor)
        image = "generate-vllm" if stage == "generate" and res.gpu and spec.generation.backend in ("auto", "vllm") \
            else stage
        assert container["image"].endswith(f"/bakeoff-{image}:0.1.0")
        if res.gpu:
            assert container["resources"]["accelerator"]["resourceType"] == res.gpu.type
            assert container["resources"]["accelerator"]["resourceCount"] == str(res.gpu.count)
            assert k8s[f"exec-{executor}"]["nodeSelector"]["labels"] == cluster.node_selector(res)
        else:
            assert "accelerator" not in container.get("resources", {})


def test_an_arm_on_several_nodes_gets_a_launcher_without_a_gpu(tmp_path, smoke_spec):
    data = smoke_spec.model_dump(mode="json")
    data["arms"][1]["nodes"] = 4
    data["training"]["checkpoint_uri"] = "s3://ckpt/bakeoff"
    data["resources"]["finetune"]["timeout_s"] = 36000
    pipeline, platform = _compile(tmp_path, parse_spec(data))
    loop = pipeline["root"]["dag"]["tasks"]["for-loop-2"]["parameterIterator"]["items"]["raw"]
    assert yaml.safe_load(loop) == [{"arm": "tiny-llama", "placement": "one-node"},
                                    {"arm": "tiny-mixtral", "placement": "several-nodes"}]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    one, launcher = _executor(pipeline, "finetune"), _executor(pipeline, "finetune-2")
    assert one["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "accelerator" not in launcher["resources"] and launcher["resources"]["resourceCpuLimit"] == "1"
    assert "nodeSelector" not in executors["exec-finetune-2"]  # the Trainer job's pods go to the GPU pool
    assert executors["exec-finetune-2"]["activeDeadlineSeconds"] == "36000"
    assert executors["exec-finetune"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    # the one-node / several-nodes branch feeds one model output into generate and the report
    components = pipeline["components"]
    assert set(components["comp-for-loop-2"]["dag"]["tasks"]) == {"finetune-any", "generate", "evaluate"}
    branches = components["comp-condition-branches-1"]["dag"]["tasks"]
    assert branches["condition-2"]["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--placement'] == 'one-node'"
    assert list(components["comp-condition-2"]["dag"]["tasks"]) == ["finetune"]
    assert list(components["comp-condition-3"]["dag"]["tasks"]) == ["finetune-2"]


def test_a_hosted_arm_finetunes_and_generates_from_cpu_pods(tmp_path):
    from bakeoff.spec import load_spec

    spec = load_spec(ROOT / "experiments" / "sql-create-context.yaml")
    assert any(arm.is_hosted for arm in spec.arms)
    pipeline, platform = _compile(tmp_path, spec)
    loop = pipeline["root"]["dag"]["tasks"]["for-loop-2"]["parameterIterator"]["items"]["raw"]
    assert {item["placement"] for item in yaml.safe_load(loop)} == {"one-node", "hosted"}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("finetune-2", "generate-2"):  # the launcher / hosted branches
        assert "accelerator" not in _executor(pipeline, name)["resources"]
        assert "nodeSelector" not in executors[f"exec-{name}"]
    for name in ("finetune", "generate"):  # the open arms' GPU pods
        assert _executor(pipeline, name)["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert set(pipeline["components"]["comp-for-loop-2"]["dag"]["tasks"]) == {"finetune-any", "generate-any",
                                                                            "evaluate"}


def test_the_s3_endpoint_can_come_from_the_charts_config_map(tmp_path, smoke_spec):
    data = smoke_spec.model_dump(mode="json")
    data["secrets"] = {"s3": {"name": "bakeoff-s3", "endpoint_config_map": "bakeoff-s3"}}
    pipeline, platform = _compile(tmp_path, parse_spec(data))
    for name, executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        (cm,) = executor["configMapAsEnv"]
        assert cm["configMapName"] == "bakeoff-s3" and cm["optional"] is True
        assert {k["configMapKey"]: k["envVar"] for k in cm["keyToEnv"]} == \
            {"S3_ENDPOINT": "S3_ENDPOINT", "S3_SECURE": "S3_SECURE", "AWS_REGION": "AWS_REGION"}, name

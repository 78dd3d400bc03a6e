"""Several nodes: the Kubeflow Trainer job the finetune component creates, follows and collects from.

The manifests (TrainJob and PyTorchJob) are checked field by field; the whole path (upload the data,
create the job, wait, collect the adapter) runs against a stand-in Kubernetes API that runs the job's
own container command here, under torchrun, with the env the manifest gives its pods (Secrets resolved
from a fake store) and S3 on loopback (moto).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from crd_schema import HERE as CONTRACTS
from crd_schema import load_crd, violations, webhook_denials
from kubernetes.client import ApiException
from s3_fixture import free_port

from bakeoff import cluster
from bakeoff.data.prepare import prepare_data
from bakeoff.errors import SpecError, TrainingError
from bakeoff.images import image_for
from bakeoff.spec import parse_spec
from bakeoff.train import trainer_job as tj

pytest_plugins = ["s3_fixture"]
TRAINER_CRD = "trainer-v2.3.0-trainjobs.yaml.gz"

SECRETS = {"secrets": {"hf_token": {"name": "hf", "key": "token"},
                       "s3": {"name": "s3-creds", "endpoint_key": "endpoint"}}}


def spec_data(nodes: int = 2, **resources) -> dict:
    data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    data["data"]["sources"] = [{"uri": str(ROOT / "experiments" / "data" / "smoke.jsonl")}]
    data["data"]["split"] = {"train": 48, "validation": 8, "test": 8}
    data["training"].update(max_steps=6, eval_steps=3, logging_steps=3, batch_size=4,
                            checkpoint_uri="s3://ckpt/runs")
    data["arms"][0]["nodes"] = nodes
    data.update(copy.deepcopy(SECRETS))
    data["resources"] = {"finetune": {"gpu": {"count": 8}, "cpu": "32", "memory": "512Gi", "timeout_s": 7200},
                         "model_cache_pvc": "models", **resources}
    return data


def spec_of(**kw):
    return parse_spec(spec_data(**kw))


def pod_env(env: list[dict]) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


# --- the manifests ------------------------------------------------------------------------------

def test_trainjob_carries_placement_resources_secrets_and_the_training_command():
    spec = spec_of()
    arm = spec.arms[0]
    m = tj.build_manifest(spec, arm.name, "team-a")
    assert m["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and m["kind"] == "TrainJob"
    assert m["metadata"]["namespace"] == "team-a"
    name = m["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
    assert name == tj.job_name(spec, arm)  # stable: a retried component finds its job
    trainer = m["spec"]["trainer"]
    assert m["spec"]["runtimeRef"] == {"name": "torch-distributed"}
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 8
    assert trainer["image"] == image_for("finetune")
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "32", "memory": "512Gi"},
                                           "limits": {"nvidia.com/gpu": "8", "cpu": "32", "memory": "512Gi"}}
    assert trainer["command"][:3] == ["python", "-m", "torch.distributed.run"]
    uri = f"s3://ckpt/runs/{spec.name}/{arm.name}/job"
    # the training worker (python -m bakeoff.train.worker), never the user CLI
    assert trainer["command"][3:] == ["-m", "bakeoff.train.worker", "--spec", "env:BAKEOFF_SPEC_JSON", "--arm",
                                      arm.name, "--data", f"{uri}/data", "--out", f"{uri}/result"]
    env = pod_env(trainer["env"])
    assert json.loads(env["BAKEOFF_SPEC_JSON"]) == json.loads(spec.to_json())
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert env["S3_ENDPOINT"] == {"secretKeyRef": {"name": "s3-creds", "key": "endpoint"}}
    assert env["BAKEOFF_CACHE"] == "/cache/bakeoff"
    assert m["spec"]["activeDeadlineSeconds"] == 7200

    assert "podTemplateOverrides" not in m["spec"]  # Trainer v2.1's field: v2.2+ would drop it
    (patch,) = m["spec"]["runtimePatches"]
    assert patch["manager"] == tj.MANAGER and "/" in tj.MANAGER  # the v2.2+ webhook wants a domain prefix
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    # what the chart's NetworkPolicy selects
    assert job["template"]["spec"]["template"]["metadata"]["labels"] == cluster.pod_labels(cluster.TRAINING_NODE)
    pod = job["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == \
        "RuntimeDefault"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "models"
    (node,) = pod["containers"]
    assert node["name"] == "node"
    assert {v["mountPath"] for v in node["volumeMounts"]} == {"/tmp", "/home/bakeoff", "/dev/shm", "/cache"}
    sec = node["securityContext"]
    assert sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"] and sec["capabilities"] == \
        {"drop": ["ALL"]}


def test_no_secret_value_reaches_the_manifest(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak-1234")
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_leak")
    text = json.dumps(tj.build_manifest(spec_of(), "tiny-llama", "ns"))
    assert "do-not-leak-1234" not in text and "hf_do_not_leak" not in text


def test_launcher_endpoint_is_passed_on_when_no_secret_holds_it(monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT", "http://minio.bakeoff:9000")
    data = spec_data()
    data["secrets"]["s3"].pop("endpoint_key")
    env = pod_env(tj.build_manifest(parse_spec(data), "tiny-llama", "ns")["spec"]["trainer"]["env"])
    assert env["S3_ENDPOINT"] == "http://minio.bakeoff:9000"


def test_the_endpoint_comes_from_the_s3_config_map_when_the_spec_names_one(monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT", "http://launcher-only:9000")
    data = spec_data()
    data["secrets"]["s3"] = {"name": "bakeoff-s3", "endpoint_config_map": "bakeoff-s3"}
    env = pod_env(tj.build_manifest(parse_spec(data), "tiny-llama", "ns")["spec"]["trainer"]["env"])
    assert env["S3_ENDPOINT"] == {"configMapKeyRef": {"name": "bakeoff-s3", "key": "S3_ENDPOINT", "optional": True}}
    assert env["AWS_REGION"]["configMapKeyRef"]["key"] == "AWS_REGION"


def test_trainer_v2_1_is_refused_with_what_to_do():
    with pytest.raises(SpecError, match=r"resources\.trainer\.pod_overrides: .*v2\.1.*Upgrade the Trainer to v2\.2"):
        spec_of(trainer={"pod_overrides": "podTemplateOverrides"})


def test_runtime_patches_carry_the_runtime_and_service_account():
    spec = spec_of(trainer={"pod_overrides": "runtimePatches", "runtime": "torch-cuda", "service_account": "bk"})
    m = tj.build_manifest(spec, "tiny-llama", "ns")
    assert "podTemplateOverrides" not in m["spec"] and m["spec"]["runtimeRef"]["name"] == "torch-cuda"
    (patch,) = m["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = job["template"]["spec"]["template"]["spec"]
    assert job["name"] == "node" and pod["serviceAccountName"] == "bk"
    assert job["template"]["spec"]["template"]["metadata"]["labels"] == cluster.pod_labels(cluster.TRAINING_NODE)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_pytorchjob_for_the_older_operator():
    spec = spec_of(nodes=4, trainer={"api": "pytorchjob"},
                   finetune={"gpu": {"count": 4, "product": "NVIDIA-H100-80GB-HBM3"},
                             "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml"}]})
    m = tj.build_manifest(spec, "tiny-llama", "ns")
    assert m["apiVersion"] == "kubeflow.org/v1" and m["kind"] == "PyTorchJob"
    replicas = m["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    assert m["spec"]["nprocPerNode"] == "4"
    for role in ("Master", "Worker"):
        labels = replicas[role]["template"]["metadata"]["labels"]
        assert cluster.pod_labels(cluster.TRAINING_NODE).items() <= labels.items()
        pod = replicas[role]["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml",
                                       "effect": "NoSchedule"}]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch" and container["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert "HF_TOKEN" in pod_env(container["env"])


def test_several_nodes_need_an_s3_checkpoint_location():
    data = spec_data()
    data["training"]["checkpoint_uri"] = "/mnt/ckpt"
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert "arms[0].nodes" in str(err.value) and "s3://" in str(err.value)


def test_job_name_changes_with_the_spec_and_stays_short():
    a, b = spec_of(), parse_spec({**spec_data(), "seed": 7})
    assert tj.job_name(a, a.arms[0]) != tj.job_name(b, b.arms[0])
    data = spec_data()
    data["name"] = "a-very-long-experiment-name-that-goes-on-and-on-and-on"
    long = parse_spec(data)
    assert len(tj.job_name(long, long.arms[0])) <= 63


# --- following a job ----------------------------------------------------------------------------

class ScriptedApi:
    """Returns the given job statuses in turn."""

    def __init__(self, statuses, create_status=None):
        self.statuses = list(statuses)
        self.create_status = create_status
        self.deleted = []
        self.gets = 0

    def create_namespaced_custom_object(self, group, version, ns, plural, body, field_validation=None):
        if self.create_status:
            raise ApiException(status=self.create_status, reason="scripted")
        self.field_validation = field_validation
        return body

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        self.gets += 1
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if isinstance(status, Exception):
            raise status
        return {"status": {"conditions": status}}

    def delete_namespaced_custom_object(self, group, version, ns, plural, name):
        self.deleted.append(name)


RUNNING = [{"type": "Created", "status": "True", "reason": "JobSetCreated"}]
COMPLETE = RUNNING + [{"type": "Complete", "status": "True", "message": "TrainJob completed"}]
FAILED = RUNNING + [{"type": "Failed", "status": "True", "message": "jobset failed: node-1 exited with 137"}]


def test_wait_follows_the_job_to_success_through_transient_api_errors():
    api = ScriptedApi([RUNNING, ApiException(status=500, reason="etcd"), RUNNING, COMPLETE])
    assert tj.wait_for_job(api, tj.TRAINJOB, "ns", "job", sleep=lambda s: None) == "TrainJob completed"
    assert api.gets == 4


def test_a_failed_job_ends_with_its_message_and_where_the_logs_are():
    api = ScriptedApi([RUNNING, FAILED])
    with pytest.raises(TrainingError) as err:
        tj.wait_for_job(api, tj.TRAINJOB, "ns", "job", sleep=lambda s: None)
    assert "node-1 exited with 137" in str(err.value) and "kubectl logs -n ns" in str(err.value)


def test_running_state_shows_the_trainers_progress_when_reported():
    obj = {"status": {"conditions": RUNNING, "trainerStatus": {"progressPercentage": 40,
                                                               "estimatedRemainingSeconds": 900}}}
    assert tj.job_state(tj.TRAINJOB, obj) == ("running", "Created: JobSetCreated (40% done, about 900 s left)")


def test_pytorchjob_states():
    assert tj.job_state(tj.PYTORCHJOB, {"status": {"conditions": [
        {"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True", "message": "ok"}]}}) == \
        ("succeeded", "ok")
    assert tj.job_state(tj.PYTORCHJOB, {})[0] == "running"


def test_a_job_past_its_time_limit_is_deleted():
    clock = iter(range(0, 10_000, 100))
    api = ScriptedApi([RUNNING])
    original = tj.time.monotonic
    tj.time.monotonic = lambda: next(clock)
    try:
        with pytest.raises(TrainingError, match="did not finish within 250 s"):
            tj.wait_for_job(api, tj.TRAINJOB, "ns", "job", timeout_s=250, sleep=lambda s: None)
    finally:
        tj.time.monotonic = original
    assert api.deleted == ["job"]


def test_a_forbidden_create_says_which_permissions_are_missing():
    with pytest.raises(TrainingError, match="trainjobs.trainer.kubeflow.org"):
        tj.submit_job(ScriptedApi([RUNNING], create_status=403), tj.build_manifest(spec_of(), "tiny-llama", "ns"))
    with pytest.raises(TrainingError, match="is Kubeflow Trainer installed"):
        tj.submit_job(ScriptedApi([RUNNING], create_status=404), tj.build_manifest(spec_of(), "tiny-llama", "ns"))


# --- the whole path, with the job's own command run here ----------------------------------------

def api_status(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="scripted")
    exc.body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": status})
    return exc


def upstream_admission(body: dict, field_validation: str | None) -> None:
    """What the API server with Trainer v2.3.0 does on create: strict decoding against the release's CRD
    (with fieldValidation=Strict; Warn would drop the field), then the Trainer's validating webhook."""
    unknown = [v.split(":")[0] for v in violations(body, load_crd(TRAINER_CRD), "v1alpha1") if "unknown field" in v]
    if unknown and field_validation == "Strict":
        raise api_status(400, f'TrainJob in version "v1alpha1" cannot be handled as a TrainJob: strict decoding '
                              f'error: {", ".join(f"unknown field {u!r}" for u in unknown)}')
    denials = webhook_denials(body, yaml.safe_load((CONTRACTS / "trainer-v2.3.0-torch-distributed.yaml").read_text()))
    if denials:
        raise api_status(403, 'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '
                              + "; ".join(denials))


class LocalTrainer:
    """A Kubernetes API with a Trainer in it, on this machine: creating a TrainJob runs its container
    command (one node, torchrun) with the env its pods would get, then marks it Complete or Failed."""

    def __init__(self, secrets: dict[tuple[str, str], str], home: Path):
        self.secrets = secrets
        self.home = home
        self.jobs: dict[str, dict] = {}
        self.runs = 0

    def create_namespaced_custom_object(self, group, version, ns, plural, body, field_validation=None):
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        upstream_admission(body, field_validation)
        self.jobs[name] = {**body, "status": {"conditions": RUNNING}}
        trainer = body["spec"]["trainer"]
        env = {"PATH": os.environ["PATH"], "BAKEOFF_CACHE": os.environ["BAKEOFF_CACHE"], "OMP_NUM_THREADS": "1",
               "PET_NNODES": "1", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "0",
               "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(free_port())}
        for var in trainer["env"]:
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            env[var["name"]] = self.secrets[(ref["name"], ref["key"])] if ref else var["value"]
        env["HOME"] = str(self.home)  # the pod's emptyDir
        env["BAKEOFF_CACHE"] = os.environ["BAKEOFF_CACHE"]  # the model-cache PVC
        self.runs += 1
        done = subprocess.run([sys.executable] + trainer["command"][1:], env=env, capture_output=True, text=True,
                              timeout=600)
        self.log = done.stdout + done.stderr
        ok = done.returncode == 0
        self.jobs[name]["status"] = {"conditions": COMPLETE if ok else
                                     RUNNING + [{"type": "Failed", "status": "True",
                                                 "message": f"node-0 exited with {done.returncode}"}]}
        return self.jobs[name]

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        return self.jobs[name]

    def delete_namespaced_custom_object(self, group, version, ns, plural, name):
        self.jobs.pop(name, None)


def on_s3(tmp_path, s3, pod_endpoint: str):
    """A spec whose checkpoints (and so the job's data and result) live on the test's S3, its data prepared,
    and a LocalTrainer whose pods get ``pod_endpoint`` from the S3 Secret."""
    data = spec_data()
    data["training"]["checkpoint_uri"] = f"s3://{s3.bucket}/ckpt"
    data["resources"]["trainer"] = {"namespace": "team-a", "poll_s": 0.01}
    spec = parse_spec(data)
    prepare_data(spec.data, spec.seed, tmp_path / "data")
    secrets = {("hf", "token"): "hf_x", ("s3-creds", "AWS_ACCESS_KEY_ID"): "testing",
               ("s3-creds", "AWS_SECRET_ACCESS_KEY"): "testing", ("s3-creds", "endpoint"): pod_endpoint}
    return spec, LocalTrainer(secrets, tmp_path / "home")


def test_multinode_arm_trains_in_the_job_and_a_rerun_attaches(tmp_path, cache_env, s3, monkeypatch):
    spec, api = on_s3(tmp_path, s3, s3.endpoint)  # the launcher uses its own S3_ENDPOINT (the s3 fixture's)
    monkeypatch.setattr(tj, "kube_api", lambda: api)

    from bakeoff.train.launch import finetune_arm

    result = finetune_arm(spec, "tiny-llama", tmp_path / "data", tmp_path / "out")
    assert api.runs == 1, api.log
    assert result.steps == 6
    record = json.loads((tmp_path / "out" / "training.json").read_text())
    assert record["steps"] == 6 and record["world_size"] == 1
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "out" / "COMPLETE").exists()
    keys = {o.object_name for o in s3.client.list_objects(s3.bucket, prefix="ckpt/", recursive=True)}
    job = f"ckpt/{spec.name}/tiny-llama/job"
    assert f"{job}/data/train.jsonl" in keys and f"{job}/result/COMPLETE" in keys

    # the component retried (or rerun with the same spec): it attaches to the finished job, trains nothing
    finetune_arm(spec, "tiny-llama", tmp_path / "data", tmp_path / "out2")
    assert api.runs == 1
    assert (tmp_path / "out2" / "adapter" / "adapter_model.safetensors").is_file()


def test_a_job_that_fails_in_its_pods_fails_the_stage(tmp_path, cache_env, s3):
    spec, api = on_s3(tmp_path, s3, "http://127.0.0.1:9")  # a wrong endpoint in the Secret: no data in the pods
    with pytest.raises(TrainingError, match="node-0 exited with 1"):
        tj.run_multinode(spec, "tiny-llama", tmp_path / "data", tmp_path / "out", api=api, sleep=lambda s: None)
    assert "cannot reach the S3 endpoint" in api.log


def test_render_job_prints_the_manifest_the_launcher_would_create(tmp_path, capsys):
    from bakeoff.cli import main

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_data()))
    assert main(["render-job", str(path), "--arm", "tiny-llama", "--namespace", "team"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == tj.build_manifest(spec_of(), "tiny-llama", "team")
    assert printed["kind"] == "TrainJob" and printed["metadata"]["namespace"] == "team"
    assert main(["render-job", str(path), "--arm", "tiny-llama", "-o", str(tmp_path / "job.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "job.yaml").read_text())["metadata"]["namespace"] == "default"
    assert main(["render-job", str(path), "--arm", "tiny-mixtral"]) == 2  # one node: no Trainer job
    assert "arms[1].nodes: arm tiny-mixtral trains in its finetune pod" in capsys.readouterr().err

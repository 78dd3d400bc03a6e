"""The job manifests held against the upstream contracts of the releases bakeoff supports.

Each TrainJob is validated, unknown fields as errors, against the TrainJob CRD of Kubeflow Trainer v2.2.1
and v2.3.0 and against the Trainer webhook's rules with that release's ``torch-distributed`` runtime; each
PyTorchJob against the Training Operator v1.9.0 CRD; the Argo CD Applications (tests/test_deploy.py)
against Argo CD v3.5.1's. The schemas are the upstream files (tests/contracts/README.md: release, commit,
license). Planted faults show that the checks catch what the API server and the webhook would refuse.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re

import pytest
import yaml
from crd_schema import HERE, is_domain_prefixed_path, load_crd, violations, webhook_denials
from kubernetes.client import ApiException
from test_trainer_job import ScriptedApi, spec_data

from bakeoff.errors import TrainingError
from bakeoff.spec import parse_spec
from bakeoff.train import trainer_job as tj

TRAINER_RELEASES = ["v2.2.1", "v2.3.0"]
PYTORCHJOB_CRD = "training-operator-v1.9.0-pytorchjobs.yaml.gz"


def variants() -> dict[str, dict]:
    """Spec shapes that reach different parts of the manifest."""
    full = spec_data()
    full["resources"]["trainer"] = {"service_account": "bk", "timeout_s": 3600, "namespace": "team-a"}
    bare = spec_data()
    bare["resources"] = {"finetune": {"gpu": None}}
    bare.pop("secrets")
    tolerations = spec_data()
    tolerations["resources"]["finetune"]["tolerations"] = [
        {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}]
    tolerations["resources"]["finetune"]["node_selector"] = {"pool": "a100"}
    return {"full": full, "no-gpu-no-secrets": bare, "tolerations": tolerations}


def manifest(kind: str = "trainjob", variant: str = "full") -> dict:
    data = variants()[variant]
    data["resources"].setdefault("trainer", {})["api"] = kind
    return tj.build_manifest(parse_spec(data), "tiny-llama", "team-a")


def runtime(release: str) -> dict:
    return yaml.safe_load((HERE / f"trainer-{release}-torch-distributed.yaml").read_text())


# --- TrainJob: Kubeflow Trainer v2.2 and v2.3 ------------------------------------------------------

@pytest.mark.parametrize("variant", list(variants()))
@pytest.mark.parametrize("release", TRAINER_RELEASES)
def test_trainjob_is_valid_for_each_supported_trainer_release(release, variant):
    m = manifest(variant=variant)
    assert violations(m, load_crd(f"trainer-{release}-trainjobs.yaml.gz"), "v1alpha1") == []
    assert webhook_denials(m, runtime(release)) == []


def test_trainer_v2_1_would_drop_the_deadline_and_every_pod_setting():
    lines = violations(manifest(), load_crd("trainer-v2.1.0-trainjobs.yaml.gz"), "v1alpha1")
    assert lines == ["spec.activeDeadlineSeconds: unknown field", "spec.runtimePatches: unknown field"]


@pytest.mark.parametrize("release", TRAINER_RELEASES)
def test_a_planted_unknown_field_is_caught_by_the_schema_and_by_the_typed_models(release):
    m = manifest()
    m["spec"]["trainer"]["numProcsPerNode"] = 8  # misspelt
    pod = m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod["template"]["spec"]["template"]["spec"]["priorityClassName"] = "high"  # not patchable
    lines = violations(m, load_crd(f"trainer-{release}-trainjobs.yaml.gz"), "v1alpha1")
    assert "spec.trainer.numProcsPerNode: unknown field" in lines
    assert any(line.endswith(".template.spec.template.spec.priorityClassName: unknown field") for line in lines)
    with pytest.raises(TrainingError) as err:
        tj.check_trainjob(m)
    assert "spec.trainer.numProcsPerNode" in str(err.value) and "priorityClassName" in str(err.value)
    assert "Kubeflow Trainer v2.2 or v2.3" in str(err.value)


def test_the_typed_models_keep_every_field_bakeoff_sends():
    for variant in variants():
        m = manifest(variant=variant)
        assert tj.check_trainjob(copy.deepcopy(m)) == m


@pytest.mark.parametrize("manager", ["bakeoff", "bakeoff/", "/x", "Bakeoff.dev/x", "bakeoff_dev/x"])
def test_a_manager_without_a_domain_prefix_is_denied(manager):
    m = manifest()
    m["spec"]["runtimePatches"][0]["manager"] = manager
    for release in TRAINER_RELEASES:
        lines = webhook_denials(m, runtime(release))
        assert any("manager" in line and "domain-prefixed path" in line for line in lines)


def test_bakeoffs_manager_is_domain_prefixed():
    assert is_domain_prefixed_path(tj.MANAGER) and is_domain_prefixed_path("kueue.x-k8s.io/manager")


def test_the_webhook_rules_on_containers_and_env_are_enforced():
    m = manifest()
    job = m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = job["template"]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["node"] and "env" not in pod["containers"][0]
    assert not {e["name"] for e in m["spec"]["trainer"]["env"]} & {"PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR"}
    planted = copy.deepcopy(m)
    planted_pod = planted["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    planted_pod["containers"][0]["env"] = [{"name": "X", "value": "1"}]
    planted_pod["containers"].append({"name": "sidecar"})
    planted["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "4"})
    lines = webhook_denials(planted, runtime("v2.3.0"))
    assert any("must not have envs for the" in line for line in lines)
    assert any("container that doesn't exist in the runtime job node" in line for line in lines)
    assert any("reserved envs" in line and "PET_NNODES" in line for line in lines)


# --- PyTorchJob: Training Operator v1.9 -------------------------------------------------------------

@pytest.mark.parametrize("variant", list(variants()))
def test_pytorchjob_is_valid_for_the_training_operator_v1_9(variant):
    assert violations(manifest("pytorchjob", variant), load_crd(PYTORCHJOB_CRD), "v1") == []


def test_a_planted_unknown_pytorchjob_field_is_caught():
    m = manifest("pytorchjob")
    m["spec"]["runPolicy"]["ttlSecondsAfterFinish"] = 60  # the field is ttlSecondsAfterFinished
    assert violations(m, load_crd(PYTORCHJOB_CRD), "v1") == ["spec.runPolicy.ttlSecondsAfterFinish: unknown field"]


# --- creating the job: strict field validation and what a refusal says ------------------------------

def test_jobs_are_created_with_strict_field_validation():
    api = ScriptedApi([[]])
    tj.submit_job(api, manifest())
    assert api.field_validation == "Strict"


def status_error(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="scripted")
    exc.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return exc


class RefusingApi(ScriptedApi):
    def __init__(self, exc):
        super().__init__([[]])
        self.exc = exc

    def create_namespaced_custom_object(self, group, version, ns, plural, body, field_validation=None):
        raise self.exc


def test_a_webhook_denial_is_reported_as_such_not_as_missing_rbac():
    denial = ('admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '
              'spec.runtimePatches[0].manager: Invalid value: "bakeoff": must be a domain-prefixed path')
    with pytest.raises(TrainingError) as err:
        tj.submit_job(RefusingApi(status_error(403, denial)), manifest())
    text = str(err.value)
    assert text.startswith("the cluster's admission webhook refused the job: admission webhook")
    assert "domain-prefixed" in text and "service account" not in text and "render-job" in text


def test_a_field_the_installed_release_lacks_fails_the_create_with_the_servers_message():
    message = ('TrainJob in version "v1alpha1" cannot be handled as a TrainJob: strict decoding error: '
               'unknown field "spec.runtimePatches"')
    with pytest.raises(TrainingError, match=re.escape(message) + r".*Kubeflow Trainer v2\.2 or v2\.3: upgrade"):
        tj.submit_job(RefusingApi(status_error(400, message)), manifest())


def test_missing_rbac_is_still_reported_as_missing_rbac():
    with pytest.raises(TrainingError, match="service account needs create"):
        tj.submit_job(RefusingApi(status_error(403, 'trainjobs.trainer.kubeflow.org is forbidden: User '
                                                    '"system:serviceaccount:team-a:pipeline-runner" cannot create')),
                      manifest())


# --- provenance ------------------------------------------------------------------------------------

def test_every_vendored_file_is_listed_with_its_release_commit_and_sha256():
    readme = (HERE / "README.md").read_text()
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^\| (\S+) \| (\S+) \| (v[\d.]+) \| ([0-9a-f]{40}) \| (\S+) \| ([0-9a-f]{64}) \|$", readme, re.M)}
    vendored = {p.name for p in HERE.iterdir() if p.suffix in (".gz", ".yaml")}
    assert vendored == set(rows)
    for name, (_repo, _release, _commit, _path, sha) in rows.items():
        assert hashlib.sha256((HERE / name).read_bytes()).hexdigest() == sha, name
    assert (HERE / "LICENSE-kubeflow.txt").exists() and (HERE / "LICENSE-argo-cd.txt").exists()


# --- Argo CD Application: v3.5 ---------------------------------------------------------------------

def test_a_planted_unknown_application_field_is_caught():
    from test_deploy import ARGO_CD_CRD, kustomize

    (app,) = [o for o in kustomize("manifests/argocd") if o["kind"] == "Application"]
    assert violations(app, load_crd(ARGO_CD_CRD), "v1alpha1") == []
    app = copy.deepcopy(app)
    app["spec"]["syncPolicy"]["automatd"] = {"prune": True}
    assert violations(app, load_crd(ARGO_CD_CRD), "v1alpha1") == ["spec.syncPolicy.automatd: unknown field"]

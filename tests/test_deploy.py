"""Deployment checks, all offline: the Helm chart (helm/bakeoff) and the GitOps manifests (manifests/).

The chart is linted and rendered by the Helm engine embedded in helm-python-sdk (no helm binary), for
its defaults and every helm/bakeoff/ci/*-values.yaml; every rendered object and every kustomize build
is validated against the Kubernetes 1.29-1.33 schemas by kubernetes-validate in strict mode; rendered
output, repository YAML and the Dockerfiles go through yamllint, hadolint and checkov. The tools come
with the dev extra, except checkov (its own venv, made by `make check-deploy`). A missing tool fails
under CI=true instead of skipping.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from crd_schema import load_crd, violations

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "bakeoff"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
VALUE_SETS = ["defaults"] + [p.name for p in CI_VALUES]
MANIFESTS = ROOT / "manifests"
KUSTOMIZE_DIRS = sorted(p.parent.relative_to(ROOT).as_posix() for p in MANIFESTS.rglob("kustomization.yaml"))
KUBE_VERSIONS = ["1.29", "1.30", "1.31", "1.32", "1.33"]
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet"}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Set by `make check-deploy`: there checkov must run.
REQUIRE_CHECKOV = os.environ.get("BAKEOFF_CHECK_DEPLOY") == "1"
BIN = Path(sys.executable).parent
ARGO_CD_CRD = "argo-cd-v3.5.1-application-crd.yaml.gz"
CHECKOV = Path(os.environ.get("CHECKOV", ROOT / ".venv" / "checkov" / "bin" / "checkov"))

# Every permission the chart's Role may grant: (apiGroup, resource) -> verbs.
ALLOWED_RULES = {
    ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "list", "watch", "delete"},
    ("kubeflow.org", "pytorchjobs"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list"},
    ("", "pods/log"): {"get", "list"},
    ("argoproj.io", "workflowtaskresults"): {"create", "patch"},
    ("pipelines.kubeflow.org", "pipelines"): {"create", "get", "list"},
    ("pipelines.kubeflow.org", "pipelines/versions"): {"create", "get", "list"},
    ("pipelines.kubeflow.org", "experiments"): {"create", "get", "list"},
    ("pipelines.kubeflow.org", "runs"): {"create", "get", "list"},
}
# Dockerfile checks that do not apply to bakeoff's images, each with its reason.
DOCKERFILE_SKIPS = {
    "CKV_DOCKER_2": "batch images run as KFP component steps, not services: no HEALTHCHECK to probe",
    "CKV_DOCKER_7": "the base is pinned through ARG BASE_IMAGE (a versioned tag), which checkov cannot resolve",
}


def need(module: str):
    """Import a tool's module; a missing one skips locally but fails under CI."""
    try:
        return __import__(module)
    except ImportError:
        message = f"{module} is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def tool(name: str) -> str:
    """A command-line tool from the venv, else PATH; missing: skip locally, fail under CI."""
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not found:
        message = f"{name} is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return str(found)


def values_of(name: str) -> dict:
    return {} if name == "defaults" else yaml.safe_load((CHART / "ci" / name).read_text()) or {}


def render(values: dict | None = None, chart: Path = CHART) -> list[dict]:
    """The chart's objects for ``values``, in template order."""
    hp = need("helm_python")
    out = hp.Chart.load(str(chart)).render(values or {}, name="bakeoff", namespace="bakeoff", is_install=True)
    objects = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


@functools.cache
def rendered(name: str) -> tuple[dict, ...]:
    return tuple(render(values_of(name)))


@functools.cache
def kustomize(directory: str) -> tuple[dict, ...]:
    done = subprocess.run([tool("kubectl"), "kustomize", str(ROOT / directory)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def pod_specs(objects) -> list[tuple[str, dict]]:
    """(kind/name, pod spec) of every workload."""
    pods = []
    for obj in objects:
        kind, name, spec = obj["kind"], obj["metadata"]["name"], obj.get("spec", {})
        if kind == "CronJob":
            pods.append((f"{kind}/{name}", spec["jobTemplate"]["spec"]["template"]["spec"]))
        elif kind == "Pod":
            pods.append((f"{kind}/{name}", spec))
        elif kind in WORKLOADS:
            pods.append((f"{kind}/{name}", spec["template"]["spec"]))
    return pods


def kinds(objects) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for obj in objects:
        out.setdefault(obj["kind"], []).append(obj["metadata"]["name"])
    return out


def validate_all(objects, where: str, allow_unknown: tuple[str, ...] = ()) -> None:
    """kubernetes-validate --strict for every object and every Kubernetes version we support."""
    need("kubernetes_validate")
    from kubernetes_validate import utils as kv

    errors = []
    for obj in objects:
        if obj["apiVersion"] == "argoproj.io/v1alpha1" and obj["kind"] == "Application":
            # Argo CD's own CRD (v3.5.1, tests/contracts/), as strictly: an unknown field is an error
            errors += [f"{where}: Application/{obj['metadata']['name']} (Argo CD v3.5.1): {line}"
                       for line in violations(obj, load_crd(ARGO_CD_CRD), "v1alpha1")]
            continue
        for version in KUBE_VERSIONS:
            try:
                kv.validate(obj, version, strict=True)
            except kv.SchemaNotFoundError:
                if obj["apiVersion"].split("/")[0] not in allow_unknown:
                    errors.append(f"{where}: {obj['kind']} {obj['apiVersion']}: no schema in Kubernetes {version}")
                break
            except kv.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                errors.append(f"{where}: {obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): "
                              f"{path}: {exc.message}")
    assert not errors, "\n".join(errors)


# --- the chart: lint, render, validate -----------------------------------------------------------------

@pytest.mark.parametrize("kube", ["v1.29.0", "v1.33.0"])
@pytest.mark.parametrize("name", VALUE_SETS)
def test_should_lint_cleanly_in_strict_mode(name, kube):
    hp = need("helm_python")
    report = hp.lint(str(CHART), values_of(name) or None, strict=True, namespace="bakeoff", kube_version=kube)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, json.dumps(problems, indent=2)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_should_render_objects_valid_for_kubernetes_1_29_to_1_33(name):
    objects = rendered(name)
    assert objects
    validate_all(objects, f"chart with {name}")


@pytest.mark.parametrize("directory", KUSTOMIZE_DIRS)
def test_should_build_every_kustomization_into_valid_objects(directory):
    objects = kustomize(directory)
    assert objects, f"{directory} builds nothing"
    validate_all(objects, directory)


@pytest.mark.parametrize("directory", KUSTOMIZE_DIRS)
def test_should_give_the_chart_values_its_schema_accepts_in_every_overlay(directory):
    hp = need("helm_python")
    apps = [o for o in kustomize(directory) if o["kind"] == "Application"]
    assert len(apps) == 1
    source = apps[0]["spec"]["source"]
    assert source["path"] == "helm/bakeoff"
    values = source["helm"]["valuesObject"]
    hp.Chart.load(str(CHART)).validate_schema(values)
    validate_all(render(values), f"chart with the values of {directory}")


def test_should_define_every_object_once_between_helm_and_manifests():
    chart_objects = {(o["kind"], o["metadata"]["name"]) for name in VALUE_SETS for o in rendered(name)}
    for directory in KUSTOMIZE_DIRS:
        for obj in kustomize(directory):
            assert obj["kind"] == "Application", f"{directory}: {obj['kind']} belongs in the chart"
            assert (obj["kind"], obj["metadata"]["name"]) not in chart_objects


# --- S3: an existing endpoint or an installed MinIO -----------------------------------------------------

def test_should_create_no_minio_object_with_an_existing_s3_endpoint():
    objects = rendered("existing-s3-values.yaml")
    minio = [f"{o['kind']}/{o['metadata']['name']}" for o in objects if "minio" in o["metadata"]["name"]]
    assert not minio
    assert "StatefulSet" not in kinds(objects) and "Job" not in kinds(objects)
    s3 = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "bakeoff-s3")
    assert s3["data"]["S3_ENDPOINT"] == "s3.eu-west-1.amazonaws.com"


def test_should_install_minio_with_its_volume_and_bucket_job_by_default():
    objects = rendered("defaults")
    (sts,) = [o for o in objects if o["kind"] == "StatefulSet"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "100Gi"
    (job,) = [o for o in objects if o["kind"] == "Job"]
    assert job["metadata"]["name"] == "bakeoff-minio-bucket"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["mb", "--ignore-existing", "store/bakeoff"]
    assert "bakeoff-minio" in kinds(objects)["Service"]


def test_should_never_render_a_secret_or_a_credential_value():
    for name in VALUE_SETS:
        objects = rendered(name)
        assert "Secret" not in kinds(objects), f"{name}: the chart must only reference existing Secrets"
        for where, pod in pod_specs(objects):
            for container in pod["containers"]:
                for env in container.get("env", []):
                    if re.search(r"KEY|SECRET|TOKEN|PASSWORD", env["name"]) and "valueFrom" not in env:
                        assert env["name"] == "MC_HOST_store" and "$(AWS_SECRET_ACCESS_KEY)" in env["value"], \
                            f"{name}: {where}: {env['name']} must come from a Secret"


# --- the schema ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    {"gpu": {"count": "two"}},
    {"gpu": {"count": 0}},
    {"gpu": {"resource": "nvidia.com/gpus"}},
    {"s3": {"secure": "yes"}},
    {"s3": {"accessKey": "AKIA..."}},
    {"networkPolicy": {"enabled": "true"}},
    {"containerSecurityContext": {"allowPrivilegeEscalation": True, "capabilities": {"drop": ["ALL"]},
                                  "readOnlyRootFilesystem": True}},
    {"runs": [{"name": "smoke"}]},
    {"runs": [{"name": "Smoke_Run", "existingConfigMap": "x"}]},
    {"kfp": {"auth": "password"}},
    {"typo": 1},
], ids=lambda v: json.dumps(v)[:60])
def test_should_refuse_a_wrong_value(bad):
    hp = need("helm_python")
    with pytest.raises(hp.HelmValuesError):
        hp.Chart.load(str(CHART)).render(bad, name="bakeoff", namespace="bakeoff")


def test_should_document_every_value_with_a_param_comment():
    text = (CHART / "values.yaml").read_text()
    params = set(re.findall(r"^\s*## @param (\S+)", text, re.M))
    values = yaml.safe_load(text)

    def undocumented(node, prefix=""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in params:
                continue
            if isinstance(value, dict) and value:
                yield from undocumented(value, path + ".")
            else:
                yield path

    assert not list(undocumented(values))

    def exists(path):
        node = values
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    assert not [p for p in params if not exists(p)], "a @param names no value"


# --- security posture -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VALUE_SETS)
def test_should_harden_every_pod(name):
    pods = pod_specs(rendered(name))
    assert pods or name == "existing-s3-values.yaml"  # with an existing S3 and no runs the chart runs no pod
    for where, pod in pods:
        ctx = pod.get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser") == 10001, where
        assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        # none of the chart's pods talks to the Kubernetes API
        assert pod.get("automountServiceAccountToken") is False, where
        for container in pod.get("initContainers", []) + pod["containers"]:
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert sc.get("runAsNonRoot") is True, where
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container.get("resources", {}).get(part, {})), \
                    f"{where}: {container['name']} needs {part} for cpu and memory"
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], f"{where}: a writable /tmp"
            if "/bakeoff-" in container["image"]:
                assert "emptyDir" in volumes[mounts["/home/bakeoff"]], f"{where}: a writable HOME"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_should_keep_rbac_namespaced_and_to_the_listed_verbs(name):
    objects = rendered(name)
    found = kinds(objects)
    assert "ClusterRole" not in found and "ClusterRoleBinding" not in found
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "bakeoff"
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                allowed = ALLOWED_RULES.get((group, resource))
                assert allowed is not None, f"{name}: no rule may name {group}/{resource}"
                assert set(rule["verbs"]) <= allowed, f"{name}: {group}/{resource}: {rule['verbs']}"
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert ("trainer.kubeflow.org", "trainjobs") in granted and ("kubeflow.org", "pytorchjobs") in granted
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_should_limit_egress_to_dns_s3_kfp_and_the_judge(name):
    objects = rendered(name)
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    pipeline = policies["bakeoff-pipeline-egress"]
    assert pipeline["policyTypes"] == ["Egress"]
    for rule in pipeline["egress"]:
        assert rule.get("to"), f"{name}: an egress rule without `to` allows every destination"
        assert rule.get("ports"), f"{name}: an egress rule without ports allows every port"
    ports = {p["port"] for rule in pipeline["egress"] for p in rule["ports"]}
    assert 53 in ports and 8888 in ports
    assert "bakeoff-jobs-egress" in policies


@pytest.mark.parametrize("name", VALUE_SETS)
def test_should_let_training_nodes_reach_each_other_dns_and_s3_only(name):
    from bakeoff.cluster import TRAINING_NODE, pod_labels

    POD_LABELS = pod_labels(TRAINING_NODE)  # noqa: N806 - the labels the Trainer job's pods get

    policies = {o["metadata"]["name"]: o["spec"] for o in rendered(name) if o["kind"] == "NetworkPolicy"}
    nodes = policies["bakeoff-training-nodes"]
    assert nodes["podSelector"] == {"matchLabels": POD_LABELS}  # the labels the Trainer job's pods get
    assert nodes["policyTypes"] == ["Ingress", "Egress"]
    assert nodes["ingress"] == [{"from": [{"podSelector": {"matchLabels": POD_LABELS}}]}]
    peers = [rule["to"] for rule in nodes["egress"]]
    assert [{"podSelector": {"matchLabels": POD_LABELS}}] in peers  # rendezvous and NCCL between the nodes
    for rule in nodes["egress"]:
        assert rule.get("to"), f"{name}: an egress rule without `to` allows every destination"
    ports = {p["port"] for rule in nodes["egress"] for p in rule.get("ports", [])}
    assert 53 in ports and 8888 not in ports  # DNS yes; the KFP API is the launcher's business, not theirs


def test_should_place_the_vllm_judge_on_the_gpu_pool():
    objects = rendered("vllm-judge-values.yaml")
    (deploy,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    judge = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "bakeoff-judge")
    assert judge["data"]["base_url"] == "http://bakeoff-judge.bakeoff.svc.cluster.local:8000/v1"
    assert judge["data"]["model"] == "judge"


def test_should_expose_the_gpu_pool_in_the_spec_shape():
    spec_mod = pytest.importorskip("bakeoff.spec")
    objects = rendered("defaults")
    pool = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "bakeoff-gpu-pool")
    resources = yaml.safe_load(pool["data"]["resources.yaml"])
    cluster = pytest.importorskip("bakeoff.cluster")
    parsed = spec_mod.ResourcesSpec.model_validate(resources)
    assert cluster.node_selector(parsed.finetune) == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert json.loads(pool["data"]["GPU_NODE_SELECTOR"]) == cluster.node_selector(parsed.finetune)


# --- pipelines upload and GitOps runs -----------------------------------------------------------------

def test_should_upload_compiled_pipelines_only_when_the_chart_has_some(tmp_path):
    assert not [o for o in rendered("defaults") if o["metadata"]["name"] == "bakeoff-upload-pipelines"]
    chart = tmp_path / "bakeoff"
    shutil.copytree(CHART, chart)
    (chart / "files" / "pipelines" / "bakeoff-smoke.yaml").write_text("pipelineInfo: {name: bakeoff-smoke}\n")
    objects = render({}, chart=chart)
    (cm,) = [o for o in objects if o["metadata"]["name"] == "bakeoff-pipelines"]
    assert list(cm["data"]) == ["bakeoff-smoke.yaml"]
    (job,) = [o for o in objects if o["metadata"]["name"] == "bakeoff-upload-pipelines"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "localhost:5000/bakeoff/bakeoff-report:0.1.0"
    assert container["command"] == ["python", "/scripts/upload_pipelines.py", "/pipelines"]
    validate_all(objects, "chart with a compiled pipeline")
    compile(Path(CHART / "files" / "scripts" / "upload_pipelines.py").read_text(), "upload_pipelines.py", "exec")


def test_should_start_one_run_per_spec_named_by_its_content():
    values = values_of("gitops-runs-values.yaml")
    objects = rendered("gitops-runs-values.yaml")
    (job,) = [o for o in objects if o["kind"] == "Job" and o["metadata"]["labels"].get("bakeoff.io/run")]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "bakeoff.cli"]
    assert container["args"] == ["run", "/specs/smoke.yaml", "--host", "$(KFP_HOST)"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # the run's pods get the chart's service account (its Role may create Trainer jobs)
    assert env["KFP_SERVICE_ACCOUNT"] == job["spec"]["template"]["spec"]["serviceAccountName"]
    assert "ttlSecondsAfterFinished" not in job["spec"]  # Argo CD would recreate it and run it again
    runs_cm = next(o for o in objects if o["metadata"]["name"] == "bakeoff-runs")
    assert yaml.safe_load(runs_cm["data"]["smoke.yaml"]) == values["runs"][0]["spec"]
    (cron,) = [o for o in objects if o["kind"] == "CronJob"]
    assert cron["spec"]["schedule"] == "0 2 * * *"
    volume = next(v for v in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "specs")
    assert volume["configMap"]["name"] == "bakeoff-experiments"
    # multi-user KFP: a projected token for the KFP API, never the Kubernetes API token
    token = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "kfp-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"

    same = render(copy.deepcopy(values))
    changed = copy.deepcopy(values)
    changed["runs"][0]["spec"]["training"]["epochs"] = 3

    def job_name(objs):
        return next(o["metadata"]["name"] for o in objs
                    if o["kind"] == "Job" and "bakeoff.io/run" in o["metadata"]["labels"])

    assert job_name(same) == job["metadata"]["name"]
    assert job_name(render(changed)) != job["metadata"]["name"]


def shipped_run_specs():
    for name in VALUE_SETS:
        for run in values_of(name).get("runs", []):
            if "spec" in run:
                yield f"{name}:{run['name']}", run["spec"]
    for path in sorted((MANIFESTS / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            runs = ((((doc or {}).get("spec") or {}).get("source") or {}).get("helm") or {}).get("valuesObject", {})
            for run in runs.get("runs", []):
                yield f"{path.relative_to(ROOT)}:{run['name']}", run["spec"]


@pytest.mark.parametrize("where,spec", list(shipped_run_specs()), ids=lambda v: v if isinstance(v, str) else "")
def test_should_ship_only_valid_experiment_specs(where, spec):
    spec_mod = pytest.importorskip("bakeoff.spec")
    spec_mod.parse_spec(spec, source=where)


def test_should_keep_the_example_experiment_in_step_with_smoke_yaml():
    smoke = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    example = yaml.safe_load((MANIFESTS / "examples" / "smoke-run" / "application-runs.yaml").read_text())
    spec = example["spec"]["source"]["helm"]["valuesObject"]["runs"][0]["spec"]
    assert spec["data"]["sources"][0]["uri"].startswith("s3://")
    for section in (smoke, spec):
        section["data"].pop("sources")
        section.pop("secrets", None)
        section["evaluation"].pop("judge", None)
    assert spec == smoke


# --- linters and scanners -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rendered_dir(tmp_path_factory):
    """Every value set's rendered chart and every kustomize build, one YAML stream per file."""
    out = tmp_path_factory.mktemp("rendered")
    for name in VALUE_SETS:
        (out / f"chart-{name.removesuffix('.yaml')}.yaml").write_text(
            "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in rendered(name)))
    for directory in KUSTOMIZE_DIRS:
        (out / f"kustomize-{directory.replace('/', '-')}.yaml").write_text(
            "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in kustomize(directory)))
    return out


def test_should_pass_yamllint_on_the_repository_and_the_rendered_chart(rendered_dir):
    yamllint = tool("yamllint")
    for target in (["."], [str(rendered_dir)]):
        done = subprocess.run([yamllint, "-c", str(ROOT / ".yamllint"), "-f", "parsable", *target], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def dockerfiles() -> list[Path]:
    # images/Dockerfile builds all five stage images (--build-arg STAGE=<stage>, see images/build.sh)
    return sorted((ROOT / "images").rglob("Dockerfile*"))


def test_should_pass_hadolint_on_every_dockerfile():
    files = dockerfiles()
    if not files:
        pytest.skip("no Dockerfile under images/")
    assert ROOT / "images" / "Dockerfile" in files, files
    done = subprocess.run([tool("hadolint"), "--failure-threshold", "warning", *map(str, files)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def checkov() -> str:
    if CHECKOV.exists():
        return str(CHECKOV)
    message = (f"checkov is not at {CHECKOV}: `make check-deploy` installs it into its own venv (it pins boto3 "
               "and packaging below the project's) and runs these checks")
    if REQUIRE_CHECKOV:
        pytest.fail(message)
    pytest.skip(message)


def run_checkov(args: list[str]) -> dict:
    done = subprocess.run([checkov(), "--skip-download", "--quiet", "-o", "json", *args], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert done.stdout.strip(), done.stderr[-3000:]
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [f"{c['check_id']} {c['check_name']}: {c.get('file_path')} {c.get('resource')}"
              for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    assert not failed, "\n".join(failed)
    return {c["check_id"] for r in reports for c in r.get("results", {}).get("skipped_checks", [])}


def test_should_pass_checkov_on_the_rendered_chart(rendered_dir):
    skipped = run_checkov(["--framework", "kubernetes", "-d", str(rendered_dir)])
    # every check skipped in the chart is named there with its reason
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    named = set(re.findall(r"checkov\.io/skip\d+: (CKV\w+)=\S", helpers))
    assert skipped <= named, f"skipped without a reason in the chart: {skipped - named}"


def test_should_pass_checkov_on_the_dockerfiles():
    if not dockerfiles():
        pytest.skip("no Dockerfile under images/")
    run_checkov(["--framework", "dockerfile", "-d", str(ROOT / "images"),
                 "--skip-check", ",".join(DOCKERFILE_SKIPS)])

"""Several nodes: the finetune component creates a Kubeflow Trainer job and follows it to the end.

The job runs the finetune image and the same training code (``bakeoff.train.worker`` under torchrun; the
Trainer sets ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` ... for it) on ``arm.nodes`` pods,
each with ``resources.finetune`` (GPUs, CPU, memory), node selector, tolerations, Secrets as env vars,
a memory-backed ``/dev/shm``, the model-cache PVC and a restricted security context.

Data and results move through the arm's S3 checkpoint location (``training.checkpoint_uri``):

    <checkpoint_uri>/<experiment>/<arm>/job/data/     the prepared splits, uploaded by the component
    <checkpoint_uri>/<experiment>/<arm>/job/result/   the adapter and training.json, uploaded by rank 0
                                                      (COMPLETE last), collected by the component

Two APIs: ``trainjob`` (Kubeflow Trainer v2, ``trainer.kubeflow.org/v1alpha1``, a ClusterTrainingRuntime
such as ``torch-distributed``) and ``pytorchjob`` (the older Training Operator, ``kubeflow.org/v1``).
The job's name is derived from the spec and arm, so a retried component attaches to the job it
created instead of starting (and paying for) a second one.

Supported releases (SUPPORTED; the manifests are held in tests/contracts/ against each one's CRD schema,
with unknown fields as errors, and against the Trainer webhook's rules):

- Kubeflow Trainer v2.2 and v2.3: the pod settings travel in ``runtimePatches`` under a domain-prefixed
  ``manager`` (MANAGER), the only field v2.2+ keeps for them. v2.1 is not supported: it has only
  ``podTemplateOverrides``, and neither ``activeDeadlineSeconds`` nor a ``securityContext`` for the pods,
  which it would drop. Every TrainJob is checked against the typed models of the Trainer API
  (``kubeflow-trainer-api``, pinned to v2.2.1) before it is sent: a field the models lack is an error here.
- Training Operator v1.9 (PyTorchJob ``kubeflow.org/v1``).

Jobs are created with ``fieldValidation=Strict``: a field the installed release lacks fails the create
with the API server's message instead of being dropped. A denial by the Trainer's admission webhook is
reported as such, apart from a missing permission.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakeoff import cluster
from bakeoff.errors import StorageError, TrainingError
from bakeoff.images import image_for
from bakeoff.spec import ArmSpec, ExperimentSpec
from bakeoff.storage import MODEL_CACHE_ENV, MODEL_CACHE_MOUNT, S3_SETTINGS
from bakeoff.train.checkpoints import MARKER as COMPLETE

log = logging.getLogger(__name__)

SPEC_ENV = "BAKEOFF_SPEC_JSON"


@dataclass(frozen=True)
class JobKind:
    group: str
    version: str
    plural: str
    kind: str


TRAINJOB = JobKind("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
PYTORCHJOB = JobKind("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")
# The releases the manifests are built for and tested against (tests/contracts/README.md).
SUPPORTED = {"trainjob": "Kubeflow Trainer v2.2 or v2.3", "pytorchjob": "Kubeflow Training Operator v1.9"}
# Who owns the TrainJob's runtime patch: the Trainer webhook (v2.2+) wants a domain-prefixed path.
MANAGER = "bakeoff.dev/finetune-launcher"
# The runtime's replicated job and container that train (torch-distributed's ``node``).
NODE = "node"


def job_kind(spec: ExperimentSpec) -> JobKind:
    return TRAINJOB if spec.resources.trainer.api == "trainjob" else PYTORCHJOB


def job_name(spec: ExperimentSpec, arm: ArmSpec) -> str:
    """A DNS-1035 name, stable for the same spec and arm (a rerun attaches to the job), at most 63 chars."""
    digest = hashlib.sha256(f"{spec.to_json()}\0{arm.name}".encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9-]+", "-", f"bakeoff-{spec.name}-{arm.name}".lower()).strip("-")
    return f"{stem[:54].rstrip('-')}-{digest}"


def job_uri(spec: ExperimentSpec, arm: ArmSpec) -> str:
    uri = spec.checkpoint_uri(arm)
    if not uri or not uri.startswith("s3://"):
        raise TrainingError(f"arm {arm.name}: {arm.nodes} nodes need training.checkpoint_uri on s3://")
    return f"{uri}/job"


def training_command(arm: ArmSpec, uri: str) -> list[str]:
    """What every training pod runs: torchrun (its rendezvous from the Trainer's PET_* variables) over the
    training worker, each rank reading the data from and rank 0 writing the result to S3."""
    return ["python", "-m", "torch.distributed.run", "-m", "bakeoff.train.worker", "--spec", f"env:{SPEC_ENV}",
            "--arm", arm.name, "--data", f"{uri}/data", "--out", f"{uri}/result"]


def _env(spec: ExperimentSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": SPEC_ENV, "value": spec.to_json()},
                                 {"name": "HOME", "value": "/home/bakeoff"}]
    secret_vars = set()
    for name, key, var in cluster.secret_env(spec, "finetune"):
        env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}})
        secret_vars.add(var)
    s3 = spec.secrets.s3
    # The endpoint is not a secret: from the spec's S3 ConfigMap, else the launcher's own values
    # (unless a Secret already provides them).
    for var in S3_SETTINGS:
        if var in secret_vars:
            continue
        if s3 and s3.endpoint_config_map:
            env.append({"name": var, "valueFrom": {"configMapKeyRef": {"name": s3.endpoint_config_map, "key": var,
                                                                       "optional": True}}})
        elif os.environ.get(var):
            env.append({"name": var, "value": os.environ[var]})
    if spec.resources.model_cache_pvc:
        env += [{"name": name, "value": value} for name, value in MODEL_CACHE_ENV.items()]
    return env


def _resources(spec: ExperimentSpec) -> dict[str, Any]:
    res = spec.resources.finetune
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.gpu:
        limits[res.gpu.type] = str(res.gpu.count)
    if res.cpu:
        requests["cpu"] = limits["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _volumes(spec: ExperimentSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Writable scratch (the root filesystem is read-only), /dev/shm and the model cache."""
    volumes = [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": "/home/bakeoff"}]
    shm = cluster.shm_size(spec.resources.finetune)
    if shm:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if spec.resources.model_cache_pvc:
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": spec.resources.model_cache_pvc}})
        mounts.append({"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT})
    return volumes, mounts


def _placement(spec: ExperimentSpec) -> dict[str, Any]:
    res = spec.resources.finetune
    out: dict[str, Any] = {}
    if cluster.node_selector(res):
        out["nodeSelector"] = cluster.node_selector(res)
    if cluster.tolerations(res):
        out["tolerations"] = [t.model_dump(exclude_none=True) for t in cluster.tolerations(res)]
    return out


def build_manifest(spec: ExperimentSpec, arm: str | ArmSpec, namespace: str, image: str | None = None) -> dict:
    """The TrainJob (or PyTorchJob) that trains ``arm`` on ``arm.nodes`` nodes."""
    arm = spec.arm(arm) if isinstance(arm, str) else arm
    kind = job_kind(spec)
    trainer = spec.resources.trainer
    res = spec.resources.finetune
    image = image or image_for("finetune")
    uri = job_uri(spec, arm)
    procs = res.gpu.count if res.gpu else 1
    volumes, mounts = _volumes(spec)
    resources = _resources(spec)
    metadata = {"name": job_name(spec, arm), "namespace": namespace,
                "labels": {"app.kubernetes.io/name": "bakeoff", "app.kubernetes.io/component": "finetune",
                           "bakeoff/experiment": spec.name[:63], "bakeoff/arm": arm.name[:63]}}
    pod_spec: dict[str, Any] = {**_placement(spec), "securityContext": cluster.POD_SECURITY, "volumes": volumes}
    if trainer.service_account:
        pod_spec["serviceAccountName"] = trainer.service_account
    deadline = trainer.timeout_s or res.timeout_s

    if kind is TRAINJOB:
        body: dict[str, Any] = {
            "runtimeRef": {"name": trainer.runtime},
            "trainer": {"image": image, "command": training_command(arm, uri), "env": _env(spec),
                        "numNodes": arm.nodes, "numProcPerNode": procs},
        }
        if resources:
            body["trainer"]["resourcesPerNode"] = resources
        if deadline:
            body["activeDeadlineSeconds"] = deadline
        # The Trainer sets the node container's env only through spec.trainer.env: the patch carries none.
        patch = {**pod_spec, "containers": [{"name": NODE, "volumeMounts": mounts,
                                             "securityContext": cluster.CONTAINER_SECURITY}]}
        pod_meta = {"labels": cluster.pod_labels(cluster.TRAINING_NODE)}
        body["runtimePatches"] = [{"manager": MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": NODE, "template": {"spec": {"template": {
                "metadata": pod_meta, "spec": patch}}}}]}}}}]
        manifest = {"apiVersion": f"{kind.group}/{kind.version}", "kind": kind.kind, "metadata": metadata,
                    "spec": body}
        return check_trainjob(manifest)

    container = {"name": "pytorch", "image": image, "command": training_command(arm, uri), "env": _env(spec),
                 "volumeMounts": mounts, "securityContext": cluster.CONTAINER_SECURITY}
    if resources:
        container["resources"] = resources
    template = {"metadata": {"labels": {**metadata["labels"], **cluster.pod_labels(cluster.TRAINING_NODE)}},
                "spec": {**pod_spec, "containers": [container]}}
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if arm.nodes > 1:
        replicas["Worker"] = {"replicas": arm.nodes - 1, "restartPolicy": "OnFailure", "template": template}
    run_policy: dict[str, Any] = {"cleanPodPolicy": "None", "backoffLimit": max(res.retries, 0)}
    if deadline:
        run_policy["activeDeadlineSeconds"] = deadline
    body = {"nprocPerNode": str(procs), "pytorchReplicaSpecs": replicas, "runPolicy": run_policy}
    return {"apiVersion": f"{kind.group}/{kind.version}", "kind": kind.kind, "metadata": metadata, "spec": body}


def check_trainjob(manifest: dict) -> dict:
    """``manifest`` itself, once the Trainer API's typed models (``kubeflow-trainer-api``) keep every field of
    it; a field they would drop (one the supported Trainer lacks, or a misspelt one) is a TrainingError."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    kept = TrainerV1alpha1TrainJob.from_dict(manifest).to_dict()
    dropped = _dropped(manifest, kept)
    if dropped:
        raise TrainingError(f"the TrainJob has fields {SUPPORTED['trainjob']} does not define: {', '.join(dropped)}")
    return manifest


def _dropped(sent: Any, kept: Any, path: str = "") -> list[str]:
    """The paths in ``sent`` that ``kept`` lacks or holds with another value."""
    if isinstance(sent, dict) and isinstance(kept, dict):
        out = []
        for key, value in sent.items():
            where = f"{path}.{key}" if path else key
            out += _dropped(value, kept[key], where) if key in kept else [where]
        return out
    if isinstance(sent, list) and isinstance(kept, list) and len(sent) == len(kept):
        return [p for i, (a, b) in enumerate(zip(sent, kept, strict=True)) for p in _dropped(a, b, f"{path}[{i}]")]
    return [] if sent == kept else [path]


def job_state(kind: JobKind, obj: dict) -> tuple[str, str]:
    """("running" | "succeeded" | "failed", a message) from a job's status conditions."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    done = {"Complete", "Succeeded"}
    for cond in conditions:
        if str(cond.get("status")) != "True":
            continue
        message = cond.get("message") or cond.get("reason") or ""
        if cond.get("type") in done:
            return "succeeded", message
        if cond.get("type") == "Failed":
            return "failed", message
    latest = conditions[-1] if conditions else {}
    message = f"{latest.get('type', 'Pending')}: {latest.get('message') or latest.get('reason') or ''}".strip()
    progress = (obj.get("status") or {}).get("trainerStatus") or {}  # Trainer's TrainJobStatus feature gate
    if progress.get("progressPercentage") is not None:
        message += f" ({progress['progressPercentage']}% done"
        if progress.get("estimatedRemainingSeconds") is not None:
            message += f", about {progress['estimatedRemainingSeconds']} s left"
        message += ")"
    return "running", message


def _current_namespace() -> str:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.exists() else "default"


def kube_api():
    """A CustomObjectsApi from the in-cluster service account, or the kubeconfig outside a cluster."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise TrainingError("several nodes need a Kubernetes API: run inside the cluster (the pipeline's "
                                f"service account) or with a kubeconfig ({exc})") from exc
    return client.CustomObjectsApi()


def _api_error(exc: Exception, kind: JobKind | None = None) -> TrainingError:
    status = getattr(exc, "status", None)
    body = _server_message(exc)
    supported = SUPPORTED["pytorchjob" if kind is PYTORCHJOB else "trainjob"]
    if "admission webhook" in body:  # a webhook's denial comes as 403 (or 4xx) with its own message
        return TrainingError(f"the cluster's admission webhook refused the job: {body} (bakeoff builds jobs for "
                             f"{supported}: is that the installed release? bakeoff render-job SPEC --arm NAME "
                             "prints the manifest for kubectl apply --dry-run=server)")
    if status == 403:
        return TrainingError(f"the Kubernetes API refused ({body}); the pipeline's service account needs create, "
                             "get, list, watch and delete on trainjobs.trainer.kubeflow.org (or "
                             "pytorchjobs.kubeflow.org): see the Helm chart's Role")
    if status == 404:
        return TrainingError(f"the Kubernetes API has no such resource ({body}); is Kubeflow Trainer installed? "
                             "Set resources.trainer.api to pytorchjob on clusters with the older Training Operator")
    if status == 400 and ("unknown field" in body or "strict decoding" in body):
        return TrainingError(f"the installed job API lacks a field bakeoff sets ({body}); bakeoff builds jobs for "
                             f"{supported}: upgrade it, or set resources.trainer.api to match the cluster")
    if status == 422:
        return TrainingError(f"the Kubernetes API found the job invalid: {body}")
    return TrainingError(f"Kubernetes API error {status}: {body}")


def _server_message(exc: Exception) -> str:
    """The Status message of an ApiException's JSON body, else the body (or the exception) as text."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        return str(message or body)
    return str(exc)


def submit_job(api, manifest: dict) -> dict:
    """Create the job, or return the one already there (a retried component must not train twice).

    ``fieldValidation=Strict``: the API server refuses a field its CRD lacks instead of dropping it."""
    kind = TRAINJOB if manifest["kind"] == TRAINJOB.kind else PYTORCHJOB
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        created = api.create_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, manifest,
                                                      field_validation="Strict")
        log.info("created %s %s/%s", kind.kind, ns, name)
        return created
    except Exception as exc:  # kubernetes.client.ApiException, without importing kubernetes here
        if getattr(exc, "status", None) == 409:
            log.info("%s %s/%s exists already (an earlier attempt): following it", kind.kind, ns, name)
            return api.get_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, name)
        raise _api_error(exc, kind) from exc


def wait_for_job(api, kind: JobKind, namespace: str, name: str, poll_s: float = 15,
                 timeout_s: float | None = None, sleep: Callable[[float], None] = time.sleep) -> str:
    """Poll until the job succeeds (returns its message) or fails (TrainingError with the job's message)."""
    started = time.monotonic()
    last = None
    failures = 0
    while True:
        try:
            obj = api.get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
            failures = 0
        except Exception as exc:
            failures += 1
            if failures >= 5 or getattr(exc, "status", None) in (403, 404):
                raise _api_error(exc, kind) from exc
            log.warning("reading %s %s failed (%s); retrying", kind.kind, name, exc)
            sleep(poll_s)
            continue
        state, message = job_state(kind, obj)
        if (state, message) != last:
            log.info("%s %s/%s: %s %s", kind.kind, namespace, name, state, message)
            last = (state, message)
        if state == "succeeded":
            return message
        if state == "failed":
            raise TrainingError(f"{kind.kind} {namespace}/{name} failed: {message or 'no message'}; its pods' logs: "
                                f"kubectl logs -n {namespace} -l {_pod_label(kind)}={name} --tail=100")
        if timeout_s and time.monotonic() - started > timeout_s:
            try:
                api.delete_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
            except Exception as exc:  # report the timeout, not the cleanup
                log.warning("could not delete %s %s: %s", kind.kind, name, exc)
            raise TrainingError(f"{kind.kind} {namespace}/{name} did not finish within {timeout_s:.0f} s "
                                "(resources.trainer.timeout_s); it was deleted")
        sleep(poll_s)


def _pod_label(kind: JobKind) -> str:
    return "jobset.sigs.k8s.io/jobset-name" if kind is TRAINJOB else "training.kubeflow.org/job-name"


def upload_data(data_dir: str | Path, uri: str) -> None:
    from bakeoff.storage import upload_dir

    keys = upload_dir(data_dir, f"{uri}/data")
    log.info("uploaded %d data files to %s/data", len(keys), uri)


def collect_result(uri: str, out_dir: str | Path) -> Path:
    """Download the adapter rank 0 uploaded; an upload without its COMPLETE marker is an error."""
    from bakeoff.storage import download_s3_prefix

    with tempfile.TemporaryDirectory() as tmp:
        try:
            download_s3_prefix(f"{uri}/result", tmp)
        except StorageError as exc:
            raise TrainingError(f"the training job finished but left no result at {uri}/result: {exc}") from exc
        if not (Path(tmp) / COMPLETE).exists():
            raise TrainingError(f"{uri}/result has no {COMPLETE} marker: the upload from rank 0 did not finish")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for path in Path(tmp).rglob("*"):
            if path.is_file() and path.name != COMPLETE:
                target = out / path.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                path.replace(target)
    return Path(out_dir)


def run_multinode(spec: ExperimentSpec, arm: str, data_dir: str | Path, out_dir: str | Path, api=None,
                  sleep: Callable[[float], None] = time.sleep) -> Path:
    """Upload the data, create (or attach to) the job, wait for it, and collect the adapter into ``out_dir``."""
    arm_spec = spec.arm(arm)
    trainer = spec.resources.trainer
    namespace = trainer.namespace or _current_namespace()
    uri = job_uri(spec, arm_spec)
    api = api or kube_api()
    manifest = build_manifest(spec, arm_spec, namespace)
    upload_data(data_dir, uri)
    submit_job(api, manifest)
    wait_for_job(api, job_kind(spec), namespace, manifest["metadata"]["name"], poll_s=trainer.poll_s,
                 timeout_s=trainer.timeout_s or spec.resources.finetune.timeout_s, sleep=sleep)
    return collect_result(uri, out_dir)


__all__ = ["MANAGER", "PYTORCHJOB", "SUPPORTED", "TRAINJOB", "build_manifest", "check_trainjob",
           "collect_result", "job_name", "job_state", "run_multinode",
           "submit_job", "training_command", "wait_for_job"]

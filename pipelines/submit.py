"""Submitting a spec to Kubeflow Pipelines: compile, create the run, print its URL, wait, fetch the report.

Auth, in order: a bearer token (``token`` or ``KFP_TOKEN``); inside a cluster, the projected service
account token Kubeflow mounts for pipeline clients (``KF_PIPELINES_SA_TOKEN_PATH``, default
``/var/run/secrets/kubeflow/pipelines/token``); otherwise none (a port-forwarded or open endpoint).

The report comes back from the pipeline root (KFP's artifact store, ``minio://mlpipeline/v2/artifacts``
unless the run sets another): the report task's ``html``, ``markdown`` and ``results`` artifacts, read
with the project's S3 client (``S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``).
"""

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bakeoff.errors import BakeoffError, StorageError
from bakeoff.spec import ExperimentSpec

log = logging.getLogger(__name__)

DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
REPORT_FILES = {"html": "report.html", "markdown": "report.md", "results": "results.json"}


@dataclass
class SubmittedRun:
    run_id: str
    url: str
    experiment: str
    run_name: str
    namespace: str | None
    pipeline_name: str


def make_client(host: str, token: str | None = None, namespace: str | None = None):
    """A ``kfp.Client`` for ``host`` with a bearer token, the in-cluster service account token, or none."""
    import kfp

    token = token or os.environ.get("KFP_TOKEN")
    kwargs = {"host": host}
    if namespace:
        kwargs["namespace"] = namespace
    if token:
        kwargs["existing_token"] = token
    else:
        sa_path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", SA_TOKEN_PATH)
        if Path(sa_path).is_file():
            from kfp.client import ServiceAccountTokenVolumeCredentials

            kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(path=sa_path)
            log.info("authenticating with the service account token at %s", sa_path)
    try:
        return kfp.Client(**kwargs)
    except Exception as exc:  # connection, auth and TLS errors surface here or on the first call
        raise BakeoffError(f"cannot reach Kubeflow Pipelines at {host}: {exc} (check the URL, and KFP_TOKEN "
                           "or the in-cluster service account for multi-user installs)") from exc


# The compiled pipelines set a container security context (kfp-kubernetes), which the backend's driver
# applies from 2.16.0 (backend/src/v2/driver/k8s.go); 2.15 and older refuse or drop it.
MIN_BACKEND = (2, 16, 0)


def backend_version(client) -> str | None:
    """The backend's release (``tag_name`` of its healthz reply: the API server writes it beside
    ``multi_user``, though the generated client's model keeps only the latter); None when unreadable."""
    api = getattr(client, "_healthz_api", None)
    if api is None:
        return None
    try:
        reply = api.healthz_service_get_healthz(_preload_content=False, _request_timeout=10)
        return json.loads(reply.data).get("tag_name") or None
    except Exception as exc:  # an old or proxied endpoint: say so, do not fail the submission
        log.debug("reading the backend's healthz failed: %s", exc)
        return None


def check_backend(client, host: str) -> str | None:
    """A warning when the backend at ``host`` is older than MIN_BACKEND (or its version unknown), else None."""
    tag = backend_version(client)
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", tag or "")
    need = ".".join(map(str, MIN_BACKEND))
    if not match:
        warning = (f"could not tell the version of Kubeflow Pipelines at {host} (healthz tag_name: {tag!r}); "
                   f"bakeoff's pipelines need backend {need} or later")
    elif tuple(map(int, match.groups())) < MIN_BACKEND:
        warning = (f"Kubeflow Pipelines at {host} is {tag}; bakeoff's pipelines need backend {need} or later "
                   "(they set a container security context, which older drivers refuse): upgrade Kubeflow "
                   "Pipelines, or expect the run's first task to fail")
    else:
        return None
    log.warning(warning)
    return warning


def run_url(host: str, run_id: str) -> str:
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


def submit(spec: ExperimentSpec, host: str, experiment: str | None = None, *, namespace: str | None = None,
           token: str | None = None, service_account: str | None = None, run_name: str | None = None,
           pipeline_root: str | None = None, client=None) -> SubmittedRun:
    """Compile ``spec`` and create a run on ``host``; returns its id and URL."""
    from bakeoff_pipelines.bakeoff_pipeline import compile_pipeline

    client = client or make_client(host, token, namespace)
    check_backend(client, host)
    experiment = experiment or f"bakeoff-{spec.name}"
    run_name = run_name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    kwargs = {"arguments": {}, "run_name": run_name, "experiment_name": experiment}
    for key, value in (("namespace", namespace), ("service_account", service_account),
                       ("pipeline_root", pipeline_root)):
        if value:
            kwargs[key] = value
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(spec, Path(tmp) / "pipeline.yaml")
        try:
            run = client.create_run_from_pipeline_package(str(package), **kwargs)
        except Exception as exc:
            raise BakeoffError(f"Kubeflow Pipelines at {host} refused the run: {exc}") from exc
    return SubmittedRun(run.run_id, run_url(host, run.run_id), experiment, run_name, namespace,
                        f"bakeoff-{spec.name}")


def wait(client, submitted: SubmittedRun, timeout_s: int, poll_s: int = 15) -> str:
    """Wait for the run to end; its final state (an error unless SUCCEEDED)."""
    try:
        run = client.wait_for_run_completion(submitted.run_id, timeout=timeout_s, sleep_duration=poll_s)
    except TimeoutError as exc:
        raise BakeoffError(f"run {submitted.run_id} did not finish within {timeout_s} s; it goes on: "
                           f"{submitted.url}") from exc
    state = str(getattr(run, "state", "UNKNOWN")).upper()
    if state != "SUCCEEDED":
        error = getattr(run, "error", None)
        message = getattr(error, "message", None) or error or ""
        raise BakeoffError(f"run {submitted.run_id} ended {state}{': ' + str(message) if message else ''}; "
                           f"see {submitted.url}")
    return state


LAUNCHER_CONFIG_MAP = "kfp-launcher"  # a namespace's KFP settings: defaultPipelineRoot
READABLE_SCHEMES = ("minio", "s3")


def namespace_pipeline_root(namespace: str | None) -> str | None:
    """The ``defaultPipelineRoot`` of the namespace's ``kfp-launcher`` ConfigMap (what KFP uses when a run sets
    no root), or None when there is none or it cannot be read."""
    if not namespace:
        return None
    try:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        data = client.CoreV1Api().read_namespaced_config_map(LAUNCHER_CONFIG_MAP, namespace).data or {}
    except Exception as exc:  # no kubeconfig, no access, no such ConfigMap: KFP's default root applies
        log.info("no %s ConfigMap root for namespace %s (%s); using KFP's default", LAUNCHER_CONFIG_MAP, namespace,
                 exc)
        return None
    return data.get("defaultPipelineRoot") or None


def artifact_prefix(root: str) -> tuple[str, str]:
    """(bucket, key prefix) of a pipeline root: ``minio://`` and ``s3://`` only, its query string (KFP's
    ``?region=...&endpoint=...`` settings) left out of the key."""
    from bakeoff.storage import parse_s3_uri

    scheme = root.split("://", 1)[0] if "://" in root else ""
    if scheme not in READABLE_SCHEMES:
        raise StorageError(f"{root}: --fetch-report reads minio:// and s3:// pipeline roots; download this run's "
                           "report from the Kubeflow UI (or with the store's own tool) instead")
    location = root.split("://", 1)[1].split("?", 1)[0].rstrip("/")
    return parse_s3_uri(f"s3://{location}")


def fetch_report(submitted: SubmittedRun, out_dir: str | Path, pipeline_root: str | None = None) -> dict[str, Path]:
    """Download the report task's artifacts of the run into ``out_dir`` (report.html, report.md, results.json).

    The root: ``pipeline_root``, else the namespace's ``kfp-launcher`` default, else KFP's default."""
    from bakeoff.storage import s3_client

    root = pipeline_root or namespace_pipeline_root(submitted.namespace) or DEFAULT_PIPELINE_ROOT
    bucket, key = artifact_prefix(root)
    prefix = "/".join(filter(None, [key, submitted.pipeline_name, submitted.run_id])) + "/"
    client = s3_client()
    try:
        objects = [o.object_name for o in client.list_objects(bucket, prefix=prefix, recursive=True)]
    except Exception as exc:
        raise StorageError(f"s3://{bucket}/{prefix}: cannot list the run's artifacts ({exc}); set S3_ENDPOINT and "
                           "credentials to KFP's artifact store (e.g. kubectl port-forward svc/minio-service 9000)") \
            from exc
    found = {}
    for name in objects:
        parts = name[len(prefix):].split("/")
        # <task>/<execution id>/<output name>  (the report task's outputs)
        if len(parts) >= 2 and parts[0] == "report" and parts[-1] in REPORT_FILES:
            found[parts[-1]] = name
    missing = sorted(set(REPORT_FILES) - set(found))
    if missing:
        raise StorageError(f"s3://{bucket}/{prefix}report/: no {', '.join(missing)} artifact(s); did the report "
                           "task run? (pass --pipeline-root if the run used another root)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for output, name in found.items():
        target = out / REPORT_FILES[output]
        client.fget_object(bucket, name, str(target))
        paths[output] = target
    return paths


__all__ = ["SubmittedRun", "fetch_report", "make_client", "run_url", "submit", "wait"]

"""`bakeoff run SPEC --host URL`: compile, submit with auth and namespace, print the run URL, wait, fetch the report."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import kfp
import pytest
import yaml

from bakeoff.cli import main

pytest_plugins = ["s3_fixture"]


class FakeKfp:
    """Stands in for kfp.Client: records how it was built and what it was asked."""

    instances: list = []
    final_state = "SUCCEEDED"

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.created = None
        FakeKfp.instances.append(self)

    def create_run_from_pipeline_package(self, package, **kwargs):
        self.created = {"pipeline": yaml.safe_load(open(package).read().split("\n---")[0])["pipelineInfo"]["name"],
                        **kwargs}
        return SimpleNamespace(run_id="run-123")

    def wait_for_run_completion(self, run_id, timeout, sleep_duration=5):
        error = SimpleNamespace(message="task finetune failed: OOMKilled") if self.final_state != "SUCCEEDED" else None
        return SimpleNamespace(run_id=run_id, state=self.final_state, error=error)


@pytest.fixture
def fake_kfp(monkeypatch):
    FakeKfp.instances = []
    FakeKfp.final_state = "SUCCEEDED"
    monkeypatch.setattr(kfp, "Client", FakeKfp)
    for var in ("KFP_TOKEN", "KFP_NAMESPACE", "KFP_SERVICE_ACCOUNT", "KFP_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", "/nonexistent/token")
    return FakeKfp


def test_submit_with_a_bearer_token_namespace_and_service_account(fake_kfp, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", "tok-123")
    assert main(["run", "experiments/smoke.yaml", "--host", "https://kfp.example.com/pipeline", "--namespace",
                 "team-a", "--service-account", "bakeoff", "--experiment", "llm-choice", "--run-name", "r1"]) == 0
    (client,) = fake_kfp.instances
    assert client.kwargs == {"host": "https://kfp.example.com/pipeline", "namespace": "team-a",
                             "existing_token": "tok-123"}
    assert client.created == {"pipeline": "bakeoff-smoke", "arguments": {}, "run_name": "r1",
                              "experiment_name": "llm-choice", "namespace": "team-a", "service_account": "bakeoff"}
    out = capsys.readouterr().out
    assert "submitted run run-123" in out
    assert "run: https://kfp.example.com/pipeline/#/runs/details/run-123" in out
    assert "tok-123" not in out


def test_in_cluster_the_pipelines_service_account_token_is_used(fake_kfp, monkeypatch, tmp_path):
    token = tmp_path / "token"
    token.write_text("projected")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    monkeypatch.setenv("KFP_HOST", "http://ml-pipeline.kubeflow:8888")
    assert main(["run", "experiments/smoke.yaml"]) == 0
    (client,) = fake_kfp.instances
    assert type(client.kwargs["credentials"]).__name__ == "ServiceAccountTokenVolumeCredentials"
    assert client.created["experiment_name"] == "bakeoff-smoke"


def test_wait_and_fetch_the_report_from_the_artifact_store(fake_kfp, s3, tmp_path, capsys):
    root = "v2/artifacts/bakeoff-smoke/run-123/report/8812"
    for name, body in (("html", b"<html>report</html>"), ("markdown", b"# report"), ("results", b"{}")):
        s3.put_bytes(f"{root}/{name}", body)
    s3.put_bytes("v2/artifacts/bakeoff-smoke/run-123/prepare-data/77/data/train.jsonl", b"{}\n")
    out_dir = tmp_path / "report"
    assert main(["run", "experiments/smoke.yaml", "--host", "http://localhost:8080", "--fetch-report", str(out_dir),
                 "--pipeline-root", f"minio://{s3.bucket}/v2/artifacts"]) == 0
    assert (out_dir / "report.html").read_bytes() == b"<html>report</html>"
    assert (out_dir / "report.md").read_text() == "# report"
    assert (out_dir / "results.json").read_text() == "{}"
    assert fake_kfp.instances[0].created["pipeline_root"] == f"minio://{s3.bucket}/v2/artifacts"
    assert "run run-123: SUCCEEDED" in capsys.readouterr().out


def test_a_failed_run_exits_1_with_its_message_and_url(fake_kfp, capsys):
    fake_kfp.final_state = "FAILED"
    assert main(["run", "experiments/smoke.yaml", "--host", "http://localhost:8080", "--wait"]) == 1
    err = capsys.readouterr().err
    assert "ended FAILED: task finetune failed: OOMKilled" in err
    assert "http://localhost:8080/#/runs/details/run-123" in err


def test_a_report_missing_from_the_store_says_where_it_looked(fake_kfp, s3, tmp_path, capsys):
    assert main(["run", "experiments/smoke.yaml", "--host", "http://localhost:8080", "--fetch-report",
                 str(tmp_path), "--pipeline-root", f"minio://{s3.bucket}/v2/artifacts"]) == 1
    err = capsys.readouterr().err
    assert f"s3://{s3.bucket}/v2/artifacts/bakeoff-smoke/run-123/report/" in err and "html" in err


POOL = """
finetune:
  gpu: {type: nvidia.com/gpu, count: 8, product: NVIDIA-H100-80GB-HBM3}
  node_selector: {cloud.google.com/gke-accelerator: nvidia-h100-80gb}
  tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
generate:
  gpu: {type: nvidia.com/gpu, count: 1, product: NVIDIA-H100-80GB-HBM3}
  node_selector: {cloud.google.com/gke-accelerator: nvidia-h100-80gb}
"""


def test_the_clusters_gpu_pool_fills_what_the_spec_leaves_unset(fake_kfp, monkeypatch, tmp_path):
    from bakeoff.cluster import apply_resource_defaults
    from bakeoff.spec import load_spec

    pool = tmp_path / "resources.yaml"
    pool.write_text(POOL)
    spec_path = tmp_path / "spec.yaml"
    data = yaml.safe_load(open("experiments/smoke.yaml"))
    data["data"]["sources"] = [{"uri": "s3://bakeoff/data/smoke.jsonl", "format": "alpaca"}]
    data["resources"] = {"finetune": {"node_selector": {"pool": "mine"}, "memory": "64Gi"}}
    spec_path.write_text(yaml.safe_dump(data))
    merged = apply_resource_defaults(load_spec(spec_path), yaml.safe_load(POOL))
    assert merged.resources.finetune.node_selector == {"pool": "mine"}  # the spec's own wins
    assert merged.resources.finetune.gpu.count == 8 and merged.resources.finetune.memory == "64Gi"
    assert merged.resources.generate.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert merged.resources.evaluate.gpu is None

    monkeypatch.setenv("BAKEOFF_GPU_POOL", str(pool))
    out = tmp_path / "p.yaml"
    assert main(["compile", str(spec_path), "-o", str(out)]) == 0
    platform = list(yaml.safe_load_all(out.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]
    assert platform["executors"]["exec-generate"]["nodeSelector"]["labels"] == \
        {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert platform["executors"]["exec-finetune"]["nodeSelector"]["labels"] == {"pool": "mine"}
    assert main(["run", str(spec_path), "--host", "http://kfp:8888"]) == 0


def test_a_bad_gpu_pool_names_its_file_and_key(monkeypatch, tmp_path, capsys):
    pool = tmp_path / "resources.yaml"
    pool.write_text("evaluate: {gpu: {count: two}}\n")
    monkeypatch.setenv("BAKEOFF_GPU_POOL", str(pool))
    assert main(["compile", "experiments/smoke.yaml", "-o", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert str(pool) in err and "resources.evaluate.gpu.count" in err


def _store_report(s3, run_id: str, root: str = "v2/artifacts") -> None:
    for name, body in (("html", f"<html>{run_id}</html>".encode()), ("markdown", b"# report"), ("results", b"{}")):
        s3.put_bytes(f"{root}/bakeoff-smoke/{run_id}/report/91/{name}", body)


def test_the_report_task_is_never_cached_so_a_cached_rerun_has_its_own_report(fake_kfp, s3, tmp_path, capsys):
    from bakeoff_pipelines import compile_pipeline

    from bakeoff.spec import load_spec

    compile_pipeline(load_spec("experiments/smoke.yaml"), tmp_path / "p.yaml")
    tasks = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))[0]["root"]["dag"]["tasks"]
    assert tasks["report"].get("cachingOptions") == {} and tasks["prepare-data"]["cachingOptions"]["enableCache"]
    # The backend on a rerun of an unchanged spec (backend/src/v2/driver): a cached task's outputs stay the
    # earlier execution's artifacts, under the earlier run's id (run-001 here); a task with caching off runs
    # again and writes under the new run's id (run-123, the one submitted below).
    s3.put_bytes("v2/artifacts/bakeoff-smoke/run-001/prepare-data/12/data/train.jsonl", b"{}\n")
    _store_report(s3, "run-001")
    _store_report(s3, "run-123")
    assert main(["run", "experiments/smoke.yaml", "--host", "http://localhost:8080", "--fetch-report",
                 str(tmp_path / "r"), "--pipeline-root", f"minio://{s3.bucket}/v2/artifacts"]) == 0
    assert (tmp_path / "r" / "report.html").read_text() == "<html>run-123</html>"


def test_a_pipeline_root_with_a_query_string_is_read_without_it(fake_kfp, s3, tmp_path):
    _store_report(s3, "run-123")
    root = f"minio://{s3.bucket}/v2/artifacts?region=us-east-1&endpoint=minio-service.kubeflow:9000&disableSSL=true"
    assert main(["run", "experiments/smoke.yaml", "--host", "http://localhost:8080", "--fetch-report",
                 str(tmp_path / "r"), "--pipeline-root", root]) == 0
    assert (tmp_path / "r" / "report.md").read_text() == "# report"


def test_an_unreadable_root_scheme_is_refused_with_what_to_do(fake_kfp, tmp_path, capsys):
    assert main(["run", "experiments/smoke.yaml", "--host", "http://localhost:8080", "--fetch-report",
                 str(tmp_path / "r"), "--pipeline-root", "gs://my-bucket/pipelines"]) == 1
    err = capsys.readouterr().err
    assert "reads minio:// and s3:// pipeline roots" in err and "Traceback" not in err


def test_without_a_root_the_namespaces_kfp_launcher_default_is_read(fake_kfp, s3, tmp_path, monkeypatch):
    import kubernetes

    _store_report(s3, "run-123", root="team-root")
    seen = {}

    class CoreV1Api:  # the one call made: read the namespace's kfp-launcher ConfigMap
        def read_namespaced_config_map(self, name, namespace):
            seen.update(name=name, namespace=namespace)
            return SimpleNamespace(data={"defaultPipelineRoot": f"minio://{s3.bucket}/team-root"})

    monkeypatch.setattr(kubernetes.config, "load_incluster_config", lambda: None)
    monkeypatch.setattr(kubernetes.client, "CoreV1Api", CoreV1Api)
    assert main(["run", "experiments/smoke.yaml", "--host", "http://localhost:8080", "--namespace", "team",
                 "--fetch-report", str(tmp_path / "r")]) == 0
    assert seen == {"name": "kfp-launcher", "namespace": "team"}
    assert (tmp_path / "r" / "report.html").read_text() == "<html>run-123</html>"


# --- the backend's version: a real kfp.Client against a loopback healthz that answers as the KFP API server
# does (backend/src/apiserver/main.go at 2.17.0: commit_sha, tag_name, multi_user, pipeline_store) --------

class FakeBackend:
    def __init__(self, tag_name: str | None):
        self.tag_name = tag_name

    def handler(self):
        from http.server import BaseHTTPRequestHandler

        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.rstrip("/") != "/apis/v2beta1/healthz":
                    self.send_error(404)
                    return
                reply = {"commit_sha": "abc123", "multi_user": False, "pipeline_store": ""}
                if backend.tag_name is not None:
                    reply["tag_name"] = backend.tag_name
                body = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler


@pytest.mark.parametrize(("tag", "warned"), [("2.15.0", "is 2.15.0; bakeoff's pipelines need backend 2.16.0 or later"),
                                             ("2.16.0", None), ("2.17.0", None), ("v2.18.1", None),
                                             ("unknown", "could not tell the version"),
                                             (None, "could not tell the version")])
def test_an_older_backend_is_warned_about_before_submitting(tag, warned, monkeypatch, caplog):
    from bakeoff_pipelines.submit import check_backend, make_client
    from loopback import running

    monkeypatch.delenv("KFP_TOKEN", raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", "/nonexistent/token")
    with running(FakeBackend(tag)) as backend:
        host = f"http://127.0.0.1:{backend.httpd.server_address[1]}"
        client = make_client(host)  # the real kfp.Client: it reads healthz itself when no namespace is given
        with caplog.at_level(logging.WARNING, logger="bakeoff_pipelines.submit"):
            warning = check_backend(client, host)
    if warned is None:
        assert warning is None and not caplog.records
    else:
        assert warned in warning and host in warning
        assert [r.getMessage() for r in caplog.records] == [warning]

"""A real S3 endpoint on loopback (moto's ThreadedMotoServer) for tests that read s3:// URIs.

Use the fixtures from a test module::

    pytest_plugins = ["s3_fixture"]

``s3`` sets S3_ENDPOINT and dummy credentials through monkeypatch, creates a fresh bucket and
yields an ``S3`` helper with the bucket name and the project's own minio client.
"""

from __future__ import annotations

import itertools
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

_bucket_ids = itertools.count()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3:
    endpoint: str
    bucket: str
    client: object

    def put_file(self, key: str, path: str | Path) -> str:
        self.client.fput_object(self.bucket, key, str(path))
        return f"s3://{self.bucket}/{key}"

    def put_bytes(self, key: str, data: bytes) -> str:
        import io

        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data))
        return f"s3://{self.bucket}/{key}"


@pytest.fixture(scope="session")
def moto_server():
    """One moto S3 server on 127.0.0.1 for the whole session; yields its http:// endpoint."""
    pytest.importorskip("moto.server", reason="needs moto[server]")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(moto_server, monkeypatch) -> S3:
    """The environment pointed at the moto server and an empty bucket of this test's own."""
    monkeypatch.setenv("S3_ENDPOINT", moto_server)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("S3_SECURE", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    from bakeoff.storage import s3_client

    client = s3_client()
    bucket = f"bakeoff-test-{next(_bucket_ids)}"
    client.make_bucket(bucket)
    return S3(moto_server, bucket, client)


@pytest.fixture
def hf_offline(monkeypatch):
    """Hugging Face Hub offline mode (HF_HUB_OFFLINE=1), also where the libraries read it at import."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    try:
        import datasets.config
    except ImportError:
        pass
    else:
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)

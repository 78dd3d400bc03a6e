"""Artifact locations: local paths, ``s3://bucket/key`` (MinIO or any S3) and ``hf://org/name[@rev]``.

S3 goes through the ``minio`` client. Endpoint and credentials come from the environment, which
Kubernetes fills from a Secret: ``S3_ENDPOINT`` (``host:port`` or a URL; ``AWS_ENDPOINT_URL`` also
read), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optional ``AWS_REGION``; ``S3_SECURE=false``
(or an ``http://`` endpoint) turns TLS off.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bakeoff.errors import StorageError


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf://org/name[@revision][:split]``."""

    repo_id: str
    revision: str | None = None
    split: str | None = None


def parse_hf_uri(uri: str) -> HubRef:
    """Parse ``hf://org/name[@revision][:split]``; a malformed one is a StorageError naming it."""
    if not uri.startswith("hf://"):
        raise StorageError(f"{uri}: not an hf:// URI")
    rest = uri[len("hf://"):]
    split = None
    if ":" in rest:
        rest, split = rest.rsplit(":", 1)
    revision = None
    if "@" in rest:
        rest, revision = rest.split("@", 1)
    if not rest or rest.count("/") > 1 or rest.startswith("/") or rest.endswith("/"):
        raise StorageError(f"{uri}: expected hf://org/name[@revision][:split]")
    return HubRef(rest, revision or None, split or None)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/prefix`` -> (bucket, key); the key may be empty (whole bucket)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{uri}: expected s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client():
    """A ``minio.Minio`` client configured from the environment (see the module docstring)."""
    from minio import Minio

    endpoint = os.environ.get("S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        raise StorageError(
            "s3:// needs an endpoint: set S3_ENDPOINT (host:port or URL) and AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY (on Kubernetes, from the S3 credentials Secret)"
        )
    secure_env = os.environ.get("S3_SECURE")
    secure = True
    if "://" in endpoint:
        parsed = urlparse(endpoint)
        secure = parsed.scheme == "https"
        endpoint = parsed.netloc
    if secure_env is not None:
        secure = secure_env.strip().lower() not in ("0", "false", "no")
    return Minio(
        endpoint,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        region=os.environ.get("AWS_REGION") or None,
        secure=secure,
    )


def read_s3_json(uri: str) -> Any:
    """The JSON document at ``s3://bucket/key`` (minio's S3Error and OSError propagate: the caller says
    what a missing object means)."""
    bucket, key = parse_s3_uri(uri)
    response = s3_client().get_object(bucket, key)
    try:
        return json.loads(response.read())
    finally:
        response.close()
        response.release_conn()


def download_s3_prefix(uri: str, dest: str | Path) -> Path:
    """Copy every object under ``s3://bucket/prefix`` into ``dest``, keeping relative paths.

    If the URI names one object, it lands as ``dest/<basename>``. An empty prefix is an error.
    """
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError  # minio's transport

    bucket, key = parse_s3_uri(uri)
    dest = Path(dest)
    client = s3_client()
    try:
        prefix = key.rstrip("/") + "/" if key else ""
        objects = [o for o in client.list_objects(bucket, prefix=prefix, recursive=True) if not o.is_dir]
        if not objects and key:
            client.stat_object(bucket, key)  # a single object
            objects = None
        if objects is None:
            target = dest / Path(key).name
            client.fget_object(bucket, key, str(target))
            return dest
        if not objects:
            raise StorageError(f"{uri}: no objects under this prefix")
        for obj in objects:
            rel = obj.object_name[len(prefix):]
            client.fget_object(bucket, obj.object_name, str(dest / rel))
    except S3Error as exc:
        raise StorageError(f"{uri}: {exc.code}: {exc.message}") from exc
    except (OSError, HTTPError) as exc:  # urllib3 gives up after its retries with MaxRetryError
        raise StorageError(f"{uri}: cannot reach the S3 endpoint ({exc}); check S3_ENDPOINT") from exc
    return dest


def upload_dir(src: str | Path, uri: str, only: list[str] | None = None) -> list[str]:
    """Upload every file under ``src`` (or just the relative paths in ``only``) to ``s3://bucket/prefix/...``.

    Returns the keys written.
    """
    bucket, key = parse_s3_uri(uri)
    client = s3_client()
    keys = []
    src = Path(src)
    files = [src / name for name in only] if only is not None else [p for p in src.rglob("*") if p.is_file()]
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError

    for path in sorted(files):
        name = "/".join(filter(None, [key.rstrip("/"), path.relative_to(src).as_posix()]))
        try:
            client.fput_object(bucket, name, str(path))
        except S3Error as exc:
            raise StorageError(f"s3://{bucket}/{name}: {exc.code}: {exc.message}") from exc
        except HTTPError as exc:
            raise StorageError(f"s3://{bucket}/{name}: cannot reach the S3 endpoint ({exc}); check S3_ENDPOINT") \
                from exc
        keys.append(name)
    return keys


# The S3 settings that are not secrets (a ConfigMap may hold them), read by s3_client().
S3_SETTINGS = ("S3_ENDPOINT", "S3_SECURE", "AWS_REGION")
# Where a model-cache PVC is mounted in the pods, and the cache variables pointing into it.
MODEL_CACHE_MOUNT = "/cache"
MODEL_CACHE_ENV = {"BAKEOFF_CACHE": f"{MODEL_CACHE_MOUNT}/bakeoff", "HF_HOME": f"{MODEL_CACHE_MOUNT}/huggingface"}


def cache_root() -> Path:
    """Where bakeoff caches built models, downloads and judge replies (``BAKEOFF_CACHE``)."""
    root = os.environ.get("BAKEOFF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bakeoff")
    return Path(root)


def atomic_dir(final: Path, build) -> Path:
    """Create ``final`` by calling ``build(tmp_dir)`` and renaming, so a half-built folder is never seen.

    Processes that want the same folder at once (the ranks of one training node, pods sharing the model
    cache PVC) take a file lock first: one builds or downloads, the others wait and reuse its result.
    """
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "a") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no flock (Windows, some network filesystems): rename still protects
            pass
        if final.exists():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
        try:
            build(tmp)
            try:
                tmp.rename(final)
            except OSError:
                if not final.exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final

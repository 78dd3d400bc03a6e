"""Upload every compiled pipeline in a folder to Kubeflow Pipelines (run by the chart's upload Job).

A pipeline is named after its file; when that name exists, the file becomes a new version named
``<name>-<first 12 hex of its sha256>``, so an unchanged file is not uploaded twice.
Usage: python upload_pipelines.py DIR   (KFP_HOST names the API; multi-user KFP: kfp.Client reads the
projected token at /var/run/secrets/kubeflow/pipelines/token by itself)
"""

import hashlib
import os
import sys
from pathlib import Path


def main(folder: str) -> int:
    import kfp

    files = sorted(Path(folder).glob("*.yaml"))
    if not files:
        print(f"no compiled pipelines in {folder}; nothing to upload")
        return 0
    client = kfp.Client(host=os.environ["KFP_HOST"])
    for path in files:
        name = path.stem
        version = f"{name}-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            client.upload_pipeline(str(path), pipeline_name=name)
            print(f"uploaded pipeline {name}")
            continue
        try:
            client.upload_pipeline_version(str(path), pipeline_version_name=version, pipeline_id=pipeline_id)
        except Exception as exc:  # kfp_server_api.ApiException; an identical version is already there
            if "already exist" not in str(exc).lower():
                raise
            print(f"pipeline {name}: version {version} already uploaded")
        else:
            print(f"pipeline {name}: uploaded version {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/pipelines"))

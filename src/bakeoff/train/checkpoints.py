"""Checkpoints that survive a killed pod: saved by the Trainer, marked complete, mirrored to S3.

The Trainer writes ``checkpoint-N/`` folders into a local directory. A checkpoint counts only once it
holds the ``COMPLETE`` marker, written after every other file (and, for ``s3://``, uploaded last,
after all its files), so a checkpoint cut short by SIGKILL is never resumed from.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from bakeoff.storage import download_s3_prefix, parse_s3_uri, s3_client, upload_dir

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def _step(name: str) -> int | None:
    match = _CKPT.match(name)
    return int(match.group(1)) if match else None


def complete_local(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(_step(p.name), p) for p in root.iterdir() if p.is_dir() and (p / MARKER).is_file()]
    return sorted((s, p) for s, p in found if s is not None)


class CheckpointStore:
    """Checkpoints of one arm: a local working folder, mirrored to ``uri`` when it is ``s3://``."""

    def __init__(self, local_dir: str | Path, uri: str | None = None):
        self.local_dir = Path(local_dir)
        self.uri = uri.rstrip("/") if uri else None
        self.remote = bool(self.uri and self.uri.startswith("s3://"))

    def mark_complete(self, checkpoint: Path) -> None:
        """Write the marker (the checkpoint's files are all on disk now), then mirror it if remote."""
        if self.remote:
            # the marker goes up last: a checkpoint is complete on S3 only once all its files are there
            upload_dir(checkpoint, f"{self.uri}/{checkpoint.name}")
            (checkpoint / MARKER).write_text("complete\n")
            upload_dir(checkpoint, f"{self.uri}/{checkpoint.name}", only=[MARKER])
        else:
            (checkpoint / MARKER).write_text("complete\n")
        log.info("checkpoint %s complete%s", checkpoint.name, f" (mirrored to {self.uri})" if self.remote else "")

    def _remote_complete(self) -> list[int]:
        bucket, key = parse_s3_uri(self.uri)
        prefix = key.rstrip("/") + "/" if key else ""
        steps = set()
        for obj in s3_client().list_objects(bucket, prefix=prefix, recursive=True):
            parts = obj.object_name[len(prefix):].split("/")
            if len(parts) == 2 and parts[1] == MARKER and _step(parts[0]) is not None:
                steps.add(_step(parts[0]))
        return sorted(steps)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, downloaded into the local folder when it lives on S3."""
        local = complete_local(self.local_dir)
        best_local = local[-1][0] if local else -1
        if self.remote:
            remote = self._remote_complete()
            if remote and remote[-1] > best_local:
                name = f"checkpoint-{remote[-1]}"
                target = self.local_dir / name
                if target.exists():
                    shutil.rmtree(target)
                download_s3_prefix(f"{self.uri}/{name}", target)
                return target
        return local[-1][1] if local else None

    def discard_incomplete(self) -> list[str]:
        """Remove local checkpoint folders without the marker (left by a kill), so none is mistaken for one."""
        removed = []
        if self.local_dir.is_dir():
            for p in self.local_dir.iterdir():
                if p.is_dir() and _step(p.name) is not None and not (p / MARKER).is_file():
                    shutil.rmtree(p)
                    removed.append(p.name)
        return removed

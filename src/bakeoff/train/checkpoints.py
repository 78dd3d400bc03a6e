"""Checkpoints that survive a killed pod: saved by the Trainer, marked complete, mirrored to S3, and kept
apart by what they are checkpoints of.

The Trainer writes ``checkpoint-N/`` folders into a local directory. A checkpoint counts only once it
holds the ``COMPLETE`` marker, written after every other file (and, for ``s3://``, uploaded last,
after all its files), so a checkpoint cut short by SIGKILL is never resumed from.

Each checkpoint also records the fingerprint of the training it belongs to (``FINGERPRINT``: a hash of
the model, the PEFT and training settings, the splits' content, the seed and the library versions, with
those parts), and lives under ``<root>/fp-<hash>/``: a rerun with other settings finds none of its own
and trains afresh, beside the earlier checkpoints (kept, and named in what it reports), never from them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakeoff.errors import StorageError
from bakeoff.storage import download_s3_prefix, parse_s3_uri, s3_client, upload_dir

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
FINGERPRINT = "bakeoff_fingerprint.json"  # in each checkpoint: {"digest": ..., "parts": {...}}
_CKPT = re.compile(r"^checkpoint-(\d+)$")
_KEYED = re.compile(r"^fp-[0-9a-f]{16}$")


def _step(name: str) -> int | None:
    match = _CKPT.match(name)
    return int(match.group(1)) if match else None


def fingerprint_digest(parts: dict[str, Any]) -> str:
    """The hash of a training's fingerprint parts (key order does not matter)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint_key(digest: str) -> str:
    """The folder a fingerprint's checkpoints live in, under the arm's checkpoint root."""
    return f"fp-{digest[:16]}"


def changed_parts(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The names of the parts that differ between two fingerprints, in ``new``'s order."""
    missing = object()
    names = list(new) + [k for k in old if k not in new]
    return [k for k in names if old.get(k, missing) != new.get(k, missing)]


def complete_local(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(_step(p.name), p) for p in root.iterdir() if p.is_dir() and (p / MARKER).is_file()]
    return sorted((s, p) for s, p in found if s is not None)


def read_fingerprint(checkpoint: Path) -> dict[str, Any] | None:
    """What a checkpoint records of the training it belongs to (None: it records nothing)."""
    path = checkpoint / FINGERPRINT
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


@dataclass(frozen=True)
class Earlier:
    """The newest complete checkpoint under the arm's root that belongs to another training."""

    step: int
    location: str
    parts: dict[str, Any] | None  # None: written before checkpoints recorded a fingerprint

    def changed(self, parts: dict[str, Any]) -> list[str]:
        """What differs from ``parts`` (empty when the earlier checkpoint recorded no parts)."""
        return changed_parts(self.parts, parts) if self.parts is not None else []

    def reason(self, parts: dict[str, Any]) -> str:
        """Why a training with ``parts`` does not resume from this checkpoint, in a few words."""
        if self.parts is None:
            return f"earlier checkpoint (step {self.step}, {self.location}) records no fingerprint"
        changed = ", ".join(self.changed(parts)) or "its fingerprint"
        return (f"earlier checkpoint (step {self.step}, {self.location}) had a different fingerprint "
                f"(changed: {changed})")


class CheckpointStore:
    """Checkpoints of one arm's training: a local working folder, mirrored to ``uri`` when it is ``s3://``.

    With ``parts`` (the training's fingerprint parts) the checkpoints go to ``fp-<hash>/`` under the local
    root and ``uri``, and only checkpoints recording the same fingerprint are resumed from.
    """

    def __init__(self, local_dir: str | Path, uri: str | None = None, parts: dict[str, Any] | None = None):
        self.root_local = Path(local_dir)
        self.root_uri = uri.rstrip("/") if uri else None
        self.remote = bool(self.root_uri and self.root_uri.startswith("s3://"))
        self.parts = parts
        self.digest = fingerprint_digest(parts) if parts is not None else None
        self.key = fingerprint_key(self.digest) if self.digest else None
        self.local_dir = self.root_local / self.key if self.key else self.root_local
        self.uri = f"{self.root_uri}/{self.key}" if self.root_uri and self.key else self.root_uri

    def location(self, step: int) -> str:
        """Where checkpoint ``step`` is kept: on S3 when mirrored there, else the local folder."""
        return f"{self.uri}/checkpoint-{step}" if self.remote else str(self.local_dir / f"checkpoint-{step}")

    def mark_complete(self, checkpoint: Path) -> None:
        """Record the fingerprint and write the marker (the checkpoint's files are all on disk now), then
        mirror it if remote."""
        if self.digest is not None:
            (checkpoint / FINGERPRINT).write_text(json.dumps({"digest": self.digest, "parts": self.parts},
                                                             indent=1, sort_keys=True, default=str))
        if self.remote:
            # the marker goes up last: a checkpoint is complete on S3 only once all its files are there
            upload_dir(checkpoint, f"{self.uri}/{checkpoint.name}")
            (checkpoint / MARKER).write_text("complete\n")
            upload_dir(checkpoint, f"{self.uri}/{checkpoint.name}", only=[MARKER])
        else:
            (checkpoint / MARKER).write_text("complete\n")
        log.info("checkpoint %s complete%s", checkpoint.name, f" (mirrored to {self.uri})" if self.remote else "")

    def _ours(self, checkpoint: Path) -> bool:
        if self.digest is None:
            return True
        recorded = read_fingerprint(checkpoint)
        return bool(recorded) and recorded.get("digest") == self.digest

    def _remote_complete(self) -> list[int]:
        return sorted(step for rel, step, _ in _remote_markers(self.uri) if "/" not in rel)

    def latest(self) -> Path | None:
        """The newest complete checkpoint of this training, downloaded into the local folder when it lives
        on S3."""
        local = [(s, p) for s, p in complete_local(self.local_dir) if self._ours(p)]
        best_local = local[-1][0] if local else -1
        if self.remote:
            remote = self._remote_complete()
            if remote and remote[-1] > best_local:
                name = f"checkpoint-{remote[-1]}"
                target = self.local_dir / name
                if target.exists():
                    shutil.rmtree(target)
                download_s3_prefix(f"{self.uri}/{name}", target)
                if self._ours(target):
                    return target
                log.warning("%s/%s records another fingerprint: not resumed from", self.uri, name)
                shutil.rmtree(target)
        return local[-1][1] if local else None

    def earlier(self) -> Earlier | None:
        """The newest complete checkpoint under the arm's root that is not this training's: another
        fingerprint's, or one from before checkpoints recorded fingerprints (directly under the root)."""
        if self.digest is None:
            return None
        if self.remote:
            return self._earlier_remote()
        found = []
        for folder in [self.root_local, *sorted(self.root_local.glob("fp-*"))]:
            if folder == self.local_dir or (folder != self.root_local and not _KEYED.match(folder.name)):
                continue
            found += [((p / MARKER).stat().st_mtime, s, p) for s, p in complete_local(folder)]
        if not found:
            return None
        _, step, path = max(found)
        return Earlier(step, str(path), (read_fingerprint(path) or {}).get("parts"))

    def _earlier_remote(self) -> Earlier | None:
        others = [(when, rel, step) for rel, step, when in _remote_markers(self.root_uri)
                  if "/" not in rel or (rel.split("/")[0] != self.key and _KEYED.match(rel.split("/")[0]))]
        if not others:
            return None
        _, rel, step = max(others)
        where = f"{self.root_uri}/{rel}"
        with tempfile.TemporaryDirectory() as tmp:
            try:
                download_s3_prefix(f"{where}/{FINGERPRINT}", tmp)
                parts = (read_fingerprint(Path(tmp)) or {}).get("parts")
            except StorageError:  # no fingerprint there: a checkpoint from before they were recorded
                parts = None
        return Earlier(step, where, parts)

    def discard_incomplete(self) -> list[str]:
        """Remove local checkpoint folders without the marker (left by a kill), so none is mistaken for one."""
        removed = []
        if self.local_dir.is_dir():
            for p in self.local_dir.iterdir():
                if p.is_dir() and _step(p.name) is not None and not (p / MARKER).is_file():
                    shutil.rmtree(p)
                    removed.append(p.name)
        return removed


def _remote_markers(uri: str) -> list[tuple[str, int, float]]:
    """Every complete checkpoint under ``uri`` (an ``s3://`` prefix), at most one fingerprint folder deep:
    (the checkpoint's path relative to ``uri``, its step, when its marker was written)."""
    bucket, key = parse_s3_uri(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    found = []
    for obj in s3_client().list_objects(bucket, prefix=prefix, recursive=True):
        parts = obj.object_name[len(prefix):].split("/")
        if parts[-1] != MARKER or len(parts) not in (2, 3) or _step(parts[-2]) is None:
            continue
        when = obj.last_modified.timestamp() if obj.last_modified else 0.0
        found.append(("/".join(parts[:-1]), _step(parts[-2]), when))
    return found

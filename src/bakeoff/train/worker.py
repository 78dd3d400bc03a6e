"""The entry of the processes bakeoff starts itself: each rank of a torchrun launch (several GPUs in one
pod, started by ``bakeoff.train.launch``) and each pod of a Kubeflow Trainer job (several nodes, started
by ``bakeoff.train.trainer_job``). Never the user CLI:

    python -m bakeoff.train.worker --spec SPEC --arm ARM --data DIR|s3://... --out DIR|s3://...

A worker trains its own rank in this process and never launches anything. With ``s3://`` data each rank
downloads the splits; with an ``s3://`` output global rank 0 uploads the result, its ``COMPLETE`` marker
last. ``--spec`` is a file or ``env:NAME`` (the Trainer job's pods get the spec in an environment
variable). To run several GPUs by hand: ``torchrun --nproc_per_node=N -m bakeoff.train.worker ...``.
Under torchrun a rank dies with its torchrun (a parent-death signal): none is left training if torchrun is
killed; torchrun itself passes SIGTERM on, and each rank then saves a checkpoint and stops.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bakeoff.artifacts import TrainResult
from bakeoff.errors import BakeoffError, exit_code, log_to_stderr
from bakeoff.spec import ArmSpec, ExperimentSpec, load_spec
from bakeoff.train.checkpoints import MARKER
from bakeoff.train.finetune import finetune

log = logging.getLogger(__name__)


def train_arm(spec: ExperimentSpec, arm: ArmSpec, data_dir: str | Path, out_dir: str | Path) -> TrainResult:
    """Train ``arm`` of ``spec`` in this process (one rank of several, or the only one)."""
    return finetune(arm, spec.training, spec.arm_peft(arm), data_dir, out_dir, spec.training_seed(arm), spec.cost,
                    checkpoint_uri=spec.checkpoint_uri(arm))


def is_rank_zero() -> bool:
    """Whether this process writes the outputs (global rank 0, or no torchrun at all)."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def staged(data: str | Path, out: str | Path) -> Iterator[tuple[Path, Path]]:
    """Local folders for ``data`` and ``out`` when they are ``s3://`` prefixes: the data downloaded first,
    the output uploaded afterwards by rank 0 (``COMPLETE`` last: a reader collects only a whole result)."""
    from bakeoff.storage import download_s3_prefix, upload_dir

    data, out = str(data), str(out)
    with tempfile.TemporaryDirectory(prefix="bakeoff-finetune-") as tmp:
        data_dir = Path(tmp) / "data" if data.startswith("s3://") else Path(data)
        out_dir = Path(tmp) / "out" if out.startswith("s3://") else Path(out)
        if data.startswith("s3://"):
            download_s3_prefix(data, data_dir)
        yield data_dir, out_dir
        if out.startswith("s3://") and is_rank_zero():
            upload_dir(out_dir, out)
            (Path(tmp) / MARKER).write_text("complete\n")
            upload_dir(Path(tmp), out, only=[MARKER])
            log.info("uploaded the result to %s", out)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux ``PR_SET_PDEATHSIG``; nothing
    elsewhere), so no rank outlives a torchrun that was killed."""
    import ctypes

    parent = os.getppid()
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is None:
        return
    prctl(1, int(sig))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bakeoff.train.worker", description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help="a spec file, or env:NAME to read it from an environment variable")
    p.add_argument("--arm", required=True)
    p.add_argument("--data", required=True, help="the prepare stage's output folder, or an s3:// prefix")
    p.add_argument("--out", required=True, help="a folder, or an s3:// prefix (rank 0 uploads, COMPLETE last)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Train one rank; exit 0, or 2 (invalid spec) / 1 (any other error) with the reason on stderr."""
    args = build_parser().parse_args(argv)
    if "LOCAL_RANK" in os.environ:
        die_with_parent()
    log_to_stderr(logging.INFO)
    try:
        spec = load_spec(args.spec)
        with staged(args.data, args.out) as (data_dir, out_dir):
            train_arm(spec, spec.arm(args.arm), data_dir, out_dir)
    except BakeoffError as exc:
        return exit_code(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Several GPUs in one pod: the finetune stage relaunches itself under torchrun, one process per GPU.

The Trainer then runs data-parallel (DDP) across the processes; rank 0 writes the outputs. A spec that
asks for one GPU, or a machine that shows fewer GPUs than asked, trains in this process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bakeoff.errors import TrainingError
from bakeoff.spec import ExperimentSpec
from bakeoff.train.checkpoints import MARKER
from bakeoff.train.finetune import TrainResult, finetune, read_training

log = logging.getLogger(__name__)


def processes_for(spec: ExperimentSpec) -> int:
    """One process per GPU the spec asks for, when that many CUDA devices are visible; else 1."""
    import torch

    gpu = spec.resources.finetune.gpu
    wanted = gpu.count if gpu else 1
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if wanted > 1 and visible < wanted:
        log.warning("resources.finetune.gpu.count is %d but %d GPU(s) are visible: training in one process",
                    wanted, visible)
        return 1
    return wanted


def finetune_arm(spec: ExperimentSpec, arm: str, data_dir: str | Path, out_dir: str | Path,
                 processes: int | None = None) -> TrainResult:
    """Fine-tune one arm of ``spec``: in this process, or under torchrun with ``processes`` ranks."""
    arm_spec = spec.arm(arm)
    if arm_spec.is_hosted:
        # a provider trains it: upload the splits, create (or attach to) the job, follow it to the end
        from bakeoff.train.hosted import finetune_hosted

        return finetune_hosted(spec, arm_spec, data_dir, out_dir)
    if arm_spec.nodes > 1 and "LOCAL_RANK" not in os.environ:
        # several nodes: a Kubeflow Trainer job runs this same code (under torchrun) on each of them
        from bakeoff.train.trainer_job import run_multinode

        run_multinode(spec, arm, data_dir, out_dir)
        return _read_result(out_dir)
    processes = processes_for(spec) if processes is None else processes
    if processes <= 1 or "LOCAL_RANK" in os.environ:
        return finetune(arm_spec, spec.training, spec.arm_peft(arm_spec), data_dir, out_dir, spec.seed, spec.cost,
                        checkpoint_uri=spec.checkpoint_uri(arm_spec))
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "spec.json"  # JSON is YAML: the CLI loads it as any spec
        spec_file.write_text(spec.to_json())
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "bakeoff.cli", "finetune", str(spec_file), "--arm", arm, "--data", str(data_dir),
               "--out", str(out_dir), "--processes", "1"]
        log.info("training %s on %d processes: %s", arm, processes, " ".join(cmd))
        done = subprocess.run(cmd, check=False, env={**os.environ, "BAKEOFF_LAUNCHED": "1"})
    if done.returncode != 0:
        raise TrainingError(f"arm {arm}: the {processes}-process training run failed (exit {done.returncode}); "
                            "its log above says why")
    return _read_result(out_dir)


def _read_result(out_dir: str | Path) -> TrainResult:
    record = read_training(out_dir)
    fields = set(TrainResult.__dataclass_fields__)
    return TrainResult(**{k: v for k, v in record.items() if k in fields})


def finetune_remote(spec: ExperimentSpec, arm: str, data: str, out: str, processes: int | None = None) -> TrainResult:
    """``bakeoff finetune`` with ``s3://`` data and output (the training pods of a multi-node job): each
    process downloads the data, trains, and global rank 0 uploads the result, its COMPLETE marker last."""
    from bakeoff.storage import download_s3_prefix, upload_dir

    with tempfile.TemporaryDirectory(prefix="bakeoff-finetune-") as tmp:
        data_dir, out_dir = Path(tmp) / "data", Path(tmp) / "out"
        if data.startswith("s3://"):
            download_s3_prefix(data, data_dir)
        else:
            data_dir = Path(data)
        if not out.startswith("s3://"):
            return finetune_arm(spec, arm, data_dir, out, processes=processes)
        result = finetune_arm(spec, arm, data_dir, out_dir, processes=processes)
        if os.environ.get("RANK", "0") == "0":
            upload_dir(out_dir, out)
            (Path(tmp) / MARKER).write_text("complete\n")
            upload_dir(Path(tmp), out, only=[MARKER])  # last: the launcher collects only a complete result
            log.info("uploaded the result to %s", out)
        return result


__all__ = ["finetune_arm", "finetune_remote", "processes_for"]

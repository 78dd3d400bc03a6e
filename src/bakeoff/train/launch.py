"""Where an arm trains: a provider's API (hosted), a Kubeflow Trainer job (several nodes), torchrun with
one process per GPU (several GPUs in this pod), or this process. The one entry of the finetune stage.

The processes it starts run ``bakeoff.train.worker`` (never the user CLI); with DDP (or FSDP) across
them, rank 0 writes the outputs. A spec that asks for one GPU, or a machine that shows fewer GPUs than
asked, trains in this process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bakeoff.artifacts import TrainResult, read_train_result
from bakeoff.errors import TrainingError
from bakeoff.spec import ExperimentSpec
from bakeoff.train.worker import staged, train_arm

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


def finetune_arm(spec: ExperimentSpec, arm: str, data: str | Path, out: str | Path,
                 processes: int | None = None) -> TrainResult:
    """Fine-tune one arm of ``spec`` from ``data`` (the prepare output, a folder or ``s3://``) into ``out``."""
    arm_spec = spec.arm(arm)
    if "LOCAL_RANK" in os.environ and not arm_spec.is_hosted:
        raise TrainingError("this process is already a torchrun rank: run the training worker under torchrun "
                            "(torchrun --nproc_per_node=N -m bakeoff.train.worker --spec ... --arm ... --data ... "
                            "--out ...), not the finetune stage, which starts torchrun itself")
    with staged(data, out) as (data_dir, out_dir):
        if arm_spec.is_hosted:
            # a provider trains it: upload the splits, create (or attach to) the job, follow it to the end
            from bakeoff.train.hosted import finetune_hosted

            return finetune_hosted(spec, arm_spec, data_dir, out_dir)
        if arm_spec.nodes > 1:
            # several nodes: a Kubeflow Trainer job runs the worker (under torchrun) on each of them
            from bakeoff.train.trainer_job import run_multinode

            run_multinode(spec, arm, data_dir, out_dir)
            return read_train_result(out_dir)
        processes = processes_for(spec) if processes is None else processes
        if processes <= 1:
            return train_arm(spec, arm_spec, data_dir, out_dir)
        return _torchrun(spec, arm, processes, data_dir, out_dir)


def _torchrun(spec: ExperimentSpec, arm: str, processes: int, data_dir: Path, out_dir: Path) -> TrainResult:
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "spec.json"  # JSON is YAML: the worker loads it as any spec
        spec_file.write_text(spec.to_json())
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "bakeoff.train.worker", "--spec", str(spec_file), "--arm", arm, "--data", str(data_dir),
               "--out", str(out_dir)]
        log.info("training %s on %d processes: %s", arm, processes, " ".join(cmd))
        done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise TrainingError(f"arm {arm}: the {processes}-process training run failed (exit {done.returncode}); "
                            "its log above says why")
    return read_train_result(out_dir)


__all__ = ["finetune_arm", "processes_for"]

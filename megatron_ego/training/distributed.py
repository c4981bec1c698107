"""Process set-up for every launcher: deepspeed, torchrun, srun, or a plain `python` (1 process).

Reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (SLURM_* as a fallback), starts
DeepSpeed's communication backend (NCCL on GPUs, gloo on CPU), picks the device, and creates
megatron-core's trivial model-parallel groups.
"""

from __future__ import annotations

import os

from megatron_ego.model.parallel import ensure_model_parallel
from megatron_ego.runtime.device import cuda_available
from megatron_ego.runtime.processes import Processes, current_processes, local_device


def _env_from_slurm() -> None:
    """Under `srun python ...` (no torchrun), derive the torch variables from SLURM's."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ.get("SLURM_NTASKS", "1")
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def _free_port() -> int:
    """A TCP port free right now on this host (for a single process without a launcher)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip_deepspeed_cpu_shm_op() -> None:
    """On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce op at start-up (30 s to minutes
    on 2 cores, docs/environment.md). gloo does the same job; mark the op unavailable."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed() -> Processes:
    """Initialise torch.distributed through DeepSpeed; single process when no launcher is used."""
    import deepspeed

    _env_from_slurm()
    if "WORLD_SIZE" not in os.environ:  # plain `python launch/pretrain.py`: one process
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise RuntimeError("WORLD_SIZE is set but MASTER_ADDR/MASTER_PORT are not: launch with "
                           "deepspeed, torchrun or srun (launch/slurm/pretrain.sbatch)")
    on_gpu = cuda_available()
    if not on_gpu:
        _skip_deepspeed_cpu_shm_op()
    device = local_device(on_gpu, int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    ensure_model_parallel()
    return current_processes(device)

"""The processes of a run: one per GPU under a launcher (deepspeed, torchrun, srun), or a single
plain process. One description (`Processes`) and one "more than one rank" test (`multi_rank`) for
training, evaluation and the losses.

Training joins through DeepSpeed (`training/distributed.py`); evaluation joins a plain torchrun
group with `join_processes`. Work is sharded over the ranks in contiguous blocks, so gathering in
rank order restores the original order:

    procs = join_processes()             # reads RANK / WORLD_SIZE / LOCAL_RANK (torchrun)
    mine = procs.shard(np.arange(1000))  # this rank's block
    everything = procs.gather(features)  # [sum of n_r, ...] in rank order
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


def multi_rank() -> bool:
    """True when a process group of more than one rank is in use (collectives are needed)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` [n_r, ...] along dim 0 (rank order); sizes may differ.

    Returns ``x`` itself when no process group (or a single rank) is in use.
    """
    if not multi_rank():
        return x
    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_int = [int(s.item()) for s in sizes]
    longest = max(sizes_int)
    padded = x.new_zeros((longest, *x.shape[1:]))  # [max n_r, ...]
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes_int)], dim=0)


@dataclass(frozen=True)
class Processes:
    """This process's place in the run and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: np.ndarray) -> np.ndarray:
        """This rank's contiguous block of ``items`` (blocks differ in size by at most one)."""
        return np.array_split(np.asarray(items), self.world_size)[self.rank]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of every rank, in rank order (``x`` itself on one process)."""
        if self.world_size == 1:
            return x
        if x.dtype == torch.bool:  # NCCL gathers bytes, not bools
            return gather_rows(x.to(self.device, torch.uint8)).bool()
        return gather_rows(x.to(self.device))

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def local_device(use_cuda: bool, local_rank: int) -> torch.device:
    """GPU ``local_rank`` (made current) or the CPU."""
    if not use_cuda:
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def current_processes(device: torch.device) -> Processes:
    """The set-up as the (possibly absent) process group reports it."""
    joined = dist.is_available() and dist.is_initialized()
    return Processes(
        rank=dist.get_rank() if joined else 0,
        world_size=dist.get_world_size() if joined else 1,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        device=device,
    )


def join_processes(device: str | None = None) -> Processes:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPU).

    Args:
        device: "cpu" or "cuda"; None = CUDA when available. Each rank takes GPU LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    target = local_device(use_cuda, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return current_processes(target)

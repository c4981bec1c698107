"""Evaluation processes: one per GPU under torchrun, or a single plain process.

Every task shards its inputs over the ranks (contiguous blocks, so gathering in rank order
restores the original order) and gathers the results with ``knn.gather_rows``.

    ranks = init_eval_ranks()            # reads RANK / WORLD_SIZE / LOCAL_RANK (torchrun)
    mine = ranks.shard(np.arange(1000))  # this rank's block
    everything = ranks.gather(features)  # [sum of n_r, ...] in rank order
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from megatron_ego.eval.knn import gather_rows


@dataclass(frozen=True)
class EvalRanks:
    rank: int
    world_size: int
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


def init_eval_ranks(device: str | None = None) -> EvalRanks:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPU).

    Args:
        device: "cpu" or "cuda"; None = CUDA when available. Each rank takes GPU LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    size = dist.get_world_size() if dist.is_initialized() else 1
    return EvalRanks(rank=rank, world_size=size, device=target)

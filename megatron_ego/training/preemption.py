"""Checkpoint-on-signal: SIGTERM (scancel, node drain) and SIGUSR1 (SLURM `--signal=B:USR1@120`).

The handler only records the signal; the trainer polls `requested()` at each step boundary. The
flag is all-reduced so that every rank stops after the same step, even if only one was signalled.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from megatron_ego.runtime.processes import multi_rank


class PreemptionHandler:
    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, _frame) -> None:
        self.received = signum

    def requested(self, device: torch.device) -> bool:
        """True on every rank when any rank received a signal (a collective: call on all ranks)."""
        return self.poll(device)[0]

    def poll(self, device: torch.device, lease_lost: bool = False) -> tuple[bool, bool]:
        """(any rank received a signal, any rank lost the run folder's lease), on every rank:
        one all-reduce per step carries both (a collective: call on all ranks)."""
        flags = torch.tensor([1.0 if self.received is not None else 0.0,
                              1.0 if lease_lost else 0.0], device=device)
        if multi_rank():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signal_seen, lost = flags.tolist()
        return signal_seen > 0, lost > 0

    def restore(self) -> None:
        """Put the previous handlers back; after a signal, ignore further copies instead (a
        step-wide SIGUSR1 arrives twice under launch/slurm/torchrun_node.sh, and a late copy
        must not kill a process that has checkpointed and is exiting)."""
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_IGN if self.received is not None else handler)

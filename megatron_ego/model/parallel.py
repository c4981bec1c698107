"""megatron-core model-parallel groups for TP = PP = 1 (data parallelism is DeepSpeed's).

megatron-core builds its layers against process groups even on one process. Callers that already
run under a launcher initialise torch.distributed first (training/distributed.py); everyone else
(inference, tests, summaries) gets a one-process gloo world on an in-memory store: no port, no
environment variables asked of the caller.
"""

from __future__ import annotations

import torch.distributed as dist
from megatron.core import parallel_state


def ensure_model_parallel() -> None:
    """Create the (trivial) tensor/pipeline model-parallel groups if they do not exist yet."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=1, pipeline_model_parallel_size=1
        )

"""torchrun, exiting with its workers' exit code.

torchrun turns any failed worker into its own exit code 1 (the worker's code is only printed in
its failure summary). The SLURM scripts act on the trainer's codes (launch/pretrain.py: 2 input
error, 3 the run stopped itself, 75 preempted), so launch/slurm/torchrun_node.sh starts torchrun
through this: torchrun's own `main`, the same options, then the exit code of the first worker
that failed (128 + N for one killed by signal N), or 0 when every worker finished.

    python launch/torchrun_exit.py --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \
        --rdzv_endpoint 10.0.0.1:29500 launch/pretrain.py --config configs/egoagent_300m.yaml
"""

from __future__ import annotations

import sys


def worker_exit_code(failures: dict) -> int:
    """The exit code of the first failed worker (`ProcessFailure`s by rank; a negative exitcode
    is a signal), as a shell reports it; 1 when none has one."""
    if not failures:
        return 1
    first = min(failures.values(), key=lambda failure: failure.timestamp)
    code = int(first.exitcode)
    return 128 - code if code < 0 else (code or 1)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except ChildFailedError as err:
        print(err.format_msg(), file=sys.stderr)
        return worker_exit_code(err.failures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

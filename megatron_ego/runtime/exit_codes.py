"""The process exit codes of the entry points (launch/pretrain.py; evaluate.py and export.py use
0, 1 and 2), so that a wrapper or a SLURM requeue policy can tell why a job ended
(docs/reliability.md, "Exit codes").

    sys.exit(exit_codes.PREEMPTED)
"""

from __future__ import annotations

FINISHED = 0
"""Done: trained to schedule.train_iters or --max_steps, evaluated, exported. Do not requeue."""
CRASHED = 1
"""An uncaught exception (Python's default: a bug, with its traceback), or a rank that lost its
peers (one line; the first failing rank's own line says why). Do not requeue blindly."""
INPUT_ERROR = 2
"""Bad input found at start-up (config, data, paths, a checkpoint that does not fit this
config, a run folder held by another job): one `error:` line, nothing trained. Do not requeue:
the same input fails again."""
STOPPED = 3
"""The run stopped itself: diverged, non-finite weights, too much bad data, a full disk; one
`error:` line that names the checkpoint to resume from. Do not requeue."""
PREEMPTED = 75
"""A signal (SIGTERM, SIGUSR1) was received and a checkpoint written: requeue and resume.
75 is sysexits.h's EX_TEMPFAIL ("try again later")."""

__all__ = ["CRASHED", "FINISHED", "INPUT_ERROR", "PREEMPTED", "STOPPED"]

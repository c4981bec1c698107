#!/usr/bin/env bash
# One per node, started by srun from pretrain.sbatch: `torchrun "$@"`, with SIGUSR1 handed to the
# training processes only.
#
# Why: a signal sent to a job step reaches every process of the step, and torchrun's default is
# to die on SIGUSR1 (it catches only TERM, INT, HUP and QUIT), which would end the step -- and
# kill the workers -- while they write their checkpoint. So torchrun starts with SIGUSR1 ignored
# (inherited across exec), and this wrapper forwards SIGUSR1 to torchrun's children, the training
# processes, which install their own handler, checkpoint, write <run_dir>/PREEMPTED and exit 0.
# A worker may so see SIGUSR1 twice (from SLURM and from here): the trainer's handler only sets a
# flag, so the second one is a no-op.
#
#   bash launch/slurm/torchrun_node.sh --nnodes 4 --nproc_per_node 8 ... launch/pretrain.py ...
#   TORCHRUN=/path/to/torchrun bash launch/slurm/torchrun_node.sh ...   (another launcher binary)
set -uo pipefail
# shellcheck source=launch/slurm/common.sh
source "${BASH_SOURCE[0]%/*}/common.sh"

TORCHRUN=${TORCHRUN:-torchrun}
launcher_pid=

# shellcheck disable=SC2317  # invoked by the trap below
forward_usr1() {
    local worker
    [[ -n "$launcher_pid" ]] || return 0
    for worker in $(ego_child_pids "$launcher_pid"); do
        kill -USR1 "$worker" 2>/dev/null || true
    done
}
trap forward_usr1 USR1
# SLURM sends SIGTERM to every process of the step; torchrun passes it on to its workers. Outlive
# torchrun so that the step ends only when it has.
trap 'ego_info "SIGTERM on ${HOSTNAME:-this node}: waiting for torchrun"' TERM

# The subshell drops our traps, ignores SIGUSR1 and becomes torchrun (the ignore survives exec).
(
    trap '' USR1
    exec "$TORCHRUN" "$@"
) &
launcher_pid=$!

rc=0
ego_wait "$launcher_pid" || rc=$?
exit "$rc"

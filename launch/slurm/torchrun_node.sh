#!/usr/bin/env bash
# One per node, started by srun from pretrain.sbatch: torchrun with SIGUSR1 handed to the training
# processes only, one log file per rank, and the workers' own exit code.
#
# Signals: a signal sent to a job step reaches every process of the step, and torchrun's default
# is to die on SIGUSR1 (it catches only TERM, INT, HUP and QUIT), which would end the step -- and
# kill the workers -- while they write their checkpoint. So torchrun starts with SIGUSR1 ignored
# (inherited across exec), and this wrapper forwards SIGUSR1 to torchrun's children, the training
# processes, which install their own handler, checkpoint, write <run_dir>/PREEMPTED and exit.
# A worker may so see SIGUSR1 twice (from SLURM and from here): the trainer's handler only sets a
# flag, so the second one is a no-op.
# Ranks: --node_rank is this step's SLURM_NODEID, so with pretrain.sbatch's static rendezvous
# node N holds global ranks N x nproc_per_node + local rank, in SLURM's node order (c10d would
# number the nodes in the order they join).
# Logs (--logs DIR, first): torchrun writes each rank's stdout and stderr to
# DIR/node<SLURM_NODEID>/<id>/attempt_0/<local rank>/; node 0's local rank 0 (global rank 0) is
# also copied to the console, so the job's output holds one rank's lines, not every rank's.
# Exit code: torchrun reports any failed worker as 1; launch/torchrun_exit.py (the default
# launcher) runs torchrun and exits with the first failed worker's code (the trainer's 2, 3, 75).
#
#   bash launch/slurm/torchrun_node.sh --logs runs/x/logs/pretrain-7 --nnodes 4 \
#       --nproc_per_node 8 ... launch/pretrain.py ...
#   TORCHRUN=/path/to/torchrun bash launch/slurm/torchrun_node.sh ...   (another launcher binary)
set -uo pipefail
# shellcheck source=launch/slurm/common.sh
source "${BASH_SOURCE[0]%/*}/common.sh"

if [[ -n "${TORCHRUN:-}" ]]; then
    launcher=("$TORCHRUN")
else
    launcher=(python "${BASH_SOURCE[0]%/*}/../torchrun_exit.py")
fi
if [[ -n "${SLURM_NODEID:-}" ]]; then
    launcher+=(--node_rank "$SLURM_NODEID")
fi
if [[ "${1:-}" == "--logs" ]]; then
    node=${SLURM_NODEID:-0}
    launcher+=(--log-dir "$2/node$node" --redirects 3)
    if [[ "$node" == "0" ]]; then
        launcher+=(--tee 0:3)
    fi
    shift 2
fi
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
    exec "${launcher[@]}" "$@"
) &
launcher_pid=$!

rc=0
ego_wait "$launcher_pid" || rc=$?
exit "$rc"

# shellcheck shell=bash
# Launch logic shared by launch/slurm/*.sbatch and torchrun_node.sh. Sourced, never run.
#
# DRY_RUN=1: every command that would touch the cluster (srun, scontrol requeue, rm of the
# PREEMPTED marker) is printed on stdout, one per line, quoted with printf %q, and not run;
# everything informative goes to stderr. `scontrol show hostnames` is still called (tests put
# a fake scontrol first on PATH).

# Print an error that says what to do, and stop.
ego_die() {
    echo "error: $*" >&2
    exit 2
}

ego_info() {
    echo "[$(basename "$0")] $*" >&2
}

ego_is_dry_run() {
    [[ "${DRY_RUN:-0}" == "1" ]]
}

# Run a command, or print it under DRY_RUN=1.
ego_run() {
    if ego_is_dry_run; then
        local line
        printf -v line '%q ' "$@"
        echo "${line% }"
    else
        "$@"
    fi
}

# The script's header comment (its usage and settings), without the shebang and #SBATCH lines.
ego_usage() {
    sed -n '2,/^#SBATCH/{/^#SBATCH/d;/^# shellcheck/d;s/^# \{0,1\}//;p;}' "$0"
}

# `script.sbatch --help` (or -h) prints the usage and exits 0 without running anything.
ego_help_requested() {
    if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
        ego_usage
        exit 0
    fi
}

# The SLURM variables every script needs; outside SLURM, the usage and one line saying what to do.
ego_require_slurm() {
    local var
    for var in SLURM_JOB_ID SLURM_JOB_NODELIST SLURM_NNODES; do
        if [[ -z "${!var:-}" ]]; then
            ego_usage >&2
            ego_die "$var is not set: submit this script with sbatch (for DRY_RUN=1, export it yourself)"
        fi
    done
}

# Files the job reads, checked before anything is launched (under DRY_RUN=1 too).
ego_require_files() {
    local path
    for path in "$@"; do
        if [[ ! -e "$path" ]]; then
            ego_die "$path does not exist (relative to $PWD): check the path, or submit from the repository root"
        fi
    done
}

# Run a program's own input check (`launch/pretrain.py --check`, ...) before any job step: its
# summary line goes to stderr; on failure, the job stops with exit code 2 and the check's last
# line (its error). Runs under DRY_RUN=1 too. With CONTAINER_IMAGE the check runs in the
# container, as a 1-task step (under DRY_RUN=1 it is printed instead: no step can start).
ego_check() {
    local out rc=0 last
    if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
        if ego_is_dry_run; then
            ego_info "not checked under DRY_RUN=1 with CONTAINER_IMAGE (the check runs in the container):"
            ego_run srun --nodes=1 --ntasks=1 "${EGO_CONTAINER_FLAGS[@]}" "$@"
            return 0
        fi
        out=$(srun --nodes=1 --ntasks=1 "${EGO_CONTAINER_FLAGS[@]}" "$@" 2>&1) || rc=$?
    else
        out=$("$@" 2>&1) || rc=$?
    fi
    if ((rc != 0)); then
        last=$(grep -v '^[[:space:]]*$' <<<"$out" | tail -n 1)
        last=${last#*error: }
        ego_die "${last:-$1 exited with $rc} (checked before launching; nothing ran)"
    fi
    while IFS= read -r last; do
        [[ -n "$last" ]] && ego_info "$last"
    done <<<"$out"
    return 0
}

# The allocation's hosts, one per line, in SLURM's order.
ego_hostnames() {
    scontrol show hostnames "$SLURM_JOB_NODELIST"
}

# The first host of the allocation.
ego_head_node() {
    local head
    head=$(ego_hostnames | head -n 1)
    [[ -n "$head" ]] || ego_die "scontrol show hostnames '$SLURM_JOB_NODELIST' printed no host"
    echo "$head"
}

# The first host's IP address: the rendezvous endpoint. A node's name need not resolve on
# the others (or may resolve to another network); its NodeAddr is where SLURM itself reaches it,
# resolved to an address when it is a name.
ego_head_address() {
    local head addr ip
    head=$(ego_head_node)
    addr=$(scontrol show node -o "$head" 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p' | head -n 1)
    addr=${addr:-$head}
    if [[ "$addr" =~ ^[0-9]+(\.[0-9]+){3}$ || "$addr" == *:* ]]; then
        echo "$addr"
        return 0
    fi
    ip=$(getent ahostsv4 "$addr" 2>/dev/null | awk 'NR == 1 {print $1}')
    [[ -n "$ip" ]] || ego_die "cannot resolve the address of node $head (NodeAddr=$addr) for the rendezvous: ask your admin to set its NodeAddr in slurm.conf"
    echo "$ip"
}

# The trainer's run directory: output_dir/name, unless output_dir already ends with name.
ego_run_dir() {
    local output_dir=${1%/} name=$2
    if [[ "$(basename "$output_dir")" == "$name" ]]; then
        echo "$output_dir"
    else
        echo "$output_dir/$name"
    fi
}

# Environment of the launched processes, and EGO_CONTAINER_FLAGS for srun (pyxis/enroot) when
# CONTAINER_IMAGE is set. The checkout is mounted at the same path inside the container so that
# run directories, configs and the PREEMPTED marker have one path on the host and in the job.
ego_setup_environment() {
    cd "$PROJECT_DIR" || ego_die "cannot cd to PROJECT_DIR=$PROJECT_DIR"
    export PYTHONPATH="$PROJECT_DIR${PYTHONPATH:+:$PYTHONPATH}"
    # NCCL warnings (not its INFO chatter) reach the log; set NCCL_SOCKET_IFNAME, NCCL_IB_HCA and
    # the like before sbatch if your cluster needs them (srun passes the environment on).
    export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
    # Minutes a collective (NCCL on GPUs, gloo on CPUs) may wait before its rank fails: a dead
    # node ends the job instead of holding it to the time limit (DeepSpeed's process-group timeout).
    export DEEPSPEED_TIMEOUT="${DEEPSPEED_TIMEOUT:-30}"
    # A rank that crashes in C code (or hangs and gets SIGABRT) prints every thread's Python stack.
    export PYTHONFAULTHANDLER=1
    # shellcheck disable=SC2034  # read by the sbatch scripts that source this file
    EGO_CONTAINER_FLAGS=()
    if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
        local mounts="$PROJECT_DIR:$PROJECT_DIR"
        if [[ -n "${CONTAINER_MOUNTS:-}" ]]; then
            mounts+=",$CONTAINER_MOUNTS"
        fi
        # shellcheck disable=SC2034  # read by the sbatch scripts that source this file
        EGO_CONTAINER_FLAGS=(
            "--container-image=$CONTAINER_IMAGE"
            "--container-mounts=$mounts"
            "--container-workdir=$PROJECT_DIR"
            # named per job: a requeued job (same id) reuses the container it already unpacked
            "--container-name=egoagent-${SLURM_JOB_ID:-0}"
        )
    elif [[ -d "$PROJECT_DIR/.venv/bin" ]]; then
        export PATH="$PROJECT_DIR/.venv/bin:$PATH"
    fi
}

# Copy everything the batch script prints (and its srun steps) to FILE too: the run folder keeps
# one log per job, whatever --output says. Not under DRY_RUN=1 (stdout is the command list).
ego_log_to() {
    local file=$1
    ego_is_dry_run && return 0
    mkdir -p "$(dirname "$file")"
    exec > >(tee -a "$file") 2>&1
}

# The trainer's own cap on loader workers per rank (megatron_ego/data/loader.py
# MAX_AUTO_WORKERS; tests/test_slurm_pretrain.py keeps the two equal).
EGO_MAX_LOADER_WORKERS=16

# Loader workers per training process, the trainer's rule (data/loader.py `auto_workers`): the
# CPUs of the node's task (--cpus-per-task, else the node's), shared by its GPUs' ranks, less one
# for each rank itself; at least 1, at most EGO_MAX_LOADER_WORKERS. LOADER_WORKERS overrides.
ego_loader_workers() {
    local gpus=$1 cpus=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-0}} workers
    if [[ -n "${LOADER_WORKERS:-}" ]]; then
        echo "$LOADER_WORKERS"
        return 0
    fi
    workers=$(( cpus / gpus - 1 ))
    (( workers <= EGO_MAX_LOADER_WORKERS )) || workers=$EGO_MAX_LOADER_WORKERS
    (( workers >= 1 )) || workers=1
    echo "$workers"
}

# Direct children of a process, from /proc (no procps needed inside a container).
ego_child_pids() {
    local parent=$1 stat line pid state ppid
    for stat in /proc/[0-9]*/stat; do
        { line=$(<"$stat"); } 2>/dev/null || continue
        pid=${line%% *}
        read -r state ppid _ <<<"${line##*) }"
        [[ -n "$state" && "$ppid" == "$parent" ]] && echo "$pid"
    done
    return 0
}

# Wait for a background process whose wait a trapped signal may interrupt; return its status.
ego_wait() {
    local pid=$1 rc again
    while true; do
        rc=0
        wait "$pid" || rc=$?
        ((rc > 128)) || return "$rc"
        # > 128: the process died of a signal, or a trap interrupted the wait.
        if kill -0 "$pid" 2>/dev/null; then
            continue
        fi
        again=0
        wait "$pid" 2>/dev/null || again=$?
        ((again == 127)) || rc=$again
        return "$rc"
    done
}

# Run a launcher in the background and forward SIGUSR1 (the time-limit warning that
# `#SBATCH --signal=B:USR1@...` sends to this batch shell only) to it; srun passes it on to the
# job step. SIGTERM (scancel, preemption) reaches the step from SLURM itself: this shell only
# stays alive for it, so that the job does not end before the trainer has checkpointed.
# Sets EGO_GOT_USR1=1 when the warning came. Under DRY_RUN=1 prints the command instead.
EGO_GOT_USR1=0
EGO_GOT_TERM=0
EGO_LAUNCH_PID=
ego_launch_forwarding_usr1() {
    if ego_is_dry_run; then
        ego_run "$@"
        return 0
    fi
    trap _ego_on_usr1 USR1
    trap _ego_on_term TERM
    "$@" &
    EGO_LAUNCH_PID=$!
    if [[ "$EGO_GOT_USR1" == "1" ]]; then  # the warning came while the launcher was starting
        kill -USR1 "$EGO_LAUNCH_PID" 2>/dev/null || true
    fi
    local rc=0
    ego_wait "$EGO_LAUNCH_PID" || rc=$?
    trap - USR1 TERM
    return "$rc"
}

# shellcheck disable=SC2317  # invoked by the TERM trap
_ego_on_term() {
    EGO_GOT_TERM=1
    ego_info "SIGTERM: waiting for the job step to stop"
}

# shellcheck disable=SC2317  # invoked by the USR1 trap
_ego_on_usr1() {
    EGO_GOT_USR1=1
    ego_info "SIGUSR1: asking the trainer to checkpoint"
    if [[ -n "$EGO_LAUNCH_PID" ]]; then
        kill -USR1 "$EGO_LAUNCH_PID" 2>/dev/null || true
    fi
}

# The trainer's exit codes (launch/pretrain.py; launch/torchrun_exit.py passes them through
# torchrun): 0 finished, 1 crashed, 2 input error, 3 the run stopped itself, 75 preempted.
EGO_EXIT_PREEMPTED=75

# After the training step ended with `rc`: requeue the job when the trainer checkpointed on a
# signal -- it exited 75, or left <run_dir>/PREEMPTED (written after its checkpoint; a launcher
# that reports its own code instead of the workers', and trainers older than exit code 75, show
# only that) -- unless SLURM's SIGTERM came without the time-limit warning before it (scancel, or
# SLURM's own preemption, which requeues by itself). The requeued job resumes from that checkpoint (--resume auto).
# Sets EGO_JOB_RC, the job's exit code: 75 when preempted (requeued or not), else `rc`.
# shellcheck disable=SC2034  # read by pretrain.sbatch
EGO_JOB_RC=0
ego_after_training() {
    local run_dir=$1 rc=$2
    EGO_JOB_RC=$rc
    if ego_is_dry_run; then
        return 0
    fi
    if (( rc != EGO_EXIT_PREEMPTED )) && [[ ! -e "$run_dir/PREEMPTED" ]]; then
        return 0
    fi
    # shellcheck disable=SC2034  # read by pretrain.sbatch
    EGO_JOB_RC=$EGO_EXIT_PREEMPTED
    if [[ "$EGO_GOT_TERM" == "1" && "$EGO_GOT_USR1" != "1" ]]; then
        ego_info "the trainer checkpointed on SIGTERM (scancel or preemption): not requeueing; submit again to resume"
    else
        ego_info "the trainer checkpointed and stopped (exit $rc): requeueing job $SLURM_JOB_ID"
        ego_run scontrol requeue "$SLURM_JOB_ID" || ego_info "scontrol requeue failed: submit again to resume"
    fi
}

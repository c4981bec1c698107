#!/usr/bin/env bash
# A SLURM cluster on this one machine, for trying the launch/slurm/*.sbatch scripts for real: a
# munge daemon, slurmctld and two emulated nodes (n1, n2) run by Debian's multiple-slurmd build
# (`slurmd -N NAME`), each with one `gpu` GRES backed by a placeholder file, so that
# `--gpus-per-node=1` is accepted (the ranks run on CPU with gloo). Everything lives in one
# folder: configuration, keys, sockets, state, logs. Needs Debian's slurm-wlm and munge
# (`apt-get install slurm-wlm munge`); runs as root or as any user (the daemons and jobs then run
# as that user).
#
#   eval "$(bash launch/slurm/local_cluster.sh up /tmp/egoslurm)"   # start; sets SLURM_CONF
#   sbatch --nodes=2 --gpus-per-node=1 --cpus-per-task=1 launch/slurm/pretrain.sbatch ...
#   bash launch/slurm/local_cluster.sh down /tmp/egoslurm           # stop, by PID
#
# `up DIR` (DIR: a new or empty folder; default: a new one from mktemp) writes DIR/slurm.conf,
# gres.conf and cgroup.conf, starts the daemons, waits until both nodes are idle, and prints the
# one line to evaluate: `export SLURM_CONF=DIR/slurm.conf` (sbatch, srun, squeue, scontrol read
# it). `down DIR` cancels the cluster's jobs, then stops every process started for it -- the
# daemons from their PID files, and job processes left behind, found by the SLURM_CONF in their
# environment -- and leaves DIR (its logs) in place. `status DIR` prints sinfo.
# Environment: EGO_CLUSTER_CPUS (CPUs per node, default: this machine's), EGO_CLUSTER_NODES (2).
set -euo pipefail

die() {
    echo "error: $*" >&2
    exit 2
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"
}

# A TCP port that is free now on 127.0.0.1.
free_port() {
    local py
    py=$(command -v python3 || command -v python) || die "python3 is needed to pick free ports"
    "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

node_names() {
    local i
    for ((i = 1; i <= ${EGO_CLUSTER_NODES:-2}; i++)); do echo "n$i"; done
}

write_config() {
    local dir=$1 user cpus ctld_port host name port
    user=$(id -un)
    cpus=${EGO_CLUSTER_CPUS:-$(nproc)}
    ctld_port=$(free_port)
    host=$(hostname -s)
    mkdir -p "$dir"/{state,spool,log,run,dev,tmp,munge}
    chmod 700 "$dir/munge"
    cat >"$dir/slurm.conf" <<EOF
# Written by launch/slurm/local_cluster.sh: a controller and emulated nodes on $host.
ClusterName=egolocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
TmpFS=$dir/tmp/%n
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: processes are tracked by parentage, tasks are not pinned (the emulated nodes
# share this machine's CPUs).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
GresTypes=gpu
JobRequeue=1
ReturnToService=2
InactiveLimit=0
KillWait=30
MinJobAge=600
SlurmdTimeout=60
EOF
    : >"$dir/gres.conf"
    while read -r name; do
        port=$(free_port)
        # The GPU "device" is a plain file: slurmd only needs a path to hand out.
        : >"$dir/dev/$name-gpu0"
        mkdir -p "$dir/spool/$name" "$dir/tmp/$name"
        echo "NodeName=$name NodeHostname=$host NodeAddr=127.0.0.1 Port=$port CPUs=$cpus RealMemory=1000 Gres=gpu:1 State=UNKNOWN" >>"$dir/slurm.conf"
        echo "NodeName=$name Name=gpu File=$dir/dev/$name-gpu0" >>"$dir/gres.conf"
    done < <(node_names)
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$dir/slurm.conf"
    cat >"$dir/cgroup.conf" <<EOF
# Written by launch/slurm/local_cluster.sh: no cgroup plugin is configured (slurm.conf uses
# proctrack/linuxproc and task/none); nothing may be mounted or constrained.
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
}

start_munge() {
    local dir=$1
    command -v munged >/dev/null || die "munged not found: apt-get install munge"
    (umask 077 && head -c 1024 /dev/urandom >"$dir/munge/munge.key")
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
        --seed-file="$dir/munge/munged.seed"
}

wait_until() {
    local what=$1 tries=$2
    shift 2
    local i
    for ((i = 0; i < tries; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "timed out waiting for $what (logs in $CLUSTER_DIR/log)"
}

nodes_idle() {
    local states
    states=$(sinfo -h -N -o '%t' 2>/dev/null) || return 1
    [[ -n "$states" ]] && ! grep -qv '^idle$' <<<"$states"
}

up() {
    local dir=$1
    command -v slurmctld >/dev/null || die "slurmctld not found: apt-get install slurm-wlm munge"
    if [[ -e "$dir" && -n "$(ls -A "$dir")" ]]; then
        die "$dir is not empty: give a new folder (or run \`down $dir\` and remove it)"
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    CLUSTER_DIR=$dir
    # munge's socket path must fit a UNIX socket address (108 bytes)
    (( ${#dir} <= 80 )) || die "$dir is too long a path for the daemons' sockets: use a shorter folder"
    write_config "$dir"
    export SLURM_CONF=$dir/slurm.conf
    export EGO_LOCAL_CLUSTER=$dir  # marks the daemons' children for `down`
    start_munge "$dir"
    slurmctld -f "$SLURM_CONF"
    wait_until "slurmctld" 240 scontrol ping
    local name
    while read -r name; do
        slurmd -f "$SLURM_CONF" -N "$name"
    done < <(node_names)
    wait_until "the nodes to be idle" 360 nodes_idle
    echo "export SLURM_CONF=$SLURM_CONF"
}

# PIDs of the processes left by this cluster: those started by its daemons (slurmstepd, marked
# EGO_LOCAL_CLUSTER=DIR) and job processes (SLURM_JOB_ID set and this cluster's SLURM_CONF).
leftover_pids() {
    local dir=$1 environ pid vars
    for environ in /proc/[0-9]*/environ; do
        pid=${environ#/proc/}
        pid=${pid%/environ}
        [[ "$pid" == "$$" ]] && continue
        vars=$({ tr '\0' '\n' <"$environ"; } 2>/dev/null) || continue
        if grep -qxF "EGO_LOCAL_CLUSTER=$dir" <<<"$vars" || {
            grep -qxF "SLURM_CONF=$dir/slurm.conf" <<<"$vars" && grep -q '^SLURM_JOB_ID=' <<<"$vars"
        }; then
            echo "$pid"
        fi
    done
    return 0
}

stop_pids() {
    local pid i alive
    [[ $# -gt 0 ]] || return 0
    kill -TERM "$@" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        alive=0
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        ((alive)) || return 0
        sleep 0.25
    done
    kill -KILL "$@" 2>/dev/null || true
}

down() {
    local dir=$1 file pids=()
    [[ -f "$dir/slurm.conf" ]] || die "$dir holds no slurm.conf: not a cluster folder"
    dir=$(cd "$dir" && pwd)
    export SLURM_CONF=$dir/slurm.conf
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    for file in "$dir"/run/slurmd-*.pid "$dir/run/slurmctld.pid" "$dir/munge/munged.pid"; do
        [[ -f "$file" ]] && pids+=("$(<"$file")")
    done
    mapfile -t -O "${#pids[@]}" pids < <(leftover_pids "$dir")
    stop_pids "${pids[@]}"
    rm -f "$dir"/run/*.pid
}

command=${1:-}
case "$command" in
    up)
        up "${2:-$(mktemp -d -t egoslurm.XXXXXX)}"
        ;;
    down)
        [[ -n "${2:-}" ]] || die "usage: $0 down DIR"
        down "$2"
        ;;
    status)
        [[ -n "${2:-}" ]] || die "usage: $0 status DIR"
        SLURM_CONF=$(cd "$2" && pwd)/slurm.conf sinfo -N
        ;;
    -h | --help)
        usage
        ;;
    *)
        usage >&2
        die "expected up, down or status"
        ;;
esac

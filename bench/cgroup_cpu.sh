#!/usr/bin/env bash
# Run a command in a cgroup of its own and print its wall time and the CPU time of everything it
# started, daemons included (the SLURM test group's slurmd and jobs leave the command's process
# tree but stay in its cgroup). Needs root and cgroup v1's cpuacct controller; prints the load
# average before and after, since on a shared machine the wall time depends on it.
#
#   bash bench/cgroup_cpu.sh make test-slurm
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
root=/sys/fs/cgroup/cpuacct
[[ -w "$root" ]] || { echo "error: $root is not writable: needs root and cgroup v1 cpuacct" >&2; exit 2; }
group=$root/cgroup_cpu_$$
mkdir "$group"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s.%N)
rc=0
(echo "$BASHPID" >"$group/cgroup.procs" && exec "$@") || rc=$?
end=$(date +%s.%N)
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
awk -v s="$start" -v e="$end" -v ns="$(cat "$group/cpuacct.usage")" -v rc="$rc" \
    'BEGIN {printf "wall %.1f s, CPU %.1f s (all processes of the cgroup), exit %d\n", e - s, ns / 1e9, rc}'
rmdir "$group" 2>/dev/null || echo "note: processes left in $group: $(tr '\n' ' ' <"$group/cgroup.procs")"
exit "$rc"

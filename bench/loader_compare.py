"""One DataLoader worker, this code against another checkout: clips/s and shared memory per batch.

    git archive 2501002 | tar -x -C /tmp/loader_ref      # (or git worktree add /tmp/loader_ref 2501002)
    .venv/bin/python bench/loader_compare.py --ref /tmp/loader_ref --reps 7 --steps 12

Each repetition runs `loader_rate` of each checkout's own bench/loader.py (what `bench/loader.py
--workers N` prints: clips/s that `make_loader` delivers with N persistent workers, Ego-Exo4D
micro-batches of --micro-batch clips from --frame-size JPEG frames, after a warm-up), each in a
fresh process with PYTHONPATH at that checkout; the order alternates from one repetition to the
next, so that load from other jobs hits both alike. This checkout is also run with
--device-stage (the training process runs `to_device` on every micro-batch: on the CPU here when
there is no GPU). The report gives the median rate of each, the per-repetition ratios (this /
ref) and their median, the CPU time the training process and its workers spent per clip over the
timed micro-batches (from getrusage and /proc/PID/stat: steadier than rates on a loaded machine),
the load average around each repetition, and the bytes of tensors one micro-batch hands from a
worker to the training process (all of them pass through shared memory), computed from a
micro-batch of each checkout.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from megatron_ego.cli_help import make_parser

HERE = Path(__file__).resolve().parents[1]

CHILD = r"""
import importlib.util, json, os, resource, sys, types
import torch
root, workers, frame_size, micro_batch, steps, stage = sys.argv[1:7]
workers = int(workers)
sys.path.insert(0, root)
spec_ = importlib.util.spec_from_file_location("bench_loader", f"{root}/bench/loader.py")
bench = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(bench)
torch.set_num_threads(1)
bench.keep_heap_memory()
spec = bench.MultiCropSpec(global_size=224, local_size=112, num_global=2, num_local=6)
frames = bench.stored_frames(int(frame_size))
args = types.SimpleNamespace(frame_size=int(frame_size), micro_batch=int(micro_batch),
                             steps=int(steps), device_stage=stage == "1")
dataset = bench.MicroBatchDataset({bench.EGOEXO4D: bench.MemoryClips(frames, int(frame_size), 10,
                                   clips=True)}, spec, seed=0, rank=0, world_size=1,
                                  micro_batch_size=int(micro_batch))
item = dataset[0]
tensors = {k: v.numel() * v.element_size() for k, v in item.items() if torch.is_tensor(v)}

# CPU seconds of the training process and its workers over loader_rate's timed micro-batches
# (its warm-up is 2 x workers micro-batches, then max(4 x workers, steps) timed ones)
warm, timed = 2 * workers, max(4 * workers, int(steps))
ticks = os.sysconf("SC_CLK_TCK")
cpu = {}

def cpu_seconds(pids):
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total

class Counted:
    def __init__(self, it):
        self.it, self.calls = it, 0
        self.pids = [w.pid for w in getattr(it, "_workers", [])]
    def __iter__(self):
        return self
    def __next__(self):
        if self.calls == warm:
            cpu["start"] = cpu_seconds(self.pids)
        batch = next(self.it)
        self.calls += 1
        if self.calls == warm + timed:
            cpu["end"] = cpu_seconds(self.pids)
        return batch

make_loader = bench.make_loader
bench.make_loader = lambda *a, **k: Counted(make_loader(*a, **k))
rate = bench.loader_rate(args, frames, spec, workers)
per_clip = (cpu["end"] - cpu["start"]) / (timed * int(micro_batch))
print(json.dumps({"rate": rate, "cpu_s_per_clip": per_clip, "bytes": tensors}))
"""


def measure(root: Path, args, stage: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, str(root), str(args.workers), str(args.frame_size),
           str(args.micro_batch), str(args.steps), "1" if stage else "0"]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{root}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--ref", required=True, help="checkout of the code to compare against")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--reps", type=int, default=7, help="alternating repetitions")
    parser.add_argument("--steps", type=int, default=12, help="timed micro-batches per run")
    parser.add_argument("--micro-batch", type=int, default=8, help="clips per micro-batch")
    parser.add_argument("--frame-size", type=int, default=256, help="stored frame side (px)")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args()
    ref = Path(args.ref).resolve()
    names = ("ref", "this", "this_stage")
    runs = {k: [] for k in names}
    cpu = {k: [] for k in names}
    loads, sizes = [], {}
    for rep in range(args.reps):
        order = [("ref", ref, False), ("this", HERE, False), ("this_stage", HERE, True)]
        if rep % 2:
            order.reverse()
        before = os.getloadavg()[0]
        for name, root, stage in order:
            out = measure(root, args, stage)
            runs[name].append(out["rate"])
            cpu[name].append(out["cpu_s_per_clip"] * 1e3)
            sizes[name] = out["bytes"]
        loads.append((round(before, 1), round(os.getloadavg()[0], 1)))
        print(f"rep {rep}: clips/s ref {runs['ref'][-1]:.1f}, this {runs['this'][-1]:.1f}, "
              f"this + to_device {runs['this_stage'][-1]:.1f}; CPU ms per clip ref "
              f"{cpu['ref'][-1]:.1f}, this {cpu['this'][-1]:.1f}, this + to_device "
              f"{cpu['this_stage'][-1]:.1f} (load {loads[-1][0]} -> {loads[-1][1]})", flush=True)
    ratios = [a / b for a, b in zip(runs["this"], runs["ref"])]
    result = {
        "workers": args.workers, "micro_batch": args.micro_batch, "frame_size": args.frame_size,
        "steps": args.steps, "ref": str(ref), "runs": runs, "cpu_ms_per_clip": cpu,
        "median_clips_per_s": {k: statistics.median(v) for k, v in runs.items()},
        "median_cpu_ms_per_clip": {k: statistics.median(v) for k, v in cpu.items()},
        "ratio_median": statistics.median(ratios), "ratios": [round(r, 2) for r in ratios],
        "stage_ratio_median": statistics.median(
            a / b for a, b in zip(runs["this_stage"], runs["ref"])),
        "load_average": loads,
        "bytes_per_micro_batch": {k: sum(v.values()) for k, v in sizes.items() if k != "this_stage"},
        "bytes_by_key": {k: v for k, v in sizes.items() if k != "this_stage"},
    }
    med, ms = result["median_clips_per_s"], result["median_cpu_ms_per_clip"]
    print(f"{args.workers} worker(s), {args.micro_batch}-clip micro-batches, {args.frame_size} px, "
          f"medians of {args.reps}: clips/s ref {med['ref']:.1f}, this {med['this']:.1f}, "
          f"this + to_device {med['this_stage']:.1f}; CPU ms per clip ref {ms['ref']:.1f}, this "
          f"{ms['this']:.1f}, this + to_device {ms['this_stage']:.1f}")
    print(f"clips/s ratio this / ref: median {result['ratio_median']:.2f}, reps {result['ratios']}; "
          f"with to_device {result['stage_ratio_median']:.2f}")
    print("bytes per micro-batch: " + ", ".join(
        f"{k} {v:,}" for k, v in result["bytes_per_micro_batch"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

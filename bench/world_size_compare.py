"""Do 1 rank x 2 micro-steps and 2 ranks x 1 micro-step train the same run from scratch?
(issue 23 item 9)

    .venv/bin/python bench/world_size_compare.py --ego DIR --wt DIR [--steps 8] [--out DIR] \
        [-- --loss.center_init=zero ...]

Runs launch/pretrain.py twice on the same data and config (configs/tiny_cpu.yaml shrunk as in
tests/pretrain_runs.py: micro-batch 2, global batch 4) from scratch, once on 1 rank (2
accumulation steps) and once on 2 ranks started as srun starts them, and prints, per step, both
losses and their relative difference, then the largest over the steps per term. Arguments
after `--` are passed to both runs (e.g. to switch a loss term off and see what is left).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model.num_layers=2", "--model.hidden_size=64", "--model.num_attention_heads=4",
        "--model.head_hidden_dim=64", "--model.head_bottleneck_dim=32", "--model.head_out_dim=128",
        "--data.num_workers=0", "--data.num_local_crops=2", "--run.micro_batch_size=2",
        "--run.global_batch_size=4", "--schedule.warmup_iters=1", "--run.log_interval=1"]
TERMS = ("loss", "loss_represent", "loss_predict", "loss_act")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, out: Path, args: list[str]) -> dict[int, dict]:
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen(
            [sys.executable, "launch/pretrain.py", *args, f"--run.output_dir={out}",
             "--run.name=run"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"world {world} failed:\n{logs[0][-3000:]}")
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").open()]
    return {r["step"]: r for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ego", required=True, help="preprocessed Ego-Exo4D train folder")
    parser.add_argument("--wt", required=True, help="preprocessed WalkingTours folder")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default=None, help="scratch folder (default: a temp dir)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    out = Path(args.out or tempfile.mkdtemp(prefix="world_size_"))
    common = ["--config", "configs/tiny_cpu.yaml", "--ds_config", "configs/zero2.json", *TINY,
              f"--data.egoexo4d_path={args.ego}", f"--data.walking_tours_path={args.wt}",
              "--data.walking_tours_ratio=0.25", f"--schedule.train_iters={args.steps}",
              "--run.save_interval=1000", "--resume", "none", *extra]
    one, two = run(1, out / "w1", common), run(2, out / "w2", common)
    worst = {}
    print("step | " + " | ".join(f"{t} 1x2 / 2x1 (rel. diff)" for t in TERMS))
    for step in sorted(one):
        cells = []
        for term in TERMS:
            a, b = one[step].get(term), two[step].get(term)
            if a is None or b is None:
                cells.append("-")
                continue
            rel = abs(a - b) / max(abs(a), 1e-12)
            worst[term] = max(worst.get(term, 0.0), rel)
            cells.append(f"{a:.6g} / {b:.6g} ({rel:.1e})")
        print(f"{step} | " + " | ".join(cells))
    print(json.dumps({"max_relative_difference": worst, "extra": extra, "steps": args.steps}))


if __name__ == "__main__":
    main()

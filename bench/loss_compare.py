"""fp32 losses of a few training steps: this checkout against another, on the same data.

    .venv/bin/python bench/loss_compare.py --ref /tmp/loader_head --data runs/demo/data
    .venv/bin/python bench/loss_compare.py --ref /tmp/loader_head --data runs/demo/data \
        --torch-ops --data.photometric=true --data.mix_mode=within_batch

Trains configs/tiny_cpu.yaml, shrunk (2 layers, hidden 64, micro-batch 2, global batch 4, 2 local
crops), fp32, one process, one loader worker, for --steps steps on --data (a folder holding
`egoexo4d/` and `walking_tours/` preprocessed datasets, WalkingTours share 0.25) with each
checkout's launch/pretrain.py, and prints each logged step's total loss and the largest relative
difference of any loss term. Extra arguments are config overrides for both runs. --torch-ops
makes this checkout's `to_device` use the torch ops that a GPU runs (photometric_torch.py) on the
CPU instead of the numba kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from megatron_ego.cli_help import make_parser

HERE = Path(__file__).resolve().parents[1]
SMALL = ["--model.num_layers=2", "--model.hidden_size=64", "--model.num_attention_heads=4",
         "--model.head_hidden_dim=64", "--model.head_bottleneck_dim=32",
         "--model.head_out_dim=128", "--data.num_local_crops=2", "--run.micro_batch_size=2",
         "--run.global_batch_size=4", "--schedule.warmup_iters=1", "--run.log_interval=1",
         "--run.precision=fp32", "--data.num_workers=1", "--data.walking_tours_ratio=0.25"]

RUNNER = r"""
import runpy, sys
torch_ops, argv = sys.argv[1] == "1", sys.argv[2:]
if torch_ops:
    import torch
    from megatron_ego.data import on_device
    from megatron_ego.data.photometric_torch import normalize_torch, photometric_torch

    def finish_images(images, views=None):
        flat = images.reshape(-1, *images.shape[-3:])
        if flat.shape[0] == 0:
            return torch.empty(images.shape, dtype=torch.float32)
        rows = None if views is None else views.reshape(-1, on_device.VIEW_FIELDS)
        out = normalize_torch(flat) if rows is None else photometric_torch(flat, rows)
        return out.view(images.shape)

    on_device.finish_images = finish_images
sys.argv = ["launch/pretrain.py", *argv]
runpy.run_path("launch/pretrain.py", run_name="__main__")
"""


def train(root: Path, name: str, args, overrides: list[str], torch_ops: bool) -> list[dict]:
    data = Path(args.data).resolve()
    out = Path(args.out)
    argv = ["--config", "configs/tiny_cpu.yaml", "--ds_config", "configs/zero2.json", *SMALL,
            f"--data.egoexo4d_path={data / 'egoexo4d'}",
            f"--data.walking_tours_path={data / 'walking_tours'}",
            f"--schedule.train_iters={args.steps}", f"--run.output_dir={out}", f"--run.name={name}",
            "--resume", "none", "--overwrite", *overrides]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", RUNNER, "1" if torch_ops else "0", *argv],
                          cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{root}: exit {done.returncode}\n{done.stderr[-3000:]}")
    with open(out / name / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if "loss" in r]


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--ref", required=True, help="checkout to compare against")
    parser.add_argument("--data", required=True, help="folder with egoexo4d/ and walking_tours/")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps")
    parser.add_argument("--torch-ops", action="store_true", help="this checkout: the GPU's ops")
    parser.add_argument("--out", default="", help="run folders (default: a temporary one)")
    args, overrides = parser.parse_known_args()
    args.out = args.out or tempfile.mkdtemp(prefix="loss_compare_")
    ref = train(Path(args.ref).resolve(), "ref", args, overrides, torch_ops=False)
    this = train(HERE, "this", args, overrides, torch_ops=args.torch_ops)
    worst = 0.0
    for a, b in zip(ref, this):
        terms = {k: abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a if k.startswith("loss")}
        worst = max(worst, *terms.values())
        print(f"step {a['step']}: loss {a['loss']:.8f} (ref) {b['loss']:.8f} (this), relative "
              f"{terms['loss']:.1e}; largest term difference {max(terms.values()):.1e}")
    print(f"{len(ref)} and {len(this)} steps; largest relative difference of a loss term: {worst:.1e}")


if __name__ == "__main__":
    main()

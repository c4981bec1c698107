"""Loss terms of a few fp32 trainer steps on generated clips: one JSON line, to compare commits.

    PYTHONPATH=$PWD python bench/loss_terms.py --config configs/tiny_cpu.yaml --json a.json
    PYTHONPATH=$PWD python bench/loss_terms.py --config configs/tiny_cpu.yaml --json b.json
    PYTHONPATH=$PWD python bench/loss_terms.py --compare a.json b.json   # largest relative gap

The real trainer step (DeepSpeed ZeRO-2 on one process, fp32, local spec, EMA teacher, the three
losses) runs --steps optimizer steps of 2 micro-batches of 2 clips each, the micro-batches
`bench/train_step.py`'s `synthetic_batch` with seeds 0, 1, 2, ...; prints every step's term means.
A change that should only reorganise the arithmetic leaves them equal to rounding.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from megatron_ego.cli_help import make_parser


def compare(a_path: str, b_path: str) -> tuple[float, str]:
    """Largest relative difference over every term and step of two outputs, and its term."""
    with open(a_path) as fa, open(b_path) as fb:
        a, b = json.loads(fa.read()), json.loads(fb.read())
    worst, where = 0.0, ""
    for step_a, step_b in zip(a, b, strict=True):
        for name, value in step_a.items():
            if name == "nonfinite":
                continue
            gap = abs(value - step_b[name]) / max(abs(value), 1e-12)
            if gap > worst:
                worst, where = gap, name
    return worst, where


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--config", help="YAML run config (configs/*.yaml)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps")
    parser.add_argument("--json", default=None, help="also write the result line to this file")
    parser.add_argument("--compare", nargs=2, metavar="JSON",
                        help="print the largest relative difference of two outputs and exit")
    args, overrides = parser.parse_known_args(argv)
    if args.compare:
        worst, where = compare(*args.compare)
        print(json.dumps({"max_relative_difference": worst, "term": where}))
        return 0
    if not args.config:
        parser.error("--config is required")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # fp32 on CPU

    from bench.train_step import synthetic_batch
    from megatron_ego.config import load_config
    from megatron_ego.training.distributed import init_distributed
    from megatron_ego.training.trainer import Trainer

    dist_info = init_distributed()
    extra = ["--run.micro_batch_size=2", "--run.global_batch_size=4", "--run.precision=fp32",
             f"--run.output_dir={tempfile.mkdtemp(prefix='bench_loss_terms_')}",
             f"--schedule.train_iters={max(args.steps, 10)}", "--schedule.warmup_iters=1",
             "--data.walking_tours_ratio=0", "--model.transformer_impl=local"]
    cfg = load_config(args.config, [*extra, *overrides])
    trainer = Trainer(cfg, "configs/zero2.json", dist_info, resume="none")
    loader = iter([synthetic_batch(cfg, 2, dist_info.device, seed=i)
                   for i in range(2 * args.steps)])
    steps = [{k: float(v) for k, v in trainer.train_step(loader).terms.means().items()}
             for _ in range(args.steps)]
    line = json.dumps(steps)
    print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

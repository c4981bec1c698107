"""Plan a cluster run from the configs: GPU-hours per stage and model, checkpoint storage, and the
micro-batch / accumulation split on 8, 32 and 48 GPUs (docs/cluster.md prints its output).

    PYTHONPATH=$PWD python bench/cluster_plan.py                      # A100, the paper's MFU
    PYTHONPATH=$PWD python bench/cluster_plan.py --device H100 --mfu 0.3

Compute: model FLOPs per optimizer step from `megatron_ego/training/flops.py` (`clip_flops` of the
built model on torch's meta device: the student's forward and backward, the teacher's forward;
recomputation not counted), times `schedule.train_iters`, over `--mfu` x the device's dense peak
(`PEAK_TFLOPS`, the config's precision). The default MFU is the one the paper's own stage-2 time
implies for EgoAgent-300M (72,000 steps of 1,920 clips in 25 h on 32 A100s), so the 300M stage-2
row reproduces the paper by construction and the 1B row checks the count against its 60 h on 48.
Checkpoints: every parameter of the student (in the training precision: `mp_rank_00_model_states`),
its fp32 master copy and two Adam moments (the ZeRO-2 partitions, 12 bytes), and the fp32 EMA
teacher (`trainer_state.pt`, 4 bytes); `run.keep_last` of them are kept. tests/test_cluster_plan.py
checks the byte count against a real checkpoint and the doc's tables against this output.
"""

from __future__ import annotations

import sys

from megatron_ego.cli_help import make_parser
from megatron_ego.config import Config, load_config
from megatron_ego.model.summary import build_on_meta, count
from megatron_ego.training.flops import PEAK_TFLOPS, clip_flops

STAGES = {  # model -> (stage 1, stage 2) configs
    "300M": ("configs/stage1_300m.yaml", "configs/egoagent_300m.yaml"),
    "1B": ("configs/stage1_1b.yaml", "configs/egoagent_1b.yaml"),
}
PAPER_STAGE2 = {"configs/egoagent_300m.yaml": (32, 25.0), "configs/egoagent_1b.yaml": (48, 60.0)}
"""Stage 2 in the paper: (A100s, hours) [paper]."""
GPU_COUNTS = (8, 32, 48)
TRAINING_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def step_flops(cfg: Config) -> tuple[float, int]:
    """(model FLOPs of one optimizer step, parameters of the student) of a config."""
    model = build_on_meta(cfg)
    ego = clip_flops(cfg, model, with_poses=True)["train"]
    walking = clip_flops(cfg, model, with_poses=False)["train"]
    ratio = cfg.data.walking_tours_ratio
    per_clip = ratio * walking + (1 - ratio) * ego
    return cfg.run.global_batch_size * per_clip, count(model)


def checkpoint_bytes(cfg: Config, params: int) -> int:
    """Bytes of one checkpoint: student weights in the training precision, the fp32 master copy
    and two Adam moments (ZeRO-2 partitions, summed over ranks), the fp32 EMA teacher."""
    return params * (TRAINING_BYTES[cfg.run.precision] + 12 + 4)


def paper_mfu(device: str = "A100") -> float:
    """The MFU the paper's 25 h on 32 A100s for EgoAgent-300M stage 2 implies by this count."""
    path = STAGES["300M"][1]
    cfg = load_config(path)
    flops, _ = step_flops(cfg)
    gpus, hours = PAPER_STAGE2[path]
    peak = PEAK_TFLOPS[device][cfg.run.precision] * 1e12
    return cfg.schedule.train_iters * flops / (gpus * hours * 3600 * peak)


def split(cfg: Config, gpus: int) -> str:
    """'micro x accumulation' for `gpus`, or why the global batch does not split."""
    micro, batch = cfg.run.micro_batch_size, cfg.run.global_batch_size
    if batch % gpus:
        return f"n/a ({batch} is not a multiple of {gpus})"
    if (batch // gpus) % micro:
        return f"n/a ({batch // gpus} per GPU, not a multiple of {micro})"
    return f"{micro} x {batch // (micro * gpus)}"


def tables(device: str, mfu: float) -> str:
    lines = [f"Compute at MFU {mfu:.3f} of the {device}'s dense peak (model FLOPs, "
             "bench/cluster_plan.py):", "",
             "| model | stage | config | steps x batch | TFLOP per step | "
             f"{device} GPU-hours | hours on 32 GPUs | paper |",
             "|---|---|---|---|---|---|---|---|"]
    storage = ["| model | stage | parameters (student) | one checkpoint | x keep_last | export |",
               "|---|---|---|---|---|---|"]
    splits = ["| config | micro-batch | global batch | " + " | ".join(
        f"{g} GPUs: micro x accumulation" for g in GPU_COUNTS) + " |",
              "|---|---|---|" + "---|" * len(GPU_COUNTS)]
    for model, paths in STAGES.items():
        for stage, path in enumerate(paths, 1):
            cfg = load_config(path)
            flops, params = step_flops(cfg)
            peak = PEAK_TFLOPS[device][cfg.run.precision] * 1e12
            gpu_hours = cfg.schedule.train_iters * flops / (mfu * peak) / 3600
            paper = PAPER_STAGE2.get(path)
            paper_text = f"{paper[0] * paper[1]:,.0f} A100-hours ({paper[0]} x {paper[1]:g} h)" \
                if paper else "not reported"
            lines.append(f"| {model} | {stage} | `{path}` | {cfg.schedule.train_iters:,} x "
                         f"{cfg.run.global_batch_size:,} | {flops / 1e12:,.0f} | "
                         f"{gpu_hours:,.0f} | {gpu_hours / 32:,.1f} | {paper_text} |")
            one = checkpoint_bytes(cfg, params)
            keep = cfg.run.keep_last
            storage.append(f"| {model} | {stage} | {params / 1e6:,.1f} M | {one / 1e9:,.1f} GB | "
                           f"{keep} x = {keep * one / 1e9:,.1f} GB | {8 * params / 1e9:,.1f} GB |")
            splits.append(f"| `{path}` | {cfg.run.micro_batch_size} | {cfg.run.global_batch_size:,} | "
                          + " | ".join(split(cfg, g) for g in GPU_COUNTS) + " |")
    return "\n".join([*lines, "", "Checkpoints:", "", *storage, "",
                      "Batch split (DeepSpeed's gradient accumulation = global / (micro x GPUs)):",
                      "", *splits])


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--device", choices=sorted(PEAK_TFLOPS), default="A100",
                   help="whose dense peak TFLOP/s the MFU applies to")
    p.add_argument("--mfu", type=float, default=None,
                   help="model FLOPs utilisation (default: what the paper's 300M stage-2 time "
                        "implies on A100s)")
    args = p.parse_args(argv)
    mfu = args.mfu if args.mfu is not None else paper_mfu()
    if not 0 < mfu <= 1:
        p.error("--mfu must lie in (0, 1]")
    print(tables(args.device, mfu))
    return 0


if __name__ == "__main__":
    sys.exit(main())

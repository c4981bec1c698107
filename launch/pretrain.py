"""Pretrain EgoAgent under DeepSpeed ZeRO-2.

Single node, 8 GPUs:
    deepspeed --num_gpus 8 launch/pretrain.py --ds_config configs/zero2.json \
        --config configs/egoagent_300m.yaml --resume auto
Multi-node (one launcher per node; see launch/slurm/pretrain.sbatch):
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HEAD:29500 \
        launch/pretrain.py --ds_config configs/zero2.json --config configs/egoagent_300m.yaml \
        --resume auto
CPU (2 processes, the demo world):
    deepspeed --num_gpus 2 launch/pretrain.py --ds_config configs/zero2.json \
        --config configs/tiny_cpu.yaml
Any config field can be overridden: --optim.lr=3e-4 --run.micro_batch_size=32 ...
SIGTERM / SIGUSR1 write a checkpoint and exit (a PREEMPTED file marks it); `--resume auto`
continues from the newest checkpoint that verifies, on any number of ranks with the same
global batch. `--resume none` refuses a run folder that holds checkpoints (add --overwrite).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from megatron_ego.config import ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description="Pretrain EgoAgent (DeepSpeed ZeRO-2).",
        epilog="Unknown --section.key=value arguments override the YAML config.")
    parser.add_argument("--config", required=True, help="YAML run config (configs/*.yaml)")
    parser.add_argument("--ds_config", default="configs/zero2.json",
                        help="DeepSpeed JSON; 'auto' values are filled from the YAML")
    parser.add_argument("--resume", default="auto",
                        help="'auto' (the newest checkpoint of the run that verifies, if any), "
                             "'none' (a new run), or a checkpoint folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --resume none: delete the run folder's checkpoints and "
                             "metrics instead of refusing to start")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="stop after this many more steps (the schedules still follow "
                             "schedule.train_iters)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)  # per-file IndexedDataset chatter
    try:
        cfg = load_config(args.config, overrides)
        from megatron_ego.training.distributed import init_distributed
        from megatron_ego.training.ds_config import load_ds_config
        from megatron_ego.training.trainer import Trainer, check_data_paths
        from megatron_ego.versions import VersionError, check_versions

        # Before any process group or model exists: versions, missing data, JSON/YAML mismatch.
        try:
            check_versions(["torch", "megatron-core", "deepspeed"])
        except VersionError as e:
            raise ConfigError(str(e).replace("\n", "; ")) from e
        check_data_paths(cfg)
        load_ds_config(args.ds_config, cfg, int(os.environ.get("WORLD_SIZE", "1")))
        dist_info = init_distributed()
        trainer = Trainer(cfg, args.ds_config, dist_info, resume=args.resume,
                          overwrite=args.overwrite)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from megatron_ego.training.checkpoint import CheckpointError

    try:
        trainer.fit(max_steps=args.max_steps)
    except CheckpointError as e:  # e.g. the disk is full: nothing was marked complete
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

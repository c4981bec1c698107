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
See the result without training (no launcher needed):
    python launch/pretrain.py --config configs/tiny_cpu.yaml --optim.lr=1e-4 --print-config
    python launch/pretrain.py --config configs/tiny_cpu.yaml --list-keys
    WORLD_SIZE=32 python launch/pretrain.py --config configs/egoagent_300m.yaml --check
SIGTERM / SIGUSR1 write a checkpoint and exit (a PREEMPTED file marks it); `--resume auto`
continues from the newest checkpoint that verifies, on any number of ranks with the same
global batch. `--resume none` refuses a run folder that holds checkpoints (add --overwrite).

Exit codes: 0 done (or stopped by a signal after checkpointing); 2 a usage, config or data error
found at start-up (one `error:` line: what is wrong and what to do); 1 the run stopped itself
(diverged, non-finite weights, too many bad records: one `error:` line, no checkpoint written);
anything else is a crash with its traceback. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from megatron_ego.cli_help import make_parser
from megatron_ego.config import Config, ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = make_parser(
        __doc__, epilog="Unknown --section.key=value arguments override the YAML config.")
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
    parser.add_argument("--print-config", "--print_config", dest="print_config", action="store_true",
                        help="print the resolved config (YAML, overrides applied) and exit")
    parser.add_argument("--list-keys", "--list_keys", dest="list_keys", action="store_true",
                        help="print every config key with its type, resolved value and meaning, "
                             "and exit")
    parser.add_argument("--check", action="store_true",
                        help="check the config and overrides, the package versions, the datasets "
                             "and the DeepSpeed JSON for WORLD_SIZE ranks (environment; 1), then "
                             "exit: 0 with a summary line, or 2 with one error line "
                             "(launch/slurm/pretrain.sbatch runs it before srun)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_known_args(argv)


def _describe(cfg, keys: bool) -> str:
    """The resolved config as YAML, or the key listing."""
    if keys:
        from megatron_ego.config_keys import format_keys

        return format_keys(cfg)
    import yaml

    from megatron_ego.config_io import to_dict

    return yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip()


def preflight(cfg: Config, ds_config: str) -> dict:
    """What start-up checks before any process group or model exists (raises ConfigError):
    package versions, the datasets' manifests, the DeepSpeed JSON against the YAML for WORLD_SIZE
    ranks. Returns the DeepSpeed config. Imports no torch: `--check` runs it before srun."""
    from megatron_ego.training.ds_config import load_ds_config
    from megatron_ego.training.run_folder import check_data_paths
    from megatron_ego.versions import VersionError, check_versions

    try:
        check_versions(["torch", "megatron-core", "deepspeed"])
    except VersionError as e:
        raise ConfigError(str(e).replace("\n", "; ")) from e
    check_data_paths(cfg)
    return load_ds_config(ds_config, cfg, int(os.environ.get("WORLD_SIZE", "1")))


def check(cfg: Config, args: argparse.Namespace) -> int:
    """--check: `preflight`, then one line: 0 and a summary, or 2 and the error."""
    from megatron_ego.training.run_folder import run_dir_of

    try:
        ds = preflight(cfg, args.ds_config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    world = int(os.environ.get("WORLD_SIZE", "1"))
    print(f"ok: {args.config} on {world} ranks: micro-batch {cfg.run.micro_batch_size} x "
          f"{ds['gradient_accumulation_steps']} accumulation steps = global batch "
          f"{cfg.run.global_batch_size}; run folder {run_dir_of(cfg)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)  # per-file IndexedDataset chatter
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config or args.list_keys:
        print(_describe(cfg, args.list_keys))
        return 0
    if args.check:
        return check(cfg, args)
    return run(cfg, args)


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Train `cfg` (already loaded and validated); the exit code of the module docstring."""
    from megatron_ego.data.indexed import IndexedDataError
    from megatron_ego.training.checkpoint import CheckpointError
    from megatron_ego.training.guards import TrainingStopped

    try:
        from megatron_ego.training.distributed import init_distributed
        from megatron_ego.training.trainer import Trainer

        preflight(cfg, args.ds_config)  # before any process group or model exists
        dist_info = init_distributed()
        trainer = Trainer(cfg, args.ds_config, dist_info, resume=args.resume,
                          overwrite=args.overwrite)
        trainer.fit(max_steps=args.max_steps)  # opens the data first: its errors are start-up's
    except (ConfigError, IndexedDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (TrainingStopped, CheckpointError) as e:  # CheckpointError: e.g. the disk is full
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

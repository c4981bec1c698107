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
SIGTERM / SIGUSR1 write a checkpoint and exit 75 (a PREEMPTED file marks it); `--resume auto`
continues from the newest checkpoint that verifies, on any number of ranks with the same
global batch. `--resume none` refuses a run folder that holds checkpoints (add --overwrite).

Exit codes (megatron_ego/runtime/exit_codes.py, docs/reliability.md): 0 finished; 1 an uncaught
crash (its traceback); 2 an input error found at start-up (config, data, paths, a run folder in
use by another job: one `error:` line saying what to do); 3 the run stopped itself (diverged,
non-finite weights, too much bad data, a full disk: one `error:` line naming the checkpoint to
resume from); 75 preempted (a signal, a checkpoint written: requeue it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

from megatron_ego.cli_help import make_parser
from megatron_ego.config import Config, ConfigError, load_config
from megatron_ego.runtime import exit_codes


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
                        help="stop after this many more steps, at least 1 (the schedules still "
                             "follow schedule.train_iters)")
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
        return exit_codes.INPUT_ERROR
    world = int(os.environ.get("WORLD_SIZE", "1"))
    print(f"ok: {args.config} on {world} ranks: micro-batch {cfg.run.micro_batch_size} x "
          f"{ds['gradient_accumulation_steps']} accumulation steps = global batch "
          f"{cfg.run.global_batch_size}; run folder {run_dir_of(cfg)}")
    return exit_codes.FINISHED


def _thread_oserror_in_one_line(hook_args: threading.ExceptHookArgs) -> None:
    """An OSError in a helper thread (TensorBoard's writer on a full disk) is one log line; the
    main thread meets the same error at its next write and stops the run with its own line."""
    if hook_args.exc_type is not None and issubclass(hook_args.exc_type, OSError):
        name = hook_args.thread.name if hook_args.thread is not None else "?"
        logging.getLogger(__name__).warning("thread %s stopped: %s: %s", name,
                                            hook_args.exc_type.__name__, hook_args.exc_value)
        return
    threading.__excepthook__(hook_args)


def _lost_peer(err: BaseException) -> bool:
    """A collective failed because another rank is gone (it exited after its own error)."""
    import torch.distributed as dist

    text = str(err)
    return dist.is_initialized() and dist.get_world_size() > 1 and (
        isinstance(err, getattr(dist, "DistBackendError", ())) or any(
            needle in text for needle in ("Connection closed by peer", "Connection reset by peer",
                                          "Broken pipe", "NCCL communicator was aborted")))


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    threading.excepthook = _thread_oserror_in_one_line
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)  # per-file IndexedDataset chatter
    try:
        cfg = load_config(args.config, overrides)
        if args.max_steps is not None and args.max_steps < 1:
            raise ConfigError(f"--max_steps={args.max_steps} must be >= 1 (leave it out to train "
                              "to schedule.train_iters)")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.INPUT_ERROR
    if args.print_config or args.list_keys:
        print(_describe(cfg, args.list_keys))
        return exit_codes.FINISHED
    if args.check:
        return check(cfg, args)
    return run(cfg, args)


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Train `cfg` (already loaded and validated); the exit code of the module docstring."""
    from megatron_ego.data.indexed import IndexedDataError
    from megatron_ego.training.checkpoint import CheckpointError
    from megatron_ego.training.guards import TrainingStopped

    trainer = None
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
        return exit_codes.INPUT_ERROR
    except (TrainingStopped, CheckpointError) as e:  # CheckpointError: e.g. the disk is full
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.STOPPED
    except RuntimeError as e:
        if not _lost_peer(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: rank {os.environ.get('RANK', '?')} lost contact with the other ranks "
              f"({first}): another rank stopped first, and its own error line says why",
              file=sys.stderr)
        return exit_codes.CRASHED
    finally:
        if trainer is not None:
            trainer.close()  # the run folder's lease
    return exit_codes.PREEMPTED if trainer.preempted else exit_codes.FINISHED


if __name__ == "__main__":
    sys.exit(main())

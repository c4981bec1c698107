"""The run folder: where a run writes (`run_dir_of`), the data it needs before it starts
(`check_data_paths`), and the PREEMPTED marker a signal leaves for the SLURM script.

    <output_dir>/<name>/    checkpoints/ (training/checkpoint.py), RUN, metrics.jsonl,
                            tensorboard/, config.yaml, PREEMPTED
"""

from __future__ import annotations

import os
from pathlib import Path

from megatron_ego.config import Config, ConfigError

PREEMPTED = "PREEMPTED"
"""Written by rank 0 after the checkpoint a signal asked for (launch/slurm reads it)."""


def run_dir_of(cfg: Config) -> str:
    out = cfg.run.output_dir
    return out if Path(out).name == cfg.run.name else os.path.join(out, cfg.run.name)


def check_data_paths(cfg: Config) -> None:
    """Stop before any work when a dataset is missing (one line, with the command to run)."""
    d = cfg.data
    need_ego = cfg.loss.predict_weight > 0 or cfg.loss.act_weight > 0 or d.walking_tours_ratio < 1
    if need_ego and not os.path.isfile(os.path.join(d.egoexo4d_path, "manifest.json")):
        raise ConfigError(
            f"data.egoexo4d_path={d.egoexo4d_path!r} holds no preprocessed dataset; run "
            "`python -m preprocess.egoexo4d --root RAW --out DIR` first and point it there"
        )
    if d.walking_tours_ratio > 0 and not os.path.isfile(
            os.path.join(d.walking_tours_path, "manifest.json")):
        raise ConfigError(
            f"data.walking_tours_path={d.walking_tours_path!r} holds no preprocessed dataset; run "
            "`python -m preprocess.walking_tours --videos DIR --out DIR` or set "
            "data.walking_tours_ratio=0"
        )

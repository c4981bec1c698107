"""Scripted TriFinger demonstrations -> Megatron indexed datasets (the policy task's data).

    python -m preprocess.trifinger_demos --task reach_cube --out data/trifinger/reach_cube
    python -m preprocess.trifinger_demos --task move_cube --train 100 --test 25 \
        --out data/trifinger/move_cube

Runs the scripted expert (megatron_ego/eval/policy/expert.py) in the simulator from --train
training and --test held-out initial states; each episode's state comes from its own seed
(training: SEED + i, test: SEED + 1000000 + j), so a set is the same on every machine. Writes
`steps`, `frames` and `episodes` (IndexedDatasetBuilder) and `manifest.json` (format:
megatron_ego/eval/policy/demos.py, docs/data_format.md) into a temporary folder beside --out and
renames it to --out when complete: --out appears whole or not at all. An --out made with the
same options is kept as it is; one made with other options is refused (pass --overwrite).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from megatron_ego.cli_help import make_parser

TEST_SEED_OFFSET = 1_000_000
log = logging.getLogger("preprocess")


def _options(opts: argparse.Namespace) -> dict:
    return {"task": opts.task, "train": opts.train, "test": opts.test, "seed": opts.seed,
            "image_size": opts.image_size}


def _seeds(opts: argparse.Namespace) -> dict[str, list[int]]:
    return {"train": [opts.seed + i for i in range(opts.train)],
            "test": [opts.seed + TEST_SEED_OFFSET + j for j in range(opts.test)]}


def _expert_summary(success: list[float]) -> dict[str, float]:
    from megatron_ego.eval.policy.measure import SUCCESS_THRESHOLD

    values = np.asarray(success, dtype=np.float64)
    return {"score": float(values.mean() * 100) if len(values) else float("nan"),
            "success": float((values >= SUCCESS_THRESHOLD).mean() * 100) if len(values)
            else float("nan"), "episodes": len(values)}


def write_demos(opts: argparse.Namespace, folder: Path) -> dict:
    """Run the expert on every seed and write the three datasets and the manifest into
    ``folder`` (an empty temporary folder). Returns the manifest."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_ego.eval.policy.demos import FORMAT_VERSION, encode_png
    from megatron_ego.eval.policy.expert import make_expert
    from megatron_ego.eval.policy.sim import (
        CONTROL_PERIOD,
        SIM_TIME_STEP,
        TriFingerScene,
        simulator_version,
    )
    from megatron_ego.eval.policy.tasks import get_task, run_episode, sample_initial_state

    task = get_task(opts.task)
    scene = TriFingerScene(task.fixed_cube, image_size=opts.image_size)
    builders = {name: IndexedDatasetBuilder(str(folder / f"{name}.bin"), dtype=dtype)
                for name, dtype in (("steps", np.float32), ("frames", np.uint8),
                                    ("episodes", np.float32))}
    seeds, success = _seeds(opts), {"train": [], "test": []}
    start = time.perf_counter()
    for split in ("train", "test"):
        for i, seed in enumerate(seeds[split]):
            state = sample_initial_state(task, seed)
            episode = run_episode(scene, task, state, make_expert(task, state),
                                  render=split == "train")
            images = episode.images if split == "train" else [scene.render()]
            actions = np.concatenate([episode.actions, np.zeros((1, 9))])  # [T+1, 9]
            for tips, cube, action in zip(episode.tips, episode.cubes, actions):
                builders["steps"].add_item(_tensor(np.r_[tips, cube, action]))
            for image in images:
                builders["frames"].add_item(_tensor(encode_png(image)))
            builders["episodes"].add_item(_tensor(np.r_[
                state.joints, state.cube_position, state.cube_orientation, state.goal,
                episode.success]))
            for builder in builders.values():
                builder.end_document()
            success[split].append(episode.success)
            log.info("%s %s %d/%d (seed %d): expert scaled success %.3f, %.1f s so far",
                     task.name, split, i + 1, len(seeds[split]), seed, episode.success,
                     time.perf_counter() - start)
    scene.close()
    for name, builder in builders.items():
        builder.finalize(str(folder / f"{name}.idx"))
    manifest = {
        "format_version": FORMAT_VERSION, "source": "trifinger", "task": task.name,
        "simulator": simulator_version(), "camera": "camera60", "image_size": opts.image_size,
        "encoding": "png", "control_period_s": CONTROL_PERIOD, "sim_time_step_s": SIM_TIME_STEP,
        "num_actions": task.num_actions, "seeds": seeds,
        "expert": {split: _expert_summary(values) for split, values in success.items()},
        "preprocess": _options(opts),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _tensor(values: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(values))


def _existing(out: Path, opts: argparse.Namespace) -> dict | None:
    """The manifest of a complete --out made with the same options, else None (or an error)."""
    manifest_path = out / "manifest.json"
    if not out.exists():
        return None
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}
        if manifest.get("preprocess") == _options(opts) and not opts.overwrite:
            return manifest
    if not opts.overwrite:
        raise FileExistsError(f"--out {out} exists and was not made with these options: remove "
                              "it, pass --overwrite, or choose another --out")
    return None


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--task", required=True, choices=("reach_cube", "move_cube"))
    p.add_argument("--out", required=True, help="output folder (appears only when complete)")
    p.add_argument("--train", type=int, default=100,
                   help="training demonstrations (the paper: 100 per task)")
    p.add_argument("--test", type=int, default=25,
                   help="held-out test initial states, the expert run from each (the benchmark: 25)")
    p.add_argument("--seed", type=int, default=0,
                   help="first training seed; test seeds start at SEED + 1000000")
    p.add_argument("--image-size", type=int, default=270,
                   help="camera60 image side in pixels (the benchmark: 270)")
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing --out")
    opts = p.parse_args(argv)
    if opts.train < 1 or opts.test < 1 or opts.image_size < 16 or opts.seed < 0:
        p.error("need --train >= 1, --test >= 1, --image-size >= 16 and --seed >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from megatron_ego.eval.policy.sim import SimulatorMissingError

    out = Path(opts.out)
    try:
        manifest = _existing(out, opts)
        if manifest is not None:
            log.info("%s already holds these demonstrations; kept as they are", out)
            return 0
        out.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        try:
            manifest = write_demos(opts, folder)
            if out.exists():  # --overwrite
                shutil.rmtree(out)
            os.chmod(folder, 0o755)
            os.replace(folder, out)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    except (FileExistsError, SimulatorMissingError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    expert = manifest["expert"]
    log.info("wrote %s: expert success %.1f%% (train), %.1f%% (test); score %.1f / %.1f",
             out, expert["train"]["success"], expert["test"]["success"],
             expert["train"]["score"], expert["test"]["score"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

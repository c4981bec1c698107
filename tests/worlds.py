"""Small demo worlds and the Ego-Exo4D preprocessor run on them (preprocessing tests)."""

from __future__ import annotations

from preprocess import egoexo4d
from preprocess.demo_world import write_demo_world

SIZE = 96


def make_world(root: str, takes: int = 3, seconds: float = 3, seed: int = 0) -> list[dict]:
    """A tiny demo world (takes x seconds at 30 fps, SIZE px), with one short WalkingTours video."""
    return write_demo_world(root, takes=takes, seconds=seconds, seed=seed, resolution=SIZE,
                            walking_tours=1, walking_tours_seconds=2, knn_train=0, knn_val=0)


def run_egoexo4d(root: str, out: str, *extra: str) -> None:
    egoexo4d.main(["--root", root, "--out", out, "--size", str(SIZE), "--takes-per-shard", "1",
                   *extra])

"""The TriFinger success measure and its binomial interval (pure numpy; no simulator needed).

The measure is the one of Majumdar et al.'s TriFinger benchmark (CortexBench,
facebookresearch/eai-vc ``cortexbench/trifinger_vc``: ``get_reach_scaled_err`` in
``utils/data_utils.py``, ``get_success`` in ``trifinger_envs/gym_cube_env.py``): the *scaled
success* of an episode's final state, 1 minus the final distance to the target divided by the
initial distance, clipped to [0, 1]:

- reach cube: d = |fingertip - cube centre| - half cube width (clipped at 0), for the moving
  finger (finger 0); ``1 - min(1, d_final / d_initial)``;
- move cube: d = |cube centre - goal position|; ``max(0, 1 - d_final / d_initial)``.

The benchmark reports the mean scaled success over the test episodes (``score`` here) and has
no threshold. For a success *rate* with a binomial interval, an episode counts as a success
when its scaled success is at least ``SUCCESS_THRESHOLD`` (ours: 0.8, it closed 80% of the
initial distance; docs/results.md).
"""

from __future__ import annotations

import math

import numpy as np

SUCCESS_THRESHOLD = 0.8
WILSON_Z = 1.959963984540054  # two-sided 95%


def reach_scaled_success(tip: np.ndarray, initial_tip: np.ndarray, cube_position: np.ndarray,
                         cube_half_width: float) -> float:
    """Reach cube: ``1 - min(1, d / d0)``, d = max(|tip - cube| - half width, 0) (metres).

    Args:
        tip, initial_tip: the moving fingertip's final and initial position [3].
        cube_position: the cube centre [3].
    """
    distance = max(float(np.linalg.norm(np.subtract(tip, cube_position))) - cube_half_width, 0.0)
    initial = float(np.linalg.norm(np.subtract(initial_tip, cube_position))) - cube_half_width
    if initial <= 0:  # started touching: the benchmark falls back to the centre distance
        initial = float(np.linalg.norm(np.subtract(initial_tip, cube_position)))
    return 1.0 - min(1.0, distance / initial) if initial > 0 else 1.0


def move_scaled_success(cube_position: np.ndarray, initial_position: np.ndarray,
                        goal: np.ndarray) -> float:
    """Move cube: ``max(0, 1 - |cube - goal| / |initial - goal|)`` (positions [3], metres)."""
    initial = float(np.linalg.norm(np.subtract(initial_position, goal)))
    if initial <= 0:
        raise ValueError("move cube: the goal is the initial position (distance 0)")
    return max(0.0, 1.0 - float(np.linalg.norm(np.subtract(cube_position, goal))) / initial)


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval (fractions in [0, 1]) of a binomial success rate."""
    if trials <= 0:
        return (math.nan, math.nan)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(scaled: np.ndarray, threshold: float = SUCCESS_THRESHOLD) -> dict[str, float | int]:
    """Metrics of one method from its scaled successes [seeds, episodes] (percent).

    ``success``: episodes at or above ``threshold`` over all seeds' episodes, with the Wilson
    interval ``success_low``/``success_high``; ``success_seed_std``: spread of the per-seed
    rates; ``score``: the benchmark's mean scaled success, ``score_seed_std`` its spread.
    """
    scaled = np.atleast_2d(np.asarray(scaled, dtype=np.float64))  # [seeds, episodes]
    hits = scaled >= threshold  # [seeds, episodes]
    k, n = int(hits.sum()), int(hits.size)
    low, high = wilson_interval(k, n)
    per_seed = hits.mean(axis=1) * 100  # [seeds]
    scores = scaled.mean(axis=1) * 100  # [seeds]
    return {"success": 100.0 * k / n if n else math.nan, "success_low": 100 * low,
            "success_high": 100 * high, "success_seed_std": float(per_seed.std()),
            "score": float(scaled.mean() * 100), "score_seed_std": float(scores.std()),
            "episodes": n, "seeds": int(scaled.shape[0])}

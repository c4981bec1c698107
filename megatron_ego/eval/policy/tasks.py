"""Reach cube and move cube: initial states, episodes and their success.

Both tasks follow Majumdar et al.'s TriFinger benchmark (CortexBench, facebookresearch/eai-vc
``cortexbench/trifinger_vc``): the TriFingerPro starts at the same joint angles, the policy sees
camera60 and the fingertip positions, and each action is a fingertip displacement executed over
0.4 s by the impedance controller (``sim.TriFingerScene.move_tips``).

- reach cube: finger 0 moves (3-dim actions) to touch a fixed cube placed anywhere within 9 cm of
  the arena centre, any yaw; 5 actions (2 s).
- move cube: the three fingers (9-dim actions) push a free cube from a start within 8 cm of the
  centre to a goal 3 to 10 cm away (within 10 cm of the centre); 10 actions (4 s). The policy is
  told the goal by the image of the final state of a demonstration (goal-conditioned), as in
  the benchmark.

Initial states are drawn from ``numpy.random.default_rng([seed, task index])``: one seed, one
state, on any machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from megatron_ego.eval.policy.measure import move_scaled_success, reach_scaled_success
from megatron_ego.eval.policy.sim import CUBE_HALF_WIDTH

INITIAL_JOINTS = np.array([-0.08, 1.15, -1.5] * 3)  # rad, the benchmark's nominal pose


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task."""

    name: str
    index: int  # mixed into the initial-state seed
    num_actions: int  # control steps of 0.4 s per episode
    moving_fingers: int  # the policy's action is 3 x this fingertip displacements
    fixed_cube: bool
    goal_conditioned: bool  # the policy also sees the goal image (final demo frame)

    @property
    def action_dim(self) -> int:
        return 3 * self.moving_fingers


TASKS = {
    "reach_cube": TaskSpec("reach_cube", 0, 5, 1, fixed_cube=True, goal_conditioned=False),
    "move_cube": TaskSpec("move_cube", 1, 10, 3, fixed_cube=False, goal_conditioned=True),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown TriFinger task {name!r}: choose one of {', '.join(TASKS)}")
    return TASKS[name]


@dataclass(frozen=True)
class InitialState:
    """Where an episode starts: joints [9] rad, cube centre [3] m and orientation [4] (x, y, z,
    w), goal [3] m (the cube's own centre for reach cube)."""

    seed: int
    joints: np.ndarray
    cube_position: np.ndarray
    cube_orientation: np.ndarray
    goal: np.ndarray


def _in_disc(rng: np.random.Generator, radius: float) -> np.ndarray:
    r, angle = radius * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
    return np.array([r * np.cos(angle), r * np.sin(angle)])


def sample_initial_state(task: TaskSpec, seed: int) -> InitialState:
    """The initial state of episode ``seed`` (deterministic)."""
    rng = np.random.default_rng([int(seed), task.index])
    yaw = rng.uniform(-np.pi, np.pi)
    orientation = np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])
    if task.name == "reach_cube":
        cube = np.r_[_in_disc(rng, 0.09), CUBE_HALF_WIDTH]
        goal = cube.copy()
    else:
        cube = np.r_[_in_disc(rng, 0.08), CUBE_HALF_WIDTH]
        while True:
            distance, angle = rng.uniform(0.03, 0.10), rng.uniform(0, 2 * np.pi)
            goal = cube + distance * np.array([np.cos(angle), np.sin(angle), 0.0])
            if np.linalg.norm(goal[:2]) <= 0.10:
                break
    return InitialState(int(seed), INITIAL_JOINTS.copy(), cube, orientation, goal)


@dataclass
class Observation:
    """What a policy may use at one control step (the expert also reads the privileged fields:
    ``plan``, the cube pose and the goal)."""

    step: int
    tips: np.ndarray  # [9] m, measured fingertip positions
    plan: np.ndarray  # [9] m, commanded fingertip positions
    cube_position: np.ndarray  # [3] m
    cube_orientation: np.ndarray  # [4]
    goal: np.ndarray  # [3] m
    image: np.ndarray | None  # uint8 [270, 270, 3] (camera60), when rendered


@dataclass
class Episode:
    """One episode: T actions, T + 1 observations."""

    state: InitialState
    tips: np.ndarray  # [T+1, 9] m
    cubes: np.ndarray  # [T+1, 7] position (m) + orientation
    actions: np.ndarray  # [T, 9] m, fingertip displacements (zeros for fingers that stay)
    success: float  # scaled success of the final state
    images: list[np.ndarray] | None  # T+1 x uint8 [270, 270, 3]


def scaled_success(task: TaskSpec, state: InitialState, tips: np.ndarray,
                   cubes: np.ndarray) -> float:
    """The benchmark's measure of an episode's final state (measure.py)."""
    if task.name == "reach_cube":
        return reach_scaled_success(tips[-1, :3], tips[0, :3], state.cube_position,
                                    CUBE_HALF_WIDTH)
    return move_scaled_success(cubes[-1, :3], cubes[0, :3], state.goal)


def run_episode(scene, task: TaskSpec, state: InitialState,
                policy: Callable[[Observation], np.ndarray], render: bool) -> Episode:
    """Reset ``scene`` to ``state`` and run ``task.num_actions`` actions of ``policy`` (each a
    [task.action_dim] displacement in metres); images only when ``render``."""
    scene.reset(state.joints, state.cube_position, state.cube_orientation)
    tips, cubes, actions, images = [], [], [], [] if render else None

    def observe(step: int) -> Observation:
        position, orientation = scene.cube_pose()
        tips.append(scene.tips())
        cubes.append(np.r_[position, orientation])
        image = scene.render() if render else None
        if render:
            images.append(image)
        return Observation(step, tips[-1], scene.plan.copy(), position, orientation,
                           state.goal, image)

    observation = observe(0)
    for step in range(task.num_actions):
        action = np.zeros(9)
        action[:task.action_dim] = np.asarray(policy(observation), dtype=float)
        actions.append(action)
        scene.move_tips(action)
        observation = observe(step + 1)
    tips_a, cubes_a = np.stack(tips), np.stack(cubes)  # [T+1, 9], [T+1, 7]
    return Episode(state, tips_a, cubes_a, np.stack(actions),
                   scaled_success(task, state, tips_a, cubes_a), images)

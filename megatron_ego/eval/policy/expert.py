"""Scripted experts that make the demonstrations (they read the true cube pose; policies do not).

Both plan fingertip waypoints and spread the way to the next one evenly over the actions left
before it is due: the action at step k is ``(waypoint - plan) / (due - k)``, where ``plan`` is
the commanded fingertip position (sim.TriFingerScene.plan).

- reach cube: finger 0 goes to 3 cm above the centre of the cube's top face (due after action
  3), then down onto it (due after action 5).
- move cube: each finger i approaches from its own side (direction 30 - 120 i degrees, where
  its base is): above a point outside the cube (due after action 2), down to the cube's
  mid-height (3), then in to 1 cm inside the cube's face (5), so that the three fingers cage
  the cube; then all three move by what is left of (goal - cube) / (actions left), measured
  each step, the last action correcting the whole remaining error.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from megatron_ego.eval.policy.sim import CUBE_HALF_WIDTH
from megatron_ego.eval.policy.tasks import InitialState, Observation, TaskSpec

TIP_RADIUS = 0.012  # m, fingertip sphere (measured: tip centre 1.2 cm above a touched face)
APPROACH_HEIGHT = 0.03  # m above the touch point (reach)
FINGER_ANGLES = np.deg2rad([30.0, -90.0, 150.0])  # where each finger's base is, seen from above
CLEARANCE = 0.012  # m outside the cube's circumscribed circle (move: pre-grasp)
SQUEEZE = 0.01  # m inside the face (move: the impedance controller presses)
HOVER = 2 * CUBE_HALF_WIDTH + 0.025  # m, fingertip height over the cube while moving around it


def _toward(plan: np.ndarray, waypoint: np.ndarray, actions_left: int) -> np.ndarray:
    return (waypoint - plan) / max(actions_left, 1)


def _face_points(centre: np.ndarray, yaw: float, inset: float) -> np.ndarray:
    """[9]: for each finger, the point on its side's face (ray from the centre toward the finger
    meets the square) at mid-height, moved out by the tip radius and in by ``inset``."""
    points = []
    for angle in FINGER_ANGLES:
        local = np.array([np.cos(angle - yaw), np.sin(angle - yaw)])
        reach = CUBE_HALF_WIDTH / np.max(np.abs(local))  # centre -> face along the ray
        direction = np.array([np.cos(angle), np.sin(angle)])
        points.append(np.r_[centre[:2] + direction * (reach + TIP_RADIUS - inset),
                            CUBE_HALF_WIDTH])
    return np.concatenate(points)


def _around(centre: np.ndarray, height: float) -> np.ndarray:
    """[9]: each finger's point outside the cube's circumscribed circle, at ``height``."""
    radius = CUBE_HALF_WIDTH * np.sqrt(2) + TIP_RADIUS + CLEARANCE
    return np.concatenate([np.r_[centre[:2] + radius * np.array([np.cos(a), np.sin(a)]), height]
                           for a in FINGER_ANGLES])


def reach_expert(state: InitialState) -> Callable[[Observation], np.ndarray]:
    touch = state.cube_position + np.array([0.0, 0.0, CUBE_HALF_WIDTH + TIP_RADIUS])
    above = touch + np.array([0.0, 0.0, APPROACH_HEIGHT])

    def act(obs: Observation) -> np.ndarray:
        waypoint, due = (above, 3) if obs.step < 3 else (touch, 5)
        return _toward(obs.plan[:3], waypoint, due - obs.step)  # [3]

    return act


def move_expert(state: InitialState, num_actions: int) -> Callable[[Observation], np.ndarray]:
    start = state.cube_position
    x, y, z, w = state.cube_orientation
    yaw = float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))

    def act(obs: Observation) -> np.ndarray:
        k = obs.step
        if k < 2:
            return _toward(obs.plan, _around(start, HOVER), 2 - k)
        if k < 3:
            return _toward(obs.plan, _around(start, CUBE_HALF_WIDTH), 3 - k)
        if k < 5:
            return _toward(obs.plan, _face_points(start, yaw, SQUEEZE), 5 - k)
        remaining = state.goal - obs.cube_position  # [3] m
        remaining[2] = 0.0  # the cube slides on the table
        actions_left = max(num_actions - 1 - k, 1)  # the last action corrects what is left
        return np.tile(remaining / actions_left, 3)  # [9]

    return act


def make_expert(task: TaskSpec, state: InitialState) -> Callable[[Observation], np.ndarray]:
    """The scripted expert of ``task`` for the episode starting at ``state``."""
    if task.name == "reach_cube":
        return reach_expert(state)
    return move_expert(state, task.num_actions)

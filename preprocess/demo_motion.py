"""The demo world's walker: a scripted walk (walk, turn, stop, look around) and its 17-joint body.

The body leads the view: when the walker heads somewhere new, the torso (and the walking
direction) turns first and the head, which carries the camera, follows `head_lag_s` later, so
the joints seen from the camera tell where the view goes next. Legs and arms swing with a gait
whose amplitude follows the walking speed; they are still when the walker stops.

World frame as in `demo_scene`: x east, y north, z up, metres. Body-local frames: x forward,
y left, z up. Joints in COCO order (`preprocess.ego_pose.BODY_JOINTS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Walk", "body_and_camera", "simulate_walk"]

WALK_SPEED = 1.2  # m/s
STRIDE = 1.4  # metres per gait cycle (two steps)
TURN_RATE = np.radians(110.0)  # rad/s, the torso's fastest turn
EYE_HEIGHT_NECK = 1.50  # metres, the neck pivot above the ground

# Head-local points (x forward, y left, z up), metres from the neck pivot.
_HEAD = {
    "nose": (0.10, 0.0, 0.10),
    "left-eye": (0.08, 0.032, 0.14),
    "right-eye": (0.08, -0.032, 0.14),
    "left-ear": (0.0, 0.075, 0.12),
    "right-ear": (0.0, -0.075, 0.12),
}
_CAMERA_IN_HEAD = np.array([0.09, 0.0, 0.15])  # the glasses' camera, between and before the eyes
_SHOULDER = np.array([0.0, 0.19, 1.44])  # left side; right is mirrored in y
_HIP = np.array([0.0, 0.10, 0.95])
_THIGH, _SHIN, _UPPER_ARM, _FOREARM = 0.45, 0.45, 0.30, 0.27


@dataclass
class Walk:
    """Per-frame state of the walker, N frames at `fps`.

    position [N, 2] ground point under the pelvis (metres); torso_yaw, head_yaw, head_pitch [N]
    (radians; yaw from +x towards +y, pitch > 0 looks up); speed [N] (m/s); phase [N] gait
    phase (radians).
    """

    fps: float
    position: np.ndarray
    torso_yaw: np.ndarray
    head_yaw: np.ndarray
    head_pitch: np.ndarray
    speed: np.ndarray
    phase: np.ndarray


def _wrap(angle: np.ndarray | float) -> np.ndarray | float:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def simulate_walk(
    num_frames: int,
    fps: float,
    room_size: tuple[float, float],
    rng: np.random.Generator,
    head_lag_s: float = 0.3,
    margin: float = 0.9,
) -> Walk:
    """Script a walk inside the room: go to random waypoints, sometimes stop and look around."""
    dt = 1.0 / fps
    lo, hi = np.array([margin, margin]), np.array(room_size) - margin
    pos = rng.uniform(lo, hi)
    yaw = rng.uniform(-np.pi, np.pi)
    speed, phase, mode, timer = 0.0, 0.0, "walk", 0.0
    target = rng.uniform(lo, hi)
    look_amp, look_period, look_pitch = 0.0, 1.0, 0.0
    out = np.zeros((num_frames, 7))  # x, y, torso yaw, speed, phase, look yaw, look pitch
    for i in range(num_frames):
        look, pitch_offset = 0.0, 0.0
        if mode == "walk":
            to_target = target - pos
            error = _wrap(np.arctan2(to_target[1], to_target[0]) - yaw)
            yaw = _wrap(yaw + np.clip(4.0 * error, -TURN_RATE, TURN_RATE) * dt)
            wanted = WALK_SPEED * max(0.0, np.cos(error)) ** 2
            if np.linalg.norm(to_target) < 0.4:
                mode, timer = ("stop", rng.uniform(0.4, 1.2)) if rng.random() < 0.5 else (
                    "walk", 0.0)
                target = rng.uniform(lo, hi)
        elif mode == "stop":
            wanted, timer = 0.0, timer - dt
            if timer <= 0:
                mode, timer = "look", 0.0
                look_amp, look_period = rng.uniform(0.6, 1.1), rng.uniform(2.0, 3.0)
                look_pitch = rng.uniform(-0.15, 0.2)
        else:  # look around: the head sweeps left and right while the body stands
            wanted, timer = 0.0, timer + dt
            look = look_amp * np.sin(2 * np.pi * timer / look_period)
            pitch_offset = look_pitch * np.sin(np.pi * timer / look_period)
            if timer >= look_period:
                mode = "walk"
        speed += (wanted - speed) * min(1.0, 5.0 * dt)
        pos = np.clip(pos + speed * dt * np.array([np.cos(yaw), np.sin(yaw)]), lo - 0.3, hi + 0.3)
        phase = (phase + 2 * np.pi * speed * dt / STRIDE) % (2 * np.pi)
        out[i] = (*pos, yaw, speed, phase, look, pitch_offset)

    lag = int(round(head_lag_s * fps))
    torso = np.unwrap(out[:, 2])
    delayed = np.concatenate([np.full(lag, torso[0]), torso[: num_frames - lag]])[:num_frames]
    amp = out[:, 3] / WALK_SPEED
    head_pitch = -0.12 + 0.02 * amp * np.sin(2 * out[:, 4]) + out[:, 6]
    return Walk(fps, out[:, :2], out[:, 2], _wrap(delayed + out[:, 5]), head_pitch, out[:, 3],
                out[:, 4])


def _rot_z(yaw: np.ndarray) -> np.ndarray:
    c, s, z, o = np.cos(yaw), np.sin(yaw), np.zeros_like(yaw), np.ones_like(yaw)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)],
                    -2)  # [N, 3, 3]


def _rot_y(angle: np.ndarray) -> np.ndarray:
    c, s, z, o = np.cos(angle), np.sin(angle), np.zeros_like(angle), np.ones_like(angle)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)],
                    -2)  # [N, 3, 3]


def _limb(start: np.ndarray, angle: np.ndarray, length: float) -> np.ndarray:
    """End of a limb swinging in the body's sagittal plane (angle > 0: forward)."""
    return start + length * np.stack([np.sin(angle), 0 * angle, -np.cos(angle)], -1)  # [N, 3]


def body_and_camera(walk: Walk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joints and head camera of every frame.

    Returns:
        joints [N, 17, 3] world (metres, COCO order); R [N, 3, 3] world->camera rotation
        (OpenCV axes: x right, y down, z forward); c [N, 3] camera centre in the world.
    """
    n = len(walk.speed)
    amp = walk.speed / WALK_SPEED  # [N] 0 standing .. 1 walking
    bob = 0.02 * amp * np.cos(2 * walk.phase)  # [N] metres
    body = {}
    for side, sign, phase in (("left", 1.0, walk.phase), ("right", -1.0, walk.phase + np.pi)):
        hip_angle = 0.4 * amp * np.sin(phase)
        knee_bend = 0.7 * amp * np.maximum(0.0, np.cos(phase))
        hip = np.tile(_HIP * [1, sign, 1], (n, 1)) + np.stack([0 * bob, 0 * bob, bob], -1)
        knee = _limb(hip, hip_angle, _THIGH)
        shoulder = np.tile(_SHOULDER * [1, sign, 1], (n, 1)) + np.stack([0 * bob, 0 * bob, bob], -1)
        arm_angle = -0.35 * amp * np.sin(phase)
        elbow = _limb(shoulder, arm_angle, _UPPER_ARM)
        body.update({
            f"{side}-hip": hip, f"{side}-knee": knee,
            f"{side}-ankle": _limb(knee, hip_angle - knee_bend, _SHIN),
            f"{side}-shoulder": shoulder, f"{side}-elbow": elbow,
            f"{side}-wrist": _limb(elbow, arm_angle + 0.3 + 0.3 * amp, _FOREARM),
        })
    torso_rot = _rot_z(walk.torso_yaw)  # [N, 3, 3] body -> world
    ground = np.concatenate([walk.position, np.zeros((n, 1))], axis=1)  # [N, 3]
    neck_world = ground + torso_rot @ np.array([0.0, 0.0, EYE_HEIGHT_NECK]) + np.stack(
        [0 * bob, 0 * bob, bob], -1)
    head_rot = _rot_z(walk.head_yaw) @ _rot_y(-walk.head_pitch)  # [N, 3, 3] head -> world
    joints = {}
    for name, offset in _HEAD.items():
        joints[name] = neck_world + head_rot @ np.array(offset)
    for name, local in body.items():
        joints[name] = ground + np.einsum("nij,nj->ni", torso_rot, local)
    from preprocess.ego_pose import BODY_JOINTS

    joints_world = np.stack([joints[name] for name in BODY_JOINTS], axis=1)  # [N, 17, 3]
    centre = neck_world + head_rot @ _CAMERA_IN_HEAD  # [N, 3]
    forward, left, up = head_rot[:, :, 0], head_rot[:, :, 1], head_rot[:, :, 2]  # [N, 3] each
    R = np.stack([-left, -up, forward], axis=1)  # [N, 3, 3] rows: camera x, y, z in the world
    return joints_world, R, centre

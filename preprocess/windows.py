"""Cut a take into 20-frame windows of continuous poses and build their pose tensors.

A window starting at 30 fps frame s covers poses s .. s+19 and images s, s+5, s+10, s+15
(docs/data_format.md). It is kept only if every one of its 20 frames has a body pose and the
Aria extrinsics, so every pose can be put in the camera frame of its own frame, and every
frame's camera pose relative to the window's first frame is known (`window_camera`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from preprocess.ego_pose import BodyPoses, to_camera_frame

__all__ = ["IMAGE_STEP", "image_frames", "plan_windows", "relative_camera", "window_camera",
           "window_poses"]

IMAGE_STEP = 5  # one image every 5 frames of the 30 fps video: 6 fps


def image_frames(start: int, num_steps: int) -> list[int]:
    """30 fps frame numbers of a window's T images: s, s+5, ..."""
    return [start + IMAGE_STEP * t for t in range(num_steps)]


def plan_windows(
    posed: set[int], with_extrinsics: set[int], length: int, stride: int
) -> tuple[list[int], Counter]:
    """Start frames of the windows to keep, and the candidate windows skipped, by reason.

    Candidates start at multiples of `stride` (itself a multiple of 5) from the first posed
    frame to the last one. Reasons: "pose_gap" (a frame without a body pose) and
    "extrinsics_missing" (every pose present, some frame without Aria extrinsics).
    """
    if stride <= 0 or stride % IMAGE_STEP:
        raise ValueError(f"window stride {stride} must be a positive multiple of {IMAGE_STEP}")
    skipped: Counter = Counter()
    if not posed:
        return [], skipped
    first, last = min(posed), max(posed)
    starts = []
    for start in range(first // stride * stride, last - length + 2, stride):
        frames = range(start, start + length)
        if not all(f in posed for f in frames):
            skipped["pose_gap"] += 1
        elif not all(f in with_extrinsics for f in frames):
            skipped["extrinsics_missing"] += 1
        else:
            starts.append(start)
    return starts, skipped


def window_poses(
    poses: BodyPoses, extrinsics: dict[int, np.ndarray], start: int, length: int
) -> np.ndarray:
    """Poses of frames start .. start+length-1, each in its own frame's camera frame.

    Returns:
        float32 [length, 17, 4]: x, y, z (metres, camera frame: x right, y down, z forward
        for Aria) and visibility (1 present, 0 missing; a missing joint is all zeros).
    """
    out = np.zeros((length, len(next(iter(poses.visible.values()))), 4), np.float32)
    for i, frame in enumerate(range(start, start + length)):
        visible = poses.visible[frame]  # [17] bool
        camera = to_camera_frame(poses.joints[frame], extrinsics[frame])  # [17, 3] metres
        out[i, :, :3] = np.where(visible[:, None], camera, 0.0)
        out[i, :, 3] = visible
    return out


def relative_camera(first: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Pose [3, 4] of camera `other` in the camera frame of `first` (both world->camera E).

    [R | t] maps a point from `other`'s camera frame into `first`'s: p_first = R p_other + t;
    R = R_first R_other^T is the camera's rotation since `first`, t its centre in `first`'s frame.
    """
    rotation = first[:, :3] @ other[:, :3].T  # [3, 3]
    return np.concatenate([rotation, (first[:, 3] - rotation @ other[:, 3])[:, None]], axis=1)


def window_camera(extrinsics: dict[int, np.ndarray], start: int, length: int) -> np.ndarray:
    """Camera pose of frames start .. start+length-1 relative to frame `start`.

    Returns:
        float32 [length, 3, 4]: `relative_camera(E_start, E_frame)` per frame (identity rotation
        and zero translation at index 0); translation in metres.
    """
    first = extrinsics[start]
    return np.stack([relative_camera(first, extrinsics[f])
                     for f in range(start, start + length)]).astype(np.float32)

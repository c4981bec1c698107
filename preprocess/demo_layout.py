"""Write one demo take's labels in Ego-Exo4D's own JSON schemas (see `preprocess.ego_pose`).

Which labels a take gets depends on its index, so that a few takes exercise every case the
reader must handle: manual and automatic labels (manual wins, and the automatic ones are then
deliberately off by a few centimetres), automatic only, manual only; frames with no label; some
frames without extrinsics; joints missing here and there; both camera_pose layouts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from preprocess.ego_pose import BODY_JOINTS

ARIA = "aria01"  # the wearer's camera: takes.json metadata, camera_pose key, video file name

__all__ = ["ARIA", "TakeLabels", "plan_labels", "write_body_json", "write_camera_json"]

AUTOMATIC_NOISE = 0.05  # metres: automatic labels where a manual one overrides them


@dataclass
class TakeLabels:
    """Which frames of a take carry which labels (all masks [N] bool, visible [N, 17] bool)."""

    manual: np.ndarray
    automatic: np.ndarray
    visible: np.ndarray
    extrinsics: np.ndarray
    camera_layout: str  # "per_camera" | "per_frame"

    @property
    def labelled(self) -> np.ndarray:
        """[N] bool: frames with a body pose after merging manual and automatic labels."""
        return self.manual | self.automatic


def _gap(num_frames: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """[N] bool, True inside one random run of `length` frames."""
    mask = np.zeros(num_frames, bool)
    if num_frames > 2 * length:
        start = int(rng.integers(length // 2, num_frames - length))
        mask[start : start + length] = True
    return mask


def plan_labels(index: int, num_frames: int, fps: float, rng: np.random.Generator) -> TakeLabels:
    """Label coverage of take `index` (cases cycle with the index; see the module docstring)."""
    everything = np.ones(num_frames, bool)
    gap = _gap(num_frames, int(fps), rng)  # one second without any label
    kind = index % 3
    if kind == 0:  # both: manual on a stretch, automatic everywhere but the gap
        manual = _gap(num_frames, num_frames // 3, rng) & ~gap
        automatic = everything & ~gap
    elif kind == 1:
        manual, automatic = np.zeros(num_frames, bool), everything & ~gap
    else:
        manual, automatic = everything & ~gap, np.zeros(num_frames, bool)
    visible = rng.random((num_frames, len(BODY_JOINTS))) > 0.04
    visible[np.arange(num_frames), rng.integers(0, 5, num_frames)] = True  # >= 1 joint per frame
    extrinsics = ~_gap(num_frames, 12, rng) if index % 4 == 1 else everything.copy()
    layout = "per_camera" if index % 2 == 0 else "per_frame"
    return TakeLabels(manual, automatic, visible, extrinsics, layout)


def _dump(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def _frame_entry(
    joints: np.ndarray, visible: np.ndarray, uid: str, name: str, frame: int, views: int
) -> list[dict]:
    points = {
        joint: {"x": float(x), "y": float(y), "z": float(z), "num_views_for_3d": views}
        for joint, (x, y, z), seen in zip(BODY_JOINTS, joints, visible)
        if seen
    }
    meta = {"take_uid": uid, "take_name": name, "frame_number": frame}
    return [{"metadata": meta, "annotation3D": points, "annotation2D": {}}]


def write_body_json(
    root: str, split: str, uid: str, name: str, joints_world: np.ndarray, labels: TakeLabels,
    rng: np.random.Generator,
) -> None:
    """Write body/annotation (manual) and body/automatic files for the frames that have them.

    joints_world: [N, 17, 3] metres, the true joints.
    """
    base = os.path.join(root, "annotations", "ego_pose", split, "body")
    if labels.manual.any():
        _dump(os.path.join(base, "annotation", f"{uid}.json"), {
            str(k): _frame_entry(joints_world[k], labels.visible[k], uid, name, k, 3)
            for k in np.flatnonzero(labels.manual).tolist()
        })
    if labels.automatic.any():
        automatic = {}
        for k in np.flatnonzero(labels.automatic).tolist():
            if labels.manual[k]:  # overridden: deliberately wrong, every joint present
                noisy = joints_world[k] + rng.normal(0, AUTOMATIC_NOISE, joints_world[k].shape)
                seen = np.ones(len(BODY_JOINTS), bool)
                automatic[str(k)] = _frame_entry(noisy, seen, uid, name, k, 2)
            else:
                automatic[str(k)] = _frame_entry(joints_world[k], labels.visible[k], uid, name,
                                                 k, 2)
        _dump(os.path.join(base, "automatic", f"{uid}.json"), automatic)


def write_camera_json(
    root: str, split: str, uid: str, name: str, extrinsics: np.ndarray, K: np.ndarray,
    labels: TakeLabels,
) -> None:
    """Write camera_pose/<uid>.json in the take's layout. extrinsics: [N, 3, 4] world->camera."""
    exo = {  # a static exocentric camera in a corner, as Ego-Exo4D files also list them
        "camera_intrinsics": [[600.0, 0.0, 960.0], [0.0, 600.0, 540.0], [0.0, 0.0, 1.0]],
        "camera_extrinsics": [[1.0, 0.0, 0.0, -0.5], [0.0, 0.0, -1.0, 2.0], [0.0, 1.0, 0.0, 0.5]],
    }
    frames = np.flatnonzero(labels.extrinsics).tolist()
    meta = {"take_uid": uid, "take_name": name}
    if labels.camera_layout == "per_camera":
        data = {
            "metadata": meta,
            ARIA: {
                "camera_intrinsics": K.tolist(),
                "camera_extrinsics": {str(k): extrinsics[k].tolist() for k in frames},
            },
            "cam01": exo,
        }
    else:
        data = {
            str(k): {
                "metadata": {**meta, "frame_number": k},
                "aria": {"camera_intrinsics": K.tolist(), "camera_extrinsics": extrinsics[k].tolist()},
                "cam01": exo,
            }
            for k in frames
        }
    _dump(os.path.join(root, "annotations", "ego_pose", split, "camera_pose", f"{uid}.json"), data)

"""Read Ego-Exo4D ego-pose annotations: body joints (manual and automatic) and Aria extrinsics.

Schemas (docs: Ego-Exo4D "ego pose"; docs/paper_facts.md):
  body   `{"<frame>": [{"metadata": ..., "annotation3D": {"<joint>": {"x", "y", "z",
         "num_views_for_3d"}}, "annotation2D": ...}, ...]}`; metres, world frame; missing joints
         are absent; the first entry of a frame's list is used.
  camera per camera `{"aria01": {"camera_extrinsics": {"<frame>": 3x4}, "camera_intrinsics": 3x3},
         "cam01": ...}`, or per frame `{"<frame>": {"aria01": {"camera_extrinsics": 3x4, ...},
         ...}}`; the Aria camera is the key containing "aria". E maps world to camera:
         p_cam = E @ [p_world; 1].
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BODY_JOINTS",
    "AnnotationError",
    "BodyPoses",
    "merge_manual_automatic",
    "read_body_poses",
    "read_aria_extrinsics",
    "to_camera_frame",
]

BODY_JOINTS: tuple[str, ...] = (
    "nose", "left-eye", "right-eye", "left-ear", "right-ear",
    "left-shoulder", "right-shoulder", "left-elbow", "right-elbow", "left-wrist", "right-wrist",
    "left-hip", "right-hip", "left-knee", "right-knee", "left-ankle", "right-ankle",
)  # fmt: skip


class AnnotationError(ValueError):
    """An annotation file is unreadable or does not follow the Ego-Exo4D schema."""


@dataclass
class BodyPoses:
    """Body poses of one take, frame -> joints.

    joints: {frame: [17, 3] float64 world metres (0 where missing)};
    visible: {frame: [17] bool} (False = joint absent from the annotation);
    source: {frame: "manual" | "automatic"}.
    """

    joints: dict[int, np.ndarray]
    visible: dict[int, np.ndarray]
    source: dict[int, str]


def _load(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object at the top level")
    return data


def _frame(key: str, path: str) -> int:
    try:
        return int(key)
    except ValueError as err:
        raise AnnotationError(f"{path}: frame key {key!r} is not a frame number") from err


def _point(point: object, where: str) -> np.ndarray | None:
    """[3] metres of one joint entry, or None when it carries no usable coordinates."""
    if not isinstance(point, dict):
        raise AnnotationError(f"{where}: expected an object with x, y, z")
    try:
        xyz = np.array([float(point["x"]), float(point["y"]), float(point["z"])])
    except (KeyError, TypeError, ValueError):
        return None  # e.g. "x": null: the joint was not triangulated
    return xyz if np.isfinite(xyz).all() else None


def read_body_poses(path: str, source: str) -> BodyPoses:
    """Parse one body annotation file (`source`: "manual" or "automatic").

    A frame with an empty list or without 3D joints has no pose; a joint without finite x, y, z
    is missing. Raises AnnotationError for what is not the schema (bad JSON, a frame that is not
    a list of objects, annotation3D or a joint that is not an object).
    """
    joints, visible, origin = {}, {}, {}
    for key, entries in _load(path).items():
        if key == "metadata":
            continue
        frame = _frame(key, path)
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise AnnotationError(f"{path}: frame {key}: expected a list of annotation objects")
        points = entries[0].get("annotation3D") if entries else None
        if points is None:
            continue
        if not isinstance(points, dict):
            raise AnnotationError(f"{path}: frame {key}: annotation3D is not an object")
        xyz, seen = np.zeros((len(BODY_JOINTS), 3)), np.zeros(len(BODY_JOINTS), bool)
        for j, name in enumerate(BODY_JOINTS):
            if name in points:
                point = _point(points[name], f"{path}: frame {key}, joint {name}")
                if point is not None:
                    xyz[j], seen[j] = point, True
        if seen.any():
            joints[frame], visible[frame], origin[frame] = xyz, seen, source
    return BodyPoses(joints, visible, origin)


def merge_manual_automatic(manual: BodyPoses | None, automatic: BodyPoses | None) -> BodyPoses:
    """Automatic poses overridden frame by frame by the manual ones (manual labels win)."""
    merged = BodyPoses({}, {}, {})
    for poses in (automatic, manual):
        if poses is not None:
            merged.joints.update(poses.joints)
            merged.visible.update(poses.visible)
            merged.source.update(poses.source)
    return merged


def _matrix(value, shape: tuple[int, int], where: str) -> np.ndarray:
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise AnnotationError(f"{where}: not a numeric matrix") from err
    if matrix.shape != shape or not np.isfinite(matrix).all():
        raise AnnotationError(f"{where}: expected a finite {shape[0]}x{shape[1]} matrix")
    return matrix


def read_aria_extrinsics(path: str) -> dict[int, np.ndarray]:
    """World->camera extrinsics E [3, 4] of the Aria camera per frame, from either layout."""
    data = _load(path)
    aria = [k for k in data if "aria" in k.lower()]
    if aria:  # per camera: {"aria01": {"camera_extrinsics": {"<frame>": 3x4}}}
        per_frame = data[aria[0]].get("camera_extrinsics") if isinstance(
            data[aria[0]], dict) else None
        if not isinstance(per_frame, dict):
            raise AnnotationError(f"{path}: {aria[0]}.camera_extrinsics is not a frame dictionary")
        return {
            _frame(k, path): _matrix(v, (3, 4), f"{path}: {aria[0]} frame {k}")
            for k, v in per_frame.items()
        }
    extrinsics = {}  # per frame: {"<frame>": {"aria01": {"camera_extrinsics": 3x4}}}
    for key, cameras in data.items():
        if key == "metadata":
            continue
        frame = _frame(key, path)
        if not isinstance(cameras, dict):
            raise AnnotationError(f"{path}: frame {key}: expected an object of cameras")
        names = [k for k in cameras if "aria" in k.lower()]
        if not names or not isinstance(cameras[names[0]], dict):
            continue  # no Aria pose for this frame
        value = cameras[names[0]].get("camera_extrinsics")
        if value is not None:
            extrinsics[frame] = _matrix(value, (3, 4), f"{path}: frame {key} {names[0]}")
    return extrinsics


def to_camera_frame(joints_world: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """Joints [..., 3] world metres -> camera frame metres, with E [3, 4]: E @ [p; 1]."""
    return joints_world @ extrinsics[:, :3].T + extrinsics[:, 3]

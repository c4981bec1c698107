"""Read Ego-Exo4D ego-pose annotations: body joints (manual and automatic) and Aria extrinsics.

Schemas (docs: Ego-Exo4D "ego pose"; docs/paper_facts.md):
  body   `{"<frame>": [{"metadata": ..., "annotation3D": {"<joint>": {"x", "y", "z",
         "num_views_for_3d"}}, "annotation2D": ...}, ...]}`; metres, world frame; missing joints
         are absent; the first entry of a frame's list is used.
  camera per camera `{"aria01": {"camera_extrinsics": {"<frame>": 3x4}, "camera_intrinsics": 3x3},
         "cam01": ...}`, or per frame `{"<frame>": {"aria01": {"camera_extrinsics": 3x4, ...},
         ...}}`. E maps world to camera: p_cam = E @ [p_world; 1].
  Aria camera: the take's own ego camera named by takes.json (`aria_camera_name`: the
         `capture.cameras` entry with `is_ego`, narrowed to the frame-aligned videos, then to
         names containing "aria"; else the one frame-aligned video containing "aria"). In the
         camera file, that name's key is used (or a generic "aria" key); without a name, the one
         key containing "aria". Two candidates and nothing to choose between them is an
         `AriaCameraError` (the take is skipped), never a silent first pick.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "BODY_JOINTS",
    "AnnotationError",
    "AriaCamera",
    "AriaCameraError",
    "BodyPoses",
    "aria_camera_name",
    "merge_manual_automatic",
    "read_body_poses",
    "read_aria_camera",
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


class AriaCameraError(AnnotationError):
    """Which Aria camera is the take's cannot be told, or it is not in the camera file.

    reason: "aria_camera_ambiguous" (two or more candidates) or "aria_camera_missing".
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


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


def _is_ego(camera: dict) -> bool:
    return str(camera.get("is_ego", "")).lower() == "true"


def aria_camera_name(take: dict) -> str | None:
    """The take's own Aria camera name from its takes.json entry, or None if the entry has none.

    Raises:
        AriaCameraError: the metadata lists two or more candidates and nothing tells them apart.
    """
    aligned = take.get("frame_aligned_videos")
    aligned = list(aligned) if isinstance(aligned, dict) else []
    cameras = (take.get("capture") or {}).get("cameras") if isinstance(
        take.get("capture"), dict) else None
    names = [c.get("cam_id") for c in cameras or [] if isinstance(c, dict) and _is_ego(c)]
    names = [n for n in names if isinstance(n, str)]
    if len(names) > 1:
        names = [n for n in names if n in aligned] or names
    if len(names) > 1:
        names = [n for n in names if "aria" in n.lower()] or names
    if not names:  # no capture metadata: the frame-aligned videos name the Aria device
        names = [n for n in aligned if "aria" in n.lower()]
    if len(names) > 1:
        raise AriaCameraError(
            f"take {take.get('take_name')}: {len(names)} Aria cameras {sorted(names)} in "
            f"takes.json and nothing says which is the wearer's", "aria_camera_ambiguous")
    return names[0] if names else None


def _aria_key(keys, camera: str | None, where: str) -> str | None:
    """The key of the take's Aria camera among `keys` (None: no Aria key at all)."""
    aria = [k for k in keys if "aria" in k.lower()]
    if camera is not None:
        matching = [k for k in aria if k == camera] or [k for k in aria if k.lower() == "aria"]
        if aria and not matching:
            raise AriaCameraError(f"{where}: the take's Aria camera is {camera} but the file "
                                  f"has {sorted(aria)}", "aria_camera_missing")
        aria = matching
    if len(aria) > 1:
        raise AriaCameraError(f"{where}: {len(aria)} Aria cameras {sorted(aria)} and no name "
                              f"from takes.json to choose one", "aria_camera_ambiguous")
    return aria[0] if aria else None


@dataclass
class AriaCamera:
    """The Aria extrinsics of one take.

    extrinsics: {frame: [3, 4] world->camera}; name: the camera key read; skipped_frames:
    frames left out, by reason ("null": no value, "malformed": not a finite 3x4 matrix).
    """

    extrinsics: dict[int, np.ndarray]
    name: str | None
    skipped_frames: Counter = field(default_factory=Counter)

    def add(self, frame: int, value, where: str) -> None:
        if value is None:
            self.skipped_frames["null"] += 1
            return
        try:
            self.extrinsics[frame] = _matrix(value, (3, 4), where)
        except AnnotationError:
            self.skipped_frames["malformed"] += 1


def read_aria_camera(path: str, camera: str | None = None) -> AriaCamera:
    """World->camera extrinsics E [3, 4] of the take's Aria camera per frame, from either layout.

    A null or malformed matrix leaves out that frame only (counted in `skipped_frames`).

    Args:
        camera: the take's Aria camera name (`aria_camera_name`); None: the file's only one.
    Raises:
        AnnotationError: unreadable JSON or a structure that is not either layout.
        AriaCameraError: the Aria camera cannot be told apart, or the named one is absent.
    """
    data = _load(path)
    key = _aria_key([k for k in data if k != "metadata"], camera, path)
    if key is not None:  # per camera: {"aria01": {"camera_extrinsics": {"<frame>": 3x4}}}
        per_frame = data[key].get("camera_extrinsics") if isinstance(data[key], dict) else None
        if not isinstance(per_frame, dict):
            raise AnnotationError(f"{path}: {key}.camera_extrinsics is not a frame dictionary")
        result = AriaCamera({}, key)
        for k, value in per_frame.items():
            result.add(_frame(k, path), value, f"{path}: {key} frame {k}")
        return result
    result = AriaCamera({}, None)  # per frame: {"<frame>": {"aria01": {"camera_extrinsics": 3x4}}}
    for k, cameras in data.items():
        if k == "metadata":
            continue
        frame = _frame(k, path)
        if not isinstance(cameras, dict):
            raise AnnotationError(f"{path}: frame {k}: expected an object of cameras")
        name = _aria_key(list(cameras), camera, f"{path}: frame {k}")
        if name is None or not isinstance(cameras[name], dict):
            continue  # no Aria pose for this frame
        result.name = result.name or name
        result.add(frame, cameras[name].get("camera_extrinsics"), f"{path}: frame {k} {name}")
    return result


def read_aria_extrinsics(path: str, camera: str | None = None) -> dict[int, np.ndarray]:
    """`read_aria_camera(path, camera).extrinsics`: {frame: [3, 4] world->camera}."""
    return read_aria_camera(path, camera).extrinsics


def to_camera_frame(joints_world: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """Joints [..., 3] world metres -> camera frame metres, with E [3, 4]: E @ [p; 1]."""
    return joints_world @ extrinsics[:, :3].T + extrinsics[:, 3]

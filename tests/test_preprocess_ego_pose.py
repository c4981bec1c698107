"""preprocess.ego_pose and preprocess.windows: the Ego-Exo4D schemas and window cutting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from preprocess.ego_pose import (
    BODY_JOINTS,
    AnnotationError,
    read_aria_extrinsics,
    read_body_poses,
)
from preprocess.windows import plan_windows


def _write(tmp_path, name: str, data) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_body_reader_keeps_the_first_person_and_drops_unusable_joints(tmp_path):
    first = {"annotation3D": {"nose": {"x": 1, "y": 2, "z": 3, "num_views_for_3d": 2},
                              "left-eye": {"x": None, "y": 0, "z": 0}}, "annotation2D": {}}
    second = {"annotation3D": {"nose": {"x": 9, "y": 9, "z": 9}}}
    path = _write(tmp_path, "body.json", {
        "3": [first, second], "4": [], "5": [{"metadata": {}}], "metadata": {"take": "t"}})
    poses = read_body_poses(path, "manual")
    assert list(poses.joints) == [3] and poses.source == {3: "manual"}
    np.testing.assert_array_equal(poses.joints[3][0], [1, 2, 3])
    assert poses.visible[3].tolist() == [True] + [False] * (len(BODY_JOINTS) - 1)


@pytest.mark.parametrize("content", ['{"3": [{"annotation3D": {"nose": {"x": 1',  # cut short
                                     '{"3": {"annotation3D": {}}}',  # not a list
                                     '{"three": []}',  # not a frame number
                                     '{"3": [{"annotation3D": {"nose": [1, 2, 3]}}]}'])
def test_body_reader_refuses_what_is_not_the_schema(tmp_path, content):
    with pytest.raises(AnnotationError, match="body.json"):
        read_body_poses(_write(tmp_path, "body.json", content), "automatic")


def test_both_camera_layouts_give_the_same_extrinsics(tmp_path):
    E = {k: np.arange(12.0).reshape(3, 4) + k for k in (0, 1, 2)}
    exo = {"camera_extrinsics": np.eye(3, 4).tolist()}
    per_camera = {"metadata": {}, "cam01": exo, "aria01": {
        "camera_intrinsics": np.eye(3).tolist(),
        "camera_extrinsics": {str(k): e.tolist() for k, e in E.items()}}}
    per_frame = {str(k): {"metadata": {}, "cam01": exo, "aria": {"camera_extrinsics": e.tolist()}}
                 for k, e in E.items()}
    per_frame["3"] = {"cam01": exo}  # a frame without the Aria camera
    for data in (per_camera, per_frame):
        read = read_aria_extrinsics(_write(tmp_path, "camera.json", data))
        assert sorted(read) == [0, 1, 2]
        for k in E:
            np.testing.assert_array_equal(read[k], E[k])
    per_frame["1"]["aria"]["camera_extrinsics"] = [[1, 2, 3]]
    with pytest.raises(AnnotationError, match="3x4"):
        read_aria_extrinsics(_write(tmp_path, "camera.json", per_frame))


def test_windows_need_twenty_posed_frames_with_extrinsics():
    posed = set(range(0, 60)) - {33}
    with_extrinsics = set(range(0, 60)) - {7}
    starts, skipped = plan_windows(posed, with_extrinsics, length=20, stride=5)
    assert starts == [10, 35, 40]
    assert skipped == {"extrinsics_missing": 2, "pose_gap": 4}
    with pytest.raises(ValueError, match="multiple of 5"):
        plan_windows(posed, with_extrinsics, length=20, stride=3)

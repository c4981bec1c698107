"""preprocess.ego_pose and preprocess.windows: the Ego-Exo4D schemas and window cutting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from preprocess.ego_pose import (
    BODY_JOINTS,
    AnnotationError,
    AriaCameraError,
    aria_camera_name,
    read_aria_camera,
    read_aria_extrinsics,
    read_body_poses,
)
from preprocess.windows import plan_windows, relative_camera, window_camera


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
    per_frame["1"]["aria"]["camera_extrinsics"] = [[1, 2, 3]]  # malformed: that frame only
    per_frame["2"]["aria"]["camera_extrinsics"] = None
    read = read_aria_camera(_write(tmp_path, "camera.json", per_frame))
    assert sorted(read.extrinsics) == [0] and read.skipped_frames == {"malformed": 1, "null": 1}


def test_per_camera_null_or_malformed_extrinsics_skip_only_that_frame(tmp_path):
    frames = {str(k): np.eye(3, 4).tolist() for k in range(5)}
    frames["1"], frames["3"] = None, [[1.0, float("nan"), 0, 0]] * 3
    data = {"metadata": {}, "aria01": {"camera_extrinsics": frames}}
    read = read_aria_camera(_write(tmp_path, "camera.json", data))
    assert sorted(read.extrinsics) == [0, 2, 4] and read.name == "aria01"
    assert read.skipped_frames == {"null": 1, "malformed": 1}
    data["aria01"]["camera_extrinsics"] = [[0.0] * 4] * 3  # not a frame dictionary: the take
    with pytest.raises(AnnotationError, match="frame dictionary"):
        read_aria_camera(_write(tmp_path, "camera.json", data))


def test_two_aria_cameras_use_the_named_one_or_refuse(tmp_path):
    ours, other = np.eye(3, 4), np.eye(3, 4) + 1.0
    per_camera = {"aria01": {"camera_extrinsics": {"0": other.tolist()}},
                  "aria02": {"camera_extrinsics": {"0": ours.tolist()}}}
    path = _write(tmp_path, "camera.json", per_camera)
    read = read_aria_camera(path, "aria02")
    assert read.name == "aria02"
    np.testing.assert_array_equal(read.extrinsics[0], ours)
    with pytest.raises(AriaCameraError, match="2 Aria cameras") as err:
        read_aria_camera(path)  # no name: never the first key by chance
    assert err.value.reason == "aria_camera_ambiguous"
    with pytest.raises(AriaCameraError, match="aria03") as err:
        read_aria_camera(path, "aria03")
    assert err.value.reason == "aria_camera_missing"
    per_frame = {"0": {"aria01": {"camera_extrinsics": other.tolist()},
                       "aria02": {"camera_extrinsics": ours.tolist()}}}
    path = _write(tmp_path, "camera.json", per_frame)
    np.testing.assert_array_equal(read_aria_extrinsics(path, "aria02")[0], ours)
    with pytest.raises(AriaCameraError, match="2 Aria cameras"):
        read_aria_camera(path)


def test_aria_camera_name_from_take_metadata():
    def cams(*names, ego=True):
        return [{"cam_id": n, "is_ego": ego} for n in names]

    assert aria_camera_name({}) is None  # no metadata: left to the camera file
    assert aria_camera_name({"capture": {"cameras": cams("aria02") + cams("cam01", ego=False)}}
                            ) == "aria02"
    assert aria_camera_name({"capture": {"cameras": cams("aria01", "aria02")},
                             "frame_aligned_videos": {"aria02": {}, "cam01": {}}}) == "aria02"
    assert aria_camera_name({"capture": {"cameras": cams("aria01", "iphone01")}}) == "aria01"
    assert aria_camera_name({"frame_aligned_videos": {"aria03": {}, "cam01": {}}}) == "aria03"
    with pytest.raises(AriaCameraError, match="2 Aria cameras"):
        aria_camera_name({"take_name": "t", "capture": {"cameras": cams("aria01", "aria02")}})
    with pytest.raises(AriaCameraError, match="2 Aria cameras"):
        aria_camera_name({"frame_aligned_videos": {"aria01": {}, "aria02": {}}})


def _extrinsics(yaw_deg: float, centre) -> np.ndarray:
    """World->camera [3, 4] of a camera at `centre` turned `yaw_deg` about the world z axis."""
    a = np.radians(yaw_deg)
    rotation = np.array([[np.cos(a), np.sin(a), 0], [-np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return np.concatenate([rotation, (-rotation @ np.asarray(centre, float))[:, None]], axis=1)


def test_camera_motion_is_relative_to_the_clip_first_frame():
    first, turned = _extrinsics(30, [1, 2, 0]), _extrinsics(40, [1, 3, 0])
    pose = relative_camera(first, turned)  # [3, 4]
    # 10 degrees more about z; the centre moved 1 m along world y, seen from the first camera
    np.testing.assert_allclose(pose[:, :3], _extrinsics(-10, [0, 0, 0])[:, :3], atol=1e-12)
    np.testing.assert_allclose(pose[:, 3], [np.sin(np.radians(30)), np.cos(np.radians(30)), 0],
                               atol=1e-12)
    point_world = np.array([0.3, -0.7, 1.1])  # p_first = R p_turned + t
    in_first = first[:, :3] @ point_world + first[:, 3]
    in_turned = turned[:, :3] @ point_world + turned[:, 3]
    np.testing.assert_allclose(pose[:, :3] @ in_turned + pose[:, 3], in_first, atol=1e-12)
    window = window_camera({5: first, 6: turned, 7: first}, start=5, length=3)
    assert window.shape == (3, 3, 4) and window.dtype == np.float32
    np.testing.assert_allclose(window[0], np.eye(3, 4), atol=1e-6)
    np.testing.assert_allclose(window[2], np.eye(3, 4), atol=1e-6)


def test_windows_need_twenty_posed_frames_with_extrinsics():
    posed = set(range(0, 60)) - {33}
    with_extrinsics = set(range(0, 60)) - {7}
    starts, skipped = plan_windows(posed, with_extrinsics, length=20, stride=5)
    assert starts == [10, 35, 40]
    assert skipped == {"extrinsics_missing": 2, "pose_gap": 4}
    with pytest.raises(ValueError, match="multiple of 5"):
        plan_windows(posed, with_extrinsics, length=20, stride=3)

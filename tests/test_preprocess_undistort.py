"""Fisheye -> pinhole undistortion: a clear error without projectaria_tools, right with it."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from preprocess import egoexo4d
from preprocess.undistort import UndistortUnavailable, pinhole_undistorter


def test_asking_for_undistortion_without_projectaria_tools_says_how_to_fix_it(
    tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "projectaria_tools", None)  # import fails as if absent
    monkeypatch.setitem(sys.modules, "projectaria_tools.core", None)
    root = tmp_path / "raw"
    labels = root / "annotations" / "ego_pose" / "train" / "body" / "annotation"
    labels.mkdir(parents=True)
    (labels / "uid0.json").write_text("{}")
    (root / "takes.json").write_text('[{"take_uid": "uid0", "take_name": "take0"}]')
    with pytest.raises(UndistortUnavailable, match="pip install projectaria-tools.*--undistort off"):
        egoexo4d.main(["--root", str(root), "--out", str(tmp_path / "out"), "--undistort", "on"])


def test_undistorted_point_lands_on_its_pinhole_projection():
    """A dot drawn where a 3D point hits the fisheye image moves to where a pinhole sees it."""
    core = pytest.importorskip("projectaria_tools.core", reason="projectaria_tools not installed")
    calibration, sophus = core.calibration, core.sophus
    params = np.array([610.9, 715.2, 716.7, 0.39, -0.33, -0.23, 1.7, -1.6, 0.39, 5e-4, -4e-4,
                       -2e-4, 6e-4, -2e-4, 1e-4])  # Aria RGB-like FISHEYE624 at 1408 px
    source = calibration.CameraCalibration("camera-rgb", calibration.FISHEYE624, params,
                                           sophus.SE3.from_matrix(np.eye(4)), 1408, 1408, 704.0,
                                           1.6, "test")
    undistort = pinhole_undistorter(source, 448, 448)
    fisheye = source.rescale(np.array([448, 448]), 448 / 1408)
    point = np.array([0.3, -0.2, 1.0])  # metres, camera frame
    u, v = np.round(fisheye.project(point)).astype(int)
    image = np.zeros((448, 448, 3), np.uint8)
    image[v - 2 : v + 3, u - 2 : u + 3] = 255
    out = undistort(image)  # [448, 448, 3]
    pinhole = calibration.get_linear_camera_calibration(448, 448, fisheye.get_focal_lengths()[0])
    ys, xs = np.nonzero(out[..., 0] > 100)
    np.testing.assert_allclose([xs.mean(), ys.mean()], pinhole.project(point), atol=1.0)
    assert np.hypot(*(pinhole.project(point) - (u, v))) > 3  # the fisheye really moved it

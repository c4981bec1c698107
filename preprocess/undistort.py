"""Aria fisheye -> linear pinhole, with `projectaria_tools` (an optional dependency).

Ego-Exo4D's Aria RGB videos are fisheye (FISHEYE624). The authors undistort each frame to a
linear pinhole of the same size and the same focal length [official], using the take's
calibration stored in `takes/<take>/*_noimagestreams.vrs`. The pinhole keeps the camera's frame
(same T_device_camera), so the extrinsics and the poses in the camera frame stay valid.
The demo world renders pinhole video already and needs none of this.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable

import numpy as np

__all__ = [
    "UndistortUnavailable", "find_calibration", "make_undistorter", "pinhole_undistorter",
    "require_projectaria",
]

RGB_LABEL = "camera-rgb"


class UndistortUnavailable(RuntimeError):
    """Undistortion was asked for but `projectaria_tools` is not installed."""


def require_projectaria():
    """Import `projectaria_tools.core` or explain how to get it."""
    try:
        from projectaria_tools.core import calibration, data_provider
    except ImportError as err:
        raise UndistortUnavailable(
            "fisheye undistortion needs projectaria_tools, which is not installed: "
            "`pip install projectaria-tools` (x86_64/arm64 Linux or macOS), or pass "
            "--undistort off to keep the fisheye frames"
        ) from err
    return calibration, data_provider


def find_calibration(take_dir: str, camera: str | None = None) -> str | None:
    """The take's Aria calibration `<camera>_noimagestreams.vrs`, or None if it has none.

    Without a camera name, the take's only `*_noimagestreams.vrs` (None when there are several:
    the wrong device's calibration must not be used).
    """
    if camera is not None:
        path = os.path.join(take_dir, f"{camera}_noimagestreams.vrs")
        return path if os.path.isfile(path) else None
    found = sorted(glob.glob(os.path.join(take_dir, "*_noimagestreams.vrs")))
    return found[0] if len(found) == 1 else None


def pinhole_undistorter(source, width: int, height: int) -> Callable[[np.ndarray], np.ndarray]:
    """Map frames of a fisheye `CameraCalibration` to the linear pinhole of the same focal.

    The calibration is rescaled to (width, height) first when it was made for another size
    (the factory calibration is for the full 1408 x 1408 sensor; videos are downscaled).
    """
    calibration, _ = require_projectaria()
    full_width = source.get_image_size()[0]
    if (width, height) != tuple(source.get_image_size()):
        source = source.rescale(np.array([width, height]), width / full_width)
    focal = float(source.get_focal_lengths()[0])
    target = calibration.get_linear_camera_calibration(
        width, height, focal, source.get_label(), source.get_transform_device_camera()
    )

    def undistort(image: np.ndarray) -> np.ndarray:
        return calibration.distort_by_calibration(image, target, source)  # [H, W, 3]

    return undistort


def make_undistorter(vrs_path: str, width: int, height: int) -> Callable[[np.ndarray], np.ndarray]:
    """`pinhole_undistorter` for the RGB camera calibration stored in a take's VRS file."""
    _, data_provider = require_projectaria()
    provider = data_provider.create_vrs_data_provider(vrs_path)
    if provider is None:
        raise ValueError(f"{vrs_path}: not a readable VRS file")
    source = provider.get_device_calibration().get_camera_calib(RGB_LABEL)
    if source is None:
        raise ValueError(f"{vrs_path}: no {RGB_LABEL} calibration inside")
    return pinhole_undistorter(source, width, height)

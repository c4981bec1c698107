"""The pose tensor every module shares: per pose and joint, x, y, z (metres, egocentric camera
frame) and a visibility channel (the data stores 0 or 1; an invisible joint's x, y, z are 0).

    why = pose_problem(poses)   # None, or what makes a stored [F, J, 4] pose record unusable
"""

import numpy as np

VISIBLE = 0.5
"""A joint is visible where its visibility channel exceeds this."""
MAX_ABS_METRES = 10.0
"""Bound on |x|, |y|, |z| of a stored visible joint, in metres. Body joints seen from the
wearer's head camera lie within about 2 m of it; 10 m leaves room for any pose and still
refuses garbage (a flipped exponent bit gives 1e4 m or more; a pose in cm or mm is 100 or
1000 times too large). docs/data_format.md."""


def pose_problem(poses: np.ndarray) -> str | None:
    """None when a stored pose record [F, J, 4] is usable: every value finite, visibility in
    [0, 1], and every visible joint within MAX_ABS_METRES of the camera on each axis; otherwise
    the first problem, naming the pose, joint and value."""
    finite = np.isfinite(poses)
    if not finite.all():
        f, j, c = np.argwhere(~finite)[0]
        return f"non-finite value at pose {f}, joint {j}, channel {c}"
    visibility = poses[..., 3]  # [F, J]
    if ((visibility < 0) | (visibility > 1)).any():
        f, j = np.argwhere((visibility < 0) | (visibility > 1))[0]
        return f"visibility {float(visibility[f, j]):.3g} at pose {f}, joint {j} is not in [0, 1]"
    far = (np.abs(poses[..., :3]).max(axis=-1) > MAX_ABS_METRES) & (visibility > VISIBLE)
    if far.any():
        f, j = np.argwhere(far)[0]
        return (f"joint {j} of pose {f} lies {float(np.abs(poses[f, j, :3]).max()):.3g} m from "
                f"the camera, beyond the {MAX_ABS_METRES:g} m bound of an egocentric pose")
    return None

"""The TriFinger simulator (``trifinger-simulation``, pybullet + pinocchio) behind one small class.

``TriFingerScene`` holds one TriFingerPro (``SimFinger``), the coloured cube (``ColoredCubeV2``)
and the one camera the policy sees (camera60 of ``TriFingerCameras``, 270 x 270 RGB, as
Majumdar et al.'s benchmark). Fingertips are driven as that benchmark drives them: a plan of
desired fingertip positions (metres, world frame) is followed by a Cartesian impedance
controller, ``tau = J^T (Kp clip(x_des - x) + Kd (dx_des - dx)) + g(q)``, at the simulator's
250 Hz. An action moves the plan by a displacement spread evenly over one control period.

    scene = TriFingerScene(fixed_cube=True)
    scene.reset(joints, cube_position, cube_orientation)
    scene.move_tips(displacement)          # [9] metres, over one control period
    image = scene.render()                 # uint8 [270, 270, 3]

``import_simulator`` imports the packages or raises ``SimulatorMissingError`` with what to run.
gym (a dependency of trifinger-simulation, imported by its ``__init__``) prints a deprecation
banner on import, taken from the ``gym_notices`` table for its own version; that one entry is
dropped before the import, so nothing else is hidden.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

import numpy as np

SIM_TIME_STEP = 0.004  # s; the simulator's default gains are set for 250 Hz
CONTROL_PERIOD = 0.4  # s per action (the benchmark's 0.4 s demo sampling)
SIM_STEPS_PER_ACTION = round(CONTROL_PERIOD / SIM_TIME_STEP)  # 100
CUBE_HALF_WIDTH = 0.0325  # m (ColoredCubeV2 is 6.5 cm wide)
IMAGE_SIZE = 270  # px, square camera60 image
REST_JOINTS = np.array([0.0, 0.9, -1.7] * 3)  # rad: every finger raised above the arena
KP, KD, MAX_ERROR = 300.0, 5.0, 0.01  # N/m, N s/m, m: impedance gains, error clip per finger
PACKAGES = ("pybullet", "pinocchio", "trifinger_simulation")
REQUIREMENT = "trifinger-simulation==2.0.0"


def simulator_version() -> str:
    """The installed simulator packages, e.g. 'trifinger-simulation 2.0.0, pybullet 3.2.7'."""
    names = ("trifinger-simulation", "pybullet", "pin")
    return ", ".join(f"{n} {importlib.metadata.version(n)}" for n in names)


class SimulatorMissingError(ImportError):
    """The TriFinger simulator packages are not installed."""


def _drop_gym_notice() -> None:
    """Remove the deprecation notice gym would print for its installed version (only that)."""
    if "gym" in sys.modules:
        return
    try:
        from gym_notices import notices
        version = importlib.metadata.version("gym")
    except (ImportError, importlib.metadata.PackageNotFoundError):
        return
    notices.notices.pop(version, None)


def import_simulator():
    """Import the simulator packages (quietly); returns the ``trifinger_simulation`` module.

    Raises:
        SimulatorMissingError: a package is missing, with the command that installs it.
    """
    _drop_gym_notice()
    try:
        for name in PACKAGES:
            importlib.import_module(name)
        from trifinger_simulation import camera, collision_objects, sim_finger  # noqa: F401
    except ImportError as err:
        missing = err.name or str(err)
        raise SimulatorMissingError(
            f"the policy task needs the TriFinger simulator, but {missing} cannot be imported: "
            f"run `make setup` (or `.venv/bin/python -m pip install {REQUIREMENT}`)"
        ) from err
    return sys.modules["trifinger_simulation"]


class TriFingerScene:
    """One simulated TriFingerPro with the coloured cube and camera60 (headless, pybullet DIRECT).

    Args:
        fixed_cube: the cube cannot move (reach cube), else it is a free 94 g body (move cube).
        image_size: camera60's image side in pixels (the benchmark's 270).

    ``reset`` first restores the physics state saved at construction (pybullet ``saveState``),
    so an episode does not depend on the ones run before it in the same scene.
    """

    def __init__(self, fixed_cube: bool, image_size: int = IMAGE_SIZE):
        import_simulator()
        import pinocchio
        import pybullet
        from trifinger_simulation import camera, collision_objects, sim_finger

        self._pin, self._pybullet = pinocchio, pybullet
        self.finger = sim_finger.SimFinger("trifingerpro", time_step=SIM_TIME_STEP)
        client = self.finger._pybullet_client_id
        self._client = client
        self.cube = collision_objects.ColoredCubeV2(
            position=(0.0, 0.0, CUBE_HALF_WIDTH), pybullet_client_id=client)
        if fixed_cube:  # mass 0: a static body
            pybullet.changeDynamics(self.cube._object_id, -1, mass=0.0, physicsClientId=client)
        self.camera = camera.TriFingerCameras(
            pybullet_client_id=client, image_size=(image_size, image_size)).cameras[0]
        kinematics = self.finger.kinematics
        self._model, self._data = kinematics.robot_model, kinematics.data
        self._tip_ids = kinematics.tip_link_ids
        self._t = -1
        self._observation = None
        self.plan = np.zeros(9)
        self._saved = pybullet.saveState(physicsClientId=client)

    # ---------------------------------------------------------------------------- state
    def reset(self, joints: np.ndarray, cube_position: np.ndarray,
              cube_orientation: np.ndarray) -> None:
        """Put the fingers at ``joints`` [9] rad (at rest) and the cube at its pose (m, xyzw)."""
        self._pybullet.restoreState(self._saved, physicsClientId=self._client)
        self.cube.set_state(list(map(float, cube_position)), list(map(float, cube_orientation)))
        self._pybullet.resetBaseVelocity(self.cube._object_id, [0, 0, 0], [0, 0, 0],
                                         physicsClientId=self._client)
        self._observation = self.finger.reset_finger_positions_and_velocities(
            np.asarray(joints, dtype=float))
        self.plan = self.tips()

    def joints(self) -> tuple[np.ndarray, np.ndarray]:
        """Joint positions [9] rad and velocities [9] rad/s."""
        return self._observation.position.copy(), self._observation.velocity.copy()

    def tips(self) -> np.ndarray:
        """Fingertip positions [9] (x, y, z of fingers 0, 1, 2), metres, world frame."""
        q = self._observation.position
        self._pin.framesForwardKinematics(self._model, self._data, q)
        return np.concatenate([self._data.oMf[i].translation for i in self._tip_ids])  # [9]

    def cube_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Cube centre [3] metres and orientation [4] (quaternion x, y, z, w)."""
        position, orientation = self.cube.get_state()
        return np.asarray(position, dtype=float), np.asarray(orientation, dtype=float)

    def render(self) -> np.ndarray:
        """camera60's image, uint8 [S, S, 3]."""
        return np.ascontiguousarray(self.camera.get_image()[..., :3], dtype=np.uint8)

    # -------------------------------------------------------------------------- control
    def _torque(self, x_des: np.ndarray, dx_des: np.ndarray) -> np.ndarray:
        """Impedance-control torques [9] toward desired tip positions/velocities [9]."""
        pin, model, data = self._pin, self._model, self._data
        q, dq = self._observation.position, self._observation.velocity
        pin.computeJointJacobians(model, data, q)
        pin.framesForwardKinematics(model, data, q)
        jacobian = np.concatenate([
            pin.getFrameJacobian(model, data, i, pin.ReferenceFrame.LOCAL_WORLD_ALIGNED)[:3]
            for i in self._tip_ids])  # [9, 9]
        x = np.concatenate([data.oMf[i].translation for i in self._tip_ids])  # [9]
        error = (x_des - x).reshape(3, 3)  # [finger, xyz]
        norm = np.linalg.norm(error, axis=1, keepdims=True)  # [3, 1]
        error = error * np.minimum(1.0, MAX_ERROR / np.maximum(norm, 1e-12))
        force = KP * error.reshape(9) + KD * (dx_des - jacobian @ dq)  # [9] N
        gravity = pin.computeGeneralizedGravity(model, data, q)  # [9] N m
        return jacobian.T @ force + gravity

    def move_tips(self, displacement: np.ndarray) -> None:
        """Move the fingertip plan by ``displacement`` [9] metres over one control period,
        tracking it with the impedance controller for ``SIM_STEPS_PER_ACTION`` steps."""
        displacement = np.asarray(displacement, dtype=float)
        start, n = self.plan.copy(), SIM_STEPS_PER_ACTION
        velocity = displacement / CONTROL_PERIOD  # [9] m/s
        for i in range(n):
            torque = self._torque(start + (i + 1) / n * displacement, velocity)
            self._t = self.finger.append_desired_action(self.finger.Action(torque=torque))
            self._observation = self.finger.get_observation(self._t + 1)
        self.plan = start + displacement

    def close(self) -> None:
        """Disconnect from pybullet (the scene cannot be used afterwards)."""
        self.finger._disconnect_from_pybullet()

"""Load an exported EgoAgent and use its three abilities: represent, predict, act.

    from megatron_ego.inference import EgoAgent
    agent = EgoAgent.from_pretrained("runs/egoagent_300m/export", device="cuda")
    feature = agent.represent(images)                  # uint8 [n, H, W, 3] -> [n, h]
    feature, logits = agent.represent(images, with_logits=True)           # + [n, K]
    logits = agent.predict(clip_images, clip_poses)    # [n, t, H, W, 3], [n, 5t, 17, 4] -> [n, t, K]
    future = agent.act(clip_images, first_poses)       # [n, 4, H, W, 3], [n, 5, 17, 4] -> [n, 15, 17, 3]

Inputs. Images are uint8 RGB [..., H, W, 3] of any size (each whole frame is resized to
``model.image_size``, bilinear with antialiasing, then ImageNet-normalised: the training
pipeline's ``load_frame``), or float [..., 3, S, S] already normalised at S = model.image_size.
Poses are [..., F, 17, 4] (x, y, z in metres in the egocentric camera frame, visibility 0/1;
visible where > 0.5) or [..., F, 17, 3] plus ``visibility`` [..., F, 17]. Invisible joints are
fed as (0, 0, 0, 0), as in the preprocessed data. numpy arrays are accepted too; outputs are
float32 tensors on the agent's device.

Feature spaces (documented choice). ``represent`` returns the state query's output [n, h] (the
feature for k-NN) and, on request, the representation head's logits [n, K] (cosine similarities
to the K unit prototypes). ``predict`` returns the state-prediction head's logits [n, t, K]: the
prediction loss trains exactly these to match the teacher's representation-head logits of the real
next frame, so predicted and real frames are compared in that K-dim space (future-state
retrieval: query = ``predict`` logits, gallery = ``represent(..., with_logits=True)`` logits).
The raw future-state outputs [n, t, h] come with ``with_state=True``; they were never trained to
sit in the state feature space and are not used for retrieval.

Which weights (documented choice, as the paper: the teacher is the feature branch, the student
the network that predicts and acts). An export of ``--weights agent`` (the default) holds both:
``represent`` runs the EMA teacher (``model.safetensors``), ``predict`` and ``act`` run the
student (``student.safetensors``), whose predictions were trained against that teacher's
features. A teacher-only or student-only export runs its one network for all three.

``act`` rolls the model out autoregressively: step 0's action token is the given first 5 poses;
the action query of step t (t >= 1) predicts A_t from I_<=t and A_<t; the predicted A_t (x, y, z
of every joint, fed as visible: the agent's estimate of where each joint is) becomes the action
token of step t for the next pass. Later action tokens hold zeros: the causal layout makes them
invisible to earlier outputs (tests/test_causality.py). True poses after the first 5 are never
read, even when a caller passes all 20.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from megatron_ego.config import Config
from megatron_ego.export.format import STUDENT_FILE, WEIGHTS_FILE, read_export, read_student
from megatron_ego.inference.inputs import prepare_images, prepare_poses, to_tensor
from megatron_ego.inference.weights import load_module
from megatron_ego.model.egoagent import EgoAgent as EgoAgentModule


class EgoAgent:
    """An exported EgoAgent ready for inference (nn.Modules in eval mode, no gradients).

    ``module`` represents (the feature branch); ``main`` predicts and acts (``module`` itself
    unless the export holds a student)."""

    def __init__(self, module: EgoAgentModule, cfg: Config, device: torch.device,
                 precision: str = "fp32", metadata: dict[str, str] | None = None,
                 main: EgoAgentModule | None = None):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16'; got {precision!r}")
        self.module, self.cfg, self.device = module, cfg, torch.device(device)
        self.main = module if main is None else main
        self.precision, self.metadata = precision, dict(metadata or {})
        m = cfg.model
        self.image_size, self.num_steps = m.image_size, m.num_steps
        self.poses_per_step, self.num_joints = m.poses_per_step, m.num_joints

    # --------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None,
                        precision: str = "fp32") -> EgoAgent:
        """Build the module from ``path/config.yaml`` and load ``path/model.safetensors`` (and
        ``path/student.safetensors``, when there, as the network that predicts and acts).

        Args:
            path: a folder written by ``launch/export.py``.
            device: "cpu", "cuda", "cuda:1", ...; None = CUDA when available, else CPU.
            precision: "fp32", or "bf16" (autocast on CUDA; weights stay fp32).
        Raises:
            ExportError: missing files, or weights that do not fit the config (names the tensor).
        """
        from megatron_ego.model.backbone import transformer_engine_available
        from megatron_ego.model.parallel import ensure_model_parallel
        from megatron_ego.runtime.device import seed_everything

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        cfg, weights, metadata = read_export(path, device="cpu")
        m = cfg.model
        m.recompute, m.fp8 = False, False  # training-only switches
        if m.transformer_impl == "transformer_engine" and not transformer_engine_available():
            m.transformer_impl = "local"  # same weights (export.format maps the norm names)
        ensure_model_parallel()
        seed_everything(cfg.run.seed)  # megatron's CUDA RNG tracker must exist to build on GPU
        module = load_module(m, weights, device, Path(path) / WEIGHTS_FILE)
        student = read_student(path, cfg, device="cpu")
        main = None
        if student is not None:
            main = load_module(m, student[0], device, Path(path) / STUDENT_FILE)
        metadata["predict_act_weights"] = "student" if main is not None else metadata.get(
            "weights", "")
        return cls(module, cfg, device, precision, metadata, main)

    def _autocast(self):
        if self.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------------------------- inputs
    def prepare_images(self, images, lead: int = 1) -> torch.Tensor:
        """uint8 [*lead, H, W, 3] or normalised float [*lead, 3, S, S] -> float [*lead, 3, S, S]
        on the agent's device (inference/inputs.py)."""
        return prepare_images(images, self.image_size, self.device, lead)

    def prepare_poses(self, poses, visibility=None) -> torch.Tensor:
        """[n, F, J, 4] or [n, F, J, 3] + visibility [n, F, J] -> float [n, F, J, 4] on the
        agent's device; invisible joints (0, 0, 0, 0) (inference/inputs.py)."""
        return prepare_poses(poses, visibility, self.num_joints, self.device)

    def _tokens(self, poses: torch.Tensor) -> torch.Tensor:
        """[n, t*P, J, 4] -> action tokens [n, t, 4, P, J]."""
        n, f, J, _ = poses.shape
        P = self.poses_per_step
        return poses.view(n, f // P, P, J, 4).permute(0, 1, 4, 2, 3)  # [n, t, 4, P, J]

    def _sequence(self, frames: torch.Tensor, tokens: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [n, t, 3, S, S], tokens [n, t, 4, P, J] with t <= T, zero-padded to T steps
        (later steps cannot affect earlier outputs) -> actions [n, T, 4, P, J], future [n, T, h]."""
        n, t = frames.shape[:2]
        T = self.num_steps
        if t < T:
            frames = torch.cat([frames, frames.new_zeros(n, T - t, *frames.shape[2:])], dim=1)
            tokens = torch.cat([tokens, tokens.new_zeros(n, T - t, *tokens.shape[2:])], dim=1)
        with torch.no_grad(), self._autocast():
            actions, future = self.main.act_and_predict(frames, tokens)
        return actions.float(), future.float()  # [n, T, 4, P, J], [n, T, h]

    def _steps(self, images, what: str) -> int:
        shape = tuple(to_tensor(images, "images").shape)
        low = 2 if what == "act" else 1
        if len(shape) != 5 or not low <= shape[1] <= self.num_steps:
            raise ValueError(
                f"{what}: images must be [n, t, ...] with {low} <= t <= model.num_steps="
                f"{self.num_steps} frames at 6 fps; got shape {shape}"
            )
        return shape[1]

    # ------------------------------------------------------------------------------- abilities
    def represent(self, images, with_logits: bool = False):
        """State features of single frames.

        Args:
            images: uint8 [n, H, W, 3] or normalised float [n, 3, S, S].
            with_logits: also return the representation head's logits.
        Returns:
            feature [n, h]; or (feature [n, h], logits [n, K]) with ``with_logits``.
        """
        x = self.prepare_images(images, lead=1)  # [n, 3, S, S]
        with torch.no_grad(), self._autocast():
            feature, logits = self.module.represent(x)
        return (feature.float(), logits.float()) if with_logits else feature.float()

    def predict(self, images, poses, visibility=None, with_state: bool = False):
        """Predicted next-frame states: step t predicts I_{t+1} from I_<=t and A_<=t.

        Args:
            images: [n, t, H, W, 3] uint8 or [n, t, 3, S, S] float, 1 <= t <= T (6 fps).
            poses: [n, 5t, J, 4] or [n, 5t, J, 3] + visibility: A_0 .. A_{t-1} (30 fps).
            with_state: also return the raw future-state outputs [n, t, h].
        Returns:
            logits [n, t, K] of the state-prediction head (the retrieval query space); or
            (state [n, t, h], logits [n, t, K]) with ``with_state``.
        """
        t = self._steps(images, "predict")
        frames = self.prepare_images(images, lead=2)  # [n, t, 3, S, S]
        poses = self.prepare_poses(poses, visibility)  # [n, F, J, 4]
        if tuple(poses.shape[:2]) != (frames.shape[0], t * self.poses_per_step):
            raise ValueError(
                f"predict: {t} images need poses [n={frames.shape[0]}, "
                f"{t * self.poses_per_step}, {self.num_joints}, 4]; got {tuple(poses.shape)}"
            )
        _, future = self._sequence(frames, self._tokens(poses))
        future = future[:, :t]  # [n, t, h]
        with torch.no_grad(), self._autocast():
            logits = self.main.predict_head(future).float()  # [n, t, K]
        return (future, logits) if with_state else logits

    def act(self, images, poses, visibility=None, return_visibility: bool = False):
        """Future body poses by autoregressive rollout (see the module docstring).

        Args:
            images: [n, t, H, W, 3] uint8 or [n, t, 3, S, S] float, 2 <= t <= T (4: 20 poses).
            poses: [n, F, J, 4] or [n, F, J, 3] + visibility [n, F, J]; the first P = 5 poses
                (A_0) are used, any later ones are ignored (F = 5 or F = 5t).
            return_visibility: also return the predicted visibility probabilities.
        Returns:
            poses [n, (t-1)*5, J, 3] in metres, camera frame, 30 fps (the 15 poses after the
            first 5 for t = 4); with ``return_visibility`` also [n, (t-1)*5, J] in [0, 1].
        """
        t = self._steps(images, "act")
        frames = self.prepare_images(images, lead=2)  # [n, t, 3, S, S]
        P = self.poses_per_step
        n = frames.shape[0]
        poses = to_tensor(poses, "poses")
        if poses.dim() != 4 or poses.shape[0] != n or poses.shape[1] not in (P, t * P):
            raise ValueError(
                f"act: poses must be [n={n}, {P}, {self.num_joints}, 4 or 3] (the observed "
                f"first {P} poses; [n, {t * P}, ...] is accepted, its later poses are ignored); "
                f"got {tuple(poses.shape)}"
            )
        if visibility is not None:
            visibility = to_tensor(visibility, "visibility")[:, :P]
        observed = self.prepare_poses(poses[:, :P], visibility)  # [n, P, J, 4]
        tokens = frames.new_zeros(n, t, 4, P, self.num_joints)  # [n, t, 4, P, J]
        tokens[:, 0] = self._tokens(observed)[:, 0]
        positions, probabilities = [], []
        for step in range(1, t):
            actions, _ = self._sequence(frames, tokens)  # [n, T, 4, P, J]
            predicted = actions[:, step]  # [n, 4, P, J]
            probability = predicted[:, 3].sigmoid()  # [n, P, J]
            # Every joint's predicted position is fed back as a visible one: it is the agent's
            # estimate of where the joint is, and the next step's offsets are anchored on it
            # (model/egoagent.py last_visible_anchor). In the data an invisible joint carries no
            # position (x, y, z = 0), which would throw that estimate away.
            tokens[:, step] = torch.cat([predicted[:, :3], torch.ones_like(probability)[:, None]],
                                        dim=1)
            positions.append(predicted[:, :3].permute(0, 2, 3, 1))  # [n, P, J, 3]
            probabilities.append(probability)
        future = torch.cat(positions, dim=1)  # [n, (t-1)*P, J, 3]
        return (future, torch.cat(probabilities, dim=1)) if return_visibility else future

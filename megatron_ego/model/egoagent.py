"""EgoAgent: one trunk that represents, predicts and acts (paper section 3).

    student = EgoAgent(cfg.model)
    out = student(frames=frames, poses=poses, global_crops=g, local_crops=l)   # StudentOutput
    feature, logits = teacher.represent(images)                               # feature branch

Shapes: frames [b, T, 3, S, S], poses [b, T, 4, P, J] (x, y, z in metres, visibility),
crops [b, V, 3, s, s]. The teacher is an EMA copy of the same class (training/ema.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from megatron_ego.config import ModelConfig
from megatron_ego.model.backbone import Backbone
from megatron_ego.model.embeddings import ActionProjector, ImageProjector, QueryTokens
from megatron_ego.model.heads import ActionHead, DINOHead
from megatron_ego.model.layout import FeatureLayout, StudentLayout
from megatron_ego.pose_format import VISIBLE


@dataclass
class StudentOutput:
    """What one student forward produces; a field is None when its inputs were not given."""

    actions: torch.Tensor | None = None
    """[b, T, 4, P, J]: predicted A_t per step (x, y, z in metres; visibility logit)."""
    future_state: torch.Tensor | None = None
    """[b, T, h]: future-state query outputs; step t predicts the state of I_{t+1}."""
    future_logits: torch.Tensor | None = None
    """[b, T-1, K]: state-prediction head on steps 0..T-2 (targets: I_1 .. I_{T-1})."""
    global_logits: torch.Tensor | None = None
    """[b, G, K]: representation head on the global crops."""
    global_features: torch.Tensor | None = None
    """[b, G, h]: state features of the global crops (before the head)."""
    local_logits: torch.Tensor | None = None
    """[b, L, K]: representation head on the local crops."""


def last_visible_anchor(poses: torch.Tensor, fallback: torch.Tensor,
                        threshold: float = VISIBLE) -> torch.Tensor:
    """Per step t and joint: the joint's last visible position among the poses of steps < t.

    Invisible joints carry x, y, z = 0 in the data, so anchoring on the previous pose itself
    would put their offsets at the camera centre; the zero-velocity baseline likewise holds a
    joint at its last visible position. poses [b, T, 4, P, J] (visibility > threshold = visible),
    fallback [3, J] for joints not visible before step t (all of step 0) -> [b, T, 3, J].
    """
    b, t, _, p, j = poses.shape
    xyz = poses[:, :, :3].permute(0, 1, 3, 2, 4).reshape(b, t * p, 3, j)  # [b, T*P, 3, J]
    visible = (poses[:, :, 3] > threshold).reshape(b, t * p, j)  # [b, T*P, J]
    frame = torch.arange(t * p, device=poses.device).view(1, -1, 1)  # [1, T*P, 1]
    last = torch.where(visible, frame, -1).cummax(dim=1).values  # [b, T*P, J]
    last = last[:, p - 1:: p][:, : t - 1]  # [b, T-1, J]: last visible frame before step 1..T-1
    index = last.clamp(min=0).unsqueeze(2).expand(-1, -1, 3, -1)  # [b, T-1, 3, J]
    found = xyz.gather(1, index)  # [b, T-1, 3, J]
    fallback = fallback.to(poses.dtype).expand(b, 1, 3, j)  # [b, 1, 3, J]
    later = torch.where((last >= 0).unsqueeze(2), found, fallback)  # [b, T-1, 3, J]
    return torch.cat([fallback, later], dim=1)  # [b, T, 3, J]


class EgoAgent(nn.Module):
    """Projectors + query tokens + megatron-core GPTModel trunk + heads."""

    def __init__(self, cfg: ModelConfig, precision: str = "fp32"):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.layout = StudentLayout(cfg.num_steps, cfg.patches_per_image, cfg.frame_bidirectional)
        self.image_projector = ImageProjector(h, cfg.patch_size)
        self.action_projector = ActionProjector(
            h, cfg.pose_channels, cfg.poses_per_step, cfg.num_joints, cfg.pose_rate_hz,
            velocity_inputs=cfg.action_velocity_inputs,
        )
        self.queries = QueryTokens(h)
        self.backbone = Backbone(cfg, max_sequence_length=self.layout.seq_len, precision=precision)
        head = dict(hidden_dim=cfg.head_hidden_dim, bottleneck_dim=cfg.head_bottleneck_dim,
                    out_dim=cfg.head_out_dim)
        self.represent_head = DINOHead(h, **head)
        self.predict_head = DINOHead(h, **head)
        self.init_predict_head()
        # The paper's action head: one Linear from the action query's output to 4 x P x J.
        self.action_head = ActionHead(h, cfg.pose_channels, cfg.poses_per_step, cfg.num_joints)
        if cfg.action_head == "anchored":
            self._build_anchored_action_head()

    def init_predict_head(self) -> None:
        """model.predict_head_init="represent": the state-prediction head starts as a copy of the
        representation head (called again after run.init_from loads a trained one)."""
        if self.cfg.predict_head_init == "represent":
            self.predict_head.load_state_dict(self.represent_head.state_dict())

    def _build_anchored_action_head(self) -> None:
        """model.action_head="anchored" (ours; the tiny CPU demo, docs/results.md)."""
        cfg = self.cfg
        # A_0 has no pose history: its action is a posture estimated from I_0 alone, with errors
        # of decimetres, where the later steps' motion offsets are centimetres. Its own output
        # layer keeps those errors' gradients off the motion layer (one layer for both made the
        # rollout worse than zero velocity on the demo world, docs/results.md).
        self.initial_action_head = ActionHead(cfg.hidden_size, cfg.pose_channels,
                                              cfg.poses_per_step, cfg.num_joints)
        # Zero-initialised: with the offsets of `_anchor_actions`, the untrained agent predicts
        # zero velocity (and visibility 0.5), and training starts from that baseline.
        for head in (self.action_head, self.initial_action_head):
            torch.nn.init.zeros_(head.proj.weight)
            torch.nn.init.zeros_(head.proj.bias)
        # The anchor of step 0, which has no earlier pose: a learned mean pose [3, J] (metres,
        # camera frame), so that every step's head output is an offset of the same scale.
        self.mean_pose = nn.Parameter(torch.zeros(3, cfg.num_joints))

    # ----------------------------------------------------------------- student: predict and act
    def act_and_predict(self, frames: torch.Tensor, poses: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [b, T, 3, S, S], poses [b, T, 4, P, J] -> actions [b, T, 4, P, J], future [b, T, h]."""
        seq = self._sequence_tokens(frames, poses)  # [b, S, h]
        hidden = self.backbone(seq.transpose(0, 1).contiguous(), self._sequence_mask(seq.device))
        return self._act_outputs(hidden.transpose(0, 1), poses)  # hidden [S, b, h] -> [b, S, h]

    def _sequence_tokens(self, frames: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """frames [b, T, 3, S, S], poses [b, T, 4, P, J] -> the interleaved sequence [b, S, h]."""
        self._check_frames(frames)
        self._check_poses(poses, frames.shape[0])
        b, t = frames.shape[:2]
        images = self.image_projector(frames.flatten(0, 1))  # [b*T, N, h]
        images = images.unflatten(0, (b, t))  # [b, T, N, h]
        acts = self.action_projector(poses.flatten(0, 1)).unflatten(0, (b, t))  # [b, T, h]
        future = self.queries.future_state  # [h]
        if self.cfg.action_in_query:  # ours: the query of step t carries A_t
            future = future + acts  # [b, T, h]
        return self.layout.assemble(images, acts, self.queries.action, future)

    def _sequence_mask(self, device: torch.device) -> torch.Tensor | None:
        return self.layout.attention_mask(device) if self.cfg.frame_bidirectional else None

    def _act_outputs(self, hidden: torch.Tensor, poses: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Trunk output [b, S, h] -> actions [b, T, 4, P, J], future-state outputs [b, T, h]."""
        action_out = hidden[:, self.layout.action_query_slice]  # [b, T, h] (strided view)
        future = hidden[:, self.layout.future_query_slice]  # [b, T, h] (strided view)
        if self.cfg.action_head == "linear":
            return self.action_head(action_out), future  # [b, T, 4, P, J]
        actions = torch.cat([self.initial_action_head(action_out[:, :1]),
                             self.action_head(action_out[:, 1:])], dim=1)  # [b, T, 4, P, J]
        return self._anchor_actions(actions, poses), future

    def _anchor_actions(self, actions: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """Anchored action head outputs -> poses (ours, model.action_head="anchored"). An anchor the
        action query of step t already sees: each joint's last visible position in A_<t
        (`last_visible_anchor`), the learned mean pose where there is none (every joint at
        step 0).

        - step 0 (`initial_action_head`): x, y, z are a posture, metres from the mean pose;
        - steps t >= 1 (`action_head`): x, y, z of pose k = 1..P are a mean velocity (m/s)
          since the anchor, i.e. pose_k = anchor + v_k * k / pose_rate. Motion is ~1 cm per
          frame: in metres it is a hundredth of the head's output scale and an Adam step moves
          it by more than the motion itself; in m/s it is on the scale of the outputs.
        A zero output is the zero-velocity prediction (the untrained agent's). Visibility stays
        a logit. actions [b, T, 4, P, J], poses [b, T, 4, P, J] -> [b, T, 4, P, J]."""
        p = actions.shape[3]
        anchor = last_visible_anchor(poses, self.mean_pose.to(actions.dtype))  # [b, T, 3, J]
        frames = torch.arange(1, p + 1, device=actions.device, dtype=actions.dtype)  # [P]
        scale = torch.ones(actions.shape[1], p, device=actions.device, dtype=actions.dtype)
        scale[1:] = frames / self.cfg.pose_rate_hz  # [T, P]: seconds since the anchor
        xyz = actions[:, :, :3] * scale[None, :, None, :, None] + anchor.unsqueeze(3)
        return torch.cat([xyz, actions[:, :, 3:]], dim=2)  # [b, T, 4, P, J]

    # ------------------------------------------------------------------- feature branch: represent
    def represent(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [n, 3, s, s] (any multiple of the patch size) -> feature [n, h], logits [n, K]."""
        feature = self.state_feature(images)  # [n, h]
        return feature, self.represent_head(feature)

    def state_feature(self, images: torch.Tensor) -> torch.Tensor:
        """The state query's output for each image: [n, 3, s, s] -> [n, h]."""
        seq, layout = self._feature_tokens(images)  # [n, N+1, h]
        mask = layout.attention_mask(seq.device) if self.cfg.frame_bidirectional else None
        hidden = self.backbone(seq.transpose(0, 1).contiguous(), mask)  # [N+1, n, h]
        return hidden[layout.state_query_position]  # [n, h]

    def _feature_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, FeatureLayout]:
        """images [n, 3, s, s] -> the feature branch's sequence [n, N+1, h] and its layout."""
        tokens = self.image_projector(images)  # [n, N, h]
        layout = FeatureLayout(tokens.shape[1], self.cfg.frame_bidirectional)
        return layout.assemble(tokens, self.queries.state), layout  # [n, N+1, h]

    # ----------------------------------------------------------------------------- training forward
    def forward(
        self,
        frames: torch.Tensor | None = None,
        poses: torch.Tensor | None = None,
        global_crops: torch.Tensor | None = None,
        local_crops: torch.Tensor | None = None,
    ) -> StudentOutput:
        """The student's whole forward for one micro-batch (any subset of the inputs).

        The clip sequence and the crops of each size go through the trunk in one packed call
        (`Backbone.forward_packed`), and all crops through the representation head at once.
        """
        out = StudentOutput()
        seqs, masks, views = [], [], []
        with_sequence = frames is not None and poses is not None
        if with_sequence:
            seqs.append(self._sequence_tokens(frames, poses))  # [b, S, h]
            masks.append(self._sequence_mask(frames.device))
        for name, crops in (("global", global_crops), ("local", local_crops)):
            if crops is None or crops.shape[1] == 0:
                continue
            seq, layout = self._feature_tokens(crops.flatten(0, 1))  # [b*V, N+1, h]
            seqs.append(seq)
            masks.append(layout.attention_mask(seq.device) if layout.frame_bidirectional else None)
            views.append((name, crops.shape[:2], layout.state_query_position))
        if not seqs:
            return out
        hidden = self.backbone.forward_packed(seqs, masks)  # [b_i, s_i, h] each
        if with_sequence:
            out.actions, out.future_state = self._act_outputs(hidden.pop(0), poses)
            out.future_logits = self.predict_head(out.future_state[:, :-1])  # [b, T-1, K]
        if not views:
            return out
        features = [x[:, position] for x, (_, _, position) in zip(hidden, views)]  # [b*V, h]
        logits = self.represent_head(torch.cat(features) if len(features) > 1 else features[0])
        for (name, (b, v), _), chunk, feature in zip(
                views, logits.split([len(f) for f in features]), features):
            setattr(out, f"{name}_logits", chunk.unflatten(0, (b, v)))  # [b, V, K]
            if name == "global":
                out.global_features = feature.unflatten(0, (b, v))  # [b, G, h]
        return out

    # ------------------------------------------------------------------------------------- checks
    def _check_frames(self, frames: torch.Tensor) -> None:
        c = self.cfg
        expected = (c.num_steps, 3, c.image_size, c.image_size)
        if frames.dim() != 5 or tuple(frames.shape[1:]) != expected:
            raise ValueError(
                f"frames must be [b, {', '.join(map(str, expected))}] "
                f"(T steps, RGB, model.image_size), got {tuple(frames.shape)}"
            )

    def _check_poses(self, poses: torch.Tensor, batch: int) -> None:
        c = self.cfg
        expected = (batch, c.num_steps, c.pose_channels, c.poses_per_step, c.num_joints)
        if tuple(poses.shape) != expected:
            raise ValueError(
                f"poses must be [{', '.join(map(str, expected))}] "
                f"(b, T, x/y/z/visibility, poses per step, joints), got {tuple(poses.shape)}"
            )

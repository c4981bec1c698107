"""The EgoAgent objective: L = l_rep L_rep + l_pred L_pred + l_act L_act (paper eq. 4).

- L_rep: DINO loss, student = all crops, teacher = global crops, representation heads.
- L_pred: DINO loss, student = state-prediction head on the future-state outputs of steps
  0..T-2, teacher = sg[representation head on the real frames I_1..I_{T-1}].
- optional (ours, loss.predict_contrastive_weight): InfoNCE of the same predictions against the
  teacher logits of every real next frame in the micro-batch (losses/contrastive.py).
- optional (ours, loss.predict_direction_weight): each prediction closer to the teacher's
  I_{t+1} than to its I_t and I_{t-1} (losses/contrastive.py).
- L_act: L1 on visible joints (or, loss.act_motion_loss, squared cm on steps >= 1) + visibility
  BCE, for every step's action query.

A micro-batch without poses (WalkingTours) trains L_rep only; a mixed one (data.mix_mode
within_batch) trains L_rep on all its samples' crops and the rest on its clips. A term whose
weight is 0 is not computed at all (the paper's leave-one-out ablations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megatron_ego.config import LossConfig, ModelConfig
from megatron_ego.losses.action import ActionLoss
from megatron_ego.losses.contrastive import predict_direction_loss, predict_infonce
from megatron_ego.losses.dino import DINOLoss
from megatron_ego.model.egoagent import EgoAgent, StudentOutput


def koleo(features: torch.Tensor) -> torch.Tensor:
    """KoLeo (Kozachenko-Leonenko entropy estimate, DINOv2): -mean log distance of each
    L2-normalised feature [n, h] to its nearest neighbour in the batch (this rank's)."""
    x = F.normalize(features.float(), dim=-1)  # [n, h]
    dist = torch.cdist(x, x)  # [n, n]
    dist = dist + torch.eye(len(x), device=x.device, dtype=x.dtype) * 4.0  # > any distance (<= 2)
    return -torch.log(dist.min(dim=1).values + 1e-8).mean()


class EgoAgentObjective(nn.Module):
    """Decides what the student and teacher must compute for a batch, and weighs the losses."""

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig):
        super().__init__()
        self.cfg = loss_cfg
        k = model_cfg.head_out_dim
        dino = dict(student_temp=loss_cfg.student_temp, center_momentum=loss_cfg.center_momentum,
                    centering=loss_cfg.centering, center_init=loss_cfg.center_init)
        self.represent_loss = DINOLoss(k, **dino)
        self.predict_loss = DINOLoss(k, **dino)
        self.action_loss = ActionLoss(loss_cfg.visibility_weight, loss_cfg.act_motion_loss)

    def _dino_losses(self) -> tuple[DINOLoss, DINOLoss]:
        return self.represent_loss, self.predict_loss

    def defer_center_updates(self) -> None:
        """DINO centers move once per optimizer step (`commit_centers`), over the global batch."""
        for loss in self._dino_losses():
            loss.defer_center_updates()

    def commit_centers(self) -> None:
        for loss in self._dino_losses():
            loss.commit_center()

    def _wants_sequence(self, batch: dict) -> bool:
        has_poses = batch.get("poses") is not None and batch.get("frames") is not None
        return has_poses and (self._wants_next_frames() or self.cfg.act_weight > 0)

    def _wants_next_frames(self) -> bool:
        c = self.cfg
        return c.predict_weight > 0 or c.predict_contrastive_weight > 0 or self._wants_direction()

    def _wants_direction(self) -> bool:
        return self.cfg.predict_direction_weight > 0

    def _wants_crops(self, batch: dict) -> bool:
        return self.cfg.represent_weight > 0 and batch.get("global_crops") is not None

    def student_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """Keyword arguments of `EgoAgent.forward` for this micro-batch."""
        inputs = {}
        if self._wants_sequence(batch):
            inputs["frames"] = batch["frames"]
            inputs["poses"] = batch["poses"]
        if self._wants_crops(batch):
            inputs["global_crops"] = batch["global_crops"]
            inputs["local_crops"] = batch.get("local_crops")
        if not inputs:
            raise ValueError(
                "micro-batch gives nothing to train: no frames+poses for predict/act and no "
                "crops for represent (check loss weights and the data source)"
            )
        return inputs

    @torch.no_grad()
    def teacher_targets(self, teacher: EgoAgent, batch: dict) -> dict[str, torch.Tensor]:
        """Teacher logits: global crops [G, b, K]; real next frames I_1..I_{T-1} [b, T-1, K];
        with the direction term, every frame I_0..I_{T-1} [b, T, K] ("frames")."""
        targets = {}
        images, splits = [], []
        if self._wants_crops(batch):
            crops = batch["global_crops"]  # [b, G, 3, S, S]
            images.append(crops.flatten(0, 1))
            splits.append(("global", crops.shape[:2]))
        if self._wants_sequence(batch) and self._wants_next_frames():
            first = 0 if self._wants_direction() else 1
            seen = batch["frames"][:, first:]  # [b, T-first, 3, S, S]
            images.append(seen.flatten(0, 1))
            splits.append(("frames" if first == 0 else "next_frames", seen.shape[:2]))
        if not images:
            return targets
        # One trunk call for every teacher image: global crops and next frames share a size.
        _, logits = teacher.represent(torch.cat(images))  # [b*G + b*(T-1), K]
        for (name, (b, v)), chunk in zip(splits, logits.split([b * v for _, (b, v) in splits])):
            chunk = chunk.unflatten(0, (b, v))  # [b, V, K]
            targets[name] = chunk.transpose(0, 1) if name == "global" else chunk
        if "frames" in targets:
            targets["next_frames"] = targets["frames"][:, 1:]  # [b, T-1, K]
        return targets

    def forward(
        self,
        student: StudentOutput,
        targets: dict[str, torch.Tensor],
        batch: dict,
        teacher_temp: float,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (weighted total, {term name: detached value})."""
        c = self.cfg
        terms: dict[str, torch.Tensor] = {}
        total = None
        # data.mix_mode=within_batch: the clips are a share of the micro-batch's samples; their
        # terms weigh by it, so that every sample counts as in homogeneous micro-batches.
        share = float(batch.get("sequence_share", 1.0))

        def add(weight: float, name: str, value: torch.Tensor) -> None:
            nonlocal total
            terms[name] = value.detach()
            total = weight * value if total is None else total + weight * value

        if "global" in targets:
            views = [student.global_logits]  # [b, G, K]
            if student.local_logits is not None:
                views.append(student.local_logits)  # [b, L, K]
            s = torch.cat(views, dim=1).transpose(0, 1)  # [G+L, b, K]
            add(c.represent_weight, "loss_represent",
                self.represent_loss(s, targets["global"], teacher_temp, skip_same_view=True))
            if c.koleo_weight > 0:
                add(c.koleo_weight, "loss_koleo", koleo(student.global_features[:, 0]))
        if "next_frames" in targets:
            s = student.future_logits.flatten(0, 1)[None]  # [1, b*(T-1), K]
            t = targets["next_frames"].flatten(0, 1)[None]  # [1, b*(T-1), K]
            if c.predict_weight > 0:
                add(c.predict_weight * share, "loss_predict",
                    self.predict_loss(s, t, teacher_temp, skip_same_view=False))
            if c.predict_contrastive_weight > 0:
                add(c.predict_contrastive_weight * share, "loss_predict_contrastive",
                    predict_infonce(s[0], t[0], c.predict_contrastive_temp))
            if c.predict_direction_weight > 0:
                add(c.predict_direction_weight * share, "loss_predict_direction",
                    predict_direction_loss(student.future_logits, targets["frames"],
                                           c.predict_contrastive_temp))
        if student.actions is not None and c.act_weight > 0:
            act, parts = self.action_loss(student.actions, batch["poses"])
            add(c.act_weight * share, "loss_act", act)
            terms.update(parts)
        if total is None:
            raise ValueError("no loss term was computed for this micro-batch")
        terms["loss"] = total.detach()
        return total, terms

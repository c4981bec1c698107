"""What a caller may hand the exported agent, checked and turned into the model's tensors:
frames (uint8 pixels of any size, or ImageNet-normalised floats at the model's size) and body
poses (metres in the egocentric camera frame, with visibility). Each refusal is a ValueError that
says what shape, dtype or unit was expected.

    frames = prepare_images(images, image_size=224, device=device, lead=2)   # [n, t, 3, S, S]
    poses = prepare_poses(poses, None, num_joints=17, device=device)        # [n, F, J, 4]
"""

from __future__ import annotations

import numpy as np
import torch

from megatron_ego.data.decode import normalize, resize_frames
from megatron_ego.pose_format import VISIBLE

MAX_ABS_METRES = 50.0  # egocentric joints lie within a few metres; larger values are cm or mm


def to_tensor(x, name: str) -> torch.Tensor:
    """A torch tensor or numpy array as a tensor (TypeError for anything else)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch tensor or numpy array; got {type(x).__name__}")
    return x


def prepare_images(images, image_size: int, device: torch.device, lead: int = 1
                   ) -> torch.Tensor:
    """uint8 [*lead, H, W, 3] or normalised float [*lead, 3, S, S] -> float [*lead, 3, S, S].

    ``lead`` is the number of leading batch dimensions (1: [n, ...], 2: [n, t, ...]); S is
    ``image_size`` (each uint8 frame is resized to it, bilinear with antialiasing, then
    ImageNet-normalised: the training pipeline's ``load_frame``).
    """
    images = to_tensor(images, "images")
    S = image_size
    shape = tuple(images.shape)
    if images.dim() != lead + 3:
        where = "[n, " if lead == 1 else "[n, t, "
        raise ValueError(
            f"images must be uint8 {where}H, W, 3] or normalised float {where}3, {S}, {S}]; "
            f"got shape {shape}"
        )
    flat = images.flatten(0, lead - 1) if lead > 1 else images  # [m, ...]
    if images.dtype == torch.uint8:
        if shape[-1] != 3:
            raise ValueError(f"uint8 images must be RGB [..., H, W, 3]; got shape {shape}")
        chw = flat.cpu().permute(0, 3, 1, 2).contiguous()  # [m, 3, H, W]
        out = normalize(resize_frames(chw, S))  # [m, 3, S, S]
    elif images.is_floating_point():
        if shape[-3:] != (3, S, S):
            raise ValueError(
                f"float images must be normalised [..., 3, {S}, {S}] (model.image_size={S}); "
                f"got shape {shape}: pass uint8 [..., H, W, 3] pixels to have them resized"
            )
        if flat.numel() and flat.abs().amax() > 20:
            raise ValueError(
                "float images look unnormalised (|value| > 20): pass uint8 pixels, or "
                "ImageNet-normalise them ((x / 255 - mean) / std)"
            )
        out = flat.float()
    else:
        raise ValueError(f"images must be uint8 or float; got {images.dtype}")
    out = out.to(device)
    return out.unflatten(0, shape[:lead]) if lead > 1 else out


def prepare_poses(poses, visibility, num_joints: int, device: torch.device) -> torch.Tensor:
    """[n, F, J, 4] or [n, F, J, 3] + visibility [n, F, J] -> float [n, F, J, 4] on `device`.

    Invisible joints become (0, 0, 0, 0); visibility becomes exactly 0 or 1.
    """
    poses = to_tensor(poses, "poses").float()
    J = num_joints
    if poses.dim() != 4 or poses.shape[2] != J or poses.shape[3] not in (3, 4):
        raise ValueError(
            f"poses must be [n, F, {J}, 4] (x, y, z metres, visibility) or [n, F, {J}, 3] "
            f"with visibility [n, F, {J}]; got shape {tuple(poses.shape)}"
        )
    if poses.shape[3] == 3:
        if visibility is None:
            raise ValueError("poses [n, F, J, 3] need visibility [n, F, J] (1 = annotated)")
        visibility = to_tensor(visibility, "visibility")
        if tuple(visibility.shape) != tuple(poses.shape[:3]):
            raise ValueError(f"visibility must be {list(poses.shape[:3])}; "
                             f"got {tuple(visibility.shape)}")
        poses = torch.cat([poses, visibility.float().unsqueeze(-1)], dim=-1)  # [n, F, J, 4]
    elif visibility is not None:
        raise ValueError("pass visibility only with [n, F, J, 3] poses (it is channel 3 here)")
    visible = poses[..., 3] > VISIBLE  # [n, F, J]
    xyz = torch.where(visible.unsqueeze(-1), poses[..., :3], torch.zeros(()))  # [n, F, J, 3]
    if not torch.isfinite(xyz).all():
        raise ValueError("poses hold NaN or inf at visible joints")
    if xyz.numel() and xyz.abs().amax() > MAX_ABS_METRES:
        raise ValueError(
            f"poses reach {float(xyz.abs().amax()):.1f} from the camera: they must be in "
            f"metres (egocentric joints lie within a few metres); convert cm or mm first"
        )
    return torch.cat([xyz, visible.float().unsqueeze(-1)], dim=-1).to(device)

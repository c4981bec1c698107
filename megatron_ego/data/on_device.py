"""Where a micro-batch meets its device: tensors moved there, uint8 images made model inputs.

The loader's workers hand over whole frames and crops as uint8 (a quarter of float32's bytes
of shared memory, pinning and host-to-device copy) with each crop's photometric draws
(`augment.pack_views` rows, "global_views" / "local_views"). Here, in the training process, the
crops get their photometric ops and every image the ImageNet normalisation (x / 255 - mean) / std,
float32:

- on the CPU with the numba kernels of photometric.py, the kernels the workers ran before: the
  same float32 values, bit for bit;
- on a GPU with the same ops as torch ops (photometric_torch.py), equal to the kernels within
  float32 rounding (tests/test_augment.py); nothing is read back from the device.

Float images pass through as they are, taken as normalised (the generated batches of
tests/batches.py and bench/train_step.py).

    batch = to_device(next(loader), device)   # frames, crops: float32 on `device`
"""

from __future__ import annotations

from typing import Any

import torch

from megatron_ego.data.augment import VIEW_FIELDS
from megatron_ego.data.photometric import normalize_into, photometric
from megatron_ego.data.photometric_torch import normalize_torch, photometric_torch

__all__ = ["IMAGES", "finish_images", "to_device"]

IMAGES = {"frames": None, "global_crops": "global_views", "local_crops": "local_views"}
"""Image keys of a micro-batch -> the key of their packed views (None: whole frames, no views)."""
_VIEWS = {v for v in IMAGES.values() if v}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The micro-batch on `device`: every tensor moved (non-blocking from pinned memory), uint8
    images turned into normalised float32, the packed views used up (not in the result)."""
    out = {
        k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
        for k, v in batch.items()
        if k not in _VIEWS
    }
    for key, views_key in IMAGES.items():
        images = out.get(key)
        if images is not None and images.dtype == torch.uint8:
            out[key] = finish_images(images, batch.get(views_key) if views_key else None)
    return out


def finish_images(images: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
    """Photometric ops (where `views` are given) and ImageNet normalisation.

    Args:
        images: uint8 [..., 3, H, W] on any device.
        views: float64 [..., VIEW_FIELDS] on the host, one row per image (`augment.pack_views`);
            None = normalise only.

    Returns:
        float32 [..., 3, H, W] on the images' device.
    """
    shape = images.shape
    flat = images.reshape(-1, *shape[-3:])  # [n, 3, H, W]
    if flat.shape[0] == 0:
        return torch.empty(shape, dtype=torch.float32, device=images.device)
    rows = None if views is None else views.reshape(-1, VIEW_FIELDS)  # [n, V]
    if images.device.type == "cpu":
        out = torch.empty(flat.shape, dtype=torch.float32)
        if rows is None:
            normalize_into(flat, out)
        else:
            photometric(flat, rows.numpy(), out=out)
    else:
        out = normalize_torch(flat) if rows is None else photometric_torch(flat, rows)
    return out.view(shape)

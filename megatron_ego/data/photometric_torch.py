"""photometric.py's view augmentations as batched torch ops, for crops that are on a GPU.

The same ops in the same order with the same float32 constants as the numba kernels: colour
jitter in each view's order (each op clamped to [0, 1]), grayscale, Gaussian blur (reflected
borders, taps summed in the kernels' order), solarize, ImageNet normalisation. Every view of the
batch goes through each op, with the identity where the view does not use it (torch.where or an
identity factor, so that nothing is read back from the device); an op that no view of the batch
uses is skipped, decided from the host copy of the packed views. tests/test_augment.py compares
both implementations with torchvision and with each other.

    out = photometric_torch(crops, views)  # uint8 [n, 3, S, S] (device), float64 [n, V] (host)
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from megatron_ego.data.photometric import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    NORM_BIAS,
    NORM_SCALE,
    SATURATION,
    gaussian_kernel,
)

__all__ = ["normalize_torch", "photometric_torch"]

_INV255 = float(np.float32(1 / 255))  # as the kernels: x = uint8 * float32(1 / 255)
_GRAY = tuple(float(np.float32(w)) for w in (0.2989, 0.587, 0.114))  # rgb_to_grayscale
_SOLARIZE = float(np.float32(128 / 255))


def _host_to(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`, copied from pinned memory without waiting for the device."""
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


@functools.cache
def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[1, 3, 1, 1] float32 each: 1 / std, -mean / std, and 1 / (255 std) (for uint8 input)."""
    return tuple(
        _host_to(v.astype(np.float32), device).view(1, 3, 1, 1)
        for v in (NORM_SCALE, NORM_BIAS, NORM_SCALE * np.float32(1 / 255))
    )


def normalize_torch(images: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 3, H, W] -> float32 (x / 255 - mean) / std, as photometric.normalize_into."""
    _, bias, scale = _constants(images.device)
    return images.to(torch.float32) * scale + bias


def _gray(x: torch.Tensor) -> torch.Tensor:
    """[n, 3, H, W] -> [n, 1, H, W], ITU-R 601 luma."""
    return _GRAY[0] * x[:, 0:1] + _GRAY[1] * x[:, 1:2] + _GRAY[2] * x[:, 2:3]


def _ramp(k: torch.Tensor) -> torch.Tensor:
    k = torch.where(k >= 6.0, k - 6.0, k)
    return torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """HSV hue of x [n, 3, H, W] rotated by `shift` [n, 1, 1, 1] turns (the kernel's formula)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    v = torch.maximum(r, torch.maximum(g, b))
    chroma = v - torch.minimum(r, torch.minimum(g, b))
    inv = torch.where(chroma > 0, 1.0 / chroma, 0.0)
    rc, gc, bc = (v - r) * inv, (v - g) * inv, (v - b) * inv
    h = torch.where(r == v, bc - gc, torch.where(g == v, 2.0 + rc - bc, 4.0 + gc - rc))
    h = h + 6.0 * shift
    h = h - 6.0 * torch.floor(h / 6.0)  # [0, 6)
    return torch.cat([v - chroma * _ramp(h + n) for n in (5.0, 3.0, 1.0)], dim=1)


def _jitter_slot(
    x: torch.Tensor, op: torch.Tensor, factors: torch.Tensor, blend: bool, hue: bool
) -> torch.Tensor:
    """One place of the colour-jitter order: each view's op `op` [n] (-1 = none) with its factor.

    Brightness, contrast and saturation are one blend, clamp(f x + w gray(x) + c), with
    (f, w, c) = (f, 0, 0), (f, 0, (1 - f) mean gray(x)), (f, 1 - f, 0)."""
    op = op.view(-1, 1, 1, 1)
    f = factors.gather(1, op.view(-1, 1).clamp(min=0).long()).view(-1, 1, 1, 1)  # [n, 1, 1, 1]
    if blend:
        gray = _gray(x)  # [n, 1, H, W]
        mean = gray.double().mean(dim=(1, 2, 3), keepdim=True).float()
        weight = torch.where(op == SATURATION, 1.0 - f, 0.0)
        offset = torch.where(op == CONTRAST, (1.0 - f) * mean, 0.0)
        mixed = torch.clamp(f * x + (weight * gray + offset), 0.0, 1.0)
        x = torch.where((op >= BRIGHTNESS) & (op <= SATURATION), mixed, x)
    if hue:
        x = torch.where(op == HUE, _hue(x, factors[:, HUE].view(-1, 1, 1, 1)), x)
    return x


def _blur(x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur of each view with its own sigma (0 = the identity kernel)."""
    size = min(x.shape[-2:])
    kernels = [gaussian_kernel(float(s), size) for s in sigmas]
    radius = max(len(k) for k in kernels) // 2
    taps = np.zeros((len(kernels), 2 * radius + 1), dtype=np.float32)  # [n, K], centred
    for row, k in zip(taps, kernels):
        row[radius - len(k) // 2 : radius + len(k) // 2 + 1] = k
    weights = _host_to(taps, x.device).view(-1, 1, 1, 1, taps.shape[1])
    padded = F.pad(x, (radius,) * 4, mode="reflect")  # [n, 3, H + 2R, W + 2R]
    height, width = x.shape[-2:]
    rows = torch.zeros_like(padded[..., :width])  # horizontal pass, [n, 3, H + 2R, W]
    for t in range(taps.shape[1]):
        rows = rows + weights[..., t] * padded[..., t : t + width]
    out = torch.zeros_like(x)  # vertical pass
    for t in range(taps.shape[1]):
        out = out + weights[..., t] * rows[..., t : t + height, :]
    return out


def photometric_torch(crops: torch.Tensor, views: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Colour jitter, grayscale, blur, solarize and normalise a batch of cropped views.

    Args:
        crops: uint8 [n, 3, S, S], on any device.
        views: float64 [n, VIEW_FIELDS] (`augment.pack_views` rows) on the host.

    Returns:
        float32 [n, 3, S, S] on the crops' device, ImageNet-normalised.
    """
    views = torch.as_tensor(views, dtype=torch.float64)  # [n, V], on the host
    host, device = views.numpy(), crops.device
    if device.type == "cuda" and not views.is_pinned():
        views = views.pin_memory()
    params = views.to(device, non_blocking=True)  # [n, V]
    factors = params[:, 4:8].float()  # [n, 4]
    x = crops.to(torch.float32) * _INV255  # [n, 3, S, S] in [0, 1]
    for place in range(4):
        codes = host[:, place]
        blend, hue = ((codes >= 0) & (codes < HUE)).any(), (codes == HUE).any()
        if blend or hue:
            x = _jitter_slot(x, params[:, place], factors, bool(blend), bool(hue))
    if host[:, 8].any():
        x = torch.where(params[:, 8].view(-1, 1, 1, 1) > 0, _gray(x).expand_as(x), x)
    if host[:, 9].any():
        x = _blur(x, host[:, 9])
    if host[:, 10].any():
        flip = (params[:, 10].view(-1, 1, 1, 1) > 0) & (x >= _SOLARIZE)
        x = torch.where(flip, 1.0 - x, x)
    scale, bias, _ = _constants(device)
    return x * scale + bias

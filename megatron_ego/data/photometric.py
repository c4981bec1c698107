"""DINO's photometric view augmentations as fused per-pixel kernels (numba), one call per view.

In DINO's order (main_dino.py DataAugmentationDINO, after the crop and flip): colour jitter
(brightness, contrast, saturation, hue in the view's random order, each clamped to [0, 1]),
grayscale, Gaussian blur, solarize, ImageNet normalisation. Each op follows torchvision's
float-tensor definition (`torchvision.transforms.functional.adjust_brightness` ... `adjust_hue`,
`rgb_to_grayscale`; solarize as PIL's threshold 128 on the 8-bit scale); tests compare them.

Why kernels: in eager torch every op is a separate pass over memory, and the HSV round trip of the
hue shift alone takes about 30 of them; here each op is one pass over a view that stays in cache,
and the hue shift is one loop (docs/benchmarks.md, "Data loader", for the resulting speed).
Numba compiles the kernels on first use and caches them on disk (`cache=True`).

    out = photometric(crops, views)   # uint8 [n, 3, S, S] -> float32 [n, 3, S, S]

Where they run: in the training process, on the micro-batch's uint8 crops, when the batch stays
on the CPU (on_device.py; photometric_torch.py holds the same ops for a GPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from megatron_ego.data.augment import ViewParams, pack_views
from megatron_ego.data.decode import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "BRIGHTNESS",
    "CONTRAST",
    "HUE",
    "NORM_BIAS",
    "NORM_SCALE",
    "SATURATION",
    "gaussian_kernel",
    "normalize_into",
    "photometric",
]

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
"""Colour-jitter op codes: positions in `ViewParams.jitter_factors` and `jitter_order` values."""

_F = np.float32
_WR, _WG, _WB = _F(0.2989), _F(0.587), _F(0.114)  # torchvision rgb_to_grayscale (ITU-R 601)
_ZERO, _ONE, _SIX = _F(0.0), _F(1.0), _F(6.0)
_SOLARIZE = _F(128 / 255)  # PIL ImageOps.solarize threshold 128, on [0, 1] pixels
NORM_SCALE = (1.0 / np.array(IMAGENET_STD)).astype(np.float32)  # [3]
"""ImageNet normalisation of [0, 1] pixels: x * NORM_SCALE + NORM_BIAS = (x - mean) / std."""
NORM_BIAS = (-np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD)).astype(np.float32)  # [3]
_KERNELS = dict(cache=True, fastmath=True, boundscheck=False, nogil=True)


@njit(**_KERNELS)
def _clamp(v):
    return min(max(v, _ZERO), _ONE)


@njit(**_KERNELS)
def _blend_gray(x, f, gray_weight, offset):
    """x <- clamp(f x + gray_weight gray(x) + offset), x: float32 [3, P] (one pass)."""
    for j in range(x.shape[1]):
        r, g, b = x[0, j], x[1, j], x[2, j]
        base = gray_weight * (_WR * r + _WG * g + _WB * b) + offset
        x[0, j] = _clamp(f * r + base)
        x[1, j] = _clamp(f * g + base)
        x[2, j] = _clamp(f * b + base)


@njit(**_KERNELS)
def _mean_gray(x):
    total = 0.0
    for j in range(x.shape[1]):
        total += _WR * x[0, j] + _WG * x[1, j] + _WB * x[2, j]
    return _F(total / x.shape[1])


@njit(**_KERNELS)
def _ramp(k):
    """HSV->RGB weight of a channel at hexagon position k in [1, 11): clamp(min(k', 4 - k'),
    0, 1) with k' = k mod 6."""
    k = k - _SIX if k >= _SIX else k
    return _clamp(min(k, _F(4.0) - k))


@njit(**_KERNELS)
def _hue(x, shift):
    """Rotate the HSV hue of x [3, P] by `shift` turns: torchvision's rgb->hsv, h += shift,
    hsv->rgb, as rgb_c = v - chroma * ramp(n_c + 6 h), n = (5, 3, 1). Branch-free, so that
    the loop vectorises."""
    s6 = _SIX * shift
    for j in range(x.shape[1]):
        r, g, b = x[0, j], x[1, j], x[2, j]
        v = max(r, max(g, b))
        chroma = v - min(r, min(g, b))
        inv = _ONE / chroma if chroma > _ZERO else _ZERO
        rc, gc, bc = (v - r) * inv, (v - g) * inv, (v - b) * inv
        h = (bc - gc) if r == v else ((_F(2.0) + rc - bc) if g == v else (_F(4.0) + gc - rc))
        h = h + s6
        h = h - _SIX * np.floor(h / _SIX)  # [0, 6)
        x[0, j] = v - chroma * _ramp(h + _F(5.0))
        x[1, j] = v - chroma * _ramp(h + _F(3.0))
        x[2, j] = v - chroma * _ramp(h + _F(1.0))


@njit(**_KERNELS)
def _grayscale(x):
    for j in range(x.shape[1]):
        gray = _WR * x[0, j] + _WG * x[1, j] + _WB * x[2, j]
        x[0, j] = gray
        x[1, j] = gray
        x[2, j] = gray


@njit(**_KERNELS)
def _reflect(i, n):
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


@njit(**_KERNELS)
def _blur(x, weights, tmp, row):
    """Separable convolution of x [3, H, W] with `weights` [2R + 1], reflected borders."""
    _, height, width = x.shape
    radius = (weights.shape[0] - 1) // 2
    for c in range(3):
        for y in range(height):  # horizontal: x -> tmp, through a reflected row buffer
            for i in range(width + 2 * radius):
                row[i] = x[c, y, _reflect(i - radius, width)]
            for i in range(width):
                tmp[c, y, i] = _ZERO
            for t in range(weights.shape[0]):
                w = weights[t]
                for i in range(width):
                    tmp[c, y, i] += w * row[i + t]
        for y in range(height):  # vertical: tmp -> x, one row of taps at a time
            for i in range(width):
                x[c, y, i] = _ZERO
            for t in range(weights.shape[0]):
                w, src = weights[t], _reflect(y + t - radius, height)
                for i in range(width):
                    x[c, y, i] += w * tmp[c, src, i]


@njit(**_KERNELS)
def _view(crop, order, factors, gray, blur, solarize, scale, bias, out, x, tmp, row):
    """All photometric ops of one view: crop uint8 [3, S, S] -> out float32 [3, S, S]."""
    size = crop.shape[1] * crop.shape[2]
    flat, src = x.reshape(3, size), crop.reshape(3, size)
    for c in range(3):
        for j in range(size):
            flat[c, j] = _F(src[c, j]) * _F(1 / 255)
    for slot in range(order.shape[0]):
        op, f = order[slot], factors[order[slot]]
        if op == BRIGHTNESS:  # blend with black
            _blend_gray(flat, f, _ZERO, _ZERO)
        elif op == CONTRAST:  # blend with the mean gray of the current view
            _blend_gray(flat, f, _ZERO, (_ONE - f) * _mean_gray(flat))
        elif op == SATURATION:  # blend with the gray image
            _blend_gray(flat, f, _ONE - f, _ZERO)
        else:
            _hue(flat, f)
    if gray:
        _grayscale(flat)
    if blur.shape[0] > 1:
        _blur(x, blur, tmp, row)
    dst = out.reshape(3, size)
    for c in range(3):
        for j in range(size):
            v = flat[c, j]
            if solarize and v >= _SOLARIZE:
                v = _ONE - v
            dst[c, j] = v * scale[c] + bias[c]


@njit(**_KERNELS)
def _normalize(src, scale, bias, dst):
    """dst[i, c] = src[i, c] / 255 * scale[c] + bias[c]; src uint8, dst float32 [n, 3, P]."""
    for i in range(src.shape[0]):
        for c in range(3):
            a, b = scale[c] * _F(1 / 255), bias[c]
            for j in range(src.shape[2]):
                dst[i, c, j] = _F(src[i, c, j]) * a + b


def normalize_into(images: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise uint8 images [n, 3, H, W] into float32 `out` [n, 3, H, W] (contiguous)
    in one pass: (x / 255 - mean) / std."""
    if not out.is_contiguous() or out.shape != images.shape:
        raise ValueError(f"out must be a contiguous float32 tensor of shape {tuple(images.shape)}")
    n = images.shape[0]
    src = images.contiguous().numpy().reshape(n, 3, -1)
    _normalize(src, NORM_SCALE, NORM_BIAS, out.numpy().reshape(n, 3, -1))
    return out


def gaussian_kernel(sigma: float, size: int) -> np.ndarray:
    """float32 [2R + 1]: the sampled Gaussian of std `sigma` (pixels), R = ceil(3 sigma) (at most
    size - 1, as reflection needs), normalised to sum 1; [1.0] (identity) for sigma = 0."""
    if sigma <= 0:
        return np.ones(1, dtype=np.float32)
    radius = min(int(math.ceil(3 * sigma)), size - 1)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    return (weights / weights.sum()).astype(np.float32)


def photometric(
    crops: torch.Tensor,
    views: list[ViewParams] | np.ndarray | torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Colour jitter, grayscale, blur, solarize and normalise cropped views, one kernel call each.

    Args:
        crops: uint8 [n, 3, S, S] (from `augment.crop_views`).
        views: the n views' random draws: `augment.ViewParams`, or their `augment.pack_views`
            rows, float64 [n, VIEW_FIELDS] (numpy or a CPU tensor).
        out: float32 [n, 3, S, S] to write into (contiguous per view); None = a new tensor.

    Returns:
        float32 [n, 3, S, S], ImageNet-normalised.
    """
    rows = pack_views(views) if isinstance(views, list) else np.asarray(views, dtype=np.float64)
    _, _, height, width = crops.shape
    out = torch.empty(crops.shape, dtype=torch.float32) if out is None else out
    target = out if out.is_contiguous() else torch.empty(crops.shape, dtype=torch.float32)
    src, dst = crops.contiguous().numpy(), target.numpy()
    x = np.empty((3, height, width), dtype=np.float32)  # scratch, reused by every view
    tmp = np.empty_like(x)
    row = np.empty(3 * max(height, width), dtype=np.float32)  # a row and its reflected borders
    for i, view in enumerate(rows):
        order = view[0:4][view[0:4] >= 0].astype(np.int64)  # the jitter ops, in order
        factors = view[4:8].astype(np.float32)
        blur = gaussian_kernel(float(view[9]), min(height, width))
        _view(src[i], order, factors, bool(view[8]), blur, bool(view[10]), NORM_SCALE, NORM_BIAS, dst[i],
              x, tmp, row)
    if target is not out:
        out.copy_(target)
    return out

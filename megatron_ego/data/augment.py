"""DINO multi-crop views (Caron et al. 2021, main_dino.py DataAugmentationDINO): random draws
and geometry. The photometric ops that follow live in photometric.py.

First crop (paper Sec. 4.2: "we follow the practice in [47] (DoRA) to avoid cropping noisy
positive pairs"). DoRA (main.py DataAugmentationDINO, "an aggressive cropping before DINO crops")
and the authors' release (`init_crop_size=300`) first cut one random resized crop of 20-100% of
the frame's area, resized to 300 x 300, and cut every global and local view from it: all views
of a frame then show one region, not two corners of a wide frame that share no object.
`MultiCropSpec.init_size` (cfg.data.init_crop_size) sets its side; 0 cuts the views from the
whole frame (DINO's).

Every view gets, in DINO's order: random resized crop (bicubic, antialiased; aspect 3/4-4/3),
horizontal flip (p=0.5), colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in
a random order; p=0.8), grayscale (p=0.2), Gaussian blur (sigma 0.1-2.0; p=1.0 for global view 1,
0.1 for the other globals, 0.5 for locals), solarize (threshold 128; p=0.2 on the globals after
the first), ImageNet normalisation.

All random draws of a view are made first, from the caller's numpy Generator, into a
`ViewParams`; nothing reads global random state. The frame is decoded once (at a reduced JPEG
scale where every crop allows it, `min_decode_size`) and each view is cropped before it is
resized, on uint8.

    init = draw_init_crop(rng, (H, W), spec)              # frame box, None without a first crop
    views_g, views_l = draw_multicrop(rng, view_frame_size(spec, (H, W)), spec)
    need = min_decode_size([(init, spec.init_size)], (H, W))   # or the views', without one
    image = decode_rgb(frame, "jpeg", need)                              # uint8 [3, h, w]
    source = init_crop(image, init, spec.init_size, (H, W))             # uint8 [3, S0, S0]
    crops = crop_views(source, views_g, spec.global_size, view_frame_size(spec, (H, W)))
    rows = pack_views(views_g)                                           # float64 [G, VIEW_FIELDS]
    g = photometric(crops, rows)                                         # float32 [G, 3, S, S]

The loader's workers stop at the uint8 crops and hand `pack_views` rows to the main process,
which runs the photometric ops and the normalisation where the batch goes to the device
(on_device.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IDENTITY_VIEW",
    "VIEW_FIELDS",
    "MultiCropSpec",
    "ViewParams",
    "crop_views",
    "draw_init_crop",
    "draw_multicrop",
    "draw_view",
    "geometry_only",
    "init_crop",
    "min_decode_size",
    "pack_views",
    "view_frame_size",
]

_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range


@dataclass(frozen=True)
class MultiCropSpec:
    """Sizes, counts and area ranges of the DINO views of one frame."""

    global_size: int = 224
    """Side of a global view, in pixels (cfg.model.image_size)."""
    local_size: int = 112
    """Side of a local view, in pixels (cfg.model.local_crop_size)."""
    num_global: int = 2
    """Global views per frame (cfg.data.num_global_crops)."""
    num_local: int = 6
    """Local views per frame (cfg.data.num_local_crops)."""
    global_scale: tuple[float, float] = (0.4, 1.0)
    """Area range of a global view, as a fraction of the frame."""
    local_scale: tuple[float, float] = (0.05, 0.4)
    """Area range of a local view, as a fraction of the frame."""
    photometric: bool = True
    """DINO's colour jitter, grayscale, blur and solarize (cfg.data.photometric); False keeps
    only the geometry (crop, flip) and the normalisation."""
    init_size: int = 0
    """Side of the first crop every view is cut from (cfg.data.init_crop_size; the release's
    300); 0 = no first crop, views from the whole frame."""
    init_scale: tuple[float, float] = (0.2, 1.0)
    """Area range of the first crop, as a fraction of the frame (cfg.data.init_crop_scale;
    DoRA's 0.2-1)."""

    @classmethod
    def from_config(cls, cfg) -> MultiCropSpec:
        """From a `megatron_ego.config.Config`."""
        return cls(
            global_size=cfg.model.image_size,
            local_size=cfg.model.local_crop_size,
            num_global=cfg.data.num_global_crops,
            num_local=cfg.data.num_local_crops,
            global_scale=tuple(cfg.data.global_crop_scale),
            local_scale=tuple(cfg.data.local_crop_scale),
            photometric=cfg.data.photometric,
            init_size=cfg.data.init_crop_size,
            init_scale=tuple(cfg.data.init_crop_scale),
        )


@dataclass(frozen=True)
class ViewParams:
    """Every random draw of one view, in the stored frame's pixel coordinates."""

    box: tuple[int, int, int, int]
    """Crop (top, left, height, width) in pixels of the full-size stored frame."""
    flip: bool
    """Horizontal flip."""
    jitter_order: tuple[int, ...] | None
    """Order of the four colour-jitter ops (photometric.BRIGHTNESS .. HUE), None = no jitter."""
    jitter_factors: tuple[float, float, float, float]
    """Brightness, contrast, saturation factors (1 = identity) and hue shift (turns)."""
    gray: bool
    """Convert to grayscale (3 equal channels)."""
    blur_sigma: float
    """Gaussian blur standard deviation in output pixels; 0 = no blur."""
    solarize: bool
    """Invert pixels >= 128/255."""


VIEW_FIELDS = 11
"""Columns of a packed view (`pack_views`): 0-3 the colour-jitter op codes in the order applied
(-1 = none in that place), 4-7 the brightness, contrast, saturation factors and hue shift, 8 grayscale
(0/1), 9 the blur sigma (0 = none), 10 solarize (0/1). float64, so the values are the drawn ones."""
IDENTITY_VIEW = (-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0)
"""A packed view with no photometric op (normalisation only)."""


def pack_views(views: list[ViewParams]) -> np.ndarray:
    """The photometric draws of `views` as float64 [n, VIEW_FIELDS] rows (the box and the flip
    are spent by `crop_views`): what a loader worker hands the main process with the crops."""
    rows = np.array([IDENTITY_VIEW] * len(views), dtype=np.float64).reshape(-1, VIEW_FIELDS)
    for row, view in zip(rows, views):
        order = view.jitter_order or ()
        row[0:len(order)] = order
        row[4:8] = view.jitter_factors
        row[8:11] = float(view.gray), view.blur_sigma, float(view.solarize)
    return rows


def _random_resized_box(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params, drawn from `rng`: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(_RATIO[0]), math.log(_RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height  # fallback: the largest central crop within the ratio range
    if in_ratio < _RATIO[0]:
        w, h = width, int(round(width / _RATIO[0]))
    elif in_ratio > _RATIO[1]:
        h, w = height, int(round(height * _RATIO[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def draw_view(
    rng: np.random.Generator,
    frame_size: tuple[int, int],
    scale: tuple[float, float],
    blur_p: float,
    solarize_p: float,
) -> ViewParams:
    """Draw one DINO view's parameters; always consumes the same number of draws of each kind."""
    box = _random_resized_box(rng, frame_size[0], frame_size[1], scale)
    flip = bool(rng.random() < 0.5)
    jitter = bool(rng.random() < 0.8)
    order = tuple(int(i) for i in rng.permutation(4))
    factors = (
        float(rng.uniform(0.6, 1.4)),  # brightness 0.4
        float(rng.uniform(0.6, 1.4)),  # contrast 0.4
        float(rng.uniform(0.8, 1.2)),  # saturation 0.2
        float(rng.uniform(-0.1, 0.1)),  # hue 0.1
    )
    gray = bool(rng.random() < 0.2)
    blur = bool(rng.random() < blur_p)
    sigma = float(rng.uniform(0.1, 2.0))
    solarize = bool(rng.random() < solarize_p)
    return ViewParams(
        box=box,
        flip=flip,
        jitter_order=order if jitter else None,
        jitter_factors=factors,
        gray=gray,
        blur_sigma=sigma if blur else 0.0,
        solarize=solarize,
    )


def draw_init_crop(
    rng: np.random.Generator, frame_size: tuple[int, int], spec: MultiCropSpec
) -> tuple[int, int, int, int] | None:
    """The first crop's (top, left, h, w) box in frame pixels (RandomResizedCrop, aspect
    3/4-4/3, area `spec.init_scale`), drawn before the views; None (and no draw) without one."""
    if not spec.init_size:
        return None
    return _random_resized_box(rng, frame_size[0], frame_size[1], spec.init_scale)


def view_frame_size(spec: MultiCropSpec, frame_size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the image the views are cut from: the first crop's square, else the frame."""
    return (spec.init_size, spec.init_size) if spec.init_size else frame_size


def init_crop(
    image: torch.Tensor,
    box: tuple[int, int, int, int] | None,
    size: int,
    frame_size: tuple[int, int],
) -> torch.Tensor:
    """The first crop: `box` of the frame resized to size x size (bicubic, antialiased, on
    uint8), or `image` itself when `box` is None.

    Args:
        image: uint8 [3, h, w], the frame decoded at full size or at a reduced JPEG scale.
        box: (top, left, h, w) in full-size frame pixels (`draw_init_crop`), or None.
        size: the first crop's side (`spec.init_size`).
        frame_size: (H, W) of the full-size stored frame.

    Returns:
        uint8 [3, size, size]; `image` unchanged when `box` is None.
    """
    if box is None:
        return image
    plain = ViewParams(box=box, flip=False, jitter_order=None, jitter_factors=(1.0, 1.0, 1.0, 0.0),
                       gray=False, blur_sigma=0.0, solarize=False)
    return crop_views(image, [plain], size, frame_size)[0]  # [3, size, size]


def draw_multicrop(
    rng: np.random.Generator, frame_size: tuple[int, int], spec: MultiCropSpec
) -> tuple[list[ViewParams], list[ViewParams]]:
    """The global and local views of one frame (DINO: global 1 always blurred; the other globals
    blurred with p=0.1 and solarized with p=0.2; locals blurred with p=0.5), without the
    photometric ops when `spec.photometric` is False. `frame_size` is the image the views are
    cut from: `view_frame_size` (the first crop's square when there is one)."""
    views_g = [
        draw_view(rng, frame_size, spec.global_scale, 1.0 if i == 0 else 0.1, 0.0 if i == 0 else 0.2)
        for i in range(spec.num_global)
    ]
    views_l = [draw_view(rng, frame_size, spec.local_scale, 0.5, 0.0) for _ in range(spec.num_local)]
    if not spec.photometric:  # the same draws are made, so the crops do not depend on the switch
        views_g, views_l = ([geometry_only(v) for v in views] for views in (views_g, views_l))
    return views_g, views_l


def geometry_only(view: ViewParams) -> ViewParams:
    """`view` without its photometric ops: no jitter, grayscale, blur or solarize."""
    return dataclasses.replace(view, jitter_order=None, gray=False, blur_sigma=0.0,
                               solarize=False)


def min_decode_size(
    views: list[tuple[ViewParams | tuple[int, int, int, int], int]], frame_size: tuple[int, int]
) -> tuple[int, int]:
    """Smallest decoded (h, w) at which every (view or (top, left, h, w) box, output side) pair
    is still cropped from at least as many pixels as it outputs (so a reduced-scale decode loses
    nothing it would keep)."""
    height, width = frame_size
    boxes = [(v.box if isinstance(v, ViewParams) else v, size) for v, size in views]
    need_h = max((size / box[2] for box, size in boxes), default=0.0)
    need_w = max((size / box[3] for box, size in boxes), default=0.0)
    return min(height, math.ceil(height * need_h)), min(width, math.ceil(width * need_w))


def crop_views(
    image: torch.Tensor,
    views: list[ViewParams],
    size: int,
    frame_size: tuple[int, int],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop, resize (bicubic, antialiased, on uint8) and flip each view.

    Args:
        image: uint8 [3, h, w], the frame decoded at full size or at a reduced JPEG scale.
        views: the views to cut; boxes are in full-size pixels (`frame_size`) and rescaled.
        size: output side in pixels.
        frame_size: (H, W) of the full-size stored frame.
        out: uint8 [n, 3, size, size] to write into; None = a new tensor.

    Returns:
        uint8 [n, 3, size, size].
    """
    if out is None:
        out = torch.empty(len(views), 3, size, size, dtype=torch.uint8)  # [n, 3, S, S]
    sy, sx = image.shape[1] / frame_size[0], image.shape[2] / frame_size[1]
    for i, view in enumerate(views):
        top, left, h, w = view.box
        y0, x0 = int(round(top * sy)), int(round(left * sx))
        y1, x1 = max(y0 + 1, int(round((top + h) * sy))), max(x0 + 1, int(round((left + w) * sx)))
        crop = image[None, :, y0:y1, x0:x1]  # [1, 3, h', w'] view, no copy
        resized = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True)
        out[i] = resized[0].flip(-1) if view.flip else resized[0]
    return out

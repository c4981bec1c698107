"""Multi-crop views: random draws, geometry, decoding, and the photometric ops vs torchvision (the
numba kernels of the CPU path and the torch ops of the GPU path, each)."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from megatron_ego.data import IMAGENET_MEAN, IMAGENET_STD, load_frame
from megatron_ego.data.augment import (
    IDENTITY_VIEW,
    MultiCropSpec,
    ViewParams,
    crop_views,
    draw_init_crop,
    draw_multicrop,
    draw_view,
    init_crop,
    min_decode_size,
    pack_views,
    view_frame_size,
)
from megatron_ego.data.decode import decode_rgb
from megatron_ego.data.photometric import gaussian_kernel, photometric
from megatron_ego.data.photometric_torch import photometric_torch


def _torch_ops(crops: torch.Tensor, views: list[ViewParams]) -> torch.Tensor:
    return photometric_torch(crops, pack_views(views))


IMPLEMENTATIONS = pytest.mark.parametrize("ops", [photometric, _torch_ops], ids=["numba", "torch"])

SPEC = MultiCropSpec(global_size=32, local_size=16, num_global=2, num_local=4)
PLAIN = ViewParams(box=(0, 0, 8, 8), flip=False, jitter_order=None,
                   jitter_factors=(1.0, 1.0, 1.0, 0.0), gray=False, blur_sigma=0.0, solarize=False)


def _jpeg(array: np.ndarray, quality: int = 95) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def _smooth_image(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([np.sin(3 * xx), np.cos(2 * yy), xx * yy], axis=-1) * 0.5 + 0.5
    return (image * 255).astype(np.uint8)  # [H, W, 3]


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


def test_draws_are_reproducible_from_the_generator_and_differ_between_seeds():
    def draws(seed):
        return draw_multicrop(np.random.default_rng(seed), (60, 80), SPEC)

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)
    views_g, views_l = draws(5)
    assert len(views_g) == SPEC.num_global and len(views_l) == SPEC.num_local


def test_photometric_off_keeps_the_same_crops_and_drops_every_colour_op():
    plain = dataclasses.replace(SPEC, photometric=False)
    for seed in range(20):
        with_ops = draw_multicrop(np.random.default_rng(seed), (60, 80), SPEC)
        without = draw_multicrop(np.random.default_rng(seed), (60, 80), plain)
        for a, b in zip(with_ops[0] + with_ops[1], without[0] + without[1]):
            assert (a.box, a.flip) == (b.box, b.flip)  # same geometry, draw for draw
            assert b.jitter_order is None and not b.gray and not b.solarize
            assert b.blur_sigma == 0.0
    image = torch.from_numpy(_smooth_image(8, 8)).permute(2, 0, 1)[None]  # uint8 [1, 3, 8, 8]
    from megatron_ego.config import load_config

    cfg = load_config("configs/egoagent_300m.yaml", ["--data.photometric=false"])
    assert MultiCropSpec.from_config(cfg).photometric is False
    assert MultiCropSpec.from_config(load_config("configs/egoagent_300m.yaml")).photometric
    # geometry only: the output is the crop, normalised, and nothing else
    torch.testing.assert_close(photometric(image, [PLAIN])[0], _normalize(image[0] / 255.0))


def test_crop_boxes_follow_random_resized_crop():
    rng = np.random.default_rng(0)
    height, width = 90, 120
    for _ in range(300):
        top, left, h, w = draw_view(rng, (height, width), (0.05, 0.4), 0.5, 0.0).box
        assert top >= 0 and left >= 0 and top + h <= height and left + w <= width
        # area within the scale range and aspect within 3/4..4/3, up to rounding to pixels
        assert 0.05 * 0.9 <= h * w / (height * width) <= 0.4 * 1.1
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_dino_probabilities_per_view_kind():
    rng = np.random.default_rng(1)
    n = 3000
    draws = [draw_multicrop(rng, (64, 64), SPEC) for _ in range(n)]
    first = [d[0][0] for d in draws]
    second = [d[0][1] for d in draws]
    local = [v for d in draws for v in d[1]]

    def rate(views, pick):
        return np.mean([pick(v) for v in views])

    def close(value, p, count):
        return abs(value - p) <= 5 * math.sqrt(p * (1 - p) / count) + 1e-9

    assert rate(first, lambda v: v.blur_sigma > 0) == 1.0
    assert rate(first, lambda v: v.solarize) == 0.0
    assert close(rate(second, lambda v: v.blur_sigma > 0), 0.1, n)
    assert close(rate(second, lambda v: v.solarize), 0.2, n)
    assert close(rate(local, lambda v: v.blur_sigma > 0), 0.5, len(local))
    assert rate(local, lambda v: v.solarize) == 0.0
    every = first + second + local
    assert close(rate(every, lambda v: v.flip), 0.5, len(every))
    assert close(rate(every, lambda v: v.jitter_order is not None), 0.8, len(every))
    assert close(rate(every, lambda v: v.gray), 0.2, len(every))
    sigmas = np.array([v.blur_sigma for v in every if v.blur_sigma > 0])
    assert sigmas.min() >= 0.1 and sigmas.max() <= 2.0
    factors = np.array([v.jitter_factors for v in every])  # [n, 4]
    for column, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        assert lo <= factors[:, column].min() and factors[:, column].max() <= hi


def test_packed_views_keep_every_draw():
    view = ViewParams(box=(1, 2, 3, 4), flip=True, jitter_order=(2, 0, 3, 1),
                      jitter_factors=(0.7, 1.3, 0.9, -0.05), gray=True, blur_sigma=1.234567891,
                      solarize=True)
    np.testing.assert_array_equal(pack_views([view, PLAIN]), [
        [2, 0, 3, 1, 0.7, 1.3, 0.9, -0.05, 1, 1.234567891, 1],  # float64: sigma exactly
        IDENTITY_VIEW,
    ])
    assert pack_views([]).shape == (0, len(IDENTITY_VIEW))


@IMPLEMENTATIONS
def test_colour_jitter_matches_torchvision_in_every_order(ops):
    rng = np.random.default_rng(2)
    crops = torch.from_numpy(rng.integers(0, 256, (24, 3, 20, 20), dtype=np.uint8))
    crops[0] = 128  # a gray view: hue and saturation must leave it alone
    adjust = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    views = []
    for i in range(len(crops)):
        order = tuple(int(o) for o in rng.permutation(4)) if i % 6 else None
        factors = (rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.8, 1.2),
                   rng.uniform(-0.1, 0.1))
        views.append(dataclasses.replace(PLAIN, jitter_order=order, jitter_factors=factors))
    got = ops(crops, views)  # [24, 3, 20, 20]
    for crop, view, out in zip(crops, views, got):
        want = crop.float() / 255
        for op in view.jitter_order or ():
            want = adjust[op](want, view.jitter_factors[op])
        torch.testing.assert_close(out, _normalize(want), atol=2e-5, rtol=0)


@IMPLEMENTATIONS
def test_grayscale_blur_and_solarize_match_their_definitions(ops):
    rng = np.random.default_rng(3)
    crops = torch.from_numpy(rng.integers(0, 256, (3, 3, 24, 24), dtype=np.uint8))
    x = crops.float() / 255
    gray = dataclasses.replace(PLAIN, gray=True)
    torch.testing.assert_close(ops(crops[:1], [gray])[0],
                               _normalize(TF.rgb_to_grayscale(x[0], 3)), atol=2e-5, rtol=0)
    solar = dataclasses.replace(PLAIN, solarize=True)
    want = torch.where(x[1] >= 128 / 255, 1 - x[1], x[1])  # PIL solarize threshold 128
    torch.testing.assert_close(ops(crops[1:2], [solar])[0], _normalize(want),
                               atol=2e-5, rtol=0)
    blur = dataclasses.replace(PLAIN, blur_sigma=1.3)
    kernel = torch.from_numpy(gaussian_kernel(1.3, 24))
    radius = (len(kernel) - 1) // 2
    padded = F.pad(x[2:3], (radius, radius, radius, radius), mode="reflect")
    weight = (kernel[:, None] * kernel[None, :]).expand(3, 1, -1, -1)
    want = F.conv2d(padded, weight, groups=3)[0]
    torch.testing.assert_close(ops(crops[2:3], [blur])[0], _normalize(want),
                               atol=2e-5, rtol=0)


def test_gaussian_kernel_is_normalised_and_truncated_at_three_sigma():
    kernel = gaussian_kernel(2.0, 224)
    assert kernel.shape == (13,) and abs(kernel.sum() - 1) < 1e-6
    assert np.argmax(kernel) == 6 and np.allclose(kernel, kernel[::-1])
    assert gaussian_kernel(2.0, 5).shape == (9,)  # radius capped at size - 1 for reflection
    assert gaussian_kernel(0.0, 224).tolist() == [1.0]


def test_crop_views_crop_resize_and_flip():
    image = torch.from_numpy(_smooth_image(40, 60)).permute(2, 0, 1)  # [3, 40, 60]
    view = dataclasses.replace(PLAIN, box=(4, 10, 20, 30))
    crops = crop_views(image, [view, dataclasses.replace(view, flip=True)], 16, (40, 60))
    assert crops.shape == (2, 3, 16, 16) and crops.dtype == torch.uint8
    torch.testing.assert_close(crops[1], crops[0].flip(-1))
    want = F.interpolate(image[None, :, 4:24, 10:40].float(), size=(16, 16), mode="bicubic",
                         antialias=True)[0]
    assert (crops[0].float() - want).abs().max() <= 1.0  # uint8 rounding
    # boxes are in full-size pixels: a half-size decode of the same frame gives the same view
    half = F.interpolate(image[None].float(), size=(20, 30), mode="bilinear", antialias=True)
    small = crop_views(half[0].round().to(torch.uint8), [view], 8, (40, 60))
    ref = crop_views(image, [view], 8, (40, 60))
    assert (small.float() - ref.float()).abs().mean() < 3.0


def test_min_decode_size_and_reduced_scale_decoding():
    frame = _jpeg(_smooth_image(256, 256))
    big = dataclasses.replace(PLAIN, box=(0, 0, 256, 256))  # whole frame into 32 px
    assert min_decode_size([(big, 32)], (256, 256)) == (32, 32)
    small = dataclasses.replace(PLAIN, box=(0, 0, 40, 40))  # 40 px into 32: needs 205 px
    assert min_decode_size([(big, 32), (small, 32)], (256, 256)) == (205, 205)
    assert decode_rgb(frame, "jpeg", (32, 32)).shape == (3, 32, 32)  # 1/8 DCT scale
    assert decode_rgb(frame, "jpeg", (100, 100)).shape == (3, 128, 128)
    assert decode_rgb(frame, "jpeg", (205, 205)).shape == (3, 256, 256)
    assert decode_rgb(frame, "jpeg").shape == (3, 256, 256)
    with pytest.raises(ValueError, match="unknown frame encoding"):
        decode_rgb(frame, "png")


def test_load_frame_resizes_the_whole_frame_and_normalises():
    color = np.array([200, 40, 90], dtype=np.uint8)
    raw = np.broadcast_to(color, (48, 64, 3)).copy()
    x = load_frame(raw, "raw", 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    want = (torch.tensor(color / 255.0) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x, want.float().view(3, 1, 1).expand(3, 32, 32), atol=1e-5, rtol=0)
    image = _smooth_image(48, 64)
    from_jpeg = load_frame(_jpeg(image), "jpeg", 32)
    from_raw = load_frame(image, "raw", 32)
    assert (from_jpeg - from_raw).abs().mean() < 0.05  # JPEG loss only; no crop, no flip


def _in_frame(init, box, side):
    """A view's box, drawn in the first crop's side x side square, in frame pixels."""
    top, left, h, w = init
    return (top + box[0] * h / side, left + box[1] * w / side, box[2] * h / side, box[3] * w / side)


def _overlap(a, b) -> float:
    dy = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dx = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(dy, 0.0) * max(dx, 0.0)


def test_first_crop_holds_every_view_and_avoids_disjoint_pairs_on_wide_frames():
    """DoRA's first crop (issue 22 item 3): a 20-100% box of the frame, resized to 300 px, that
    every view is cut from. On a 16:9 WalkingTours frame, a global and a local view that share
    no pixel (a noisy positive pair) become rare; without the spec's first crop nothing is
    drawn for it, so the DINO streams stay as they were."""
    frame = (2160, 3840)
    first = dataclasses.replace(SPEC, global_size=224, local_size=112, num_local=6, init_size=300)
    plain = dataclasses.replace(first, init_size=0)
    assert view_frame_size(first, frame) == (300, 300) and view_frame_size(plain, frame) == frame
    rng = np.random.default_rng(3)
    assert draw_init_crop(rng, frame, plain) is None
    assert rng.bit_generator.state == np.random.default_rng(3).bit_generator.state
    disjoint = {0: [], 300: []}
    for seed in range(400):
        rng = np.random.default_rng(seed)
        init = draw_init_crop(rng, frame, first)
        top, left, h, w = init
        assert top >= 0 and top + h <= frame[0] and left >= 0 and left + w <= frame[1]
        assert 0.2 * 0.95 <= h * w / (frame[0] * frame[1]) <= 1.0
        views_g, views_l = draw_multicrop(rng, view_frame_size(first, frame), first)
        boxes = [_in_frame(init, v.box, 300) for v in views_g + views_l]
        for b in boxes:  # inside the first crop, to rounding
            assert top - 1e-6 <= b[0] and b[0] + b[2] <= top + h + 1e-6
            assert left - 1e-6 <= b[1] and b[1] + b[3] <= left + w + 1e-6
        disjoint[300] += [_overlap(g, loc) == 0 for g in boxes[:2] for loc in boxes[2:]]
        views_g, views_l = draw_multicrop(np.random.default_rng(seed), frame, plain)
        disjoint[0] += [_overlap(g.box, loc.box) == 0 for g in views_g for loc in views_l]
    # measured with 4,000 frames (bench/first_crop.py): 5.7% without, 0.3% with
    assert np.mean(disjoint[300]) < 0.02 < np.mean(disjoint[0])


def test_first_crop_is_the_box_resized_and_sets_the_decode_size():
    image = torch.from_numpy(_smooth_image(120, 200)).permute(2, 0, 1).contiguous()  # [3, H, W]
    box = (10, 30, 90, 100)
    out = init_crop(image, box, 48, (120, 200))
    assert out.shape == (3, 48, 48) and out.dtype == torch.uint8
    want = F.interpolate(image[None, :, 10:100, 30:130].float(), size=(48, 48), mode="bicubic",
                         antialias=True)[0]
    assert (out.float() - want).abs().max() <= 1.0  # uint8 rounding
    assert init_crop(image, None, 48, (120, 200)) is image
    # the decode must give the box at least 48 px each way: 90 -> 48 allows half scale
    assert min_decode_size([(box, 48)], (120, 200)) == (64, 96)


def test_the_paper_configs_cut_a_300_px_first_crop_and_the_demo_none():
    from megatron_ego.config import load_config

    for path in ("configs/egoagent_300m.yaml", "configs/stage1_1b.yaml",
                 "configs/ablations/baseline.yaml"):
        spec = MultiCropSpec.from_config(load_config(path))
        assert (spec.init_size, spec.init_scale) == (300, (0.2, 1.0)), path
    assert MultiCropSpec.from_config(load_config("configs/tiny_cpu.yaml")).init_size == 0

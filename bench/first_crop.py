"""What the first crop (data.init_crop_size, DoRA's and the release's 300 px) does, and what the
stored frame size costs it: geometry counted over seeded draws, pixels on a real image.

    PYTHONPATH=$PWD python bench/first_crop.py              # 4,000 frames, 100,000 first crops

Geometry, per frame size (H x W): the share of first crops cut from fewer than 300 source pixels
along a side (so resized up), the largest and mean such factor; and, with and without the first
crop, the share of (global, local) view pairs that share no pixel (a positive pair that may show
two unrelated things) and the mean share of a local view inside global view 1.

Pixels: scikit-image's retina photograph (1411 x 1411, the one bundled natural image the size of
Ego-Exo4D's 1408 px Aria frames), centre-cut to 1408 and downscaled (bicubic, antialiased) to each
--stored size. The same draws cut the first crop and the views from the 1408 px frame and from
each downscale; the table gives the mean absolute difference (0-255 levels) and the PSNR of the
stored size's crops against the 1408 px ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from megatron_ego.cli_help import make_parser
from megatron_ego.data.augment import (
    MultiCropSpec,
    crop_views,
    draw_init_crop,
    draw_multicrop,
    init_crop,
    view_frame_size,
)

SIZES = ((2160, 3840), (600, 1067), (448, 796), (1408, 1408), (672, 672), (448, 448))
SPEC = MultiCropSpec(global_size=224, local_size=112, num_global=2, num_local=6, init_size=300)


def _in_frame(init, box, side: int):
    if init is None:
        return box
    top, left, h, w = init
    return (top + box[0] * h / side, left + box[1] * w / side, box[2] * h / side, box[3] * w / side)


def _overlap(a, b) -> float:
    dy = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dx = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(dy, 0.0) * max(dx, 0.0)


def geometry(size: tuple[int, int], frames: int, crops: int) -> dict[str, float]:
    out = {}
    rng = np.random.default_rng(0)
    factors = np.array([max(SPEC.init_size / box[2], SPEC.init_size / box[3])
                        for box in (draw_init_crop(rng, size, SPEC) for _ in range(crops))])
    up = factors > 1.0
    out["upsampled_pct"] = 100.0 * up.mean()
    out["max_factor"] = float(factors.max())
    out["mean_factor_upsampled"] = float(factors[up].mean()) if up.any() else 1.0
    for init_size in (0, SPEC.init_size):
        spec = dataclasses.replace(SPEC, init_size=init_size)
        rng = np.random.default_rng(1)
        disjoint, inside = [], []
        for _ in range(frames):
            init = draw_init_crop(rng, size, spec)
            views_g, views_l = draw_multicrop(rng, view_frame_size(spec, size), spec)
            g = [_in_frame(init, v.box, init_size) for v in views_g]
            loc = [_in_frame(init, v.box, init_size) for v in views_l]
            disjoint += [_overlap(a, b) == 0 for a in g for b in loc]
            inside += [_overlap(g[0], b) / (b[2] * b[3]) for b in loc]
        out[f"disjoint_pct_init{init_size}"] = 100.0 * np.mean(disjoint)
        out[f"local_inside_global1_init{init_size}"] = float(np.mean(inside))
    return out


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return 10.0 * np.log10(255.0**2 / mse) if mse else float("inf")


def pixels(stored: list[int], frames: int) -> dict[int, dict[str, float]]:
    import skimage.data

    full = torch.from_numpy(skimage.data.retina()[1:1409, 1:1409].copy()).permute(2, 0, 1)
    side = full.shape[1]  # 1408
    out = {}
    for size in stored:
        small = F.interpolate(full[None].float(), size=(size, size), mode="bicubic",
                              antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
        kinds = ("first", "global", "local", "global_plain", "local_plain")
        diffs: dict[str, list[float]] = {k: [] for k in kinds}
        psnrs: dict[str, list[float]] = {k: [] for k in kinds}
        plain = dataclasses.replace(SPEC, init_size=0)
        rng = np.random.default_rng(2)
        for _ in range(frames):
            init = draw_init_crop(rng, (side, side), SPEC)
            views_g, views_l = draw_multicrop(rng, (300, 300), SPEC)
            # the stored frame's boxes are the same boxes in its own pixels (crop_views rescales)
            ref = init_crop(full, init, 300, (side, side))  # [3, 300, 300]
            got = init_crop(small, init, 300, (side, side))
            pairs = {"first": (ref[None], got[None]),
                     "global": (crop_views(ref, views_g, 224, (300, 300)),
                                crop_views(got, views_g, 224, (300, 300))),
                     "local": (crop_views(ref, views_l, 112, (300, 300)),
                               crop_views(got, views_l, 112, (300, 300)))}
            views_g, views_l = draw_multicrop(rng, (side, side), plain)  # straight from the frame
            pairs["global_plain"] = (crop_views(full, views_g, 224, (side, side)),
                                     crop_views(small, views_g, 224, (side, side)))
            pairs["local_plain"] = (crop_views(full, views_l, 112, (side, side)),
                                    crop_views(small, views_l, 112, (side, side)))
            for kind, (a, b) in pairs.items():
                diffs[kind].append((a.float() - b.float()).abs().mean().item())
                psnrs[kind].append(_psnr(a, b))
        out[size] = {f"{k}_mad": float(np.mean(v)) for k, v in diffs.items()}
        out[size].update({f"{k}_psnr": float(np.mean(v)) for k, v in psnrs.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--frames", type=int, default=4000, help="frames for the view geometry")
    parser.add_argument("--crops", type=int, default=100_000, help="first crops per frame size")
    parser.add_argument("--pixel-frames", type=int, default=200, help="draws on the photograph")
    parser.add_argument("--stored", default="448,672", help="stored sides to compare with 1408")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| frame (H x W) | first crops resized up | largest factor | mean factor of those | "
          "disjoint global-local pairs, no first crop | with it | local inside global 1, no "
          "first crop | with it |")
    print("|---|---|---|---|---|---|---|---|")
    for size in SIZES:
        g = geometry(size, args.frames, args.crops)
        print(f"| {size[0]} x {size[1]} | {g['upsampled_pct']:.1f}% | {g['max_factor']:.2f} | "
              f"{g['mean_factor_upsampled']:.2f} | {g['disjoint_pct_init0']:.1f}% | "
              f"{g['disjoint_pct_init300']:.1f}% | {g['local_inside_global1_init0']:.3f} | "
              f"{g['local_inside_global1_init300']:.3f} |", flush=True)
    print("\n| stored side (from 1408 px) | first crop 300 px: MAD / PSNR | global 224 px | "
          "local 112 px | without the first crop: global | local |")
    print("|---|---|---|---|---|---|")
    for size, p in pixels([int(s) for s in args.stored.split(",")], args.pixel_frames).items():
        print(f"| {size} | {p['first_mad']:.2f} / {p['first_psnr']:.1f} dB | "
              f"{p['global_mad']:.2f} / {p['global_psnr']:.1f} dB | "
              f"{p['local_mad']:.2f} / {p['local_psnr']:.1f} dB | "
              f"{p['global_plain_mad']:.2f} / {p['global_plain_psnr']:.1f} dB | "
              f"{p['local_plain_mad']:.2f} / {p['local_plain_psnr']:.1f} dB |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Evaluation figures: non-empty PNGs of the expected pixel size, markers where asked."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from megatron_ego.eval.figures import (
    plot_retrieval_examples,
    plot_skeleton_sequence,
    plot_top1_by_bin,
)

GREEN = np.array([44, 160, 44])  # matplotlib "tab:green", the true-target frame


def _skeletons(frames: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    true = rng.normal(size=(frames, 17, 3)) * 0.2 + np.array([0.0, 0.8, 0.5])  # below the camera
    pred = true + rng.normal(size=true.shape) * 0.02
    visible = np.ones((frames, 17), dtype=bool)
    return pred, true, visible


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_skeleton_sequence_png_size_and_content(tmp_path):
    pred, true, visible = _skeletons()
    visible[3, 5] = False
    true[3, 5] = np.nan  # an invisible joint may hold anything
    path = plot_skeleton_sequence(
        pred, true, visible, tmp_path / "deep" / "act.png", num_panels=3, panel_inches=2.0, dpi=50
    )
    pixels = _pixels(path)
    assert pixels.shape == (2 * 2 * 50, 3 * 2 * 50, 3)  # two rows (x-y, z-y), three frames
    assert pixels.std() > 10  # something is drawn, not a blank canvas


def test_skeleton_sequence_rejects_mismatched_shapes(tmp_path):
    pred, true, visible = _skeletons()
    with pytest.raises(ValueError, match="visible"):
        plot_skeleton_sequence(pred, true, visible[:, :16], tmp_path / "x.png")


def test_retrieval_examples_png_size_and_true_marker(tmp_path):
    rng = np.random.default_rng(1)
    query = rng.integers(0, 50, size=(32, 32, 3), dtype=np.uint8)  # dark: no green by chance
    retrieved = rng.integers(0, 50, size=(5, 32, 32, 3), dtype=np.uint8)
    marked = plot_retrieval_examples(query, retrieved, 2, tmp_path / "hit.png", 1.5, dpi=40)
    pixels = _pixels(marked)
    assert pixels.shape == (60, 6 * 60, 3)  # query + 5 retrieved panels of 1.5 in at 40 dpi
    is_green = (np.abs(pixels.astype(int) - GREEN).sum(axis=-1) < 30)  # [H, W]
    green_columns = np.nonzero(is_green.any(axis=0))[0]
    assert green_columns.size > 0
    assert green_columns.min() >= 3 * 60 and green_columns.max() < 4 * 60  # panel of rank 3
    missed = plot_retrieval_examples(query, retrieved, None, tmp_path / "miss.png", 1.5, dpi=40)
    missed_pixels = _pixels(missed)
    assert not (np.abs(missed_pixels.astype(int) - GREEN).sum(axis=-1) < 30).any()
    with pytest.raises(ValueError, match="true_idx_marker"):
        plot_retrieval_examples(query, retrieved, 5, tmp_path / "bad.png")


def test_skeleton_sequence_title_and_figure_legend_are_drawn(tmp_path):
    pred, true, visible = _skeletons()
    plain = _pixels(plot_skeleton_sequence(pred, true, visible, tmp_path / "a.png", dpi=50))
    titled = _pixels(plot_skeleton_sequence(pred, true, visible, tmp_path / "b.png", dpi=50,
                                            title="val clip 7: MPJPE 3.5 cm vs 8.0 cm"))
    assert titled.shape == plain.shape
    top, bottom = titled[: titled.shape[0] // 20], titled[-titled.shape[0] // 25:]
    assert (top < 128).any()  # the title's text
    assert (bottom < 200).any() and (plain[-plain.shape[0] // 25:] < 200).any()  # the legend


def test_retrieval_with_target_and_baseline_rows(tmp_path):
    rng = np.random.default_rng(1)
    query = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    top = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    path = plot_retrieval_examples(query, top, 2, tmp_path / "r.png", panel_inches=1.0, dpi=50,
                                   target_img=top[2], target_rank=3, baseline=(top[::-1], None, 9))
    pixels = _pixels(path)
    assert pixels.shape == (2 * 50, 7 * 50, 3)  # two rows: query, 5 ranks, the true I_t+1
    green = (np.abs(pixels.astype(int) - GREEN).sum(axis=-1) < 60).sum()
    assert green > 0


def test_top1_by_rotation_bars_for_both_methods(tmp_path):
    bins = [("lt2", "< 2 deg"), ("2to10", "2-10 deg"), ("ge10", ">= 10 deg")]
    methods = {"egoagent": {"top1_rot_lt2": 20.0, "top1_rot_2to10": 12.0, "top1_rot_ge10": 11.7,
                            "num_queries_rot_ge10": 250},
               "representation_only": {"top1_rot_lt2": 40.0, "top1_rot_2to10": None,
                                       "top1_rot_ge10": 8.0}}
    pixels = _pixels(plot_top1_by_bin(methods, "rot", bins, tmp_path / "bins.png", dpi=50))
    assert pixels.shape == (200, 320, 3)  # 6.4 x 4 in at 50 dpi
    for colour in ([31, 119, 180], [255, 127, 14]):  # C0 and C1: one colour per method
        assert (np.abs(pixels.astype(int) - colour).sum(axis=-1) < 30).sum() > 50
    with pytest.raises(ValueError, match="at least one method"):
        plot_top1_by_bin({}, "rot", bins, tmp_path / "none.png")

"""Evaluation metrics and baselines against hand-computed values (k-NN, retrieval, motion)."""

from __future__ import annotations

import datetime
import json
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_ego.eval.baselines import constant_velocity, zero_velocity
from megatron_ego.eval.knn import knn_accuracy, knn_classify, list_image_folder
from megatron_ego.eval.motion import motion_metrics
from megatron_ego.eval.report import read_results, results_markdown, write_results
from megatron_ego.eval.retrieval import (
    ROTATION_BINS,
    TRANSLATION_BINS,
    average_precision,
    bin_label,
    direction_hits,
    direction_metrics,
    motion_breakdown,
    retrieval_metrics,
    retrieve_topk,
    step_motion,
)
from megatron_ego.eval.run_retrieval import _previous_rows

# ----------------------------------------------------------------------------------- k-NN


def _clusters(seed: int, per_class: int, num_classes: int = 4, dim: int = 16, noise: float = 0.3):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:num_classes] * 5.0  # [C, d], orthogonal
    labels = torch.arange(num_classes).repeat_interleave(per_class)  # [n]
    feats = centres[labels] + noise * torch.randn(len(labels), dim, generator=generator)  # [n, d]
    return feats, labels


def test_knn_separable_toy_set_is_perfect():
    train, train_labels = _clusters(0, per_class=30)
    test, test_labels = _clusters(1, per_class=10)
    acc = knn_accuracy(train, train_labels, test, test_labels, num_classes=4, k=20)
    assert acc == {"top1": 100.0, "top5": 100.0}


def test_knn_hand_worked_votes():
    # cos(query, train) = 1 (class 0), 0 (class 1), 1/sqrt(2) (class 1)
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.0]])  # norm 2: cosine must not care
    s = 1 / math.sqrt(2)
    two = knn_classify(train, labels, query, num_classes=2, k=2, temperature=1.0)
    assert torch.allclose(two, torch.tensor([[math.e, math.exp(s)]]))  # neighbours 0 and 2
    three = knn_classify(train, labels, query, num_classes=2, k=3, temperature=1.0)
    assert torch.allclose(three, torch.tensor([[math.e, 1.0 + math.exp(s)]]))
    assert three.argmax().item() == 1  # two weaker class-1 votes outweigh one strong class-0 vote
    sharp = knn_classify(train, labels, query, num_classes=2, k=3, temperature=0.1)
    assert torch.allclose(sharp, torch.tensor([[math.exp(10), 1.0 + math.exp(10 * s)]]))
    assert sharp.argmax().item() == 0  # a low temperature lets the nearest neighbour win


def test_knn_top5_counts_second_choice_and_chunking_is_invariant():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    test = torch.tensor([[1.0, 0.05]])
    acc = knn_accuracy(train, labels, test, torch.tensor([1]), num_classes=2, k=3)
    assert acc == {"top1": 0.0, "top5": 100.0}
    train, train_labels = _clusters(2, per_class=8)
    test, _ = _clusters(3, per_class=5)
    whole = knn_classify(train, train_labels, test, num_classes=4, k=5, chunk=1024)
    pieces = knn_classify(train, train_labels, test, num_classes=4, k=5, chunk=3)
    assert torch.allclose(whole, pieces, rtol=1e-5)  # float sums may round differently


def test_knn_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="width"):
        knn_classify(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, 5), num_classes=2)
    with pytest.raises(ValueError, match="labels must lie"):
        knn_classify(torch.ones(3, 4), torch.tensor([0, 1, 2]), torch.ones(2, 4), num_classes=2)


def _noisy_split():
    """Overlapping clusters (noise 4 vs centre 5 in 16-D) so the accuracy is not trivially 100."""
    train, train_labels = _clusters(4, per_class=9, noise=4.0)
    test, test_labels = _clusters(5, per_class=4, noise=4.0)
    return train, train_labels, test, test_labels


def _knn_rank(rank: int, world: int, port: int, result_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    try:
        train, train_labels, test, test_labels = _noisy_split()
        train_part = slice(0, 7) if rank == 0 else slice(7, None)  # uneven shards on purpose
        test_part = slice(0, 5) if rank == 0 else slice(5, None)
        acc = knn_accuracy(
            train[train_part], train_labels[train_part], test[test_part], test_labels[test_part],
            num_classes=4, k=3,
        )
        with open(f"{result_file}.{rank}", "w") as stream:
            json.dump(acc, stream)
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
def test_knn_distributed_gathers_uneven_shards(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = str(tmp_path / "acc.json")
    # Both ranks in spawned children: this pytest process may already hold a default process
    # group (megatron's one-process world from the model tests), and fork is not an option (a
    # forked child of a process that ran OpenMP matmuls can hang).
    ctx = mp.get_context("spawn")
    children = [ctx.Process(target=_knn_rank, args=(r, 2, port, out)) for r in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=180)
        if child.is_alive():
            child.kill()
    assert [c.exitcode for c in children] == [0, 0]
    expected = knn_accuracy(*_noisy_split(), num_classes=4, k=3)
    assert 0 < expected["top1"] < 100
    for rank in range(2):  # every rank returns the global value
        assert json.loads((tmp_path / f"acc.json.{rank}").read_text()) == pytest.approx(expected)


def test_list_image_folder(tmp_path):
    for name in ("b/x.JPG", "b/sub/y.png", "a/z.jpeg", "a/notes.txt"):
        path = tmp_path / "split" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    paths, labels, classes = list_image_folder(tmp_path / "split")
    assert classes == ["a", "b"]
    assert [os.path.relpath(p, tmp_path / "split") for p in paths] == [
        "a/z.jpeg", "b/x.JPG", "b/sub/y.png"]
    assert labels == [0, 1, 1]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        list_image_folder(tmp_path / "flat")
    (tmp_path / "split" / "c_empty").mkdir()
    with pytest.raises(FileNotFoundError, match="c_empty"):
        list_image_folder(tmp_path / "split")


# ------------------------------------------------------------------------------ retrieval


def _unit(degrees: list[float]) -> torch.Tensor:
    radians = torch.tensor(degrees) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1)  # [g, 2]


# similarity to a query at 0 degrees ranks the gallery g2, g0, g3, g1, g4
GALLERY = _unit([20.0, 60.0, 5.0, 40.0, 90.0])


def test_retrieval_constructed_ranking_and_exclusion():
    query = _unit([0.0])
    target = torch.tensor([3])
    plain = retrieval_metrics(query, GALLERY, target)
    assert plain["top1"] == 0.0 and plain["map"] == pytest.approx(100 / 3)  # target at rank 3
    excluded = retrieval_metrics(query, GALLERY, target, exclude_index=torch.tensor([2]))
    assert excluded["map"] == pytest.approx(50.0)  # g2 gone: target at rank 2
    assert retrieve_topk(query, GALLERY, torch.tensor([2]), k=3).tolist() == [[0, 3, 1]]
    top = retrieval_metrics(query, GALLERY, torch.tensor([0]), exclude_index=torch.tensor([2]))
    assert top == {"top1": 100.0, "map": 100.0}


def test_retrieval_own_frame_exclusion_matters_for_representation_only():
    # representation-only: the query IS the gallery feature of its input frame t; target is t+1
    gallery = _unit([0.0, 10.0, 30.0, 45.0])
    queries = gallery[:3]  # frames 0, 1, 2 of one take
    target, own = torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2])
    naive = retrieval_metrics(queries, gallery, target)
    assert naive["top1"] == 0.0  # every query finds itself first
    fair = retrieval_metrics(queries, gallery, target, exclude_index=own)
    # query 0 ranks (1, 2, 3): target rank 1; query 1: (2 at 20deg, 0 at 10deg) -> 0 first: rank 2;
    # query 2 at 30deg: 3 at 15deg, 1 at 20deg -> target rank 1
    assert fair["top1"] == pytest.approx(200 / 3)
    assert fair["map"] == pytest.approx(100 * (1 + 0.5 + 1) / 3)


def test_retrieval_multiple_positives_and_mrr_equivalence():
    query = _unit([0.0])
    positives = torch.zeros(1, 5, dtype=torch.bool)
    positives[0, 2] = True  # rank 1; the target g3 is rank 3
    top1, ap = average_precision(query, GALLERY, torch.tensor([3]), positives=positives)
    assert bool(top1[0]) and ap.item() == pytest.approx((1 / 1 + 2 / 3) / 2)
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(40, 8, generator=generator)
    gallery = torch.randn(60, 8, generator=generator)
    target = torch.randint(0, 60, (40,), generator=generator)
    exclude = (target + 1) % 60
    similarity = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(
        gallery, dim=1).t()
    similarity[torch.arange(40), exclude] = -2.0
    rank = 1 + (similarity > similarity[torch.arange(40), target].unsqueeze(1)).sum(dim=1)
    metrics = retrieval_metrics(queries, gallery, target, exclude, chunk=7)
    assert metrics["map"] == pytest.approx(100 * (1 / rank.double()).mean().item())
    assert metrics["top1"] == pytest.approx(100 * (rank == 1).double().mean().item())
    assert metrics["map"] >= metrics["top1"]


def test_retrieval_rejects_target_that_is_excluded():
    with pytest.raises(ValueError, match="also its target"):
        retrieval_metrics(_unit([0.0]), GALLERY, torch.tensor([1]), torch.tensor([1]))


def _about_y(degrees: float, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    """[3, 4] camera pose: a turn of `degrees` about the camera's y axis, translation t."""
    a = np.radians(degrees)
    rotation = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    return np.concatenate([rotation, np.array(t, float)[:, None]], axis=1)


def test_step_motion_hand_computed():
    # T = 3 images 2 frames apart (F = 6): images at frames 0, 2, 4
    camera = np.stack([_about_y(0), _about_y(1), _about_y(5, (0, 0, 0.03)), _about_y(9),
                       _about_y(20, (0.1, 0, 0.03)), _about_y(25)])[None]  # [1, 6, 3, 4]
    rotation, translation = step_motion(camera, image_step=2)
    np.testing.assert_allclose(rotation, [[5.0, 15.0]], atol=1e-6)  # degrees
    np.testing.assert_allclose(translation, [[0.03, 0.1]], atol=1e-12)  # metres
    with pytest.raises(ValueError, match="camera must be"):
        step_motion(camera[:, :5], image_step=2)


def test_motion_breakdown_bins_counts_and_distinct_transitions():
    top1 = torch.tensor([True, False, True, False])
    ap = torch.tensor([1.0, 0.5, 1.0, 1 / 3], dtype=torch.float64)
    rotation = torch.tensor([1.0, 2.0, 10.0, 30.0])  # 2 and 10 fall in the upper bin
    transitions = torch.tensor([[0, 1], [1, 2], [2, 3], [2, 3]])  # the last two: one pair
    got = motion_breakdown(top1, ap, rotation, ROTATION_BINS, "rot", transitions)
    assert got["top1_rot_lt2"] == 100.0 and got["map_rot_lt2"] == 100.0
    assert got["top1_rot_2to10"] == 0.0 and got["map_rot_2to10"] == 50.0
    assert got["top1_rot_ge10"] == 50.0 and got["map_rot_ge10"] == pytest.approx(200 / 3)
    assert [got[f"num_queries_rot_{b}"] for b in ("lt2", "2to10", "ge10")] == [1, 1, 2]
    assert [got[f"num_transitions_rot_{b}"] for b in ("lt2", "2to10", "ge10")] == [1, 1, 1]
    still = motion_breakdown(top1, ap, torch.zeros(4), TRANSLATION_BINS, "trans", transitions)
    assert still["top1_trans_lt5cm"] == 50.0 and still["num_transitions_trans_lt5cm"] == 3
    assert math.isnan(still["top1_trans_ge15cm"]) and still["num_queries_trans_ge15cm"] == 0
    assert [bin_label(lo, hi, "deg") for _, lo, hi in ROTATION_BINS] == [
        "< 2 deg", "2-10 deg", ">= 10 deg"]


def test_direction_hits_and_accuracy_hand_computed():
    gallery = _unit([0.0, 10.0, 20.0, 90.0])
    queries = _unit([14.0, 16.0, 0.0, 80.0])
    next_index = torch.tensor([2, 2, 1, 3])
    previous = torch.tensor([1, 1, -1, 0])  # query 2: its I_{t-1} is not in the gallery
    hit, counted = direction_hits(queries, gallery, next_index, previous)
    # 14 deg: 6 from I_{t+1}, 4 from I_{t-1}: no; 16 deg: 4 vs 6: yes; 80 deg: 10 vs 80: yes
    assert hit.tolist() == [False, True, False, True]
    assert counted.tolist() == [True, True, False, True]
    got = direction_metrics(hit, counted, torch.tensor([12.0, 3.0, 20.0, 10.0]))
    assert got["direction_accuracy"] == pytest.approx(200 / 3)
    assert got["direction_accuracy_rot_ge10"] == 50.0  # queries 0 (no) and 3 (yes)
    assert got["num_direction_queries"] == 3 and got["num_direction_queries_rot_ge10"] == 2


def test_previous_frame_is_found_across_clips_of_the_same_take():
    table = np.array([[0, 0, 0, 1, 2, 3],  # take 0 from frame 0: stored frames 0..3
                      [0, 5, 1, 2, 3, 4],  # take 0 from frame 5: its I_{-1} is clip 0's frame 0
                      [1, 0, 5, 6, 7, 8]])  # take 1: nothing before its first image
    frame_ids = np.arange(9)
    previous = _previous_rows(table, np.arange(3), np.arange(3), frame_ids, image_step=5)
    assert previous.tolist() == [[-1, 0, 1], [0, 1, 2], [-1, 5, 6]]
    only_last = _previous_rows(table, np.array([1]), np.array([1]), np.arange(1, 5), 5)
    assert only_last.tolist() == [[-1, 0, 1]]  # clip 0 not evaluated: frame 0 not in the gallery


# --------------------------------------------------------------------------------- motion


def _walk(n: int = 2, frames: int = 15, joints: int = 17, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, frames, joints, 3, generator=generator, dtype=torch.float64)  # metres


def test_motion_constant_offset():
    true = _walk()
    visible = torch.ones(true.shape[:3], dtype=torch.bool)
    pred = true + torch.tensor([0.0, 0.006, 0.008], dtype=torch.float64)  # |offset| = 1 cm
    m = motion_metrics(pred, true, visible)
    assert m["mpjpe_30fps"] == pytest.approx(1.0) and m["mpjpe_10fps"] == pytest.approx(1.0)
    assert m["mpjve_30fps"] == pytest.approx(0.0, abs=1e-9)
    assert m["mpjve_10fps"] == pytest.approx(0.0, abs=1e-9)
    assert (m["num_samples"], m["num_skipped"]) == (2, 0)


def test_motion_growing_offset_gives_known_position_and_velocity_errors():
    true = _walk()
    visible = torch.ones(true.shape[:3], dtype=torch.bool)
    drift = torch.arange(15, dtype=torch.float64).view(1, 15, 1, 1) * torch.tensor(
        [0.001, 0.0, 0.0], dtype=torch.float64)  # 1 mm more per 30 fps frame
    m = motion_metrics(true + drift, true, visible)
    assert m["mpjpe_30fps"] == pytest.approx(0.7)  # mean of 0.1 cm x (0..14)
    assert m["mpjve_30fps"] == pytest.approx(3.0)  # 0.1 cm x 30 fps
    assert m["mpjpe_10fps"] == pytest.approx(0.8)  # window 2, 5, .., 14: mean 0.1 cm x 8
    assert m["mpjve_10fps"] == pytest.approx(3.0)  # 0.3 cm x 10 fps


def test_motion_invisible_joints_change_nothing():
    true = _walk()
    visible = torch.ones(true.shape[:3], dtype=torch.bool)
    pred = true + 0.01
    visible[0, 4, 3] = False
    visible[1, :, 16] = False
    reference = motion_metrics(pred, true, visible)
    spoiled_pred, spoiled_true = pred.clone(), true.clone()
    spoiled_pred[0, 4, 3] = 1e6
    spoiled_pred[1, :, 16] = float("nan")
    spoiled_true[1, 7, 16] = -1e6
    assert motion_metrics(spoiled_pred, spoiled_true, visible) == reference
    spoiled_pred[0, 5, 3] = 1e6  # a VISIBLE joint: must change the result
    assert motion_metrics(spoiled_pred, spoiled_true, visible)["mpjpe_30fps"] > 1e5


def test_motion_velocity_needs_both_endpoints_visible():
    true = _walk(n=1)
    visible = torch.ones(true.shape[:3], dtype=torch.bool)
    visible[0, 1::2, 0] = False  # joint 0 only on even frames: never two in a row
    pred = true.clone()
    pred[0, :, 0] += _walk(n=1, seed=1)[0, :, 0] * 0.1  # jitter joint 0 only
    m = motion_metrics(pred, true, visible)
    assert m["mpjpe_30fps"] > 0.1
    assert m["mpjve_30fps"] == 0.0  # 10 fps window 2,5,8,..: joint 0 at 2,8,14 -> no pair either
    assert m["mpjve_10fps"] == 0.0


def test_motion_per_sample_mean_versus_pooled_and_skipped_samples():
    true = _walk(n=3)
    visible = torch.zeros(true.shape[:3], dtype=torch.bool)
    visible[0, :, 0] = True  # sample 0: one joint, 10 cm error
    visible[1] = True  # sample 1: 17 joints, 1 cm error
    pred = true.clone()
    pred[0] += torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64)
    pred[1] += torch.tensor([0.01, 0.0, 0.0], dtype=torch.float64)
    pred[2] += 5.0  # sample 2: nothing visible -> skipped
    m = motion_metrics(pred, true, visible)
    assert m["mpjpe_30fps"] == pytest.approx(5.5)  # (10 + 1) / 2 samples
    assert (m["num_samples"], m["num_skipped"]) == (2, 1)
    assert m["mpjpe_30fps_pooled"] == pytest.approx((10 * 1 + 1 * 17) / 18)
    assert m["mpjpe_10fps_pooled"] == pytest.approx((10 * 1 + 1 * 17) / 18)


def test_motion_10fps_scores_clip_frames_7_to_19_and_pools_visible_joints():
    """Hand-computed. Window index k = clip frame 5 + k (the last observed pose is frame 4).
    Sample 0: every joint visible, x error k cm at window index k. Sample 1: only joint 0
    visible, at window indices 0..4 (clip frames 5..9), x error 20 cm at each."""
    true = torch.zeros(2, 15, 17, 3, dtype=torch.float64)
    pred = true.clone()
    visible = torch.zeros(2, 15, 17, dtype=torch.bool)
    visible[0] = True
    pred[0, :, :, 0] = torch.arange(15, dtype=torch.float64).view(15, 1) * 0.01
    visible[1, :5, 0] = True
    pred[1, :5, 0, 0] = 0.20
    m = motion_metrics(pred, true, visible)
    # 10 fps: clip frames 7, 10, 13, 16, 19 = window 2, 5, 8, 11, 14.
    # sample 0: errors 2, 5, 8, 11, 14 cm -> 8; velocities 3 cm per 0.1 s = 30 cm/s.
    # sample 1: joint 0 visible at window 2 only (frame 7): 20 cm; no velocity pair.
    assert m["mpjpe_10fps"] == pytest.approx((8.0 + 20.0) / 2)
    assert m["mpjpe_10fps_pooled"] == pytest.approx((17 * (2 + 5 + 8 + 11 + 14) + 20) / (17 * 5 + 1))
    assert m["mpjve_10fps"] == pytest.approx(30.0)  # sample 1 has no 10 fps velocity term
    assert m["mpjve_10fps_pooled"] == pytest.approx(30.0)
    # 30 fps: sample 0 mean of 0..14 = 7 cm, 1 cm per frame x 30 = 30 cm/s; sample 1: 20 cm,
    # 0 cm/s (4 velocity terms, constant error).
    assert m["mpjpe_30fps"] == pytest.approx((7.0 + 20.0) / 2)
    assert m["mpjpe_30fps_pooled"] == pytest.approx((17 * 105 + 5 * 20) / (17 * 15 + 5))
    assert m["mpjve_30fps"] == pytest.approx((30.0 + 0.0) / 2)
    assert m["mpjve_30fps_pooled"] == pytest.approx(17 * 14 * 30.0 / (17 * 14 + 4))


def test_motion_rejects_bad_shapes():
    with pytest.raises(ValueError, match="visibility"):
        motion_metrics(_walk(), _walk(), torch.ones(2, 15, 16, dtype=torch.bool))


# ------------------------------------------------------------------------------ baselines


def _linear_motion(step: float = 0.01) -> torch.Tensor:
    """[2, 20, 17, 3] metres: every joint moves ``step`` m along x per 30 fps frame."""
    start = _walk(n=2, frames=1, seed=3)  # [2, 1, 17, 3]
    frames = torch.arange(20, dtype=torch.float64).view(1, 20, 1, 1)
    return start + frames * torch.tensor([step, 0.0, 0.0], dtype=torch.float64)


def _observe(poses: torch.Tensor) -> torch.Tensor:
    visible = torch.ones(*poses.shape[:3], 1, dtype=poses.dtype)
    return torch.cat([poses[:, :5], visible[:, :5]], dim=-1)  # [n, 5, J, 4]


def test_constant_velocity_is_exact_on_linear_motion():
    poses = _linear_motion()
    pred = constant_velocity(_observe(poses))
    assert pred.shape == (2, 15, 17, 3)
    assert torch.allclose(pred, poses[:, 5:])
    visible = torch.ones(2, 15, 17, dtype=torch.bool)
    assert motion_metrics(pred, poses[:, 5:], visible)["mpjpe_30fps"] == pytest.approx(0, abs=1e-9)


def test_zero_velocity_error_on_linear_motion_is_known():
    poses = _linear_motion(step=0.01)  # 1 cm per frame
    pred = zero_velocity(_observe(poses))
    assert torch.allclose(pred, poses[:, 4:5].expand(-1, 15, -1, -1))
    m = motion_metrics(pred, poses[:, 5:], torch.ones(2, 15, 17, dtype=torch.bool))
    assert m["mpjpe_30fps"] == pytest.approx(8.0)  # mean of 1..15 cm
    assert m["mpjve_30fps"] == pytest.approx(30.0)  # 1 cm x 30 fps, all of it missed
    assert m["mpjpe_10fps"] == pytest.approx(9.0)  # clip frames 7, 10, .., 19: 3, 6, .., 15 cm
    assert m["mpjve_10fps"] == pytest.approx(30.0)


def test_baselines_fall_back_for_invisible_joints():
    poses = _linear_motion()
    observed = _observe(poses)
    observed[0, 4, 1, 3] = 0.0  # joint 1 hidden in the last frame: hold it at frame 3
    observed[0, 3, 2, 3] = 0.0  # joint 2 hidden in frame 3 only: hold it at frame 4
    observed[0, :, 5, 3] = 0.0  # joint 5 never seen: origin
    cv = constant_velocity(observed)
    assert torch.allclose(cv[0, :, 1], poses[0, 3:4, 1].expand(15, -1))
    assert torch.allclose(cv[0, :, 2], poses[0, 4:5, 2].expand(15, -1))
    assert torch.equal(cv[0, :, 5], torch.zeros(15, 3, dtype=cv.dtype))
    assert torch.allclose(cv[0, :, 0], poses[0, 5:, 0])  # untouched joints still extrapolate
    zv = zero_velocity(observed)
    assert torch.allclose(zv[0, :, 1], poses[0, 3:4, 1].expand(15, -1))


# --------------------------------------------------------------------------------- report


def test_results_round_trip_and_markdown(tmp_path):
    results = {
        "act": {"zero_velocity": {"mpjpe_30fps": 20.5, "mpjve_30fps": float("nan")},
                "egoagent": {"mpjpe_30fps": torch.tensor(12.92), "num_samples": 31447}},
        "predict": {"egoagent": {"top1": 43.01, "map": 58.06}},
    }
    json_path, md_path = write_results(results, tmp_path / "eval")
    loaded = read_results(json_path)
    assert loaded["act"]["egoagent"]["mpjpe_30fps"] == pytest.approx(12.92)
    assert loaded["act"]["zero_velocity"]["mpjve_30fps"] is None  # NaN is not JSON
    assert loaded["act"]["egoagent"]["num_samples"] == 31447
    assert loaded == json.loads(json_path.read_text())
    write_results(loaded, tmp_path / "eval")  # overwrite in place; round-trips exactly
    assert read_results(json_path) == loaded
    assert sorted(os.listdir(tmp_path / "eval")) == ["results.json", "results.md"]  # no temp files
    markdown = md_path.read_text()
    assert "| egoagent | 12.92 | n/a | 31447 |" in markdown  # egoagent row first, known order
    assert markdown.index("| egoagent |") < markdown.index("| zero_velocity |")
    assert "mpjpe_30fps (cm)" in results_markdown(loaded)
    with pytest.raises(ValueError, match="not a number"):
        write_results({"act": {"egoagent": {"mpjpe_30fps": "12"}}}, tmp_path / "bad")


def test_markdown_puts_motion_bins_in_their_own_table():
    methods = {m: {"top1": 10.0, "direction_accuracy": 45.8, "top1_rot_ge10": top,
                   "map_rot_ge10": 20.0, "num_queries_rot_ge10": 250,
                   "num_transitions_rot_ge10": 210, "top1_trans_lt5cm": None}
               for m, top in (("representation_only", 8.0), ("egoagent", 11.7))}
    markdown = results_markdown({"retrieval": methods})
    main, binned = markdown.split("### retrieval by camera motion")
    assert "| method | top1 (%) | direction_accuracy (%) |" in main and "rot_ge10" not in main
    assert "| egoagent | rotation | ge10 | 250 | 210 | 11.70 | 20.00 |" in binned
    assert "| representation_only | translation | lt5cm | n/a | n/a | n/a | n/a |" in binned
    assert binned.index("| egoagent |") < binned.index("| representation_only |")

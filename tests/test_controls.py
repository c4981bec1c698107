"""Input controls (megatron_ego/eval/controls.py): a hand-built agent whose prediction provably
uses its actions (or its images) is reported as using them, one that ignores them is not."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from megatron_ego.eval import controls
from megatron_ego.eval.demo_summary import control_lines
from megatron_ego.eval.features import ValClips
from megatron_ego.runtime.processes import Processes

ONE_PROCESS = Processes(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
K = 48


def _turn(degrees: float, frames: int = 20) -> np.ndarray:
    """[frames, 3, 4] cameras turning about y by ``degrees`` over the clip."""
    out = np.zeros((frames, 3, 4))
    for f, angle in enumerate(np.radians(np.linspace(0.0, degrees, frames))):
        c, s = np.cos(angle), np.sin(angle)
        out[f, :, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    return out


def test_signature_tells_left_from_right_and_still():
    camera = np.stack([_turn(30), _turn(-30), _turn(0), _turn(15)])
    signature = controls.clip_signature(camera)
    assert signature[0] * signature[1] < 0  # opposite turns, opposite signs
    assert abs(signature[0] - signature[1]) > abs(signature[0] - signature[3])
    assert abs(signature[0] - signature[2]) == pytest.approx(abs(signature[1] - signature[2]),
                                                             rel=1e-6)


@pytest.mark.parametrize("count", [2, 3, 7, 50])
def test_derangement_never_keeps_a_clip_and_pairs_unlike_motions(count):
    signature = np.random.default_rng(count).normal(size=count)
    partner = controls.motion_derangement(signature)
    assert sorted(partner.tolist()) == list(range(count))  # a permutation
    assert (partner != np.arange(count)).all()
    rank = np.argsort(np.argsort(signature))
    gap = np.abs(rank - rank[partner])
    assert (np.minimum(gap, count - gap) == count // 2).all()  # half the ranking apart


def test_derangement_needs_two_clips():
    with pytest.raises(ValueError, match="at least 2 clips"):
        controls.motion_derangement(np.zeros(1))


def test_control_poses():
    poses = torch.arange(2 * 20 * 17 * 4, dtype=torch.float32).view(2, 20, 17, 4)
    other = -poses
    assert torch.equal(controls.control_poses(poses, "shuffled", 5, other), other)
    assert not controls.control_poses(poses, "zero", 5).any()
    shifted = controls.control_poses(poses, "next", 5)
    assert torch.equal(shifted[:, :15], poses[:, 5:]) and not shifted[:, 15:].any()
    with pytest.raises(ValueError, match="unknown action control"):
        controls.control_poses(poses, "reversed", 5)


def test_paired_bootstrap():
    same = torch.tensor([True, False, True, True])
    assert controls.paired_bootstrap(same, same) == (0.0, 0.0, 0.0)
    delta, low, high = controls.paired_bootstrap(torch.ones(50, dtype=torch.bool),
                                                 torch.zeros(50, dtype=torch.bool))
    assert (delta, low, high) == (100.0, 100.0, 100.0)
    real = torch.rand(400, generator=torch.Generator().manual_seed(0)) < 0.6
    control = torch.rand(400, generator=torch.Generator().manual_seed(1)) < 0.4
    delta, low, high = controls.paired_bootstrap(real, control)
    assert low < delta < high and low > 0  # 20 points apart on 400 items: clearly above zero
    assert delta == pytest.approx(100 * (real.double().mean() - control.double().mean()).item())
    keep = torch.zeros(400, dtype=torch.bool)
    assert all(math.isnan(v) for v in controls.paired_bootstrap(real, control, keep))
    errors = torch.tensor([1.0, float("nan"), 3.0])  # a sample with no visible joint drops out
    assert controls.paired_bootstrap(errors, torch.zeros(3), scale=1.0)[0] == 2.0


# ------------------------------------------------------------------- hand-built agents, end to end
@pytest.fixture(scope="module")
def val_split(tmp_path_factory) -> str:
    """4 short demo takes preprocessed at 64 px (the val split: 1 take of 4)."""
    from preprocess import demo_world, egoexo4d

    root = tmp_path_factory.mktemp("controls")
    demo_world.main(["--out", str(root / "raw"), "--takes", "4", "--seconds", "4",
                     "--resolution", "64", "--walking-tours", "0", "--knn-train", "0",
                     "--knn-val", "0"])
    out = root / "train"
    egoexo4d.main(["--root", str(root / "raw"), "--out", str(out), "--split", "train",
                   "--size", "64"])
    return str(out)


def _key(x: torch.Tensor) -> bytes:
    return x.contiguous().numpy().tobytes()


class HandBuiltAgent:
    """The inference API's shape, with abilities built by hand over a dataset:
    ``represent``: a fixed random projection of the pixels; ``predict`` with ``uses_actions``:
    a lookup from the action tokens A_t to the clip's real next frame (zeros for actions it never
    saw), else a copy of the input frame I_t; ``act`` with ``uses_images``: a lookup from the
    first frame to the clip's true future, else zero velocity."""

    image_size, num_steps, poses_per_step, num_joints = 64, 4, 5, 17

    def __init__(self, data_dir: str, uses_actions: bool, uses_images: bool):
        self.cfg = SimpleNamespace(model=SimpleNamespace(
            head_out_dim=K, num_steps=4, poses_per_step=5, image_size=64))
        self.projection = torch.randn(3 * 64 * 64, K, generator=torch.Generator().manual_seed(0))
        self.uses_actions, self.uses_images = uses_actions, uses_images
        self.next_frame, self.future = {}, {}
        clips = ValClips(data_dir, np.arange(len(ValClips(data_dir, [], 64).dataset)), 64)
        for i in range(len(clips)):
            frames, poses, _ = clips[i]
            for t in range(self.num_steps - 1):
                self.next_frame[_key(poses[5 * t: 5 * t + 5])] = frames[t + 1]
            self.future[_key(frames[0])] = poses[5:, :, :3]

    def represent(self, x: torch.Tensor, with_logits: bool = False):
        logits = x.flatten(1) @ self.projection  # [n, K]
        return (logits, logits) if with_logits else logits

    def predict(self, frames: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        n, T = frames.shape[:2]
        out = torch.zeros(n, T, K)
        for i in range(n):
            for t in range(T):
                if not self.uses_actions:
                    out[i, t] = self.represent(frames[i, t: t + 1])[0]
                    continue
                seen = self.next_frame.get(_key(poses[i, 5 * t: 5 * t + 5]))
                if seen is not None:
                    out[i, t] = self.represent(seen[None])[0]
        return out  # [n, T, K]

    def act(self, frames: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        still = observed[:, -1:, :, :3].expand(-1, 15, -1, -1).clone()  # [n, 15, J, 3]
        if self.uses_images:
            for i in range(len(frames)):
                known = self.future.get(_key(frames[i, 0]))
                if known is not None:
                    still[i] = known
        return still


@pytest.mark.pipeline
def test_controls_tell_an_agent_that_uses_its_inputs_from_one_that_does_not(val_split, tmp_path):
    from megatron_ego.eval.run_motion import run_motion
    from megatron_ego.eval.run_retrieval import run_retrieval

    results = {}
    for uses in (True, False):
        agent = HandBuiltAgent(val_split, uses_actions=uses, uses_images=uses)
        results[uses] = {
            "retrieval": run_retrieval(agent, val_split, tmp_path / str(uses), ONE_PROCESS,
                                       batch_size=4, workers=0, num_figures=0),
            "motion": run_motion(agent, val_split, tmp_path / str(uses), ONE_PROCESS,
                                 batch_size=4, workers=0, num_figures=0)}
    user, ignorer = results[True], results[False]
    assert user["retrieval"]["egoagent"]["top1"] == 100.0  # the lookup is exact
    for control in controls.ACTION_CONTROLS:
        method = f"egoagent_{control}_actions"
        used, ignored = user["retrieval"][method], ignorer["retrieval"][method]
        assert used["delta_top1"] == pytest.approx(user["retrieval"]["egoagent"]["top1"]
                                                   - used["top1"])
        assert controls.matters(used["delta_top1_ci_low"]), (control, used["delta_top1"])
        assert ignored["top1"] == ignorer["retrieval"]["egoagent"]["top1"]
        assert (ignored["delta_top1"], ignored["delta_top1_ci_low"]) == (0.0, 0.0)
        assert not controls.matters(ignored["delta_top1_ci_low"])
    for control in controls.IMAGE_CONTROLS:
        used, ignored = user["motion"][f"egoagent_{control}"], ignorer["motion"][f"egoagent_{control}"]
        assert used["delta_mpjpe_30fps"] == pytest.approx(
            used["mpjpe_30fps"] - user["motion"]["egoagent"]["mpjpe_30fps"])
        assert controls.matters(used["delta_mpjpe_30fps_ci_low"]), control
        assert ignored["delta_mpjpe_30fps"] == 0.0
        assert not controls.matters(ignored["delta_mpjpe_30fps_ci_low"])


@pytest.mark.pipeline
def test_controls_can_be_left_out(val_split, tmp_path):
    from megatron_ego.eval.run_retrieval import run_retrieval

    agent = HandBuiltAgent(val_split, uses_actions=True, uses_images=True)
    out = run_retrieval(agent, val_split, tmp_path, ONE_PROCESS, batch_size=8, workers=0,
                        num_figures=0, controls=False)
    assert set(out) == {"egoagent", "representation_only"}


def test_summary_says_yes_only_when_the_interval_is_above_zero():
    results = {"retrieval": {
        "egoagent_shuffled_actions": {"delta_top1_rot_ge10": 1.7, "delta_top1_rot_ge10_ci_low": 0.28,
                                      "delta_top1_rot_ge10_ci_high": 3.11},
        "egoagent_zero_actions": {"delta_top1_rot_ge10": 0.7, "delta_top1_rot_ge10_ci_low": -0.42,
                                  "delta_top1_rot_ge10_ci_high": 1.84}},
        "motion": {"egoagent_no_images": {"delta_mpjpe_30fps": 0.3,
                                          "delta_mpjpe_30fps_ci_low": 0.1,
                                          "delta_mpjpe_30fps_ci_high": 0.5}}}
    lines = control_lines(results)
    assert len(lines) == 3
    assert "predict, shuffled actions" in lines[0] and "actions matter: yes (+1.70" in lines[0]
    assert "actions matter: no (+0.70" in lines[1] and "-0.42 to 1.84" in lines[1]
    assert lines[2].startswith("act, no images") and "images matter: yes" in lines[2]

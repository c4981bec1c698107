"""The TriFinger policy task (megatron_ego/eval/policy): the success measure on hand-made
states, the real simulator (experts, determinism, the quiet import, the missing-package error),
the demonstration files, behaviour cloning and the feature pipeline on a tiny export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_ego.eval.policy.measure import (
    move_scaled_success,
    reach_scaled_success,
    summarise,
    wilson_interval,
)

REPO = Path(__file__).resolve().parents[1]
H = 0.0325  # cube half width (m)
TINY = ["--model.num_layers=2", "--model.hidden_size=64", "--model.num_attention_heads=4",
        "--model.image_size=32", "--model.local_crop_size=16", "--model.head_hidden_dim=64",
        "--model.head_bottleneck_dim=16", "--model.head_out_dim=32"]


# ------------------------------------------------------------------------ the measure
def test_reach_success_on_hand_made_states():
    cube = np.array([0.0, 0.0, H])
    start = np.array([0.0, 0.0, H + H + 0.10])  # 10 cm above the top face
    touching = np.array([0.0, 0.0, 2 * H])  # on the top face: distance 0
    halfway = np.array([0.0, 0.0, 2 * H + 0.05])
    farther = np.array([0.0, 0.0, 2 * H + 0.15])
    assert reach_scaled_success(touching, start, cube, H) == pytest.approx(1.0)
    assert reach_scaled_success(start, start, cube, H) == pytest.approx(0.0)
    assert reach_scaled_success(halfway, start, cube, H) == pytest.approx(0.5)
    assert reach_scaled_success(farther, start, cube, H) == 0.0  # clipped, not negative
    inside = np.array([0.0, 0.0, H + 0.01])  # closer than the half width still counts as 0
    assert reach_scaled_success(inside, start, cube, H) == pytest.approx(1.0)


def test_move_success_on_hand_made_states():
    start, goal = np.array([0.0, 0.0, H]), np.array([0.08, 0.0, H])
    assert move_scaled_success(goal, start, goal) == pytest.approx(1.0)
    assert move_scaled_success(start, start, goal) == pytest.approx(0.0)
    assert move_scaled_success(np.array([0.06, 0.0, H]), start, goal) == pytest.approx(0.75)
    assert move_scaled_success(np.array([-0.05, 0.0, H]), start, goal) == 0.0
    with pytest.raises(ValueError, match="distance 0"):
        move_scaled_success(start, start, start)


def test_wilson_interval_and_summary():
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert wilson_interval(10, 20) == pytest.approx((0.2993, 0.7007), abs=1e-4)
    assert wilson_interval(20, 20) == pytest.approx((0.8389, 1.0), abs=1e-4)
    scaled = np.array([[0.8, 0.79, 1.0, 0.0], [0.9, 0.9, 0.1, 0.2]])  # [seeds, episodes]
    metrics = summarise(scaled, threshold=0.8)
    assert metrics["success"] == pytest.approx(50.0)  # 0.8 counts, 0.79 does not
    assert metrics["success_seed_std"] == pytest.approx(0.0)
    assert metrics["score"] == pytest.approx(100 * scaled.mean())
    low, high = wilson_interval(4, 8)
    assert (metrics["success_low"], metrics["success_high"]) == pytest.approx((100 * low,
                                                                                100 * high))


# ----------------------------------------------------------------------- behaviour cloning
def test_bc_fits_a_map_and_is_deterministic_per_seed():
    from megatron_ego.eval.policy.bc import BCConfig, train_bc

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32) * np.array([1, 10, 100, 0.1, 1], np.float32)
    y = np.stack([x[:, 0] + 0.01 * x[:, 2], 0.1 * x[:, 1] - 10 * x[:, 3]], axis=1)  # [64, 2]
    cfg = BCConfig(hidden=32, epochs=150, lr=3e-3)
    policy = train_bc(x, y, cfg, seed=0)
    fitted = policy(torch.from_numpy(x)).numpy()
    assert np.mean((fitted - y) ** 2) < 0.05 * np.var(y)  # learned, not the mean
    again = train_bc(x, y, cfg, seed=0)
    other = train_bc(x, y, cfg, seed=1)
    same = [torch.equal(a, b) for a, b in zip(policy.state_dict().values(),
                                             again.state_dict().values())]
    assert all(same)
    assert not torch.equal(policy.net[0].weight, other.net[0].weight)
    assert len([m for m in policy.net if isinstance(m, torch.nn.Linear)]) == 3
    with pytest.raises(ValueError, match="inputs"):
        train_bc(x[:0], y[:0], cfg, seed=0)


# ------------------------------------------------------------------------ the simulator
def test_missing_simulator_is_one_clear_error(monkeypatch, tmp_path, capsys):
    from megatron_ego.eval.policy import sim
    from preprocess import trifinger_demos

    monkeypatch.setitem(sys.modules, "pybullet", None)  # `import pybullet` raises ImportError
    with pytest.raises(sim.SimulatorMissingError, match="make setup"):
        sim.import_simulator()
    out = tmp_path / "demos"
    assert trifinger_demos.main(["--task", "reach_cube", "--out", str(out), "--train", "1",
                                 "--test", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the policy task needs the TriFinger simulator")
    assert "pybullet" in err and not out.exists()


def test_simulator_imports_without_the_gym_banner():
    code = ("from megatron_ego.eval.policy.sim import import_simulator; import_simulator(); "
            "import gym; print('gym', gym.__version__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "gym 0.26" in done.stdout
    assert "Gym has been unmaintained" not in done.stderr + done.stdout


@pytest.fixture(scope="module")
def reach_scene():
    from megatron_ego.eval.policy.sim import TriFingerScene

    scene = TriFingerScene(fixed_cube=True, image_size=32)
    yield scene
    scene.close()


def test_expert_episodes_are_deterministic_and_succeed(reach_scene):
    from megatron_ego.eval.policy.expert import make_expert
    from megatron_ego.eval.policy.tasks import get_task, run_episode, sample_initial_state

    task = get_task("reach_cube")

    def episode(seed: int, render: bool = False):
        state = sample_initial_state(task, seed)
        return run_episode(reach_scene, task, state, make_expert(task, state), render=render)

    first = episode(5, render=True)
    other = episode(3)
    again = episode(5, render=True)  # after another episode in the same scene
    assert np.array_equal(first.tips, again.tips) and np.array_equal(first.actions, again.actions)
    assert all(np.array_equal(a, b) for a, b in zip(first.images, again.images))
    assert first.images[0].shape == (32, 32, 3) and len(first.images) == task.num_actions + 1
    assert not np.array_equal(first.tips, other.tips)
    assert np.all(first.actions[:, 3:] == 0)  # reach moves finger 0 only
    assert min(first.success, other.success) >= 0.8  # the expert touches the cube


# ------------------------------------------------------------------ demonstration files
@pytest.fixture(scope="module")
def tiny_demos(tmp_path_factory) -> Path:
    from preprocess import trifinger_demos

    out = tmp_path_factory.mktemp("trifinger") / "reach"
    assert trifinger_demos.main(["--task", "reach_cube", "--out", str(out), "--train", "2",
                                 "--test", "2", "--image-size", "32"]) == 0
    return out


def test_demo_files_hold_the_expert_episodes(tiny_demos, reach_scene):
    from megatron_ego.eval.policy.demos import DemoSet
    from megatron_ego.eval.policy.expert import make_expert
    from megatron_ego.eval.policy.tasks import run_episode

    demos = DemoSet(tiny_demos)
    manifest = json.loads((tiny_demos / "manifest.json").read_text())
    assert demos.seeds == {"train": [0, 1], "test": [1000000, 1000001]}
    assert manifest["expert"]["test"]["episodes"] == 2
    state = demos.initial_state(1)
    episode = run_episode(reach_scene, demos.task, state, make_expert(demos.task, state), True)
    np.testing.assert_allclose(demos.tips[1], episode.tips, atol=1e-6)  # float32 storage
    np.testing.assert_allclose(demos.actions[1], episode.actions, atol=1e-6)
    assert np.array_equal(demos.image(1, 3), episode.images[3])  # PNG is lossless
    assert demos.success[1] == pytest.approx(episode.success, abs=1e-6)
    assert demos.goal_image(3).shape == (32, 32, 3)
    with pytest.raises(IndexError):
        demos.image(3, 1)  # a test episode keeps its final frame only
    assert not list(tiny_demos.parent.glob(".reach.*"))  # no temporary folder left


def test_damaged_demo_folders_are_refused_with_what_to_do(tiny_demos, tmp_path):
    import shutil

    from megatron_ego.data.indexed import IndexedDataError
    from megatron_ego.eval.policy.demos import DemoSet

    with pytest.raises(FileNotFoundError, match="preprocess.trifinger_demos"):
        DemoSet(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_demos, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "seeds": {"train": [0]}}))
    with pytest.raises(ValueError, match="make the demonstrations again"):
        DemoSet(broken)
    manifest["seeds"]["train"] = [0, 1, 2]  # one more episode than the files hold
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexedDataError, match="make the demonstrations again"):
        DemoSet(broken)
    manifest["seeds"]["train"] = [0, 1]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with open(broken / "frames.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(IndexedDataError):
        DemoSet(broken)


def test_demo_writer_is_all_or_nothing(tiny_demos, tmp_path, monkeypatch, capsys):
    from preprocess import trifinger_demos

    same = ["--task", "reach_cube", "--out", str(tiny_demos), "--train", "2", "--test", "2",
            "--image-size", "32"]
    before = (tiny_demos / "steps.bin").stat().st_mtime_ns
    assert trifinger_demos.main(same) == 0  # made with these options: kept
    assert (tiny_demos / "steps.bin").stat().st_mtime_ns == before
    assert trifinger_demos.main([*same[:-1], "64"]) == 2
    assert "not made with these options" in capsys.readouterr().err

    def crash(opts, folder):
        (folder / "steps.bin").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(trifinger_demos, "write_demos", crash)
    out = tmp_path / "demos"
    with pytest.raises(KeyboardInterrupt):
        trifinger_demos.main(["--task", "reach_cube", "--out", str(out)])
    assert not out.exists() and not list(tmp_path.iterdir())


# --------------------------------------------------------------- features on a tiny export
def _tiny_export(path: Path, seed: int) -> Path:
    from megatron_ego.config import load_config
    from megatron_ego.export.format import write_export
    from megatron_ego.model.egoagent import EgoAgent
    from megatron_ego.model.parallel import ensure_model_parallel

    cfg = load_config("configs/tiny_cpu.yaml", TINY)
    ensure_model_parallel()
    torch.manual_seed(seed)
    write_export(EgoAgent(cfg.model).eval().state_dict(), cfg, path, {"weights": "teacher"})
    return path


def test_features_and_training_set_from_a_tiny_export(tiny_demos, tmp_path):
    from megatron_ego.eval.policy import encoders
    from megatron_ego.eval.policy.demos import DemoSet
    from megatron_ego.eval.policy.run import _training_set
    from megatron_ego.inference import EgoAgent

    export = _tiny_export(tmp_path / "export", seed=0)
    agent = EgoAgent.from_pretrained(export, device="cpu")
    rep = encoders.export_representation("egoagent", agent, str(export))
    calls = []
    encode = rep.encode
    rep.encode = lambda images: calls.append(len(images)) or encode(images)
    demos = DemoSet(tiny_demos)
    T, h = demos.task.num_actions, agent.cfg.model.hidden_size
    train, goal = encoders.demo_features(rep, demos, tmp_path / "eval")
    assert train.shape == (2, T + 1, h) and goal.shape == (4, h)
    assert sum(calls) == 2 * (T + 1) + 2  # every training frame, the test episodes' final one
    direct = agent.represent(demos.image(1, 2)[None]).numpy()[0]
    np.testing.assert_allclose(train[1, 2], direct, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(goal[:2], train[:, -1])
    again, _ = encoders.demo_features(rep, demos, tmp_path / "eval")
    assert sum(calls) == 2 * (T + 1) + 2 and np.array_equal(again, train)  # from the cache
    random_a = encoders.random_representation(str(export), 7, torch.device("cpu"))
    random_b = encoders.random_representation(str(export), 7, torch.device("cpu"))
    image = demos.image(0, 0)[None]
    np.testing.assert_array_equal(random_a.encode(image), random_b.encode(image))
    assert not np.allclose(random_a.encode(image), rep.encode(image))
    inputs, targets = _training_set(demos, train, goal)
    assert inputs.shape == (2 * T, 9 + h) and targets.shape == (2 * T, 3)
    np.testing.assert_allclose(targets[:T], demos.actions[0, :, :3] * 100, rtol=1e-6)
    np.testing.assert_allclose(inputs[T, :9], demos.tips[1, 0] * 100, rtol=1e-6)
    np.testing.assert_allclose(inputs[T + 2, 9:], train[1, 2], rtol=1e-6)


@pytest.mark.pipeline
def test_evaluate_runs_the_policy_task_end_to_end(tiny_demos, tmp_path):
    from launch import evaluate

    export, stage1 = _tiny_export(tmp_path / "export", 0), _tiny_export(tmp_path / "stage1", 1)
    out = tmp_path / "eval"
    assert evaluate.main(["--model", str(export), "--task", "policy", "--out", str(out),
                          "--policy-demos", str(tiny_demos), "--policy-stage1", str(stage1),
                          "--policy-seeds", "2", "--policy-epochs", "2", "--policy-hidden", "16",
                          "--tensorboard", "none"]) == 0
    results = json.loads((out / "results.json").read_text())
    methods = results["policy_reach_cube"]
    assert set(methods) == {"egoagent", "stage1", "random_init", "true_state", "expert"}
    for name, metrics in methods.items():
        assert metrics["episodes"] == (2 if name == "expert" else 4), name
        assert metrics["success_low"] <= metrics["success"] <= metrics["success_high"]
        assert 0 <= metrics["score"] <= 100
    assert methods["expert"]["success"] == 100.0
    record = results["provenance"]["policy_reach_cube"]["policy"]
    assert record["stage1_export"] == str(stage1) and record["training_seeds"] == 2
    assert "policy_reach_cube" in (out / "results.md").read_text()
    assert sorted(p.name for p in (out / "features").iterdir()) == [
        f"policy_reach_cube_{m}.pt" for m in ("egoagent", "random_init", "stage1")]


def test_true_state_is_the_same_for_both_signs_of_a_quaternion():
    from megatron_ego.eval.policy.run import true_state

    position = np.array([0.01, -0.02, H])
    q = np.array([0.0, 0.0, np.sin(1.2), -np.cos(1.2)])  # w < 0
    state = true_state(position, q)
    np.testing.assert_allclose(state, true_state(position, -q))
    np.testing.assert_allclose(state[:3], position * 100)
    assert state[6] > 0


def test_evaluate_plans_the_policy_task_from_its_inputs(tiny_demos, tmp_path):
    from launch import evaluate

    def plan(*extra: str) -> list[str]:
        args = evaluate.parse_args(["--model", str(tmp_path / "export"), "--out",
                                    str(tmp_path / "eval"), *extra])
        return evaluate.plan_tasks(args)

    assert plan("--task", "policy", "--policy-demos", str(tiny_demos)) == ["policy"]
    assert plan("--task", "all", "--policy-demos", str(tiny_demos)) == ["policy"]
    with pytest.raises(ValueError, match="--policy-demos"):
        plan("--task", "policy")
    with pytest.raises(FileNotFoundError, match="preprocess.trifinger_demos"):
        plan("--task", "policy", "--policy-demos", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="launch/export.py"):
        plan("--task", "policy", "--policy-demos", str(tiny_demos), "--policy-stage1",
             str(tmp_path))

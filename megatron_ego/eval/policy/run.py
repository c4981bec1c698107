"""The policy task (the paper's appendix, Table 5): behaviour cloning on frozen features,
evaluated by rolling the policies out in the simulator from held-out initial states.

For each demonstration set (reach cube, move cube) and each method, 3 policies (one per
training seed) are trained on the training demonstrations and rolled out once from every test
initial state; each rollout is scored by the benchmark's scaled success (measure.py):

- ``egoagent``: the export's representation; ``stage1``: the stage-1 (represent-only) export,
  when given; ``random_init``: the same architecture never trained (fixed seed);
- ``true_state``: the true cube pose (centre in cm, orientation quaternion; and the goal
  position) instead of an image: the ceiling of the demonstrations and of behaviour cloning;
- ``expert``: the scripted expert itself on the same test states (no training; seeds = 1).

    results = run_policy(agent, "runs/x/export", ["data/trifinger/reach_cube"], "runs/x/eval")
    results["policy_reach_cube"]["egoagent"]["success"]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from megatron_ego.eval.policy.bc import CM_PER_M, BCConfig, one_thread, policy_inputs, train_bc
from megatron_ego.eval.policy.demos import DemoSet
from megatron_ego.eval.policy.encoders import (
    Representation,
    demo_features,
    export_representation,
    random_representation,
)
from megatron_ego.eval.policy.measure import SUCCESS_THRESHOLD, summarise
from megatron_ego.eval.policy.tasks import Observation

log = logging.getLogger(__name__)
RANDOM_INIT_SEED = 1234


@dataclass
class PolicyOptions:
    """What the policy task runs (launch/evaluate.py --policy-*)."""

    demos: list[str]
    stage1: str | None = None  # the stage-1 export folder
    seeds: int = 3
    bc: BCConfig = field(default_factory=BCConfig)
    threshold: float = SUCCESS_THRESHOLD
    max_test: int | None = None  # evaluate only the first N test states


def true_state(position: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """[..., 7]: the cube centre in cm and its orientation quaternion (x, y, z, w), sign fixed
    so that w >= 0 (q and -q are the same rotation)."""
    sign = np.where(orientation[..., 3:] < 0, -1.0, 1.0)  # [..., 1]
    return np.concatenate([position * CM_PER_M, orientation * sign], axis=-1)


def _state_features(demos: DemoSet) -> tuple[np.ndarray, np.ndarray]:
    """The true state instead of image features: train [n_train, T+1, 7], goal [n, 3] (the
    goal position in cm, for goal-conditioned tasks)."""
    cubes = demos.cubes[demos.train]  # [n_train, T+1, 7]
    return true_state(cubes[..., :3], cubes[..., 3:]), demos.goals * CM_PER_M


def _training_set(demos: DemoSet, features: np.ndarray, goals: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [n_train T, d], targets [n_train T, a] cm) of every training observation."""
    task, T = demos.task, demos.task.num_actions
    n = len(demos.train)
    tips = demos.tips[demos.train, :T].reshape(n * T, 9)  # [nT, 9]
    feats = features[:, :T].reshape(n * T, -1)  # [nT, h]
    goal = np.repeat(goals[demos.train], T, axis=0) if task.goal_conditioned else None  # [nT, h]
    targets = demos.actions[demos.train, :, :task.action_dim].reshape(n * T, -1) * CM_PER_M
    return policy_inputs(tips, feats, goal), targets


def _controller(policy, encode: Callable[[Observation], np.ndarray],
                goal: np.ndarray | None) -> Callable[[Observation], np.ndarray]:
    """Observation -> action [a] in metres, by the trained policy."""
    def act(obs: Observation) -> np.ndarray:
        x = policy_inputs(obs.tips[None], encode(obs)[None],
                          None if goal is None else goal[None])  # [1, d]
        with torch.no_grad():
            return policy(torch.from_numpy(x))[0].numpy().astype(np.float64) / CM_PER_M
    return act


def _rollouts(scene, demos: DemoSet, tests: np.ndarray, policy,
              encode: Callable[[Observation], np.ndarray], goals: np.ndarray, render: bool
              ) -> np.ndarray:
    """Scaled success [len(tests)] of ``policy`` from each test state."""
    from megatron_ego.eval.policy.tasks import run_episode

    conditioned = demos.task.goal_conditioned
    with one_thread():
        return np.array([
            run_episode(scene, demos.task, demos.initial_state(int(e)),
                        _controller(policy, encode, goals[int(e)] if conditioned else None),
                        render=render).success
            for e in tests])


def _true_state(obs: Observation) -> np.ndarray:
    return true_state(obs.cube_position, obs.cube_orientation)  # [7]


def _evaluate_method(name: str, scene, demos: DemoSet, features: np.ndarray, goals: np.ndarray,
                     encode: Callable[[Observation], np.ndarray] | None, opts: PolicyOptions,
                     tests: np.ndarray) -> np.ndarray:
    """Scaled success [seeds, tests] of one method's policies."""
    inputs, targets = _training_set(demos, features, goals)
    scores = []
    for seed in range(opts.seeds):
        start = time.perf_counter()
        policy = train_bc(inputs, targets, opts.bc, seed)
        trained = time.perf_counter() - start
        row = _rollouts(scene, demos, tests, policy, encode or _true_state, goals,
                        render=encode is not None)  # the true state reads the simulator
        scores.append(row)
        log.info("policy %s %s seed %d: trained in %.1f s, mean scaled success %.3f "
                 "(%d rollouts, %.1f s)", demos.task.name, name, seed, trained, row.mean(),
                 len(row), time.perf_counter() - start)
    return np.stack(scores)  # [seeds, tests]


def _image_encoder(rep: Representation) -> Callable[[Observation], np.ndarray]:
    return lambda obs: rep.encode(obs.image[None])[0]  # [h]


def run_demo_set(demos: DemoSet, representations: list[Representation], out_dir: str | Path,
                 opts: PolicyOptions) -> dict[str, dict[str, float | int]]:
    """Every method on one demonstration set: {method: metrics} (measure.summarise)."""
    from megatron_ego.eval.policy.sim import TriFingerScene

    tests = demos.test[:opts.max_test] if opts.max_test else demos.test
    scene = TriFingerScene(demos.task.fixed_cube, image_size=demos.image_size)
    results = {}
    try:
        for rep in representations:
            features, goals = demo_features(rep, demos, out_dir)
            scaled = _evaluate_method(rep.name, scene, demos, features, goals,
                                      _image_encoder(rep), opts, tests)
            results[rep.name] = summarise(scaled, opts.threshold)
        features, goals = _state_features(demos)
        scaled = _evaluate_method("true_state", scene, demos, features, goals, None, opts, tests)
        results["true_state"] = summarise(scaled, opts.threshold)
    finally:
        scene.close()
    results["expert"] = summarise(demos.success[tests][None], opts.threshold)
    results["expert"]["train_score"] = float(demos.success[demos.train].mean() * 100)
    for method in results.values():
        method["train_demos"] = len(demos.train)
    return results


def policy_provenance(opts: PolicyOptions) -> dict:
    """What results.json records about the policy task's inputs (JSON-safe)."""
    from dataclasses import asdict

    from megatron_ego.eval.policy.sim import simulator_version
    from megatron_ego.eval.provenance import data_manifest

    return {"demos": [data_manifest(path) for path in opts.demos], "stage1_export": opts.stage1,
            "random_init_seed": RANDOM_INIT_SEED, "training_seeds": opts.seeds,
            "bc": asdict(opts.bc), "success_threshold": opts.threshold,
            "max_test": opts.max_test, "simulator": simulator_version()}


def run_policy(agent, model_dir: str, opts: PolicyOptions, out_dir: str | Path
               ) -> dict[str, dict[str, dict[str, float | int]]]:
    """The policy task on every demonstration set: {f"policy_{task}": {method: metrics}}."""
    from megatron_ego.eval.policy.sim import import_simulator
    from megatron_ego.inference import EgoAgent

    import_simulator()
    demo_sets = [DemoSet(path) for path in opts.demos]  # checked before the long work starts
    representations = [export_representation("egoagent", agent, model_dir)]
    if opts.stage1:
        stage1 = EgoAgent.from_pretrained(opts.stage1, device=agent.device)
        representations.append(export_representation("stage1", stage1, opts.stage1))
    representations.append(random_representation(model_dir, RANDOM_INIT_SEED, agent.device))
    results = {}
    for demos in demo_sets:
        results[f"policy_{demos.task.name}"] = run_demo_set(demos, representations, out_dir, opts)
    return results

"""Frozen representations for the policy task, and their features of the demonstration frames.

- ``egoagent`` / ``stage1``: an export's ``represent`` (the state query's output [n, h]; uint8
  frames are resized to model.image_size inside, megatron_ego/inference.py);
- ``random_init``: a module of the export's config, randomly initialised with a fixed seed
  (its own initialisation; the same architecture, never trained);
- ``true_state`` (no image, run.py): the cube's true centre in cm and its orientation.

Features of the demonstration frames are cached per representation under
``OUT/features/policy_<task>_<name>.pt`` and reused while the weights, the demonstration
set and the image size are unchanged (``features.fingerprint``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_ego.eval.features import fingerprint, load_cached, save_cached
from megatron_ego.eval.policy.demos import DemoSet

IMAGE_BATCH = 64


@dataclass
class Representation:
    """A frozen image encoder: uint8 [n, H, W, 3] -> float32 [n, h]."""

    name: str
    model_dir: str
    encode: Callable[[np.ndarray], np.ndarray]
    image_size: int
    key: str = ""  # what else identifies it (the random initialisation's seed)


def _encoder(agent) -> Callable[[np.ndarray], np.ndarray]:
    def encode(images: np.ndarray) -> np.ndarray:
        return agent.represent(np.ascontiguousarray(images)).float().cpu().numpy()  # [n, h]
    return encode


def export_representation(name: str, agent, model_dir: str) -> Representation:
    """An export's ``represent`` (``agent`` = ``EgoAgent.from_pretrained(model_dir)``)."""
    return Representation(name, str(model_dir), _encoder(agent), agent.image_size)


def random_representation(model_dir: str, seed: int, device: torch.device) -> Representation:
    """A never-trained module built from ``model_dir/config.yaml``, initialised from ``seed``."""
    from megatron_ego.config import load_config
    from megatron_ego.inference import EgoAgent
    from megatron_ego.model.backbone import transformer_engine_available
    from megatron_ego.model.egoagent import EgoAgent as EgoAgentModule
    from megatron_ego.model.parallel import ensure_model_parallel
    from megatron_ego.runtime.device import seed_everything

    cfg = load_config(str(Path(model_dir) / "config.yaml"))
    m = cfg.model
    m.recompute, m.fp8 = False, False
    if m.transformer_impl == "transformer_engine" and not transformer_engine_available():
        m.transformer_impl = "local"
    ensure_model_parallel()
    seed_everything(seed)
    module = EgoAgentModule(m, precision="fp32").to(device).requires_grad_(False).eval()
    agent = EgoAgent(module, cfg, device, metadata={"weights": f"random init, seed {seed}"})
    return Representation("random_init", str(model_dir), _encoder(agent), agent.image_size,
                          key=f"random-init-seed-{seed}")


def _demo_identity(demos: DemoSet) -> list[str]:
    manifest = (demos.path / "manifest.json").read_bytes()
    frames = demos.path / "frames.bin"
    return [hashlib.sha256(manifest).hexdigest(), str(frames.stat().st_size)]


def demo_features(rep: Representation, demos: DemoSet, out_dir: str | Path
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train [n_train, T+1, h]: every observation of the training episodes, goal [n, h]: the
    final frame of every episode), from the cache when it is current."""
    T = demos.task.num_actions
    cache = Path(out_dir) / "features" / f"policy_{demos.task.name}_{rep.name}.pt"
    key = fingerprint(rep.model_dir, [rep.name, rep.key, *_demo_identity(demos)], rep.image_size)
    cached = load_cached(cache, key)
    if cached is None:
        frames = [(int(e), s) for e in demos.train for s in range(T + 1)]
        frames += [(int(e), -1) for e in demos.test]
        outputs = []
        for start in range(0, len(frames), IMAGE_BATCH):
            batch = np.stack([demos.image(e, s) for e, s in frames[start:start + IMAGE_BATCH]])
            outputs.append(rep.encode(batch))  # [b, h]
        every = torch.from_numpy(np.concatenate(outputs))  # [n_train (T+1) + n_test, h]
        cached = {"features": every}
        save_cached(cache, key, cached)
    every = cached["features"].numpy()
    n_train = len(demos.train)
    train = every[:n_train * (T + 1)].reshape(n_train, T + 1, -1)  # [n_train, T+1, h]
    goal = np.concatenate([train[:, -1], every[n_train * (T + 1):]])  # [n, h]
    return train, goal

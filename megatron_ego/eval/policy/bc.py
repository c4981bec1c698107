"""Behaviour cloning: a 3-layer MLP from (fingertips, frozen features) to fingertip displacements.

As Majumdar et al.'s TriFinger benchmark (CortexBench, ``utils/policy.py``
``DeterministicPolicy`` and ``algos/bc_finetune.py``): Linear -> ReLU -> Linear -> ReLU ->
Linear, mean squared error on the expert's actions in centimetres, AdamW, shuffled batches of
32, the representation frozen. Ours (``BCConfig`` defaults, docs/results.md): inputs are
standardised with the training set's mean and standard deviation, and the width, learning rate
and epochs are chosen for a CPU (the benchmark: 2000 wide, lr 1e-4, 100 epochs for reach and
1000 for move).

    policy = train_bc(inputs, targets, BCConfig(), seed=0)      # [n, d], [n, a]
    actions = policy(inputs[:4])                                 # [4, a] cm
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

CM_PER_M = 100.0  # the benchmark's policy works in centimetres


@dataclass
class BCConfig:
    """Behaviour-cloning hyper-parameters."""

    hidden: int = 256  # width of both hidden layers (benchmark: 2000)
    epochs: int = 300  # passes over the training samples
    batch_size: int = 32  # benchmark: 32
    lr: float = 1e-3  # AdamW learning rate (benchmark: 1e-4)
    weight_decay: float = 0.0  # benchmark: 0

    def __post_init__(self):
        if self.hidden < 1 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("BC needs hidden, epochs and batch size >= 1 and lr > 0")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside: the policy's matmuls (and one-image encodes) are so
    small that handing work between threads costs far more than the arithmetic (measured 0.7 s
    against 55 s for a small fit on the shared 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class MLPPolicy(nn.Module):
    """Three linear layers with ReLU between; inputs standardised by fixed buffers."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, out_dim))
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)  # [n, in] -> [n, out]


def train_bc(inputs: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor,
             cfg: BCConfig, seed: int) -> MLPPolicy:
    """Fit an ``MLPPolicy`` to (inputs [n, d], expert actions [n, a]); deterministic per seed
    (initialisation and batch order both come from ``torch.Generator`` seeded with ``seed``)."""
    x = torch.as_tensor(inputs, dtype=torch.float32)  # [n, d]
    y = torch.as_tensor(targets, dtype=torch.float32)  # [n, a]
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"BC needs inputs [n, d] and targets [n, a] with n >= 1; got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    with one_thread():
        return _fit(x, y, cfg, seed)


def _fit(x: torch.Tensor, y: torch.Tensor, cfg: BCConfig, seed: int) -> MLPPolicy:
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        policy = MLPPolicy(x.shape[1], y.shape[1], cfg.hidden)
    policy.mean.copy_(x.mean(dim=0))
    std = x.std(dim=0, unbiased=False)  # [d]
    policy.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    policy.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            loss = nn.functional.mse_loss(policy(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return policy.eval().requires_grad_(False)


def policy_inputs(tips: np.ndarray, features: np.ndarray,
                  goal_features: np.ndarray | None = None) -> np.ndarray:
    """[n, 9 + h (+ h)]: fingertips in cm, the representation of the current image (or the
    true cube position in cm), and for goal-conditioned tasks that of the goal."""
    parts = [np.asarray(tips, dtype=np.float32) * CM_PER_M, np.asarray(features, np.float32)]
    if goal_features is not None:
        parts.append(np.asarray(goal_features, dtype=np.float32))
    return np.concatenate(parts, axis=1)

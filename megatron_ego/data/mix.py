"""Which samples each micro-step draws: the source mix and the per-epoch sample order.

Pure functions of the seed and the micro-step decide everything, so a run resumed at micro-step N
draws what an uninterrupted run draws from N on, on any number of DataLoader workers. Two mixes
(`data.mix_mode`):

- "micro_step" (homogeneous micro-batches, as the authors' release): `SourceSchedule` draws one
  source per micro-step for all ranks;
- "within_batch" (ours): `SampleShares` gives every micro-batch of every rank the same number of
  samples of each source, so that every optimizer step carries both at the ratio.

In data.mix_mode=micro_step the training loader (loader.py) calls them with the optimizer step
as "micro-step" and the micro-batch's slot in the global batch as "rank" (W = slots per step),
which is the same thing with one accumulation step and makes the stream independent of the number
of ranks (resume on another world size). within_batch draws per (micro-step, rank).

- `SourceSchedule`: the source (Ego-Exo4D or WalkingTours) of micro-step k depends on
  (seed, k) only, P(WalkingTours) = the mixing ratio, and is the same on every rank (DeepSpeed
  ZeRO-2 needs all ranks to run the same parameters in a micro-step). Micro-step k is the n-th
  micro-step of its source, n counted from the start of the run.
- `EpochOrder`: the n-th micro-step of a source reads positions [n W b + r b, n W b + (r + 1) b)
  of that source's stream (W ranks, b samples per micro-batch, rank r), and the stream is the
  concatenation of per-epoch permutations seeded by (seed, source, epoch). An epoch is the
  largest multiple of W b samples (the remainder of each permutation is left out), so within an
  epoch no two ranks and no two micro-steps read the same sample.

    schedule = SourceSchedule(seed=0, walking_tours_ratio=0.25)
    source, n = schedule.position(k)
    indices = orders[source].indices(n, rank)  # int64 [b]
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["EGOEXO4D", "WALKING_TOURS", "EpochOrder", "SampleShares", "SourceSchedule"]

EGOEXO4D = "egoexo4d"
WALKING_TOURS = "walking_tours"
_SOURCE_TAG = {EGOEXO4D: 1, WALKING_TOURS: 2}
_MIX_TAG, _ORDER_TAG = 0x6D6978, 0x6F7264  # separate the random streams of schedule and order


def _key(seed: int) -> int:
    """Seeds as numpy SeedSequence entropy (non-negative)."""
    return int(seed) % 2**64


class SourceSchedule:
    """Source of every micro-step, drawn in blocks of `block` steps from (seed, block number).

    Args:
        seed: cfg.run.seed.
        walking_tours_ratio: P(a micro-step is WalkingTours); 0 = always Ego-Exo4D.
        block: micro-steps per random block; the draws depend on it, so keep the default for
            runs that must agree.
    """

    def __init__(self, seed: int, walking_tours_ratio: float, block: int = 8192) -> None:
        if not 0.0 <= walking_tours_ratio <= 1.0:
            raise ValueError(f"walking_tours_ratio={walking_tours_ratio} must lie in [0, 1]")
        self.seed, self.ratio, self.block = _key(seed), float(walking_tours_ratio), block
        self._walking_before = [0]  # WalkingTours steps in blocks [0, i)
        self._cached: tuple[int, np.ndarray] | None = None

    def _draws(self, block_id: int) -> np.ndarray:
        """bool [block]: which steps of the block are WalkingTours."""
        if self._cached is None or self._cached[0] != block_id:
            rng = np.random.default_rng([self.seed, _MIX_TAG, block_id])
            self._cached = (block_id, rng.random(self.block) < self.ratio)
        return self._cached[1]

    def position(self, step: int) -> tuple[str, int]:
        """(source, n): micro-step `step` is the n-th (from 0) micro-step of `source`."""
        if step < 0:
            raise ValueError(f"micro-step {step} must be >= 0")
        if self.ratio == 0.0:
            return EGOEXO4D, step
        block_id, offset = divmod(step, self.block)
        while len(self._walking_before) <= block_id:  # extend the prefix counts once
            last = len(self._walking_before) - 1
            self._walking_before.append(self._walking_before[-1] + int(self._draws(last).sum()))
        draws = self._draws(block_id)
        walking = self._walking_before[block_id] + int(draws[:offset].sum())
        if draws[offset]:
            return WALKING_TOURS, walking
        return EGOEXO4D, step - walking

    def source(self, step: int) -> str:
        """The source of micro-step `step`: EGOEXO4D or WALKING_TOURS."""
        return self.position(step)[0]


class SampleShares:
    """data.mix_mode="within_batch": how many samples of each source micro-step k holds per rank.

    The WalkingTours samples of one rank before micro-step k are round(k r b) (r the ratio, b the
    micro-batch size), so micro-step k holds n_k = round((k+1) r b) - round(k r b) of them, either
    floor(r b) or ceil(r b), and b - n_k Ego-Exo4D clips; any run of consecutive micro-steps (an
    optimizer step's) holds its share r to within one sample. Every rank has the same counts
    (ZeRO-2: every rank runs the same parameters), and with 0 < r < 1 every micro-batch keeps at
    least one Ego-Exo4D clip, so every rank also runs the sequence's parameters.

    Stream positions: source s has consumed W C_s(k) samples over W ranks before micro-step k;
    rank r reads positions [W C_s(k) + r n, W C_s(k) + (r + 1) n) of that source's stream.
    """

    def __init__(self, walking_tours_ratio: float, micro_batch_size: int, world_size: int = 1):
        r, b = float(walking_tours_ratio), micro_batch_size
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"walking_tours_ratio={r} must lie in [0, 1]")
        if 0.0 < r < 1.0 and math.ceil(r * b) > b - 1:
            raise ValueError(
                f"data.walking_tours_ratio={r} x run.micro_batch_size={b} leaves some "
                "micro-batches without an Ego-Exo4D clip in data.mix_mode=within_batch: use a "
                "larger micro-batch or a smaller ratio"
            )
        self.ratio, self.micro_batch_size, self.world_size = r, b, world_size

    def walking_before(self, step: int) -> int:
        """WalkingTours samples of one rank in micro-steps [0, step)."""
        if step < 0:
            raise ValueError(f"micro-step {step} must be >= 0")
        return math.floor(step * self.ratio * self.micro_batch_size + 0.5)

    def counts(self, step: int) -> dict[str, int]:
        """{EGOEXO4D: clips, WALKING_TOURS: frames} of micro-step `step` on each rank."""
        walking = self.walking_before(step + 1) - self.walking_before(step)
        return {EGOEXO4D: self.micro_batch_size - walking, WALKING_TOURS: walking}

    def span(self, step: int, rank: int, source: str) -> tuple[int, int]:
        """(first stream position, count) that `rank` reads of `source` in micro-step `step`."""
        walking = self.walking_before(step)
        before = walking if source == WALKING_TOURS else step * self.micro_batch_size - walking
        count = self.counts(step)[source]
        return before * self.world_size + rank * count, count


class EpochOrder:
    """Sample order of one source: per-epoch permutations split over ranks and micro-steps.

    Args:
        num_samples: samples in the source's dataset.
        seed: cfg.run.seed.
        source: EGOEXO4D or WALKING_TOURS (each source has its own permutations).
        world_size: data-parallel ranks W.
        micro_batch_size: samples per micro-batch b.

    Raises:
        ValueError: fewer than W b samples (one micro-step of all ranks would not fit).
    """

    def __init__(
        self, num_samples: int, seed: int, source: str, world_size: int, micro_batch_size: int
    ) -> None:
        self.num_samples, self.seed, self.source = num_samples, _key(seed), source
        self.world_size, self.micro_batch_size = world_size, micro_batch_size
        stride = world_size * micro_batch_size
        self.samples_per_epoch = (num_samples // stride) * stride
        if self.samples_per_epoch == 0:
            raise ValueError(
                f"the {source} dataset holds {num_samples} samples, fewer than world_size x "
                f"micro_batch_size = {world_size} x {micro_batch_size} = {stride}: use more "
                f"data, fewer ranks or a smaller run.micro_batch_size"
            )
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def micro_steps_per_epoch(self) -> int:
        """Micro-steps of this source in one pass over its samples."""
        return self.samples_per_epoch // (self.world_size * self.micro_batch_size)

    def permutation(self, epoch: int) -> np.ndarray:
        """int64 [num_samples]: the sample order of `epoch`, seeded by (seed, source, epoch)."""
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, _ORDER_TAG, _SOURCE_TAG[self.source], epoch])
            self._cached = (epoch, rng.permutation(self.num_samples))
        return self._cached[1]

    def positions(self, start: int, count: int) -> np.ndarray:
        """int64 [count]: the samples at stream positions [start, start + count), which may run
        into the next epoch (data.mix_mode=within_batch)."""
        out = []
        while count > 0:
            epoch, offset = divmod(start, self.samples_per_epoch)
            take = min(count, self.samples_per_epoch - offset)
            out.append(self.permutation(epoch)[offset : offset + take])
            start, count = start + take, count - take
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def indices(self, n: int, rank: int) -> np.ndarray:
        """int64 [b]: the samples that rank `rank` reads in the n-th micro-step of this source."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} must lie in [0, {self.world_size})")
        start = (n * self.world_size + rank) * self.micro_batch_size
        epoch, offset = divmod(start, self.samples_per_epoch)
        return self.permutation(epoch)[offset : offset + self.micro_batch_size].copy()

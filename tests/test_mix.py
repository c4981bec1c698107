"""megatron_ego.data.mix: the source of each micro-step and the per-epoch sample order."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_ego.data.mix import EGOEXO4D, WALKING_TOURS, EpochOrder, SampleShares, SourceSchedule


def _sources(schedule: SourceSchedule, steps) -> np.ndarray:
    return np.array([schedule.source(k) == WALKING_TOURS for k in steps])


def test_mixing_ratio_is_respected_and_a_pure_function_of_seed_and_step():
    steps, ratio = 20_000, 0.25
    walking = _sources(SourceSchedule(seed=3, walking_tours_ratio=ratio, block=1000), range(steps))
    # binomial: 5 standard deviations
    assert abs(walking.mean() - ratio) < 5 * np.sqrt(ratio * (1 - ratio) / steps)
    again = _sources(SourceSchedule(seed=3, walking_tours_ratio=ratio, block=1000), range(steps))
    np.testing.assert_array_equal(walking, again)  # every rank computes the same schedule
    other = _sources(SourceSchedule(seed=4, walking_tours_ratio=ratio, block=1000), range(steps))
    assert (walking != other).mean() > 0.2


def test_positions_count_each_source_and_do_not_depend_on_query_order():
    schedule = SourceSchedule(seed=0, walking_tours_ratio=0.4, block=64)
    counts = {EGOEXO4D: 0, WALKING_TOURS: 0}
    expected = []
    for k in range(500):
        source, n = schedule.position(k)
        assert n == counts[source]  # the n-th micro-step of its source
        counts[source] += 1
        expected.append((source, n))
    resumed = SourceSchedule(seed=0, walking_tours_ratio=0.4, block=64)  # a restarted run
    for k in [499, 250, 3, 64, 63, 128, 0]:
        assert resumed.position(k) == expected[k]


def test_ratio_zero_is_always_egoexo4d_and_one_always_walking_tours():
    zero = SourceSchedule(seed=0, walking_tours_ratio=0.0)
    assert all(zero.position(k) == (EGOEXO4D, k) for k in range(0, 10**6, 9973))
    one = SourceSchedule(seed=0, walking_tours_ratio=1.0, block=100)
    assert all(one.position(k) == (WALKING_TOURS, k) for k in range(0, 1000, 7))


def test_ranks_get_disjoint_samples_covering_each_epoch():
    num_samples, world, b = 103, 3, 4  # 103 // 12 = 8 micro-steps per epoch, 7 samples left out
    order = EpochOrder(num_samples, seed=1, source=EGOEXO4D, world_size=world, micro_batch_size=b)
    assert order.micro_steps_per_epoch == 8
    for epoch in range(2):
        steps = range(epoch * 8, (epoch + 1) * 8)
        seen = np.concatenate([order.indices(n, r) for n in steps for r in range(world)])
        assert len(seen) == len(set(seen.tolist())) == 96  # disjoint over ranks and micro-steps
        assert seen.min() >= 0 and seen.max() < num_samples
    first = [order.indices(n, 0) for n in range(8)]
    second = [order.indices(n, 0) for n in range(8, 16)]
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))  # a new permutation


def test_sample_order_depends_on_seed_and_source_but_not_on_query_order():
    def order(seed, source=EGOEXO4D):
        return EpochOrder(1000, seed=seed, source=source, world_size=2, micro_batch_size=5)

    forward = [order(7).indices(n, r) for n in range(150) for r in range(2)]
    backward_order = order(7)
    backward = [backward_order.indices(n, r) for n in reversed(range(150)) for r in (1, 0)]
    for a, b in zip(forward, reversed(backward)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(order(7).permutation(0), order(8).permutation(0))
    assert not np.array_equal(order(7).permutation(0), order(7, WALKING_TOURS).permutation(0))


def test_too_few_samples_and_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="holds 5 samples, fewer than world_size x"):
        EpochOrder(5, seed=0, source=EGOEXO4D, world_size=2, micro_batch_size=4)
    order = EpochOrder(50, seed=0, source=EGOEXO4D, world_size=2, micro_batch_size=4)
    with pytest.raises(ValueError, match="rank 2"):
        order.indices(0, 2)
    with pytest.raises(ValueError, match="walking_tours_ratio"):
        SourceSchedule(seed=0, walking_tours_ratio=1.5)


@pytest.mark.parametrize("ratio, b, accum", [(0.25, 8, 1), (0.25, 3, 2), (0.4, 5, 3),
                                             (0.1, 4, 4), (0.5, 2, 1)])
def test_within_batch_shares_hold_the_ratio_in_every_optimizer_step(ratio, b, accum):
    shares = SampleShares(ratio, b, world_size=2)
    for step in range(200):  # optimizer steps of `accum` micro-steps
        counts = [shares.counts(k) for k in range(step * accum, (step + 1) * accum)]
        walking = sum(c[WALKING_TOURS] for c in counts)
        assert abs(walking - ratio * b * accum) <= 1.0 - 1e-9  # within one sample
        assert all(c[EGOEXO4D] >= 1 and c[EGOEXO4D] + c[WALKING_TOURS] == b for c in counts)
        if ratio * b * accum >= 1:
            assert walking >= 1  # both sources in every optimizer step


def test_within_batch_spans_tile_each_source_stream_over_ranks_and_steps():
    shares = SampleShares(0.4, 5, world_size=3)
    for source in (EGOEXO4D, WALKING_TOURS):
        read = []
        for k in range(50):
            for rank in range(3):
                start, count = shares.span(k, rank, source)
                read += range(start, start + count)
        assert read == list(range(len(read)))  # no gap, no overlap, in order
    order = EpochOrder(10, seed=0, source=EGOEXO4D, world_size=1, micro_batch_size=2)
    both = np.concatenate([order.permutation(0), order.permutation(1)])
    np.testing.assert_array_equal(order.positions(7, 6), both[7:13])  # runs into epoch 1


def test_within_batch_refuses_micro_batches_without_a_clip():
    with pytest.raises(ValueError, match="without an Ego-Exo4D clip"):
        SampleShares(0.75, 2)
    SampleShares(1.0, 2)  # all WalkingTours: nothing to keep

"""TrainSampler: epoch-seeded order, sharding over ranks, resuming mid-epoch, class balance, (index, epoch) keys."""
from __future__ import annotations

from collections import Counter

import pytest

from videoft.data.samplers import EpochKey, TrainSampler, epoch_key


def indices(sampler) -> list[int]:
    return [key.index for key in sampler]


def shards(labels, world_size, epoch=0, seed=0, **kw):
    out = []
    for rank in range(world_size):
        sampler = TrainSampler(labels, seed=seed, rank=rank, world_size=world_size, **kw)
        sampler.set_epoch(epoch)
        out.append(indices(sampler))
    return out


def test_keys_carry_the_epoch_set():
    sampler = TrainSampler(list(range(10)), seed=3)
    sampler.set_epoch(7)
    keys = list(sampler)
    assert all(isinstance(k, EpochKey) and k.epoch == 7 for k in keys)
    assert [k.index for k in keys] == shards(list(range(10)), 1, epoch=7, seed=3)[0]
    assert epoch_key(keys[0], 0) == keys[0] and epoch_key(5, 2) == EpochKey(5, 2)


def interleave(parts):
    return [x for group in zip(*parts) for x in group]


def test_one_process_order_is_a_permutation():
    (order,) = shards([0] * 20, 1)
    assert sorted(order) == list(range(20))
    assert order != list(range(20))  # shuffled


@pytest.mark.parametrize("epoch", [0, 3])
def test_two_ranks_split_the_one_process_order(epoch):
    labels = [i % 3 for i in range(24)]
    (single,) = shards(labels, 1, epoch)
    a, b = shards(labels, 2, epoch)
    assert len(a) == len(b) == 12
    assert not set(a) & set(b)  # disjoint
    assert set(a) | set(b) == set(range(24))
    assert interleave([a, b]) == single  # global batches are the same with 1 or 2 processes


def test_uneven_length_is_padded_from_the_start():
    (single,) = shards(list(range(7)), 1)
    a, b = shards(list(range(7)), 2)
    assert len(a) == len(b) == 4
    assert interleave([a, b]) == single + single[:1]
    assert len(TrainSampler(list(range(7)), rank=1, world_size=2)) == 4


def test_same_order_for_same_epoch_different_for_another():
    labels = list(range(50))
    assert shards(labels, 2, epoch=1) == shards(labels, 2, epoch=1)
    assert shards(labels, 2, epoch=1) != shards(labels, 2, epoch=2)
    assert shards(labels, 2, epoch=1, seed=5) != shards(labels, 2, epoch=1, seed=6)
    # the order depends on the epoch set, not on how many times the sampler was iterated
    sampler = TrainSampler(labels)
    sampler.set_epoch(4)
    assert indices(sampler) == indices(sampler) == shards(labels, 1, epoch=4)[0]


def test_set_epoch_start_skips_what_was_trained():
    labels = list(range(30))
    for rank in range(2):
        sampler = TrainSampler(labels, seed=1, rank=rank, world_size=2)
        sampler.set_epoch(2)
        full = indices(sampler)
        sampler.set_epoch(2, start=6)
        assert indices(sampler) == full[6:]
        assert len(sampler) == len(full) - 6 == 9
        sampler.set_epoch(2, start=20)  # resumed after the epoch's last step: nothing left, not a negative length
        assert len(sampler) == 0 and indices(sampler) == []
        sampler.set_epoch(3)  # a new epoch starts from the beginning again
        assert len(sampler) == len(list(sampler)) == 15


def test_balanced_draws_classes_uniformly():
    labels = [0] * 900 + [1] * 90 + [2] * 10
    counts = Counter()
    for epoch in range(3):
        (order,) = shards(labels, 1, epoch, balanced=True)
        assert len(order) == len(labels)
        counts.update(labels[i] for i in order)
    total = sum(counts.values())
    for c in range(3):
        assert 0.29 < counts[c] / total < 0.38, counts
    # the rare class is drawn with replacement; the unbalanced sampler keeps the data's proportions
    (plain,) = shards(labels, 1, 0)
    assert Counter(labels[i] for i in plain) == Counter(labels)


def test_balanced_shards_split_the_same_draws():
    labels = [0] * 40 + [1] * 4
    (single,) = shards(labels, 1, 2, balanced=True)
    assert interleave(shards(labels, 2, 2, balanced=True)) == single


@pytest.mark.parametrize("n,world", [(7, 2), (5, 3), (2, 4), (0, 2)])
def test_shard_sampler_takes_every_video_exactly_once(n, world):
    from videoft.data.samplers import ShardSampler

    shards = [list(ShardSampler(n, rank, world)) for rank in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))  # no padding, no repeats
    assert [len(ShardSampler(n, rank, world)) for rank in range(world)] == [len(s) for s in shards]

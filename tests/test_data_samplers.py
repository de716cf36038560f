"""Samplers: val/test shards cover a split exactly once over the processes (odd lengths included); the
training sampler is a seeded shuffle, the same permutation on every rank, reshuffled by set_epoch."""

from __future__ import annotations

from collections import Counter

import pytest

from seg_template.data.samplers import SeededIndex, SeededTrainSampler, ShardSampler


@pytest.mark.parametrize("length", [1, 5, 7])
@pytest.mark.parametrize("world", [2, 3])
def test_shards_hold_every_index_exactly_once(length: int, world: int) -> None:
    shards = [list(ShardSampler(length, num_replicas=world, rank=r)) for r in range(world)]
    counts = Counter(i for shard in shards for i in shard)
    assert sorted(counts) == list(range(length))
    assert set(counts.values()) == {1}
    assert [len(ShardSampler(length, world, r)) for r in range(world)] == [len(s) for s in shards]
    # shares differ by at most one sample (the tail is not padded)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_single_process_shard_is_the_whole_split_in_order() -> None:
    assert list(ShardSampler(5)) == [0, 1, 2, 3, 4]


def test_shard_rank_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="rank 2 of 2"):
        ShardSampler(5, num_replicas=2, rank=2)


def _order(sampler: SeededTrainSampler) -> list[int]:
    keys = list(sampler)
    assert all(isinstance(k, SeededIndex) and k.seed == sampler.seed and k.epoch == sampler.epoch for k in keys)
    return [k.index for k in keys]


def test_train_sampler_is_a_seeded_shuffle_reshuffled_per_epoch() -> None:
    data = range(50)
    first = _order(SeededTrainSampler(data, seed=3))
    assert sorted(first) == list(data) and first != list(data)
    assert _order(SeededTrainSampler(data, seed=3)) == first
    assert _order(SeededTrainSampler(data, seed=4)) != first
    sampler = SeededTrainSampler(data, seed=3)
    sampler.set_epoch(1)
    assert _order(sampler) != first


@pytest.mark.parametrize("length", [7, 8])
def test_train_ranks_share_one_permutation(length: int) -> None:
    """Under DDP every rank takes its slice of the same (seed, epoch) permutation: together they cover the
    split, each rank runs the same number of steps (padded with repeats), and a sample gets the same
    augmentation key whichever rank reads it."""
    data = range(length)
    whole = list(SeededTrainSampler(data, seed=5))
    ranks = [list(SeededTrainSampler(data, num_replicas=2, rank=r, seed=5)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == -(-length // 2)
    assert {k.index for keys in ranks for k in keys} == set(data)
    assert set(ranks[0]) | set(ranks[1]) == set(whole)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_training_loader_resumes_after_the_batches_taken(workers: int) -> None:
    """A fit restored after 2 of an epoch's 5 batches gets the other 3, in that epoch's order (Lightning ends
    the epoch after them): the batches an uninterrupted epoch would have given next, none twice."""
    from seg_template.data.datamodule import FirstBatchLoader

    class Indices:
        def __len__(self) -> int:
            return 10

        def __getitem__(self, key: SeededIndex) -> int:
            return key.index

    def epoch(taken: int) -> list[list[int]]:
        sampler = SeededTrainSampler(Indices(), seed=3)
        sampler.set_epoch(4)
        loader = FirstBatchLoader(Indices(), batch_size=2, sampler=sampler, num_workers=workers,
                                  taken=lambda: taken)
        return [batch.tolist() for batch in loader]

    whole = epoch(0)
    assert len(whole) == 5 and epoch(2) == whole[2:]
    loader = FirstBatchLoader(Indices(), batch_size=2, sampler=SeededTrainSampler(Indices(), seed=3))
    iterator = iter(loader)
    next(iterator), next(iterator)
    assert loader.state_dict() == {"epoch": 0, "batches": 2}  # what a checkpoint keeps

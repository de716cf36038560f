"""A fixed seed reproduces the training batches: shuffle and albumentations augmentation alike, with or
without loader workers and whatever the number of DDP processes; val/test are sharded without repeats."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from seg_template.data.datamodule import SegDataModule
from seg_template.data.samplers import ShardSampler
from seg_template.data.synthetic import CLASS_NAMES, SyntheticShapes
from seg_template.data.transforms import eval_transform, train_transform


def _dm(seed: int | None, num_workers: int = 0, **overrides) -> SegDataModule:
    kwargs = dict(
        train_set=functools.partial(SyntheticShapes, split="train", length=8, image_size=32),
        val_set=functools.partial(SyntheticShapes, split="val", length=7, image_size=32),
        # every random step on: scale, crop, flip, colour jitter
        train_transform=train_transform([24, 24], scale_range=(0.6, 1.6), color_jitter=0.3),
        val_transform=eval_transform(), num_classes=6, class_names=list(CLASS_NAMES), batch_size=4,
        num_workers=num_workers, seed=seed,
    )
    kwargs.update(overrides)
    return SegDataModule(**kwargs)


def _epoch(dm: SegDataModule, epoch: int = 0) -> list[dict]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)  # what Lightning does at the start of every epoch
    return list(loader)


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["name"] == y["name"] and torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_same_first_epoch_other_seed_differs(num_workers: int) -> None:
    first = _epoch(_dm(seed=7, num_workers=num_workers))
    assert len(first) == 2
    assert _same(first, _epoch(_dm(seed=7, num_workers=num_workers)))
    assert not _same(first, _epoch(_dm(seed=8, num_workers=num_workers)))


def test_workers_do_not_change_the_batches() -> None:
    """The augmentation is seeded per (seed, epoch, sample), not per worker process."""
    assert _same(_epoch(_dm(seed=7, num_workers=0)), _epoch(_dm(seed=7, num_workers=2, persistent_workers=True)))


def test_augmentation_differs_between_epochs_and_samples() -> None:
    dm = _dm(seed=7, train_set=functools.partial(SyntheticShapes, split="train", length=4, image_size=32))
    by_name = {}
    for epoch in range(4):
        for batch in _epoch(dm, epoch):
            for name, image in zip(batch["name"], batch["image"], strict=True):
                by_name.setdefault(name, []).append(image)
    # one sample over four epochs: four different augmentations
    for images in by_name.values():
        assert len(images) == 4
        assert not any(torch.equal(images[i], images[j]) for i in range(4) for j in range(i + 1, 4))


def test_seed_everything_seeds_the_datamodule(monkeypatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")  # what seed_everything(11) sets, in every DDP process
    assert _same(_epoch(_dm(seed=None)), _epoch(_dm(seed=11)))


def _attach(dm: SegDataModule, world: int, rank: int) -> SegDataModule:
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank,
                                 _accelerator_connector=SimpleNamespace(use_distributed_sampler=False))
    return dm


def test_ddp_ranks_split_the_epoch_with_the_single_process_augmentation() -> None:
    """Two processes see the same augmented samples as one process (the seed does not involve the rank)."""
    single = {name: image for batch in _epoch(_dm(seed=3, batch_size=2))
              for name, image in zip(batch["name"], batch["image"], strict=True)}
    ranks = [{name: image for batch in _epoch(_attach(_dm(seed=3, batch_size=2), 2, r))
              for name, image in zip(batch["name"], batch["image"], strict=True)} for r in range(2)]
    assert not ranks[0].keys() & ranks[1].keys()
    assert ranks[0].keys() | ranks[1].keys() == single.keys()
    for shard in ranks:
        assert all(torch.equal(image, single[name]) for name, image in shard.items())


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_eval_loaders_read_each_sample_once(world: int) -> None:
    names = []
    for rank in range(world):
        dm = _attach(_dm(seed=0, eval_batch_size=2), world, rank)
        loader = dm.val_dataloader()
        assert isinstance(loader.sampler, ShardSampler)
        names += [n for batch in loader for n in batch["name"]]
    assert sorted(names) == [f"val_{i:06d}" for i in range(7)]


def test_single_process_eval_loader_reads_the_split_in_order() -> None:
    names = [n for batch in _dm(seed=0).val_dataloader() for n in batch["name"]]
    assert names == [f"val_{i:06d}" for i in range(7)]


def test_eval_split_shorter_than_the_world_is_refused() -> None:
    dm = _attach(_dm(seed=0, val_set=functools.partial(SyntheticShapes, split="val", length=1, image_size=32)),
                 2, 1)
    with pytest.raises(ValueError, match=r"data.val_set has 1 sample\(s\), fewer than the 2 processes"):
        dm.val_dataloader()

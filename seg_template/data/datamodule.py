"""SegDataModule: builds the split datasets from Hydra partials and serves them through DataLoaders.

``batch_size`` is per device: under DDP each process loads ``batch_size`` images per step, so the global
batch is ``batch_size * world_size`` (Lightning adds the DistributedSampler itself). Validation and test
use ``eval_batch_size`` (default: ``batch_size``); datasets whose images differ in size (VOC, ADE20K) are
evaluated whole, so their configs set it to 1, as MMSegmentation does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from seg_template.data.base import SegmentationDataset

DatasetFactory = Callable[..., SegmentationDataset]


class SegDataModule(pl.LightningDataModule):
    """Datasets + loaders; ``num_classes``, ``ignore_index`` and ``class_names`` come from the data config.

    ``train_set`` / ``val_set`` / ``test_set`` are dataset factories (Hydra ``_partial_: true`` configs)
    called as ``factory(transform=..., ignore_index=...)``; ``test_set=None`` means no test split.
    Batches are ``{"image": float32[B, 3, H, W], "mask": int64[B, H, W], "name": list[str]}``.
    ``class_weights`` and ``root`` are read by the loss and dataset configs through interpolation
    (``${data.class_weights}``, ``${data.root}``); they live in the data node so each is set once.
    """

    def __init__(self, train_set: DatasetFactory, val_set: DatasetFactory, test_set: DatasetFactory | None = None,
                 train_transform: Callable[..., dict[str, Any]] | None = None,
                 val_transform: Callable[..., dict[str, Any]] | None = None, num_classes: int = 0,
                 ignore_index: int = 255, class_names: Sequence[str] = (),
                 class_weights: Sequence[float] | str | None = None, root: str | None = None, batch_size: int = 8,
                 num_workers: int = 0, pin_memory: bool = False, persistent_workers: bool = False,
                 eval_batch_size: int | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"data.num_classes must be >= 1, got {num_classes}")
        if class_names and len(class_names) != num_classes:
            raise ValueError(f"data.class_names has {len(class_names)} names but data.num_classes is {num_classes}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"data.eval_batch_size must be >= 1 (or null), got {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.factories = {"train": train_set, "val": val_set, "test": test_set}
        self.train_transform, self.val_transform = train_transform, val_transform
        self._num_classes, self._ignore_index = int(num_classes), int(ignore_index)
        self._class_names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
        self.batch_size, self.num_workers, self.pin_memory = int(batch_size), int(num_workers), bool(pin_memory)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        # persistent workers only exist when there are workers: DataLoader raises otherwise
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.datasets: dict[str, SegmentationDataset] = {}

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def ignore_index(self) -> int:
        return self._ignore_index

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def build(self, split: str) -> SegmentationDataset:
        """Instantiate ``data.<split>_set`` with its transform, checking it against the data config."""
        factory = self.factories.get(split)
        if factory is None:
            raise ValueError(f"data.{split}_set is null: this data config has no {split} split")
        if isinstance(factory, SegmentationDataset) or not callable(factory):
            raise TypeError(f"data.{split}_set is a {type(factory).__name__}, not a dataset factory: its config "
                            f"needs `_partial_: true` so that the DataModule can pass transform= and ignore_index=")
        transform = self.train_transform if split == "train" else self.val_transform
        try:
            dataset = factory(transform=transform, ignore_index=self._ignore_index)
        except TypeError as err:
            raise TypeError(f"data.{split}_set could not be built: {err}. Its class must accept transform= and "
                            f"ignore_index= keyword arguments") from err
        except Exception as err:
            # keep the dataset's own error type (tools and tests match on it); just say which split failed
            if hasattr(err, "add_note"):  # Python >= 3.11
                err.add_note(f"(while building data.{split}_set)")
            raise
        if not isinstance(dataset, SegmentationDataset):
            raise TypeError(f"data.{split}_set built a {type(dataset).__name__}, not a SegmentationDataset")
        if dataset.num_classes != self._num_classes:
            raise ValueError(f"data.{split}_set ({type(dataset).__name__}) has {dataset.num_classes} classes but "
                             f"data.num_classes is {self._num_classes}")
        if len(dataset) == 0:
            raise ValueError(f"data.{split}_set ({type(dataset).__name__}) is empty")
        return dataset

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}.get(
            stage or "", ("train", "val", "test"))
        for split in splits:
            if split == "test" and self.factories["test"] is None and stage != "test":
                continue  # a config without a test split is fine until someone tests
            if split not in self.datasets:
                self.datasets[split] = self.build(split)

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = self.datasets[split]
        if train and len(dataset) < self.batch_size:
            raise ValueError(f"data.train_set has {len(dataset)} samples, fewer than data.batch_size="
                             f"{self.batch_size}: with drop_last every epoch would be empty")
        return DataLoader(dataset, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train, drop_last=train,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

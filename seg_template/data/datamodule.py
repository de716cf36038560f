"""SegDataModule: builds the split datasets from Hydra partials and serves them through DataLoaders.

``batch_size`` is per device: under DDP each process loads ``batch_size`` images per step, so the global
batch is ``batch_size * world_size``. Validation and test use ``eval_batch_size`` (default: ``batch_size``);
datasets whose images differ in size (VOC, ADE20K) are evaluated whole, so their configs set it to 1, as
MMSegmentation does.

The DataModule picks its own samplers (``samplers.py``), so the trainer configs set
``use_distributed_sampler: false``: training draws a seeded shuffle whose augmentation depends only on
(seed, epoch, sample), and under DDP each process evaluates a disjoint share of val/test, every sample once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from seg_template.data.base import SegmentationDataset
from seg_template.data.preflight import preflight as run_preflight
from seg_template.data.samplers import SeededTrainSampler, ShardSampler
from seg_template.errors import ConfigError, DataError
from seg_template.jobs import is_global_zero
from seg_template.options import check_class_names, require

log = logging.getLogger(__name__)

DatasetFactory = Callable[..., SegmentationDataset]
SPLITS = ("train", "val", "test")


def _int_option(key: str, value: Any) -> int:
    """``value`` as an int, once ``data.<key>``'s rule (seg_template/options.py) accepts it."""
    return int(require(f"data.{key}", value))


class FirstBatchLoader(DataLoader):
    """The training loader: a DataLoader whose iteration starts at the first batch asked for, and that resumes
    in the middle of an epoch.

    - Lightning calls ``iter()`` on the training loader when it sets the fit up, before it calls
      ``sampler.set_epoch``: a resumed fit's first epoch would then draw, with loader workers, the order of
      epoch 0. Here the workers' prefetching from the sampler starts at the first ``next()``.
    - A fit restored from a mid-epoch checkpoint (a stop signal, SLURM's time-limit requeue) continues the
      epoch after the ``k`` batches its checkpoint had taken, and Lightning ends the epoch after the other
      ``n - k``; without more it would take them from the start of the epoch's order again (the first ``n - k``
      batches, some twice, the last ``k`` never). ``taken()`` says how many batches of the current epoch
      the training loop took before the first ``next()`` (``k`` after a restore, else 0), and the sampler
      skips them (:class:`SeededTrainSampler`'s ``skip``): the run trains exactly as one never stopped.
    - ``state_dict`` / ``load_state_dict`` make the loader "resumable" to Lightning (no warning that the
      resumed epoch is unreliable). The position itself comes from the loop's restored progress: Lightning
      hands the loader its saved state only when the loader was built after the checkpoint was read, and
      the poly schedule (``trainer.estimated_stepping_batches``) builds it before.
    """

    def __init__(self, *args: Any, taken: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._taken_before = taken or (lambda: 0)
        self._taken = 0  # batches of the current epoch handed out

    def __iter__(self) -> Iterator[Any]:
        return _StartsAtFirstNext(self._epoch)

    def _epoch(self) -> Iterator[Any]:
        skip = max(0, min(int(self._taken_before()), len(self)))
        if skip and hasattr(self.sampler, "skip"):
            self.sampler.skip = skip * int(self.batch_size or 1)
        self._taken = skip
        for batch in DataLoader.__iter__(self):
            self._taken += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "batches": k}``: the training loop took ``k`` batches of epoch ``e`` (kept in each
        checkpoint, for whoever reads it)."""
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches": int(self._taken)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to restore: the next epoch's start asks ``taken()`` (see the class docstring)."""


class _StartsAtFirstNext:
    def __init__(self, start: Callable[[], Iterator[Any]]) -> None:
        self._start, self._iterator = start, None

    def __iter__(self) -> _StartsAtFirstNext:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._start()
        return next(self._iterator)


class SegDataModule(pl.LightningDataModule):
    """Datasets + loaders; ``num_classes``, ``ignore_index`` and ``class_names`` come from the data config.

    ``train_set`` / ``val_set`` / ``test_set`` are dataset factories (Hydra ``_partial_: true`` configs)
    called as ``factory(transform=..., ignore_index=...)``; ``test_set=None`` means no test split.
    Batches are ``{"image": float32[B, 3, H, W], "mask": int64[B, H, W], "name": list[str]}``.
    ``class_weights``, ``ohem_min_kept``, ``imagenet_pretrained`` and ``root`` are read by the loss, model and
    dataset configs through interpolation (``${data.class_weights}``...): they depend on the dataset, so they
    live in the data node, each set once; the DataModule itself does not use them. Any other key of the data
    node is a dataset's own option (``**dataset_options``, e.g. ``csv: ???`` read by the split configs as
    ``csv: ${data.csv}``): accepted, kept in ``dataset_options`` and otherwise left to the datasets, so a new
    dataset needs no DataModule of its own (docs/extending.md).
    ``seed`` seeds the training shuffle and augmentation (None: the seed given to ``seed_everything``).
    ``preflight``: how much of each split ``preflight()`` reads before fitting (``sample``/``full``/``none``).
    """

    #: the option check (seg_template/option_keys.py) takes as ``**dataset_options`` only the keys a data config
    #: file writes: ``+data.batchsize=4`` typed alone is a typo named with the closest key, not a dataset option
    extra_keys_from_config_files = True

    def __init__(self, train_set: DatasetFactory, val_set: DatasetFactory, test_set: DatasetFactory | None = None,
                 train_transform: Callable[..., dict[str, Any]] | None = None,
                 val_transform: Callable[..., dict[str, Any]] | None = None, num_classes: int = 0,
                 ignore_index: int = 255, class_names: Sequence[str] = (),
                 class_weights: Sequence[float] | str | None = None, root: str | None = None, batch_size: int = 8,
                 num_workers: int = 0, pin_memory: bool = False, persistent_workers: bool = False,
                 eval_batch_size: int | None = None, seed: int | None = None, preflight: str = "sample",
                 ohem_min_kept: int | None = None, imagenet_pretrained: bool | None = None,
                 **dataset_options: Any) -> None:
        super().__init__()
        num_classes = _int_option("num_classes", num_classes)
        if class_names and len(class_names) != num_classes:
            raise ConfigError(f"data.class_names has {len(class_names)} names but data.num_classes is {num_classes}")
        check_class_names(class_names or None)  # two classes of one name would share one metrics column
        require("data.preflight", preflight)
        self.factories = {"train": train_set, "val": val_set, "test": test_set}
        self.train_transform, self.val_transform = train_transform, val_transform
        self._num_classes, self._ignore_index = num_classes, int(ignore_index)
        self._class_names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
        self._names_given, self._names_said = bool(class_names), False
        self.batch_size = _int_option("batch_size", batch_size)
        self.eval_batch_size = self.batch_size if eval_batch_size is None else _int_option(
            "eval_batch_size", eval_batch_size)
        self.num_workers = _int_option("num_workers", num_workers)
        self.seed = None if seed is None else _int_option("seed", seed)
        # pinned memory only speeds copies to an accelerator; without one, DataLoader warns on every run
        self.pin_memory, self.preflight_mode = bool(pin_memory) and torch.accelerator.is_available(), preflight
        # persistent workers only exist when there are workers: DataLoader raises otherwise
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.datasets: dict[str, SegmentationDataset] = {}
        self.dataset_options = dict(dataset_options)

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
            raise ConfigError(f"data.{split}_set is null: this data config has no {split} split")
        if isinstance(factory, SegmentationDataset) or not callable(factory):
            raise ConfigError(f"data.{split}_set is a {type(factory).__name__}, not a dataset factory: its config "
                              f"needs `_partial_: true` so that the DataModule can pass transform= and ignore_index=")
        transform = self.train_transform if split == "train" else self.val_transform
        try:
            dataset = factory(transform=transform, ignore_index=self._ignore_index)
        except TypeError as err:
            about_keywords = "transform" in str(err) or "ignore_index" in str(err)
            raise ConfigError(f"data.{split}_set could not be built: {err}" + (
                ". Its class must accept transform= and ignore_index= keyword arguments" if about_keywords else
                f" (a value of data.{split}_set of the wrong kind, or an argument its class needs that the "
                f"config does not give)")) from err
        except Exception as err:
            # keep the dataset's own error type (tools and tests match on it); just say which split failed
            if hasattr(err, "add_note"):  # Python >= 3.11
                err.add_note(f"(while building data.{split}_set)")
            raise
        if not isinstance(dataset, SegmentationDataset):
            raise ConfigError(f"data.{split}_set built a {type(dataset).__name__}, not a SegmentationDataset")
        if dataset.num_classes != self._num_classes:
            raise ConfigError(f"data.{split}_set ({type(dataset).__name__}) has {dataset.num_classes} classes but "
                              f"data.num_classes is {self._num_classes}")
        if len(dataset) == 0:
            raise DataError(f"data.{split}_set ({type(dataset).__name__}) is empty")
        if is_global_zero():
            self._compare_names(split, dataset)
            for line in getattr(dataset, "left_out", ()):  # files the listing did not take: said, not hidden
                log.warning("data.%s_set: %s", split, line)
        return dataset

    def _compare_names(self, split: str, dataset: SegmentationDataset) -> None:
        """Warn when ``data.class_names`` (what the tables, checkpoints and predict's legends call the classes)
        differ from the names the dataset gives its own classes: a name written for another class order."""
        own = tuple(str(n) for n in dataset.class_names)
        given = self._class_names
        if not self._names_given or own == given or self._names_said:
            return
        self._names_said = True  # once, not once per split
        k = next(i for i, (a, b) in enumerate(zip(own, given, strict=True)) if a != b)
        reordered = sorted(own) == sorted(given)
        log.warning("data.class_names[%d] is %r, but data.%s_set (%s) calls class %d %r%s: the metric tables and "
                    "checkpoints use data.class_names%s", k, given[k], split, type(dataset).__name__, k, own[k],
                    " (the same names in another order)" if reordered else "",
                    ": write them in the dataset's class order" if reordered else " (fine for a deliberate rename)")

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}.get(
            stage or "", SPLITS)
        for split in splits:
            if split == "test" and self.factories["test"] is None and stage != "test":
                continue  # a config without a test split is fine until someone tests
            if split not in self.datasets:
                self.datasets[split] = self.build(split)

    def preflight(self, splits: Sequence[str] | None = None) -> None:
        """Read a sample of each split (``data.preflight=sample``), all of it (``full``) or nothing (``none``)
        and raise ``DataError`` naming split, file and cause on unreadable or unpaired files, image/mask size
        mismatches, labels out of range, or masks without a single labelled pixel. Call before fitting.

        ``splits``: default every split the config defines. Builds the datasets (kept for training).
        """
        if self.preflight_mode == "none" or not is_global_zero():
            # Lightning's DDP launcher re-runs the script for ranks >= 1 (SLURM starts every rank) after rank 0 has
            # checked the same files: reading them again would only cost time
            return
        splits = [s for s in SPLITS if self.factories[s] is not None] if splits is None else list(splits)
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = self.build(split)
        run_preflight({s: self.datasets[s] for s in splits}, self.preflight_mode, self.num_workers)

    # ---- loaders --------------------------------------------------------------------------------------------

    def _world(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` of the attached trainer; ``(1, 0)`` when there is none or when
        Lightning will shard the loaders itself (``trainer.use_distributed_sampler=true``)."""
        trainer = getattr(self, "trainer", None)
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        if world > 1 and getattr(getattr(trainer, "_accelerator_connector", None), "use_distributed_sampler", False):
            log.warning("trainer.use_distributed_sampler=true: Lightning pads val/test with repeated samples under "
                        "DDP, so metrics are not exact; the trainer configs set it to false")
            return 1, 0
        return world, int(trainer.global_rank) if world > 1 else 0

    def _train_seed(self, world: int) -> int:
        if self.seed is not None:
            return self.seed
        if "PL_GLOBAL_SEED" in os.environ:  # set by seed_everything (train.py's `seed`), same in every process
            return int(os.environ["PL_GLOBAL_SEED"])
        # unseeded: a fresh seed per run; under DDP every rank must draw the same permutation, hence 0
        return 0 if world > 1 else int(torch.randint(0, 2**31 - 1, ()).item())

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = self.datasets[split]
        world, rank = self._world()
        sampler: Sampler | None = None
        if train:
            sampler = SeededTrainSampler(dataset, num_replicas=world, rank=rank, seed=self._train_seed(world))
            if len(sampler) < self.batch_size:
                share = f" ({len(sampler)} per process of {world})" if world > 1 else ""
                raise ConfigError(f"data.train_set has {len(dataset)} samples{share}, fewer than data.batch_size="
                                  f"{self.batch_size}: with drop_last every epoch would be empty")
        elif world > 1:
            if len(dataset) < world:
                # a process without a single batch skips evaluation and never joins the metric reduction
                raise ConfigError(f"data.{split}_set has {len(dataset)} sample(s), fewer than the {world} processes: "
                                  "each process needs at least one (use fewer devices for this split)")
            sampler = ShardSampler(len(dataset), num_replicas=world, rank=rank)
        options = {"batch_size": self.batch_size if train else self.eval_batch_size, "sampler": sampler,
                   "drop_last": train, "num_workers": self.num_workers, "pin_memory": self.pin_memory,
                   "persistent_workers": self.persistent_workers}
        if train:
            return FirstBatchLoader(dataset, taken=self._batches_taken, **options)
        return DataLoader(dataset, **options)

    def _batches_taken(self) -> int:
        """How many batches of the current epoch the training loop took before this point (its restored
        progress: non-zero only when a fit resumed from a mid-epoch checkpoint starts that epoch)."""
        trainer = getattr(self, "trainer", None)
        loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
        if loop is None or not getattr(trainer, "training", False):  # a loader used outside Lightning's fit
            return 0
        return int(loop.batch_progress.current.ready)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

"""Checkpoints: last.ckpt is the latest epoch, writes are atomic, files are read without running code,
bad files are named, and a diverged run stops without saving non-finite weights."""

from __future__ import annotations

import errno
import os
import pickle
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from seg_template.callbacks.checkpoint import (
    AtomicCheckpointIO,
    BestAndLastCheckpoint,
    atomic_save,
    check_resume_checkpoint,
    remove_partial_files,
)
from seg_template.callbacks.nan_guard import NaNGuard
from seg_template.errors import CheckpointError, ConfigError, TrainingDiverged
from seg_template.models.weights import load_net_weights, load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


class Tiny(pl.LightningModule):
    """A linear layer on random numbers: 4 steps per epoch; ``scores[epoch]`` is logged as val/mIoU.

    ``nan_from``: the loss is NaN from that step on; ``nan_grad_from``: the loss stays finite but its
    gradients are NaN; ``poison_epoch``: the weights turn NaN at the end of that epoch; ``hook(module)``
    runs at the start of every training step."""

    def __init__(self, scores=(0.5, 0.4, 0.3), nan_from=None, nan_grad_from=None, poison_epoch=None, hook=None,
                 batches=4):
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.scores, self.nan_from, self.nan_grad_from = scores, nan_from, nan_grad_from
        self.poison_epoch, self.hook, self.batches = poison_epoch, hook, batches

    def training_step(self, batch, batch_idx):
        if self.hook is not None:
            self.hook(self)
        loss = self.layer(batch[0]).pow(2).mean()
        if self.nan_from is not None and self.global_step >= self.nan_from:
            loss = loss * float("nan")
        if self.nan_grad_from is not None and self.global_step >= self.nan_grad_from:
            # where() picks the finite branch, but the gradient of the other one is 0 * inf = NaN
            hidden = torch.sqrt(-self.layer.weight.abs().sum() - 1)
            loss = torch.where(torch.tensor(True), loss, hidden)
        return loss

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.log("val/mIoU", float(self.scores[min(self.current_epoch, len(self.scores) - 1)]))

    def on_train_epoch_end(self):
        if self.current_epoch == self.poison_epoch:
            with torch.no_grad():
                self.layer.weight.fill_(float("nan"))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(2 * self.batches, 2)), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(2, 2)), batch_size=2)


def fit(module, callbacks, tmp_path: Path, max_epochs: int = 3) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, default_root_dir=tmp_path, logger=False,
                         accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(module)
    return trainer


@pytest.fixture
def callbacks(compose_tmp):
    """``callbacks(*overrides)``: the checkpoint and NaN-guard callbacks of the real callbacks config."""

    def _callbacks(*overrides: str) -> list[pl.Callback]:
        cfg = compose_tmp(*overrides).callbacks
        return [instantiate(cfg.model_checkpoint), instantiate(cfg.nan_guard)]

    return _callbacks


def read(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_config_builds_our_callbacks(callbacks, tmp_path):
    checkpoint, guard = callbacks()
    assert isinstance(checkpoint, BestAndLastCheckpoint) and isinstance(guard, NaNGuard)
    assert checkpoint.dirpath == str(tmp_path / "checkpoints") and guard.patience == 3


def test_last_is_the_latest_epoch_when_the_metric_does_not_improve(callbacks, tmp_path):
    trainer = fit(Tiny(scores=(0.5, 0.4, 0.3)), callbacks(), tmp_path)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]
    best, last = read(folder / "best.ckpt"), read(folder / "last.ckpt")
    assert (best["epoch"], best["global_step"]) == (0, 4)
    assert (last["epoch"], last["global_step"]) == (2, 12)  # Lightning 2.6 alone leaves it at epoch 0
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert check_resume_checkpoint(folder / "last.ckpt", trainer.lightning_module) == {"epoch": 2, "global_step": 12}


def test_every_n_train_steps_rewrites_last_within_an_epoch(callbacks, tmp_path):
    def crash(module):
        if module.global_step == 5:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(Tiny(hook=crash, batches=8), callbacks("callbacks.model_checkpoint.every_n_train_steps=2"), tmp_path)
    assert read(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_a_step_write_does_not_hide_the_best_checkpoint_of_that_step(callbacks, tmp_path):
    # the last step of each epoch writes last.ckpt just before validation judges best.ckpt at that step
    fit(Tiny(scores=(0.1, 0.2)), callbacks("callbacks.model_checkpoint.every_n_train_steps=4"), tmp_path, 2)
    assert read(tmp_path / "checkpoints" / "best.ckpt")["global_step"] == 8


def test_atomic_save_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_save({"epoch": 1}, path)
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no partial file left behind


def test_failed_save_during_training_keeps_the_previous_checkpoint(callbacks, tmp_path, monkeypatch):
    real_save = torch.save

    def fail_from_epoch_1(module):
        if module.current_epoch == 1:
            def interrupted(obj, f, *args, **kwargs):
                real_save(obj, f, *args, **kwargs)
                raise KeyboardInterrupt  # e.g. killed after the data, before the rename

            monkeypatch.setattr(torch, "save", interrupted)

    with pytest.raises((KeyboardInterrupt, SystemExit)):
        fit(Tiny(scores=(0.1, 0.2), hook=fail_from_epoch_1), callbacks(), tmp_path)
    monkeypatch.undo()
    folder = tmp_path / "checkpoints"
    assert sorted(os.listdir(folder)) == ["best.ckpt", "last.ckpt"]
    assert read(folder / "last.ckpt")["epoch"] == 0 and read(folder / "best.ckpt")["epoch"] == 0


def test_partial_files_of_a_killed_save_are_removed(tmp_path):
    (tmp_path / ".last.ckpt.123.abcd.partial").write_bytes(b"x")
    (tmp_path / "last.ckpt").write_bytes(b"y")
    assert [p.name for p in remove_partial_files(tmp_path)] == [".last.ckpt.123.abcd.partial"]
    assert os.listdir(tmp_path) == ["last.ckpt"]


class RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


LOADERS = {
    "eval/predict": lambda path: load_net_weights(nn.Linear(2, 1), path),
    "model.pretrained": lambda path: load_pretrained(nn.Linear(2, 1), path),
    "resume": check_resume_checkpoint,
    "Lightning": lambda path: AtomicCheckpointIO().load_checkpoint(path),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("container", ["torch.save", "pickle", "pickle_protocol_0"])
def test_crafted_pickle_is_refused_without_running_it(tmp_path, loader, container):
    marker = tmp_path / "command_ran"
    path = tmp_path / "crafted.ckpt"
    payload = {"state_dict": {"weight": torch.zeros(1, 2)}, "epoch": RunsACommand(marker)}
    if container == "torch.save":
        torch.save(payload, path)
    else:  # protocol 0 is plain text
        path.write_bytes(pickle.dumps(RunsACommand(marker) if container.endswith("0") else payload,
                                      protocol=0 if container.endswith("0") else None))
    with pytest.raises(CheckpointError, match="run code") as err:
        LOADERS[loader](path)
    assert str(path) in str(err.value)
    if container != "pickle":  # a binary hand-made pickle is refused at its first unusual opcode, unnamed
        assert "posix.system" in str(err.value)
    assert not marker.exists()


def write_bad_file(path: Path, kind: str) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("epoch: 3\nthis is not a checkpoint\n")
    elif kind == "garbage":  # a first byte that the unpickler takes for an opcode
        path.write_text("garbage\n")
    else:
        torch.save({"state_dict": {"weight": torch.zeros(100, 100)}}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if kind == "truncated" else data[:12])


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("kind", ["empty", "text", "garbage", "truncated", "header_only"])
def test_unreadable_files_are_named(tmp_path, loader, kind):
    path = tmp_path / f"{kind}.ckpt"
    write_bad_file(path, kind)
    with pytest.raises(CheckpointError) as err:
        LOADERS[loader](path)
    assert str(path) in str(err.value) and "run code" not in str(err.value)


def test_resume_needs_a_training_checkpoint_that_fits(callbacks, tmp_path):
    weights = tmp_path / "weights.pth"
    torch.save(nn.Linear(2, 1).state_dict(), weights)
    with pytest.raises(CheckpointError, match="not a Lightning training checkpoint.*model.pretrained"):
        check_resume_checkpoint(weights)

    trainer = fit(Tiny(), callbacks(), tmp_path / "run", max_epochs=1)
    last = trainer.checkpoint_callback.last_model_path
    other = Tiny()
    other.layer = nn.Linear(3, 1)
    with pytest.raises(CheckpointError, match=r"layer.weight \(checkpoint \[1, 2\], model \[1, 3\]\)") as err:
        check_resume_checkpoint(last, other)
    assert last in str(err.value)


def test_nan_guard_skips_bad_updates_and_stops_after_patience(callbacks, tmp_path):
    module = Tiny(nan_from=4)  # epoch 0 is clean; epoch 1 is NaN from its first step
    snapshot = {}

    def remember(m):
        if m.global_step == 4:
            snapshot.update({k: v.clone() for k, v in m.state_dict().items()})

    module.hook = remember
    with pytest.raises(TrainingDiverged) as err:
        fit(module, callbacks(), tmp_path)
    message = str(err.value)
    assert "3 training steps in a row" in message and "epoch 1, step 5" in message and "step 7" in message
    assert "optimizer.lr (now 0.01)" in message
    for name, value in module.state_dict().items():  # the bad updates were skipped
        assert torch.equal(value, snapshot[name]), name
    folder = tmp_path / "checkpoints"
    assert read(folder / "last.ckpt")["epoch"] == 0
    for path in folder.iterdir():
        assert all(torch.isfinite(t).all() for t in read(path)["state_dict"].values()), path


def test_nan_gradients_behind_a_finite_loss_count_as_bad(callbacks, tmp_path):
    module = Tiny(nan_grad_from=1)
    with pytest.raises(TrainingDiverged, match="non-finite gradients"):
        fit(module, callbacks("callbacks.nan_guard.patience=2"), tmp_path)
    assert torch.isfinite(module.layer.weight).all()


def test_non_finite_weights_are_never_written(callbacks, tmp_path):
    with pytest.raises(TrainingDiverged, match="weights hold NaN or inf .layer.weight., so .*best.ckpt was not written"):
        fit(Tiny(scores=(0.1, 0.2, 0.3), poison_epoch=1), callbacks(), tmp_path)
    folder = tmp_path / "checkpoints"
    assert read(folder / "last.ckpt")["epoch"] == 0
    for path in folder.iterdir():
        assert all(torch.isfinite(t).all() for t in read(path)["state_dict"].values()), path


TINY = ["data.train_set.length=8", "data.val_set.length=4", "data.test_set.length=4",
        "data.train_set.image_size=[32,32]", "data.batch_size=4", "model.width=4", "callbacks.rich_progress_bar=null",
        "callbacks.rich_model_summary=null", "trainer.max_epochs=2", "test=false"]


def test_a_real_training_run_writes_safe_resumable_checkpoints(compose_tmp, tmp_path):
    from seg_template.models.small import small_segnet
    from seg_template.train import train

    _, objects = train(compose_tmp(*TINY))
    folder = tmp_path / "checkpoints"
    assert sorted(os.listdir(folder)) == ["best.ckpt", "last.ckpt"]
    assert check_resume_checkpoint(folder / "last.ckpt", objects["module"]) == {"epoch": 1, "global_step": 4}
    net = small_segnet(6, width=4)
    load_net_weights(net, folder / "best.ckpt")
    with pytest.raises(CheckpointError, match=r"num_classes=6.*Pass the model= / data= options"):
        load_net_weights(small_segnet(5, width=4), folder / "best.ckpt")


# ---------------------------------------------------------------- run folders moved or copied, then resumed
def checkpoint_callbacks(compose_cfg, folder: Path) -> list[pl.Callback]:
    cfg = compose_cfg(overrides=[], output_dir=folder).callbacks
    return [instantiate(cfg.model_checkpoint), instantiate(cfg.nan_guard)]


def resume(module, callbacks, folder: Path, max_epochs: int) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, default_root_dir=folder, logger=False,
                         accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(module, ckpt_path=folder / "checkpoints" / "last.ckpt")
    return trainer


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_moved_or_copied_run_keeps_best_and_last_in_place(compose_cfg, tmp_path, how):
    import shutil

    scores = (0.5, 0.4, 0.3, 0.45)  # the best is epoch 0; the resumed epochs 2 and 3 are worse
    first, second = tmp_path / "first", tmp_path / "second"
    fit(Tiny(scores=scores), checkpoint_callbacks(compose_cfg, first), first, max_epochs=2)
    (shutil.move if how == "moved" else shutil.copytree)(first, second)
    before = {p.name: p.read_bytes() for p in (first / "checkpoints").iterdir()} if how == "copied" else {}
    trainer = resume(Tiny(scores=scores), checkpoint_callbacks(compose_cfg, second), second, max_epochs=4)
    folder = second / "checkpoints"
    assert sorted(os.listdir(folder)) == ["best.ckpt", "last.ckpt"]  # Lightning alone: best-v1, last-v1 too
    assert read(folder / "last.ckpt")["epoch"] == 3
    assert read(folder / "best.ckpt")["epoch"] == 0  # the old best score was kept: 0.3 and 0.45 are worse
    callback = trainer.checkpoint_callback
    assert callback.best_model_path == str(folder / "best.ckpt") and float(callback.best_model_score) == 0.5
    if how == "copied":  # the original folder is left alone
        assert {p.name: p.read_bytes() for p in (first / "checkpoints").iterdir()} == before


def test_a_resumed_run_without_its_best_file_writes_a_new_one(compose_cfg, tmp_path, caplog):
    first, second = tmp_path / "first", tmp_path / "second"
    fit(Tiny(scores=(0.5, 0.4, 0.3)), checkpoint_callbacks(compose_cfg, first), first, max_epochs=2)
    (second / "checkpoints").mkdir(parents=True)
    (first / "checkpoints" / "last.ckpt").rename(second / "checkpoints" / "last.ckpt")
    with caplog.at_level("WARNING"):
        trainer = resume(Tiny(scores=(0.5, 0.4, 0.3)), checkpoint_callbacks(compose_cfg, second), second, 3)
    assert "best.ckpt of the resumed run is not in" in caplog.text and "writes a new best checkpoint" in caplog.text
    assert read(second / "checkpoints" / "best.ckpt")["epoch"] == 2
    assert trainer.checkpoint_callback.best_model_path == str(second / "checkpoints" / "best.ckpt")


def test_relocated_state_maps_paths_to_this_folder(tmp_path):
    from seg_template.callbacks.checkpoint import relocated_state

    (tmp_path / "best.ckpt").write_bytes(b"x")
    (tmp_path / "last.ckpt").write_bytes(b"x")
    score = torch.tensor(0.7)
    state = {"dirpath": "/old/run/checkpoints", "best_model_path": "/old/run/checkpoints/best.ckpt",
             "best_model_score": score, "kth_best_model_path": "/old/run/checkpoints/best.ckpt", "kth_value": score,
             "last_model_path": "/old/run/checkpoints/last.ckpt",
             "best_k_models": {"/old/run/checkpoints/best.ckpt": score}}
    out, notes = relocated_state(state, str(tmp_path))
    assert out["dirpath"] == str(tmp_path) and not notes
    assert out["best_model_path"] == out["kth_best_model_path"] == str(tmp_path / "best.ckpt")
    assert out["last_model_path"] == str(tmp_path / "last.ckpt") and out["best_model_score"] is score
    assert out["best_k_models"] == {str(tmp_path / "best.ckpt"): score}
    (tmp_path / "best.ckpt").unlink()
    out, notes = relocated_state(state, str(tmp_path))
    assert out["best_k_models"] == {} and out["best_model_score"] is None and out["best_model_path"] == ""
    assert "kth_value" not in out and "best.ckpt of the resumed run is not in" in notes[0]


@pytest.mark.parametrize(("override", "culprit"), [
    ("+callbacks.model_checkpoint.enable_version_counter=true", r"enable_version_counter=true would write best-v1"),
    ("callbacks.model_checkpoint.save_top_k=3", r"save_top_k=3 keeps several checkpoints, but filename='best'"),
])
def test_versioned_or_clashing_checkpoint_names_are_refused(callbacks, override, culprit):
    from seg_template.cli import find_user_error

    with pytest.raises(Exception) as err:  # noqa: B017 - Hydra's instantiate wraps it
        callbacks(override)
    found = find_user_error(err.value)
    assert isinstance(found, ConfigError) and re.search(culprit, str(found)), err.value


def test_top_k_with_a_templated_name_is_accepted(callbacks):
    checkpoint, _ = callbacks("callbacks.model_checkpoint.save_top_k=3",
                              "callbacks.model_checkpoint.filename='best-{epoch:03d}'")
    assert checkpoint.save_top_k == 3 and not checkpoint._enable_version_counter


def test_resuming_in_place_does_not_warn_about_its_own_checkpoints(tmp_path, recwarn) -> None:
    """Lightning's "Checkpoint directory ... exists and is not empty" at every resume in place would teach users
    to ignore it; it stays for files that are not this callback's own."""
    from lightning_fabric.utilities.cloud_io import get_filesystem

    callback = BestAndLastCheckpoint(dirpath=str(tmp_path), filename="best", monitor="val/mIoU", mode="max",
                                     save_last=True)
    callback._fs = get_filesystem(str(tmp_path))
    for name in ("best.ckpt", "last.ckpt", ".last.ckpt.1.ab.partial"):
        (tmp_path / name).write_bytes(b"x")
    callback._ModelCheckpoint__warn_if_dir_not_empty(str(tmp_path))
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]
    (tmp_path / "epoch=3.ckpt").write_bytes(b"x")
    with pytest.warns(UserWarning, match="exists and is not empty"):
        callback._ModelCheckpoint__warn_if_dir_not_empty(str(tmp_path))

"""SegmentationModule: model + loss + confusion-matrix metrics + optimiser/scheduler from config.

Logs ``train/loss`` (the total), ``train/loss/<term>`` for each loss term (``train/loss/ce``; a sum such as
``loss=ce_dice`` logs each of its terms) and ``train/loss/aux`` for models with an auxiliary head, then
``val/loss``, ``val/mIoU``, ``val/aAcc`` and ``val/IoU/<class>`` (``test/...`` likewise). Metrics come from a
torchmetrics confusion matrix, which sums itself across processes under DDP before the scores are computed,
so every rank logs the same global mIoU. Logits holding NaN or inf are never scored: their argmax is
class 0, a made-up score that could become ``best.ckpt``; the stage stops instead (``_refuse_nonfinite_logits``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from seg_template import resume
from seg_template.callbacks.cadence import at_logging_step
from seg_template.callbacks.ema import resume_raw_weights
from seg_template.errors import CheckpointError, ConfigError, TrainingDiverged
from seg_template.inference.whole import finite_flag
from seg_template.losses.rules import LabelRange, deferred_label_checks
from seg_template.metrics import format_table, segmentation_scores
from seg_template.models.outputs import canonical_outputs, logits_at, main_logits
from seg_template.optim import NO_DECAY_KINDS, param_groups

log = logging.getLogger(__name__)


@rank_zero_only
def print_table(text: str) -> None:
    """Log on global rank 0 only (under DDP every rank holds the same, already reduced scores): the console
    shows it, and the run's log file keeps it."""
    log.info("%s", text.rstrip())


class SegmentationModule(pl.LightningModule):
    """``net(images[N, 3, H, W]) -> logits[N, C, h, w]`` (or ``{"out", "aux"}``, or any form of the model-output
    contract: seg_template/models/outputs.py), trained with ``loss``, which receives the canonical form.

    ``optimizer`` is a partial taking the parameter groups; ``scheduler`` (or None) a partial taking the
    optimiser and ``total_steps``; it is stepped every optimisation step. ``torch.compile`` is the model
    config's job (``model.compile=true``), so the module never wraps ``net``.
    """

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: Callable[..., Optimizer] | None = None,
                 scheduler: Callable[..., Any] | None = None, num_classes: int = 0, ignore_index: int = 255,
                 class_names: Sequence[str] = (), align_corners: bool = False, channels_last: bool = False,
                 no_weight_decay: Sequence[str] = NO_DECAY_KINDS) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"SegmentationModule needs num_classes >= 1 (data.num_classes), got {num_classes}")
        if class_names and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names (data.class_names) for {num_classes} classes")
        # the net and loss are modules (saved in the state dict); the partials are not picklable hparams
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"])
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.class_names = tuple(class_names) or tuple(str(i) for i in range(num_classes))
        # the model's upsampling convention (model.align_corners), the same one the loss and inference use
        self.align_corners = bool(align_corners)
        # model.channels_last: the net's weights are NHWC (build_net); its images are made so too
        self.channels_last = bool(channels_last)
        # optimizer.no_weight_decay: the parameter kinds the optimiser does not decay (optim.param_groups)
        self.no_weight_decay = tuple(no_weight_decay)
        # One confusion matrix per evaluation stage; every score is derived from it (metrics.py), so a new
        # metric is one line in segmentation_scores. validate_args=False: the loss range-checked the labels,
        # and torchmetrics' check costs a device sync.
        self.confmats = nn.ModuleDict({stage: MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index,
                                                                       validate_args=False)
                                       for stage in ("val", "test")})
        # The evaluation loss, a mean over all images weighted by batch size, summed across processes by
        # torchmetrics: Lightning's sync_dist mean is off under DDP when the split does not divide evenly over
        # the processes (it rounds the per-process batch count down). nan_strategy="disable": a NaN loss stays
        # NaN, and no device sync checks for one.
        self.eval_losses = nn.ModuleDict({stage: MeanMetric(nan_strategy="disable") for stage in ("val", "test")})
        # the training recipe (seg_template/recipe.py), written into every checkpoint when set (train.py)
        self.recipe: dict[str, Any] | None = None
        self.last_val: dict[str, Any] | None = None
        self.last_confmat: dict[str, Tensor] = {}  # the latest computed matrix per stage, for the reports callback
        self.best_val: dict[str, Any] | None = None
        self._checked_output = False
        # resuming (seg_template/resume.py): the options as configured, the schedule's length, the checkpoint's
        self._configured_groups: list[dict[str, Any]] = []
        self._total_steps: int | None = None
        self._resumed: dict[str, Any] | None = None
        #: ``(checkpoint file, step, optimiser / scheduler options changed)`` of a resumed fit, set when training
        #: starts: what a divergence soon after is blamed on (callbacks/nan_guard.py)
        self.resumed_from: tuple[str, int, tuple[str, ...]] | None = None
        # per stage: [batches whose logits held NaN/inf (a device tensor: no wait per batch), batches seen]
        self._logit_checks: dict[str, list[Any]] = {}
        self._labels = LabelRange()  # the training steps' label range, on the device (check_labels)

    # ----------------------------------------------------------------- setup and checks
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        dm_classes = getattr(datamodule, "num_classes", None)
        if dm_classes is not None and dm_classes != self.num_classes:
            raise ValueError(f"the model is built for {self.num_classes} classes but the data has {dm_classes} "
                             f"(data.num_classes); set model.num_classes=${{data.num_classes}}")

    def _check_output(self, logits: Tensor) -> None:
        if not self._checked_output:
            if logits.ndim != 4 or logits.shape[1] != self.num_classes:
                raise ValueError(f"the model outputs {tuple(logits.shape)} logits, i.e. {logits.shape[1]} classes, "
                                 f"but data.num_classes is {self.num_classes}")
            self._checked_output = True

    def forward(self, images: Tensor) -> Any:
        return self.net(self._laid_out(images))

    def _laid_out(self, images: Tensor) -> Tensor:
        """``images [N, 3, H, W]`` in the net's memory format (a copy only with ``model.channels_last``)."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    # ----------------------------------------------------------------- steps
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        images, masks = batch["image"], batch["mask"]
        try:
            outputs = canonical_outputs(self.net(self._laid_out(images)))
        except ValueError as err:  # torch's BatchNorm on a [1, C, 1, 1] input (a global pooling branch)
            if "Expected more than 1 value per channel" not in str(err):
                raise
            raise ConfigError(f"a training batch of {images.shape[0]} image(s) per process: this model normalises a "
                              "globally pooled branch with BatchNorm (DeepLabV3's / DeepLabV3+'s image pooling, "
                              "PSPNet's 1x1 pyramid level), which needs at least 2 images; set data.batch_size >= 2 "
                              "(per process)") from err
        self._check_output(main_logits(outputs))
        # no host read of a device tensor here (each one waits for the GPU): the loss records its labels' range
        # on the device, read at logging steps and before checkpoints (check_labels); train/loss is not a
        # prog_bar metric (Lightning would read it every step), the bars show it as of the last logging step
        with deferred_label_checks(self._labels):
            parts = self.loss.parts(outputs, masks) if hasattr(self.loss, "parts") else {"loss": self.loss(outputs, masks)}
        for name, value in parts.items():
            # sync_dist: the epoch value is the mean over all processes' batches, not rank 0's alone
            self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=True, batch_size=images.shape[0],
                     sync_dist=True)
        return parts["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if at_logging_step(self.trainer):
            self.check_labels()

    def on_train_epoch_end(self) -> None:
        self.check_labels()

    def check_labels(self) -> None:
        """Raise ``DataError`` when a training step since the last check met a label outside ``[0, C)`` that is
        not the ignore index (one host read: rules.LabelRange)."""
        self._labels.check(f"in the training steps up to epoch {self.current_epoch}, step {self.global_step}")

    def _eval_step(self, batch: Mapping[str, Any], stage: str) -> None:
        images, masks = batch["image"], batch["mask"]
        if not getattr(self.net, "returns_logits", True):  # eval.py with inference.bounded=true: class ids only
            self.confmats[stage].update(self.net.predict_labels(images), masks)
            return
        outputs = canonical_outputs(self.net(self._laid_out(images)))
        logits = main_logits(outputs)
        self._check_output(logits)
        # inference's own check (seg_template/inference): NaN logits argmax to class 0, a made-up score
        counts = self._logit_checks.setdefault(stage, [0, 0])
        counts[0], counts[1] = counts[0] + (~finite_flag(logits)).int(), counts[1] + 1
        self.eval_losses[stage].update(self.loss(outputs, masks).detach(), weight=images.shape[0])
        # upsample once to the label size; argmax of upsampled logits, as inference does
        self.confmats[stage].update(logits_at(logits, masks.shape[-2:], self.align_corners).argmax(1), masks)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    # ----------------------------------------------------------------- epoch ends: scores and tables
    def _log_scores(self, stage: str) -> dict[str, Any]:
        self._refuse_nonfinite_logits(stage)  # before anything is scored, logged or checkpointed
        confmat = self.confmats[stage]
        cm = confmat.compute()  # summed over processes by torchmetrics
        confmat.reset()
        if self.eval_losses[stage].update_called:  # not with inference.bounded (class ids only, no loss)
            self.log(f"{stage}/loss", self.eval_losses[stage].compute())  # global already, as the scores
        self.eval_losses[stage].reset()
        self.last_confmat[stage] = cm.cpu()
        scores = segmentation_scores(cm)
        # already global: sync_dist would only add an all-reduce of identical numbers
        self.log(f"{stage}/mIoU", scores["mIoU"], prog_bar=True)
        self.log(f"{stage}/aAcc", scores["aAcc"])
        for name, iou in zip(self.class_names, scores["IoU"], strict=True):
            self.log(f"{stage}/IoU/{name}", iou)
        return scores

    def _refuse_nonfinite_logits(self, stage: str) -> None:
        """Stop when any batch of this ``stage`` gave NaN/inf logits (every process takes the same decision):
        during fit a ``TrainingDiverged`` naming the stage, the epoch and the file a resumed fit came from,
        otherwise a ``CheckpointError`` naming the checkpoint tested."""
        from seg_template.callbacks.nan_guard import lr_advice, resume_suspect
        from seg_template.inference.model import nonfinite_cause

        bad, seen = self._logit_checks.pop(stage, (0, 0))
        bad = int(bad)  # the one wait for the device per stage and epoch
        trainer = self._trainer
        if not (trainer.strategy.reduce_boolean_decision(bad > 0, all=False) if trainer is not None else bad):
            return
        counted = f"in {bad} of its {seen} batch(es)" if bad else "on another process"
        cause, fix = nonfinite_cause(self.net)
        ckpt = trainer.ckpt_path if trainer is not None else None
        if trainer is None or trainer.state.fn != "fit":
            source = f"ckpt_path: '{ckpt}'" if ckpt else f"the network ({type(self.net).__name__})"
            raise CheckpointError(f"{source} gives NaN/inf logits {counted} of the {stage} split, so they were not "
                                  f"scored (their argmax would be class 0): {cause}; {fix}")
        where = (f"the sanity-check validation before training (at step {self.global_step})" if trainer.sanity_checking
                 else f"the validation of epoch {self.current_epoch} (step {self.global_step})")
        suspect = resume_suspect(trainer)  # None before training starts (the sanity check): then the file
        if ckpt:
            suspect = suspect or (f"this fit resumed from ckpt_path={ckpt}, so that file is the likely cause: resume "
                                  "from an earlier checkpoint of that run (or start anew from sound weights)")
            fix = f"{suspect[0].upper()}{suspect[1:]}; else {lr_advice(trainer)}"
        elif self.global_step == 0:  # not one update yet: the starting weights give them
            fix = ("No training step has run yet, so the starting weights give them: if model.pretrained names a "
                   "file, pass a sound one (or model.pretrained=null)")
        else:
            fix = f"Try: {lr_advice(trainer)}"
        raise TrainingDiverged(f"{where} gave NaN/inf logits {counted} (their argmax would be class 0), so it was "
                               f"not scored and no checkpoint was written for it: {cause}. {fix}.")

    def on_validation_epoch_end(self) -> None:
        scores = self._log_scores("val")
        if self.trainer.sanity_checking:
            return
        if self.trainer.state.fn == "validate":  # eval.py: no fit summary will follow
            self._print_scores("val", scores)
        self.last_val = {**scores, "epoch": self.current_epoch}
        best = None if self.best_val is None else float(self.best_val["mIoU"])
        if best is None or math.isnan(best) or float(scores["mIoU"]) > best:  # a NaN first epoch is never "best"
            self.best_val = self.last_val

    def on_test_epoch_end(self) -> None:
        self._print_scores("test", self._log_scores("test"))

    def _print_scores(self, stage: str, scores: dict[str, Any]) -> None:
        summary = f"{stage} mIoU {100 * scores['mIoU']:.2f}, aAcc {100 * scores['aAcc']:.2f}"
        print_table(summary + "\n" + format_table(self.class_names, {"IoU %": scores["IoU"], "Acc %": scores["Acc"]},
                                                  title=stage))

    def on_fit_end(self) -> None:
        if self.last_val is None:
            return
        last, best = self.last_val, self.best_val or self.last_val
        columns = {f"last (ep {last['epoch']})": last["IoU"]}
        if best is not last:
            columns[f"best (ep {best['epoch']})"] = best["IoU"]
        summary = f"validation mIoU: last {100 * last['mIoU']:.2f}, best {100 * best['mIoU']:.2f} (ep {best['epoch']})"
        print_table(summary + "\n" + format_table(self.class_names, columns, title="validation IoU %"))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_labels()  # no checkpoint of steps that met labels out of range
        # eval / predict / export rebuild the data and the model from it with only ckpt_path given
        if self.recipe is not None:
            checkpoint["recipe"] = self.recipe
        # what a resume compares its options with (seg_template/resume.py)
        checkpoint[resume.RECORD_KEY] = self._optimization_record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is None or self.trainer.state.fn != "fit":
            return
        # before the optimiser exists: another optimiser class is refused here, changed values applied later
        resume.check_optimizer(checkpoint, self.optimizer_factory, str(self.trainer.ckpt_path))
        self.check_resumed_groups(checkpoint, str(self.trainer.ckpt_path))
        resume_raw_weights(self.trainer, checkpoint)  # written with callbacks.ema, resumed without: the raw weights
        self._resumed = {"record": checkpoint.get(resume.RECORD_KEY),
                         "had_scheduler": bool(checkpoint.get("lr_schedulers"))}

    def on_fit_start(self) -> None:
        self.resumed_from = None  # known once training starts (the resumed step is restored after this hook)

    def on_train_start(self) -> None:
        ckpt = self.trainer.ckpt_path
        self.resumed_from = (str(ckpt), self.trainer.global_step, ()) if ckpt else None
        resumed, self._resumed = self._resumed, None
        if resumed is None or not self._configured_groups or not self.trainer.optimizers:
            return
        configs = self.trainer.lr_scheduler_configs
        scheduler = configs[0].scheduler if configs else None
        optimizer = self.trainer.optimizers[0]
        changes = resume.apply_changed_options(optimizer, scheduler, self._configured_groups, resumed["record"],
                                               self._optimization_record(), resumed["had_scheduler"],
                                               self.trainer.global_step)
        if self.resumed_from is not None:  # what changes the optimisation (max_epochs only stretches the schedule)
            dynamics = tuple(c for c in changes if c.startswith(("optimizer.", "scheduler")))
            self.resumed_from = (*self.resumed_from[:2], dynamics)
        if changes and self.trainer.is_global_zero:
            log.info("Resuming with changed options, applied from step %d: %s; learning rate now %.4g",
                     self.trainer.global_step, ", ".join(changes), optimizer.param_groups[0]["lr"])

    # ----------------------------------------------------------------- optimisation
    def _optimization_record(self) -> dict[str, Any]:
        trainer = self._trainer
        optimizer = trainer.optimizers[0] if trainer is not None and trainer.optimizers else None
        return resume.optimization_record(optimizer, self.scheduler_factory, self._total_steps, trainer,
                                          self.no_weight_decay)

    def check_resumed_groups(self, checkpoint: Mapping[str, Any], source: str) -> None:
        """A ``CheckpointError`` when ``checkpoint``'s optimiser state has other parameter groups than this
        module's ``optimizer.no_weight_decay`` makes (seg_template/resume.py: check_parameter_groups)."""
        sizes = [len(group["params"]) for group in param_groups(self.net, self.no_weight_decay)]
        resume.check_parameter_groups(checkpoint, sizes, self.no_weight_decay, source)

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError("SegmentationModule was built without an optimizer (evaluation only)")
        try:
            optimizer = self.optimizer_factory(params=param_groups(self.net, self.no_weight_decay))
        except (TypeError, ValueError) as err:  # torch's checks ("Invalid learning rate: -1"), unknown options
            raise ConfigError(f"optimizer: {err} (check optimizer.lr, optimizer.weight_decay, ...)") from err
        if self.scheduler_factory is None:
            self._configured_groups = resume.snapshot_groups(optimizer)
            return optimizer
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError("the scheduler needs a finite number of steps, but trainer.max_epochs=-1 and "
                              "trainer.max_steps=-1 train forever: set one of them, or scheduler=none")
        self._total_steps = int(total)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=int(total))
        # the options as configured, before a resume replaces them with the checkpoint's
        self._configured_groups = resume.snapshot_groups(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

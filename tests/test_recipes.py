"""The published recipes (configs/experiment/*.yaml) pinned against their upstream sources, setting by setting.

Each table row is ``(config key, value, upstream file: the setting it comes from)``, written from the upstream
files (docs/recipes.md has the audit). The config is composed with the experiment file's own ``# Run:``
command line, so the batch per GPU times the GPU count is checked as a user would launch it. A later change
that drifts a recipe (a default, a base config, an override) fails here with the row's source in the message.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import albumentations as A
import pytest
import torch
from hydra.utils import instantiate

from seg_template.build import build_net
from seg_template.data.transforms import ScaleOfReference
from seg_template.models.outputs import canonical_outputs
from seg_template.optim import poly_factor
from seg_template.paths import CONFIG_DIR
from tests.helpers import skip_unless_builder_importable
from tests.test_experiments import select

HRNET = "HRNet/HRNet-Semantic-Segmentation"
HRNET_CS = f"{HRNET} experiments/cityscapes/seg_hrnet_w48_train_ohem_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml"
HRNET_ADE = f"{HRNET}@HRNet-OCR experiments/ade20k/seg_hrnet_w48_520x520_ohem_sgd_lr2e-2_wd1e-4_bs_16_epoch120.yaml"
HRNET_BASE = f"{HRNET} lib/datasets/base_dataset.py"
HRNET_TRAIN = f"{HRNET} tools/train.py"
HRNET_MODEL = f"{HRNET} lib/models/seg_hrnet.py"
MMSEG = "open-mmlab/mmsegmentation configs"
VOC_MODEL = f"{MMSEG}/_base_/models/deeplabv3_r50-d8.py"
VOC_DATA = f"{MMSEG}/_base_/datasets/pascal_voc12_aug.py"
VOC_SCHEDULE = f"{MMSEG}/_base_/schedules/schedule_20k.py"
SEGFORMER = f"{MMSEG}/segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py"
ADE_DATA = f"{MMSEG}/_base_/datasets/ade20k.py"
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CITYSCAPES_WEIGHTS = [0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023, 0.9539,
                      0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507]

#: experiment -> rows (key, value, upstream source)
UPSTREAM: dict[str, list[tuple[str, object, str]]] = {
    "cityscapes_hrnet_w48_ohem": [
        ("data.num_classes", 19, f"{HRNET_CS}: DATASET.NUM_CLASSES 19"),
        ("data.train_transform.crop_size", [512, 1024], f"{HRNET_CS}: TRAIN.IMAGE_SIZE [1024, 512] (W, H)"),
        ("data.train_transform.long_side", 2048, f"{HRNET_CS}: TRAIN.BASE_SIZE 2048 ({HRNET_BASE}: long side)"),
        ("data.train_transform.short_side", None, f"{HRNET_BASE}: multi_scale_aug sets the long side only"),
        ("data.train_transform.scale_range", [0.5, 2.1], f"{HRNET_CS}: SCALE_FACTOR 16 -> 0.5 + randint(0, 16) / 10"),
        ("data.train_transform.scale_step", 0.1, f"{HRNET_BASE}: gen_sample rand_scale in 0.1 steps"),
        ("data.train_transform.hflip", True, f"{HRNET_CS}: TRAIN.FLIP true"),
        ("data.train_transform.color_jitter", 0.0, f"{HRNET_CS}: no RANDOM_BRIGHTNESS (off by default)"),
        ("data.val_transform.short_side", None, f"{HRNET_CS}: TEST.IMAGE_SIZE [2048, 1024], the whole image"),
        ("data.val_transform.long_side", None, f"{HRNET_CS}: TEST.IMAGE_SIZE [2048, 1024], the whole image"),
        ("data.batch_size", 3, f"{HRNET_CS}: TRAIN.BATCH_SIZE_PER_GPU 3"),
        ("trainer.devices", 4, f"{HRNET_CS}: GPUS (0,1,2,3)"),
        ("trainer.sync_batchnorm", True, f"{HRNET} lib/models/bn_helper.py: SyncBatchNorm"),
        ("trainer.max_steps", 484 * (2975 // 12), f"{HRNET_TRAIN}: END_EPOCH 484 x int(2975 / 3 / 4) iterations"),
        ("model.variant", "hrnet_w48", f"{HRNET_CS}: MODEL.EXTRA (W48 widths 48/96/192/384)"),
        ("model.pretrained", "ms_in1k", f"{HRNET_CS}: MODEL.PRETRAINED hrnetv2_w48_imagenet_pretrained.pth"),
        ("model.align_corners", False, f"{HRNET_CS}: MODEL.ALIGN_CORNERS False"),
        ("model.fuse_upsample", "bilinear", f"{HRNET_MODEL}: HighResolutionModule.forward F.interpolate bilinear"),
        ("model.head_init", "hrnet", f"{HRNET_MODEL}: last_layer convs with bias, init_weights N(0, 0.001)"),
        ("loss.main._target_", "seg_template.losses.OhemCrossEntropy", f"{HRNET_CS}: LOSS.USE_OHEM true"),
        ("loss.main.thresh", 0.9, f"{HRNET_CS}: LOSS.OHEMTHRES 0.9"),
        ("loss.main.min_kept", 131072, f"{HRNET_CS}: LOSS.OHEMKEEP 131072 (per GPU)"),
        ("loss.main.weight", CITYSCAPES_WEIGHTS, f"{HRNET} lib/datasets/cityscapes.py: class_weights"),
        ("loss.main.align_corners", False, f"{HRNET} lib/core/criterion.py: upsampling with MODEL.ALIGN_CORNERS"),
        ("optimizer._target_", "torch.optim.SGD", f"{HRNET_CS}: TRAIN.OPTIMIZER sgd"),
        ("optimizer.lr", 0.01, f"{HRNET_CS}: TRAIN.LR 0.01"),
        ("optimizer.momentum", 0.9, f"{HRNET_CS}: TRAIN.MOMENTUM 0.9"),
        ("optimizer.weight_decay", 5e-4, f"{HRNET_CS}: TRAIN.WD 0.0005"),
        ("optimizer.nesterov", False, f"{HRNET_CS}: TRAIN.NESTEROV false"),
        ("optimizer.no_weight_decay", [], f"{HRNET_TRAIN}: one parameter group, every parameter decays"),
        ("scheduler.power", 0.9, f"{HRNET} lib/utils/utils.py: adjust_learning_rate power 0.9"),
        ("scheduler.warmup_steps", 0, f"{HRNET} lib/utils/utils.py: no warmup"),
        ("scheduler.min_lr_ratio", 0.0, f"{HRNET} lib/utils/utils.py: lr * (1 - iter / max_iter) ** 0.9"),
    ],
    "ade20k_hrnet_w48": [
        ("data.num_classes", 150, f"{HRNET_ADE}: DATASET.NUM_CLASSES 150"),
        ("data.train_set.reduce_zero_label", True, f"{HRNET}@HRNet-OCR lib/datasets/ade20k.py: reduce_zero_label"),
        ("data.train_transform.crop_size", [520, 520], f"{HRNET_ADE}: TRAIN.IMAGE_SIZE [520, 520]"),
        ("data.train_transform.long_side", 520, f"{HRNET_ADE}: TRAIN.BASE_SIZE 520 ({HRNET_BASE}: long side)"),
        ("data.train_transform.short_side", None, f"{HRNET_BASE}: multi_scale_aug sets the long side only"),
        ("data.train_transform.scale_range", [0.5, 1.6], f"{HRNET_ADE}: SCALE_FACTOR 11 -> 0.5 + randint(0, 11) / 10"),
        ("data.train_transform.scale_step", 0.1, f"{HRNET_BASE}: gen_sample rand_scale in 0.1 steps"),
        ("data.train_transform.hflip", True, f"{HRNET_ADE}: TRAIN.FLIP true"),
        ("data.train_transform.color_jitter", 0.0, f"{HRNET_ADE}: no RANDOM_BRIGHTNESS (off by default)"),
        ("data.val_transform.long_side", 520, f"{HRNET}@HRNet-OCR lib/datasets/ade20k.py + base_dataset.py: "
                                              "testval long side -> BASE_SIZE 520, label at its own size"),
        ("data.val_transform.short_side", None, f"{HRNET_BASE}: multi_scale_inference sets the long side only"),
        ("data.batch_size", 4, f"{HRNET_ADE}: TRAIN.BATCH_SIZE_PER_GPU 4"),
        ("trainer.devices", 4, f"{HRNET_ADE}: GPUS (0,1,2,3)"),
        ("trainer.sync_batchnorm", True, f"{HRNET} lib/models/bn_helper.py: SyncBatchNorm"),
        ("trainer.max_steps", 120 * (20210 // 16), f"{HRNET_TRAIN}: END_EPOCH 120 x int(20210 / 4 / 4) iterations"),
        ("model.variant", "hrnet_w48", f"{HRNET_ADE}: MODEL.EXTRA (W48)"),
        ("model.pretrained", "ms_in1k", f"{HRNET_ADE}: MODEL.PRETRAINED hrnetv2_w48_imagenet_pretrained.pth"),
        ("model.align_corners", True, f"{HRNET} lib/config/default.py: MODEL.ALIGN_CORNERS True (not overridden)"),
        ("model.fuse_upsample", "bilinear", f"{HRNET_MODEL}: HighResolutionModule.forward F.interpolate bilinear"),
        ("model.head_init", "hrnet", f"{HRNET_MODEL}: last_layer convs with bias, init_weights N(0, 0.001)"),
        ("loss.main._target_", "seg_template.losses.OhemCrossEntropy", f"{HRNET_ADE}: LOSS.USE_OHEM true"),
        ("loss.main.thresh", 0.9, f"{HRNET_ADE}: LOSS.OHEMTHRES 0.9"),
        ("loss.main.min_kept", 131072, f"{HRNET_ADE}: LOSS.OHEMKEEP 131072 (per GPU)"),
        ("loss.main.weight", None, f"{HRNET}@HRNet-OCR lib/datasets/ade20k.py: class_weights None"),
        ("loss.main.align_corners", True, f"{HRNET} lib/core/criterion.py: upsampling with MODEL.ALIGN_CORNERS"),
        ("optimizer._target_", "torch.optim.SGD", f"{HRNET_ADE}: TRAIN.OPTIMIZER sgd"),
        ("optimizer.lr", 0.02, f"{HRNET_ADE}: TRAIN.LR 0.02"),
        ("optimizer.momentum", 0.9, f"{HRNET_ADE}: TRAIN.MOMENTUM 0.9"),
        ("optimizer.weight_decay", 1e-4, f"{HRNET_ADE}: TRAIN.WD 0.0001"),
        ("optimizer.nesterov", False, f"{HRNET_ADE}: TRAIN.NESTEROV false"),
        ("optimizer.no_weight_decay", [], f"{HRNET_TRAIN}: one parameter group, every parameter decays"),
        ("scheduler.power", 0.9, f"{HRNET} lib/utils/utils.py: adjust_learning_rate power 0.9"),
        ("scheduler.warmup_steps", 0, f"{HRNET} lib/utils/utils.py: no warmup"),
        ("scheduler.min_lr_ratio", 0.0, f"{HRNET} lib/utils/utils.py: lr * (1 - iter / max_iter) ** 0.9"),
    ],
    "voc_deeplabv3_resnet101": [
        ("data.num_classes", 21, f"{VOC_MODEL} + deeplabv3_r50-d8_4xb4-20k_voc12aug-512x512.py: num_classes 21"),
        ("data.train_set.use_aug", True, f"{VOC_DATA}: ConcatDataset(train.txt, aug.txt) = 10,582 images"),
        ("data.train_set.aug_list", "ImageSets/Segmentation/aug.txt", f"{VOC_DATA}: dataset_aug ann_file"),
        ("data.train_set.aug_dir", "SegmentationClassAug", f"{VOC_DATA}: dataset_aug seg_map_path"),
        ("data.train_transform.crop_size", [512, 512], f"{VOC_DATA}: RandomCrop crop_size (512, 512)"),
        ("data.train_transform.short_side", 512, f"{VOC_DATA}: RandomResize scale (2048, 512) keep_ratio"),
        ("data.train_transform.long_side", 2048, f"{VOC_DATA}: RandomResize scale (2048, 512) keep_ratio"),
        ("data.train_transform.scale_range", [0.5, 2.0], f"{VOC_DATA}: RandomResize ratio_range (0.5, 2.0)"),
        ("data.train_transform.scale_step", None, f"{VOC_DATA}: RandomResize draws the ratio uniformly"),
        ("data.train_transform.hflip", True, f"{VOC_DATA}: RandomFlip prob 0.5"),
        ("data.train_transform.color_jitter", 0.5, f"{VOC_DATA}: PhotoMetricDistortion (stand-in, see the file)"),
        ("data.val_transform.short_side", 512, f"{VOC_DATA}: test Resize scale (2048, 512) keep_ratio"),
        ("data.val_transform.long_side", 2048, f"{VOC_DATA}: test Resize scale (2048, 512) keep_ratio"),
        ("data.batch_size", 4, f"{VOC_DATA}: train_dataloader batch_size 4"),
        ("trainer.devices", 4, f"{MMSEG}/deeplabv3/metafile.yaml: 4x V100 GPUS, batch size 16"),
        ("trainer.sync_batchnorm", True, f"{VOC_MODEL}: norm_cfg SyncBN"),
        ("trainer.max_steps", 20000, f"{VOC_SCHEDULE}: max_iters 20000"),
        ("model.arch", "deeplabv3_resnet101", f"{VOC_MODEL}: ASPPHead dilations (1, 12, 24, 36), D8 backbone"),
        ("model.aux", True, f"{VOC_MODEL}: auxiliary_head FCNHead in_index 2"),
        ("model.align_corners", False, f"{VOC_MODEL}: align_corners False"),
        ("loss.main._target_", "seg_template.losses.CrossEntropy", f"{VOC_MODEL}: CrossEntropyLoss"),
        ("loss.main.weight", None, f"{VOC_MODEL}: no class weights"),
        ("loss.aux_weight", 0.4, f"{VOC_MODEL}: auxiliary_head loss_weight 0.4"),
        ("loss.main.align_corners", False, "open-mmlab/mmsegmentation mmseg/models/decode_heads/decode_head.py: "
                                           "logits resized with the head's align_corners (False) in the loss"),
        ("optimizer._target_", "torch.optim.SGD", f"{VOC_SCHEDULE}: SGD"),
        ("optimizer.lr", 0.01, f"{VOC_SCHEDULE}: lr 0.01"),
        ("optimizer.momentum", 0.9, f"{VOC_SCHEDULE}: momentum 0.9"),
        ("optimizer.weight_decay", 5e-4, f"{VOC_SCHEDULE}: weight_decay 0.0005"),
        ("optimizer.no_weight_decay", [], f"{VOC_SCHEDULE}: no paramwise_cfg, every parameter decays"),
        ("scheduler.power", 0.9, f"{VOC_SCHEDULE}: PolyLR power 0.9, by_epoch False"),
        ("scheduler.warmup_steps", 0, f"{VOC_SCHEDULE}: PolyLR only"),
        ("scheduler.min_lr_ratio", 0.01, f"{VOC_SCHEDULE}: PolyLR eta_min 1e-4 = 0.01 x lr"),
        ("scheduler.min_lr_mode", "offset", f"{VOC_SCHEDULE}: PolyLR eta_min + (lr - eta_min) * poly"),
    ],
    "ade20k_segformer_b0": [
        ("data.num_classes", 150, f"{MMSEG}/_base_/models/segformer_mit-b0.py + {SEGFORMER}: num_classes 150"),
        ("data.train_set.reduce_zero_label", True, f"{ADE_DATA}: reduce_zero_label True"),
        ("data.train_transform.crop_size", [512, 512], f"{ADE_DATA}: RandomCrop crop_size (512, 512)"),
        ("data.train_transform.short_side", 512, f"{ADE_DATA}: RandomResize scale (2048, 512) keep_ratio"),
        ("data.train_transform.long_side", 2048, f"{ADE_DATA}: RandomResize scale (2048, 512) keep_ratio"),
        ("data.train_transform.scale_range", [0.5, 2.0], f"{ADE_DATA}: RandomResize ratio_range (0.5, 2.0)"),
        ("data.train_transform.scale_step", None, f"{ADE_DATA}: RandomResize draws the ratio uniformly"),
        ("data.train_transform.hflip", True, f"{ADE_DATA}: RandomFlip prob 0.5"),
        ("data.train_transform.color_jitter", 0.5, f"{ADE_DATA}: PhotoMetricDistortion (stand-in, see the file)"),
        ("data.val_transform.short_side", 512, f"{ADE_DATA}: test Resize scale (2048, 512) keep_ratio"),
        ("data.val_transform.long_side", 2048, f"{ADE_DATA}: test Resize scale (2048, 512) keep_ratio"),
        ("data.batch_size", 2, f"{SEGFORMER}: train_dataloader batch_size 2"),
        ("trainer.devices", 8, f"{SEGFORMER}: 8xb2"),
        ("trainer.sync_batchnorm", True, f"{MMSEG}/_base_/models/segformer_mit-b0.py: norm_cfg SyncBN"),
        ("trainer.max_steps", 160000, f"{SEGFORMER}: max_iters 160000"),
        ("model.arch", "segformer", f"{MMSEG}/_base_/models/segformer_mit-b0.py: SegformerHead"),
        ("model.encoder", "mit_b0", f"{MMSEG}/_base_/models/segformer_mit-b0.py: MixVisionTransformer (B0)"),
        ("model.pretrained", "mit_b0.imagenet", f"{SEGFORMER}: pretrain/mit_b0.pth (ImageNet-1k)"),
        ("model.align_corners", False, f"{MMSEG}/_base_/models/segformer_mit-b0.py: align_corners False"),
        ("loss.main._target_", "seg_template.losses.CrossEntropy", f"{MMSEG}/_base_/models/segformer_mit-b0.py: CE"),
        ("loss.main.weight", None, f"{MMSEG}/_base_/models/segformer_mit-b0.py: no class weights"),
        ("optimizer._target_", "torch.optim.AdamW", f"{SEGFORMER}: AdamW"),
        ("optimizer.lr", 6e-5, f"{SEGFORMER}: lr 0.00006"),
        ("optimizer.betas", [0.9, 0.999], f"{SEGFORMER}: betas (0.9, 0.999)"),
        ("optimizer.weight_decay", 0.01, f"{SEGFORMER}: weight_decay 0.01"),
        ("optimizer.no_weight_decay", ["norm"], f"{SEGFORMER}: paramwise_cfg custom_keys norm decay_mult 0"),
        ("scheduler.power", 1.0, f"{SEGFORMER}: PolyLR power 1.0"),
        ("scheduler.warmup_steps", 1500, f"{SEGFORMER}: LinearLR end 1500"),
        ("scheduler.warmup_ratio", 1e-6, f"{SEGFORMER}: LinearLR start_factor 1e-6"),
        ("scheduler.min_lr_ratio", 0.0, f"{SEGFORMER}: PolyLR eta_min 0.0"),
    ],
}

#: experiment -> the upstream schedule's lr multiplier at step i of total, checked against ours
SCHEDULES = {
    # HRNet lib/utils/utils.py: lr = base_lr * (1 - i / max_iter) ** 0.9
    "cityscapes_hrnet_w48_ohem": lambda i, total: (1 - i / total) ** 0.9,
    "ade20k_hrnet_w48": lambda i, total: (1 - i / total) ** 0.9,
    # MMSeg PolyLR(eta_min=1e-4, power=0.9) from lr 0.01
    "voc_deeplabv3_resnet101": lambda i, total: ((0.01 - 1e-4) * (1 - i / total) ** 0.9 + 1e-4) / 0.01,
}


def run_overrides(name: str) -> list[str]:
    """The overrides of the experiment file's ``# Run: python train.py ...`` line (its GPU count)."""
    text = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
    match = re.search(r"^# Run: python train\.py (.+)$", text, re.MULTILINE)
    assert match, f"configs/experiment/{name}.yaml has no '# Run: python train.py ...' line"
    return match.group(1).split()


def plain(value: object) -> object:
    return list(value) if hasattr(value, "__len__") and not isinstance(value, str | dict) else value


def test_every_experiment_has_a_table() -> None:
    published = {p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")} - {"example"}
    assert published == set(UPSTREAM)


def same(value: object, expected: object) -> bool:
    """Floats (and lists of them) to rounding; everything else exactly."""
    if isinstance(expected, float) or (isinstance(expected, list) and expected and isinstance(expected[0], float)):
        return value == pytest.approx(expected)
    return value == expected


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_recipe_matches_its_upstream_table(name: str, compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(overrides=run_overrides(name), output_dir=tmp_path)
    wrong = [f"{key}={plain(select(cfg, key))!r}, upstream {expected!r} ({source})"
             for key, expected, source in UPSTREAM[name] if not same(plain(select(cfg, key)), expected)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_recipe_transforms_are_built_as_pinned(name: str, compose_cfg, tmp_path: Path) -> None:
    """The pinned keys reach the pipelines: ImageNet normalisation (HRNet's base_dataset mean/std, MMSeg's
    123.675 / 58.395 ... over 255), the scale step with its size of reference, the crop."""
    cfg = compose_cfg(overrides=run_overrides(name), output_dir=tmp_path)
    train, val = instantiate(cfg.data.train_transform), instantiate(cfg.data.val_transform)
    for pipeline in (train, val):
        (norm,) = [t for t in pipeline.transforms if isinstance(t, A.Normalize)]
        assert list(norm.mean) == pytest.approx(IMAGENET[0]) and list(norm.std) == pytest.approx(IMAGENET[1])
    (scale,) = [t for t in train.transforms if isinstance(t, ScaleOfReference)]
    rows = {key: value for key, value, _ in UPSTREAM[name]}
    assert (scale.lo, scale.hi) == tuple(rows["data.train_transform.scale_range"])
    assert (scale.short_side, scale.long_side, scale.step) == (rows["data.train_transform.short_side"],
                                                               rows["data.train_transform.long_side"],
                                                               rows["data.train_transform.scale_step"])
    (crop,) = [t for t in train.transforms if isinstance(t, A.RandomCrop)]
    assert [crop.height, crop.width] == rows["data.train_transform.crop_size"]


#: experiment -> whether the network has an auxiliary head (its loss weight is in the table where it has one)
AUX = {"cityscapes_hrnet_w48_ohem": False,  # HRNet MODEL.NUM_OUTPUTS 1
       "ade20k_hrnet_w48": False,  # HRNet MODEL.NUM_OUTPUTS 1
       "voc_deeplabv3_resnet101": True,  # MMSeg auxiliary_head FCNHead
       "ade20k_segformer_b0": False}  # MMSeg segformer_mit-b0.py: no auxiliary_head


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_recipe_aux_head_as_upstream(name: str, compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(overrides=[*run_overrides(name), "model.pretrained=null"], output_dir=tmp_path)
    skip_unless_builder_importable(cfg.model._target_)  # smp's SegFormer: the `.[smp]` extra
    with torch.device("meta"):
        outputs = canonical_outputs(build_net(cfg.model)[0].train()(torch.empty(2, 3, 64, 64)))
    assert isinstance(outputs, dict) is AUX[name]


def test_recipes_are_scored_single_scale_without_flip(compose_cfg, tmp_path: Path) -> None:
    """Every target above is single scale, no flip, whole image (HRNet TEST.MULTI_SCALE / FLIP_TEST false,
    MMSeg test_cfg mode 'whole'): what validation during training does (the module's one forward pass), and
    eval.py's default inference."""
    cfg = compose_cfg("eval", output_dir=tmp_path)
    assert (cfg.inference.mode, list(cfg.inference.scales), cfg.inference.flip) == ("whole", [1.0], False)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_recipe_schedule_follows_the_upstream_formula(name: str, compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(overrides=run_overrides(name), output_dir=tmp_path)
    total = int(cfg.trainer.max_steps)
    options = {k: cfg.scheduler[k] for k in ("power", "warmup_steps", "warmup_ratio", "min_lr_ratio", "min_lr_mode")}
    for step in (0, 1, total // 3, total // 2, total - 1, total):
        ours = poly_factor(step, total, **options)
        assert math.isclose(ours, SCHEDULES[name](step, total), rel_tol=1e-9, abs_tol=1e-12), (step, ours)

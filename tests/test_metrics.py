"""IoU maths against hand-computed confusion matrices, including classes absent from GT and prediction."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from seg_template.metrics import format_table, iou_per_class, segmentation_scores


def test_scores_match_hand_computation_with_an_absent_class() -> None:
    # rows: ground truth, columns: prediction; class 3 is in neither -> excluded from the mean
    cm = torch.tensor([[50, 2, 3, 0],
                       [4, 30, 0, 0],
                       [1, 0, 10, 0],
                       [0, 0, 0, 0]])
    s = segmentation_scores(cm)
    iou = [50 / (55 + 55 - 50), 30 / (34 + 32 - 30), 10 / (11 + 13 - 10)]
    assert s["IoU"][:3] == pytest.approx(iou)
    assert math.isnan(s["IoU"][3])
    assert s["mIoU"] == pytest.approx(sum(iou) / 3)
    assert s["aAcc"] == pytest.approx(90 / 100)
    assert s["Acc"][:3] == pytest.approx([50 / 55, 30 / 34, 10 / 11])


def test_class_only_predicted_counts_as_zero_iou() -> None:
    # class 2 never occurs in the GT but is predicted: IoU 0, part of the mean (a false positive costs)
    cm = torch.tensor([[8, 0, 2], [0, 5, 0], [0, 0, 0]])
    s = segmentation_scores(cm)
    assert s["IoU"] == pytest.approx([0.8, 1.0, 0.0])
    assert s["mIoU"] == pytest.approx(0.6)
    assert math.isnan(s["Acc"][2])


def test_torchmetrics_confusion_matrix_with_ignore_index_feeds_the_same_numbers() -> None:
    target = torch.tensor([[0, 0, 1, 255], [1, 2, 2, 255]])
    preds = torch.tensor([[0, 1, 1, 2], [1, 2, 0, 0]])
    cm = MulticlassConfusionMatrix(4, ignore_index=255)(preds, target)
    assert cm.sum() == 6  # the two ignored pixels are dropped whatever was predicted
    s = segmentation_scores(cm)
    # class 0: TP 1, FP 1 (a 2 predicted 0), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2
    assert s["IoU"][:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(s["IoU"][3])
    assert s["aAcc"] == pytest.approx(4 / 6)


def test_empty_confusion_matrix_gives_nan_not_zero() -> None:
    s = segmentation_scores(torch.zeros(3, 3, dtype=torch.long))
    assert math.isnan(s["mIoU"]) and math.isnan(s["aAcc"])


def test_non_square_matrix_is_rejected() -> None:
    with pytest.raises(ValueError, match="square"):
        iou_per_class(torch.zeros(2, 3))


def test_table_lists_every_class_and_marks_absent_ones() -> None:
    text = format_table(["road", "car"], {"IoU %": [0.5, float("nan")]}, title="val")
    assert "road" in text and "50.00" in text
    assert "car" in text and "-" in text.split("car")[1].splitlines()[0]

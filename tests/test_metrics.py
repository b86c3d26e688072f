"""ConfusionMatrix against hand-computed matrices and metrics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from segkd.infer.metrics import ConfusionMatrix, format_metrics

# 3 classes; the last pixel is ignored (label 255), whatever its prediction.
LABEL = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 0, 2]])
# rows = label, columns = prediction
MATRIX = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])


def test_matrix_and_metrics_by_hand() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, LABEL)
    np.testing.assert_array_equal(cm.matrix, MATRIX)
    assert cm.matrix.dtype == np.int64
    m = cm.compute()
    # IoU = tp / (gt + pred - tp): class 0: 1/(2+2-1), class 1: 2/(2+3-2), class 2: 0/(1+0-0)
    np.testing.assert_allclose(m["IoU"], [100 / 3, 200 / 3, 0.0])
    np.testing.assert_allclose(m["Acc"], [50.0, 100.0, 0.0])
    assert m["mIoU"] == pytest.approx(100 / 3)
    assert m["mAcc"] == pytest.approx(50.0)
    assert m["aAcc"] == pytest.approx(60.0)  # 3 of the 5 counted pixels


def test_class_absent_from_label_and_prediction_is_left_out() -> None:
    cm = ConfusionMatrix(4)
    cm.update(PRED, LABEL)
    m = cm.compute()
    assert math.isnan(m["IoU"][3]) and math.isnan(m["Acc"][3])
    assert m["mIoU"] == pytest.approx(100 / 3)
    assert m["mAcc"] == pytest.approx(50.0)


def test_class_only_predicted_counts_as_zero_iou() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 2, 2]), np.array([0, 0, 0, 0]))  # class 2 predicted but never labelled
    m = cm.compute()
    np.testing.assert_allclose(m["IoU"][:1] + m["IoU"][2:], [50.0, 0.0])
    assert math.isnan(m["IoU"][1])
    assert m["mIoU"] == pytest.approx(25.0)
    assert math.isnan(m["Acc"][2])  # recall undefined without labels of the class
    assert m["mAcc"] == pytest.approx(50.0)


def test_custom_ignore_index_and_batches() -> None:
    cm = ConfusionMatrix(2, ignore_index=-1)
    label = np.array([[[0, 1], [-1, 1]], [[1, 1], [0, -1]]])  # (N, H, W)
    pred = np.array([[[0, 0], [1, 1]], [[1, 1], [1, 0]]])
    cm.update(pred, label)
    np.testing.assert_array_equal(cm.matrix, [[1, 1], [1, 3]])


def test_merge_equals_one_pass_and_matrix_sums() -> None:
    whole = ConfusionMatrix(3)
    whole.update(PRED, LABEL)
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(PRED[:1], LABEL[:1])
    b.update(PRED[1:], LABEL[1:])
    assert a.merge(b) is a
    np.testing.assert_array_equal(a.matrix, whole.matrix)
    # what an all-reduce does: sum the plain arrays, then compute once
    c = ConfusionMatrix(3)
    c.matrix = np.sum([ConfusionMatrix(3).matrix, whole.matrix], axis=0)
    assert c.compute() == whole.compute()


def test_merge_rejects_other_class_count() -> None:
    with pytest.raises(ValueError, match="3-class"):
        ConfusionMatrix(3).merge(ConfusionMatrix(4))


@pytest.mark.parametrize(
    ("pred", "label", "match"),
    [
        (np.zeros(3, int), np.zeros(4, int), "shape"),
        (np.zeros(2, int), np.array([0, 5]), "label values \\[5\\]"),
        (np.array([0, 3]), np.zeros(2, int), "prediction values \\[3\\]"),
        (np.array([0, -1]), np.zeros(2, int), "prediction values \\[-1\\]"),
    ],
)
def test_update_rejects_bad_input(pred: np.ndarray, label: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ConfusionMatrix(3).update(pred, label)


def test_out_of_range_prediction_on_ignored_pixel_is_fine() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([7, 0]), np.array([255, 0]))
    np.testing.assert_array_equal(cm.matrix, [[1, 0], [0, 0]])


def test_empty_matrix_is_nan_without_warnings() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.zeros((2, 2), int), np.full((2, 2), 255))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = cm.compute()
    assert math.isnan(m["mIoU"]) and math.isnan(m["mAcc"]) and math.isnan(m["aAcc"])


def test_reset_and_format() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, LABEL)
    text = format_metrics(cm.compute(), ["road", "car", "sky"])
    assert "road" in text and "66.67" in text and "mIoU 33.33" in text
    cm.reset()
    assert not cm.matrix.any()

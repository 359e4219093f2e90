"""Threshold sweeps, IoU curves and the refined-threshold rule."""
import numpy as np
import pytest

from pipeline.masks import (DEFAULT_THRESHOLDS, ThresholdCalibrator, bbox, choose_threshold, iou, iou_curve,
                            mask_at, masks_at)


def blob(shape=(96, 128), centre=(40, 70), sigma=14.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def test_iou_curve_equals_brute_force_on_random_maps():
    rng = np.random.default_rng(0)
    heat = rng.random((64, 80)).astype(np.float32)
    ref = rng.random((64, 80)) > 0.6
    brute = [iou(heat >= t, ref) for t in DEFAULT_THRESHOLDS]
    assert np.allclose(iou_curve(heat, ref), brute)
    assert masks_at(heat).shape == (len(DEFAULT_THRESHOLDS), 64, 80)
    assert np.array_equal(masks_at(heat)[3], mask_at(heat, DEFAULT_THRESHOLDS[3]))


def test_choose_threshold_recovers_the_generating_threshold():
    heat = blob()
    for true_t in (0.2, 0.45, 0.8):
        t, ious = choose_threshold(heat, heat >= true_t)
        assert t == pytest.approx(true_t) and ious.max() == pytest.approx(1.0)


def test_empty_reference_and_shape_errors():
    heat = blob()
    with pytest.raises(ValueError, match="empty"):
        choose_threshold(heat, np.zeros(heat.shape, bool))
    with pytest.raises(ValueError, match="differ"):
        iou_curve(heat, np.ones((3, 3), bool))
    # NaN pixels never pass a threshold
    h = heat.copy()
    h[:10] = np.nan
    assert not masks_at(np.nan_to_num(h, nan=-1))[:, :10].any()
    assert np.isfinite(iou_curve(h, heat >= 0.5)).all()


def test_calibrator_picks_best_mean_threshold_per_class():
    cal = ThresholdCalibrator()
    heat = blob()
    for t in (0.3, 0.35, 0.4):  # dog masks cluster around 0.35
        cal.add("dog", choose_threshold(heat, heat >= t)[1])
    cal.add("cat", choose_threshold(heat, heat >= 0.7)[1])
    assert cal.threshold("dog") == pytest.approx(0.35)
    assert cal.threshold("cat") == pytest.approx(0.7)
    assert cal.count("dog") == 3 and set(cal.to_dict()) == {"dog", "cat"}
    with pytest.raises(KeyError):
        cal.threshold("bird")
    with pytest.raises(ValueError):
        cal.add("dog", [0.1, 0.2])


def test_bbox_is_xyxy_exclusive():
    m = np.zeros((10, 20), bool)
    m[2:5, 7:12] = True
    assert bbox(m) == (7, 2, 12, 5)
    assert bbox(np.zeros((4, 4), bool)) is None

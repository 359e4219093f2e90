"""Refiners on real COCO photos (../shared/data/coco-mini) and their failure modes."""
import cv2
import numpy as np
import pytest

from conftest import coco_image
from pipeline.masks import iou
from pipeline.refine import (GrabCutRefiner, RefinementError, RefinerUnavailable, get_refiner,
                             refine_and_choose, sam_prompts)


def coarse_heat(gt: np.ndarray, side: int = 16) -> np.ndarray:
    """An attention-like heat map: the mask seen at side x side (like SD's 16x16 maps), upsampled."""
    small = cv2.resize(gt.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    heat = cv2.resize(small, gt.shape[::-1], interpolation=cv2.INTER_LINEAR)
    return (heat - heat.min()) / (heat.max() - heat.min())


@pytest.fixture(scope="module")
def instances(coco):
    anns = [a for a in coco.loadAnns(coco.getAnnIds(iscrowd=False)) if a["area"] > 8000][:12]
    return [(coco_image(coco, a["image_id"]), coco.annToMask(a).astype(bool)) for a in anns]


@pytest.mark.slow
def test_grabcut_recovers_coco_instances_from_coarse_heat(instances):
    ious = [iou(GrabCutRefiner()(img, coarse_heat(gt)).mask, gt) for img, gt in instances]
    assert np.mean(ious) >= 0.75, ious


@pytest.mark.slow
def test_grabcut_moves_wrong_coarse_masks_toward_the_truth(instances):
    """Dilated and shifted coarse masks (attention that spills over or sits off the object):
    the band-limited GrabCut must beat the coarse mask itself, on real COCO photos."""
    for kind in ("dilated", "shifted"):
        before, after = [], []
        for img, gt in instances:
            h, w = gt.shape
            g = gt.astype(np.float32)
            if kind == "dilated":
                g = cv2.GaussianBlur(cv2.dilate(g, np.ones((max(h, w) // 15,) * 2, np.uint8)), (0, 0), 0.01 * max(h, w))
            else:
                g = np.roll(cv2.GaussianBlur(g, (0, 0), 0.01 * max(h, w)), (h // 20, w // 20), axis=(0, 1))
            heat = g / g.max()
            before.append(iou(heat >= 0.5, gt))
            after.append(iou(GrabCutRefiner()(img, heat).mask, gt))
        assert np.mean(after) > np.mean(before) + 0.02, (kind, np.mean(before), np.mean(after))


@pytest.mark.slow
def test_refine_and_choose_picks_threshold_matching_refined(instances):
    img, gt = instances[0]
    heat = coarse_heat(gt)
    choice = refine_and_choose(img, heat, get_refiner("grabcut"))
    # the curve is the IoU of each thresholded heat map with the refined mask, recomputed here
    # (pipeline.masks.iou_curve compares in float32, the heat map's precision)
    curve = [iou(heat >= t, choice.refined) for t in choice.thresholds.astype(np.float32)]
    assert np.allclose(choice.ious, curve, atol=1e-6)
    assert choice.best_iou == pytest.approx(iou(heat >= choice.threshold, choice.refined))
    assert choice.best_iou == pytest.approx(max(iou(heat >= t, choice.refined) for t in choice.thresholds))


@pytest.mark.parametrize("bad_heat, match", [
    (lambda h: np.zeros_like(h), "flat"),
    (lambda h: np.full_like(h, np.nan), "NaN"),
    (lambda h: h[:-1], "does not match"),
])
@pytest.mark.parametrize("name", ["grabcut", "otsu", "affinity"])
def test_bad_heat_maps_give_clear_errors(instances, bad_heat, match, name):
    img, gt = instances[0]
    with pytest.raises(RefinementError, match=match):
        get_refiner(name)(img, bad_heat(coarse_heat(gt)))


def test_tiny_object_and_whole_image_object_do_not_crash():
    rng = np.random.default_rng(0)
    img = (rng.random((64, 64, 3)) * 60).astype(np.uint8)
    img[30:33, 30:33] = 250  # a 3x3 object
    heat = np.zeros((64, 64), np.float32)
    heat[30:33, 30:33] = 1.0
    r = GrabCutRefiner()(img, heat)
    assert r.mask.shape == (64, 64) and r.mask[31, 31]
    everything = np.ones((64, 64), np.float32)
    everything[0, 0] = 0.0  # the object covers all but one pixel
    r = GrabCutRefiner()(img, everything)
    assert r.mask.dtype == bool and r.mask.shape == (64, 64)


def test_empty_refined_mask_is_a_clear_error():
    class Nothing:
        def __call__(self, image, heat, attention=None):
            from pipeline.refine import RefineResult
            return RefineResult(np.zeros(heat.shape, bool), "nothing")
    heat = np.zeros((32, 32), np.float32)
    heat[10:20, 10:20] = 1
    with pytest.raises(RefinementError, match="no object pixels"):
        refine_and_choose(np.zeros((32, 32, 3), np.uint8), heat, Nothing())


def test_affinity_needs_self_attention(instances):
    img, gt = instances[0]
    with pytest.raises(RefinementError, match="self-attention"):
        get_refiner("affinity")(img, coarse_heat(gt), None)


def test_sam_without_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(RefinerUnavailable, match="checkpoint"):
        get_refiner("sam")
    with pytest.raises(RefinerUnavailable, match="does not exist"):
        get_refiner("sam", checkpoint=str(tmp_path / "sam_vit_b.pth"))
    with pytest.raises(ValueError, match="unknown refiner"):
        get_refiner("crf9000")


def test_sam_prompts_from_heat_map(instances):
    img, gt = instances[1]
    heat = coarse_heat(gt)
    box, points, labels = sam_prompts(heat)
    x1, y1, x2, y2 = box
    assert labels[0] == 1 and (labels[1:] == 0).all() and len(labels) == 3
    px, py = points[0]
    assert x1 <= px < x2 and y1 <= py < y2 and gt[int(py), int(px)]
    for (nx, ny) in points[1:]:
        assert not (x1 <= nx < x2 and y1 <= ny < y2) and not gt[int(ny), int(nx)]
    with pytest.raises(RefinementError):
        sam_prompts(np.zeros((8, 8), np.float32))


def test_grabcut_is_deterministic(instances):
    img, gt = instances[1]
    heat = coarse_heat(gt)
    first = GrabCutRefiner()(img, heat).mask
    cv2.setRNGSeed(12345)  # whatever else used OpenCV's RNG in between
    cv2.randu(np.zeros((10, 10), np.float32), 0, 1)
    assert np.array_equal(GrabCutRefiner()(img, heat).mask, first)


@pytest.mark.slow
def test_clicks_steer_grabcut_and_bad_clicks_fail_clearly(instances):
    img, gt = max(instances, key=lambda x: x[1].sum())
    ys, xs = np.nonzero(gt)
    mid = int(np.median(xs))
    half = gt.copy()
    half[:, mid:] = False  # attention saw only the object's left half
    heat = coarse_heat(half)
    plain = GrabCutRefiner()(img, heat).mask
    right = [(x, y) for x, y in zip(xs, ys) if x > mid + (xs.max() - mid) // 2]
    px, py = right[len(right) // 2]
    clicked = GrabCutRefiner()(img, heat, points=[(px, py)], labels=[1]).mask
    assert clicked[py, px] and not plain[py, px]
    assert iou(clicked, gt) > iou(plain, gt)
    inside = [(x, y) for x, y in zip(xs, ys) if plain[y, x]]
    nx, ny = inside[len(inside) // 2]
    removed = GrabCutRefiner()(img, heat, points=[(nx, ny)], labels=[0]).mask
    assert not removed[ny, nx]
    choice = refine_and_choose(img, heat, get_refiner("grabcut"), points=[(px, py)], labels=[1])
    assert choice.refined[py, px]
    with pytest.raises(RefinementError, match="does not take clicks"):
        refine_and_choose(img, heat, get_refiner("otsu"), points=[(px, py)], labels=[1])
    with pytest.raises(RefinementError, match="outside"):
        refine_and_choose(img, heat, get_refiner("grabcut"), points=[(img.shape[1] + 5, 0)], labels=[1])
    with pytest.raises(RefinementError, match="labels"):
        refine_and_choose(img, heat, get_refiner("grabcut"), points=[(1, 1), (2, 2)], labels=[1])

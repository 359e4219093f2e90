"""The learned refiner (pipeline/refine_net.py): training runs and resumes reproducibly, the shipped
weights beat no refinement on photos they never saw, bad input is refused."""
import json

import numpy as np
import pytest

from conftest import ROOT, SHARED


def _need_photos():
    if not (SHARED / "coco128" / "panoptic.json").exists() or not (SHARED / "coco-mini" / "instances.json").exists():
        pytest.skip(f"the annotated photos are not in {SHARED}")


def test_fold_split_is_by_photo_and_fixed():
    _need_photos()
    from pipeline import realdata

    keys = realdata.photo_keys()
    assert len(keys) == 180
    folds = realdata.fold_of(keys)
    assert folds == realdata.fold_of(list(reversed(keys)))  # depends on the set of photos, not their order
    assert sorted(np.bincount(list(folds.values()))) == [60, 60, 60]
    test, train = set(realdata.split([0])), set(realdata.split([1, 2]))
    assert not test & train and len(test | train) == 180


def test_coarse_kinds_degrade_the_truth():
    from pipeline.refine_net import TEST_KINDS, coarse_map, random_coarse

    gt = np.zeros((120, 160), bool)
    gt[30:90, 40:100] = True
    gt[50:70, 100:130] = True
    rng = np.random.default_rng(0)
    for kind in TEST_KINDS:
        h = coarse_map(gt, kind)
        assert h.shape == gt.shape and h.dtype == np.float32 and 0 <= h.min() and h.max() <= 1
        inter = ((h >= 0.5) & gt).sum() / ((h >= 0.5) | gt).sum()
        assert 0.3 < inter < 0.999, kind  # degraded, yet about the object
    for _ in range(20):
        h = random_coarse(gt, rng)
        assert h.shape == gt.shape and np.isfinite(h).all() and h.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown coarse kind"):
        coarse_map(gt, "sideways")


def test_training_runs_resumes_and_is_reproducible(tmp_path):
    _need_photos()
    import torch
    from safetensors.torch import load_file

    from pipeline.refine_net import LearnedRefiner, RefineTrainConfig, train

    def run(out, steps):
        return train(RefineTrainConfig(out=str(out), steps=steps, batch=4, max_photos=3, checkpoint_every=1),
                     log=lambda *_: None)

    a = run(tmp_path / "a", 2)
    run(tmp_path / "a", 3)  # resumes at step 2 and goes on to 3
    assert torch.load(tmp_path / "a" / "_train" / "state.pt", weights_only=False)["step"] == 3
    run(tmp_path / "b", 3)  # the same three steps in one go
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    cfg = json.loads((a / "config.json").read_text())
    assert len(cfg["photos"]) == 3 and cfg["folds"] == [1, 2]
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    heat = np.zeros((70, 90), np.float32)
    heat[20:50, 30:60] = 1
    res = LearnedRefiner(a)(image, heat)
    assert res.mask.shape == (70, 90) and res.mask.dtype == bool and res.refiner == "learned"


def test_shipped_weights_beat_no_refinement_on_unseen_photos():
    """Fold 0 of the photo split never reached the shipped weights (their config lists the photos
    used); on its first 25 photos the learned mask beats the coarse map itself."""
    _need_photos()
    from pipeline import realdata
    from pipeline.masks import iou
    from pipeline.refine import get_refiner
    from pipeline.refine_net import ASSET_DIR, coarse_map

    used = set(json.loads((ASSET_DIR / "config.json").read_text())["photos"])
    held = realdata.split([realdata.HELD_OUT_FOLD])
    assert not used & set(held)
    refiner = get_refiner("learned")
    kinds = ("box", "dilated", "blurred", "attention16")
    none, learned = {k: [] for k in kinds}, {k: [] for k in kinds}
    for key in held[:25]:
        p = realdata.load_photo(key)
        for gt in p.masks[:3]:
            for k in kinds:
                heat = coarse_map(gt, k)
                none[k].append(iou(heat >= 0.5, gt))
                learned[k].append(iou(refiner(p.image, heat).mask, gt))
    gain = {k: np.mean(learned[k]) - np.mean(none[k]) for k in kinds}
    assert len(none["box"]) >= 30
    assert np.mean(list(gain.values())) > 0.03, gain
    assert min(gain.values()) > -0.01, gain


def test_bad_input_is_refused():
    from pipeline.refine import RefinementError, RefinerUnavailable, get_refiner, refine_and_choose
    from pipeline.refine_net import LearnedRefiner

    with pytest.raises(RefinerUnavailable, match="train them"):
        LearnedRefiner(ROOT / "no-such-folder")
    if not (ROOT / "assets" / "refine_net" / "model.safetensors").exists():
        pytest.skip("no shipped refiner weights")
    r = get_refiner("learned")
    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(RefinementError, match="does not match"):
        r(image, np.zeros((40, 40), np.float32))
    with pytest.raises(RefinementError, match="flat"):
        r(image, np.zeros((40, 50), np.float32))
    heat = np.zeros((40, 50), np.float32)
    heat[10:30, 10:30] = 1
    with pytest.raises(RefinementError, match="does not take clicks"):
        refine_and_choose(image, heat, r, points=[[5, 5]], labels=[1])

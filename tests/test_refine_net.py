"""The learned refiner (pipeline/refine_net/): training runs and resumes reproducibly, the shipped
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


@pytest.mark.slow
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


@pytest.fixture(scope="module")
def held_out_gains():
    """Per coarse kind, mean IoU of the shipped learned refiner minus that of the coarse map itself
    (heat >= 0.5), on the 2 largest objects (>= 2 % of the photo) of the first 25 photos of fold 0,
    which never reached the shipped weights (their config lists the photos used)."""
    _need_photos()
    from pipeline import realdata
    from pipeline.masks import iou
    from pipeline.refine import get_refiner
    from pipeline.refine_net import ASSET_DIR, TEST_KINDS, coarse_map

    used = set(json.loads((ASSET_DIR / "config.json").read_text())["photos"])
    held = realdata.split([realdata.HELD_OUT_FOLD])
    assert not used & set(held)
    refiner = get_refiner("learned")
    none, learned = {k: [] for k in TEST_KINDS}, {k: [] for k in TEST_KINDS}
    for key in held[:25]:
        p = realdata.load_photo(key, min_area=0.02)
        for gt in sorted(p.masks, key=lambda m: -int(m.sum()))[:2]:
            for k in TEST_KINDS:
                heat = coarse_map(gt, k)
                if heat.max() == heat.min():  # a box filling the photo: nothing to refine
                    continue
                none[k].append(iou(heat >= 0.5, gt))
                learned[k].append(iou(refiner(p.image, heat).mask, gt))
    assert min(len(v) for v in none.values()) >= 30
    return {k: float(np.mean(learned[k]) - np.mean(none[k])) for k in TEST_KINDS}


@pytest.mark.slow
def test_shipped_weights_fix_too_large_masks_on_unseen_photos(held_out_gains):
    """Coarse maps that spill over the object (dilated) are pulled back onto it."""
    assert held_out_gains["dilated"] > 0.05, held_out_gains


@pytest.mark.xfail(strict=True, reason="issue 17's target is not met yet: the shipped refiner (600 steps on a shared "
                   "CPU) damages already-good maps (blurred, 16x16 attention-like, eroded); bench/RESULTS.md bench_refine")
@pytest.mark.slow
def test_shipped_weights_never_damage_a_kind_on_unseen_photos(held_out_gains):
    assert min(held_out_gains.values()) > -0.01, held_out_gains


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

"""The learned colour-transform harmonizer (pipeline/harmonize_net/): perturbation families,
the transform, training on a few photos, and the shipped weights on photos they never saw."""
import json

import numpy as np
import pytest

from conftest import ROOT, SHARED


def _need_photos():
    if not (SHARED / "coco128" / "panoptic.json").exists() or not (SHARED / "coco-mini" / "instances.json").exists():
        pytest.skip(f"the annotated photos are not in {SHARED}")


def _scene():
    rng = np.random.default_rng(3)
    image = np.clip(rng.normal(120, 40, (60, 80, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[15:45, 20:55] = True
    return image, mask


def test_every_family_changes_only_the_object():
    from pipeline.harmonize_net import FAMILIES, perturb

    image, mask = _scene()
    donor = (np.array([60.0, 20.0, -20.0]), np.array([10.0, 5.0, 5.0]))
    rng = np.random.default_rng(0)
    for fam in FAMILIES:
        comp = perturb(image, mask, fam, rng, donor)
        assert comp.dtype == np.uint8 and comp.shape == image.shape
        assert np.array_equal(comp[~mask], image[~mask]), fam
        assert np.abs(comp[mask].astype(int) - image[mask]).mean() > 2, fam
    with pytest.raises(ValueError, match="donor"):
        perturb(image, mask, "transfer", rng)
    with pytest.raises(ValueError, match="unknown perturbation family"):
        perturb(image, mask, "sepia", rng)


def test_transform_identity_and_torch_numpy_agree():
    import torch

    from pipeline.harmonize_net import apply_params

    x = np.random.default_rng(0).uniform(0, 1, (50, 3)).astype(np.float32)
    assert np.allclose(apply_params(x, np.zeros(15, np.float32)), np.clip(x, 1e-4, 1), atol=1e-6)
    p = np.random.default_rng(1).normal(0, 0.1, 15).astype(np.float32)
    t = apply_params(torch.from_numpy(x)[None], torch.from_numpy(p)[None])[0].numpy()
    assert np.allclose(apply_params(x, p), t, atol=1e-5)


@pytest.mark.slow
def test_training_one_epoch_on_a_few_photos_runs(tmp_path):
    _need_photos()
    from pipeline.harmonize import get_harmonizer
    from pipeline.harmonize_net import HarmonizeTrainConfig, train

    out = train(HarmonizeTrainConfig(out=str(tmp_path / "h"), reps=1, epochs=1, max_photos=3), log=lambda *_: None)
    assert json.loads((out / "config.json").read_text())["epochs"] == 1
    assert (out / "_train" / "state.pt").exists()  # resumable per epoch
    h = get_harmonizer("pct", weights=out)
    image, mask = _scene()
    res = h(image, mask)
    assert res.dtype == np.uint8 and np.array_equal(res[~mask], image[~mask])
    # the same network held in memory (how cross-validation measures a fold) answers the same
    from pipeline.harmonize_net import NetHarmonizer

    assert np.array_equal(NetHarmonizer.from_parts(h.net, h.mu, h.sigma)(image, mask), res)


def _fold0_cases(n_photos):
    from pipeline import realdata
    from pipeline.harmonize_net import FAMILIES, object_list, perturb

    keys = realdata.split([realdata.HELD_OUT_FOLD])[:n_photos]
    objs = object_list(keys)
    rng = np.random.default_rng(5)
    cases = []
    for i, (_, image, mask, _, _) in enumerate(objs):
        donor = objs[(i + 7) % len(objs)][3:5]
        for fam in FAMILIES:
            cases.append((fam, perturb(image, mask, fam, rng, donor), image, mask))
    return cases


@pytest.mark.slow
def test_shipped_weights_beat_none_on_unseen_photos():
    """Photos of fold 0 never reached the shipped weights (their config lists the photos used).
    Loose: over all families the fMSE falls well below doing nothing, and on the strong
    recolourings (Lab gain/offset, colour transfer, chains of two) on each. The mild white-balance
    and saturation changes are not reliably improved (bench/RESULTS.md, bench_harmonize_net)."""
    _need_photos()
    from pipeline import realdata
    from pipeline.harmonize import fmse, get_harmonizer
    from pipeline.harmonize_net import ASSET_DIR, FAMILIES

    used = set(json.loads((ASSET_DIR / "config.json").read_text())["photos"])
    assert not used & set(realdata.split([realdata.HELD_OUT_FOLD]))
    h = get_harmonizer("pct")
    cases = _fold0_cases(15)
    assert len(cases) >= 6 * 20
    out, base = {}, {}
    for fam in FAMILIES:
        cs = [c for c in cases if c[0] == fam]
        out[fam] = np.mean([fmse(h(c, m), img, m) for _, c, img, m in cs])
        base[fam] = np.mean([fmse(c, img, m) for _, c, img, m in cs])
    ratio = {f: round(out[f] / base[f], 3) for f in FAMILIES}
    assert sum(out.values()) < 0.85 * sum(base.values()), ratio
    assert all(ratio[f] < 0.9 for f in ("lab", "transfer", "combo")), ratio


@pytest.mark.slow
def test_better_than_nothing_on_the_real_ihamony4_triple():
    import cv2
    from PIL import Image

    from pipeline.harmonize import fmse, get_harmonizer

    d = SHARED / "iHarmony4" / "data"
    if not (d / "a0002_1_4.jpg").exists():
        pytest.skip("the iHarmony4 triple is not in ../shared/data")
    small = lambda a, i=cv2.INTER_AREA: cv2.resize(a, (a.shape[1] // 8, a.shape[0] // 8), interpolation=i)
    real = small(np.asarray(Image.open(d / "a0002.jpg").convert("RGB")))
    comp = small(np.asarray(Image.open(d / "a0002_1_4.jpg").convert("RGB")))
    mask = small((np.asarray(Image.open(d / "a0002_1.png").convert("L")) > 127).astype(np.uint8), cv2.INTER_NEAREST) > 0
    assert fmse(get_harmonizer("pct")(comp, mask), real, mask) < fmse(comp, real, mask)


def test_bad_input_is_refused():
    from pipeline.harmonize import HarmonizeError, get_harmonizer

    with pytest.raises(HarmonizeError, match="train it"):
        get_harmonizer("pct", weights=ROOT / "no-such-folder")
    if not (ROOT / "assets" / "harmonize_net" / "model.safetensors").exists():
        pytest.skip("no shipped harmonizer weights")
    h = get_harmonizer("pct")
    image, mask = _scene()
    with pytest.raises(HarmonizeError, match="empty"):
        h(image, np.zeros_like(mask))
    with pytest.raises(HarmonizeError, match="does not match"):
        h(image, mask[:-1])

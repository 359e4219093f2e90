"""Placement, harmonization and occlusion-exact composition on real photos."""
import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, coco_image
from pipeline.compose import ComposeError, fit_box, paste
from pipeline.harmonize import (HarmonizeError, fmse, get_harmonizer, perturb, ring_mask)
from pipeline.placement import PlacementError, box_size, heatmap

LIBCOM = SHARED / "libcom" / "tests"


def load(path, gray_mask=False):
    im = Image.open(path)
    return (np.asarray(im.convert("L")) > 127) if gray_mask else np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def coco_scene(coco):
    """A COCO photo with at least three instances, and its (class, mask) list."""
    for img_id in sorted(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=False))
        if len(anns) >= 3:
            inst = [(coco.loadCats(a["category_id"])[0]["name"], coco.annToMask(a).astype(bool)) for a in anns]
            return coco_image(coco, img_id), inst


@pytest.fixture(scope="module")
def dog():
    return (load(LIBCOM / "fopa_heat_map/foreground/1674.jpg"), load(LIBCOM / "fopa_heat_map/foreground_mask/1674.jpg", True))


def test_paste_makes_masks_occlusion_exact(coco_scene, dog):
    bg, inst = coco_scene
    fg, fm = dog
    name, target = max(inst, key=lambda x: x[1].sum())
    ys, xs = np.nonzero(target)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # right over the largest instance
    comp = paste(bg, inst, fg, fm, box, "dog")
    new = comp.instances[-1][1]
    assert comp.instances[-1][0] == "dog" and new.any()
    remaining = comp.instances[:-1]
    assert len(remaining) + len(comp.record["dropped"]) == len(inst)
    for (n_old, m_old) in inst:
        match = [m for n, m in remaining if n == n_old and not (m & ~m_old).any()]
        expected = m_old & ~new
        if expected.any():
            assert any(np.array_equal(m, expected) for m in match)
        else:
            assert n_old in comp.record["dropped"]
    for _, m in remaining:
        assert not (m & new).any()
    # pixels outside the object are the background's, exactly
    assert np.array_equal(comp.image[~new], bg[~new])
    assert comp.record["box"] == list(fit_box(box, bg.shape[:2]))


def test_fully_covered_instance_is_dropped():
    bg = np.zeros((64, 64, 3), np.uint8)
    small = np.zeros((64, 64), bool)
    small[20:30, 20:30] = True
    fg = np.full((40, 40, 3), 200, np.uint8)
    comp = paste(bg, [("cup", small)], fg, np.ones((40, 40), bool), (10, 10, 50, 50), "dog")
    assert comp.record["dropped"] == ["cup"] and [n for n, _ in comp.instances] == ["dog"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(fg_mask=np.zeros((40, 40), bool)), "empty"),
    (dict(box=(0, 0, 100, 100)), "larger"),
    (dict(box=(5, 5, 5, 20)), "empty"),
    (dict(fg_mask=np.ones((10, 10), bool)), "does not match"),
    (dict(class_name=" "), "class name"),
])
def test_bad_insertions_are_clear(kwargs, match):
    args = dict(background=np.zeros((64, 64, 3), np.uint8), instances=[], fg=np.zeros((40, 40, 3), np.uint8),
                fg_mask=np.ones((40, 40), bool), box=(0, 0, 20, 20), class_name="dog")
    args.update(kwargs)
    with pytest.raises(ComposeError, match=match):
        paste(**args)


def test_boxes_outside_are_shifted_in_and_odd_images_accepted():
    assert fit_box((-10, 50, 20, 90), (64, 64)) == (0, 24, 30, 64)
    gray16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    rgba = np.zeros((30, 30, 4), np.uint8)
    comp = paste(gray16, [], rgba, np.ones((30, 30), bool), (40, 40, 70, 70), "dog")
    assert comp.image.shape == (64, 64, 3) and comp.record["box"] == [34, 34, 64, 64]


def test_placement_on_fopa_sample_stays_inside_and_off_objects(dog):
    bg = load(LIBCOM / "fopa_heat_map/background/1674.jpg")
    fg, fm = dog
    res = heatmap(bg, fm, fg_class="dog", top_k=5)
    assert res.maps.shape == (len(res.scales), 512, 512) and 0 <= res.maps.min() and res.maps.max() <= 1
    # scores are normalised to [0, 1] (maps and boxes alike), and the best of them is exactly 1
    assert max(res.maps.max(), res.boxes[0][2]) == 1
    for s, (x1, y1, x2, y2), score in res.boxes:
        assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512 and 0 <= score <= 1
    assert [b[2] for b in res.boxes] == sorted([b[2] for b in res.boxes], reverse=True)
    assert res.boxes == heatmap(bg, fm, fg_class="dog", top_k=5).boxes  # deterministic
    # eq. 4: the best box's centre is the argmax of its scale's map, its size scale x object size
    s, (x1, y1, x2, y2), _ = res.boxes[0]
    fh, fw = np.ptp(np.nonzero(fm)[0]) + 1, np.ptp(np.nonzero(fm)[1]) + 1
    assert (x2 - x1, y2 - y1) == box_size(s, (fh, fw), (512, 512))


def _box_overlap(result, occupied) -> float:
    """Mean share of each ranked box that covers existing objects."""
    return float(np.mean([occupied[y1:y2, x1:x2].mean() for _, (x1, y1, x2, y2), _ in result.boxes]))


@pytest.mark.slow
def test_placement_avoids_existing_objects(coco, dog):
    """On COCO photos where a placement that ignored the objects would cover them (the ranked boxes
    of the same scorer without ``existing_masks`` lie > 30 % on objects) while free room exists
    (objects cover < half the photo), the boxes with the objects given lie < 10 % on them."""
    scenes = 0
    for img_id in sorted(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=False))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        if len(masks) < 3 or np.any(masks, axis=0).mean() >= 0.5:
            continue
        occupied = np.any(masks, axis=0)
        bg = coco_image(coco, img_id)
        blind = heatmap(bg, dog[1], fg_class="dog", scales=(0.2, 0.3))
        if _box_overlap(blind, occupied) <= 0.3:
            continue  # ignoring the objects would not fail here: no evidence either way
        seeing = heatmap(bg, dog[1], existing_masks=masks, fg_class="dog", scales=(0.2, 0.3))
        assert _box_overlap(seeing, occupied) < 0.1, (img_id, _box_overlap(blind, occupied))
        scenes += 1
        if scenes == 5:
            break
    assert scenes == 5, f"only {scenes} COCO photos where ignoring the objects fails"


def test_flying_objects_go_up_in_the_opa_sky():
    bg = load(SHARED / "OPA/eval_opascore/examples/composite_1.jpg")
    plane = load(SHARED / "OPA/eval_opascore/examples/mask_1.jpg", True)
    up = heatmap(bg, plane, fg_class="airplane", scales=(0.15,)).boxes[0][1]
    down = heatmap(bg, plane, fg_class="car", scales=(0.15,)).boxes[0][1]
    assert (up[1] + up[3]) / 2 < (down[1] + down[3]) / 2


def test_placement_errors():
    with pytest.raises(PlacementError, match="empty"):
        heatmap(np.zeros((64, 64, 3), np.uint8), np.zeros((8, 8), bool))
    with pytest.raises(PlacementError, match="does not fit"):
        heatmap(np.zeros((64, 64, 3), np.uint8), np.ones((8, 8), bool), scales=(2.0,))


@pytest.mark.slow
def test_harmonizers_on_a_real_perturbed_object(coco_scene):
    """A COCO object with its colours shifted (iHarmony4-style), five random shifts: the
    learned and ring harmonizers bring it back toward the true photo, the naive global one
    makes it worse (as the module says), and none of them touches a pixel outside the object."""
    bg, inst = coco_scene
    _, m = max(inst, key=lambda x: x[1].sum())
    rng = np.random.default_rng(0)
    errors = {name: [] for name in ("none", "ring", "global", "learned")}
    for _ in range(5):
        comp = perturb(bg, m, rng)
        assert np.array_equal(comp[~m], bg[~m]) and fmse(comp, bg, m) > 10
        for name in errors:
            out = get_harmonizer(name)(comp, m)
            assert out.shape == bg.shape and out.dtype == np.uint8
            assert np.array_equal(out[~m], comp[~m]), name  # only the object changes
            errors[name].append(fmse(out, bg, m))
    mean = {name: float(np.mean(e)) for name, e in errors.items()}
    assert mean["learned"] < 0.5 * mean["none"], mean
    assert mean["ring"] < mean["none"] < mean["global"], mean
    with pytest.raises(HarmonizeError):
        get_harmonizer("ring")(comp, np.zeros(m.shape, bool))
    with pytest.raises(HarmonizeError, match="unknown"):
        get_harmonizer("magic")
    assert ring_mask(m).any() and not (ring_mask(m) & m).any()


@pytest.mark.slow
def test_learned_harmonizer_beats_doing_nothing_on_held_out_photos():
    from pipeline.harmonize import ASSET, coco_objects

    if not ASSET.exists():
        pytest.fail("assets/harmonizer_ridge.npz is missing: run python -m pipeline.harmonize train")
    rng = np.random.default_rng(123)
    learned = get_harmonizer("learned")
    base, ours = [], []
    for img, m in coco_objects(SHARED / "coco-mini", "test"):  # photos the model never saw
        comp = perturb(img, m, rng)
        base.append(fmse(comp, img, m))
        ours.append(fmse(learned(comp, m), img, m))
    assert np.mean(ours) < 0.8 * np.mean(base), (np.mean(ours), np.mean(base))

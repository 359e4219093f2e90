"""The object bank on real data: COCO-mini instances (imported into a store) cut out and
inserted into coco128 photos (with their panoptic instances), masks exact after occlusion."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHARED
from pipeline.bank import BankError, ObjectBank, supply
from pipeline.compose import paste
from pipeline.dataset import Store
from pipeline.export import import_coco
from pipeline.placement import heatmap

COCO128 = SHARED / "coco128"


@pytest.fixture(scope="module")
def bank_store(tmp_path_factory, coco):
    store = Store(tmp_path_factory.mktemp("bank_store"))
    import_coco(store, SHARED / "coco-mini" / "instances.json", SHARED / "coco-mini" / "images")
    return store


def _coco128_scene(image_id: int):
    """A coco128 photo and its non-crowd "thing" instances as (class, HW bool mask)."""
    meta = json.loads((COCO128 / "panoptic.json").read_text())
    cats = {c["id"]: c for c in meta["categories"]}
    ann = next(a for a in meta["annotations"] if a["image_id"] == image_id)
    image = np.asarray(Image.open(COCO128 / "images" / ann["file_name"].replace(".png", ".jpg")).convert("RGB"))
    rgb = np.asarray(Image.open(COCO128 / "panoptic" / ann["file_name"]).convert("RGB")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 ** 2 * rgb[..., 2]
    inst = [(cats[s["category_id"]]["name"], ids == s["id"]) for s in ann["segments_info"]
            if cats[s["category_id"]]["isthing"] and not s["iscrowd"]]
    return image, inst


@pytest.mark.slow
def test_bank_indexes_every_whole_instance_of_the_store(bank_store, coco):
    bank = ObjectBank(bank_store, min_side=24, whole_only=True)
    expected = {}
    for ann in coco.loadAnns(coco.getAnnIds(iscrowd=False)):
        m = coco.annToMask(ann).astype(bool)
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        h, w = m.shape
        if min(x2 - x1, y2 - y1) < 24 or x1 == 0 or y1 == 0 or x2 == w or y2 == h:
            continue
        name = coco.loadCats(ann["category_id"])[0]["name"]
        expected[name] = expected.get(name, 0) + 1
    assert bank.classes() == dict(sorted(expected.items(), key=lambda kv: (-kv[1], kv[0])))
    assert len(bank) == sum(expected.values()) > 50
    assert len(ObjectBank(bank_store, whole_only=False)) > len(bank)  # truncated objects were left out
    with pytest.raises(BankError, match="no 'unicorn'.*classes in the bank: person"):
        bank.pick("unicorn")


@pytest.mark.slow
def test_bank_objects_inserted_into_coco128_photos_masks_exact(bank_store, coco):
    if not (COCO128 / "panoptic.json").exists():
        pytest.skip("coco128 not found")
    bank = ObjectBank(bank_store)
    meta = json.loads((COCO128 / "panoptic.json").read_text())
    scenes = [a["image_id"] for a in meta["annotations"]][:3]
    classes = [c for c in ("dog", "horse", "bus") if c in bank][:3]
    assert classes, bank.classes()
    for image_id, cls in zip(scenes, classes * 3):
        obj = bank.pick(cls)
        crop, crop_mask = bank.cut_out(obj)
        # the cut-out is the stored COCO mask and photo, exactly
        rec = bank_store.get(obj.sample_id)
        full_mask = bank_store.mask(rec.instances[obj.index].mask)
        x1, y1, x2, y2 = obj.bbox
        assert crop.dtype == np.uint8 and crop.shape == (y2 - y1, x2 - x1, 3) and crop_mask.dtype == bool
        assert np.array_equal(crop_mask, full_mask[y1:y2, x1:x2])
        assert np.array_equal(crop, bank_store.image(rec.image)[y1:y2, x1:x2])

        background, instances = _coco128_scene(image_id)
        placement = heatmap(background, crop_mask, existing_masks=[m for _, m in instances], fg_class=cls)
        box = placement.boxes[0][1]
        comp = paste(background, instances, crop, crop_mask, box, cls)
        new = comp.instances[-1]
        assert new[0] == cls and new[1].any()
        ys, xs = np.nonzero(new[1])
        assert box[0] <= xs.min() and xs.max() < box[2] and box[1] <= ys.min() and ys.max() < box[3]
        # every older instance lost exactly the pixels the new object covers; fully covered ones dropped
        kept = iter(comp.instances[:-1])
        for name, m in instances:
            rest = m & ~new[1]
            if rest.any():
                got_name, got = next(kept)
                assert got_name == name and np.array_equal(got, rest)
            else:
                assert name in comp.record["dropped"]
        assert next(kept, None) is None
        assert np.array_equal(comp.image[~new[1]], background[~new[1]])  # the blend stays inside the mask


@pytest.mark.slow
def test_supply_orders_suggestions_by_who_can_provide_them(bank_store):
    from pipeline.thesaurus import Thesaurus

    th = Thesaurus.load(ROOT / "assets" / "thesaurus_coco.npz")
    ranked = th.rank("horse", k=15)
    bank = ObjectBank(bank_store)
    embedded = ["dog", "cat", "car"]  # a small generator vocabulary
    out = supply(ranked, vocabulary=embedded, bank=bank)
    assert sorted(s.name for s in out) == sorted(r[0] for r in ranked)
    flags = [s.supplied for s in out]
    assert flags == sorted(flags, reverse=True)  # every supplied one before every other
    for s in out:
        assert ("bank" in s.suppliers) == (s.name in bank)
        assert ("model" in s.suppliers) == (s.name in embedded)
    order = [r[0] for r in ranked]
    supplied = [s.name for s in out if s.supplied]
    assert supplied == [n for n in order if n in supplied]  # the thesaurus' order kept within a group
    assert any(s.supplied for s in out) and "person" in supplied
    # a real Stable Diffusion model draws any class: everything is supplied
    assert all("model" in s.suppliers for s in supply(ranked, vocabulary=None))
    assert supply(["horse"], vocabulary=[])[0].label() == "horse (0.00; not available)"


@pytest.mark.slow
def test_shipped_examples_feed_the_bank(tmp_path):
    """assets/examples: CC BY photos with COCO masks, usable with no shared data at all."""
    from pipeline.bank import EXAMPLES, import_examples

    store = Store(tmp_path / "s")
    ids = import_examples(store)
    assert len(ids) == 4 and import_examples(store) == ids  # idempotent
    meta = json.loads((EXAMPLES / "instances.json").read_text())
    assert {im["license"] for im in meta["images"]} == {4}  # CC BY 2.0 only
    attribution = (EXAMPLES / "ATTRIBUTION.md").read_text()
    assert all(im["file_name"] in attribution and im["flickr_url"] in attribution for im in meta["images"])
    bank = ObjectBank(store)
    assert {"person", "car"} <= set(bank.classes())
    crop, mask = bank.cut_out(bank.pick("car"))
    assert crop.shape[:2] == mask.shape and mask.any() and mask[0].any() and mask[:, 0].any()  # tight crop

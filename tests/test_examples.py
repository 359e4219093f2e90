"""The pre-made examples a fresh studio shows: a store of their own, copied into the user's only on request."""
import json

import numpy as np

from pipeline.dataset import Store
from pipeline.examples import EXAMPLE_TAG, EXAMPLES, GENERATED, GENERATED_SAMPLES, build_examples_store, copy_examples


def test_examples_store_holds_the_shipped_photos_and_generated_samples(tmp_path):
    root = build_examples_store(tmp_path / "ex")
    assert build_examples_store(root) == root  # idempotent: a restart adds nothing
    shipped = json.loads((EXAMPLES / "instances.json").read_text())
    with Store(root) as ex, np.load(GENERATED) as z:
        recs = ex.query()
        photos = [r for r in recs if r.model == "real (COCO)"]
        made = [r for r in recs if r.model == "embedded"]
        assert len(photos) == len(shipped["images"]) and len(made) == len(GENERATED_SAMPLES) == len(recs) - len(photos)
        assert sum(len(r.instances) for r in photos) == len(shipped["annotations"])
        assert [(r.classes[0], r.seed) for r in made] == [tuple(x) for x in GENERATED_SAMPLES]
        for i, r in enumerate(made):  # as the studio accepts them: the mask is the stored heat at the threshold
            assert r.status == "accepted" and EXAMPLE_TAG in r.tags and r.instances[0].source == "generated"
            assert np.array_equal(ex.image(r.image), z["images"][i])
            assert np.array_equal(ex.masks(r)[0][1], ex.heat(r) >= r.threshold) and ex.masks(r)[0][1].any()
            assert np.array_equal(ex.mask(r.refined_mask), z["refined"][i])
    assert "generated.npz" in (EXAMPLES / "ATTRIBUTION.md").read_text()


def test_copy_examples_on_request_only_and_exactly(tmp_path):
    root = build_examples_store(tmp_path / "ex")
    with Store(root) as ex, Store(tmp_path / "mine") as mine:
        assert mine.count() == 0
        ids = copy_examples(ex, mine)
        assert copy_examples(ex, mine) == ids  # idempotent
        assert len(ids) == ex.count() == mine.count()
        for a, b in zip(ex.query(), (mine.get(i) for i in ids)):
            assert b.uid == a.uid and EXAMPLE_TAG in b.tags and b.status == "accepted"
            assert [(i.class_name, i.source, i.iscrowd) for i in a.instances] == \
                   [(i.class_name, i.source, i.iscrowd) for i in b.instances]
            assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(ex.masks(a), mine.masks(b)))
            assert (a.heat_map is None) == (b.heat_map is None) and a.threshold == b.threshold

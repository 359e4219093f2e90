"""Adaptive Matching Thesaurus: eq. 3 exactly, corpus formats, and sanity on real captions."""
import gzip
import json

import numpy as np
import pytest

from conftest import ROOT, SHARED
from pipeline.thesaurus import Thesaurus

CORPUS = [
    "A dog sleeps on the sofa.",
    "Two dogs and a cat on a couch",          # plural + synonym: dog, cat, sofa
    "a cat next to a chair",
    "A man walks his dog",                    # person via "man"
    "People sitting on chairs around a table",  # person, chair, diningtable
    "DOG!",
    "hotdog stand",                           # no dog here: word boundary
]


def test_eq3_on_a_hand_written_corpus():
    th = Thesaurus.build(CORPUS, "voc")
    assert th.n_captions == 7
    assert th.counts[th.classes.index("dog")] == 4
    assert th.similarity("cat", "dog") == pytest.approx(1 / 4)   # 1 of 4 dog captions has a cat
    assert th.similarity("sofa", "dog") == pytest.approx(2 / 4)
    assert th.similarity("dog", "sofa") == pytest.approx(2 / 2)
    assert th.similarity("person", "chair") == pytest.approx(1 / 2)
    assert th.similarity("diningtable", "person") == pytest.approx(1 / 2)
    assert th.similarity("aeroplane", "dog") == 0.0
    assert th.rank("dog", k=3, min_support=1) == [("sofa", 0.5, 2), ("cat", 0.25, 1), ("person", 0.25, 1)]
    assert th.rank("dog", k=3, min_support=2) == [("sofa", 0.5, 2)]


def test_free_caption_scene_and_multiword_terms():
    th = Thesaurus.build(["a hot dog on a dining table", "a teddy bear on a table", "a bear in the woods",
                          "a fork on the dining table", "a dog"], "coco")
    assert th.classes_in("Two hot dogs and a teddy bear on a dining table") == ["hot dog", "dining table", "teddy bear"]
    assert th.counts[th.classes.index("dog")] == 1 and th.counts[th.classes.index("bear")] == 1
    assert [r[0] for r in th.rank("A picnic: a dining table", min_support=1)] == ["fork", "hot dog", "teddy bear"]
    with pytest.raises(ValueError, match="no class"):
        th.rank("an empty room")
    with pytest.raises(KeyError):
        th.similarity("unicorn", "dog")


def test_all_corpus_formats_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "c.txt").write_text("\n".join(CORPUS) + "\n\n")
    with gzip.open(tmp_path / "c.txt.gz", "wt") as f:
        f.write("\n".join(CORPUS))
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"caption": c}) for c in CORPUS))
    pq.write_table(pa.table({"TEXT": CORPUS}), tmp_path / "c.parquet", row_group_size=2)
    (tmp_path / "c.json").write_text(json.dumps({"annotations": [{"image_id": 1, "caption": c} for c in CORPUS]}))
    ref = Thesaurus.build(CORPUS, "voc")
    for name in ("c.txt", "c.txt.gz", "c.jsonl", "c.parquet", "c.json"):
        th = Thesaurus.build(tmp_path / name, "voc", chunk=3)
        assert th.n_captions == 7 and np.array_equal(th.cooc, ref.cooc), name
    # shards: a glob, or separate tables merged, give the same counts
    (tmp_path / "shards").mkdir()
    for i in range(0, 7, 3):
        (tmp_path / "shards" / f"part{i}.txt").write_text("\n".join(CORPUS[i : i + 3]))
    assert np.array_equal(Thesaurus.build(str(tmp_path / "shards" / "*.txt"), "voc").cooc, ref.cooc)
    parts = [Thesaurus.build(p, "voc") for p in sorted((tmp_path / "shards").glob("*.txt"))]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert np.array_equal(merged.cooc, ref.cooc) and merged.n_captions == 7
    th2 = Thesaurus.load(ref.save(tmp_path / "t.npz"))
    assert th2.classes == ref.classes and np.array_equal(th2.cooc, ref.cooc)


def test_bad_corpora(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        Thesaurus.build(tmp_path / "empty.txt", "voc")
    with pytest.raises(FileNotFoundError):
        Thesaurus.build(tmp_path / "missing.txt", "voc")
    (tmp_path / "x.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="COCO captions"):
        Thesaurus.build(tmp_path / "x.json", "voc")
    with pytest.raises(ValueError, match="empty"):
        Thesaurus.build(CORPUS, "")


def test_real_coco_captions_rank_table_things_for_a_dining_table():
    corpus = SHARED / "captions" / "coco_val2017.txt.gz"
    if not corpus.exists():
        pytest.skip("shared captions not found")
    th = Thesaurus.build(corpus, "coco")
    assert th.n_captions == 25014
    ranked = [o for o, _, _ in th.rank("dining table", k=80, min_support=1)]
    for obj in ("fork", "cup", "chair"):
        assert obj in ranked
        assert "airplane" not in ranked or ranked.index(obj) < ranked.index("airplane")
    assert th.rank("tennis racket", k=1)[0][0] == "person"


def test_shipped_tables_match_their_build_command():
    corpus = SHARED / "captions" / "coco_val2017.txt.gz"
    if not corpus.exists():
        pytest.skip("shared captions not found")
    for vocab in ("coco", "voc"):
        shipped = Thesaurus.load(ROOT / "assets" / f"thesaurus_{vocab}.npz")
        assert np.array_equal(shipped.cooc, Thesaurus.build(corpus, vocab).cooc)

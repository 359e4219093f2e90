"""Batch generation: determinism, resume after kill -9, filter reasons, per-class threshold,
insertion, and a local Ray cluster that loses a worker. All on the embedded model."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from pipeline.batch import (BatchSpec, FilterConfig, candidate_seed, candidate_uid, iter_kept, mask_metrics,
                            resolve_classes, run_batch)
from pipeline.dataset import Store
from pipeline.masks import DEFAULT_THRESHOLDS, ThresholdCalibrator
from pipeline.thesaurus import Thesaurus

FAST = dict(steps=6, batch_size=2)


def _run(tmp_path, name, spec, **kw):
    store = Store(tmp_path / name)
    return store, run_batch(spec, store, **kw)


def _snapshot(store):
    """uid -> (status, image key, instance mask keys) for every sample."""
    return {r.uid: (r.status, r.image, tuple(i.mask for i in r.instances)) for r in store.query()}


def _check_blobs(store):
    """Every blob referenced by the store exists, decodes, and hashes to its name."""
    n = 0
    for r in store.query():
        keys = [r.image, r.heat_map, r.refined_mask, *(i.mask for i in r.instances)]
        for key in filter(None, keys):
            data = store.blob_bytes(key)
            assert hashlib.sha256(data).hexdigest() == key.split(".")[0], key
            if key.endswith(".png"):
                Image.open(io.BytesIO(data)).load()
            else:
                np.load(io.BytesIO(data), allow_pickle=False)
            n += 1
    return n


def test_seeds_are_stable_and_do_not_collide():
    seeds = {(c, k): candidate_seed(0, c, k) for c in resolve_classes("voc") for k in range(200)}
    assert len(set(seeds.values())) == len(seeds)  # no two candidates share a seed
    assert all(candidate_seed(0, c, k) == s for (c, k), s in list(seeds.items())[:50])
    assert candidate_seed(1, "dog", 0) != candidate_seed(0, "dog", 0)
    assert resolve_classes("coco")[:3] == ("person", "bicycle", "car") and len(resolve_classes("coco")) == 80
    assert resolve_classes(" ball, star,ball ") == ("ball", "star")
    with pytest.raises(ValueError, match="no classes"):
        resolve_classes(" , ")


def test_mask_metrics_and_filter_reasons():
    heat = np.zeros((64, 64), np.float32)
    heat[20:40, 20:40] = 1.0  # a clear object in the middle
    m = mask_metrics(heat, None, np.ones(len(DEFAULT_THRESHOLDS)))
    i5 = int(np.argmin(np.abs(DEFAULT_THRESHOLDS - 0.5)))
    assert m["area"][i5] == pytest.approx(400 / 4096, abs=1e-4)
    assert m["border"][i5] == 0 and m["contrast"] == pytest.approx(400 / 410, abs=1e-3)  # top 10 % = 410 px
    f = FilterConfig()
    assert f.reasons(m, i5) == []
    m["ious"][i5] = 0.2
    assert f.reasons(m, i5) == ["low_agreement"]
    m["ious"][i5] = 0.8  # fine in absolute terms, but well below what this class usually reaches
    assert f.reasons(m, i5) == [] and f.reasons(m, i5, class_agreement=0.9) == ["low_agreement"]
    assert f.reasons(m, i5, class_agreement=0.83) == []

    edge = np.zeros((64, 64), np.float32)
    edge[:, :30] = 1.0  # an object cut by the frame, covering half the image
    me = mask_metrics(edge, None, np.ones(len(DEFAULT_THRESHOLDS)))
    assert "touches_border" in f.reasons(me, i5)
    speck = np.zeros((64, 64), np.float32)
    speck[30:32, 30:32] = 1.0
    assert "too_small" in f.reasons(mask_metrics(speck, None, np.ones(19)), i5)
    fog = np.random.default_rng(0).uniform(0.6, 1.0, (64, 64)).astype(np.float32)
    reasons = f.reasons(mask_metrics(fog, None, np.ones(19)), i5)
    assert "low_contrast" in reasons and "too_large" in reasons
    assert f.reasons({"error": "flat heat map"}, i5) == ["refine_failed"]


@pytest.mark.slow
def test_same_command_same_data_and_filter_reasons_recorded(tmp_path):
    spec = BatchSpec.of(("ball", "star"), per_class=3, **FAST)
    events = []
    a, rep = _run(tmp_path, "a", spec, progress=events.append)
    # progress reaches the caller as it happens: candidates only grow, and the last event is the result
    assert [e.computed for e in events] == sorted(e.computed for e in events) and events[-1].phase == "settle"
    assert events[-1].kept == {"ball": 3, "star": 3} and events[-1].computed == rep.generated > 0
    assert any(e.phase == "warmup" for e in events)
    b, _ = _run(tmp_path, "b", spec)
    assert _snapshot(a) == _snapshot(b)  # same seeds -> same pixels and masks (content-addressed blobs)
    kept = list(iter_kept(a, spec.run_key))
    assert [r.meta["batch"]["class"] for r in kept] == ["ball"] * 3 + ["star"] * 3
    for r in a.query(tags=["run-" + spec.run_key]):
        b_ = r.meta["batch"]
        assert r.uid == candidate_uid(spec.run_key, b_["class"], b_["k"])
        assert r.seed == candidate_seed(0, b_["class"], b_["k"])
        reasons = spec.policy.filter.reasons(b_["metrics"], int(np.argmin(np.abs(DEFAULT_THRESHOLDS - r.threshold))))
        assert (r.status == "accepted") == (b_["verdict"] == ["kept"])
        assert reasons == [] or b_["verdict"] == reasons  # dropped ones say why
        if r.status == "accepted":  # the instance mask is the heat map at the chosen threshold
            assert np.array_equal(a.mask(r.instances[0].mask), a.array(r.heat_map).astype(np.float32) >= r.threshold)
    # the report counts what the store holds
    for c, cr in rep.classes.items():
        recs = [r for r in a.query(classes=[c])]
        assert cr.kept == sum(r.status == "accepted" for r in recs) == 3
        assert cr.dropped == sum(r.status == "rejected" for r in recs) == sum(cr.reasons.values())
    report_file = json.loads((tmp_path / "a" / f"batch-{spec.run_key}.json").read_text())
    assert report_file["report"]["classes"]["ball"]["kept"] == 3

    # a stricter filter re-decides from the stored metrics without generating anything
    strict = replace(spec, policy=replace(spec.policy, filter=FilterConfig(min_agreement=0.99), max_candidates=6))
    rep2 = run_batch(strict, a)
    assert rep2.generated == 0 and rep2.resumed == rep.resumed + rep.generated
    assert rep2.classes["ball"].reasons["low_agreement"] >= 1
    assert a.count(status="accepted") == sum(r.kept for r in rep2.classes.values()) < 6


@pytest.mark.slow
def test_per_class_threshold_is_calibrated_on_warmup(tmp_path):
    spec = BatchSpec.of(("pumpkin",), per_class=3, threshold_mode="per-class", warmup=4, **FAST)
    store, rep = _run(tmp_path, "s", spec)
    recs = store.query(tags=["run-" + spec.run_key])
    cal = ThresholdCalibrator()
    for r in recs:
        if r.meta["batch"]["k"] < 4:
            cal.add("pumpkin", np.asarray(r.meta["batch"]["metrics"]["ious"]))
    assert cal.count("pumpkin") == 4
    assert rep.classes["pumpkin"].threshold == cal.threshold("pumpkin")
    assert {r.threshold for r in recs} == {cal.threshold("pumpkin")}
    assert store.count(status="accepted") == 3


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path):
    store_dir = tmp_path / "store"
    cmd = [sys.executable, "-m", "pipeline", "batch", "--classes", "ball,star", "--per-class", "8", "--steps", "8",
           "--batch-size", "2", "--warmup", "4", "--store", str(store_dir), "--quiet"]
    import torch

    # the clean run below is in-process: the CLI must sum on as many threads for pixels to match
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    n = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if (store_dir / "store.sqlite").exists():
            n = Store(store_dir).count()
            if n >= 10:  # past the 2 x 4 warm-up candidates, in the middle of the main phase
                break
    assert proc.poll() is None, "the batch finished before it could be killed; give it more work"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(store_dir)
    before = {r.uid: (r.id, r.created, r.image) for r in store.query()}
    assert len(before) >= 10
    _check_blobs(store)

    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    store = Store(store_dir)
    after = store.query()
    uids = [r.uid for r in after]
    assert len(uids) == len(set(uids))  # no duplicates
    for r in after:  # nothing finished before the kill was redone or changed
        if r.uid in before:
            assert (r.id, r.created, r.image) == before[r.uid]
    report = json.loads(next(store_dir.glob("batch-*.json")).read_text())["report"]
    assert report["resumed"] == len(before)
    assert report["generated"] == len(after) - len(before) > 0
    for c in ("ball", "star"):
        assert store.count(status="accepted", classes=[c]) == 8
    assert _check_blobs(store) >= 4 * len(after)
    # and the resumed store holds exactly what an uninterrupted run makes
    spec = BatchSpec.of(("ball", "star"), per_class=8, steps=8, batch_size=2, warmup=4)
    clean, _ = _run(tmp_path, "clean", spec)
    assert {k: v for k, v in _snapshot(store).items()} == _snapshot(clean)


@pytest.mark.slow
def test_insert_composites_with_thesaurus_suggestion(tmp_path):
    corpus = ["a ball next to a star", "a star and a ball", "a ball on the grass", "a star in the sky",
              "a leaf and a ball"]
    th = Thesaurus.build(corpus, vocabulary=["ball", "star", "leaf"])
    th_path = th.save(tmp_path / "th.npz")
    spec = BatchSpec.of(("ball", "star"), per_class=2, objects=1, thesaurus=str(th_path), harmonizer="none", **FAST)
    store, rep = _run(tmp_path, "s", spec)
    comps = store.query(tags=["composite"])
    assert len(comps) == rep.classes["ball"].composites + rep.classes["star"].composites
    assert rep.classes["ball"].composites + len(rep.classes["ball"].composite_skips) == 2
    assert comps, rep
    for comp in comps:
        base = store.get_by_uid(comp.meta["batch"]["base"])
        scene = base.meta["batch"]["class"]
        other = {"ball": "star", "star": "ball"}[scene]  # the thesaurus' only suggestion in the batch classes
        assert comp.classes == [scene, other] and comp.inserted[0]["class"] == other
        (s_name, s_key), (o_name, o_key) = [(i.class_name, i.mask) for i in comp.instances]
        scene_mask, obj_mask = store.mask(s_key), store.mask(o_key)
        assert not (scene_mask & obj_mask).any()  # occlusion-exact: the new object owns its pixels
        base_mask = store.mask(base.instances[0].mask)
        assert np.array_equal(scene_mask, base_mask & ~obj_mask)
    rep2 = run_batch(spec, store)  # resume: nothing new
    assert rep2.generated == 0 and len(store.query(tags=["composite"])) == len(comps)


@pytest.mark.slow
def test_bad_specs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="per_class"):
        BatchSpec.of(("ball",), per_class=0)
    with pytest.raises(ValueError, match="template"):
        BatchSpec.of(("ball",), per_class=1, template="no placeholder")
    with pytest.raises(ValueError, match="per-image or per-class"):
        BatchSpec.of(("ball",), per_class=1, threshold_mode="sometimes")
    out = subprocess.run([sys.executable, "-m", "pipeline", "batch", "--classes", "ball", "--per-class", "1",
                          "--store", str(tmp_path / "s"), "--model", str(tmp_path / "nope")],
                         cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode != 0 and "nope" in out.stderr


@pytest.mark.slow
def test_ray_two_workers_survive_a_killed_worker(tmp_path):
    pytest.importorskip("ray", reason="ray is in requirements.txt; install it")
    from pipeline.testing import failing_ray_executor

    marker = tmp_path / "worker-died"
    spec = BatchSpec.of(("ball", "star", "leaf"), per_class=3, **FAST)
    store, rep = _run(tmp_path, "ray", spec, executor=failing_ray_executor(marker, workers=2))
    assert marker.exists()  # a worker really exited mid-task, and Ray retried its task
    for c in spec.classes:
        assert store.count(status="accepted", classes=[c]) == 3 == rep.classes[c].kept
    uids = [r.uid for r in store.query()]
    assert len(uids) == len(set(uids))
    _check_blobs(store)
    # same candidates as an in-process run (Ray workers run torch on 1 thread: compare masks, not bytes)
    local, _ = _run(tmp_path, "local", spec)
    ray_kept = {r.uid: r for r in iter_kept(store, spec.run_key)}
    local_kept = {r.uid: r for r in iter_kept(local, spec.run_key)}
    assert ray_kept.keys() == local_kept.keys()
    for uid, r in ray_kept.items():
        a = store.image(r.image).astype(int)
        b = local.image(local_kept[uid].image).astype(int)
        assert np.abs(a - b).max() <= 2


@pytest.mark.slow
def test_a_candidate_always_goes_through_the_unet_in_the_same_batch(monkeypatch):
    """Batched kernels may round rows differently on some CPUs, so a resumed run asking for
    only some candidates must still compute each in its own block of batch_size."""
    import pipeline.batch.worker as worker
    import pipeline.generate as gen

    spec = BatchSpec.of(("ball", "star"), 2, steps=2, batch_size=4, refiner="otsu")
    calls = []
    real = gen.generate

    def spy(pipe, classes, seeds, **kw):
        calls.append((tuple(classes), tuple(seeds)))
        return real(pipe, classes, seeds, **kw)

    monkeypatch.setattr(gen, "generate", spy)
    alone = worker.compute_candidates(spec, [("ball", 5)])
    whole = worker.compute_candidates(spec, [("ball", k) for k in range(4, 8)])
    block = tuple(candidate_seed(spec.seed, "ball", k) for k in range(4, 8))
    assert [c[1] for c in calls] == [block, block]
    assert [c.k for c in alone] == [5]
    same = next(c for c in whole if c.k == 5)
    assert np.array_equal(alone[0].image, same.image) and np.array_equal(alone[0].heat, same.heat)


def _photo_store(path, n=6):
    """A store holding the first ``n`` coco-mini photos with their instances (accepted)."""
    from conftest import shared
    from pipeline.export import import_coco

    store = Store(path)
    import_coco(store, shared("coco-mini", "instances.json"), shared("coco-mini", "images"), limit=n)
    return store


def _composites(store):
    return {r.uid: (r.image, tuple(i.mask for i in r.instances), json.dumps(r.inserted, sort_keys=True))
            for r in store.query(tags=["composite"])}


@pytest.mark.slow
def test_insert_from_the_bank_records_provenance_and_resumes_exactly(tmp_path):
    """--insert-source bank: the object is a real instance cut out of a photo in the store (the
    thesaurus' best suggestion among the bank's classes), the composite says which sample and
    instance, pasting that cut-out again gives the stored composite exactly, and a run resumed
    after its candidates were made gives the very same composites."""
    from pipeline.bank import BankObject, ObjectBank
    from pipeline.batch.worker import load_thesaurus
    from pipeline.compose import paste

    spec = BatchSpec.of(("ball", "kite"), per_class=2, objects=1, object_source="bank", harmonizer="none",
                        warmup=2, **FAST)
    store = _photo_store(tmp_path / "a")
    photos = {r.id for r in store.query()}
    bank = ObjectBank(store)
    rep = run_batch(spec, store)
    comps = store.query(tags=["composite"])
    assert len(comps) == sum(r.composites for r in rep.classes.values()) == 4, rep
    th = load_thesaurus(spec)
    for comp in comps:
        base = store.get_by_uid(comp.meta["batch"]["base"])
        scene = base.meta["batch"]["class"]
        rec = comp.inserted[0]
        assert rec["object_source"] == "bank"
        ranked = [o for o, _, _ in th.rank(scene, k=len(th.classes), min_support=1)]
        assert rec["class"] == next(o for o in ranked if o in bank)  # the best suggestion the bank supplies
        prov = rec["bank"]
        src = store.get_by_uid(prov["uid"])
        assert src.id == prov["sample"] in photos and src.model == "real (COCO)"
        inst = src.instances[prov["instance"]]
        assert inst.class_name == rec["class"] and not inst.iscrowd
        # the provenance is enough to redo the composite bit for bit
        crop, crop_mask = bank.cut_out(BankObject(src.id, prov["instance"], rec["class"], inst.source,
                                                  tuple(prov["box"])))
        again = paste(store.image(base.image), [(scene, store.mask(base.instances[0].mask))], crop, crop_mask,
                      rec["box"], rec["class"])
        assert np.array_equal(store.image(comp.image), again.image)
        masks = store.masks(comp)
        assert [n for n, _ in masks] == [n for n, _ in again.instances]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(masks, again.instances))
        assert [i.source for i in comp.instances][-1] == "inserted"
        # every export says where the background and the object come from, with their licences
        from pipeline.export.common import provenance
        exported = provenance(comp, store)
        assert exported["origin"] == "composite" and exported["background"]["uid"] == base.uid
        assert exported["background"]["origin"] == "generated"
        assert exported["inserted"][0]["uid"] == src.uid and exported["inserted"][0]["origin"] == "photo"
        assert exported["inserted"][0]["license"] == src.meta["photo"]["license"]
    # resume: candidates already made (a run without --insert), then the same run with it
    other = _photo_store(tmp_path / "b")
    run_batch(replace(spec, insertion=replace(spec.insertion, objects=0)), other)
    assert not other.query(tags=["composite"])
    rep_b = run_batch(spec, other)
    assert rep_b.generated == 0 and _composites(other) == _composites(store)
    assert run_batch(spec, store).generated == 0 and _composites(store) == _composites(other)  # nothing new


@pytest.mark.slow
def test_insert_source_both_falls_back_to_the_model(tmp_path):
    """--insert-source both: the bank when it has the suggested class, else the model draws it."""
    corpus = ["a ball next to a star", "a star and a ball", "a ball on the grass", "a star in the sky",
              "a person with a ball", "a person holding a ball", "a person and a ball in the park"]
    th_path = Thesaurus.build(corpus, vocabulary=["ball", "star", "person"]).save(tmp_path / "th.npz")
    spec = BatchSpec.of(("ball", "star"), per_class=1, objects=1, object_source="both", thesaurus=str(th_path),
                        harmonizer="none", warmup=2, **FAST)
    store = _photo_store(tmp_path / "s")
    rep = run_batch(spec, store)
    got = {store.get_by_uid(c.meta["batch"]["base"]).meta["batch"]["class"]: c.inserted[0]
           for c in store.query(tags=["composite"])}
    assert got.keys() == {"ball", "star"}, rep
    assert got["ball"]["class"] == "person" and got["ball"]["object_source"] == "bank"  # a photo's person
    assert got["star"]["class"] == "ball" and got["star"]["object_source"] == "generated"  # no ball in the bank
    assert got["star"]["object_seed"] is not None
    with pytest.raises(ValueError, match="object_source"):
        BatchSpec.of(("ball",), per_class=1, object_source="photos")

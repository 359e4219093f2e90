"""The learned colour-transform harmonizer (pipeline/harmonize_net/) against "none", today's
`learned` (ridge) and `ring 0.15`: 3-fold cross-validation by photo over the 180 annotated
photos, leaving each perturbation family out of training and measuring on it; then the shipped
weights on their held-out fold, the real iHarmony4 triple, and the time per 512x512 image.

    python bench/bench_harmonize_net.py [--reps 1] [--epochs 40] [--per-photo 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from _results import write_section  # noqa: E402


NOTE = "Reading: with its family held out, `pct` reaches issue 17's 0.7x on no family. It gains on the strong recolourings that show in its statistics (Lab gain/offset, colour transfer, chains of two, tone curves) and is slightly worse than doing nothing on the mild white-balance and saturation changes it never saw (an earlier run of this script with 15 epochs instead of 40 stayed just below none on those two and gained a little less on the others). Today's ridge is better on the Lab-like families (close to what it was trained on) and makes mild white-balance and saturation changes much worse than doing nothing. The shipped `pct` (trained on every family) is below none on every family of the unseen fold and on the real iHarmony4 triple, where the ridge is worse than doing nothing, and it runs well within the 0.2 s budget. Most of the cross-validation's time goes into making composites, not into the fits."


def test_composites(objects, seed: int):
    """[(family, composite, truth, mask)]: every test object once under every family."""
    from pipeline.harmonize_net import FAMILIES, perturb

    rng = np.random.default_rng(seed)
    out = []
    for i, (key, image, mask, _, _) in enumerate(objects):
        others = [o for o in objects if o[0] != key]
        for fam in FAMILIES:
            donor = others[int(rng.integers(len(others)))][3:5]
            out.append((fam, perturb(image, mask, fam, rng, donor), image, mask))
    return out


def largest(objects, per_photo: int):
    """The ``per_photo`` largest objects of each photo (object_list rows), to bound the CPU time."""
    out = []
    for key in dict.fromkeys(o[0] for o in objects):
        mine = sorted((o for o in objects if o[0] == key), key=lambda o: -int(o[2].sum()))
        out += mine[:per_photo]
    return out


def main() -> None:
    import torch

    from pipeline import harmonize_net as H
    from pipeline import realdata
    from pipeline.harmonize import RingHarmonizer, fmse, get_harmonizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=1, help="training composites per object and family (CV runs)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--per-photo", type=int, default=2, help="largest objects per photo used (train and test)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    keys = realdata.photo_keys()
    fold = realdata.fold_of(keys)
    singles = H.combo_of(H.FAMILIES)
    base = {"none": get_harmonizer("none"), "learned (ridge, today's default)": get_harmonizer("learned"),
            "ring 0.15": RingHarmonizer(0.15)}
    # per family: method -> list over folds of mean fMSE
    res = {f: {m: [] for m in [*base, "pct (family held out)"]} for f in H.FAMILIES}
    t_train = 0.0
    for k in range(realdata.K_FOLDS):
        train_objs = largest(H.object_list([p for p in keys if fold[p] != k]), a.per_photo)
        test = test_composites(largest(H.object_list([p for p in keys if fold[p] == k]), a.per_photo), seed=1000 + k)
        # a pool of single-family composites of the training photos, shared by the held-out runs
        pool = {f: H.make_samples(train_objs, H.FAMILIES, a.reps, seed=10 * k + i, single=f)[:3]
                for i, f in enumerate(singles)}
        for i, held in enumerate(H.FAMILIES):
            allowed = [f for f in singles if f != held]
            parts = [pool[f] for f in allowed]
            if held != "combo":  # chains of two families, neither of them the held-out one
                parts.append(H.make_samples(train_objs, tuple(allowed) + ("combo",), 1, seed=100 * k + i, p_combo=1.0)[:3])
            X, A, B = (np.concatenate([p[j] for p in parts]) for j in range(3))
            t = time.process_time()
            cfg = H.HarmonizeTrainConfig(epochs=a.epochs, seed=k)
            net, mu, sigma = H.fit(X, A, B, cfg, log=lambda *_: None)
            t_train += time.process_time() - t
            model = H.NetHarmonizer.from_parts(net, mu, sigma)
            cases = [c for c in test if c[0] == held]
            res[held]["pct (family held out)"].append(np.mean([fmse(model(c, m), img, m) for _, c, img, m in cases]))
            for name, f in base.items():
                res[held][name].append(np.mean([fmse(f(c, m), img, m) for _, c, img, m in cases]))
            print(k, held, len(X), {n: round(v[-1], 1) for n, v in res[held].items()}, flush=True)
    methods = list(res[H.FAMILIES[0]])
    lines = ["3-fold cross-validation by photo (pipeline.realdata: 180 photos, folds of 60; no photo in both train "
             "and test). For each fold and each family, a model is trained **without that family** (the other "
             f"single families, {a.reps} composites per object each, plus one chain of two of them per object; "
             f"{a.epochs} epochs; fewer composites and epochs than the shipped run, to fit the shared CPU) and measured "
             f"on that family only, on the {a.per_photo} largest objects (>= 1 % of the photo, 256 px; the same cap "
             "for training) of each held-out photo. The `combo` model saw only single families. fMSE inside the mask (RGB 0-255, "
             "lower is better): mean over folds, [min-max of the 3 fold means], and the ratio to none.", "",
             "| held-out family | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for f in H.FAMILIES:
        none = np.mean(res[f]["none"])
        cells = [f"{np.mean(v):.0f} [{min(v):.0f}-{max(v):.0f}] ({np.mean(v) / none:.2f}x)" for v in res[f].values()]
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    lines += ["", f"CPU time of the 18 cross-validation fits: {t_train:.0f} s in all (1 thread). Today's `learned` "
              "(ridge) was trained on coco-mini photos with even ids, some of which are in these test folds: its "
              "numbers are, if anything, flattering."]

    # the shipped weights: every family, photos of folds 1 and 2; measured on fold 0 (never seen)
    shipped = H.NetHarmonizer()
    test0 = test_composites(largest(H.object_list([p for p in keys if fold[p] == realdata.HELD_OUT_FOLD]),
                                    a.per_photo), seed=7)
    lines += ["", "Shipped weights (`assets/harmonize_net`, trained on every family, photos of folds 1-2) on the "
              f"{len([1 for c in test0 if c[0] == 'lab'])} objects of the held-out fold 0, fMSE (ratio to none):", "",
              "| family | none | learned (ridge) | ring 0.15 | pct (shipped) |", "|---|---|---|---|---|"]
    for f in H.FAMILIES:
        cases = [c for c in test0 if c[0] == f]
        e = {n: np.mean([fmse(h(c, m), img, m) for _, c, img, m in cases])
             for n, h in [("none", base["none"]), ("ridge", base["learned (ridge, today's default)"]),
                          ("ring", base["ring 0.15"]), ("pct", shipped)]}
        lines.append(f"| {f} | {e['none']:.0f} | " + " | ".join(f"{e[n]:.0f} ({e[n] / e['none']:.2f}x)"
                                                            for n in ("ridge", "ring", "pct")) + " |")

    # the real iHarmony4 triple, as bench_harmonize.py reads it (1/8 size)
    import cv2
    from PIL import Image

    d = ROOT.parent / "shared" / "data" / "iHarmony4" / "data"
    small = lambda x, i=cv2.INTER_AREA: cv2.resize(x, (x.shape[1] // 8, x.shape[0] // 8), interpolation=i)
    real = small(np.asarray(Image.open(d / "a0002.jpg").convert("RGB")))
    comp = small(np.asarray(Image.open(d / "a0002_1_4.jpg").convert("RGB")))
    mask = small((np.asarray(Image.open(d / "a0002_1.png").convert("L")) > 127).astype(np.uint8), cv2.INTER_NEAREST) > 0
    lines += ["", "The real iHarmony4 triple (`a0002`, HAdobe5k, 1/8 size), fMSE against the real photo:", "",
              "| method | fMSE |", "|---|---|"]
    for n, h in [*base.items(), ("pct (shipped)", shipped)]:
        lines.append(f"| {n} | {fmse(h(comp, mask), real, mask):.1f} |")

    # time per 512x512 composite
    rng = np.random.default_rng(0)
    objs = H.object_list([p for p in keys if fold[p] == 0][:12], max_side=512)
    times = {n: [] for n in ("learned (ridge)", "pct")}
    for key, image, m, _, _ in objs:
        img = cv2.resize(image, (512, 512), interpolation=cv2.INTER_AREA)
        mm = cv2.resize(m.astype(np.uint8), (512, 512), interpolation=cv2.INTER_NEAREST) > 0
        if not mm.any() or mm.all():
            continue
        c = H.perturb(img, mm, "lab", rng)
        for n, h in (("learned (ridge)", base["learned (ridge, today's default)"]), ("pct", shipped)):
            t = time.perf_counter()
            h(c, mm)
            times[n].append(time.perf_counter() - t)
    lines += ["", f"Time per 512x512 composite ({len(times['pct'])} objects, 1 torch thread, on a CPU shared with "
              "other jobs): " + ", ".join(f"{n} {np.median(v) * 1000:.0f} ms median (max {max(v) * 1000:.0f} ms)"
                                          for n, v in times.items()) + "; target <= 200 ms.", "", NOTE]
    write_section("bench_harmonize_net", "\n".join(lines))


if __name__ == "__main__":
    main()

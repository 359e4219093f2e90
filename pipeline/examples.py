"""Pre-made examples, so a fresh studio (a Space's first visitor) shows real samples at once.

The examples live in a store of their own, never in the user's: the four CC BY 2.0 COCO
photos of ``assets/examples`` with their COCO instance masks (attribution in its
ATTRIBUTION.md), and a few samples this project's embedded model generated, shipped in
``assets/examples/generated.npz`` (made by ``python -m pipeline.examples``: generating them
when a Space starts would take a minute on a small CPU; reading them takes milliseconds).
Nothing reaches the user's dataset, or its exports, unless :func:`copy_examples` is asked to.

``generated.npz`` arrays: ``images`` (N, 64, 64, 3) uint8 RGB; ``heat`` (N, 64, 64) float16
in [0, 1] (the store's precision); ``refined`` (N, 64, 64) bool (GrabCut's mask);
``thresholds`` (N,) float (the refiner's choice: the sample's mask is ``heat >= threshold``);
``classes``, ``prompts`` (N,) str; ``seeds`` (N,) int64; ``steps`` () int.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .dataset import NewSample, Store

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
GENERATED = EXAMPLES / "generated.npz"
EXAMPLE_TAG = "example"
# one sample per class the embedded model draws best, seeds picked once by looking at them
GENERATED_SAMPLES = (("ball", 5), ("star", 3), ("kite", 6), ("flower", 2), ("heart", 4), ("aeroplane", 1))


def make_generated(out: Path = GENERATED, steps: int = 25, samples=GENERATED_SAMPLES) -> Path:
    """Generate the shipped samples with the embedded model on the CPU (deterministic) and
    write them to ``out`` (see the module docstring for the arrays)."""
    from .generate import generate, load_pipeline
    from .masks import quantize_heat
    from .refine import get_refiner, refine_and_choose

    pipe = load_pipeline(None, device="cpu")
    refiner = get_refiner("grabcut")
    images, heat, refined, thresholds, classes, prompts, seeds = [], [], [], [], [], [], []
    for s in generate(pipe, [c for c, _ in samples], [k for _, k in samples], steps=steps):
        h = quantize_heat(s.heat_map)
        choice = refine_and_choose(s.image, h, refiner, s.attention)
        images.append(s.image)
        heat.append(h.astype(np.float16))
        refined.append(np.asarray(choice.refined, bool))
        thresholds.append(choice.threshold)
        classes.append(s.class_name)
        prompts.append(s.prompt)
        seeds.append(s.seed)
    out = Path(out)
    np.savez_compressed(out, images=np.stack(images), heat=np.stack(heat), refined=np.stack(refined),
                        thresholds=np.asarray(thresholds, float), classes=np.asarray(classes),
                        prompts=np.asarray(prompts), seeds=np.asarray(seeds, np.int64), steps=np.asarray(steps))
    return out


def add_generated(store: Store, path: Path = GENERATED, status: str = "accepted") -> list[int]:
    """Add the shipped generated samples to ``store`` as the studio would have accepted them
    (heat map, the refiner's threshold and mask); idempotent (uids from class and seed)."""
    ids = []
    with np.load(path, allow_pickle=False) as z:
        for i, c in enumerate(z["classes"]):
            c, seed, heat, t = str(c), int(z["seeds"][i]), z["heat"][i].astype(np.float32), float(z["thresholds"][i])
            sample = NewSample(z["images"][i], [c], instances=[(c, heat >= t)], uid=f"example-embedded-{c}-{seed}",
                               prompt=str(z["prompts"][i]), seed=seed, model="embedded", heat_map=heat, threshold=t,
                               refined_mask=z["refined"][i], status=status, tags=[EXAMPLE_TAG],
                               meta={"origin": "example", "steps": int(z["steps"]), "refiner": "grabcut"})
            ids.append(store.add(sample))
    return ids


def build_examples_store(root: Path) -> Path:
    """The examples store at ``root`` (created, or completed: idempotent): the shipped photos
    with their COCO masks, then the shipped generated samples. Returns ``root``."""
    from .bank import import_examples

    with Store(root) as store:
        import_examples(store)
        if GENERATED.exists():
            add_generated(store)
    return Path(root)


def copy_examples(src: Store, dst: Store, status: str = "accepted") -> list[int]:
    """Copy every sample of the examples store ``src`` into the user's store ``dst`` (the user
    asked for it), tagged ``example`` so they stay easy to filter out; idempotent (same uids).
    Masks, crowd flags, heat maps and thresholds are copied as they are. Returns the ids in ``dst``."""
    ids = []
    for rec in src.query():
        sample = NewSample(src.load_image(rec), rec.classes, instances=src.masks(rec),
                           instance_sources=[i.source for i in rec.instances],
                           instance_crowd=[i.iscrowd for i in rec.instances], uid=rec.uid, prompt=rec.prompt,
                           seed=rec.seed, model=rec.model, heat_map=src.heat(rec), threshold=rec.threshold,
                           user_threshold=rec.user_threshold,
                           refined_mask=src.mask(rec.refined_mask) if rec.refined_mask else None, status=status,
                           tags=sorted(set(rec.tags) | {EXAMPLE_TAG}), meta=rec.meta)
        ids.append(dst.add(sample))
    return ids


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.examples",
                                 description="regenerate assets/examples/generated.npz with the embedded model")
    ap.add_argument("--out", type=Path, default=GENERATED)
    ap.add_argument("--steps", type=int, default=25)
    args = ap.parse_args(argv)
    print(f"wrote {make_generated(args.out, args.steps)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

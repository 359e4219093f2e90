"""Command line: ``python -m pipeline generate|batch|export|import|thesaurus|convert ...``.

Flags for settings are generated from the config dataclasses' fields (name, type, default,
``help``/``choices`` metadata): ``GenerationConfig`` and ``ModelConfig`` (pipeline.generate),
the batch ``Policy``/``FilterConfig``/``InsertConfig`` (pipeline.batch.spec). A plug-in
registered in a registry appears in the matching flag's choices.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .flags import add_config_args, config_from_args, csv_ints as _csv_ints


def add_model_args(ap: argparse.ArgumentParser) -> None:
    from .generate import ModelConfig

    add_config_args(ap, ModelConfig)


def add_plugin_checkpoint(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--sam-checkpoint", dest="refiner_checkpoint", default=None,
                    help="weights for a refiner that needs them (sam: segment-anything .pth, a transformers "
                         "SAM folder / hub id, or a preset: sam-vit-b, sam-vit-b-pth)")


def plugin_checkpoint(value: str | None) -> str | None:
    from .presets import resolve_checkpoint

    return resolve_checkpoint(value)


def cmd_generate(args) -> int:
    from PIL import Image
    from tqdm.auto import tqdm

    from .attention import CaptureConfig
    from .generate import GenerationConfig, ModelConfig, check_size, generate, native_size, size_note
    from .refine import RefinementError, get_refiner, refine_and_choose
    from .export.common import safe_stem
    from .viz import heat_to_rgb, mask_to_png

    config = config_from_args(GenerationConfig, args)
    model = config_from_args(ModelConfig, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = model.load()
    check_size(pipe, config.height, config.width)  # over the limit: the error, before any work
    note = size_note(native_size(pipe), config.height, config.width)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    refiner = get_refiner(config.refiner, checkpoint=plugin_checkpoint(args.refiner_checkpoint), device=model.device)
    capture = config.capture(CaptureConfig(resolutions=args.resolutions or None, timestep_range=tuple(args.timesteps)))
    classes = [c.strip() for c in args.class_name.split(",") if c.strip()]
    jobs = [(c, args.seed + k) for c in classes for k in range(args.n)]
    failures = 0
    for c, seed in tqdm(jobs, desc="generate", unit="image"):
        sample = generate(pipe, c, seed, config=config, capture=capture)[0]
        stem = out / f"{safe_stem(c)}_{seed:06d}"  # class names are free text: never a path
        heat = sample.heat_map
        Image.fromarray(sample.image).save(f"{stem}.png")
        np.save(f"{stem}_heat.npy", heat)
        Image.fromarray(heat_to_rgb(heat)).save(f"{stem}_heat.png")
        record = {"class": c, "prompt": sample.prompt, "seed": seed, "model": model.label,
                  "image": f"{stem.name}.png", "heat_map": f"{stem.name}_heat.npy", **sample.settings,
                  "resolutions": sample.attention.resolutions, "refiner": config.refiner,
                  "selector": config.selector}
        try:
            choice = refine_and_choose(sample.image, heat, refiner, sample.attention, selector=config.selector)
            Image.fromarray(mask_to_png(choice.refined)).save(f"{stem}_refined.png")
            Image.fromarray(mask_to_png(choice.mask(heat))).save(f"{stem}_mask.png")
            record.update(threshold=choice.threshold, rule=choice.rule, best_iou=choice.best_iou, mask=f"{stem.name}_mask.png",
                          refined_mask=f"{stem.name}_refined.png", thresholds=choice.thresholds.tolist(),
                          ious=[round(float(x), 4) for x in choice.ious])
        except RefinementError as e:
            failures += 1
            record["error"] = str(e)
        Path(f"{stem}.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {len(jobs)} samples to {out}" + (f" ({failures} without a mask, see their JSON)" if failures else ""))
    return 0


def _csv(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def cmd_export(args) -> int:
    from .dataset import Store
    from .export import export

    store = Store(args.store, create=False)
    report = export(store, args.format, args.out, status=None if args.status == "any" else _csv(args.status),
                    classes=_csv(args.class_name), tags=args.tag, val_fraction=args.val, seed=args.seed,
                    force=args.force, void_border=args.void_border, yolo_task=args.yolo_task, progress=True)
    print(f"exported {report.n_images} images / {report.n_instances} instances ({report.splits}) "
          f"as {report.format} to {report.out}")
    for what, n in report.lost.items():
        print(f"not held by {report.format}: {n} {what}")
    if report.damaged:
        print(f"{len(report.damaged)} damaged sample(s) skipped (listed in {report.out}/manifest.json):",
              file=sys.stderr)
        for d in report.damaged:
            print(f"  sample {d['sample_id']}: {d['reason']}", file=sys.stderr)
        if not args.skip_damaged:
            print("error: the export is incomplete; pass --skip-damaged to accept that", file=sys.stderr)
            return 3
    return 0


def cmd_import(args) -> int:
    from .dataset import Store
    from .export import import_coco, import_hf, import_voc, import_yolo

    store = Store(args.store)
    if args.coco:
        ids = import_coco(store, args.coco, args.images, status=args.status, limit=args.limit, progress=True)
    elif args.voc:
        ids = import_voc(store, args.voc, split=args.split, status=args.status, progress=True)
    elif args.yolo:
        ids = import_yolo(store, args.yolo, status=args.status, progress=True)
    else:
        ids = import_hf(store, args.hf, status=args.status, progress=True)
    print(f"imported {len(ids)} images into {args.store}")
    return 0


def cmd_thesaurus(args) -> int:
    from .errors import ConfigError
    from .thesaurus import Thesaurus

    if args.action == "build":
        if not args.corpus:
            raise ConfigError("thesaurus build needs --corpus FILE [FILE ...]")
        # one table per file or glob, merged: counts add up, so shards can also be built apart
        th = Thesaurus.build(args.corpus[0], args.vocab, workers=args.workers, progress=True)
        for shard in args.corpus[1:]:
            th = th.merge(Thesaurus.build(shard, args.vocab, workers=args.workers, progress=True))
        th.save(args.out)
        print(f"{th.n_captions} captions, {len(th.classes)} classes -> {args.out}")
    else:
        th = Thesaurus.load(args.table)
        for obj, score, support in th.rank(args.scene, args.k, args.min_support):
            print(f"{obj}\t{score:.4f}\t{support}")
    return 0


class TqdmProgress:
    """Progress bars for a batch run, drawn from BatchRun's progress callback (CLI only)."""

    def __init__(self, classes, per_class: int):
        from tqdm.auto import tqdm

        self.overall = tqdm(total=len(classes) * per_class, desc="kept (all classes)", unit="img", position=0)
        self.work = tqdm(desc="candidates", unit="img", position=1)
        self.per_class = {c: tqdm(total=per_class, desc=f"  {c}", unit="img", position=2 + i, leave=False)
                          for i, c in enumerate(classes)}

    def __call__(self, event) -> None:
        for c, n in event.kept.items():
            self.per_class[c].n = n
            self.per_class[c].refresh()
        self.overall.n = event.total_kept
        self.overall.refresh()
        self.work.n = event.computed
        self.work.refresh()

    def close(self) -> None:
        for bar in (*self.per_class.values(), self.work, self.overall):
            bar.close()


def cmd_batch(args) -> int:
    from .batch import BatchSpec, FilterConfig, InsertConfig, Policy, make_executor, resolve_classes, run_batch
    from .dataset import Store
    from .generate import GenerationConfig, ModelConfig, native_size_of, size_note

    policy = config_from_args(Policy, args, filter=config_from_args(FilterConfig, args))
    spec = BatchSpec(resolve_classes(args.classes), args.per_class, generation=config_from_args(GenerationConfig, args),
                     model=config_from_args(ModelConfig, args), seed=args.seed, policy=policy,
                     insertion=config_from_args(InsertConfig, args), batch_size=args.batch_size,
                     refiner_checkpoint=plugin_checkpoint(args.refiner_checkpoint))
    note = size_note(native_size_of(spec.model.preset or spec.model.model), spec.generation.height,
                     spec.generation.width)  # from the configs: the workers load the model
    if note:
        print(f"warning: {note}", file=sys.stderr)
    store = Store(args.store)
    executor = make_executor(args.ray, args.ray_address, args.workers, args.gpus_per_task)
    bars = None if args.quiet else TqdmProgress(spec.classes, spec.per_class)
    try:
        report = run_batch(spec, store, executor, progress=bars)
    finally:
        if bars is not None:
            bars.close()
    print(f"run {report.run_key}: {report.generated} candidates computed, {report.resumed} found in the store")
    print(report.table())
    if report.shortfall:
        print(f"candidate limit reached before {spec.per_class} kept: {report.shortfall}; "
              "raise --max-candidates or relax the filter", file=sys.stderr)
        return 3
    return 0


def cmd_convert(args) -> int:
    import torch

    from .convert import save_single_file
    from .generate import load_pipeline

    pipe = load_pipeline(args.model, "cpu", "float32", args.config)
    out = save_single_file(pipe, args.out, dtype=getattr(torch, args.dtype))
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline", description="DiffuMask-Editor pipeline")
    sub = ap.add_subparsers(dest="command", required=True)
    from .batch import FilterConfig, InsertConfig, Policy
    from .generate import GenerationConfig

    g = sub.add_parser("generate", help="generate images with attention heat maps and masks")
    add_model_args(g)
    g.add_argument("--class", dest="class_name", required=True, help="class name(s), comma-separated")
    g.add_argument("--n", type=int, default=1, help="images per class")
    g.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed+k")
    add_config_args(g, GenerationConfig)
    add_plugin_checkpoint(g)
    g.add_argument("--resolutions", type=_csv_ints, default=(), help="attention map sizes to use, e.g. 64,32,16")
    g.add_argument("--timesteps", type=int, nargs=2, default=(0, 999), metavar=("LO", "HI"))
    g.add_argument("--out", required=True)
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("batch", help="generate a dataset: deterministic, resumable, filtered, optionally on Ray",
                       description="Re-run the same command to resume: finished candidates are skipped. "
                                   "Sample k of class c always has the same seed.")
    add_model_args(b)
    b.add_argument("--classes", required=True, help="voc, coco, embedded, or a comma-separated list")
    b.add_argument("--per-class", type=int, required=True, help="kept samples wanted per class")
    b.add_argument("--store", required=True, help="curation store folder (created if missing)")
    b.add_argument("--seed", type=int, default=0, help="base seed of the run")
    add_config_args(b, GenerationConfig)
    add_plugin_checkpoint(b)
    add_config_args(b, Policy)
    add_config_args(b, FilterConfig)
    b.add_argument("--batch-size", type=int, default=4, help="prompts per UNet call")
    add_config_args(b, InsertConfig)
    b.add_argument("--ray", action="store_true", help="run on a local Ray instance with --workers CPU workers")
    b.add_argument("--ray-address", default=None, help="join a Ray cluster (e.g. auto or ray://head:10001)")
    b.add_argument("--workers", type=int, default=2, help="local Ray workers")
    b.add_argument("--gpus-per-task", type=float, default=0.0, help="Ray: GPUs per task (1 = one task per GPU)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_batch)

    e = sub.add_parser("export", help="export curated samples as COCO, VOC, YOLO or a Hugging Face dataset")
    e.add_argument("--store", required=True)
    e.add_argument("--format", required=True, help="coco, voc, yolo or hf")
    e.add_argument("--status", default="accepted", help="accepted, rejected, pending (comma-separated) or any")
    e.add_argument("--class", dest="class_name", default=None, help="only these classes (comma-separated)")
    e.add_argument("--tag", action="append", default=None, help="only samples with this tag (repeatable)")
    e.add_argument("--val", type=float, default=0.0, help="fraction of images for the validation split")
    e.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    e.add_argument("--void-border", type=int, default=0, help="VOC: mark N pixels around object borders 255")
    e.add_argument("--yolo-task", default="segment", choices=("segment", "detect"),
                   help="YOLO: polygons per instance (segment) or boxes (detect)")
    e.add_argument("--force", action="store_true", help="replace a previous export in --out (never other folders)")
    e.add_argument("--skip-damaged", action="store_true",
                   help="exit 0 even if damaged samples (unreadable image/mask) were skipped")
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("import", help="import a COCO, VOC, YOLO or HF dataset into a store (e.g. as backgrounds)")
    i.add_argument("--store", required=True)
    src = i.add_mutually_exclusive_group(required=True)
    src.add_argument("--coco", help="COCO instances JSON")
    src.add_argument("--voc", help="VOC root folder (JPEGImages, ...) or a folder with VOCdevkit/VOC20xx")
    src.add_argument("--yolo", help="YOLO segmentation folder (data.yaml, images/, labels/)")
    src.add_argument("--hf", help="Hugging Face dataset folder exported by this project")
    i.add_argument("--images", help="COCO images folder (default: images/<split> beside annotations/)")
    i.add_argument("--split", default=None, help="VOC ImageSets/Segmentation split name")
    i.add_argument("--status", default="accepted")
    i.add_argument("--limit", type=int, default=None)
    i.set_defaults(func=cmd_import)

    t = sub.add_parser("thesaurus", help="build or query the Adaptive Matching Thesaurus")
    t.add_argument("action", choices=["build", "rank"])
    t.add_argument("--corpus", nargs="+", default=[], help="caption files or globs (.txt[.gz], .jsonl, .parquet, COCO json)")
    t.add_argument("--vocab", default="coco", help="coco, voc or a comma-separated class list")
    t.add_argument("--workers", type=int, default=1)
    t.add_argument("--out", default="thesaurus.npz")
    t.add_argument("--table", default="assets/thesaurus_coco.npz")
    t.add_argument("--scene", default=None, help="a class name or a caption")
    t.add_argument("--k", type=int, default=10)
    t.add_argument("--min-support", type=int, default=5)
    t.set_defaults(func=cmd_thesaurus)

    c = sub.add_parser("convert", help="write a diffusers SD pipeline as one original-layout .safetensors/.ckpt")
    c.add_argument("--model", default=None, help="the pipeline to convert (default: the embedded model)")
    c.add_argument("--config", default=None)
    c.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    c.add_argument("--out", required=True, help="file.safetensors or file.ckpt")
    c.set_defaults(func=cmd_convert)

    k = sub.add_parser("check", help="verify a store: every file against its hash, orphans, leftovers")
    k.add_argument("--store", required=True)
    k.add_argument("--repair", action="store_true", help="remove leftovers of killed writers (.tmp files)")
    k.add_argument("--remove-orphans", action="store_true",
                   help="with --repair: also delete files no sample refers to (never those of a write under way)")
    k.add_argument("--rebuild", action="store_true",
                   help="restore a missing, empty or damaged store.sqlite from the sample records beside the blobs "
                        "(the old file is moved aside), then check")
    k.set_defaults(func=cmd_check)
    return ap


def cmd_check(args) -> int:
    """Exit 0 when the store is healthy (orphans alone are only reported), 1 otherwise."""
    from .dataset import Store

    if args.rebuild:
        from .store.rebuild import rebuild

        rb = rebuild(args.store)
        print(f"rebuilt {Path(args.store) / 'store.sqlite'}: {rb.restored} samples restored from their records"
              + (f", {rb.deleted} deleted samples left out" if rb.deleted else "")
              + "".join(f"; moved aside: {p.name}" for p in rb.moved_aside))
        for key, why in sorted(rb.unreadable.items()):
            print(f"unreadable record {key}: {why}")
        for uid, new_id in sorted(rb.renumbered.items()):
            print(f"sample {uid} claimed an id another sample has: restored as #{new_id}")
    with Store(args.store, create=False) as store:
        rep = store.check(repair=args.repair, remove_orphans=args.remove_orphans)
    print(f"{rep.samples} samples checked in {args.store}")
    if rep.lost:
        print(f"{len(rep.lost)} samples are recorded beside the blobs but missing from the database "
              f"(#{', #'.join(str(i) for i, _ in rep.lost[:10])}); their files are kept")
        print(f"-> move {Path(args.store) / 'store.sqlite'} aside and run `python -m pipeline check --store "
              f"{args.store} --rebuild` to restore them")
    for sid, problems in sorted(rep.damaged.items()):
        print(f"damaged: sample #{sid}: " + "; ".join(problems))
    print(f"{len(rep.damaged)} damaged samples, {len(rep.orphans)} orphan files"
          + (f" ({rep.removed_orphans} removed)" if rep.removed_orphans else "")
          + f", {len(rep.leftovers)} leftover temporary files" + (" after repair" if args.repair else ""))
    if rep.leftovers and not args.repair:
        print("-> run again with --repair to remove the leftovers")
    if rep.damaged:
        print("-> a damaged sample cannot be exported; restore its files from a backup, or reject it "
              "and export with --skip-damaged")
    return 0 if rep.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import PipelineError

    try:
        return args.func(args)
    except (PipelineError, FileNotFoundError) as e:  # what the user can fix; anything else is a bug: traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

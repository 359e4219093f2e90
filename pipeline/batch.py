"""Batch generation at dataset scale: deterministic, resumable, filtered, optionally on Ray.

The paper draws ~10k images per class and keeps ~7k after filtering. Here a *run* is fixed
by its generation settings (model, prompt template, steps, guidance, size, refiner, capture,
base seed); inside a run, candidate ``k`` of class ``c`` always uses the seed
``candidate_seed(seed, c, k)`` and the store uid ``batch-<run key>-<c>-<k>``. So:

- re-running the same command gives the same images and masks, and skips every candidate
  already in the store (resume after ``kill -9``: a candidate is committed in one SQLite
  transaction after its blobs are written atomically; a half-done one simply is not there);
- shards never overlap: work is a set of (class, k) pairs, whoever computes them;
- the kept set is defined, not raced: after filtering, the first ``per_class`` passing
  candidates in k order are ``accepted``; later passing ones are ``rejected`` as ``surplus``
  (only parallel runs make those). Workers' timing cannot change the dataset.

Every candidate (kept or dropped) is stored with its filter metrics and reasons in
``meta["batch"]``, so a second run with other filter bounds re-decides without regenerating.

The driver (this process) owns the store; workers (in-process, or Ray tasks on any number
of machines) only compute and return arrays. That keeps commits idempotent and needs no
shared file system between Ray nodes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .generate import DEFAULT_TEMPLATE
from .masks import DEFAULT_THRESHOLDS, ThresholdCalibrator

RUN_TAG_PREFIX = "run-"


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FilterConfig:
    """Quality filter (the paper's 10k -> 7k step). A candidate is dropped for every bound it breaks.

    - ``min_agreement`` / ``relative_agreement``: IoU between the attention mask and the
      refined mask (low = the attention and the image disagree about where the object is)
      must reach ``min_agreement`` and ``relative_agreement`` x the median of the class's
      warm-up candidates. The relative bound matters: thin shapes (stars, aeroplanes) have
      systematically lower agreement, and one absolute bound would drop a whole class;
    - ``min_area``/``max_area``: mask area as a fraction of the image;
    - ``min_contrast``: mean heat of the hottest 10 % minus mean heat of the coldest 50 %
      (low = diffuse attention, no clear object);
    - ``max_border``: fraction of the image border covered by the mask (high = the object is
      cut off by the frame).
    """

    min_agreement: float = 0.5
    relative_agreement: float = 0.95
    min_area: float = 0.01
    max_area: float = 0.85
    min_contrast: float = 0.3
    max_border: float = 0.1

    def reasons(self, metrics: dict, t_index: int, class_agreement: float | None = None) -> list[str]:
        """Why a candidate is dropped ([] = kept). ``t_index``: its threshold in the sweep;
        ``class_agreement``: the class's median warm-up agreement (None: absolute bound only)."""
        if "error" in metrics:
            return ["refine_failed"]
        out = []
        bound = self.min_agreement
        if class_agreement is not None:
            bound = max(bound, self.relative_agreement * class_agreement)
        if metrics["ious"][t_index] < bound:
            out.append("low_agreement")
        area = metrics["area"][t_index]
        if area < self.min_area:
            out.append("too_small")
        if area > self.max_area:
            out.append("too_large")
        if metrics["contrast"] < self.min_contrast:
            out.append("low_contrast")
        if metrics["border"][t_index] > self.max_border:
            out.append("touches_border")
        return out


@dataclass(frozen=True)
class BatchSpec:
    """What to generate. The run key (and so every candidate's uid) is fixed by model,
    config, template, steps, guidance, size, refiner and seed; the other fields change
    decisions, speed or placement, not what a candidate is."""

    classes: tuple[str, ...]
    per_class: int
    model: str | None = None  # None: the embedded model
    config: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    template: str = DEFAULT_TEMPLATE
    steps: int = 25
    guidance: float = 5.0
    height: int | None = None
    width: int | None = None
    refiner: str = "grabcut"
    sam_checkpoint: str | None = None
    seed: int = 0
    # not part of the run key: they change decisions or speed, not what a candidate is
    threshold_mode: str = "per-image"  # per-image | per-class
    warmup: int = 8  # candidates per class that calibrate the per-class threshold
    filter: FilterConfig = field(default_factory=FilterConfig)
    max_candidates: int | None = None  # per class; default 3 x per_class + warmup
    batch_size: int = 4  # prompts per UNet call
    insert: int = 0  # thesaurus-suggested objects pasted into each kept sample (0: none)
    thesaurus: str | None = None
    harmonizer: str | None = None
    fail_once: str | None = None  # testing: a Ray worker exits the first time (marker file)

    def __post_init__(self):
        if not self.classes:
            raise ValueError("no classes given")
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {self.per_class}")
        if self.threshold_mode not in ("per-image", "per-class"):
            raise ValueError(f"threshold_mode is per-image or per-class, not {self.threshold_mode!r}")
        if self.threshold_mode == "per-class" and self.warmup < 1:
            raise ValueError("per-class thresholds are calibrated on warm-up candidates: warmup must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        from .generate import make_prompt

        make_prompt("x", self.template)  # fails early on a template without {}

    @property
    def run_key(self) -> str:
        keyed = dict(model=str(self.model or "embedded"), config=self.config, template=self.template,
                     steps=self.steps, guidance=self.guidance, height=self.height, width=self.width,
                     refiner=self.refiner, seed=self.seed)
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def candidate_limit(self) -> int:
        return self.max_candidates or 3 * self.per_class + self.warmup


def resolve_classes(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``voc``, ``coco``, ``embedded`` or a comma-separated list -> class names."""
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in ("voc", "coco"):
            from .vocab import VOCABULARIES

            return tuple(VOCABULARIES[key])
        if key == "embedded":
            from .embedded.world import CLASS_NAMES

            return tuple(CLASS_NAMES)
        spec = spec.split(",")
    names = tuple(dict.fromkeys(c.strip() for c in spec if c.strip()))
    if not names:
        raise ValueError("no classes given")
    return names


def candidate_seed(base_seed: int, class_name: str, k: int) -> int:
    """The seed of candidate k of a class: stable across runs, machines and Python versions."""
    digest = hashlib.sha256(f"{base_seed}/{class_name}/{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def candidate_uid(run_key: str, class_name: str, k: int) -> str:
    return f"batch-{run_key}-{class_name}-{k:06d}"


# --------------------------------------------------------------------------------------------
# the worker side: compute candidates (no store access)
# --------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    class_name: str
    k: int
    seed: int
    prompt: str
    image: np.ndarray  # HWC uint8
    heat: np.ndarray  # HW float16 in [0, 1]
    refined: np.ndarray | None  # HW bool, None when refinement failed
    threshold: float | None  # per-image chosen threshold
    metrics: dict  # ious/area/border per threshold, contrast; or {"error": ...}
    seconds: dict = field(default_factory=dict)  # generate / masks wall time for this candidate's share


def mask_metrics(heat: np.ndarray, refined: np.ndarray | None, ious: np.ndarray | None,
                 thresholds: np.ndarray = DEFAULT_THRESHOLDS) -> dict:
    """Filter metrics for every threshold of the sweep (so any threshold can be judged later)."""
    heat = np.asarray(heat, np.float32)
    flat = np.sort(heat.ravel())
    n = flat.size
    # fraction of pixels >= t, from the sorted values: one searchsorted for the whole sweep
    area = 1.0 - np.searchsorted(flat, thresholds, side="left") / n
    border = np.concatenate([heat[0], heat[-1], heat[1:-1, 0], heat[1:-1, -1]])
    border_frac = (border[None, :] >= thresholds[:, None]).mean(axis=1)
    contrast = float(flat[int(n * 0.9):].mean() - flat[: max(1, n // 2)].mean())
    out = {"area": np.round(area, 4).tolist(), "border": np.round(border_frac, 4).tolist(),
           "contrast": round(contrast, 4)}
    if ious is not None:
        out["ious"] = np.round(np.asarray(ious, float), 4).tolist()
    return out


_WORKER_CACHE: dict = {}


def _worker_models(spec: BatchSpec):
    """Pipeline and refiner, loaded once per worker process (Ray reuses worker processes)."""
    key = (spec.model, spec.config, spec.device, spec.dtype, spec.refiner, spec.sam_checkpoint)
    if key not in _WORKER_CACHE:
        from .generate import load_pipeline
        from .refine import get_refiner

        _WORKER_CACHE.clear()
        pipe = load_pipeline(spec.model, spec.device, spec.dtype, spec.config)
        opts = {"checkpoint": spec.sam_checkpoint} if spec.refiner == "sam" else {}
        _WORKER_CACHE[key] = (pipe, get_refiner(spec.refiner, **opts))
    return _WORKER_CACHE[key]


def compute_candidates(spec: BatchSpec, jobs: Sequence[tuple[str, int]]) -> list[Candidate]:
    """Generate, capture, refine and measure candidates ``jobs`` = [(class, k), ...].

    Prompts go through the UNet ``spec.batch_size`` at a time; each image keeps its own
    seed, so a candidate is the same whatever batch it lands in."""
    from .attention import capture_for
    from .generate import generate
    from .refine import RefinementError, refine_and_choose

    pipe, refiner = _worker_models(spec)
    capture = capture_for(spec.refiner)
    out: list[Candidate] = []
    for i in range(0, len(jobs), spec.batch_size):
        chunk = list(jobs[i:i + spec.batch_size])
        seeds = [candidate_seed(spec.seed, c, k) for c, k in chunk]
        t0 = time.perf_counter()
        samples = generate(pipe, [c for c, _ in chunk], seeds, template=spec.template, steps=spec.steps,
                           guidance=spec.guidance, height=spec.height, width=spec.width, capture=capture)
        t_gen = (time.perf_counter() - t0) / len(chunk)
        for (c, k), s in zip(chunk, samples):
            t1 = time.perf_counter()
            heat = s.heat_map
            try:
                choice = refine_and_choose(s.image, heat, refiner, s.attention)
                refined, threshold = choice.refined, choice.threshold
                metrics = mask_metrics(heat, refined, choice.ious)
            except RefinementError as e:
                refined, threshold, metrics = None, None, {"error": str(e)}
            out.append(Candidate(c, k, s.seed, s.prompt, s.image, heat.astype(np.float16), refined, threshold,
                                 metrics, {"generate": t_gen, "masks": time.perf_counter() - t1}))
    return out


def _ray_compute(spec: BatchSpec, jobs):
    if spec.fail_once and not os.path.exists(spec.fail_once):
        Path(spec.fail_once).write_text(str(os.getpid()))
        os._exit(1)  # a worker dying mid-task, as a crashed GPU process would; Ray retries the task
    return compute_candidates(spec, jobs)


@dataclass
class Composition:
    base_uid: str
    object_class: str | None
    image: np.ndarray | None = None
    instances: list = field(default_factory=list)  # (class, HW bool mask, source)
    record: dict = field(default_factory=dict)
    skipped: str | None = None


def suggest_object(thesaurus, scene_class: str, allowed: Sequence[str], min_support: int = 1) -> str | None:
    """The thesaurus' best object for ``scene_class`` among the classes the model is asked to draw."""
    try:
        ranked = thesaurus.rank(scene_class, k=len(thesaurus.classes), min_support=min_support)
    except (KeyError, ValueError):
        return None
    allowed = set(allowed)
    return next((o for o, _, _ in ranked if o in allowed), None)


def compose_candidates(spec: BatchSpec, jobs: Sequence[tuple[str, str, int, np.ndarray, np.ndarray]]) -> list[Composition]:
    """Insert a thesaurus-suggested object into kept samples.

    ``jobs``: (base uid, scene class, base seed, image HWC uint8, object mask HW bool). The
    object is generated with a seed derived from the base sample's, placed at the best box
    of the placement heat map and harmonized with ``spec.harmonizer`` (default method)."""
    from .compose import ComposeError, paste
    from .harmonize import default_method, get_harmonizer
    from .placement import PlacementError, heatmap
    from .refine import RefinementError

    thesaurus = _load_thesaurus(spec)
    h_name = spec.harmonizer or default_method()
    harmonizer = get_harmonizer(h_name)
    out = []
    for uid, scene, base_seed, image, mask in jobs:
        obj = suggest_object(thesaurus, scene, spec.classes)
        if obj is None:
            out.append(Composition(uid, None, skipped=f"no suggestion for {scene!r} among the batch classes"))
            continue
        try:
            fg = compute_candidates(replace(spec, batch_size=1), [(obj, 1_000_000 + base_seed % 1_000_000)])[0]
            if fg.refined is None:
                raise RefinementError(fg.metrics["error"])
            fg_mask = np.asarray(fg.heat, np.float32) >= fg.threshold
            placed = heatmap(image, fg_mask, existing_masks=[mask], fg_class=obj, top_k=1)
            _, box, score = placed.boxes[0]
            comp = paste(image, [(scene, mask)], fg.image, fg_mask, box, obj, harmonizer=harmonizer,
                         harmonizer_name=h_name)
        except (ComposeError, PlacementError, RefinementError) as e:
            out.append(Composition(uid, obj, skipped=f"{type(e).__name__}: {e}"))
            continue
        sources = ["generated"] * (len(comp.instances) - 1) + ["inserted"]
        record = dict(comp.record, placement_score=round(float(score), 4), object_seed=fg.seed, object_prompt=fg.prompt)
        out.append(Composition(uid, obj, comp.image, [(n, m, s) for (n, m), s in zip(comp.instances, sources)], record))
    return out


def _load_thesaurus(spec: BatchSpec):
    from .thesaurus import Thesaurus

    if spec.thesaurus:
        return Thesaurus.load(spec.thesaurus)
    assets = Path(__file__).resolve().parents[1] / "assets"
    voc = set(resolve_classes("voc"))
    return Thesaurus.load(assets / ("thesaurus_voc.npz" if set(spec.classes) <= voc else "thesaurus_coco.npz"))


# --------------------------------------------------------------------------------------------
# executors: run jobs somewhere, yield results as they finish
# --------------------------------------------------------------------------------------------
class LocalExecutor:
    """In this process, one chunk after the other."""

    workers = 1

    def map(self, fn: Callable, spec: BatchSpec, chunks: Sequence[list], wanted: Callable | None = None) -> Iterator[list]:
        """``wanted(job)``: checked just before a chunk runs, so work made unnecessary by
        earlier results (a class already has enough kept samples) is not done."""
        for chunk in chunks:
            chunk = [j for j in chunk if wanted is None or wanted(j)]
            if chunk:
                yield fn(spec, chunk)

    def close(self) -> None:
        pass


class RayExecutor:
    """Chunks as Ray tasks (one CPU or one GPU each), retried when a worker dies.

    ``address=None`` starts a local Ray instance with ``workers`` CPU slots; an address
    ("auto", "ray://head:10001") joins an existing cluster, shipping this package to it."""

    def __init__(self, workers: int = 2, address: str | None = None, gpus_per_task: float = 0.0, retries: int = 3):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            if address:
                # ship the project (code + assets: embedded model, thesaurus, harmonizer) to every node
                root = str(Path(__file__).resolve().parents[1])
                ray.init(address=address, log_to_driver=False, runtime_env={
                    "working_dir": root, "excludes": [".git", "studio_data", "test-artifacts", "assets/embedded_model/_train"]})
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         object_store_memory=512 * 2**20)
        self.workers = int(ray.cluster_resources().get("GPU" if gpus_per_task else "CPU", workers))
        self.options = dict(num_cpus=1, num_gpus=gpus_per_task, max_retries=retries)

    def map(self, fn: Callable, spec: BatchSpec, chunks: Sequence[list], wanted: Callable | None = None) -> Iterator[list]:
        # everything is submitted at once to keep all workers busy; surplus is settled later
        target = {compute_candidates: _ray_compute}.get(fn, fn)
        remote = self.ray.remote(**self.options)(target)
        pending = [remote.remote(spec, chunk) for chunk in chunks]
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(done[0])

    def close(self) -> None:
        self.ray.shutdown()


# --------------------------------------------------------------------------------------------
# the driver: decide, commit, settle, report
# --------------------------------------------------------------------------------------------
@dataclass
class ClassReport:
    kept: int = 0
    dropped: int = 0
    candidates: int = 0
    reasons: Counter = field(default_factory=Counter)
    threshold: float | None = None  # the calibrated per-class threshold
    median_agreement: float | None = None  # of the warm-up candidates
    composites: int = 0
    composite_skips: list = field(default_factory=list)


@dataclass
class BatchReport:
    run_key: str
    classes: dict[str, ClassReport]
    generated: int = 0  # candidates computed by this invocation (not resumed)
    resumed: int = 0  # candidates found already in the store
    seconds: dict = field(default_factory=dict)
    shortfall: dict = field(default_factory=dict)  # class -> kept, when the candidate limit was hit

    def to_dict(self) -> dict:
        # asdict() would rebuild each Counter from its items, so build the dict by hand
        d = {k: v for k, v in vars(self).items() if k != "classes"}
        d["classes"] = {c: dict(vars(r), reasons=dict(r.reasons)) for c, r in self.classes.items()}
        return d

    def table(self) -> str:
        lines = ["class            kept  dropped  candidates  threshold  agreement  reasons"]
        for c, r in self.classes.items():
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.reasons.items())) or "-"
            thr = f"{r.threshold:.2f}" if r.threshold is not None else "per-image"
            agr = f"{r.median_agreement:.3f}" if r.median_agreement is not None else "-"
            lines.append(f"{c:<16} {r.kept:>4}  {r.dropped:>7}  {r.candidates:>10}  {thr:>9}  {agr:>9}  {reasons}")
        return "\n".join(lines)


def _threshold_index(t: float) -> int:
    return int(np.argmin(np.abs(DEFAULT_THRESHOLDS - t)))


class BatchRun:
    """One run of ``spec`` against a store. ``run()`` does everything and returns the report."""

    def __init__(self, spec: BatchSpec, store, executor=None, progress: bool = True):
        self.spec = spec
        self.store = store
        self.executor = executor or LocalExecutor()
        self.progress = progress
        self.tag = RUN_TAG_PREFIX + spec.run_key
        self.class_threshold: dict[str, float] = {}
        self.class_agreement: dict[str, float] = {}  # median warm-up agreement per class
        self.report = BatchReport(spec.run_key, {c: ClassReport() for c in spec.classes})

    # -- store views ------------------------------------------------------------------------------
    def _done(self) -> dict[str, dict[int, object]]:
        """class -> {k: record} of this run's candidates already committed."""
        done: dict[str, dict[int, object]] = {c: {} for c in self.spec.classes}
        for rec in self.store.query(tags=[self.tag]):
            b = rec.meta.get("batch", {})
            if b.get("role") == "candidate" and b.get("class") in done:
                done[b["class"]][b["k"]] = rec
        return done

    def _threshold_for(self, class_name: str, cand_threshold: float | None) -> float | None:
        if self.spec.threshold_mode == "per-class":
            return self.class_threshold[class_name]
        return cand_threshold

    def _verdict(self, class_name: str, metrics: dict, cand_threshold: float | None) -> list[str]:
        t = self._threshold_for(class_name, cand_threshold)
        return self.spec.filter.reasons(metrics, 0 if t is None else _threshold_index(t),
                                        self.class_agreement.get(class_name))

    # -- commit ----------------------------------------------------------------------------------------
    def _commit(self, cand: Candidate) -> list[str]:
        """Store a candidate with its verdict; returns the reasons it was dropped ([] = kept)."""
        spec = self.spec
        t = self._threshold_for(cand.class_name, cand.threshold)
        reasons = self._verdict(cand.class_name, cand.metrics, cand.threshold)
        heat = np.asarray(cand.heat, np.float32)
        instances = [] if t is None or "error" in cand.metrics else [(cand.class_name, heat >= t)]
        meta = {"batch": {"role": "candidate", "run": spec.run_key, "class": cand.class_name, "k": cand.k,
                          "metrics": cand.metrics, "image_threshold": cand.threshold,
                          "verdict": reasons or ["kept"], "threshold_mode": spec.threshold_mode}}
        self.store.add(cand.image, [cand.class_name], instances=instances,
                       uid=candidate_uid(spec.run_key, cand.class_name, cand.k), prompt=cand.prompt,
                       seed=cand.seed, model=str(spec.model or "embedded"), heat_map=heat, threshold=t,
                       refined_mask=cand.refined, status="rejected" if reasons else "accepted",
                       tags=["batch", self.tag], notes="; ".join(reasons), meta=meta)
        return reasons

    # -- phases -----------------------------------------------------------------------------------------
    def _chunks(self, jobs: list) -> list[list]:
        # one class per chunk (so a satisfied class's chunks can be skipped), enough chunks to
        # keep every worker busy, each a whole number of UNet batches
        per = max(self.spec.batch_size, math.ceil(len(jobs) / max(1, 2 * self.executor.workers)))
        if isinstance(self.executor, LocalExecutor):  # lazy: small chunks waste nothing
            per = self.spec.batch_size
        per = math.ceil(per / self.spec.batch_size) * self.spec.batch_size
        chunks = []
        for c in dict.fromkeys(c for c, _ in jobs):
            mine = [j for j in jobs if j[0] == c]
            chunks += [mine[i:i + per] for i in range(0, len(mine), per)]
        return chunks

    def _compute(self, jobs: list, bar, wanted: Callable | None = None) -> Iterator[Candidate]:
        for result in self.executor.map(compute_candidates, self.spec, self._chunks(jobs), wanted):
            for cand in result:
                self.report.generated += 1
                for k, v in cand.seconds.items():
                    self.report.seconds[k] = self.report.seconds.get(k, 0.0) + v
                if bar is not None:
                    bar.update(1)
                yield cand

    def _calibrate(self, done, bar) -> None:
        """Class statistics from the first ``warmup`` candidates of each class: the per-class
        threshold (paper: threshold per class) and the median agreement the filter is relative
        to. Warm-up candidates are committed only once their class is calibrated, so a resumed
        run recomputes exactly the same statistics from the store."""
        spec = self.spec
        jobs = [(c, k) for c in spec.classes for k in range(spec.warmup) if k not in done[c]]
        fresh = list(self._compute(jobs, bar)) if jobs else []
        for c in spec.classes:
            warm = [(r.meta["batch"]["metrics"], r.meta["batch"]["image_threshold"])
                    for k, r in done[c].items() if k < spec.warmup]
            warm += [(x.metrics, x.threshold) for x in fresh if x.class_name == c]
            warm = [(m, t) for m, t in warm if "ious" in m]
            if not warm:
                raise RuntimeError(f"no warm-up candidate of {c!r} could be refined: cannot calibrate the class")
            if spec.threshold_mode == "per-class":
                cal = ThresholdCalibrator()
                for m, _ in warm:
                    cal.add(c, np.asarray(m["ious"]))
                self.class_threshold[c] = cal.threshold(c)
                self.report.classes[c].threshold = self.class_threshold[c]
            agreement = [m["ious"][_threshold_index(self._threshold_for(c, t))] for m, t in warm]
            self.class_agreement[c] = float(np.median(agreement))
            self.report.classes[c].median_agreement = round(self.class_agreement[c], 4)
        for cand in fresh:  # committed only now, with the calibrated statistics
            self._commit(cand)

    def _kept(self, done) -> dict[str, int]:
        return {c: sum(1 for r in done[c].values()
                       if not self._verdict(c, r.meta["batch"]["metrics"], r.meta["batch"]["image_threshold"]))
                for c in self.spec.classes}

    def run(self) -> BatchReport:
        from tqdm.auto import tqdm

        spec = self.spec
        t0 = time.perf_counter()
        done = self._done()
        self.report.resumed = sum(len(d) for d in done.values())
        total = len(spec.classes) * spec.per_class
        overall = tqdm(total=total, desc="kept (all classes)", unit="img", disable=not self.progress, position=0)
        work = tqdm(desc="candidates", unit="img", disable=not self.progress, position=1)
        per_class = {c: tqdm(total=spec.per_class, desc=f"  {c}", unit="img", disable=not self.progress,
                             position=2 + i, leave=False) for i, c in enumerate(spec.classes)}
        try:
            if spec.warmup:
                self._calibrate(done, work)
                done = self._done()
            while True:
                kept = self._kept(done)
                for c in spec.classes:
                    per_class[c].n = min(kept[c], spec.per_class)
                    per_class[c].refresh()
                overall.n = sum(min(kept[c], spec.per_class) for c in spec.classes)
                overall.refresh()
                jobs = []
                for c in spec.classes:
                    need = spec.per_class - kept[c]
                    if need <= 0:
                        continue
                    tried = len(done[c])
                    rate = max(kept[c] / tried, 0.25) if tried >= 4 else 0.8
                    free = [k for k in range(spec.candidate_limit) if k not in done[c]]
                    jobs += [(c, k) for k in free[:math.ceil(need / rate)]]
                if not jobs:
                    break
                # commit as results arrive: a kill loses at most the chunks in flight
                for cand in self._compute(jobs, work, wanted=lambda job: kept[job[0]] < spec.per_class):
                    if not self._commit(cand):
                        kept[cand.class_name] += 1
                done = self._done()
            if spec.insert:
                self._compose(done, work)
            self._settle(self._done())
        finally:
            for bar in (*per_class.values(), work, overall):
                bar.close()
        self.report.seconds["total"] = time.perf_counter() - t0
        return self.report

    def _settle(self, done) -> None:
        """Fix the kept set: the first ``per_class`` passing candidates in k order."""
        spec = self.spec
        for c in spec.classes:
            r = self.report.classes[c]
            r.kept = r.dropped = 0
            r.reasons.clear()
            r.candidates = len(done[c])
            passing = 0
            for k in sorted(done[c]):
                rec = done[c][k]
                b = rec.meta["batch"]
                reasons = self._verdict(c, b["metrics"], b["image_threshold"])
                if not reasons:
                    passing += 1
                    if passing > spec.per_class:
                        reasons = ["surplus"]
                verdict = reasons or ["kept"]
                r.reasons.update(reasons)
                if reasons:
                    r.dropped += 1
                else:
                    r.kept += 1
                if verdict != b.get("verdict"):
                    self.store.update(rec.id, status="rejected" if reasons else "accepted", notes="; ".join(reasons),
                                      meta={"batch": dict(b, verdict=verdict)})
            if r.kept < spec.per_class:
                self.report.shortfall[c] = r.kept
        if spec.insert:
            for c in spec.classes:
                self.report.classes[c].composites = 0
            for rec in self.store.query(tags=[self.tag, "composite"]):
                self.report.classes[rec.meta["batch"]["class"]].composites += 1

    def _compose(self, done, bar) -> None:
        spec = self.spec
        have = {rec.meta["batch"]["base"] for rec in self.store.query(tags=[self.tag])
                if rec.meta.get("batch", {}).get("role") == "composite"}
        jobs = []
        for c in spec.classes:
            passing = [k for k in sorted(done[c]) if not self._verdict(
                c, done[c][k].meta["batch"]["metrics"], done[c][k].meta["batch"]["image_threshold"])]
            for k in passing[:spec.per_class]:
                rec = done[c][k]
                if rec.uid in have or not rec.instances:
                    continue
                jobs.append((rec.uid, c, rec.seed, self.store.image(rec.image), self.store.mask(rec.instances[0].mask)))
        chunks = [jobs[i:i + 4] for i in range(0, len(jobs), 4)]
        for result in self.executor.map(compose_candidates, spec, chunks):
            for comp in result:
                base = self.store.get_by_uid(comp.base_uid)
                base_class = base.meta["batch"]["class"]
                r = self.report.classes[base_class]
                if comp.image is None:
                    r.composite_skips.append(comp.skipped)
                    continue
                self.store.add(comp.image, list(dict.fromkeys(n for n, _, _ in comp.instances)),
                               instances=[(n, m) for n, m, _ in comp.instances],
                               instance_sources=[s for _, _, s in comp.instances], uid=comp.base_uid + "+insert",
                               prompt=base.prompt, seed=base.seed, model=base.model, status="accepted",
                               tags=["batch", self.tag, "composite"], inserted=[comp.record],
                               meta={"batch": {"role": "composite", "base": comp.base_uid, "run": spec.run_key,
                                               "class": base_class}})
                if bar is not None:
                    bar.update(1)


def run_batch(spec: BatchSpec, store, ray: bool = False, ray_address: str | None = None, workers: int = 2,
              gpus_per_task: float = 0.0, progress: bool = True) -> BatchReport:
    """Run (or resume) a batch into ``store``; write ``batch-<run key>.json`` beside it."""
    executor = RayExecutor(workers, ray_address, gpus_per_task) if (ray or ray_address) else LocalExecutor()
    try:
        report = BatchRun(spec, store, executor, progress).run()
    finally:
        executor.close()
    path = Path(store.root) / f"batch-{spec.run_key}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"spec": _spec_dict(spec), "report": report.to_dict()}, indent=1, default=str))
    os.replace(tmp, path)
    return report


def _spec_dict(spec: BatchSpec) -> dict:
    d = asdict(spec)
    d["run_key"] = spec.run_key
    return d


def iter_kept(store, run_key: str) -> Iterable:
    """The accepted candidates of a run, in (class, k) order."""
    recs = [r for r in store.query(status="accepted", tags=[RUN_TAG_PREFIX + run_key])
            if r.meta.get("batch", {}).get("role") == "candidate"]
    return sorted(recs, key=lambda r: (r.meta["batch"]["class"], r.meta["batch"]["k"]))

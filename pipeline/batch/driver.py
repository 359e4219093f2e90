"""The driver of a batch run: decide, commit, settle, report. It alone writes the store.

Candidates are stored with ``run``/``run_class``/``run_k`` in indexed columns (see
:mod:`pipeline.dataset`), so what is done, what is kept and why things were dropped are SQL
queries on the index and on ``status``/``notes``; only the few warm-up candidates and the
candidates whose verdict is stale (the filter or the calibration changed) are decoded.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..dataset import NewSample
from ..export.common import source_provenance
from ..session import store_composite
from ..errors import PipelineError
from ..masks import DEFAULT_THRESHOLDS, ThresholdCalibrator
from .executors import LocalExecutor, RayExecutor
from .spec import BatchSpec, candidate_uid
from .worker import Candidate, compose_candidates, compute_candidates


class BatchError(PipelineError, RuntimeError):
    """A run cannot go on as specified (e.g. no warm-up candidate of a class could be refined)."""


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


@dataclass(frozen=True)
class BatchProgress:
    """What a progress callback receives: ``phase`` (warmup, generate, insert, settle),
    ``kept`` per class (capped at ``per_class``), ``computed`` candidates so far in this invocation."""

    phase: str
    kept: dict[str, int]
    per_class: int
    computed: int

    @property
    def total_kept(self) -> int:
        return sum(self.kept.values())


@dataclass(frozen=True)
class Judgement:
    """A stored candidate with its verdict under a run's current filter and calibration."""

    record: object  # pipeline.dataset.Record
    class_name: str
    k: int
    reasons: list[str]  # [] = passes the filter


def threshold_index(t: float) -> int:
    """Index of threshold ``t`` in the sweep (DEFAULT_THRESHOLDS)."""
    return int(np.argmin(np.abs(DEFAULT_THRESHOLDS - t)))


class BatchRun:
    """One run of ``spec`` against a store. ``run()`` does everything and returns the report;
    ``calibrate()`` and ``judgements()`` re-judge what is stored without generating anything.

    ``progress(BatchProgress)`` is called as work advances (the CLI draws tqdm bars from it)."""

    def __init__(self, spec: BatchSpec, store, executor=None, progress: Callable[[BatchProgress], None] | None = None):
        self.spec = spec
        self.store = store
        self.executor = executor or LocalExecutor()
        self.progress = progress
        self.key = spec.run_key
        self.tag = spec.run_tag
        self.class_threshold: dict[str, float] = {}
        self.class_agreement: dict[str, float] = {}  # median warm-up agreement per class
        self.report = BatchReport(self.key, {c: ClassReport() for c in spec.classes})
        self._calibrated = False

    # -- store views (SQL) -----------------------------------------------------------------------
    def done(self) -> dict[str, set[int]]:
        """class -> the k of this run's candidates already committed (from the index)."""
        have = self.store.run_keys(self.key)
        return {c: have.get(c, set()) for c in self.spec.classes}

    def kept_counts(self) -> dict[str, int]:
        """class -> committed candidates of this run that are accepted (a COUNT per class)."""
        return {c: self.store.count(run=self.key, run_class=c, status="accepted") for c in self.spec.classes}

    # -- judging -----------------------------------------------------------------------------------
    def threshold_for(self, class_name: str, cand_threshold: float | None) -> float | None:
        if self.spec.policy.threshold_mode == "per-class":
            return self.class_threshold[class_name]
        return cand_threshold

    def verdict(self, class_name: str, metrics: dict, cand_threshold: float | None) -> list[str]:
        """Why a candidate with these metrics is dropped ([] = kept), under the current calibration."""
        t = self.threshold_for(class_name, cand_threshold)
        return self.spec.policy.filter.reasons(metrics, 0 if t is None else threshold_index(t),
                                               self.class_agreement.get(class_name))

    def decision_key(self, class_name: str) -> str:
        """Fingerprint of everything a verdict in this class depends on besides the candidate;
        stored with each verdict, so stale ones are found by a query."""
        p = self.spec.policy
        d = dict(filter=asdict(p.filter), mode=p.threshold_mode, warmup=p.warmup, per_class=self.spec.per_class,
                 threshold=self.class_threshold.get(class_name), agreement=self.class_agreement.get(class_name))
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def calibrate(self) -> None:
        """Class statistics from the first ``warmup`` candidates of each class: the per-class
        threshold (paper: threshold per class) and the median agreement the filter is relative
        to. Missing warm-up candidates are computed and committed only once their class is
        calibrated, so a resumed run recomputes exactly the same statistics from the store."""
        spec, warmup = self.spec, self.spec.policy.warmup
        if not warmup:
            self._calibrated = True
            return
        done = self.done()
        jobs = [(c, k) for c in spec.classes for k in range(warmup) if k not in done[c]]
        fresh = list(self._compute(jobs, "warmup")) if jobs else []
        for c in spec.classes:
            stored = self.store.query(run=self.key, run_class=c, run_k_below=warmup)
            warm = [(r.meta["batch"]["metrics"], r.meta["batch"]["image_threshold"]) for r in stored]
            warm += [(x.metrics, x.threshold) for x in fresh if x.class_name == c]
            warm = [(m, t) for m, t in warm if "ious" in m]
            if not warm:
                raise BatchError(f"no warm-up candidate of {c!r} could be refined: cannot calibrate the class")
            if spec.policy.threshold_mode == "per-class":
                cal = ThresholdCalibrator()
                for m, _ in warm:
                    cal.add(c, np.asarray(m["ious"]))
                self.class_threshold[c] = cal.threshold(c)
                self.report.classes[c].threshold = self.class_threshold[c]
            agreement = [m["ious"][threshold_index(self.threshold_for(c, t))] for m, t in warm]
            self.class_agreement[c] = float(np.median(agreement))
            self.report.classes[c].median_agreement = round(self.class_agreement[c], 4)
        self._calibrated = True
        for cand in fresh:  # committed only now, with the calibrated statistics
            self._commit(cand)

    def rejudge(self) -> int:
        """Re-decide the stored candidates whose verdict was made under other settings (filter,
        threshold mode, calibration, per_class), from their stored metrics; returns how many
        changed. Only those rows are read: the others are skipped by a query."""
        self._need_calibration()
        changed = 0
        for c in self.spec.classes:
            key = self.decision_key(c)
            ids = self.store.ids(run=self.key, run_class=c, meta_not=("batch.decided", key))
            for i in ids:
                rec = self.store.get(i)
                b = rec.meta["batch"]
                reasons = self.verdict(c, b["metrics"], b["image_threshold"])
                verdict = reasons or ["kept"]
                if verdict != b.get("verdict"):
                    changed += 1
                self.store.update(rec.id, status="rejected" if reasons else "accepted", notes="; ".join(reasons),
                                  meta={"batch": dict(b, verdict=verdict, decided=key)})
        return changed

    def judgements(self) -> Iterator[Judgement]:
        """Every stored candidate of the run with its verdict under this spec's filter and the
        current calibration (call :meth:`calibrate` first), in (class, k) order. Reads every
        row: meant for analysis (bench/bench_batch.py), not for the run itself."""
        self._need_calibration()
        for c in self.spec.classes:
            for rec in sorted(self.store.query(run=self.key, run_class=c), key=lambda r: r.run_k):
                b = rec.meta["batch"]
                yield Judgement(rec, c, rec.run_k, self.verdict(c, b["metrics"], b["image_threshold"]))

    def _need_calibration(self) -> None:
        if not self._calibrated:
            raise RuntimeError("calibrate() first: verdicts depend on the class statistics")

    # -- commit ------------------------------------------------------------------------------------
    def _commit(self, cand: Candidate) -> list[str]:
        """Store a candidate with its verdict; returns the reasons it was dropped ([] = kept)."""
        spec = self.spec
        t = self.threshold_for(cand.class_name, cand.threshold)
        reasons = self.verdict(cand.class_name, cand.metrics, cand.threshold)
        heat = np.asarray(cand.heat, np.float32)
        instances = [] if t is None or "error" in cand.metrics else [(cand.class_name, heat >= t)]
        meta = {"batch": {"role": "candidate", "run": self.key, "class": cand.class_name, "k": cand.k,
                          "metrics": cand.metrics, "image_threshold": cand.threshold,
                          "verdict": reasons or ["kept"], "threshold_mode": spec.policy.threshold_mode,
                          "decided": self.decision_key(cand.class_name)}}
        self.store.add(NewSample(cand.image, [cand.class_name], instances=instances,
                                 uid=candidate_uid(self.key, cand.class_name, cand.k), prompt=cand.prompt,
                                 seed=cand.seed, model=spec.model.label, heat_map=heat, threshold=t,
                                 refined_mask=cand.refined, status="rejected" if reasons else "accepted",
                                 tags=["batch", self.tag], notes="; ".join(reasons), meta=meta,
                                 run=(self.key, cand.class_name, cand.k)))
        return reasons

    # -- phases ------------------------------------------------------------------------------------
    def _chunks(self, jobs: list) -> list[list]:
        # one class per chunk (so a satisfied class's chunks can be skipped), enough chunks to
        # keep every worker busy, each a whole number of UNet batches
        bs = self.spec.batch_size
        per = bs if getattr(self.executor, "lazy", False) else \
            max(bs, math.ceil(len(jobs) / max(1, 2 * self.executor.workers)))
        per = math.ceil(per / bs) * bs
        chunks = []
        for c in dict.fromkeys(c for c, _ in jobs):
            mine = [j for j in jobs if j[0] == c]
            chunks += [mine[i:i + per] for i in range(0, len(mine), per)]
        return chunks

    def _compute(self, jobs: list, phase: str, wanted: Callable | None = None) -> Iterator[Candidate]:
        for result in self.executor.map(compute_candidates, self.spec, self._chunks(jobs), wanted):
            for cand in result:
                self.report.generated += 1
                for k, v in cand.seconds.items():
                    self.report.seconds[k] = self.report.seconds.get(k, 0.0) + v
                yield cand
            self._tell(phase)

    def _tell(self, phase: str, kept: dict[str, int] | None = None) -> None:
        if self.progress is not None:
            kept = self.kept_counts() if kept is None else kept
            self.progress(BatchProgress(phase, {c: min(n, self.spec.per_class) for c, n in kept.items()},
                                        self.spec.per_class, self.report.generated))

    def run(self) -> BatchReport:
        spec = self.spec
        t0 = time.perf_counter()
        self.report.resumed = sum(len(d) for d in self.done().values())
        self.calibrate()
        self.rejudge()
        while True:
            kept, done = self.kept_counts(), self.done()
            self._tell("generate", kept)
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
            for cand in self._compute(jobs, "generate", wanted=lambda job: kept[job[0]] < spec.per_class):
                if not self._commit(cand):
                    kept[cand.class_name] += 1
        if spec.insertion.objects:
            self._compose()
        self._settle()
        self._tell("settle")
        self.report.seconds["total"] = time.perf_counter() - t0
        return self.report

    def _settle(self) -> None:
        """Fix the kept set: the first ``per_class`` accepted candidates in k order; later
        accepted ones become ``surplus`` (only parallel runs make them). Counts come from SQL."""
        spec = self.spec
        for c in spec.classes:
            r = self.report.classes[c]
            accepted = self.store.ids(run=self.key, run_class=c, status="accepted", order="run_k")
            for i in accepted[spec.per_class:]:
                b = self.store.get(i).meta["batch"]
                self.store.update(i, status="rejected", notes="surplus", meta={"batch": dict(b, verdict=["surplus"])})
            r.reasons.clear()
            for notes, n in self.store.group_count("notes", run=self.key, run_class=c, status="rejected").items():
                for reason in notes.split("; "):
                    r.reasons[reason] += n
            r.kept = self.store.count(run=self.key, run_class=c, status="accepted")
            r.dropped = self.store.count(run=self.key, run_class=c, status="rejected")
            r.candidates = r.kept + r.dropped
            if r.kept < spec.per_class:
                self.report.shortfall[c] = r.kept
        if spec.insertion.objects:
            for c in spec.classes:
                self.report.classes[c].composites = 0
            for c, n in self.store.group_count("meta.batch.class", uid_prefix=f"batch-{self.key}-", uid_suffix="+insert",
                                               meta_is=("batch.role", "composite")).items():
                if c in self.report.classes:
                    self.report.classes[c].composites = n

    def _bank_objects(self):
        """``(thesaurus, bank)`` for bank insertion, or ``(None, None)`` for generated objects.
        The bank leaves out this run's own samples (candidates and composites): what a
        resumed run can cut out is what the uninterrupted run could."""
        if self.spec.insertion.object_source == "generated":
            return None, None
        from ..bank import ObjectBank
        from .worker import load_thesaurus

        own = sorted(set(self.store.ids(run=self.key)) | set(self.store.ids(uid_prefix=f"batch-{self.key}-")))
        return load_thesaurus(self.spec), ObjectBank(self.store, exclude_ids=own)

    def _bank_job_object(self, thesaurus, bank, scene: str, seed: int) -> dict:
        """What to insert into a kept sample of class ``scene``: ``{"class": None}`` (no
        suggestion the sources can supply), ``{"class": c}`` (generate c), or a bank object
        ``{"class", "image" (HWC uint8 crop), "mask" (HW bool), "bank" (its provenance)}``,
        drawn with the base sample's seed (the bank's order is by box size, sample, index)."""
        from .worker import suggest_object

        allowed = list(bank.classes())
        if self.spec.insertion.object_source == "both":
            allowed += list(self.spec.classes)
        obj = suggest_object(thesaurus, scene, allowed)
        if obj is None or obj not in bank:
            return {"class": obj, "allowed": "the bank's and the batch's classes"
                    if self.spec.insertion.object_source == "both" else "the bank's classes"}
        pick = bank.pick(obj, seed=seed)
        crop, mask = bank.cut_out(pick)
        src = self.store.get(pick.sample_id)
        return {"class": obj, "image": crop, "mask": mask,
                "bank": {"sample": src.id, "uid": src.uid, "instance": pick.index, "source": pick.source,
                         "box": list(pick.bbox), "provenance": source_provenance(src)}}

    def _compose(self) -> None:
        spec = self.spec
        have = self.store.uids(uid_prefix=f"batch-{self.key}-", uid_suffix="+insert")
        thesaurus, bank = self._bank_objects()
        jobs = []
        for c in spec.classes:
            kept = sorted(self.store.query(run=self.key, run_class=c, status="accepted"), key=lambda r: r.run_k)
            for rec in kept[:spec.per_class]:
                if rec.uid + "+insert" in have or not rec.instances:
                    continue
                obj = None if bank is None else self._bank_job_object(thesaurus, bank, c, rec.seed)
                jobs.append((rec.uid, c, rec.seed, self.store.image(rec.image), self.store.mask(rec.instances[0].mask),
                             obj))
        chunks = [jobs[i:i + 4] for i in range(0, len(jobs), 4)]
        for result in self.executor.map(compose_candidates, spec, chunks):
            for comp in result:
                base = self.store.get_by_uid(comp.base_uid)
                r = self.report.classes[base.run_class]
                if comp.image is None:
                    r.composite_skips.append(comp.skipped)
                    continue
                store_composite(self.store, comp.image, comp.instances, comp.record, uid=comp.base_uid + "+insert",
                                prompt=base.prompt, seed=base.seed, model=base.model, status="accepted",
                                tags=["batch", self.tag, "composite"],
                                meta={"batch": {"role": "composite", "base": comp.base_uid, "run": self.key,
                                                "class": base.run_class},
                                      "background_provenance": source_provenance(base)})
            self._tell("insert")


def make_executor(ray: bool = False, ray_address: str | None = None, workers: int = 2, gpus_per_task: float = 0.0):
    """LocalExecutor, or a RayExecutor when ``ray`` or an address is given."""
    return RayExecutor(workers, ray_address, gpus_per_task) if (ray or ray_address) else LocalExecutor()


def run_batch(spec: BatchSpec, store, executor=None, progress: Callable[[BatchProgress], None] | None = None,
              **executor_options) -> BatchReport:
    """Run (or resume) a batch into ``store``; write ``batch-<run key>.json`` beside it.

    ``executor``: where candidates are computed (default: :func:`make_executor` of
    ``executor_options``: ``ray``, ``ray_address``, ``workers``, ``gpus_per_task``); closed at the end."""
    executor = executor or make_executor(**executor_options)
    try:
        report = BatchRun(spec, store, executor, progress).run()
    finally:
        executor.close()
    path = Path(store.root) / f"batch-{spec.run_key}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"spec": spec.to_dict(), "report": report.to_dict()}, indent=1, default=str))
    os.replace(tmp, path)
    return report


def iter_kept(store, run_key: str) -> Iterable:
    """The accepted candidates of a run, in (class, k) order."""
    return sorted(store.query(status="accepted", run=run_key), key=lambda r: (r.run_class, r.run_k))

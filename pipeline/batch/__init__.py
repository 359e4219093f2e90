"""Batch generation at dataset scale: deterministic, resumable, filtered, optionally on Ray.

The paper draws ~10k images per class and keeps ~7k after filtering. Here a *run* is fixed
by its generation settings (model, :class:`~pipeline.generate.GenerationConfig`, base seed);
inside a run, candidate ``k`` of class ``c`` always uses the seed ``candidate_seed(seed, c, k)``
and the store uid ``batch-<run key>-<c>-<k>``. So:

- re-running the same command gives the same images and masks, and skips every candidate
  already in the store (resume after ``kill -9``: a candidate is committed in one SQLite
  transaction after its blobs are written atomically; a half-done one simply is not there);
- shards never overlap: work is a set of (class, k) pairs, whoever computes them;
- the kept set is defined, not raced: after filtering, the first ``per_class`` passing
  candidates in k order are ``accepted``; later passing ones are ``rejected`` as ``surplus``
  (only parallel runs make those). Workers' timing cannot change the dataset.

Every candidate (kept or dropped) is stored with its filter metrics and reasons in
``meta["batch"]`` and its run / class / k in indexed columns, so a second run with other
filter bounds re-decides without regenerating, and resuming and counting are SQL queries.

The package: :mod:`.spec` (what a run is), :mod:`.worker` (compute, no store access),
:mod:`.executors` (in-process or Ray), :mod:`.driver` (decide, commit, settle, report).
The driver owns the store; workers only compute and return arrays. That keeps commits
idempotent and needs no shared file system between Ray nodes.
"""
from .driver import (BatchProgress, BatchReport, BatchRun, ClassReport, Judgement, iter_kept, make_executor,
                     run_batch, threshold_index)
from .executors import LocalExecutor, RayExecutor
from .spec import (RUN_TAG_PREFIX, BatchSpec, FilterConfig, InsertConfig, Policy, candidate_seed, candidate_uid,
                   resolve_classes)
from .worker import Candidate, Composition, compose_candidates, compute_candidates, mask_metrics, suggest_object, worker_models

__all__ = ["BatchProgress", "BatchReport", "BatchRun", "ClassReport", "Judgement", "iter_kept", "make_executor",
           "run_batch", "threshold_index", "LocalExecutor", "RayExecutor", "RUN_TAG_PREFIX", "BatchSpec",
           "FilterConfig", "InsertConfig", "Policy", "candidate_seed", "candidate_uid", "resolve_classes", "Candidate",
           "Composition", "compose_candidates", "compute_candidates", "mask_metrics", "suggest_object", "worker_models"]

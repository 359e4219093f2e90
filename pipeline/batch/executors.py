"""Executors: run ``fn(spec, chunk)`` for chunks of jobs somewhere, yield results as they finish.

An executor has ``workers`` (how many chunks run at once), ``map(fn, spec, chunks, wanted)``
and ``close()``. The driver does not care where the work runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

from .spec import BatchSpec


class LocalExecutor:
    """In this process, one chunk after the other."""

    workers = 1
    lazy = True  # chunks run one at a time: small chunks waste nothing

    def map(self, fn: Callable, spec: BatchSpec, chunks: Sequence[list], wanted: Callable | None = None) -> Iterator[list]:
        """``wanted(job)``: checked just before a chunk runs, so work made unnecessary by
        earlier results (a class already has enough kept samples) is not done."""
        for chunk in chunks:
            chunk = [j for j in chunk if wanted is None or wanted(j)]
            if chunk:
                yield fn(spec, chunk)

    def close(self) -> None:
        pass


def _run_chunk(fn: Callable, spec: BatchSpec, chunk: list):
    return fn(spec, chunk)


class RayExecutor:
    """Chunks as Ray tasks (one CPU or one GPU each), retried when a worker dies.

    ``address=None`` starts a local Ray instance with ``workers`` CPU slots; an address
    ("auto", "ray://head:10001") joins an existing cluster, shipping this project to it."""

    lazy = False

    def __init__(self, workers: int = 2, address: str | None = None, gpus_per_task: float = 0.0, retries: int = 3):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            if address:
                # ship the project (code + assets: embedded model, thesaurus, harmonizer) to every node
                root = str(Path(__file__).resolve().parents[2])
                ray.init(address=address, log_to_driver=False, runtime_env={
                    "working_dir": root, "excludes": [".git", "studio_data", "test-artifacts", "assets/embedded_model/_train"]})
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         object_store_memory=512 * 2**20)
        self.workers = int(ray.cluster_resources().get("GPU" if gpus_per_task else "CPU", workers))
        self.options = dict(num_cpus=1, num_gpus=gpus_per_task, max_retries=retries)
        self._remote = ray.remote(**self.options)(_run_chunk)

    def task(self, fn: Callable) -> Callable:
        """What a Ray task runs for ``fn`` (subclasses wrap it, e.g. to inject failures)."""
        return fn

    def map(self, fn: Callable, spec: BatchSpec, chunks: Sequence[list], wanted: Callable | None = None) -> Iterator[list]:
        # everything is submitted at once to keep all workers busy; surplus is settled later
        target = self.task(fn)
        pending = [self._remote.remote(target, spec, chunk) for chunk in chunks]
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(done[0])

    def close(self) -> None:
        self.ray.shutdown()

"""Where runs train: one interface, two implementations.

``Executor.run(specs)`` trains every spec (and every run it starts from that is not complete),
upstream runs first, and returns the results in the order given. Complete runs are read back
without starting a worker. The first failure stops the rest and is raised naming its run.
``Executor.map(fn, items)`` runs plain tasks the same way (the search's Optuna workers).

- ``LocalExecutor`` (the default): worker processes on this machine, each with an equal share of
  the CPU threads (``default_workers`` decides how many).
- ``RayExecutor``: every run a Ray task that declares the CPUs and the share of a GPU it needs,
  scheduled on the cluster ``$RAY_ADDRESS`` (or ``address``) names, else on a local one. Every
  worker writes into the same runs folder, which all machines must share (README: "Several
  machines").

Two executors, studies or machines may work on one runs folder at once: each run is locked while
it trains (``locks``), and a run found busy is waited for and read back, never trained twice.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from tqdm import tqdm

from ..core import logs, paths, repro
from . import lifecycle

log = logging.getLogger(__name__)

#: The executors a notebook's ``executor`` parameter and ``make study EXECUTOR=...`` may name.
EXECUTORS = ("local", "ray")
#: Environment variables a worker needs as the driver has them (where data, weights and caches are).
ENV_PASSED = (paths.ENV_DATA_DIR, paths.ENV_WEIGHTS_DIR, paths.ENV_CACHE_DIR, paths.ENV_OFFLINE,
              lifecycle.ENV_STATE_EVERY, logs.ENV_LOG_FILE)


def default_workers(n_jobs: int, device: str = "cpu", cores: int | None = None) -> int:
    """Runs to train side by side on one machine.

    CPU: one per core (up to 8), but only for many runs (at least 4 per worker); fewer run one at
    a time with every thread. Small stage-2 runs (batch 8) use two cores poorly: on the 2-core CI
    machine two one-thread runs together trained more images per second than one two-thread run
    (the speed appendix has the figures); with few runs the last round would leave cores idle.
    GPU: up to 4 runs share the device whenever there are two or more (a stage-2 step at batch 8
    is launch-bound and leaves the GPU mostly idle; the bridges of a study train side by side).
    """
    if device == "cuda":
        return max(1, min(4, n_jobs))
    workers = max(1, min(8, cores or os.cpu_count() or 1))
    return workers if n_jobs >= 4 * workers else 1


def _env(runs_root: Path | None = None) -> dict[str, str | None]:
    """The driver's configuration for a worker, unset variables as None (a worker must not keep a value of its
    own: a Ray worker inherits the environment its cluster was started with); the executor's runs folder as
    ``$MSTL_RUNS_DIR``."""
    env: dict[str, str | None] = {k: os.environ.get(k) for k in ENV_PASSED}
    if runs_root is not None:
        env[paths.ENV_RUNS_DIR] = str(runs_root)
    return env


def _set_env(env: dict[str, str | None]) -> None:
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def init_worker(threads: int, env: dict[str, str | None] | None = None) -> None:
    """Set up a worker process: its share of the CPU threads, the driver's configuration, quiet logs."""
    torch.set_num_threads(threads)
    _set_env(env or {})
    # One line per finished run comes from the driver; a worker only reports problems (into the log file when
    # the study driver set one, else to standard error).
    logs.setup(logging.WARNING)


def _train(spec: Any, runs_root: str, force: bool) -> str:
    """One run in a worker (no console bars there); returns its folder."""
    return str(lifecycle.run(spec, runs_root=runs_root, force=force, progress=False).run_dir)


def _layers(specs: Sequence[Any]) -> list[list[Any]]:
    """``specs`` and the runs they start from, grouped so that every run comes after its upstream runs."""
    depth: dict[str, int] = {}
    found: dict[str, Any] = {}

    def visit(spec: Any) -> int:
        key = str(spec.relpath)
        if key not in depth:
            depth[key] = 1 + max((visit(u) for u in spec.upstream()), default=-1)
            found[key] = spec
        return depth[key]

    for spec in specs:
        visit(spec)
    layers: list[list[Any]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for key, spec in found.items():
        layers[depth[key]].append(spec)
    return layers


class Progress:
    """Runs done of the total and the time left, as a console bar (on a terminal) and as log lines."""

    def __init__(self, total: int, description: str, *, workers: int):
        self.total, self.description, self.workers = total, description, workers
        self.done = 0
        self.start = time.monotonic()
        self.bar = tqdm(total=total, desc=description, unit="run", disable=None if total > 1 else True)

    def update(self, label: str) -> None:
        self.done += 1
        self.bar.update()
        elapsed = time.monotonic() - self.start
        left = elapsed / self.done * (self.total - self.done)
        log.info("%s: %d/%d done (%s), %s, about %s left", self.description, self.done, self.total, label,
                 _minutes(elapsed), _minutes(left))

    def close(self) -> None:
        self.bar.close()


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class Executor:
    """Trains specs and runs tasks; see the module's note. Subclasses implement ``_run_layer`` and ``map``."""

    name = "base"

    def __init__(self, *, workers: int | None = None, runs_root: str | Path | None = None):
        if workers is not None and workers < 1:
            raise ValueError(f"workers={workers}; expected at least 1 (or None: chosen by the executor)")
        self.workers = workers
        self.runs_root = paths.runs_dir(runs_root).resolve()

    def run(self, specs: Iterable[Any], *, force: bool = False, description: str = "runs") -> list[lifecycle.RunResult]:
        """Train (or read back) every spec and the runs they start from; results in the order of ``specs``.

        ``force`` trains the given specs again even when complete (never the runs they start from)."""
        specs = list(specs)
        asked = {str(s.relpath) for s in specs}

        def todo_of(layer: list[Any]) -> list[Any]:
            return [s for s in layer if (force and str(s.relpath) in asked)
                    or not lifecycle.is_complete(s, self.runs_root)]

        layers = _layers(specs)
        n_runs = sum(len(layer) for layer in layers)
        n_todo = sum(len(todo_of(layer)) for layer in layers)
        if n_todo:
            log.info("%s: %d to train, %d complete and reused (%s executor)", description, n_todo, n_runs - n_todo,
                     self.name)
        for layer in layers:
            todo = todo_of(layer)  # again: a retrained upstream run changes what its followers start from
            if todo:
                self._run_layer(todo, force=force, description=description)
        return [lifecycle.load_spec(s, self.runs_root) for s in specs]

    def _run_layer(self, specs: list[Any], *, force: bool, description: str) -> None:
        raise NotImplementedError

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *, workers: int | None = None,
            gpu: float = 0.0, description: str = "tasks") -> list[Any]:
        """``fn(item)`` for every item, side by side; results in order. ``gpu``: the share of a GPU each task
        needs (a Ray task without one gets no GPU; local processes see the machine's)."""
        raise NotImplementedError

    def slots(self, n_jobs: int, device: str = "cpu") -> int:
        """How many tasks of one kind this executor runs at once (``default_workers`` of its machines)."""
        return self.workers or default_workers(n_jobs, device)

    def close(self) -> None:
        """Release what the executor holds (a Ray connection it opened)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _device_of(specs: Sequence[Any]) -> str:
    return "cuda" if any(getattr(s, "device", "cpu") == "cuda" for s in specs) else "cpu"


class LocalExecutor(Executor):
    """Worker processes on this machine (spawned: forking a process that runs torch threads can deadlock)."""

    name = "local"

    def _run_layer(self, specs: list[Any], *, force: bool, description: str) -> None:
        workers = self.workers or default_workers(len(specs), _device_of(specs))
        workers = min(workers, len(specs))
        progress = Progress(len(specs), description, workers=workers)
        try:
            if workers == 1:
                for spec in specs:  # in this process, with every thread and console bars over batches
                    try:
                        lifecycle.run(spec, runs_root=self.runs_root, force=force)
                    except Exception as error:
                        raise RuntimeError(f"run {spec.label} failed: {type(error).__name__}: {error}") from error
                    progress.update(spec.label)
                return
            threads = max(1, torch.get_num_threads() // workers)
            log.info("%s: %d at a time, %d CPU thread(s) each", description, workers, threads)
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker,
                                     initargs=(threads, _env(self.runs_root))) as pool:
                futures = {pool.submit(_train, spec, str(self.runs_root), force): spec for spec in specs}
                _collect(futures, progress)
        finally:
            progress.close()

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *, workers: int | None = None,
            gpu: float = 0.0, description: str = "tasks") -> list[Any]:
        workers = min(workers or self.workers or len(items), len(items)) or 1
        if workers == 1:
            return [fn(item) for item in items]
        threads = max(1, torch.get_num_threads() // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker,
                                 initargs=(threads, _env(self.runs_root))) as pool:
            futures = [pool.submit(fn, item) for item in items]
            return [f.result() for f in futures]


def _collect(futures: dict[Any, Any], progress: Progress) -> None:
    """Wait for every future; the first failure cancels the rest and is raised, naming its run."""
    pending = set(futures)
    while pending:
        # One finished run at a time (not FIRST_EXCEPTION, which waits for all when none fails),
        # so that progress is reported as it happens and a failure stops the rest at once.
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            spec = futures[future]
            error = future.exception()
            if error is not None:
                for other in pending:
                    other.cancel()
                raise RuntimeError(f"run {spec.label} failed: {type(error).__name__}: {error}") from error
            progress.update(spec.label)


# --------------------------------------------------------------------------- Ray


def _ray_train(spec: Any, runs_root: str, force: bool, threads: int, env: dict[str, str | None]) -> str:
    torch.set_num_threads(threads)
    _set_env(env)
    return _train(spec, runs_root, force)


def _ray_call(fn: Callable[..., Any], item: Any, threads: int, env: dict[str, str | None]) -> Any:
    torch.set_num_threads(threads)
    _set_env(env)
    return fn(item)


class RayExecutor(Executor):
    """Every run a Ray task on the cluster ``address`` or ``$RAY_ADDRESS`` names (neither: a local
    cluster started here, stopped by ``close``). A task declares ``num_cpus`` (its torch threads) and,
    for a GPU run, a share of a GPU (``RunSpec.resources``). A task whose worker dies (a killed
    process, a lost machine) is retried up to ``max_retries`` times and continues from the run's last
    saved state; an error raised by the run itself is not retried."""

    name = "ray"

    def __init__(self, *, workers: int | None = None, runs_root: str | Path | None = None,
                 address: str | None = None, cpus_per_run: int | None = None, max_retries: int = 3,
                 num_cpus: int | None = None):
        super().__init__(workers=workers, runs_root=runs_root)
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.cpus_per_run = cpus_per_run
        self.max_retries = max_retries
        self.num_cpus = num_cpus  # CPUs of a local cluster started here (None: every core)
        self._started_here = False

    def connect(self):
        """Connect to the cluster (or start a local one); return the ``ray`` module."""
        try:
            import ray
        except ImportError as error:
            raise ImportError("executor 'ray' needs Ray: pip install 'mstl[ray]' (or pip install 'ray[default]')"
                              ) from error
        if not ray.is_initialized():
            options: dict[str, Any] = dict(address=self.address, include_dashboard=False, log_to_driver=False,
                                           logging_level=logging.WARNING)
            if self.address is None:
                # A local cluster: a small object store (runs exchange only file names).
                options.update(num_cpus=self.num_cpus, object_store_memory=100 * 1024 * 1024)
                self._started_here = True
            ray.init(**options)
            log.info("Ray: %s", "local cluster started" if self.address is None else f"connected to {self.address}")
        return ray

    def _threads(self, n_runs: int, device: str, ray) -> int:
        if self.cpus_per_run:
            return self.cpus_per_run
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        node_cpus = int(max((n["Resources"].get("CPU", 1) for n in nodes), default=os.cpu_count() or 1))
        workers = self.workers or default_workers(n_runs, device, cores=node_cpus)
        return max(1, node_cpus // max(1, min(workers, n_runs)))

    def _run_layer(self, specs: list[Any], *, force: bool, description: str) -> None:
        ray = self.connect()
        device = _device_of(specs)
        threads = self._threads(len(specs), device, ray)
        env = _env(self.runs_root)
        remote = ray.remote(_ray_train)
        futures = {}
        for spec in specs:
            gpus = spec.resources().get("gpu", 0) if hasattr(spec, "resources") else 0
            ref = remote.options(num_cpus=threads, num_gpus=gpus, max_retries=self.max_retries,
                                 retry_exceptions=False, name=spec.label).remote(
                spec, str(self.runs_root), force, threads, env)
            futures[ref] = spec
        log.info("%s: %d Ray tasks, %d CPU(s) each", description, len(specs), threads)
        progress = Progress(len(specs), description, workers=len(specs))
        try:
            pending = list(futures)
            while pending:
                finished, pending = ray.wait(pending, num_returns=1)
                for ref in finished:
                    spec = futures[ref]
                    try:
                        ray.get(ref)
                    except Exception as error:
                        for other in pending:
                            ray.cancel(other, force=True)
                        cause = getattr(error, "cause", None) or error
                        raise RuntimeError(f"run {spec.label} failed: {type(cause).__name__}: {cause}") from error
                    progress.update(spec.label)
        finally:
            progress.close()

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *, workers: int | None = None,
            gpu: float = 0.0, description: str = "tasks") -> list[Any]:
        ray = self.connect()
        threads = self.cpus_per_run or 1
        remote = ray.remote(_ray_call).options(num_cpus=threads, num_gpus=gpu, max_retries=self.max_retries,
                                               retry_exceptions=False)
        env = _env(self.runs_root)
        return ray.get([remote.remote(fn, item, threads, env) for item in items])

    def slots(self, n_jobs: int, device: str = "cpu") -> int:
        """Tasks of one kind the cluster runs at once: its CPUs over each task's threads (GPU: 4 per GPU)."""
        ray = self.connect()
        resources = ray.cluster_resources()
        if device == "cuda":
            return max(1, min(n_jobs, int(4 * resources.get("GPU", 0)) or 1))
        threads = self._threads(n_jobs, device, ray)
        return max(1, min(n_jobs, int(resources.get("CPU", 1)) // threads))

    def close(self) -> None:
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False


def get_executor(name: str | Executor | None = "local", *, workers: int | None = None,
                 runs_root: str | Path | None = None, **options: Any) -> Executor:
    """The executor called ``name`` ("local" or "ray"); an Executor is returned as it is."""
    if isinstance(name, Executor):
        return name
    name = name or "local"
    if name == "local":
        return LocalExecutor(workers=workers, runs_root=runs_root)
    if name == "ray":
        return RayExecutor(workers=workers, runs_root=runs_root, **options)
    raise ValueError(f"executor={name!r}; expected one of {EXECUTORS}")


@contextlib.contextmanager
def using(executor: str | Executor | None = "local", *, workers: int | None = None) -> Iterator[Executor]:
    """``with using(executor) as ex:`` an executor for several calls; closed at the end only when made here
    (an Executor passed in belongs to the caller)."""
    owned = not isinstance(executor, Executor)
    ex = get_executor(executor, workers=workers)
    try:
        yield ex
    finally:
        if owned:
            ex.close()


def run_specs(specs: Iterable[Any], *, executor: str | Executor | None = "local", workers: int | None = None,
              force: bool = False, description: str = "runs") -> list[lifecycle.RunResult]:
    """Train (or read back) ``specs`` with the named executor; the one call notebooks and chapters make."""
    with using(executor, workers=workers) as ex:
        return ex.run(specs, force=force, description=description)

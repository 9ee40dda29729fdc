"""The one lifecycle of every run, whatever it trains (a stage, a pruning round, a GAN):

    requested (spec + checksums of its inputs)  ->  complete with the same request? read it back
    -> lock the folder (another process training it: wait, then read it back)
    -> config.json -> the body trains, saving its state now and then (resume.pt) and writing its
       files atomically -> metrics.json with provenance, written last: the completion marker

A run folder without ``metrics.json`` is never used as a result. A killed run continues from its
last saved state when started again with the same request, and ends with the same numbers as an
uninterrupted one (bit for bit on the CPU in deterministic mode).

A spec is any object with ``identity()``, ``inputs(runs_root)``, ``relpath``, ``label``,
``upstream()`` and ``execute(run)`` (``spec.RunSpec`` for stages and pruning rounds; the GAN
chapter has its own). ``execute`` returns the run's metrics (with a ``provenance`` dict of what only
it knows); this module adds the rest of the provenance.

When the state is saved: after an epoch (or a GAN's checkpoint step) once ``state_every`` seconds
have passed since the run started or last saved (``$MSTL_STATE_EVERY``, default 60; 0: every
time). A run shorter than that never writes one (a stage-2 run of 40 s would otherwise write
27 MB ten times), and at most a minute of work is lost when a long one is killed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .. import __version__
from ..core import environment, paths, repro
from . import locks

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"  # what was requested
MARKER_FILE = "metrics.json"  # written last: the run is complete
STATE_FILE = "resume.pt"  # the state after the last saved epoch, while the run is unfinished
ENV_STATE_EVERY = "MSTL_STATE_EVERY"


def state_every() -> float:
    """Seconds between saved states (``$MSTL_STATE_EVERY``, default 60)."""
    value = os.environ.get(ENV_STATE_EVERY, "").strip()
    try:
        return float(value) if value else 60.0
    except ValueError:
        raise ValueError(f"${ENV_STATE_EVERY}={value!r}; expected a number of seconds") from None


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def requested(spec: Any, runs_root: str | Path | None = None) -> dict[str, Any]:
    """What ``config.json`` of ``spec``'s run holds: its identity, its inputs' checksums, the package version."""
    root = paths.runs_dir(runs_root)
    return _json({**spec.identity(), "inputs": spec.inputs(root), "code_version": __version__})


def run_dir(spec: Any, runs_root: str | Path | None = None) -> Path:
    return paths.runs_dir(runs_root) / spec.relpath


def _complete_with(folder: Path, request: dict[str, Any]) -> bool:
    try:
        return (folder / MARKER_FILE).is_file() and json.loads((folder / CONFIG_FILE).read_text()) == request
    except (OSError, ValueError):
        return False


def is_complete(spec: Any, runs_root: str | Path | None = None) -> bool:
    """True when ``run(spec)`` (without ``force``) would read a complete run back."""
    return _complete_with(run_dir(spec, runs_root), requested(spec, runs_root))


@dataclass
class RunResult:
    """A complete run, read back from its folder."""

    run_dir: Path
    config: dict[str, Any]  # config.json: what was requested
    metrics: dict[str, Any]  # metrics.json: results, and "provenance"
    spec: Any = None  # the spec it was run from (None when read from a folder alone)
    _tables: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.config["name"]

    def table(self, file_name: str, **read: Any) -> pd.DataFrame:
        if file_name not in self._tables:
            self._tables[file_name] = pd.read_csv(self.run_dir / file_name, **read)
        return self._tables[file_name]

    @property
    def history(self) -> pd.DataFrame:
        """Per-epoch training and validation loss and accuracy (``history.csv``)."""
        return self.table("history.csv")

    @property
    def predictions(self) -> pd.DataFrame:
        """Test-part probabilities, one row per image (``predictions.csv``)."""
        return self.table("predictions.csv", dtype={"image_id": str, "file": str})

    @property
    def provenance(self) -> dict[str, Any]:
        return self.metrics["provenance"]


def load(folder: str | Path, spec: Any = None) -> RunResult:
    """Read a complete run folder back."""
    folder = Path(folder)
    if not (folder / MARKER_FILE).is_file():
        raise FileNotFoundError(f"{folder}: not a complete run (no {MARKER_FILE})")
    return RunResult(folder, json.loads((folder / CONFIG_FILE).read_text()),
                     json.loads((folder / MARKER_FILE).read_text()), spec)


def load_spec(spec: Any, runs_root: str | Path | None = None) -> RunResult:
    """Read ``spec``'s complete run back (an error names it when it is missing or was asked differently)."""
    folder = run_dir(spec, runs_root)
    if not (folder / MARKER_FILE).is_file():
        raise FileNotFoundError(f"run {spec.label} ({paths.relative(folder, paths.runs_dir(runs_root))} in the runs "
                                "folder) is missing or incomplete: run it first")
    return load(folder, spec)


class Run:
    """What a spec's ``execute`` writes through: its folder, saved state, atomic files."""

    def __init__(self, spec: Any, folder: Path, request: dict[str, Any], *, root: Path, progress: bool = True,
                 resume_key: dict[str, Any] | None = None):
        self.spec = spec
        self.dir = folder
        self.root = root  # the runs folder: upstream runs are found there
        self.requested = request
        self.progress = progress  # console progress bars over batches (off in worker processes)
        self.resume_key = request if resume_key is None else resume_key
        self.every = state_every()
        self.resumed_after: Any = None  # what the loaded state said (an epoch or a step), None: fresh start
        self.states_saved = 0
        self._last_save = time.monotonic()

    def path(self, name: str) -> Path:
        return self.dir / name

    def resume_state(self) -> dict[str, Any] | None:
        """The state saved by an interrupted run with the same request (None: start afresh)."""
        from . import train  # torch: only where a run actually trains

        file = self.path(STATE_FILE)
        if not file.is_file():
            return None
        try:
            state = train.load_checkpoint(file)
        except ValueError as error:
            log.warning("%s; starting the run again", error)
            return None
        if state.get("requested") != self.resume_key:
            log.info("%s: state saved by a run with other settings; starting again", self.spec.label)
            return None
        self.resumed_after = state.get("epoch", state.get("step"))
        return state

    def save_state(self, state: dict[str, Any], *, force: bool = False) -> bool:
        """Save ``state`` (what the body needs to continue) when it is due (see the module's note)."""
        if not force and time.monotonic() - self._last_save < self.every:
            return False
        from . import train

        train.save_checkpoint(self.path(STATE_FILE), {"requested": self.resume_key, **state})
        self._last_save = time.monotonic()
        self.states_saved += 1
        return True

    def write_json(self, name: str, value: Any) -> Path:
        return repro.atomic_write(self.path(name), lambda tmp: tmp.write_text(
            json.dumps(value, indent=2, sort_keys=True, default=str)))

    def write_table(self, name: str, table: pd.DataFrame) -> Path:
        return repro.atomic_write(self.path(name), lambda tmp: table.to_csv(tmp, index=False))

    def save_checkpoint(self, name: str, payload: dict[str, Any]) -> Path:
        from . import train

        return train.save_checkpoint(self.path(name), payload)


def run(spec: Any, *, runs_root: str | Path | None = None, force: bool = False, progress: bool = True,
        wait: float | None = None, on_start: Callable[[Any], None] | None = None) -> RunResult:
    """Run ``spec`` (or read it back when complete with the same request); return its result.

    ``force`` trains it again even when complete. Every run it starts from must be complete (the
    executors order runs so). While another process trains the same run, this one waits for it
    (``wait`` seconds at most; None: for ever) and then reads it back: a run is trained once.
    """
    root = paths.runs_dir(runs_root)
    for upstream in spec.upstream():
        if not is_complete(upstream, root):
            raise FileNotFoundError(f"run {spec.label} starts from run {upstream.label}, which is missing or "
                                    "incomplete: run it first (an executor orders them)")
    folder = root / spec.relpath
    request = requested(spec, root)
    if not force and _complete_with(folder, request):
        log.debug("%s: complete with the same settings, reused", spec.label)
        return load(folder, spec)
    with locks.RunLock(folder, label=spec.label, timeout=wait) as lock:
        if not force and _complete_with(folder, request):  # trained by the process we waited for
            log.info("%s: trained meanwhile by another process, reused", spec.label)
            return load(folder, spec)
        if lock.waited and force:
            log.info("%s: trained meanwhile by another process; training again (force)", spec.label)
        (folder / MARKER_FILE).unlink(missing_ok=True)  # incomplete until the end
        resume_key = spec.resume_key(request) if hasattr(spec, "resume_key") else None
        context = Run(spec, folder, request, root=root, progress=progress, resume_key=resume_key)
        if force:
            (folder / STATE_FILE).unlink(missing_ok=True)
        context.write_json(CONFIG_FILE, request)
        if on_start is not None:
            on_start(spec)
        started, clock = repro.now(), time.perf_counter()
        metrics = spec.execute(context)
        provenance = {
            **metrics.pop("provenance", {}),
            "run": spec.relpath.as_posix() if hasattr(spec.relpath, "as_posix") else str(spec.relpath),
            "code": {**repro.git_version(paths.project_root()), "package_version": __version__},
            "hardware": repro.hardware(),
            "environment": environment.status(),  # the lock file's hash and every installed version that differs
            "resumed_after_epoch": context.resumed_after,
            "states_saved": context.states_saved,
            "started": started,
            "finished": repro.now(),
            "wall_seconds": time.perf_counter() - clock,
        }
        context.write_json(MARKER_FILE, {**metrics, "provenance": provenance})
        if not getattr(spec, "keep_state", False):
            (folder / STATE_FILE).unlink(missing_ok=True)  # complete: the results replace the saved state
    log.info("%s: trained in %s", spec.label, f"{provenance['wall_seconds']:.0f} s")
    return load(folder, spec)

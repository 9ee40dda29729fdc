"""The study driver behind ``make study``: execute the notebooks with papermill into ``book/``.

    python -m mstl_utils.study --profile quick            # real data if found, else synthetic (loudly)
    python -m mstl_utils.study --profile quick --data real  # stop if the real data are missing
    python -m mstl_utils.study --profile smoke --output /tmp/book --results /tmp/book/results

Stages whose run directory is complete with the same settings are reused;
``--force`` re-runs them. A failing notebook stops the study with its path and
the failing cell's error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
from tqdm import tqdm

from .core import paths, repro
from .report import results

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One notebook execution: source notebook, executed copy in the book, extra parameters."""

    source: str
    output: str
    parameters: dict[str, Any] = field(default_factory=dict)


STEPS = (
    Step("01_data.ipynb", "data.ipynb"),
    Step("02_stage1.ipynb", "stage1.ipynb", {"init_from": "imagenet"}),
    Step("02_stage1.ipynb", "stage1_scratch.ipynb", {"init_from": "scratch"}),
    Step("03_stage2.ipynb", "stage2_imagenet.ipynb", {"init_from": "imagenet"}),
    Step("03_stage2.ipynb", "stage2_multistage.ipynb", {"init_from": "stage1"}),
    Step("04_crossval.ipynb", "crossval.ipynb"),
    Step("05_results.ipynb", "results.ipynb"),
    Step("07_search.ipynb", "search.ipynb"),
    Step("09_chain.ipynb", "chain.ipynb"),
    Step("10_gan.ipynb", "gan.ipynb"),  # the 2-class bridge (02), the chain's 3-class link (09), the folds (04)
    Step("08_explain.ipynb", "explain.ipynb"),  # the fold runs of 04; glues a number of 01
    Step("12_architectures.ipynb", "architectures.ipynb"),  # reuses the protocol runs of 04 for the profile's model
    Step("11_pruning.ipynb", "pruning.ipynb"),  # prunes the fold runs of 04
    Step("06_benchmark.ipynb", "benchmark.ipynb"),  # last: it reports the wall time of the steps above
)


class NotebookFailed(RuntimeError):
    """A notebook of the study raised; the message names the notebook and the failing cell."""


def _sanitise(notebook_path: Path, root: Path) -> None:
    """Remove absolute paths (project root, home) from an executed notebook's outputs and metadata."""
    text = notebook_path.read_text()
    replacements = [(str(root), "."), (str(Path.home()), "~")]
    venv = Path(sys.prefix)
    if venv != root and str(venv).startswith(str(root)):
        replacements.insert(0, (str(venv), "<venv>"))
    for old, new in replacements:
        text = text.replace(old, new)
    # Anything else absolute (other users' folders, temp dirs) becomes <external>.
    text = re.sub(r"(?<![\w.~])/(?:home|root|Users|tmp|work|mnt)/[^\s\"'\\]*", "<external>", text)
    repro.atomic_write(notebook_path, lambda tmp: tmp.write_text(text))


def execute(
    step: Step,
    *,
    profile: str,
    data: str | None = None,
    output_dir: str | Path = "book",
    results_dir: str | Path = "book/results",
    force: bool = False,
    workers: int | None = None,
    root: Path | None = None,
) -> Path:
    """Execute one step with papermill; return the executed notebook's path."""
    import papermill

    root = root or paths.project_root()
    source = root / "notebooks" / step.source
    output = Path(output_dir) / step.output
    output.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(source, as_version=4)
    accepted = {"profile", "data", "results_dir", "force", "init_from", "data_dir", "workers"}
    params = {"profile": profile, "data": data, "results_dir": str(results_dir), "force": force, "workers": workers,
              **step.parameters}
    declared = "".join(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params = {k: v for k, v in params.items() if k in accepted and re.search(rf"^{k}\s*=", declared, re.M)}
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source), str(output), parameters=params, cwd=str(root), kernel_name="python3",
            progress_bar=False, log_output=False, report_mode=False,
        )
    except papermill.PapermillExecutionError as error:
        raise NotebookFailed(
            f"{paths.relative(source, root)} (executed into {output}) failed in cell {error.exec_count}: "
            f"{error.ename}: {error.evalue}"
        ) from None
    finally:
        if output.exists():
            _sanitise(output, root)
    log.info("%-24s -> %s  (%.0f s)", step.source, output, time.perf_counter() - start)
    return output


def write_status(sources_synthetic: bool, output_dir: str | Path) -> Path:
    """``book/_status.md``: included at the top of every prose page; loud when data were synthetic."""
    path = Path(output_dir) / "_status.md"
    text = results.data_banner([{"kind": "synthetic"}] if sources_synthetic else []) or "\n"
    repro.atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


#: Columns of ``study_time.csv``: the wall time of each executed notebook (the benchmark appendix reads it).
TIME_COLUMNS = ["step", "notebook", "seconds", "profile", "force", "workers", "finished"]


def run(profile: str, *, data: str | None = None, output_dir: str | Path = "book",
        results_dir: str | Path = "book/results", force: bool = False, workers: int | None = None) -> list[Path]:
    """Execute every step in order; return the executed notebooks. Writes ``study_time.csv``."""
    outputs, times = [], []
    (Path(results_dir) / "study_time.csv").unlink(missing_ok=True)  # this run's times only
    for step in tqdm(STEPS, desc="study", unit="notebook", disable=None):
        start = time.perf_counter()
        outputs.append(execute(step, profile=profile, data=data, output_dir=output_dir, results_dir=results_dir,
                               force=force, workers=workers))
        times.append({"step": len(times) + 1, "notebook": step.output, "seconds": time.perf_counter() - start,
                      "profile": profile, "force": force, "workers": "auto" if workers is None else workers,
                      "finished": repro.now()})
        # After every step, so that the last notebook (the benchmark appendix) sees the steps before it.
        results.save_table(pd.DataFrame(times, columns=TIME_COLUMNS), "study_time.csv", results_dir)
    prov = json.loads((Path(results_dir) / "provenance.json").read_text())
    write_status(prov["synthetic"], output_dir)
    if prov["synthetic"]:
        print("!" * 78 + f"\n!! {results.SYNTHETIC_WARNING}\n" + "!" * 78, file=sys.stderr)
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help="smoke | quick | paper (default: quick)")
    parser.add_argument("--data", default=None, choices=["auto", "real", "synthetic"],
                        help="override the profile's data mode")
    parser.add_argument("--output", default="book", help="folder for executed notebooks (default: book)")
    parser.add_argument("--results", default=None, help="folder for result tables (default: <output>/results)")
    parser.add_argument("--force", action="store_true", help="re-run stages even when complete")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs trained side by side (default: one per CPU core, 4 on a GPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        run(args.profile, data=args.data, output_dir=args.output,
            results_dir=args.results or os.path.join(args.output, "results"), force=args.force, workers=args.workers)
    except NotebookFailed as error:
        print(f"study stopped: {error}", file=sys.stderr)
        return 1
    log.info("study (%s profile) done in %.1f min", args.profile, (time.perf_counter() - start) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
from tqdm import tqdm

from .core import logs, paths, repro
from .core.config import CORE_CHAPTERS, SETTINGS, get_profile
from .report import results

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One notebook execution: source notebook, executed copy in the book, extra parameters, and the
    earlier steps it needs (their runs or their tables), by name (``Step.name``: the output's stem)."""

    source: str
    output: str
    parameters: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return Path(self.output).stem


STEPS = (
    Step("01_data.ipynb", "data.ipynb"),
    Step("02_stage1.ipynb", "stage1.ipynb", {"init_from": "imagenet"}),
    Step("02_stage1.ipynb", "stage1_scratch.ipynb", {"init_from": "scratch"}),
    Step("03_stage2.ipynb", "stage2_imagenet.ipynb", {"init_from": "imagenet"}),
    Step("03_stage2.ipynb", "stage2_multistage.ipynb", {"init_from": "stage1"}, needs=("stage1",)),
    Step("04_crossval.ipynb", "crossval.ipynb", needs=("stage1", "stage1_scratch")),
    # Reads the tables of the paper-setting pages and of the cross-validation.
    Step("05_results.ipynb", "results.ipynb", needs=("stage2_imagenet", "stage2_multistage", "crossval")),
    Step("07_search.ipynb", "search.ipynb", needs=("crossval",)),  # the paper-settings runs of the same folds
    Step("09_chain.ipynb", "chain.ipynb", needs=("crossval",)),  # paired with the protocol's arms
    Step("10_gan.ipynb", "gan.ipynb", needs=("stage1", "chain", "crossval")),  # the 2- and 3-class real-only bridges
    Step("08_explain.ipynb", "explain.ipynb", needs=("data", "crossval")),  # the fold runs; glues a number of data
    Step("12_architectures.ipynb", "architectures.ipynb", needs=("crossval",)),  # reuses the protocol runs
    Step("11_pruning.ipynb", "pruning.ipynb", needs=("crossval", "stage1")),  # prunes the fold runs and the bridge
    Step("13_target_size.ipynb", "target_size.ipynb", needs=("crossval",)),  # the protocol's runs are its full size
    # Last: it reports the wall time of the steps before it (study_time.csv).
    Step("06_benchmark.ipynb", "benchmark.ipynb"),
)

#: The core chapters: what ``make study`` runs by default (the question, answered).
CORE = CORE_CHAPTERS


def check_needs(steps: tuple[Step, ...] = STEPS) -> None:
    """Every step's needs name an earlier step (the order of ``STEPS`` is the order of execution)."""
    seen: set[str] = set()
    names = {s.name for s in steps}
    for step in steps:
        unknown = [n for n in step.needs if n not in names]
        late = [n for n in step.needs if n in names and n not in seen]
        if unknown or late:
            raise ValueError(f"step {step.name} needs {unknown + late}, "
                             + ("which no step makes" if unknown else "which come later in STEPS"))
        seen.add(step.name)


def select(chapters: str | list[str] | None = None, *, output_dir: str | Path = "book") -> list[Step]:
    """The steps to execute: the core chapters (None), every chapter ("all"), or the named ones (a list or a
    comma/space separated string of step names). A step's needs that are not executed must have their
    executed notebook in ``output_dir`` already (a chapter not re-executed keeps its committed notebook)."""
    check_needs()
    if chapters in (None, "", "core"):
        wanted = set(CORE)
    elif chapters == "all":
        wanted = {s.name for s in STEPS}
    else:
        names = chapters.replace(",", " ").split() if isinstance(chapters, str) else list(chapters)
        unknown = sorted(set(names) - {s.name for s in STEPS} - {"core"})
        if unknown:
            raise ValueError(f"unknown chapter(s) {unknown}; expected some of {[s.name for s in STEPS]}, 'core' or 'all'")
        wanted = set(names) - {"core"} | (set(CORE) if "core" in names else set())
    chosen = [s for s in STEPS if s.name in wanted]
    for step in chosen:
        missing = [n for n in step.needs if n not in wanted and not (Path(output_dir) / f"{n}.ipynb").is_file()]
        if missing:
            raise ValueError(f"chapter {step.name} needs {missing}: execute them too (e.g. CHAPTERS=\"{' '.join(missing)} "
                             f"{step.name}\") or keep their executed notebooks in {output_dir}")
    return chosen


class _Tail(threading.Thread):
    """Prints the lines a notebook appends to its log file, as they come (the console's view of a study)."""

    def __init__(self, path: Path, *, prefix: str = "", every: float = 1.0):
        super().__init__(daemon=True)
        self.path, self.prefix, self.every = path, prefix, every
        self._done = threading.Event()

    def run(self) -> None:
        position = 0
        while True:
            finished = self._done.wait(self.every)
            try:
                with self.path.open(encoding="utf-8", errors="replace") as handle:
                    handle.seek(position)
                    text = handle.read()
                    position = handle.tell()
            except OSError:
                text = ""
            for line in text.splitlines():
                print(self.prefix + line, file=sys.stderr, flush=True)
            if finished:
                return

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(timeout=10)


class NotebookFailed(RuntimeError):
    """A notebook of the study raised; the message names the notebook and the failing cell."""


def _sanitise(notebook_path: Path, root: Path) -> None:
    """Remove absolute paths (project root, home) from an executed notebook's outputs and metadata, and collapse
    the parameters papermill injected like every other code cell (the page shows results first)."""
    nb = json.loads(notebook_path.read_text())
    for cell in nb.get("cells", []):
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            tags.append("hide-input")
    text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
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
    executor: str = "local",
    settings: dict[str, Any] | None = None,
    root: Path | None = None,
) -> Path:
    """Execute one step with papermill; return the executed notebook's path. ``settings``: the study's
    settings (``config.SETTINGS`` names), given to every notebook that declares them."""
    import papermill

    root = root or paths.project_root()
    source = root / "notebooks" / step.source
    output = Path(output_dir) / step.output
    output.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(source, as_version=4)
    accepted = {"profile", "data", "results_dir", "force", "init_from", "data_dir", "workers", "executor",
                *SETTINGS}
    params = {"profile": profile, "data": data, "results_dir": str(results_dir), "force": force, "workers": workers,
              "executor": executor, **(settings or {}), **step.parameters}
    declared = "".join(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params = {k: v for k, v in params.items() if k in accepted and re.search(rf"^{k}\s*=", declared, re.M)}
    start = time.perf_counter()
    # The notebook's log lines go to a file the console shows as it grows, not onto the page.
    log_file = paths.runs_dir() / "_logs" / f"{step.name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("")
    previous = os.environ.get(logs.ENV_LOG_FILE)
    os.environ[logs.ENV_LOG_FILE] = str(log_file)
    shown = _Tail(log_file, prefix=f"[{step.name}] ")
    try:
        shown.start()
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
        shown.stop()
        if previous is None:
            os.environ.pop(logs.ENV_LOG_FILE, None)
        else:
            os.environ[logs.ENV_LOG_FILE] = previous
        if output.exists():
            _sanitise(output, root)
    log.info("%-24s -> %s  (%.0f s; its log: %s)", step.source, output, time.perf_counter() - start,
             paths.relative(log_file))
    return output


#: What a book is built from besides the executed notebooks: configuration, table of contents, prose pages.
SITE_FILES = ("_config.yml", "_toc.yml")


def prepare_site(site: str | Path, *, root: Path | None = None) -> Path:
    """Make ``site`` a folder a book can be built from (``jupyter-book build SITE``): the configuration, the
    prose pages, and the committed executed notebooks and tables of every chapter this study does not
    re-execute (each page's header says which run and code version made it). Files already in ``site`` are
    kept. Returns ``site/book``, where the study's executed notebooks go."""
    root = root or paths.project_root()
    site = Path(site)
    book = site / "book"
    for name in SITE_FILES:
        if not (site / name).is_file():
            (site / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, site / name)
    for page in sorted((root / "book").iterdir()):
        target = book / page.name
        if page.is_file() and not target.exists():
            book.mkdir(parents=True, exist_ok=True)
            shutil.copy2(page, target)
    (book / "results").mkdir(parents=True, exist_ok=True)
    for table in sorted((root / "book" / "results").glob("*")):
        if table.is_file() and not (book / "results" / table.name).exists():
            shutil.copy2(table, book / "results" / table.name)
    return book


def book_config(repository_url: str | None, site: str | Path = ".", *, root: Path | None = None) -> Path:
    """The book's configuration with launch buttons (Binder, Colab) for ``repository_url`` (e.g.
    ``https://github.com/owner/mstl``), written as ``SITE/.book-config.yml`` for ``jupyter-book build --config``.
    Without an address the committed ``_config.yml`` is used as it is: it has no launch buttons, since a
    button pointing to a placeholder repository sends readers nowhere."""
    import yaml

    root = root or paths.project_root()
    site = Path(site)
    config = yaml.safe_load((site / "_config.yml" if (site / "_config.yml").is_file() else root / "_config.yml")
                            .read_text())
    if not repository_url:
        return site / "_config.yml"
    if not re.fullmatch(r"https://[\w.-]+/[\w.-]+/[\w.-]+/?", repository_url):
        raise ValueError(f"setting REPOSITORY={repository_url!r} is not allowed; expected a repository address "
                         "such as https://github.com/owner/mstl")
    config["repository"] = {"url": repository_url.rstrip("/"), "path_to_book": "", "branch": "main"}
    config.setdefault("html", {})["use_repository_button"] = True
    # Binder builds binder/ (environment.yml + postBuild); Colab needs the setup cell of book/teach.md.
    config["launch_buttons"] = {"notebook_interface": "jupyterlab", "binderhub_url": "https://mybinder.org",
                                "colab_url": "https://colab.research.google.com"}
    path = site / ".book-config.yml"
    repro.atomic_write(path, lambda tmp: tmp.write_text(yaml.safe_dump(config, sort_keys=False)))
    return path


def write_status(sources_synthetic: bool, output_dir: str | Path) -> Path:
    """``book/_status.md``: included at the top of every prose page; loud when data were synthetic."""
    path = Path(output_dir) / "_status.md"
    text = results.data_banner([{"kind": "synthetic"}] if sources_synthetic else []) or "\n"
    repro.atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


#: Columns of ``study_time.csv``: the wall time of each executed notebook (the benchmark appendix reads it).
#: ``runs_trained`` and ``runs_reused`` count the runs the notebook trained and read back complete (from its
#: log): a time measured while reusing runs is not what a fresh study takes. ``commit``: the code version.
#: ``fresh_seconds``: the wall time of the last execution that reused no run (what a study from a fresh clone
#: takes); an execution that reused runs keeps the earlier figure.
TIME_COLUMNS = ["step", "notebook", "seconds", "profile", "force", "workers", "finished", "runs_trained",
                "runs_reused", "commit", "fresh_seconds"]


def run_counts(log_file: str | Path) -> tuple[int, int]:
    """Runs a notebook trained and runs it reused, counted from its log file (``engine.lifecycle``'s lines)."""
    text = Path(log_file).read_text() if Path(log_file).is_file() else ""
    trained = len(re.findall(r": trained in \d+ s$", text, re.M))
    reused = sum(int(n) for n in re.findall(r"(\d+) complete and reused", text))
    reused += len(re.findall(r"trained meanwhile by another process, reused$", text, re.M))
    return trained, reused


#: Where a chapter page names the code version that executed it (``results.provenance_markdown``).
_PAGE_VERSION = re.compile(r"Code version:\*\* ([0-9a-f]{7,10}|unknown)( \+ uncommitted changes)?")


def executions(output_dir: str | Path = "book", results_dir: str | Path | None = None) -> pd.DataFrame:
    """Each executed chapter of the book: its notebook, the code version that executed it (the page's header,
    else ``study_time.csv``) and when it finished. Columns notebook, commit, executed."""
    output_dir = Path(output_dir)
    times_file = Path(results_dir or output_dir / "results") / "study_time.csv"
    times = pd.read_csv(times_file) if times_file.is_file() else pd.DataFrame(columns=TIME_COLUMNS)
    recorded = dict(zip(times["notebook"], times["commit"])) if "commit" in times else {}
    rows = []
    for step in STEPS:
        path = output_dir / step.output
        if not path.is_file():
            continue
        text = path.read_text()
        found = _PAGE_VERSION.search(text.replace('\\"', ""))
        commit = (found.group(1) + (" + uncommitted changes" if found.group(2) else "")) if found else None
        if commit is None and isinstance(recorded.get(step.output), str):
            commit = recorded[step.output]
        finished = json.loads(text).get("metadata", {}).get("papermill", {}).get("end_time") or ""
        rows.append({"notebook": step.name, "commit": commit or "not recorded", "executed": finished[:16].replace("T", " ")})
    return pd.DataFrame(rows, columns=["notebook", "commit", "executed"])


def write_executions(output_dir: str | Path = "book", results_dir: str | Path | None = None) -> Path:
    """``book/_executions.md``, included by the introduction: the code version every chapter was executed at,
    one sentence when they agree and a table when they do not (a chapter not re-executed keeps its page)."""
    table = executions(output_dir, results_dir)
    versions = sorted(set(table["commit"]))
    if len(versions) == 1:
        text = (f"Every chapter of this build was executed at code version `{versions[0]}` "
                f"({table['executed'].min()} to {table['executed'].max()} UTC).\n")
    else:
        lines = [f"The chapters of this build come from {len(versions)} code versions: a chapter that was not "
                 "re-executed keeps the page of its last execution, and its header names the runs it read.", "",
                 "| chapter | code version | executed (UTC) |", "|---|---|---|"]
        lines += [f"| {{doc}}`{r.notebook}` | `{r.commit}` | {r.executed} |" for r in table.itertuples()]
        text = "\n".join(lines) + "\n"
    path = Path(output_dir) / "_executions.md"
    repro.atomic_write(path, lambda tmp: tmp.write_text(text))
    return path



def _version() -> str:
    code = repro.git_version(paths.project_root())
    return f"{(code['commit'] or 'unknown')[:10]}{' + uncommitted changes' if code['dirty'] else ''}"


def estimates(results_dir: str | Path = "book/results") -> dict[str, float]:
    """Seconds each notebook took when last executed here (``study_time.csv``), by notebook file name."""
    file = Path(results_dir) / "study_time.csv"
    if not file.is_file():
        return {}
    times = pd.read_csv(file)
    fresh = times["fresh_seconds"] if "fresh_seconds" in times else times["seconds"].where(times["force"])
    return {n: float(f if pd.notna(f) else s) for n, f, s in zip(times["notebook"], fresh, times["seconds"])}


def plan_text(steps: list[Step], *, profile: str, results_dir: str | Path = "book/results") -> str:
    """What a study will execute and about how long each step took when it last trained every run it needs
    (``fresh_seconds`` of ``study_time.csv``: measured, not guessed)."""
    measured = estimates(results_dir)
    lines, total, unknown = [f"study plan ({profile} profile): {len(steps)} notebook(s)"], 0.0, 0
    for step in steps:
        seconds = measured.get(step.output)
        total += seconds or 0
        unknown += seconds is None
        lines.append(f"  {step.source:<24} -> {step.output:<24} "
                     + (f"took {seconds / 60:5.1f} min" if seconds is not None else "not measured yet"))
    lines.append(f"about {total / 60:.0f} min when every run must be trained (complete runs are reused: minutes)"
                 + (f"; {unknown} step(s) without a measured time" if unknown else ""))
    return "\n".join(lines)


def run(profile: str, *, data: str | None = None, output_dir: str | Path = "book",
        results_dir: str | Path = "book/results", force: bool = False, workers: int | None = None,
        executor: str = "local", chapters: str | list[str] | None = "all",
        settings: dict[str, Any] | None = None) -> list[Path]:
    """Execute the chosen steps in order (``chapters``: see ``select``; default every step); return the executed
    notebooks. ``settings`` change the profile's values in every notebook (checked before anything runs).
    Updates ``study_time.csv`` with the steps executed."""
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    get_profile(profile, **({"data": data} if data else {}), **settings)  # a bad setting stops here, not mid-study
    steps = select(chapters, output_dir=output_dir)
    measured = estimates(results_dir)
    log.info(plan_text(steps, profile=profile, results_dir=results_dir))
    file = Path(results_dir) / "study_time.csv"
    kept = pd.read_csv(file) if file.is_file() else pd.DataFrame(columns=TIME_COLUMNS)
    earlier_fresh = {n: f for n, f in zip(kept["notebook"], kept["fresh_seconds"] if "fresh_seconds" in kept
                                          else kept["seconds"].where(kept["force"].astype(bool)))}
    kept = kept[~kept["notebook"].isin([s.output for s in steps])]
    outputs, times = [], []
    left = sum(measured.get(s.output, 0) for s in steps)
    bar = tqdm(total=len(steps), desc="study", unit="notebook", disable=None)
    for step in steps:
        log.info("study: %s (about %.0f min of measured time left)", step.output, left / 60)
        start = time.perf_counter()
        outputs.append(execute(step, profile=profile, data=data, output_dir=output_dir, results_dir=results_dir,
                               force=force, workers=workers, executor=executor, settings=settings))
        trained, reused = run_counts(paths.runs_dir() / "_logs" / f"{step.name}.log")
        seconds = time.perf_counter() - start
        times.append({"step": STEPS.index(step) + 1, "notebook": step.output, "seconds": seconds,
                      "profile": profile, "force": force, "workers": "auto" if workers is None else workers,
                      "finished": repro.now(), "runs_trained": trained, "runs_reused": reused,
                      "commit": _version(), "fresh_seconds": seconds if reused == 0 else earlier_fresh.get(step.output)})
        left = max(0.0, left - measured.get(step.output, 0))
        bar.update()
        # After every step, so that the last notebook (the benchmark appendix) sees the steps before it.
        table = pd.concat([kept.reindex(columns=TIME_COLUMNS), pd.DataFrame(times, columns=TIME_COLUMNS)],
                          ignore_index=True).sort_values("step")
        results.save_table(table[TIME_COLUMNS], "study_time.csv", results_dir)
    bar.close()
    write_executions(output_dir, results_dir)
    provenance_file = Path(results_dir) / "provenance.json"
    if provenance_file.is_file():
        prov = json.loads(provenance_file.read_text())
        write_status(prov["synthetic"], output_dir)
        if prov["synthetic"]:
            print("!" * 78 + f"\n!! {results.SYNTHETIC_WARNING}\n" + "!" * 78, file=sys.stderr)
    return outputs


def parse_settings(pairs: list[str], params_file: str | Path | None = None) -> dict[str, Any]:
    """Settings from ``NAME=VALUE`` pairs (values read as YAML: numbers, lists, null) and a YAML file; the
    pairs win. ``make study SET="model=efficientnet_lite0 image_size=160"`` passes each pair."""
    import yaml

    settings: dict[str, Any] = {}
    if params_file:
        loaded = yaml.safe_load(Path(params_file).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{params_file}: expected one 'name: value' per line (a YAML mapping)")
        settings.update(loaded)
    for pair in pairs:
        for item in pair.split() if "[" not in pair else [pair]:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"setting {item!r}: expected NAME=VALUE, e.g. model=efficientnet_lite0")
            settings[name.strip()] = yaml.safe_load(value)
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; expected some of {list(SETTINGS)}")
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help="smoke | quick | paper (default: quick)")
    parser.add_argument("--data", default=None, choices=["auto", "real", "synthetic"],
                        help="override the profile's data mode")
    parser.add_argument("--output", default=None, help="folder for executed notebooks (default: book, or SITE/book)")
    parser.add_argument("--site", default=None,
                        help="a folder of its own for a study of other settings (make study OUT=...): the executed "
                             "notebooks and tables go to SITE/book, with what a book needs to be built from SITE")
    parser.add_argument("--book-config", default=None, metavar="REPOSITORY",
                        help="print the path of the book configuration with launch buttons for this repository "
                             "address (make book REPOSITORY=...) and stop")
    parser.add_argument("--results", default=None, help="folder for result tables (default: <output>/results)")
    parser.add_argument("--force", action="store_true", help="re-run stages even when complete")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs trained side by side (default: chosen from the number of runs and the device)")
    parser.add_argument("--executor", default="local", choices=["local", "ray"],
                        help="where runs train: local processes (default) or a Ray cluster ($RAY_ADDRESS)")
    parser.add_argument("--chapters", default=None,
                        help="'core' (default: data, stage 1, the paper's setting, cross-validation, results), 'all', "
                             "or step names, e.g. 'gan pruning'")
    parser.add_argument("--plan", action="store_true", help="print what would be executed and stop")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="change a setting of the profile, e.g. --set model=efficientnet_lite0 --set "
                             "'seeds=[0, 1]' (names: " + ", ".join(SETTINGS) + ")")
    parser.add_argument("--params", default=None, help="a YAML file of settings (name: value per line)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    if args.book_config is not None:
        print(book_config(args.book_config, args.site or "."))
        return 0
    args.output = args.output or (os.path.join(args.site, "book") if args.site else "book")
    results_dir = args.results or os.path.join(args.output, "results")
    if args.plan:
        print(plan_text(select(args.chapters, output_dir=args.output), profile=args.profile, results_dir=results_dir))
        return 0
    try:
        settings = parse_settings(args.set, args.params)
        if args.site:
            prepare_site(args.site)
        run(args.profile, data=args.data, output_dir=args.output, results_dir=results_dir, force=args.force,
            workers=args.workers, executor=args.executor, chapters=args.chapters, settings=settings)
    except (NotebookFailed, ValueError) as error:
        print(f"study stopped: {error}", file=sys.stderr)
        return 1
    log.info("study (%s profile) done in %.1f min", args.profile, (time.perf_counter() - start) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())

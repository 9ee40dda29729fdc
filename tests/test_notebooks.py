"""Notebook hygiene, a papermill smoke run of every notebook, and a book build from it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mstl_utils import study

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("*.ipynb"))
PUBLISHED = sorted((ROOT / "book").glob("*.ipynb"))
ABSOLUTE = re.compile(r"(?<![\w.])/(home|root|Users|tmp|work|mnt|private|var/folders)/")


def test_every_source_notebook_is_used_by_the_driver():
    assert {s.source for s in study.STEPS} == {p.name for p in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_source_notebook_hygiene(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    for line in params[0].source.splitlines():
        assert re.match(r"^\w+ = .+  # .+", line), f"parameter without a comment: {line!r}"
        # papermill reads a parameter line with a second "=" as no parameter (its help and type are lost)
        assert line.count("=") == 1, f"papermill cannot parse {line!r}: no '=' in a parameter's comment"
    # Chapter pages show results first: every code cell collapsed, its code one click away.
    assert all("hide-input" in c.metadata.get("tags", []) for c in code), "a code cell without the hide-input tag"
    for cell in code:
        assert not cell.get("outputs") and cell.get("execution_count") is None, "outputs must be stripped"
        assert not re.search(r"^\s*(def|class)\s", cell.source, re.M), "no functions in notebooks"
        assert not re.search(r"pip install|^!", cell.source, re.M)
    assert not ABSOLUTE.search(path.read_text())


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.name)
def test_published_notebooks_carry_no_absolute_paths(path):
    match = ABSOLUTE.search(path.read_text())
    assert match is None, f"absolute path in {path.name}: {match and match.group(0)}"


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """Every notebook executed by the driver in the smoke profile, into a copy of the book."""
    import os

    site = tmp_path_factory.mktemp("site")
    runs = tmp_path_factory.mktemp("runs")
    old = {k: os.environ.get(k) for k in ("MSTL_RUNS_DIR", "MSTL_OFFLINE")}
    os.environ.update(MSTL_RUNS_DIR=str(runs), MSTL_OFFLINE="1")
    try:
        for name in ("_config.yml", "_toc.yml"):
            shutil.copy(ROOT / name, site / name)
        (site / "book").mkdir()
        for page in list((ROOT / "book").glob("*.md")) + [ROOT / "book" / "references.bib"]:
            shutil.copy(page, site / "book" / page.name)
        outputs = study.run("smoke", output_dir=site / "book", results_dir=site / "book" / "results")
    finally:
        for key, value in old.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return site, outputs


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the module's fixture executes every notebook first
def test_smoke_study_executes_every_notebook(smoke_book):
    site, outputs = smoke_book
    assert [p.name for p in outputs] == [s.output for s in study.STEPS]
    results = site / "book" / "results"
    prov = json.loads((results / "provenance.json").read_text())
    assert prov["synthetic"] is True and prov["profile"]["name"] == "smoke"
    assert {"hardware", "data", "weights", "code", "started", "finished"} <= set(prov)
    header = (results / "stage1_test.csv").read_text().splitlines()[0]
    assert header == "model,init_from,profile,seed,image_size,accuracy,auc,sensitivity,specificity,n_test"
    # The results contract of the protocol, spelt out as reviewers read it.
    contract = {
        "stage2_folds.csv": "arm,repeat,fold,seed,n_train,n_test,accuracy,auc,sensitivity,specificity,f1,"
                            "balanced_accuracy,profile",
        "stage2_oof.csv": "arm,repeat,image_id,label,prob",
        "stage2_tests.csv": "arm_a,arm_b,metric,mean_diff,ci_low,ci_high,test,statistic,p_value,p_adjusted",
        "paper_split.csv": "arm,seed,accuracy,n_test",
    }
    for name, columns in contract.items():
        assert (results / name).read_text().splitlines()[0] == columns, name
    from mstl_utils.experiments import benchmark
    assert (results / "benchmark.csv").read_text().splitlines()[0] == ",".join(benchmark.COLUMNS)
    times = (results / "study_time.csv").read_text().splitlines()
    assert times[0] == ",".join(study.TIME_COLUMNS) and len(times) == 1 + len(study.STEPS)
    assert "SYNTHETIC DATA" in (site / "book" / "_status.md").read_text()
    for path in outputs:
        text = path.read_text()
        assert "SYNTHETIC DATA" in text, f"{path.name} does not warn about synthetic data"
        assert not ABSOLUTE.search(text), f"{path.name} leaks an absolute path"


@pytest.mark.slow
def test_book_builds_from_the_smoke_run(smoke_book):
    site, _ = smoke_book
    jb = Path(sys.executable).with_name("jupyter-book")
    done = subprocess.run([str(jb), "build", str(site), "--warningiserror", "--keep-going", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    html = site / "_build" / "html"
    results_page = (html / "book" / "results.html").read_text()
    assert "SYNTHETIC DATA" in (html / "book" / "intro.html").read_text()
    assert "SYNTHETIC DATA" in results_page
    assert "{glue" not in results_page, "a glue reference was not resolved"


def test_failing_notebook_names_the_notebook_and_the_error(tmp_path):
    with pytest.raises(study.NotebookFailed) as error:
        study.execute(study.STEPS[0], profile="nope", output_dir=tmp_path, results_dir=tmp_path / "results")
    message = str(error.value)
    assert "notebooks/01_data.ipynb" in message and "ValueError: unknown profile 'nope'" in message
    assert "Traceback" not in message

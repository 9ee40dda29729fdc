"""The study driver's plan, its time table and the record of which code version executed each chapter."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mstl_utils import study


def _times(tmp_path, rows):
    results = tmp_path / "results"
    results.mkdir()
    pd.DataFrame(rows).to_csv(results / "study_time.csv", index=False)
    return results


def test_the_plan_names_every_core_notebook_with_its_measured_time(tmp_path, capsys):
    rows = [{"step": i + 1, "notebook": f"{name}.ipynb", "seconds": 6.0, "fresh_seconds": 60.0 * (i + 1),
             "force": False} for i, name in enumerate(study.CORE)]
    _times(tmp_path, rows)
    assert study.main(["--plan", "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"study plan (quick profile): {len(study.CORE)} notebook(s)")
    for i, name in enumerate(study.CORE):
        assert f"-> {name}.ipynb" in printed and f"took {i + 1:5.1f} min" in printed
    total = sum(range(1, len(study.CORE) + 1))
    assert f"about {total} min when every run must be trained" in printed  # the fresh times, not the reused ones


def test_older_time_tables_count_only_forced_executions(tmp_path):
    results = _times(tmp_path, [{"notebook": "stage1.ipynb", "seconds": 600.0, "force": True},
                                {"notebook": "crossval.ipynb", "seconds": 30.0, "force": False}])
    assert study.estimates(results) == {"stage1.ipynb": 600.0, "crossval.ipynb": 30.0}


def test_runs_trained_and_reused_are_counted_from_a_notebooks_log(tmp_path):
    log = tmp_path / "stage1.log"
    log.write_text("12:00 INFO bridges (stage 1): 4 to train, 2 complete and reused (local executor)\n"
                   "12:03 INFO mstl_utils.engine.lifecycle: quick/stage1/seed0: trained in 170 s\n"
                   "12:06 INFO mstl_utils.engine.lifecycle: quick/stage1/seed1: trained in 171 s\n"
                   "12:06 INFO mstl_utils.engine.lifecycle: quick/stage1/seed2: trained meanwhile by another process, reused\n")
    assert study.run_counts(log) == (2, 3)
    assert study.run_counts(tmp_path / "absent.log") == (0, 0)


def _notebook(path, header: str, end: str):
    cell = {"cell_type": "code", "metadata": {}, "source": "", "execution_count": 1,
            "outputs": [{"output_type": "display_data", "metadata": {}, "data": {"text/markdown": header}}]}
    path.write_text(json.dumps({"cells": [cell], "metadata": {"papermill": {"end_time": end}},
                                "nbformat": 4, "nbformat_minor": 5}))


def test_the_introduction_says_when_chapters_come_from_different_code_versions(tmp_path):
    _notebook(tmp_path / "stage1.ipynb", "- **Code version:** 0123456789 (this page executed ...)", "2026-12-01T09:00:00")
    _notebook(tmp_path / "crossval.ipynb", "- **Code version:** 0123456789 + uncommitted changes (...)", "2026-12-01T09:30:00")
    text = study.write_executions(tmp_path, tmp_path / "results").read_text()
    assert "come from 2 code versions" in text
    assert "| {doc}`stage1` | `0123456789` | 2026-12-01 09:00 |" in text
    assert "`0123456789 + uncommitted changes`" in text
    _notebook(tmp_path / "crossval.ipynb", "- **Code version:** 0123456789 (this page executed ...)", "2026-12-01T09:30:00")
    text = study.write_executions(tmp_path, tmp_path / "results").read_text()
    assert text.startswith("Every chapter of this build was executed at code version `0123456789`")


def test_a_site_of_its_own_holds_what_a_book_is_built_from(tmp_path):
    book = study.prepare_site(tmp_path / "site")
    assert (tmp_path / "site" / "_config.yml").is_file() and (tmp_path / "site" / "_toc.yml").is_file()
    assert (book / "intro.md").is_file() and (book / "results.ipynb").is_file()  # committed, until re-executed
    (book / "intro.md").write_text("mine")
    study.prepare_site(tmp_path / "site")
    assert (book / "intro.md").read_text() == "mine"  # what the study wrote is kept
    with pytest.raises(ValueError, match="REPOSITORY"):
        study.book_config("not an address", tmp_path / "site")

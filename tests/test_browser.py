"""The rendered book in headless Chromium: every page, its internal links and anchors, figures, JavaScript.

The book tested is the committed one (prose and the executed notebooks in ``book/``, as readers get it),
built afresh into a tmp folder; ``test_notebooks.py`` builds the smoke run's book separately. Without a
Chromium or Playwright the tests are skipped with the reason, or fail where ``$MSTL_REQUIRE_BROWSER`` is
set (``.ci/run`` sets it, so CI never skips them quietly).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

import sitecheck

ROOT = Path(__file__).resolve().parents[1]

# JavaScript errors the book cannot avoid, each with why. Only these exact messages are let through.
KNOWN_ERRORS = {
    # Sphinx 7.4 writes an inline script added by an extension twice (sphinx-doc/sphinx#13402, fixed in Sphinx
    # 8.2); jupyter-book 1.x needs sphinx~=7.0. Harmless: the first copy of sphinx-thebe's script defines the names.
    "Identifier 'THEBE_JS_URL' has already been declared",
}


def _problems(report: sitecheck.Report) -> list[str]:
    return [line for line in report.problems() if not any(line.endswith(f": {known}") for known in KNOWN_ERRORS)]


def _unavailable(reason: str):
    if os.environ.get("MSTL_REQUIRE_BROWSER"):
        pytest.fail(f"{reason}; $MSTL_REQUIRE_BROWSER is set, so this is not skipped")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> str:
    """A Chromium that Playwright can drive: found, or installed with apt-get where that is allowed."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("browser test: Playwright is not installed (pip install -e '.[dev]')")
    path = sitecheck.find_chromium()
    if path is None:
        why = sitecheck.install_chromium()
        path = sitecheck.find_chromium()
        if path is None:
            _unavailable(f"browser test: no Chromium ({', '.join(sitecheck.BROWSERS)} on PATH, or Playwright's "
                         f"own); {why}. Install one: `apt-get install chromium` or `playwright install chromium`")
    return path


def toc_pages(toc: Path) -> list[str]:
    """The HTML page of every file in a Jupyter Book ``_toc.yml``, root first."""
    def files(node):
        if isinstance(node, dict):
            yield from [node["file"]] if "file" in node else []
            yield from (f for value in node.values() for f in files(value))
        elif isinstance(node, list):
            yield from (f for item in node for f in files(item))
    spec = yaml.safe_load(toc.read_text())
    return [f"{name}.html" for name in [spec["root"], *files(spec.get("parts", spec))]]


@pytest.fixture(scope="module")
def committed_book(tmp_path_factory) -> Path:
    """The committed book built with jupyter-book (warnings are errors) into a fresh folder: its ``_build/html``."""
    site = tmp_path_factory.mktemp("committed_book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, site / name)
    shutil.copytree(ROOT / "book", site / "book", ignore=shutil.ignore_patterns(".ipynb_checkpoints", "_build"))
    jb = Path(sys.executable).with_name("jupyter-book")
    done = subprocess.run([str(jb), "build", str(site), "--warningiserror", "--keep-going", "--quiet"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return site / "_build" / "html"


@pytest.mark.slow
def test_every_page_of_the_book_loads_cleanly_in_chromium(chromium, committed_book):
    report = sitecheck.check_site(committed_book, executable=chromium)
    toc = toc_pages(ROOT / "_toc.yml")
    assert sorted(report.pages) == sorted(toc + ["index.html", "genindex.html", "search.html"])
    assert not set(toc) & set(report.unreachable), f"toc pages no link leads to: {report.unreachable}"
    assert report.links > 100 and report.images > 5, "the checker saw no links or figures: is the book empty?"
    problems = _problems(report)
    assert not problems, f"{len(problems)} problems in {len(report.pages)} pages:\n" + "\n".join(problems)


@pytest.mark.slow
def test_book_search_finds_the_study(chromium, committed_book):
    with sitecheck.Browser(committed_book, executable=chromium) as browser:
        titles = browser.search("hemorrhage")
        problems = _problems(browser.report)
    assert titles, "the search page found nothing for 'hemorrhage'"
    assert not problems, "\n".join(problems)


def _write_site(root: Path):
    """A four-page site: a redirect, a clean page, a page with one of each problem, and an orphan."""
    pages = {
        "index.html": '<meta http-equiv="Refresh" content="0; url=good.html" />',
        "good.html": '<h1 id="top">Good</h1><a href="#top">top</a> <a href="other.html#here">other</a>'
                     '<a href="sub/">sub</a> <a href="http://example.org/x">away</a> <a href="mailto:a@b.c">mail</a>'
                     '<img src="ok.png"> <img src="http://example.org/logo.png" loading="lazy">'
                     '<script src="http://example.org/lib.js"></script>',
        "other.html": '<p id="here">Here</p><a href="missing.html">gone</a> <a href="good.html#nowhere">lost</a>'
                      '<img src="missing.png"> <script src="missing.js"></script>'
                      '<script>console.error("logged by the page")</script>'
                      '<script>throw new Error("boom")</script>',
        "sub/index.html": '<a href="../good.html">back</a>',
        "orphan.html": "<p>nothing links here</p>",
    }
    for name, body in pages.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(f"<!DOCTYPE html><html><head><title>{name}</title></head><body>{body}</body></html>")
    Image.new("RGB", (4, 4), "red").save(root / "ok.png")


def test_checker_reports_each_kind_of_problem(tmp_path, chromium):
    _write_site(tmp_path)
    report = sitecheck.check_site(tmp_path, executable=chromium)
    assert report.pages == ["index.html", "good.html", "other.html", "sub/index.html", "orphan.html"]
    assert report.unreachable == ["orphan.html"]
    assert report.broken_links == ["other.html: missing.html (no such file)",
                                   "other.html: good.html#nowhere (no #nowhere in good.html)"]
    assert report.broken_images == ["other.html: missing.png"]
    assert report.js_errors == ["other.html: console: logged by the page", "other.html: boom"]
    assert sorted(report.failed_requests) == ["other.html: HTTP 404 missing.js", "other.html: HTTP 404 missing.png"]
    assert {"http://example.org/x", "http://example.org/logo.png", "http://example.org/lib.js"} <= report.external
    assert (report.links, report.images) == (7, 3)
    assert len(report.problems()) == 7

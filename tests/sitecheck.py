"""Check a built HTML site in headless Chromium: every page, its internal links and anchors, its images,
its JavaScript errors and failed requests. Used by ``test_browser.py``; no part of the study.

The site is served over ``http://127.0.0.1:<free port>`` (``file://`` URLs behave differently for scripts and
search). Requests to any other host are blocked, so external links and resources neither fail the check nor
make the browser wait for a network that is not there.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Run in every page once it has loaded: its links, the ids anchors can point at, and the images that did not
# load. Lazy images are made eager first and waited for, so an image below the fold is judged too.
PAGE_SCRIPT = """async () => {
  const images = Array.from(document.images);
  images.forEach(img => { img.loading = 'eager'; });
  await Promise.all(images.map(img => img.complete ? null : new Promise(done => {
    img.addEventListener('load', done); img.addEventListener('error', done); setTimeout(done, 10000);
  })));
  const local = src => { const url = new URL(src, location.href);
                         return !url.protocol.startsWith('http') || url.origin === location.origin; };
  const refresh = document.querySelector('meta[http-equiv="refresh" i]');
  const target = refresh && (refresh.content.match(/url=(.*)$/i) || [])[1];
  return {
    links: Array.from(document.querySelectorAll('a[href], area[href]'), a => a.href)
             .concat(target ? [new URL(target.trim(), location.href).href] : []),
    ids: Array.from(document.querySelectorAll('[id], a[name]'), e => e.id || e.name),
    images: images.length,
    broken_images: images.filter(img => !img.getAttribute('src') ||
                                        (local(img.currentSrc || img.src) && img.complete && img.naturalWidth === 0))
                         .map(img => img.getAttribute('src') || '(no src)'),
  };
}"""


def find_chromium() -> str | None:
    """A Chromium on PATH, else the one ``playwright install chromium`` downloaded, else None."""
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    try:
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            path = p.chromium.executable_path
        return path if Path(path).is_file() else None
    except Exception:  # playwright missing, or it has no browser of its own
        return None


def install_chromium(*, timeout: float = 900) -> str:
    """Install Debian's ``chromium`` with apt-get (root only); returns why not, or '' once it is there."""
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not installed automatically (that needs root and apt-get)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "install", "-y", "-q", "chromium"],
                    ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` took more than {timeout:.0f} s"
        if command[1] == "install" and done.returncode == 0:
            return ""
    return f"`apt-get install chromium` failed: {done.stderr.strip()[-500:]}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the browser's findings are reported instead
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # the browser dropping a connection is not news
        pass


@contextmanager
def serve(root: Path):
    """Serve ``root`` on a free local port in a thread; yields the base URL ending in '/'."""
    server = _Server(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Report:
    """What a visit of the site found; each problem is one line naming the page it was seen on."""

    pages: list[str] = field(default_factory=list)  # site paths visited, in order
    unreachable: list[str] = field(default_factory=list)  # pages no link from the start page leads to
    broken_links: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    js_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    external: set[str] = field(default_factory=set)  # other hosts linked or requested, never fetched
    links: int = 0  # internal links checked
    images: int = 0  # images checked

    def problems(self) -> list[str]:
        kinds = {"broken link": self.broken_links, "image not loaded": self.broken_images,
                 "JavaScript error": self.js_errors, "failed request": self.failed_requests}
        return [f"{kind}: {line}" for kind, lines in kinds.items() for line in lines]


class Browser:
    """Headless Chromium over a site served locally; use as a context manager."""

    def __init__(self, root: Path, *, executable: str, timeout_ms: int = 30_000):
        self.root, self.executable, self.timeout_ms = Path(root), executable, timeout_ms

    def __enter__(self) -> Browser:
        from playwright.sync_api import sync_playwright

        self._server = serve(self.root)
        self.base = self._server.__enter__()
        self._playwright = sync_playwright().start()
        # --no-sandbox: Chromium refuses to start as root with its sandbox (containers, CI).
        self._browser = self._playwright.chromium.launch(executable_path=self.executable, args=["--no-sandbox"])
        self._context = self._browser.new_context()
        self._context.set_default_timeout(self.timeout_ms)
        self._context.route("**/*", self._route)
        self.page = self._context.new_page()
        self.report, self._current = Report(), ""
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.report.js_errors.append(f"{self._current}: {error}"))
        self.page.on("response", self._response)
        self.page.on("requestfailed", self._request_failed)
        return self

    def __exit__(self, *exc):
        self._browser.close()
        self._playwright.stop()
        self._server.__exit__(*exc)

    def _local(self, url: str) -> bool:
        return url.startswith(self.base) or not url.startswith(("http:", "https:"))

    def _route(self, route):
        if self._local(route.request.url):
            route.continue_()
        else:
            self.report.external.add(route.request.url)
            route.abort("blockedbyclient")

    def _console(self, message):
        # "Failed to load resource" repeats what _response and _request_failed report.
        if message.type == "error" and self._local(message.location.get("url", "")) \
                and not message.text.startswith("Failed to load resource"):
            self.report.js_errors.append(f"{self._current}: console: {message.text}")

    def _response(self, response):
        if response.status >= 400 and self._local(response.url):
            self._failed(f"HTTP {response.status}", response.url)

    def _request_failed(self, request):
        # ERR_ABORTED: the page went on (a redirect) before the request ended; a missing file answers 404.
        if self._local(request.url) and request.failure != "net::ERR_ABORTED":
            self._failed(request.failure, request.url)

    def _failed(self, why: str, url: str):
        self.report.failed_requests.append(f"{self._current}: {why} {self.relative(url)}")

    def relative(self, url: str) -> str:
        """A URL of the site as a path inside it, for messages."""
        return url[len(self.base):] if url.startswith(self.base) else url

    def visit(self, path: str) -> dict:
        """Open one page and wait until it is idle; returns its links, ids and images that did not load.

        A page that sends the browser on (a meta refresh, like the book's index.html) counts as one link to
        where it landed; that page is judged on its own visit.
        """
        from playwright.sync_api import Error

        self._current = path
        self.page.goto(self.base + path, wait_until="networkidle")
        try:
            found = self.page.evaluate(PAGE_SCRIPT)
        except Error:  # it navigated away while being read
            self.page.wait_for_load_state("networkidle")
            found = None
        landed = self.page.url.split("#")[0]
        if found is None or self.relative(landed) != path:
            return {"links": [landed], "ids": [], "images": 0, "broken_images": []}
        return found

    def resolve(self, url: str) -> tuple[str, str] | None:
        """The site path and fragment a link points at; None for other hosts and schemes (mailto:, ...)."""
        if not url.startswith(self.base):
            if url.startswith(("http:", "https:")):
                self.report.external.add(url)
            return None
        parts = urlsplit(url)
        path = unquote(parts.path).lstrip("/")
        if path == "" or path.endswith("/"):
            path += "index.html"
        return path, unquote(parts.fragment)

    def search(self, query: str) -> list[str]:
        """The titles Sphinx's search page lists for ``query``."""
        self._current = f"search.html?q={query}"
        self.page.goto(f"{self.base}search.html?q={query}", wait_until="load")
        # The summary line stays empty until the search has finished ("Search finished, found ...").
        self.page.wait_for_function("document.querySelector('#search-results .search-summary')?.innerText.trim()")
        return self.page.locator("#search-results ul.search li > a").all_inner_texts()


def site_pages(root: Path) -> list[str]:
    """Every HTML page of a built site (theme files under ``_static/`` are not pages)."""
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*.html")
                  if p.relative_to(root).parts[0] != "_static")


def check_site(root: Path, *, executable: str, start: str = "index.html") -> Report:
    """Visit every page of the site in ``root``: first those the links from ``start`` lead to, then the rest."""
    with Browser(root, executable=executable) as browser:
        report, ids, anchors = browser.report, {}, []
        queue, seen = [start], {start}
        while True:
            while queue:
                page = queue.pop(0)
                found = browser.visit(page)
                report.pages.append(page)
                ids[page] = set(found["ids"])
                report.images += found["images"]
                report.broken_images += [f"{page}: {src}" for src in found["broken_images"]]
                for url in dict.fromkeys(found["links"]):
                    if (target := browser.resolve(url)) is None:
                        continue
                    path, fragment = target
                    report.links += 1
                    if not (Path(root) / path).is_file():
                        report.broken_links.append(f"{page}: {browser.relative(url)} (no such file)")
                    elif path.endswith(".html"):
                        anchors += [(page, url, path, fragment)] if fragment else []
                        if path not in seen:
                            seen.add(path)
                            queue.append(path)
            rest = [p for p in site_pages(root) if p not in seen]
            if not rest:
                break
            report.unreachable += rest
            queue += rest
            seen.update(rest)
    for page, url, path, fragment in anchors:
        if fragment not in ids[path]:
            report.broken_links.append(f"{page}: {browser.relative(url)} (no #{fragment} in {path})")
    return report

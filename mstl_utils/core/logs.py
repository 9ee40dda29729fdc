"""Where the study's log lines go: a notebook's page is for results, the console and a log file for progress.

Under the study driver (``make study``) every notebook logs into ``$MSTL_LOG_FILE``, which the driver
shows on the console as it grows (runs done of the total, the current run's epochs, the time left),
so that the executed pages carry no log lines. Run by hand (Jupyter, papermill), a notebook logs to
its standard error as any script does. Python warnings (a library's deprecation, tqdm's) become log
records too, so that they reach the same place and not the page.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ENV_LOG_FILE = "MSTL_LOG_FILE"  # set by the study driver: where a notebook's log lines go

FORMAT_FILE = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_file() -> Path | None:
    value = os.environ.get(ENV_LOG_FILE, "").strip()
    return Path(value) if value else None


def setup(level: int = logging.INFO, *, quiet: tuple[str, ...] = ()) -> Path | None:
    """Send this process's log records (and warnings) to ``$MSTL_LOG_FILE`` when set, else to standard error;
    ``quiet`` loggers only report warnings (e.g. the per-epoch lines of many short runs). Returns the file."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    file = log_file()
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(file, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT_FILE, datefmt="%H:%M:%S"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return file

"""One lock per run folder, so that two studies, executors or machines sharing a runs folder never
train the same run at once.

The lock is an OS file lock (``fcntl.flock``) on ``<run>/.lock``: the kernel drops it when its
process dies, however it dies, so a lock left by a killed process is taken over at once (the
file's text, who held it, is then only history and is logged). Over NFS v4 and most cluster file
systems ``flock`` is a shared lock; on a file system without locking, give every machine its own
runs folder. The file names its holder (host, process, since when) for the message a waiting
study prints.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..core import repro

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunBusy(RuntimeError):
    """A run is being trained by another process and waiting was not allowed (or timed out)."""


def _holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"


class RunLock:
    """``with RunLock(run_dir, label=...):`` holds the run's lock; waits (polling every ``poll`` s, up
    to ``timeout`` s; None: for ever) while another live process holds it."""

    def __init__(self, run_dir: str | Path, *, label: str = "", timeout: float | None = None, poll: float = 2.0):
        self.path = Path(run_dir) / LOCK_FILE
        self.label = label or Path(run_dir).name
        self.timeout = timeout
        self.poll = poll
        self._fd: int | None = None
        self.waited = 0.0  # seconds spent waiting for another holder

    def _try(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        start, told = time.monotonic(), False
        while not self._try():
            if not told:
                log.warning("%s: busy, being trained by %s; waiting for it to finish", self.label,
                            describe(_holder(self.path)))
                told = True
            if self.timeout is not None and time.monotonic() - start > self.timeout:
                os.close(self._fd)
                self._fd = None
                raise RunBusy(f"{self.label}: still being trained by {describe(_holder(self.path))} after "
                              f"{self.timeout:.0f} s")
            time.sleep(self.poll)
        self.waited = time.monotonic() - start
        previous = _holder(self.path)
        if previous and not told and previous.get("pid") != os.getpid():
            # The lock was free although the file names a holder: that process ended without releasing
            # it cleanly (killed, or its machine lost). Its run is resumed or restarted below.
            log.info("%s: taking over from %s, which is gone", self.label, describe(previous))
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": repro.now()})
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, record.encode(), 0)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # nobody holds it now
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(run_dir: str | Path) -> dict[str, Any]:
    """Who holds (or last held, without releasing) the run's lock: host, pid, since; {} when free."""
    return _holder(Path(run_dir) / LOCK_FILE)

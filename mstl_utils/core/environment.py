"""The locked environment: ``requirements.lock`` names the exact versions the committed book was made with.

``make study`` and ``make test`` install from it (``python -m mstl_utils.core.environment install``). Where a machine
cannot install a locked version (its package setup may cap one, e.g. ``torch<=2.14.1``), the install says
which versions differ and goes on with the nearest ones the machine allows; every run's provenance then
records the lock file's hash and each difference (``status``).

Standard library only: it runs before the project's dependencies are installed.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

#: The lock file, at the project root; made by ``uv pip compile`` (the command is in its header).
LOCK_FILE = "requirements.lock"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _root() -> Path:
    return Path(__file__).resolve().parents[2]


def pins(lock_file: str | Path | None = None) -> dict[str, str]:
    """``{package: version}`` of every ``name==version`` line of the lock file (names normalised)."""
    path = Path(lock_file) if lock_file else _root() / LOCK_FILE
    found = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            found[_key(match.group(1))] = match.group(2)
    if not found:
        raise ValueError(f"{path}: no 'name==version' lines; expected a lock file written by 'uv pip compile'")
    return found


def requirers(lock_file: str | Path | None = None) -> dict[str, set[str]]:
    """Why each package is in the lock: ``{package: {the packages (or files) that require it}}``, read from
    the ``# via`` comments ``uv pip compile`` writes under each pin."""
    path = Path(lock_file) if lock_file else _root() / LOCK_FILE
    via: dict[str, set[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            current = _key(match.group(1))
            via[current] = set()
            continue
        comment = line.strip().removeprefix("#").strip()
        if current is None or not line.startswith(" ") or not comment:
            continue
        comment = comment.removeprefix("via").strip()
        if comment:
            via[current].add(_key(comment.split()[0]))
    return via


def with_dependents(dropped: set[str], via: dict[str, set[str]]) -> set[str]:
    """``dropped`` and every locked package required only by dropped ones (a capped torch takes its CUDA
    libraries with it: their pinned versions belong to the torch that was not installed)."""
    dropped = set(dropped)
    while True:
        more = {name for name, parents in via.items() if name not in dropped and parents and parents <= dropped}
        if not more:
            return dropped
        dropped |= more


def differences(lock_file: str | Path | None = None) -> dict[str, dict[str, str | None]]:
    """Each locked package whose installed version is another (or which is not installed):
    ``{package: {"locked": ..., "installed": ... or None}}``."""
    differ = {}
    for name, locked in pins(lock_file).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None or installed.split("+")[0] != locked.split("+")[0]:
            differ[name] = {"locked": locked, "installed": installed}
    return differ


def status(lock_file: str | Path | None = None) -> dict[str, object]:
    """For provenance: the lock file, its sha256 and the installed versions that differ from it
    (empty: this environment is the locked one). ``None`` values where there is no lock file."""
    path = Path(lock_file) if lock_file else _root() / LOCK_FILE
    if not path.is_file():
        return {"file": LOCK_FILE, "sha256": None, "differs": None}
    return {"file": LOCK_FILE, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "differs": differences(path)}


def refused_pins(pip_output: str, locked: dict[str, str]) -> set[str]:
    """The locked packages that pip's failure names with a version (``Cannot install torch==2.15.0``,
    ``The user requested (constraint) torch<=2.14.1``): the pins this machine refuses."""
    named = re.findall(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:===|==|<=|<|>=|>|!=|~=)", pip_output)
    return {_key(name) for name in named} & set(locked)


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version (``2.15.0+cpu`` -> (2, 15, 0)), enough to compare against a cap."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0].split("rc")[0])[:4])


def machine_caps() -> dict[str, list[tuple[str, str]]]:
    """The version caps this machine's pip applies to every install (the constraint files of its configuration
    and ``$PIP_CONSTRAINT``): ``{package: [(operator, version), ...]}``."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    files = [f for line in listed.splitlines() if re.match(r"^[\w:.]*\.?constraint=", line)
             for f in line.split("=", 1)[1].strip("'\"").split()]
    files += os.environ.get("PIP_CONSTRAINT", "").split()
    caps: dict[str, list[tuple[str, str]]] = {}
    for file in files:
        path = Path(file.removeprefix("file://"))
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            for name, op, version in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(===|==|<=|<|>=|>|!=)\s*([\w.+!-]+)",
                                                 line.split("#")[0].strip()):
                caps.setdefault(_key(name), []).append((op, version))
    return caps


def capped_pins(locked: dict[str, str], caps: dict[str, list[tuple[str, str]]]) -> set[str]:
    """The locked packages whose pinned version a cap of ``machine_caps`` excludes."""
    allowed = {"==": lambda a, b: a == b, "===": lambda a, b: a == b, "!=": lambda a, b: a != b,
               "<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b, ">": lambda a, b: a > b}
    return {name for name, version in locked.items() for op, cap in caps.get(name, [])
            if not allowed[op](_release(version), _release(cap))}


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args], capture_output=True, text=True)


def install(lock_file: str | Path | None = None, *, extras: str = "dev", tries: int = 4) -> dict[str, dict]:
    """Install the locked versions, then the project itself (editable, no further dependencies).

    A version the machine caps (``machine_caps``) or refuses (pip names it in its error) is dropped from
    the pins and the project installed with the remaining pins as constraints, at most ``tries`` times, so
    that the nearest allowed version is taken; the versions that differ are printed and returned."""
    path = Path(lock_file) if lock_file else _root() / LOCK_FILE
    locked = pins(path)
    via = requirers(path)
    dropped = capped_pins(locked, machine_caps())
    if dropped:
        print(f"{path.name}: this machine caps {', '.join(sorted(dropped))} below the locked version(s); "
              "installing the nearest versions it allows", file=sys.stderr)
        dropped = with_dependents(dropped, via)
    for _ in range(tries):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
            constraints.write("".join(f"{n}=={v}\n" for n, v in locked.items() if n not in dropped))
        requirement = ["-r", str(path)] if not dropped else ["-e", f"{_root()}[{extras}]"]
        done = _pip(*requirement, "-c", constraints.name)
        Path(constraints.name).unlink()
        if done.returncode == 0:
            break
        refused = refused_pins(done.stdout + done.stderr, locked) - dropped
        if not refused:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"installing {path.name} failed (pip's error above)")
        print(f"{path.name}: this machine refuses the locked {', '.join(sorted(refused))}; "
              "installing the nearest versions it allows", file=sys.stderr)
        dropped = with_dependents(dropped | refused, via)
    else:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"installing {path.name} failed after {tries} tries (pip's error above)")
    project = _pip("--no-deps", "-e", str(_root()))
    if project.returncode:
        sys.stderr.write(project.stderr)
        raise SystemExit("installing the project itself failed (pip's error above)")
    differ = differences(path)
    for name, versions in sorted(differ.items()):
        print(f"{path.name}: {name} {versions['installed']} installed, {versions['locked']} locked", file=sys.stderr)
    if not differ:
        print(f"{path.name}: every locked version installed", file=sys.stderr)
    return differ


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        raise SystemExit("usage: python -m mstl_utils.core.environment install")
    install()

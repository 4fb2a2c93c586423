"""The simulator's hot modules compiled to C by mypyc: the same sources, about a quarter less wall time.

``pyagent simnet run`` (and ``check-determinism``, ``sweep``) use them by default: they build the copy if
this version of the sources has none (one progress line, ~30 s, once), then run on it; when it cannot be
built they say why and run interpreted. ``--interpreted`` opts out. By hand::

    PYTHONPATH=$(python -m pyagent_simnet.compiled) pyagent simnet run membership-detection --seed 1

``python -m pyagent_simnet.compiled`` builds, once per version of the sources, a copy of the ``pyagent``
and ``pyagent_simnet`` packages in which ``HOT_MODULES`` are C extensions, and prints the directory to put
first on ``PYTHONPATH``. Nothing else changes: the cores are the same typed sources (``mypy --strict``
holds for ``proto/``), and a run gives the same trace hash either way (``tests/simnet/test_compiled.py``).
The copy lives under the user's cache directory, keyed by a hash of every source file, the Python version
and the mypy version, so an edited source never meets a stale extension.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pyagent
import pyagent_simnet
from pyagent.errors import ConfigError

# What a membership run spends its time in; the rest stays interpreted. Dataclass-heavy modules
# (events, ready, component) are left out: mypyc's dataclass support does not cover them.
HOT_MODULES = (
    "pyagent/proto/wire.py",
    "pyagent/proto/node.py",
    "pyagent/proto/interpret.py",
    "pyagent/proto/membership/swim.py",
    "pyagent/proto/membership/table.py",
    "pyagent/proto/membership/broadcasts.py",
    "pyagent/proto/membership/codec.py",
    "pyagent/proto/membership/records.py",
    "pyagent/proto/membership/lifeguard.py",
    "pyagent_simnet/sim.py",
    "pyagent_simnet/network.py",
    "pyagent_simnet/trace.py",
    "pyagent_simnet/latency.py",
    "pyagent_simnet/membership_kit.py",
)
_HOT_FILE_NAMES = frozenset(module.rsplit("/", 1)[-1] for module in HOT_MODULES)
_DONE_MARKER = "built-ok"
# Builds kept in the cache, the newest included (other checkouts may use the others).
_BUILDS_KEPT = 3
_COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyagent" / "mypyc"


def build(log: bool = True) -> Path:
    """The directory holding the compiled packages, built first if this version of the sources lacks one.

    Raises ``ConfigError`` (one line) when mypyc or a C compiler is missing or the build fails."""
    try:
        from mypy.version import __version__ as mypy_version
    except ImportError:
        raise ConfigError("compiled cores need mypyc: pip install mypy (the dev extra has it)") from None
    inputs = _inputs()
    target = cache_root() / _source_key(inputs, mypy_version)
    if (target / _DONE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if log:
        print(
            f"compiling {len(HOT_MODULES)} modules with mypyc into {target} (once per source version, ~30 s)",
            file=sys.stderr,
            flush=True,
        )
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        work = Path(scratch) / "tree"
        for name, source in inputs.items():
            # Scenario files sit next to the simnet package, as in the source tree.
            shutil.copytree(source, work / name, ignore=_COPY_IGNORE)
        (work / "mypy.ini").write_text("[mypy]\nignore_missing_imports = True\n")
        done = subprocess.run(
            [sys.executable, "-m", "mypyc", *HOT_MODULES],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ConfigError(f"mypyc failed (is a C compiler installed?): {last[0]}")
        shutil.rmtree(work / "build", ignore_errors=True)
        (work / _DONE_MARKER).write_text("")
        try:
            work.rename(target)
        except OSError:
            # Another process built the same version meanwhile; its copy is as good as ours.
            if not (target / _DONE_MARKER).exists():
                raise
    _prune(keep=target)
    return target


def active() -> bool:
    """Whether this process runs on the compiled cores (the simulator's loop is an extension module)."""
    from pyagent_simnet import sim

    return (sim.__file__ or "").endswith((".so", ".pyd"))


def environ(target: Path, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with ``target`` (from ``build``) first on PYTHONPATH, for a process on the compiled cores."""
    return {**base, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), base.get("PYTHONPATH")]))}


def _prune(keep: Path) -> None:
    """Drop all but the newest few builds: each is ~15 MB, and an edit makes the previous one useless."""
    builds = sorted(
        (path for path in keep.parent.iterdir() if (path / _DONE_MARKER).exists() and path != keep),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    for old in builds[_BUILDS_KEPT - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def _inputs() -> dict[str, Path]:
    """What the compiled copy is made of: both packages and the shipped scenarios."""
    simnet_dir = Path(pyagent_simnet.__file__).resolve().parent
    return {
        "pyagent": Path(pyagent.__file__).resolve().parent,
        "pyagent_simnet": simnet_dir,
        "scenarios": simnet_dir.parent / "scenarios",
    }


def _source_key(inputs: dict[str, Path], mypy_version: str) -> str:
    digest = hashlib.sha256()
    digest.update(sys.version.encode())
    digest.update(mypy_version.encode())
    digest.update("\n".join(HOT_MODULES).encode())
    for name, root in sorted(inputs.items()):
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and not _is_compiled_output(path):
                digest.update(f"{name}/{path.relative_to(root)}".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def _is_compiled_output(path: Path) -> bool:
    # Inside a compiled copy the hot modules' extensions sit next to their sources; they are outputs of
    # this build, not inputs, so the copy hashes to the same key as the tree it was made from.
    return path.suffix == ".so" and path.name.split(".")[0] + ".py" in _HOT_FILE_NAMES


def main() -> int:
    try:
        print(build())
    except ConfigError as exc:
        print(f"pyagent_simnet.compiled: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

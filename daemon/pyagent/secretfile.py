"""Reading and writing files that hold secrets (the identity key, a mesh's swarm.key).

Written files are mode 0600 from the moment they exist (never created wider and narrowed after) and are
fsynced, so a crash right after ``pyagent init`` cannot leave an empty identity behind.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pyagent.errors import ConfigError

SECRET_FILE_MODE = 0o600


def write(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Create ``path`` with ``data``; refuses an existing file unless ``replace``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, SECRET_FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def read(path: Path, what: str, missing_hint: str) -> tuple[bytes, bool]:
    """The file's bytes, and whether users other than its owner can access it."""
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; {missing_hint}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}; {missing_hint}") from None
    return data, bool(mode & (stat.S_IRWXG | stat.S_IRWXO))

"""Test-only broken plugins (never installed): put tests/brokenkit on PYTHONPATH and pyagent finds them.

``typo`` implements a misspelled hook (pluggy refuses it); ``failing`` fails to import. Each first
touches the file named by ``$BROKENKIT_IMPORTED`` (if set) with its name, so a test can tell that a
disabled plugin was never imported.
"""

from __future__ import annotations

import os
from pathlib import Path


def mark_imported(name: str) -> None:
    if marker := os.environ.get("BROKENKIT_IMPORTED"):
        with Path(marker).open("a") as out:
            out.write(f"{name}\n")

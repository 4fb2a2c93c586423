"""Fixtures for the simnet tests.

``testkit`` puts ``tests/testkit`` on ``sys.path`` for one test: its hand-written dist-info makes
``importlib.metadata`` find the test-only distribution ``pyagent-testkit`` and the kits it registers
(``journal``), with nothing installed. Subprocesses get the same through ``PYTHONPATH``
(``env_with_testkit``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTKIT = Path(__file__).resolve().parents[1] / "testkit"


@pytest.fixture
def testkit(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(TESTKIT))
    return TESTKIT


def env_with_testkit(*more: Path) -> dict[str, str]:
    """The environment of a subprocess that should see the test-only distribution (and ``more``)."""
    paths = [str(path) for path in (TESTKIT, *more)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}

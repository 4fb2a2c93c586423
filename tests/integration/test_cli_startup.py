"""The CLI starts without importing anything heavy (issue 16): `--help` and the commands that talk to the
daemon must stay instant, so matplotlib, numpy, libp2p and prometheus_client are imported only where they
are used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("matplotlib", "numpy", "libp2p", "prometheus_client")


def imported_modules(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pyagent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    # Each -X importtime line is "import time: self | cumulative | <indent>module".
    return {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["id"],
        ["stats", "--json"],
        ["ping", "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"],
    ],
)
def test_a_cli_start_imports_nothing_heavy(tmp_path: Path, args: list[str]) -> None:
    modules = imported_modules("--home", str(tmp_path / "no-daemon"), *args)
    assert "pyagent.controlclient" in modules, "importtime output not recognised"
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"`pyagent {' '.join(args)}` imported {', '.join(heavy[:5])}"


def test_id_with_no_daemon_reads_the_identity_without_libp2p(tmp_path: Path) -> None:
    """`pyagent id` on a home with an identity and no daemon, as `ipfs id` offline: loading the key through
    libp2p made it take most of a second."""
    init = subprocess.run(
        [sys.executable, "-m", "pyagent.cli", "--home", str(tmp_path / "home"), "init"],
        capture_output=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    modules = imported_modules("--home", str(tmp_path / "home"), "id")
    assert "pyagent.identity" in modules, "the offline path was not taken"
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"`pyagent id` imported {', '.join(heavy[:5])}"


def test_the_plugins_a_daemon_loads_import_no_matplotlib() -> None:
    """Every daemon loads every installed plugin when it starts; simnet's command line (matplotlib and the
    simulator) serves only `pyagent simnet`, and importing it with the plugin made each start ~1 s longer."""
    probe = (
        "import sys\n"
        "from pyagent import pluginhost\n"
        "plugins = pluginhost.load_plugins()\n"
        "assert 'simnet' in pluginhost.plugin_names(plugins), pluginhost.plugin_names(plugins)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"loading the plugins imported {result.stdout.strip()[:200]}"

"""simnet reaches the daemon's CLI the way any third-party plugin does: through the entry-point group."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pyagent import pluginhost

PYAGENT = Path(sys.executable).parent / "pyagent"


def test_simnet_is_an_installed_pyagent_plugin() -> None:
    pm = pluginhost.load_plugins()
    assert "simnet" in pluginhost.plugin_names(pm)


def test_pyagent_simnet_run_goes_through_the_plugin_and_prints_its_own_replay_prefix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'peers = 3\ncomponents = ["ping"]\n[ping]\nrate_per_s = 2.0\n[ping.checks]\nsuccess_min = 1.0\n'
        "[network]\nloss = 0.5\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [str(PYAGENT), "simnet", "run", str(bad), "--seed", "3", "--interpreted"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"replay: pyagent simnet run {bad} --seed 3 --interpreted" in done.stderr

"""Kits come through the entry-point group ``pyagent_simnet.kits``: simnet's own, and one from a test-only
distribution (tests/testkit) that simnet knows nothing about."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import env_with_testkit

from pyagent.errors import ConfigError
from pyagent_simnet import Sim, kits, report, run_scenario, scenario
from pyagent_simnet.kits import ENTRY_POINT_GROUP


def test_simnets_own_kits_register_through_the_entry_point_group() -> None:
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert {"membership", "ping"} <= set(found)
    assert found["ping"].dist is not None and found["ping"].dist.name == "pyagent-simnet"
    assert kits.get("membership", "<test>").name == "membership"


def test_without_its_distribution_a_kit_is_unknown() -> None:
    assert "journal" not in kits.names()
    with pytest.raises(ConfigError, match="unknown kit 'journal'"):
        Sim({"components": ["journal"]})


def test_a_kit_from_a_test_only_distribution_runs_with_its_table_checks_and_figures(testkit: Path) -> None:
    assert "journal" in kits.names()
    sim = Sim(
        {
            "peers": 8,
            "duration_s": 10.0,
            "components": ["journal", "membership"],
            "journal": {"interval_ms": 50, "unsynced_every": 4},
            "faults": [
                {"at_s": 3.0, "action": "crash", "count": 3},
                {"at_s": 6.0, "action": "restart"},
                {"at_s": 7.0, "action": "crash", "count": 2},
            ],
        },
        seed=2,
    )
    assert sim.scenario.kit("journal") == {
        "interval_ms": 50.0,
        "unsynced_every": 4,
        "entry_bytes": 32,
        "announce": True,
        "checks": {},
    }
    outcome = run_scenario(sim)
    assert outcome.exit_code == 0, outcome.problems
    result = outcome.result
    assert result["journal_recoveries"] == 5  # three restarted by the fault, two in the liveness phase
    assert result["journal_entries_persisted"] > 1000
    assert result["journal_announcements_checked"] > 500
    assert result["false_positives"] == 0  # membership ran beside it, with its own storage


def test_a_kits_table_is_typed_and_checked_by_the_kit(testkit: Path) -> None:
    with pytest.raises(ConfigError, match=r"journal\.interval_ms: must be positive"):
        scenario.from_dict({"components": ["journal"], "journal": {"interval_ms": 0}})
    with pytest.raises(ConfigError, match=r"journal\.colour: unknown key"):
        scenario.from_dict({"components": ["journal"], "journal": {"colour": "red"}})
    checked = scenario.from_dict({"components": ["journal"]}, overrides=["journal.unsynced_every=3"])
    assert checked.kit("journal")["unsynced_every"] == 3


def test_the_cli_runs_a_test_kit_and_prints_its_summary_figures(tmp_path: Path) -> None:
    path = tmp_path / "journal.toml"
    path.write_text('peers = 4\nduration_s = 3\ncomponents = ["journal"]\n', encoding="utf-8")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pyagent_simnet", "run", str(path), "--seed", "1", "--interpreted"),
            *("--set", "journal.interval_ms=20", "--out", str(tmp_path / "out")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env_with_testkit(),
    )
    assert done.returncode == 0, done.stderr
    persisted = re.search(r"journal_entries_persisted=(\d+)", done.stdout)
    assert persisted and int(persisted.group(1)) > 400
    report_json = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report_json["journal_entries_persisted"] == int(persisted.group(1))


def test_membership_draws_its_own_plots(tmp_path: Path) -> None:
    sim = Sim(
        "membership-detection", seed=1, overrides=["peers=12", "duration_s=40", "checks.liveness=false"]
    )
    outcome = run_scenario(sim)
    written = {path.name for path in report.write_run(outcome.result, tmp_path, sim.kits)}
    assert {"report.json", "convergence.png", "detection_cdf.png", "traffic_per_peer.png"} <= written


def test_plugins_are_built_through_the_daemons_builder_with_their_config_tables() -> None:
    config = {"components": ["ping"], "peers": 3, "duration_s": 2.0, "plugins": True}
    sim = Sim({**config, "config": {"hello": {"hellos_max": 7}}}, seed=1)
    assert run_scenario(sim).exit_code == 0
    core = sim.nodes[0].core
    assert core is not None and [c.name for c in core.components] == ["peers", "ping", "hello"]
    with pytest.raises(ConfigError, match=r"<dict>: \[hello\] unknown key 'colour'"):
        run_scenario(Sim({**config, "config": {"hello": {"colour": "red"}}}, seed=1))

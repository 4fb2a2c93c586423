"""The run and sweep reports: per-peer rates over each peer's up-time, no empty plots, replay lines that
work from any directory, and sweeps over a fault's settings."""

from __future__ import annotations

import json
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from pyagent.errors import ConfigError
from pyagent_simnet import Sim, cli, run_scenario, scenario

# A steady ping workload: every peer sends at about the same rate while it is up.
PING = {
    "peers": 6,
    "duration_s": 60.0,
    "components": ["ping"],
    "ping": {"rate_per_s": 5.0},
    "checks": {"liveness": False},
}


def test_a_restarted_peers_rate_is_over_its_total_up_time() -> None:
    faults = [
        {"at_s": 10.0, "action": "crash", "peers": [2]},
        {"at_s": 55.0, "action": "restart", "peers": [2]},
    ]
    sim = Sim({**PING, "faults": faults}, seed=1)
    result = run_scenario(sim).result
    per_peer = result["per_peer"]
    # Up 0-10 s, then 55-60 s: 15 s in all, not the 5 s since the restart.
    assert per_peer["up_s"][2] == pytest.approx(15.0)
    assert per_peer["up_s"][0] == pytest.approx(60.0)
    rates = per_peer["messages_sent_per_s"]
    others = statistics.median(rate for i, rate in enumerate(rates) if i != 2)
    assert others > 0
    assert 0.5 * others < rates[2] < 2 * others, rates
    # The mesh-wide figure divides every node's sends by every node's up-time the same way.
    assert result["messages_per_peer_per_s"] == pytest.approx(
        result["messages_sent"] / sum(per_peer["up_s"]), rel=1e-3
    )


def test_a_run_without_faults_draws_no_empty_fault_timeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "quiet.toml"
    toml.write_text(
        'peers = 4\nduration_s = 5\ncomponents = ["ping"]\n[ping]\nrate_per_s = 1.0\n', encoding="utf-8"
    )
    out = tmp_path / "out"
    assert cli.main(["run", str(toml), "--seed", "1", "--interpreted", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert not (out / "faults_timeline.png").exists()
    assert (out / "traffic_per_peer.png").exists()
    assert "not drawn, no data: faults_timeline.png" in printed
    report_line = next(line for line in printed.splitlines() if line.startswith("report: "))
    assert all(Path(p).is_absolute() for p in report_line.removeprefix("report: ").split(", "))


def test_a_sweep_without_crashes_plots_no_empty_detection_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    argv = ["sweep", "membership-detection", "--seed", "1", "--interpreted", "--out", str(out)]
    argv += ["--set", "peers=6", "--set", "duration_s=6", "--set", "faults=[]"]
    argv += ["--grid", "network.loss=0,0.01"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    pngs = {path.name for path in out.glob("*.png")}
    assert not any(name.startswith("detection") for name in pngs), pngs
    assert "bytes_per_peer_per_s_vs_network_loss.png" in pngs
    assert "not plotted, no data: detection_p50_s (no run produced it)" in printed


def test_a_sweep_varies_a_fault_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "split"
    argv = ["sweep", "partition-heal", "--seed", "1", "--interpreted", "--out", str(out)]
    argv += [
        "--set",
        "peers=6",
        "--set",
        "duration_s=4",
        "--set",
        "faults.0.at_s=1",
        "--set",
        "faults.1.at_s=3",
    ]
    argv += ["--grid", "faults.0.split=0.5,0.7", "--figure", "messages_per_peer_per_s"]
    assert cli.main(argv) == 0
    rows = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert [row["params"]["faults.0.split"] for row in rows] == [0.5, 0.7]
    assert (out / "messages_per_peer_per_s_vs_faults_0_split.png").exists()
    assert "2 runs" in capsys.readouterr().out


def test_a_fault_setting_is_typed_by_its_action() -> None:
    loaded = scenario.load("partition-heal", ["faults.0.split=0.7", "faults.1.at_s=45"])
    assert loaded.faults[0]["split"] == 0.7
    assert loaded.faults[1]["at_s"] == 45.0
    replaced = scenario.load("partition-heal", ['faults=[{action = "crash", at_s = 1}]', "faults.0.count=2"])
    assert replaced.faults[0]["count"] == 2


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("faults.2.split=0.5", "no fault 2 (the scenario has 2 faults: 0..1)"),
        ("faults.-1.split=0.5", "the fault index must be a number"),
        ("faults.first.split=0.5", "the fault index must be a number"),
        ("faults.0.count=3", "unknown key for a 'partition' fault (one of at_s, sides, split, one_way)"),
        ("faults.0=1", "expected faults.<index>.<key>"),
        ("faults.0.split=lots", "expected float, got 'lots'"),
        ("faults.0.split=1.5", "faults.0.split: must be a probability in [0, 1], got 1.5"),
    ],
)
def test_a_bad_fault_key_is_one_line(item: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        scenario.load("partition-heal", [item])
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_a_bad_fault_index_in_a_grid_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sweep", "partition-heal", "--interpreted", "--out", "unused", "--grid", "faults.5.split=0.5"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no fault 5" in err


def test_the_replay_line_works_from_another_directory(tmp_path: Path) -> None:
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    (here / "bad.toml").write_text(
        'peers = 3\ncomponents = ["ping"]\n[ping]\nrate_per_s = 2.0\n[ping.checks]\nsuccess_min = 1.0\n'
        "[network]\nloss = 0.5\n",
        encoding="utf-8",
    )

    def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
        )

    first = run(["-m", "pyagent_simnet", "run", "bad.toml", "--seed", "3", "--interpreted"], here)
    assert first.returncode == 1, first.stdout + first.stderr
    (line,) = [x for x in first.stderr.splitlines() if x.startswith("replay: ")]
    command = shlex.split(line.removeprefix("replay: "))
    assert command[4] == str((here / "bad.toml").resolve())
    again = run(command[1:], elsewhere)
    assert again.returncode == 1, again.stderr
    assert trace_hash(again.stdout) == trace_hash(first.stdout)


def trace_hash(stdout: str) -> str:
    found = re.search(r"trace_hash=([0-9a-f]+)", stdout)
    assert found, stdout
    return found.group(1)

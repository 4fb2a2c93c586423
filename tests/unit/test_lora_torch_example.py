"""examples/lora_finetune.py runs: its merged adapter beats every peer alone, and it draws its plots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lora_finetune.py"


def test_example_merges_better_than_any_peer_alone_and_plots(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--rounds", "10", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "beats every peer alone" in result.stdout
    for plot in ("loss_by_round.png", "loss_by_bytes.png"):
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")

"""``report.json`` and the PNG plots of one run, and the figure-against-parameter plots of a sweep.

simnet draws what every run has (traffic per peer, the fault timeline); each kit draws its own figures
(``Kit.plots``) with the helpers here (``line``, ``cdf``). matplotlib runs on its Agg backend, so reports
render on a headless CI machine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from pyagent_simnet.kits import Kit


def write_run(
    result: dict[str, Any], out_dir: Path, kits: Sequence[Kit] = (), skipped: list[str] | None = None
) -> list[Path]:
    """Write ``report.json`` and the plots; a plot with no data (no faults, say) is not drawn, and its
    name and why go to ``skipped`` when given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(
        json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    written = [out_dir / "report.json"]
    for kit in kits:
        written.extend(kit.plots(result, out_dir))
    written.append(_traffic(out_dir / "traffic_per_peer.png", result["per_peer"]))
    # The liveness phase's own heal-all is logged in every run; alone it is no timeline.
    if any(fault["action"] != "heal-all" for fault in result["faults"]):
        written.append(_timeline(out_dir / "faults_timeline.png", result["faults"], result["simulated_s"]))
    elif skipped is not None:
        skipped.append("faults_timeline.png (no fault fired)")
    return written


def line(path: Path, points: Sequence[Sequence[float]], xlabel: str, ylabel: str, title: str) -> Path:
    """A line plot of ``(x, y)`` points, written to ``path``."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p[0] for p in points], [p[1] for p in points])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def cdf(path: Path, values: Sequence[float], xlabel: str, title: str) -> Path:
    """The empirical CDF of ``values``, written to ``path``."""
    ordered = sorted(values)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post")
    ax.set(xlabel=xlabel, ylabel="fraction", title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _traffic(path: Path, per_peer: dict[str, list[float]]) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.hist(per_peer["messages_sent_per_s"], bins=40)
    # Each peer's sends over its total up-time: a restarted peer's counters span all its processes.
    left.set(xlabel="messages sent / s of up-time", ylabel="peers", title="Messages per peer per second")
    right.hist(per_peer["bytes_sent_per_s"], bins=40)
    right.set(xlabel="bytes sent / s of up-time", ylabel="peers", title="Bytes per peer per second")
    return _save(fig, path)


def _timeline(path: Path, faults: list[dict[str, Any]], end_s: float) -> Path:
    fig, ax = plt.subplots(figsize=(9, 3))
    actions = sorted({f["action"] for f in faults})
    for fault in faults:
        row = actions.index(fault["action"])
        ax.plot([fault["t_s"]], [row], "o")
        ax.annotate(
            fault["detail"][:24], (fault["t_s"], row), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_yticks(range(len(actions)), actions)
    ax.set(xlim=(0, max(end_s, 1.0)), xlabel="simulated time (s)", title="Faults")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def write_sweep(
    rows: list[dict[str, Any]],
    params: list[str],
    figures: list[str],
    out_dir: Path,
    skipped: list[str] | None = None,
) -> list[Path]:
    """One plot per figure: the figure against the first parameter, one line per value of the others.
    A figure that no run produced (detection latency in a sweep without crashes, say) is not plotted;
    its name goes to ``skipped`` when given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    written = [out_dir / "sweep.json"]
    x_param, line_params = params[0], params[1:]
    for figure in figures:
        fig, ax = plt.subplots(figsize=(7, 4))
        groups: dict[str, list[tuple[Any, Any]]] = {}
        for row in rows:
            label = ", ".join(f"{p}={row['params'][p]}" for p in line_params) or figure
            value = row["result"].get(figure)
            if isinstance(value, int | float):
                groups.setdefault(label, []).append((row["params"][x_param], value))
        if not groups:
            plt.close(fig)
            if skipped is not None:
                skipped.append(f"{figure} (no run produced it)")
            continue
        for label, points in sorted(groups.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set(xlabel=x_param, ylabel=figure, title=f"{figure} vs {x_param}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir / f"{figure}_vs_{x_param.replace('.', '_')}.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

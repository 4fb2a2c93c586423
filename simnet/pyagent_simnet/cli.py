"""``pyagent simnet run | check-determinism | sweep``; also ``python -m pyagent_simnet`` without the daemon.

Every command handler has the plugin shape ``fn(args, ctx) -> int`` so the same parsers serve the daemon's
CLI (through the plugin hook) and this module's own ``main``. A ``ConfigError`` becomes one line on stderr
and exit code 2; a failing run prints the one command that replays it.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyagent.errors import ConfigError
from pyagent_simnet import compiled, kits, report, runner, scenario
from pyagent_simnet.sim import Sim

Command = Callable[[argparse.Namespace, object], int]

STANDALONE_PROG = "python -m pyagent_simnet"
DAEMON_PROG = "pyagent simnet"
# The figures a run prints on its summary line, when the run produced them: these, then each kit's
# ``summary_keys``, then the trace hash.
SUMMARY_KEYS = (
    "peers_total",
    "simulated_s",
    "wall_s",
    "events",
    "speedup_x_real_time",
    "messages_per_peer_per_s",
    "bytes_per_peer_per_s",
    "late_bytes_per_peer_per_s",
    "liveness_converged_after_s",
    "cores",
)
# Set in a process that this module re-executed on the compiled cores, so it never loops.
REEXEC_ENV = "PYAGENT_SIMNET_REEXECUTED"


def add_commands(parent: argparse._SubParsersAction[argparse.ArgumentParser], prog: str) -> None:
    """Add ``run``, ``check-determinism`` and ``sweep`` under ``parent``; ``prog`` prefixes replay lines."""
    run = parent.add_parser("run", help="run one scenario under one seed")
    _common(run)
    run.add_argument("--out", type=Path, help="directory for report.json and the PNG plots")
    run.set_defaults(run=cmd_run, simnet_prog=prog)

    det = parent.add_parser("check-determinism", help="run twice and compare the trace hashes")
    _common(det)
    det.set_defaults(run=cmd_check_determinism, simnet_prog=prog)

    sweep = parent.add_parser("sweep", help="run a parameter grid and plot each figure against it")
    _common(sweep)
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        required=True,
        help="a parameter and its values; repeat for a grid (first one is the x axis)",
    )
    sweep.add_argument(
        "--figure",
        action="append",
        default=[],
        metavar="NAME",
        help="a report.json figure to plot (default: a few standard ones)",
    )
    sweep.add_argument("--out", type=Path, required=True)
    sweep.set_defaults(run=cmd_sweep, simnet_prog=prog)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scenario",
        help=f"a scenario file, or the name of a shipped one ({', '.join(scenario.shipped_names())})",
    )
    parser.add_argument("--seed", type=int, default=None, help="the one seed (default: the scenario's)")
    parser.add_argument(
        "--interpreted",
        action="store_true",
        help="run on the interpreted cores (default: compiled by mypyc when a C compiler is at hand; "
        "the trace hash is the same either way)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario value, e.g. --set peers=100 --set network.loss=0.05",
    )


def _one_line_errors(fn: Command) -> Command:
    """A user's bad input is one line and exit 2 however the command was reached (plugin or standalone)."""

    @functools.wraps(fn)
    def guarded(args: argparse.Namespace, ctx: object = None) -> int:
        try:
            return fn(args, ctx)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return runner.EXIT_BAD_INPUT

    return guarded


def _use_compiled_cores(args: argparse.Namespace) -> None:
    """Re-execute this command on the compiled cores, building them first if needed; return (and run
    interpreted) when asked to, when already on them, or when they cannot be built (with a note)."""
    if args.interpreted or compiled.active():
        return
    if os.environ.get(REEXEC_ENV):
        print("note: the compiled cores did not load; running interpreted", file=sys.stderr)
        return
    try:
        target = compiled.build(log=True)
    except ConfigError as exc:
        print(f"note: running on the interpreted cores: {exc}", file=sys.stderr)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    env = compiled.environ(target, os.environ)
    env[REEXEC_ENV] = "1"
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _prepare(args: argparse.Namespace, extra: Sequence[Sequence[str]] = ()) -> None:
    """Check the scenario (bad input fails at once, in one line), then move onto the compiled cores."""
    for sets in extra or [()]:
        scenario.load(args.scenario, [*args.overrides, *sets])
    _use_compiled_cores(args)


@_one_line_errors
def cmd_run(args: argparse.Namespace, ctx: object = None) -> int:
    _prepare(args)
    sim = Sim(args.scenario, args.seed, args.overrides)
    outcome = runner.run_scenario(sim)
    _print_summary(outcome.result, sim)
    if args.out is not None:
        skipped: list[str] = []
        written = report.write_run(outcome.result, args.out, sim.kits, skipped)
        print(f"report: {', '.join(str(p.resolve()) for p in written)}")
        if skipped:
            print(f"not drawn, no data: {'; '.join(skipped)}")
    for problem in outcome.problems:
        print(problem, file=sys.stderr)
    if outcome.exit_code != runner.EXIT_OK:
        print(
            "replay: "
            + runner.replay_command(
                args.simnet_prog, args.scenario, sim.seed, sim.scenario.overrides, args.interpreted
            ),
            file=sys.stderr,
        )
    return outcome.exit_code


@_one_line_errors
def cmd_check_determinism(args: argparse.Namespace, ctx: object = None) -> int:
    _prepare(args)
    hashes = []
    for attempt in (1, 2):
        sim = Sim(args.scenario, args.seed, args.overrides)
        outcome = runner.run_scenario(sim)
        hashes.append(outcome.result["trace_hash"])
        print(
            f"run {attempt}: trace_hash={hashes[-1]} records={outcome.result['trace_records']} "
            f"exit_code={outcome.exit_code}"
        )
    if hashes[0] != hashes[1]:
        print(
            "NOT deterministic: the two runs differ; replay: "
            + runner.replay_command(
                args.simnet_prog, args.scenario, sim.seed, sim.scenario.overrides, args.interpreted
            ),
            file=sys.stderr,
        )
        return 1
    print("deterministic")
    return 0


# A sweep plots these by default, after each kit's ``sweep_figures``.
DEFAULT_SWEEP_FIGURES = (
    "bytes_per_peer_per_s",
    "late_bytes_per_peer_per_s",
    "messages_per_peer_per_s",
    "wall_s",
)


@_one_line_errors
def cmd_sweep(args: argparse.Namespace, ctx: object = None) -> int:
    params: list[str] = []
    values: list[list[str]] = []
    for item in args.grid:
        key, sep, text = item.partition("=")
        if not sep or not text:
            raise ConfigError(f"--grid {item}: expected KEY=V1,V2,...")
        params.append(key)
        values.append(text.split(","))
    points = list(itertools.product(*values))
    # Validate every point before spending minutes on the first ones.
    _prepare(args, [[f"{k}={v}" for k, v in zip(params, point, strict=True)] for point in points])
    first = scenario.load(args.scenario, args.overrides)
    kit_figures = [f for name in first.top["components"] for f in kits.get(name, first.source).sweep_figures]
    rows: list[dict[str, Any]] = []
    worst = runner.EXIT_OK
    started = time.perf_counter()
    for done, point in enumerate(points):
        _progress(done, len(points), started)
        sets = [*args.overrides, *(f"{k}={v}" for k, v in zip(params, point, strict=True))]
        sim = Sim(args.scenario, args.seed, sets)
        outcome = runner.run_scenario(sim)
        result = {k: v for k, v in outcome.result.items() if k not in ("per_peer", "series")}
        rows.append({"params": {k: _number(v) for k, v in zip(params, point, strict=True)}, "result": result})
        worst = max(worst, outcome.exit_code)
        if outcome.exit_code != runner.EXIT_OK:
            sys.stderr.write(
                "\n"
                + "; ".join(p.splitlines()[0] for p in outcome.problems)
                + "\nreplay: "
                + runner.replay_command(
                    args.simnet_prog, args.scenario, sim.seed, tuple(sets), args.interpreted
                )
                + "\n"
            )
    _progress(len(points), len(points), started)
    sys.stderr.write("\n")
    figures = args.figure or [*kit_figures, *DEFAULT_SWEEP_FIGURES]
    skipped: list[str] = []
    written = report.write_sweep(rows, params, figures, args.out, skipped)
    print(f"sweep: {len(points)} runs; report: {', '.join(str(p.resolve()) for p in written)}")
    if skipped:
        print(f"not plotted, no data: {'; '.join(skipped)}")
    return worst


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _progress(done: int, total: int, started: float) -> None:
    width = 30
    filled = width * done // max(1, total)
    elapsed = time.perf_counter() - started
    eta = f" eta {elapsed / done * (total - done):.0f}s" if done else ""
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:.0f}s{eta}   ")
    sys.stderr.flush()


def _print_summary(result: dict[str, Any], sim: Sim) -> None:
    keys = [*SUMMARY_KEYS, *(key for kit in sim.kits for key in kit.summary_keys), "trace_hash"]
    shown = [f"{key}={result[key]}" for key in keys if result.get(key) is not None]
    print(f"{result['scenario']} seed={result['seed']}: " + " ".join(shown))


def build_parser(prog: str = STANDALONE_PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="PyAgent's deterministic network simulator")
    commands = parser.add_subparsers(dest="command", required=True)
    add_commands(commands, prog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args, None)
    return code

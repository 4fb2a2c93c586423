"""simnet's entry in the ``pyagent`` plugin group: it adds ``pyagent simnet ...`` to the daemon's CLI.

Registered exactly as a third-party plugin registers (``[project.entry-points.pyagent]`` in
simnet/pyproject.toml), so simnet proves the plugin path rather than bypassing it.
"""

from __future__ import annotations

import argparse

from pyagent.hookspecs import hookimpl


@hookimpl
def pyagent_add_cli_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Imported here, not at the top: every daemon loads this plugin, and the simulator's CLI pulls in
    # matplotlib and the simulator (about a second of each daemon's start), which only `pyagent simnet` uses.
    from pyagent_simnet import cli

    simnet = subparsers.add_parser("simnet", help="run deterministic network simulations (pyagent-simnet)")
    cli.add_commands(simnet.add_subparsers(dest="simnet_command", required=True), cli.DAEMON_PROG)

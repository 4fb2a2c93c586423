"""``pyagent hello``: print the hellos the running daemon has received, one peer per line."""

from __future__ import annotations

import argparse

from pyagent.hookspecs import CliContext

COLUMN_GAP = "  "


def run_hello(args: argparse.Namespace, ctx: CliContext) -> int:
    hellos = ctx.call("hello.list")
    if not hellos:
        print("no connected peer has said hello yet")
        return 0
    rows = [("PEER", "VERSION", "PLUGINS")]
    rows += [(h["peer"], h["version"], ",".join(h["plugins"]) or "-") for h in hellos]
    peer_width = max(len(row[0]) for row in rows)
    version_width = max(len(row[1]) for row in rows)
    for peer, version, plugins in rows:
        print(f"{peer:<{peer_width}}{COLUMN_GAP}{version:<{version_width}}{COLUMN_GAP}{plugins}")
    return 0

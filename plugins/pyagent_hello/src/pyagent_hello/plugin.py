"""The hook implementations that plug the hello protocol into a node, its control API and the CLI."""

from __future__ import annotations

import argparse
from typing import Any

import pyagent
from pyagent.hookspecs import ControlMethod, NodeHandle, hookimpl
from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext
from pyagent_hello.cli import run_hello
from pyagent_hello.component import Config, Hello, HelloProtocol, ListHellos


@hookimpl
def pyagent_add_components(ctx: NodeContext) -> list[Component]:
    config = Config.from_table(ctx.config(HelloProtocol.name))
    return [HelloProtocol(pyagent.__version__, ctx.plugin_names, config)]


@hookimpl
def pyagent_control_methods() -> dict[str, ControlMethod]:
    return {"hello.list": list_hellos}


@hookimpl
def pyagent_add_cli_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("hello", help="show what software the connected peers run")
    parser.set_defaults(run=run_hello)


async def list_hellos(node: NodeHandle, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``hello.list``: the latest hello of every connected peer, sorted by peer id."""
    if params:
        raise ValueError(f"hello.list takes no parameters, got {sorted(params)}")
    hellos = await node.request(ListHellos())
    assert isinstance(hellos, list) and all(isinstance(hello, Hello) for hello in hellos)
    # received_us is this node's monotonic clock, meaningless to anyone else, so it stays inside.
    return [{"peer": h.peer, "version": h.version, "plugins": list(h.plugins)} for h in hellos]

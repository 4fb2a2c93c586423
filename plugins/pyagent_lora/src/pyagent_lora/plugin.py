"""The hook implementations that plug LoRA averaging into a node, its control API and the CLI.

The protocol core is ``pyagent.proto.lora`` (sans-I/O, also run by simnet's ``lora`` kit); this plugin
builds it for the daemon and gives it its control methods and commands. The core and the methods pull in
numpy, the Rust codecs and prometheus_client, so they are imported inside the hooks that the daemon
calls: the CLI, which loads every plugin to build its parser, stays instant.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pyagent.hookspecs import ControlMethod, hookimpl
from pyagent_lora import cli

if TYPE_CHECKING:
    from pyagent.hookspecs import NodeHandle
    from pyagent.node.metrics import Metrics
    from pyagent.proto.component import Component
    from pyagent.proto.context import NodeContext


@hookimpl
def pyagent_add_components(ctx: NodeContext) -> list[Component]:
    from pyagent.proto import lora
    from pyagent.proto.membership import Membership

    members = ctx.built.get(Membership.name)
    if not isinstance(members, Membership) or ctx.identity is None:
        # Rounds are laid out from membership and deltas are signed with the node's key: a node built
        # without either (a bare test core, a simnet node without the membership kit) averages nothing.
        return []
    config = lora.Config.from_table(dict(ctx.config(lora.NAME)))
    rng = ctx.rng(lora.NAME)
    return [lora.LoraAveraging(ctx.local_peer, rng, config, members, ctx.identity, hooks=ctx.hooks)]


@hookimpl
def pyagent_control_methods() -> dict[str, ControlMethod]:
    from pyagent_lora import methods

    return methods.methods()


@hookimpl
def pyagent_add_cli_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cli.add_commands(subparsers)


@hookimpl
def pyagent_add_metrics(metrics: Metrics, node: NodeHandle) -> None:
    from pyagent_lora import telemetry

    telemetry.add_metrics(metrics)


@hookimpl
def pyagent_notice(node: NodeHandle, notice: object) -> None:
    from pyagent.proto.lora import RoundFinished
    from pyagent_lora import telemetry

    if isinstance(notice, RoundFinished):
        telemetry.record_round(node.metrics, notice)

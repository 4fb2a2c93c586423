"""``pyagent lora status|contribute|merged``: the mesh's LoRA averaging from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pyagent.hookspecs import CliContext

EXIT_OK = 0
DESCRIPTION = (
    "LoRA delta averaging across the mesh (docs/lora.md). A delta is a flat float32 array saved with "
    "numpy.save; each round merges the deltas of the peers that took part, weighted by sample count."
)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lora = subparsers.add_parser(
        "lora", help="LoRA delta averaging: status, contribute, merged", description=DESCRIPTION
    )
    commands = lora.add_subparsers(
        dest="lora_command", metavar="COMMAND", required=True, parser_class=type(lora)
    )
    status = commands.add_parser(
        "status", help="rounds, peers, bytes sent and received, codec and agreement", description=DESCRIPTION
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=run_status)
    contribute = commands.add_parser("contribute", help="put a delta (.npy) into a round")
    contribute.add_argument(
        "file", metavar="FILE", type=Path, help="a flat float32 array saved with numpy.save"
    )
    contribute.add_argument(
        "--weight", type=float, required=True, help="the delta's weight: its sample count"
    )
    contribute.add_argument("--round", type=int, help="the round to join (default: the open round)")
    contribute.set_defaults(run=run_contribute)
    merged = commands.add_parser("merged", help="wait for a round to end and print where its result is")
    merged.add_argument("round", metavar="ROUND", type=int)
    merged.set_defaults(run=run_merged)


def run_status(args: argparse.Namespace, ctx: CliContext) -> int:
    status: dict[str, Any] = ctx.call("lora.status")
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    width = max(len(key) for key in status)
    for key, value in status.items():
        print(f"{key.replace('_', ' '):<{width}}  {_show(value)}")
    return EXIT_OK


def run_contribute(args: argparse.Namespace, ctx: CliContext) -> int:
    params: dict[str, Any] = {"file": str(args.file.resolve()), "weight": args.weight}
    if args.round is not None:
        params["round"] = args.round
    result = ctx.call("lora.contribute", **params)
    print(f"contributed to round {result['round']}")
    return EXIT_OK


def run_merged(args: argparse.Namespace, ctx: CliContext) -> int:
    result = ctx.call("lora.merged", round=args.round)
    print(
        f"round {result['round']}: {len(result['peers'])} peer(s), weight {result['weight']:g}, "
        f"codec {result['codec']}, {result['bytes_sent']} B sent, {result['bytes_received']} B received"
    )
    print(result["file"])
    return EXIT_OK


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in sorted(value.items())) or "-"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "-"
    return "-" if value is None else str(value)

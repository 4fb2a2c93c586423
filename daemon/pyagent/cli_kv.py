"""``pyagent kv put|get|del|cas|scan`` and ``pyagent shards``: the sharded KV store from the command line.

Keys and values are given and shown as UTF-8 text (bytes that are not UTF-8 are shown escaped); a
program that needs raw bytes uses the control API or ``pyagent.client``. Any peer of the mesh answers:
the daemon forwards each request to the leader of its key's shard.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_FAILED = 0, 1

KV_DESCRIPTION = (
    "The mesh's sharded key-value store. Keys and values are UTF-8 text here; any peer answers, since "
    "the daemon forwards each request to the leader of its key's shard. `pyagent shards` shows them."
)
# Mirrors pyagent.cli._command's signature; passed in so that this module needs nothing from cli.
Register = Callable[..., argparse.ArgumentParser]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(encoded: str | None) -> str:
    return "" if encoded is None else base64.b64decode(encoded).decode(errors="backslashreplace")


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def cmd_put(args: argparse.Namespace, ctx: Any) -> int:
    ctx.call("kv.put", key=_b64(args.key), value=_b64(args.value))
    return EXIT_OK


def cmd_get(args: argparse.Namespace, ctx: Any) -> int:
    result = ctx.call("kv.get", key=_b64(args.key), stale=args.stale)
    if result["value"] is None:
        print(f"{args.key}: not found", file=sys.stderr)
        return EXIT_FAILED
    print(_text(result["value"]))
    return EXIT_OK


def cmd_del(args: argparse.Namespace, ctx: Any) -> int:
    result = ctx.call("kv.delete", key=_b64(args.key))
    print("deleted" if result["existed"] else f"{args.key}: not found (nothing to delete)")
    return EXIT_OK


def cmd_cas(args: argparse.Namespace, ctx: Any) -> int:
    expected = None if args.expect is None else _b64(args.expect)
    new = None if args.delete else _b64(args.value)
    result = ctx.call("kv.cas", key=_b64(args.key), expected=expected, new=new)
    if result["swapped"]:
        print("swapped")
        return EXIT_OK
    found = "absent" if result["before"] is None else repr(_text(result["before"]))
    print(f"not swapped: {args.key} is {found}")
    return EXIT_FAILED


def cmd_scan(args: argparse.Namespace, ctx: Any) -> int:
    result = ctx.call(
        "kv.scan", prefix=_b64(args.prefix), limit=args.limit, shard=args.shard, stale=args.stale
    )
    if args.json:
        _print_json([[_text(k), _text(v)] for k, v in result["pairs"]])
        return EXIT_OK
    for key, value in result["pairs"]:
        print(f"{_text(key)}\t{_text(value)}")
    return EXIT_OK


def cmd_shards(args: argparse.Namespace, ctx: Any) -> int:
    shards: list[dict[str, Any]] = ctx.call("kv.shards")
    if args.json:
        _print_json(shards)
        return EXIT_OK
    if not shards:
        print("this node holds no shard replica yet (it gets them when a shard's leader adds it)")
        return EXIT_OK
    rows = [
        [
            str(s["shard"]),
            # A quiet group is idle and sends nothing until a request or membership news wakes it.
            f"{s['role']} (quiet)" if s["quiet"] else s["role"],
            _short(s["leader"]),
            str(s["term"]),
            str(s["commit"]),
            str(s["applied"]),
            ",".join(_short(p) for p in s["voters"])
            + "".join(f",{_short(p)}(learner)" for p in s["learners"]),
            str(s["lag"]),
            s["warning"],
        ]
        for s in shards
    ]
    header = ["SHARD", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED", "REPLICAS", "LAG", "WARNING"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    under = [s for s in shards if s["warning"]]
    if under:
        print(
            f"warning: {len(under)} shard(s) have fewer replicas than [kv] replicas; "
            "start more peers, and their leaders add them"
        )
    return EXIT_OK


def _short(peer: str | None) -> str:
    if not peer:
        return "-"
    return peer if len(peer) <= 12 else f"…{peer[-8:]}"


def register(sub: Any, command: Register, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add the commands to ``sub`` through ``command`` (``pyagent.cli._command``)."""
    kv = sub.add_parser(
        "kv", help="the sharded key-value store (put, get, del, cas, scan)", description=KV_DESCRIPTION
    ).add_subparsers(dest="kv_command", metavar="COMMAND", required=True, parser_class=parser_class)
    p = command(kv, "put", "set KEY to VALUE", cmd_put)
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")
    p = command(kv, "get", "print KEY's value (exit 1 when it is absent)", cmd_get)
    p.add_argument("key", metavar="KEY")
    p.add_argument("--stale", action="store_true", help="read a local replica without asking the leader")
    p = command(kv, "del", "delete KEY", cmd_del)
    p.add_argument("key", metavar="KEY")
    p = command(kv, "cas", "set KEY to VALUE only if it holds --expect (exit 1 when it does not)", cmd_cas)
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE", nargs="?", default="")
    p.add_argument("--expect", metavar="OLD", help="the value KEY must hold (omit: KEY must be absent)")
    p.add_argument("--delete", action="store_true", help="delete KEY instead of setting it")
    p = command(kv, "scan", "list keys starting with PREFIX in one shard", cmd_scan, json_output=True)
    p.add_argument("prefix", metavar="PREFIX", help="scanned in the shard its {hash tag} picks")
    p.add_argument("--shard", type=int, help="scan this shard instead")
    p.add_argument("--limit", type=int, default=1000, help="at most this many pairs (default 1000)")
    p.add_argument("--stale", action="store_true", help="read a local replica without asking the leader")
    command(
        sub,
        "shards",
        "the shards this node holds: role (quiet: idle), leader, term, commit/applied index, replicas, lag",
        cmd_shards,
        json_output=True,
    )

"""The ``pyagent`` command line.

Exit codes: 0 success; 1 the operation failed (no daemon running, a dial or ping failed); 2 the user's
input or configuration is wrong. Errors are one line on stderr, never a traceback.

The CLI starts fast: a built-in command imports no plugin (nor libp2p, numpy or matplotlib); plugins
are loaded only for ``pyagent plugins``, the top-level help and the plugins' own commands. A plugin that
fails to load is one warning line and is skipped; every other command still works.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from pyagent import __version__, cli_kv
from pyagent.config import CONFIG_FILE, DEFAULT_METRICS_LISTEN, IDENTITY_FILE, resolve_home
from pyagent.controlclient import ControlClient, ControlError, DaemonNotRunning
from pyagent.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# The control API's error codes for a request whose input is wrong, for a peer out of reach, and for one
# that does not speak the protocol (pyagent.node.control's; not imported from there, which imports trio).
INVALID, UNREACHABLE, UNSUPPORTED = "invalid", "unreachable", "unsupported"

Runner = Callable[[argparse.Namespace, "CliContext"], int]
_Leaf = TypeVar("_Leaf", bound=BaseException)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says where to find help."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class CliContext:
    """What a command (built-in or a plugin's) gets besides its arguments (``hookspecs.CliContext``)."""

    def __init__(self, home: Path, no_plugins: bool = False) -> None:
        self.home = home
        # `--no-plugins`: load no plugin at all (the daemon included).
        self.no_plugins = no_plugins
        self._client: ControlClient | None = None

    def call(self, method: str, **params: Any) -> Any:
        if self._client is None:
            self._client = ControlClient(self.home)
        return self._client.call(method, **params)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def format_rtt(rtt_us: int | None) -> str:
    return "-" if rtt_us is None else f"{rtt_us / 1000:.2f} ms"


_ANNOUNCE_HELP = "address peers should dial, e.g. a port forward's /ip4/203.0.113.7/tcp/4001 (repeatable)"


# ---- commands ---------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, ctx: CliContext) -> int:
    from pyagent import config, identity

    home = ctx.home
    key_path = home / IDENTITY_FILE
    if key_path.exists():
        raise ConfigError(f"{home} is already initialized (identity at {key_path})")
    # Everything written is checked first, so that a bad value fails here rather than at `pyagent daemon`.
    for addr in args.listen or []:
        config.check_listen_addr(addr, "--listen")
    for addr in args.announce or []:
        config.check_announce_addr(addr, "--announce")
    if args.swarm_key:
        from pyagent.node import pnet

        pnet.load_swarm_key(home / args.swarm_key)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_pair = identity.create(key_path)
    config_path = home / CONFIG_FILE
    if not config_path.exists():
        config_path.write_text(
            config.render(args.listen or [config.DEFAULT_LISTEN], args.swarm_key or "", args.announce or [])
        )
    print(f"initialized {home}")
    print(f"peer id: {identity.peer_id_of(key_pair)}")
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace, ctx: CliContext) -> int:
    import trio

    from pyagent import bootstraplist, config, logs, pluginhost
    from pyagent._core import RaftFatalError
    from pyagent.node import daemon

    cfg = config.load(ctx.home)
    for addr in args.listen or []:
        config.check_listen_addr(addr, "--listen")
    for addr in args.bootstrap or []:
        bootstraplist.check_multiaddr(addr, "--bootstrap")
    for addr in args.announce or []:
        config.check_announce_addr(addr, "--announce")
    if args.announce:
        cfg.node.announce = list(args.announce)
    if args.metrics is not None:
        config.parse_metrics_listen(args.metrics, "--metrics")
        cfg.metrics.listen = args.metrics
    if args.listen:
        cfg.node.listen = list(args.listen)
    cfg.node.bootstrap += args.bootstrap or []
    if ctx.no_plugins:
        cfg.plugins.disabled = sorted(pluginhost.installed_plugin_names())
    if args.bootstrap_file:
        cfg.node.bootstrap_file = str(Path(args.bootstrap_file).resolve())
    logs.configure(args.log_level or cfg.log.level, cfg.log.format)
    try:
        trio.run(daemon.run, ctx.home, cfg)
    except BaseExceptionGroup as group:
        fatal, _ = group.split(RaftFatalError)
        if fatal is not None:
            # raft-rs panicked: this node's Raft state in memory cannot be trusted, its disk can.
            why = _first_leaf(fatal)
            print(
                f"pyagent: fatal: the Raft driver failed ({why}); the daemon stopped. Its disk is intact: "
                "start it again; if it fails the same way, report it with daemon.log",
                file=sys.stderr,
            )
            return EXIT_FAILED
        # A ConfigError raised inside the daemon's nurseries arrives wrapped; the operator needs only it.
        config_errors, others = group.split(ConfigError)
        if config_errors is None or others is not None:
            raise
        raise _first_leaf(config_errors) from None
    return EXIT_OK


def _first_leaf(group: BaseExceptionGroup[_Leaf]) -> _Leaf:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def cmd_id(args: argparse.Namespace, ctx: CliContext) -> int:
    try:
        info = ctx.call("id")
    except DaemonNotRunning:
        # As `ipfs id` offline: what the identity file and the config say this node would announce.
        info = _offline_id(ctx.home)
    if args.json:
        _print_json(info)
        return EXIT_OK
    print(f"peer id: {info['peer_id']}")
    print(f"agent:   {info['agent_version']}")
    if not info["running"]:
        print("daemon:  not running (addresses from the config)")
    for addr in info["addrs"]:
        print(f"addr:    {addr}")
    if info.get("metrics_url"):
        print(f"metrics: {info['metrics_url']}")
    return EXIT_OK


def _offline_id(home: Path) -> dict[str, Any]:
    key_path = home / IDENTITY_FILE
    if not key_path.exists():
        raise ConfigError(f"{home} has no identity and no daemon runs there; create one with `pyagent init`")
    from pyagent import config, identity
    from pyagent.node.interfaces import announced_addrs
    from pyagent.proto.addresses import NoAnnounce

    peer_id = identity.peer_id_from_file(key_path)
    cfg = config.load(home)
    no_announce = NoAnnounce.parse(cfg.node.no_announce)
    addrs = announced_addrs(cfg.node.listen, cfg.node.announce, no_announce)
    return {
        "peer_id": peer_id,
        "addrs": [f"{addr}/p2p/{peer_id}" for addr in addrs],
        "listen_addrs": [f"{addr}/p2p/{peer_id}" for addr in cfg.node.listen],
        "running": False,
        "agent_version": f"pyagent/{__version__}",
        "protocols": [],
        "metrics_url": None,
    }


def cmd_peers(args: argparse.Namespace, ctx: CliContext) -> int:
    peers = ctx.call("peers")
    if args.json:
        _print_json(peers)
        return EXIT_OK
    if not peers:
        print("no peers connected")
        return EXIT_OK
    rows = [
        [p["peer"], ",".join(p["addrs"][:1]) or "-", format_rtt(p["rtt_us"]), p["agent_version"] or "-"]
        for p in peers
    ]
    print(_table(rows, ["PEER", "ADDRESS", "RTT", "AGENT"]))
    return EXIT_OK


def cmd_members(args: argparse.Namespace, ctx: CliContext) -> int:
    members = ctx.call("members")
    # On stderr, so that the JSON on stdout stays what scripts parse.
    warning = ctx.call("isolation")["warning"]
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        _print_json(members)
        return EXIT_OK
    rows = [
        [
            m["peer"],
            (m["addrs"] or ["-"])[0].split("/p2p/")[0],
            m["state"],
            str(m["incarnation"]),
            f"{m['state_age_s']:.0f}s ago",
            ",".join(m["hardware_tags"]) or "-",
            f"{m['load']:.2f}",
        ]
        for m in members
    ]
    print(_table(rows, ["PEER", "ADDRESS", "STATE", "INC", "LAST CHANGE", "TAGS", "LOAD"]))
    return EXIT_OK


def cmd_leave(args: argparse.Namespace, ctx: CliContext) -> int:
    result = ctx.call("leave")
    print(f"{result['peer_id']} left the mesh; the daemon is stopping")
    return EXIT_OK


def _check_peer_multiaddr(addr: str) -> None:
    # Only the shape: the daemon checks the rest (peer id, protocols) and answers with the same one line.
    if not addr.startswith("/") or "/p2p/" not in addr:
        raise ConfigError(
            f"'{addr}' is not a multiaddr with a peer id, e.g. /ip4/1.2.3.4/tcp/4001/p2p/12D3..."
        )


def cmd_connect(args: argparse.Namespace, ctx: CliContext) -> int:
    _check_peer_multiaddr(args.addr)
    result = ctx.call("connect", addr=args.addr)
    print(f"connected to {result['peer_id']}")
    return EXIT_OK


def cmd_join(args: argparse.Namespace, ctx: CliContext) -> int:
    for addr in args.addrs:
        _check_peer_multiaddr(addr)
    result = ctx.call("join", addrs=args.addrs)
    print(f"joined through {result['seed']}; {result['members']} members alive (this node included)")
    return EXIT_OK


def cmd_ping(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.count < 1:
        raise ConfigError("--count must be at least 1")
    rtts_us: list[int] = []
    for index in range(args.count):
        if index:
            time.sleep(args.interval)
        try:
            result = ctx.call("ping", peer=args.peer)
        except ControlError as exc:
            if exc.code in (INVALID, UNREACHABLE, UNSUPPORTED):
                raise  # asking again would fail the same way: one line, once
            print(f"ping failed: {exc}", file=sys.stderr)
            continue
        rtts_us.append(result["rtt_us"])
        print(f"pong from {result['peer_id']} over {result['protocol']}: rtt {format_rtt(result['rtt_us'])}")
    print(ping_summary(args.count, rtts_us))
    return EXIT_OK if rtts_us else EXIT_FAILED


def ping_summary(sent: int, rtts_us: list[int]) -> str:
    """The closing line, as `ipfs ping` and ping(8) end: loss, then min/avg/max of the answered pings."""
    lost = sent - len(rtts_us)
    line = f"{sent} pings, {len(rtts_us)} pongs, {100 * lost // sent}% lost"
    if not rtts_us:
        return line
    low, mean, high = min(rtts_us), sum(rtts_us) / len(rtts_us), max(rtts_us)
    return f"{line}; rtt min/avg/max = {low / 1000:.2f}/{mean / 1000:.2f}/{high / 1000:.2f} ms"


def cmd_stats(args: argparse.Namespace, ctx: CliContext) -> int:
    stats = ctx.call("stats")
    if args.json:
        _print_json(stats)
        return EXIT_OK
    shown = sorted(stats.items()) if args.all else [(k, v) for k, v in sorted(stats.items()) if v]
    print(_table([[name, format_stat(value)] for name, value in shown], ["METRIC", "VALUE"]))
    hidden = len(stats) - len(shown)
    if hidden:
        print(f"({hidden} zero values not shown; --all shows them)")
    return EXIT_OK


def format_stat(value: float) -> str:
    if isinstance(value, int) or abs(value) >= 1e4:
        return f"{value:.0f}"
    return f"{value:.6g}"


def cmd_plugins(args: argparse.Namespace, ctx: CliContext) -> int:
    from dataclasses import asdict

    from pyagent import pluginhost

    infos = [asdict(info) for info in pluginhost.describe_plugins(load_cli_plugins(ctx, warn=False))]
    if args.json:
        _print_json(infos)
        return EXIT_OK
    rows = [
        [
            i["name"],
            i["status"],
            f"{i['distribution']} {i['version']}",
            i["error"] if i["status"] == "failed" else ", ".join(i["hooks"]) or "-",
        ]
        for i in infos
    ]
    print(_table(rows, ["PLUGIN", "STATUS", "DISTRIBUTION", "HOOKS / ERROR"]))
    return EXIT_OK


def load_cli_plugins(ctx: CliContext, *, warn: bool = True) -> Any:
    """The plugins as the CLI loads them: without the disabled ones (``[plugins] disabled`` of the home's
    config, ``$PYAGENT_PLUGINS_DISABLED``, or every plugin with ``--no-plugins``), each one that fails
    to load reported in one warning line (unless not ``warn``) and skipped."""
    from pyagent import config, pluginhost

    if ctx.no_plugins:
        disabled = sorted(pluginhost.installed_plugin_names())
    else:
        try:
            disabled = config.load(ctx.home).plugins.disabled
        except ConfigError:
            disabled = []  # a broken config is reported by the commands that use it, not here
        disabled = [*disabled, *pluginhost.disabled_from_env()]
    plugins = pluginhost.load_plugins(disabled, strict_disabled=False)
    if warn:
        for failure in plugins.failures:
            print(f"pyagent: warning: {failure}", file=sys.stderr)
    return plugins


def cmd_mesh_new_private(args: argparse.Namespace, ctx: CliContext) -> int:
    from pyagent import secretfile
    from pyagent.node import pnet

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(
            f"{out} already exists; pass --force to replace it (peers using it will be cut off)"
        )
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: directory {out.parent} does not exist; create it first")
    try:
        secretfile.write(out, pnet.generate_swarm_key().encode(), replace=True)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}; choose another --out") from None
    print(f"wrote {out}; copy it to every peer of the mesh and set [mesh] swarm_key_file")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, ctx: CliContext) -> int:
    from pyagent import demo

    if args.peers < 2:
        raise ConfigError("--peers must be at least 2")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration must be positive")
    return demo.main(args.peers, args.duration)


# ---- parser -----------------------------------------------------------------------------------------


def _command(sub: Any, name: str, help_text: str, run: Runner, *, json_output: bool = False) -> OneLineParser:
    parser: OneLineParser = sub.add_parser(name, help=help_text, description=help_text)
    if json_output:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run)
    return parser


HOME_HELP = "node directory (default: $PYAGENT_HOME or the per-user data dir)"
NO_PLUGINS_HELP = "load no plugin (also PYAGENT_PLUGINS_DISABLED=a,b, or [plugins] disabled in config.toml)"


def _add_global_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--home`` and ``--no-plugins``, accepted before and after the subcommand. Below the top, their
    default is SUPPRESS, so that a subcommand's parser never overwrites a value given before it."""
    if "--home" not in parser._option_string_actions:
        parser.add_argument("--home", help=HOME_HELP, **({} if top else {"default": argparse.SUPPRESS}))
    if "--no-plugins" not in parser._option_string_actions:
        parser.add_argument(
            "--no-plugins",
            action="store_true",
            help=NO_PLUGINS_HELP,
            **({} if top else {"default": argparse.SUPPRESS}),
        )


def _add_global_flags_below(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_global_flags(child, top=False)
                _add_global_flags_below(child)


def _pre_parse(argv: Sequence[str]) -> tuple[argparse.Namespace, str | None]:
    """The global flags and the command's name, read without building the whole parser (which would
    import the plugins): a built-in command then needs no plugin at all."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--home")
    pre.add_argument("--no-plugins", action="store_true")
    known, rest = pre.parse_known_args(argv)
    command = next((word for word in rest if not word.startswith("-")), None)
    return known, command


def _plugins_epilog() -> str:
    """The installed plugins, named from their entry points without importing them (which could be slow,
    or fail): the top-level help must be instant whatever is installed."""
    import importlib.metadata

    names = sorted({ep.name for ep in importlib.metadata.entry_points(group="pyagent")})
    if not names:
        return ""
    return (
        f"installed plugins: {', '.join(names)}. A plugin's commands are named after it; "
        "`pyagent COMMAND --help` explains each, `pyagent plugins` shows whether each plugin loads."
    )


def build_parser(plugins: Any = None, epilog: str | None = None) -> OneLineParser:
    parser = OneLineParser(
        prog="pyagent",
        description="PyAgent peer daemon and its tools. Start with `pyagent init`, then `pyagent daemon`.",
        epilog=epilog,
    )
    parser.add_argument("--version", action="version", version=f"pyagent {__version__}")
    _add_global_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    p = _command(sub, "init", "create an identity and a config in the home directory", cmd_init)
    p.add_argument("--listen", action="append", metavar="MULTIADDR", help="listen address (repeatable)")
    p.add_argument("--swarm-key", metavar="FILE", help="join the private mesh of this swarm.key")
    p.add_argument("--announce", action="append", metavar="MULTIADDR", help=_ANNOUNCE_HELP)

    p = _command(sub, "daemon", "run the peer in the foreground (Ctrl-C or SIGTERM stops it)", cmd_daemon)
    p.add_argument("--listen", action="append", metavar="MULTIADDR", help="override [node] listen")
    p.add_argument(
        "--announce",
        action="append",
        metavar="MULTIADDR",
        help=f"{_ANNOUNCE_HELP}; overrides [node] announce",
    )
    p.add_argument(
        "--bootstrap", action="append", metavar="MULTIADDR", help="peer to join at start (repeatable)"
    )
    p.add_argument("--bootstrap-file", metavar="FILE", help="bootstrap list file (see bootstrap/example.txt)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--metrics",
        nargs="?",
        const=DEFAULT_METRICS_LISTEN,
        metavar="HOST:PORT",
        help=f"serve Prometheus metrics at http://HOST:PORT/metrics (default {DEFAULT_METRICS_LISTEN}; "
        "overrides [metrics] listen)",
    )

    _command(sub, "id", "show this node's peer id and addresses", cmd_id, json_output=True)
    _command(sub, "peers", "list connected peers with their round-trip times", cmd_peers, json_output=True)

    _command(
        sub,
        "members",
        "the mesh as this node sees it: state, incarnation, tags, load",
        cmd_members,
        json_output=True,
    )
    _command(sub, "leave", "leave the mesh gracefully (others see 'left', not 'dead') and stop", cmd_leave)

    p = _command(sub, "connect", "connect to a peer by multiaddr (ending in /p2p/<peer id>)", cmd_connect)
    p.add_argument("addr", metavar="MULTIADDR")

    p = _command(
        sub,
        "join",
        "join the mesh of these members now; if this node is in another mesh, the two merge",
        cmd_join,
    )
    p.add_argument(
        "addrs", nargs="+", metavar="MULTIADDR", help="any member's multiaddr (ending in /p2p/...)"
    )

    p = _command(sub, "ping", "measure round-trip time to a peer (peer id or multiaddr)", cmd_ping)
    p.add_argument("peer", metavar="PEER")
    p.add_argument("-n", "-c", "--count", type=int, default=3, help="number of pings (default 3)")
    p.add_argument("-i", "--interval", type=float, default=0.5, help="seconds between pings (default 0.5)")

    p = _command(
        sub,
        "stats",
        "the daemon's metrics, as /metrics serves them: frames, bytes, errors, members, latency",
        cmd_stats,
        json_output=True,
    )
    p.add_argument("--all", action="store_true", help="show zero values too")
    _command(sub, "plugins", "list installed plugins and their hooks", cmd_plugins, json_output=True)
    cli_kv.register(sub, _command, OneLineParser)

    mesh = sub.add_parser("mesh", help="manage meshes").add_subparsers(
        dest="mesh_command", metavar="COMMAND", parser_class=OneLineParser, required=True
    )
    p = _command(mesh, "new-private", "write a new libp2p swarm.key for a private mesh", cmd_mesh_new_private)
    p.add_argument("--out", default="swarm.key", help="where to write it (default ./swarm.key)")
    p.add_argument("--force", action="store_true", help="replace an existing file")

    p = _command(sub, "demo", "start a local mesh of daemons on 127.0.0.1 and show it working", cmd_demo)
    p.add_argument("--peers", type=int, default=3, help="number of daemons (default 3)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")

    if plugins is not None:
        plugins.hook.pyagent_add_cli_commands(subparsers=sub)
    _add_global_flags_below(parser)
    return parser


def builtin_commands() -> frozenset[str]:
    """The names of the built-in commands (those that need no plugin to be parsed or run)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return frozenset(sub.choices)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        known, command = _pre_parse(argv)
        if command is None:
            # The top-level help: the plugins' names come from their metadata, without importing them.
            parser = build_parser(epilog=_plugins_epilog())
        elif command in builtin_commands():
            parser = build_parser()
        else:
            # A plugin's command (or a mistyped one): the plugins are needed to know it.
            pre_ctx = CliContext(resolve_home(known.home), known.no_plugins)
            parser = build_parser(load_cli_plugins(pre_ctx))
        args = parser.parse_args(argv)
        if not hasattr(args, "run"):
            parser.print_help()
            return EXIT_USAGE
        return int(args.run(args, CliContext(resolve_home(args.home), args.no_plugins)))
    except ConfigError as exc:
        print(f"pyagent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DaemonNotRunning as exc:
        print(f"pyagent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ControlError as exc:
        if exc.code == INVALID:
            print(f"pyagent: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"pyagent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

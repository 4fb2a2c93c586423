"""The plugin contract: every hook a PyAgent plugin may implement, and the types those hooks receive.

This module is the whole contract. Each hook's docstring says when it runs, what it receives, what it may
return and whether it is ``firstresult``.

Hooks are named ``pyagent_<phase>_<what>``, or ``pyagent_<phase>`` when the phase says it all. The
phases, in the order a daemon meets them: ``add`` (the node and the CLI are being built), ``control``
(the control API is being built), ``startup``, ``peer`` (connections come and go), ``kv`` (the sharded
KV store proposes and applies writes), ``lora`` (LoRA averaging sends a delta), ``notice`` (the core
reports a state change) and ``shutdown``.

Hooks are plain synchronous functions, and the daemon and simnet call every one of them through pluggy
(``pm.hook.<name>(...)``), so ``wrapper=True`` (and old-style ``hookwrapper=True``) implementations and
``tryfirst``/``trylast`` work on every hook. Without ``tryfirst``/``trylast``, plugins are called in the
order of their names. The hooks that shape protocol behaviour (``pyagent_add_components``,
``pyagent_kv_*``) must be deterministic and do no I/O, because the simulator calls them too. A plugin
that needs I/O starts its own tasks from ``pyagent_startup``, in the nursery it is given.

A plugin is a module (or object) whose hook functions carry ``@hookimpl``, registered under the
entry-point group ``pyagent``; ``docs/plugins.md`` walks through one.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import pluggy

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import trio

    from pyagent.node.metrics import Metrics
    from pyagent.proto.component import Component
    from pyagent.proto.context import NodeContext
    from pyagent.proto.kv.ops import Write as KvWrite
    from pyagent.proto.peers import PeerInfo

PROJECT_NAME = "pyagent"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class NodeHandle(Protocol):
    """What a running daemon lends to plugins. The daemon implements it; plugins only call it."""

    @property
    def peer_id(self) -> str:
        """This node's libp2p peer id (base58)."""

    @property
    def home(self) -> pathlib.Path:
        """This node's home directory, where a plugin may keep its own files (under ``home/<plugin>``)."""

    def peers(self) -> list[PeerInfo]:
        """The peers connected now, sorted by peer id."""

    async def request(self, command: object, timeout_s: float = 30.0) -> object:
        """Run a local command through ``NodeCore`` and return its reply value, waiting at most
        ``timeout_s`` (then the component is told with ``RequestCancelled``).

        ``command`` must be an instance of a type some component lists in ``command_types``. Raises
        ``pyagent.errors.LocalProtocolError`` when no component handles it. When the component answers
        with ``Reply.fail(...)``, or not in time, raises an exception (the daemon's ``RequestFailed``)
        whose message is the error's message and whose ``error`` attribute is the
        ``pyagent.proto.ready.ReplyError``: a stable ``code`` (``"timeout"`` and ``"busy"`` come from the
        daemon itself), the ``message`` and a ``data`` dict.
        """

    def send(self, peer: str, protocol_id: str, message: dict[str, Any]) -> None:
        """Queue ``message`` (wire map with ``v`` and ``t``) to ``peer`` on ``protocol_id``; never blocks."""

    @property
    def metrics(self) -> Metrics:
        """The daemon's metrics registry, the one ``pyagent_add_metrics`` receives: ask it for an
        instrument by name from any hook or task (``node.metrics.counter("greet_sent", ...)``)."""


class CliContext(Protocol):
    """What a CLI subcommand receives next to its parsed arguments."""

    @property
    def home(self) -> pathlib.Path:
        """The home directory the command acts on (``--home`` or the default)."""

    def call(self, method: str, **params: Any) -> Any:
        """Call ``method`` on the running daemon's control API and return its JSON result.

        Raises a ``pyagent.errors.PyAgentError`` whose message tells the user what to do when no daemon
        runs under ``home`` or the method fails.
        """


ControlMethod: TypeAlias = Callable[[NodeHandle, dict[str, Any]], Awaitable[Any]]
"""A control-API method: called with the node and the request's params, returns a JSON-serializable value."""

CliRun: TypeAlias = Callable[[argparse.Namespace, CliContext], int]
"""What a subcommand sets as ``run``: takes the parsed arguments and the context, returns the exit code."""


@hookspec
def pyagent_add_components(ctx: NodeContext) -> list[Component]:
    """Return the sans-I/O protocol components this plugin adds to ``NodeCore``.

    Runs once per node, when its ``NodeCore`` is built: in the daemon before the host listens, and in the
    simulator once per simulated peer. ``ctx`` (``pyagent.proto.context.NodeContext``) gives, for a
    component name: ``ctx.config(name)``, the ``[name]`` table of the node's config; ``ctx.rng(name)``,
    the component's own seeded generator (the only randomness it may use); ``ctx.storage(name)``, reads
    of its own storage namespace; and ``ctx.sibling(name)``, another component of the node. Also
    ``ctx.local_peer`` and ``ctx.plugin_names`` (the sorted names of every loaded plugin).

    Must be deterministic and must do no I/O: read no clock, no files, no environment. Return a list
    (possibly empty) of new ``pyagent.proto.component.Component`` instances. A component's ``name``
    must match ``[a-z][a-z0-9_]{0,31}`` (it names its config table, timers and storage namespace), and
    its name, protocol id and command types must not clash with any other component's, the core's
    included: a clash stops the build with a ``ConfigError`` naming both owners. Raise
    ``pyagent.errors.ConfigError`` (one line, naming ``[<name>]`` and the key) for a bad config table.

    Not firstresult: every plugin's list is collected (``pyagent.pluginhost.collect_components``), in
    the order pluggy calls the plugins. Synchronous.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def pyagent_kv_propose(shard: int, write: KvWrite) -> KvWrite | None:
    """Veto or transform a write before the leader of its shard proposes it (tenancy, quotas, schemas).

    Runs in the core, on the leader of ``shard``, once per write (``Put``, ``Delete`` or ``Cas`` from
    ``pyagent.proto.kv.ops``; keep its ``session`` when you build a replacement, or retries stop being
    exactly-once). Return a replacement write, or None to leave it as it is; raise ``ValueError`` to refuse
    it: the client gets your message with the error code ``refused``. The simulator calls it too, so it
    must be deterministic and do no I/O.

    Returns a write or None. firstresult: the first plugin that returns a write decides. Synchronous.
    """
    raise NotImplementedError


@hookspec
def pyagent_kv_committed(shard: int, index: int, writes: list[KvWrite]) -> None:
    """Observe the writes a shard just applied (a semantic cache invalidates its entries here).

    Runs in the core, on every node that holds a replica of ``shard``, after the shard applied committed
    entries up to log ``index``, with the writes among them in log order (a ``Cas`` whose comparison
    failed is listed too: check the value). Every replica sees the same writes in the same order. The
    simulator calls it too, so it must be deterministic, do no I/O and not block; hand slow work to a task
    started in ``pyagent_startup``.

    Returns nothing. Not firstresult: every plugin is told. Synchronous.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def pyagent_lora_transform_delta(
    round: int, delta: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32] | None:
    """Transform this peer's own LoRA delta before it is encoded and sent (differential privacy: clip its
    norm and add noise; or drop coordinates a plugin must keep private).

    Runs in the core (``pyagent.proto.lora``), once per round on the peer that contributes ``delta`` (a
    1-D float32 array; do not modify it in place), before compression and error feedback. Return a
    replacement of the same shape, or None to leave it as it is; a replacement of another shape fails the
    contribution with the error code ``invalid``. The simulator calls it too, so it must be deterministic
    (draw noise from a generator seeded by ``round`` and your own secret seed) and do no I/O.

    Returns an array or None. firstresult: the first plugin that returns an array decides. Synchronous.
    """
    raise NotImplementedError


@hookspec
def pyagent_add_metadata() -> dict[str, str | int | float | bool]:
    """Return extra keys for this node's membership metadata, which every member of the mesh sees.

    Runs once per daemon start, after the host listens and before the node joins the mesh. Keys should be
    namespaced ``"<plugin>.<key>"``; values are str, int, float or bool. The whole of a node's metadata is
    bounded (``membership.Config.metadata_bytes_max``), so keep it to a few short values; a node whose
    metadata is too large fails to start with an error naming the bound.

    Not firstresult: every plugin's keys are merged (``pyagent.pluginhost.collect_metadata``); two plugins
    returning the same key is an error. Synchronous.
    """
    raise NotImplementedError


@hookspec
def pyagent_add_metrics(metrics: Metrics, node: NodeHandle) -> None:
    """Add this plugin's Prometheus metrics to the daemon's registry.

    Runs once per daemon start, after the host listens and before the control API and ``/metrics``
    serve, so what is added here shows in the first scrape and in ``pyagent stats`` (as zeros until
    counted). ``metrics`` (``pyagent.node.metrics.Metrics``) is the daemon's one registry:
    ``metrics.counter(name, documentation, labels=())``, ``metrics.gauge(...)`` and
    ``metrics.histogram(..., buckets=...)`` return ``prometheus_client`` instruments, created on first
    use and the same object when asked again; ``metrics.register(collector)`` adds a custom collector
    whose ``collect()`` reads values at scrape time; ``metrics.registry`` is the ``CollectorRegistry``.
    Names get the ``pyagent_`` prefix; name yours ``<plugin>_<what>[_<unit>]``. A name already taken
    with another kind or labels raises ``pyagent.errors.ConfigError``, which stops the daemon.

    Keep the instruments (on your plugin object) and update them from your other hooks and tasks
    (``pyagent_notice``, a task started in ``pyagent_startup``), always in the daemon's trio thread.
    A component's own ``counters`` mapping, if it has one, is exported without this hook
    (``pyagent_<component>_<key>_total``). Never called by the simulator.

    Returns nothing. Not firstresult: every plugin adds its metrics. Synchronous.
    """
    raise NotImplementedError


@hookspec
def pyagent_add_cli_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add subcommands to the ``pyagent`` command line.

    Runs once when the CLI builds its parser, before any argument is parsed and whether or not a daemon
    runs. Call ``subparsers.add_parser(name, help=...)`` and give each parser ``set_defaults(run=fn)``,
    where ``fn(args: argparse.Namespace, ctx: CliContext) -> int`` returns the exit code (a ``CliRun``).
    Talk to the daemon only inside ``fn``, through ``ctx.call``.

    Returns nothing. Not firstresult: every plugin adds its commands. Synchronous.
    """
    raise NotImplementedError


@hookspec
def pyagent_control_methods() -> dict[str, ControlMethod]:
    """Return extra control-API methods, by name.

    Runs once at daemon startup, before the control API accepts connections. Name each method
    ``"<plugin>.<method>"`` with your plugin's name (lowercase letters, digits and ``_`` on both sides of
    the dot), so that names cannot clash with the core's or another plugin's; a clash stops the daemon
    with a ``ConfigError``. Each value is an ``async def method(node: NodeHandle, params: dict) -> Any``
    whose result must be JSON-serializable; raise ``ValueError`` for bad params.

    Not firstresult: every plugin's methods are merged (``pyagent.pluginhost.control_methods``).
    Synchronous; the methods it returns are async and run in the daemon's trio loop.
    """
    raise NotImplementedError


@hookspec
def pyagent_startup(node: NodeHandle, nursery: trio.Nursery) -> None:
    """The daemon is up: its host listens and its control API serves.

    Runs once per daemon, in the trio loop, before it dials its bootstrap peers (inbound peers may
    already be connecting). A plugin that needs I/O (files, sockets, its own timers) starts its tasks
    here with ``nursery.start_soon``; they are cancelled at shutdown, and an exception escaping one of
    them stops the daemon. Do not block here: start a task. Never called by the simulator.

    Returns nothing. Not firstresult: every plugin is told. Synchronous.
    """
    raise NotImplementedError


@hookspec
def pyagent_notice(node: NodeHandle, notice: object) -> None:
    """The core reported a state change: one item of a ``Ready``'s ``notices``.

    Runs in the daemon, in the task that owns ``NodeCore``, once for every item of ``Ready.notices``, in
    order, after the Ready's other immediate effects: its writes are handed to storage and its
    ``send_before_persist`` sends and timers carried out (its ``send``, ``apply`` and ``transfers`` may
    still wait for those writes to be durable). ``notice`` is whatever the component put there, for
    example ``pyagent.proto.membership.MemberChanged`` (peer, old_state, new_state, incarnation, at_us);
    check its type and ignore the ones you do not know.

    A notification for I/O-side bookkeeping (metrics, logs, a task's queue). The core never sees what it
    does, so the hooks the core calls (``pyagent_add_components``) stay deterministic. Must not block:
    every other event of the node waits while it runs; hand slow work to a task. Never called by the
    simulator, which delivers notices to its observers instead (``pyagent_simnet.observe.Observer``).

    Returns nothing. Not firstresult: every plugin is told. Synchronous.
    """
    raise NotImplementedError


@hookspec
def pyagent_shutdown(node: NodeHandle) -> None:
    """The daemon has been asked to stop.

    Runs once per daemon, before its host and control API close and before the tasks started from
    ``pyagent_startup`` are cancelled. Flush what must survive a restart; do not block. Never called by
    the simulator.

    Returns nothing. Not firstresult: every plugin is told. Synchronous.
    """
    raise NotImplementedError


@hookspec
def pyagent_peer_connected(node: NodeHandle, peer: PeerInfo) -> None:
    """A peer has connected and identified itself.

    Runs in the daemon after ``NodeCore`` has seen the ``PeerConnected`` event, so ``node.peers()``
    already lists ``peer``. A notification for I/O-side bookkeeping (a component sees the same event
    deterministically through ``on_peer_connected``). Must not block: hand slow work to a task.

    Returns nothing. Not firstresult: every plugin is told. Synchronous.
    """
    raise NotImplementedError


@hookspec
def pyagent_peer_disconnected(node: NodeHandle, peer: str) -> None:
    """The last connection to ``peer`` (a peer id) has closed.

    Runs in the daemon after ``NodeCore`` has seen the ``PeerDisconnected`` event. A notification; must
    not block.

    Returns nothing. Not firstresult: every plugin is told. Synchronous.
    """
    raise NotImplementedError

"""The hello protocol driven through ``NodeCore``, with an explicit clock.

Nodes are built by ``composition.build_core``, as the daemon and simnet build theirs, and started with
``Started`` before anything else. Two cores talk through the real frame codec (``encode_frame`` and
``FrameDecoder`` with the component's limits), so what one sends is exactly what the other would receive
over a stream.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pluggy
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyagent_hello.cli import run_hello
from pyagent_hello.component import (
    PLUGINS_MAX,
    PROTOCOL_ID,
    TEXT_CHARS_MAX,
    Config,
    Hello,
    HelloProtocol,
    ListHellos,
)

import pyagent
from pyagent import pluginhost
from pyagent.composition import STANDARD, build_core
from pyagent.errors import ConfigError, RemoteProtocolError
from pyagent.proto.context import NodeContext
from pyagent.proto.events import LocalRequest, MessageReceived, PeerConnected, PeerDisconnected
from pyagent.proto.node import NodeCore
from pyagent.proto.peers import PeerInfo
from pyagent.proto.ready import Ready, Reply, Send
from pyagent.proto.wire import FrameDecoder, Message, encode_frame
from pyagent_hello import plugin

ALICE = "12D3KooWAlice"
BOB = "12D3KooWBob"
SEED = 20261124


def make_core(peer: str, *, plugins: tuple[str, ...] = ("hello",), hellos_max: int = 16) -> NodeCore:
    """A started node with the standard components and a hello component announcing ``plugins``."""

    def hello(ctx: NodeContext) -> HelloProtocol:
        return HelloProtocol("0.1.0", plugins, Config(hellos_max=hellos_max))

    core = build_core(peer, SEED, core_factories=(*STANDARD, hello))
    core.start(0)
    return core


def plugin_manager() -> pluggy.PluginManager:
    """Only the hello plugin, registered as ``load_plugins`` would register it."""
    pm = pluginhost.new_plugin_manager()
    pm.register(plugin, name="hello")
    pluginhost.check_plugins(pm)
    return pm


def hello_of(core: NodeCore) -> HelloProtocol:
    component = core.component("hello")
    assert isinstance(component, HelloProtocol)
    return component


def connected(peer: str, speaks_hello: bool = True) -> PeerConnected:
    protocols = (PROTOCOL_ID,) if speaks_hello else ("/ipfs/ping/1.0.0",)
    return PeerConnected(peer, addrs=("/ip4/127.0.0.1/tcp/4001",), protocols=protocols)


def over_the_wire(send: Send) -> Message:
    """What the receiving core gets after the frame crosses a stream."""
    decoder = FrameDecoder(HelloProtocol.limits)
    (message,) = decoder.feed(encode_frame(send.message, HelloProtocol.limits))
    return message


def a_hello(version: str = "0.1.0", plugins: list[str] | None = None) -> Message:
    return {"v": 1, "t": "hello", "version": version, "plugins": ["hello"] if plugins is None else plugins}


def list_hellos(core: NodeCore, now_us: int) -> list[Hello]:
    ready = core.step(LocalRequest(7, ListHellos()), now_us)
    (reply,) = ready.apply
    assert reply.request_id == 7 and reply.error is None and isinstance(reply.value, list)
    return reply.value


def test_each_side_says_hello_when_a_peer_that_speaks_the_protocol_connects() -> None:
    alice, bob = make_core(ALICE, plugins=("hello", "lora")), make_core(BOB)

    to_bob = alice.step(connected(BOB), 1_000).send
    to_alice = bob.step(connected(ALICE), 1_100).send

    assert [(s.peer, s.protocol) for s in to_bob] == [(BOB, PROTOCOL_ID)]
    assert [(s.peer, s.protocol) for s in to_alice] == [(ALICE, PROTOCOL_ID)]
    bob.step(MessageReceived(ALICE, PROTOCOL_ID, over_the_wire(to_bob[0])), 2_000)
    alice.step(MessageReceived(BOB, PROTOCOL_ID, over_the_wire(to_alice[0])), 2_100)

    assert list_hellos(bob, 3_000) == [Hello(ALICE, "0.1.0", ("hello", "lora"), received_us=2_000)]
    assert list_hellos(alice, 3_000) == [Hello(BOB, "0.1.0", ("hello",), received_us=2_100)]


def test_the_plugin_adds_the_component_with_this_node_s_plugins_and_its_config_table() -> None:
    core = build_core(ALICE, SEED, plugins=plugin_manager(), config={"hello": {"hellos_max": 3}})
    core.start(0)

    hello = hello_of(core)
    assert hello.software_version == pyagent.__version__ and hello.plugin_names == ("hello",)
    assert hello.config == Config(hellos_max=3)
    assert [component.name for component in core.components] == ["peers", "ping", "hello"]


def test_without_a_config_table_the_plugin_uses_the_defaults() -> None:
    assert hello_of(build_core(ALICE, SEED, plugins=plugin_manager())).config == Config()


@pytest.mark.parametrize(
    ("table", "refusal"),
    [
        ({"hello_max": 3}, r"\[hello\] unknown key 'hello_max'; valid keys: hellos_max"),
        ({"hellos_max": 0}, r"\[hello\] 'hellos_max' must be a positive integer, got 0"),
        ({"hellos_max": True}, r"\[hello\] 'hellos_max' must be a positive integer, got True"),
        ({"hellos_max": "8"}, r"\[hello\] 'hellos_max' must be a positive integer, got '8'"),
    ],
)
def test_a_bad_config_table_stops_the_build_with_one_line(table: dict[str, object], refusal: str) -> None:
    with pytest.raises(ConfigError, match=refusal):
        build_core(ALICE, SEED, plugins=plugin_manager(), config={"hello": table})


def test_no_hello_to_a_peer_that_does_not_speak_the_protocol() -> None:
    alice = make_core(ALICE)

    ready = alice.step(connected(BOB, speaks_hello=False), 1_000)

    assert ready.send == []


def test_a_disconnected_peer_is_forgotten() -> None:
    alice = make_core(ALICE)
    alice.step(connected(BOB), 1_000)
    alice.step(MessageReceived(BOB, PROTOCOL_ID, a_hello()), 2_000)

    alice.step(PeerDisconnected(BOB), 3_000)

    assert list_hellos(alice, 4_000) == []


def test_a_second_hello_replaces_the_first() -> None:
    alice = make_core(ALICE)
    alice.step(MessageReceived(BOB, PROTOCOL_ID, a_hello("0.1.0")), 1_000)

    alice.step(MessageReceived(BOB, PROTOCOL_ID, a_hello("0.2.0", [])), 2_000)

    assert list_hellos(alice, 3_000) == [Hello(BOB, "0.2.0", (), received_us=2_000)]


def test_the_table_is_bounded_and_forgets_the_stalest_hello_first() -> None:
    alice = make_core(ALICE, hellos_max=3)
    peers = [f"12D3KooWPeer{index}" for index in range(5)]

    for index, peer in enumerate(peers):
        alice.step(MessageReceived(peer, PROTOCOL_ID, a_hello()), 1_000 * (index + 1))

    assert len(hello_of(alice)) == 3
    assert [hello.peer for hello in list_hellos(alice, 10_000)] == peers[2:]


def test_the_largest_legal_hello_fits_the_protocol_limits() -> None:
    names = [f"{index:02d}" + "x" * (TEXT_CHARS_MAX - 2) for index in range(PLUGINS_MAX)]
    biggest = HelloProtocol("1" * TEXT_CHARS_MAX, tuple(names))
    out = Ready()
    biggest.on_peer_connected(connected(BOB), 0, out)

    received = over_the_wire(out.send[0])

    alice = make_core(ALICE)
    alice.step(MessageReceived(BOB, PROTOCOL_ID, received), 1_000)
    assert list_hellos(alice, 2_000)[0].plugins == tuple(names)


@pytest.mark.parametrize(
    ("version", "plugins"),
    [
        ("0.1.0\x1b[2J", ("hello",)),
        ("", ("hello",)),
        ("0.1.0", ("hello", "hello")),
        ("0.1.0", tuple(f"p{index}" for index in range(PLUGINS_MAX + 1))),
        ("0.1.0", ("x" * (TEXT_CHARS_MAX + 1),)),
    ],
)
def test_a_node_refuses_to_announce_what_peers_would_refuse(version: str, plugins: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        HelloProtocol(version, plugins)


BAD_HELLOS: list[Message] = [
    {"v": 1, "t": "hello", "version": "0.1.0"},
    {**a_hello(), "extra": 1},
    {**a_hello(), "v": 2},
    {**a_hello(), "v": True},
    {**a_hello(), "t": "hi"},
    a_hello(version="0.1.0\x1b]0;pwned\x07"),
    a_hello(version="x" * (TEXT_CHARS_MAX + 1)),
    a_hello(plugins=["b", "a"]),
    a_hello(plugins=["a", "a"]),
    a_hello(plugins=["a", 1]),
    a_hello(plugins=[f"p{index:03d}" for index in range(PLUGINS_MAX + 1)]),
    {**a_hello(), "plugins": "hello"},
]


@pytest.mark.parametrize("message", BAD_HELLOS)
def test_a_malformed_hello_is_refused_and_changes_nothing(message: Message) -> None:
    alice = make_core(ALICE)
    alice.step(MessageReceived(BOB, PROTOCOL_ID, a_hello()), 1_000)
    before = hello_of(alice).snapshot()

    with pytest.raises(RemoteProtocolError):
        alice.step(MessageReceived(BOB, PROTOCOL_ID, message), 2_000)

    assert hello_of(alice).snapshot() == before


TEXT_FIRST_CHARS = string.ascii_letters + string.digits
TEXT_CHARS = TEXT_FIRST_CHARS + "._+-"


def is_text(value: object) -> bool:
    return (
        isinstance(value, str)
        and 1 <= len(value) <= TEXT_CHARS_MAX
        and value[0] in TEXT_FIRST_CHARS
        and all(char in TEXT_CHARS for char in value)
    )


def is_valid_hello(message: dict[str, Any]) -> bool:
    """The protocol's rules restated independently of the component, as the property's oracle."""
    if sorted(message) != ["plugins", "t", "v", "version"]:
        return False
    plugins = message["plugins"]
    return (
        type(message["v"]) is int
        and message["v"] == 1
        and message["t"] == "hello"
        and is_text(message["version"])
        and isinstance(plugins, list)
        and len(plugins) <= PLUGINS_MAX
        and all(is_text(name) for name in plugins)
        and plugins == sorted(set(plugins))
    )


scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80) | st.binary(max_size=8)
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner))
texts = st.text(alphabet=TEXT_CHARS + "\x1b é", min_size=0, max_size=TEXT_CHARS_MAX + 2)
good_texts = st.text(alphabet=TEXT_CHARS, min_size=1, max_size=TEXT_CHARS_MAX).filter(is_text)
valid_hellos = st.builds(
    lambda version, plugins: {"v": 1, "t": "hello", "version": version, "plugins": sorted(plugins)},
    good_texts,
    st.lists(good_texts, unique=True, max_size=PLUGINS_MAX),
)
# For each field, values that break it (and a few that do not), so every rule is probed at its edge.
breakers = {
    "v": st.sampled_from([0, 1, 2, True, 1.0, "1"]) | values,
    "t": st.sampled_from(["hello", "ping", "Hello", ""]) | values,
    "version": texts | values,
    "plugins": st.lists(good_texts, unique=True, min_size=PLUGINS_MAX - 1, max_size=PLUGINS_MAX + 1).map(
        sorted
    )
    | st.lists(good_texts, min_size=2, max_size=4)
    | st.lists(texts, max_size=4)
    | values,
    "extra": values,
}
mutated_hellos = st.builds(
    lambda hello, change: {**hello, change[0]: change[1]},
    valid_hellos,
    st.sampled_from(sorted(breakers)).flatmap(lambda key: breakers[key].map(lambda value: (key, value))),
) | valid_hellos.flatmap(
    lambda hello: st.sampled_from(sorted(hello)).map(
        lambda key: {field: value for field, value in hello.items() if field != key}
    )
)
arbitrary = st.dictionaries(
    st.sampled_from(["v", "t", "version", "plugins"]) | st.text(max_size=10), values, max_size=6
)


@given(message=valid_hellos | mutated_hellos | arbitrary)
def test_a_message_is_recorded_if_valid_and_otherwise_refused_with_nothing_changed(
    message: dict[str, Any],
) -> None:
    alice = make_core(ALICE)
    alice.step(MessageReceived(BOB, PROTOCOL_ID, a_hello()), 1_000)
    before = hello_of(alice).snapshot()

    if is_valid_hello(message):
        alice.step(MessageReceived(BOB, PROTOCOL_ID, message), 2_000)
        assert hello_of(alice).snapshot() == [
            Hello(BOB, message["version"], tuple(message["plugins"]), received_us=2_000)
        ]
    else:
        with pytest.raises(RemoteProtocolError):
            alice.step(MessageReceived(BOB, PROTOCOL_ID, message), 2_000)
        assert hello_of(alice).snapshot() == before


class CoreNode:
    """A ``NodeHandle`` backed by a bare ``NodeCore``: what a plugin's control method sees, minus libp2p."""

    def __init__(self, core: NodeCore, home: Path) -> None:
        self.core = core
        self.home = home
        self.peer_id = core.local_peer
        self.now_us = 10_000
        self.sent: list[Send] = []

    def peers(self) -> list[PeerInfo]:
        return list(self.core.component("peers").snapshot())  # type: ignore[attr-defined]

    async def request(self, command: object) -> object:
        self.now_us += 1
        (reply,) = self.core.step(LocalRequest(1, command), self.now_us).apply
        assert isinstance(reply, Reply)
        if reply.error is not None:  # a ReplyError(code, message, data)
            raise RuntimeError(reply.error.message)
        return reply.value

    def send(self, peer: str, protocol_id: str, message: dict[str, Any]) -> None:
        self.sent.append(Send(peer, protocol_id, message))


async def test_the_control_method_returns_json_ready_hellos(tmp_path: Path) -> None:
    alice = make_core(ALICE)
    alice.step(MessageReceived(BOB, PROTOCOL_ID, a_hello(plugins=["hello", "lora"])), 1_000)

    result = await plugin.list_hellos(CoreNode(alice, tmp_path), {})

    assert result == [{"peer": BOB, "version": "0.1.0", "plugins": ["hello", "lora"]}]


async def test_the_control_method_takes_no_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="takes no parameters"):
        await plugin.list_hellos(CoreNode(make_core(ALICE), tmp_path), {"peer": BOB})


class FakeCli:
    """A ``CliContext`` whose daemon answers ``hello.list`` with a fixed list."""

    def __init__(self, home: Path, hellos: list[dict[str, Any]]) -> None:
        self.home = home
        self.hellos = hellos
        self.calls: list[str] = []

    def call(self, method: str, **params: Any) -> Any:
        self.calls.append(method)
        return self.hellos


def test_the_cli_prints_one_aligned_row_per_peer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = FakeCli(
        tmp_path,
        [
            {"peer": ALICE, "version": "0.1.0", "plugins": ["hello", "lora"]},
            {"peer": BOB, "version": "0.10.0rc1", "plugins": []},
        ],
    )

    assert run_hello(None, ctx) == 0  # type: ignore[arg-type]

    assert ctx.calls == ["hello.list"]
    assert capsys.readouterr().out.splitlines() == [
        "PEER           VERSION    PLUGINS",
        "12D3KooWAlice  0.1.0      hello,lora",
        "12D3KooWBob    0.10.0rc1  -",
    ]


def test_the_cli_says_so_when_no_peer_has_said_hello(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_hello(None, FakeCli(tmp_path, [])) == 0  # type: ignore[arg-type]

    assert "no connected peer has said hello yet" in capsys.readouterr().out

"""The hello protocol on ``/pyagent/hello/1.0.0``: peers tell each other what software they run.

When a peer that speaks the protocol connects, each side sends it one ``hello``: its PyAgent version and
the names of its loaded plugins. Each side keeps the latest hello of every connected peer, so an
operator can see which versions and features a mesh runs before relying on one.

Sans-I/O like every component: no clock, no randomness, no I/O, so simnet runs it unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from pyagent.errors import ConfigError, RemoteProtocolError
from pyagent.proto.component import Component
from pyagent.proto.events import LocalRequest, MessageReceived, PeerConnected, PeerDisconnected
from pyagent.proto.ready import Ready, Reply, Send
from pyagent.proto.types import PeerId
from pyagent.proto.wire import Limits, Message

PROTOCOL_ID = "/pyagent/hello/1.0.0"
VERSION = 1
PLUGINS_MAX = 64
# Versions and plugin names end up in an operator's terminal: a plain charset keeps a peer from smuggling
# escape sequences into it, and the length bound keeps one hello small.
TEXT_CHARS_MAX = 64
TEXT_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._+-]{{0,{TEXT_CHARS_MAX - 1}}}")
_FIELDS = frozenset({"v", "t", "version", "plugins"})


@dataclass(frozen=True, slots=True)
class Hello:
    """What ``peer`` announced, and when (this node's clock) it arrived."""

    peer: PeerId
    version: str
    plugins: tuple[str, ...]
    received_us: int


@dataclass(frozen=True, slots=True)
class ListHellos:
    """Local command: reply with a list of ``Hello``, sorted by peer id."""


@dataclass(slots=True)
class Config:
    """The ``[hello]`` table of the node's config.toml; every key is optional."""

    # As large as the peer table's bound, so a healthy node keeps a hello for every connected peer.
    hellos_max: int = 1024

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Config:
        """Read the ``[hello]`` table (``NodeContext.config("hello")``); one-line ``ConfigError`` for an
        unknown key or a bad value, as for the core's own sections."""
        config = cls()
        known = [f.name for f in fields(cls)]
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"[hello] unknown key '{key}'; valid keys: {', '.join(known)}")
            if type(value) is not int or value < 1:
                raise ConfigError(f"[hello] '{key}' must be a positive integer, got {value!r}")
            setattr(config, key, value)
        return config


class HelloProtocol(Component):
    name: ClassVar[str] = "hello"
    protocol_id: ClassVar[str] = PROTOCOL_ID
    # The largest legal hello (PLUGINS_MAX names of TEXT_CHARS_MAX bytes) is about 4.3 KiB of msgpack:
    # a map of four keys whose one container is the plugin list.
    limits: ClassVar[Limits] = Limits(frame_size_bytes_max=4608, depth_max=2, count_max=9 + PLUGINS_MAX)
    command_types: ClassVar[tuple[type, ...]] = (ListHellos,)

    def __init__(self, software_version: str, plugin_names: tuple[str, ...], config: Config | None = None):
        plugins = sorted(plugin_names)
        # Refuse to announce what our own decoder would refuse from a peer.
        _check_announcement(software_version, plugins, ValueError)
        self.config = config or Config()
        if self.config.hellos_max < 1:
            raise ValueError(f"hellos_max must be positive, got {self.config.hellos_max}")
        self.software_version = software_version
        self.plugin_names = tuple(plugins)
        self._hellos: dict[PeerId, Hello] = {}

    def __len__(self) -> int:
        return len(self._hellos)

    def snapshot(self) -> list[Hello]:
        return [self._hellos[peer] for peer in sorted(self._hellos)]

    def on_peer_connected(self, event: PeerConnected, now_us: int, out: Ready) -> None:
        # identify told us which protocols the peer serves; opening a stream it would refuse wastes a
        # round trip and looks like misbehaviour to it.
        if PROTOCOL_ID in event.protocols:
            announcement: Message = {
                "v": VERSION,
                "t": "hello",
                "version": self.software_version,
                "plugins": list(self.plugin_names),
            }
            out.send.append(Send(event.peer, PROTOCOL_ID, announcement))

    def on_peer_disconnected(self, event: PeerDisconnected, now_us: int, out: Ready) -> None:
        self._hellos.pop(event.peer, None)

    def on_message(self, event: MessageReceived, now_us: int, out: Ready) -> None:
        message = event.message
        if set(message) != _FIELDS:
            raise RemoteProtocolError(f"hello must have exactly the fields {sorted(_FIELDS)}")
        # type() rather than ==, because True == 1 and 1.0 == 1 would slip through.
        if type(message["v"]) is not int or message["v"] != VERSION or message["t"] != "hello":
            raise RemoteProtocolError(f"expected a hello of version {VERSION}")
        _check_announcement(message["version"], message["plugins"], RemoteProtocolError)
        if event.peer not in self._hellos and len(self._hellos) >= self.config.hellos_max:
            # Full: forget the stalest hello rather than refuse a fresh one.
            stalest = min(self._hellos.values(), key=lambda hello: (hello.received_us, hello.peer))
            del self._hellos[stalest.peer]
        self._hellos[event.peer] = Hello(
            event.peer, message["version"], tuple(message["plugins"]), received_us=now_us
        )

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        assert isinstance(request.command, ListHellos)
        out.apply.append(Reply(request.request_id, value=self.snapshot()))


def _check_announcement(version: object, plugins: object, error: type[Exception]) -> None:
    if not isinstance(version, str) or not TEXT_PATTERN.fullmatch(version):
        raise error(f"hello version must match {TEXT_PATTERN.pattern}")
    if not isinstance(plugins, list) or len(plugins) > PLUGINS_MAX:
        raise error(f"hello plugins must be a list of at most {PLUGINS_MAX} names")
    if not all(isinstance(name, str) and TEXT_PATTERN.fullmatch(name) for name in plugins):
        raise error(f"hello plugin names must match {TEXT_PATTERN.pattern}")
    if plugins != sorted(set(plugins)):
        raise error("hello plugin names must be sorted and distinct")

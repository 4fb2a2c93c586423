"""Bootstrap lists: the peers a node dials to join a mesh.

The format is plain text so that it can be published anywhere and diffed by eye: one multiaddr per line,
each ending in ``/p2p/<peer id>`` (the id is what makes a dial safe: a different peer answering at that
address is refused), ``#`` starts a comment, blank lines are ignored.
"""

from __future__ import annotations

from pathlib import Path

from pyagent.errors import ConfigError

ENTRIES_MAX = 1024
LINE_CHARS_MAX = 1024


def check_multiaddr(addr: str, where: str) -> tuple[str, str]:
    """``(peer id, addr)`` of a dialable multiaddr; a ``ConfigError`` naming ``where`` otherwise."""
    if not addr.startswith("/") or "/p2p/" not in addr:
        raise ConfigError(f"{where}: '{addr}' is not a multiaddr ending in /p2p/<peer id>")
    peer = addr.rsplit("/p2p/", 1)[1]
    if not peer or "/" in peer:
        raise ConfigError(f"{where}: '{addr}' must end with /p2p/<peer id>")
    check_peer_id(peer, where)
    import multiaddr

    try:
        multiaddr.Multiaddr(addr)
    except Exception as exc:
        raise ConfigError(f"{where}: '{addr}' is not a valid multiaddr ({exc})") from None
    return peer, addr


def check_peer_id(peer: str, where: str) -> None:
    from libp2p.peer.id import ID

    try:
        raw = ID.from_base58(peer).to_bytes()
    except Exception:
        # base58 decoding raises assorted errors; to the operator they all mean a mistyped id.
        raise ConfigError(f"{where}: '{peer}' is not a valid peer id") from None
    # Any base58 text decodes; a peer id is a multihash: identity (the key itself) or sha2-256, then its
    # length, then that many bytes.
    if len(raw) < 3 or raw[0] not in (0x00, 0x12) or raw[1] != len(raw) - 2:
        raise ConfigError(f"{where}: '{peer}' is not a valid peer id (expected 12D3KooW... or Qm...)")


def parse(text: str, source: str) -> list[str]:
    addrs: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        if len(line) > LINE_CHARS_MAX:
            raise ConfigError(f"{where}: line longer than {LINE_CHARS_MAX} characters")
        check_multiaddr(line, where)
        addrs.append(line)
        if len(addrs) > ENTRIES_MAX:
            raise ConfigError(f"{source}: more than {ENTRIES_MAX} entries")
    return addrs


def load(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"bootstrap file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read bootstrap file {path}: {exc}") from None
    return parse(text, str(path))

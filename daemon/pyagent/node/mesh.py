"""The shell's part of membership: what this machine tells the mesh about itself, joining through seeds
with retries and clear reasons, and logging what the membership core observes.

The protocol itself lives in ``pyagent.proto.membership``; everything here is I/O it must not do.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import trio

from pyagent import __version__
from pyagent.bootstraplist import check_multiaddr
from pyagent.node.dial_errors import DialError
from pyagent.node.driver import RequestFailed
from pyagent.proto import membership
from pyagent.proto.membership.records import LIVE_STATES
from pyagent.proto.peers import PeerInfo

log = logging.getLogger("pyagent.mesh")

JOIN_BACKOFF_INITIAL_S = 1.0
# Rounds tried through the address book before a restarted node runs alone.
ADDRESS_BOOK_ATTEMPTS_MAX = 3
# Members of the address book dialed in each later try while alone: a large book is sampled, not dialed whole.
REJOIN_SEEDS_MAX = 8
JOIN_BACKOFF_MAX_S = 30.0
IDENTIFY_WAIT_S = 3.0
# Each load update is gossiped to every member, so the interval grows with the mesh: N members republish
# at most N / (interval) times a second in all, about one update a second mesh-wide however large it is.
LOAD_REFRESH_INTERVAL_S = 30.0
LOAD_REFRESH_MEMBERS_PER_INTERVAL = 32
LOAD_CHANGE_MIN = 0.25
# How often the announced addresses are compared with what the mesh holds: an interface that came up or
# an observed address that peers confirmed reaches the mesh within this time.
ADDRS_REFRESH_INTERVAL_S = 10.0
MEMBERSHIP_PROTOCOL_FAMILY = "/pyagent/membership/"


class MeshNode(Protocol):
    async def connect(self, addr: str) -> str: ...

    def peers(self) -> list[PeerInfo]: ...

    async def request(self, command: object) -> object: ...


def detect_hardware_tags() -> list[str]:
    # A GPU driver exposes a device node; without one this is a CPU-only peer for placement purposes.
    return ["gpu:nvidia"] if Path("/dev/nvidia0").exists() else ["cpu-only"]


def load_per_core() -> float:
    cores = os.cpu_count() or 1
    return round(os.getloadavg()[0] / cores, 2)


def local_metadata(
    home: Path,
    hardware_tags: Sequence[str],
    features: Sequence[str],
    plugins: Sequence[str],
    protocols: Sequence[str],
    extra: dict[str, membership.metadata.ExtraValue],
) -> membership.Metadata:
    return membership.Metadata(
        protocols=tuple(sorted(protocols)),
        cpu_cores=os.cpu_count() or 0,
        memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        disk_free_bytes=shutil.disk_usage(home).free,
        hardware_tags=tuple(hardware_tags or detect_hardware_tags()),
        load=load_per_core(),
        plugins=tuple(plugins),
        features=tuple(features),
        software_version=f"pyagent/{__version__}",
        extra=extra,
    )


def seeds_of(addrs: Sequence[str], where: str = "bootstrap") -> dict[str, list[str]]:
    """Seed multiaddrs grouped by peer id (a peer may be listed at several addresses); a ``ConfigError``
    naming ``where`` for a bad one."""
    seeds: dict[str, list[str]] = {}
    for addr in addrs:
        peer, _ = check_multiaddr(addr, where)
        seeds.setdefault(peer, []).append(addr)
    return seeds


async def _wait_for_identify(node: MeshNode, peer: str) -> PeerInfo | None:
    with trio.move_on_after(IDENTIFY_WAIT_S):
        while True:
            info = next((p for p in node.peers() if p.peer == peer), None)
            if info is not None:
                return info
            await trio.sleep(0.05)
    return None


def version_problem(info: PeerInfo) -> str | None:
    """Why ``info``'s peer cannot be a membership seed for us, or None if it can."""
    if membership.PROTOCOL_ID in info.protocols:
        return None
    return version_mismatch(info) or (
        f"not a pyagent peer (agent {info.agent_version or 'unknown'!r} has no membership protocol)"
    )


def version_mismatch(info: PeerInfo) -> str | None:
    """What is wrong when ``info``'s peer is a PyAgent peer of an incompatible version, else None (it
    speaks our membership, or it is some other libp2p peer, which may still ping us)."""
    if membership.PROTOCOL_ID in info.protocols:
        return None
    theirs = sorted(p for p in info.protocols if p.startswith(MEMBERSHIP_PROTOCOL_FAMILY))
    if not theirs:
        return None
    return f"version mismatch: it speaks {', '.join(theirs)}, this node speaks {membership.PROTOCOL_ID}"


async def _reach_seed(node: MeshNode, peer: str, addrs: list[str]) -> str | None:
    """Connect to a seed; None if it can serve as one, else the reason it cannot."""
    reasons = []
    for addr in addrs:
        try:
            await node.connect(addr)
        except DialError as exc:
            reasons.append(str(exc))
            continue
        info = await _wait_for_identify(node, peer)
        if info is None:
            return f"{addr}: connected, but identify did not complete in {IDENTIFY_WAIT_S:.0f} s"
        problem = version_problem(info)
        return f"{addr}: {problem}" if problem else None
    return "; ".join(reasons)


async def join_mesh(
    node: MeshNode,
    bootstrap: Sequence[str],
    rng: random.Random,
    on_new_mesh: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Join through the configured bootstrap peers; with none, rejoin the mesh this node was in (its
    address book, as kubo reconnects from its peerstore); with neither, start a new mesh, and then call
    ``on_new_mesh`` (the daemon founds the mesh's shards there). A node whose address book did not
    answer runs alone and keeps trying the book while it stays alone."""
    if bootstrap:
        await join(node, bootstrap, rng)
        return
    book = await node.request(membership.ListAddressBook())
    assert isinstance(book, tuple)
    if book:
        log.info("rejoining the mesh from the address book", extra={"members": len(book)})
        if await join(node, _book_addrs(book), rng, ADDRESS_BOOK_ATTEMPTS_MAX) is not None:
            return
        log.warning(
            "no member of the address book answered after %d attempts; running alone, and trying the "
            "address book again while alone (`pyagent join ADDR` joins another mesh)",
            ADDRESS_BOOK_ATTEMPTS_MAX,
        )
    await node.request(membership.Join(()))
    if book:
        await _rejoin_while_alone(node, book, rng)
        return
    log.info("started a new mesh (no bootstrap peers configured)")
    if on_new_mesh is not None:
        await on_new_mesh()


async def _rejoin_while_alone(
    node: MeshNode, book: Sequence[tuple[str, Sequence[str]]], rng: random.Random
) -> None:
    """Try a sample of the address book, with backoff, until this node has company. Its mesh may only
    have been out of reach when it started (the network came up after the daemon, a partition, paused
    members), and that mesh never calls it back: a member that left is not retried as a dead one is, and
    a restarted node may listen on another port."""
    backoff_s = JOIN_BACKOFF_INITIAL_S
    while True:
        await trio.sleep(backoff_s * (0.5 + rng.random() / 2))
        backoff_s = min(backoff_s * 2, JOIN_BACKOFF_MAX_S)
        if await _has_company(node):
            return
        sample = rng.sample(list(book), min(REJOIN_SEEDS_MAX, len(book)))
        try:
            joined = await join_once(node, seeds_of(_book_addrs(sample)))
        except JoinFailed as exc:
            # The isolation warning already tells the operator; a line per try would flood the log.
            log.debug("rejoin from the address book failed: %s", exc)
        else:
            log.info("rejoined the mesh from the address book", extra={"seed": joined.seed})
            return


async def _has_company(node: MeshNode) -> bool:
    records = await node.request(membership.ListMembers())
    assert isinstance(records, list)
    return sum(record.state in LIVE_STATES for record in records) > 1


def _book_addrs(book: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    return [_with_peer(addr, peer) for peer, member_addrs in book for addr in member_addrs]


def _with_peer(addr: str, peer: str) -> str:
    suffix = f"/p2p/{peer}"
    return addr if addr.endswith(suffix) else addr + suffix


class JoinFailed(Exception):
    """No seed could be joined; the message says why, seed by seed."""


async def join_once(node: MeshNode, seeds: dict[str, list[str]]) -> membership.Joined:
    """One round: reach every seed, then exchange state with those that can serve (the core retries that
    exchange with its own backoff). ``JoinFailed`` gives the reason of each seed that could not."""
    problems = []
    usable = []
    for peer, addrs in seeds.items():
        problem = await _reach_seed(node, peer, addrs)
        if problem is None:
            usable.append((peer, tuple(addrs)))
        else:
            problems.append(f"cannot use {peer}: {problem}")
    if not usable:
        raise JoinFailed("; ".join(problems))
    try:
        joined = await node.request(membership.Join(tuple(usable)))
    except RequestFailed as exc:  # no seed answered the exchange, or a join is already under way
        raise JoinFailed(str(exc)) from None
    assert isinstance(joined, membership.Joined)
    return joined


async def join(
    node: MeshNode, bootstrap: Sequence[str], rng: random.Random, attempts_max: int | None = None
) -> membership.Joined | None:
    """Join through any reachable seed, retrying with jittered exponential backoff until one answers,
    or until ``attempts_max`` rounds failed (then None).

    Each failed round logs one line with each seed's reason (unreachable, wrong peer id, key mismatch,
    version mismatch...), so an operator sees at once why a node stays alone.
    """
    seeds = seeds_of(bootstrap)
    backoff_s = JOIN_BACKOFF_INITIAL_S
    attempt = 0
    while True:
        attempt += 1
        try:
            joined = await join_once(node, seeds)
        except JoinFailed as exc:
            if attempt == attempts_max:
                log.warning("join attempt %d failed: %s", attempt, exc)
                return None
            delay_s = backoff_s * (0.5 + rng.random() / 2)
            log.warning("join attempt %d failed, retrying in %.1f s: %s", attempt, delay_s, exc)
        else:
            log.info("joined the mesh", extra={"seed": joined.seed, "members": joined.members})
            return joined
        await trio.sleep(delay_s)
        backoff_s = min(backoff_s * 2, JOIN_BACKOFF_MAX_S)


def log_change(change: membership.MemberChanged) -> None:
    """One log line per state transition the membership core reports."""
    old = change.old_state.name.lower() if change.old_state is not None else "new"
    alarming = change.new_state in (membership.State.SUSPECT, membership.State.DEAD)
    level = logging.WARNING if alarming else logging.INFO
    log.log(
        level,
        "member %s: %s -> %s",
        change.peer,
        old,
        change.new_state.name.lower(),
        extra={"incarnation": change.incarnation},
    )


def isolation_warning(alone_since_us: int, now_us: int) -> str:
    """What to tell an operator whose node has seen no other member since ``alone_since_us``."""
    alone_s = max(0, now_us - alone_since_us) / 1e6
    return (
        f"no other member seen for {alone_s:.0f} s; is the bootstrap list right? "
        "try `pyagent join ADDR` with the address of any member of the mesh"
    )


def log_isolation(notice: membership.Isolated) -> None:
    """One line when this node starts to run alone, one when a member is back: never one per tick."""
    if notice.alone:
        log.warning(isolation_warning(notice.since_us, notice.at_us))
    else:
        log.info("a member is back after %.0f s alone", (notice.at_us - notice.since_us) / 1e6)


def load_refresh_interval_s(live_members: int) -> float:
    return LOAD_REFRESH_INTERVAL_S * max(1.0, live_members / LOAD_REFRESH_MEMBERS_PER_INTERVAL)


async def refresh_load(
    request: Callable[[object], Awaitable[object]],
    current: Callable[[], membership.Metadata],
    live_members: Callable[[], int],
) -> None:
    """Republish this node's load when it moves noticeably, at a pace the mesh's size allows."""
    while True:
        await trio.sleep(load_refresh_interval_s(live_members()))
        metadata = current()
        load = load_per_core()
        if abs(load - metadata.load) >= LOAD_CHANGE_MIN:
            await request(membership.UpdateLocalMetadata(metadata=replace(metadata, load=load)))


async def refresh_addrs(
    request: Callable[[object], Awaitable[object]],
    announced: Callable[[], Sequence[str]],
    gossiped: Callable[[], tuple[str, ...]],
) -> None:
    """Gossip this node's addresses anew whenever what it announces changes (``announced``)."""
    while True:
        await trio.sleep(ADDRS_REFRESH_INTERVAL_S)
        addrs = tuple(announced())
        if addrs != gossiped():
            log.info("announcing new addresses", extra={"addrs": ",".join(addrs)})
            await request(membership.UpdateLocalMetadata(addrs=addrs))


def member_view(record: membership.MemberRecord, now_us: int) -> dict[str, Any]:
    """A member as the control API shows it (JSON-friendly, with the age of its last state change)."""
    metadata = record.metadata
    return {
        "peer": record.peer,
        "addrs": list(record.addrs),
        "state": record.state.name.lower(),
        "incarnation": record.incarnation,
        "state_age_s": round(max(0, now_us - record.state_changed_us) / 1e6, 1),
        "meta_version": record.meta_version,
        "rtt_us": record.rtt_us,
        "hardware_tags": list(metadata.hardware_tags),
        "load": metadata.load,
        "cpu_cores": metadata.cpu_cores,
        "memory_bytes": metadata.memory_bytes,
        "disk_free_bytes": metadata.disk_free_bytes,
        "plugins": list(metadata.plugins),
        "protocols": list(metadata.protocols),
        "features": list(metadata.features),
        "software_version": metadata.software_version,
        "extra": dict(metadata.extra),
    }

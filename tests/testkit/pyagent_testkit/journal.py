"""The journal kit: a component that writes to its node's storage, and checks that durability holds.

Every ``interval_ms`` the ``journal`` component appends entry ``n`` (1, 2, 3...) to its log ``j`` in a
write batch of its own, tagged ``n``: with ``sync = true``, except every ``unsynced_every``-th entry. In
the same Ready it tells its buddy (the next peer) about the entry with a ``send``, which the interpreter
holds until the write is persisted. After every (re)start it reads its log back and resumes after the
last entry it finds.

What the kit checks (safety):
- recovery: after a restart (without a wipe), every ``sync = true`` entry the previous process saw
  ``Persisted`` is still there, and the log is whole (entries 1..last, each with its own content);
- order: ``Persisted`` arrives in the order the batches were written;
- persist before send: when the buddy hears of a synced entry, that entry is on the sender's disk
  (simnet's durable state), so no message ever promised what a crash could take back.
Liveness: every running node has persisted an entry since the liveness phase began.

Scenario table::

    [journal]
    interval_ms = 200       # one entry per interval
    unsynced_every = 0      # every k-th entry is written with sync = false (0: none)
    entry_bytes = 32
    announce = true         # tell the buddy about each entry (checks persist-before-send)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pyagent.composition import CoreFactory
from pyagent.errors import RemoteProtocolError
from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext
from pyagent.proto.events import MessageReceived, Started
from pyagent.proto.ready import Ready, Send, SetTimer
from pyagent.proto.storage import LogAppend, StorageReader, WriteBatch
from pyagent.proto.types import PeerId
from pyagent.proto.wire import Limits
from pyagent_simnet.kits import Kit
from pyagent_simnet.observe import Observer
from pyagent_simnet.schema import Field, at_least, nonneg, positive

if TYPE_CHECKING:
    from pyagent_simnet.sim import Sim, SimNode

PROTOCOL_ID = "/pyagent-test/journal/1.0.0"
# Announcements the observer remembers until the buddy hears of them (lost ones are never popped).
ANNOUNCED_MAX = 1_000_000
LOG = "j"
US_PER_MS = 1_000


def payload(n: int, size: int) -> bytes:
    """Entry ``n``'s content: recognisable, so a recovered log can be checked byte for byte."""
    return (b"%d:" % n).ljust(size, b".")


# ----- notices: what the component tells the kit's observer


@dataclass(frozen=True, slots=True)
class Recovered:
    recovered: bool  # Started.recovered
    last: int  # the last entry found (0: none)
    whole: bool  # entries 1..last all there, each with its own content


@dataclass(frozen=True, slots=True)
class Wrote:
    n: int
    sync: bool


@dataclass(frozen=True, slots=True)
class WasPersisted:
    n: int
    in_order: bool


@dataclass(frozen=True, slots=True)
class HeardOf:
    peer: PeerId
    n: int
    sync: bool


# ----- the component


class Journal(Component):
    name: ClassVar[str] = "journal"
    protocol_id: ClassVar[str] = PROTOCOL_ID
    limits: ClassVar[Limits] = Limits(frame_size_bytes_max=256, depth_max=2, count_max=16)

    def __init__(
        self, storage: StorageReader, buddy: PeerId | None, interval_us: int, unsynced_every: int, size: int
    ) -> None:
        self.storage = storage
        self.buddy = buddy
        self.interval_us = interval_us
        self.unsynced_every = unsynced_every
        self.size = size
        self.next = 1
        self.last_persisted = 0

    def on_started(self, event: Started, now_us: int, out: Ready) -> None:
        bounds = self.storage.log_bounds(LOG)
        last = 0 if bounds is None else bounds[1]
        whole = bounds is None or (
            bounds[0] == 1
            and self.storage.log_entries(LOG, 1, last + 1)
            == [payload(n, self.size) for n in range(1, last + 1)]
        )
        out.notices.append(Recovered(event.recovered, last, whole))
        self.next = last + 1
        self.last_persisted = last
        out.timers.append(SetTimer(self.timer_key("write"), now_us + self.interval_us))

    def on_timer(self, suffix: str, now_us: int, out: Ready) -> None:
        n = self.next
        self.next += 1
        sync = not (self.unsynced_every and n % self.unsynced_every == 0)
        append = LogAppend(LOG, n, (payload(n, self.size),))
        out.writes.append(WriteBatch(self.name, (append,), sync=sync, tag=n))
        out.notices.append(Wrote(n, sync))
        if self.buddy is not None:
            # Held by the interpreter until the write above is persisted.
            out.send.append(Send(self.buddy, PROTOCOL_ID, {"v": 1, "t": "j", "n": n, "s": sync}))
        out.timers.append(SetTimer(self.timer_key("write"), now_us + self.interval_us))

    def on_persisted(self, tag: int, now_us: int, out: Ready) -> None:
        out.notices.append(WasPersisted(tag, tag > self.last_persisted))
        self.last_persisted = tag

    def on_message(self, event: MessageReceived, now_us: int, out: Ready) -> None:
        n, sync = event.message.get("n"), event.message.get("s")
        if event.message.get("t") != "j" or not isinstance(n, int) or not isinstance(sync, bool):
            raise RemoteProtocolError("not a journal announcement")
        out.notices.append(HeardOf(event.peer, n, sync))


# ----- the kit


class JournalKit(Kit):
    name: ClassVar[str] = "journal"
    settings: ClassVar[dict[str, Field]] = {
        "interval_ms": Field(float, 200.0, positive),
        "unsynced_every": Field(int, 0, nonneg),
        "entry_bytes": Field(int, 32, at_least(8)),
        "announce": Field(bool, True),
    }
    summary_keys: ClassVar[tuple[str, ...]] = (
        "journal_entries_persisted",
        "journal_recoveries",
        "journal_entries_lost",
    )
    sweep_figures: ClassVar[tuple[str, ...]] = ("journal_entries_lost",)

    def components(self, sim: Sim, node: SimNode) -> Sequence[CoreFactory]:
        table = sim.scenario.kit(self.name)
        peers = sim.scenario.top["peers"]
        buddy = sim.nodes[(node.index + 1) % peers].peer if table["announce"] and peers > 1 else None

        def build(ctx: NodeContext) -> Component:
            interval_us = int(table["interval_ms"] * US_PER_MS)
            storage = ctx.storage(Journal.name)
            return Journal(storage, buddy, interval_us, table["unsynced_every"], table["entry_bytes"])

        return (build,)

    def observer(self, sim: Sim) -> Observer:
        return JournalObserver(sim)


class JournalObserver(Observer):
    name = "journal"

    def __init__(self, sim: Sim) -> None:
        super().__init__()
        self.sim = sim
        self.promised: dict[int, int] = {}  # node -> highest synced entry its processes saw Persisted
        self.written: dict[int, int] = {}  # node -> highest entry its current process wrote
        self.wipes_seen: dict[int, int] = {}
        self.progress: dict[int, int] = {}  # node -> entries persisted by its current process
        self.entries_written = self.entries_persisted = self.recoveries = self.entries_lost = 0
        self.unsynced_lost = 0
        self.announcements_checked = 0
        self._synced: dict[int, set[int]] = {}  # node -> synced entries written, not yet persisted
        # (node, entry) -> the node's wipe count when it wrote the entry, until its buddy hears of it.
        self._announced: dict[tuple[int, int], int] = {}
        self._liveness_from: dict[int, int] = {}

    def on_node_up(self, node: SimNode) -> None:
        self.progress[node.index] = 0

    def on_node_down(self, node: SimNode) -> None:
        self.progress.pop(node.index, None)

    def on_notices(self, node: SimNode, items: list[Any], now_us: int) -> None:
        index = node.index
        for item in items:
            if isinstance(item, Wrote):
                self.entries_written += 1
                self.written[index] = item.n
                if item.sync:
                    self._synced.setdefault(index, set()).add(item.n)
                    if len(self._announced) < ANNOUNCED_MAX:
                        self._announced[(index, item.n)] = node.disk.wipes
            elif isinstance(item, WasPersisted):
                self.entries_persisted += 1
                self.progress[index] = self.progress.get(index, 0) + 1
                if not item.in_order:
                    self.violations.append(f"{node.peer}: Persisted({item.n}) arrived out of write order")
                synced = self._synced.get(index, set())
                if item.n in synced:
                    synced.discard(item.n)
                    self.promised[index] = max(self.promised.get(index, 0), item.n)
            elif isinstance(item, Recovered):
                self._on_recovered(node, item)
            elif isinstance(item, HeardOf):
                self._on_heard(node, item)

    def _on_recovered(self, node: SimNode, item: Recovered) -> None:
        index = node.index
        if node.disk.wipes != self.wipes_seen.get(index, 0):
            self.wipes_seen[index] = node.disk.wipes
            self.promised[index] = 0  # a wiped disk owes nothing
        if index in self.written:  # a restart, not a first start
            self.recoveries += 1
            self.entries_lost += max(0, self.written[index] - item.last)
        promised = self.promised.get(index, 0)
        if item.last < promised:
            self.violations.append(
                f"{node.peer}: recovered entries 1..{item.last}, "
                f"but entry {promised} was synced and Persisted"
            )
        if not item.whole:
            self.violations.append(f"{node.peer}: recovered log 1..{item.last} has holes or wrong content")
        if item.last and not item.recovered:
            self.violations.append(
                f"{node.peer}: Started(recovered=False), yet {item.last} entries are there"
            )
        self.written[index] = item.last
        self._synced[index] = set()

    def _on_heard(self, node: SimNode, item: HeardOf) -> None:
        sender = self.sim.node(item.peer)
        wipes = self._announced.pop((sender.index, item.n), None)
        if not item.sync or wipes != sender.disk.wipes:
            return  # unsynced, a duplicate, or the sender's disk was wiped since it wrote the entry
        bounds = sender.disk.durable.reader(Journal.name).log_bounds(LOG)
        self.announcements_checked += 1
        if bounds is None or bounds[1] < item.n:
            self.violations.append(
                f"{node.peer} heard of {item.peer}'s entry {item.n} before it was durable (on disk: {bounds})"
            )

    def start_liveness(self) -> None:
        self._liveness_from = dict(self.progress)

    def converged(self) -> bool:
        return all(
            self.progress.get(node.index, 0) > self._liveness_from.get(node.index, -1)
            for node in self.sim.nodes
            if node.up
        )

    def figures(self) -> dict[str, Any]:
        return {
            "journal_entries_written": self.entries_written,
            "journal_entries_persisted": self.entries_persisted,
            "journal_recoveries": self.recoveries,
            "journal_entries_lost": self.entries_lost,
            "journal_announcements_checked": self.announcements_checked,
        }

"""Gossip membership of real ``pyagent daemon`` processes, measured the way Serf was on this machine.

    .venv/bin/python bench/membership_daemons.py                  # 5 and 10 daemons, then the netns partition
    .venv/bin/python bench/membership_daemons.py --sizes 5 --idle-s 5 --no-netns
    .venv/bin/python bench/membership_daemons.py --wire-only      # bytes on the wire beside Serf only

First, bytes on the wire beside Serf (``membership_wire``): 5 daemons, then 5 Serf agents when ``serf`` is
installed, then 5 more with a gossip key (``-encrypt``: sealed packets, as our datagrams are), each
counted by nftables on its agents' ports (IP and TCP/UDP headers included), idle and during a kill -9 and
a leave, with detection and leave times and our/Serf ratios.

For each size, daemons on 127.0.0.1 (``pyagent.localmesh``): the time to converge (from the last daemon's
control API answering to every daemon holding every member alive), idle traffic per member (the host's
``bytes_out``/``bytes_in`` counters of ``pyagent stats`` over an idle window: framed messages, before
Noise, yamux and TCP), the RSS of a daemon, ``kill -9`` until suspect and dead on every survivor, a restart
of that daemon until every member holds it alive again, and a graceful leave (SIGTERM, which leaves the
mesh before stopping, as ``pyagent leave`` does) until every member holds it left.

Then, when network namespaces are available (root), five daemons on five namespaced hosts: idle traffic on
the wire (the hosts' veth counters: everything, TCP/IP headers included), a 3|2 partition until each side
holds the other dead, and the heal until all five are alive everywhere. Every timeout derives from
``membership.LAN``; the control API polls are local (unix socket), so they add no traffic.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import membership_wire
from membership_wire import KV_QUIET
from pyagent.localmesh import LocalPeer, converged, member_states, start_mesh, stop_all, wait_until
from pyagent.proto import membership
from pyagent.testing.netns import NetnsUnavailable, Network, check_available, network
from serf_agents import serf_binary
from wire_counters import NftUnavailable

View = dict[str, str]
Views = dict[str, View]
Condition = Callable[[Views], bool]

CONFIG = membership.LAN
# The documented bounds assume every member is healthy; five or ten daemons and this script share two
# loaded cores, so a probe round can run late.
BOUND_SLACK = 1.5
STARTUP_SETTLE_S = 30.0
POLL_S = 0.1
NETNS_HOSTS = 5
NETNS_MAJORITY = 3
NETNS_LISTEN_PORT = 4001

SERF = {
    "converge_s": "0.15-0.48",
    "kill_dead_everywhere_s": "5.5-8.5",
    "leave_left_everywhere_s": "0.3-1.0",
    "restart_alive_everywhere_s": "0.25-0.56",
    "idle_bytes_per_s": "300-375",
    "rss_mib": "14",
    "partition_3_side_dead_s": "5.5-10.7",
    "partition_2_side_dead_s": "16-21",
    "heal_s": "7-17",
}


def dead_bound_s(members: int) -> float:
    return BOUND_SLACK * CONFIG.dead_everywhere_bound_ms(members) / 1000


def heal_bound_s() -> float:
    # Reconnect pings find the other side within a few intervals; a push-pull period is the fallback.
    return BOUND_SLACK * (3 * CONFIG.reconnect_interval_ms + CONFIG.push_pull_interval_ms) / 1000


def views_of(peers: Sequence[LocalPeer]) -> Views:
    return {p.peer_id: member_states(p) for p in peers}


def holds(viewers: Sequence[LocalPeer], subjects: Sequence[LocalPeer], states: set[str]) -> Condition:
    """Every viewer holds every subject in one of ``states``."""
    return lambda views: all(views[v.peer_id].get(s.peer_id) in states for v in viewers for s in subjects)


def watch(peers: Sequence[LocalPeer], conditions: dict[str, Condition], timeout_s: float) -> dict[str, float]:
    """Poll ``peers``' views until every condition has held once; the seconds until each first held."""
    started = time.monotonic()
    first: dict[str, float] = {}
    while len(first) < len(conditions):
        elapsed = time.monotonic() - started
        if elapsed > timeout_s:
            missing = sorted(set(conditions) - set(first))
            raise TimeoutError(f"not within {timeout_s:.0f} s: {', '.join(missing)}")
        views = views_of(peers)
        for name, condition in conditions.items():
            if name not in first and condition(views):
                first[name] = elapsed
        time.sleep(POLL_S)
    return first


def rss_mib(peer: LocalPeer) -> float:
    assert peer.process is not None
    for line in Path(f"/proc/{peer.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {peer.name}")


# Membership message kinds (``membership.sent_bytes.<kind>``, msgpack bodies) grouped by purpose.
MESSAGE_GROUPS = {
    "probing": ("ping", "ack", "nack", "ping_req"),
    "news": ("gossip", "metadata_query", "metadata_reply"),
    "anti_entropy": ("push_pull", "push_pull_reply"),
}


def meta_versions(peer: LocalPeer) -> dict[str, int]:
    return {m["peer"]: m["meta_version"] for m in peer.call("members")}


def idle_traffic(peers: Sequence[LocalPeer], idle_s: float) -> dict[str, float]:
    """Per member over ``idle_s``: bytes/s out and in from the host's counters, membership's own bytes/s by
    purpose, and how many members republished their metadata (the load refresh) meanwhile."""
    versions_before = meta_versions(peers[0])
    before = [p.call("stats") for p in peers]
    started = time.monotonic()
    time.sleep(idle_s)
    after = [p.call("stats") for p in peers]
    window_s = time.monotonic() - started
    versions_after = meta_versions(peers[0])

    def rate(*keys: str) -> float:
        total: int = sum(a.get(k, 0) - b.get(k, 0) for a, b in zip(after, before, strict=True) for k in keys)
        return total / len(peers) / window_s

    figures = {"idle_out_bytes_per_s": rate("bytes_out"), "idle_in_bytes_per_s": rate("bytes_in")}
    for group, kinds in MESSAGE_GROUPS.items():
        figures[f"idle_{group}_bytes_per_s"] = rate(*(f"membership.sent_bytes.{kind}" for kind in kinds))
    figures["idle_republished"] = sum(versions_after[p] != versions_before.get(p) for p in versions_after)
    return figures


def settle(peers: Sequence[LocalPeer]) -> float:
    """Wait for convergence; then let the post-join push-pulls (up to four probe intervals) pass."""
    converge_s = wait_until(lambda: converged(list(peers)), STARTUP_SETTLE_S, "convergence", POLL_S)
    time.sleep(4 * CONFIG.probe_interval_ms / 1000)
    return converge_s


def local_run(base: Path, size: int, idle_s: float) -> dict[str, float]:
    peers = start_mesh(base, size)
    try:
        figures: dict[str, float] = {"converge_s": settle(peers)}
        figures |= idle_traffic(peers, idle_s)
        figures["rss_mib"] = max(rss_mib(p) for p in peers)

        # Neither is node-1, the seed that a restarted daemon bootstraps from.
        victim, leaver = peers[-1], peers[-2]
        survivors = [p for p in peers if p is not victim]
        victim.kill()
        kill = watch(
            survivors,
            {
                "suspect": holds(survivors, [victim], {"suspect", "dead"}),
                "dead": holds(survivors, [victim], {"dead"}),
            },
            dead_bound_s(size),
        )
        figures["kill_suspect_everywhere_s"] = kill["suspect"]
        figures["kill_dead_everywhere_s"] = kill["dead"]

        spawned = time.monotonic()
        victim.start()
        victim.wait_ready()
        ready_s = time.monotonic() - spawned
        alive_s = watch(peers, {"alive": holds(peers, [victim], {"alive"})}, dead_bound_s(size))["alive"]
        figures["restart_alive_everywhere_s"] = alive_s
        figures["restart_from_spawn_s"] = ready_s + alive_s

        stayers = [p for p in peers if p is not leaver]
        leaver.terminate()
        figures["leave_left_everywhere_s"] = watch(
            stayers, {"left": holds(stayers, [leaver], {"left"})}, dead_bound_s(size)
        )["left"]
        return figures
    finally:
        stop_all(peers)


def veth_bytes(net: Network) -> list[tuple[int, int]]:
    """(out, in) bytes of each namespaced host: its veth's peer counts the other way round."""
    counts = []
    for host in net.hosts:
        stats = Path(f"/sys/class/net/{host.host_veth}/statistics")
        counts.append((int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())))
    return counts


def netns_run(base: Path, idle_s: float) -> dict[str, float]:
    with network(NETNS_HOSTS) as net:
        peers = start_mesh(
            base, len(net.hosts), placements=net.placements(NETNS_LISTEN_PORT), name_prefix="ns"
        )
        try:
            figures = {"converge_s": settle(peers)}
            before, started = veth_bytes(net), time.monotonic()
            time.sleep(idle_s)
            after, window_s = veth_bytes(net), time.monotonic() - started
            figures["idle_wire_out_bytes_per_s"] = statistics.mean(
                (a[0] - b[0]) / window_s for a, b in zip(after, before, strict=True)
            )
            figures["idle_wire_in_bytes_per_s"] = statistics.mean(
                (a[1] - b[1]) / window_s for a, b in zip(after, before, strict=True)
            )

            majority, minority = peers[:NETNS_MAJORITY], peers[NETNS_MAJORITY:]
            net.partition([net.hosts[:NETNS_MAJORITY], net.hosts[NETNS_MAJORITY:]])
            sides = {"3_side": (majority, minority), "2_side": (minority, majority)}
            conditions: dict[str, Condition] = {}
            for label, (side, other) in sides.items():
                conditions[f"partition_{label}_suspect_s"] = holds(side, other, {"suspect", "dead"})
                conditions[f"partition_{label}_dead_s"] = holds(side, other, {"dead"})
            figures |= watch(peers, conditions, dead_bound_s(NETNS_HOSTS))

            net.heal()
            figures["heal_s"] = wait_until(lambda: converged(peers), heal_bound_s(), "the heal", POLL_S)
            return figures
        finally:
            stop_all(peers)


def print_table(title: str, rows: Sequence[tuple[str, ...]]) -> None:
    print(f"\n{title}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def local_rows(results: dict[int, dict[str, float]]) -> list[tuple[str, str, str]]:
    sizes = sorted(results)
    header = ("figure", "  ".join(f"N={n:<6}" for n in sizes), "Serf 0.9.4 (N=5..20)")
    lines = [
        ("converge (s)", "converge_s", "converge_s", "{:.2f}"),
        ("kill -9 -> suspect everywhere (s)", "kill_suspect_everywhere_s", "", "{:.1f}"),
        ("kill -9 -> dead everywhere (s)", "kill_dead_everywhere_s", "kill_dead_everywhere_s", "{:.1f}"),
        ("leave -> left everywhere (s)", "leave_left_everywhere_s", "leave_left_everywhere_s", "{:.2f}"),
        (
            "restart: ready -> alive everywhere (s)",
            "restart_alive_everywhere_s",
            "restart_alive_everywhere_s",
            "{:.2f}",
        ),
        ("restart: spawn -> alive everywhere (s)", "restart_from_spawn_s", "", "{:.2f}"),
        ("idle frames out per member (B/s)", "idle_out_bytes_per_s", "idle_bytes_per_s", "{:.0f}"),
        ("idle frames in per member (B/s)", "idle_in_bytes_per_s", "", "{:.0f}"),
        ("  of which probing: ping/ack/nack/ping-req (B/s)", "idle_probing_bytes_per_s", "", "{:.0f}"),
        ("  of which news: gossip, metadata fetch (B/s)", "idle_news_bytes_per_s", "", "{:.0f}"),
        ("  of which push-pull (B/s)", "idle_anti_entropy_bytes_per_s", "", "{:.0f}"),
        ("members republishing metadata in the window", "idle_republished", "", "{:.0f}"),
        ("RSS of a daemon, max (MiB)", "rss_mib", "rss_mib", "{:.0f}"),
    ]
    rows = [header]
    for label, key, serf_key, fmt in lines:
        cells = "  ".join(f"{fmt.format(results[n][key]):<8}" for n in sizes)
        rows.append((label, cells, SERF.get(serf_key, "")))
    return rows


def netns_rows(figures: dict[str, float]) -> list[tuple[str, str, str]]:
    lines = [
        ("converge (s)", "converge_s", "converge_s", "{:.2f}"),
        ("idle on the wire out per host (B/s)", "idle_wire_out_bytes_per_s", "idle_bytes_per_s", "{:.0f}"),
        ("idle on the wire in per host (B/s)", "idle_wire_in_bytes_per_s", "", "{:.0f}"),
        ("3-side holds the 2 suspect (s)", "partition_3_side_suspect_s", "", "{:.1f}"),
        ("3-side holds the 2 dead (s)", "partition_3_side_dead_s", "partition_3_side_dead_s", "{:.1f}"),
        ("2-side holds the 3 suspect (s)", "partition_2_side_suspect_s", "", "{:.1f}"),
        ("2-side holds the 3 dead (s)", "partition_2_side_dead_s", "partition_2_side_dead_s", "{:.1f}"),
        ("heal -> all alive everywhere (s)", "heal_s", "heal_s", "{:.1f}"),
    ]
    rows = [("figure", "ours", "Serf 0.9.4")]
    rows += [(label, fmt.format(figures[key]), SERF.get(serf_key, "")) for label, key, serf_key, fmt in lines]
    return rows


def wire_run(base: Path, size: int, idle_s: float, runs: int) -> None:
    """Bytes on the wire per member, idle and under churn, with detection and leave times, beside Serf;
    each system ``runs`` times on fresh agents (the whole default daemon once: it is not compared)."""
    timeout_s = dead_bound_s(size)

    def repeat(
        name: str, run: Callable[[Path], membership_wire.WireFigures], times: int = runs
    ) -> list[membership_wire.WireFigures]:
        return [run(base / f"{name}-{n}") for n in range(times)]

    try:
        ours = repeat("ours", lambda d: membership_wire.pyagent_run(d, size, idle_s, timeout_s, KV_QUIET))
        whole = repeat("whole", lambda d: membership_wire.pyagent_run(d, size, idle_s, timeout_s, ""), 1)
        serf, sealed_serf = [], []
        if serf_binary() is None:
            print("\nSerf: skipped (not installed: apt-get install serf)")
        else:
            serf = repeat("serf", lambda d: membership_wire.serf_run(d, size, idle_s, timeout_s))
            sealed_serf = repeat(
                "serf-encrypt", lambda d: membership_wire.serf_run(d, size, idle_s, timeout_s, encrypt=True)
            )
    except NftUnavailable as reason:
        print(f"\non the wire: skipped ({reason})")
        return
    title = (
        f"On the wire, {size} agents on 127.0.0.1 (nftables: all bytes on the agents' ports, IP+TCP/UDP), "
        f"{runs} runs each pooled"
    )
    print_table(title, membership_wire.rows(ours, whole, serf, sealed_serf))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle window for the traffic figures")
    parser.add_argument("--no-netns", action="store_true", help="skip the namespaced partition run")
    parser.add_argument("--wire-size", type=int, default=5, help="agents of the on-the-wire comparison")
    parser.add_argument("--wire-idle-s", type=float, default=20.0, help="its idle window")
    parser.add_argument("--wire-runs", type=int, default=3, help="runs per system, pooled")
    parser.add_argument("--wire-only", action="store_true", help="only the on-the-wire comparison")
    args = parser.parse_args()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyagent-bench-") as tmp:
        base = Path(tmp)
        wire_run(base / "wire", args.wire_size, args.wire_idle_s, args.wire_runs)
        if args.wire_only:
            return
        results = {size: local_run(base / f"local-{size}", size, args.idle_s) for size in args.sizes}
        print_table("Daemons on 127.0.0.1 (LAN preset)", local_rows(results))
        if args.no_netns:
            print("\nnetns partition: skipped (--no-netns)")
        else:
            try:
                check_available()
            except NetnsUnavailable as reason:
                print(f"\nnetns partition: skipped ({reason})")
            else:
                figures = netns_run(base / "netns", args.idle_s)
                print_table(f"{NETNS_HOSTS} daemons on namespaced hosts, 3|2 partition", netns_rows(figures))
    print(f"\n(bench took {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()

"""Prometheus telemetry: one ``CollectorRegistry`` per daemon, read by ``/metrics`` and ``pyagent stats``.

Two kinds of values live in it:

- instruments the daemon updates as things happen (``prometheus_client`` Counter, Gauge, Histogram):
  membership transitions and detection latency, control-API latency, and whatever plugins add through
  ``Metrics`` (``hookspecs.pyagent_add_metrics``);
- values read at scrape time from the counters the daemon keeps anyway (``NodeCollector``): every host
  counter by its name, per-protocol frames, bytes and errors, dial outcomes, connections and streams,
  member states, storage, transfers, and every component's ``counters`` mapping. Reading them only when
  scraped costs the hot path nothing beyond the integer increments it already did.

Everything is read and updated on the trio thread (``metrics_http.py`` says why), so the daemon's dicts
are never read while another thread changes them.

Names follow Prometheus's conventions: a ``pyagent_`` prefix, units last (``_seconds``, ``_bytes``), and
``_total`` on counters. ``stats_view`` renders the registry for ``pyagent stats``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from pyagent.errors import ConfigError
from pyagent.proto import membership

if TYPE_CHECKING:
    from pyagent.node.daemon import Node

# A `_created` series per counter doubles the output and no dashboard here uses it.
prometheus_client.disable_created_metrics()

PREFIX = "pyagent_"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
DEFAULT_BUCKETS = Histogram.DEFAULT_BUCKETS

# Detection: from the last sign of life to suspect (a probe round and its timeouts, ~1-3 s on "lan") and
# to dead (plus the suspicion timeout, which grows with the mesh: 3-10 s on "lan", more on "wan").
DETECTION_BUCKETS_S = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
# Control methods: most answer in a millisecond; ping and connect wait for the network.
CONTROL_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

STATE_NAMES = tuple(state.name.lower() for state in membership.State)
NEW = "new"  # the "from" of a member this node had not known


class _Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class Metrics:
    """The daemon's metrics registry, and the API plugins add their metrics through.

    ``counter``, ``gauge`` and ``histogram`` return the ``prometheus_client`` instrument of that name,
    creating it on first use, so calling them again (from another hook) is cheap and safe. Names are
    prefixed ``pyagent_`` unless they already are; name yours ``<plugin>_<what>[_<unit>]`` (a counter's
    ``_total`` is added by prometheus_client). The same name asked for with another kind or other labels
    is an error (``ConfigError``): two plugins cannot silently share a series.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._instruments: dict[str, tuple[type, tuple[str, ...], Any]] = {}

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        counter: Counter = self._instrument(Counter, name, documentation, labels)
        return counter

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        gauge: Gauge = self._instrument(Gauge, name, documentation, labels)
        return gauge

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        histogram: Histogram = self._instrument(Histogram, name, documentation, labels, buckets=buckets)
        return histogram

    def names(self) -> list[str]:
        """The names of the instruments made through this object (families, without ``_total``)."""
        return list(self._instruments)

    def register(self, collector: _Collector) -> None:
        """Add a custom collector: an object whose ``collect()`` yields ``prometheus_client.core``
        metric families, read at each scrape (and each ``pyagent stats``) on the daemon's trio thread.
        Use it for values the plugin already keeps (a table's size), so they cost nothing between scrapes;
        ``collect`` must be quick and must not block."""
        self.registry.register(collector)

    def _instrument(
        self, kind: type, name: str, documentation: str, labels: Sequence[str], **kwargs: Any
    ) -> Any:
        full = name if name.startswith(PREFIX) else PREFIX + name
        if kind is Counter:
            full = full.removesuffix("_total")
        if not NAME_PATTERN.fullmatch(full):
            raise ConfigError(f"metric name {full!r} must match {NAME_PATTERN.pattern}")
        key = tuple(labels)
        known = self._instruments.get(full)
        if known is not None:
            if known[0] is not kind or known[1] != key:
                raise ConfigError(
                    f"metric {full!r} is already a {known[0].__name__.lower()} with labels {list(known[1])}; "
                    f"a plugin's metrics are named after the plugin (<plugin>_<what>)"
                )
            return known[2]
        try:
            instrument = kind(full, documentation, key, registry=self.registry, **kwargs)
        except ValueError as exc:  # prometheus_client: a duplicate series or a bad label name
            raise ConfigError(f"metric {full!r}: {exc}") from None
        self._instruments[full] = (kind, key, instrument)
        return instrument


class DaemonMetrics:
    """The daemon's own instruments, and the bookkeeping of what it saw happen (membership, control)."""

    def __init__(self, metrics: Metrics, membership_protocol: str, last_seen_max: int) -> None:
        self.metrics = metrics
        self._membership_protocol = membership_protocol
        self._last_seen_max = last_seen_max
        # Per member, when this node last had a sign of life from it (µs, the core's clock): a membership
        # message from it, or news that it is alive. What detection latency is measured from.
        self._last_seen_us: dict[str, int] = {}
        self.transitions = metrics.counter(
            "membership_transitions",
            "Member state changes this node saw, by old and new state ('new': a member it had not known).",
            ("from", "to"),
        )
        self.detection = metrics.histogram(
            "membership_detection_seconds",
            "Time from this node's last sign of life from a member (a membership message from it, or news "
            "that it is alive) to this node holding it suspect, or dead.",
            ("state",),
            buckets=DETECTION_BUCKETS_S,
        )
        self.control = metrics.histogram(
            "control_request_duration_seconds",
            "Time to answer a control-API request (pyagent CLI and other clients), by method.",
            ("method",),
            buckets=CONTROL_BUCKETS_S,
        )
        # Every series a dashboard plots exists from the start, so rate() sees its first increment.
        for old in (NEW, *STATE_NAMES):
            for new in STATE_NAMES:
                if old != new:
                    self.transitions.labels(old, new)
        for state in ("suspect", "dead"):
            self.detection.labels(state)
        ProcessCollector(registry=metrics.registry)

    def heard(self, peer: str, protocol: str, now_us: int) -> None:
        """A message arrived (the daemon's ``after_step``): a membership message is a sign of life."""
        if protocol != self._membership_protocol:
            return
        if peer in self._last_seen_us or len(self._last_seen_us) < self._last_seen_max:
            self._last_seen_us[peer] = now_us

    def member_changed(self, change: membership.MemberChanged, now_us: int) -> None:
        """A ``MemberChanged`` notice, at ``now_us`` (the driver's clock, as ``change.at_us`` is except for
        members recovered from storage, whose ``at_us`` is from an earlier run)."""
        old = NEW if change.old_state is None else change.old_state.name.lower()
        new = change.new_state.name.lower()
        self.transitions.labels(old, new).inc()
        state = change.new_state
        if change.old_state is None and state is not membership.State.ALIVE:
            return  # recovered from storage at start: nothing was detected now
        if state is membership.State.ALIVE:
            if change.peer in self._last_seen_us or len(self._last_seen_us) < self._last_seen_max:
                self._last_seen_us[change.peer] = now_us
        elif state in (membership.State.SUSPECT, membership.State.DEAD):
            seen_us = self._last_seen_us.get(change.peer)
            if seen_us is not None and change.old_state is not membership.State.DEAD:
                self.detection.labels(new).observe(max(0, now_us - seen_us) / 1e6)
            if state is membership.State.DEAD:
                self._last_seen_us.pop(change.peer, None)
        else:  # left: gone on purpose, nothing to detect
            self._last_seen_us.pop(change.peer, None)

    def timed(self, methods: Mapping[str, Callable[[dict[str, Any]], Awaitable[Any]]]) -> dict[str, Any]:
        """The control methods, each observed into ``pyagent_control_request_duration_seconds``."""
        return {name: self._timed(name, method) for name, method in methods.items()}

    def _timed(
        self, name: str, method: Callable[[dict[str, Any]], Awaitable[Any]]
    ) -> Callable[[dict[str, Any]], Awaitable[Any]]:
        histogram = self.control.labels(name)

        async def call(params: dict[str, Any]) -> Any:
            started = time.perf_counter()
            try:
                return await method(params)
            finally:
                histogram.observe(time.perf_counter() - started)

        return call


# The per-label breakdowns of host counters: counter name -> (metric family, label name, help).
LABELLED_HOST_COUNTERS = {
    "frames_in": ("pyagent_protocol_received_frames", "protocol", "Framed messages received, by protocol."),
    "frames_out": ("pyagent_protocol_sent_frames", "protocol", "Framed messages sent, by protocol."),
    "bytes_in": ("pyagent_protocol_received_bytes", "protocol", "Bytes of frames received, by protocol."),
    "bytes_out": ("pyagent_protocol_sent_bytes", "protocol", "Bytes of frames sent, by protocol."),
    "protocol_errors": (
        "pyagent_protocol_errors",
        "protocol",
        "Peers' undecodable or oversized frames, by protocol; each cost the peer its stream.",
    ),
    "requests_in": ("pyagent_protocol_requests_received", "protocol", "Requests received, by protocol."),
    "requests_out": ("pyagent_protocol_requests_sent", "protocol", "Requests sent, by protocol."),
    "dial_outcomes": (
        "pyagent_dials",
        "outcome",
        "Finished outbound dials, by outcome: ok or why it failed.",
    ),
}
PER_PROTOCOL_ZEROS = ("frames_in", "frames_out", "bytes_in", "bytes_out", "protocol_errors")
DIAL_OUTCOMES = ("ok", "unreachable", "timeout", "wrong-peer-id", "key-mismatch", "security", "refused")


class NodeCollector:
    """The values the daemon keeps anyway, read at scrape time (see the module doc)."""

    def __init__(self, node: Node, metrics: Metrics) -> None:
        self.node = node
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        # Generic names (a host counter, a component's counter) must not repeat a family: Prometheus
        # refuses a whole scrape with a duplicate series in it.
        taken = set(self._metrics.names())
        for metric in self._collect():
            if metric.name not in taken:
                taken.add(metric.name)
                yield metric

    def _collect(self) -> Iterable[Metric]:
        node = self.node
        counters = node.host.counters
        counts = counters.snapshot()
        for name, value in counts.items():
            yield _counter(f"pyagent_host_{name}", f"Host counter {name!r} (pyagent/node/host.py).", value)
        for name, value in node.host.stats().items():
            if name not in counts:
                yield _gauge(f"pyagent_host_{name}", f"Host value {name!r} (pyagent/node/host.py).", value)
        # Zeros for what has not happened yet, so that each series exists from the start.
        labelled = counters.labelled()
        for outcome in DIAL_OUTCOMES:
            labelled.setdefault("dial_outcomes", {}).setdefault(outcome, 0)
        for protocol in node.core.protocols:
            for name in PER_PROTOCOL_ZEROS:
                labelled.setdefault(name, {}).setdefault(protocol, 0)
        for counter_name, by_label in sorted(labelled.items()):
            family, label, documentation = LABELLED_HOST_COUNTERS.get(
                counter_name,
                (f"pyagent_host_{counter_name}_by", "label", f"Host counter {counter_name!r}, by label."),
            )
            metric = CounterMetricFamily(family, documentation, labels=[label])
            for value_label, value in sorted(by_label.items()):
                metric.add_metric([value_label], value)
            yield metric
        yield _gauge("pyagent_connections", "Open libp2p connections.", node.host.open_connections())
        yield _gauge("pyagent_streams", "Open libp2p streams over all connections.", node.host.open_streams())
        yield _counter(
            "pyagent_core_remote_errors",
            "Frames that decoded but that a protocol core rejected; each cost the peer its stream.",
            node.driver.remote_errors,
        )
        yield _counter(
            "pyagent_core_replies_dropped",
            "Replies to local requests nobody waited for any more.",
            node.core.replies_dropped,
        )
        yield _counter(
            "pyagent_on_demand_dial_failures",
            "Dials to members for a send that failed.",
            node.dialer.dial_failures,
        )
        yield _counter(
            "pyagent_on_demand_frames_dropped",
            "Frames dropped because their member could not be dialed.",
            node.dialer.frames_dropped,
        )
        for name, value in node.storage.counters().items():
            yield _counter(f"pyagent_{name}", f"Storage counter {name!r} (pyagent/node/storage.py).", value)
        yield from _transfer_metrics(node.transfers.stats())
        yield from self._membership()
        for component in node.core.components:
            component_counters = getattr(component, "counters", None)
            if isinstance(component_counters, Mapping):
                yield from _component_counters(component.name, component_counters)

    def _membership(self) -> Iterable[Metric]:
        members = self.node.members
        by_state = dict.fromkeys(STATE_NAMES, 0)
        for record in members.members():
            by_state[record.state.name.lower()] += 1
        states = GaugeMetricFamily(
            "pyagent_membership_members",
            "Members this node knows, itself included, by state.",
            labels=["state"],
        )
        for state, count in by_state.items():
            states.add_metric([state], count)
        yield states
        yield _gauge(
            "pyagent_membership_health_score",
            "Lifeguard's local health score: 0 is healthy; higher means this node is slow to answer.",
            members.health_score,
        )


def _transfer_metrics(stats: Mapping[str, int]) -> Iterable[Metric]:
    from pyagent.node.transfer import COUNTER_NAMES

    for name, value in stats.items():
        documentation = f"Bulk transfers: {name!r} (pyagent/node/transfer.py)."
        if name in COUNTER_NAMES:
            yield _counter(f"pyagent_transfer_{name}", documentation, value)
        else:
            yield _gauge(f"pyagent_transfer_{name}", documentation, value)


def _component_counters(component: str, counters: Mapping[str, Any]) -> Iterable[Metric]:
    seen: set[str] = set()
    for key, value in sorted(counters.items()):
        if not isinstance(value, int | float):
            continue
        family = f"pyagent_{component}_{_sanitize(str(key))}"
        if family in seen:
            continue
        seen.add(family)
        yield _counter(family, f"Counter {key!r} of component {component!r}.", value)


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "unnamed"


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def stats_view(registry: CollectorRegistry) -> dict[str, int | float]:
    """The registry as ``pyagent stats`` shows it: one key per series (``stats_key``), histograms as their
    count and sum (no buckets)."""
    view: dict[str, int | float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_created", "_gcount", "_gsum")):
                continue
            value = sample.value
            view[stats_key(sample.name, family.type, sample.labels)] = (
                int(value) if float(value).is_integer() else value
            )
    return view


def stats_key(name: str, kind: str, labels: Mapping[str, str]) -> str:
    """A series' key in ``pyagent stats``: its name without ``pyagent_`` and a counter's ``_total``, and
    without ``host_`` for the host's own counters (``protocol_errors``, ``connections_refused``: the names
    ``pyagent stats`` always had), then its labels: ``protocol_received_frames{protocol=/pyagent/...}``."""
    if kind == "counter":
        name = name.removesuffix("_total")
    for prefix in ("pyagent_host_", PREFIX):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if labels:
        name += "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"
    return name

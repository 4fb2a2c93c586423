"""What an operator sees of LoRA rounds: one log line per finished round, and Prometheus series."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from pyagent.node.metrics import Metrics

if TYPE_CHECKING:
    from pyagent.proto.lora import RoundFinished

log = logging.getLogger("pyagent.lora")

ROUND_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def add_metrics(metrics: Metrics) -> None:
    """Create every series up front, so a scrape shows them (at zero) before the first round."""
    rounds(metrics)
    bytes_sent(metrics)
    bytes_received(metrics)
    round_seconds(metrics)
    round_peers(metrics)


def record_round(metrics: Metrics, finished: RoundFinished) -> None:
    outcome = "timed_out" if finished.timed_out else "complete"
    seconds = finished.elapsed_us / 1e6
    rounds(metrics).labels(outcome=outcome).inc()
    bytes_sent(metrics).inc(finished.bytes_sent)
    bytes_received(metrics).inc(finished.bytes_received)
    round_seconds(metrics).observe(seconds)
    round_peers(metrics).set(finished.peers)
    log.info(
        "lora round %d finished (%s): %d peers, weight %g, %.2f s, %d B sent, %d B received",
        finished.round,
        outcome,
        finished.peers,
        finished.weight,
        seconds,
        finished.bytes_sent,
        finished.bytes_received,
    )


def rounds(metrics: Metrics) -> Counter:
    return metrics.counter("lora_rounds", "LoRA averaging rounds this node finished", ["outcome"])


def bytes_sent(metrics: Metrics) -> Counter:
    return metrics.counter("lora_sent_bytes", "Bytes of LoRA deltas this node sent")


def bytes_received(metrics: Metrics) -> Counter:
    return metrics.counter("lora_received_bytes", "Bytes of LoRA deltas this node received")


def round_seconds(metrics: Metrics) -> Histogram:
    return metrics.histogram(
        "lora_round_seconds", "How long this node's LoRA rounds took", buckets=ROUND_SECONDS_BUCKETS
    )


def round_peers(metrics: Metrics) -> Gauge:
    return metrics.gauge("lora_round_peers", "Members of this node's latest LoRA round")

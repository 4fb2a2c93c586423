"""/metrics of real daemons, scraped over HTTP while a member is killed, and `pyagent stats` beside it."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyagent.localmesh import LocalPeer, converged, init_home, stop_all, wait_until
from pyagent.node.metrics import stats_key
from pyagent.proto import membership
from pyagent.testing.cli import run_cli

COUNT = 3
CONVERGE_TIMEOUT_S = 30.0
MEMBERSHIP = membership.PROTOCOL_ID
DASHBOARD = Path(__file__).resolve().parents[2] / "bootstrap" / "grafana-dashboard.json"

Samples = dict[str, float]
LAST_NAMES: set[str] = set()  # the sample names of the last scrape


def scrape(url: str) -> tuple[Samples, dict[str, str]]:
    """Every sample of /metrics, by its `pyagent stats` key (buckets included), and each family's type."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples: Samples = {}
    kinds: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = stats_key(sample.name, family.type, sample.labels)
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
            kinds[key] = family.type
    LAST_NAMES.clear()
    LAST_NAMES.update(
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    )
    return samples, kinds


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[list[LocalPeer]]:
    started: list[LocalPeer] = []
    try:
        for index in range(COUNT):
            peer = LocalPeer(
                f"node-{index + 1}", tmp_path / f"node-{index + 1}", ["--metrics", "127.0.0.1:0"]
            )
            init_home(peer.home)
            if started:
                peer.extra_args += ["--bootstrap", started[0].addr]
            peer.start()
            started.append(peer)
            peer.wait_ready()
        yield started
    finally:
        stop_all(started)


def test_a_scrape_shows_a_member_going_suspect_then_dead(peers: list[LocalPeer]) -> None:
    wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "convergence")
    observer, victim = peers[0], peers[-1]
    url = observer.call("id")["metrics_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")

    before, kinds = scrape(url)
    assert before["membership_members{state=alive}"] == COUNT
    assert before["membership_members{state=dead}"] == 0
    assert before["membership_transitions{from=alive,to=suspect}"] == 0
    assert before["membership_transitions{from=new,to=alive}"] >= COUNT
    assert before[f"protocol_received_frames{{protocol={MEMBERSHIP}}}"] > 0
    assert before[f"protocol_sent_bytes{{protocol={MEMBERSHIP}}}"] > 0
    assert before[f"protocol_errors{{protocol={MEMBERSHIP}}}"] == 0
    assert before["connections"] >= 1 and before["streams"] >= 1
    assert before["control_request_duration_seconds_count{method=id}"] >= 1
    assert before["process_resident_memory_bytes"] > 0 and before["process_cpu_seconds"] > 0
    assert kinds["protocol_errors"] == "counter"  # every host counter, by its own name
    assert "dials{outcome=ok}" in before and "membership_probes" in before
    # Every series the shipped Grafana dashboard plots is one the daemon serves.
    exprs = [
        t["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel.get("targets", [])
    ]
    named = {n for e in exprs for n in re.findall(r"\b(?:pyagent|process)_[a-z_]+", e) if not n.endswith("_")}
    assert len(named) > 15 and named <= LAST_NAMES, sorted(named - LAST_NAMES)

    victim.kill()
    bound_s = membership.LAN.dead_everywhere_bound_ms(COUNT) / 1000
    seen_states: set[str] = set()

    def dead_in_a_scrape() -> bool:
        samples, _ = scrape(url)
        seen_states.update(s for s in ("suspect", "dead") if samples[f"membership_members{{state={s}}}"])
        return samples["membership_members{state=dead}"] == 1

    took_s = wait_until(dead_in_a_scrape, bound_s, "death in /metrics", poll_s=0.2)
    after, _ = scrape(url)
    print(
        f"\nscraped: suspect and dead in /metrics {took_s:.2f} s after kill -9 (seen: {sorted(seen_states)})"
    )
    assert after["membership_members{state=alive}"] == COUNT - 1
    assert after["membership_transitions{from=alive,to=suspect}"] == 1
    assert after["membership_transitions{from=suspect,to=dead}"] == 1
    assert after["membership_detection_seconds_count{state=suspect}"] == 1
    assert after["membership_detection_seconds_count{state=dead}"] == 1
    to_suspect_s = after["membership_detection_seconds_sum{state=suspect}"]
    to_dead_s = after["membership_detection_seconds_sum{state=dead}"]
    print(f"detection latency as the observer saw it: suspect {to_suspect_s:.2f} s, dead {to_dead_s:.2f} s")
    assert 0 < to_suspect_s < to_dead_s <= bound_s + 1
    assert after["membership_detection_seconds_bucket{le=+Inf,state=dead}"] == 1


def test_stats_and_metrics_agree(peers: list[LocalPeer]) -> None:
    wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "convergence")
    observer = peers[0]
    url = observer.call("id")["metrics_url"]

    def stats() -> dict[str, float]:
        shown = run_cli(observer.home, "stats", "--json")
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)

    first = stats()
    scraped, kinds = scrape(url)
    last = stats()
    series = {key for key in scraped if "_bucket{" not in key}
    # Scraping and `stats` each add to the control-method histograms: those series may appear in between.
    assert set(first) <= series <= set(last)
    for key in series & set(first):
        if kinds[key] in ("counter", "histogram"):
            # Counters only grow, and the scrape came between the two `stats`.
            assert first[key] <= scraped[key] <= last[key], key
    for key in [k for k in first if k.startswith("membership_members{")]:
        assert first[key] == scraped[key] == last[key], key

    # The table is the same values, zeros hidden unless asked for.
    table = run_cli(observer.home, "stats").stdout
    assert table.startswith("METRIC") and "membership_members{state=alive}  " in table
    assert "zero values not shown; --all shows them" in table
    assert len(run_cli(observer.home, "stats", "--all").stdout.splitlines()) > len(table.splitlines())


def test_a_busy_metrics_port_stops_the_daemon_with_one_line(peers: list[LocalPeer], tmp_path: Path) -> None:
    taken = peers[0].call("id")["metrics_url"].removeprefix("http://").removesuffix("/metrics")
    home = tmp_path / "second"
    init_home(home)
    started = time.monotonic()
    shown = run_cli(home, "daemon", "--metrics", taken, timeout_s=30)
    assert shown.returncode == 2, shown.stderr
    assert f"pyagent: error: cannot serve metrics on {taken}:" in shown.stderr
    assert "Traceback" not in shown.stderr and "daemon ready" not in shown.stderr
    print(f"\nrefused in {time.monotonic() - started:.2f} s")

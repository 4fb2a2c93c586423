"""Prometheus telemetry without a daemon: the config and flag, the plugin API, the membership bookkeeping,
the `pyagent stats` view of the registry, and the /metrics endpoint over real HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from pyagent import config
from pyagent.errors import ConfigError
from pyagent.node import metrics_http
from pyagent.node.counters import LABELS_MAX, OTHER_LABEL, Counters
from pyagent.node.metrics import DaemonMetrics, Metrics, stats_view
from pyagent.proto import membership
from pyagent.testing.cli import run_cli

State = membership.State
PROTOCOL = membership.PROTOCOL_ID


# ---- config and flag ---------------------------------------------------------------------------------


def test_metrics_are_off_by_default_and_init_writes_the_section(tmp_path: Path) -> None:
    assert config.load(tmp_path).metrics.listen == ""
    rendered = config.render([config.DEFAULT_LISTEN])
    assert "[metrics]" in rendered and f'# listen = "{config.DEFAULT_METRICS_LISTEN}"' in rendered
    (tmp_path / config.CONFIG_FILE).write_text(rendered.replace('listen = ""', 'listen = "[::1]:0"'))
    assert config.load(tmp_path).metrics.listen == "[::1]:0"


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:9100", ("localhost", 9100)),
    ],
)
def test_a_metrics_address_is_host_and_port(value: str, parsed: tuple[str, int]) -> None:
    assert config.parse_metrics_listen(value, "--metrics") == parsed


@pytest.mark.parametrize(
    "value", ["bogus", "9464", ":9464", "127.0.0.1:", "127.0.0.1:70000", "999.0.0.1:80", "[zz]:1", "::1:9464"]
)
def test_a_bad_metrics_address_is_a_one_line_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"is not HOST:PORT; write it like 127\.0\.0\.1:9464"):
        config.parse_metrics_listen(value, "--metrics")
    (tmp_path / config.CONFIG_FILE).write_text(f'[metrics]\nlisten = "{value}"\n')
    with pytest.raises(ConfigError, match=r"\[metrics\] listen: .* is not HOST:PORT"):
        config.load(tmp_path)


def test_the_daemon_flag_refuses_a_bad_address_with_exit_2(tmp_path: Path) -> None:
    shown = run_cli(tmp_path, "daemon", "--metrics", "bogus")
    assert shown.returncode == 2, shown.stderr
    assert shown.stderr.count("\n") == 1
    assert "--metrics: 'bogus' is not HOST:PORT" in shown.stderr
    (tmp_path / config.CONFIG_FILE).write_text('[metrics]\nlisten = "nowhere"\n')
    shown = run_cli(tmp_path, "daemon")
    assert shown.returncode == 2 and "[metrics] listen: 'nowhere' is not HOST:PORT" in shown.stderr


# ---- counters with a label ------------------------------------------------------------------------------


def test_a_labelled_count_keeps_the_total_and_a_bounded_breakdown() -> None:
    counters = Counters(["frames_in"])
    counters.add("frames_in", 2, label="/a/1.0.0")
    counters.add("frames_in")
    for index in range(LABELS_MAX + 5):
        counters.add("frames_in", label=f"/p{index}")
    assert counters.snapshot() == {"frames_in": 3 + LABELS_MAX + 5}
    by_label = counters.labelled()["frames_in"]
    assert len(by_label) == LABELS_MAX + 1 and by_label["/a/1.0.0"] == 2 and by_label[OTHER_LABEL] == 6


# ---- the plugin API ------------------------------------------------------------------------------------


def test_instruments_are_prefixed_made_once_and_never_shared_by_accident() -> None:
    metrics = Metrics()
    sent = metrics.counter("greet_sent", "Greetings sent.", ["outcome"])
    assert metrics.counter("greet_sent_total", "Greetings sent.", ["outcome"]) is sent
    sent.labels("ok").inc(3)
    metrics.histogram("greet_reply_seconds", "Reply time.", buckets=(0.1, 1.0)).observe(0.5)
    with pytest.raises(ConfigError, match="already a counter"):
        metrics.gauge("greet_sent", "Something else.")
    with pytest.raises(ConfigError, match="already a counter with labels"):
        metrics.counter("greet_sent", "Greetings sent.", ["peer"])
    with pytest.raises(ConfigError, match="must match"):
        metrics.counter("Greet-Sent", "Bad name.")
    view = stats_view(metrics.registry)
    assert view["greet_sent{outcome=ok}"] == 3
    assert view["greet_reply_seconds_count"] == 1 and view["greet_reply_seconds_sum"] == 0.5


# ---- membership: transitions and detection latency --------------------------------------------------


def change(peer: str, old: State | None, new: State, at_us: int) -> membership.MemberChanged:
    return membership.MemberChanged(peer, old, new, 1, at_us)


def test_detection_latency_runs_from_the_last_sign_of_life() -> None:
    metrics = Metrics()
    daemon = DaemonMetrics(metrics, PROTOCOL, last_seen_max=10)
    daemon.member_changed(change("b", None, State.ALIVE, 1_000_000), now_us=1_000_000)
    daemon.heard("b", PROTOCOL, 2_000_000)
    daemon.heard("b", "/pyagent/other/1.0.0", 2_400_000)  # not membership: no sign of life for it
    daemon.member_changed(change("b", State.ALIVE, State.SUSPECT, 3_500_000), now_us=3_500_000)
    daemon.member_changed(change("b", State.SUSPECT, State.DEAD, 8_000_000), now_us=8_000_000)
    # Recovered from storage at start: a transition, but no detection happened now.
    daemon.member_changed(change("c", None, State.DEAD, 5), now_us=9_000_000)
    view = stats_view(metrics.registry)
    assert view["membership_transitions{from=new,to=alive}"] == 1
    assert view["membership_transitions{from=alive,to=suspect}"] == 1
    assert view["membership_transitions{from=suspect,to=dead}"] == 1
    assert view["membership_transitions{from=new,to=dead}"] == 1
    assert view["membership_transitions{from=dead,to=alive}"] == 0  # every series exists from the start
    assert view["membership_detection_seconds_count{state=suspect}"] == 1
    assert view["membership_detection_seconds_sum{state=suspect}"] == pytest.approx(1.5)
    assert view["membership_detection_seconds_sum{state=dead}"] == pytest.approx(6.0)


def test_a_refuted_suspicion_restarts_the_clock_and_the_table_is_bounded() -> None:
    daemon = DaemonMetrics(Metrics(), PROTOCOL, last_seen_max=1)
    daemon.heard("b", PROTOCOL, 1_000_000)
    daemon.heard("c", PROTOCOL, 1_000_000)  # over the bound: not tracked
    daemon.member_changed(change("b", State.ALIVE, State.SUSPECT, 2_000_000), now_us=2_000_000)
    daemon.member_changed(change("b", State.SUSPECT, State.ALIVE, 2_500_000), now_us=2_500_000)
    daemon.member_changed(change("b", State.ALIVE, State.SUSPECT, 4_000_000), now_us=4_000_000)
    daemon.member_changed(change("c", State.ALIVE, State.SUSPECT, 4_000_000), now_us=4_000_000)
    view = stats_view(daemon.metrics.registry)
    assert view["membership_detection_seconds_count{state=suspect}"] == 2
    assert view["membership_detection_seconds_sum{state=suspect}"] == pytest.approx(1.0 + 1.5)


async def test_control_methods_are_timed_per_method() -> None:
    daemon = DaemonMetrics(Metrics(), PROTOCOL, last_seen_max=10)

    async def slow(params: dict[str, object]) -> str:
        await trio.sleep(0.01)
        return "done"

    async def broken(params: dict[str, object]) -> str:
        raise ValueError("bad input")

    timed = daemon.timed({"slow": slow, "broken": broken})
    assert await timed["slow"]({}) == "done"
    with pytest.raises(ValueError, match="bad input"):
        await timed["broken"]({})
    view = stats_view(daemon.metrics.registry)
    assert view["control_request_duration_seconds_count{method=slow}"] == 1
    assert view["control_request_duration_seconds_sum{method=slow}"] >= 0.01
    assert view["control_request_duration_seconds_count{method=broken}"] == 1
    assert view["process_resident_memory_bytes"] > 0


# ---- /metrics over HTTP ------------------------------------------------------------------------------------


def fetch(url: str, method: str = "GET") -> tuple[int, str, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def test_the_endpoint_serves_the_registry_and_nothing_else() -> None:
    metrics = Metrics()
    metrics.counter("greet_sent", "Greetings sent.").inc(7)
    listeners = await metrics_http.open_listeners("127.0.0.1:0")
    url = metrics_http.url_of(listeners[0].socket.getsockname())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(metrics_http.serve, listeners, metrics.registry)
        status, content_type, body = await trio.to_thread.run_sync(fetch, url)
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        families = {family.name: family for family in text_string_to_metric_families(body)}
        assert families["pyagent_greet_sent"].samples[0].value == 7
        status, _, body = await trio.to_thread.run_sync(fetch, url.replace("/metrics", "/nope"))
        assert status == 404 and "/metrics" in body
        status, _, _ = await trio.to_thread.run_sync(fetch, url, "POST")
        assert status == 405
        # A client that sends a huge request, or hangs up half-way, costs only its own connection.
        host, port = listeners[0].socket.getsockname()[:2]
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000)
        reply = b""
        try:
            while chunk := await stream.receive_some(65536):
                reply += chunk
        except trio.BrokenResourceError:
            pass  # closed with our excess bytes unread: the kernel may reset instead of a clean close
        assert reply.startswith(b"HTTP/1.1 431 ") or not reply
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET /met")
        await stream.aclose()
        status, _, _ = await trio.to_thread.run_sync(fetch, url)
        assert status == 200
        nursery.cancel_scope.cancel()


async def test_a_busy_port_is_a_one_line_config_error() -> None:
    listeners = await metrics_http.open_listeners("127.0.0.1:0")
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}: .*--metrics"):
        await metrics_http.open_listeners(f"127.0.0.1:{port}")
    await listeners[0].aclose()

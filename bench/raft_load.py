"""The one load generator of ``bench/raft.py``, shared by every system it measures.

Closed-loop clients are tasks in this process (anyio: on trio, or on asyncio for a driver whose client
library needs asyncio, as grpcio's fastest API does). Each loops: draw a key (uniform over the key set, a
per-client seeded generator), time one ``await driver.put(client, key, value)`` or
``await driver.get(client, key)``, record it. The generator's own work per operation is the same code for
every system; only the driver (the system's client library, in this process) differs, and its cost shows
in the "client CPU" column (this process's CPU time per operation, client library threads included).

A point: ``warmup_s`` of load that is not counted, then ``duration_s`` whose completions are counted
(throughput) and timed (latency of each operation completing inside the window), then the clients stop
and what is still in flight is drained (not counted). Server CPU is the system's processes' CPU time over
the window, from /proc.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio

VALUE_BYTES = 100
KEY_COUNT = 10_000
PRELOAD_CLIENTS = 64
PRELOAD_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 15.0
ERROR_BACKOFF_S = 0.01
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Driver(Protocol):
    """A system's client side in this process. ``client`` is the index of the calling closed-loop client
    (0..clients-1), so a driver can spread clients over endpoints."""

    async def put(self, client: int, key: bytes, value: bytes) -> None: ...

    async def get(self, client: int, key: bytes) -> bytes | None: ...


class System(Protocol):
    name: str
    # The event loop the driver needs: "trio" or "asyncio" (the generator runs on either, through anyio).
    backend: str
    # How the driver reaches the system, and what durability the system gives: printed with the results.
    how: str

    def unavailable(self) -> str | None:
        """Why this system cannot run here (printed as the reason it is skipped), or None."""
        ...

    def start(self, workdir: Path) -> None:
        """Start the 3-member cluster under ``workdir`` and wait until it serves."""
        ...

    def stop(self) -> None: ...

    def server_pids(self) -> list[int]: ...

    def exited(self) -> list[str]:
        """Which of the cluster's processes have exited (to explain a failure)."""
        ...

    def notes(self) -> list[str]:
        """Facts learnt while running (version, leader, layout): printed with the results."""
        ...

    def driver(self) -> AbstractAsyncContextManager[Driver]: ...


def describe(error: BaseException) -> str:
    """An error on one line: an exception group by its leaves."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(describe(leaf) for leaf in error.exceptions))
    return f"{type(error).__name__}: {error}"


def exited(processes: Sequence[tuple[str, subprocess.Popen[bytes] | None]]) -> list[str]:
    """Which of the named processes have exited, with their codes."""
    return [
        f"{name} exited with code {process.returncode}"
        for name, process in processes
        if process is not None and process.poll() is not None
    ]


def make_keys(count: int = KEY_COUNT) -> list[bytes]:
    return [b"bench/%05d" % index for index in range(count)]


def make_value(size: int = VALUE_BYTES) -> bytes:
    return random.Random(13).randbytes(size)


def cpu_seconds_of(pids: Sequence[int]) -> float:
    """User + system CPU of the processes (all their threads), from /proc; a process gone counts 0."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # Fields after the command name start at index 3 (state); utime and stime are fields 14 and 15.
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def percentile(sorted_values: Sequence[int], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return float(sorted_values[index])


@dataclass
class Point:
    system: str
    op: str  # "put" or "get"
    clients: int
    ops: int = 0
    window_s: float = 0.0
    latencies_ns: list[int] = field(default_factory=list, repr=False)
    errors: int = 0
    first_error: str = ""
    misses: int = 0  # gets that found no value (every key is preloaded, so each is a fault)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    skipped: str = ""

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.window_s if self.window_s else float("nan")

    def latency_ms(self, fraction: float) -> float:
        return percentile(sorted(self.latencies_ns), fraction) / 1e6

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.latencies_ns) / 1e6 if self.latencies_ns else float("nan")

    def cpu_us_per_op(self, seconds: float) -> float:
        return seconds / self.ops * 1e6 if self.ops else float("nan")

    def as_dict(self) -> dict[str, object]:
        return {
            "system": self.system,
            "op": self.op,
            "clients": self.clients,
            "ops": self.ops,
            "window_s": round(self.window_s, 3),
            "ops_per_s": round(self.ops_per_s, 1),
            "p50_ms": round(self.latency_ms(0.50), 3),
            "p99_ms": round(self.latency_ms(0.99), 3),
            "mean_ms": round(self.mean_ms, 3),
            "errors": self.errors,
            "first_error": self.first_error,
            "misses": self.misses,
            "client_cpu_us_per_op": round(self.cpu_us_per_op(self.client_cpu_s), 1),
            "server_cpu_us_per_op": round(self.cpu_us_per_op(self.server_cpu_s), 1),
            "skipped": self.skipped,
        }


async def preload(
    driver: Driver, keys: Sequence[bytes], value: bytes, timeout_s: float, clients: int = PRELOAD_CLIENTS
) -> tuple[int, float]:
    """Write every key once, so every get finds a value, for at most ``timeout_s``. Returns how many keys
    were written and the seconds it took (a get of a key not written counts as a miss)."""
    started = time.monotonic()
    next_index = written = 0

    async def writer(client: int) -> None:
        nonlocal next_index, written
        while next_index < len(keys):
            key = keys[next_index]
            next_index += 1
            for attempt in range(50):
                try:
                    await driver.put(client, key, value)
                    written += 1
                    break
                except Exception:
                    if attempt == 49:
                        raise
                    await anyio.sleep(0.1)

    with anyio.move_on_after(timeout_s):
        async with anyio.create_task_group() as group:
            for client in range(clients):
                group.start_soon(writer, client)
    return written, time.monotonic() - started


async def run_point(
    system: str,
    driver: Driver,
    op: str,
    clients: int,
    keys: Sequence[bytes],
    value: bytes,
    duration_s: float,
    warmup_s: float,
    server_pids: Callable[[], list[int]],
    seed: int = 1,
) -> Point:
    point = Point(system, op, clients)
    key_count = len(keys)
    window_start = window_end = float("inf")
    stopping = False

    def note_error(error: BaseException) -> None:
        point.errors += 1
        if not point.first_error:
            point.first_error = describe(error)[:200]

    async def put_client(client: int) -> None:
        draw = random.Random(seed * 100_003 + client).randrange
        latencies = point.latencies_ns
        clock = time.perf_counter_ns
        while not stopping:
            key = keys[draw(key_count)]
            started = clock()
            try:
                await driver.put(client, key, value)
            except Exception as error:
                note_error(error)
                await anyio.sleep(ERROR_BACKOFF_S)
                continue
            finished = clock()
            if window_start <= finished < window_end:
                latencies.append(finished - started)

    async def get_client(client: int) -> None:
        draw = random.Random(seed * 100_003 + client).randrange
        latencies = point.latencies_ns
        clock = time.perf_counter_ns
        while not stopping:
            key = keys[draw(key_count)]
            started = clock()
            try:
                found = await driver.get(client, key)
            except Exception as error:
                note_error(error)
                await anyio.sleep(ERROR_BACKOFF_S)
                continue
            finished = clock()
            if window_start <= finished < window_end:
                latencies.append(finished - started)
                if found is None or len(found) != len(value):
                    point.misses += 1

    body = put_client if op == "put" else get_client
    async with anyio.create_task_group() as group:
        for client in range(clients):
            group.start_soon(body, client)
        await anyio.sleep(warmup_s)
        pids = server_pids()
        server_before, client_before = cpu_seconds_of(pids), time.process_time()
        window_start = time.perf_counter_ns()
        window_end = window_start + int(duration_s * 1e9)
        await anyio.sleep(duration_s)
        point.window_s = duration_s
        point.client_cpu_s = time.process_time() - client_before
        point.server_cpu_s = cpu_seconds_of(pids) - server_before
        stopping = True
        # Let what is in flight finish (uncounted); a system that stalls is cut off.
        group.cancel_scope.deadline = anyio.current_time() + DRAIN_TIMEOUT_S
    point.ops = len(point.latencies_ns)
    return point


class NullDriver:
    """A driver that does nothing but yield to the loop: what the generator itself costs per operation."""

    async def put(self, client: int, key: bytes, value: bytes) -> None:
        await anyio.sleep(0)

    async def get(self, client: int, key: bytes) -> bytes | None:
        await anyio.sleep(0)
        return None


async def generator_cost(clients: int, duration_s: float) -> Point:
    """The generator alone (``NullDriver``) on the current loop: its CPU per operation."""
    return await run_point(
        "null", NullDriver(), "put", clients, make_keys(), make_value(), duration_s, 0.1, list
    )


async def measure(
    system: System,
    client_counts: Sequence[int],
    ops: Sequence[str],
    duration_s: float,
    warmup_s: float,
    progress: Callable[[str], None],
    preload_timeout_s: float = PRELOAD_TIMEOUT_S,
) -> list[Point]:
    keys, value = make_keys(), make_value()
    points: list[Point] = []
    async with system.driver() as driver:
        written, took = await preload(driver, keys, value, preload_timeout_s)
        if written == len(keys):
            progress(f"{system.name}: preloaded {written:,} keys in {took:.1f} s")
        else:
            progress(
                f"{system.name}: preload wrote only {written:,} of {len(keys):,} keys in {took:.0f} s "
                "(its time limit); gets of the others count as misses"
            )
        for op in ops:
            for clients in client_counts:
                point = await run_point(
                    system.name, driver, op, clients, keys, value, duration_s, warmup_s, system.server_pids
                )
                progress(
                    f"{system.name} {op} x{clients}: {point.ops_per_s:,.0f}/s "
                    f"p50 {point.latency_ms(0.5):.2f} ms p99 {point.latency_ms(0.99):.2f} ms"
                    + (f" errors {point.errors} ({point.first_error})" if point.errors else "")
                )
                points.append(point)
    return points


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(cell).rjust(width) for cell, width in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += [
        "  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
    ]
    return "\n".join(lines)


def fmt(number: float, digits: int = 0) -> str:
    if number != number:  # NaN
        return "-"
    return f"{number:,.{digits}f}"


def results_table(points: Sequence[Point]) -> str:
    header = ["system", "op", "clients", "ops/s", "p50 ms", "p99 ms", "mean ms", "errors", "misses",
              "client CPU us/op", "server CPU us/op"]  # fmt: skip
    rows = [
        [
            p.system,
            p.op,
            str(p.clients),
            fmt(p.ops_per_s),
            fmt(p.latency_ms(0.5), 2),
            fmt(p.latency_ms(0.99), 2),
            fmt(p.mean_ms, 2),
            str(p.errors),
            str(p.misses),
            fmt(p.cpu_us_per_op(p.client_cpu_s)),
            fmt(p.cpu_us_per_op(p.server_cpu_s)),
        ]
        for p in points
    ]
    return format_table(rows, header)


def ratio_table(points: Sequence[Point], subject: str, baselines: Sequence[str]) -> str:
    """Per (op, clients): subject/baseline for throughput (higher is better) and p99 (lower is better)."""
    by_key = {(p.system, p.op, p.clients): p for p in points}
    header = ["op", "clients"]
    for baseline in baselines:
        header += [f"ops/s {subject}/{baseline}", f"p99 {subject}/{baseline}"]
    rows = []
    for op, clients in sorted({(p.op, p.clients) for p in points}, key=lambda k: (k[0] != "put", k[1])):
        ours = by_key.get((subject, op, clients))
        if ours is None:
            continue
        row = [op, str(clients)]
        for baseline in baselines:
            theirs = by_key.get((baseline, op, clients))
            if theirs is None or not theirs.ops:
                row += ["-", "-"]
                continue
            row.append(f"{ours.ops_per_s / theirs.ops_per_s:.2f}x")
            row.append(f"{ours.latency_ms(0.99) / theirs.latency_ms(0.99):.2f}x")
        rows.append(row)
    return format_table(rows, header)

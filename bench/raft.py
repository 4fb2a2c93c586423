"""Raft KV benchmark (issue 13): PyAgent's 3-peer mesh against etcd and PySyncObj, same generator, same run.

    .venv/bin/python bench/raft.py                                 # all three, 1/16/256 clients, 5 s a point
    .venv/bin/python bench/raft.py --systems etcd,pysyncobj --clients 1,16 --duration-s 2
    ./dev bench raft

The workload: closed-loop clients (trio tasks in this process), 100-byte values, keys drawn uniformly from
10,000, writes (put) then linearizable reads (get) at each client count, for a fixed window per point
after a short uncounted warm-up. Every key is written once first, so every get finds a value. The load
generator is one piece of code (bench/raft_load.py) for all three systems; each system has a driver for
its own client API (printed with the results). Everything shares this machine's cores with the generator,
so compare figures within one run only; the "client CPU" column shows what each driver costs this process
per operation, and "server CPU" what the system's 3 processes spent per operation.

Systems run one after another, each 3-member cluster started in a temporary directory and removed after:
- pyagent: 3 ``pyagent daemon`` processes with default config (64 shards x 3 replicas), bench/raft_pyagent.py;
- etcd: Debian's ``etcd-server``, 3 members, default fsync, gRPC API to the leader, bench/raft_etcd.py;
- pysyncobj: 3 processes, a replicated dict behind a small RPC, bench/raft_pysyncobj.py.
A system that cannot run here (no binary, a module missing) is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raft_etcd import Etcd
from raft_load import (
    KEY_COUNT,
    PRELOAD_TIMEOUT_S,
    VALUE_BYTES,
    Point,
    System,
    describe,
    generator_cost,
    measure,
    ratio_table,
    results_table,
)
from raft_pyagent import PyAgent
from raft_pysyncobj import PySyncObj

SYSTEMS = ("pyagent", "etcd", "pysyncobj")
SUBJECT, BASELINES = "pyagent", ("etcd", "pysyncobj")
LOG_TAIL_BYTES = 3000
CALIBRATION_CLIENTS, CALIBRATION_S = 16, 1.0
# Issue 13's targets, checked against etcd in the same run.
TARGET_P99_AT_16_MS = 30.0
# What FACTS.md measured for etcd on this machine kind (puts/s, p99 ms; gets/s), for a sanity check.
ETCD_REFERENCE = {1: (870, 2, 1400), 16: (3400, 10, 6000), 256: (7800, 60, 10000)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Ratios are pyagent/etcd and pyagent/pysyncobj per point: above 1x is better for throughput, "
        "below 1x for p99.",
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all, in that order)",
    )
    parser.add_argument(
        "--clients", default="1,16,256", help="comma-separated closed-loop client counts (default 1,16,256)"
    )
    parser.add_argument(
        "--ops", default="put,get", help="put (writes), get (linearizable reads), or both (default put,get)"
    )
    parser.add_argument("--duration-s", type=float, default=5.0, help="measured window per point (default 5)")
    parser.add_argument(
        "--warmup-s", type=float, default=1.0, help="uncounted load before each window (default 1)"
    )
    parser.add_argument(
        "--preload-timeout-s",
        type=float,
        default=PRELOAD_TIMEOUT_S,
        help="time limit for writing every key once before the points (default %(default)g)",
    )
    parser.add_argument(
        "--pysyncobj-batch",
        action="store_true",
        help="run PySyncObj with its default appendEntriesUseBatch=True (entries wait for the next 0.1 s "
        "append tick: about 100 ms a write). The default here is False, PySyncObj's setting for latency, "
        "which was faster at every client count measured",
    )
    parser.add_argument(
        "--etcd-driver",
        choices=("aio", "futures"),
        default="aio",
        help="aio (default): grpcio's asyncio API, the generator on asyncio (grpcio's cheapest client); "
        "futures: grpcio futures under trio, the loop the other systems' drivers use",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument(
        "--workdir", type=Path, help="keep the clusters' data and logs here (default: a temporary directory)"
    )
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown system(s): {', '.join(sorted(unknown))}; choose from {', '.join(SYSTEMS)}")
    args.clients = [int(c) for c in args.clients.split(",")]
    args.ops = [o.strip() for o in args.ops.split(",")]
    if set(args.ops) - {"put", "get"}:
        parser.error("--ops takes put and/or get")
    return args


def make_system(name: str, args: argparse.Namespace) -> System:
    if name == "pyagent":
        return PyAgent()
    if name == "etcd":
        return Etcd(args.etcd_driver)
    return PySyncObj(batch=args.pysyncobj_batch)


def say(message: str) -> None:
    print(f"  {message}", flush=True)


def log_tails(workdir: Path) -> str:
    tails = []
    for log in sorted(workdir.rglob("*.log")):
        text = log.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace").strip()
        if text:
            tails.append(f"--- {log} (tail)\n{text}")
    return "\n".join(tails)


def run_system(system: System, args: argparse.Namespace, base: Path) -> tuple[list[Point], str]:
    """Start, measure, stop. Returns the points and, if it could not run, why."""
    reason = system.unavailable()
    if reason:
        return [], reason
    workdir = base / system.name
    workdir.mkdir(parents=True)
    print(f"\n== {system.name}: {system.how}", flush=True)
    started = time.monotonic()
    try:
        system.start(workdir)
        say(f"cluster up in {time.monotonic() - started:.1f} s; load average {os.getloadavg()[0]:.2f}")
        for note in system.notes():
            say(note)
        points = anyio.run(
            measure,
            system,
            args.clients,
            args.ops,
            args.duration_s,
            args.warmup_s,
            say,
            args.preload_timeout_s,
            backend=system.backend,
        )
        return points, ""
    except Exception as error:
        traceback.print_exc()
        tails = log_tails(workdir)
        if tails:
            print(tails, file=sys.stderr)
        gone = system.exited()
        return [], f"failed: {describe(error)}" + (f" ({'; '.join(gone)}; logs in {workdir})" if gone else "")
    finally:
        system.stop()


def target_lines(points: Sequence[Point]) -> list[str]:
    """Issue 13's write targets per client count, each marked met or MISSED."""
    by_key = {(p.system, p.op, p.clients): p for p in points}
    lines = []
    for clients in sorted(c for s, o, c in by_key if s == SUBJECT and o == "put"):
        ours = by_key[(SUBJECT, "put", clients)]
        checks = []
        etcd = by_key.get(("etcd", "put", clients))
        if etcd is not None and etcd.ops:
            checks.append(
                (
                    ours.ops_per_s >= etcd.ops_per_s,
                    f"writes {ours.ops_per_s:,.0f}/s vs etcd's {etcd.ops_per_s:,.0f}/s",
                )
            )
            ours_p99, etcd_p99 = ours.latency_ms(0.99), etcd.latency_ms(0.99)
            checks.append((ours_p99 <= etcd_p99, f"p99 {ours_p99:.1f} ms vs etcd's {etcd_p99:.1f} ms"))
        if clients == 16:
            p99 = ours.latency_ms(0.99)
            checks.append((p99 < TARGET_P99_AT_16_MS, f"p99 {p99:.1f} ms vs {TARGET_P99_AT_16_MS:.0f} ms"))
        if checks:
            lines.append(
                f"{clients} client(s): "
                + "; ".join(f"{text} ({'met' if ok else 'MISSED'})" for ok, text in checks)
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"Raft KV bench: {','.join(args.systems)}; {','.join(map(str, args.clients))} closed-loop clients; "
        f"{'/'.join(args.ops)}; {VALUE_BYTES}-byte values over {KEY_COUNT:,} keys; "
        f"{args.duration_s:g} s per point after {args.warmup_s:g} s warm-up; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    costs = {
        backend: anyio.run(generator_cost, CALIBRATION_CLIENTS, CALIBRATION_S, backend=backend)
        for backend in ("trio", "asyncio")
    }
    print(
        "The generator alone (a driver that only yields to the loop, "
        f"{CALIBRATION_CLIENTS} clients): "
        + ", ".join(f"{p.cpu_us_per_op(p.client_cpu_s):.1f} us/op on {b}" for b, p in costs.items())
        + "; the rest of each system's client CPU is its driver",
        flush=True,
    )
    points: list[Point] = []
    hows: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="pyagent-bench-raft-") as temporary:
        base = args.workdir or Path(temporary)
        base.mkdir(parents=True, exist_ok=True)
        for name in args.systems:
            system = make_system(name, args)
            hows[name] = system.how
            got, reason = run_system(system, args, base)
            notes[name] = system.notes()
            if reason:
                skipped[name] = reason
                print(f"\n== {name}: SKIPPED: {reason}", flush=True)
            points += got

    print("\n== How each system is driven (same generator, bench/raft_load.py)")
    for name in args.systems:
        print(f"- {name}: {hows[name]}")
        for note in notes.get(name, []):
            print(f"    {note}")
        if name in skipped:
            print(f"    SKIPPED: {skipped[name]}")

    print("\n== Results (put = writes, get = linearizable reads)")
    print(results_table(points) if points else "(no figures)")
    if points:
        print(
            "client CPU: this process (generator and the system's client library) per operation; "
            "server CPU: the system's 3 processes per operation; both over the measured window"
        )

    present = {p.system for p in points}
    baselines = [b for b in BASELINES if b in present]
    if SUBJECT in present and baselines:
        print(f"\n== Ratios {SUBJECT}/baseline per point")
        print(ratio_table(points, SUBJECT, baselines))
    elif SUBJECT not in present:
        print(f"\n== Ratios: none, {SUBJECT} did not run ({skipped.get(SUBJECT, 'not selected')})")

    ours = [p for p in points if p.system == SUBJECT]
    if ours:
        print("\n== Issue 13's figures for pyagent")
        for p in ours:
            what = "aggregate writes over 64 shards on 3 peers" if p.op == "put" else "linearizable reads"
            print(f"- {what}, {p.clients} client(s): {p.ops_per_s:,.0f}/s, p99 {p.latency_ms(0.99):.1f} ms")
        lines = target_lines(points)
        if lines:
            print("Targets (>= etcd's writes/s, p99 <= etcd's, p99 < 30 ms at 16 clients):")
            for line in lines:
                print(f"- {line}")

    etcd_points = [p for p in points if p.system == "etcd"]
    if etcd_points:
        print("\n== etcd against FACTS.md's figures for this machine kind (run-to-run spread up to 30%)")
        for p in etcd_points:
            reference = ETCD_REFERENCE.get(p.clients)
            if reference is None:
                continue
            expected = reference[0] if p.op == "put" else reference[2]
            print(f"- {p.op} x{p.clients}: {p.ops_per_s:,.0f}/s here, about {expected:,}/s there")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "how": hows,
                    "notes": notes,
                    "skipped": skipped,
                    "points": [p.as_dict() for p in points],
                },
                indent=2,
            )
        )
        print(f"\nwrote {args.json}")
    failed = {name: reason for name, reason in skipped.items() if reason.startswith("failed")}
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

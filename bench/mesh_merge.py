"""How long two meshes that formed apart take to become one after a single join (``pyagent join``).

    .venv/bin/python bench/mesh_merge.py                     # 6+6 and 50+50 members, seeds 1-3
    .venv/bin/python bench/mesh_merge.py --sizes 100 --seeds 1

The real membership cores in the deterministic message pump of the unit tests (tests/unit/
membership_harness.py: LAN config, 0.2-2 ms latency, virtual time, so the figures do not depend on the
machine's load): two meshes form for 40 s, one member of the first joins through one member of the
second, and the clock runs until every member holds every member of both alive.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

from membership_harness import US_PER_S, Cluster, join_command

from pyagent.proto.membership import LAN

FORM_S = 40
GIVE_UP_S = 120


def merge_s(size: int, seed: int) -> float | None:
    cluster = Cluster(seed, LAN)
    first = cluster.start(size, prefix="a")
    second = cluster.start(size, prefix="b")
    cluster.run_for(FORM_S * US_PER_S)
    joined_us = cluster.now_us
    cluster.request(first[1], join_command([second[1]]))
    while not cluster.converged():
        if cluster.now_us - joined_us > GIVE_UP_S * US_PER_S:
            return None
        cluster.run_for(US_PER_S // 10)
    return (cluster.now_us - joined_us) / US_PER_S


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[6, 50], help="members of each mesh")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    for size in args.sizes:
        for seed in args.seeds:
            took = merge_s(size, seed)
            shown = f"{took:.1f} s" if took is not None else f"not within {GIVE_UP_S} s"
            print(f"{size}+{size} members, seed {seed}: one mesh {shown} after the join (virtual time)")


if __name__ == "__main__":
    main()

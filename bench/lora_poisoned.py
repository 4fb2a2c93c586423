"""The poisoning gap of simnet's ``lora-poisoned`` per seed, and which rows Multi-Krum rejected.

Run: ``.venv/bin/python bench/lora_poisoned.py [--seeds 1-20] [OVERRIDE ...]``, e.g.
``lora.aggregator='trimmed_mean'``. For each seed it runs the scenario (3 of 16 peers poisoned: sign-flip,
x100, random) and the same seed with ``lora.poisoned=0``, both with the overrides, and prints the gap
``attacked / clean - 1`` of the merged eval loss (issue 14's target: at most 2 % on every seed), then the
median, the worst and how many seeds are within 2 %.

With ``aggregator = "multi_krum"`` it also counts, over every aggregation of the attacked runs, which rows
were rejected: each row is matched to the delta it came from (the highest cosine among the deltas
contributed, ``LoraWorkload.senders``), so a rejection is named by its sender's kind (``honest`` or a
poisoning).
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter

from pyagent_simnet import Sim, run_scenario
from pyagent_simnet.lora_kit import LoraWorkload, recording_krum

SCENARIO = "lora-poisoned"
TARGET_GAP = 0.02


def seed_range(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


def run_seed(seed: int, overrides: list[str], rejected: Counter[str], kept: Counter[str]) -> float:
    sim = Sim(SCENARIO, seed=seed, overrides=overrides)
    with recording_krum() as calls:
        attacked = run_scenario(sim)
    workload = next(o for o in sim.observers if isinstance(o, LoraWorkload))
    for rows, indices in calls:
        for index, (_, kind) in enumerate(workload.senders(rows)):
            (kept if index in indices else rejected)[kind] += 1
    clean = run_scenario(Sim(SCENARIO, seed=seed, overrides=[*overrides, "lora.poisoned=0"]))
    for outcome in (attacked, clean):
        assert outcome.exit_code == 0, (seed, outcome.problems)
    gap: float = attacked.result["lora_eval_loss_final"] / clean.result["lora_eval_loss_final"] - 1
    return gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=seed_range, default=range(1, 21), help="e.g. 1-20 (inclusive)")
    parser.add_argument("overrides", nargs="*", help="scenario overrides, as for ./dev simnet run --set")
    args = parser.parse_args()
    rejected: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    gaps = {}
    for seed in args.seeds:
        gaps[seed] = run_seed(seed, args.overrides, rejected, kept)
        print(f"seed {seed:4d}  gap {100 * gaps[seed]:+6.2f} %", flush=True)
    worst = max(gaps, key=lambda seed: gaps[seed])
    within = sum(gap <= TARGET_GAP for gap in gaps.values())
    print(
        f"seeds {args.seeds.start}-{args.seeds.stop - 1} {' '.join(args.overrides)}: "
        f"median {100 * statistics.median(gaps.values()):+.2f} %, worst {100 * gaps[worst]:+.2f} % "
        f"(seed {worst}), {within} of {len(gaps)} within {100 * TARGET_GAP:.0f} %"
    )
    if rejected or kept:
        for kind in sorted(set(rejected) | set(kept)):
            total = rejected[kind] + kept[kind]
            print(f"multi_krum rows from {kind:9s}: rejected {rejected[kind]:5d} of {total:5d}")


if __name__ == "__main__":
    main()

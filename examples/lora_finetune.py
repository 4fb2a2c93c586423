"""Peers fine-tune LoRA adapters on their own slices of a generated task and merge them every round.

Run: ``.venv/bin/python examples/lora_finetune.py [--peers 4] [--rounds 30] [--out out/lora-example]``
(needs ``pyagent[torch]``; ``./dev setup`` installs it). Nothing is downloaded: ``pyagent.lora.finetune``
makes the task, a small pretrained MLP and a low-rank change of it to learn, and gives each peer inputs
that vary along its own block of dimensions only (non-IID). Each round every peer trains a few steps,
sends its adapter's delta through the Rust codec (INT2 values, top-k 3 %, error feedback), and loads the
exact weighted mean of the decoded deltas. The same peers also train alone, never merging.

It prints the held-out loss of the merged adapter and of each peer alone after every round, with the
bytes each peer sent, writes ``loss_by_round.png`` and ``loss_by_bytes.png`` to ``--out``, and exits 1
unless the merged adapter beats every peer's local one on the held-out data.

The merge is a plain function of the round's deltas and weights (``pyagent.lora.merge.Merge``): swap
``CodecMerge`` for one backed by a mesh and the rest stays as it is.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless, as simnet's reports
import matplotlib.pyplot as plt
import torch

from pyagent.lora.adapter import LoraConfig
from pyagent.lora.codecs import LoraCodec
from pyagent.lora.finetune import RoundRecord, TaskConfig, TrainConfig, make_task, run_rounds, train_alone
from pyagent.lora.merge import CodecMerge, exact_mean


def cumulative_kib(records: list[RoundRecord]) -> list[float]:
    """What one peer had sent after each round (the mean over peers), in KiB."""
    per_round = [sum(record.bytes_sent) / len(record.bytes_sent) / 1024 for record in records]
    return list(itertools.accumulate(per_round))


def plot(out: Path, merged: list[RoundRecord], exact: list[RoundRecord], alone: list[list[float]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rounds = [record.round_number + 1 for record in merged]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(rounds, [r.eval_loss for r in merged], label="merged, INT2 top-k 3% + error feedback", lw=2)
    ax.plot(rounds, [r.eval_loss for r in exact], label="merged, exact FP32", ls="--")
    for peer in range(len(alone[0])):
        ax.plot(rounds, [losses[peer] for losses in alone], label=f"peer {peer} alone", alpha=0.6)
    ax.set(xlabel="round", ylabel="held-out MSE", yscale="log", title="Held-out loss by round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.savefig(out / "loss_by_round.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(cumulative_kib(merged), [r.eval_loss for r in merged], label="INT2 top-k 3% + error feedback")
    ax.plot(cumulative_kib(exact), [r.eval_loss for r in exact], label="exact FP32", ls="--")
    ax.set(xlabel="KiB sent per peer", ylabel="held-out MSE", xscale="log", yscale="log")
    ax.set_title("Held-out loss against bytes sent")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out / "loss_by_bytes.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("out/lora-example"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = make_task(TaskConfig(peers=args.peers, in_features=8 * args.peers))
    lora = LoraConfig(task.target_modules, rank=8, alpha=16)
    train = TrainConfig(local_steps=5)
    codec = LoraCodec("int2", block_size=64, chunk_size=1024, k_per_chunk=31)

    print(f"{args.peers} peers, {args.rounds} rounds of {train.local_steps} local steps; held-out MSE:")
    print(f"{'round':>5} {'merged':>9} {'KiB sent':>9}  alone, per peer")
    sent = 0.0

    def show(record: RoundRecord, _peers: object) -> None:
        nonlocal sent
        sent += sum(record.bytes_sent) / len(record.bytes_sent) / 1024
        losses = " ".join(f"{loss:.5f}" for loss in alone[record.round_number])
        print(f"{record.round_number + 1:>5} {record.eval_loss:>9.5f} {sent:>9.2f}  {losses}")

    alone = train_alone(task, lora, train, args.rounds)
    merged, _ = run_rounds(task, lora, train, CodecMerge(codec), args.rounds, on_round=show)
    exact, _ = run_rounds(task, lora, train, exact_mean, args.rounds)
    plot(args.out, merged, exact, alone)

    final, best_alone = merged[-1].eval_loss, min(alone[-1])
    print(
        f"merged {final:.5f} (exact FP32 merge: {exact[-1].eval_loss:.5f}); "
        f"best peer alone {best_alone:.5f}; {sent:.1f} KiB sent per peer, "
        f"{cumulative_kib(exact)[-1]:.1f} KiB as FP32"
    )
    print(f"plots: {args.out / 'loss_by_round.png'}, {args.out / 'loss_by_bytes.png'}")
    if final >= best_alone:
        print("the merged adapter does not beat every peer alone", file=sys.stderr)
        return 1
    print(f"the merged adapter beats every peer alone: {best_alone / final:.1f}x lower loss than the best")
    return 0


if __name__ == "__main__":
    sys.exit(main())

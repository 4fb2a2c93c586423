"""The demo's LoRA step: each daemon's peer fine-tunes an adapter on its own slice of a generated task,
and the daemons merge the deltas with their averaging protocol, on its default codec.

It prints, per round, each peer's held-out loss after its local training and the merged adapter's,
and the bytes each daemon sent. It needs torch (``pyagent[torch]``; ``./dev setup`` installs it); without
it the step says so and is skipped.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from pyagent.localmesh import LocalPeer

ROUNDS = 3
# The task's input dimensions are split evenly among the peers.
INPUTS_PER_PEER = 8


def show_lora(peers: list[LocalPeer], say: Callable[[str], None]) -> bool:
    """Run ``ROUNDS`` merge rounds across ``peers``; True when the merged adapter beat every peer's
    local one on held-out data in the last round."""
    if importlib.util.find_spec("torch") is None:
        say("LoRA merge skipped: torch is not installed (pip install 'pyagent[torch]'; ./dev setup does)")
        return True
    # Imported here: torch takes seconds to load, and the rest of the demo does not need it.
    from pyagent.lora import finetune
    from pyagent.lora.adapter import LoraConfig
    from pyagent.lora.mesh_merge import MeshMerge

    count = len(peers)
    task = finetune.make_task(finetune.TaskConfig(peers=count, in_features=INPUTS_PER_PEER * count))
    lora, train = LoraConfig(target_modules=task.target_modules), finetune.TrainConfig()
    merge = MeshMerge([peer.home for peer in peers])
    say(
        f"LoRA: {count} peers fine-tune adapters on their own slices, then merge the deltas across the "
        f"mesh ({ROUNDS} rounds; held-out loss before any training {finetune.no_training_loss(task):.4f})"
    )
    beat_every_local = False

    def on_round(record: finetune.RoundRecord, _: list[finetune.Peer]) -> None:
        nonlocal beat_every_local
        local_losses = record.local_losses
        result = merge.last[0]
        parameters = len(result.delta)
        sent = sum(record.bytes_sent)
        beat_every_local = record.eval_loss < min(local_losses)
        say(
            f"   round {record.round_number}: local losses "
            + " ".join(f"{loss:.4f}" for loss in local_losses)
            + f" -> merged {record.eval_loss:.4f}; {len(result.peers)} peers merged "
            f"{parameters:,}-value deltas, {sent:,} B sent in all ({result.codec})"
        )

    finetune.run_rounds(task, lora, train, merge, ROUNDS, on_round=on_round)
    verdict = "beats" if beat_every_local else "does NOT beat"
    say(f"the merged adapter {verdict} every peer's locally trained one on held-out data")
    return beat_every_local

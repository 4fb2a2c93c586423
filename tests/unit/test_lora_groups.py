"""Group formation, the config table, and Ed25519 signing with the node's libp2p key."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from pyagent.errors import ConfigError
from pyagent.node.signing import NodeSigner
from pyagent.proto.lora import Config
from pyagent.proto.lora.grid import plan, step_count


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 100), st.integers(2, 16), st.integers(0, 1000))
def test_every_group_agrees_on_its_plan_and_every_value_reaches_everyone_exactly_once(
    count: int, size_max: int, round_number: int
) -> None:
    members = [f"peer{i}" for i in range(count)]
    plans = {peer: plan(round_number, members, peer, size_max) for peer in members}
    assert all(len(steps) == step_count(count, size_max) for steps in plans.values())
    # Each peer's delta is a one-hot vector of weight 1; each step averages the senders' values.
    values = {peer: np.eye(count)[i] for i, peer in enumerate(members)}
    weights = dict.fromkeys(members, 1.0)
    for index in range(step_count(count, size_max)):
        for peer, steps in plans.items():
            part = steps[index]
            assert peer in part.receivers and peer in part.senders and len(part.senders) <= size_max
            assert all(plans[other][index].senders == part.senders for other in part.receivers)
            assert all(peer in plans[other][index].senders for other in part.send_to)
        values = {
            peer: sum(weights[s] * values[s] for s in plans[peer][index].senders)
            / sum(weights[s] for s in plans[peer][index].senders)
            for peer in members
        }
        weights = {peer: sum(weights[s] for s in plans[peer][index].senders) for peer in members}
    for peer in members:
        np.testing.assert_allclose(values[peer], np.full(count, 1 / count))
        assert weights[peer] == count


def test_rounds_take_about_log_n_steps() -> None:
    assert [step_count(n, 4) for n in (1, 2, 4, 5, 16, 17, 64, 65)] == [0, 1, 1, 2, 2, 3, 3, 4]
    assert step_count(64, 2) == 6


def test_each_round_shuffles_the_groups() -> None:
    members = [f"peer{i}" for i in range(16)]
    assert plan(1, members, "peer0", 4) != plan(2, members, "peer0", 4)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"codec": "int3"}, "codec"),
        ({"aggregator": "median"}, "aggregator"),
        ({"density": 0.0}, "density"),
        ({"group_size_max": 1}, "group_size_max"),
        ({"group_size_max": "8"}, "group_size_max"),
        ({"error_feedback": 1}, "error_feedback"),
        ({"block_size": 12}, "block_size"),
        ({"round_timeout_ms": 0}, "round_timeout_ms"),
        ({"trim_fraction": 0.5}, "trim_fraction"),
        ({"shards": 3}, "shards"),
    ],
)
def test_a_bad_table_names_its_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Config.from_table(table)


def test_a_good_table_is_taken_as_given() -> None:
    config = Config.from_table({"codec": "int4", "density": 1.0, "group_size_max": 16, "norm_clip": 2})
    assert (config.codec, config.k_per_chunk, config.group_size_max, config.norm_clip) == ("int4", 0, 16, 2)


def test_the_node_signer_checks_signatures_with_the_key_inside_the_peer_id() -> None:
    alice, bob = create_new_key_pair(), create_new_key_pair()
    alice_id, bob_id = str(ID.from_pubkey(alice.public_key)), str(ID.from_pubkey(bob.public_key))
    signer, checker = NodeSigner(alice), NodeSigner(bob)
    signature = signer.sign(b"delta")
    assert checker.verify(alice_id, b"delta", signature)
    assert not checker.verify(alice_id, b"delta!", signature)
    assert not checker.verify(bob_id, b"delta", signature)
    assert not checker.verify(alice_id, b"delta", signature[:10])
    assert not checker.verify("not-a-peer-id!", b"delta", signature)

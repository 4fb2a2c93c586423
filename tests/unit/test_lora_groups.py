"""Group formation, the config table, and Ed25519 signing with the node's libp2p key."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from pyagent.errors import ConfigError
from pyagent.node.signing import NodeSigner
from pyagent.proto.lora import Config
from pyagent.proto.lora.grid import grid_sides, steps


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 100), st.integers(2, 16), st.integers(0, 1000))
def test_groups_are_symmetric_bounded_and_the_same_on_every_peer(
    count: int, size_max: int, round_number: int
) -> None:
    members = [f"peer{i}" for i in range(count)]
    sides = grid_sides(count, size_max)
    assert all(2 <= side <= size_max for side in sides)
    product = 1
    for side in sides:
        product *= side
    assert product >= count
    assert len(sides) <= max(1, count - 1).bit_length()  # about log2(N) steps at worst (groups of 2)
    plans = {peer: steps(round_number, members, peer, size_max) for peer in members}
    for peer, plan in plans.items():
        assert len(plan) == len(sides)
        for index, group in enumerate(plan):
            assert peer in group and len(group) <= size_max
            # Everyone in my group computes the same group for this step.
            assert all(plans[other][index] == group for other in group)


def test_a_full_grid_reaches_everyone_in_its_steps() -> None:
    members = [f"peer{i}" for i in range(64)]
    reached = {peer: {peer} for peer in members}
    for index in range(len(grid_sides(64, 4))):
        groups = {peer: steps(9, members, peer, 4)[index] for peer in members}
        reached = {peer: set().union(*(reached[o] for o in groups[peer])) for peer in members}
    assert all(len(seen) == 64 for seen in reached.values())


def test_each_round_shuffles_the_groups() -> None:
    members = [f"peer{i}" for i in range(16)]
    assert steps(1, members, "peer0", 4) != steps(2, members, "peer0", 4)


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

"""The LoRA plugin: reading delta files, keeping merged rounds, and what a round shows in metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pyagent_lora.methods import MERGED_KEPT, _keep_merged, _read_delta

from pyagent import identity, pluginhost
from pyagent.composition import STANDARD, build_core
from pyagent.node.control import InvalidParams
from pyagent.node.metrics import Metrics
from pyagent.node.signing import NodeSigner
from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext
from pyagent.proto.lora import LoraAveraging, RoundFinished
from pyagent.proto.membership import Membership
from pyagent_lora import telemetry


def test_a_delta_over_the_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    np.save(path, np.ones(1001, dtype=np.float32))
    with pytest.raises(InvalidParams, match="1001 values; this mesh takes at most 1000"):
        _read_delta(path, 1000)
    assert _read_delta(path, 1001).shape == (1001,)


@pytest.mark.parametrize(
    "array",
    [np.zeros((2, 3), dtype=np.float32), np.arange(5, dtype=np.int64), np.array(["a", "b"])],
    ids=["2-D", "integers", "strings"],
)
def test_only_flat_float_arrays_are_deltas(tmp_path: Path, array: np.ndarray) -> None:
    path = tmp_path / "delta.npy"
    np.save(path, array)
    with pytest.raises(InvalidParams, match="flat float array"):
        _read_delta(path, 1 << 20)


def test_a_pickled_object_array_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidParams, match="cannot read a delta"):
        _read_delta(path, 1 << 20)


def test_float64_deltas_arrive_as_float32(tmp_path: Path) -> None:
    path = tmp_path / "delta.npy"
    np.save(path, np.array([0.5, -1.25], dtype=np.float64))
    delta = _read_delta(path, 10)
    assert delta.dtype == np.float32 and delta.tolist() == [0.5, -1.25]


def test_only_the_newest_merged_rounds_are_kept(tmp_path: Path) -> None:
    for round_ in range(MERGED_KEPT + 3):
        path = _keep_merged(tmp_path, round_, np.full(3, round_, dtype=np.float32))
        assert np.load(path).tolist() == [round_] * 3
    kept = sorted(int(p.stem.removeprefix("round-")) for p in tmp_path.glob("round-*.npy"))
    assert kept == list(range(3, MERGED_KEPT + 3))
    assert not list(tmp_path.glob("*.partial"))


def test_a_finished_round_shows_in_the_prometheus_text() -> None:
    metrics = Metrics()
    telemetry.add_metrics(metrics)
    finished = RoundFinished(3, 4, 40.0, 1_500_000, 1000, 2000, timed_out=False)
    telemetry.record_round(metrics, finished)
    telemetry.record_round(metrics, finished)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for sample in family.samples
    }
    assert samples[("pyagent_lora_rounds_total", (("outcome", "complete"),))] == 2
    assert samples[("pyagent_lora_sent_bytes_total", ())] == 2000
    assert samples[("pyagent_lora_received_bytes_total", ())] == 4000
    assert samples[("pyagent_lora_round_peers", ())] == 4
    assert samples[("pyagent_lora_round_seconds_count", ())] == 2


def test_a_node_with_membership_and_a_key_averages_and_a_bare_one_does_not(tmp_path: Path) -> None:
    plugins = pluginhost.load_plugins()
    bare = build_core("12D3KooWLocal", 7, plugins=plugins)
    assert "lora" not in [component.name for component in bare.components]

    key_pair = identity.create(tmp_path / "identity.key")
    peer = identity.peer_id_of(key_pair)

    def gossip(ctx: NodeContext) -> Component:
        return Membership(ctx.local_peer, ctx.rng(Membership.name))

    core = build_core(
        peer, 7, plugins=plugins, core_factories=(*STANDARD, gossip), identity=NodeSigner(key_pair)
    )
    assert isinstance(core.component("lora"), LoraAveraging)

"""LoRA adapters on a plain torch model: wrapping, frozen base, the shared frozen A (FFA-LoRA) under
which averaging B is averaging B @ A, and the flat delta layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pyagent.lora.adapter import LoraAdapter, LoraConfig, frozen_a


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 6)
        self.norm = nn.LayerNorm(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc2(torch.relu(self.fc1(x))))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def randomize_b(adapter: LoraAdapter, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=generator))


def test_wraps_every_module_a_target_name_ends_and_starts_as_the_base_model() -> None:
    base, model = net(), net()
    x = torch.randn(5, 6)
    adapter = LoraAdapter(model, LoraConfig(("fc1", "head"), rank=2))
    assert sorted(adapter.layers) == ["blocks.0.fc1", "blocks.1.fc1", "head"]
    assert torch.equal(model(x), base(x))  # B starts at zero
    randomize_b(adapter, 1)
    assert not torch.allclose(model(x), base(x))


def test_a_name_that_matches_nothing_or_no_linear_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'fc3' matches no module.*blocks\.0\.fc1"):
        LoraAdapter(net(), LoraConfig(("fc1", "fc3")))
    with pytest.raises(TypeError, match="LayerNorm"):
        LoraAdapter(net(), LoraConfig(("norm",)))


def test_only_the_adapter_trains() -> None:
    model = net()
    before = {name: p.clone() for name, p in model.named_parameters()}
    adapter = LoraAdapter(model, LoraConfig(("fc1", "fc2", "head"), rank=2))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{name}.lora_B.weight" for name in adapter.layers}
    optimizer = torch.optim.SGD(adapter.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 6)).square().mean().backward()
        optimizer.step()
    after = dict(model.named_parameters())
    for name, value in before.items():
        wrapped = name.replace(".weight", ".base.weight").replace(".bias", ".base.bias")
        kept = after.get(name, after.get(wrapped))
        assert kept is not None and torch.equal(kept, value), name
    assert any(p.abs().sum() > 0 for p in adapter.parameters())


def test_frozen_a_comes_from_the_seed_and_the_layer_name_only() -> None:
    first = LoraAdapter(net(0), LoraConfig(("fc1",), rank=3, a_seed=7))
    second = LoraAdapter(net(1), LoraConfig(("fc1",), rank=3, a_seed=7))
    other_seed = LoraAdapter(net(0), LoraConfig(("fc1",), rank=3, a_seed=8))
    a = {name: layer.lora_A.weight for name, layer in first.layers.items()}
    assert all(torch.equal(a[name], layer.lora_A.weight) for name, layer in second.layers.items())
    assert not torch.equal(a["blocks.0.fc1"], a["blocks.1.fc1"])
    assert not torch.equal(a["blocks.0.fc1"], other_seed.layers["blocks.0.fc1"].lora_A.weight)
    assert torch.equal(a["blocks.0.fc1"], frozen_a(7, "blocks.0.fc1", 3, 6))
    bound = 1 / np.sqrt(6)
    assert float(a["blocks.0.fc1"].abs().max()) <= bound
    assert float(a["blocks.0.fc1"].abs().max()) > 0.5 * bound


def test_with_a_shared_averaging_b_is_averaging_b_times_a() -> None:
    config = LoraConfig(("fc1", "fc2", "head"), rank=4, alpha=8)
    peers = [LoraAdapter(net(), config) for _ in range(3)]
    for seed, peer in enumerate(peers):
        randomize_b(peer, seed)
    weights = np.array([1.0, 2.0, 5.0])
    merged = LoraAdapter(net(), config)
    merged.load_flat(np.average([peer.flat() for peer in peers], axis=0, weights=weights).astype(np.float32))
    for name, delta in merged.delta_weights().items():
        exact = (
            sum(w * peer.delta_weights()[name] for w, peer in zip(weights, peers, strict=True))
            / weights.sum()
        )
        torch.testing.assert_close(delta, exact, rtol=1e-5, atol=1e-6)


def test_when_a_trains_too_averaging_a_and_b_apart_misses_the_mean_of_the_products() -> None:
    config = LoraConfig(("head",), rank=4, train_a=True)
    peers = [LoraAdapter(net(), config) for _ in range(2)]
    for seed, peer in enumerate(peers):
        randomize_b(peer, seed)
        with torch.no_grad():
            peer.layers["head"].lora_A.weight.add_(
                torch.randn(4, 6, generator=torch.Generator().manual_seed(seed))
            )
    merged = LoraAdapter(net(), config)
    merged.load_flat(np.mean([peer.flat() for peer in peers], axis=0).astype(np.float32))
    exact = sum(peer.delta_weights()["head"] for peer in peers) / 2
    error = float((merged.delta_weights()["head"] - exact).norm() / exact.norm())
    assert error > 0.05


def test_flat_holds_the_exchanged_tensors_in_a_stable_layout() -> None:
    ffa = LoraAdapter(net(), LoraConfig(("head", "fc1"), rank=2))
    assert [name for name, _ in ffa.layout.entries] == [
        "base_model.model.blocks.0.fc1.lora_B.weight",
        "base_model.model.blocks.1.fc1.lora_B.weight",
        "base_model.model.head.lora_B.weight",
    ]
    assert ffa.layout.numel == 12 * 2 * 2 + 3 * 2
    both = LoraAdapter(net(), LoraConfig(("head", "fc1"), rank=2, train_a=True))
    assert both.layout.numel == ffa.layout.numel + (6 * 2) * 3
    again = LoraAdapter(net(3), LoraConfig(("fc1", "head"), rank=2))
    assert again.layout.fingerprint == ffa.layout.fingerprint
    fingerprints = {
        ffa.layout.fingerprint,
        both.layout.fingerprint,
        LoraAdapter(net(), LoraConfig(("head", "fc1"), rank=2, a_seed=1)).layout.fingerprint,
        LoraAdapter(net(), LoraConfig(("head", "fc1"), rank=3)).layout.fingerprint,
    }
    assert len(fingerprints) == 4


def test_load_flat_sets_what_flat_reads() -> None:
    config = LoraConfig(("fc2", "head"), rank=2, train_a=True)
    source, target = LoraAdapter(net(), config), LoraAdapter(net(), config)
    randomize_b(source, 5)
    flat = source.flat()
    target.load_flat(flat)
    x = torch.randn(4, 6)
    assert np.array_equal(target.flat(), flat)
    assert torch.equal(source.model(x), target.model(x))


def test_load_state_dict_refuses_what_does_not_fit() -> None:
    config = LoraConfig(("head",), rank=2)
    adapter = LoraAdapter(net(), config)
    state = {key: value.clone() for key, value in adapter.state_dict().items()}
    with pytest.raises(KeyError, match="missing"):
        adapter.load_state_dict({key: value for key, value in state.items() if "lora_B" not in key})
    with pytest.raises(ValueError, match="shape"):
        adapter.load_state_dict({**state, "base_model.model.head.lora_B.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="frozen from seed 0"):
        adapter.load_state_dict({**state, "base_model.model.head.lora_A.weight": torch.zeros(2, 6)})
    state["base_model.model.head.lora_B.weight"] += 1
    adapter.load_state_dict(state)
    assert torch.equal(adapter.layers["head"].lora_B.weight, torch.ones(3, 2))

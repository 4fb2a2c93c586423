"""Our adapter state dicts against the real ``peft`` package: the same plain model wrapped by PEFT's
``get_peft_model`` computes the same outputs with our tensors loaded into it, and ours with theirs."""

from __future__ import annotations

import copy

import peft
import torch
from torch import nn

from pyagent.lora.adapter import LoraAdapter, LoraConfig, peft_config


def plain_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(10, 16),
        nn.ReLU(),
        nn.Sequential(nn.Linear(16, 16), nn.Tanh()),
        nn.Linear(16, 4),
    )


CONFIG = LoraConfig(("0", "2.0", "3"), rank=4, alpha=12)


def train_a_little(model: nn.Module, parameters: list[nn.Parameter]) -> None:
    optimizer = torch.optim.Adam(parameters, lr=0.05)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(32, 10, generator=generator)
        optimizer.zero_grad()
        (model(x) - x[:, :4]).square().mean().backward()
        optimizer.step()


def test_peft_names_our_tensors_as_we_do() -> None:
    ours = LoraAdapter(plain_model(), CONFIG)
    theirs = peft.get_peft_model(plain_model(), peft_config(CONFIG))
    assert set(peft.get_peft_model_state_dict(theirs)) == set(ours.state_dict())


def test_our_state_dict_loads_into_peft_with_the_same_outputs() -> None:
    model = plain_model()
    ours = LoraAdapter(model, CONFIG)
    train_a_little(model, ours.parameters())
    theirs = peft.get_peft_model(plain_model(), peft_config(CONFIG))
    result = peft.set_peft_model_state_dict(theirs, ours.state_dict())
    assert result.unexpected_keys == []
    x = torch.randn(7, 10)
    with torch.no_grad():
        assert not torch.allclose(model(x), plain_model()(x))
        torch.testing.assert_close(theirs(x), model(x))


def test_peft_state_dict_loads_into_ours_with_the_same_outputs() -> None:
    both = LoraConfig(CONFIG.target_modules, CONFIG.rank, CONFIG.alpha, train_a=True)
    theirs = peft.get_peft_model(plain_model(), peft_config(both))
    train_a_little(theirs, [p for p in theirs.parameters() if p.requires_grad])
    model = plain_model()
    ours = LoraAdapter(model, both)
    ours.load_state_dict(peft.get_peft_model_state_dict(theirs))
    x = torch.randn(7, 10)
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x))


def test_a_peft_model_trained_from_our_frozen_a_loads_back_into_ffa() -> None:
    ours = LoraAdapter(plain_model(), CONFIG)
    theirs = peft.get_peft_model(plain_model(), peft_config(CONFIG))
    peft.set_peft_model_state_dict(theirs, ours.state_dict())
    b_only = [p for name, p in theirs.named_parameters() if "lora_B" in name]
    train_a_little(theirs, b_only)
    ours.load_state_dict(copy.deepcopy(peft.get_peft_model_state_dict(theirs)))
    x = torch.randn(7, 10)
    with torch.no_grad():
        torch.testing.assert_close(ours.model(x), theirs(x))

"""LoRA adapters on the ``nn.Linear`` layers of any torch module (the extra ``pyagent[torch]``).

:class:`LoraAdapter` replaces each targeted ``nn.Linear`` of a model, in place, by a :class:`LoraLinear`
that adds ``scaling * B @ A`` to it (``scaling = alpha / rank``), with A ``(rank, in)`` and B
``(out, rank)``, B starting at zero. Only the adapter trains; the model's own weights are frozen.

By default A is frozen, drawn from a seed the whole mesh shares (FFA-LoRA): every peer then has the same
A, so the mean of the peers' B times A is exactly the mean of their B @ A, and only B is exchanged. With
``train_a=True`` both train and both are exchanged; averaging them separately then only approximates the
mean of the products (docs/lora.md gives the measured error).

The adapter's tensors carry PEFT's names (``base_model.model.<module>.lora_A.weight``), so its state dict
loads into a PEFT ``LoraModel`` of the same model and back (:func:`peft_config` builds the matching PEFT
configuration when ``peft`` is installed). Deltas leave as one flat float32 numpy array laid out by
:attr:`LoraAdapter.layout`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pyagent.lora.layout import DeltaLayout

if TYPE_CHECKING:
    import peft

__all__ = ["LoraAdapter", "LoraConfig", "LoraLinear", "frozen_a", "peft_config"]

PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraConfig:
    """``target_modules``: a module is wrapped when its dotted name equals one of these or ends with
    ``"." + name`` (PEFT's rule), so ``"fc1"`` matches ``"fc1"`` and ``"block.0.fc1"``."""

    target_modules: tuple[str, ...]
    rank: int = 8
    alpha: int = 16
    train_a: bool = False
    a_seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, not {self.rank}")
        if not self.target_modules:
            raise ValueError("target_modules names no module")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def frozen_a(seed: int, module_name: str, rank: int, in_features: int) -> torch.Tensor:
    """The shared A of one layer: uniform on ±1/sqrt(in_features) (PEFT's default bound), from ``seed``
    and the layer's name only.

    The draws are PCG64's raw 64-bit words from a SeedSequence, both specified by numpy and stable
    across its versions, turned into floats here, so every peer draws the same A whatever its numpy or
    torch version.
    """
    name_key = int.from_bytes(hashlib.sha256(module_name.encode()).digest()[:16], "little")
    words = np.random.PCG64(np.random.SeedSequence([seed, name_key])).random_raw(rank * in_features)
    unit = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    bound = 1.0 / math.sqrt(in_features)
    return torch.from_numpy(((2.0 * unit - 1.0) * bound).astype(np.float32).reshape(rank, in_features))


class LoraLinear(nn.Module):
    """``base(x) + scaling * lora_B(lora_A(x))``; ``base`` stays frozen."""

    def __init__(self, base: nn.Linear, rank: int, scaling: float, a_init: torch.Tensor) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = scaling
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, **factory)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, **factory)
        with torch.no_grad():
            self.lora_A.weight.copy_(a_init)
            self.lora_B.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x) + self.scaling * self.lora_B(self.lora_A(x))
        return out

    def delta_weight(self) -> torch.Tensor:
        """What the adapter adds to the base weight: ``scaling * B @ A``."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)


class LoraAdapter:
    """Wraps ``model``'s targeted ``nn.Linear`` layers in place and handles their LoRA tensors."""

    def __init__(self, model: nn.Module, config: LoraConfig) -> None:
        self.model = model
        self.config = config
        targets = _match_targets(model, config.target_modules)
        model.requires_grad_(False)
        self.layers: dict[str, LoraLinear] = {}
        for name, linear in targets.items():
            a_init = frozen_a(config.a_seed, name, config.rank, linear.in_features)
            layer = LoraLinear(linear, config.rank, config.scaling, a_init)
            layer.lora_A.weight.requires_grad_(config.train_a)
            _replace(model, name, layer)
            self.layers[name] = layer
        exchanged = {
            key: tuple(tensor.shape)
            for key, tensor in self.state_dict().items()
            if config.train_a or key.endswith(".lora_B.weight")
        }
        # With A frozen, B only means something beside the same A: the seed joins the fingerprint.
        tag = "A and B train" if config.train_a else f"A frozen from seed {config.a_seed}"
        self.layout = DeltaLayout.from_shapes(exchanged, tag=f"rank {config.rank}, {tag}")

    def parameters(self) -> list[torch.Tensor]:
        """The tensors that train (for the optimizer)."""
        return [
            p
            for layer in self.layers.values()
            for p in (layer.lora_A.weight, layer.lora_B.weight)
            if p.requires_grad
        ]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every A and B under PEFT's names (detached, sharing memory with the adapter)."""
        return {
            f"{PEFT_PREFIX}{name}.lora_{part}.weight": getattr(layer, f"lora_{part}").weight.detach()
            for name, layer in self.layers.items()
            for part in ("A", "B")
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a PEFT adapter state dict of exactly this adapter's tensors.

        With A frozen, the state's A must equal the seeded A: B learned beside another A would average
        into nonsense, so a mismatch raises rather than quietly changing A.
        """
        own = self.state_dict()
        if set(state) != set(own):
            raise KeyError(
                f"state dict does not fit this adapter: missing {sorted(set(own) - set(state))}, "
                f"unexpected {sorted(set(state) - set(own))}"
            )
        for key, target in own.items():
            value = state[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"{key}: shape {tuple(value.shape)}, adapter has {tuple(target.shape)}")
            if (
                not self.config.train_a
                and key.endswith(".lora_A.weight")
                and not torch.equal(value.to(target), target)
            ):
                raise ValueError(f"{key} differs from the A frozen from seed {self.config.a_seed}")
        with torch.no_grad():
            for key, target in own.items():
                target.copy_(state[key])

    def flat(self) -> npt.NDArray[np.float32]:
        """The exchanged tensors (B, or A and B) as one new float32 array in :attr:`layout`'s order."""
        state = self.state_dict()
        return self.layout.flatten(
            {name: state[name].cpu().float().numpy() for name, _ in self.layout.entries}
        )

    def load_flat(self, flat: npt.NDArray[np.float32]) -> None:
        """Set the exchanged tensors from a flat array in :attr:`layout`'s order."""
        state = self.state_dict()
        with torch.no_grad():
            for name, value in self.layout.unflatten(flat).items():
                state[name].copy_(torch.from_numpy(value))

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """Each wrapped layer's ``scaling * B @ A``, by module name."""
        with torch.no_grad():
            return {name: layer.delta_weight() for name, layer in self.layers.items()}


def peft_config(config: LoraConfig) -> peft.LoraConfig:
    """The PEFT configuration of the same adapter (needs ``peft``): no dropout, no bias, PEFT's scaling."""
    import peft

    return peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=list(config.target_modules),
        lora_dropout=0.0,
        bias="none",
    )


def _match_targets(model: nn.Module, target_modules: Sequence[str]) -> dict[str, nn.Linear]:
    modules = dict(model.named_modules())
    matched: dict[str, nn.Linear] = {}
    for target in target_modules:
        names = [name for name in modules if name == target or name.endswith("." + target)]
        if not names:
            linears = sorted(name for name, module in modules.items() if isinstance(module, nn.Linear))
            raise ValueError(
                f"target module {target!r} matches no module; the nn.Linear modules are {linears}"
            )
        for name in names:
            module = modules[name]
            if not isinstance(module, nn.Linear):
                raise TypeError(
                    f"target {target!r} matches {name!r}, a {type(module).__name__}, not an nn.Linear"
                )
            matched[name] = module
    return dict(sorted(matched.items()))


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent: Any = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, layer)

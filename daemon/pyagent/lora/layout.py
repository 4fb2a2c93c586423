"""Named tensors <-> one flat float32 array, the form in which a LoRA delta is averaged.

The averaging protocol moves one 1-D float32 array per round. A :class:`DeltaLayout` says which named
tensor each stretch of it is: names in sorted order (so the order does not depend on how a model
registers its modules), each tensor row-major. Its :attr:`~DeltaLayout.fingerprint` lets peers check
that their arrays mean the same thing before they average them.

numpy only: the daemon can check layouts without importing torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from math import prod

import numpy as np
import numpy.typing as npt

__all__ = ["DeltaLayout", "LayoutMismatchError"]


class LayoutMismatchError(ValueError):
    """Tensors or a flat array that do not fit the layout they were given to."""


@dataclass(frozen=True)
class DeltaLayout:
    """The names and shapes of the tensors in a flat delta, in their order in it.

    ``tag`` is folded into the fingerprint and nothing else: it names whatever else two deltas must share
    to be averaged, such as the seed of a frozen LoRA A.
    """

    entries: tuple[tuple[str, tuple[int, ...]], ...]
    tag: str = ""

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]], tag: str = "") -> DeltaLayout:
        return cls(tuple((name, tuple(int(d) for d in shapes[name])) for name in sorted(shapes)), tag)

    @cached_property
    def numel(self) -> int:
        return sum(prod(shape) for _, shape in self.entries)

    @cached_property
    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the tag, names and shapes: equal layouts, equal fingerprints."""
        text = "\n".join([f"tag {self.tag}"] + [f"{name} {list(shape)}" for name, shape in self.entries])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def flatten(self, tensors: Mapping[str, npt.ArrayLike]) -> npt.NDArray[np.float32]:
        """One new float32 array holding ``tensors``, which must be exactly this layout's names and shapes."""
        if set(tensors) != {name for name, _ in self.entries}:
            missing = sorted({name for name, _ in self.entries} - set(tensors))
            extra = sorted(set(tensors) - {name for name, _ in self.entries})
            raise LayoutMismatchError(
                f"tensors do not fit layout {self.fingerprint}: missing {missing}, extra {extra}"
            )
        out = np.empty(self.numel, dtype=np.float32)
        for (name, shape), view in zip(self.entries, self._views(out), strict=True):
            value = np.asarray(tensors[name])
            if value.shape != shape:
                raise LayoutMismatchError(
                    f"{name}: shape {value.shape}, layout {self.fingerprint} has {shape}"
                )
            view[...] = value
        return out

    def unflatten(self, flat: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
        """The named tensors of ``flat``, as views into it: copy one to keep it past changes to ``flat``."""
        if flat.dtype != np.float32 or flat.shape != (self.numel,):
            raise LayoutMismatchError(
                f"layout {self.fingerprint} takes a float32 array of shape ({self.numel},), "
                f"not {flat.dtype} {flat.shape}"
            )
        return {name: view for (name, _), view in zip(self.entries, self._views(flat), strict=True)}

    def _views(self, flat: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        views, start = [], 0
        for _, shape in self.entries:
            size = prod(shape)
            views.append(flat[start : start + size].reshape(shape))
            start += size
        return views

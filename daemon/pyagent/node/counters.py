"""Named event counters of the host, exported by `Host.stats`."""

from __future__ import annotations

from collections.abc import Iterable


class Counters:
    def __init__(self, names: Iterable[str]) -> None:
        # Every name is present from the start so that a dashboard sees zeros, not missing keys.
        self._counts = dict.fromkeys(names, 0)

    def add(self, name: str, amount: int = 1) -> None:
        if name not in self._counts:
            raise KeyError(f"unknown counter {name!r}")
        self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)

"""Named event counters of the host, exported by `Host.stats`, `pyagent stats` and ``/metrics``.

Every name is exported as it is (``pyagent_host_<name>_total``, ``node/metrics.py``), so a new counter
needs nothing but its name here. A count may also carry one label (the protocol of a frame, the outcome
of a dial): the total stays under its name, and the breakdown is kept beside it for the metrics.
"""

from __future__ import annotations

from collections.abc import Iterable

# Distinct labels kept per counter; more land in OTHER_LABEL. Labels come from our own code (protocol ids
# the node registered, dial reasons), never from a peer's bytes, so this bound is a guard against a bug.
LABELS_MAX = 256
OTHER_LABEL = "other"


class Counters:
    def __init__(self, names: Iterable[str]) -> None:
        # Every name is present from the start so that a dashboard sees zeros, not missing keys.
        self._counts = dict.fromkeys(names, 0)
        self._labelled: dict[str, dict[str, int]] = {}

    def add(self, name: str, amount: int = 1, label: str | None = None) -> None:
        if name not in self._counts:
            raise KeyError(f"unknown counter {name!r}")
        self._counts[name] += amount
        if label is not None:
            by_label = self._labelled.setdefault(name, {})
            if label not in by_label and len(by_label) >= LABELS_MAX:
                label = OTHER_LABEL
            by_label[label] = by_label.get(label, 0) + amount

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)

    def labelled(self) -> dict[str, dict[str, int]]:
        """The per-label breakdown of each counter that was ever given a label."""
        return {name: dict(by_label) for name, by_label in self._labelled.items()}

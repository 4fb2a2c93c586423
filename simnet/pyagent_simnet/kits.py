"""Kits: what simnet knows about one feature, registered through the entry-point group
``pyagent_simnet.kits``.

A kit brings, for one feature (membership, ping, a plugin's protocol...):
- its scenario table ``[<name>]`` and ``[<name>.checks]``: keys, types, defaults and bounds (``settings``,
  ``checks``; ``table`` for free-form keys or constraints across keys), typed for ``--set`` like simnet's;
- the components it adds to every node (``components``: factories that ``composition.build_core`` calls
  with the node's ``NodeContext``, exactly as the daemon builds its core);
- what a node does when it starts or leaves (``on_start``, ``on_leave``: join a mesh, say goodbye);
- its observer (``observer``): measurements, safety checks (``violations``), liveness (``converged``) and
  the figures that go into ``report.json``;
- its summary figures, default sweep figures and plots (``summary_keys``, ``sweep_figures``, ``plots``).

A scenario names kits in ``components = [...]``. A kit is found by the name of its entry point::

    [project.entry-points."pyagent_simnet.kits"]
    membership = "pyagent_simnet.membership_kit:MembershipKit"

The value is a ``Kit`` subclass (instantiated with no arguments) or a ``Kit`` instance, whose ``name`` must
be the entry point's name. simnet's own kits register exactly so, in simnet's pyproject.toml, so adding a
kit touches no simnet module.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pyagent.composition import CoreFactory
from pyagent.errors import ConfigError
from pyagent_simnet.schema import Field, fill

if TYPE_CHECKING:
    from pyagent_simnet.observe import Observer
    from pyagent_simnet.sim import Sim, SimNode

ENTRY_POINT_GROUP = "pyagent_simnet.kits"
CHECKS = "checks"


class Kit:
    name: ClassVar[str] = ""
    # Keys of the kit's table [<name>] and of [<name>.checks], with their types, defaults and bounds.
    settings: ClassVar[Mapping[str, Field]] = {}
    checks: ClassVar[Mapping[str, Field]] = {}
    # report.json figures this kit adds to a run's one-line summary, and a sweep's default plots.
    summary_keys: ClassVar[tuple[str, ...]] = ()
    sweep_figures: ClassVar[tuple[str, ...]] = ()

    def table(self, given: Mapping[str, Any], source: str) -> dict[str, Any]:
        """Check ``[<name>]`` as given (``checks`` holds ``[<name>.checks]``) and return it complete.

        The default accepts exactly ``settings`` and ``checks``. Override to accept free-form keys or to
        check across keys; raise ``ConfigError`` naming ``source`` and the dotted key."""
        return self.fill(given, source)

    def fill(self, given: Mapping[str, Any], source: str, free_form: bool = False) -> dict[str, Any]:
        """``given`` with defaults filled in. With ``free_form``, keys outside ``settings`` are kept as
        given (the kit checks them itself); otherwise they are unknown keys."""
        checks = given.get(CHECKS, {})
        if not isinstance(checks, dict):
            raise ConfigError(f"{source}: {self.name}.{CHECKS}: must be a table")
        known = {key: value for key, value in given.items() if key in self.settings}
        extra = {key: value for key, value in given.items() if key not in self.settings and key != CHECKS}
        if extra and not free_form:
            raise ConfigError(f"{source}: {self.name}.{next(iter(extra))}: unknown key")
        out = fill(known, self.settings, self.name, source)
        out.update(extra)
        out[CHECKS] = fill(checks, self.checks, f"{self.name}.{CHECKS}", source)
        return out

    def field(self, key: str) -> Field | None:
        """The field that types ``--set <name>.<key>=...`` (``checks.<k>`` for a check); None: free-form."""
        if key.startswith(CHECKS + "."):
            return self.checks.get(key.removeprefix(CHECKS + "."))
        return self.settings.get(key)

    def components(self, sim: Sim, node: SimNode) -> Sequence[CoreFactory]:
        """The factories of the components this kit adds to ``node``'s core (built at every start)."""
        return ()

    def on_start(self, sim: Sim, node: SimNode) -> None:
        """``node`` has just started (first start or restart) and been fed ``Started``."""

    def on_leave(self, sim: Sim, node: SimNode) -> int:
        """``node`` is about to leave for good: say goodbye, and return how long (us) to keep running."""
        return 0

    def observer(self, sim: Sim) -> Observer | None:
        """This kit's measurements and checkers for one run (see ``observe.Observer``)."""
        return None

    def plots(self, result: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """Write this kit's plots of a run's ``result`` (report.json) into ``out_dir``; return their paths.
        ``pyagent_simnet.report`` has helpers (``line``, ``cdf``) that use matplotlib's headless backend."""
        return []


def names() -> list[str]:
    """Every kit name installed (sorted), without importing any kit."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


# Loaded kits by (name, entry point value), so a kit is imported once per process.
_loaded: dict[tuple[str, str], Kit] = {}


def get(name: str, source: str) -> Kit:
    """The kit registered as ``name``; ``ConfigError`` (naming ``source``) when there is none or it breaks."""
    found = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise ConfigError(f"{source}: components: unknown kit {name!r} (installed: {', '.join(names())})")
    entry = found[0]
    kit = _loaded.get((name, entry.value))
    if kit is not None:
        return kit
    try:
        obj = entry.load()
    except Exception as exc:  # an import error, or anything its module raises while importing
        raise ConfigError(f"{source}: kit {name!r} ({entry.value}) failed to load: {exc}") from None
    kit = obj() if isinstance(obj, type) else obj
    if not isinstance(kit, Kit):
        raise ConfigError(f"{source}: kit {name!r} ({entry.value}) is not a pyagent_simnet.kits.Kit")
    if kit.name != name:
        raise ConfigError(f"{source}: kit {entry.value} calls itself {kit.name!r}, registered as {name!r}")
    _loaded[(name, entry.value)] = kit
    return kit


def load_factory(spec: str, source: str) -> CoreFactory:
    """``module:callable`` (an ``extra_components`` entry) -> the callable: ``factory(ctx) -> Component``."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ConfigError(f"{source}: extra_components: {spec!r} must look like 'module:factory'")
    try:
        factory: CoreFactory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{source}: extra_components: cannot load {spec!r}: {exc}") from None
    return factory

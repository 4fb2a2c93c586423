"""Finds, loads and checks plugins, and merges what their hooks return.

Built-in features and third-party plugins take the same path: an entry point in the group ``pyagent``.
Plugins are registered in the order of their names, not in the order the file system lists installed
distributions, so every hook runs in the same order on every machine and a simulation replays anywhere.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from pyagent import hookspecs
from pyagent.errors import ConfigError
from pyagent.hookspecs import ControlMethod
from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext

ENTRY_POINT_GROUP = "pyagent"

# Plugin names appear in control-method names ("<plugin>.<method>"), in the config's disabled list and in
# what the hello protocol tells peers, so they are kept short and plain.
PLUGIN_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
CONTROL_METHOD_PATTERN = re.compile(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One loaded plugin, as ``pyagent plugins`` shows it."""

    name: str
    # None for a plugin registered in-process (tests, embedding) rather than through an entry point.
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager that knows the PyAgent contract and holds no plugin yet."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(disabled: Iterable[str] = ()) -> pluggy.PluginManager:
    """Load every installed plugin except the ``disabled`` ones, and check them against the contract.

    Raises ``ConfigError`` for a disabled name no installed plugin has, and for an enabled plugin that
    has a malformed name, whose name two distributions claim, that fails to import or register, or that
    implements a hook the contract does not define.
    """
    pm = new_plugin_manager()
    installed = _installed_plugins()
    disabled = set(disabled)
    unknown = sorted(disabled - installed.keys())
    if unknown:
        raise ConfigError(
            f"cannot disable {', '.join(unknown)}: no such plugin is installed; "
            f"installed: {', '.join(sorted(installed)) or 'none'}"
        )
    for name in disabled:
        pm.set_blocked(name)
    for name in sorted(installed.keys() - disabled):
        owners = installed[name]
        if not PLUGIN_NAME_PATTERN.fullmatch(name):
            raise ConfigError(
                f"plugin name {name!r} (from {owners[0]}) must match {PLUGIN_NAME_PATTERN.pattern}; "
                f"ask its author to rename the entry point, or {_disable_hint(name)}"
            )
        if len(owners) > 1:
            raise ConfigError(
                f"plugin name {name!r} is claimed by {' and '.join(map(str, owners))}; uninstall all but one"
            )
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        except Exception as exc:
            raise ConfigError(
                f"plugin {name!r} (from {owners[0]}) failed to load: {exc!r}; "
                f"reinstall or upgrade {owners[0].name}, or {_disable_hint(name)}"
            ) from exc
    check_plugins(pm)
    return pm


def _disable_hint(name: str) -> str:
    """How the operator switches a plugin off, for the end of an error message."""
    return f'disable it with disabled = ["{name}"] under [plugins] in config.toml'


def check_plugins(pm: pluggy.PluginManager) -> None:
    """Refuse plugins that implement hooks the contract does not define (a typo, or a newer contract)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin)
        assert name is not None, "check_pending only reports registered plugins"
        raise ConfigError(
            f"plugin {name!r} does not fit this pyagent: {exc}; upgrade it, or {_disable_hint(name)}"
        ) from exc


@dataclass(frozen=True, slots=True)
class _Owner:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def _installed_plugins() -> dict[str, list[_Owner]]:
    """Map each plugin name in the entry-point group to the distributions that declare it."""
    found: dict[str, list[_Owner]] = {}
    for dist in importlib.metadata.distributions():
        owner = _Owner(dist.metadata["Name"], dist.version)
        for entry_point in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            owners = found.setdefault(entry_point.name, [])
            # The same distribution can be visible twice (an editable install next to its source tree's
            # egg-info); only two different distributions claiming one name is a conflict.
            if all(known.name != owner.name for known in owners):
                owners.append(owner)
    return found


def plugin_names(pm: pluggy.PluginManager) -> tuple[str, ...]:
    """The sorted names of the registered plugins."""
    return tuple(sorted(name for name, plugin in pm.list_name_plugin() if plugin is not None))


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Every registered plugin with its distribution and the hooks it implements, sorted by name."""
    distributions = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos: list[PluginInfo] = []
    for name in plugin_names(pm):
        plugin = pm.get_plugin(name)
        dist = distributions.get(id(plugin))
        callers = pm.get_hookcallers(plugin) or []
        infos.append(
            PluginInfo(
                name=name,
                distribution=dist.project_name if dist is not None else None,
                version=dist.version if dist is not None else None,
                hooks=tuple(sorted(caller.name for caller in callers)),
            )
        )
    return infos


def collect_components(pm: pluggy.PluginManager, ctx: NodeContext) -> list[Component]:
    """Call ``pyagent_add_components(ctx)`` through pluggy (so wrappers and ordering apply) and return
    every plugin's components, in the order pluggy called the plugins."""
    components: list[Component] = []
    for result in pm.hook.pyagent_add_components(ctx=ctx):
        if not isinstance(result, list) or not all(isinstance(c, Component) for c in result):
            raise ConfigError(f"pyagent_add_components must return a list of Component, got {result!r:.100}")
        components.extend(result)
    return components


def collect_metadata(pm: pluggy.PluginManager) -> dict[str, str | int | float | bool]:
    """Merge every plugin's ``pyagent_add_metadata`` keys, refusing a key claimed twice."""
    merged: dict[str, str | int | float | bool] = {}
    owners: dict[str, str] = {}
    for plugin, result in _call_each(pm.hook.pyagent_add_metadata):
        if not isinstance(result, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in result.items()
        ):
            raise ConfigError(f"plugin {plugin!r}: pyagent_add_metadata must return a dict of str to scalars")
        for key, value in result.items():
            if key in owners:
                raise ConfigError(f"metadata key {key!r} is set by both {owners[key]!r} and {plugin!r}")
            owners[key] = plugin
            merged[key] = value
    return merged


def control_methods(
    pm: pluggy.PluginManager, core_method_names: Collection[str] = ()
) -> dict[str, ControlMethod]:
    """Merge every plugin's ``pyagent_control_methods``; a name taken twice is a ``ConfigError``.

    ``core_method_names`` are the daemon's own methods, so that no plugin can shadow one of them.
    """
    owners = dict.fromkeys(core_method_names, "the pyagent core")
    merged: dict[str, ControlMethod] = {}
    for plugin, result in _call_each(pm.hook.pyagent_control_methods):
        if not isinstance(result, dict):
            raise ConfigError(f"plugin {plugin!r}: pyagent_control_methods must return a dict")
        for method_name, method in result.items():
            if not isinstance(method_name, str) or not CONTROL_METHOD_PATTERN.fullmatch(method_name):
                raise ConfigError(
                    f"plugin {plugin!r}: control method name {method_name!r} must look like "
                    f"'{plugin}.<method>' ({CONTROL_METHOD_PATTERN.pattern})"
                )
            if not callable(method):
                raise ConfigError(f"plugin {plugin!r}: control method {method_name!r} is not callable")
            if method_name in owners:
                raise ConfigError(
                    f"control method {method_name!r} is defined by both {owners[method_name]} and "
                    f"plugin {plugin!r}; {_disable_hint(plugin)}"
                )
            owners[method_name] = f"plugin {plugin!r}"
            merged[method_name] = method
    return merged


def _call_each(hook: pluggy.HookCaller, **kwargs: Any) -> list[tuple[str, object]]:
    """Call each implementation of ``hook`` on its own, in plugin-name order, keeping who returned what.

    A plain hook call merges results anonymously; the merging helpers need the owner to name it in errors.
    """
    impls = sorted(hook.get_hookimpls(), key=lambda impl: impl.plugin_name)
    return [
        (impl.plugin_name, impl.function(**{arg: kwargs[arg] for arg in impl.argnames})) for impl in impls
    ]

"""Finds, loads and checks plugins, and merges what their hooks return.

Built-in features and third-party plugins take the same path: an entry point in the group ``pyagent``.

Every hook is called through pluggy (``pm.hook.<name>(...)``), the merged ones included, so a plugin's
``wrapper=True`` (or old-style ``hookwrapper=True``) implementations and ``tryfirst`` / ``trylast`` apply
to every hook. pluggy calls the implementation registered last first; ``load_plugins`` registers plugins
in reverse name order, so that, unless ``tryfirst``/``trylast`` say otherwise, every hook runs the plugins
in name order: the same order on every machine, whatever order the file system lists distributions in,
so a simulation replays anywhere.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Collection, Generator, Iterable
from dataclasses import dataclass

import pluggy

from pyagent import hookspecs
from pyagent.config import COMPONENT_NAME_PATTERN
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
    """One installed plugin, as ``pyagent plugins`` shows it."""

    name: str
    # None for a plugin registered in-process (tests, embedding) rather than through an entry point.
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    # "loaded", "disabled" (by config, PYAGENT_PLUGINS_DISABLED or --no-plugins) or "failed".
    status: str = "loaded"
    # Why a failed plugin was skipped.
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PluginFailure:
    """A plugin that could not be loaded and was skipped: its name, who ships it, and why."""

    name: str
    distribution: str | None
    version: str | None
    reason: str

    def __str__(self) -> str:
        source = f" (from {self.distribution} {self.version})" if self.distribution else ""
        return f"plugin {self.name!r}{source} failed to load and is skipped: {self.reason}"


class PluginHost(pluggy.PluginManager):
    """A plugin manager that also remembers which plugins were skipped, and why, and which were disabled."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self.failures: list[PluginFailure] = []
        self.disabled: list[str] = []


DISABLED_ENV = "PYAGENT_PLUGINS_DISABLED"


def disabled_from_env() -> list[str]:
    """The plugin names in ``$PYAGENT_PLUGINS_DISABLED`` (comma-separated)."""
    return [name.strip() for name in os.environ.get(DISABLED_ENV, "").split(",") if name.strip()]


def new_plugin_manager() -> PluginHost:
    """A plugin manager that knows the PyAgent contract and holds no plugin yet."""
    pm = PluginHost(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(
    disabled: Iterable[str] = (), required: Iterable[str] = (), *, strict_disabled: bool = True
) -> PluginHost:
    """Load every installed plugin except the ``disabled`` ones (never imported), and check them against
    the contract.

    A plugin that cannot be loaded (a malformed name, a name two distributions claim, a failing import or
    registration, a hook the contract does not define) is skipped and recorded in ``pm.failures``: one
    broken plugin must not lock the operator out of every command. Only a ``required`` plugin that fails,
    is missing or is disabled raises ``ConfigError``; so does, when ``strict_disabled``, a disabled name
    that no installed plugin has (a typo in the config).
    """
    pm = new_plugin_manager()
    installed = _installed_plugins()
    disabled = set(disabled)
    required = set(required)
    unknown = sorted(disabled - installed.keys())
    if unknown and strict_disabled:
        raise ConfigError(
            f"cannot disable {', '.join(unknown)}: no such plugin is installed; "
            f"installed: {', '.join(sorted(installed)) or 'none'}; fix [plugins] disabled or "
            f"${DISABLED_ENV}"
        )
    missing = sorted(required - installed.keys())
    if missing:
        raise ConfigError(
            f"[plugins] required names {', '.join(missing)}, which no installed plugin is; install it, or "
            f"remove it from required; installed: {', '.join(sorted(installed)) or 'none'}"
        )
    both = sorted(required & disabled)
    if both:
        raise ConfigError(
            f"plugin {', '.join(map(repr, both))} is both required and disabled (by [plugins] disabled, "
            f"${DISABLED_ENV} or --no-plugins); drop one of the two"
        )
    for name in disabled:
        pm.set_blocked(name)
    pm.disabled = sorted(disabled & installed.keys())
    enabled = sorted(installed.keys() - disabled)

    def fail(name: str, reason: str) -> None:
        owners = installed.get(name)
        owner = owners[0] if owners else None
        failure = PluginFailure(name, owner.name if owner else None, owner.version if owner else None, reason)
        if name in required:
            raise ConfigError(f"{failure}, but [plugins] required lists it; fix or reinstall it")
        pm.failures.append(failure)

    loadable = []
    for name in enabled:
        owners = installed[name]
        if not PLUGIN_NAME_PATTERN.fullmatch(name):
            fail(name, f"its name must match {PLUGIN_NAME_PATTERN.pattern}; ask its author to rename it")
        elif len(owners) > 1:
            fail(name, f"the name is claimed by {' and '.join(map(str, owners))}; uninstall all but one")
        else:
            loadable.append(name)
    # pluggy calls the implementation registered last first: registering in reverse name order makes
    # every hook call run the plugins in name order.
    for name in reversed(loadable):
        owner = installed[name][0]
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        except Exception as exc:
            plugin = pm.get_plugin(name)
            if plugin is not None:
                pm.unregister(plugin)
            pm.set_blocked(name)
            fail(name, f"{exc!r}; reinstall or upgrade {owner.name}, or {_disable_hint(name)}")
    while (misfit := _first_misfit(pm)) is not None:
        name, exc = misfit
        pm.unregister(name=name)
        pm.set_blocked(name)
        fail(name, f"it does not fit this pyagent: {exc}; upgrade it, or {_disable_hint(name)}")
    pm.failures.sort(key=lambda failure: failure.name)
    return pm


def _first_misfit(pm: pluggy.PluginManager) -> tuple[str, pluggy.PluginValidationError] | None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin)
        assert name is not None, "check_pending only reports registered plugins"
        return name, exc
    return None


def _disable_hint(name: str) -> str:
    """How the operator switches a plugin off, for the end of an error message."""
    return f'disable it with disabled = ["{name}"] under [plugins] in config.toml'


def check_plugins(pm: pluggy.PluginManager) -> None:
    """Refuse plugins that implement hooks the contract does not define (a typo, or a newer contract)."""
    misfit = _first_misfit(pm)
    if misfit is not None:
        name, exc = misfit
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


def installed_plugin_names() -> set[str]:
    """Every plugin name installed in the entry-point group, loaded or disabled."""
    return set(_installed_plugins())


def plugin_names(pm: pluggy.PluginManager) -> tuple[str, ...]:
    """The sorted names of the registered plugins."""
    return tuple(
        sorted(
            name
            for name, plugin in pm.list_name_plugin()
            if plugin is not None and not isinstance(plugin, _Recorder)
        )
    )


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
    if isinstance(pm, PluginHost):
        installed = _installed_plugins()
        for name in pm.disabled:
            owner = installed[name][0] if installed.get(name) else None
            dist, version = (owner.name, owner.version) if owner else (None, None)
            infos.append(PluginInfo(name, dist, version, (), "disabled"))
        infos += [PluginInfo(f.name, f.distribution, f.version, (), "failed", f.reason) for f in pm.failures]
    return sorted(infos, key=lambda info: info.name)


def collect_components(pm: pluggy.PluginManager, ctx: NodeContext) -> list[Component]:
    """Call ``pyagent_add_components(ctx=ctx)`` through pluggy and return every plugin's components, in
    the order pluggy called the plugins (name order, unless ``tryfirst``/``trylast`` say otherwise).

    ``ctx.built`` holds the core's components (``composition.build_core`` builds them first). Raises
    ``ConfigError``, naming the plugin, for a result that is not a list of ``Component``, a component
    name that does not match ``COMPONENT_NAME_PATTERN``, and a name, protocol id or command type that a
    core component or an earlier plugin's component already has.
    """
    claims = _Claims()
    for core in ctx.built.values():
        claims.claim(core, "the pyagent core", "a bug in pyagent's core factories")
    components: list[Component] = []
    for source, result in _call_merged(pm, "pyagent_add_components", "a list of Component", ctx=ctx):
        if not isinstance(result, list) or not all(isinstance(c, Component) for c in result):
            raise ConfigError(
                f"{source}: pyagent_add_components must return a list of Component, got {result!r:.100}; "
                f"{source.way_out()}"
            )
        for component in result:
            name = getattr(component, "name", None)
            if not isinstance(name, str) or not COMPONENT_NAME_PATTERN.fullmatch(name):
                raise ConfigError(
                    f"{source}: component {type(component).__name__} has name {name!r}, which must match "
                    f"{COMPONENT_NAME_PATTERN.pattern} (it names the component's config table, timers "
                    f"and storage); {source.way_out()}"
                )
            claims.claim(component, str(source), source.way_out())
        components.extend(result)
    return components


class _Claims:
    """Which component has each name, protocol id and command type, and whose component it is, so that
    a clash is refused at build naming both owners (``NodeCore`` refuses it too, but knows no plugin)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.protocols: dict[str, tuple[str, str]] = {}
        self.commands: dict[type, tuple[str, str]] = {}

    def claim(self, component: Component, owner: str, way_out: str) -> None:
        name = component.name
        if name in self.names:
            raise ConfigError(
                f"{owner} adds a component named {name!r}, which {self.names[name]} already has; {way_out}"
            )
        protocol = component.protocol_id
        if protocol is not None and protocol in self.protocols:
            other_owner, other = self.protocols[protocol]
            raise ConfigError(
                f"component {name!r} of {owner} speaks {protocol}, which component {other!r} of "
                f"{other_owner} already speaks; {way_out}"
            )
        for command in component.command_types:
            if command in self.commands:
                other_owner, other = self.commands[command]
                raise ConfigError(
                    f"component {name!r} of {owner} handles {command.__name__}, which component "
                    f"{other!r} of {other_owner} already handles; {way_out}"
                )
        self.names[name] = owner
        if protocol is not None:
            self.protocols[protocol] = (owner, name)
        for command in component.command_types:
            self.commands[command] = (owner, name)


def collect_metadata(pm: pluggy.PluginManager) -> dict[str, str | int | float | bool]:
    """Merge every plugin's ``pyagent_add_metadata`` keys, refusing a key claimed twice."""
    merged: dict[str, str | int | float | bool] = {}
    owners: dict[str, _Source] = {}
    for source, result in _call_merged(pm, "pyagent_add_metadata", "a dict"):
        if not isinstance(result, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in result.items()
        ):
            raise ConfigError(
                f"{source}: pyagent_add_metadata must return a dict of str to scalars, got {result!r:.100}"
            )
        for key, value in result.items():
            if key in owners:
                raise ConfigError(
                    f"metadata key {key!r} is set by both {owners[key]} and {source}; {source.way_out()}"
                )
            owners[key] = source
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
    for source, result in _call_merged(pm, "pyagent_control_methods", "a dict"):
        if not isinstance(result, dict):
            raise ConfigError(f"{source}: pyagent_control_methods must return a dict, got {result!r:.100}")
        for method_name, method in result.items():
            if not isinstance(method_name, str) or not CONTROL_METHOD_PATTERN.fullmatch(method_name):
                raise ConfigError(
                    f"{source}: control method name {method_name!r} must look like "
                    f"'{source.plugin or '<plugin>'}.<method>' ({CONTROL_METHOD_PATTERN.pattern})"
                )
            if not callable(method):
                raise ConfigError(f"{source}: control method {method_name!r} is not callable")
            if method_name in owners:
                raise ConfigError(
                    f"control method {method_name!r} is defined by both {owners[method_name]} and "
                    f"{source}; {source.way_out()}"
                )
            owners[method_name] = str(source)
            merged[method_name] = method
    return merged


@dataclass(frozen=True, slots=True)
class _Source:
    """Who put one value into a merged hook's result: a plugin's implementation, or (``plugin`` None)
    a wrapper that made the value itself."""

    plugin: str | None
    wrappers: tuple[str, ...]

    def __str__(self) -> str:
        if self.plugin is not None:
            return f"plugin {self.plugin!r}"
        return f"a hook wrapper (of plugin {' or '.join(map(repr, self.wrappers))})"

    def way_out(self) -> str:
        if self.plugin is not None:
            return _disable_hint(self.plugin)
        return " or ".join(_disable_hint(name) for name in self.wrappers)


class _Recorder:
    """Our own innermost hook wrapper, registered only for the length of one merged call.

    A hook call merges the implementations' results anonymously, and a plugin's wrappers may change
    them. Registered last with ``trylast``, this wrapper is the innermost one, so it sees the list the
    implementations returned, in call order, before any plugin's wrapper does; the merging helpers use
    it to name the plugin behind a bad or clashing value.
    """

    def __init__(self, hook_name: str) -> None:
        self.hook_name = hook_name
        self.raw: list[object] | None = None

    def _record(self, hook_name: str) -> Generator[None, list[object], list[object]]:
        results = yield
        if hook_name == self.hook_name:
            self.raw = list(results)
        return results

    @hookspecs.hookimpl(wrapper=True, trylast=True)
    def pyagent_add_components(self) -> Generator[None, list[object], list[object]]:
        return (yield from self._record("pyagent_add_components"))

    @hookspecs.hookimpl(wrapper=True, trylast=True)
    def pyagent_add_metadata(self) -> Generator[None, list[object], list[object]]:
        return (yield from self._record("pyagent_add_metadata"))

    @hookspecs.hookimpl(wrapper=True, trylast=True)
    def pyagent_control_methods(self) -> Generator[None, list[object], list[object]]:
        return (yield from self._record("pyagent_control_methods"))


def _call_merged(
    pm: pluggy.PluginManager, hook_name: str, returns: str, **kwargs: object
) -> list[tuple[_Source, object]]:
    """Call ``hook_name`` through pluggy, as every hook is called, and pair each item of its result with
    the plugin whose implementation returned it (or the wrappers, for an item a wrapper made)."""
    caller = getattr(pm.hook, hook_name)
    in_call_order = list(reversed(caller.get_hookimpls()))
    producers = [impl.plugin_name for impl in in_call_order if not (impl.wrapper or impl.hookwrapper)]
    wrappers = tuple(impl.plugin_name for impl in in_call_order if impl.wrapper or impl.hookwrapper)
    recorder = _Recorder(hook_name)
    pm.register(recorder)
    try:
        results = caller(**kwargs)
    finally:
        pm.unregister(recorder)
    # The recorder always runs (an implementation that raises has ended the call above).
    assert recorder.raw is not None, f"{hook_name} returned without running its innermost wrapper"
    if len(recorder.raw) != len(producers):
        # pluggy leaves None out of a hook's results, so one of the implementations returned nothing.
        raise ConfigError(
            f"{hook_name} must return {returns}, but one of plugins {', '.join(map(repr, producers))} "
            f'returned None; upgrade it, or disable it with disabled = ["NAME"] under [plugins] in '
            "config.toml"
        )
    if not isinstance(results, list):
        raise ConfigError(
            f"a {hook_name} wrapper (of {' or '.join(map(repr, wrappers))}) returned {results!r:.100}, "
            f"not a list of results"
        )
    by_identity = {id(item): name for item, name in zip(recorder.raw, producers, strict=True)}
    return [(_Source(by_identity.get(id(item)), wrappers), item) for item in results]

"""Loading plugins through real entry points: the installed hello plugin and throwaway distributions.

The throwaway distributions are real ones as far as ``importlib.metadata`` can tell: a ``.dist-info``
directory with ``entry_points.txt`` and a module next to it, on ``sys.path``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import random
import re
import sys
import textwrap
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pluggy
import pyagent_hello.cli
import pyagent_hello.component
import pyagent_hello.plugin
import pytest

from pyagent import pluginhost
from pyagent.composition import STANDARD, build_core
from pyagent.errors import ConfigError
from pyagent.hookspecs import hookimpl
from pyagent.pluginhost import PluginInfo
from pyagent.proto import ping
from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext, component_seed
from pyagent.proto.memstore import MemoryStore
from pyagent.proto.ping import PingPeer

HELLO_HOOKS = ("pyagent_add_cli_commands", "pyagent_add_components", "pyagent_control_methods")

Install = Callable[[str, dict[str, str]], None]


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    """Install a throwaway distribution: ``install(dist, {plugin_name: module_source})``.

    Each plugin lives in its own module, named after the test so that no module leaks between tests.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def install_distribution(dist: str, plugins: dict[str, str]) -> None:
        info = tmp_path / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        entry_points = ["[pyagent]"]
        for name, source in plugins.items():
            module = f"plugin_{tmp_path.name}_{dist.replace('-', '_')}_{name}".lower()
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
            entry_points.append(f"{name} = {module}")
            written.append(module)
        (info / "entry_points.txt").write_text("\n".join(entry_points) + "\n")

    yield install_distribution
    for module in written:
        sys.modules.pop(module, None)


CONTROL_PLUGIN = """
    from pyagent.hookspecs import hookimpl

    async def status(node, params):
        return "ok"

    @hookimpl
    def pyagent_control_methods():
        return {"demo.status": status}
"""


def test_the_hello_plugin_loads_through_its_installed_entry_point() -> None:
    pm = pluginhost.load_plugins()

    assert pm.get_plugin("hello") is pyagent_hello.plugin
    hello = next(info for info in pluginhost.describe_plugins(pm) if info.name == "hello")
    assert hello == PluginInfo(
        name="hello",
        distribution="pyagent-hello",
        version=importlib.metadata.version("pyagent-hello"),
        hooks=HELLO_HOOKS,
    )


def test_a_disabled_plugin_is_not_loaded() -> None:
    pm = pluginhost.load_plugins(disabled=["hello"])

    assert "hello" not in pluginhost.plugin_names(pm)
    assert pm.is_blocked("hello")


def test_disabling_an_unknown_plugin_names_the_installed_ones() -> None:
    refusal = r"cannot disable nosuch: no such plugin is installed; installed: .*hello"
    with pytest.raises(ConfigError, match=refusal):
        pluginhost.load_plugins(disabled=["nosuch"])


def test_a_broken_entry_point_is_skipped_and_named_with_its_distribution_and_the_way_out(
    install: Install,
) -> None:
    install("broken-dist", {"broken": "raise ImportError('needs libfoo')"})

    pm = pluginhost.load_plugins()

    assert "broken" not in pluginhost.plugin_names(pm) and "hello" in pluginhost.plugin_names(pm)
    (failure,) = pm.failures
    message = str(failure)
    assert "'broken'" in message and "broken-dist 1.0" in message and "needs libfoo" in message
    assert 'disabled = ["broken"] under [plugins]' in message
    (info,) = [i for i in pluginhost.describe_plugins(pm) if i.name == "broken"]
    assert info.status == "failed" and info.error is not None and "needs libfoo" in info.error
    disabled = pluginhost.load_plugins(disabled=["broken"])
    assert not disabled.failures
    assert [i.status for i in pluginhost.describe_plugins(disabled) if i.name == "broken"] == ["disabled"]


def test_a_required_plugin_that_fails_to_load_is_a_config_error(install: Install) -> None:
    install("broken-dist", {"broken": "raise ImportError('needs libfoo')"})

    with pytest.raises(ConfigError, match=r"'broken'.*needs libfoo.*\[plugins\] required lists it"):
        pluginhost.load_plugins(required=["broken"])
    with pytest.raises(ConfigError, match=r"required names nosuch"):
        pluginhost.load_plugins(required=["nosuch"])
    with pytest.raises(ConfigError, match=r"both required and disabled"):
        pluginhost.load_plugins(disabled=["hello"], required=["hello"])
    assert "hello" in pluginhost.plugin_names(pluginhost.load_plugins(required=["hello"]))


def test_a_disabled_plugin_is_never_imported(install: Install, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    install("noisy-dist", {"noisy": f"open({str(marker)!r}, 'w').close()"})

    pluginhost.load_plugins(disabled=["noisy"])
    assert not marker.exists()
    pluginhost.load_plugins()
    assert marker.exists()


def test_an_entry_point_implementing_an_unknown_hook_is_refused(install: Install) -> None:
    install(
        "typo-dist",
        {
            "typo": """
                from pyagent.hookspecs import hookimpl

                @hookimpl
                def pyagent_add_componets(local_peer, rng):
                    return []
            """
        },
    )

    pm = pluginhost.load_plugins()

    (failure,) = pm.failures
    assert failure.name == "typo" and "does not fit" in failure.reason
    assert "pyagent_add_componets" in failure.reason
    assert "typo" not in pluginhost.plugin_names(pm) and "hello" in pluginhost.plugin_names(pm)
    with pytest.raises(ConfigError, match=r"plugin 'typo'.*does not fit.*pyagent_add_componets"):
        pluginhost.load_plugins(required=["typo"])


def test_check_plugins_refuses_an_in_process_plugin_with_an_unknown_hook() -> None:
    class Typo:
        @hookimpl
        def pyagent_peer_conected(self, node: object, peer: object) -> None:
            pass

    pm = pluginhost.new_plugin_manager()
    pm.register(Typo(), name="typo")

    with pytest.raises(ConfigError, match=r"'typo'.*pyagent_peer_conected.*disabled = \[\"typo\"\]"):
        pluginhost.check_plugins(pm)


def test_two_distributions_claiming_one_plugin_name_is_a_conflict(install: Install) -> None:
    install("first-dist", {"twin": CONTROL_PLUGIN})
    install("second-dist", {"twin": CONTROL_PLUGIN})

    (failure,) = pluginhost.load_plugins().failures
    assert failure.name == "twin"
    assert re.search(r"claimed by (first|second)-dist 1.0 and", failure.reason)


def test_a_malformed_plugin_name_is_refused_unless_disabled(install: Install) -> None:
    install("shouty-dist", {"Shouty.Name": CONTROL_PLUGIN})

    (failure,) = pluginhost.load_plugins().failures
    assert str(failure).startswith("plugin 'Shouty.Name' (from shouty-dist 1.0) failed to load")
    assert "must match" in failure.reason
    assert "Shouty.Name" not in pluginhost.plugin_names(pluginhost.load_plugins(disabled=["Shouty.Name"]))


def test_hooks_run_the_plugins_in_name_order_whatever_the_file_system_says(install: Install) -> None:
    install("zz-dist", {"zulu": CONTROL_PLUGIN.replace("demo.", "zulu.")})
    install("aa-dist", {"alpha": CONTROL_PLUGIN.replace("demo.", "alpha.")})
    install("mm-dist", {"mike": CONTROL_PLUGIN.replace("demo.", "mike.")})

    pm = pluginhost.load_plugins()

    # pluggy calls the implementation registered last first.
    called = [impl.plugin_name for impl in reversed(pm.hook.pyagent_control_methods.get_hookimpls())]
    assert called == sorted(called)
    assert {"alpha", "mike", "zulu", "hello"} <= set(called)
    merged = [name.partition(".")[0] for name in pluginhost.control_methods(pm)]
    assert merged == sorted(merged)


def test_describe_plugins_lists_each_plugin_with_its_distribution_and_hooks(install: Install) -> None:
    install("demo-dist", {"demo": CONTROL_PLUGIN})
    pm = pluginhost.load_plugins()

    class InProcess:
        @hookimpl
        def pyagent_shutdown(self, node: object) -> None:
            pass

    pm.register(InProcess(), name="inproc")

    infos = pluginhost.describe_plugins(pm)

    assert [info.name for info in infos] == sorted(info.name for info in infos)
    by_name = {info.name: info for info in infos}
    assert by_name["demo"] == PluginInfo("demo", "demo-dist", "1.0", ("pyagent_control_methods",))
    assert by_name["inproc"] == PluginInfo("inproc", None, None, ("pyagent_shutdown",))
    assert by_name["hello"].hooks == HELLO_HOOKS


def test_control_methods_merge_across_plugins(install: Install) -> None:
    install("demo-dist", {"demo": CONTROL_PLUGIN})

    methods = pluginhost.control_methods(pluginhost.load_plugins(), core_method_names={"peers"})

    assert methods["hello.list"] is pyagent_hello.plugin.list_hellos
    assert {"demo.status", "hello.list"} <= methods.keys()
    assert "peers" not in methods


def test_a_control_method_name_taken_twice_is_refused(install: Install) -> None:
    install("demo-dist", {"demo": CONTROL_PLUGIN})
    install("copycat-dist", {"copycat": CONTROL_PLUGIN})

    clash = r"'demo.status' is defined by both plugin 'copycat' and plugin 'demo'; disable it with .*demo"
    with pytest.raises(ConfigError, match=clash):
        pluginhost.control_methods(pluginhost.load_plugins())


def test_a_plugin_cannot_shadow_a_core_control_method() -> None:
    pm = pluginhost.load_plugins()

    clash = r"'hello.list' is defined by both the pyagent core and plugin 'hello'"
    with pytest.raises(ConfigError, match=clash):
        pluginhost.control_methods(pm, core_method_names={"hello.list"})


@pytest.mark.parametrize("bad_name", ["status", "Demo.status", "demo.", "demo.status.now", 7])
def test_a_control_method_name_must_be_namespaced(bad_name: object) -> None:
    class Plugin:
        @hookimpl
        def pyagent_control_methods(self) -> dict[object, object]:
            return {bad_name: pyagent_hello.plugin.list_hellos}

    pm = pluginhost.new_plugin_manager()
    pm.register(Plugin(), name="demo")

    refusal = r"plugin 'demo': control method name .* must look like 'demo.<method>'"
    with pytest.raises(ConfigError, match=refusal):
        pluginhost.control_methods(pm)


def make_ctx(pm: pluggy.PluginManager, config: dict[str, dict[str, Any]] | None = None) -> NodeContext:
    tables = config or {}
    return NodeContext(
        local_peer="12D3KooWLocal",
        plugin_names=pluginhost.plugin_names(pm),
        config_for=lambda name: tables.get(name, {}),
        rng_for=lambda name: random.Random(component_seed(1, name)),
        storage_for=MemoryStore().reader,
    )


def component_class(
    name: str, protocol: str | None = None, commands: tuple[type, ...] = ()
) -> type[Component]:
    class Made(Component):
        pass

    Made.name = name
    Made.protocol_id = protocol
    Made.command_types = commands
    return Made


def adds(*components: Component, **opts: bool) -> object:
    """An in-process plugin whose ``pyagent_add_components`` returns ``components``."""

    class Plugin:
        @hookimpl(**opts)
        def pyagent_add_components(self) -> list[Component]:
            return list(components)

    return Plugin()


def test_components_are_collected_in_plugin_name_order_with_the_node_context() -> None:
    seen: list[NodeContext] = []

    class Recorder:
        @hookimpl
        def pyagent_add_components(self, ctx: NodeContext) -> list[Component]:
            seen.append(ctx)
            return [component_class("recorder")()]

    pm = pluginhost.load_plugins()
    pm.register(Recorder(), name="aaa_recorder")
    ctx = make_ctx(pm, config={"recorder": {"size_max": 3}})

    components = pluginhost.collect_components(pm, ctx)

    names = [component.name for component in components]
    assert names[0] == "recorder" and "hello" in names  # an in-process plugin registered last runs first
    assert seen == [ctx]
    assert ctx.config("recorder") == {"size_max": 3} and ctx.config("other") == {}
    assert "aaa_recorder" in ctx.plugin_names and "hello" in ctx.plugin_names


def test_build_core_builds_the_core_and_then_every_plugin_component_through_the_hook() -> None:
    pm = pluginhost.load_plugins()

    core = build_core("12D3KooWLocal", 7, plugins=pm)

    names = [component.name for component in core.components]
    assert names[: len(STANDARD)] == ["peers", "ping"] and "hello" in names
    hello = core.component("hello")
    assert isinstance(hello, pyagent_hello.component.HelloProtocol)
    assert hello.plugin_names == pluginhost.plugin_names(pm)


def test_a_wrapper_sees_every_call_and_can_change_what_the_plugins_return() -> None:
    calls: list[tuple[str, object]] = []

    class Policy:
        """Drops every component named 'noisy' and every control method of the 'debug' namespace."""

        @hookimpl(wrapper=True)
        def pyagent_add_components(self, ctx: NodeContext) -> Generator[None, list[Any], list[Any]]:
            calls.append(("components", ctx.local_peer))
            results = yield
            return [[c for c in result if c.name != "noisy"] for result in results]

        @hookimpl(wrapper=True)
        def pyagent_control_methods(self) -> Generator[None, list[Any], list[Any]]:
            calls.append(("control", None))
            results = yield
            return [{k: v for k, v in result.items() if not k.startswith("debug.")} for result in results]

    class Debug:
        @hookimpl
        def pyagent_control_methods(self) -> dict[str, object]:
            return {
                "debug.dump": pyagent_hello.plugin.list_hellos,
                "debugger.ok": pyagent_hello.plugin.list_hellos,
            }

    pm = pluginhost.new_plugin_manager()
    pm.register(adds(component_class("noisy")(), component_class("quiet")()), name="mixed")
    pm.register(Debug(), name="debug")
    pm.register(Policy(), name="policy")

    components = pluginhost.collect_components(pm, make_ctx(pm))
    methods = pluginhost.control_methods(pm)
    pluginhost.collect_components(pm, make_ctx(pm))

    assert [c.name for c in components] == ["quiet"]
    assert list(methods) == ["debugger.ok"]
    assert calls == [("components", "12D3KooWLocal"), ("control", None), ("components", "12D3KooWLocal")]
    assert pluginhost.plugin_names(pm) == ("debug", "mixed", "policy")  # nothing of ours is left behind


def test_an_old_style_hookwrapper_also_wraps_the_merged_hooks() -> None:
    seen: list[object] = []

    class Old:
        @hookimpl(hookwrapper=True)
        def pyagent_add_metadata(self) -> Generator[None, Any, None]:
            outcome = yield
            seen.append(outcome.get_result())
            outcome.force_result([*outcome.get_result(), {"old.extra": 1}])

    class Gpu:
        @hookimpl
        def pyagent_add_metadata(self) -> dict[str, object]:
            return {"gpu.vram_gb": 80}

    pm = pluginhost.new_plugin_manager()
    pm.register(Gpu(), name="gpu")
    pm.register(Old(), name="old")

    assert pluginhost.collect_metadata(pm) == {"gpu.vram_gb": 80, "old.extra": 1}
    assert seen == [[{"gpu.vram_gb": 80}]]


def test_tryfirst_and_trylast_change_the_order_of_components() -> None:
    pm = pluginhost.new_plugin_manager()
    pm.register(adds(component_class("last")(), trylast=True), name="aaa")
    pm.register(adds(component_class("middle")()), name="bbb")
    pm.register(adds(component_class("first")(), tryfirst=True), name="zzz")

    components = pluginhost.collect_components(pm, make_ctx(pm))

    assert [c.name for c in components] == ["first", "middle", "last"]


def test_a_plugin_returning_something_else_than_components_is_refused_by_name() -> None:
    class Sloppy:
        @hookimpl
        def pyagent_add_components(self) -> object:
            return "not a list"

    pm = pluginhost.new_plugin_manager()
    pm.register(Sloppy(), name="sloppy")
    pm.register(adds(component_class("fine")()), name="fine")

    refusal = r"plugin 'sloppy': pyagent_add_components must return a list of Component, got 'not a list'"
    with pytest.raises(ConfigError, match=refusal + r'.*disabled = \["sloppy"\]'):
        pluginhost.collect_components(pm, make_ctx(pm))


def test_an_exception_in_a_hook_propagates_and_leaves_the_plugin_manager_as_it_was() -> None:
    class Crashing:
        @hookimpl
        def pyagent_add_metadata(self) -> dict[str, object]:
            raise RuntimeError("boom")

    pm = pluginhost.new_plugin_manager()
    pm.register(Crashing(), name="crashing")

    with pytest.raises(RuntimeError, match="boom"):
        pluginhost.collect_metadata(pm)
    assert pluginhost.plugin_names(pm) == ("crashing",)
    assert len(pm.get_plugins()) == 1


def test_a_plugin_returning_none_is_refused() -> None:
    class Forgetful:
        @hookimpl
        def pyagent_control_methods(self) -> None:
            pass

    pm = pluginhost.new_plugin_manager()
    pm.register(Forgetful(), name="forgetful")

    with pytest.raises(
        ConfigError, match=r"must return a dict, but one of plugins 'forgetful' returned None"
    ):
        pluginhost.control_methods(pm)


def test_a_bad_value_a_wrapper_made_names_the_wrapper() -> None:
    class Meddler:
        @hookimpl(wrapper=True)
        def pyagent_control_methods(self) -> Generator[None, list[Any], list[Any]]:
            results = yield
            return [*results, {"status": pyagent_hello.plugin.list_hellos}]

    pm = pluginhost.new_plugin_manager()
    pm.register(Meddler(), name="meddler")

    with pytest.raises(
        ConfigError, match=r"a hook wrapper \(of plugin 'meddler'\): control method name 'status'"
    ):
        pluginhost.control_methods(pm)


class Pinger(Component):
    name: ClassVar[str] = "pinger"
    protocol_id: ClassVar[str | None] = "/pyagent/pinger/1.0.0"
    command_types: ClassVar[tuple[type, ...]] = (PingPeer,)


@pytest.mark.parametrize(
    ("component", "refusal"),
    [
        (
            component_class("ping")(),
            r"plugin 'dup' adds a component named 'ping', which the pyagent core already has",
        ),
        (
            component_class("myping", ping.PROTOCOL_ID)(),
            r"component 'myping' of plugin 'dup' speaks /pyagent/ping/1.0.0, which component 'ping' of the "
            r"pyagent core",
        ),
        (
            component_class("myping", None, (PingPeer,))(),
            r"component 'myping' of plugin 'dup' handles PingPeer, which component 'ping' of the pyagent "
            r"core",
        ),
        (component_class("My/Name")(), r"plugin 'dup': component Made has name 'My/Name', which must match"),
    ],
)
def test_a_component_clashing_with_the_core_is_refused_at_build(component: Component, refusal: str) -> None:
    pm = pluginhost.new_plugin_manager()
    pm.register(adds(component), name="dup")

    with pytest.raises(ConfigError, match=refusal):
        build_core("12D3KooWLocal", 1, plugins=pm)


def test_two_plugins_whose_components_clash_are_both_named() -> None:
    pm = pluginhost.new_plugin_manager()
    pm.register(adds(Pinger()), name="first")
    pm.register(adds(component_class("other", Pinger.protocol_id)()), name="second")

    clash = (
        r"component 'pinger' of plugin 'first' speaks /pyagent/pinger/1.0.0, which component 'other' of "
        r"plugin 'second'"
    )
    with pytest.raises(ConfigError, match=clash + r'.*disabled = \["first"\]'):
        pluginhost.collect_components(pm, make_ctx(pm))


def test_the_hello_cli_command_is_added_through_the_hook() -> None:
    pm = pluginhost.load_plugins()
    parser = argparse.ArgumentParser(prog="pyagent")
    subparsers = parser.add_subparsers()

    pm.hook.pyagent_add_cli_commands(subparsers=subparsers)

    assert parser.parse_args(["hello"]).run is pyagent_hello.cli.run_hello


def test_metadata_keys_merge_across_plugins_and_clash_by_name() -> None:
    def plugin_with(keys: dict[str, object]) -> object:
        class Plugin:
            @hookimpl
            def pyagent_add_metadata(self) -> dict[str, object]:
                return keys

        return Plugin()

    pm = pluginhost.new_plugin_manager()
    pm.register(plugin_with({"gpu.vram_gb": 80}), name="gpu")
    pm.register(plugin_with({"cache.lsh": True}), name="cache")
    assert pluginhost.collect_metadata(pm) == {"gpu.vram_gb": 80, "cache.lsh": True}

    pm.register(plugin_with({"gpu.vram_gb": 40}), name="impostor")
    with pytest.raises(
        ConfigError, match=r"'gpu\.vram_gb' is set by both plugin 'impostor' and plugin 'gpu'"
    ):
        pluginhost.collect_metadata(pm)

    bad = pluginhost.new_plugin_manager()
    bad.register(plugin_with({"nested": {"no": 1}}), name="nested")
    with pytest.raises(ConfigError, match="must return a dict of str to scalars"):
        pluginhost.collect_metadata(bad)

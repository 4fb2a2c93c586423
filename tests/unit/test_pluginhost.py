"""Loading plugins through real entry points: the installed hello plugin and throwaway distributions.

The throwaway distributions are real ones as far as ``importlib.metadata`` can tell: a ``.dist-info``
directory with ``entry_points.txt`` and a module next to it, on ``sys.path``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import random
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pyagent_hello.cli
import pyagent_hello.plugin
import pytest

from pyagent import pluginhost
from pyagent.errors import ConfigError
from pyagent.hookspecs import hookimpl
from pyagent.pluginhost import PluginInfo

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


def test_a_broken_entry_point_names_plugin_and_distribution_and_the_way_out(install: Install) -> None:
    install("broken-dist", {"broken": "raise ImportError('needs libfoo')"})

    with pytest.raises(ConfigError) as failure:
        pluginhost.load_plugins()

    message = str(failure.value)
    assert "'broken'" in message and "broken-dist 1.0" in message and "needs libfoo" in message
    assert 'disabled = ["broken"] under [plugins]' in message
    assert "broken" not in pluginhost.plugin_names(pluginhost.load_plugins(disabled=["broken"]))


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

    with pytest.raises(ConfigError, match=r"plugin 'typo' does not fit.*pyagent_add_componets"):
        pluginhost.load_plugins()


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

    with pytest.raises(ConfigError, match=r"'twin' is claimed by (first|second)-dist 1.0 and"):
        pluginhost.load_plugins()


def test_a_malformed_plugin_name_is_refused_unless_disabled(install: Install) -> None:
    install("shouty-dist", {"Shouty.Name": CONTROL_PLUGIN})

    with pytest.raises(ConfigError, match=r"plugin name 'Shouty.Name' \(from shouty-dist 1.0\) must match"):
        pluginhost.load_plugins()
    assert "Shouty.Name" not in pluginhost.plugin_names(pluginhost.load_plugins(disabled=["Shouty.Name"]))


def test_plugins_register_in_name_order_whatever_the_file_system_says(install: Install) -> None:
    install("zz-dist", {"zulu": CONTROL_PLUGIN.replace("demo.", "zulu.")})
    install("aa-dist", {"alpha": CONTROL_PLUGIN.replace("demo.", "alpha.")})
    install("mm-dist", {"mike": CONTROL_PLUGIN.replace("demo.", "mike.")})

    pm = pluginhost.load_plugins()

    registered = [impl.plugin_name for impl in pm.hook.pyagent_control_methods.get_hookimpls()]
    assert registered == sorted(registered)
    assert {"alpha", "mike", "zulu", "hello"} <= set(registered)


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

    clash = r"'demo.status' is defined by both plugin 'copycat' and plugin 'demo'"
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


def test_components_are_collected_in_plugin_name_order_with_the_plugin_names() -> None:
    seen: list[tuple[str, tuple[str, ...]]] = []

    class Recorder:
        @hookimpl
        def pyagent_add_components(self, local_peer: str, plugin_names: tuple[str, ...]) -> list[object]:
            seen.append((local_peer, plugin_names))
            return []

    pm = pluginhost.load_plugins()
    pm.register(Recorder(), name="aaa_recorder")

    components = pluginhost.collect_components(pm, "12D3KooWLocal", random.Random(1))

    assert "hello" in [component.name for component in components]
    assert seen == [("12D3KooWLocal", pluginhost.plugin_names(pm))]
    assert "aaa_recorder" in seen[0][1] and "hello" in seen[0][1]


def test_a_plugin_returning_something_else_than_components_is_refused() -> None:
    class Sloppy:
        @hookimpl
        def pyagent_add_components(self) -> object:
            return "not a list"

    pm = pluginhost.new_plugin_manager()
    pm.register(Sloppy(), name="sloppy")

    with pytest.raises(ConfigError, match=r"plugin 'sloppy': pyagent_add_components must return a list"):
        pluginhost.collect_components(pm, "12D3KooWLocal", random.Random(1))


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
    with pytest.raises(ConfigError, match=r"'gpu\.vram_gb' is set by both"):
        pluginhost.collect_metadata(pm)

    bad = pluginhost.new_plugin_manager()
    bad.register(plugin_with({"nested": {"no": 1}}), name="nested")
    with pytest.raises(ConfigError, match="must return a dict of str to scalars"):
        pluginhost.collect_metadata(bad)

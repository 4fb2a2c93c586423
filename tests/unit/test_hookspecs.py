"""The plugin contract documents itself: every hook is named by the rule and says what it is."""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Generator

from pyagent import hookspecs, pluginhost

# The phases the hookspecs docstring lists; a new phase is a change to the contract, made here on purpose.
PHASES = ("add", "control", "startup", "peer", "kv", "lora", "notice", "shutdown")
HOOK_NAME = re.compile(rf"pyagent_({'|'.join(PHASES)})(_[a-z]+)*")
SPEC_MARK = f"{hookspecs.PROJECT_NAME}_spec"


def contract_problems(module: types.ModuleType) -> list[str]:
    """Everything wrong with ``module`` as a hook-spec module, one line per problem."""
    problems: list[str] = []
    for name, value in vars(module).items():
        if not name.startswith("pyagent_") or not callable(value):
            continue
        if not hasattr(value, SPEC_MARK):
            problems.append(f"{name}: named like a hook but not marked @hookspec")
        if not HOOK_NAME.fullmatch(name):
            problems.append(f"{name}: not named pyagent_<phase>_<what> with a phase of {PHASES}")
        doc = inspect.getdoc(value) or ""
        if not doc.strip():
            problems.append(f"{name}: no docstring")
        elif "firstresult" not in doc:
            problems.append(f"{name}: docstring does not say whether it is firstresult")
    return problems


def hook_names(module: types.ModuleType) -> list[str]:
    return sorted(name for name, value in vars(module).items() if hasattr(value, SPEC_MARK))


def test_every_hook_in_the_contract_is_named_and_documented() -> None:
    assert contract_problems(hookspecs) == []
    assert all(f"``{phase}``" in (hookspecs.__doc__ or "") for phase in PHASES)


def test_the_contract_defines_the_hooks_the_daemon_calls() -> None:
    assert hook_names(hookspecs) == [
        "pyagent_add_cli_commands",
        "pyagent_add_components",
        "pyagent_add_metadata",
        "pyagent_add_metrics",
        "pyagent_control_methods",
        "pyagent_kv_committed",
        "pyagent_kv_propose",
        "pyagent_lora_transform_delta",
        "pyagent_notice",
        "pyagent_peer_connected",
        "pyagent_peer_disconnected",
        "pyagent_shutdown",
        "pyagent_startup",
    ]


def test_firstresult_in_the_docstring_matches_the_marker() -> None:
    for name in hook_names(hookspecs):
        firstresult = getattr(getattr(hookspecs, name), SPEC_MARK)["firstresult"]
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert ("Not firstresult" not in doc) == firstresult, name


def test_the_check_catches_an_undocumented_or_misnamed_hook() -> None:
    synthetic = types.ModuleType("synthetic_hookspecs")

    @hookspecs.hookspec
    def pyagent_add_widgets() -> None:
        pass

    @hookspecs.hookspec
    def pyagent_boot_sequence() -> None:
        """Runs at boot, a phase the contract does not know. Not firstresult."""

    @hookspecs.hookspec
    def pyagent_add_gadgets() -> None:
        """Runs whenever."""

    def pyagent_add_gizmos() -> None:
        """Forgot the marker. Not firstresult."""

    for hook in (pyagent_add_widgets, pyagent_boot_sequence, pyagent_add_gadgets, pyagent_add_gizmos):
        setattr(synthetic, hook.__name__, hook)

    assert sorted(contract_problems(synthetic)) == [
        "pyagent_add_gadgets: docstring does not say whether it is firstresult",
        "pyagent_add_gizmos: named like a hook but not marked @hookspec",
        "pyagent_add_widgets: no docstring",
        f"pyagent_boot_sequence: not named pyagent_<phase>_<what> with a phase of {PHASES}",
    ]


def test_the_notice_hook_is_documented_and_reaches_every_plugin_through_pluggy() -> None:
    doc = inspect.getdoc(hookspecs.pyagent_notice) or ""
    assert "Ready.notices" in doc and "must not block" in doc.lower() and "simulator" in doc
    assert not getattr(hookspecs.pyagent_notice, SPEC_MARK)["firstresult"]
    seen: list[tuple[str, object]] = []

    class Listener:
        def __init__(self, name: str) -> None:
            self.name = name

        @hookspecs.hookimpl
        def pyagent_notice(self, notice: object) -> None:
            seen.append((self.name, notice))

    class Timer:
        """A wrapper around every plugin's handling of each notice (for example, to time it)."""

        @hookspecs.hookimpl(wrapper=True)
        def pyagent_notice(self, notice: object) -> Generator[None, list[None], list[None]]:
            seen.append(("before", notice))
            results = yield
            seen.append(("after", notice))
            return results

    class Early:
        @hookspecs.hookimpl(tryfirst=True)
        def pyagent_notice(self, notice: object) -> None:
            seen.append(("early", notice))

    pm = pluginhost.new_plugin_manager()
    pm.register(Listener("b"), name="b")
    pm.register(Listener("a"), name="a")
    pm.register(Timer(), name="timer")
    pm.register(Early(), name="zzz_early")
    pluginhost.check_plugins(pm)

    for notice in ("joined", "left"):
        assert pm.hook.pyagent_notice(node=object(), notice=notice) == []

    # In-process plugins registered later are called first (pluggy's order), tryfirst before them all.
    expected = [["before", "early", "a", "b", "after"]] * 2
    assert [[who for who, _ in seen[:5]], [who for who, _ in seen[5:]]] == expected
    assert [notice for _, notice in seen] == ["joined"] * 5 + ["left"] * 5

"""Configuration errors are one line naming the file and the key, and say how to fix it."""

from pathlib import Path

import pytest

from pyagent import config
from pyagent.errors import ConfigError


def test_defaults_need_no_file(tmp_path: Path) -> None:
    cfg = config.load(tmp_path)
    assert cfg.node.listen == [config.DEFAULT_LISTEN]


def test_rendered_config_parses_back(tmp_path: Path) -> None:
    (tmp_path / config.CONFIG_FILE).write_text(config.render(["/ip4/127.0.0.1/tcp/0"], "swarm.key"))
    cfg = config.load(tmp_path)
    assert cfg.node.listen == ["/ip4/127.0.0.1/tcp/0"] and cfg.mesh.swarm_key_file == "swarm.key"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[Nod]\n", "unknown section [Nod]"),
        ('["my-plugin"]\nx = 1\n', "unknown section [my-plugin]"),
        ("hello = 1\n", "top-level key 'hello' must be a table"),
        ("[membership]\nprobe_interval = 5\n", "unknown key 'probe_interval'"),
        ("[node]\nlisten_addr = []\n", "unknown key 'listen_addr'"),
        ("[host]\ndial_timeout_ms = 'fast'\n", "'dial_timeout_ms' must be a int"),
        ("[host]\ndial_timeout_ms = -5\n", "'dial_timeout_ms' must be positive"),
        ("[node]\nlisten = [1]\n", "must be a list of strings"),
        ("[log]\nlevel = 'loud'\n", "'level' must be one of"),
        ("[node\n", "not valid TOML"),
    ],
)
def test_bad_config_is_a_one_line_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / config.CONFIG_FILE
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path)
    message = str(info.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_home_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(config.HOME_ENV, str(tmp_path / "env"))
    assert config.resolve_home(None) == tmp_path / "env"
    assert config.resolve_home(str(tmp_path / "flag")) == tmp_path / "flag"


def test_a_table_named_after_a_component_is_kept_raw_for_it(tmp_path: Path) -> None:
    (tmp_path / config.CONFIG_FILE).write_text(
        "[hello]\nhellos_max = 8\n[hello.limits]\nnames = ['a']\n[membership]\npreset = 'wan'\n"
        "[raft]\nelection_timeout_ms = 300\n"
    )

    cfg = config.load(tmp_path)

    assert cfg.components == {
        "hello": {"hellos_max": 8, "limits": {"names": ["a"]}},
        "raft": {"election_timeout_ms": 300},
    }
    # The core's own sections keep their typed parsing and are no component table.
    assert cfg.membership.preset == "wan" and "membership" not in cfg.components
    config.check_component_tables(cfg, ["hello", "raft", "peers"])


def test_the_rendered_config_has_no_component_table(tmp_path: Path) -> None:
    (tmp_path / config.CONFIG_FILE).write_text(config.render(["/ip4/127.0.0.1/tcp/0"]))
    assert config.load(tmp_path).components == {}


def test_a_table_no_component_or_plugin_claims_is_a_one_line_error_with_a_guess(tmp_path: Path) -> None:
    path = tmp_path / config.CONFIG_FILE
    path.write_text("[helo]\nhellos_max = 8\n[nod]\nlisten = []\n")
    cfg = config.load(tmp_path)

    with pytest.raises(ConfigError) as info:
        config.check_component_tables(cfg, ["hello", "ping", "peers"])

    message = str(info.value)
    assert message.startswith(f"{path}: unknown section [helo]; did you mean [hello]? valid sections: node,")
    assert message.endswith("and one per component or plugin: hello, peers, ping") and "\n" not in message
    with pytest.raises(ConfigError, match=r"unknown section \[nod\]; did you mean \[node\]\?"):
        config.check_component_tables(cfg, ["hello", "helo"])

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
        ("[nod]\n", "unknown section [nod]"),
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

"""Bootstrap lists: one dialable multiaddr per line; any mistake names the file and the line."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyagent import bootstraplist
from pyagent.errors import ConfigError

PEER = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"


def test_the_shipped_example_parses() -> None:
    example = Path(__file__).parents[2] / "bootstrap" / "example.txt"
    assert len(bootstraplist.load(example)) == 2


def test_comments_and_blank_lines_are_ignored() -> None:
    text = f"# seeds\n\n/ip4/192.0.2.1/tcp/4001/p2p/{PEER}  # first\n"
    assert bootstraplist.parse(text, "seeds.txt") == [f"/ip4/192.0.2.1/tcp/4001/p2p/{PEER}"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/ip4/192.0.2.1/tcp/4001", "not a multiaddr ending in /p2p/"),
        ("192.0.2.1:4001", "not a multiaddr ending in /p2p/"),
        ("/ip4/192.0.2.1/tcp/4001/p2p/0OIl", "is not a valid peer id"),
        (f"/ip4/192.0.2.1/tcp/4001/p2p/{PEER}/tcp/1", "must end with /p2p/<peer id>"),
    ],
)
def test_mistakes_name_file_and_line(line: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        bootstraplist.parse(f"# header\n{line}\n", "seeds.txt")
    assert expected in str(info.value) and "seeds.txt line 2" in str(info.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        bootstraplist.load(tmp_path / "nope.txt")


@given(st.text(max_size=300))
def test_any_text_parses_or_is_a_config_error(text: str) -> None:
    try:
        addrs = bootstraplist.parse(text, "fuzz.txt")
    except ConfigError:
        return
    assert all("/p2p/" in addr for addr in addrs)

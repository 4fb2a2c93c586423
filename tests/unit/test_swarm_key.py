"""The swarm.key format: the Rust parser through the binding, and the file loader's operator errors."""

import logging
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyagent._core import KEY_LEN_BYTES, format_swarm_key, parse_swarm_key
from pyagent.errors import ConfigError
from pyagent.node.pnet import generate_swarm_key, load_swarm_key

HEADER = "/key/swarm/psk/1.0.0/"

# Text that is mostly noise but often gets past the header, so the later checks are exercised too.
swarm_key_like_text = st.one_of(
    st.text(),
    st.builds(
        lambda encoding, key_line, tail: f"{HEADER}\n{encoding}\n{key_line}{tail}",
        st.sampled_from(["/base16/", "/base64/", "/bin/", "/base32/", ""]),
        st.one_of(st.text(), st.text(alphabet="0123456789abcdefABCDEF+/= \r", max_size=80)),
        st.text(max_size=10),
    ),
)


@given(swarm_key_like_text)
def test_parse_returns_a_key_or_raises_value_error(text: str) -> None:
    try:
        key = parse_swarm_key(text)
    except ValueError:
        return
    assert isinstance(key, bytes)
    assert len(key) == KEY_LEN_BYTES


@given(st.binary(min_size=KEY_LEN_BYTES, max_size=KEY_LEN_BYTES))
def test_format_then_parse_round_trips(key: bytes) -> None:
    assert parse_swarm_key(format_swarm_key(key)) == key


def test_generated_keys_parse_and_differ() -> None:
    first, second = generate_swarm_key(), generate_swarm_key()
    assert len(parse_swarm_key(first)) == KEY_LEN_BYTES
    assert first != second


def test_format_refuses_a_short_key() -> None:
    with pytest.raises(ValueError, match="key must be 32 bytes, got 31"):
        format_swarm_key(bytes(31))


def write_key_file(directory: pathlib.Path, text: str | bytes, mode: int = 0o600) -> pathlib.Path:
    path = directory / "swarm.key"
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    path.chmod(mode)
    return path


def test_load_reads_a_valid_file(tmp_path: pathlib.Path) -> None:
    text = generate_swarm_key()
    assert load_swarm_key(write_key_file(tmp_path, text)) == parse_swarm_key(text)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not a key\n", "first line must be /key/swarm/psk/1.0.0/"),
        (f"{HEADER}\n/base16/\nabcd\n", "key must be 32 bytes, found 2"),
        (f"{HEADER}\n/base16/\n{'zz' * 32}\n", "not valid base16"),
        (f"{HEADER}\n/base58/\nabc\n", "second line must be /base16/ or /base64/"),
        (b"\xff\xfe binary", "not UTF-8 text"),
    ],
)
def test_load_errors_name_file_problem_and_fix(
    tmp_path: pathlib.Path, content: str | bytes, problem: str
) -> None:
    path = write_key_file(tmp_path, content)
    with pytest.raises(ConfigError) as failure:
        load_swarm_key(path)
    message = str(failure.value)
    assert str(path) in message
    assert problem in message
    assert "pyagent mesh new-private" in message
    assert "\n" not in message


def test_load_error_for_a_missing_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(ConfigError, match="does not exist") as failure:
        load_swarm_key(path)
    assert str(path) in str(failure.value)


def test_load_warns_about_a_key_others_can_read(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_key_file(tmp_path, generate_swarm_key(), mode=0o644)
    with caplog.at_level(logging.WARNING, logger="pyagent.node.pnet"):
        load_swarm_key(path)
    assert f"chmod 600 {path}" in caplog.text


def test_load_is_quiet_about_a_private_key(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_key_file(tmp_path, generate_swarm_key(), mode=0o600)
    with caplog.at_level(logging.WARNING, logger="pyagent.node.pnet"):
        load_swarm_key(path)
    assert caplog.text == ""

"""A core's structured error crosses the control API whole: code and data reach the client and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from pyagent.controlclient import ControlClient, ControlError
from pyagent.node.control import ControlServer, open_listener
from pyagent.node.driver import RequestFailed
from pyagent.proto.ready import ReplyError


async def not_leader(params: dict[str, Any]) -> Any:
    raise RequestFailed(
        ReplyError("not_leader", "this peer is not the shard's leader", {"leader_hint": "12D3KooWB"})
    )


async def test_a_reply_error_reaches_the_client_with_its_code_and_data(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    server = ControlServer(path, await open_listener(path), {"kv.put": not_leader})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        with pytest.raises(ControlError) as raised:
            await trio.to_thread.run_sync(lambda: ControlClient(tmp_path).call("kv.put"))
        nursery.cancel_scope.cancel()
    error = raised.value
    assert error.code == "not_leader" and error.data == {"leader_hint": "12D3KooWB"}
    assert str(error) == "this peer is not the shard's leader (leader_hint=12D3KooWB)"


async def bad_input(params: dict[str, Any]) -> Any:
    raise ValueError("greet.send needs string params 'peer' and 'text'")


async def buggy(params: dict[str, Any]) -> Any:
    raise KeyError("oops")


async def test_a_value_error_is_the_callers_mistake_and_anything_else_is_internal(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    server = ControlServer(path, await open_listener(path), {"greet.send": bad_input, "greet.bug": buggy})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        with pytest.raises(ControlError) as invalid:
            await trio.to_thread.run_sync(lambda: ControlClient(tmp_path).call("greet.send"))
        with pytest.raises(ControlError) as internal:
            await trio.to_thread.run_sync(lambda: ControlClient(tmp_path).call("greet.bug"))
        nursery.cancel_scope.cancel()
    assert invalid.value.code == "invalid"
    assert str(invalid.value) == "greet.send needs string params 'peer' and 'text'"
    assert internal.value.code is None and "internal error in 'greet.bug'" in str(internal.value)

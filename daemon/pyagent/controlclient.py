"""The synchronous client of the daemon's control API, used by the CLI.

The API is newline-delimited JSON over a unix socket in the node's home (docs/adr/0001-control-api.md):
one request ``{"id", "method", "params"}`` per line, answered by ``{"id", "result"}`` or
``{"id", "error"}``. It is deliberately tiny so an operator can poke it with ``socat`` at 3 a.m.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from pyagent.config import CONTROL_SOCKET

LINE_BYTES_MAX = 1 << 20
# Long enough for a ping that times out inside the daemon; short enough that a wedged daemon is noticed.
CALL_TIMEOUT_S = 30.0


class DaemonNotRunning(Exception):
    """No daemon answers on this home's control socket."""


class ControlError(Exception):
    """The daemon answered with an error; its message is for the operator. When a protocol core gave
    the error, ``code`` names it for programs and ``data`` carries what they can act on (for example
    ``{"leader_hint": peer}``)."""

    def __init__(self, message: str, code: str | None = None, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data or {}

    def __str__(self) -> str:
        message = super().__str__()
        if not self.data:
            return message
        details = ", ".join(f"{key}={value}" for key, value in sorted(self.data.items()))
        return f"{message} ({details})"


def encode_line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class ControlClient:
    def __init__(self, home: Path, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.path = home / CONTROL_SOCKET
        self.timeout_s = timeout_s
        self._next_id = 1

    def call(self, method: str, **params: Any) -> Any:
        request_id = self._next_id
        self._next_id += 1
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise DaemonNotRunning(
                    f"no daemon is running with home {self.path.parent} (start one with `pyagent daemon`)"
                ) from None
            sock.sendall(encode_line({"id": request_id, "method": method, "params": params}))
            reply = self._read_line(sock)
        except TimeoutError:
            raise ControlError(
                f"the daemon did not answer {method!r} within {self.timeout_s:.0f} s"
            ) from None
        finally:
            sock.close()
        if "error" in reply:
            code, data = reply.get("code"), reply.get("data")
            raise ControlError(
                str(reply["error"]),
                code if isinstance(code, str) else None,
                data if isinstance(data, dict) else None,
            )
        return reply.get("result")

    @staticmethod
    def _read_line(sock: socket.socket) -> dict[str, Any]:
        buffer = bytearray()
        while b"\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlError("the daemon closed the control connection without answering")
            buffer += chunk
            if len(buffer) > LINE_BYTES_MAX:
                raise ControlError("the daemon's answer is larger than the client accepts")
        reply = json.loads(buffer[: buffer.index(b"\n")])
        if not isinstance(reply, dict):
            raise ControlError("the daemon's answer is not a JSON object")
        return reply

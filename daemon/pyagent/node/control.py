"""The daemon side of the control API: a unix socket serving newline-delimited JSON requests.

The socket file is created with mode 0600 inside the home, so only the node's user can drive the node;
that file permission is the whole authentication story (docs/adr/0001-control-api.md).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import trio

from pyagent.controlclient import LINE_BYTES_MAX, encode_line
from pyagent.errors import ConfigError, PyAgentError
from pyagent.node.driver import RequestFailed

log = logging.getLogger("pyagent.control")

Method = Callable[[dict[str, Any]], Awaitable[Any]]

CONNECTIONS_MAX = 32
# Requests one connection may have in flight; more wait until an answer goes out.
REQUESTS_IN_FLIGHT_MAX = 1024
# sun_path is 108 bytes on Linux, including the terminating NUL.
SOCKET_PATH_BYTES_MAX = 107


# The error code of an answer that refuses the caller's input (a ValueError, a ConfigError, an
# InvalidParams): the CLI prints its message as one line and exits 2.
INVALID = "invalid"
# The error codes of answers about a peer that asking again at once would not change, so the CLI stops
# after one line: the peer is unknown or every dial failed; it speaks none of the protocols asked for.
UNREACHABLE = "unreachable"
UNSUPPORTED = "unsupported"


class MethodError(PyAgentError):
    """A control method could not do what was asked; the message goes back to the caller verbatim, with
    the class's ``code`` when it has one."""

    code: ClassVar[str | None] = None


class InvalidParams(MethodError):
    """A control method refused the request's parameters; answered with ``"code": "invalid"``."""

    code = INVALID


class PeerUnreachable(MethodError):
    """The peer a control method needs is unknown or cannot be dialed."""

    code = UNREACHABLE


class PeerUnsupported(MethodError):
    """The peer does not speak the protocol a control method needs."""

    code = UNSUPPORTED


async def _socket_in_use(path: Path) -> bool:
    try:
        stream = await trio.open_unix_socket(str(path))
    except OSError:
        return False
    await stream.aclose()
    return True


async def open_listener(path: Path) -> trio.SocketListener:
    if len(os.fsencode(path)) > SOCKET_PATH_BYTES_MAX:
        raise ConfigError(f"home path too long for a unix socket ({path}); choose a shorter --home")
    if path.exists():
        if await _socket_in_use(path):
            raise ConfigError(f"a daemon is already running with home {path.parent}")
        path.unlink()  # stale socket from a daemon that was killed
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(CONNECTIONS_MAX)
    return trio.SocketListener(sock)


class ControlServer:
    """Serves ``methods`` on a listener from ``open_listener``, which the daemon binds before anything
    else starts: a second daemon on the same home must fail before it touches the network."""

    def __init__(self, path: Path, listener: trio.SocketListener, methods: Mapping[str, Method]) -> None:
        self.path = path
        self.methods = dict(methods)
        self._listener = listener
        self._limiter = trio.CapacityLimiter(CONNECTIONS_MAX)
        self._answering = 0
        self._none_answering = trio.Event()
        self._none_answering.set()

    async def answers_written(self) -> None:
        """Returns once no request is being answered: at shutdown, so that the answer to the request that
        stopped the daemon (`pyagent leave`) is written before the server is cancelled."""
        await self._none_answering.wait()

    async def serve(self) -> None:
        try:
            async with self._listener, trio.open_nursery() as nursery:
                while True:
                    stream = await self._listener.accept()
                    nursery.start_soon(self._serve_connection, stream)
        finally:
            self.path.unlink(missing_ok=True)

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        """Read request lines and answer each as soon as it is done, in any order (a client matches
        answers by id), so one connection can carry many requests at once, as the KV client's do."""
        send_lock = trio.Lock()
        in_flight = trio.Semaphore(REQUESTS_IN_FLIGHT_MAX)

        async def answer(line: bytes) -> None:
            self._answering += 1
            if self._answering == 1:
                self._none_answering = trio.Event()
            try:
                reply = encode_line(await self._answer(line))
                async with send_lock:
                    await stream.send_all(reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                in_flight.release()
                self._answering -= 1
                if self._answering == 0:
                    self._none_answering.set()

        async with stream, self._limiter, trio.open_nursery() as nursery:
            buffer = bytearray()
            while True:
                while b"\n" not in buffer:
                    if len(buffer) > LINE_BYTES_MAX:
                        async with send_lock:
                            await stream.send_all(encode_line({"id": None, "error": "request too large"}))
                        return
                    try:
                        chunk = await stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    if not chunk:
                        # The client closed its side: answer what it asked, then hang up.
                        return
                    buffer += chunk
                end = buffer.index(b"\n")
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                # A client that sends faster than the daemon answers waits here (bounded work per client).
                await in_flight.acquire()
                nursery.start_soon(answer, line)

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            return {"id": None, "error": "request is not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return {"id": None, "error": "request must be an object with a string 'method'"}
        request_id, params = request.get("id"), request.get("params") or {}
        method = self.methods.get(request["method"])
        if method is None:
            return {"id": request_id, "error": f"unknown method {request['method']!r}"}
        if not isinstance(params, dict):
            return {"id": request_id, "error": "'params' must be an object"}
        try:
            return {"id": request_id, "result": await method(params)}
        except RequestFailed as exc:
            # The core's structured error: its code and data let a client act (follow a leader hint).
            error = exc.error
            return {"id": request_id, "error": error.message, "code": error.code, "data": error.data}
        except (ValueError, ConfigError) as exc:
            # The caller's input is wrong: a plugin's method raises ValueError (docs/plugins.md).
            return {"id": request_id, "error": str(exc), "code": INVALID}
        except MethodError as exc:
            coded = {} if exc.code is None else {"code": exc.code}
            return {"id": request_id, "error": str(exc), **coded}
        except Exception:
            # A bug in a method must not take the daemon down; it is logged with its traceback.
            log.exception("control method %s failed", request["method"])
            return {"id": request_id, "error": f"internal error in {request['method']!r}; see the daemon log"}

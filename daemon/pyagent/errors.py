"""Errors that say whose fault they are (the h11 convention).

- ``RemoteProtocolError``: a peer sent bytes we cannot accept. It costs that peer its stream, nothing more.
- ``LocalProtocolError``: our own code misused a protocol core; a bug on this side.
- ``ConfigError``: the operator's configuration or command line is wrong. The CLI prints it on one line
  and exits with code 2.
"""


class PyAgentError(Exception):
    """Base class of every error PyAgent raises on purpose."""


class RemoteProtocolError(PyAgentError):
    """A peer violated the wire protocol (bad frame, oversize, bad msgpack, wrong shape)."""


class LocalProtocolError(PyAgentError):
    """This process misused a protocol core, for example sending on a protocol it does not speak."""


class ConfigError(PyAgentError):
    """The user's configuration or command line is invalid. The message says what and how to fix it."""

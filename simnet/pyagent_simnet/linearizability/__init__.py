"""A linearizability checker for histories of the replicated KV store (WGL with memoization).

simnet's KV kit checks its runs with it, and the tests on real daemons check theirs:
``from pyagent_simnet.linearizability import HistoryRecorder, check``. Its own tests are in
``tests/linearizability``.
"""

from .checker import MAX_STEPS_PER_KEY_DEFAULT, Result, Status, check
from .history import HistoryRecorder, Invocation, Key, Kind, Operation, OpResult, Token, Value

__all__ = [
    "MAX_STEPS_PER_KEY_DEFAULT",
    "HistoryRecorder",
    "Invocation",
    "Key",
    "Kind",
    "OpResult",
    "Operation",
    "Result",
    "Status",
    "Token",
    "Value",
    "check",
]

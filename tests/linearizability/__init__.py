"""A linearizability checker for histories of the replicated KV store (WGL with memoization).

``from linearizability import HistoryRecorder, check`` (with ``tests/`` on ``sys.path``).
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

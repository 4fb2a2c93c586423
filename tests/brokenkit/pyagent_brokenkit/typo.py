"""A plugin with a misspelled hook (``pyagent_peer_conected``): pluggy's validation refuses it."""

from __future__ import annotations

from typing import Any

from pyagent.hookspecs import hookimpl
from pyagent_brokenkit import mark_imported

mark_imported("typo")


@hookimpl
def pyagent_peer_conected(node: Any, peer: Any) -> None:
    pass

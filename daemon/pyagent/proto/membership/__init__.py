"""SWIM + Lifeguard gossip membership, as a sans-I/O component of ``NodeCore``.

Compose it with ``Membership(local_peer, rng, config, local_metadata, local_addrs, storage=...)``; see
docs/membership.md for the protocol, the configuration and the detection-time bound.
"""

from pyagent.proto.membership.codec import PROTOCOL_ID
from pyagent.proto.membership.commands import (
    Join,
    Joined,
    Leave,
    ListAddressBook,
    ListMembers,
    UpdateLocalMetadata,
)
from pyagent.proto.membership.config import LAN, WAN, Config
from pyagent.proto.membership.metadata import Metadata
from pyagent.proto.membership.records import Entry, Isolated, MemberChanged, MemberRecord, State
from pyagent.proto.membership.swim import Membership

__all__ = [
    "LAN",
    "PROTOCOL_ID",
    "WAN",
    "Config",
    "Entry",
    "Isolated",
    "Join",
    "Joined",
    "Leave",
    "ListAddressBook",
    "ListMembers",
    "MemberChanged",
    "MemberRecord",
    "Membership",
    "Metadata",
    "State",
    "UpdateLocalMetadata",
]

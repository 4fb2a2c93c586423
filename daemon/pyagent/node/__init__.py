"""The trio shell: the libp2p host, timers, storage handles, control API. It feeds events into NodeCore
and carries out what NodeCore returns."""

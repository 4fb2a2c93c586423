"""PyAgent: a peer-to-peer runtime for collaborative AI.

The package is split by job: ``proto`` holds the sans-I/O protocol cores, ``node`` is the trio shell that
drives them over libp2p, ``hookspecs`` is the plugin contract and ``cli`` is the ``pyagent`` command.
"""

__version__ = "0.1.0"

"""Sans-I/O protocol cores.

Nothing in this package performs I/O, reads a clock or draws randomness on its own: time arrives as
``now_us`` and randomness as an injected ``Rng``. The trio shell (``pyagent.node``) and the simulator
(``pyagent_simnet``) drive the very same objects.
"""

"""A test-only distribution: plugins and simnet kits that exist to test the seams, never to ship.

It is not installed. Putting ``tests/testkit`` on ``sys.path`` (or ``PYTHONPATH``) is enough: the
hand-written ``pyagent_testkit-0.1.dist-info`` next to this package makes ``importlib.metadata`` find its
entry points (``entry_points.txt``), exactly as it finds those of an installed distribution, so whatever
it registers is discovered the way a third party's would be.

- ``journal``: a simnet kit (group ``pyagent_simnet.kits``) whose component writes a journal to its
  node's storage and whose checks make sure that what was reported ``Persisted`` survives restarts.
"""

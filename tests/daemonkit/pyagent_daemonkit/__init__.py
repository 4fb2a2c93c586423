"""A test-only plugin for real daemons. It is never installed: a test puts ``tests/daemonkit`` on the
daemon's PYTHONPATH, where importlib.metadata finds its hand-written dist-info and so its entry point.

- ``journal``: appends synced batches on request and answers only once they are durable, so a test can
  kill -9 a daemon mid-storm and check that every acknowledged batch survived, whole.
- ``blob``: streams a generated blob of any size to another daemon as a ``Transfer`` and checks it
  there chunk by chunk, without ever holding it whole.
"""

"""PyAgent's hello plugin: peers announce their software version and plugins to each other.

A built-in feature shipped as its own distribution and loaded through the ``pyagent`` entry-point group,
exactly as a third-party plugin is; ``docs/plugins.md`` uses it as the worked example.
"""

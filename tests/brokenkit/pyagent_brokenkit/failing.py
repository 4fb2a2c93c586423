"""A plugin whose import fails (a dependency that is not installed)."""

from __future__ import annotations

from pyagent_brokenkit import mark_imported

mark_imported("failing")

import pyagent_brokenkit_missing_dependency  # noqa: E402, F401  # type: ignore[import-not-found]

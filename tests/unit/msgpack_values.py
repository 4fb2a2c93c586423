"""Hypothesis strategies for msgpack-able values and frame messages, shared by the frame codec's tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def msgpack_values(*, floats: bool, leaves_max: int) -> st.SearchStrategy[Any]:
    """Nested lists and str-keyed maps of msgpack scalars. Round-trip tests leave floats out (NaN is not
    equal to itself)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=12)
        | st.binary(max_size=12)
    )
    if floats:
        scalars |= st.floats()
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=5)
        ),
        max_leaves=leaves_max,
    )


def frame_messages(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Messages with a valid envelope (``v`` and ``t``) around arbitrary ``values``."""
    return st.builds(
        lambda t, body: {"v": 1, "t": t, **body},
        st.text(min_size=1, max_size=10),
        st.dictionaries(st.text(min_size=2, max_size=8), values, max_size=4),
    )

"""The flat delta layout: named tensors round-trip through one float32 array in a fixed order, and
anything that does not fit is refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyagent.lora.layout import DeltaLayout, LayoutMismatchError

shapes = st.dictionaries(
    st.text("abc.", min_size=1, max_size=6), st.lists(st.integers(0, 5), min_size=0, max_size=3), max_size=5
)


@given(shapes, st.integers(0, 2**32 - 1))
def test_flatten_then_unflatten_gives_the_tensors_back(named: dict[str, list[int]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in named.items()}
    layout = DeltaLayout.from_shapes(named)
    flat = layout.flatten(tensors)
    assert flat.dtype == np.float32 and flat.shape == (layout.numel,)
    back = layout.unflatten(flat)
    assert list(back) == sorted(named)
    for name, value in tensors.items():
        assert np.array_equal(back[name], value)


def test_order_is_by_name_whatever_the_order_given() -> None:
    layout = DeltaLayout.from_shapes({"b": (2,), "a": (1, 2)})
    flat = layout.flatten({"b": np.array([3.0, 4.0]), "a": np.array([[1.0, 2.0]])})
    assert flat.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert layout.fingerprint == DeltaLayout.from_shapes({"a": [1, 2], "b": [2]}).fingerprint


def test_fingerprint_changes_with_names_shapes_and_tag() -> None:
    base = DeltaLayout.from_shapes({"a": (2, 3)})
    others = [
        DeltaLayout.from_shapes({"b": (2, 3)}),
        DeltaLayout.from_shapes({"a": (3, 2)}),
        DeltaLayout.from_shapes({"a": (2, 3)}, tag="seed 1"),
    ]
    assert len({base.fingerprint, *(layout.fingerprint for layout in others)}) == 4


def test_what_does_not_fit_is_refused() -> None:
    layout = DeltaLayout.from_shapes({"a": (2,), "b": (3,)})
    with pytest.raises(LayoutMismatchError, match=r"missing \['b'\], extra \['c'\]"):
        layout.flatten({"a": np.zeros(2), "c": np.zeros(3)})
    with pytest.raises(LayoutMismatchError, match="shape"):
        layout.flatten({"a": np.zeros(2), "b": np.zeros(4)})
    with pytest.raises(LayoutMismatchError, match="shape"):
        layout.unflatten(np.zeros(4, np.float32))
    with pytest.raises(LayoutMismatchError, match="float64"):
        layout.unflatten(np.zeros(5))

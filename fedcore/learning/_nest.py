"""Flattening fedcore structures in order.

``tf.nest`` sorts dict keys and does not know ``fedcore.Struct``; the
learning code needs the order of the fedcore type (which is the order of the
weights), whatever container a value arrives in.
"""

from __future__ import annotations

from typing import Any, Callable, List

from fedcore.structure import build_container, python_items


def _is_container(value: Any) -> bool:
    return python_items(value) is not None


def flatten(value: Any) -> List[Any]:
    """Leaves of ``value`` in order: containers are recursed, anything else is a leaf."""
    items = python_items(value)
    if items is None:
        return [value]
    return [leaf for _, v in items for leaf in flatten(v)]


def pack_as(template: Any, leaves: List[Any]) -> Any:
    """``leaves`` in the containers of ``template``."""
    it = iter(leaves)

    def build(t):
        items = python_items(t)
        if items is None:
            return next(it)
        container = type(t)
        return build_container(container, [(n, build(v)) for n, v in items])

    out = build(template)
    rest = list(it)
    if rest:
        raise ValueError(f"{len(rest)} leaves left over packing into {template!r}")
    return out


def map_structure(fn: Callable, first: Any, *others: Any) -> Any:
    """``fn`` applied leaf by leaf; the result has ``first``'s containers."""
    flat = [flatten(first)] + [flatten(o) for o in others]
    if any(len(f) != len(flat[0]) for f in flat[1:]):
        raise ValueError(f"structures differ in their number of leaves: {[len(f) for f in flat]}")
    return pack_as(first, [fn(*leaves) for leaves in zip(*flat)])

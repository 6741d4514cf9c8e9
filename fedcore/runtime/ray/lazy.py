"""Lazy driver values: results of client work, computed when first needed."""

from __future__ import annotations

from typing import Any, Callable

from fedcore.structure import Struct


class Lazy:
    """A driver value computed on demand (after the client work it depends on has run)."""

    __slots__ = ("_thunk", "_value", "_done")

    def __init__(self, thunk: Callable[[], Any]):
        self._thunk, self._done, self._value = thunk, False, None

    @property
    def done(self) -> bool:
        return self._done

    def force(self) -> Any:
        if not self._done:
            value = force(self._thunk())
            self._value, self._done, self._thunk = value, True, None
        return self._value


def force(value: Any) -> Any:
    """``value`` with every lazy part computed."""
    if isinstance(value, Lazy):
        return value.force()
    if isinstance(value, Struct):
        if not has_lazy(value):
            return value
        return Struct([(n, force(v)) for n, v in value.items()])
    if isinstance(value, list) and has_lazy(value):
        return [force(v) for v in value]
    return value


def has_lazy(value: Any) -> bool:
    if isinstance(value, Lazy):
        return not value.done
    if isinstance(value, (Struct, list)):
        return any(has_lazy(v) for v in value)
    return False

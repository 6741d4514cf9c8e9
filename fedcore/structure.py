"""``Struct``: fedcore's value for a struct with no Python container of its own.

It is also the internal representation of every struct value inside the
executors, and this module converts between it and the user's containers.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple

import attrs


class Struct:
    """An ordered struct of named or unnamed values.

    Supports ``s.name``, ``s['name']``, ``s[0]``, ``len(s)`` and iteration over
    values.  Immutable.
    """

    __slots__ = ("_names", "_values")

    def __init__(self, items: Iterable[Tuple[Optional[str], Any]]):
        names, values = [], []
        for name, value in items:
            names.append(name)
            values.append(value)
        object.__setattr__(self, "_names", tuple(names))
        object.__setattr__(self, "_values", tuple(values))

    @classmethod
    def unnamed(cls, *values: Any) -> "Struct":
        return cls((None, v) for v in values)

    @classmethod
    def named(cls, **values: Any) -> "Struct":
        return cls(values.items())

    def __setattr__(self, name, value):
        raise AttributeError("Struct is immutable")

    def names(self) -> Tuple[Optional[str], ...]:
        return self._names

    def values(self) -> Tuple[Any, ...]:
        return self._values

    def items(self) -> Iterator[Tuple[Optional[str], Any]]:
        return zip(self._names, self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return self._values[self._names.index(key)]
            except ValueError:
                raise KeyError(f"struct has no element named {key!r}; names are {self._named()}") from None
        if isinstance(key, slice):
            return Struct(list(zip(self._names, self._values))[key])
        try:
            return self._values[key]
        except IndexError:
            raise IndexError(f"struct index {key} out of range for a struct of {len(self)} elements") from None
        except TypeError:
            raise TypeError(f"struct index must be an int or a name, got {key!r}") from None

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        names = object.__getattribute__(self, "_names")
        if name in names:
            return object.__getattribute__(self, "_values")[names.index(name)]
        raise AttributeError(f"struct has no element named {name!r}; names are {self._named()}")

    def _named(self) -> list:
        return [n for n in self._names if n is not None]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Struct):
            return NotImplemented
        return self._names == other._names and len(self) == len(other) and all(
            _values_equal(a, b) for a, b in zip(self._values, other._values)
        )

    def __hash__(self):
        return hash(self._names)

    def __repr__(self) -> str:
        parts = [repr(v) if n is None else f"{n}={v!r}" for n, v in self.items()]
        return "<" + ",".join(parts) + ">"

    def _asdict(self) -> "collections.OrderedDict":
        return collections.OrderedDict((n, v) for n, v in self.items() if n is not None)


def _values_equal(a, b) -> bool:
    try:
        import numpy as np

        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return bool(np.array_equal(a, b))
    except ImportError:  # pragma: no cover
        pass
    return a == b


def is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def python_items(value: Any) -> Optional[Sequence[Tuple[Optional[str], Any]]]:
    """Returns the (name, value) items of a Python container, or None if not a container."""
    if isinstance(value, Struct):
        return list(value.items())
    if attrs.has(type(value)):
        return [(f.name, getattr(value, f.name)) for f in attrs.fields(type(value))]
    if is_namedtuple(value):
        return list(zip(value._fields, value))
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, (list, tuple)):
        return [(None, v) for v in value]
    return None


def nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether containers in ``value`` nest more than ``limit`` levels deep (a leaf is 1 level),
    found without recursion, so that any depth can be asked about."""
    stack = [(value, 1)]
    while stack:
        v, level = stack.pop()
        items = python_items(v)
        if items is None:
            continue
        if level + 1 > limit and items:
            return True
        stack.extend((item, level + 1) for _, item in items)
    return False


def build_container(container: Optional[type], items: Sequence[Tuple[Optional[str], Any]]) -> Any:
    """Builds a value of ``container`` from items; structs without one become Struct or tuple."""
    if container is None:
        if all(n is None for n, _ in items) and items:
            return tuple(v for _, v in items)
        return Struct(items)
    if container is Struct:
        return Struct(items)
    if attrs.has(container):
        return container(**{n: v for n, v in items})
    if issubclass(container, tuple) and hasattr(container, "_fields"):
        return container(*[v for _, v in items])
    if issubclass(container, dict):
        return container((n, v) for n, v in items)
    if issubclass(container, (list, tuple)):
        return container(v for _, v in items)
    return Struct(items)


def items_by_names(value: Any, names: Sequence[Optional[str]]) -> Optional[Sequence[Tuple[Optional[str], Any]]]:
    """``python_items(value)``, with a dict's items put in the order of ``names`` where they are keys.

    Dicts may list their keys in any order; a struct type fixes the order.
    """
    items = python_items(value)
    if items is not None and isinstance(value, dict):
        items = [(n, value[n]) if n is not None and n in value else item for n, item in zip(names, items)]
    return items

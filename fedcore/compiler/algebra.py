"""The algebra of an aggregation, written once for every place that aggregates.

An aggregation over clients is a monoid on an accumulator: ``zero``,
``accumulate`` (fold one client's input in), ``merge`` (join two partial
accumulators, for partial sums on workers or in a MapReduceForm), and
``report`` (the result from the final accumulator).  The value over zero
clients is ``report(zero)``: NaN for the means (0/0), the dtype's extremes for
min and max.

A monoid is written on flat lists of leaf arrays and on an *array namespace*
(``NUMPY`` or ``TENSORFLOW`` below), so the same definition runs in the
reference interpreter (numpy), inside a TensorFlow graph (the TF executor's
fold, a MapReduceForm's pieces) and on a Ray worker.  ``accumulate_all``
folds a whole stack of client inputs (a leading clients axis) at once, which
is what a vectorized executor runs; it must equal folding ``accumulate`` over
the stack's rows.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import attrs
import numpy as np
import tensorflow as tf

from fedcore.compiler.tf_bridge import leaf_types
from fedcore.types import StructType, TensorType, Type

Leaves = List[Any]


# --------------------------------------------------------------------------
# Array namespaces: the few operations monoids are written in.


def _wide(dtype: str) -> str:
    """Sums of floating-point values are kept in float64, as the reference always has."""
    return "float64" if dtype.startswith(("float", "bfloat")) else dtype


@attrs.frozen
class _Numpy:
    name = "numpy"

    def full(self, shape, value, dtype: str):
        return np.full(shape, value, np.dtype(dtype))

    def cast(self, x, dtype: str):
        return np.asarray(x).astype(np.dtype(dtype))

    def add(self, a, b):
        return np.add(a, b)

    def multiply(self, a, b):
        return np.multiply(a, b)

    def divide(self, a, b):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.divide(a, b)

    def minimum(self, a, b):
        return np.minimum(a, b)

    def maximum(self, a, b):
        return np.maximum(a, b)

    def sum0(self, x):
        return np.sum(x, axis=0)

    def prod0(self, x):
        return np.prod(x, axis=0)

    def min0(self, x):
        return np.min(x, axis=0)

    def max0(self, x):
        return np.max(x, axis=0)

    def rows(self, x):
        return np.float64(np.shape(x)[0])

    def per_row(self, w, x):
        """``w`` (one value per row of ``x``) shaped to broadcast against ``x``."""
        return np.reshape(w, (-1,) + (1,) * (np.ndim(x) - 1))

    def shape(self, x):
        return np.shape(x)


@attrs.frozen
class _TensorFlow:
    name = "tensorflow"

    def full(self, shape, value, dtype: str):
        return tf.fill(list(shape), tf.constant(value, tf.as_dtype(dtype)))

    def cast(self, x, dtype: str):
        return tf.cast(x, tf.as_dtype(dtype))

    def add(self, a, b):
        return a + b

    def multiply(self, a, b):
        return a * b

    def divide(self, a, b):
        return a / b

    def minimum(self, a, b):
        return tf.minimum(a, b)

    def maximum(self, a, b):
        return tf.maximum(a, b)

    def sum0(self, x):
        return tf.reduce_sum(x, axis=0)

    def prod0(self, x):
        return tf.reduce_prod(x, axis=0)

    def min0(self, x):
        return tf.reduce_min(x, axis=0)

    def max0(self, x):
        return tf.reduce_max(x, axis=0)

    def rows(self, x):
        return tf.cast(tf.shape(x)[0], tf.float64)

    def per_row(self, w, x):
        return tf.reshape(w, [-1] + [1] * (x.shape.rank - 1))

    def shape(self, x):
        x = tf.convert_to_tensor(x)
        return tuple(x.shape.as_list()) if x.shape.is_fully_defined() else tf.shape(x)


NUMPY = _Numpy()
TENSORFLOW = _TensorFlow()


class ShapeNotKnown(TypeError):
    """An accumulator was needed for values whose shape the type does not fix."""


def _shape(t: TensorType, shapes: Optional[Sequence[Any]], i: int) -> Any:
    if shapes is not None:
        return shapes[i]
    if t.shape is None or any(d is None for d in t.shape):
        raise ShapeNotKnown(f"cannot build a value of type {t}, whose shape is not fully known")
    return tuple(t.shape)


# --------------------------------------------------------------------------
# Monoids.


class Monoid:
    """zero / accumulate / merge / report over flat leaf lists.

    ``u`` is the type of one client's input (the member of the aggregated
    value; for a weighted mean, ``<T,W>``); ``accumulator_type(u)`` is the
    accumulator's type.  Subclasses define the five operations; the value over
    zero clients is always ``report(zero)``.
    """

    name = "monoid"

    def accumulator_type(self, u: Type) -> Type:
        raise NotImplementedError

    def result_type(self, u: Type) -> Type:
        return u

    def zero(self, xp, u: Type, shapes: Optional[Sequence[Any]] = None) -> Leaves:
        """The accumulator of no clients; ``shapes`` gives the input leaves' shapes where ``u`` leaves them open."""
        raise NotImplementedError

    def accumulate(self, xp, u: Type, acc: Leaves, x: Leaves) -> Leaves:
        raise NotImplementedError

    def accumulate_all(self, xp, u: Type, acc: Leaves, xs: Leaves) -> Leaves:
        raise NotImplementedError

    def merge(self, xp, u: Type, a: Leaves, b: Leaves) -> Leaves:
        raise NotImplementedError

    def report(self, xp, u: Type, acc: Leaves) -> Leaves:
        raise NotImplementedError

    def fold(self, xp, u: Type, inputs: Sequence[Leaves]) -> Leaves:
        """The result over a list of client inputs: what the definition means."""
        acc = self.zero(xp, u, [xp.shape(x) for x in inputs[0]] if inputs else None)
        for x in inputs:
            acc = self.accumulate(xp, u, acc, x)
        return self.report(xp, u, acc)

    def __repr__(self) -> str:
        return f"<monoid {self.name}>"


def _leaves(t: Type) -> List[TensorType]:
    return leaf_types(t)


class _Elementwise(Monoid):
    """A monoid that combines each leaf with itself: sum, product, min, max."""

    def leaf_dtype(self, t: TensorType) -> str:
        return t.dtype

    def identity(self, t: TensorType, dtype: str) -> Any:
        raise NotImplementedError

    def combine(self, xp, a, b):
        raise NotImplementedError

    def combine_all(self, xp, xs):
        raise NotImplementedError

    def accumulator_type(self, u: Type) -> Type:
        return _retyped(u, lambda t: TensorType(self.leaf_dtype(t), t.shape))

    def zero(self, xp, u, shapes=None):
        out = []
        for i, t in enumerate(_leaves(u)):
            dtype = self.leaf_dtype(t)
            out.append(xp.full(_shape(t, shapes, i), self.identity(t, dtype), dtype))
        return out

    def accumulate(self, xp, u, acc, x):
        return [self.combine(xp, a, xp.cast(v, self.leaf_dtype(t))) for a, v, t in zip(acc, x, _leaves(u))]

    def accumulate_all(self, xp, u, acc, xs):
        return [self.combine(xp, a, self.combine_all(xp, xp.cast(v, self.leaf_dtype(t))))
                for a, v, t in zip(acc, xs, _leaves(u))]

    def merge(self, xp, u, a, b):
        return [self.combine(xp, x, y) for x, y in zip(a, b)]

    def report(self, xp, u, acc):
        return [xp.cast(a, t.dtype) for a, t in zip(acc, _leaves(u))]


def _retyped(t: Type, fn) -> Type:
    if isinstance(t, StructType):
        return StructType([(n, _retyped(e, fn)) for n, e in t.elements], container=t.container)
    return fn(t)


class Sum(_Elementwise):
    name = "sum"

    def leaf_dtype(self, t):
        return _wide(t.dtype)

    def identity(self, t, dtype):
        return 0

    def combine(self, xp, a, b):
        return xp.add(a, b)

    def combine_all(self, xp, xs):
        return xp.sum0(xs)


class Product(_Elementwise):
    name = "product"

    def leaf_dtype(self, t):
        return _wide(t.dtype)

    def identity(self, t, dtype):
        return 1

    def combine(self, xp, a, b):
        return xp.multiply(a, b)

    def combine_all(self, xp, xs):
        return xp.prod0(xs)


def _extreme(dtype: str, highest: bool):
    d = np.dtype(dtype)
    if d.kind in "fc":
        return np.inf if highest else -np.inf
    info = np.iinfo(d)
    return info.max if highest else info.min


class Min(_Elementwise):
    name = "min"

    def identity(self, t, dtype):
        return _extreme(dtype, highest=True)

    def combine(self, xp, a, b):
        return xp.minimum(a, b)

    def combine_all(self, xp, xs):
        return xp.min0(xs)


class Max(_Elementwise):
    name = "max"

    def identity(self, t, dtype):
        return _extreme(dtype, highest=False)

    def combine(self, xp, a, b):
        return xp.maximum(a, b)

    def combine_all(self, xp, xs):
        return xp.max0(xs)


class _Ratio(Monoid):
    """Sums in float64 beside a float64 total; the report divides: the (weighted) means."""

    weighted = False

    def _values(self, u: Type) -> Type:
        return u[0] if self.weighted else u

    def result_type(self, u):
        return self._values(u)

    def accumulator_type(self, u):
        wide = _retyped(self._values(u), lambda t: TensorType("float64", t.shape))
        return StructType([(None, wide), (None, TensorType("float64", ()))])

    def zero(self, xp, u, shapes=None):
        values = _leaves(self._values(u))
        return [xp.full(_shape(t, shapes, i), 0.0, "float64") for i, t in enumerate(values)] + [xp.full((), 0.0, "float64")]

    def _split(self, xp, u, x):
        k = len(_leaves(self._values(u)))
        values = [xp.cast(v, "float64") for v in x[:k]]
        return values, (xp.cast(x[k], "float64") if self.weighted else None)

    def accumulate(self, xp, u, acc, x):
        values, w = self._split(xp, u, x)
        if w is None:
            return [xp.add(a, v) for a, v in zip(acc, values)] + [xp.add(acc[-1], 1.0)]
        return [xp.add(a, xp.multiply(v, w)) for a, v in zip(acc, values)] + [xp.add(acc[-1], w)]

    def accumulate_all(self, xp, u, acc, xs):
        values, w = self._split(xp, u, xs)
        if w is None:
            count = xp.rows(values[0]) if values else 0.0
            return [xp.add(a, xp.sum0(v)) for a, v in zip(acc, values)] + [xp.add(acc[-1], count)]
        return ([xp.add(a, xp.sum0(xp.multiply(v, xp.per_row(w, v)))) for a, v in zip(acc, values)]
                + [xp.add(acc[-1], xp.sum0(w))])

    def merge(self, xp, u, a, b):
        return [xp.add(x, y) for x, y in zip(a, b)]

    def report(self, xp, u, acc):
        total = acc[-1]
        return [xp.cast(xp.divide(s, total), t.dtype) for s, t in zip(acc[:-1], _leaves(self._values(u)))]


class Mean(_Ratio):
    name = "mean"


class WeightedMean(_Ratio):
    name = "weighted_mean"
    weighted = True

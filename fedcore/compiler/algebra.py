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
    """Sums of floating-point values are kept in float64, as the reference always has; complex
    ones in complex128; integers narrower than 64 bits in int64, checked against their dtype's
    range when reported."""
    if dtype.startswith(("float", "bfloat")):
        return "float64"
    if dtype.startswith("complex"):
        return "complex128"
    if dtype in ("int8", "int16", "int32", "uint8", "uint16", "uint32"):
        return "int64"
    return dtype


def _is_integer(dtype: str) -> bool:
    return dtype.startswith(("int", "uint"))


class IntegerOverflow(ArithmeticError):
    """The exact result of an integer aggregation does not fit in its dtype.

    Integer sums are never wrapped around: every executor refuses them with
    this message (executors raise it as an ``ExecutionError``).
    """


def overflow_message(dtype: str) -> str:
    info = np.iinfo(np.dtype(dtype))
    instead = "floating-point values" if dtype.endswith("64") else "a wider integer type (such as int64)"
    return (
        f"an integer sum overflows: the exact sum of {dtype} values does not fit in {dtype} "
        f"(range [{info.min}, {info.max}]), and integer sums are never wrapped around; sum {instead} instead"
    )


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

    # Integer bits, and a check that refuses a result that does not fit.

    def bit_and(self, x, mask: int):
        x = np.asarray(x)
        return np.bitwise_and(x, x.dtype.type(mask))

    def shift_right(self, x, bits: int):
        x = np.asarray(x)
        return np.right_shift(x, x.dtype.type(bits))

    def scale(self, x, factor: int):
        x = np.asarray(x)
        with np.errstate(over="ignore"):  # where the product wraps around, ``check`` refuses it
            return x * x.dtype.type(factor)

    def less(self, x, c: int):
        return np.less(x, c)

    def greater(self, x, c: int):
        return np.greater(x, c)

    def logical_and(self, a, b):
        return np.logical_and(a, b)

    def exact(self, high, low, half: int):
        return np.vectorize(lambda h, l: int(h) * half + int(l), otypes=[object])(high, low)

    def check(self, ok, exact, dtype: str, result):
        """``result``, or IntegerOverflow naming the exact sums (``exact()``) where ``ok`` is false."""
        ok = np.asarray(ok)
        if not ok.all():
            bad = [int(v) for v, fits in zip(np.asarray(exact(), dtype=object).reshape(-1), ok.reshape(-1)) if not fits]
            raise IntegerOverflow(f"{overflow_message(dtype)}; the sums that do not fit: {bad[:3]}")
        return result


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

    def bit_and(self, x, mask: int):
        return tf.bitwise.bitwise_and(x, tf.constant(mask, x.dtype))

    def shift_right(self, x, bits: int):
        return tf.bitwise.right_shift(x, tf.constant(bits, x.dtype))

    def scale(self, x, factor: int):
        return x * tf.constant(factor, x.dtype)

    def less(self, x, c: int):
        return tf.less(x, tf.constant(c, x.dtype))

    def greater(self, x, c: int):
        return tf.greater(x, tf.constant(c, x.dtype))

    def logical_and(self, a, b):
        return tf.logical_and(a, b)

    def exact(self, high, low, half: int):
        """Not exact in a graph: the float64 nearest to the sum, for the message."""
        return tf.cast(high, tf.float64) * float(half) + tf.cast(low, tf.float64)

    def check(self, ok, approx, dtype: str, result):
        """``result``, made to fail the graph with IntegerOverflow's message where ``ok`` is false
        (an InvalidArgumentError, which executors raise as an ExecutionError)."""
        bad = tf.boolean_mask(tf.reshape(approx(), [-1]), tf.logical_not(tf.reshape(ok, [-1])))
        check = tf.debugging.Assert(
            tf.reduce_all(ok), [f"{overflow_message(dtype)}; the sums that do not fit:", bad], summarize=3
        )
        with tf.control_dependencies([check]):
            return tf.identity(result)


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


_HALF = 2**32


class Sum(_Elementwise):
    """Sums: floating-point values in float64, complex ones in complex128, integers exactly.

    An integer sum is never wrapped around: its exact value is reported, or refused with
    ``IntegerOverflow`` where it does not fit in the dtype, whatever the order of the clients.
    Integers narrower than 64 bits are summed in int64 (where more than 2^31 clients would be
    needed to wrap around); a 64-bit integer leaf is kept as two accumulator leaves, its high
    and low 32-bit halves, whose sums cannot wrap around either, and joined when reported.
    """

    name = "sum"

    def leaf_dtype(self, t):
        return _wide(t.dtype)

    @staticmethod
    def _split64(t: TensorType) -> bool:
        return t.dtype in ("int64", "uint64")

    def accumulator_type(self, u: Type) -> Type:
        def leaf(t):
            if self._split64(t):
                return StructType([(None, TensorType(t.dtype, t.shape)), (None, TensorType(t.dtype, t.shape))])
            return TensorType(self.leaf_dtype(t), t.shape)

        return _retyped(u, leaf)

    def zero(self, xp, u, shapes=None):
        out = []
        for i, t in enumerate(_leaves(u)):
            shape = _shape(t, shapes, i)
            if self._split64(t):
                out.extend([xp.full(shape, 0, t.dtype), xp.full(shape, 0, t.dtype)])
            else:
                out.append(xp.full(shape, 0, self.leaf_dtype(t)))
        return out

    def _groups(self, u, acc):
        """Each leaf type of ``u`` with its accumulator leaves (two for a 64-bit integer)."""
        i = 0
        for t in _leaves(u):
            k = 2 if self._split64(t) else 1
            yield t, acc[i : i + k]
            i += k

    @staticmethod
    def _normal(xp, high, low):
        """(high, low) with low in [0, 2^32): the carry of low moved into high."""
        return [xp.add(high, xp.shift_right(low, 32)), xp.bit_and(low, _HALF - 1)]

    def _combine(self, xp, t, a, b, summed=None):
        if not self._split64(t):
            return [xp.add(a[0], b if summed is None else summed)]
        return self._normal(xp, xp.add(a[0], b[0]), xp.add(a[1], b[1]))

    def _halves(self, xp, x):
        return [xp.shift_right(x, 32), xp.bit_and(x, _HALF - 1)]

    def accumulate(self, xp, u, acc, x):
        out = []
        for (t, a), v in zip(self._groups(u, acc), x):
            v = xp.cast(v, self.leaf_dtype(t))
            out.extend(self._combine(xp, t, a, self._halves(xp, v) if self._split64(t) else v))
        return out

    def accumulate_all(self, xp, u, acc, xs):
        out = []
        for (t, a), v in zip(self._groups(u, acc), xs):
            v = xp.cast(v, self.leaf_dtype(t))
            if self._split64(t):
                out.extend(self._combine(xp, t, a, [xp.sum0(h) for h in self._halves(xp, v)]))
            else:
                out.extend(self._combine(xp, t, a, None, xp.sum0(v)))
        return out

    def merge(self, xp, u, a, b):
        out = []
        for (t, x), (_, y) in zip(self._groups(u, a), self._groups(u, b)):
            out.extend(self._combine(xp, t, x, y if self._split64(t) else y[0]))
        return out

    def report(self, xp, u, acc):
        out = []
        for t, a in self._groups(u, acc):
            if self._split64(t):
                high, low = a
                if t.dtype == "uint64":
                    ok = xp.less(high, _HALF)
                else:
                    ok = xp.logical_and(xp.less(high, _HALF // 2), xp.greater(high, -(_HALF // 2) - 1))

                def exact(high=high, low=low):
                    return xp.exact(high, low, _HALF)

                out.append(xp.check(ok, exact, t.dtype, xp.add(xp.scale(high, _HALF), low)))
            elif _is_integer(t.dtype):
                info = np.iinfo(t.np_dtype)
                value = a[0]
                ok = xp.logical_and(xp.less(value, info.max + 1), xp.greater(value, info.min - 1))
                out.append(xp.check(ok, lambda value=value: value, t.dtype, xp.cast(value, t.dtype)))
            else:
                out.append(xp.cast(a[0], t.dtype))
        return out


class Product(_Elementwise):
    name = "product"

    def leaf_dtype(self, t):
        return "float64" if t.dtype.startswith(("float", "bfloat")) else t.dtype

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

    # Values are summed in float64, complex values in complex128 (both parts kept); the
    # weights and the count in float64, cast to a complex sum's dtype where they meet it.

    def accumulator_type(self, u):
        wide = _retyped(self._values(u), lambda t: TensorType(_wide(t.dtype), t.shape))
        return StructType([(None, wide), (None, TensorType("float64", ()))])

    def zero(self, xp, u, shapes=None):
        values = _leaves(self._values(u))
        return ([xp.full(_shape(t, shapes, i), 0.0, _wide(t.dtype)) for i, t in enumerate(values)]
                + [xp.full((), 0.0, "float64")])

    def _split(self, xp, u, x):
        types = _leaves(self._values(u))
        values = [xp.cast(v, _wide(t.dtype)) for v, t in zip(x, types)]
        return values, types, (xp.cast(x[len(types)], "float64") if self.weighted else None)

    @staticmethod
    def _as(xp, x, t: TensorType):
        wide = _wide(t.dtype)
        return x if wide == "float64" else xp.cast(x, wide)

    def accumulate(self, xp, u, acc, x):
        values, types, w = self._split(xp, u, x)
        if w is None:
            return [xp.add(a, v) for a, v in zip(acc, values)] + [xp.add(acc[-1], 1.0)]
        return ([xp.add(a, xp.multiply(v, self._as(xp, w, t))) for a, v, t in zip(acc, values, types)]
                + [xp.add(acc[-1], w)])

    def accumulate_all(self, xp, u, acc, xs):
        values, types, w = self._split(xp, u, xs)
        if w is None:
            count = xp.rows(values[0]) if values else 0.0
            return [xp.add(a, xp.sum0(v)) for a, v in zip(acc, values)] + [xp.add(acc[-1], count)]
        return ([xp.add(a, xp.sum0(xp.multiply(v, xp.per_row(self._as(xp, w, t), v))))
                 for a, v, t in zip(acc, values, types)]
                + [xp.add(acc[-1], xp.sum0(w))])

    def merge(self, xp, u, a, b):
        return [xp.add(x, y) for x, y in zip(a, b)]

    def report(self, xp, u, acc):
        total = acc[-1]
        return [xp.cast(xp.divide(s, self._as(xp, total, t)), t.dtype)
                for s, t in zip(acc[:-1], _leaves(self._values(u)))]


class Mean(_Ratio):
    name = "mean"


class WeightedMean(_Ratio):
    name = "weighted_mean"
    weighted = True

"""The aggregation monoids: one algebra, the same meaning in numpy, in TensorFlow and in any grouping."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcore.compiler import algebra
from fedcore.compiler import intrinsics as defs
from fedcore.types import parse

MONOIDS = {
    "sum": (algebra.Sum(), "float32[3]"),
    "sum_int": (algebra.Sum(), "int32[3]"),
    "mean": (algebra.Mean(), "float32[3]"),
    "weighted_mean": (algebra.WeightedMean(), "<float32[3],float32>"),
    "min": (algebra.Min(), "float32[3]"),
    "max_int": (algebra.Max(), "int32[3]"),
    "product": (algebra.Product(), "float32[3]"),
}

# Client inputs: small integers, so every grouping gives the same float result exactly.
clients = st.lists(st.tuples(st.lists(st.integers(-4, 4), min_size=3, max_size=3), st.integers(1, 3)),
                   min_size=0, max_size=7)


def _inputs(name, rows):
    monoid, u = MONOIDS[name]
    u = parse(u)
    if name == "weighted_mean":
        return monoid, u, [[np.asarray(v, np.float32), np.float32(w)] for v, w in rows]
    dtype = np.int32 if name.endswith("_int") else np.float32
    return monoid, u, [[np.asarray(v, dtype)] for v, _ in rows]


def _stack(inputs, u):
    k = len(algebra.leaf_types(u))
    return [np.stack([x[i] for x in inputs]) for i in range(k)]


def _equal(a, b):
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MONOIDS))
@settings(max_examples=40, deadline=None)
@given(rows=clients, split=st.integers(0, 7))
def test_partial_accumulators_merge_to_the_fold(name, rows, split):
    monoid, u, inputs = _inputs(name, rows)
    xp = algebra.NUMPY
    whole = monoid.fold(xp, u, inputs)
    left, right = monoid.zero(xp, u), monoid.zero(xp, u)
    for x in inputs[:split]:
        left = monoid.accumulate(xp, u, left, x)
    for x in inputs[split:]:
        right = monoid.accumulate(xp, u, right, x)
    _equal(monoid.report(xp, u, monoid.merge(xp, u, left, right)), whole)
    if inputs:
        _equal(monoid.report(xp, u, monoid.accumulate_all(xp, u, monoid.zero(xp, u), _stack(inputs, u))), whole)


@pytest.mark.parametrize("name", sorted(MONOIDS))
@settings(max_examples=15, deadline=None)
@given(rows=clients.filter(bool))
def test_tensorflow_and_numpy_agree(name, rows):
    monoid, u, inputs = _inputs(name, rows)
    expected = monoid.fold(algebra.NUMPY, u, inputs)
    xp = algebra.TENSORFLOW
    stacked = [tf.constant(x) for x in _stack(inputs, u)]
    got = monoid.report(xp, u, monoid.accumulate_all(xp, u, monoid.zero(xp, u), stacked))
    _equal([g.numpy() for g in got], expected)
    for g, t in zip(got, algebra.leaf_types(monoid.result_type(u))):
        assert g.dtype == t.tf_dtype


def test_value_over_zero_clients_is_the_report_of_zero():
    xp = algebra.NUMPY
    t = parse("float32[2]")
    assert np.isnan(defs.FEDERATED_MEAN.monoid.fold(xp, t, [])[0]).all()
    assert (defs.FEDERATED_MIN.monoid.fold(xp, t, [])[0] == np.inf).all()
    assert (defs.FEDERATED_MAX.monoid.fold(xp, parse("int32"), [])[0] == np.iinfo(np.int32).min)
    assert defs.FEDERATED_SUM.monoid.fold(xp, t, [])[0].dtype == np.float32


def test_float_sums_accumulate_in_float64():
    xp = algebra.NUMPY
    t = parse("float32")
    inputs = [[np.float32(1e8)], [np.float32(1.0)], [np.float32(-1e8)]]
    assert defs.FEDERATED_SUM.monoid.fold(xp, t, inputs)[0] == np.float32(1.0)


def test_a_zero_of_an_open_shape_needs_the_inputs_shapes():
    with pytest.raises(algebra.ShapeNotKnown, match=r"float32\[\?\]"):
        defs.FEDERATED_SUM.monoid.zero(algebra.NUMPY, parse("float32[?]"))
    got = defs.FEDERATED_SUM.monoid.fold(algebra.NUMPY, parse("float32[?]"), [[np.ones(4, np.float32)]] * 2)
    np.testing.assert_array_equal(got[0], np.full(4, 2.0, np.float32))

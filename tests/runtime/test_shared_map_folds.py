"""All the reductions of one client map run in one loop over the clients.

FedAvg's client update feeds two reductions: a weighted mean of the model
delta and a sum of the metrics.  Where the client work runs in the
sequential loop, the TF executor folds every client's result into all the
reductions' accumulators in the loop that computes it, instead of stacking
every client's result first (``Compiler._fold_shared_map``).  These tests
pin that the fold is taken where it applies, that it is not where another
use needs the stacked value, and that the results equal the reference
interpreter's either way.
"""

import collections
import contextlib

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import fedcore
from fedcore.compiler import building_blocks as bb
from fedcore.runtime.tensorflow import TensorFlowExecutor, lowering
from fedcore.types import FederatedType, TensorType

ELEMENT = fedcore.to_type((tf.float32, [None]))
DATA = fedcore.type_at_clients(fedcore.SequenceType(ELEMENT))
SCALE = fedcore.type_at_clients(tf.float32)


@fedcore.tf_computation(fedcore.SequenceType(ELEMENT))
def client_work(ds):
    """A client's update, weight and metrics from its dataset (a dataset parameter: never vectorized)."""
    zero = (tf.zeros([3]), tf.constant(0.0), tf.constant(0, tf.int64), tf.constant(-1e9))

    def step(acc, batch):
        total, weight, count, top = acc
        moments = tf.stack([tf.reduce_sum(batch), tf.reduce_sum(batch * batch), tf.reduce_sum(tf.sin(batch))])
        return (total + moments, weight + tf.cast(tf.size(batch), tf.float32), count + tf.size(batch, tf.int64),
                tf.maximum(top, tf.reduce_max(batch)))

    total, weight, count, top = ds.reduce(zero, step)
    return collections.OrderedDict(
        update=total / tf.maximum(weight, 1.0), weight=weight,
        metrics=collections.OrderedDict(count=count * 1000003, top=top),
    )


@fedcore.federated_computation(DATA, SCALE)
def many_reductions(data, scale):
    out = fedcore.federated_map(client_work, data)
    return collections.OrderedDict(
        mean_update=fedcore.federated_mean(out.update, weight=out.weight),
        plain_mean=fedcore.federated_mean(out.update),
        by_scale=fedcore.federated_mean(out.update, weight=scale),
        metrics=fedcore.federated_sum(out.metrics),
        largest=fedcore.federated_max(out.metrics.top),
        smallest_weight=fedcore.federated_min(out.weight),
    )


@fedcore.federated_computation(DATA)
def reductions_and_the_map(data):
    out = fedcore.federated_map(client_work, data)
    return fedcore.federated_sum(out.metrics), fedcore.federated_mean(out.update, weight=out.weight), out.weight


@contextlib.contextmanager
def counting_folds():
    """The number of reductions of each call of ``Compiler.fold_reductions`` made inside."""
    calls = []
    original = lowering.Compiler.fold_reductions

    def counting(self, fn, members, reductions):
        calls.append(len(reductions))
        return original(self, fn, members, reductions)

    lowering.Compiler.fold_reductions = counting
    try:
        yield calls
    finally:
        lowering.Compiler.fold_reductions = original


@pytest.fixture
def folds():
    with counting_folds() as calls:
        yield calls


def _datasets(clients):
    return [tf.data.Dataset.from_tensor_slices(np.asarray(values, np.float32)).batch(batch)
            for values, batch in clients]


def _run(executor, comp, *args):
    with fedcore.execution_context(executor):
        return comp(*args)


def _assert_close(actual, expected):
    a, e = tf.nest.flatten(actual), tf.nest.flatten(expected)
    assert len(a) == len(e)
    for x, y in zip(a, e):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype
        if np.issubdtype(x.dtype, np.integer):
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


CLIENTS = st.lists(
    st.tuples(st.lists(st.floats(-4, 4, width=32), min_size=1, max_size=9), st.integers(1, 4)),
    min_size=1, max_size=6,
)


@settings(max_examples=8, deadline=None)
@given(clients=CLIENTS, scales=st.lists(st.floats(0.5, 3, width=32), min_size=6, max_size=6))
def test_one_loop_folds_every_reduction_as_the_reference_does(clients, scales):
    scale = [np.float32(s) for s in scales[: len(clients)]]
    expected = _run(fedcore.ReferenceExecutor(), many_reductions, _datasets(clients), scale)
    for strategy in ("sequential", "auto"):
        with counting_folds() as calls:
            actual = _run(TensorFlowExecutor(strategy=strategy), many_reductions, _datasets(clients), scale)
        assert calls == [6], strategy  # one loop, all six reductions
        _assert_close(actual, expected)


def test_the_strategy_report_says_the_reductions_ride_in_the_clients_loop(folds):
    executor = TensorFlowExecutor()
    _run(executor, many_reductions, _datasets([([1.0, 2.0], 1), ([3.0], 2)]), [np.float32(1), np.float32(2)])
    first, *rest = executor.strategy_report
    assert (first.intrinsic, first.strategy) == ("federated_map", "sequential")
    assert "takes a dataset" in first.reason
    assert len(rest) == 6
    assert all(c.strategy == "sequential" and "in the loop of" in c.reason for c in rest)


def test_a_map_that_is_also_returned_is_stacked_and_reduced_as_before(folds):
    clients = [([1.0, 2.0, 3.0], 2), ([5.0], 1), ([0.5, -1.0, 2.0, 7.0], 3)]
    expected = _run(fedcore.ReferenceExecutor(), reductions_and_the_map, _datasets(clients))
    actual = _run(TensorFlowExecutor(strategy="sequential"), reductions_and_the_map, _datasets(clients))
    _assert_close(actual, expected)
    assert 6 not in folds and all(n == 1 for n in folds)  # no shared fold: the map's value is needed whole


def test_no_clients(folds):
    @fedcore.federated_computation(DATA)
    def sums(data):
        out = fedcore.federated_map(client_work, data)
        return fedcore.federated_sum(out.metrics), fedcore.federated_sum(out.weight)

    expected = _run(fedcore.ReferenceExecutor(), sums, [])
    actual = _run(TensorFlowExecutor(strategy="sequential"), sums, [])
    _assert_close(actual, expected)


def test_vectorizable_client_work_stays_vectorized(folds):
    @fedcore.tf_computation(tf.float32)
    def double(x):
        return collections.OrderedDict(a=x * 2.0, b=x + 1.0)

    @fedcore.federated_computation(SCALE)
    def comp(xs):
        out = fedcore.federated_map(double, xs)
        return fedcore.federated_sum(out.a), fedcore.federated_mean(out.b, weight=out.a)

    xs = [np.float32(v) for v in (1.0, 2.5, 4.0)]
    executor = TensorFlowExecutor(strategy="auto")
    _assert_close(_run(executor, comp, xs), _run(fedcore.ReferenceExecutor(), comp, xs))
    assert executor.strategy_report[0].strategy == "vectorized"
    assert folds == []


# -- which uses the analysis takes (IR built by hand: tracing never shadows a name) -----------------

X = FederatedType(TensorType("float32"), fedcore.CLIENTS)


def _sum_of(node):
    return bb.Call(bb.Intrinsic("federated_sum", fedcore.FunctionType(X, FederatedType(TensorType("float32"), fedcore.SERVER))),
                   node)


def test_the_analysis_takes_reductions_only():
    x = bb.Reference("x", X)
    assert len(lowering._reductions_of("x", (), bb.Struct([(None, _sum_of(x)), (None, _sum_of(x))]))) == 2
    # x returned as it is: a use that needs the stacked value
    assert lowering._reductions_of("x", (), bb.Struct([(None, _sum_of(x)), (None, x)])) is None


def test_the_analysis_skips_a_shadowed_name_and_refuses_what_is_bound_later():
    x = bb.Reference("x", X)
    # inside (x -> sum(x)), x is the lambda's own parameter: not a use of the outer x
    shadowed = bb.Lambda("x", X, _sum_of(x))
    assert len(lowering._reductions_of("x", (), bb.Struct([(None, _sum_of(x)), (None, shadowed)]))) == 1
    # a reduction that reads a name bound after x cannot be computed where x is bound
    y = bb.Reference("y", X)
    weighted = fedcore.FunctionType(
        fedcore.StructType([(None, X), (None, X)]), FederatedType(TensorType("float32"), fedcore.SERVER))
    mean = bb.Call(bb.Intrinsic("federated_weighted_mean", weighted), bb.Struct([(None, x), (None, y)]))
    assert lowering._reductions_of("x", (("y", bb.Reference("z", X)),), mean) is None
    # ... but one that reads a name bound before x can
    assert len(lowering._reductions_of("x", (), mean)) == 1

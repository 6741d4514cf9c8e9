"""Reductions whose step only adds to its accumulator run as one pass over all clients' elements.

``sequence_reduce(data, a, step)`` where ``step(acc, x)`` is ``acc + g(x)``
leaf by leaf (an evaluation summing loss, hits and counts) is ``a`` plus the
sum of every element's increment.  The vectorized strategy then computes the
increments of all clients' elements in one vectorized call and sums them
per client.  These tests pin which steps take that path (read from the
graph: ``fedcore.compiler.additive``), and that every step gives the
reference interpreter's result, on either path.
"""

import collections
import contextlib

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import fedcore
from fedcore.runtime.tensorflow import TensorFlowExecutor, batched
from tests.runtime.folds import per_client_reduction

ELEMENT = fedcore.to_type((tf.float32, [None]))
STATE = fedcore.to_type(collections.OrderedDict(total=tf.float32, count=tf.int32, squares=tf.float32))


def increments_of(comp):
    return comp.ir.function.increments


def run(executor, comp, *args):
    with fedcore.execution_context(executor):
        return comp(*args)


def datasets(sizes, batch):
    return [tf.data.Dataset.range(n).map(lambda x: tf.cast(x, tf.float32) * 0.5 - 3.0).batch(batch) for n in sizes]


@contextlib.contextmanager
def counting_map_sum():
    """Within it, the list gets one entry for each reduction lowered by the map-sum path."""
    calls = []
    original = batched._map_sum

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    batched._map_sum = counting
    try:
        yield calls
    finally:
        batched._map_sum = original


@pytest.fixture
def map_sum_calls():
    """How many reductions were lowered by the map-sum path."""
    with counting_map_sum() as calls:
        yield calls


def _reduction(step, zero):
    return per_client_reduction(step, zero, ELEMENT)


ZERO = collections.OrderedDict(total=np.float32(0), count=np.int32(0), squares=np.float32(0))


@fedcore.tf_computation(STATE, ELEMENT)
def summing_step(state, batch):
    return collections.OrderedDict(total=state["total"] + tf.reduce_sum(batch),
                                   count=tf.size(batch) + state["count"],  # either operand order
                                   squares=state["squares"] + tf.reduce_mean(batch * batch))


@fedcore.tf_computation(STATE, ELEMENT)
def decaying_step(state, batch):
    # total depends on the total so far: not a sum of increments.
    return collections.OrderedDict(total=state["total"] * 0.5 + tf.reduce_sum(batch),
                                   count=state["count"] + tf.size(batch), squares=state["squares"] + 1.0)


@fedcore.tf_computation(STATE, ELEMENT)
def cross_step(state, batch):
    # count's increment reads total: the increments are not independent of the state.
    return collections.OrderedDict(total=state["total"] + tf.reduce_sum(batch),
                                   count=state["count"] + tf.cast(state["total"] > 4.0, tf.int32),
                                   squares=state["squares"] + tf.reduce_max(batch))


@fedcore.tf_computation(STATE, ELEMENT)
def checked_step(state, batch):
    # A check on the accumulator itself: recomputing increments from zero would skip it.
    with tf.control_dependencies([tf.debugging.assert_less(state["total"], 10.0, message="total reached 10")]):
        return collections.OrderedDict(total=state["total"] + tf.reduce_sum(batch), count=state["count"] + 1,
                                       squares=state["squares"] + 0.0)


@fedcore.tf_computation(ELEMENT)
def batch_sum(batch):
    return tf.reduce_sum(batch), tf.size(batch)


@fedcore.tf_computation(STATE, ELEMENT)
def nested_step(state, batch):
    s, n = batch_sum(batch)
    return collections.OrderedDict(total=state["total"] + s, count=state["count"] + n,
                                   squares=state["squares"] + s * s)


def test_the_graph_reading_finds_exactly_the_leaves_that_only_add():
    assert increments_of(summing_step) == ((0, frozenset({3})), (1, frozenset({3})), (2, frozenset({3})))
    assert increments_of(decaying_step)[0] is None
    assert increments_of(cross_step)[1] == (1, frozenset({0}))  # an increment that reads another leaf
    assert all(inc is None or 0 in inc[1] for inc in increments_of(checked_step))
    assert increments_of(nested_step) == ((0, frozenset({3})), (1, frozenset({3})), (2, frozenset({3})))


def test_strings_are_not_sums():
    @fedcore.tf_computation(tf.string, tf.string)
    def join(a, b):
        return a + b

    assert increments_of(join) == (None,)


SIZES = [1, 19, 20, 21, 400, 0, 0, 40, 3]


@pytest.mark.parametrize("step,takes_map_sum", [
    (summing_step, True), (nested_step, True), (decaying_step, False), (cross_step, False),
], ids=["sums", "nested-call", "decaying", "cross-leaf"])
@pytest.mark.parametrize("strategy", ["vectorized", "auto"])
def test_every_step_equals_the_reference(step, takes_map_sum, strategy, map_sum_calls):
    comp = _reduction(step, ZERO)
    data = datasets(SIZES, batch=20)
    expected = run(fedcore.ReferenceExecutor(), comp, data)
    got = run(TensorFlowExecutor(strategy=strategy), comp, data)
    assert bool(map_sum_calls) == takes_map_sum
    for g, e in zip(got, expected):
        for name in ("total", "squares"):
            np.testing.assert_allclose(float(g[name]), float(e[name]), rtol=1e-5, atol=1e-4)
        assert int(g["count"]) == int(e["count"])


@pytest.mark.parametrize("strategy", ["vectorized", "auto", "sequential"])
def test_a_check_on_the_accumulator_still_sees_the_real_accumulator(strategy, map_sum_calls):
    comp = _reduction(checked_step, ZERO)
    ok = [tf.data.Dataset.from_tensor_slices(np.ones(6, np.float32)).batch(2)]
    np.testing.assert_allclose(float(run(TensorFlowExecutor(strategy=strategy), comp, ok)[0]["total"]), 6.0)
    # Each increment alone stays under 10; the running total does not.
    over = [tf.data.Dataset.from_tensor_slices(np.full(8, 3.0, np.float32)).batch(2)]
    with pytest.raises(fedcore.ExecutionError, match="total reached 10"):
        run(TensorFlowExecutor(strategy=strategy), comp, over)
    assert not map_sum_calls


def test_integer_sums_wrap_as_the_steps_own_addition_does():
    @fedcore.tf_computation(tf.int32, ELEMENT)
    def big(acc, batch):
        return acc + tf.constant(2**30, tf.int32) * tf.size(batch)

    comp = _reduction(big, np.int32(0))
    data = datasets([3, 9, 0], batch=1)
    expected = run(fedcore.ReferenceExecutor(), comp, data)
    got = run(TensorFlowExecutor(strategy="vectorized"), comp, data)
    assert [int(v) for v in got] == [int(v) for v in expected]


@fedcore.tf_computation(collections.OrderedDict(w=tf.float32, total=tf.float32, hits=tf.int32), ELEMENT)
def weighted_step(state, batch):
    # The model-like leaf w rides unchanged; the increments read it.
    return collections.OrderedDict(w=state["w"], total=state["total"] + state["w"] * tf.reduce_sum(batch),
                                   hits=state["hits"] + tf.reduce_sum(tf.cast(batch > 0.0, tf.int32)))


@fedcore.tf_computation(tf.float32)
def start(w):
    return collections.OrderedDict(w=w, total=tf.constant(0.0), hits=tf.constant(0))


def every_client_reducing(step):
    """``<w@SERVER, {batches*}@CLIENTS> -> {state}@CLIENTS``: each client reduces its batches with ``step`` from ``start(w)``."""
    @fedcore.federated_computation(tf.float32, fedcore.SequenceType(ELEMENT))
    def client(w, batches):
        return fedcore.sequence_reduce(batches, start(w), step)

    @fedcore.federated_computation(fedcore.type_at_server(tf.float32), fedcore.type_at_clients(fedcore.SequenceType(ELEMENT)))
    def everyone(w, data):
        return fedcore.federated_map(client, fedcore.federated_zip([fedcore.federated_broadcast(w), data]))

    return everyone


@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=8),
    batch=st.integers(1, 9),
    w=st.floats(-2.0, 2.0, width=32),
)
def test_map_sum_equals_the_reference_on_random_ragged_cohorts(sizes, batch, w):
    everyone = every_client_reducing(weighted_step)
    data = datasets(sizes, batch)
    expected = run(fedcore.ReferenceExecutor(), everyone, np.float32(w), data)
    got = run(TensorFlowExecutor(strategy="vectorized"), everyone, np.float32(w), data)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(float(g["total"]), float(e["total"]), rtol=1e-5, atol=1e-3)
        assert int(g["hits"]) == int(e["hits"])
        assert float(g["w"]) == float(e["w"])



@fedcore.tf_computation(collections.OrderedDict(w=tf.float32, total=tf.float32, hits=tf.int32), ELEMENT)
def batch_step(state, batch):
    # Each increment depends on how the rows group into batches (the batch's largest value, its size
    # squared), so a partial batch read with the wrong rows, or credited to the wrong client, shows.
    size = tf.size(batch)
    largest = tf.reduce_max(batch)
    return collections.OrderedDict(w=state["w"], total=state["total"] + state["w"] * largest * tf.cast(size * size, tf.float32),
                                   hits=state["hits"] + size * size)


def distinct_datasets(sizes, batch, shuffle_seed):
    out = []
    for c, n in enumerate(sizes):
        ds = tf.data.Dataset.range(n).map(lambda x, c=c: tf.cast(x, tf.float32) * 0.5 - 3.0 + 100.0 * c)
        if shuffle_seed is not None:
            ds = ds.shuffle(8, seed=shuffle_seed + c)
        out.append(ds.batch(batch))
    return out


@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 45), min_size=1, max_size=9),
    batch=st.integers(1, 9),
    shuffle_seed=st.one_of(st.none(), st.integers(0, 1000)),
)
def test_partial_batches_keep_their_own_rows_and_clients(sizes, batch, shuffle_seed):
    everyone = every_client_reducing(batch_step)
    data = distinct_datasets(sizes, batch, shuffle_seed)
    # A seeded shuffle's orders are fedcore's own, not tf.data's (docs/performance.md): there the
    # sequential strategy, which reads the same orders, is what the vectorized one must equal.
    judge = fedcore.ReferenceExecutor() if shuffle_seed is None else TensorFlowExecutor(strategy="sequential")
    expected = run(judge, everyone, np.float32(1.5), data)
    with counting_map_sum() as calls:
        got = run(TensorFlowExecutor(strategy="vectorized"), everyone, np.float32(1.5), data)
    assert calls, "the reduction did not take the map-sum path"
    for c, (g, e) in enumerate(zip(got, expected)):
        assert int(g["hits"]) == int(e["hits"]), f"client {c}"
        np.testing.assert_allclose(float(g["total"]), float(e["total"]), rtol=1e-5, atol=1e-3, err_msg=f"client {c}")

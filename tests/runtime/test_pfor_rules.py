"""What fedcore adds to tf.vectorized_map, and how it sees pfor's loops over clients.

* ``Bitcast`` gets a rule of its own (Keras 3's ``argmax`` bitcasts floats to
  read their sign bit), so client work that reaches it stays on the clients axis.
* So does ``InTopKV2`` (Keras's top-k accuracy metrics): each row is ranked on its own.
* An op with no rule inside a function call is run by pfor in a loop over
  clients, noted only at debug level; ``auto`` must see it and run the work
  client by client, and say which op.
"""

import logging

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import fedcore
from fedcore.runtime.tensorflow import TensorFlowExecutor, pfor_rules  # noqa: F401  (registers the rules)

V = fedcore.to_type((tf.float32, [4]))


def run(executor, comp, *args):
    with fedcore.execution_context(executor):
        return comp(*args)


@settings(max_examples=25, deadline=None)
@given(
    pair=st.sampled_from([(np.float32, tf.int32), (np.float64, tf.int32), (np.int32, tf.float32),
                          (np.int8, tf.uint8), (np.float32, tf.uint8)]),
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    clients=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_a_vectorized_bitcast_equals_one_per_client(pair, shape, clients, seed):
    source, target = pair
    rng = np.random.default_rng(seed)
    x = tf.constant((rng.normal(size=[clients] + shape) * 100).astype(source))
    loops = []

    class Catch(logging.Filter):
        def filter(self, record):
            loops.append(record.getMessage())
            return False

    logger = tf.get_logger()
    catch, level = Catch(), logger.level
    logger.addFilter(catch)
    logger.setLevel(logging.DEBUG)
    try:
        got = tf.function(lambda v: tf.vectorized_map(lambda e: tf.bitcast(e, target), v))(x)
    finally:
        logger.removeFilter(catch)
        logger.setLevel(level)
    expected = np.stack([tf.bitcast(x[i], target).numpy() for i in range(clients)])
    np.testing.assert_array_equal(got.numpy(), expected)
    assert not [m for m in loops if "while_loop for converting Bitcast" in m]


def test_a_widening_bitcast_of_values_of_unknown_rank_is_not_applied_to_the_clients_axis():
    # Four int8 scalars would bitcast to one int32 if the rule consumed the clients axis.
    @tf.function(input_signature=[tf.TensorSpec(None, tf.int8)])
    def widen(v):
        return tf.vectorized_map(lambda e: tf.bitcast(tf.reshape(e, tf.shape(e)), tf.int32), v)

    with pytest.raises(tf.errors.InvalidArgumentError):
        widen(tf.constant([1, 2, 3, 4], tf.int8))
    np.testing.assert_array_equal(widen(tf.constant([[1, 0, 0, 0], [2, 0, 0, 0]], tf.int8)).numpy(), [1, 2])


@fedcore.tf_computation(V)
def sign_bits(x):
    return tf.reduce_sum(tf.cast(tf.bitcast(x, tf.int32) < 0, tf.int32))


@fedcore.tf_computation(V)
def histogram(x):
    return tf.histogram_fixed_width(x, [0.0, 1.0], nbins=3)


@fedcore.tf_computation(V)
def calls_histogram(x):  # the op inside a function call: pfor notes its loop at debug level only
    return histogram(x)


def _mapped(fn):
    @fedcore.federated_computation(fedcore.type_at_clients(V))
    def comp(xs):
        return fedcore.federated_map(fn, xs)

    return comp


DATA = [np.asarray([0.0, -0.0, 0.5, -2.0], np.float32), np.linspace(0, 1, 4).astype(np.float32), np.zeros(4, np.float32)]


def test_client_work_with_a_bitcast_runs_on_the_clients_axis():
    comp = _mapped(sign_bits)
    executor = TensorFlowExecutor()
    got = run(executor, comp, DATA)
    assert [int(v) for v in got] == [int(v) for v in run(fedcore.ReferenceExecutor(), comp, DATA)] == [2, 0, 0]
    assert [c.strategy for c in executor.strategy_report] == ["vectorized"]


@settings(max_examples=20, deadline=None)
@given(clients=st.integers(1, 4), rows=st.integers(1, 5), classes=st.integers(1, 6), k=st.integers(0, 7),
       seed=st.integers(0, 2**16))
def test_a_vectorized_in_top_k_equals_one_per_client(clients, rows, classes, k, seed):
    rng = np.random.default_rng(seed)
    # Few distinct scores, so that ties (which in_top_k counts in) occur.
    scores = rng.integers(0, 3, (clients, rows, classes)).astype(np.float32)
    targets = rng.integers(0, classes, (clients, rows)).astype(np.int32)
    got = tf.function(lambda p, t: tf.vectorized_map(lambda e: tf.math.in_top_k(e[1], e[0], k), (p, t)))(scores, targets)
    expected = np.stack([tf.math.in_top_k(targets[i], scores[i], k).numpy() for i in range(clients)])
    np.testing.assert_array_equal(got.numpy(), expected)


@fedcore.tf_computation(fedcore.to_type((tf.float32, [3, 4])), fedcore.to_type((tf.int32, [3])))
def top_two_hits(scores, labels):
    return tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, scores, 2), tf.int32))


def test_client_work_with_in_top_k_runs_on_the_clients_axis():
    @fedcore.federated_computation(fedcore.type_at_clients(fedcore.to_type(((tf.float32, [3, 4]), (tf.int32, [3])))))
    def comp(pairs):
        return fedcore.federated_map(top_two_hits, pairs)

    rng = np.random.default_rng(1)
    data = [(rng.normal(size=(3, 4)).astype(np.float32), rng.integers(0, 4, 3).astype(np.int32)) for _ in range(3)]
    executor = TensorFlowExecutor()
    got = run(executor, comp, data)
    assert [int(v) for v in got] == [int(v) for v in run(fedcore.ReferenceExecutor(), comp, data)]
    assert [c.strategy for c in executor.strategy_report] == ["vectorized"]


@pytest.mark.parametrize("user_level", [logging.WARNING, logging.ERROR])
def test_a_loop_over_clients_noted_only_at_debug_level_is_seen(user_level, caplog):
    comp = _mapped(calls_histogram)
    logger = tf.get_logger()
    old = logger.level
    logger.setLevel(user_level)
    try:
        executor = TensorFlowExecutor()
        got = run(executor, comp, DATA)
        assert logger.level == user_level  # vectorizing left the user's level as it was
    finally:
        logger.setLevel(old)
    expected = run(fedcore.ReferenceExecutor(), comp, DATA)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    (choice,) = executor.strategy_report
    assert choice.strategy == "sequential"
    assert "HistogramFixedWidth" in choice.reason
    # The debug note itself stays hidden at the user's level.
    assert not [r for r in caplog.records if "while_loop for converting" in r.getMessage()]


# fedcore's vectorized_map: inputs read by the loop index, without a copy, also where the number of
# clients is known only at run time.

def _converted_ops(fn, specs, *values):
    """The op types of ``fn``'s graph, traced for ``specs``, and its result on ``values``."""
    traced = tf.function(fn, input_signature=specs).get_concrete_function()
    # The ops pfor made (the traced loop body's own ops stay in the graph, unused).
    ops = [op.type for op in traced.graph.get_operations() if "/pfor/" in op.name]
    return ops, traced(*values)


@settings(max_examples=20, deadline=None)
@given(clients=st.integers(1, 6), width=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_fedcores_vectorized_map_equals_tensorflows_on_a_run_time_number_of_clients(clients, width, seed):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=[clients, width, 3]).astype(np.float32))
    w = tf.constant(rng.normal(size=[3, 2]).astype(np.float32))
    counts = tf.constant(rng.integers(0, 10, size=[clients]).astype(np.int32))
    specs = [tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([None], tf.int32)]

    def step(row):  # a batch's model output summed, plus a per-client count
        batch, count = row
        return tf.reduce_sum(tf.nn.softmax(tf.matmul(batch, w)), 0) * tf.cast(count, tf.float32), count + 1

    ours_ops, ours = _converted_ops(lambda a, b: pfor_rules.vectorized_map(step, [a, b]), specs, x, counts)
    theirs_ops, theirs = _converted_ops(lambda a, b: tf.vectorized_map(step, (a, b)), specs, x, counts)
    for got, expected in zip(ours, theirs):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6)
    # TensorFlow's gathers every input whole, behind a select for broadcasting; fedcore's reads them as they are.
    assert "GatherV2" in theirs_ops and "SelectV2" in theirs_ops
    assert "GatherV2" not in ours_ops and "SelectV2" not in ours_ops


def test_fedcores_vectorized_map_refuses_inputs_of_different_numbers_of_clients():
    specs = [tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None], tf.float32)]
    f = tf.function(lambda a, b: pfor_rules.vectorized_map(lambda r: r[0] * r[1], [a, b]), input_signature=specs)
    np.testing.assert_allclose(f(tf.ones([3, 2]), tf.constant([1.0, 2.0, 3.0])).numpy(), [[1, 1], [2, 2], [3, 3]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="differ in their number of rows"):
        f(tf.ones([3, 2]), tf.constant([1.0, 2.0]))


def test_gathers_of_user_code_inside_fedcores_vectorized_map_convert_as_tensorflow_converts_them():
    # A gather by an index the client computes is a real gather per client, not a read of the input.
    table = tf.constant([[10.0], [20.0], [30.0]])
    specs = [tf.TensorSpec([None], tf.int32)]
    f = tf.function(lambda i: pfor_rules.vectorized_map(lambda r: tf.gather(table, r[0]), [i]), input_signature=specs)
    np.testing.assert_allclose(f(tf.constant([2, 0, 0, 1])).numpy(), [[30.0], [10.0], [10.0], [20.0]])

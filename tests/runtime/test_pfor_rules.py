"""What fedcore adds to tf.vectorized_map, and how it sees pfor's loops over clients.

* ``Bitcast`` gets a rule of its own (Keras 3's ``argmax`` bitcasts floats to
  read their sign bit), so client work that reaches it stays on the clients axis.
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
